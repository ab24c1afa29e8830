//! When each request is planned: the heart of the open-loop generator. Request `i` is due at
//! `start + i / rate`, computed from the index alone (integer nanoseconds, no accumulated drift), so a
//! slow server cannot move the plan and every delay shows up as latency measured from the plan
//! (coordinated-omission correction, as in oha's `work_with_qps_latency_correction` and wrk2).

use std::time::Duration;

use crate::error::LoadError;

/// Rates are kept in thousandths of a request per second so offsets are exact integer arithmetic.
const MILLI: u128 = 1_000;
const NANOS_PER_SEC: u128 = 1_000_000_000;

/// A plan for `count` requests: open loop at a fixed rate, or closed loop (send as soon as a
/// connection is free, used to measure raw throughput).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Schedule {
    rate_milli: Option<u64>,
    count: u64,
}

impl Schedule {
    /// Open loop: `count` requests at `rate` per second (resolution 0.001/s).
    pub fn open(rate: f64, count: u64) -> Result<Self, LoadError> {
        if !(0.001..=100_000_000.0).contains(&rate) {
            return Err(LoadError::Invalid(format!(
                "rate must be between 0.001 and 1e8 requests per second, got {rate}"
            )));
        }
        Ok(Self {
            rate_milli: Some((rate * 1000.0).round() as u64),
            count,
        })
    }

    /// Closed loop: up to `count` requests, each sent when a connection frees up.
    pub fn closed(count: u64) -> Self {
        Self {
            rate_milli: None,
            count,
        }
    }

    /// The number of requests planned.
    pub fn count(&self) -> u64 {
        self.count
    }

    /// The planned rate, requests per second (`None` in closed loop).
    pub fn rate(&self) -> Option<f64> {
        self.rate_milli.map(|r| r as f64 / 1000.0)
    }

    /// How long after the start request `i` is due; `None` in closed loop (due immediately).
    pub fn offset(&self, i: u64) -> Option<Duration> {
        let rate_milli = u128::from(self.rate_milli?);
        let nanos = u128::from(i) * NANOS_PER_SEC * MILLI / rate_milli;
        Some(Duration::from_nanos(
            u64::try_from(nanos).unwrap_or(u64::MAX),
        ))
    }

    /// How many requests fit in `span` at `rate` (rounded up, so the plan covers the whole span).
    pub fn count_for(rate: f64, span: Duration) -> u64 {
        (rate * span.as_secs_f64()).ceil().max(0.0) as u64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn offsets_are_exact_and_drift_free() {
        let s = Schedule::open(1000.0, 10).unwrap();
        for i in 0..10 {
            assert_eq!(s.offset(i), Some(Duration::from_millis(i)));
        }
        // A rate that does not divide a second: each offset is computed from its index, so the
        // millionth request is due exactly 1e6/3 s after the start, not after a sum of rounded steps.
        let s = Schedule::open(3.0, 10).unwrap();
        assert_eq!(s.offset(0), Some(Duration::ZERO));
        assert_eq!(s.offset(1), Some(Duration::from_nanos(333_333_333)));
        assert_eq!(s.offset(2), Some(Duration::from_nanos(666_666_666)));
        assert_eq!(s.offset(3), Some(Duration::from_secs(1)));
        assert_eq!(
            s.offset(1_000_000),
            Some(Duration::from_nanos(333_333_333_333_333))
        );
        let s = Schedule::open(0.5, 3).unwrap();
        assert_eq!(s.offset(2), Some(Duration::from_secs(4)));
        let s = Schedule::open(1234.567, 3).unwrap();
        assert_eq!(s.offset(1234567), Some(Duration::from_secs(1000)));
        assert_eq!(s.rate(), Some(1234.567));
    }

    #[test]
    fn offsets_are_monotonic() {
        let s = Schedule::open(7777.0, 100_000).unwrap();
        let mut prev = Duration::ZERO;
        for i in 1..100_000 {
            let o = s.offset(i).unwrap();
            assert!(o > prev);
            prev = o;
        }
    }

    #[test]
    fn closed_loop_has_no_plan() {
        let s = Schedule::closed(5);
        assert_eq!(s.offset(3), None);
        assert_eq!(s.rate(), None);
        assert_eq!(s.count(), 5);
    }

    #[test]
    fn rejects_bad_rates_and_counts_spans() {
        for bad in [0.0, -1.0, f64::NAN, f64::INFINITY, 0.0001] {
            assert!(Schedule::open(bad, 1).is_err(), "{bad}");
        }
        assert_eq!(Schedule::count_for(400.0, Duration::from_millis(1500)), 600);
        assert_eq!(Schedule::count_for(3.0, Duration::from_millis(1100)), 4);
    }
}
