//! Everything the views show, computed once per data change (not per frame) from the [`Model`]
//! and the user's settings. Views draw a [`Derived`] and nothing else, so what a number means is
//! decided here, in plain Rust, under unit tests. `None` always means "no data yet".

use std::collections::BTreeMap;

use super::frontend::{FrontendRow, frontend_rows};
use super::query::Line;
use super::rows::{hit_ratio_lines, limit_rows, rotation_metrics};
use super::sli::{self, Health};
use super::status::{self, AuditRecord, RotationRow};
use super::store::{Endpoint, Model};
pub use super::view::*;

const P: &str = "kms_sidecar_";

fn m(name: &str) -> String {
    format!("{P}{name}")
}

/// The burn-rate windows shown, as in the alert rules' page conditions.
pub const BURN_WINDOWS: [f64; 3] = [300.0, 3600.0, 6.0 * 3600.0];

/// One event on the charts: `x` in seconds relative to now (negative).
#[derive(Clone, Debug, PartialEq)]
pub struct EventMarker {
    pub x: f64,
    pub time: f64,
    pub kind: String,
    pub detail: String,
    pub source: String,
}

/// All view data for one moment and one set of settings.
#[derive(Clone, Debug, PartialEq)]
pub struct Derived {
    pub now: f64,
    pub settings: Settings,
    /// The front-end the figures are scoped to (`None`: all).
    pub frontend: Option<String>,
    /// Plot resolution in seconds.
    pub step: f64,
    // Overview
    pub requests: Option<f64>,
    pub request_rate: Option<f64>,
    pub bad_requests: Option<f64>,
    pub availability: Option<f64>,
    /// Share of the 30-day error budget ([`sli::SLO_PERIOD_SECS`]) this window spent.
    pub budget_spent: Option<f64>,
    /// Burn rates over 5 min, 1 h, 6 h, as the alert rules' recording rules define them; `None`
    /// when there is no traffic or when the data is shorter than that window ([`BURN_WINDOWS`]).
    pub burn: [Option<f64>; 3],
    /// Seconds of data available (from the oldest point to now), `None` before any data.
    pub data_secs: Option<f64>,
    /// The selected window is longer than the data: windowed figures read "n/a".
    pub short: bool,
    /// The same for each of [`BURN_WINDOWS`].
    pub burn_short: [bool; 3],
    /// Events (breaker, rotation, faults, reload, start) in the window, oldest first.
    pub events: Vec<EventMarker>,
    pub slo_health: Health,
    pub p95: Option<f64>,
    pub p95_health: Health,
    pub cache_hit_ratio: Option<f64>,
    pub unauthorized: Option<f64>,
    pub audit_write_errors: Option<f64>,
    pub requests_by_class: Vec<Line>,
    pub outcomes: BTreeMap<String, f64>,
    /// One row per front-end with requests in the window.
    pub frontends: Vec<FrontendRow>,
    // Latency
    pub op_latency: Vec<OpLatency>,
    pub p95_by_op: Vec<Line>,
    pub latency_by_cache: Vec<Line>,
    pub backend_latency: Vec<Line>,
    // Throttling
    pub throttled: Option<f64>,
    pub throttled_by_scope: Vec<Line>,
    pub throttled_by_principal: Vec<Line>,
    pub throttle_rows: Vec<ThrottleRow>,
    pub limits: Vec<LimitRow>,
    // Unauthorized
    pub denials_by_reason: Vec<Line>,
    pub top_principals: Vec<(String, f64)>,
    pub top_keys: Vec<(String, f64)>,
    pub denied_records: Vec<AuditRecord>,
    pub audit: EndpointState,
    // Rotation
    pub rotation_rows: Vec<RotationRow>,
    pub rotation_source: RotationSource,
    pub status: EndpointState,
    pub compliance: Option<f64>,
    pub overdue_keys: Option<usize>,
    pub rotations: BTreeMap<String, f64>,
    // Cache and backend
    pub caches: Vec<CacheRow>,
    pub hit_ratio_lines: Vec<Line>,
    pub cache_entry_lines: Vec<Line>,
    pub backends: Vec<BackendRow>,
    pub backend_lines: Vec<Line>,
    pub cost_per_hour: Option<f64>,
}

