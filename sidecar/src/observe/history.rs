//! The sidecar's own short memory: the last 6 hours of its metric series at 10 s resolution, and a
//! log of the events an operator lines up with them (start, breaker transitions, key rotations,
//! fault injection on and off, configuration reloads). An SRE opens the dashboard *because*
//! something happened; without this, the dashboard would know only what it scraped since it
//! opened. Served by `GET /v1/history` (`docs/admin-api.md`).
//!
//! Nothing here runs on the request path: a background task ([`run`]) reads the registry every
//! [`RESOLUTION`] (the counters the requests already update) and the key index. Memory is fixed:
//! at most [`MAX_SERIES`] series of [`CAPACITY`] samples (4 bytes each: counters are stored as the
//! increase since the previous sample, gauges as their value) and [`MAX_EVENTS`] events;
//! [`History::memory_bound`] is the worst case, about 9.6 MB.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use prometheus::Registry;
use prometheus::proto::MetricType;
use serde::Serialize;
use tokio::sync::watch;

use crate::keys::KeyStore;

/// Seconds between two samples.
pub const RESOLUTION: Duration = Duration::from_secs(10);
/// Samples kept per series: 6 h at [`RESOLUTION`] (the longest burn-rate window the dashboard shows).
pub const CAPACITY: usize = 6 * 360;
/// Series kept; more are dropped (counted in `dropped_series`), lowest priority first.
pub const MAX_SERIES: usize = 1024;
/// Events kept; the oldest go first.
pub const MAX_EVENTS: usize = 512;
/// Longest event detail in bytes (longer ones are cut).
const MAX_DETAIL: usize = 160;
/// Longest label text of one series in bytes (a longer one is dropped, so labels stay bounded).
const MAX_LABEL_BYTES: usize = 512;

/// Families sampled, highest priority first: when [`MAX_SERIES`] is reached, later families lose.
/// Left out: the per-key rotation gauges and cache sizes (current state, refreshed only when
/// `/metrics` is read; `/v1/status` has them) and histogram `_sum`/`_count` (the `+Inf` bucket is
/// the count).
const FAMILIES: [&str; 21] = [
    "kms_sidecar_requests_total",
    "kms_sidecar_throttled_total",
    "kms_sidecar_rate_limit_admitted_total",
    "kms_sidecar_unauthorized_total",
    "kms_sidecar_circuit_state",
    "kms_sidecar_circuit_transitions_total",
    "kms_sidecar_rate_limit_per_second",
    "kms_sidecar_backend_requests_total",
    "kms_sidecar_backend_retries_total",
    "kms_sidecar_faults_injected_total",
    "kms_sidecar_cache_requests_total",
    "kms_sidecar_key_rotations_total",
    "kms_sidecar_audit_events_total",
    "kms_sidecar_audit_write_errors_total",
    "kms_sidecar_backend_cost_dollars_total",
    "kms_sidecar_build_info",
    "kms_sidecar_registry_up",
    "kms_sidecar_kmsv2_status_ok",
    "kms_sidecar_request_duration_seconds",
    "kms_sidecar_backend_duration_seconds",
    "kms_sidecar_key_operations_total",
];

/// What happened.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum EventKind {
    /// The process started (history begins here).
    Start,
    /// A circuit breaker changed state.
    Breaker,
    /// A key got a new version.
    Rotation,
    /// Fault injection was switched on or changed.
    FaultsOn,
    /// Fault injection was cleared.
    FaultsOff,
    /// The configuration was reloaded (SIGHUP).
    Reload,
}

/// One event: Unix seconds, kind and a short text without secrets (names, states, versions).
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Event {
    pub time: f64,
    pub kind: EventKind,
    pub detail: String,
}

/// The bounded event log; cheap to clone and share (breakers, admin, reload hold one).
#[derive(Clone, Debug, Default)]
pub struct Events(Arc<Mutex<VecDeque<Event>>>);

impl Events {
    fn lock(&self) -> MutexGuard<'_, VecDeque<Event>> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Records an event now.
    pub fn record(&self, kind: EventKind, detail: impl Into<String>) {
        self.record_at(crate::kms::now(), kind, detail);
    }

