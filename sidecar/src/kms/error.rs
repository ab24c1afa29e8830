//! The sidecar's one error type, shared by every layer and every front-end.
//!
//! Every failure inside the sidecar ends up as a [`KmsError`]: a kind, a client-safe message, an
//! optional source kept for the log, where it came from and whether a retry can help. The kinds are
//! KMS's own error types (the product is a KMS): their [`ErrorKind::name`] is the `outcome` label of
//! the metrics and the audit log's `error_type`, the same whichever front-end served the call. How a
//! kind goes on a wire (HTTP status, JSON body, a gRPC code) is each front-end's business, in one
//! module per front-end (`frontend/aws_json/error.rs` for the AWS JSON API); nothing decides a
//! status by reading message text, and server faults never put their internal message on a wire.

use std::borrow::Cow;
use std::fmt;

/// An error source kept for logs and traces; never sent to a client.
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

macro_rules! error_kinds {
    ($( $(#[$doc:meta])* $variant:ident => $ty:literal, $origin:ident; )*) => {
        /// Every KMS error type the sidecar can return.
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
        pub enum ErrorKind {
            $( $(#[$doc])* $variant, )*
        }

        impl ErrorKind {
            /// All kinds, in declaration order (used to pre-size metric tables and by tests).
            pub const ALL: &'static [ErrorKind] = &[$(ErrorKind::$variant),*];

            /// The KMS error type (`ThrottlingException`, ...): the metric and audit label, and
            /// the AWS JSON `__type`.
            pub const fn name(self) -> &'static str {
                match self { $(ErrorKind::$variant => $ty,)* }
            }

            /// Whose fault the error is: the caller's, or the server's / its dependency's.
            pub const fn origin(self) -> Origin {
                match self { $(ErrorKind::$variant => Origin::$origin,)* }
            }
        }
    };
}

error_kinds! {
    AccessDenied => "AccessDeniedException", Client;
    AlreadyExists => "AlreadyExistsException", Client;
    Disabled => "DisabledException", Client;
    IncompleteSignature => "IncompleteSignatureException", Client;
    IncorrectKey => "IncorrectKeyException", Client;
    InvalidAliasName => "InvalidAliasNameException", Client;
    InvalidArn => "InvalidArnException", Client;
    InvalidCiphertext => "InvalidCiphertextException", Client;
    InvalidKeyUsage => "InvalidKeyUsageException", Client;
    InvalidMarker => "InvalidMarkerException", Client;
    InvalidSignature => "InvalidSignatureException", Client;
    /// `KMSInvalidStateException`: the key's state does not allow the operation.
    InvalidState => "KMSInvalidStateException", Client;
    LimitExceeded => "LimitExceededException", Client;
    MalformedPolicyDocument => "MalformedPolicyDocumentException", Client;
    MissingAuthenticationToken => "MissingAuthenticationTokenException", Client;
    NotFound => "NotFoundException", Client;
    /// The body is not JSON, or a member has the wrong JSON type or encoding.
    Serialization => "SerializationException", Client;
    Tag => "TagException", Client;
    Throttling => "ThrottlingException", Client;
    UnknownOperation => "UnknownOperationException", Client;
    UnrecognizedClient => "UnrecognizedClientException", Client;
    UnsupportedOperation => "UnsupportedOperationException", Client;
    Validation => "ValidationException", Client;
    /// The body is larger than the configured bound.
    RequestTooLarge => "ValidationException", Client;
    DependencyTimeout => "DependencyTimeoutException", Server;
    /// `KMSInternalException`.
    Internal => "KMSInternalException", Server;
    KeyUnavailable => "KeyUnavailableException", Server;
}

impl fmt::Display for ErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
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
    /// A fixed, client-safe message a server fault may show instead of the generic one.
    public: Option<&'static str>,
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
            public: None,
            source: None,
        }
    }

    /// A server fault whose wire message is the fixed text `message` (written for clients, with no
    /// internals in it), e.g. that the shared key registry is unavailable.
    pub fn server_fault(kind: ErrorKind, message: &'static str) -> Self {
        let mut e = Self::new(kind, message);
        e.public = Some(message);
        e
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
                _ if self.public.is_some() => self.public.unwrap_or_default(),
                ErrorKind::DependencyTimeout => "the key backend did not respond in time",
                ErrorKind::KeyUnavailable => {
                    "the key is unavailable: the key backend cannot use it now"
                }
                _ => "an internal error occurred",
            },
        }
    }
}

impl KmsError {
    /// Rebuilds an error that a shared load (the decrypt cache's single flight) handed to several
    /// callers: same kind, message and retryability, the original kept as the source.
    pub fn shared(e: std::sync::Arc<KmsError>) -> Self {
        Self {
            kind: e.kind,
            message: e.message.clone(),
            retryable: e.retryable,
            public: e.public,
            source: Some(Box::new(e)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_faults_hide_their_details() {
        let err = KmsError::internal("disk /secret/path exploded");
        assert!(!err.wire_message().contains("secret"));
        assert!(err.to_string().contains("KMSInternalException"));
        let client = KmsError::validation("bad length");
        assert_eq!(client.wire_message(), "bad length");
    }

    #[test]
    fn a_shared_error_keeps_kind_retryability_and_source() {
        let original = std::sync::Arc::new(
            KmsError::new(ErrorKind::DependencyTimeout, "down")
                .retryable()
                .with_source(std::io::Error::other("connection refused")),
        );
        let e = KmsError::shared(original);
        assert_eq!(e.kind(), ErrorKind::DependencyTimeout);
        assert!(e.is_retryable());
        let source = std::error::Error::source(&e).expect("source kept");
        let inner = std::error::Error::source(source).expect("the original's own source");
        assert!(inner.to_string().contains("connection refused"));
    }

    #[test]
    fn names_are_kms_error_types() {
        for kind in ErrorKind::ALL {
            assert!(kind.name().ends_with("Exception"), "{kind:?}");
        }
        assert_eq!(ErrorKind::InvalidState.name(), "KMSInvalidStateException");
        assert_eq!(ErrorKind::RequestTooLarge.name(), "ValidationException");
    }
}
