//! Coordinated-omission correction against a deliberately stalled server: a server that sleeps
//! before answering must show up as large latencies from the planned time and as late starts, not
//! as a quietly lower send rate. Counts and structure only: no assertion a slow machine can break
//! (a slower machine only makes the stall look worse).
#![forbid(unsafe_code)]
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use support::sidecar::test_server_target;
use support::{Behaviour, TestServer, cli};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalled_server_yields_corrected_latencies_and_late_starts() {
    // 2 connections x 50 ms = at most 40 responses/s, asked for 100/s during 1 s: the last planned
    // request (t = 0.99 s) cannot start before ~2.5 s.
    let server = TestServer::start(Behaviour::Stall(std::time::Duration::from_millis(50)));
    let report = cli(&[
        &[
            "run",
            "--no-progress",
            "--warmup-secs",
            "0",
            "--rate",
            "100",
            "--duration-secs",
            "1",
            "--connections",
            "2",
            "--drain-secs",
            "10",
            "--mix",
            "encrypt",
        ],
        &test_server_target(&server.url)[..],
    ]
    .concat())
    .await;
    let r = &report.runs[0];
    assert_eq!(r.planned, 100);
    assert_eq!(r.sent, 100);
    assert_eq!(r.completed, 100);
    assert_eq!(r.errors, 0, "{:?}", r.errors_by_type);
    assert_eq!(r.not_sent, 0);
    // Most requests could not start on time.
    assert!(r.late_starts >= 50, "late starts: {}", r.late_starts);
    assert!(r.late_start_ratio >= 0.5);
    // Corrected latency: the last requests waited >= 1.4 s for a connection.
    assert!(r.latency_ms.max >= 1000.0, "{:?}", r.latency_ms);
    assert!(r.latency_ms.p50 >= 200.0, "{:?}", r.latency_ms);
    // What a closed-loop tool would report (service time) hides almost all of it.
    assert!(r.service_time_ms.p50 >= 50.0);
    assert!(
        r.latency_ms.p99 > 5.0 * r.service_time_ms.p50,
        "corrected {:?} vs service {:?}",
        r.latency_ms,
        r.service_time_ms
    );
    assert!(r.start_lag_ms.max >= 1000.0);
    // The server saw exactly what was sent: nothing silently skipped.
    assert_eq!(
        server.served.load(std::sync::atomic::Ordering::Relaxed),
        100
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backlog_past_the_deadline_is_reported_as_not_sent() {
    // One connection x 200 ms = 5/s, asked for 50/s; the hard deadline (1 s + 0.5 s drain) stops
    // the run: everything not started by then is counted, not dropped silently.
    let server = TestServer::start(Behaviour::Stall(std::time::Duration::from_millis(200)));
    let report = cli(&[
        &[
            "run",
            "--no-progress",
            "--warmup-secs",
            "0",
            "--rate",
            "50",
            "--duration-secs",
            "1",
            "--connections",
            "1",
            "--drain-secs",
            "0.5",
            "--mix",
            "generate-data-key",
        ],
        &test_server_target(&server.url)[..],
    ]
    .concat())
    .await;
    let r = &report.runs[0];
    assert_eq!(r.planned, 50);
    assert!(r.sent <= 10, "sent {}", r.sent);
    assert_eq!(r.sent + r.not_sent, r.planned);
    assert_eq!(r.completed, r.sent);
    assert!(r.late_start_ratio > 0.8, "{}", r.late_start_ratio);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_never_reports_more_than_the_server_can_serve() {
    // 2 connections x 10 ms: at most 200 responses/s. A tool that ignored late starts would pass
    // 400/s (it would simply send less); `max` must fail it.
    let server = TestServer::start(Behaviour::Stall(std::time::Duration::from_millis(10)));
    let report = cli(&[
        &[
            "max",
            "--no-progress",
            "--warmup-secs",
            "0.2",
            "--start-rate",
            "25",
            "--factor",
            "2",
            "--step-secs",
            "0.8",
            "--refine",
            "1",
            "--pause-secs",
            "0.1",
            "--p99-bound-ms",
            "500",
            // Over capacity the backlog grows by >= 100 requests/s, so lags pass 50 ms within a step;
            // timer noise on a busy machine does not.
            "--late-threshold-ms",
            "50",
            "--connections",
            "2",
            "--mix",
            "encrypt",
        ],
        &test_server_target(&server.url)[..],
    ]
    .concat())
    .await;
    let m = report.max.as_ref().unwrap();
    let best = m.max_sustainable_rate.expect("25/s is sustainable");
    assert!((25.0..400.0).contains(&best), "max {best}: {:?}", m.steps);
    assert!(m.steps.iter().any(|s| !s.passed));
    assert_eq!(m.steps.len(), report.runs.len());
    assert_eq!(m.steps[0].rate, 25.0);
    let json = serde_json::to_string(&report).unwrap();
    assert!(support::assert_documented_fields(&json) > 40);
}
