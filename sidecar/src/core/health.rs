//! Is the backend really serving? One answer for everyone who asks: the admin API's `/readyz` and
//! the Kubernetes KMS v2 `Status` call both run a real encrypt + decrypt round trip through the
//! backend stack (breaker, retries, faults included), and both reuse a result for [`TTL`] so that a
//! probe loop cannot flood the backend or slow the caller down.

use std::future::Future;
use std::time::Duration;

// tokio's clock, so tests can pause and advance it.
use tokio::time::Instant;

use crate::backend::{Backend, BackendError, KeyRef};

/// How long a health result is reused.
pub const TTL: Duration = Duration::from_secs(1);

/// The associated data of a probe: never that of a real ciphertext (those start with the header).
const PROBE_AAD: &[u8] = b"kms-sidecar readiness probe";
const PROBE_PLAINTEXT: &[u8] = b"ready";

/// Why a round trip failed.
#[derive(Debug, thiserror::Error)]
pub enum RoundTripError {
    /// A backend call failed (`call` is `encrypt` or `decrypt`).
    #[error("backend {call} failed")]
    Backend {
        call: &'static str,
        #[source]
        error: BackendError,
    },
    /// The backend answered, with other bytes than were sealed.
    #[error("backend round trip returned wrong bytes")]
    WrongBytes,
}

/// Seals a fixed plaintext under `key` and opens it again.
pub async fn round_trip(backend: &dyn Backend, key: KeyRef<'_>) -> Result<(), RoundTripError> {
    let sealed = backend
        .encrypt(key, PROBE_AAD, PROBE_PLAINTEXT)
        .await
        .map_err(|error| RoundTripError::Backend {
            call: "encrypt",
            error,
        })?;
    let opened = backend
        .decrypt(key, PROBE_AAD, &sealed)
        .await
        .map_err(|error| RoundTripError::Backend {
            call: "decrypt",
            error,
        })?;
    if opened.as_slice() == PROBE_PLAINTEXT {
        Ok(())
    } else {
        Err(RoundTripError::WrongBytes)
    }
}

/// The last result of a check, reused for [`TTL`] while it was made for the same subject (a key
/// version, say: a rotation makes the next call check the new one). Concurrent callers wait for
/// one check instead of each running their own.
#[derive(Debug)]
pub struct Memo<K, V> {
    last: tokio::sync::Mutex<Option<(Instant, K, V)>>,
}

impl<K, V> Default for Memo<K, V> {
    fn default() -> Self {
        Self {
            last: tokio::sync::Mutex::new(None),
        }
    }
}

impl<K: PartialEq, V: Clone> Memo<K, V> {
    /// The cached value for `subject` if younger than [`TTL`], else what `check` finds (stored).
    pub async fn get_or_check<F>(&self, subject: K, check: F) -> V
    where
        F: Future<Output = V>,
    {
        let mut last = self.last.lock().await;
        if let Some((at, k, v)) = last.as_ref()
            && *k == subject
            && at.elapsed() < TTL
        {
            return v.clone();
        }
        let value = check.await;
        *last = Some((Instant::now(), subject, value.clone()));
        value
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU32, Ordering};

    #[tokio::test]
    async fn memo_reuses_a_fresh_result_for_the_same_subject_only() {
        let memo: Memo<u32, u32> = Memo::default();
        let runs = AtomicU32::new(0);
        let check = || async { runs.fetch_add(1, Ordering::SeqCst) + 1 };
        assert_eq!(memo.get_or_check(1, check()).await, 1);
        assert_eq!(
            memo.get_or_check(1, check()).await,
            1,
            "reused within the TTL"
        );
        assert_eq!(memo.get_or_check(2, check()).await, 2, "another subject");
        assert_eq!(runs.load(Ordering::SeqCst), 2);
    }

    #[tokio::test(start_paused = true)]
    async fn memo_expires_after_the_ttl() {
        let memo: Memo<(), u32> = Memo::default();
        assert_eq!(memo.get_or_check((), async { 1 }).await, 1);
        assert_eq!(memo.get_or_check((), async { 2 }).await, 1);
        tokio::time::advance(TTL + Duration::from_millis(1)).await;
        assert_eq!(memo.get_or_check((), async { 2 }).await, 2);
    }
}
