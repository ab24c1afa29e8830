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

pub(crate) fn limit_rows(model: &Model, statuses: &[&status::Status], now: f64) -> Vec<LimitRow> {
    let recent = 60.0_f64.max(2.0 * model.interval_secs);
    let per_sec = |inc: Option<f64>| inc.map(|i| i / recent);
    let all_rate = per_sec(model.total(&m("requests_total"), &[], now - recent, now));
    let observed = |scope: &str, name: &str| -> Option<f64> {
        match scope {
            "global" => all_rate,
            "key" => per_sec(model.total(
                &m("key_operations_total"),
                &[("key", name)],
                now - recent,
                now,
            )),
            "backend" => per_sec(model.total(
                &m("backend_requests_total"),
                &[("backend", name)],
                now - recent,
                now,
            )),
            _ => None,
        }
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
    // Principals: refusals per principal over the last minute. A principal limit of its own is
    // its name; `default` (and `other` in the gauge) is the limit of every other principal, so its
    // row shows the most throttled of those.
    let refused = model.increase_by(
        &m("throttled_total"),
        &[("scope", "principal")],
        &["principal"],
        now - recent,
        now,
    );
    let named: Vec<String> = rows
        .iter()
        .filter(|r| r.scope == "principal")
        .map(|r| r.name.clone())
        .collect();
    for r in &mut rows {
        r.observed = observed(&r.scope, &r.name);
        if r.scope == "principal" {
            let own = if r.name == "default" || r.name == "other" {
                refused
                    .iter()
                    .filter(|(p, _)| !named.contains(p) || *p == "other")
                    .max_by(|a, b| a.1.total_cmp(b.1))
                    .map(|(p, n)| (p.clone(), *n))
            } else {
                refused.get(&r.name).map(|n| (r.name.clone(), *n))
            };
            match own {
                Some((p, n)) if n > 0.0 => {
                    // it was held to its limit and asked for the refused calls on top
                    r.observed = Some(r.rate_per_second + n / recent);
                    r.bound = Bound::AtLeast;
                    r.principal = Some(p);
                }
                _ => {
                    r.observed = all_rate;
                    r.bound = Bound::AtMost;
                }
            }
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
