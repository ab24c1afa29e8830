//! Backend metrics: every call into the key backend counted and timed
//! (`backend_requests_total`, `backend_duration_seconds`) and priced (`backend_cost_dollars_total`),
//! so an SRE sees backend health and what the sidecar's traffic would cost against a paid KMS.

use std::sync::OnceLock;
use std::time::Duration;

use prometheus::{
    Counter, CounterVec, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, Opts,
    Registry,
};

use crate::backend::BackendErrorKind;
use crate::kms::LATENCY_BUCKETS;

/// The backend calls that are measured.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BackendOp {
    CreateVersion,
    Encrypt,
    Decrypt,
    Destroy,
    Random,
}

impl BackendOp {
    const ALL: [BackendOp; 5] = [
        BackendOp::CreateVersion,
        BackendOp::Encrypt,
        BackendOp::Decrypt,
        BackendOp::Destroy,
        BackendOp::Random,
    ];

    pub const fn as_str(self) -> &'static str {
        match self {
            BackendOp::CreateVersion => "create_version",
            BackendOp::Encrypt => "encrypt",
            BackendOp::Decrypt => "decrypt",
            BackendOp::Destroy => "destroy",
            BackendOp::Random => "random",
        }
    }
}

const OUTCOMES: [&str; 5] = [
    "ok",
    "invalid_ciphertext",
    "material_missing",
    "unavailable",
    "internal",
];

fn outcome_slot(outcome: Option<BackendErrorKind>) -> usize {
    match outcome {
        None => 0,
        Some(BackendErrorKind::InvalidCiphertext) => 1,
        Some(BackendErrorKind::MaterialMissing) => 2,
        Some(BackendErrorKind::Unavailable) => 3,
        Some(BackendErrorKind::Internal) => 4,
    }
}

/// AWS's public price for symmetric KMS requests: $0.03 per 10,000 requests.
pub const DEFAULT_PRICE_PER_10K_REQUESTS: f64 = 0.03;
/// AWS's public price for a customer managed key: $1 per key-month.
pub const DEFAULT_PRICE_PER_KEY_MONTH: f64 = 1.0;

/// Backend call metrics for one backend.
#[derive(Debug)]
pub struct BackendMetrics {
    backend: &'static str,
    requests: IntCounterVec,
    duration: HistogramVec,
    cost: Counter,
    price_per_request: f64,
    price_per_key_second: f64,
    request_cells: Box<[OnceLock<(IntCounter, Histogram)>]>,
}

impl BackendMetrics {
    pub fn register(
        registry: &Registry,
        backend: &'static str,
        price_per_10k_requests: f64,
        price_per_key_month: f64,
    ) -> prometheus::Result<Self> {
        let labels = &["backend", "operation", "outcome"];
        let requests = IntCounterVec::new(
            Opts::new(
                "kms_sidecar_backend_requests_total",
                "Calls into the key backend by operation and outcome.",
            ),
            labels,
        )?;
        let duration = HistogramVec::new(
            HistogramOpts::new(
                "kms_sidecar_backend_duration_seconds",
                "Latency of key backend calls in seconds.",
            )
            .buckets(LATENCY_BUCKETS.to_vec()),
            labels,
        )?;
        let cost_vec = CounterVec::new(
            Opts::new(
                "kms_sidecar_backend_cost_dollars_total",
                "Estimated cost of the backend traffic and keys at the configured prices (default: AWS KMS list prices).",
            ),
            &["backend"],
        )?;
        registry.register(Box::new(requests.clone()))?;
        registry.register(Box::new(duration.clone()))?;
        registry.register(Box::new(cost_vec.clone()))?;
        // Every (operation, outcome) of this backend is exported at 0 from the start: both come
        // from closed enums (25 series), so "no errors" and "no data" differ in PromQL. The
        // latency histogram is not (19 bucket series each; `docs/metrics.md` has the rule).
        for op in BackendOp::ALL {
            for outcome in OUTCOMES {
                let _ = requests.with_label_values(&[backend, op.as_str(), outcome]);
            }
        }
        Ok(Self {
            backend,
            requests,
            duration,
            cost: cost_vec.with_label_values(&[backend]),
            price_per_request: price_per_10k_requests / 10_000.0,
            price_per_key_second: price_per_key_month / (30.0 * 86_400.0),
            request_cells: (0..BackendOp::ALL.len() * OUTCOMES.len())
                .map(|_| OnceLock::new())
                .collect(),
        })
    }

    /// The metric family names this module exports.
    pub fn family_names() -> [&'static str; 3] {
        [
            "kms_sidecar_backend_requests_total",
            "kms_sidecar_backend_duration_seconds",
            "kms_sidecar_backend_cost_dollars_total",
        ]
    }

    /// Records one backend call.
    pub fn record(&self, op: BackendOp, outcome: Option<BackendErrorKind>, elapsed: Duration) {
        let o = outcome_slot(outcome);
        let slot = op as usize * OUTCOMES.len() + o;
        if let Some(cell) = self.request_cells.get(slot) {
            let (count, hist) = cell.get_or_init(|| {
                let labels = [self.backend, op.as_str(), OUTCOMES[o]];
                (
                    self.requests.with_label_values(&labels),
                    self.duration.with_label_values(&labels),
                )
            });
            count.inc();
            hist.observe(elapsed.as_secs_f64());
        }
        self.cost.inc_by(self.price_per_request);
    }

    /// Adds the key-storage cost of `keys` keys held for `elapsed`.
    pub fn charge_keys(&self, keys: usize, elapsed: Duration) {
        self.cost
            .inc_by(keys as f64 * self.price_per_key_second * elapsed.as_secs_f64());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_outcomes_and_cost() {
        let registry = Registry::new();
        let m = BackendMetrics::register(&registry, "embedded", 0.03, 1.0).unwrap();
        for _ in 0..10_000 {
            m.record(BackendOp::Encrypt, None, Duration::from_micros(10));
        }
        m.record(
            BackendOp::Decrypt,
            Some(BackendErrorKind::InvalidCiphertext),
            Duration::from_micros(10),
        );
        m.charge_keys(2, Duration::from_secs(30 * 86_400));
        let text = String::from_utf8(crate::observe::metrics::render(&registry)).unwrap();
        assert!(text.contains(
            "kms_sidecar_backend_requests_total{backend=\"embedded\",operation=\"encrypt\",outcome=\"ok\"} 10000\n"
        ));
        assert!(text.contains(
            "kms_sidecar_backend_requests_total{backend=\"embedded\",operation=\"decrypt\",outcome=\"invalid_ciphertext\"} 1\n"
        ));
        let cost: f64 = text
            .lines()
            .find_map(|l| {
                l.strip_prefix("kms_sidecar_backend_cost_dollars_total{backend=\"embedded\"} ")
            })
            .unwrap()
            .parse()
            .unwrap();
        // 10,001 requests at $0.03/10k plus 2 key-months at $1.
        assert!((cost - (0.030003 + 2.0)).abs() < 1e-6, "{cost}");
    }
}
