//! The JSON report parses (as JSON and as the library's type) and contains every field that
//! `docs/loadtest.md` documents; the human summary has the table. Runs against the in-process
//! baseline responder, so no sidecar is needed.
#![forbid(unsafe_code)]
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use support::{assert_documented_fields, cli};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_report_has_every_documented_field() {
    let dir = tempfile::tempdir().unwrap();
    let json = dir.path().join("run.json");
    let report = cli(&[
        "run",
        "--against-baseline",
        "--no-progress",
        "--rate",
        "200",
        "--duration-secs",
        "1",
        "--warmup-secs",
        "0.3",
        "--connections",
        "4",
        "--responder-threads",
        "1",
        "--mix",
        "decrypt=80,generate-data-key=15,encrypt=5",
        "--json",
        json.to_str().unwrap(),
    ])
    .await;
    let text = std::fs::read_to_string(&json).unwrap();
    // Everything but the setup, cleanup, probe, baseline and max sections (null in this report).
    let checked = assert_documented_fields(&text);
    let skipped = support::documented_fields()
        .iter()
        .filter(|f| {
            ["setup.", "cleanup.", "probe.", "baseline.", "max."]
                .iter()
                .any(|p| f.starts_with(p))
        })
        .count();
    assert_eq!(checked, support::documented_fields().len() - skipped);
    let v: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert_eq!(v["schema_version"], 1);
    assert_eq!(v["mode"], "run");
    assert!(v["probe"].is_null() && v["baseline"].is_null() && v["max"].is_null());
    assert!(v["setup"].is_null() && v["cleanup"].is_null());
    assert_eq!(v["warnings"], serde_json::json!([]));
    assert!(v["machine"]["nproc"].as_u64().unwrap() >= 1);
    let r = &report.runs[0];
    // 200/s for 1.3 s: 260 planned, 60 of them warm-up; the responder answers all.
    assert_eq!(r.planned, 260);
    assert_eq!(r.sent, 260);
    assert_eq!(r.completed + r.warmup_requests, 260);
    assert_eq!(r.errors, 0, "{:?}", r.errors_by_type);
    assert_eq!(r.ok, r.completed);
    assert_eq!(r.connections_opened, 4);
    let ops: u64 = r.by_op.values().map(|o| o.ok).sum();
    assert_eq!(ops, r.ok);
    assert_eq!(
        r.by_op.keys().collect::<Vec<_>>(),
        ["Decrypt", "Encrypt", "GenerateDataKey"]
    );
    assert_eq!(r.latency_ms.count, r.ok);
    assert_eq!(r.signing.count, r.completed);
    assert!(r.signing.mean_us > 0.0);
    assert_eq!(r.latency_ms.distribution.len(), 16);
    assert!(r.latency_ms.p50 <= r.latency_ms.p99 && r.latency_ms.p99 <= r.latency_ms.max);
    let summary = report.summary();
    for needle in [
        "p50",
        "p99.9",
        "late starts",
        "errors: none",
        "Decrypt",
        "signing",
    ] {
        assert!(summary.contains(needle), "{needle} missing in:\n{summary}");
    }
}
