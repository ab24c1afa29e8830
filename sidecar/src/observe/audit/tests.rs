//! Tests of the audit log: chaining, durability, rotation, recovery, failure modes, queries and
//! verification, all through the public API on temporary directories.

use std::fs::OpenOptions;
use std::io::Write;
use std::time::Instant;

use super::*;

fn event(principal: &str, outcome: Outcome, key: &str, time: f64) -> AuditEvent {
    AuditEvent {
        time,
        request_id: RequestId::try_from(format!("req-{time}").as_str()).unwrap(),
        principal: principal.into(),
        source: Source::Addr("127.0.0.1:50412".parse().unwrap()),
        operation: Some(Operation::Decrypt),
        key_id: Some(key.into()),
        key_version: Some(2),
        encryption_context: [("tenant".to_string(), "PLANTED-CONTEXT-VALUE".to_string())].into(),
        outcome,
        error_type: (outcome == Outcome::Denied).then_some(ErrorKind::AccessDenied),
        reason: (outcome == Outcome::Denied).then_some("policy_denied"),
        cache: CacheOutcome::None,
        latency_ms: 0.41,
        kms_request_id: None,
        aws_principal_arn: None,
    }
}

fn ok(i: usize) -> AuditEvent {
    event("billing", Outcome::Ok, "k1", 1_795_434_129.25 + i as f64)
}

fn open(cfg: AuditConfig) -> (AuditLog, Registry) {
    let registry = Registry::new();
    let log = AuditLog::open(cfg, AuditMetrics::register(&registry).unwrap()).unwrap();
    (log, registry)
}

fn lines(path: &Path) -> Vec<String> {
    fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(str::to_owned)
        .collect()
}

fn broken(dir: &Path) -> (String, u64, Problem) {
    match verify(dir).unwrap_err() {
        VerifyError::Broken {
            file,
            line,
            problem,
        } => (
            file.file_name().unwrap().to_string_lossy().into_owned(),
            line,
            problem,
        ),
        other => panic!("unexpected {other}"),
    }
}

