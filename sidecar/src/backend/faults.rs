//! Fault injection for tests and game days: a [`Backend`] wrapper that adds latency, random errors,
//! a full outage or throttling to calls into the real backend, on command from the admin API
//! (`/v1/faults`). It exists so that the breaker, retries, stale-if-error and the alerts can be
//! exercised against a live sidecar without breaking a real HSM or KMS.
//!
//! It sits directly around the raw backend, below [`Observed`](super::observed::Observed):
//! `Resilient(Observed(Faults(real)))`. An injected failure therefore looks exactly like a real one
//! to the retry loop, the circuit breaker and `backend_requests_total`; only
//! `faults_injected_total{backend,fault}` and a warn log line saying "injected" tell them apart, so a
//! game day is never mistaken for an incident. The log line is rate-limited (one a second per fault
//! kind, with the count not logged since the last): under load, faults come thousands a second, and
//! the counter already has the exact numbers.
//!
//! It is off by default: without `faults_enabled` the wrapper is not in the stack at all. When it is
//! in the stack and no fault is set, a call costs one relaxed atomic load. The current spec is an
//! [`ArcSwapOption`], so changing it never blocks a call.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use arc_swap::ArcSwapOption;
use async_trait::async_trait;
use prometheus::{IntCounter, IntCounterVec, Opts, Registry};
use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

use super::{Backend, BackendError, BackendErrorKind, KeyRef};

/// The longest latency (and jitter) a spec may add, so a typo cannot park every call for hours.
pub const MAX_LATENCY_MS: u64 = 60_000;

/// The backend calls a fault can be scoped to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FaultOp {
    #[serde(alias = "create")]
    CreateVersion,
    Encrypt,
    Decrypt,
    Destroy,
    Random,
}

impl FaultOp {
    const fn bit(self) -> u8 {
        1 << self as u8
    }

    pub const fn as_str(self) -> &'static str {
        match self {
            FaultOp::CreateVersion => "create_version",
            FaultOp::Encrypt => "encrypt",
            FaultOp::Decrypt => "decrypt",
            FaultOp::Destroy => "destroy",
            FaultOp::Random => "random",
        }
    }
}

/// How an outage shows itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OutageMode {
    /// Every call fails at once as unavailable (a refused connection).
    Fail,
    /// Every call hangs until the backend timeout, then fails (a black-holed network).
    Hang,
}

/// What to inject, as `PUT /v1/faults` takes it and `GET /v1/faults` shows it.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FaultSpec {
    /// The backend this spec is for; when given it must name the configured backend.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backend: Option<String>,
    /// Added to every call in scope before it runs.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub latency_ms: u64,
    /// A uniform random extra delay in `[0, jitter_ms]`, on top of `latency_ms`.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub jitter_ms: u64,
    /// Share of calls in scope that fail as unavailable (retryable), 0..=1.
    #[serde(default, skip_serializing_if = "is_zero_f")]
    pub error_rate: f64,
    /// Share of calls in scope that the backend refuses for its quota (upstream throttling), 0..=1.
    #[serde(default, skip_serializing_if = "is_zero_f")]
    pub throttle_rate: f64,
    /// Every call in scope fails.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub outage: Option<OutageMode>,
    /// The calls affected; absent: all of them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub operations: Option<Vec<FaultOp>>,
}

fn is_zero(v: &u64) -> bool {
    *v == 0
}

fn is_zero_f(v: &f64) -> bool {
    *v == 0.0
}

/// Why a fault spec was refused (the admin API answers 400 with this message).
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum FaultSpecError {
    #[error("invalid fault spec: {0}")]
    Json(String),
    #[error("{field} must be a number in [0, 1], got {value}")]
    Rate { field: &'static str, value: f64 },
    #[error("{field} must be at most {MAX_LATENCY_MS} ms, got {value}")]
    Latency { field: &'static str, value: u64 },
    #[error("operations must name at least one operation when given")]
    NoOperations,
    #[error("this sidecar's backend is {configured:?}, not {given:?}")]
    Backend { configured: String, given: String },
    #[error(
        "the spec injects nothing: set latency_ms, jitter_ms, error_rate, throttle_rate or outage (DELETE /v1/faults clears)"
    )]
    Empty,
}

