//! The dashboard's memory: every scraped series as a bounded history, the admin documents of each
//! source, and each source's health. Scrapes from several sidecars (or Prometheus instances)
//! are merged here: counters become reset-corrected totals per source and are summed into one
//! history per label set, so every view can ask "how much in this window, grouped by these
//! labels" without caring how many sidecars there are.

use std::collections::{BTreeMap, HashMap, HashSet};

use super::history::{CounterState, History};
use super::prom::{Kind, Labels, Sample};
use super::status::{AuditRecord, Status};

/// A series without its source: metric name and labels (source labels stripped).
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SeriesId {
    pub name: String,
    pub labels: Labels,
}

/// What happened to one admin endpoint of one source.
#[derive(Clone, Debug, PartialEq)]
pub enum Endpoint<T> {
    /// Not fetched yet.
    Unknown,
    /// The source answered 404: the sidecar does not serve this yet (not an error).
    NotServed,
    /// The source cannot serve this at all (Prometheus has no audit log).
    Unsupported,
    /// A real failure (connection, timeout, bad JSON, 5xx).
    Failed(String),
    /// The document.
    Ok(T),
}

/// Reachability of one source.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct SourceHealth {
    /// Unix seconds of the last attempt.
    pub last_attempt: Option<f64>,
    /// Unix seconds of the last successful metrics scrape.
    pub last_ok: Option<f64>,
    /// The last attempt's error, `None` when it succeeded.
    pub error: Option<String>,
    /// Successful scrapes so far.
    pub scrapes: u64,
}

/// Sizing of the histories.
#[derive(Clone, Debug)]
pub struct ModelConfig {
    /// Points kept per series before the resolution halves.
    pub max_points: usize,
    /// How far back histories reach (the largest window plus the 6 h burn window).
    pub max_age_secs: f64,
}

impl Default for ModelConfig {
    fn default() -> Self {
        Self {
            max_points: 4096,
            max_age_secs: 30.0 * 3600.0,
        }
    }
}

/// Gauges whose fleet value is the worst (largest) of the sources rather than their sum.
const MAX_GAUGES: [&str; 5] = [
    "kms_sidecar_circuit_state",
    "kms_sidecar_key_rotation_enabled",
    "kms_sidecar_key_last_rotation_timestamp_seconds",
    "kms_sidecar_key_rotation_period_seconds",
    "kms_sidecar_key_rotation_overdue",
];

/// Everything the views read.
#[derive(Clone, Debug, Default)]
pub struct Model {
    cfg: ModelConfig,
    counters: HashMap<(String, SeriesId), CounterState>,
    /// Per source: the time of its last ingested scrape.
    last_ingest: HashMap<String, f64>,
    totals: HashMap<SeriesId, f64>,
    gauge_values: HashMap<SeriesId, BTreeMap<String, f64>>,
    series: HashMap<SeriesId, History>,
    kinds: HashMap<String, Kind>,
    /// Health of each configured source, by its URL.
    pub sources: BTreeMap<String, SourceHealth>,
    /// `/v1/status` of each source.
    pub status: BTreeMap<String, Endpoint<Status>>,
    /// `/v1/audit?outcome=denied` of each source.
    pub denied: BTreeMap<String, Endpoint<Vec<AuditRecord>>>,
    /// Each source's event log (from `/v1/history`), oldest first.
    pub events: BTreeMap<String, Vec<super::backfill::Event>>,
    /// `/v1/history` of each source: whether it was read (a 404 is an older sidecar).
    pub history: BTreeMap<String, Endpoint<usize>>,
    /// Typical seconds between two points of one source (the plot resolution floor).
    pub interval_secs: f64,
    /// Each source's own series, for the fleet view and for scoping every view to one sidecar
    /// (kept by models made with [`Model::new`]; the per-source models keep none themselves).
    pub per_source: BTreeMap<String, Model>,
    track_sources: bool,
    /// The front-end every figure is scoped to ([`Model::for_frontend`]); `None`: all of them.
    pub frontend: Option<String>,
    /// Bumped on every change, so derived data can be cached.
    pub version: u64,
}

impl Model {
    /// An empty model.
    pub fn new(cfg: ModelConfig) -> Self {
        Self {
            cfg,
            interval_secs: 5.0,
            track_sources: true,
            ..Self::default()
        }
    }

