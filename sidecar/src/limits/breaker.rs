//! A circuit breaker per backend (pipeline step 6): when the backend keeps failing, stop sending it
//! calls for a cool-down, so callers fail fast instead of queueing on a dead dependency and the
//! backend gets room to recover.
//!
//! Closed: calls flow; it opens on `consecutive_failures` retryable failures in a row, or when at least
//! `min_requests` calls in the last `window` failed at `failure_ratio` or more. Open: every call is
//! refused with [`Open`] until `cool_down` has passed. Half-open: `half_open_probes` calls go through;
//! when all of them succeed it closes, when one fails it opens again for another cool-down.
//!
//! Only retryable backend errors ([`BackendError::is_retryable`]) are failures: a wrong ciphertext or
//! missing key material is an answer from a healthy backend and counts as a success. A backend that
//! throttles ([`BackendError::is_backend_throttle`]) is up too, but says nothing about recovery: it
//! counts as neither (the outbound budget, not the breaker, is the tool for a quota).
//! A [`Permit`] dropped without a report (the caller was cancelled) counts as neither; a probe's slot
//! is freed. Timeouts must therefore be reported as failures by whoever applies them.
//! Reports from permits issued before the last state change are ignored, so a slow call from before an
//! outage cannot close a breaker that has opened since.

use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use prometheus::{IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry};
use tokio::time::Instant;

use super::window::Sliding;
use crate::backend::BackendError;

/// The breaker's settings.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BreakerSpec {
    /// Retryable failures in a row that open the breaker.
    pub consecutive_failures: u32,
    /// Share of failed calls in `window` that opens it, once `min_requests` calls were seen.
    pub failure_ratio: f64,
    pub window: Duration,
    pub min_requests: u32,
    /// How long it stays open before letting probes through.
    pub cool_down: Duration,
    /// Calls let through while half-open; all must succeed to close.
    pub half_open_probes: u32,
}

impl Default for BreakerSpec {
    fn default() -> Self {
        Self {
            consecutive_failures: 5,
            failure_ratio: 0.5,
            window: Duration::from_secs(10),
            min_requests: 20,
            cool_down: Duration::from_secs(5),
            half_open_probes: 3,
        }
    }
}

/// Why a [`BreakerSpec`] was rejected.
#[derive(Debug, Clone, Copy, PartialEq, thiserror::Error)]
pub enum BreakerSpecError {
    #[error("circuit breaker: consecutive_failures must be at least 1")]
    ConsecutiveFailures,
    #[error("circuit breaker: failure_ratio must be in (0, 1], got {0}")]
    FailureRatio(f64),
    #[error("circuit breaker: window must be between 1s and 1h, got {0:?}")]
    Window(Duration),
    #[error("circuit breaker: min_requests must be at least 1")]
    MinRequests,
    #[error("circuit breaker: cool_down must be between 1ms and 1h, got {0:?}")]
    CoolDown(Duration),
    #[error("circuit breaker: half_open_probes must be between 1 and 100, got {0}")]
    Probes(u32),
}

/// A [`BreakerSpec`] that passed [`BreakerSpec::validate`]; only that builds one, so a breaker
/// made from it needs no second check.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ValidBreakerSpec(BreakerSpec);

impl ValidBreakerSpec {
    pub fn spec(&self) -> &BreakerSpec {
        &self.0
    }
}

impl TryFrom<BreakerSpec> for ValidBreakerSpec {
    type Error = BreakerSpecError;

    fn try_from(spec: BreakerSpec) -> Result<Self, BreakerSpecError> {
        spec.validate()?;
        Ok(Self(spec))
    }
}

impl BreakerSpec {
    pub fn validate(&self) -> Result<(), BreakerSpecError> {
        let hour = Duration::from_secs(3600);
        if self.consecutive_failures == 0 {
            return Err(BreakerSpecError::ConsecutiveFailures);
        }
        if !(self.failure_ratio > 0.0 && self.failure_ratio <= 1.0) {
            return Err(BreakerSpecError::FailureRatio(self.failure_ratio));
        }
        if !(Duration::from_secs(1)..=hour).contains(&self.window) {
            return Err(BreakerSpecError::Window(self.window));
        }
        if self.min_requests == 0 {
            return Err(BreakerSpecError::MinRequests);
        }
        if !(Duration::from_millis(1)..=hour).contains(&self.cool_down) {
            return Err(BreakerSpecError::CoolDown(self.cool_down));
        }
        if !(1..=100).contains(&self.half_open_probes) {
            return Err(BreakerSpecError::Probes(self.half_open_probes));
        }
        Ok(())
    }
}

/// The breaker's state, as exported in `circuit_state`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    Closed,
    HalfOpen,
    Open,
}

