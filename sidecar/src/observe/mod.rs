//! What the sidecar tells its operators: request metrics, unauthorized-access metrics, the audit
//! log, traces and logs. Each module registers its own families in a registry that is passed
//! explicitly; the backend's, the keys' and the limits' families live with their modules, and
//! `core::metrics` gathers them all in one registry.

pub mod audit;
pub mod history;
pub mod metrics;
pub mod security;
pub mod telemetry;

/// Whether the per-request metrics (request counter and histogram, per-key usage, cache hits) are
/// recorded. Always true, except in a build with the `bench-noop-metrics` feature, which exists
/// only to measure what recording costs (BENCHMARKS.md); never ship that build.
pub const RECORD: bool = !cfg!(feature = "bench-noop-metrics");

use crate::keys::metrics::RotationPolicy;

/// Settings for metrics that need them.
#[derive(Debug, Clone, Copy)]
pub struct MetricsSettings {
    /// Keys beyond this count share the `other` key label.
    pub max_keys: usize,
    pub rotation: RotationPolicy,
    pub price_per_10k_requests: f64,
    pub price_per_key_month: f64,
}

/// Log line format.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Text,
    Json,
}
