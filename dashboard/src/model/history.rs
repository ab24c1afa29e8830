//! A bounded, time-ordered history of one series, plus the counter arithmetic on top of it.
//!
//! Counters are stored *reset-corrected*: each source series keeps `(last raw, adjusted total)`,
//! and only the adjusted (monotonic) total goes into history. An increase over any window is then
//! a difference of two interpolated points, so windows and plots cost a binary search, not a walk.
//! Flat stretches are stored as two points (the newest point slides forward), and a full history
//! halves its resolution instead of forgetting its past, so memory stays bounded at any window.

use std::collections::VecDeque;

/// `(time in Unix seconds, value)`.
pub type Point = (f64, f64);

/// A ring of points, oldest first, bounded by age and count.
#[derive(Clone, Debug)]
pub struct History {
    points: VecDeque<Point>,
    max_points: usize,
    max_age_secs: f64,
}

impl History {
    /// An empty history keeping at most `max_points` points no older than `max_age_secs`.
    pub fn new(max_points: usize, max_age_secs: f64) -> Self {
        Self {
            points: VecDeque::new(),
            max_points: max_points.max(8),
            max_age_secs,
        }
    }

    /// Appends a point. Out-of-order points (older than the newest) are ignored. When the two
    /// newest points and the new one are equal, the newest point moves forward instead.
    pub fn push(&mut self, t: f64, v: f64) {
        if !t.is_finite() || !v.is_finite() {
            return;
        }
        if let Some(&(lt, lv)) = self.points.back() {
            if t < lt {
                return;
            }
            if t == lt {
                if let Some(last) = self.points.back_mut() {
                    last.1 = v;
                }
                return;
            }
            let n = self.points.len();
            if n >= 2 && lv == v && self.points[n - 2].1 == v {
                if let Some(last) = self.points.back_mut() {
                    last.0 = t;
                }
                self.trim(t);
                return;
            }
        }
        self.points.push_back((t, v));
        self.trim(t);
    }

    fn trim(&mut self, now: f64) {
        // Keep one point older than the horizon so the window's start can still interpolate.
        while self.points.len() > 2 && self.points[1].0 < now - self.max_age_secs {
            self.points.pop_front();
        }
        if self.points.len() > self.max_points {
            // Halve the resolution, always keeping the newest point.
            let newest = self.points.back().copied();
            let kept: VecDeque<Point> = self.points.iter().copied().step_by(2).collect();
            self.points = kept;
            if let (Some(n), Some(b)) = (newest, self.points.back())
                && b.0 != n.0
            {
                self.points.push_back(n);
            }
        }
    }

    /// All points, oldest first.
    pub fn points(&self) -> &VecDeque<Point> {
        &self.points
    }

    /// Number of stored points.
    pub fn len(&self) -> usize {
        self.points.len()
    }

    /// True when nothing was recorded.
    pub fn is_empty(&self) -> bool {
        self.points.is_empty()
    }

    /// The newest point.
    pub fn last(&self) -> Option<Point> {
        self.points.back().copied()
    }

    /// The oldest point.
    pub fn first(&self) -> Option<Point> {
        self.points.front().copied()
    }

    /// The value at `t`, linearly interpolated between neighbours; clamped to the first/last
    /// point outside the recorded span. `None` when empty.
    pub fn value_at(&self, t: f64) -> Option<f64> {
        let (ft, fv) = self.first()?;
        let (lt, lv) = self.last()?;
        if t <= ft {
            return Some(fv);
        }
        if t >= lt {
            return Some(lv);
        }
        let idx = self.points.partition_point(|p| p.0 <= t);
        let (t0, v0) = self.points[idx - 1];
        let (t1, v1) = self.points[idx];
        if t1 == t0 {
            return Some(v1);
        }
        Some(v0 + (v1 - v0) * (t - t0) / (t1 - t0))
    }

