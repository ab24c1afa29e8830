//! Retries for the setup and cleanup calls, the way the AWS SDKs' standard retry mode does them:
//! exponential backoff with full jitter, bounded both in attempts and in total time. A load test
//! often shares its principal's quota with other traffic (another run, the application itself), and
//! a throttled `CreateKey` or `ScheduleKeyDeletion` must not cost the whole run or its report.
//! The measured load is never retried: its throttles are what the run measures.

use std::hash::{BuildHasher as _, RandomState};
use std::time::Duration;

use crate::error::LoadError;

/// The wait before the first retry is at most this; it doubles per retry up to [`CAP`].
pub const BASE: Duration = Duration::from_millis(50);
/// The longest single wait.
pub const CAP: Duration = Duration::from_secs(5);

/// A retry policy: at most `max_attempts` attempts of one call, and no retry once `budget` has
/// passed since its first attempt.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Backoff {
    base: Duration,
    cap: Duration,
    max_attempts: u32,
    budget: Duration,
}

impl Backoff {
    /// Rejects a zero base, a cap below the base, zero attempts and more than 100 attempts.
    pub fn new(
        base: Duration,
        cap: Duration,
        max_attempts: u32,
        budget: Duration,
    ) -> Result<Self, LoadError> {
        if base.is_zero() || cap < base {
            return Err(LoadError::Invalid(format!(
                "backoff needs 0 < base <= cap, got base {base:?} and cap {cap:?}"
            )));
        }
        if !(1..=100).contains(&max_attempts) {
            return Err(LoadError::Invalid(format!(
                "--setup-max-attempts must be 1..=100, got {max_attempts}"
            )));
        }
        Ok(Self {
            base,
            cap,
            max_attempts,
            budget,
        })
    }

    /// The policy with [`BASE`] and [`CAP`].
    pub fn standard(max_attempts: u32, budget: Duration) -> Result<Self, LoadError> {
        Self::new(BASE, CAP, max_attempts, budget)
    }

    pub fn max_attempts(&self) -> u32 {
        self.max_attempts
    }

    pub fn budget(&self) -> Duration {
        self.budget
    }

    /// The longest wait before retry `retry` (1 = the first retry): `min(cap, base * 2^(retry-1))`.
    pub fn ceiling(&self, retry: u32) -> Duration {
        let doublings = retry.saturating_sub(1).min(31);
        self.base
            .checked_mul(1 << doublings)
            .map_or(self.cap, |d| d.min(self.cap))
    }

    /// The wait before retry `retry`, `elapsed` after the call's first attempt, or `None` when the
    /// attempts or the time budget are spent. Full jitter: `unit` (uniform in `[0, 1)`) scales the
    /// ceiling; the wait never runs past the budget.
    pub fn delay(&self, retry: u32, elapsed: Duration, unit: f64) -> Option<Duration> {
        if retry == 0 || retry >= self.max_attempts || elapsed >= self.budget {
            return None;
        }
        let jittered = self.ceiling(retry).mul_f64(unit.clamp(0.0, 1.0));
        Some(jittered.min(self.budget - elapsed))
    }
}

/// Uniform numbers in `[0, 1)` for jitter: SplitMix64 seeded from std's per-process random hash
/// keys. Jitter needs spread between concurrent clients, not secrecy.
#[derive(Debug, Clone)]
pub struct Jitter(u64);

impl Default for Jitter {
    fn default() -> Self {
        Self(RandomState::new().hash_one(0x6b6d_735f_6c6f_6164_u64))
    }
}

impl Jitter {
    pub fn next_unit(&mut self) -> f64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^= z >> 31;
        // The top 53 bits make an f64 in [0, 1) exactly.
        (z >> 11) as f64 / (1u64 << 53) as f64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn constructor_rejects_bad_settings() {
        let ok = |b, c, n| Backoff::new(b, c, n, Duration::from_secs(1)).is_ok();
        assert!(ok(MS, MS, 1));
        assert!(!ok(Duration::ZERO, MS, 3));
        assert!(!ok(2 * MS, MS, 3));
        assert!(!ok(MS, MS, 0));
        assert!(!ok(MS, MS, 101));
    }

    #[test]
    fn ceilings_double_from_the_base_up_to_the_cap() {
        let b = Backoff::standard(10, Duration::from_secs(30)).unwrap();
        let ceilings: Vec<u64> = (1..=9).map(|n| b.ceiling(n).as_millis() as u64).collect();
        assert_eq!(ceilings, [50, 100, 200, 400, 800, 1600, 3200, 5000, 5000]);
        // No overflow however far it goes.
        assert_eq!(b.ceiling(u32::MAX), CAP);
    }

    #[test]
    fn delays_stay_within_jitter_attempts_and_budget() {
        let b = Backoff::standard(4, Duration::from_secs(1)).unwrap();
        // Full jitter spans [0, ceiling].
        assert_eq!(b.delay(1, Duration::ZERO, 0.0), Some(Duration::ZERO));
        assert_eq!(b.delay(3, Duration::ZERO, 0.5), Some(100 * MS));
        assert_eq!(b.delay(3, Duration::ZERO, 1.0), Some(200 * MS));
        assert_eq!(b.delay(3, Duration::ZERO, 7.0), Some(200 * MS));
        // 4 attempts: retries 1, 2 and 3.
        assert!(b.delay(4, Duration::ZERO, 0.5).is_none());
        assert!(b.delay(0, Duration::ZERO, 0.5).is_none());
        // The budget: a wait never runs past it, and none starts after it.
        assert_eq!(b.delay(3, 950 * MS, 1.0), Some(50 * MS));
        assert!(b.delay(1, Duration::from_secs(1), 0.0).is_none());
        // Whatever the jitter, a call's waits add up to at most the budget.
        let mut jitter = Jitter::default();
        let mut elapsed = Duration::ZERO;
        let mut retry = 1;
        while let Some(d) = b.delay(retry, elapsed, jitter.next_unit()) {
            elapsed += d;
            retry += 1;
        }
        assert!(elapsed <= Duration::from_secs(1));
        assert_eq!(retry, 4);
    }

    #[test]
    fn jitter_is_uniform_in_the_unit_interval() {
        let mut j = Jitter::default();
        let xs: Vec<f64> = (0..10_000).map(|_| j.next_unit()).collect();
        assert!(xs.iter().all(|x| (0.0..1.0).contains(x)));
        let mean = xs.iter().sum::<f64>() / xs.len() as f64;
        assert!((mean - 0.5).abs() < 0.02, "{mean}");
        let low = xs.iter().filter(|x| **x < 0.1).count();
        assert!((800..1200).contains(&low), "{low}");
    }
}
