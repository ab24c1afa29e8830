//! The one place where an error becomes an AWS KMS JSON error on the wire: its `__type`, its HTTP
//! status and its body. Nothing else in the AWS front-end decides a status code, and nothing decides
//! one by reading message text. Server faults never put their internal message on the wire
//! ([`KmsError::wire_message`]). The table and its reasons are in `docs/errors.md`.

use http::StatusCode;

use crate::kms::{ErrorKind, KmsError};

/// The AWS `__type`: the core's error names are KMS's own.
pub const fn aws_type(kind: ErrorKind) -> &'static str {
    kind.name()
}

/// The HTTP status AWS KMS answers with (see `docs/errors.md` for the sources): client errors are
/// 400, except a body over the size bound (413); dependency trouble is 503, internal faults 500.
pub const fn status(kind: ErrorKind) -> StatusCode {
    use ErrorKind::*;
    match kind {
        AccessDenied
        | AlreadyExists
        | Disabled
        | IncompleteSignature
        | IncorrectKey
        | InvalidAliasName
        | InvalidArn
        | InvalidCiphertext
        | InvalidKeyUsage
        | InvalidMarker
        | InvalidSignature
        | InvalidState
        | LimitExceeded
        | MalformedPolicyDocument
        | MissingAuthenticationToken
        | NotFound
        | Serialization
        | Tag
        | Throttling
        | UnknownOperation
        | UnrecognizedClient
        | UnsupportedOperation
        | Validation => StatusCode::BAD_REQUEST,
        RequestTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
        DependencyTimeout => StatusCode::SERVICE_UNAVAILABLE,
        Internal | KeyUnavailable => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

/// The JSON body AWS clients parse: `{"__type": ..., "message": ...}`.
pub fn body(err: &KmsError) -> Vec<u8> {
    let body = serde_json::json!({
        "__type": aws_type(err.kind()),
        "message": err.wire_message(),
    });
    // Serializing a map of two strings cannot fail; fall back to a fixed body to stay panic-free.
    serde_json::to_vec(&body).unwrap_or_else(|_| {
        br#"{"__type":"KMSInternalException","message":"an internal error occurred"}"#.to_vec()
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kms::Origin;

    fn check(kind: ErrorKind, ty: &str, status_code: u16) {
        assert_eq!(aws_type(kind), ty, "{kind:?}");
        assert_eq!(status(kind).as_u16(), status_code, "{kind:?}");
        let body: serde_json::Value =
            serde_json::from_slice(&body(&KmsError::new(kind, "m"))).unwrap();
        assert_eq!(body["__type"], ty);
    }

    #[test]
    fn access_denied() {
        check(ErrorKind::AccessDenied, "AccessDeniedException", 400);
    }
    #[test]
    fn already_exists() {
        check(ErrorKind::AlreadyExists, "AlreadyExistsException", 400);
    }
    #[test]
    fn disabled() {
        check(ErrorKind::Disabled, "DisabledException", 400);
    }
    #[test]
    fn incomplete_signature() {
        check(
            ErrorKind::IncompleteSignature,
            "IncompleteSignatureException",
            400,
        );
    }
    #[test]
    fn incorrect_key() {
        check(ErrorKind::IncorrectKey, "IncorrectKeyException", 400);
    }
    #[test]
    fn invalid_alias_name() {
        check(
            ErrorKind::InvalidAliasName,
            "InvalidAliasNameException",
            400,
        );
    }
    #[test]
    fn invalid_arn() {
        check(ErrorKind::InvalidArn, "InvalidArnException", 400);
    }
    #[test]
    fn invalid_ciphertext() {
        check(
            ErrorKind::InvalidCiphertext,
            "InvalidCiphertextException",
            400,
        );
    }
    #[test]
    fn invalid_key_usage() {
        check(ErrorKind::InvalidKeyUsage, "InvalidKeyUsageException", 400);
    }
    #[test]
    fn invalid_marker() {
        check(ErrorKind::InvalidMarker, "InvalidMarkerException", 400);
    }
    #[test]
    fn invalid_signature() {
        check(
            ErrorKind::InvalidSignature,
            "InvalidSignatureException",
            400,
        );
    }
    #[test]
    fn invalid_state() {
        check(ErrorKind::InvalidState, "KMSInvalidStateException", 400);
    }
    #[test]
    fn limit_exceeded() {
        check(ErrorKind::LimitExceeded, "LimitExceededException", 400);
    }
    #[test]
    fn malformed_policy() {
        check(
            ErrorKind::MalformedPolicyDocument,
            "MalformedPolicyDocumentException",
            400,
        );
    }
    #[test]
    fn missing_token() {
        check(
            ErrorKind::MissingAuthenticationToken,
            "MissingAuthenticationTokenException",
            400,
        );
    }
    #[test]
    fn not_found() {
        check(ErrorKind::NotFound, "NotFoundException", 400);
    }
    #[test]
    fn serialization() {
        check(ErrorKind::Serialization, "SerializationException", 400);
    }
    #[test]
    fn tag() {
        check(ErrorKind::Tag, "TagException", 400);
    }
    #[test]
    fn throttling() {
        check(ErrorKind::Throttling, "ThrottlingException", 400);
    }
    #[test]
    fn unknown_operation() {
        check(
            ErrorKind::UnknownOperation,
            "UnknownOperationException",
            400,
        );
    }
    #[test]
    fn unrecognized_client() {
        check(
            ErrorKind::UnrecognizedClient,
            "UnrecognizedClientException",
            400,
        );
    }
    #[test]
    fn unsupported_operation() {
        check(
            ErrorKind::UnsupportedOperation,
            "UnsupportedOperationException",
            400,
        );
    }
    #[test]
    fn validation() {
        check(ErrorKind::Validation, "ValidationException", 400);
    }
    #[test]
    fn request_too_large() {
        check(ErrorKind::RequestTooLarge, "ValidationException", 413);
    }
    #[test]
    fn dependency_timeout() {
        check(
            ErrorKind::DependencyTimeout,
            "DependencyTimeoutException",
            503,
        );
    }
    #[test]
    fn internal() {
        check(ErrorKind::Internal, "KMSInternalException", 500);
    }
    #[test]
    fn key_unavailable() {
        check(ErrorKind::KeyUnavailable, "KeyUnavailableException", 500);
    }

    #[test]
    fn every_kind_has_a_test_above() {
        // 27 kinds, 27 mapping tests: adding a kind without a mapping test fails here.
        assert_eq!(ErrorKind::ALL.len(), 27);
    }

    #[test]
    fn server_faults_hide_their_details() {
        let err = KmsError::internal("disk /secret/path exploded");
        let text = String::from_utf8(body(&err)).unwrap();
        assert!(!text.contains("secret"), "{text}");
    }

    #[test]
    fn only_server_faults_are_server_errors() {
        for kind in ErrorKind::ALL {
            let server = status(*kind).is_server_error();
            assert_eq!(kind.origin() == Origin::Server, server, "{kind:?}");
        }
    }
}
