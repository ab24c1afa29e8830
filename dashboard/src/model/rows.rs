//! Row builders for the derived view data that combine several metric families or a family
//! with `/v1/status`: limits with observed rates (headroom), rotation gauges per key, cache hit
//! ratio over time.

use std::collections::BTreeMap;

use super::derive::{Bound, LimitRow};
use super::query::Line;
use super::status::{self, KeyRotationMetrics};
use super::store::Model;

type Points = Vec<[f64; 2]>;

fn m(name: &str) -> String {
    format!("kms_sidecar_{name}")
}

pub(crate) fn hit_ratio_lines(
    model: &Model,
    creq: &str,
    from: f64,
    now: f64,
    step: f64,
) -> Vec<Line> {
    let lines = model.rate_lines(creq, &[], &["cache", "result"], from, now, step);
    // per cache: (hits per second, all lookups per second) on the same grid
    let mut per_cache: BTreeMap<String, (Points, Points)> = BTreeMap::new();
    for l in lines {
        let Some((cache, result)) = l.name.split_once(" / ") else {
            continue;
        };
        let e = per_cache.entry(cache.to_string()).or_insert_with(|| {
            let z: Vec<[f64; 2]> = l.points.iter().map(|p| [p[0], 0.0]).collect();
            (z.clone(), z)
        });
        for (i, p) in l.points.iter().enumerate() {
            if result == "hit"
                && let Some(h) = e.0.get_mut(i)
            {
                h[1] += p[1];
            }
            if let Some(a) = e.1.get_mut(i) {
                a[1] += p[1];
            }
        }
    }
    per_cache
        .into_iter()
        .map(|(cache, (hits, all))| Line {
            name: format!("{cache} hit ratio"),
            points: hits
                .iter()
                .zip(&all)
                .filter(|(_, a)| a[1] > 0.0)
                .map(|(h, a)| [h[0], h[1] / a[1]])
                .collect(),
        })
        .collect()
}

