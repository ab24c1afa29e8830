//! The one place where an internal error becomes an AWS KMS error on the wire.
//!
//! Every failure inside the sidecar ends up as a [`KmsError`]: a kind (which is the AWS `__type`), a
//! client-safe message, an optional source kept for the log, where it came from and whether a retry can
//! help. [`ErrorKind::status`] and [`ErrorKind::aws_type`] are the only mapping to HTTP; nothing else in
//! the crate decides a status code, and nothing decides one by reading message text. Server faults never
//! put their internal message on the wire. The table and its reasons are in `docs/errors.md`.

use std::borrow::Cow;
use std::fmt;

use http::StatusCode;

/// An error source kept for logs and traces; never sent to the client.
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

macro_rules! error_kinds {
    ($( $(#[$doc:meta])* $variant:ident => $ty:literal, $status:ident, $origin:ident; )*) => {
        /// Every KMS error type the sidecar can return.
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
        pub enum ErrorKind {
            $( $(#[$doc])* $variant, )*
        }

        impl ErrorKind {
            /// All kinds, in declaration order (used to pre-size metric tables and by tests).
            pub const ALL: &'static [ErrorKind] = &[$(ErrorKind::$variant),*];

            /// The AWS `__type` of this error.
            pub const fn aws_type(self) -> &'static str {
                match self { $(ErrorKind::$variant => $ty,)* }
            }

            /// The HTTP status AWS KMS answers with (see `docs/errors.md` for the sources).
            pub const fn status(self) -> StatusCode {
                match self { $(ErrorKind::$variant => StatusCode::$status,)* }
            }

            /// Whose fault the error is: the caller's, or the server's / its dependency's.
            pub const fn origin(self) -> Origin {
                match self { $(ErrorKind::$variant => Origin::$origin,)* }
            }
        }
    };
}

error_kinds! {
    AccessDenied => "AccessDeniedException", BAD_REQUEST, Client;
    AlreadyExists => "AlreadyExistsException", BAD_REQUEST, Client;
    Disabled => "DisabledException", BAD_REQUEST, Client;
    IncompleteSignature => "IncompleteSignatureException", BAD_REQUEST, Client;
    IncorrectKey => "IncorrectKeyException", BAD_REQUEST, Client;
    InvalidAliasName => "InvalidAliasNameException", BAD_REQUEST, Client;
    InvalidArn => "InvalidArnException", BAD_REQUEST, Client;
    InvalidCiphertext => "InvalidCiphertextException", BAD_REQUEST, Client;
    InvalidKeyUsage => "InvalidKeyUsageException", BAD_REQUEST, Client;
    InvalidMarker => "InvalidMarkerException", BAD_REQUEST, Client;
    InvalidSignature => "InvalidSignatureException", BAD_REQUEST, Client;
    /// `KMSInvalidStateException`: the key's state does not allow the operation.
    InvalidState => "KMSInvalidStateException", BAD_REQUEST, Client;
    LimitExceeded => "LimitExceededException", BAD_REQUEST, Client;
    MalformedPolicyDocument => "MalformedPolicyDocumentException", BAD_REQUEST, Client;
    MissingAuthenticationToken => "MissingAuthenticationTokenException", BAD_REQUEST, Client;
    NotFound => "NotFoundException", BAD_REQUEST, Client;
    /// The body is not JSON, or a member has the wrong JSON type or encoding.
    Serialization => "SerializationException", BAD_REQUEST, Client;
    Tag => "TagException", BAD_REQUEST, Client;
    Throttling => "ThrottlingException", BAD_REQUEST, Client;
    UnknownOperation => "UnknownOperationException", BAD_REQUEST, Client;
    UnrecognizedClient => "UnrecognizedClientException", BAD_REQUEST, Client;
    UnsupportedOperation => "UnsupportedOperationException", BAD_REQUEST, Client;
    Validation => "ValidationException", BAD_REQUEST, Client;
    /// The body is larger than the configured bound.
    RequestTooLarge => "ValidationException", PAYLOAD_TOO_LARGE, Client;
    DependencyTimeout => "DependencyTimeoutException", SERVICE_UNAVAILABLE, Server;
    /// `KMSInternalException`.
    Internal => "KMSInternalException", INTERNAL_SERVER_ERROR, Server;
    KeyUnavailable => "KeyUnavailableException", INTERNAL_SERVER_ERROR, Server;
}

impl fmt::Display for ErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.aws_type())
    }
}

