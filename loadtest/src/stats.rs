//! What a run records and how it is summarised: HDR histograms (latency from the planned time,
//! service time from the actual send, start lag, signing cost) per worker, merged at the end, and
//! turned into the percentile summaries the report prints and serialises.

use std::collections::BTreeMap;
use std::time::Duration;

use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};

use crate::error::LoadError;
use crate::mix::Op;

/// Latencies are recorded in microseconds up to an hour; longer values saturate.
const MAX_MICROS: u64 = 3_600_000_000;
/// Signing cost is recorded in nanoseconds up to a second.
const MAX_NANOS: u64 = 1_000_000_000;

/// A histogram of microseconds (or, for signing, nanoseconds) with 3 significant digits.
pub fn histogram(max: u64) -> Result<Histogram<u64>, LoadError> {
    Histogram::new_with_bounds(1, max, 3).map_err(LoadError::Histogram)
}

fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX).max(1)
}

/// One operation's counts and latency.
#[derive(Debug, Clone)]
pub struct OpStats {
    pub ok: u64,
    pub errors: u64,
    pub latency: Histogram<u64>,
}

/// Everything one worker records; merged into the run's totals at the end (and for progress).
#[derive(Debug, Clone)]
pub struct Stats {
    /// From the planned send time to the full response: what a user of the system waits.
    pub latency: Histogram<u64>,
    /// From the actual send to the full response: what the server took once asked.
    pub service: Histogram<u64>,
    /// From the planned to the actual send time.
    pub lag: Histogram<u64>,
    /// Nanoseconds spent computing the SigV4 signature.
    pub signing: Histogram<u64>,
    pub by_op: Vec<Option<OpStats>>,
    pub errors: BTreeMap<String, u64>,
    pub completed: u64,
    pub ok: u64,
    pub failed: u64,
    pub late: u64,
    pub warmup: u64,
    pub warmup_errors: u64,
    /// Offset from the run's start of the last response recorded.
    pub last_done: Duration,
}

impl Stats {
    /// Empty records with a per-operation histogram for each of `ops`.
    pub fn new(ops: &[Op]) -> Result<Self, LoadError> {
        let mut by_op = vec![None; Op::ALL.len()];
        for op in ops {
            by_op[op.index()] = Some(OpStats {
                ok: 0,
                errors: 0,
                latency: histogram(MAX_MICROS)?,
            });
        }
        Ok(Self {
            latency: histogram(MAX_MICROS)?,
            service: histogram(MAX_MICROS)?,
            lag: histogram(MAX_MICROS)?,
            signing: histogram(MAX_NANOS)?,
            by_op,
            errors: BTreeMap::new(),
            completed: 0,
            ok: 0,
            failed: 0,
            late: 0,
            warmup: 0,
            warmup_errors: 0,
            last_done: Duration::ZERO,
        })
    }
}

/// One finished request as the engine saw it.
#[derive(Debug)]
pub struct Sample<'a> {
    pub op: Op,
    pub outcome: Result<(), &'a str>,
    pub latency: Duration,
    pub service: Duration,
    pub lag: Duration,
    pub signing: Duration,
    pub late: bool,
    pub done: Duration,
}

impl Stats {
    /// Records a measured (post-warm-up) request. Latency percentiles cover successful responses;
    /// errors are counted by type (a fast `ThrottlingException` must not flatter the latency).
    pub fn record(&mut self, s: &Sample<'_>) {
        self.completed += 1;
        if s.late {
            self.late += 1;
        }
        self.lag.saturating_record(micros(s.lag));
        let sign_ns = u64::try_from(s.signing.as_nanos())
            .unwrap_or(u64::MAX)
            .max(1);
        self.signing.saturating_record(sign_ns);
        self.last_done = self.last_done.max(s.done);
        let op = self.by_op[s.op.index()].as_mut();
        match s.outcome {
            Ok(()) => {
                self.ok += 1;
                self.latency.saturating_record(micros(s.latency));
                self.service.saturating_record(micros(s.service));
                if let Some(op) = op {
                    op.ok += 1;
                    op.latency.saturating_record(micros(s.latency));
                }
            }
            Err(kind) => {
                self.failed += 1;
                if let Some(op) = op {
                    op.errors += 1;
                }
                *self.errors.entry(kind.to_string()).or_default() += 1;
            }
        }
    }

    /// Counts a warm-up request (excluded from every figure but this count).
    pub fn record_warmup(&mut self, ok: bool) {
        self.warmup += 1;
        if !ok {
            self.warmup_errors += 1;
        }
    }

    /// Adds another worker's records.
    pub fn merge(&mut self, other: &Stats) {
        // Histograms with equal bounds always merge; a failure would only lose samples.
        let _ = self.latency.add(&other.latency);
        let _ = self.service.add(&other.service);
        let _ = self.lag.add(&other.lag);
        let _ = self.signing.add(&other.signing);
        for (mine, theirs) in self.by_op.iter_mut().zip(&other.by_op) {
            if let Some(t) = theirs {
                match mine {
                    Some(m) => {
                        m.ok += t.ok;
                        m.errors += t.errors;
                        let _ = m.latency.add(&t.latency);
                    }
                    None => *mine = Some(t.clone()),
                }
            }
        }
        for (k, v) in &other.errors {
            *self.errors.entry(k.clone()).or_default() += v;
        }
        self.completed += other.completed;
        self.ok += other.ok;
        self.failed += other.failed;
        self.late += other.late;
        self.warmup += other.warmup;
        self.warmup_errors += other.warmup_errors;
        self.last_done = self.last_done.max(other.last_done);
    }
}