    /// The model of one source alone, with its admin documents and events: what every view shows
    /// when the fleet view scopes them to that sidecar. `None` for an unknown source.
    pub fn scoped(&self, source: &str) -> Option<Model> {
        let mut m = self.per_source.get(source)?.clone();
        let pick = |k: &String| k == source;
        m.sources = self
            .sources
            .iter()
            .filter(|(k, _)| pick(k))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        m.status = self
            .status
            .iter()
            .filter(|(k, _)| pick(k))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        m.denied = self
            .denied
            .iter()
            .filter(|(k, _)| pick(k))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        m.events = self
            .events
            .iter()
            .filter(|(k, _)| pick(k))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        m.history = self
            .history
            .iter()
            .filter(|(k, _)| pick(k))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        m.version = self.version;
        Some(m)
    }

    /// This model with the families that carry a `frontend` label (requests, latency, denials:
    /// [`super::frontend::SPLIT_FAMILIES`]) reduced to front-end `fe`'s series (unlabelled ones
    /// are `aws_json`, the only protocol sidecars older than the label spoke). Families without
    /// the label (limiters, caches, backend, keys) are shared by every front-end and stay whole;
    /// every front-end's `ThrottlingException` answers are kept aside under
    /// [`super::frontend::ALL_THROTTLING`], so shared-limit refusals can be shared out as the "By
    /// front-end" table does. The per-source models are left out (the fleet table reads the
    /// unscoped model).
    pub fn for_frontend(&self, fe: &str) -> Model {
        use super::frontend::{ALL_THROTTLING, frontend_of_series, is_split};
        let mut m = Model {
            cfg: self.cfg.clone(),
            last_ingest: self.last_ingest.clone(),
            kinds: self.kinds.clone(),
            sources: self.sources.clone(),
            status: self.status.clone(),
            denied: self.denied.clone(),
            events: self.events.clone(),
            history: self.history.clone(),
            interval_secs: self.interval_secs,
            frontend: Some(fe.to_string()),
            version: self.version,
            ..Model::default()
        };
        let keep = |id: &SeriesId| !is_split(&id.name) || frontend_of_series(&id.labels) == fe;
        for (id, h) in &self.series {
            if id.name == "kms_sidecar_requests_total"
                && id
                    .labels
                    .get("outcome")
                    .is_some_and(|o| o == "ThrottlingException")
            {
                let aside = SeriesId {
                    name: ALL_THROTTLING.to_string(),
                    labels: id.labels.clone(),
                };
                m.series.insert(aside, h.clone());
            }
            if keep(id) {
                m.series.insert(id.clone(), h.clone());
            }
        }
        m.kinds
            .insert(ALL_THROTTLING.to_string(), super::prom::Kind::Counter);
        m.counters = self
            .counters
            .iter()
            .filter(|((_, id), _)| keep(id))
            .map(|(k, v)| (k.clone(), *v))
            .collect();
        m.totals = self
            .totals
            .iter()
            .filter(|(id, _)| keep(id))
            .map(|(k, v)| (k.clone(), *v))
            .collect();
        m.gauge_values = self
            .gauge_values
            .iter()
            .filter(|(id, _)| keep(id))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        m
    }

