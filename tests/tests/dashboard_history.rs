//! The dashboard opened after an incident (issue 16), end to end and scaled down to about 40 s: a
//! real sidecar serves twice its per-principal limit for 25 s with half its backend calls failing
//! for 8 s in the middle; then a dashboard model that never saw any of it is filled by the
//! dashboard's own fetch code (`/v1/history`, then `/metrics`) and must show the throttled calls
//! (exactly the sidecar's counter), the server errors, and the fault and start events.
#![forbid(unsafe_code)]
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::{Duration, Instant};

use aws_sdk_kms::primitives::Blob;
use kms_dashboard::model::{Derived, Model, ModelConfig, Settings};
use kms_dashboard::source;
use kms_sidecar_e2e::{FAULT_ARGS, Sidecar, http_get, http_send, new_key, sum_series};

/// Fault injection (as in faults.rs) and a per-principal limit of 40 calls/s.
fn start() -> (tempfile::TempDir, Sidecar) {
    let dir = tempfile::tempdir().unwrap();
    let args = [&FAULT_ARGS[..], &["--rate-limit-per-principal", "40"]].concat();
    let sidecar = Sidecar::start_args(dir.path(), &args);
    (dir, sidecar)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dashboard_started_after_the_incident_shows_it() {
    let (_dir, sidecar) = start();
    let kms = sidecar.sdk();
    let key = new_key(&kms).await;
    // 25 s at about 80 calls/s from one principal against its 40/s limit
    let began = Instant::now();
    let load = Duration::from_secs(25);
    let mut tasks = Vec::new();
    for _ in 0..8 {
        let (kms, key) = (kms.clone(), key.clone());
        tasks.push(tokio::spawn(async move {
            let mut next = Instant::now();
            while began.elapsed() < load {
                let _ = kms
                    .encrypt()
                    .key_id(&key)
                    .plaintext(Blob::new(vec![7u8; 32]))
                    .send()
                    .await;
                next += Duration::from_millis(100);
                tokio::time::sleep_until(next.into()).await;
            }
        }));
    }
    let admin = sidecar.admin_url.clone();
    tokio::time::sleep(Duration::from_secs(8)).await;
    let (status, body) = http_send(
        "PUT",
        &format!("{admin}/v1/faults"),
        r#"{"error_rate": 0.5}"#,
    )
    .await;
    assert_eq!(status, 200, "{body}");
    tokio::time::sleep(Duration::from_secs(8)).await;
    let (status, body) = http_send("DELETE", &format!("{admin}/v1/faults"), "").await;
    assert_eq!(status, 200, "{body}");
    for t in tasks {
        t.await.unwrap();
    }
    let ended = kms_sidecar::kms::now();
    // wait for the history's next 10 s sample after the load (bounded)
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let (_, body) = http_get(&format!("{admin}/v1/history?since={ended}")).await;
        let doc: serde_json::Value = serde_json::from_str(&body).unwrap();
        if !doc["times"].as_array().unwrap().is_empty() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no history sample after the load"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let metrics = sidecar.metrics().await;
    let throttled = sum_series(&metrics, "kms_sidecar_throttled_total{");
    let server_errors = sum_series(
        &metrics,
        "kms_sidecar_requests_total{frontend=\"aws_json\",operation=\"Encrypt\",outcome=\"DependencyTimeoutException\"}",
    ) + sum_series(
        &metrics,
        "kms_sidecar_requests_total{frontend=\"aws_json\",operation=\"Encrypt\",outcome=\"KMSInternalException\"}",
    ) + sum_series(
        &metrics,
        "kms_sidecar_requests_total{frontend=\"aws_json\",operation=\"Encrypt\",outcome=\"KeyUnavailableException\"}",
    );
    assert!(throttled > 200.0, "the load was throttled: {throttled}");
    assert!(server_errors > 0.0, "the faults failed calls");

    // The dashboard starts now: its first round is history, then /metrics.
    let url = admin.clone();
    let (model, now) = tokio::task::spawn_blocking(move || {
        let agent = source::agent(Duration::from_secs(5));
        let mut model = Model::new(ModelConfig::default());
        let history = source::fetch_history(&agent, &url, 0.0);
        source::apply_history(&mut model, &url, 0.0, history);
        let scrape = source::scrape_sidecar(&agent, &url);
        let now = source::unix_now();
        source::apply_sidecar(&mut model, &url, now, scrape);
        (model, now)
    })
    .await
    .unwrap();
    let settings = Settings {
        window_secs: 300.0,
        ..Settings::default()
    };
    let d = Derived::compute(&model, settings, now);
    // counted since the sidecar started, exactly: nothing before the dashboard opened is lost
    assert_eq!(d.throttled, Some(throttled));
    let errors: f64 = d
        .outcomes
        .iter()
        .filter(|(o, _)| kms_dashboard::model::sli::is_bad(o))
        .map(|(_, n)| n)
        .sum();
    assert_eq!(errors, server_errors);
    // under a minute of data: the 5 min window is not computed over less
    assert!(d.short && d.burn_short[0]);
    // headroom measured, not bounded: the fixture's client (`default`) under the default
    // principal limit, admitted + throttled calls from the sidecar's own counters
    let admitted = sum_series(&metrics, "kms_sidecar_rate_limit_admitted_total{");
    assert!(admitted > 200.0, "admitted calls counted: {admitted}");
    let row = d
        .limits
        .iter()
        .find(|r| r.scope == "principal" && r.name == "default")
        .unwrap();
    assert_eq!(
        row.bound,
        kms_dashboard::model::derive::Bound::Exact,
        "{row:?}"
    );
    assert_eq!(row.principal.as_deref(), Some("default"), "{row:?}");
    assert!(
        row.observed.unwrap() > 1.0 && row.headroom.is_some(),
        "{row:?}"
    );
    let (_, body) = http_get(&format!("{admin}/v1/status")).await;
    let status: serde_json::Value = serde_json::from_str(&body).unwrap();
    let p = status["principals"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["principal"] == "default")
        .unwrap();
    assert!(p["admitted_per_second"].as_f64().unwrap() > 0.0, "{p}");
    let kinds: Vec<&str> = d.events.iter().map(|e| e.kind.as_str()).collect();
    for kind in ["start", "faults_on", "faults_off"] {
        assert!(kinds.contains(&kind), "{kind} in {kinds:?}");
    }
    let _ = sidecar.stop();
}

/// `docs/metrics.md`, "Series at 0 from the start": a sidecar that has served nothing exports
/// every counter series whose labels all come from its configuration, and none of the families
/// whose label values arrive with traffic.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_at_start_have_every_series_known_from_config() {
    let (_dir, sidecar) = start();
    let metrics = sidecar.metrics().await;
    let zero = |series: &str| {
        let line = format!("{series} 0");
        assert!(
            metrics.lines().any(|l| l == line),
            "{series} not at 0 in\n{metrics}"
        );
    };
    for p in ["default", "other"] {
        zero(&format!(
            "kms_sidecar_throttled_total{{principal=\"{p}\",scope=\"principal\"}}"
        ));
        zero(&format!(
            "kms_sidecar_rate_limit_admitted_total{{principal=\"{p}\"}}"
        ));
    }
    for to in ["closed", "half_open", "open"] {
        zero(&format!(
            "kms_sidecar_circuit_transitions_total{{backend=\"embedded\",to=\"{to}\"}}"
        ));
    }
    for op in ["create_version", "encrypt", "decrypt", "destroy", "random"] {
        for outcome in [
            "ok",
            "invalid_ciphertext",
            "material_missing",
            "unavailable",
            "internal",
        ] {
            zero(&format!(
                "kms_sidecar_backend_requests_total{{backend=\"embedded\",operation=\"{op}\",outcome=\"{outcome}\"}}"
            ));
        }
    }
    for reason in ["unavailable", "timeout"] {
        zero(&format!(
            "kms_sidecar_backend_retries_total{{backend=\"embedded\",reason=\"{reason}\"}}"
        ));
    }
    for fault in ["latency", "error", "outage", "throttle"] {
        zero(&format!(
            "kms_sidecar_faults_injected_total{{backend=\"embedded\",fault=\"{fault}\"}}"
        ));
    }
    for result in ["hit", "miss", "stale"] {
        zero(&format!(
            "kms_sidecar_cache_requests_total{{cache=\"decrypt\",result=\"{result}\"}}"
        ));
    }
    for outcome in ["ok", "denied", "error"] {
        zero(&format!(
            "kms_sidecar_audit_events_total{{outcome=\"{outcome}\"}}"
        ));
    }
    zero("kms_sidecar_audit_write_errors_total");
    // label values that arrive with traffic are never pre-created
    for family in [
        "kms_sidecar_requests_total{",
        "kms_sidecar_unauthorized_total{",
        "kms_sidecar_key_operations_total{",
        "kms_sidecar_key_rotations_total{",
        "kms_sidecar_backend_duration_seconds_bucket{",
    ] {
        assert!(
            !metrics.lines().any(|l| l.starts_with(family)),
            "{family} at start in\n{metrics}"
        );
    }
    let _ = sidecar.stop();
}
