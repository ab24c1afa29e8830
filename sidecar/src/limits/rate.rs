//! Inbound rate limits (pipeline step 3): a global limit, a limit per principal and a limit per key,
//! each possibly with several windows, built with `governor` from a [`ValidRateSpec`].
//!
//! A call is checked scope by scope, narrowest first: principal, then key, then global; within a
//! scope, window by window. `governor` has no "test without taking", so a window that passed keeps its
//! cell when a later window refuses the call: a throttled call may cost the windows checked before the
//! one that refused it one cell each. That errs toward throttling, never toward admitting more than a
//! limit, and checking the principal first means a principal over its own limit does not eat the
//! global limit that other principals share.
//!
//! Memory and label cardinality are bounded whatever the callers send: principals are the names known
//! at build plus one shared `other`; keys get a limiter of their own up to `max_tracked_keys`, then
//! share `other`.
//!
//! Reload: a [`RateLimits`] is immutable apart from its counters; build a new one from the new spec
//! and swap it in (e.g. `ArcSwap<RateLimits>`). The new limits start with full buckets: counters reset
//! on reload, so a reload briefly allows up to one more burst per window.
//!
//! Observed rate: every call already looks its principal up here, so this is where a principal's
//! admitted calls are counted (`kms_sidecar_rate_limit_admitted_total{principal}`, the same bounded
//! names as `throttled_total`): one relaxed atomic add on a counter handle resolved when the limits
//! are built ([`RateLimits::counted`]), no lock and no allocation per call. Admitted plus throttled
//! is what a principal asked for, which the dashboard sets against its limit (headroom). The
//! handles belong to the metrics registry, so the counts survive a rebuild.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, PoisonError, RwLock};

use governor::RateLimiter;
use governor::clock::{Clock, DefaultClock};
use governor::middleware::NoOpMiddleware;
use governor::state::{InMemoryState, NotKeyed};
use prometheus::{GaugeVec, IntCounter, IntCounterVec, Opts, Registry};

use super::rate_spec::{DEFAULT, OTHER, ValidRateSpec, Window};
use crate::kms::{ErrorKind, KmsError};

/// Which limit refused a call.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Scope {
    Global,
    Principal,
    Key,
    /// The outbound budget to the backend ([`super::budget`]).
    Backend,
}

impl Scope {
    pub const ALL: [Scope; 4] = [Scope::Global, Scope::Principal, Scope::Key, Scope::Backend];

    pub const fn as_str(self) -> &'static str {
        match self {
            Scope::Global => "global",
            Scope::Principal => "principal",
            Scope::Key => "key",
            Scope::Backend => "backend",
        }
    }
}

/// A call over a limit. Becomes `ThrottlingException`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("rate exceeded ({} limit)", scope.as_str())]
pub struct Throttled {
    pub scope: Scope,
}

/// AWS KMS's message for a throttled call.
pub const THROTTLING_MESSAGE: &str = "Rate exceeded";

impl From<Throttled> for KmsError {
    fn from(t: Throttled) -> Self {
        KmsError::new(ErrorKind::Throttling, THROTTLING_MESSAGE).with_source(t)
    }
}

type Direct<C> = RateLimiter<NotKeyed, InMemoryState, C, NoOpMiddleware<<C as Clock>::Instant>>;

/// Every window of one limit; a call takes a cell from each, in order.
#[derive(Debug)]
struct Limiter<C: Clock> {
    windows: Box<[Direct<C>]>,
}

impl<C: Clock + Clone> Limiter<C> {
    /// `None` for an empty window list (that scope is unlimited).
    fn new(windows: &[Window], clock: &C) -> Option<Self> {
        if windows.is_empty() {
            return None;
        }
        Some(Self {
            windows: windows
                .iter()
                .map(|w| RateLimiter::direct_with_clock(w.quota(), clock.clone()))
                .collect(),
        })
    }

    fn check(&self, scope: Scope) -> Result<(), Throttled> {
        for w in self.windows.iter() {
            if w.check().is_err() {
                return Err(Throttled { scope });
            }
        }
        Ok(())
    }
}

