//! Retries of retryable backend errors (pipeline step 7): exponential backoff with full jitter,
//! bounded three ways so that an outage cannot multiply the load on a struggling backend:
//! a maximum number of attempts, the request's deadline, and a [`RetryBudget`] that allows retries
//! only up to a share of recent requests (tower's `retry::budget`).
//!
//! Full jitter (AWS Architecture Blog, "Exponential Backoff And Jitter"): retry `n` (from 0) sleeps a
//! uniform random time in `[0, min(cap, base * 2^n)]`, which spreads a fleet's retries instead of
//! synchronising them.

use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use prometheus::{IntCounter, IntCounterVec, Opts, Registry};
use tokio::time::Instant;

use super::breaker::Open;
use super::budget::BudgetExhausted;
use super::window::Sliding;
use crate::backend::{BackendError, BackendErrorKind};

/// Backoff and attempt settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetrySpec {
    /// Upper bound of the first retry's delay.
    pub base: Duration,
    /// Upper bound of any delay.
    pub cap: Duration,
    /// Attempts in all, the first included (1: no retries).
    pub max_attempts: u32,
    /// Time allowed for one attempt (`None`: only the request deadline).
    pub attempt_timeout: Option<Duration>,
}

impl Default for RetrySpec {
    fn default() -> Self {
        Self {
            base: Duration::from_millis(25),
            cap: Duration::from_secs(1),
            max_attempts: 3,
            attempt_timeout: Some(Duration::from_secs(2)),
        }
    }
}

/// Why a retry setting was rejected.
#[derive(Debug, Clone, Copy, PartialEq, thiserror::Error)]
pub enum RetrySpecError {
    #[error("retry: base must be between 1ms and 1m, got {0:?}")]
    Base(Duration),
    #[error("retry: cap {cap:?} must be at least base {base:?} and at most 1h")]
    Cap { base: Duration, cap: Duration },
    #[error("retry: max_attempts must be between 1 and 20, got {0}")]
    MaxAttempts(u32),
    #[error("retry: attempt_timeout must be between 1ms and 1h, got {0:?}")]
    AttemptTimeout(Duration),
    #[error("retry budget: ratio must be a number in [0, 1], got {0}")]
    Ratio(f64),
    #[error("retry budget: min_per_second must be a number in [0, 1000], got {0}")]
    MinPerSecond(f64),
    #[error("retry budget: window must be between 1s and 60s, got {0:?}")]
    Window(Duration),
}

/// Validated backoff: which delay before which retry, and how many attempts.
#[derive(Debug)]
pub struct RetryPolicy {
    spec: RetrySpec,
    /// splitmix64 state; jitter needs spread, not secrecy.
    rng: AtomicU64,
}

impl RetryPolicy {
    pub fn new(spec: RetrySpec) -> Result<Self, RetrySpecError> {
        // A failing OS RNG only makes the jitter predictable, never wrong: fall back to the clock.
        let seed = getrandom::u64().unwrap_or_else(|_| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0x9E37_79B9_7F4A_7C15, |d| d.as_nanos() as u64)
        });
        Self::with_seed(spec, seed)
    }

    /// A policy whose jitter sequence is fixed by `seed` (for tests).
    pub fn with_seed(spec: RetrySpec, seed: u64) -> Result<Self, RetrySpecError> {
        let minute = Duration::from_secs(60);
        let hour = Duration::from_secs(3600);
        if !(Duration::from_millis(1)..=minute).contains(&spec.base) {
            return Err(RetrySpecError::Base(spec.base));
        }
        if spec.cap < spec.base || spec.cap > hour {
            return Err(RetrySpecError::Cap {
                base: spec.base,
                cap: spec.cap,
            });
        }
        if !(1..=20).contains(&spec.max_attempts) {
            return Err(RetrySpecError::MaxAttempts(spec.max_attempts));
        }
        if let Some(t) = spec.attempt_timeout
            && !(Duration::from_millis(1)..=hour).contains(&t)
        {
            return Err(RetrySpecError::AttemptTimeout(t));
        }
        Ok(Self {
            spec,
            rng: AtomicU64::new(seed),
        })
    }

    pub fn spec(&self) -> &RetrySpec {
        &self.spec
    }

    /// The largest delay before retry `n` (0 for the first retry): `min(cap, base * 2^n)`.
    pub fn delay_bound(&self, n: u32) -> Duration {
        let factor = 1u32.checked_shl(n).unwrap_or(u32::MAX);
        self.spec
            .base
            .checked_mul(factor)
            .map_or(self.spec.cap, |d| d.min(self.spec.cap))
    }

    /// A delay before retry `n`, uniform in `[0, delay_bound(n)]`.
    pub fn delay(&self, n: u32) -> Duration {
        let bound = self.delay_bound(n).as_nanos() as u64; // cap <= 1 h fits in u64 nanoseconds
        Duration::from_nanos(self.next_random() % (bound + 1))
    }

    fn next_random(&self) -> u64 {
        let mut z = self
            .rng
            .fetch_add(0x9E37_79B9_7F4A_7C15, Ordering::Relaxed)
            .wrapping_add(0x9E37_79B9_7F4A_7C15);
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
}

