//! A sliding window of two counters split into time buckets, shared by the circuit breaker (successes
//! and failures) and the retry budget (requests and retries). Old buckets fall out as time passes, so
//! a burst of failures an hour ago cannot open a breaker now. Time is `tokio::time::Instant`, so tests
//! drive it with a paused clock.

use std::time::Duration;

use tokio::time::Instant;

/// How many buckets a window is split into: the window slides in steps of `window / BUCKETS`.
pub(crate) const BUCKETS: u32 = 10;

/// Two counters (`a`, `b`) over the last `window`, bucketed.
#[derive(Debug, Clone)]
pub(crate) struct Sliding {
    slots: [(u64, u64); BUCKETS as usize],
    slot_len: Duration,
    /// Index of the bucket that `head_start` opens.
    head: usize,
    head_start: Instant,
}

impl Sliding {
    /// A window of `window` (callers validate it is non-zero) starting at `now`.
    pub(crate) fn new(window: Duration, now: Instant) -> Self {
        Self {
            slots: [(0, 0); BUCKETS as usize],
            slot_len: (window / BUCKETS).max(Duration::from_nanos(1)),
            head: 0,
            head_start: now,
        }
    }

    /// Moves the head to the bucket holding `now`, clearing buckets that slid out of the window.
    fn advance(&mut self, now: Instant) {
        let elapsed = now.saturating_duration_since(self.head_start);
        let steps = elapsed.as_nanos() / self.slot_len.as_nanos();
        if steps == 0 {
            return;
        }
        let n = self.slots.len();
        if steps >= n as u128 {
            self.slots = [(0, 0); BUCKETS as usize];
            self.head = 0;
            self.head_start = now;
            return;
        }
        for _ in 0..steps {
            self.head = (self.head + 1) % n;
            self.slots[self.head] = (0, 0);
        }
        // `steps` < BUCKETS here, so the cast cannot truncate.
        self.head_start += self.slot_len * steps as u32;
    }

    pub(crate) fn add_a(&mut self, now: Instant, n: u64) {
        self.advance(now);
        self.slots[self.head].0 = self.slots[self.head].0.saturating_add(n);
    }

    pub(crate) fn add_b(&mut self, now: Instant, n: u64) {
        self.advance(now);
        self.slots[self.head].1 = self.slots[self.head].1.saturating_add(n);
    }

    /// Sums of `a` and `b` over the window ending at `now`.
    pub(crate) fn totals(&mut self, now: Instant) -> (u64, u64) {
        self.advance(now);
        self.slots.iter().fold((0, 0), |(a, b), (x, y)| {
            (a.saturating_add(*x), b.saturating_add(*y))
        })
    }

    pub(crate) fn clear(&mut self, now: Instant) {
        self.slots = [(0, 0); BUCKETS as usize];
        self.head = 0;
        self.head_start = now;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn old_buckets_slide_out() {
        let start = Instant::now();
        let mut w = Sliding::new(Duration::from_secs(10), start);
        w.add_a(start, 5);
        w.add_b(start + Duration::from_secs(3), 2);
        assert_eq!(w.totals(start + Duration::from_secs(9)), (5, 2));
        // The first bucket ([0 s, 1 s)) is gone once the window has moved 10 s past it.
        assert_eq!(w.totals(start + Duration::from_secs(10)), (0, 2));
        assert_eq!(w.totals(start + Duration::from_secs(12)), (0, 2));
        assert_eq!(w.totals(start + Duration::from_secs(13)), (0, 0));
        w.add_a(start + Duration::from_secs(100), 1);
        assert_eq!(w.totals(start + Duration::from_secs(100)), (1, 0));
        w.clear(start + Duration::from_secs(100));
        assert_eq!(w.totals(start + Duration::from_secs(100)), (0, 0));
    }
}
