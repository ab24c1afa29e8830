//! The one place where an error becomes an XKS proxy API error on the wire: the spec's
//! `errorName` and HTTP status for each [`ErrorKind`], and the `{"errorName", "errorMessage"}`
//! body. Nothing decides a status by reading message text, and server faults never put their
//! internal message on the wire ([`KmsError::wire_message`]).

use http::StatusCode;

use crate::kms::{ErrorKind, KmsError};

/// The spec's longest `errorMessage` (it must be under 512 printable ASCII characters).
const MAX_MESSAGE: usize = 511;

/// The spec's error name and status for `kind`.
pub const fn name_and_status(kind: ErrorKind) -> (&'static str, StatusCode) {
    use ErrorKind::*;
    match kind {
        // Every SigV4 failure, whatever AWS KMS's own API would call it.
        MissingAuthenticationToken
        | IncompleteSignature
        | InvalidSignature
        | UnrecognizedClient => ("AuthenticationFailedException", StatusCode::UNAUTHORIZED),
        AccessDenied => ("AccessDeniedException", StatusCode::FORBIDDEN),
        NotFound => ("KeyNotFoundException", StatusCode::NOT_FOUND),
        // The front-end's kind for a path that is no XKS API (the spec's InvalidUriPath).
        UnknownOperation => ("InvalidUriPathException", StatusCode::NOT_FOUND),
        Disabled | InvalidState => ("InvalidStateException", StatusCode::BAD_REQUEST),
        InvalidCiphertext | IncorrectKey => ("InvalidCiphertextException", StatusCode::BAD_REQUEST),
        InvalidKeyUsage => ("InvalidKeyUsageException", StatusCode::BAD_REQUEST),
        Throttling | LimitExceeded => ("ThrottlingException", StatusCode::TOO_MANY_REQUESTS),
        UnsupportedOperation => ("UnsupportedOperationException", StatusCode::NOT_IMPLEMENTED),
        DependencyTimeout => (
            "DependencyTimeoutException",
            StatusCode::SERVICE_UNAVAILABLE,
        ),
        Internal | KeyUnavailable => ("InternalException", StatusCode::INTERNAL_SERVER_ERROR),
        AlreadyExists
        | InvalidAliasName
        | InvalidArn
        | InvalidMarker
        | MalformedPolicyDocument
        | Serialization
        | Tag
        | Validation
        | RequestTooLarge => ("ValidationException", StatusCode::BAD_REQUEST),
    }
}

/// The error body: the name, and the client-safe message clipped to the spec's alphabet and length.
pub fn body(err: &KmsError) -> Vec<u8> {
    let (name, _) = name_and_status(err.kind());
    let message: String = err
        .wire_message()
        .chars()
        .filter(|c| (' '..='~').contains(c))
        .take(MAX_MESSAGE)
        .collect();
    serde_json::to_vec(&serde_json::json!({ "errorName": name, "errorMessage": message }))
        .unwrap_or_else(|_| br#"{"errorName":"InternalException"}"#.to_vec())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(kind: ErrorKind, name: &str, status: u16) {
        assert_eq!(name_and_status(kind).0, name, "{kind:?}");
        assert_eq!(name_and_status(kind).1.as_u16(), status, "{kind:?}");
        let v: serde_json::Value =
            serde_json::from_slice(&body(&KmsError::new(kind, "m"))).unwrap();
        assert_eq!(v["errorName"], name);
    }

    #[test]
    fn the_spec_table() {
        check(ErrorKind::Validation, "ValidationException", 400);
        check(ErrorKind::Serialization, "ValidationException", 400);
        check(ErrorKind::Disabled, "InvalidStateException", 400);
        check(ErrorKind::InvalidState, "InvalidStateException", 400);
        check(
            ErrorKind::InvalidCiphertext,
            "InvalidCiphertextException",
            400,
        );
        check(ErrorKind::InvalidKeyUsage, "InvalidKeyUsageException", 400);
        check(
            ErrorKind::InvalidSignature,
            "AuthenticationFailedException",
            401,
        );
        check(
            ErrorKind::UnrecognizedClient,
            "AuthenticationFailedException",
            401,
        );
        check(
            ErrorKind::MissingAuthenticationToken,
            "AuthenticationFailedException",
            401,
        );
        check(
            ErrorKind::IncompleteSignature,
            "AuthenticationFailedException",
            401,
        );
        check(ErrorKind::AccessDenied, "AccessDeniedException", 403);
        check(ErrorKind::NotFound, "KeyNotFoundException", 404);
        check(ErrorKind::UnknownOperation, "InvalidUriPathException", 404);
        check(ErrorKind::Throttling, "ThrottlingException", 429);
        check(ErrorKind::Internal, "InternalException", 500);
        check(ErrorKind::KeyUnavailable, "InternalException", 500);
        check(
            ErrorKind::UnsupportedOperation,
            "UnsupportedOperationException",
            501,
        );
        check(
            ErrorKind::DependencyTimeout,
            "DependencyTimeoutException",
            503,
        );
    }

    #[test]
    fn messages_are_printable_ascii_under_512_and_hide_server_faults() {
        let long = KmsError::validation(format!("{}\u{e9}\n", "a".repeat(600)));
        let v: serde_json::Value = serde_json::from_slice(&body(&long)).unwrap();
        let m = v["errorMessage"].as_str().unwrap();
        assert_eq!(m.len(), 511);
        assert!(m.bytes().all(|b| (0x20..=0x7e).contains(&b)));
        let internal = KmsError::internal("/secret/path broke");
        assert!(
            !String::from_utf8(body(&internal))
                .unwrap()
                .contains("secret")
        );
    }
}
