//! UI tests: the real app drawn headless by egui_kittest on a fixed clock, found by role and label
//! as a screen reader would, with fixture data covering the whole metrics contract.
#![forbid(unsafe_code)]

use egui::Role;
use egui_kittest::Harness;
use egui_kittest::kittest::Queryable;
use kms_dashboard::app::DashboardApp;
use kms_dashboard::fixture::{self, NOW};
use kms_dashboard::model::{Endpoint, Model, ModelConfig, Settings};
use kms_dashboard::source::{FetchSettings, Shared};
use kms_dashboard::views::View;

fn app(model: Model) -> DashboardApp {
    let shared = Shared::new(
        model,
        FetchSettings {
            interval_secs: 5.0,
            window_secs: 3600.0,
        },
    );
    DashboardApp::new(shared, Settings::default(), 5.0, "sidecar: fixture".into())
}

fn harness(model: Model) -> Harness<'static, DashboardApp> {
    harness_at(model, NOW)
}

fn harness_at(model: Model, now: f64) -> Harness<'static, DashboardApp> {
    let mut h = Harness::builder()
        .with_size([1400.0, 2400.0])
        .build_ui_state(
            move |ui, app: &mut DashboardApp| app.show(ui, now),
            app(model),
        );
    h.run();
    h
}

fn fixture_model() -> Model {
    fixture::model(12, 7200.0, 10.0)
}

fn open(h: &mut Harness<'static, DashboardApp>, view: View) {
    h.get_by_role_and_label(Role::Button, view.tab()).click();
    h.run();
    assert_eq!(h.state().view, view);
}

fn no_nan(h: &Harness<'static, DashboardApp>) {
    assert_eq!(h.query_all_by_label_contains("NaN").count(), 0);
    assert_eq!(h.query_all_by_label_contains("inf").count(), 0);
}

#[test]
fn navigates_every_view_by_its_tab() {
    let mut h = harness(fixture_model());
    let headings = [
        (View::Latency, "Latency"),
        (View::Throttling, "Throttling"),
        (View::Unauthorized, "Unauthorized access"),
        (View::Rotation, "Rotation compliance"),
        (View::CacheBackend, "Cache and backend"),
        (View::Overview, "Overview"),
    ];
    for (view, heading) in headings {
        open(&mut h, view);
        h.get_by_role_and_label(Role::Label, heading);
        no_nan(&h);
    }
}

#[test]
fn overview_shows_slo_tiles_and_breaker() {
    let h = harness(fixture_model());
    h.get_by_role_and_label(Role::Label, "Overview");
    h.get_by_label("Availability (1 h)");
    h.get_by_label("Error budget spent (1 h)");
    h.get_by_label("of the 30-day SLO period's budget");
    h.get_by_label("Burn rate (5m)");
    h.get_by_label("Burn rate (1h)");
    h.get_by_label("Burn rate (6h)");
    h.get_by_label("Breaker: embedded");
    h.get_by_label("closed");
    h.get_by_label("SLO 99.90 %");
    h.get_by_label("Requests per second by outcome class");
    // fixture: 1 DependencyTimeoutException per 2500 calls -> availability 99.960 % (its
    // ThrottlingExceptions are over principal and key quotas: correct answers), on the tile and on
    // the one "By front-end" row (the fixture's series have no frontend label: AWS JSON)
    assert_eq!(h.get_all_by_label("99.960 %").count(), 2);
    h.get_by_label("aws_json");
    h.get_by_label("ThrottlingException");
    no_nan(&h);
}

#[test]
fn rotation_table_lists_the_overdue_key_first() {
    let mut h = harness(fixture_model());
    open(&mut h, View::Rotation);
    h.get_by_label("Keys");
    let overdue = h.get_by_label(fixture::OVERDUE_ALIAS).rect();
    let other = h.get_by_label("alias/service-01").rect();
    assert!(overdue.min.y < other.min.y, "{overdue:?} vs {other:?}");
    // 30 days overdue, and the row's cells line up with it
    let days = h.get_by_label("30").rect();
    assert!((days.center().y - overdue.center().y).abs() < 2.0);
    // 12 keys: key 0 overdue, key 3 rotation off -> 10 of 12 compliant
    h.get_by_label("83.3 %");
    h.get_by_label("2 of 12");
}

