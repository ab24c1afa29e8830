//! Setup and cleanup against a real sidecar (the e2e fixture, 127.0.0.1:0) whose per-principal rate
//! limit is tiny, so the load tester's own setup and cleanup calls are throttled: they back off
//! and retry until they get through, every retry is a `ThrottlingException` the sidecar counted,
//! and when the quota stays exhausted the cleanup becomes a warning in a report that is still
//! written, while a setup that gives up says so and cleans up the keys it had created.
#![forbid(unsafe_code)]
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use clap::Parser as _;
use kms_loadtest::LoadError;
use kms_loadtest::cli::{Cli, execute};
use kms_sidecar_e2e::{Sidecar, sample};
use support::sidecar::sidecar_target;
use support::{assert_documented_fields, cli};

/// A sidecar allowing each principal `rate` calls per second, at most `burst` at once.
fn limited_sidecar(dir: &std::path::Path, rate: &str, burst: &str) -> Sidecar {
    Sidecar::start_args(
        dir,
        &[
            "--rate-limit-per-principal",
            rate,
            "--rate-limit-per-principal-burst",
            burst,
        ],
    )
}

/// `kms_sidecar_requests_total` for one operation and outcome (0 when the series is absent).
async fn count(sidecar: &Sidecar, op: &str, outcome: &str) -> u64 {
    let series = format!(
        "kms_sidecar_requests_total{{frontend=\"aws_json\",operation=\"{op}\",outcome=\"{outcome}\"}}"
    );
    sample(&sidecar.metrics().await, &series).unwrap_or(0.0) as u64
}

