//! The scenario, replayed headless: a sidecar served 450 calls/s for two minutes against a
//! 400/s principal limit with half its backend calls failing for 20 s, and the dashboard opened
//! *afterwards*. Its history (`/v1/history`, as JSON) is the only thing the dashboard knows of the
//! incident; every view must show it from the first frame, with the sidecar's exact counts.
#![forbid(unsafe_code)]
#![allow(clippy::unwrap_used, clippy::expect_used)]

use egui::Role;
use egui_kittest::Harness;
use egui_kittest::kittest::Queryable;
use kms_dashboard::app::DashboardApp;
use kms_dashboard::fixture::NOW;
use kms_dashboard::model::backfill::HistoryDoc;
use kms_dashboard::model::prom::parse;
use kms_dashboard::model::{Model, ModelConfig, Settings};
use kms_dashboard::source::{FetchSettings, Shared};
use kms_dashboard::views::View;

const A: &str = "http://127.0.0.1:7301";
const B: &str = "http://127.0.0.1:7311";
const START: f64 = NOW - 900.0;
const INCIDENT: (f64, f64) = (NOW - 600.0, NOW - 480.0);
const FAULTS: (f64, f64) = (NOW - 560.0, NOW - 540.0);

/// Per-second rates at `t`: (ok, throttled by the principal limit, DependencyTimeoutException).
fn rates(t: f64) -> (f64, f64, f64) {
    let in_incident = t > INCIDENT.0 && t <= INCIDENT.1;
    let in_faults = t > FAULTS.0 && t <= FAULTS.1;
    match (in_incident, in_faults) {
        (true, true) => (200.0, 50.0, 200.0),
        (true, false) => (400.0, 50.0, 0.0),
        _ => (100.0, 0.0, 0.0),
    }
}

/// The counters at `t` (integrated second by second from the start).
fn counters(t: f64) -> (f64, f64, f64) {
    let mut c = (0.0, 0.0, 0.0);
    let mut s = START + 1.0;
    while s <= t {
        let r = rates(s);
        c = (c.0 + r.0, c.1 + r.1, c.2 + r.2);
        s += 1.0;
    }
    c
}

/// The sidecar's `/v1/history` answer at `NOW - 2` (its last sample), as JSON.
fn history_json(faults: bool) -> String {
    let times: Vec<f64> = (0..=89).map(|i| START + f64::from(i) * 10.0).collect();
    let col = |f: &dyn Fn(f64) -> f64| -> Vec<f64> { times.iter().map(|t| f(*t)).collect() };
    let scale = if faults { 1.0 } else { 0.0 };
    let ok = col(&|t| {
        if faults {
            counters(t).0
        } else {
            100.0 * (t - START)
        }
    });
    let thr = col(&|t| counters(t).1 * scale);
    let dep = col(&|t| counters(t).2 * scale);
    let circuit = col(&|t| {
        if faults && t > FAULTS.0 + 5.0 && t <= FAULTS.1 + 10.0 {
            2.0
        } else {
            0.0
        }
    });
    serde_json::json!({
        "resolution_seconds": 10.0,
        "capacity": 2160,
        "max_series": 1024,
        "dropped_series": 0,
        "times": times,
        "series": [
            {"name": "kms_sidecar_requests_total", "type": "counter",
             "labels": {"frontend": "aws_json", "operation": "Encrypt", "outcome": "ok"}, "values": ok},
            {"name": "kms_sidecar_requests_total", "type": "counter",
             "labels": {"frontend": "aws_json", "operation": "Encrypt", "outcome": "ThrottlingException"}, "values": thr},
            {"name": "kms_sidecar_requests_total", "type": "counter",
             "labels": {"frontend": "aws_json", "operation": "Encrypt", "outcome": "DependencyTimeoutException"}, "values": dep},
            {"name": "kms_sidecar_throttled_total", "type": "counter",
             "labels": {"principal": "batch", "scope": "principal"}, "values": thr},
            {"name": "kms_sidecar_circuit_state", "type": "gauge",
             "labels": {"backend": "embedded"}, "values": circuit}
        ],
        "events": if faults { serde_json::json!([
            {"time": START, "kind": "start", "detail": "kms-sidecar 0.1.0 started"},
            {"time": FAULTS.0, "kind": "faults_on", "detail": "{\"error_rate\":0.5}"},
            {"time": FAULTS.0 + 5.0, "kind": "breaker", "detail": "embedded breaker open"},
            {"time": FAULTS.1, "kind": "faults_off", "detail": "fault injection cleared"},
            {"time": FAULTS.1 + 10.0, "kind": "breaker", "detail": "embedded breaker closed"}
        ]) } else { serde_json::json!([]) }
    })
    .to_string()
}