#[test]
fn unauthorized_view_shows_the_denied_audit_record() {
    let mut h = harness(fixture_model());
    open(&mut h, View::Unauthorized);
    h.get_by_label("Latest denied calls (audit log)");
    h.get_by_label("Top principals");
    // the newest record's row: request id, time, principal and reason on one line
    let y = h.get_by_label("5d2815b3-0000000002a").rect().center().y;
    let same_row = |label: &str| {
        h.get_all_by_label(label)
            .any(|n| (n.rect().center().y - y).abs() < 2.0)
    };
    assert!(same_row("2026-11-23 07:01:09"));
    assert!(same_row(fixture::DENIED_PRINCIPAL));
    assert!(same_row("policy_denied"));
    assert!(same_row("AccessDeniedException"));
}

#[test]
fn unreachable_source_shows_a_banner_with_the_last_good_scrape() {
    let mut model = fixture_model();
    model.record_attempt(
        fixture::SOURCE,
        NOW + 10.0,
        Err("GET http://127.0.0.1:7301/metrics: connection refused".into()),
    );
    let h = harness_at(model, NOW + 10.0);
    h.get_by_label_contains("Source unreachable: http://127.0.0.1:7301");
    h.get_by_label_contains("connection refused");
    // the last good scrape was 10 s before the failure
    h.get_by_label_contains("last good scrape: 2026-11-23 07:02:09 UTC (10 s ago)");
}

#[test]
fn empty_and_not_served_endpoints_say_so_and_never_nan() {
    let mut model = Model::new(ModelConfig::default());
    let src = "http://127.0.0.1:7301";
    // what today's sidecar serves: only the request families, 404 on /v1/status and /v1/audit
    let text = "# TYPE kms_sidecar_requests_total counter\n\
kms_sidecar_requests_total{operation=\"Encrypt\",outcome=\"ok\"} 3\n";
    let samples = kms_dashboard::model::prom::parse(text).unwrap();
    model.ingest(src, NOW - 20.0, &samples);
    model.record_attempt(src, NOW - 20.0, Ok(()));
    model.status.insert(src.into(), Endpoint::NotServed);
    model.denied.insert(src.into(), Endpoint::NotServed);
    let mut h = harness(model);
    assert!(h.query_all_by_label_contains("no data yet").count() >= 3);
    no_nan(&h);
    for view in View::ALL {
        open(&mut h, view);
        no_nan(&h);
        assert!(
            h.query_all_by_label_contains("no data yet").count() >= 1,
            "{view:?}"
        );
    }
    open(&mut h, View::Unauthorized);
    h.get_by_label("/v1/audit is not available from this sidecar yet.");
    open(&mut h, View::Rotation);
    h.get_by_label_contains("/v1/status is not available from this sidecar yet");
    assert_eq!(
        h.query_all_by_label_contains("Source unreachable").count(),
        0
    );
}

#[test]
fn window_selector_changes_the_window() {
    let mut h = harness(fixture_model());
    h.get_all_by_role(Role::ComboBox).next().unwrap().click();
    h.run();
    h.get_by_role_and_label(Role::Button, "5 min").click();
    h.run();
    h.get_by_label("Availability (5 min)");
}