/// The command line of a short `run` that creates its keys and only generates data keys.
fn run_args<'a>(sidecar: &'a Sidecar, extra: &[&'a str]) -> Vec<&'a str> {
    let mut args = vec!["run", "--no-progress"];
    args.extend(sidecar_target(sidecar));
    args.extend([
        "--mix",
        "generate-data-key",
        "--warmup-secs",
        "0",
        "--connections",
        "2",
    ]);
    args.extend_from_slice(extra);
    args
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn throttled_setup_and_cleanup_back_off_and_complete() {
    let dir = tempfile::tempdir().unwrap();
    // One call per 500 ms: the second CreateKey, and the cleanup right after a run that drained
    // the bucket, are throttled unless they wait.
    let sidecar = limited_sidecar(dir.path(), "2", "1");
    let out = tempfile::tempdir().unwrap();
    let json = out.path().join("run.json");
    let json_arg = json.to_str().unwrap();
    let args = run_args(
        &sidecar,
        &[
            "--keys",
            "2",
            "--rate",
            "20",
            "--duration-secs",
            "1",
            "--json",
            json_arg,
        ],
    );
    let report = cli(&args).await;

    let setup = report.setup.as_ref().unwrap();
    assert_eq!(setup.keys_created, 2);
    assert!(setup.retries >= 1, "{setup:?}");
    assert_eq!(setup.requests, 2 + setup.retries);
    // Every retry answered a throttle the sidecar counted, and nothing else was retried.
    assert_eq!(
        count(&sidecar, "CreateKey", "ThrottlingException").await,
        setup.retries
    );
    assert_eq!(count(&sidecar, "CreateKey", "ok").await, 2);

    // The measured load is never retried: its throttles are the finding.
    let r = &report.runs[0];
    assert_eq!(r.completed, 20);
    assert_eq!(r.ok + r.errors_by_type["ThrottlingException"], 20);
    assert!(r.errors_by_type["ThrottlingException"] >= 10, "{r:?}");

    let cleanup = report.cleanup.as_ref().unwrap();
    assert_eq!(cleanup.keys_scheduled, 2);
    assert!(cleanup.failed_keys.is_empty() && cleanup.error.is_none());
    assert!(cleanup.retries >= 1, "{cleanup:?}");
    assert_eq!(cleanup.requests, 2 + cleanup.retries);
    assert_eq!(
        count(&sidecar, "ScheduleKeyDeletion", "ThrottlingException").await,
        cleanup.retries
    );
    assert_eq!(count(&sidecar, "ScheduleKeyDeletion", "ok").await, 2);
    assert!(report.warnings.is_empty(), "{:?}", report.warnings);

    let text = std::fs::read_to_string(&json).unwrap();
    assert!(assert_documented_fields(&text) > 90);
    let v: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert_eq!(v["cleanup"]["keys_scheduled"], 2);
    assert_eq!(v["warnings"], serde_json::json!([]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cleanup_that_stays_throttled_is_a_warning_in_a_written_report() {
    let dir = tempfile::tempdir().unwrap();
    // Three calls, then one per 20 s: setup gets its key, the run takes the other two tokens, and
    // no ScheduleKeyDeletion can get through in four attempts (waits of at most 50, 100 and
    // 200 ms, well within the 2 s budget).
    let sidecar = limited_sidecar(dir.path(), "0.05", "3");
    let out = tempfile::tempdir().unwrap();
    let json = out.path().join("run.json");
    let json_arg = json.to_str().unwrap();
    let args = run_args(
        &sidecar,
        &[
            "--keys",
            "1",
            "--rate",
            "10",
            "--duration-secs",
            "0.5",
            "--setup-max-attempts",
            "4",
            "--setup-retry-secs",
            "2",
            "--json",
            json_arg,
        ],
    );
    let report = cli(&args).await;

    assert_eq!(report.setup.as_ref().unwrap().retries, 0);
    let r = &report.runs[0];
    assert_eq!((r.completed, r.ok), (5, 2), "{r:?}");
    let cleanup = report.cleanup.as_ref().unwrap();
    assert_eq!(cleanup.keys_scheduled, 0);
    assert_eq!(cleanup.failed_keys.len(), 1);
    let key = &cleanup.failed_keys[0];
    let error = cleanup.error.as_deref().unwrap();
    assert!(
        error.starts_with("ScheduleKeyDeletion still failing after ")
            && error.ends_with("ScheduleKeyDeletion answered HTTP 400 ThrottlingException"),
        "{error}"
    );
    // Four attempts, each a throttle the sidecar counted, within the budget.
    assert_eq!((cleanup.requests, cleanup.retries), (4, 3), "{cleanup:?}");
    assert!(error.starts_with("ScheduleKeyDeletion still failing after 4 attempts"));
    assert!(cleanup.seconds < 2.5, "{cleanup:?}");
    assert_eq!(
        count(&sidecar, "ScheduleKeyDeletion", "ThrottlingException").await,
        cleanup.requests
    );
    assert_eq!(count(&sidecar, "ScheduleKeyDeletion", "ok").await, 0);

    assert_eq!(report.warnings.len(), 1);
    let warning = &report.warnings[0];
    assert!(
        warning.starts_with("cleanup: 1 of 1 key(s) not scheduled for deletion")
            && warning.contains("ThrottlingException")
            && warning.ends_with(&format!("delete them yourself: {key}")),
        "{warning}"
    );
    assert!(report.summary().contains(&format!("warning: {warning}")));
    // The JSON report was written, warning included.
    let written: kms_loadtest::Report =
        serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    assert_eq!(written.warnings, report.warnings);
    assert_eq!(written.cleanup, report.cleanup);
    assert_eq!(written.runs[0].ok, 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_setup_that_gives_up_says_why_and_cleans_up_its_keys() {
    let dir = tempfile::tempdir().unwrap();
    // One call, then one per 20 s: the first CreateKey gets through, the second never does.
    let sidecar = limited_sidecar(dir.path(), "0.05", "1");
    let args = run_args(
        &sidecar,
        &[
            "--keys",
            "2",
            "--rate",
            "10",
            "--duration-secs",
            "1",
            "--setup-max-attempts",
            "3",
            "--setup-retry-secs",
            "2",
        ],
    );
    let mut argv = vec!["kms-loadtest"];
    argv.extend_from_slice(&args);
    let err = execute(Cli::try_parse_from(argv).unwrap())
        .await
        .expect_err("the setup cannot finish");
    let LoadError::Setup { source, cleanup } = &err else {
        panic!("not a setup error: {err:?}")
    };
    assert!(
        matches!(
            **source,
            LoadError::GaveUp {
                op: "CreateKey",
                attempts: 3,
                ..
            }
        ),
        "{source:?}"
    );
    // The created key's deletion was tried, and was throttled like everything else.
    assert!(
        cleanup.starts_with("; cleanup: 1 of 1 key(s) not scheduled for deletion"),
        "{cleanup}"
    );
    assert!(
        err.chain()
            .contains("CreateKey answered HTTP 400 ThrottlingException"),
        "{}",
        err.chain()
    );
    assert_eq!(count(&sidecar, "CreateKey", "ok").await, 1);
    assert_eq!(count(&sidecar, "CreateKey", "ThrottlingException").await, 3);
    assert_eq!(
        count(&sidecar, "ScheduleKeyDeletion", "ThrottlingException").await,
        3
    );
}