impl FaultSpec {
    /// Parses and validates a JSON body for `backend`.
    pub fn parse(body: &[u8], backend: &str) -> Result<Self, FaultSpecError> {
        let spec: FaultSpec =
            serde_json::from_slice(body).map_err(|e| FaultSpecError::Json(e.to_string()))?;
        spec.validate(backend)?;
        Ok(spec)
    }

    pub fn validate(&self, backend: &str) -> Result<(), FaultSpecError> {
        if let Some(given) = &self.backend
            && given != backend
        {
            return Err(FaultSpecError::Backend {
                configured: backend.to_string(),
                given: given.clone(),
            });
        }
        for (field, value) in [
            ("error_rate", self.error_rate),
            ("throttle_rate", self.throttle_rate),
        ] {
            if !(0.0..=1.0).contains(&value) {
                return Err(FaultSpecError::Rate { field, value });
            }
        }
        for (field, value) in [
            ("latency_ms", self.latency_ms),
            ("jitter_ms", self.jitter_ms),
        ] {
            if value > MAX_LATENCY_MS {
                return Err(FaultSpecError::Latency { field, value });
            }
        }
        if self.operations.as_ref().is_some_and(Vec::is_empty) {
            return Err(FaultSpecError::NoOperations);
        }
        if self.latency_ms == 0
            && self.jitter_ms == 0
            && self.error_rate == 0.0
            && self.throttle_rate == 0.0
            && self.outage.is_none()
        {
            return Err(FaultSpecError::Empty);
        }
        Ok(())
    }
}

/// The kinds of injected fault, as the `fault` label.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FaultKind {
    Latency,
    Error,
    Outage,
    Throttle,
}

impl FaultKind {
    pub const ALL: [FaultKind; 4] = [
        FaultKind::Latency,
        FaultKind::Error,
        FaultKind::Outage,
        FaultKind::Throttle,
    ];

    pub const fn as_str(self) -> &'static str {
        match self {
            FaultKind::Latency => "latency",
            FaultKind::Error => "error",
            FaultKind::Outage => "outage",
            FaultKind::Throttle => "throttle",
        }
    }
}

/// The source of an injected failure, so logs of the error say what it was.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("injected fault: {}", .0.as_str())]
pub struct Injected(pub FaultKind);

/// `faults_injected_total{backend,fault}`.
#[derive(Debug, Clone)]
pub struct FaultMetrics {
    injected: IntCounterVec,
}

impl FaultMetrics {
    pub fn register(registry: &Registry) -> prometheus::Result<Self> {
        let injected = IntCounterVec::new(
            Opts::new(
                "kms_sidecar_faults_injected_total",
                "Faults injected into backend calls through /v1/faults (never a real failure).",
            ),
            &["backend", "fault"],
        )?;
        registry.register(Box::new(injected.clone()))?;
        Ok(Self { injected })
    }

    pub fn family_names() -> [&'static str; 1] {
        ["kms_sidecar_faults_injected_total"]
    }

    /// Counters of one backend, resolved once (so they show as 0 from the start).
    pub fn for_backend(&self, backend: &str) -> FaultCounters {
        FaultCounters(
            FaultKind::ALL.map(|k| self.injected.with_label_values(&[backend, k.as_str()])),
        )
    }
}

/// Pre-resolved counters, indexed like [`FaultKind::ALL`].
#[derive(Debug, Clone)]
pub struct FaultCounters([IntCounter; 4]);

impl FaultCounters {
    fn inc(&self, kind: FaultKind) {
        self.0[kind as usize].inc();
    }

    /// Faults injected so far, by kind.
    pub fn get(&self, kind: FaultKind) -> u64 {
        self.0[kind as usize].get()
    }
}

/// How often each fault kind may log its "injected backend fault" line.
const LOG_INTERVAL: Duration = Duration::from_secs(1);

/// At most one log line per interval: the first event at or after the deadline is logged and moves
/// the deadline on; the others only bump a counter that the next logged line reports. Lock-free, as
/// it runs on the request path: the common (suppressed) case is one load and one `fetch_add`. Time
/// is passed in, in nanoseconds from any fixed origin, so tests drive the clock.
#[derive(Debug)]
struct LogLimiter {
    interval_ns: u64,
    /// When the next line may be written.
    next_ns: AtomicU64,
    /// Events not logged since the last line.
    suppressed: AtomicU64,
}