    /// The increase of a reset-corrected cumulative series over `[from, to]` (never negative).
    pub fn increase(&self, from: f64, to: f64) -> Option<f64> {
        let a = self.value_at(from)?;
        let b = self.value_at(to)?;
        Some((b - a).max(0.0))
    }
}

/// Turns raw counter readings of one source series into a monotonic total, handling resets.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct CounterState {
    /// The last raw reading.
    pub last_raw: f64,
    /// Sum of all increases seen since the dashboard first saw this series.
    pub adjusted: f64,
}

impl CounterState {
    /// The first reading. `baseline_zero` says the series did not exist at the source's previous
    /// scrape, so everything it counts happened since (otherwise its value is history we did not
    /// see, and only later increases count).
    pub fn first(raw: f64, baseline_zero: bool) -> (Self, f64) {
        let delta = if baseline_zero { raw.max(0.0) } else { 0.0 };
        (
            Self {
                last_raw: raw,
                adjusted: delta,
            },
            delta,
        )
    }

    /// A later reading; returns the increase. A drop means the process restarted and counted
    /// `raw` since (Prometheus `rate()` semantics).
    pub fn observe(&mut self, raw: f64) -> f64 {
        let delta = if raw >= self.last_raw {
            raw - self.last_raw
        } else {
            raw.max(0.0)
        };
        self.last_raw = raw;
        self.adjusted += delta;
        delta
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counter_resets_count_the_new_value() {
        // raw readings 10, 15, 3 (restart), 7 -> increases 5, 3, 4
        let (mut c, d0) = CounterState::first(10.0, false);
        assert_eq!(d0, 0.0);
        assert_eq!(c.observe(15.0), 5.0);
        assert_eq!(c.observe(3.0), 3.0);
        assert_eq!(c.observe(7.0), 4.0);
        assert_eq!(c.adjusted, 12.0);
        // a series born between two scrapes counts from zero
        let (c2, d) = CounterState::first(4.0, true);
        assert_eq!((c2.adjusted, d), (4.0, 4.0));
    }

    #[test]
    fn rate_across_a_reset_from_history() {
        let mut h = History::new(100, 3600.0);
        let (mut c, _) = CounterState::first(100.0, false);
        h.push(0.0, c.adjusted);
        for (t, raw) in [(10.0, 120.0), (20.0, 5.0), (30.0, 25.0)] {
            c.observe(raw);
            h.push(t, c.adjusted);
        }
        // 20 + 5 + 20 = 45 over 30 s
        assert_eq!(h.increase(0.0, 30.0), Some(45.0));
        assert_eq!(h.increase(0.0, 30.0).unwrap() / 30.0, 1.5);
        // interpolated half-interval: from t=25 (adjusted 35) to t=30 (45)
        assert_eq!(h.increase(25.0, 30.0), Some(10.0));
        // outside the recorded span clamps
        assert_eq!(h.increase(-100.0, 1000.0), Some(45.0));
    }

    #[test]
    fn flat_runs_are_compressed_and_capacity_halves() {
        let mut h = History::new(8, 1e9);
        for t in 0..100 {
            h.push(f64::from(t), 5.0);
        }
        assert_eq!(h.len(), 2);
        assert_eq!(h.last(), Some((99.0, 5.0)));
        let mut h = History::new(8, 1e9);
        for t in 0..20 {
            h.push(f64::from(t), f64::from(t));
        }
        assert!(h.len() <= 8, "{}", h.len());
        assert_eq!(h.last(), Some((19.0, 19.0)));
        assert_eq!(h.value_at(7.0), Some(7.0));
    }

    #[test]
    fn old_points_expire_but_one_anchor_stays() {
        let mut h = History::new(100, 10.0);
        for t in 0..30 {
            h.push(f64::from(t), f64::from(t));
        }
        assert_eq!(h.first(), Some((18.0, 18.0)));
        assert_eq!(h.value_at(29.0), Some(29.0));
        assert_eq!(History::new(4, 1.0).value_at(1.0), None);
    }
}
