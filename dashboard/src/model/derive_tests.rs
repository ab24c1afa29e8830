//! Exact numbers for the derived view data, from hand-written scrapes.

use super::*;
use crate::model::prom::parse;
use crate::model::store::ModelConfig;

/// Decrypt outcomes and throttling counters: `global` calls refused by the shared global limit
/// (bad: the caller was within its quota) and `own` refused by the caller's own principal quota
/// (a correct answer), both answered `ThrottlingException`.
fn req(ok: u64, global: u64, own: u64, invalid: u64) -> String {
    let throttled = global + own;
    format!(
        "# TYPE kms_sidecar_requests_total counter\n\
kms_sidecar_requests_total{{operation=\"Decrypt\",outcome=\"ok\"}} {ok}\n\
kms_sidecar_requests_total{{operation=\"Decrypt\",outcome=\"ThrottlingException\"}} {throttled}\n\
kms_sidecar_requests_total{{operation=\"Decrypt\",outcome=\"InvalidCiphertextException\"}} {invalid}\n\
# TYPE kms_sidecar_throttled_total counter\n\
kms_sidecar_throttled_total{{principal=\"a\",scope=\"global\"}} {global}\n\
kms_sidecar_throttled_total{{principal=\"a\",scope=\"principal\"}} {own}\n"
    )
}

fn settings(window: f64, slo: f64) -> Settings {
    Settings {
        window_secs: window,
        slo,
        p95_target_secs: 0.025,
    }
}

#[test]
fn availability_budget_and_burn_over_windows() {
    let mut m = Model::new(ModelConfig::default());
    m.ingest("s", 0.0, &parse(&req(1000, 0, 0, 0)).unwrap());
    // 600 s later: 9 970 ok, 10 throttled by the global limit, 10 over their own quota and 10
    // invalid ciphertexts (client errors and own-quota throttling are correct answers)
    m.ingest("s", 600.0, &parse(&req(10_970, 10, 10, 10)).unwrap());
    let d = Derived::compute(&m, settings(600.0, 0.99), 600.0);
    assert_eq!(d.requests, Some(10_000.0));
    assert_eq!(d.bad_requests, Some(10.0));
    assert!((d.availability.unwrap() - 0.999).abs() < 1e-12);
    // error ratio 0.001 against an allowed 0.01: burn 0.1; 10 minutes of it spend
    // 0.1 * 600 s / 30 days of the period's budget
    assert!((d.budget_spent.unwrap() - 0.1 * 600.0 / (30.0 * 86_400.0)).abs() < 1e-15);
    assert!((d.burn[0].unwrap() - 0.1).abs() < 1e-9, "{:?}", d.burn);
    // 10 minutes of data: the 1 h and 6 h burn rates are not computed over less
    assert_eq!((d.burn[1], d.burn[2]), (None, None));
    assert_eq!(d.burn_short, [false, true, true]);
    assert_eq!(d.burn_text(1), "n/a (10 min of data)");
    assert!(!d.short);
    assert_eq!(d.slo_health, Health::Good);
    assert!((d.request_rate.unwrap() - 10_000.0 / 600.0).abs() < 1e-9);
    assert_eq!(d.outcomes["InvalidCiphertextException"], 10.0);
    // a 1 h window over 10 minutes of data: the rate is per second of data, not of window
    let d = Derived::compute(&m, settings(3600.0, 0.99), 600.0);
    assert!((d.request_rate.unwrap() - 10_000.0 / 600.0).abs() < 1e-9);
    // ... and every windowed figure of a 1 h window says it has only 10 minutes
    assert!(d.short);
    assert_eq!(d.windowed("99 %".into()), "n/a (10 min of data)");
    assert_eq!(d.budget_spent, None);
    let d = Derived::compute(&m, settings(600.0, 0.999), 600.0);
    // at 99.9 % the same traffic burns exactly 1: the budget lasts the period, not yet amber
    assert!((d.burn[0].unwrap() - 1.0).abs() < 1e-9);
    assert_eq!(d.slo_health, Health::Good);
}