/// Retry budget settings.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RetryBudgetSpec {
    /// Retries allowed per request over the window (0.1: at most 10% extra load).
    pub ratio: f64,
    /// Retries per second allowed whatever the traffic, so a quiet sidecar can still retry.
    pub min_per_second: f64,
    /// How far back requests count.
    pub window: Duration,
}

impl Default for RetryBudgetSpec {
    fn default() -> Self {
        Self {
            ratio: 0.1,
            min_per_second: 1.0,
            window: Duration::from_secs(10),
        }
    }
}

/// Retries over the last window may not exceed `ratio x requests + min_per_second x window`.
#[derive(Debug)]
pub struct RetryBudget {
    ratio: f64,
    reserve: f64,
    /// Requests (a) and retries (b).
    window: Mutex<Sliding>,
}

impl RetryBudget {
    pub fn new(spec: RetryBudgetSpec) -> Result<Self, RetrySpecError> {
        if !(0.0..=1.0).contains(&spec.ratio) {
            return Err(RetrySpecError::Ratio(spec.ratio));
        }
        if !(0.0..=1000.0).contains(&spec.min_per_second) {
            return Err(RetrySpecError::MinPerSecond(spec.min_per_second));
        }
        if !(Duration::from_secs(1)..=Duration::from_secs(60)).contains(&spec.window) {
            return Err(RetrySpecError::Window(spec.window));
        }
        Ok(Self {
            ratio: spec.ratio,
            reserve: spec.min_per_second * spec.window.as_secs_f64(),
            window: Mutex::new(Sliding::new(spec.window, Instant::now())),
        })
    }

    /// Counts one request (not a retry).
    pub fn deposit(&self) {
        let mut w = self.window.lock().unwrap_or_else(PoisonError::into_inner);
        w.add_a(Instant::now(), 1);
    }

    /// Takes one retry from the budget if it has room.
    pub fn try_withdraw(&self) -> bool {
        let now = Instant::now();
        let mut w = self.window.lock().unwrap_or_else(PoisonError::into_inner);
        let (requests, retries) = w.totals(now);
        let balance = self.reserve + self.ratio * requests as f64 - retries as f64;
        if balance >= 1.0 {
            w.add_b(now, 1);
            true
        } else {
            false
        }
    }
}

/// Why an attempt is being retried.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RetryReason {
    /// The backend answered that it is unavailable, busy or throttling.
    Unavailable,
    /// The attempt ran out of time.
    Timeout,
}

impl RetryReason {
    pub const ALL: [RetryReason; 2] = [RetryReason::Unavailable, RetryReason::Timeout];

    pub const fn as_str(self) -> &'static str {
        match self {
            RetryReason::Unavailable => "unavailable",
            RetryReason::Timeout => "timeout",
        }
    }
}

/// An error that says whether a retry can help.
pub trait Retryable: Sized {
    /// `Some(reason)` if another attempt may succeed.
    fn retry_reason(&self) -> Option<RetryReason>;
    /// The error for an attempt that ran out of time.
    fn timed_out() -> Self;
}

/// An attempt cut short by its timeout or by the request deadline.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("backend attempt timed out")]
pub struct AttemptTimedOut;