impl State {
    pub const ALL: [State; 3] = [State::Closed, State::HalfOpen, State::Open];

    pub const fn as_str(self) -> &'static str {
        match self {
            State::Closed => "closed",
            State::HalfOpen => "half_open",
            State::Open => "open",
        }
    }

    /// The gauge value: 0 closed, 1 half-open, 2 open.
    pub const fn gauge(self) -> i64 {
        match self {
            State::Closed => 0,
            State::HalfOpen => 1,
            State::Open => 2,
        }
    }
}

/// The breaker refused a call.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("circuit open")]
pub struct Open;

#[derive(Debug)]
enum Phase {
    Closed,
    Open { until: Instant },
    HalfOpen { in_flight: u32, succeeded: u32 },
}

#[derive(Debug)]
struct Inner {
    phase: Phase,
    /// Bumped on every state change; permits from an older generation are ignored.
    generation: u64,
    consecutive: u32,
    /// Successes (a) and failures (b) while closed.
    window: Sliding,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    Success,
    Failure,
    Dropped,
}

/// `circuit_state{backend}` and `circuit_transitions_total{backend,to}`.
#[derive(Debug, Clone)]
pub struct BreakerMetrics {
    state: IntGaugeVec,
    transitions: IntCounterVec,
    /// Where transitions are logged for the dashboard's event markers, when set.
    events: Option<crate::observe::history::Events>,
}

impl BreakerMetrics {
    pub fn register(registry: &Registry) -> prometheus::Result<Self> {
        let state = IntGaugeVec::new(
            Opts::new(
                "kms_sidecar_circuit_state",
                "Circuit breaker state per backend: 0 closed, 1 half-open, 2 open.",
            ),
            &["backend"],
        )?;
        let transitions = IntCounterVec::new(
            Opts::new(
                "kms_sidecar_circuit_transitions_total",
                "Circuit breaker state changes per backend, by the state entered.",
            ),
            &["backend", "to"],
        )?;
        registry.register(Box::new(state.clone()))?;
        registry.register(Box::new(transitions.clone()))?;
        Ok(Self {
            state,
            transitions,
            events: None,
        })
    }

    /// Logs every transition of breakers built from these metrics in `events` too.
    pub fn with_events(mut self, events: crate::observe::history::Events) -> Self {
        self.events = Some(events);
        self
    }

    /// The metric family names this module exports.
    pub fn family_names() -> [&'static str; 2] {
        [
            "kms_sidecar_circuit_state",
            "kms_sidecar_circuit_transitions_total",
        ]
    }
}

/// A circuit breaker for one backend.
#[derive(Debug)]
pub struct Breaker {
    spec: BreakerSpec,
    inner: Mutex<Inner>,
    state_gauge: IntGauge,
    /// Indexed like [`State::ALL`].
    transitions: [IntCounter; 3],
    /// The event log and this breaker's backend name.
    events: Option<(crate::observe::history::Events, String)>,
}

impl Breaker {
    /// A closed breaker for `backend`, its metrics resolved once.
    pub fn new(
        backend: &str,
        spec: BreakerSpec,
        metrics: &BreakerMetrics,
    ) -> Result<Self, BreakerSpecError> {
        Ok(Self::from_valid(
            backend,
            ValidBreakerSpec::try_from(spec)?,
            metrics,
        ))
    }