#[test]
fn burn_rate_windows_see_different_traffic() {
    let mut m = Model::new(ModelConfig::default());
    m.ingest("s", 0.0, &parse(&req(0, 0, 0, 0)).unwrap());
    // first hour: 36 000 ok; then 5 minutes with 300 throttled by the global limit of 3 000
    m.ingest("s", 3300.0, &parse(&req(36_000, 0, 0, 0)).unwrap());
    m.ingest("s", 3600.0, &parse(&req(38_700, 300, 0, 0)).unwrap());
    let d = Derived::compute(&m, settings(3600.0, 0.999), 3600.0);
    // 5 m: 300 / 3 000 = 10 % errors / 0.1 % allowed = 100
    assert!((d.burn[0].unwrap() - 100.0).abs() < 1e-6);
    // 1 h: 300 / 39 000
    assert!((d.burn[1].unwrap() - 300.0 / 39_000.0 / 0.001).abs() < 1e-6);
    assert_eq!(d.burn[2], None, "an hour of data has no 6 h burn rate");
    assert_eq!(d.burn_text(2), "n/a (60 min of data)");
    // a 5 m burn of 100 with a 1 h burn under 14.4 does not page (the rules need both): amber
    assert_eq!(d.slo_health, Health::Warn);
}

#[test]
fn empty_model_is_all_no_data() {
    let d = Derived::compute(&Model::default(), Settings::default(), 1000.0);
    assert_eq!(d.requests, None);
    assert_eq!(d.availability, None);
    assert_eq!(d.burn, [None; 3]);
    assert_eq!(d.slo_health, Health::Unknown);
    assert_eq!(d.p95, None);
    assert_eq!(d.unauthorized, None);
    assert_eq!(d.throttled, None);
    assert_eq!(d.overdue_keys, None);
    assert_eq!(d.compliance, None);
    assert_eq!(d.rotation_source, RotationSource::None);
    assert_eq!(d.audit, EndpointState::Waiting);
    assert!(d.requests_by_class.is_empty() && d.backends.is_empty() && d.caches.is_empty());
}

#[test]
fn full_contract_families_reach_every_view() {
    let mut m = Model::new(ModelConfig::default());
    let text = |i: u64| {
        format!(
            "kms_sidecar_throttled_total{{principal=\"batch\",scope=\"principal\"}} {t}\n\
kms_sidecar_rate_limit_per_second{{principal=\"global\",scope=\"global\"}} 100\n\
kms_sidecar_requests_total{{operation=\"Encrypt\",outcome=\"ok\"}} {r}\n\
kms_sidecar_unauthorized_total{{principal=\"eve\",operation=\"Decrypt\",key=\"k1\",reason=\"policy_denied\"}} {u}\n\
kms_sidecar_cache_requests_total{{cache=\"decrypt\",result=\"hit\"}} {h}\n\
kms_sidecar_cache_requests_total{{cache=\"decrypt\",result=\"miss\"}} {mi}\n\
kms_sidecar_cache_entries{{cache=\"decrypt\"}} 42\n\
kms_sidecar_circuit_state{{backend=\"embedded\"}} 2\n\
kms_sidecar_backend_cost_dollars_total{{backend=\"embedded\"}} {c}\n\
kms_sidecar_key_rotation_enabled{{key=\"k1\",alias=\"alias/a\"}} 1\n\
kms_sidecar_key_last_rotation_timestamp_seconds{{key=\"k1\",alias=\"alias/a\"}} 0\n\
kms_sidecar_key_rotation_period_seconds{{key=\"k1\",alias=\"alias/a\"}} 50\n\
kms_sidecar_key_rotation_overdue{{key=\"k1\",alias=\"alias/a\"}} 1\n",
            t = 3 * i,
            r = 60 * i,
            u = 2 * i,
            h = 9 * i,
            mi = i,
            c = 0.5 * i as f64,
        )
    };
    m.ingest("s", 0.0, &parse(&text(0)).unwrap());
    m.ingest("s", 60.0, &parse(&text(10)).unwrap());
    m.ingest("s", 120.0, &parse(&text(20)).unwrap());
    let d = Derived::compute(&m, settings(120.0, 0.999), 120.0);
    assert_eq!(d.throttled, Some(60.0));
    assert_eq!(d.throttle_rows[0].principal, "batch");
    assert_eq!(d.throttle_rows[0].per_second, 0.5);
    // global limit 100/s, 1 200 calls in the last minute = 10/s: 90 % headroom
    assert_eq!(d.limits[0].observed, Some(10.0));
    assert!((d.limits[0].headroom.unwrap() - 0.9).abs() < 1e-12);
    assert_eq!(d.unauthorized, Some(40.0));
    assert_eq!(d.top_principals, vec![("eve".to_string(), 40.0)]);
    assert_eq!(d.top_keys, vec![("k1".to_string(), 40.0)]);
    assert_eq!(d.cache_hit_ratio, Some(0.9));
    assert_eq!(d.caches[0].entries, Some(42.0));
    assert_eq!(d.backends[0].circuit, Some(Circuit::Open));
    assert_eq!(d.backends[0].cost, Some(10.0));
    assert_eq!(d.cost_per_hour, Some(300.0));
    assert_eq!(d.rotation_source, RotationSource::Metrics);
    assert_eq!(d.overdue_keys, Some(1));
    assert_eq!(d.compliance, Some(0.0));
    assert_eq!(d.denials_by_reason[0].name, "policy_denied");
    // rates over time: 20 denials a minute, 1/3 per second at every grid point
    assert!(
        d.denials_by_reason[0]
            .points
            .iter()
            .all(|p| (p[1] - 1.0 / 3.0).abs() < 1e-9)
    );
}

