//! The probe finds a throttle knee. The sidecar has no rate limiter yet, so this drives a small
//! in-process responder with a real token bucket (400 tokens/s, burst 40) that answers
//! `ThrottlingException` like KMS when empty; the knee must be within +-10% of 400/s. When the
//! sidecar gets its limiter, the same probe should run against a sidecar with a global limit.
#![forbid(unsafe_code)]
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::sync::atomic::Ordering;

use support::sidecar::test_server_target;
use support::{Behaviour, TestServer, assert_documented_fields, cli};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn probe_finds_the_knee_of_a_token_bucket() {
    let server = TestServer::start(Behaviour::Throttle {
        rate: 400.0,
        burst: 40.0,
    });
    let dir = tempfile::tempdir().unwrap();
    let json = dir.path().join("probe.json");
    let report = cli(&[
        &["probe", "--no-progress"],
        &test_server_target(&server.url)[..],
        &[
            "--mix",
            "encrypt=1,generate-data-key=1",
            "--warmup-secs",
            "0.3",
            "--start-rate",
            "250",
            "--factor",
            "1.25",
            "--step-secs",
            "2",
            "--refine",
            "3",
            "--pause-secs",
            "0.3",
            "--slo-p99-ms",
            "500",
            // A busy 2-core machine wakes timers late now and then; the knee, not the timer, is tested.
            "--late-threshold-ms",
            "50",
            "--max-late-ratio",
            "0.05",
            "--expected-limit",
            "400",
            "--json",
            json.to_str().unwrap(),
        ],
    ]
    .concat())
    .await;
    let p = report.probe.as_ref().unwrap();
    let knee = p.knee_rate.expect("a knee");
    assert_eq!(p.stop_reason, "throttling", "{:?}", p.steps);
    assert!(
        (360.0..=440.0).contains(&knee),
        "knee {knee}: {:?}",
        p.steps
    );
    let ratio = p.knee_vs_limit.unwrap();
    assert!((0.9..=1.1).contains(&ratio), "{ratio}");
    assert_eq!(p.configured_limit.source, "flag");
    // Steps below the knee passed, the first failure was throttled, and the server really throttled.
    assert!(p.steps[0].passed && p.steps[0].throttled_share == 0.0);
    assert!(
        p.steps
            .iter()
            .any(|s| s.reason.as_deref() == Some("throttling"))
    );
    assert!(server.throttled.load(Ordering::Relaxed) > 0);
    let sat = p.saturated_ok_rate.unwrap();
    assert!(sat > 0.0 && sat < 600.0, "{sat}");
    // Throttled responses are counted by type in the step's run.
    let failing = p.steps.iter().find(|s| !s.passed).unwrap();
    let run = &report.runs[failing.run_index];
    assert!(run.errors_by_type["ThrottlingException"] > 0);
    assert_eq!(run.errors, run.errors_by_type["ThrottlingException"]);
    let text = std::fs::read_to_string(&json).unwrap();
    assert!(assert_documented_fields(&text) > 80);
    assert!(report.summary().contains("knee"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_limit_source_the_limit_is_unknown() {
    // The in-process responder has no /v1/status: an admin URL that answers anything but 200 (or
    // nothing) makes the comparison "configured limit unknown", never a made-up number.
    let server = TestServer::start(Behaviour::Stall(std::time::Duration::ZERO));
    let limit = kms_loadtest::modes::fetch_configured_limit(
        &server.url,
        false,
        1,
        1,
        std::time::Duration::from_secs(5),
    )
    .await;
    // The test server answers 200 with a KMS body that has no `limits`: unknown, with the reason.
    assert_eq!(limit.source, "unknown");
    assert!(limit.rate_per_second.is_none());
    let closed = kms_loadtest::modes::fetch_configured_limit(
        "http://127.0.0.1:9",
        false,
        1,
        1,
        std::time::Duration::from_secs(5),
    )
    .await;
    assert_eq!(closed.source, "unknown");
    let refused = kms_loadtest::modes::fetch_configured_limit(
        "http://10.1.2.3:7301",
        false,
        1,
        1,
        std::time::Duration::from_secs(5),
    )
    .await;
    assert!(
        refused.note.contains("--allow-non-loopback"),
        "{}",
        refused.note
    );
}