/// Configured limits with what traffic asked of each: the observed rate over the last minute
/// (headroom) and the busiest minute of the window (`peak`), from the first frame.
pub(crate) fn limit_rows(
    model: &Model,
    statuses: &[&status::Status],
    from: f64,
    now: f64,
) -> Vec<LimitRow> {
    let recent = 60.0_f64.max(2.0 * model.interval_secs);
    // per second of the data the last minute holds (less than a minute right after a start)
    let t0 = model.first_time();
    let span = t0.map_or(recent, |t0| (now - t0).clamp(1.0, recent));
    let req = m("requests_total");
    let admitted_family = m("rate_limit_admitted_total");
    let thr = m("throttled_total");
    // Calls in [a, b] that the limit `scope` counts, for `who` (a key, backend or principal). A
    // principal asked for its admitted calls plus its refused ones (any scope).
    let count = |scope: &str, who: &str, a: f64, b: f64| -> Option<f64> {
        match scope {
            "global" => model.total(&req, &[], a, b),
            "key" => model.total(&m("key_operations_total"), &[("key", who)], a, b),
            "backend" => model.total(&m("backend_requests_total"), &[("backend", who)], a, b),
            "principal" => model
                .total(&admitted_family, &[("principal", who)], a, b)
                .map(|n| {
                    n + model
                        .total(&thr, &[("principal", who)], a, b)
                        .unwrap_or(0.0)
                }),
            _ => None,
        }
    };
    // the busiest whole minute of the window that the data covers
    let start = t0.map_or(now, |t0| t0.max(from));
    let peak = |scope: &str, who: &str| -> Option<f64> {
        let minutes = ((now - start) / 60.0).floor().max(0.0) as usize;
        (0..minutes)
            .filter_map(|k| {
                let b = now - 60.0 * k as f64;
                count(scope, who, b - 60.0, b)
            })
            .map(|n| n / 60.0)
            .reduce(f64::max)
    };
    let mut rows: Vec<LimitRow> = Vec::new();
    let mut from_status: BTreeMap<(String, String), (f64, f64)> = BTreeMap::new();
    for s in statuses {
        for l in &s.limits {
            let e = from_status
                .entry((l.scope.clone(), l.name.clone()))
                .or_insert((0.0, 0.0));
            e.0 += l.rate_per_second;
            e.1 += l.burst;
        }
    }
    let row = |scope: &str, name: &str, rate: f64, burst: Option<f64>| LimitRow {
        scope: scope.to_string(),
        name: name.to_string(),
        rate_per_second: rate,
        burst,
        observed: None,
        peak: None,
        headroom: None,
        bound: Bound::Exact,
        principal: None,
    };
    if from_status.is_empty() {
        for (k, v) in model.gauge_by(&m("rate_limit_per_second"), &[], &["scope", "name"]) {
            let (scope, name) = k.split_once(" / ").unwrap_or((&k, "-"));
            rows.push(row(scope, name, v, None));
        }
    } else {
        for ((scope, name), (rate, burst)) in from_status {
            rows.push(row(&scope, &name, rate, Some(burst)));
        }
    }
    // Principals. A sidecar with `rate_limit_admitted_total` counts each principal's admitted
    // calls: admitted + refused (any scope) is exactly what it asked for. An older one counts
    // only refusals, so the rate is a bound: a refused principal asked for at least its limit
    // plus its refusals; one never refused made at most all calls. A principal limit of its own
    // is its name; `default` (and `other` in the gauge) is the limit of every other principal,
    // so its row shows the one of those that asked most in the window.
    let admitted_window = model.increase_by(&admitted_family, &[], &["principal"], from, now);
    let refused_window = model.increase_by(&thr, &[], &["principal"], from, now);
    let refused = model.increase_by(
        &thr,
        &[("scope", "principal")],
        &["principal"],
        now - recent,
        now,
    );
    // principals with a limit of their own (a principal may itself be called `default`)
    let named: Vec<String> = rows
        .iter()
        .filter(|r| r.scope == "principal" && r.name != "default" && r.name != "other")
        .map(|r| r.name.clone())
        .collect();
    let governed_by = |row: &str, p: &str| {
        if row == "default" || row == "other" {
            !named.iter().any(|n| n == p) || p == "other"
        } else {
            p == row
        }
    };
    let all_rate = model.total(&req, &[], now - recent, now).map(|n| n / span);
    for r in &mut rows {
        if r.scope == "principal" && !admitted_window.is_empty() {
            let asked = |p: &str| {
                admitted_window.get(p).copied().unwrap_or(0.0)
                    + refused_window.get(p).copied().unwrap_or(0.0)
            };
            let busiest = admitted_window
                .keys()
                .chain(refused_window.keys())
                .filter(|p| governed_by(&r.name, p))
                .max_by(|a, b| asked(a).total_cmp(&asked(b)).then(b.cmp(a)))
                .cloned();
            if let Some(p) = &busiest {
                r.observed = count("principal", p, now - recent, now).map(|n| n / span);
                r.peak = peak("principal", p);
            }
            r.principal = busiest;
        } else if r.scope == "principal" {
            let own = refused
                .iter()
                .filter(|(p, _)| governed_by(&r.name, p))
                .max_by(|a, b| a.1.total_cmp(b.1))
                .map(|(p, n)| (p.clone(), *n));
            match own {
                Some((p, n)) if n > 0.0 => {
                    // it was held to its limit and asked for the refused calls on top
                    r.observed = Some(r.rate_per_second + n / span);
                    r.bound = Bound::AtLeast;
                    r.principal = Some(p);
                }
                _ => {
                    r.observed = all_rate;
                    r.bound = Bound::AtMost;
                }
            }
        } else {
            r.observed = count(&r.scope, &r.name, now - recent, now).map(|n| n / span);
            r.peak = peak(&r.scope, &r.name);
        }
        r.headroom = r
            .observed
            .filter(|_| r.rate_per_second > 0.0)
            .map(|o| 1.0 - o / r.rate_per_second);
    }
    rows
}

pub(crate) fn rotation_metrics(model: &Model) -> Vec<KeyRotationMetrics> {
    let mut keys: BTreeMap<String, KeyRotationMetrics> = BTreeMap::new();
    let fams = [
        "key_rotation_enabled",
        "key_last_rotation_timestamp_seconds",
        "key_rotation_period_seconds",
        "key_rotation_overdue",
    ];
    for (i, f) in fams.iter().enumerate() {
        for (id, h) in model.select(&m(f), &[]) {
            let Some(key) = id.labels.get("key") else {
                continue;
            };
            let e = keys
                .entry(key.clone())
                .or_insert_with(|| KeyRotationMetrics {
                    key: key.clone(),
                    ..KeyRotationMetrics::default()
                });
            if let Some(a) = id.labels.get("alias").filter(|a| !a.is_empty()) {
                e.alias = a.clone();
            }
            let v = h.last().map(|p| p.1);
            match i {
                0 => e.enabled = v,
                1 => e.last_rotation = v,
                2 => e.period_seconds = v,
                _ => e.overdue = v,
            }
        }
    }
    keys.into_values().collect()
}