/// The rate shown for a limit: the sustained rate of its shortest window (the rate a caller can
/// actually reach; longer windows such as a daily cap are checked but not shown).
fn shown_rate(windows: &[Window]) -> Option<f64> {
    windows
        .iter()
        .min_by_key(|w| w.period())
        .map(Window::per_second)
}

/// Keys without an override: a limiter each, up to a bound, then a shared one.
#[derive(Debug)]
struct TrackedKeys<C: Clock> {
    windows: Vec<Window>,
    clock: C,
    max: usize,
    map: RwLock<HashMap<Box<str>, Limiter<C>>>,
    other: Limiter<C>,
}

impl<C: Clock + Clone> TrackedKeys<C> {
    fn check(&self, key: &str) -> Result<(), Throttled> {
        {
            let map = self.map.read().unwrap_or_else(PoisonError::into_inner);
            if let Some(l) = map.get(key) {
                return l.check(Scope::Key);
            }
            if map.len() >= self.max {
                return self.other.check(Scope::Key);
            }
        }
        // A key seen for the first time: the only allocation, once per key, bounded by `max`.
        let mut map = self.map.write().unwrap_or_else(PoisonError::into_inner);
        if !map.contains_key(key) && map.len() >= self.max {
            return self.other.check(Scope::Key);
        }
        let l = map.entry(key.into()).or_insert_with(|| Limiter {
            windows: self
                .windows
                .iter()
                .map(|w| RateLimiter::direct_with_clock(w.quota(), self.clock.clone()))
                .collect(),
        });
        l.check(Scope::Key)
    }
}

/// One principal's limiter (`None`: unlimited) and its admitted-calls counter (`None` until
/// [`RateLimits::counted`]).
#[derive(Debug)]
struct PrincipalLimit<C: Clock> {
    limiter: Option<Limiter<C>>,
    admitted: Option<IntCounter>,
}

impl<C: Clock + Clone> PrincipalLimit<C> {
    fn new(windows: &[Window], clock: &C) -> Self {
        Self {
            limiter: Limiter::new(windows, clock),
            admitted: None,
        }
    }
}

/// The inbound limits. Cheap to check: a hash lookup or two and one atomic update per window, no
/// allocation on the pass path (a key's first call allocates its limiter once).
#[derive(Debug)]
pub struct RateLimits<C: Clock = DefaultClock> {
    spec: ValidRateSpec,
    global: Option<Limiter<C>>,
    principals: HashMap<Box<str>, PrincipalLimit<C>>,
    other_principals: PrincipalLimit<C>,
    key_overrides: HashMap<Box<str>, Option<Limiter<C>>>,
    tracked_keys: Option<TrackedKeys<C>>,
}

impl RateLimits<DefaultClock> {
    /// Limits on the real clock.
    pub fn new(spec: &ValidRateSpec) -> Self {
        Self::with_clock(spec, &DefaultClock::default())
    }
}

impl<C: Clock + Clone> RateLimits<C> {
    /// Limits on `clock` (tests pass `governor::clock::FakeRelativeClock`).
    pub fn with_clock(spec: &ValidRateSpec, clock: &C) -> Self {
        let tracked_keys = (!spec.key_default.is_empty()).then(|| TrackedKeys {
            windows: spec.key_default.clone(),
            clock: clock.clone(),
            max: spec.max_tracked_keys,
            map: RwLock::new(HashMap::new()),
            other: Limiter {
                windows: spec
                    .key_default
                    .iter()
                    .map(|w| RateLimiter::direct_with_clock(w.quota(), clock.clone()))
                    .collect(),
            },
        });
        Self {
            global: Limiter::new(&spec.global, clock),
            principals: spec
                .principals
                .iter()
                .map(|(name, w)| (name.clone(), PrincipalLimit::new(w, clock)))
                .collect(),
            other_principals: PrincipalLimit::new(&spec.principal_default, clock),
            key_overrides: spec
                .key_overrides
                .iter()
                .map(|(name, w)| (name.clone(), Limiter::new(w, clock)))
                .collect(),
            tracked_keys,
            spec: spec.clone(),
        }
    }