    /// Records an event at `time` (a key rotation found later carries its version's creation time).
    pub fn record_at(&self, time: f64, kind: EventKind, detail: impl Into<String>) {
        let mut detail: String = detail.into();
        if detail.len() > MAX_DETAIL {
            let mut cut = MAX_DETAIL;
            while !detail.is_char_boundary(cut) {
                cut -= 1;
            }
            detail.truncate(cut);
        }
        let mut log = self.lock();
        if log.len() >= MAX_EVENTS {
            log.pop_front();
        }
        // keep the log in time order even when an event is found after a later one
        let at = log.partition_point(|e| e.time <= time);
        log.insert(at, Event { time, kind, detail });
    }

    /// Events after `since`, oldest first.
    pub fn since(&self, since: f64) -> Vec<Event> {
        self.lock()
            .iter()
            .filter(|e| e.time > since)
            .cloned()
            .collect()
    }
}

/// One sampled series: name, labels and a ring aligned with [`History`]'s sample times.
#[derive(Debug)]
struct Series {
    name: String,
    labels: Vec<(String, String)>,
    counter: bool,
    /// Counters: the cumulative value just before the oldest kept sample.
    base: f64,
    /// Counters: the last raw reading.
    last: f64,
    /// Counters: increase since the previous sample; gauges: the value. NaN: absent.
    values: Box<[f32]>,
}

#[derive(Debug)]
struct Rings {
    times: Box<[f64]>,
    /// Index of the oldest sample.
    start: usize,
    len: usize,
    series: Vec<Series>,
    index: HashMap<(String, Vec<(String, String)>), usize>,
    dropped_series: usize,
    /// Key id -> current version, to notice rotations.
    versions: HashMap<String, u32>,
}

/// The sampled series and the event log.
#[derive(Debug)]
pub struct History {
    rings: Mutex<Rings>,
    events: Events,
}

impl Default for History {
    fn default() -> Self {
        Self::new()
    }
}

/// One series as `/v1/history` serves it: counters cumulative (as `/metrics` shows them),
/// `null` where the series did not exist yet.
#[derive(Debug, Serialize)]
pub struct SeriesOut {
    pub name: String,
    #[serde(rename = "type")]
    pub kind: &'static str,
    pub labels: std::collections::BTreeMap<String, String>,
    pub values: Vec<Option<f64>>,
}

/// One principal's calls per second over the last minute of samples (`/v1/status` `principals`):
/// admitted by every rate limit, and refused by one (any scope). Their sum is what it asked for.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PrincipalRate {
    pub principal: String,
    pub admitted_per_second: f64,
    pub throttled_per_second: f64,
}

/// The `/v1/history` document.
#[derive(Debug, Serialize)]
pub struct Snapshot {
    pub resolution_seconds: f64,
    pub capacity: usize,
    pub max_series: usize,
    pub dropped_series: usize,
    pub times: Vec<f64>,
    pub series: Vec<SeriesOut>,
    pub events: Vec<Event>,
}