fn endpoint_state<T>(eps: &BTreeMap<String, Endpoint<T>>) -> EndpointState {
    let mut state = EndpointState::Waiting;
    for e in eps.values() {
        let s = match e {
            Endpoint::Ok(_) => return EndpointState::Ok,
            Endpoint::Unknown => continue,
            Endpoint::NotServed => EndpointState::NotServed,
            Endpoint::Unsupported => EndpointState::Unsupported,
            Endpoint::Failed(err) => EndpointState::Failed(err.clone()),
        };
        if !matches!(state, EndpointState::Failed(_)) {
            state = s;
        }
    }
    state
}

fn top(map: BTreeMap<String, f64>, n: usize) -> Vec<(String, f64)> {
    let mut v: Vec<(String, f64)> = map.into_iter().filter(|(_, c)| *c > 0.0).collect();
    v.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
    v.truncate(n);
    v
}

fn ratio(part: f64, all: f64) -> Option<f64> {
    (all > 0.0).then(|| part / all)
}

use super::palette::outcome_class as class_of;

impl Derived {
    /// Computes every view's numbers at `now`.
    pub fn compute(model: &Model, settings: Settings, now: f64) -> Self {
        let w = settings.window_secs;
        let from = now - w;
        let step = model.interval_secs.max(w / 150.0);
        // rates divide by the time the data actually covers, not by a window it has not filled
        let covered = model.first_time().map_or(w, |t0| (now - t0).clamp(1.0, w));
        let data_secs = model.first_time().map(|t0| (now - t0).max(0.0));
        // A window is available when the data reaches back to its start (one scrape of slack,
        // since the oldest point is a scrape, not the window's first second).
        let slack = 2.0 * model.interval_secs.max(1.0);
        let fits = |window: f64| data_secs.is_some_and(|d| d + slack >= window);
        let slo = settings.slo;

        // --- requests, availability, burn
        let req = m("requests_total");
        let outcomes = model.increase_by(&req, &[], &["outcome"], from, now);
        let has_req = model.has(&req);
        let total: f64 = outcomes.values().sum();
        // bad = server faults + shared-limit throttling (the alert rules' definition)
        let bad_in = |from: f64| {
            let faults: f64 = model
                .increase_by(&req, &[], &["outcome"], from, now)
                .iter()
                .filter(|(o, _)| sli::is_bad(o))
                .map(|(_, v)| v)
                .sum();
            let shared: f64 = model
                .increase_by(&m("throttled_total"), &[], &["scope"], from, now)
                .iter()
                .filter(|(scope, _)| sli::is_shared_throttle(scope))
                .map(|(_, v)| v)
                .sum();
            // scoped to one front-end: its share of the shared refusals (frontend.rs)
            faults + shared * model.shared_throttle_share(from, now)
        };
        let bad = bad_in(from);
        let requests = has_req.then_some(total);
        let availability = sli::availability(total, bad);
        let burn = BURN_WINDOWS.map(|bw| {
            if !fits(bw) {
                return None;
            }
            let o = model.increase_by(&req, &[], &["outcome"], now - bw, now);
            let t: f64 = o.values().sum();
            sli::burn_rate(t, bad_in(now - bw), slo)
        });
        let budget_spent = sli::burn_rate(total, bad, slo)
            .filter(|_| fits(w))
            .map(|b| sli::budget_spent(b, w));
        let events = event_markers(model, from, now);
        let mut class_lines: BTreeMap<&str, Line> = BTreeMap::new();
        for l in model.rate_lines(&req, &[], &["outcome"], from, now, step) {
            let c = class_of(&l.name);
            let e = class_lines.entry(c).or_insert_with(|| Line {
                name: c.to_string(),
                points: l.points.iter().map(|p| [p[0], 0.0]).collect(),
            });
            for (a, p) in e.points.iter_mut().zip(&l.points) {
                a[1] += p[1];
            }
        }

        // --- latency
        let dur = m("request_duration_seconds");
        let counts = model.count_by(&dur, &[], &["operation"], from, now);
        let q = |qq| model.quantile_by(&dur, &[], &["operation"], qq, from, now);
        let (q50, q95, q99) = (q(0.5), q(0.95), q(0.99));
        let op_latency: Vec<OpLatency> = counts
            .iter()
            .filter(|(_, c)| **c > 0.0)
            .map(|(op, c)| OpLatency {
                operation: op.clone(),
                calls: *c,
                p50: q50.get(op).copied(),
                p95: q95.get(op).copied(),
                p99: q99.get(op).copied(),
            })
            .collect();
        let p95 = model
            .quantile_by(&dur, &[], &[], 0.95, from, now)
            .get("all")
            .copied();
        let p95_health = match p95 {
            None => Health::Unknown,
            Some(v) if v <= settings.p95_target_secs => Health::Good,
            Some(v) if v <= 2.0 * settings.p95_target_secs => Health::Warn,
            Some(_) => Health::Bad,
        };

        // --- throttling
        let thr = m("throttled_total");
        // scoped to one front-end: its own ThrottlingException answers (the limiters' counter
        // carries no front-end)
        let throttled = match model.frontend {
            Some(_) => model.total(&req, &[("outcome", "ThrottlingException")], from, now),
            None => model.total(&thr, &[], from, now),
        };
        let throttle_rows = {
            let mut v: Vec<ThrottleRow> = model
                .increase_by(&thr, &[], &["scope", "principal"], from, now)
                .into_iter()
                .map(|(k, count)| {
                    let (scope, principal) = k.split_once(" / ").unwrap_or((&k, "-"));
                    ThrottleRow {
                        scope: scope.to_string(),
                        principal: principal.to_string(),
                        count,
                        per_second: count / covered,
                    }
                })
                .collect();
            v.sort_by(|a, b| b.count.total_cmp(&a.count));
            v
        };
        let statuses: Vec<&status::Status> = model
            .status
            .values()
            .filter_map(|e| match e {
                Endpoint::Ok(s) => Some(s),
                _ => None,
            })
            .collect();
        let limits = limit_rows(model, &statuses, from, now);

        // --- unauthorized
        let un = m("unauthorized_total");
        let unauthorized = model.total(&un, &[], from, now);
        let mut denied_records: Vec<AuditRecord> = model
            .denied
            .values()
            .filter_map(|e| match e {
                Endpoint::Ok(r) => Some(r.iter().cloned()),
                _ => None,
            })
            .flatten()
            .collect();
        denied_records.sort_by(|a, b| b.time.total_cmp(&a.time));
        denied_records.truncate(50);

        // --- rotation
        let (mut rotation_rows, rotation_source) = if statuses.is_empty() {
            let rows = status::rows_from_metrics(&rotation_metrics(model), now);
            let src = if rows.is_empty() {
                RotationSource::None
            } else {
                RotationSource::Metrics
            };
            (rows, src)
        } else {
            let mut keys: BTreeMap<String, status::KeyStatus> = BTreeMap::new();
            for s in &statuses {
                for k in &s.keys {
                    keys.insert(k.key_id.clone(), k.clone());
                }
            }
            let keys: Vec<status::KeyStatus> = keys.into_values().collect();
            (status::rows_from_status(&keys, now), RotationSource::Status)
        };
        status::sort_rows(&mut rotation_rows);
        let compliance = status::compliance(&rotation_rows);
        let overdue_keys = (rotation_source != RotationSource::None)
            .then(|| rotation_rows.iter().filter(|r| r.overdue).count());

        // --- cache
        let creq = m("cache_requests_total");
        let by_cache = model.increase_by(&creq, &[], &["cache", "result"], from, now);
        let entries = model.gauge_by(&m("cache_entries"), &[], &["cache"]);
        let stale = model.gauge_by(&m("cache_stale_entries"), &[], &["cache"]);
        let mut cache_names: Vec<String> = by_cache
            .keys()
            .filter_map(|k| k.split_once(" / ").map(|x| x.0.to_string()))
            .chain(entries.keys().cloned())
            .chain(stale.keys().cloned())
            .collect();
        cache_names.sort();
        cache_names.dedup();
        let caches: Vec<CacheRow> = cache_names
            .into_iter()
            .map(|c| {
                let all: f64 = by_cache
                    .iter()
                    .filter(|(k, _)| k.split_once(" / ").is_some_and(|x| x.0 == c))
                    .map(|(_, v)| v)
                    .sum();
                let hits = by_cache.get(&format!("{c} / hit")).copied().unwrap_or(0.0);
                let seen = model.has(&creq);
                CacheRow {
                    hit_ratio: ratio(hits, all),
                    requests: seen.then_some(all),
                    entries: entries.get(&c).copied(),
                    stale: stale.get(&c).copied(),
                    cache: c,
                }
            })
            .collect();
        let cache_all: f64 = by_cache.values().sum();
        let cache_hits: f64 = by_cache
            .iter()
            .filter(|(k, _)| k.ends_with(" / hit"))
            .map(|(_, v)| v)
            .sum();
        let cache_hit_ratio = ratio(cache_hits, cache_all).or_else(|| {
            // /v1/status counts since start: better than nothing when the metric is absent
            let (h, mi) = statuses
                .iter()
                .filter_map(|s| s.cache.as_ref())
                .fold((0.0, 0.0), |a, c| (a.0 + c.hits, a.1 + c.misses));
            ratio(h, h + mi)
        });
        let hit_ratio_lines = hit_ratio_lines(model, &creq, from, now, step);

        // --- backends
        let breq = m("backend_requests_total");
        let calls = model.increase_by(&breq, &[], &["backend"], from, now);
        let errors = model.increase_by(&breq, &[], &["backend", "outcome"], from, now);
        let retries = model.increase_by(&m("backend_retries_total"), &[], &["backend"], from, now);
        let transitions = model.increase_by(
            &m("circuit_transitions_total"),
            &[],
            &["backend"],
            from,
            now,
        );
        let cost = model.increase_by(
            &m("backend_cost_dollars_total"),
            &[],
            &["backend"],
            from,
            now,
        );
        let circuits = model.gauge_by(&m("circuit_state"), &[], &["backend"]);
        let mut names: Vec<String> = calls
            .keys()
            .chain(retries.keys())
            .chain(transitions.keys())
            .chain(cost.keys())
            .chain(circuits.keys())
            .cloned()
            .chain(
                statuses
                    .iter()
                    .filter_map(|s| s.backend.as_ref().map(|b| b.name.clone())),
            )
            .collect();
        names.sort();
        names.dedup();
        let backends: Vec<BackendRow> = names
            .into_iter()
            .map(|b| {
                let circuit = circuits
                    .get(&b)
                    .and_then(|v| Circuit::from_gauge(*v))
                    .or_else(|| {
                        statuses
                            .iter()
                            .filter_map(|s| s.backend.as_ref())
                            .filter(|x| x.name == b)
                            .filter_map(|x| Circuit::from_status(&x.circuit))
                            .max_by_key(|c| *c as u8)
                    });
                let errs: f64 = errors
                    .iter()
                    .filter(|(k, _)| {
                        k.split_once(" / ")
                            .is_some_and(|(bb, o)| bb == b && o != "ok")
                    })
                    .map(|(_, v)| v)
                    .sum();
                BackendRow {
                    circuit,
                    calls: calls.get(&b).copied(),
                    errors: calls.contains_key(&b).then_some(errs),
                    retries: retries.get(&b).copied(),
                    transitions: transitions.get(&b).copied(),
                    cost: cost.get(&b).copied(),
                    backend: b,
                }
            })
            .collect();
        let cost_per_hour = model
            .total(&m("backend_cost_dollars_total"), &[], from, now)
            .map(|c| c / covered * 3600.0);
        let mut backend_lines = Vec::new();
        for l in model.rate_lines(&breq, &[], &["backend"], from, now, step) {
            backend_lines.push(Line {
                name: format!("{} calls/s", l.name),
                points: l.points,
            });
        }
        for l in model.rate_lines(
            &m("backend_retries_total"),
            &[],
            &["backend"],
            from,
            now,
            step,
        ) {
            backend_lines.push(Line {
                name: format!("{} retries/s", l.name),
                points: l.points,
            });
        }

        Derived {
            now,
            settings,
            frontend: model.frontend.clone(),
            step,
            requests,
            request_rate: requests.map(|r| r / covered),
            bad_requests: has_req.then_some(bad),
            availability,
            budget_spent,
            burn,
            data_secs,
            short: data_secs.is_some() && !fits(w),
            burn_short: BURN_WINDOWS.map(|bw| data_secs.is_some() && !fits(bw)),
            events,
            slo_health: sli::slo_health(budget_spent, burn),
            p95,
            p95_health,
            cache_hit_ratio,
            unauthorized,
            audit_write_errors: model.total(&m("audit_write_errors_total"), &[], from, now),
            requests_by_class: class_lines.into_values().collect(),
            outcomes,
            frontends: frontend_rows(model, from, now, covered, slo),
            op_latency,
            p95_by_op: model.quantile_lines(&dur, &[], &["operation"], &[0.95], from, now, step),
            latency_by_cache: model.quantile_lines(
                &dur,
                &[],
                &["cache"],
                &[0.5, 0.95],
                from,
                now,
                step,
            ),
            backend_latency: model.quantile_lines(
                &m("backend_duration_seconds"),
                &[],
                &["backend"],
                &[0.5, 0.95, 0.99],
                from,
                now,
                step,
            ),
            throttled,
            throttled_by_scope: model.rate_lines(&thr, &[], &["scope"], from, now, step),
            throttled_by_principal: model.rate_lines(&thr, &[], &["principal"], from, now, step),
            throttle_rows,
            limits,
            denials_by_reason: model.rate_lines(&un, &[], &["reason"], from, now, step),
            top_principals: top(model.increase_by(&un, &[], &["principal"], from, now), 10),
            top_keys: top(model.increase_by(&un, &[], &["key"], from, now), 10),
            denied_records,
            audit: endpoint_state(&model.denied),
            rotation_rows,
            rotation_source,
            status: endpoint_state(&model.status),
            compliance,
            overdue_keys,
            rotations: model.increase_by(
                &m("key_rotations_total"),
                &[],
                &["outcome", "trigger"],
                from,
                now,
            ),
            caches,
            hit_ratio_lines,
            cache_entry_lines: {
                let mut v =
                    model.gauge_lines(&m("cache_entries"), &[], &["cache"], from, now, step);
                for mut l in
                    model.gauge_lines(&m("cache_stale_entries"), &[], &["cache"], from, now, step)
                {
                    l.name = format!("{} stale", l.name);
                    v.push(l);
                }
                v
            },
            backends,
            backend_lines,
            cost_per_hour,
        }
    }

