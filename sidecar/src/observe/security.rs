//! Unauthorized-access metrics: `kms_sidecar_unauthorized_total{principal, operation, key, reason}`,
//! one count per call refused for who made it (authentication) or what it asked (key policy).
//!
//! Every label is bounded by the caller of [`UnauthorizedMetrics::record`]: principals are issued or
//! revoked client names or `unknown`, keys are existing keys (or `other` past the per-key bound) or
//! `none`, operations come from the enum or are `unknown`, and reasons from [`REASONS`].

use prometheus::{IntCounterVec, Opts, Registry};

/// Every `reason` label value.
pub const REASONS: [&str; 8] = [
    "missing_signature",
    "malformed_signature",
    "bad_signature",
    "expired_signature",
    "unknown_client",
    "revoked_client",
    "policy_denied",
    "context_mismatch",
];

/// Principal label for callers whose credential is not known.
pub const UNKNOWN_PRINCIPAL: &str = "unknown";
/// Key label when the call named no existing key.
pub const NO_KEY: &str = "none";

/// The unauthorized-access counter.
#[derive(Debug, Clone)]
pub struct UnauthorizedMetrics {
    counter: IntCounterVec,
}

impl UnauthorizedMetrics {
    pub fn register(registry: &Registry) -> prometheus::Result<Self> {
        let counter = IntCounterVec::new(
            Opts::new(
                "kms_sidecar_unauthorized_total",
                "Calls refused by authentication or key policy, by front-end (or admin), principal, operation, key and reason.",
            ),
            &["frontend", "principal", "operation", "key", "reason"],
        )?;
        registry.register(Box::new(counter.clone()))?;
        Ok(Self { counter })
    }

    pub fn family_names() -> [&'static str; 1] {
        ["kms_sidecar_unauthorized_total"]
    }

    /// Counts one refused call; all labels must already be bounded (see the module docs).
    pub fn record(
        &self,
        frontend: &'static str,
        principal: &str,
        operation: &str,
        key: &str,
        reason: &'static str,
    ) {
        debug_assert!(REASONS.contains(&reason), "unexpected reason {reason}");
        self.counter
            .with_label_values(&[frontend, principal, operation, key, reason])
            .inc();
    }
}
