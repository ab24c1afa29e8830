//! The one place where an error becomes a gRPC status for the kube-apiserver: its code and message.
//! Decided by [`ErrorKind`], never by message text; server faults never put their internals on the
//! wire ([`KmsError::wire_message`]). The message starts with the KMS error type, so an operator
//! reading the API server's log can find the same call in the sidecar's audit log and metrics.

use tonic::Code;

use crate::kms::{ErrorKind, KmsError};

/// The gRPC code for an error kind: the caller's mistakes are `InvalidArgument` (a tampered,
/// foreign, empty or oversized ciphertext included), refusals `PermissionDenied`, limits
/// `ResourceExhausted`, a key that cannot be used now `FailedPrecondition`, backend trouble
/// `Unavailable` (the API server retries), our own faults `Internal`.
pub const fn code(kind: ErrorKind) -> Code {
    use ErrorKind::*;
    match kind {
        IncorrectKey
        | InvalidAliasName
        | InvalidArn
        | InvalidCiphertext
        | InvalidKeyUsage
        | InvalidMarker
        | MalformedPolicyDocument
        | RequestTooLarge
        | Serialization
        | Tag
        | UnknownOperation
        | UnsupportedOperation
        | Validation => Code::InvalidArgument,
        AccessDenied => Code::PermissionDenied,
        IncompleteSignature
        | InvalidSignature
        | MissingAuthenticationToken
        | UnrecognizedClient => Code::Unauthenticated,
        NotFound => Code::NotFound,
        AlreadyExists => Code::AlreadyExists,
        Disabled | InvalidState => Code::FailedPrecondition,
        LimitExceeded | Throttling => Code::ResourceExhausted,
        DependencyTimeout | KeyUnavailable => Code::Unavailable,
        Internal => Code::Internal,
    }
}

/// The gRPC status for `err`: its code and `<KMS error type>: <client-safe message>`.
pub fn status(err: &KmsError) -> tonic::Status {
    tonic::Status::new(
        code(err.kind()),
        format!("{}: {}", err.kind().name(), err.wire_message()),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_kind_has_a_code_and_server_faults_stay_vague() {
        for kind in ErrorKind::ALL {
            let s = status(&KmsError::new(*kind, "detail"));
            assert_eq!(s.code(), code(*kind));
            assert!(s.message().starts_with(kind.name()), "{kind:?}");
            assert_ne!(s.code(), Code::Ok);
        }
        let s = status(&KmsError::internal(std::io::Error::other("/secret/path")));
        assert_eq!(s.code(), Code::Internal);
        assert!(!s.message().contains("secret"), "{}", s.message());
    }

    #[test]
    fn the_codes_the_api_server_sees() {
        assert_eq!(code(ErrorKind::InvalidCiphertext), Code::InvalidArgument);
        assert_eq!(code(ErrorKind::Validation), Code::InvalidArgument);
        assert_eq!(code(ErrorKind::AccessDenied), Code::PermissionDenied);
        assert_eq!(code(ErrorKind::Throttling), Code::ResourceExhausted);
        assert_eq!(code(ErrorKind::DependencyTimeout), Code::Unavailable);
        assert_eq!(code(ErrorKind::Disabled), Code::FailedPrecondition);
        assert_eq!(code(ErrorKind::NotFound), Code::NotFound);
        assert_eq!(code(ErrorKind::Internal), Code::Internal);
    }
}
