//! The admin port's optional bearer token. The admin API is on loopback by default, but `/v1/audit`
//! names principals and keys, `/v1/status` shows limits and key summaries, and `/v1/faults` (when
//! enabled) changes behaviour: where the port is reachable by more than the operator (a shared
//! pod network, a forwarded port), a token closes it.
//!
//! Only the SHA-256 of the token is kept, and a presented token is compared by digest in constant
//! time, so neither the token nor its length leaks through memory dumps or timing. `/healthz` and
//! `/readyz` stay open: probes carry no secrets, and their answers reveal only up or down.

use std::path::Path;

use anyhow::{Context, bail};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use zeroize::Zeroizing;

/// Shortest token accepted: guessing must not be practical.
pub const MIN_TOKEN_LEN: usize = 16;

/// A configured admin token, kept as its digest.
#[derive(Clone, PartialEq, Eq)]
pub struct AdminToken {
    digest: [u8; 32],
}

impl std::fmt::Debug for AdminToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AdminToken([redacted])")
    }
}

/// Why an admin request was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum AdminAuthError {
    #[error("missing bearer token")]
    Missing,
    #[error("wrong bearer token")]
    Wrong,
}

impl AdminToken {
    /// From the token's text; surrounding whitespace (a file's trailing newline) is ignored.
    pub fn new(token: &str) -> anyhow::Result<Self> {
        let token = token.trim();
        if token.len() < MIN_TOKEN_LEN {
            bail!("the admin token must be at least {MIN_TOKEN_LEN} characters");
        }
        if !token.bytes().all(|b| b.is_ascii_graphic()) {
            bail!("the admin token must be printable ASCII without spaces");
        }
        Ok(Self {
            digest: Sha256::digest(token.as_bytes()).into(),
        })
    }

    /// From a file holding the token.
    pub fn from_file(path: &Path) -> anyhow::Result<Self> {
        let text = Zeroizing::new(
            std::fs::read_to_string(path)
                .with_context(|| format!("cannot read admin token file {}", path.display()))?,
        );
        Self::new(&text).with_context(|| format!("admin token file {}", path.display()))
    }

    /// Checks an `Authorization` header value (`Bearer <token>`).
    pub fn check(&self, authorization: Option<&[u8]>) -> Result<(), AdminAuthError> {
        let presented = authorization
            .and_then(|v| {
                v.strip_prefix(b"Bearer ")
                    .or_else(|| v.strip_prefix(b"bearer "))
            })
            .ok_or(AdminAuthError::Missing)?;
        let digest: [u8; 32] = Sha256::digest(presented.trim_ascii()).into();
        if bool::from(digest.ct_eq(&self.digest)) {
            Ok(())
        } else {
            Err(AdminAuthError::Wrong)
        }
    }
}

/// Admin paths that answer without a token.
pub fn is_open_path(path: &str) -> bool {
    matches!(path, "/healthz" | "/readyz")
}

#[cfg(test)]
mod tests {
    use super::*;

    const TOKEN: &str = "s3cret-admin-token-0123";

    #[test]
    fn accepts_the_token_and_refuses_others() {
        let t = AdminToken::new(TOKEN).unwrap();
        assert_eq!(t.check(Some(format!("Bearer {TOKEN}").as_bytes())), Ok(()));
        assert_eq!(t.check(None), Err(AdminAuthError::Missing));
        assert_eq!(
            t.check(Some(TOKEN.as_bytes())),
            Err(AdminAuthError::Missing)
        );
        assert_eq!(
            t.check(Some(b"Basic dXNlcjpwYXNz")),
            Err(AdminAuthError::Missing)
        );
        assert_eq!(
            t.check(Some(format!("Bearer {TOKEN}x").as_bytes())),
            Err(AdminAuthError::Wrong)
        );
        assert_eq!(
            t.check(Some(b"Bearer s3cret-admin-token-012")),
            Err(AdminAuthError::Wrong)
        );
    }

    #[test]
    fn short_or_spaced_tokens_are_refused_and_nothing_prints_the_token() {
        assert!(AdminToken::new("short").is_err());
        assert!(AdminToken::new("has a space in the middle").is_err());
        let t = AdminToken::new(&format!("{TOKEN}\n")).unwrap();
        assert_eq!(t, AdminToken::new(TOKEN).unwrap());
        assert_eq!(format!("{t:?}"), "AdminToken([redacted])");
        let err = format!("{:#}", AdminToken::new("tiny-secret").unwrap_err());
        assert!(!err.contains("tiny-secret"), "{err}");
    }

    #[test]
    fn probes_stay_open() {
        assert!(is_open_path("/healthz"));
        assert!(is_open_path("/readyz"));
        assert!(!is_open_path("/metrics"));
        assert!(!is_open_path("/v1/audit"));
    }
}