/// Standard percentile ticks of the full distribution kept in the report.
pub const DISTRIBUTION: [f64; 16] = [
    0.0, 10.0, 20.0, 30.0, 40.0, 50.0, 60.0, 70.0, 80.0, 90.0, 95.0, 99.0, 99.5, 99.9, 99.99, 100.0,
];

/// One point of a percentile distribution.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Point {
    pub percentile: f64,
    pub value_ms: f64,
}

/// A latency summary in milliseconds (all zero when `count` is 0).
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct Percentiles {
    pub count: u64,
    pub min: f64,
    pub mean: f64,
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub p999: f64,
    pub max: f64,
    /// The HDR distribution at standard percentiles (see `DISTRIBUTION`); only for latency.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub distribution: Vec<Point>,
}

impl Percentiles {
    /// Summarises a histogram whose unit is `unit_per_ms` per millisecond.
    pub fn from_histogram(h: &Histogram<u64>, unit_per_ms: f64, with_distribution: bool) -> Self {
        if h.is_empty() {
            return Self::default();
        }
        let ms = |v: u64| v as f64 / unit_per_ms;
        Self {
            count: h.len(),
            min: ms(h.min()),
            mean: h.mean() / unit_per_ms,
            p50: ms(h.value_at_quantile(0.50)),
            p90: ms(h.value_at_quantile(0.90)),
            p99: ms(h.value_at_quantile(0.99)),
            p999: ms(h.value_at_quantile(0.999)),
            max: ms(h.max()),
            distribution: if with_distribution {
                DISTRIBUTION
                    .iter()
                    .map(|p| Point {
                        percentile: *p,
                        value_ms: ms(h.value_at_percentile(*p)),
                    })
                    .collect()
            } else {
                Vec::new()
            },
        }
    }

    /// From a microsecond histogram.
    pub fn micros(h: &Histogram<u64>, with_distribution: bool) -> Self {
        Self::from_histogram(h, 1000.0, with_distribution)
    }
}

/// The cost of SigV4 signing, per request, in microseconds.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct SigningCost {
    pub count: u64,
    pub mean_us: f64,
    pub p50_us: f64,
    pub p99_us: f64,
    pub max_us: f64,
    pub total_ms: f64,
}

impl SigningCost {
    pub fn from_nanos(h: &Histogram<u64>) -> Self {
        if h.is_empty() {
            return Self::default();
        }
        Self {
            count: h.len(),
            mean_us: h.mean() / 1000.0,
            p50_us: h.value_at_quantile(0.5) as f64 / 1000.0,
            p99_us: h.value_at_quantile(0.99) as f64 / 1000.0,
            max_us: h.max() as f64 / 1000.0,
            total_ms: h.mean() * h.len() as f64 / 1_000_000.0,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(op: Op, ok: bool, latency_ms: u64) -> Sample<'static> {
        Sample {
            op,
            outcome: if ok {
                Ok(())
            } else {
                Err("ThrottlingException")
            },
            latency: Duration::from_millis(latency_ms),
            service: Duration::from_millis(1),
            lag: Duration::ZERO,
            signing: Duration::from_micros(5),
            late: latency_ms > 10,
            done: Duration::from_millis(latency_ms),
        }
    }

    #[test]
    fn records_merges_and_summarises() {
        let mut a = Stats::new(&[Op::Decrypt]).unwrap();
        let mut b = Stats::new(&[Op::Encrypt]).unwrap();
        for ms in 1..=100 {
            a.record(&sample(Op::Decrypt, true, ms));
        }
        b.record(&sample(Op::Encrypt, false, 1));
        b.record(&sample(Op::Encrypt, true, 500));
        b.record_warmup(false);
        a.merge(&b);
        assert_eq!(
            (a.completed, a.ok, a.failed, a.warmup, a.warmup_errors),
            (102, 101, 1, 1, 1)
        );
        assert_eq!(a.late, 91);
        assert_eq!(a.errors.get("ThrottlingException"), Some(&1));
        let p = Percentiles::micros(&a.latency, true);
        assert_eq!(p.count, 101);
        assert!((p.p50 - 51.0).abs() < 0.1, "{p:?}");
        assert!((p.max - 500.0).abs() < 1.0, "{p:?}");
        assert_eq!(p.distribution.len(), DISTRIBUTION.len());
        let enc = a.by_op[Op::Encrypt.index()].as_ref().unwrap();
        assert_eq!((enc.ok, enc.errors), (1, 1));
        assert_eq!(a.last_done, Duration::from_millis(500));
        let s = SigningCost::from_nanos(&a.signing);
        assert_eq!(s.count, 102);
        assert!((s.p50_us - 5.0).abs() < 0.01);
    }

    #[test]
    fn empty_histograms_summarise_to_zero() {
        let s = Stats::new(&[]).unwrap();
        assert_eq!(
            Percentiles::micros(&s.latency, true),
            Percentiles::default()
        );
        assert_eq!(SigningCost::from_nanos(&s.signing), SigningCost::default());
    }
}