    /// Attaches each principal's `rate_limit_admitted_total` counter (exported at 0 from here on),
    /// so [`check`](Self::check) counts admitted calls. The counters live in `metrics`, so limits
    /// rebuilt for a reload and counted again continue the same series.
    #[must_use]
    pub fn counted(mut self, metrics: &RateMetrics) -> Self {
        for (name, p) in &mut self.principals {
            p.admitted = Some(metrics.admitted_counter(name));
        }
        self.other_principals.admitted = Some(metrics.admitted_counter(OTHER));
        self
    }

    /// Builds fresh limits from a new spec on the same clock, for a reload. Counters start full.
    pub fn rebuild(&self, spec: &ValidRateSpec, clock: &C) -> Self {
        Self::with_clock(spec, clock)
    }

    /// The spec these limits were built from.
    pub fn spec(&self) -> &ValidRateSpec {
        &self.spec
    }

    /// Checks (and consumes) one call by `principal` on `key` (`None` for calls without a key, such as
    /// GenerateRandom or ListKeys). Pass the resolved key id of an existing key, not raw request text,
    /// so unknown ids do not take tracked slots from real keys.
    pub fn check(&self, principal: &str, key: Option<&str>) -> Result<(), Throttled> {
        let principal = self
            .principals
            .get(principal)
            .unwrap_or(&self.other_principals);
        if let Some(l) = &principal.limiter {
            l.check(Scope::Principal)?;
        }
        if let Some(key) = key {
            match self.key_overrides.get(key) {
                Some(Some(l)) => l.check(Scope::Key)?,
                Some(None) => {}
                None => {
                    if let Some(t) = &self.tracked_keys {
                        t.check(key)?;
                    }
                }
            }
        }
        if let Some(l) = &self.global {
            l.check(Scope::Global)?;
        }
        // the one cost of the observed rate: a relaxed atomic add on a resolved handle
        if let Some(c) = &principal.admitted {
            c.inc();
        }
        Ok(())
    }

    /// [`check`](Self::check), counting a refusal in `throttled_total`.
    pub fn check_recorded(
        &self,
        metrics: &RateMetrics,
        principal: &str,
        key: Option<&str>,
    ) -> Result<(), Throttled> {
        self.check(principal, key).inspect_err(|t| {
            metrics.throttled(self.principal_label(principal), t.scope);
        })
    }

    /// The bounded metrics label for `principal`: its name if known, else `other`.
    pub fn principal_label<'a>(&'a self, principal: &'a str) -> &'a str {
        if self.principals.contains_key(principal) {
            principal
        } else {
            OTHER
        }
    }

    /// Sets `rate_limit_per_second` to these limits, removing the series of the previous export (so a
    /// reload that drops a principal drops its gauge).
    pub fn export(&self, metrics: &RateMetrics) {
        let mut rows: Vec<(Scope, &str, f64)> = Vec::new();
        if let Some(r) = shown_rate(&self.spec.global) {
            rows.push((Scope::Global, "global", r));
        }
        for (name, w) in &self.spec.principals {
            if let Some(r) = shown_rate(w) {
                rows.push((Scope::Principal, name, r));
            }
        }
        if let Some(r) = shown_rate(&self.spec.principal_default) {
            rows.push((Scope::Principal, OTHER, r));
        }
        for (name, w) in &self.spec.key_overrides {
            if let Some(r) = shown_rate(w) {
                rows.push((Scope::Key, name, r));
            }
        }
        if let Some(r) = shown_rate(&self.spec.key_default) {
            rows.push((Scope::Key, DEFAULT, r));
        }
        metrics.replace_inbound(&rows);
        // Every (principal, scope) pair a configured limit can refuse is exported at 0 from the
        // start, so "none throttled" and "no data" differ on /metrics and in PromQL.
        let mut scopes = Vec::new();
        if !self.spec.global.is_empty() {
            scopes.push(Scope::Global);
        }
        if !self.spec.key_default.is_empty() || !self.spec.key_overrides.is_empty() {
            scopes.push(Scope::Key);
        }
        if metrics.outbound_budget.load(Ordering::Relaxed) {
            scopes.push(Scope::Backend);
        }
        let principals = self
            .principals
            .iter()
            .map(|(n, l)| (n.as_ref(), l.limiter.is_some()));
        let other = (OTHER, self.other_principals.limiter.is_some());
        for (name, limited) in principals.chain([other]) {
            let own = limited.then_some(Scope::Principal);
            for scope in scopes.iter().copied().chain(own) {
                metrics.zero(name, scope);
            }
        }
    }
}