    /// The text for a windowed figure: `text`, or "n/a (12 min of data)" when the window is
    /// longer than the data.
    pub fn windowed(&self, text: String) -> String {
        match self.data_secs {
            Some(d) if self.short => na(d),
            _ => text,
        }
    }

    /// Text for burn rate `i` of [`BURN_WINDOWS`].
    pub fn burn_text(&self, i: usize) -> String {
        match (self.burn.get(i).copied().flatten(), self.data_secs) {
            (Some(b), _) => format!("{b:.2}"),
            (None, Some(d)) if self.burn_short.get(i).copied().unwrap_or(false) => na(d),
            _ => "no data yet".into(),
        }
    }

    /// Backends for the Overview breaker list.
    pub fn breakers(&self) -> impl Iterator<Item = (&str, Option<Circuit>)> {
        self.backends
            .iter()
            .map(|b| (b.backend.as_str(), b.circuit))
    }
}

/// Events in `[from, now]` as chart markers: the sidecars' event logs, or (Prometheus keeps
/// none) breaker transitions and rotations read from their counters.
fn event_markers(model: &Model, from: f64, now: f64) -> Vec<EventMarker> {
    let marker = |source: String, e: super::backfill::Event| EventMarker {
        x: e.time - now,
        time: e.time,
        kind: e.kind,
        detail: e.detail,
        source,
    };
    if model.events.values().all(Vec::is_empty) {
        return super::backfill::events_from_counters(model, from, now)
            .into_iter()
            .map(|e| marker(String::new(), e))
            .collect();
    }
    model
        .events_in(from, now)
        .into_iter()
        .map(|(source, e)| marker(source, e))
        .collect()
}

/// "n/a (12 min of data)".
pub fn na(data_secs: f64) -> String {
    if data_secs < 90.0 {
        format!("n/a ({data_secs:.0} s of data)")
    } else if data_secs < 5400.0 {
        format!("n/a ({:.0} min of data)", data_secs / 60.0)
    } else {
        format!("n/a ({:.1} h of data)", data_secs / 3600.0)
    }
}

#[cfg(test)]
#[path = "derive_tests.rs"]
mod tests;

#[cfg(test)]
#[path = "burn_tests.rs"]
mod burn_tests;
