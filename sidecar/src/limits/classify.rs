//! How a backend failure reaches a caller: the one mapping from [`BackendError`] (classified by the
//! backend, wrapped by the limits) to the core's [`KmsError`]. Lives with the limits because two of
//! its cases are theirs: an empty outbound budget and a backend's own quota are both throttling,
//! retried with backoff and never counted by the circuit breaker.

use crate::backend::{BackendError, BackendErrorKind};
use crate::kms::{ErrorKind, KmsError};
use crate::limits::BudgetExhausted;

fn is_budget(e: &BackendError) -> bool {
    e.source
        .as_deref()
        .is_some_and(|s| s.is::<BudgetExhausted>())
}

/// Whether a call's error is the sidecar's outbound budget refusing a backend call (counted as
/// `throttled_total{scope="backend"}` where the call is observed, which knows the caller).
pub fn is_outbound_budget_refusal(e: &KmsError) -> bool {
    e.kind() == ErrorKind::Throttling
        && std::error::Error::source(e)
            .and_then(|s| s.downcast_ref::<BackendError>())
            .is_some_and(is_budget)
}

/// Whether the call was refused for a quota: the backend's own, or the sidecar's outbound budget.
pub fn is_throttle(e: &BackendError) -> bool {
    e.is_backend_throttle() || is_budget(e)
}

impl From<BackendError> for KmsError {
    fn from(e: BackendError) -> Self {
        match e.kind {
            BackendErrorKind::InvalidCiphertext => KmsError::new(
                ErrorKind::InvalidCiphertext,
                "the ciphertext is invalid, was not produced by this service, or was changed",
            ),
            BackendErrorKind::MaterialMissing => {
                KmsError::new(ErrorKind::KeyUnavailable, "key material unavailable").with_source(e)
            }
            // The outbound budget ran dry: the caller is throttled, as by the backend's own quota.
            BackendErrorKind::Unavailable if is_budget(&e) => {
                KmsError::new(ErrorKind::Throttling, "Rate exceeded").with_source(e)
            }
            // The backend's own quota: retryable later, so a cached plaintext may stand in.
            BackendErrorKind::Unavailable if e.is_backend_throttle() => {
                KmsError::new(ErrorKind::Throttling, "Rate exceeded")
                    .retryable()
                    .with_source(e)
            }
            BackendErrorKind::Unavailable => {
                KmsError::new(ErrorKind::DependencyTimeout, "backend unavailable")
                    .retryable()
                    .with_source(e)
            }
            BackendErrorKind::Internal => KmsError::internal(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_outbound_budget_is_a_budget_refusal() {
        let budget = BackendError::with_source(BackendErrorKind::Unavailable, BudgetExhausted);
        assert!(is_outbound_budget_refusal(&KmsError::from(budget)));
        // The backend's own quota, an outage and an inbound limit are not the outbound budget.
        let quota = KmsError::from(BackendError::throttled(std::io::Error::other("quota")));
        assert_eq!(quota.kind(), ErrorKind::Throttling);
        assert!(!is_outbound_budget_refusal(&quota));
        let outage = KmsError::from(BackendError::new(BackendErrorKind::Unavailable));
        assert!(!is_outbound_budget_refusal(&outage));
        let inbound = KmsError::from(crate::limits::Throttled {
            scope: crate::limits::Scope::Principal,
        });
        assert!(!is_outbound_budget_refusal(&inbound));
    }

    #[test]
    fn classification_maps_to_kms_errors() {
        let cases = [
            (
                BackendErrorKind::InvalidCiphertext,
                ErrorKind::InvalidCiphertext,
                false,
            ),
            (
                BackendErrorKind::MaterialMissing,
                ErrorKind::KeyUnavailable,
                false,
            ),
            (
                BackendErrorKind::Unavailable,
                ErrorKind::DependencyTimeout,
                true,
            ),
            (BackendErrorKind::Internal, ErrorKind::Internal, false),
        ];
        for (backend, kms, retry) in cases {
            let err: KmsError = BackendError::new(backend).into();
            assert_eq!(err.kind(), kms);
            assert_eq!(err.is_retryable(), retry);
            assert_eq!(BackendError::new(backend).is_retryable(), retry);
        }
        let throttled = BackendError::throttled(crate::backend::faults::Injected(
            crate::backend::faults::FaultKind::Throttle,
        ));
        assert!(throttled.is_retryable() && is_throttle(&throttled));
        let err: KmsError = throttled.into();
        assert_eq!(err.kind(), ErrorKind::Throttling);
        assert!(!is_throttle(&BackendError::new(
            BackendErrorKind::Unavailable
        )));
        let budget = BackendError::with_source(BackendErrorKind::Unavailable, BudgetExhausted);
        assert!(is_throttle(&budget));
        assert_eq!(KmsError::from(budget).kind(), ErrorKind::Throttling);
    }
}
