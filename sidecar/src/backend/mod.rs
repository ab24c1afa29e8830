//! Where master key material lives and is used. The rest of the sidecar only asks a [`Backend`] to
//! create a key version, encrypt or decrypt under one, destroy a key, or give random bytes; key
//! metadata, the ciphertext header and the encryption context are handled above it (`keys/`).
//!
//! The trait is async and object-safe so that a PKCS#11 token (blocking calls on a session pool) and
//! an upstream KMS (network calls) fit the same shape. Its errors say whether a retry can help: only
//! [`BackendErrorKind::Unavailable`] is retryable, and a failed authentication tag is never a fault.
//! A backend that refuses a call for its own quota says so with [`BackendThrottled`] as the source of
//! an `Unavailable` error: retried like any other, but the client sees `ThrottlingException` and the
//! circuit breaker does not count it (a throttling backend is up).

pub mod embedded;
pub mod faults;
pub mod metrics;
pub mod observed;
pub mod pkcs11;
pub mod remote;
pub mod upstream;

use async_trait::async_trait;
use zeroize::Zeroizing;

use crate::kms::BoxError;

/// One version of one key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KeyRef<'a> {
    pub key_id: &'a str,
    pub version: u32,
}

/// What went wrong in a backend, classified for the client and for retries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BackendErrorKind {
    /// Authentication failed (wrong key, context or tampered bytes). The caller's problem.
    InvalidCiphertext,
    /// The backend has no material for this key version.
    MaterialMissing,
    /// The backend is unreachable, busy or timed out; a retry may succeed.
    Unavailable,
    /// Anything else; not retryable.
    Internal,
}

/// A backend failure with its cause kept for the log.
#[derive(Debug, thiserror::Error)]
#[error("backend error ({kind:?})")]
pub struct BackendError {
    pub kind: BackendErrorKind,
    #[source]
    pub source: Option<BoxError>,
}

impl BackendError {
    pub fn new(kind: BackendErrorKind) -> Self {
        Self { kind, source: None }
    }

    pub fn with_source(kind: BackendErrorKind, source: impl Into<BoxError>) -> Self {
        Self {
            kind,
            source: Some(source.into()),
        }
    }

    /// The backend refused the call for its quota (an upstream `ThrottlingException`).
    pub fn throttled(cause: impl Into<BoxError>) -> Self {
        Self::with_source(
            BackendErrorKind::Unavailable,
            BackendThrottled {
                cause: Some(cause.into()),
            },
        )
    }

    pub fn is_retryable(&self) -> bool {
        self.kind == BackendErrorKind::Unavailable
    }

    /// Whether the backend itself throttled the call ([`BackendThrottled`]).
    pub fn is_backend_throttle(&self) -> bool {
        self.source
            .as_deref()
            .is_some_and(|s| s.is::<BackendThrottled>())
    }
}

/// The source of an `Unavailable` error when the backend refused the call for its quota.
#[derive(Debug, thiserror::Error)]
#[error("the backend throttled the call")]
pub struct BackendThrottled {
    #[source]
    pub cause: Option<BoxError>,
}

/// A store of master keys that can use them but never hands them out.
#[async_trait]
pub trait Backend: Send + Sync + std::fmt::Debug + 'static {
    /// Short name used in metrics labels and logs (`embedded`, `pkcs11`, `upstream`).
    fn name(&self) -> &'static str;

    /// Creates and durably stores new material for `key` (a new key or a rotation).
    async fn create_version(&self, key: KeyRef<'_>) -> Result<(), BackendError>;

    /// Encrypts under `key`, returning `nonce || ciphertext || tag`.
    async fn encrypt(
        &self,
        key: KeyRef<'_>,
        aad: &[u8],
        plaintext: &[u8],
    ) -> Result<Vec<u8>, BackendError>;

    /// Decrypts `nonce || ciphertext || tag` under `key`.
    async fn decrypt(
        &self,
        key: KeyRef<'_>,
        aad: &[u8],
        sealed: &[u8],
    ) -> Result<Zeroizing<Vec<u8>>, BackendError>;

    /// Destroys every listed version of `key_id`. Destroying what is already gone succeeds.
    async fn destroy(&self, key_id: &str, versions: &[u32]) -> Result<(), BackendError>;

    /// Random bytes for data keys and GenerateRandom.
    async fn random(&self, n: usize) -> Result<Zeroizing<Vec<u8>>, BackendError>;
}