/// Whose fault an error is. Only server-side errors may feed retries and circuit breakers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Origin {
    /// The request was wrong; retrying the same request cannot help.
    Client,
    /// The sidecar or its backend failed.
    Server,
}

/// A KMS error: what the client sees (kind, message) plus what only the log sees (source).
#[derive(Debug, thiserror::Error)]
#[error("{kind}: {message}")]
pub struct KmsError {
    kind: ErrorKind,
    message: Cow<'static, str>,
    retryable: bool,
    #[source]
    source: Option<BoxError>,
}

impl KmsError {
    /// A new error of `kind` with a client-safe message.
    pub fn new(kind: ErrorKind, message: impl Into<Cow<'static, str>>) -> Self {
        Self {
            kind,
            message: message.into(),
            retryable: false,
            source: None,
        }
    }

    /// Keeps `source` for logs; it never reaches the wire.
    pub fn with_source(mut self, source: impl Into<BoxError>) -> Self {
        self.source = Some(source.into());
        self
    }

    /// Marks the error as one a retry may cure (backend faults only).
    pub fn retryable(mut self) -> Self {
        self.retryable = true;
        self
    }

    /// An internal failure; the message is logged, the client gets a generic one.
    pub fn internal(source: impl Into<BoxError>) -> Self {
        Self::new(ErrorKind::Internal, "an internal error occurred").with_source(source)
    }

    /// `ValidationException` with AWS's message shape.
    pub fn validation(message: impl Into<Cow<'static, str>>) -> Self {
        Self::new(ErrorKind::Validation, message)
    }

    /// `ValidationException` for a missing required member.
    pub fn missing(member: &str) -> Self {
        Self::validation(format!(
            "1 validation error detected: Value null at '{member}' failed to satisfy constraint: Member must not be null"
        ))
    }

    pub fn kind(&self) -> ErrorKind {
        self.kind
    }

    pub fn is_retryable(&self) -> bool {
        self.retryable
    }

    /// The message for the wire: server faults never expose their details.
    pub fn wire_message(&self) -> &str {
        match self.kind.origin() {
            Origin::Client => &self.message,
            Origin::Server => match self.kind {
                ErrorKind::DependencyTimeout => "the key backend did not respond in time",
                ErrorKind::KeyUnavailable => {
                    "the key is unavailable: the key backend cannot use it now"
                }
                _ => "an internal error occurred",
            },
        }
    }

    /// The JSON body AWS clients parse: `{"__type": ..., "message": ...}`.
    pub fn to_body(&self) -> Vec<u8> {
        let body = serde_json::json!({
            "__type": self.kind.aws_type(),
            "message": self.wire_message(),
        });
        // Serializing a map of two strings cannot fail; fall back to a fixed body to stay panic-free.
        serde_json::to_vec(&body).unwrap_or_else(|_| {
            br#"{"__type":"KMSInternalException","message":"an internal error occurred"}"#.to_vec()
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(kind: ErrorKind, ty: &str, status: u16) {
        assert_eq!(kind.aws_type(), ty, "{kind:?}");
        assert_eq!(kind.status().as_u16(), status, "{kind:?}");
        let body: serde_json::Value =
            serde_json::from_slice(&KmsError::new(kind, "m").to_body()).unwrap();
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
        let body = String::from_utf8(err.to_body()).unwrap();
        assert!(!body.contains("secret"), "{body}");
        assert!(err.to_string().contains("KMSInternalException"));
        let client = KmsError::validation("bad length");
        assert_eq!(client.wire_message(), "bad length");
    }

    #[test]
    fn only_server_faults_are_server_origin() {
        for kind in ErrorKind::ALL {
            let server = kind.status().is_server_error();
            assert_eq!(kind.origin() == Origin::Server, server, "{kind:?}");
        }
    }
}
