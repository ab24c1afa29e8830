//! Per-front-end figures for the Overview's "By front-end" table. The sidecar speaks several
//! protocols (the AWS KMS JSON API, the Kubernetes KMS v2 plugin, XKS) through one core, and the
//! request families carry a `frontend` label; this module splits the fleet's SLI numbers by it so
//! an operator can see whether KMS v2 traffic is healthy on its own. Series of sidecars older than
//! the label count as `aws_json`, the only protocol those sidecars spoke.

use std::collections::BTreeMap;

use super::quantile::quantile;
use super::sli::{self, Health};
use super::store::Model;

/// The front-end an unlabelled series belongs to.
pub const DEFAULT_FRONTEND: &str = "aws_json";

/// One front-end's numbers over the selected window.
#[derive(Clone, Debug, PartialEq)]
pub struct FrontendRow {
    /// The `frontend` label value (`aws_json`, `kmsv2`, `xks`).
    pub frontend: String,
    /// Requests answered.
    pub requests: f64,
    /// Requests per second of data in the window.
    pub request_rate: f64,
    /// Bad events attributed to this front-end (see [`frontend_rows`]).
    pub bad: f64,
    /// Good / all, the fleet SLI's definition.
    pub availability: Option<f64>,
    /// Green at or above the SLO, red below it (the window's budget is spent), grey without traffic.
    pub health: Health,
    /// p99 request latency.
    pub p99: Option<f64>,
    /// Calls answered `ThrottlingException`, whatever limit refused them.
    pub throttled: f64,
    /// Calls refused by authentication or key policy (`kms_sidecar_unauthorized_total`).
    pub denied: f64,
}

/// The group key of a `by ["frontend"]` query with unlabelled series folded into `aws_json`.
fn frontend_of(key: &str) -> &str {
    if key == "-" { DEFAULT_FRONTEND } else { key }
}

/// Sums a `by frontend` map after folding unlabelled series into `aws_json`.
fn fold(map: BTreeMap<String, f64>) -> BTreeMap<String, f64> {
    let mut out = BTreeMap::new();
    for (k, v) in map {
        *out.entry(frontend_of(&k).to_string()).or_insert(0.0) += v;
    }
    out
}

/// Front-ends with requests in `[from, now]`, by name.
///
/// Availability uses the fleet SLI (`sli.rs`): bad = server faults + calls refused by a shared
/// limiter. Server faults carry the front-end. `kms_sidecar_throttled_total` does not (a limiter
/// sits below the front-ends), so the window's shared-limit refusals are shared out in proportion
/// to each front-end's `ThrottlingException` answers, every one of which a limiter caused. With
/// one front-end throttled this is exact; with several it is an estimate, and the rows' bad events
/// still add up to the fleet's.
pub fn frontend_rows(
    model: &Model,
    from: f64,
    now: f64,
    covered: f64,
    slo: f64,
) -> Vec<FrontendRow> {
    let req = "kms_sidecar_requests_total";
    let by = ["frontend", "outcome"];
    let mut requests: BTreeMap<String, f64> = BTreeMap::new();
    let mut faults: BTreeMap<String, f64> = BTreeMap::new();
    let mut throttled: BTreeMap<String, f64> = BTreeMap::new();
    for (k, v) in model.increase_by(req, &[], &by, from, now) {
        let (fe, outcome) = k.split_once(" / ").unwrap_or((&k, "-"));
        let fe = frontend_of(fe).to_string();
        *requests.entry(fe.clone()).or_insert(0.0) += v;
        if sli::is_bad(outcome) {
            *faults.entry(fe.clone()).or_insert(0.0) += v;
        }
        if outcome == "ThrottlingException" {
            *throttled.entry(fe).or_insert(0.0) += v;
        }
    }
    let shared: f64 = model
        .increase_by("kms_sidecar_throttled_total", &[], &["scope"], from, now)
        .iter()
        .filter(|(scope, _)| sli::is_shared_throttle(scope))
        .map(|(_, v)| v)
        .sum();
    let all_throttled: f64 = throttled.values().sum();
    let denied = fold(model.increase_by(
        "kms_sidecar_unauthorized_total",
        &[],
        &["frontend"],
        from,
        now,
    ));
    let p99 = p99_by_frontend(model, from, now);
    requests
        .into_iter()
        .filter(|(_, n)| *n > 0.0)
        .map(|(fe, n)| {
            let thr = throttled.get(&fe).copied().unwrap_or(0.0);
            let shared_part = if all_throttled > 0.0 {
                shared * thr / all_throttled
            } else {
                0.0
            };
            let bad = faults.get(&fe).copied().unwrap_or(0.0) + shared_part;
            let availability = sli::availability(n, bad);
            FrontendRow {
                requests: n,
                request_rate: n / covered,
                bad,
                availability,
                health: match availability {
                    None => Health::Unknown,
                    Some(a) if a >= slo => Health::Good,
                    Some(_) => Health::Bad,
                },
                p99: p99.get(&fe).copied(),
                throttled: thr,
                denied: denied.get(&fe).copied().unwrap_or(0.0),
                frontend: fe,
            }
        })
        .collect()
}

/// p99 of `kms_sidecar_request_duration_seconds` per front-end. Buckets are summed per bound
/// before the quantile, so labelled and unlabelled `aws_json` series (a fleet mid-upgrade) make
/// one histogram.
fn p99_by_frontend(model: &Model, from: f64, now: f64) -> BTreeMap<String, f64> {
    let buckets = model.buckets_by(
        "kms_sidecar_request_duration_seconds",
        &[],
        &["frontend"],
        from,
        now,
    );
    let mut merged: BTreeMap<String, BTreeMap<u64, (f64, f64)>> = BTreeMap::new();
    for (k, b) in buckets {
        let e = merged.entry(frontend_of(&k).to_string()).or_default();
        for (le, c) in b {
            e.entry(le.to_bits()).or_insert((le, 0.0)).1 += c;
        }
    }
    merged
        .into_iter()
        .filter_map(|(fe, b)| {
            let b: Vec<(f64, f64)> = b.into_values().collect();
            quantile(0.99, &b).map(|q| (fe, q))
        })
        .collect()
}