    /// [`Breaker::new`] for a spec validated earlier (by the configuration).
    pub fn from_valid(backend: &str, spec: ValidBreakerSpec, metrics: &BreakerMetrics) -> Self {
        let spec = spec.0;
        let state_gauge = metrics.state.with_label_values(&[backend]);
        state_gauge.set(State::Closed.gauge());
        let transitions = State::ALL.map(|s| {
            metrics
                .transitions
                .with_label_values(&[backend, s.as_str()])
        });
        Self {
            spec,
            inner: Mutex::new(Inner {
                phase: Phase::Closed,
                generation: 0,
                consecutive: 0,
                window: Sliding::new(spec.window, Instant::now()),
            }),
            state_gauge,
            transitions,
            events: metrics.events.clone().map(|e| (e, backend.to_string())),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The current state (an open breaker whose cool-down is over reads as half-open).
    pub fn state(&self) -> State {
        let mut inner = self.lock();
        self.expire_open(&mut inner, Instant::now());
        match inner.phase {
            Phase::Closed => State::Closed,
            Phase::Open { .. } => State::Open,
            Phase::HalfOpen { .. } => State::HalfOpen,
        }
    }

    /// Lets a call through, or refuses it while open (or while half-open with every probe taken).
    pub fn allow(&self) -> Result<Permit<'_>, Open> {
        let mut inner = self.lock();
        self.expire_open(&mut inner, Instant::now());
        let generation = inner.generation;
        let probe = match &mut inner.phase {
            Phase::Closed => false,
            Phase::Open { .. } => return Err(Open),
            Phase::HalfOpen {
                in_flight,
                succeeded,
            } => {
                if *in_flight + *succeeded >= self.spec.half_open_probes {
                    return Err(Open);
                }
                *in_flight += 1;
                true
            }
        };
        Ok(Permit {
            breaker: self,
            generation,
            probe,
            reported: false,
        })
    }

    fn expire_open(&self, inner: &mut Inner, now: Instant) {
        if let Phase::Open { until } = inner.phase
            && now >= until
        {
            self.transition(
                inner,
                Phase::HalfOpen {
                    in_flight: 0,
                    succeeded: 0,
                },
                now,
            );
        }
    }

    fn transition(&self, inner: &mut Inner, to: Phase, now: Instant) {
        let state = match to {
            Phase::Closed => State::Closed,
            Phase::Open { .. } => State::Open,
            Phase::HalfOpen { .. } => State::HalfOpen,
        };
        inner.phase = to;
        inner.generation += 1;
        inner.consecutive = 0;
        inner.window.clear(now);
        self.state_gauge.set(state.gauge());
        self.transitions[state as usize].inc();
        if let Some((events, backend)) = &self.events {
            events.record(
                crate::observe::history::EventKind::Breaker,
                format!("{backend} breaker {}", state.as_str()),
            );
        }
        match state {
            State::Open => tracing::warn!(state = state.as_str(), "circuit breaker opened"),
            _ => tracing::info!(state = state.as_str(), "circuit breaker state changed"),
        }
    }

    fn report(&self, generation: u64, probe: bool, outcome: Outcome) {
        let now = Instant::now();
        let mut guard = self.lock();
        let inner: &mut Inner = &mut guard;
        if inner.generation != generation {
            return;
        }
        match &mut inner.phase {
            Phase::Closed => match outcome {
                Outcome::Success => {
                    inner.consecutive = 0;
                    inner.window.add_a(now, 1);
                }
                Outcome::Failure => {
                    inner.consecutive = inner.consecutive.saturating_add(1);
                    inner.window.add_b(now, 1);
                    let (ok, failed) = inner.window.totals(now);
                    let total = ok + failed;
                    let ratio_trips = total >= u64::from(self.spec.min_requests)
                        && failed as f64 >= self.spec.failure_ratio * total as f64;
                    if inner.consecutive >= self.spec.consecutive_failures || ratio_trips {
                        let until = now + self.spec.cool_down;
                        self.transition(inner, Phase::Open { until }, now);
                    }
                }
                Outcome::Dropped => {}
            },
            Phase::HalfOpen {
                in_flight,
                succeeded,
            } if probe => {
                *in_flight = in_flight.saturating_sub(1);
                match outcome {
                    Outcome::Success => {
                        *succeeded += 1;
                        if *succeeded >= self.spec.half_open_probes {
                            self.transition(inner, Phase::Closed, now);
                        }
                    }
                    Outcome::Failure => {
                        let until = now + self.spec.cool_down;
                        self.transition(inner, Phase::Open { until }, now);
                    }
                    Outcome::Dropped => {}
                }
            }
            Phase::HalfOpen { .. } | Phase::Open { .. } => {}
        }
    }
}

/// Leave to make one call; report how it went. Dropping it unreported counts as neither.
#[derive(Debug)]
#[must_use = "a permit reports the call's outcome to the breaker"]
pub struct Permit<'a> {
    breaker: &'a Breaker,
    generation: u64,
    probe: bool,
    reported: bool,
}

impl Permit<'_> {
    fn finish(mut self, outcome: Outcome) {
        self.reported = true;
        self.breaker.report(self.generation, self.probe, outcome);
    }

    pub fn success(self) {
        self.finish(Outcome::Success);
    }

    pub fn failure(self) {
        self.finish(Outcome::Failure);
    }

    /// Reports a backend call: a throttle is neither, another retryable error a failure, anything
    /// else a success.
    pub fn record<T>(self, result: &Result<T, BackendError>) {
        match result {
            Err(e) if e.is_backend_throttle() => self.finish(Outcome::Dropped),
            Err(e) if e.is_retryable() => self.failure(),
            _ => self.success(),
        }
    }
}

impl Drop for Permit<'_> {
    fn drop(&mut self) {
        if !self.reported {
            self.breaker
                .report(self.generation, self.probe, Outcome::Dropped);
        }
    }
}

#[cfg(test)]
#[path = "breaker_tests.rs"]
mod tests;