/// An older sidecar without the `frontend` label (all AWS JSON) and a newer one serving both the
/// AWS JSON API and KMS v2, `i` = 0 at the start and 1 after ten minutes.
fn fleet(i: u64) -> (String, String) {
    let old = format!(
        "# TYPE kms_sidecar_requests_total counter\n\
kms_sidecar_requests_total{{operation=\"Decrypt\",outcome=\"ok\"}} {ok}\n\
# TYPE kms_sidecar_request_duration_seconds histogram\n\
kms_sidecar_request_duration_seconds_bucket{{operation=\"Decrypt\",cache=\"hit\",le=\"0.001\"}} {a}\n\
kms_sidecar_request_duration_seconds_bucket{{operation=\"Decrypt\",cache=\"hit\",le=\"0.01\"}} {ok}\n\
kms_sidecar_request_duration_seconds_bucket{{operation=\"Decrypt\",cache=\"hit\",le=\"0.1\"}} {ok}\n\
kms_sidecar_request_duration_seconds_bucket{{operation=\"Decrypt\",cache=\"hit\",le=\"+Inf\"}} {ok}\n",
        ok = 1000 * i,
        a = 500 * i,
    );
    let row = |fe: &str, outcome: &str, n: u64| {
        format!(
            "kms_sidecar_requests_total{{frontend=\"{fe}\",operation=\"Decrypt\",outcome=\"{outcome}\"}} {}\n",
            n * i
        )
    };
    let hist = |fe: &str, b: [u64; 4]| {
        ["0.001", "0.01", "0.1", "+Inf"]
            .iter()
            .zip(b)
            .map(|(le, n)| {
                format!(
                    "kms_sidecar_request_duration_seconds_bucket{{frontend=\"{fe}\",operation=\"Decrypt\",cache=\"miss\",le=\"{le}\"}} {}\n",
                    n * i
                )
            })
            .collect::<String>()
    };
    let new = [
        "# TYPE kms_sidecar_requests_total counter\n".to_string(),
        row("aws_json", "ok", 1990),
        row("aws_json", "ThrottlingException", 6),
        row("aws_json", "AccessDeniedException", 4),
        row("kmsv2", "ok", 2990),
        row("kmsv2", "KMSInternalException", 6),
        row("kmsv2", "ThrottlingException", 4),
        "# TYPE kms_sidecar_request_duration_seconds histogram\n".to_string(),
        hist("aws_json", [1500, 1940, 2000, 2000]),
        hist("kmsv2", [0, 2970, 3000, 3000]),
        format!(
            "# TYPE kms_sidecar_throttled_total counter\n\
kms_sidecar_throttled_total{{principal=\"a\",scope=\"global\"}} {g}\n\
kms_sidecar_throttled_total{{principal=\"a\",scope=\"principal\"}} {g}\n\
# TYPE kms_sidecar_unauthorized_total counter\n\
kms_sidecar_unauthorized_total{{frontend=\"aws_json\",principal=\"eve\",operation=\"Decrypt\",key=\"k1\",reason=\"policy_denied\"}} {d}\n\
kms_sidecar_unauthorized_total{{frontend=\"kmsv2\",principal=\"unknown\",operation=\"Decrypt\",key=\"none\",reason=\"unknown_client\"}} {i}\n\
kms_sidecar_unauthorized_total{{frontend=\"admin\",principal=\"unknown\",operation=\"Status\",key=\"none\",reason=\"bad_signature\"}} {a}\n",
            g = 5 * i,
            d = 4 * i,
            a = 2 * i,
        ),
    ]
    .concat();
    (old, new)
}