    /// Adds one scrape of `source` taken at `t`. Series new to a source that was scraped
    /// before count from zero; on a source's first scrape, existing totals are history and
    /// only later increases count.
    pub fn ingest(&mut self, source: &str, t: f64, samples: &[Sample]) {
        if self.track_sources {
            let cfg = self.cfg.clone();
            self.per_source
                .entry(source.to_string())
                .or_insert_with(|| Model {
                    cfg,
                    interval_secs: 5.0,
                    ..Model::default()
                })
                .ingest(source, t, samples);
        }
        let prev = self.last_ingest.get(source).copied();
        if let Some(p) = prev
            && t > p
        {
            self.interval_secs = 0.8 * self.interval_secs + 0.2 * (t - p);
        }
        let mut touched: HashSet<SeriesId> = HashSet::new();
        for s in samples {
            if !s.value.is_finite() {
                continue;
            }
            let id = SeriesId {
                name: s.name.clone(),
                labels: s.labels.clone(),
            };
            self.kinds.insert(s.name.clone(), s.kind);
            match s.kind {
                Kind::Counter => {
                    let key = (source.to_string(), id.clone());
                    let delta = match self.counters.get_mut(&key) {
                        Some(c) => c.observe(s.value),
                        None => {
                            let (c, d) = CounterState::first(s.value, prev.is_some());
                            self.counters.insert(key, c);
                            // anchor a brand-new series at zero at the previous scrape, so its
                            // increase lands in the right interval
                            if let Some(p) = prev
                                && !self.series.contains_key(&id)
                            {
                                self.history(&id).push(p, 0.0);
                            }
                            d
                        }
                    };
                    *self.totals.entry(id.clone()).or_insert(0.0) += delta;
                }
                Kind::Gauge => {
                    self.gauge_values
                        .entry(id.clone())
                        .or_default()
                        .insert(source.to_string(), s.value);
                }
            }
            touched.insert(id);
        }
        for id in touched {
            let v = match self.kinds.get(&id.name) {
                Some(Kind::Counter) => self.totals.get(&id).copied().unwrap_or(0.0),
                _ => {
                    let vals = self.gauge_values.get(&id);
                    let it = vals.into_iter().flat_map(|m| m.values().copied());
                    if MAX_GAUGES.contains(&id.name.as_str()) {
                        it.fold(f64::NEG_INFINITY, f64::max)
                    } else {
                        it.sum()
                    }
                }
            };
            self.history(&id).push(t, v);
        }
        self.last_ingest.insert(source.to_string(), t);
        self.version += 1;
    }

    /// Rebuilds the fleet-wide history of every series `source` has as the sum (or, for
    /// [`MAX_GAUGES`], the worst) of each source's own history at every point time of any of
    /// them. Used after a backfill: pushing a source's past into the sums directly would drop
    /// every point older than another source's newest. A counter counts 0 before a source's
    /// first point (its totals start there); a gauge counts only from its first point.
    pub(super) fn rebuild_fleet_series(&mut self, source: &str) {
        let Some(own) = self.per_source.get(source) else {
            return;
        };
        let ids: Vec<SeriesId> = own.series.keys().cloned().collect();
        for id in ids {
            let parts: Vec<&History> = self
                .per_source
                .values()
                .filter_map(|m| m.series.get(&id))
                .collect();
            let mut times: Vec<f64> = parts
                .iter()
                .flat_map(|h| h.points().iter().map(|p| p.0))
                .collect();
            times.sort_by(f64::total_cmp);
            times.dedup();
            let counter = matches!(self.kinds.get(&id.name), Some(Kind::Counter));
            let worst = MAX_GAUGES.contains(&id.name.as_str());
            let mut merged = History::new(self.cfg.max_points, self.cfg.max_age_secs);
            for t in times {
                let values = parts.iter().filter_map(|h| {
                    let (t0, _) = h.first()?;
                    match (t < t0, counter) {
                        (true, true) => Some(0.0),
                        (true, false) => None,
                        (false, _) => h.value_at(t),
                    }
                });
                let v = if worst {
                    values.fold(f64::NEG_INFINITY, f64::max)
                } else {
                    values.sum()
                };
                merged.push(t, v);
            }
            self.series.insert(id, merged);
        }
        self.version += 1;
    }

    fn history(&mut self, id: &SeriesId) -> &mut History {
        let (n, age) = (self.cfg.max_points, self.cfg.max_age_secs);
        self.series
            .entry(id.clone())
            .or_insert_with(|| History::new(n, age))
    }

    /// Time of the last scrape of `source` that was ingested.
    pub fn last_ingest(&self, source: &str) -> Option<f64> {
        self.last_ingest.get(source).copied()
    }

    /// Records a scrape attempt of `source` at `t`.
    pub fn record_attempt(&mut self, source: &str, t: f64, result: Result<(), String>) {
        let h = self.sources.entry(source.to_string()).or_default();
        h.last_attempt = Some(t);
        match result {
            Ok(()) => {
                h.last_ok = Some(t);
                h.error = None;
                h.scrapes += 1;
            }
            Err(e) => h.error = Some(e),
        }
        self.version += 1;
    }

    /// Registers a source before its first scrape so it shows as "waiting".
    pub fn add_source(&mut self, source: &str) {
        self.sources.entry(source.to_string()).or_default();
    }