impl LogLimiter {
    fn new(interval: Duration) -> Self {
        Self {
            interval_ns: u64::try_from(interval.as_nanos()).unwrap_or(u64::MAX),
            next_ns: AtomicU64::new(0),
            suppressed: AtomicU64::new(0),
        }
    }

    /// One event at `now_ns`: `Some(events suppressed since the last line)` if this one is to be
    /// logged, `None` if it is counted instead.
    fn admit(&self, now_ns: u64) -> Option<u64> {
        let next = self.next_ns.load(Ordering::Relaxed);
        // Of the callers that see the deadline passed, the compare-exchange lets exactly one log.
        if now_ns >= next
            && self
                .next_ns
                .compare_exchange(
                    next,
                    now_ns.saturating_add(self.interval_ns),
                    Ordering::Relaxed,
                    Ordering::Relaxed,
                )
                .is_ok()
        {
            return Some(self.suppressed.swap(0, Ordering::Relaxed));
        }
        self.suppressed.fetch_add(1, Ordering::Relaxed);
        None
    }

    /// The events not logged since the last line, reset to zero (reported when injection stops,
    /// since no later line will).
    fn take_suppressed(&self) -> u64 {
        self.suppressed.swap(0, Ordering::Relaxed)
    }
}

/// A validated spec in the form the hot path reads.
#[derive(Debug)]
struct Active {
    spec: FaultSpec,
    /// [`FaultOp::bit`]s in scope.
    ops: u8,
    latency: Duration,
    jitter_ms: u64,
    /// Rates as thresholds on a uniform `u64`.
    error: u64,
    throttle: u64,
}

fn threshold(rate: f64) -> u64 {
    if rate >= 1.0 {
        u64::MAX
    } else {
        (rate * u64::MAX as f64) as u64
    }
}

/// The fault injector around one backend.
#[derive(Debug)]
pub struct Faults {
    inner: Arc<dyn Backend>,
    /// Fast path: false while no spec is set.
    armed: AtomicBool,
    active: ArcSwapOption<Active>,
    /// A hanging outage gives up after this long (the backend timeout).
    hang_limit: Duration,
    counters: FaultCounters,
    /// splitmix64 state; the coin flips need spread, not secrecy.
    rng: AtomicU64,
    /// The log limiters' clock origin.
    started: Instant,
    /// One per [`FaultKind`], indexed like [`FaultKind::ALL`].
    log_limits: [LogLimiter; 4],
}

impl Faults {
    pub fn new(inner: Arc<dyn Backend>, hang_limit: Duration, metrics: &FaultMetrics) -> Self {
        let counters = metrics.for_backend(inner.name());
        let seed = getrandom::u64().unwrap_or(0x2545_F491_4F6C_DD1D);
        Self {
            inner,
            armed: AtomicBool::new(false),
            active: ArcSwapOption::empty(),
            hang_limit,
            counters,
            rng: AtomicU64::new(seed),
            started: Instant::now(),
            log_limits: FaultKind::ALL.map(|_| LogLimiter::new(LOG_INTERVAL)),
        }
    }

    /// Replaces the current spec (validated against this backend).
    pub fn set(&self, spec: FaultSpec) -> Result<(), FaultSpecError> {
        spec.validate(self.inner.name())?;
        let ops = spec
            .operations
            .as_ref()
            .map_or(u8::MAX, |ops| ops.iter().fold(0, |m, op| m | op.bit()));
        let active = Active {
            ops,
            latency: Duration::from_millis(spec.latency_ms),
            jitter_ms: spec.jitter_ms,
            error: threshold(spec.error_rate),
            throttle: threshold(spec.throttle_rate),
            spec,
        };
        tracing::warn!(backend = self.inner.name(), spec = ?active.spec, "fault injection set: backend calls will see injected faults");
        self.active.store(Some(Arc::new(active)));
        self.armed.store(true, Ordering::Release);
        Ok(())
    }

    /// Clears the spec; calls pass straight through again.
    pub fn clear(&self) {
        self.armed.store(false, Ordering::Release);
        if self.active.swap(None).is_some() {
            let suppressed: u64 = self
                .log_limits
                .iter()
                .map(LogLimiter::take_suppressed)
                .sum();
            tracing::warn!(
                backend = self.inner.name(),
                suppressed,
                "fault injection cleared: backend calls are real again"
            );
        }
    }