impl Retryable for BackendError {
    fn retry_reason(&self) -> Option<RetryReason> {
        if !self.is_retryable() {
            return None;
        }
        let source = self.source.as_deref();
        // An open breaker or an empty outbound budget already decided: fail fast, do not retry.
        if source.is_some_and(|s| s.is::<Open>() || s.is::<BudgetExhausted>()) {
            return None;
        }
        if source.is_some_and(|s| s.is::<AttemptTimedOut>()) {
            Some(RetryReason::Timeout)
        } else {
            Some(RetryReason::Unavailable)
        }
    }

    fn timed_out() -> Self {
        BackendError::with_source(BackendErrorKind::Unavailable, AttemptTimedOut)
    }
}

/// `backend_retries_total{backend,reason}`.
#[derive(Debug, Clone)]
pub struct RetryMetrics {
    retries: IntCounterVec,
}

impl RetryMetrics {
    pub fn register(registry: &Registry) -> prometheus::Result<Self> {
        let retries = IntCounterVec::new(
            Opts::new(
                "kms_sidecar_backend_retries_total",
                "Retries of backend calls, by the reason of the failed attempt.",
            ),
            &["backend", "reason"],
        )?;
        registry.register(Box::new(retries.clone()))?;
        Ok(Self { retries })
    }

    /// The metric family names this module exports.
    pub fn family_names() -> [&'static str; 1] {
        ["kms_sidecar_backend_retries_total"]
    }

    /// Counters for one backend, resolved once.
    pub fn for_backend(&self, backend: &str) -> RetryCounters {
        RetryCounters(
            RetryReason::ALL.map(|r| self.retries.with_label_values(&[backend, r.as_str()])),
        )
    }
}

/// Pre-resolved retry counters of one backend, indexed like [`RetryReason::ALL`].
#[derive(Debug, Clone)]
pub struct RetryCounters([IntCounter; 2]);

impl RetryCounters {
    pub fn inc(&self, reason: RetryReason) {
        self.0[reason as usize].inc();
    }
}

/// What the operation is told about the attempt it runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Attempt {
    /// 0 for the first attempt.
    pub index: u32,
    /// When this attempt will be cut short. An operation that must observe its own timeout (to
    /// report it to a circuit breaker) applies this deadline itself; the loop enforces it anyway.
    pub deadline: Instant,
}

/// Runs `op` until it succeeds, fails with an error that is not retryable, or a bound is reached
/// (attempts, `deadline`, `budget`); returns the last result. See [`retry_observed`].
pub async fn retry<T, E, F, Fut>(
    policy: &RetryPolicy,
    budget: &RetryBudget,
    deadline: Instant,
    op: F,
) -> Result<T, E>
where
    E: Retryable,
    F: FnMut(Attempt) -> Fut,
    Fut: Future<Output = Result<T, E>>,
{
    retry_observed(policy, budget, deadline, None, op).await
}

/// [`retry`], counting each retry in `counters`. A retry is skipped (and the last error returned) if
/// its backoff would end at or after `deadline`, or the budget has no room.
pub async fn retry_observed<T, E, F, Fut>(
    policy: &RetryPolicy,
    budget: &RetryBudget,
    deadline: Instant,
    counters: Option<&RetryCounters>,
    mut op: F,
) -> Result<T, E>
where
    E: Retryable,
    F: FnMut(Attempt) -> Fut,
    Fut: Future<Output = Result<T, E>>,
{
    budget.deposit();
    let mut index = 0u32;
    loop {
        let now = Instant::now();
        if now >= deadline {
            return Err(E::timed_out());
        }
        let attempt_deadline = policy
            .spec
            .attempt_timeout
            .map_or(deadline, |t| (now + t).min(deadline));
        let attempt = Attempt {
            index,
            deadline: attempt_deadline,
        };
        let err = match tokio::time::timeout_at(attempt_deadline, op(attempt)).await {
            Ok(Ok(value)) => return Ok(value),
            Ok(Err(e)) => e,
            Err(_elapsed) => E::timed_out(),
        };
        let Some(reason) = err.retry_reason() else {
            return Err(err);
        };
        if index + 1 >= policy.spec.max_attempts {
            return Err(err);
        }
        let delay = policy.delay(index);
        if Instant::now() + delay >= deadline || !budget.try_withdraw() {
            return Err(err);
        }
        if let Some(c) = counters {
            c.inc(reason);
        }
        tokio::time::sleep(delay).await;
        index += 1;
    }
}

#[cfg(test)]
#[path = "retry_tests.rs"]
mod tests;
