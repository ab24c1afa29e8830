//! Limits: what keeps the sidecar fast and fair for its callers and gentle with its backend.
//!
//! Two directions need protecting. Inbound, one noisy principal or a hot key must not starve the
//! others, and a developer should see locally the throttling AWS KMS gives in production: [`rate`]
//! limits calls per principal, per key and globally (pipeline step 3, before authorization, so a
//! flood is refused cheaply), and can emulate the AWS KMS shared quota. Outbound, a slow, throttled or
//! dead backend must neither hang callers nor be flooded while it recovers: the [`breaker`] fails fast
//! while the backend keeps failing (step 6), [`retry`] retries what a retry can fix, with full-jitter
//! backoff, within a deadline and a [`retry::RetryBudget`] so an outage cannot multiply the load
//! (step 7), and the [`budget`] keeps calls under the backend's quota (for an upstream KMS, the
//! account's quota shared by a fleet of sidecars).
//!
//! The outbound pieces stack around a backend call like this (see
//! [`crate::limits::resilient::Resilient`]), outermost first:
//!
//! ```text
//! request deadline
//!   retry loop: attempts, backoff, retry budget      -> backend_retries_total{backend,reason}
//!     outbound budget: wait for a token by the deadline -> ThrottlingException (scope backend)
//!     circuit breaker: permit, or fail fast            -> circuit_state, circuit_transitions_total
//!       per-attempt timeout
//!         backend call
//! ```
//!
//! Every attempt takes a token and a breaker permit, so retries count against the quota and the
//! breaker sees each attempt's outcome (a timeout included). A refusal by the breaker or the budget
//! ends the loop at once: retrying into an open breaker or an empty bucket only adds load.
//! Cached calls (Decrypt hits, pooled data keys) never reach any of this.
//!
//! Time: inbound limits use `governor`'s clock (a fake clock in tests); the outbound pieces use
//! `tokio::time::Instant`, so their tests run on a paused tokio clock. Knobs, defaults and their
//! reasons are in `docs/resilience.md`.

pub mod breaker;
pub mod budget;
pub mod classify;
pub mod rate;
pub mod rate_spec;
pub mod resilient;
pub mod retry;
mod window;

pub use breaker::{Breaker, BreakerMetrics, BreakerSpec, Open, Permit, State, ValidBreakerSpec};
pub use budget::{BudgetExhausted, BudgetSpec, OutboundBudget};
pub use rate::{RateLimits, RateMetrics, Scope, Throttled};
pub use rate_spec::{RateSpec, SpecError, ValidRateSpec, WindowSpec};
pub use retry::{
    Attempt, RetryBudget, RetryBudgetSpec, RetryMetrics, RetryPolicy, RetryReason, RetrySpec,
    Retryable, retry, retry_observed,
};

/// The metric family names the `limits` module exports (for `Metrics::family_names`).
pub fn family_names() -> Vec<&'static str> {
    let mut names = Vec::new();
    names.extend(RateMetrics::family_names());
    names.extend(BreakerMetrics::family_names());
    names.extend(RetryMetrics::family_names());
    names
}
