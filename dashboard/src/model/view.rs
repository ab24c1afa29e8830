//! The row types the views draw (breaker state, backend, latency, limit, throttling and cache
//! rows) and the user's settings, kept apart from the arithmetic in `derive.rs` that fills them.

use super::sli::Health;

/// Circuit breaker state as the metric encodes it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Circuit {
    Closed,
    HalfOpen,
    Open,
}

impl Circuit {
    pub(super) fn from_gauge(v: f64) -> Option<Self> {
        match v.round() as i64 {
            0 => Some(Self::Closed),
            1 => Some(Self::HalfOpen),
            2 => Some(Self::Open),
            _ => None,
        }
    }

    pub(super) fn from_status(s: &str) -> Option<Self> {
        match s {
            "closed" => Some(Self::Closed),
            "half_open" => Some(Self::HalfOpen),
            "open" => Some(Self::Open),
            _ => None,
        }
    }

    /// Lowercase label.
    pub fn label(self) -> &'static str {
        match self {
            Self::Closed => "closed",
            Self::HalfOpen => "half-open",
            Self::Open => "open",
        }
    }

    /// Traffic light.
    pub fn health(self) -> Health {
        match self {
            Self::Closed => Health::Good,
            Self::HalfOpen => Health::Warn,
            Self::Open => Health::Bad,
        }
    }
}

/// One backend row (Overview breakers, Cache and backend table).
#[derive(Clone, Debug, PartialEq)]
pub struct BackendRow {
    pub backend: String,
    pub circuit: Option<Circuit>,
    pub calls: Option<f64>,
    pub errors: Option<f64>,
    pub retries: Option<f64>,
    pub transitions: Option<f64>,
    pub cost: Option<f64>,
}

/// One operation's latency over the window.
#[derive(Clone, Debug, PartialEq)]
pub struct OpLatency {
    pub operation: String,
    pub calls: f64,
    pub p50: Option<f64>,
    pub p95: Option<f64>,
    pub p99: Option<f64>,
}

/// A configured rate limit and how close traffic is to it.
#[derive(Clone, Debug, PartialEq)]
pub struct LimitRow {
    pub scope: String,
    pub name: String,
    pub rate_per_second: f64,
    pub burst: Option<f64>,
    /// Observed rate over the last minute, where a metric measures the limited thing.
    pub observed: Option<f64>,
    /// The busiest whole minute of the window (calls per second), where measured exactly.
    pub peak: Option<f64>,
    /// `1 - observed / limit`.
    pub headroom: Option<f64>,
    /// How `observed` relates to the true rate (principals have no request counter of their own).
    pub bound: Bound,
    /// The principal whose rate this row shows, for a limit shared by several (`default`).
    pub principal: Option<String>,
}

/// Whether an observed rate is measured or a bound.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Bound {
    /// Measured by a counter of exactly the limited calls.
    Exact,
    /// At least this much: a throttled principal asked for its limit plus what was refused.
    AtLeast,
    /// At most this much: an unthrottled principal's calls are a part of all calls.
    AtMost,
}

/// Throttled calls of one (scope, principal).
#[derive(Clone, Debug, PartialEq)]
pub struct ThrottleRow {
    pub scope: String,
    pub principal: String,
    pub count: f64,
    pub per_second: f64,
}

/// One cache's numbers.
#[derive(Clone, Debug, PartialEq)]
pub struct CacheRow {
    pub cache: String,
    pub hit_ratio: Option<f64>,
    pub requests: Option<f64>,
    pub entries: Option<f64>,
    pub stale: Option<f64>,
}

/// State of an admin endpoint across all sources.
#[derive(Clone, Debug, PartialEq)]
pub enum EndpointState {
    Waiting,
    Ok,
    NotServed,
    Unsupported,
    Failed(String),
}

/// Where the rotation rows came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RotationSource {
    Status,
    Metrics,
    None,
}

/// What the user chose.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Settings {
    /// The time window the views summarise, in seconds (5 min .. 24 h).
    pub window_secs: f64,
    /// Availability objective, e.g. 0.999.
    pub slo: f64,
    /// p95 latency target in seconds (amber above, red above twice).
    pub p95_target_secs: f64,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            window_secs: 3600.0,
            slo: 0.999,
            p95_target_secs: 0.025,
        }
    }
}
