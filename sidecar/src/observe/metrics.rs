//! Request metrics from the contract in DESIGN.md:
//! `kms_sidecar_requests_total{frontend,operation,outcome}` and
//! `kms_sidecar_request_duration_seconds{frontend,operation,cache}`.
//!
//! Label values come only from enums (front-end, operation, KMS error type, cache outcome), so
//! cardinality is
//! fixed. Series handles are resolved once per label combination and kept in lock-free tables, so the
//! per-request cost is an index and an atomic add, with no string formatting or map lookup.

use std::sync::OnceLock;
use std::time::Duration;

use prometheus::{HistogramOpts, HistogramVec, IntCounter, IntCounterVec, Opts, Registry};

use crate::cache::CacheOutcome;
use crate::kms::{ErrorKind, Frontend, Operation};

pub use crate::kms::LATENCY_BUCKETS;

/// The `operation` label for a request whose target named no known operation.
const UNKNOWN_OPERATION: &str = "unknown";

fn op_slot(op: Option<Operation>) -> usize {
    op.map_or(Operation::ALL.len(), Operation::index)
}

fn op_label(slot: usize) -> &'static str {
    Operation::ALL
        .get(slot)
        .map_or(UNKNOWN_OPERATION, |op| op.as_str())
}

fn outcome_slot(outcome: Option<ErrorKind>) -> usize {
    outcome.map_or(0, |k| k as usize + 1)
}

/// Request counters and latency histograms.
#[derive(Debug)]
pub struct RequestMetrics {
    requests: IntCounterVec,
    duration: HistogramVec,
    request_cells: Box<[OnceLock<IntCounter>]>,
    duration_cells: Box<[OnceLock<prometheus::Histogram>]>,
}

const OUTCOMES: usize = ErrorKind::ALL.len() + 1;
const OPS: usize = Operation::ALL.len() + 1;
const FRONTENDS: usize = Frontend::ALL.len();
const CACHES: usize = CacheOutcome::ALL.len();

impl RequestMetrics {
    pub fn register(registry: &Registry) -> prometheus::Result<Self> {
        let requests = IntCounterVec::new(
            Opts::new(
                "kms_sidecar_requests_total",
                "Requests by front-end, operation and outcome (ok or the KMS error type).",
            ),
            &["frontend", "operation", "outcome"],
        )?;
        let duration = HistogramVec::new(
            HistogramOpts::new(
                "kms_sidecar_request_duration_seconds",
                "Request latency in seconds, from the first byte read to the response, by front-end, operation and cache outcome.",
            )
            .buckets(LATENCY_BUCKETS.to_vec()),
            &["frontend", "operation", "cache"],
        )?;
        registry.register(Box::new(requests.clone()))?;
        registry.register(Box::new(duration.clone()))?;
        Ok(Self {
            requests,
            duration,
            request_cells: (0..FRONTENDS * OPS * OUTCOMES)
                .map(|_| OnceLock::new())
                .collect(),
            duration_cells: (0..FRONTENDS * OPS * CACHES)
                .map(|_| OnceLock::new())
                .collect(),
        })
    }

    /// The metric family names this module exports.
    pub fn family_names() -> [&'static str; 2] {
        [
            "kms_sidecar_requests_total",
            "kms_sidecar_request_duration_seconds",
        ]
    }

    /// Records one finished request.
    pub fn record(
        &self,
        frontend: Frontend,
        op: Option<Operation>,
        outcome: Option<ErrorKind>,
        cache: CacheOutcome,
        elapsed: Duration,
    ) {
        if !super::RECORD {
            return;
        }
        let f = frontend as usize;
        let op = op_slot(op);
        let out = outcome_slot(outcome);
        if let Some(cell) = self.request_cells.get((f * OPS + op) * OUTCOMES + out) {
            cell.get_or_init(|| {
                let outcome = outcome.map_or("ok", ErrorKind::name);
                self.requests
                    .with_label_values(&[frontend.as_str(), op_label(op), outcome])
            })
            .inc();
        }
        let c = cache as usize;
        if let Some(cell) = self.duration_cells.get((f * OPS + op) * CACHES + c) {
            cell.get_or_init(|| {
                self.duration.with_label_values(&[
                    frontend.as_str(),
                    op_label(op),
                    CacheOutcome::ALL[c].as_str(),
                ])
            })
            .observe(elapsed.as_secs_f64());
        }
    }
}

/// Renders a registry in the Prometheus text format.
pub fn render(registry: &Registry) -> Vec<u8> {
    let mut out = Vec::with_capacity(16 * 1024);
    let encoder = prometheus::TextEncoder::new();
    if let Err(e) = prometheus::Encoder::encode(&encoder, &registry.gather(), &mut out) {
        tracing::error!(error = %e, "metrics encoding failed");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_exact_series() {
        let registry = Registry::new();
        let m = RequestMetrics::register(&registry).unwrap();
        m.record(
            Frontend::AwsJson,
            Some(Operation::Encrypt),
            None,
            CacheOutcome::None,
            Duration::from_micros(70),
        );
        m.record(
            Frontend::AwsJson,
            Some(Operation::Encrypt),
            None,
            CacheOutcome::None,
            Duration::from_millis(2),
        );
        m.record(
            Frontend::AwsJson,
            Some(Operation::Decrypt),
            Some(ErrorKind::InvalidCiphertext),
            CacheOutcome::Miss,
            Duration::from_micros(10),
        );
        m.record(
            Frontend::AwsJson,
            None,
            Some(ErrorKind::UnknownOperation),
            CacheOutcome::None,
            Duration::from_micros(10),
        );
        m.record(
            Frontend::KmsV2,
            Some(Operation::Encrypt),
            None,
            CacheOutcome::None,
            Duration::from_micros(70),
        );
        let text = String::from_utf8(render(&registry)).unwrap();
        assert!(text.contains(
            "kms_sidecar_requests_total{frontend=\"kmsv2\",operation=\"Encrypt\",outcome=\"ok\"} 1\n"
        ));
        assert!(
            text.contains("kms_sidecar_requests_total{frontend=\"aws_json\",operation=\"Encrypt\",outcome=\"ok\"} 2\n"),
            "{text}"
        );
        assert!(text.contains(
            "kms_sidecar_requests_total{frontend=\"aws_json\",operation=\"Decrypt\",outcome=\"InvalidCiphertextException\"} 1\n"
        ));
        assert!(text.contains(
            "kms_sidecar_requests_total{frontend=\"aws_json\",operation=\"unknown\",outcome=\"UnknownOperationException\"} 1\n"
        ));
        assert!(text.contains(
            "kms_sidecar_request_duration_seconds_bucket{cache=\"none\",frontend=\"aws_json\",operation=\"Encrypt\",le=\"0.0001\"} 1\n"
        ));
        assert!(text.contains(
            "kms_sidecar_request_duration_seconds_bucket{cache=\"none\",frontend=\"aws_json\",operation=\"Encrypt\",le=\"0.0025\"} 2\n"
        ));
        assert!(text.contains(
            "kms_sidecar_request_duration_seconds_count{cache=\"miss\",frontend=\"aws_json\",operation=\"Decrypt\"} 1\n"
        ));
    }
}