/// The dashboard's model after its first round: history, then one live scrape at `NOW`.
fn opened_after_the_incident(sources: &[&str]) -> Model {
    let mut m = Model::new(ModelConfig::default());
    for s in sources {
        // A has the incident, B served its 100/s undisturbed
        let doc: HistoryDoc = serde_json::from_str(&history_json(*s == A)).unwrap();
        assert_eq!(m.backfill(s, &doc), 90);
        let (ok, thr, dep) = if *s == A {
            counters(NOW)
        } else {
            (100.0 * (NOW - START), 0.0, 0.0)
        };
        let text = format!(
            "kms_sidecar_requests_total{{frontend=\"aws_json\",operation=\"Encrypt\",outcome=\"ok\"}} {ok}\n\
kms_sidecar_requests_total{{frontend=\"aws_json\",operation=\"Encrypt\",outcome=\"ThrottlingException\"}} {thr}\n\
kms_sidecar_requests_total{{frontend=\"aws_json\",operation=\"Encrypt\",outcome=\"DependencyTimeoutException\"}} {dep}\n\
kms_sidecar_throttled_total{{principal=\"batch\",scope=\"principal\"}} {thr}\n\
kms_sidecar_circuit_state{{backend=\"embedded\"}} 0\n"
        );
        m.ingest(s, NOW, &parse(&text).unwrap());
        m.record_attempt(s, NOW, Ok(()));
    }
    m
}

fn harness(model: Model) -> Harness<'static, DashboardApp> {
    let settings = Settings {
        window_secs: 900.0,
        ..Settings::default()
    };
    let shared = Shared::new(
        model,
        FetchSettings {
            interval_secs: 2.0,
            window_secs: 900.0,
        },
    );
    let app = DashboardApp::new(shared, settings, 2.0, "sidecar: incident".into());
    let mut h = Harness::builder()
        .with_size([1400.0, 2600.0])
        .build_ui_state(move |ui, app: &mut DashboardApp| app.show(ui, NOW), app);
    h.run();
    h
}

fn open(h: &mut Harness<'static, DashboardApp>, view: View) {
    h.get_by_role_and_label(Role::Button, view.tab()).click();
    h.run();
}

fn count(n: f64) -> String {
    kms_dashboard::views::fmt::count(Some(n))
}

#[test]
fn a_dashboard_opened_after_the_incident_shows_it_in_every_view() {
    let mut h = harness(opened_after_the_incident(&[A]));
    // Overview: the window is covered (15 min of history), the 1 h and 6 h burn rates are not
    h.get_by_label("Availability (15 min)");
    assert_eq!(h.get_all_by_label("n/a (15 min of data)").count(), 2);
    // bad = 4 000 DependencyTimeoutExceptions (own-quota throttling is a correct answer)
    let (ok, thr, dep) = counters(NOW);
    assert_eq!((thr, dep), (6000.0, 4000.0));
    let availability = 1.0 - dep / (ok + thr + dep);
    let shown = format!("{:.3} %", availability * 100.0);
    assert!(h.get_all_by_label(&shown).count() >= 1, "{shown}");
    // the events, as markers and in the table
    h.get_by_label("Events (15 min; dashed markers on the charts)");
    h.get_by_label("embedded breaker open");
    h.get_by_label("fault injection cleared");
    h.get_by_label("kms-sidecar 0.1.0 started");
    // Throttling: the sidecar's counter delta over the window, not what was scraped since opening
    open(&mut h, View::Throttling);
    h.get_by_label("Throttled calls (15 min)");
    assert!(
        h.get_all_by_label(&count(thr)).count() >= 1,
        "throttled {thr}"
    );
    assert_eq!(h.query_all_by_label_contains("NaN").count(), 0);
}

#[test]
fn the_fleet_view_puts_the_sidecar_in_trouble_first_and_scopes_the_views() {
    let mut h = harness(opened_after_the_incident(&[B, A]));
    h.get_by_label_contains("Fleet (15 min");
    // the fleet table comes first on the page; the events table names its sidecar too
    let a = h.get_all_by_label(A).next().unwrap().rect();
    let b = h.get_all_by_label(B).next().unwrap().rect();
    assert!(
        a.min.y < b.min.y,
        "the throttled sidecar first: {a:?} {b:?}"
    );
    // the fleet's throttled count, then A's alone (the same: B throttled nothing), then B's
    open(&mut h, View::Throttling);
    assert!(h.get_all_by_label(&count(6000.0)).count() >= 1);
    h.get_all_by_label(B).next().unwrap().click();
    h.run();
    h.run();
    assert_eq!(h.state().scope.as_deref(), Some(B));
    h.get_by_label(&format!("Scoped to {B}"));
    assert_eq!(h.query_all_by_label(&count(6000.0)).count(), 0);
    h.get_by_label("whole fleet").click();
    h.run();
    h.run();
    assert_eq!(h.state().scope, None);
}
