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

/// Families whose series carry a `frontend` label (histograms by their base name: the
/// `_bucket`, `_sum` and `_count` series all split).
pub const SPLIT_FAMILIES: [&str; 3] = [
    "kms_sidecar_requests_total",
    "kms_sidecar_request_duration_seconds",
    "kms_sidecar_unauthorized_total",
];

/// Where a front-end-scoped model ([`Model::for_frontend`]) keeps every front-end's
/// `ThrottlingException` answers. Not a metric name a sidecar can export (no `kms_sidecar_`
/// prefix, and `:` marks recording rules, never scraped families).
pub const ALL_THROTTLING: &str = "dashboard:throttling_answers_all_frontends";

/// True when the series of family `name` carry a `frontend` label.
pub fn is_split(name: &str) -> bool {
    SPLIT_FAMILIES.iter().any(|f| {
        name.strip_prefix(f)
            .is_some_and(|rest| matches!(rest, "" | "_bucket" | "_sum" | "_count"))
    })
}

/// The front-end of one series of a split family (unlabelled: `aws_json`).
pub fn frontend_of_series(labels: &super::prom::Labels) -> &str {
    labels
        .get("frontend")
        .map_or(DEFAULT_FRONTEND, String::as_str)
}

/// The front-ends that answered calls, for the front-end selector: every `frontend` value of
/// `kms_sidecar_requests_total` (unlabelled as `aws_json`), without the admin API's refusals.
pub fn frontends_seen(model: &Model) -> Vec<String> {
    let mut seen: Vec<String> = model
        .select("kms_sidecar_requests_total", &[])
        .map(|(id, _)| frontend_of_series(&id.labels).to_string())
        .filter(|fe| fe != "admin")
        .collect();
    seen.sort();
    seen.dedup();
    seen
}

impl Model {
    /// The share of the shared limiters' refusals (`throttled_total` scope `global` or `backend`,
    /// which carry no front-end) that belongs to the front-end this model is scoped to, over
    /// `[from, now]`: its share of all `ThrottlingException` answers, as [`frontend_rows`]
    /// shares them. 1 for an unscoped model.
    pub fn shared_throttle_share(&self, from: f64, now: f64) -> f64 {
        if self.frontend.is_none() {
            return 1.0;
        }
        let all = self.total(ALL_THROTTLING, &[], from, now).unwrap_or(0.0);
        let mine = self
            .total(
                "kms_sidecar_requests_total",
                &[("outcome", "ThrottlingException")],
                from,
                now,
            )
            .unwrap_or(0.0);
        if all > 0.0 { mine / all } else { 0.0 }
    }
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::derive::{Derived, Settings};
    use crate::model::prom::parse;
    use crate::model::store::ModelConfig;