impl History {
    /// An empty history.
    pub fn new() -> Self {
        Self {
            rings: Mutex::new(Rings {
                times: vec![f64::NAN; CAPACITY].into_boxed_slice(),
                start: 0,
                len: 0,
                series: Vec::new(),
                index: HashMap::new(),
                dropped_series: 0,
                versions: HashMap::new(),
            }),
            events: Events::default(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Rings> {
        self.rings.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The event log, to hand to whatever records events.
    pub fn events(&self) -> Events {
        self.events.clone()
    }

    /// The most memory the sampled series and the event log can take, in bytes: sample times,
    /// each series' ring and labels, and each event with its longest detail.
    pub const fn memory_bound() -> usize {
        CAPACITY * 8
            + MAX_SERIES * (CAPACITY * 4 + MAX_LABEL_BYTES + std::mem::size_of::<Series>() + 2 * 64)
            + MAX_EVENTS * (MAX_DETAIL + std::mem::size_of::<Event>())
    }

    /// What this history holds now, counted like [`memory_bound`](Self::memory_bound).
    pub fn memory_used(&self) -> usize {
        let r = self.lock();
        let series: usize = r
            .series
            .iter()
            .map(|s| {
                s.values.len() * 4
                    + label_bytes(&s.name, &s.labels)
                    + std::mem::size_of::<Series>()
                    + 2 * 64
            })
            .sum();
        let events: usize = self
            .events
            .lock()
            .iter()
            .map(|e| e.detail.capacity().max(e.detail.len()) + std::mem::size_of::<Event>())
            .sum();
        r.times.len() * 8 + series + events
    }

    /// Number of series held.
    pub fn series_count(&self) -> usize {
        self.lock().series.len()
    }

    /// Takes one sample of `registry` at `time`.
    pub fn sample(&self, registry: &Registry, time: f64) {
        let families = registry.gather();
        let mut r = self.lock();
        let slot = r.push_time(time);
        for name in FAMILIES {
            let Some(family) = families.iter().find(|f| f.name() == name) else {
                continue;
            };
            for metric in family.get_metric() {
                let labels: Vec<(String, String)> = metric
                    .get_label()
                    .iter()
                    .map(|l| (l.name().to_string(), l.value().to_string()))
                    .collect();
                match family.get_field_type() {
                    MetricType::COUNTER => {
                        r.put(slot, name, labels, true, metric.get_counter().get_value());
                    }
                    MetricType::GAUGE => {
                        r.put(slot, name, labels, false, metric.get_gauge().get_value());
                    }
                    MetricType::HISTOGRAM => {
                        let h = metric.get_histogram();
                        let bucket = format!("{name}_bucket");
                        for b in h.get_bucket() {
                            let mut l = labels.clone();
                            l.push(("le".into(), le_text(b.upper_bound())));
                            r.put(slot, &bucket, l, true, b.cumulative_count() as f64);
                        }
                        let mut l = labels.clone();
                        l.push(("le".into(), "+Inf".into()));
                        r.put(slot, &bucket, l, true, h.get_sample_count() as f64);
                    }
                    _ => {}
                }
            }
        }
    }

    /// Notices keys whose current version changed since the last look and logs each rotation at
    /// its version's creation time. The first look only learns the versions.
    pub fn watch_keys(&self, index: &crate::keys::Index) {
        let mut found = Vec::new();
        {
            let mut r = self.lock();
            let first = r.versions.is_empty();
            for (id, meta) in &index.keys {
                let Some(current) = meta.versions.last() else {
                    continue;
                };
                let before = r.versions.insert(id.clone(), current.version);
                if !first && before.is_some_and(|v| v < current.version) {
                    let alias = index
                        .aliases
                        .iter()
                        .find(|(_, a)| a.target == *id)
                        .map(|(n, _)| n.as_str());
                    let name = alias.unwrap_or(id);
                    found.push((
                        current.created,
                        format!("{name} rotated to version {}", current.version),
                    ));
                }
            }
            r.versions.retain(|id, _| index.keys.contains_key(id));
        }
        for (t, detail) in found {
            self.events.record_at(t, EventKind::Rotation, detail);
        }
    }

    /// Per principal label: admitted and throttled calls per second over the newest samples
    /// spanning at least `secs` (or all there are), from the sampled
    /// `rate_limit_admitted_total` and `throttled_total`. Empty until two samples exist.
    pub fn principal_rates(&self, secs: f64) -> Vec<PrincipalRate> {
        let r = self.lock();
        if r.len < 2 {
            return Vec::new();
        }
        let slot = |i: usize| (r.start + i) % CAPACITY;
        let newest = r.len - 1;
        let t_new = r.times[slot(newest)];
        // the newest sample at least `secs` old is the base; the deltas after it are the increase
        let base = (0..newest)
            .rev()
            .find(|i| r.times[slot(*i)] <= t_new - secs)
            .unwrap_or(0);
        let span = t_new - r.times[slot(base)];
        if span <= 0.0 {
            return Vec::new();
        }
        let mut out: Vec<PrincipalRate> = Vec::new();
        for s in &r.series {
            let admitted = s.name == "kms_sidecar_rate_limit_admitted_total";
            if !admitted && s.name != "kms_sidecar_throttled_total" {
                continue;
            }
            let Some((_, principal)) = s.labels.iter().find(|(k, _)| k == "principal") else {
                continue;
            };
            let inc: f64 = (base + 1..=newest)
                .map(|i| s.values[slot(i)])
                .filter(|d| !d.is_nan())
                .map(f64::from)
                .sum();
            let at = match out.iter().position(|p| p.principal == *principal) {
                Some(i) => i,
                None => {
                    out.push(PrincipalRate {
                        principal: principal.clone(),
                        admitted_per_second: 0.0,
                        throttled_per_second: 0.0,
                    });
                    out.len() - 1
                }
            };
            if let Some(p) = out.get_mut(at) {
                if admitted {
                    p.admitted_per_second += inc / span;
                } else {
                    p.throttled_per_second += inc / span;
                }
            }
        }
        out.sort_by(|a, b| a.principal.cmp(&b.principal));
        out
    }

    /// Samples and events after `since` (all with `since` = 0).
    pub fn snapshot(&self, since: f64) -> Snapshot {
        let r = self.lock();
        let order: Vec<usize> = (0..r.len)
            .map(|i| (r.start + i) % CAPACITY)
            .filter(|i| r.times[*i] > since)
            .collect();
        let series = r
            .series
            .iter()
            .map(|s| {
                let mut values = Vec::with_capacity(order.len());
                if s.counter {
                    let mut acc = s.base;
                    for i in 0..r.len {
                        let slot = (r.start + i) % CAPACITY;
                        let d = s.values[slot];
                        let v = (!d.is_nan()).then(|| {
                            acc += f64::from(d);
                            acc
                        });
                        if r.times[slot] > since {
                            values.push(v);
                        }
                    }
                } else {
                    for slot in &order {
                        let v = s.values[*slot];
                        values.push((!v.is_nan()).then_some(f64::from(v)));
                    }
                }
                SeriesOut {
                    name: s.name.clone(),
                    kind: if s.counter { "counter" } else { "gauge" },
                    labels: s.labels.iter().cloned().collect(),
                    values,
                }
            })
            .collect();
        Snapshot {
            resolution_seconds: RESOLUTION.as_secs_f64(),
            capacity: CAPACITY,
            max_series: MAX_SERIES,
            dropped_series: r.dropped_series,
            times: order.iter().map(|i| r.times[*i]).collect(),
            series,
            events: self.events.since(since),
        }
    }
}

fn label_bytes(name: &str, labels: &[(String, String)]) -> usize {
    name.len() + labels.iter().map(|(k, v)| k.len() + v.len()).sum::<usize>()
}

/// A bucket bound as Prometheus' text format writes it.
fn le_text(v: f64) -> String {
    if v == f64::INFINITY {
        "+Inf".into()
    } else {
        format!("{v}")
    }
}

impl Rings {
    /// Starts a new sample at `time`, overwriting the oldest when full; returns its slot.
    fn push_time(&mut self, time: f64) -> usize {
        let slot = if self.len < CAPACITY {
            self.len += 1;
            (self.start + self.len - 1) % CAPACITY
        } else {
            let oldest = self.start;
            for s in &mut self.series {
                let d = s.values[oldest];
                if s.counter && !d.is_nan() {
                    s.base += f64::from(d);
                }
            }
            self.start = (self.start + 1) % CAPACITY;
            oldest
        };
        self.times[slot] = time;
        for s in &mut self.series {
            s.values[slot] = f32::NAN;
        }
        self.dropped_series = 0;
        slot
    }

    fn put(
        &mut self,
        slot: usize,
        name: &str,
        labels: Vec<(String, String)>,
        counter: bool,
        v: f64,
    ) {
        let key = (name.to_string(), labels);
        let i = match self.index.get(&key) {
            Some(i) => *i,
            None => {
                if self.series.len() >= MAX_SERIES || label_bytes(&key.0, &key.1) > MAX_LABEL_BYTES
                {
                    self.dropped_series += 1;
                    return;
                }
                self.series.push(Series {
                    name: key.0.clone(),
                    labels: key.1.clone(),
                    counter,
                    base: 0.0,
                    last: 0.0,
                    values: vec![f32::NAN; CAPACITY].into_boxed_slice(),
                });
                self.index.insert(key, self.series.len() - 1);
                self.series.len() - 1
            }
        };
        let Some(s) = self.series.get_mut(i) else {
            return;
        };
        if s.counter {
            // a counter that did not exist counted from zero; a drop cannot happen in one
            // process, but if it did, the new value is what was counted since
            let delta = if v >= s.last { v - s.last } else { v };
            s.last = v;
            s.values[slot] = delta as f32;
        } else {
            s.values[slot] = v as f32;
        }
    }
}

/// Samples every [`RESOLUTION`] until `stop` says so. Logs the start first.
pub async fn run(
    history: Arc<History>,
    registry: Registry,
    keys: Arc<KeyStore>,
    mut stop: watch::Receiver<bool>,
) {
    history.events.record(
        EventKind::Start,
        format!("kms-sidecar {} started", env!("CARGO_PKG_VERSION")),
    );
    let mut tick = tokio::time::interval(RESOLUTION);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = stop.changed() => return,
            _ = tick.tick() => {
                history.watch_keys(&keys.snapshot());
                history.sample(&registry, crate::kms::now());
            }
        }
    }
}

#[cfg(test)]
#[path = "history_tests.rs"]
mod tests;