    /// Sources whose last attempt failed.
    pub fn failing_sources(&self) -> impl Iterator<Item = (&String, &SourceHealth)> {
        self.sources.iter().filter(|(_, h)| h.error.is_some())
    }

    /// True when any series of the family `name` was ever seen.
    pub fn has(&self, name: &str) -> bool {
        self.series.keys().any(|id| id.name == name)
    }

    /// Series of one family matching every `(label, value)` in `filter`.
    pub fn select<'a>(
        &'a self,
        name: &'a str,
        filter: &'a [(&'a str, &'a str)],
    ) -> impl Iterator<Item = (&'a SeriesId, &'a History)> + 'a {
        self.series.iter().filter(move |(id, _)| {
            id.name == name
                && filter
                    .iter()
                    .all(|(k, v)| id.labels.get(*k).is_some_and(|x| x == v))
        })
    }

    /// Time of the oldest stored point (how far back the data reaches).
    pub fn first_time(&self) -> Option<f64> {
        self.series
            .values()
            .filter_map(|h| h.first().map(|p| p.0))
            .reduce(f64::min)
    }

    /// Number of stored series (for sizing tests and the frame-time bench).
    pub fn series_count(&self) -> usize {
        self.series.len()
    }
}

/// The group key of a series: its values of `by`, joined with " / " (missing labels are `-`).
pub fn group_key(labels: &Labels, by: &[&str]) -> String {
    if by.is_empty() {
        return "all".to_string();
    }
    by.iter()
        .map(|l| labels.get(*l).map_or("-", String::as_str))
        .collect::<Vec<_>>()
        .join(" / ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::prom::parse;

    fn scrape(m: &mut Model, src: &str, t: f64, text: &str) {
        m.ingest(src, t, &parse(text).unwrap());
    }

    #[test]
    fn sums_sources_and_handles_resets_and_new_series() {
        let mut m = Model::new(ModelConfig::default());
        scrape(&mut m, "a", 0.0, "x_total{op=\"E\"} 100\n");
        scrape(&mut m, "b", 1.0, "x_total{op=\"E\"} 7\n");
        // a: +20, b restarted: +3, a new series in a: 5 since t=0
        scrape(
            &mut m,
            "a",
            10.0,
            "x_total{op=\"E\"} 120\nx_total{op=\"D\"} 5\n",
        );
        scrape(&mut m, "b", 11.0, "x_total{op=\"E\"} 3\n");
        let inc: f64 = m
            .select("x_total", &[("op", "E")])
            .filter_map(|(_, h)| h.increase(0.0, 11.0))
            .sum();
        assert_eq!(inc, 23.0);
        let d = m.select("x_total", &[("op", "D")]).next().unwrap().1;
        assert_eq!(d.increase(0.0, 10.0), Some(5.0));
        assert_eq!(d.increase(0.0, 5.0), Some(2.5));
        assert!(m.has("x_total"));
        assert!(!m.has("y_total"));
    }

    #[test]
    fn gauges_sum_or_take_the_worst() {
        let mut m = Model::new(ModelConfig::default());
        scrape(
            &mut m,
            "a",
            0.0,
            "kms_sidecar_cache_entries{cache=\"d\"} 10\nkms_sidecar_circuit_state{backend=\"e\"} 0\n",
        );
        scrape(
            &mut m,
            "b",
            1.0,
            "kms_sidecar_cache_entries{cache=\"d\"} 5\nkms_sidecar_circuit_state{backend=\"e\"} 2\n",
        );
        let e = m.select("kms_sidecar_cache_entries", &[]).next().unwrap().1;
        assert_eq!(e.last(), Some((1.0, 15.0)));
        let c = m.select("kms_sidecar_circuit_state", &[]).next().unwrap().1;
        assert_eq!(c.last(), Some((1.0, 2.0)));
    }

    #[test]
    fn source_health() {
        let mut m = Model::new(ModelConfig::default());
        m.record_attempt("s", 5.0, Ok(()));
        m.record_attempt("s", 10.0, Err("connection refused".into()));
        let h = &m.sources["s"];
        assert_eq!((h.last_ok, h.last_attempt), (Some(5.0), Some(10.0)));
        assert_eq!(m.failing_sources().count(), 1);
        assert_eq!(group_key(&Labels::new(), &["a"]), "-");
    }
}