#[test]
fn figures_per_front_end_with_unlabelled_series_as_aws_json() {
    let mut m = Model::new(ModelConfig::default());
    for (t, i) in [(0.0, 0), (600.0, 1)] {
        let (old, new) = fleet(i);
        m.ingest("old", t, &parse(&old).unwrap());
        m.ingest("new", t, &parse(&new).unwrap());
    }
    let d = Derived::compute(&m, settings(600.0, 0.999), 600.0);
    // the admin API's denials are no front-end's traffic: two rows, by name
    let names: Vec<&str> = d.frontends.iter().map(|r| r.frontend.as_str()).collect();
    assert_eq!(names, ["aws_json", "kmsv2"]);
    let (aws, v2) = (&d.frontends[0], &d.frontends[1]);
    // 1 000 unlabelled + 2 000 labelled AWS JSON calls, 3 000 KMS v2 calls in 600 s
    assert_eq!((aws.requests, v2.requests), (3000.0, 3000.0));
    assert_eq!((aws.request_rate, v2.request_rate), (5.0, 5.0));
    assert_eq!((aws.throttled, v2.throttled), (6.0, 4.0));
    assert_eq!((aws.denied, v2.denied), (4.0, 1.0));
    // 5 shared-limit refusals among 10 ThrottlingExceptions: 3 to AWS JSON, 2 to KMS v2, whose 6
    // server faults make 8 bad events; AccessDeniedException is a correct answer
    assert!((aws.bad - 3.0).abs() < 1e-9 && (v2.bad - 8.0).abs() < 1e-9);
    assert!((aws.availability.unwrap() - 0.999).abs() < 1e-12);
    assert!((v2.availability.unwrap() - 2992.0 / 3000.0).abs() < 1e-12);
    assert_eq!((aws.health, v2.health), (Health::Good, Health::Bad));
    // the rows add up to the fleet's SLI
    assert_eq!(d.requests, Some(6000.0));
    assert!((d.bad_requests.unwrap() - (aws.bad + v2.bad)).abs() < 1e-9);
    // AWS JSON's histogram is both sidecars' buckets summed: 2 000 / 2 940 / 3 000 / 3 000, so
    // rank 2 970 lies halfway into (0.01, 0.1]; KMS v2's is the 0.01 bound itself
    assert!((aws.p99.unwrap() - 0.055).abs() < 1e-12, "{:?}", aws.p99);
    assert!((v2.p99.unwrap() - 0.01).abs() < 1e-12, "{:?}", v2.p99);
    // a window before any traffic has no rows at all
    let d = Derived::compute(&m, settings(300.0, 0.999), 0.0);
    assert!(d.frontends.is_empty());
}

#[test]
fn headroom_per_scope_and_principal_from_the_first_frame() {
    // The incident: 450 calls/s from `batch` against a 400/s default principal limit.
    // It gets 400/s through and 50/s refused; `alice` has a limit of her own and is not refused.
    let mut m = Model::new(ModelConfig::default());
    let text = |secs: f64| {
        let ok = 400.0 * secs;
        let refused = 50.0 * secs;
        format!(
            "kms_sidecar_requests_total{{operation=\"Encrypt\",outcome=\"ok\"}} {ok}\n\
kms_sidecar_requests_total{{operation=\"Encrypt\",outcome=\"ThrottlingException\"}} {refused}\n\
kms_sidecar_throttled_total{{principal=\"batch\",scope=\"principal\"}} {refused}\n\
kms_sidecar_throttled_total{{principal=\"alice\",scope=\"principal\"}} 0\n"
        )
    };
    for i in 0..=12 {
        let t = f64::from(i) * 10.0;
        m.ingest("s", t, &parse(&text(t)).unwrap());
    }
    publish_limits(
        &mut m,
        &[
            ("global", "global", 1000.0),
            ("principal", "default", 400.0),
            ("principal", "alice", 100.0),
        ],
    );
    let d = Derived::compute(&m, settings(120.0, 0.999), 120.0);
    let row = |name: &str| d.limits.iter().find(|r| r.name == name).unwrap().clone();
    let global = row("global");
    assert_eq!((global.observed, global.bound), (Some(450.0), Bound::Exact));
    assert!((global.headroom.unwrap() - 0.55).abs() < 1e-12);
    let default = row("default");
    assert_eq!(default.bound, Bound::AtLeast);
    assert_eq!(default.principal.as_deref(), Some("batch"));
    assert_eq!(default.observed, Some(450.0));
    assert!(
        (default.headroom.unwrap() + 0.125).abs() < 1e-12,
        "{default:?}"
    );
    // alice is not refused: her rate is at most all calls
    let alice = row("alice");
    assert_eq!((alice.observed, alice.bound), (Some(450.0), Bound::AtMost));
}

