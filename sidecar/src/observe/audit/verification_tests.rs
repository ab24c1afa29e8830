//! Which paths `verify` accepts, what it reports and how its errors read. The chain is written by
//! hand from [`record_hash`], so these tests need neither the writer nor real audit events.

use std::fs;

use super::super::chain::record_hash;
use super::*;

/// Writes `n` chained records into `dir/audit.jsonl`; the last hash.
fn write_chain(dir: &Path, n: u64) -> String {
    fs::create_dir_all(dir).unwrap();
    let mut prev = GENESIS_HASH.to_owned();
    let mut text = String::new();
    for i in 0..n {
        let body = format!("{{\"prev_hash\":\"{prev}\",\"n\":{i}}}");
        let hash = record_hash(&prev, body.as_bytes());
        text.push_str(&body[..body.len() - 1]);
        text.push_str(&format!(",\"hash\":\"{hash}\"}}\n"));
        prev = hash;
    }
    fs::write(dir.join(FILE_NAME), text).unwrap();
    prev
}

#[test]
fn the_data_directory_the_audit_directory_and_the_file_all_verify() {
    let data = tempfile::tempdir().unwrap();
    let audit = data.path().join("audit");
    let last = write_chain(&audit, 3);
    for path in [
        data.path().to_path_buf(),
        audit.clone(),
        audit.join(FILE_NAME),
    ] {
        let report = verify(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        assert_eq!(report.records, 3, "{}", path.display());
        assert_eq!(report.files, vec![audit.join(FILE_NAME)]);
        assert_eq!(report.last_hash, last);
    }
}

#[test]
fn a_missing_log_is_not_found_and_not_broken() {
    let data = tempfile::tempdir().unwrap();
    let err = verify(data.path()).unwrap_err();
    assert!(matches!(err, VerifyError::NotFound { .. }) && !err.is_broken());
    assert_eq!(
        err.to_string(),
        format!("no audit log found in {}", data.path().display())
    );
    // A data directory with an empty audit directory names the audit directory.
    let audit = data.path().join("audit");
    fs::create_dir(&audit).unwrap();
    assert_eq!(
        verify(data.path()).unwrap_err().to_string(),
        format!("no audit log found in {}", audit.display())
    );
}

#[test]
fn an_edited_log_is_broken() {
    let data = tempfile::tempdir().unwrap();
    let audit = data.path().join("audit");
    write_chain(&audit, 2);
    let file = audit.join(FILE_NAME);
    let edited = fs::read_to_string(&file)
        .unwrap()
        .replacen("\"n\":1", "\"n\":7", 1);
    fs::write(&file, edited).unwrap();
    let err = verify(data.path()).unwrap_err();
    assert!(err.is_broken(), "{err}");
    assert!(err.to_string().contains("line 2: hash mismatch"), "{err}");
}

#[test]
fn the_report_reads_as_a_sentence() {
    let report = VerifyReport {
        files: vec![
            PathBuf::from("data/audit/audit-20260101T000000Z.jsonl"),
            PathBuf::from("data/audit/audit.jsonl"),
        ],
        records: 12,
        last_hash: "ab".repeat(32),
    };
    assert_eq!(
        report.to_string(),
        format!(
            "audit chain intact: checked 12 records in 2 files (data/audit), last hash {}",
            "ab".repeat(32)
        )
    );
    let one = VerifyReport {
        files: vec![PathBuf::from("audit/audit.jsonl")],
        records: 1,
        last_hash: GENESIS_HASH.to_owned(),
    };
    assert_eq!(
        one.to_string(),
        format!("audit chain intact: checked 1 record in 1 file (audit), last hash {GENESIS_HASH}")
    );
}
