//! The outbound budget (pipeline step 7): a token bucket on calls into the backend, separate from the
//! inbound limits, so that a fleet of sidecars stays under the backend's quota (for an upstream AWS
//! KMS, the account's shared quota for symmetric cryptographic operations). Cached calls never reach
//! it.
//!
//! A caller that finds the bucket empty waits for its token, but only if the token will be there
//! before its deadline; otherwise it fails at once with [`BudgetExhausted`] (a `ThrottlingException`,
//! scope `backend`) instead of sleeping until the deadline only to fail. Waiting callers hold a
//! reservation (the bucket goes negative), so they are served in arrival order and the bucket's
//! debt is bounded by `rate x longest deadline`. A waiter that is cancelled keeps its reservation:
//! the token is spent, which errs toward calling the backend less.

use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use tokio::time::Instant;

use super::rate::{RateMetrics, Scope, THROTTLING_MESSAGE, Throttled};
use super::rate_spec::MAX_RATE_PER_SECOND;
use crate::kms::{ErrorKind, KmsError};

/// The slowest budget accepted: one call every 1,000 s.
pub const MIN_BUDGET_PER_SECOND: f64 = 0.001;

/// The budget as configured.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BudgetSpec {
    /// Backend calls per second, sustained.
    pub per_second: f64,
    /// Calls allowed at one instant after a quiet period.
    pub burst: u32,
}

impl BudgetSpec {
    /// A `share` (0 < share <= 1) of a per-second quota, burst one second's worth: the default for an
    /// upstream KMS is a share of [`super::rate_spec::AWS_SYMMETRIC_QUOTA_PER_SECOND`] divided by
    /// the number of sidecars that share the account.
    pub fn share_of(quota_per_second: u32, share: f64) -> Self {
        let per_second = f64::from(quota_per_second) * share;
        Self {
            per_second,
            burst: per_second.ceil().clamp(1.0, f64::from(u32::MAX)) as u32,
        }
    }
}

/// Why a [`BudgetSpec`] was rejected.
#[derive(Debug, Clone, Copy, PartialEq, thiserror::Error)]
pub enum BudgetSpecError {
    #[error(
        "outbound budget: rate must be a finite number greater than zero and at most {MAX_RATE_PER_SECOND}/s, got {0}"
    )]
    Rate(f64),
    #[error("outbound budget: burst must be at least 1")]
    ZeroBurst,
}

/// The budget ran dry and the next token comes after the caller's deadline.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("outbound budget exhausted")]
pub struct BudgetExhausted;

impl From<BudgetExhausted> for Throttled {
    fn from(_: BudgetExhausted) -> Self {
        Throttled {
            scope: Scope::Backend,
        }
    }
}

impl From<BudgetExhausted> for KmsError {
    fn from(e: BudgetExhausted) -> Self {
        KmsError::new(ErrorKind::Throttling, THROTTLING_MESSAGE).with_source(e)
    }
}

#[derive(Debug)]
struct Bucket {
    /// May be negative: tokens promised to callers that are waiting for them.
    tokens: f64,
    last: Instant,
}

/// A token bucket on backend calls.
#[derive(Debug)]
pub struct OutboundBudget {
    per_second: f64,
    burst: f64,
    bucket: Mutex<Bucket>,
}

impl OutboundBudget {
    /// A full bucket.
    pub fn new(spec: BudgetSpec) -> Result<Self, BudgetSpecError> {
        if !(MIN_BUDGET_PER_SECOND..=MAX_RATE_PER_SECOND).contains(&spec.per_second) {
            return Err(BudgetSpecError::Rate(spec.per_second));
        }
        if spec.burst == 0 {
            return Err(BudgetSpecError::ZeroBurst);
        }
        Ok(Self {
            per_second: spec.per_second,
            burst: f64::from(spec.burst),
            bucket: Mutex::new(Bucket {
                tokens: f64::from(spec.burst),
                last: Instant::now(),
            }),
        })
    }

    pub fn per_second(&self) -> f64 {
        self.per_second
    }

    /// The bucket's size: how many calls may go at once after a quiet spell.
    pub fn burst(&self) -> u32 {
        self.burst as u32
    }

    /// Takes a token now, or reserves the next one and waits for it if it comes by `deadline`.
    pub async fn acquire(&self, deadline: Instant) -> Result<(), BudgetExhausted> {
        match self.reserve(Instant::now(), deadline)? {
            None => Ok(()),
            Some(at) => {
                tokio::time::sleep_until(at).await;
                Ok(())
            }
        }
    }

    /// Takes a token if one is there now, never waiting.
    pub fn try_acquire(&self) -> Result<(), BudgetExhausted> {
        let now = Instant::now();
        self.reserve(now, now).map(|_| ())
    }