#[test]
fn overview_has_a_row_per_front_end() {
    let mut model = Model::new(ModelConfig::default());
    let src = "http://127.0.0.1:7301";
    // 10 minutes of one sidecar serving both protocols: KMS v2 answers 3 of 1 200 calls with a
    // server fault (99.750 %, below the 99.9 % SLO), AWS JSON 600 calls without fault
    let text = |i: u64| {
        format!(
            "# TYPE kms_sidecar_requests_total counter\n\
kms_sidecar_requests_total{{frontend=\"aws_json\",operation=\"Decrypt\",outcome=\"ok\"}} {}\n\
kms_sidecar_requests_total{{frontend=\"kmsv2\",operation=\"Decrypt\",outcome=\"ok\"}} {}\n\
kms_sidecar_requests_total{{frontend=\"kmsv2\",operation=\"Decrypt\",outcome=\"KMSInternalException\"}} {}\n",
            600 * i,
            1197 * i,
            3 * i
        )
    };
    for (t, i) in [(NOW - 600.0, 0), (NOW, 1)] {
        let samples = kms_dashboard::model::prom::parse(&text(i)).unwrap();
        model.ingest(src, t, &samples);
        model.record_attempt(src, t, Ok(()));
    }
    let h = harness(model);
    h.get_by_label("By front-end (1 h)");
    let y = h.get_by_label("kmsv2").rect().center().y;
    let same_row = |label: &str| {
        h.get_all_by_label(label)
            .any(|n| (n.rect().center().y - y).abs() < 2.0)
    };
    assert!(same_row("2.0/s"), "1 200 calls in 600 s");
    assert!(same_row("99.750 %"));
    let aws = h.get_by_label("aws_json").rect().center().y;
    assert!(aws < y, "rows by name");
    no_nan(&h);
}

#[test]
fn front_end_selector_scopes_every_view() {
    let mut model = Model::new(ModelConfig::default());
    let src = "http://127.0.0.1:7301";
    // 10 minutes: AWS JSON 600 calls, KMS v2 1 200 (3 server faults) and 2 denials
    let text = |i: u64| {
        format!(
            "kms_sidecar_requests_total{{frontend=\"aws_json\",operation=\"Decrypt\",outcome=\"ok\"}} {}\n\
kms_sidecar_requests_total{{frontend=\"kmsv2\",operation=\"Decrypt\",outcome=\"ok\"}} {}\n\
kms_sidecar_requests_total{{frontend=\"kmsv2\",operation=\"Decrypt\",outcome=\"KMSInternalException\"}} {}\n\
kms_sidecar_unauthorized_total{{frontend=\"kmsv2\",principal=\"unknown\",operation=\"Decrypt\",key=\"none\",reason=\"unknown_client\"}} {}\n",
            600 * i,
            1197 * i,
            3 * i,
            2 * i
        )
    };
    for (t, i) in [(NOW - 600.0, 0), (NOW, 1)] {
        let samples = kms_dashboard::model::prom::parse(&text(i)).unwrap();
        model.ingest(src, t, &samples);
        model.record_attempt(src, t, Ok(()));
    }
    let mut h = harness(model);
    h.get_all_by_role(Role::ComboBox).next().unwrap().click();
    h.run();
    h.get_by_role_and_label(Role::Button, "5 min").click();
    h.run();
    // all front-ends: 1 800 calls in the last 5 min of 10 = 3.0/s, both rows in the table
    assert!(h.query_by_label("3.0/s").is_some());
    assert!(h.query_by_label("aws_json").is_some());
    // the selector: All, then each front-end seen
    // the third selector after Window and Refresh
    h.get_by_label("Front-end");
    h.get_all_by_role(Role::ComboBox).nth(2).unwrap().click();
    h.run();
    h.get_by_role_and_label(Role::Button, "All");
    h.get_by_role_and_label(Role::Button, "kmsv2").click();
    h.run();
    assert_eq!(h.state().frontend.as_deref(), Some("kmsv2"));
    h.get_by_label_contains("Front-end kmsv2: requests, availability");
    // the Overview now reads KMS v2 alone: 2.0/s, its availability and its denials
    assert!(h.query_by_label("3.0/s").is_none());
    assert!(h.query_by_label("aws_json").is_none());
    assert!(h.query_all_by_label("2.0/s").count() >= 1);
    assert!(h.query_all_by_label("99.750 %").count() >= 1);
    open(&mut h, View::Unauthorized);
    h.get_by_label_contains("Front-end kmsv2");
    no_nan(&h);
}