    /// One sidecar mid-upgrade: unlabelled and labelled AWS JSON series, KMS v2, and the admin
    /// API's refusals; 40 ThrottlingException answers, 20 of them by the shared global limit.
    fn text(k: u32) -> String {
        format!(
            "kms_sidecar_requests_total{{operation=\"Decrypt\",outcome=\"ok\"}} {}\n\
kms_sidecar_requests_total{{frontend=\"aws_json\",operation=\"Decrypt\",outcome=\"ok\"}} {}\n\
kms_sidecar_requests_total{{frontend=\"aws_json\",operation=\"Decrypt\",outcome=\"ThrottlingException\"}} {}\n\
kms_sidecar_requests_total{{frontend=\"kmsv2\",operation=\"Decrypt\",outcome=\"ok\"}} {}\n\
kms_sidecar_requests_total{{frontend=\"kmsv2\",operation=\"Decrypt\",outcome=\"KMSInternalException\"}} {}\n\
kms_sidecar_requests_total{{frontend=\"kmsv2\",operation=\"Decrypt\",outcome=\"ThrottlingException\"}} {}\n\
kms_sidecar_throttled_total{{principal=\"a\",scope=\"global\"}} {}\n\
kms_sidecar_throttled_total{{principal=\"a\",scope=\"principal\"}} {}\n\
kms_sidecar_unauthorized_total{{frontend=\"kmsv2\",principal=\"unknown\",operation=\"Decrypt\",key=\"none\",reason=\"bad_signature\"}} {}\n\
kms_sidecar_unauthorized_total{{frontend=\"aws_json\",principal=\"eve\",operation=\"Decrypt\",key=\"k1\",reason=\"policy_denied\"}} {}\n\
kms_sidecar_unauthorized_total{{frontend=\"admin\",principal=\"unknown\",operation=\"admin\",key=\"none\",reason=\"missing_signature\"}} {}\n\
kms_sidecar_request_duration_seconds_bucket{{frontend=\"kmsv2\",operation=\"Decrypt\",cache=\"miss\",le=\"0.001\"}} {}\n\
kms_sidecar_request_duration_seconds_bucket{{frontend=\"kmsv2\",operation=\"Decrypt\",cache=\"miss\",le=\"+Inf\"}} {}\n\
kms_sidecar_request_duration_seconds_bucket{{operation=\"Decrypt\",cache=\"miss\",le=\"0.001\"}} 0\n\
kms_sidecar_request_duration_seconds_bucket{{operation=\"Decrypt\",cache=\"miss\",le=\"+Inf\"}} {}\n",
            500 * k,
            100 * k,
            30 * k,
            1000 * k,
            2 * k,
            10 * k,
            20 * k,
            20 * k,
            4 * k,
            k,
            7 * k,
            1012 * k,
            1012 * k,
            600 * k,
        )
    }

    #[test]
    fn every_figure_scoped_to_one_front_end() {
        let mut model = Model::new(ModelConfig::default());
        model.ingest("s", 0.0, &parse(&text(0)).unwrap());
        model.ingest("s", 600.0, &parse(&text(1)).unwrap());
        assert_eq!(frontends_seen(&model), ["aws_json", "kmsv2"]);
        let settings = Settings {
            window_secs: 600.0,
            ..Settings::default()
        };
        let all = Derived::compute(&model, settings, 600.0);
        assert_eq!(all.frontend, None);
        assert_eq!(all.requests, Some(1642.0));
        assert_eq!(all.throttled, Some(40.0));

        let kmsv2 = model.for_frontend("kmsv2");
        // its 10 of the 40 ThrottlingException answers: a quarter of the 20 shared refusals
        assert_eq!(kmsv2.shared_throttle_share(0.0, 600.0), 0.25);
        let d = Derived::compute(&kmsv2, settings, 600.0);
        assert_eq!(d.frontend.as_deref(), Some("kmsv2"));
        assert_eq!(d.requests, Some(1012.0));
        assert_eq!(d.bad_requests, Some(2.0 + 5.0));
        assert!((d.availability.unwrap() - (1.0 - 7.0 / 1012.0)).abs() < 1e-12);
        assert_eq!(d.throttled, Some(10.0));
        assert_eq!(d.unauthorized, Some(4.0));
        // every call under 1 ms: the unlabelled (aws_json) buckets are not mixed in
        assert!((d.p95.unwrap() - 0.001 * 0.95).abs() < 1e-12, "{:?}", d.p95);
        // the same availability as its row in the unscoped "By front-end" table
        let row = all
            .frontends
            .iter()
            .find(|r| r.frontend == "kmsv2")
            .unwrap();
        assert_eq!(row.availability, d.availability);
        // shared families stay whole
        assert_eq!(
            kmsv2.total("kms_sidecar_throttled_total", &[], 0.0, 600.0),
            Some(40.0)
        );

        // aws_json: labelled and unlabelled series together, no admin refusals
        let d = Derived::compute(&model.for_frontend("aws_json"), settings, 600.0);
        assert_eq!(d.requests, Some(630.0));
        assert_eq!(d.bad_requests, Some(15.0));
        assert_eq!(d.throttled, Some(30.0));
        assert_eq!(d.unauthorized, Some(1.0));
        assert_eq!(d.frontends.len(), 1);
    }
}