    /// The current spec, if any.
    pub fn spec(&self) -> Option<FaultSpec> {
        self.active.load().as_ref().map(|a| a.spec.clone())
    }

    pub fn counters(&self) -> &FaultCounters {
        &self.counters
    }

    fn next_random(&self) -> u64 {
        let mut z = self
            .rng
            .fetch_add(0x9E37_79B9_7F4A_7C15, Ordering::Relaxed)
            .wrapping_add(0x9E37_79B9_7F4A_7C15);
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// A coin that comes up true with the rate behind `threshold`.
    fn flip(&self, threshold: u64) -> bool {
        threshold == u64::MAX || (threshold > 0 && self.next_random() < threshold)
    }

    fn injected(&self, op: FaultOp, kind: FaultKind) {
        self.counters.inc(kind);
        let now_ns = u64::try_from(self.started.elapsed().as_nanos()).unwrap_or(u64::MAX);
        if let Some(suppressed) = self.log_limits[kind as usize].admit(now_ns) {
            tracing::warn!(
                backend = self.inner.name(),
                operation = op.as_str(),
                fault = kind.as_str(),
                suppressed,
                "injected backend fault"
            );
        }
    }

    /// Applies the current spec to one call of `op`: waits and/or fails as told, or lets it run.
    async fn inject(&self, op: FaultOp) -> Result<(), BackendError> {
        if !self.armed.load(Ordering::Relaxed) {
            return Ok(());
        }
        let Some(active) = self.active.load_full() else {
            return Ok(());
        };
        if active.ops & op.bit() == 0 {
            return Ok(());
        }
        let unavailable =
            |kind| BackendError::with_source(BackendErrorKind::Unavailable, Injected(kind));
        match active.spec.outage {
            Some(OutageMode::Fail) => {
                self.injected(op, FaultKind::Outage);
                return Err(unavailable(FaultKind::Outage));
            }
            Some(OutageMode::Hang) => {
                self.injected(op, FaultKind::Outage);
                // The attempt timeout above usually cuts this short; the limit keeps it bounded anyway.
                tokio::time::sleep(self.hang_limit).await;
                return Err(unavailable(FaultKind::Outage));
            }
            None => {}
        }
        if !active.latency.is_zero() || active.jitter_ms > 0 {
            let jitter = match active.jitter_ms {
                0 => 0,
                j => self.next_random() % (j + 1),
            };
            self.injected(op, FaultKind::Latency);
            tokio::time::sleep(active.latency + Duration::from_millis(jitter)).await;
        }
        if self.flip(active.throttle) {
            self.injected(op, FaultKind::Throttle);
            return Err(BackendError::throttled(Injected(FaultKind::Throttle)));
        }
        if self.flip(active.error) {
            self.injected(op, FaultKind::Error);
            return Err(unavailable(FaultKind::Error));
        }
        Ok(())
    }
}

#[async_trait]
impl Backend for Faults {
    fn name(&self) -> &'static str {
        self.inner.name()
    }

    async fn create_version(&self, key: KeyRef<'_>) -> Result<(), BackendError> {
        self.inject(FaultOp::CreateVersion).await?;
        self.inner.create_version(key).await
    }

    async fn encrypt(
        &self,
        key: KeyRef<'_>,
        aad: &[u8],
        plaintext: &[u8],
    ) -> Result<Vec<u8>, BackendError> {
        self.inject(FaultOp::Encrypt).await?;
        self.inner.encrypt(key, aad, plaintext).await
    }

    async fn decrypt(
        &self,
        key: KeyRef<'_>,
        aad: &[u8],
        sealed: &[u8],
    ) -> Result<Zeroizing<Vec<u8>>, BackendError> {
        self.inject(FaultOp::Decrypt).await?;
        self.inner.decrypt(key, aad, sealed).await
    }

    async fn destroy(&self, key_id: &str, versions: &[u32]) -> Result<(), BackendError> {
        self.inject(FaultOp::Destroy).await?;
        self.inner.destroy(key_id, versions).await
    }

    async fn random(&self, n: usize) -> Result<Zeroizing<Vec<u8>>, BackendError> {
        self.inject(FaultOp::Random).await?;
        self.inner.random(n).await
    }
}

#[cfg(test)]
#[path = "faults_tests.rs"]
mod tests;