#[test]
fn measured_headroom_per_principal_on_the_first_frame_from_the_history() {
    // The same incident read from a sidecar that counts admitted calls per principal, with the
    // dashboard opened afterwards: its first frame has only the /v1/history backfill (fixed
    // clock, no live scrape yet). batch asks 450/s (400 admitted, 50 refused by its own limit),
    // alice 30/s against her 100/s, unknown callers nothing.
    use crate::model::backfill::{HistoryDoc, HistorySeries};
    let times: Vec<f64> = (0..=12).map(|i| 1000.0 + 10.0 * f64::from(i)).collect();
    let series = |name: &str, labels: &[(&str, &str)], per_sec: f64| HistorySeries {
        name: name.into(),
        kind: "counter".into(),
        labels: labels
            .iter()
            .map(|(k, v)| ((*k).to_string(), (*v).to_string()))
            .collect(),
        values: times.iter().map(|t| Some(per_sec * (t - 1000.0))).collect(),
    };
    let doc = HistoryDoc {
        resolution_seconds: 10.0,
        times: times.clone(),
        series: vec![
            series(
                "kms_sidecar_requests_total",
                &[("operation", "Encrypt"), ("outcome", "ok")],
                430.0,
            ),
            series(
                "kms_sidecar_requests_total",
                &[("operation", "Encrypt"), ("outcome", "ThrottlingException")],
                50.0,
            ),
            series(
                "kms_sidecar_throttled_total",
                &[("principal", "batch"), ("scope", "principal")],
                50.0,
            ),
            series(
                "kms_sidecar_rate_limit_admitted_total",
                &[("principal", "batch")],
                400.0,
            ),
            series(
                "kms_sidecar_rate_limit_admitted_total",
                &[("principal", "alice")],
                30.0,
            ),
            series(
                "kms_sidecar_rate_limit_admitted_total",
                &[("principal", "other")],
                0.0,
            ),
        ],
        events: Vec::new(),
    };
    let mut m = Model::new(ModelConfig::default());
    assert_eq!(m.backfill("s", &doc), 13);
    publish_limits(
        &mut m,
        &[
            ("principal", "default", 400.0),
            ("principal", "alice", 100.0),
        ],
    );
    let d = Derived::compute(&m, settings(300.0, 0.999), 1120.0);
    let row = |name: &str| d.limits.iter().find(|r| r.name == name).unwrap().clone();
    let default = row("default");
    assert_eq!(default.bound, Bound::Exact);
    assert_eq!(default.principal.as_deref(), Some("batch"));
    assert!(
        (default.observed.unwrap() - 450.0).abs() < 1e-9,
        "{default:?}"
    );
    assert!((default.headroom.unwrap() + 0.125).abs() < 1e-12);
    // the busiest whole minute of the 2 min of data
    assert!((default.peak.unwrap() - 450.0).abs() < 1e-9, "{default:?}");
    let alice = row("alice");
    assert_eq!(alice.bound, Bound::Exact);
    assert!((alice.observed.unwrap() - 30.0).abs() < 1e-9, "{alice:?}");
    assert!((alice.headroom.unwrap() - 0.7).abs() < 1e-12);
    // 20 s after a start: per second of the data there is, not of a minute
    let d = Derived::compute(&m, settings(300.0, 0.999), 1020.0);
    let alice = d.limits.iter().find(|r| r.name == "alice").unwrap();
    assert!((alice.observed.unwrap() - 30.0).abs() < 1e-9, "{alice:?}");
}

/// Sidecar "s" publishes these limits (`scope`, `name`, rate per second; burst = rate) in
/// `/v1/status`.
fn publish_limits(m: &mut Model, limits: &[(&str, &str, f64)]) {
    let limits = limits
        .iter()
        .map(|&(scope, name, rate)| status::Limit {
            scope: scope.into(),
            name: name.into(),
            rate_per_second: rate,
            burst: rate,
        })
        .collect();
    m.status.insert(
        "s".into(),
        Endpoint::Ok(status::Status {
            limits,
            ..Default::default()
        }),
    );
}