/// `throttled_total{principal,scope}`, `rate_limit_admitted_total{principal}` and
/// `rate_limit_per_second{scope,name}`.
#[derive(Debug)]
pub struct RateMetrics {
    throttled: IntCounterVec,
    admitted: IntCounterVec,
    limit: GaugeVec,
    /// Inbound gauge series set by the last export, removed by the next.
    exported: Mutex<Vec<(Scope, String)>>,
    /// An outbound budget is configured: exports start every principal's backend series at 0.
    outbound_budget: AtomicBool,
}

impl RateMetrics {
    pub fn register(registry: &Registry) -> prometheus::Result<Self> {
        let throttled = IntCounterVec::new(
            Opts::new(
                "kms_sidecar_throttled_total",
                "Calls refused by a rate limit, by principal and by the scope of the limit.",
            ),
            &["principal", "scope"],
        )?;
        let admitted = IntCounterVec::new(
            Opts::new(
                "kms_sidecar_rate_limit_admitted_total",
                "Calls that passed every inbound rate limit, by principal (with throttled_total: what each principal asked for).",
            ),
            &["principal"],
        )?;
        let limit = GaugeVec::new(
            Opts::new(
                "kms_sidecar_rate_limit_per_second",
                "Configured rate limits in requests per second (the shortest window of each limit).",
            ),
            &["scope", "name"],
        )?;
        registry.register(Box::new(throttled.clone()))?;
        registry.register(Box::new(limit.clone()))?;
        registry.register(Box::new(admitted.clone()))?;
        Ok(Self {
            throttled,
            admitted,
            limit,
            exported: Mutex::new(Vec::new()),
            outbound_budget: AtomicBool::new(false),
        })
    }

    /// The metric family names this module exports.
    pub fn family_names() -> [&'static str; 3] {
        [
            "kms_sidecar_throttled_total",
            "kms_sidecar_rate_limit_admitted_total",
            "kms_sidecar_rate_limit_per_second",
        ]
    }

    /// Counts one throttled call. `principal` must be a bounded label
    /// ([`RateLimits::principal_label`], or `other`).
    pub fn throttled(&self, principal: &str, scope: Scope) {
        self.throttled
            .with_label_values(&[principal, scope.as_str()])
            .inc();
    }

    /// The `rate_limit_admitted_total` counter of `principal` (a bounded label, as for
    /// [`throttled`](Self::throttled)), exported at 0 from this call on.
    pub fn admitted_counter(&self, principal: &str) -> IntCounter {
        self.admitted.with_label_values(&[principal])
    }

    /// Exports the `throttled_total` series of `principal` and `scope` (at 0 until a refusal).
    pub fn zero(&self, principal: &str, scope: Scope) {
        let _ = self
            .throttled
            .with_label_values(&[principal, scope.as_str()]);
    }

    /// Says that an outbound budget is configured (see [`RateLimits::export`]).
    pub fn mark_outbound_budget(&self) {
        self.outbound_budget.store(true, Ordering::Relaxed);
    }

    /// Sets the gauge of one limit that is not part of the inbound spec (the outbound budget).
    pub fn set_limit(&self, scope: Scope, name: &str, per_second: f64) {
        self.limit
            .with_label_values(&[scope.as_str(), name])
            .set(per_second);
    }

    fn replace_inbound(&self, rows: &[(Scope, &str, f64)]) {
        let mut exported = self.exported.lock().unwrap_or_else(PoisonError::into_inner);
        for (scope, name) in exported.drain(..) {
            // Absent series (never set) are not an error worth reporting.
            let _ = self.limit.remove_label_values(&[scope.as_str(), &name]);
        }
        for (scope, name, rate) in rows {
            self.set_limit(*scope, name, *rate);
            exported.push((*scope, (*name).to_owned()));
        }
    }
}

#[cfg(test)]
#[path = "rate_tests.rs"]
mod tests;