    /// `None`: a token was taken. `Some(at)`: one is reserved for `at`.
    fn reserve(&self, now: Instant, deadline: Instant) -> Result<Option<Instant>, BudgetExhausted> {
        let mut b = self.bucket.lock().unwrap_or_else(PoisonError::into_inner);
        let elapsed = now.saturating_duration_since(b.last).as_secs_f64();
        b.tokens = (b.tokens + elapsed * self.per_second).min(self.burst);
        b.last = now;
        if b.tokens >= 1.0 {
            b.tokens -= 1.0;
            return Ok(None);
        }
        let at = Duration::try_from_secs_f64((1.0 - b.tokens) / self.per_second)
            .ok()
            .and_then(|wait| now.checked_add(wait))
            .filter(|at| *at <= deadline)
            .ok_or(BudgetExhausted)?;
        b.tokens -= 1.0;
        Ok(Some(at))
    }

    /// Shows this budget as `rate_limit_per_second{scope="backend",name=backend}`.
    pub fn export(&self, metrics: &RateMetrics, backend: &str) {
        metrics.set_limit(Scope::Backend, backend, self.per_second);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn budget(per_second: f64, burst: u32) -> OutboundBudget {
        OutboundBudget::new(BudgetSpec { per_second, burst }).unwrap()
    }

    #[test]
    fn rejects_bad_specs() {
        for rate in [0.0, -1.0, 1e-300, f64::NAN, f64::INFINITY, 2e9] {
            let err = OutboundBudget::new(BudgetSpec {
                per_second: rate,
                burst: 1,
            })
            .unwrap_err();
            assert!(matches!(err, BudgetSpecError::Rate(_)), "{rate}");
        }
        let err = OutboundBudget::new(BudgetSpec {
            per_second: 1.0,
            burst: 0,
        })
        .unwrap_err();
        assert_eq!(err.to_string(), "outbound budget: burst must be at least 1");
        let share = BudgetSpec::share_of(10_000, 0.5);
        assert_eq!((share.per_second, share.burst), (5_000.0, 5_000));
    }

    #[tokio::test(start_paused = true)]
    async fn tokens_are_immediate_while_the_bucket_holds() {
        let b = budget(10.0, 5);
        let start = Instant::now();
        for _ in 0..5 {
            b.acquire(start).await.unwrap();
        }
        assert_eq!(Instant::now(), start, "no waiting while tokens remain");
        assert_eq!(b.try_acquire(), Err(BudgetExhausted));
    }

    #[tokio::test(start_paused = true)]
    async fn waits_for_a_token_that_comes_before_the_deadline() {
        let b = budget(10.0, 1);
        let start = Instant::now();
        b.acquire(start).await.unwrap();
        // The next token comes in 100 ms.
        b.acquire(start + Duration::from_millis(150)).await.unwrap();
        assert_eq!(Instant::now() - start, Duration::from_millis(100));
        // The one after that comes at 200 ms: a deadline at 150 ms fails at once, without sleeping.
        let before = Instant::now();
        assert_eq!(
            b.acquire(start + Duration::from_millis(150)).await,
            Err(BudgetExhausted)
        );
        assert_eq!(Instant::now(), before);
    }

    #[tokio::test(start_paused = true)]
    async fn waiters_are_served_in_order_at_the_rate() {
        let b = std::sync::Arc::new(budget(100.0, 1));
        let start = Instant::now();
        let deadline = start + Duration::from_secs(1);
        let mut tasks = Vec::new();
        for _ in 0..50 {
            let b = b.clone();
            tasks.push(tokio::spawn(async move {
                b.acquire(deadline).await.map(|()| Instant::now() - start)
            }));
        }
        let mut done = Vec::new();
        for t in tasks {
            done.push(t.await.unwrap().unwrap());
        }
        done.sort_unstable();
        // One at once, then one every 10 ms.
        for (i, d) in done.iter().enumerate() {
            let expected = Duration::from_millis(10 * i as u64);
            assert!(
                d.abs_diff(expected) < Duration::from_micros(10),
                "{i}: {d:?}"
            );
        }
        // 49 tokens are owed until 490 ms; past the last deadline nobody can reserve more.
        assert_eq!(
            b.acquire(start + Duration::from_millis(495)).await,
            Err(BudgetExhausted)
        );
    }

    #[test]
    fn exhaustion_is_a_backend_throttle() {
        let t: Throttled = BudgetExhausted.into();
        assert_eq!(t.scope, Scope::Backend);
        let e: KmsError = BudgetExhausted.into();
        assert_eq!(e.kind(), ErrorKind::Throttling);
    }
}