#[tokio::test]
async fn records_are_chained_and_verify() {
    let tmp = tempfile::tempdir().unwrap();
    let (log, registry) = open(AuditConfig::new(tmp.path()));
    log.record(ok(0)).unwrap();
    log.record(event("ops", Outcome::Denied, "k2", 1.0))
        .unwrap();
    log.record(event("ops", Outcome::Error, "k2", 2.0)).unwrap();
    log.flush().await.unwrap();
    let report = verify(tmp.path()).unwrap();
    assert_eq!(report.records, 3);
    assert_eq!(report.files, vec![tmp.path().join(FILE_NAME)]);

    let ls = lines(&tmp.path().join(FILE_NAME));
    let first: serde_json::Value = serde_json::from_str(&ls[0]).unwrap();
    let keys: Vec<&str> = first
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    let mut want = vec![
        "time",
        "request_id",
        "principal",
        "source",
        "operation",
        "key_id",
        "key_version",
        "context_keys",
        "outcome",
        "error_type",
        "reason",
        "cache",
        "latency_ms",
        "prev_hash",
        "hash",
    ];
    want.sort_unstable();
    assert_eq!(keys, want, "the admin-api.md schema");
    assert_eq!(first["prev_hash"], GENESIS_HASH);
    assert_eq!(first["context_keys"], serde_json::json!(["tenant"]));
    assert!(ls[0].starts_with(r#"{"time":1795434129.25,"request_id":"req-1795434129.25""#));
    let denied: AuditRecord = serde_json::from_str(&ls[1]).unwrap();
    assert_eq!(denied.prev_hash, first["hash"]);
    assert_eq!(denied.error_type.as_deref(), Some("AccessDeniedException"));
    assert_eq!(denied.reason.as_deref(), Some("policy_denied"));
    assert_eq!(
        report.last_hash,
        serde_json::from_str::<AuditRecord>(&ls[2]).unwrap().hash
    );
    // Context values stay out unless configured.
    let text = fs::read_to_string(tmp.path().join(FILE_NAME)).unwrap();
    assert!(!text.contains("PLANTED-CONTEXT-VALUE"));

    let metrics = String::from_utf8(crate::observe::metrics::render(&registry)).unwrap();
    for line in [
        "kms_sidecar_audit_events_total{outcome=\"ok\"} 1",
        "kms_sidecar_audit_events_total{outcome=\"denied\"} 1",
        "kms_sidecar_audit_events_total{outcome=\"error\"} 1",
        "kms_sidecar_audit_write_errors_total 0",
    ] {
        assert!(metrics.lines().any(|l| l == line), "{line} in\n{metrics}");
    }
    assert!(log.is_healthy());
    assert!(!log.blocks_requests());
}

#[tokio::test]
async fn context_values_only_when_configured() {
    let tmp = tempfile::tempdir().unwrap();
    let mut cfg = AuditConfig::new(tmp.path());
    cfg.include_context_values = true;
    let (log, _r) = open(cfg);
    log.record_durable(ok(0)).await.unwrap();
    let r: AuditRecord = serde_json::from_str(&lines(&tmp.path().join(FILE_NAME))[0]).unwrap();
    assert_eq!(
        r.context.unwrap()["tenant"],
        "PLANTED-CONTEXT-VALUE".to_string()
    );
    verify(tmp.path()).unwrap();
}

#[tokio::test]
async fn every_record_is_on_disk_when_acknowledged() {
    let tmp = tempfile::tempdir().unwrap();
    let mut cfg = AuditConfig::new(tmp.path());
    cfg.fsync = FsyncPolicy::EveryRecord;
    cfg.flush_interval = Duration::from_secs(3600);
    let (log, _r) = open(cfg);
    for i in 0..5 {
        log.record_durable(ok(i)).await.unwrap();
        assert_eq!(lines(&tmp.path().join(FILE_NAME)).len(), i + 1);
    }
}

#[test]
fn buffered_records_are_flushed_by_the_interval() {
    let tmp = tempfile::tempdir().unwrap();
    let mut cfg = AuditConfig::new(tmp.path());
    cfg.flush_interval = Duration::from_millis(100);
    cfg.fsync = FsyncPolicy::Never;
    let (log, _r) = open(cfg);
    log.record(ok(0)).unwrap();
    let start = Instant::now();
    while lines(&tmp.path().join(FILE_NAME)).is_empty() {
        assert!(start.elapsed() < Duration::from_secs(5), "never flushed");
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(!log.query(&AuditQuery::default()).is_empty());
}

/// Writes `n` records, flushing every `per_file` so that with `max_bytes = 1` each flush rotates.
async fn rotated_log(dir: &Path, n: usize, per_file: usize) {
    let mut cfg = AuditConfig::new(dir);
    cfg.max_bytes = 1;
    let (log, _r) = open(cfg);
    for i in 0..n {
        log.record(ok(i)).unwrap();
        if (i + 1) % per_file == 0 {
            log.flush().await.unwrap();
        }
    }
}

#[tokio::test]
async fn the_chain_continues_across_rotation_and_restart() {
    let tmp = tempfile::tempdir().unwrap();
    rotated_log(tmp.path(), 6, 2).await;
    let report = verify(tmp.path()).unwrap();
    assert_eq!(report.records, 6);
    assert_eq!(
        report.files.len(),
        4,
        "three rotated files and an empty current one"
    );
    // Restart: the empty current file chains from the newest rotated file.
    {
        let (log, _r) = open(AuditConfig::new(tmp.path()));
        log.record(ok(7)).unwrap();
    }
    {
        let (log, _r) = open(AuditConfig::new(tmp.path()));
        log.record(ok(8)).unwrap();
        log.record(ok(9)).unwrap();
    }
    let report = verify(tmp.path()).unwrap();
    assert_eq!(report.records, 9);
    // Verifying by the current file's path is the same.
    assert_eq!(verify(&tmp.path().join(FILE_NAME)).unwrap(), report);
    let anchored = VerifyOptions {
        expected_last_hash: Some(report.last_hash.clone()),
        ..Default::default()
    };
    verify_with(tmp.path(), &anchored).unwrap();
}

fn rewrite(path: &Path, f: impl FnOnce(&mut Vec<String>)) {
    let mut ls = lines(path);
    f(&mut ls);
    let mut text = ls.join("\n");
    text.push('\n');
    fs::write(path, text).unwrap();
}

fn copy_dir(from: &Path) -> tempfile::TempDir {
    let to = tempfile::tempdir().unwrap();
    for e in fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        fs::copy(e.path(), to.path().join(e.file_name())).unwrap();
    }
    to
}

#[tokio::test]
async fn verify_detects_each_kind_of_tampering() {
    let tmp = tempfile::tempdir().unwrap();
    {
        let (log, _r) = open(AuditConfig::new(tmp.path()));
        for i in 0..6 {
            log.record(ok(i)).unwrap();
        }
    }
    let current = |d: &tempfile::TempDir| d.path().join(FILE_NAME);
    verify(tmp.path()).unwrap();

    let edit = copy_dir(tmp.path());
    rewrite(&current(&edit), |ls| {
        ls[2] = ls[2].replace("billing", "nobody")
    });
    assert_eq!(
        broken(edit.path()),
        (FILE_NAME.into(), 3, Problem::HashMismatch)
    );

    let delete = copy_dir(tmp.path());
    rewrite(&current(&delete), |ls| {
        ls.remove(2);
    });
    let (_, line, problem) = broken(delete.path());
    assert_eq!(line, 3);
    assert!(
        matches!(problem, Problem::PrevHashMismatch { .. }),
        "{problem}"
    );

    let delete_first = copy_dir(tmp.path());
    rewrite(&current(&delete_first), |ls| {
        ls.remove(0);
    });
    assert_eq!(broken(delete_first.path()).1, 1);
    let pruned = VerifyOptions {
        allow_pruned_head: true,
        ..Default::default()
    };
    assert_eq!(
        verify_with(delete_first.path(), &pruned).unwrap().records,
        5
    );

    let insert = copy_dir(tmp.path());
    rewrite(&current(&insert), |ls| {
        let copy = ls[1].clone();
        ls.insert(4, copy);
    });
    let (_, line, problem) = broken(insert.path());
    assert_eq!(line, 5);
    assert!(
        matches!(problem, Problem::PrevHashMismatch { .. }),
        "{problem}"
    );

    let reorder = copy_dir(tmp.path());
    rewrite(&current(&reorder), |ls| ls.swap(3, 4));
    assert_eq!(broken(reorder.path()).1, 4);

    let truncate = copy_dir(tmp.path());
    let text = fs::read(current(&truncate)).unwrap();
    fs::write(current(&truncate), &text[..text.len() - 10]).unwrap();
    assert_eq!(
        broken(truncate.path()),
        (FILE_NAME.into(), 6, Problem::Truncated)
    );

    let garbage = copy_dir(tmp.path());
    rewrite(&current(&garbage), |ls| ls[0] = "not json".into());
    assert!(matches!(broken(garbage.path()).2, Problem::Unparsable(_)));

    // Cutting whole records off the end needs an anchor.
    let cut = copy_dir(tmp.path());
    let anchor = verify(cut.path()).unwrap().last_hash;
    rewrite(&current(&cut), |ls| {
        ls.pop();
    });
    let anchored = VerifyOptions {
        expected_last_hash: Some(anchor),
        ..Default::default()
    };
    assert!(matches!(
        verify_with(cut.path(), &anchored),
        Err(VerifyError::TailMismatch { .. })
    ));
}

#[tokio::test]
async fn verify_detects_tampering_across_a_rotation_boundary() {
    let tmp = tempfile::tempdir().unwrap();
    rotated_log(tmp.path(), 6, 3).await;
    let files = verify(tmp.path()).unwrap().files;
    assert_eq!(files.len(), 3);
    let name = |i: usize| files[i].file_name().unwrap().to_string_lossy().into_owned();
    let in_copy = |d: &tempfile::TempDir, i: usize| d.path().join(files[i].file_name().unwrap());

    // The last record of the first file deleted: the second file's first record no longer follows.
    let delete = copy_dir(tmp.path());
    rewrite(&in_copy(&delete, 0), |ls| {
        ls.pop();
    });
    let (file, line, problem) = broken(delete.path());
    assert_eq!((file, line), (name(1), 1));
    assert!(matches!(problem, Problem::PrevHashMismatch { .. }));

    // A whole rotated file removed.
    let drop_file = copy_dir(tmp.path());
    fs::remove_file(in_copy(&drop_file, 0)).unwrap();
    assert_eq!(broken(drop_file.path()).1, 1);

    // Records moved from one file to the other (reorder across the boundary).
    let moved = copy_dir(tmp.path());
    let first_of_second = lines(&in_copy(&moved, 1))[0].clone();
    rewrite(&in_copy(&moved, 1), |ls| {
        ls.remove(0);
    });
    rewrite(&in_copy(&moved, 0), |ls| ls.insert(0, first_of_second));
    assert_eq!(broken(moved.path()), (name(0), 1, broken(moved.path()).2));

    // A rotated file truncated mid-record.
    let cut = copy_dir(tmp.path());
    let text = fs::read(in_copy(&cut, 0)).unwrap();
    fs::write(in_copy(&cut, 0), &text[..text.len() - 3]).unwrap();
    assert_eq!(broken(cut.path()), (name(0), 3, Problem::Truncated));
}

#[tokio::test]
async fn a_torn_or_corrupt_tail_is_reported_on_open_never_chained_over() {
    let tmp = tempfile::tempdir().unwrap();
    {
        let (log, _r) = open(AuditConfig::new(tmp.path()));
        log.record(ok(0)).unwrap();
        log.record(ok(1)).unwrap();
    }
    let path = tmp.path().join(FILE_NAME);
    let good = fs::read(&path).unwrap();
    let mut torn = good.clone();
    torn.extend_from_slice(br#"{"time":17954"#);
    fs::write(&path, &torn).unwrap();
    let registry = Registry::new();
    let metrics = AuditMetrics::register(&registry).unwrap();
    match AuditLog::open(AuditConfig::new(tmp.path()), metrics.clone()) {
        Err(AuditError::TornTail { valid_len, .. }) => {
            assert_eq!(valid_len, good.len() as u64);
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(fs::read(&path).unwrap(), torn, "the file is left alone");

    let text = String::from_utf8(good)
        .unwrap()
        .replace("billing", "BILLING");
    fs::write(&path, text).unwrap();
    match AuditLog::open(AuditConfig::new(tmp.path()), metrics) {
        Err(AuditError::CorruptTail { problem, .. }) => {
            assert_eq!(problem, Problem::HashMismatch);
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn an_audit_path_that_is_not_a_file_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    fs::create_dir(tmp.path().join(FILE_NAME)).unwrap();
    let registry = Registry::new();
    let err = AuditLog::open(
        AuditConfig::new(tmp.path()),
        AuditMetrics::register(&registry).unwrap(),
    )
    .unwrap_err();
    assert!(matches!(err, AuditError::NotAFile { .. }), "{err}");
    let under_file = tmp.path().join("plain");
    fs::write(&under_file, b"x").unwrap();
    let err = AuditLog::open(
        AuditConfig::new(under_file.join("audit")),
        AuditMetrics::register(&Registry::new()).unwrap(),
    )
    .unwrap_err();
    assert!(matches!(err, AuditError::Io { .. }), "{err}");
    assert!(KmsError::from(err).kind() == ErrorKind::Internal);
}

#[tokio::test]
async fn fails_closed_while_the_directory_is_gone_and_recovers() {
    // Tests run as root, where permissions do not stop writes: the directory is replaced by a
    // regular file instead, so every path under it fails with ENOTDIR.
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("audit");
    let (log, registry) = open(AuditConfig::new(&dir));
    log.record_durable(ok(0)).await.unwrap();
    fs::remove_dir_all(&dir).unwrap();
    fs::write(&dir, b"not a directory").unwrap();

    let err = log.record_durable(ok(1)).await.unwrap_err();
    assert!(matches!(err, AuditError::WriteFailed), "{err}");
    assert!(!log.is_healthy());
    assert!(log.blocks_requests());
    assert!(log.last_error().unwrap().contains("audit.jsonl"));
    assert!(log.record_durable(ok(2)).await.is_err());
    let metrics = String::from_utf8(crate::observe::metrics::render(&registry)).unwrap();
    assert!(
        metrics
            .lines()
            .any(|l| l == "kms_sidecar_audit_write_errors_total 2"),
        "{metrics}"
    );

    // The directory comes back: the writer recovers by itself within about a second.
    fs::remove_file(&dir).unwrap();
    fs::create_dir(&dir).unwrap();
    let start = Instant::now();
    while !log.is_healthy() {
        assert!(start.elapsed() < Duration::from_secs(5), "never recovered");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    log.record_durable(ok(3)).await.unwrap();
    // The destroyed records are a visible gap, not a silently restarted chain.
    let (_, line, problem) = broken(&dir);
    assert_eq!(line, 1);
    assert!(matches!(problem, Problem::PrevHashMismatch { .. }));
    let pruned = VerifyOptions {
        allow_pruned_head: true,
        ..Default::default()
    };
    assert_eq!(verify_with(&dir, &pruned).unwrap().records, 1);
}

#[tokio::test]
async fn fail_open_keeps_serving() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("audit");
    let mut cfg = AuditConfig::new(&dir);
    cfg.on_failure = FailureMode::Open;
    let (log, _r) = open(cfg);
    fs::remove_dir_all(&dir).unwrap();
    fs::write(&dir, b"x").unwrap();
    assert!(log.record_durable(ok(0)).await.is_err());
    assert!(!log.is_healthy());
    assert!(!log.blocks_requests());
}

#[tokio::test]
async fn a_partial_write_of_our_own_is_cut_off_on_recovery() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("audit");
    let (log, _r) = open(AuditConfig::new(&dir));
    log.record_durable(ok(0)).await.unwrap();
    // Simulate a torn write by this process: garbage after the last good record, then a
    // failure (the file is briefly replaced), then recovery of the same file.
    let path = dir.join(FILE_NAME);
    let moved = tmp.path().join("moved.jsonl");
    fs::rename(&path, &moved).unwrap();
    assert!(log.record_durable(ok(1)).await.is_err());
    let mut f = OpenOptions::new().append(true).open(&moved).unwrap();
    f.write_all(br#"{"time":1"#).unwrap();
    fs::rename(&moved, &path).unwrap();
    let start = Instant::now();
    while !log.is_healthy() {
        assert!(start.elapsed() < Duration::from_secs(5), "never recovered");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    log.record_durable(ok(2)).await.unwrap();
    assert_eq!(verify(&dir).unwrap().records, 2);
}

#[tokio::test]
async fn queries_filter_newest_first_and_the_ring_is_bounded() {
    let tmp = tempfile::tempdir().unwrap();
    let mut cfg = AuditConfig::new(tmp.path());
    cfg.ring_capacity = 4;
    let (log, _r) = open(cfg);
    log.record(event("a", Outcome::Ok, "k1", 10.0)).unwrap();
    log.record(event("b", Outcome::Denied, "k1", 20.0)).unwrap();
    log.record(event("a", Outcome::Denied, "k2", 30.0)).unwrap();
    log.record(event("b", Outcome::Error, "k2", 40.0)).unwrap();
    log.record(event("a", Outcome::Ok, "k2", 50.0)).unwrap();
    log.flush().await.unwrap();
    let times = |q: AuditQuery| log.query(&q).iter().map(|r| r.time).collect::<Vec<_>>();
    assert_eq!(times(AuditQuery::default()), [50.0, 40.0, 30.0, 20.0]);
    let q = |s: &str| AuditQuery::from_query_string(s).unwrap();
    assert_eq!(times(q("outcome=denied")), [30.0, 20.0]);
    assert_eq!(times(q("principal=a")), [50.0, 30.0]);
    assert_eq!(times(q("key=k2&outcome=ok")), [50.0]);
    assert_eq!(times(q("since=35")), [50.0, 40.0]);
    assert_eq!(times(q("limit=1")), [50.0]);
    let r = &log.query(&q("limit=1"))[0];
    assert_eq!(r.hash.len(), 64);
}

#[test]
fn query_strings() {
    let q = AuditQuery::from_query_string(
        "outcome=denied&principal=arn%3Aaws%3Aiam%3A%3A1%3Auser%2Fa+b&since=1.5&limit=1000",
    )
    .unwrap();
    assert_eq!(q.outcome, Some(Outcome::Denied));
    assert_eq!(q.principal.as_deref(), Some("arn:aws:iam::1:user/a b"));
    assert_eq!(q.since, Some(1.5));
    assert_eq!(q.limit, 1000);
    assert_eq!(
        AuditQuery::from_query_string("").unwrap(),
        AuditQuery::default()
    );
    for bad in [
        "limit=0",
        "limit=1001",
        "limit=x",
        "outcome=maybe",
        "since=NaN",
        "key=%zz",
        "other=1",
    ] {
        assert!(AuditQuery::from_query_string(bad).is_err(), "{bad}");
    }
}

#[test]
fn verify_of_a_missing_log_says_so() {
    let tmp = tempfile::tempdir().unwrap();
    assert!(matches!(
        verify(tmp.path()),
        Err(VerifyError::NotFound { .. })
    ));
    assert!(matches!(
        verify(&tmp.path().join("nope.jsonl")),
        Err(VerifyError::NotFound { .. })
    ));
}
