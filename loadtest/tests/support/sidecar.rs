//! Test support for runs against a real sidecar (the e2e fixture) and the in-process test
//! servers: the arguments that aim a run at its target, and the sidecar's own request counters
//! that the tests compare with what the report says was sent. One copy, so that the end-to-end
//! tests of each target (AWS JSON, KMS v2, XKS) count requests the same way.

use std::path::Path;

use kms_loadtest::Report;
use kms_loadtest::mix::{Mix, Op};
use kms_sidecar_e2e::Sidecar;

/// `--target`, `--access-key-id` and `--secret-access-key` for `sidecar`'s KMS port and its
/// first-run credential.
pub fn sidecar_target(sidecar: &Sidecar) -> Vec<&str> {
    vec![
        "--target",
        &sidecar.kms_url,
        "--access-key-id",
        &sidecar.creds.access_key_id,
        "--secret-access-key",
        &sidecar.creds.secret,
    ]
}

/// `--target url` and a key id and credential made up for an in-process test server (which checks
/// neither).
pub fn test_server_target(url: &str) -> Vec<&str> {
    vec![
        "--target",
        url,
        "--access-key-id",
        "AKIDTEST",
        "--secret-access-key",
        "secret",
        "--key-id",
        "k1",
    ]
}

/// The load the KMS v2 and XKS end-to-end tests run: half Encrypt, half Decrypt, on 4
/// connections at 100/s, 0.5 s of warm-up and 2 s measured (250 requests in all).
const ENCRYPT_DECRYPT_LOAD: [&str; 10] = [
    "--mix",
    "encrypt=1,decrypt=1",
    "--connections",
    "4",
    "--rate",
    "100",
    "--warmup-secs",
    "0.5",
    "--duration-secs",
    "2",
];

/// Runs [`ENCRYPT_DECRYPT_LOAD`] against front-end `frontend` of `sidecar` (its operations named
/// `ops` in the sidecar's metrics), aimed there by `target` (the arguments naming the target and
/// its credential), with a JSON report. Asserts the run was clean
/// ([`assert_clean_encrypt_decrypt_run`]), that the sidecar counted exactly what it sent
/// ([`assert_encrypt_decrypt_counted`]) and that the sidecar then stops cleanly; returns the
/// report for the test's own checks.
pub async fn encrypt_decrypt_load(
    sidecar: Sidecar,
    target: &[&str],
    frontend: &str,
    ops: (&str, &str),
) -> Report {
    let before = sidecar.metrics().await;
    let out = tempfile::tempdir().unwrap();
    let json = out.path().join(format!("{frontend}.json"));
    let report = super::cli(
        &[
            &["run", "--no-progress"],
            target,
            &ENCRYPT_DECRYPT_LOAD[..],
            &["--json", json.to_str().unwrap()],
        ]
        .concat(),
    )
    .await;
    assert_clean_encrypt_decrypt_run(&report, &json);

    // The sidecar counted exactly what the report says was sent: setup Encrypts plus every
    // request of the run (warm-up included), split by operation as the mix interleaves them.
    let after = sidecar.metrics().await;
    let setup = report.setup.as_ref().unwrap();
    assert_encrypt_decrypt_counted(
        (&before, &after),
        frontend,
        ops,
        report.runs[0].sent,
        setup.requests,
    );
    let (ok, out) = sidecar.stop();
    assert!(ok, "sidecar exited with an error:\n{}", out.all());
    report
}

/// Asserts what an [`ENCRYPT_DECRYPT_LOAD`] run against a healthy target reports: no error
/// (warm-up included), all 250 planned requests sent and every completed one ok, both operations
/// succeeding, a setup of 16 ciphertexts in 16 requests, 32-byte payloads, and every documented
/// field in the JSON report written to `json`.
fn assert_clean_encrypt_decrypt_run(report: &Report, json: &Path) {
    let r = &report.runs[0];
    assert_eq!(r.errors, 0, "{:?}", r.errors_by_type);
    assert_eq!(r.warmup_errors, 0);
    assert_eq!((r.planned, r.sent, r.not_sent), (250, 250, 0));
    assert_eq!(r.ok, r.completed);
    assert!(r.by_op["Encrypt"].ok > 0 && r.by_op["Decrypt"].ok > 0);
    let setup = report.setup.as_ref().unwrap();
    assert_eq!((setup.ciphertexts, setup.requests), (16, 16));
    assert_eq!(report.parameters.payload_bytes, 32);
    super::assert_documented_fields(&std::fs::read_to_string(json).unwrap());
}

/// The sum of the `kms_sidecar_requests_total` series in a scrape whose labels contain every one
/// of `labels` (e.g. `frontend="xks"`, `operation="XksEncrypt"`).
pub fn requests(metrics: &str, labels: &[&str]) -> u64 {
    metrics
        .lines()
        .filter(|l| l.starts_with("kms_sidecar_requests_total{"))
        .filter(|l| labels.iter().all(|label| l.contains(label)))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .map(|v| v as u64)
        .sum()
}

/// How many of the first `sent` requests of `mix` are Decrypts (the mix interleaves its
/// operations deterministically, so the sidecar's counters can be checked exactly).
pub fn decrypts_among(mix: &str, sent: u64) -> u64 {
    let mix = Mix::parse(mix).unwrap();
    (0..sent).filter(|i| mix.op(*i) == Op::Decrypt).count() as u64
}

/// Asserts that front-end `frontend` of the sidecar counted, between the scrapes `before` and
/// `after`, exactly the requests an [`ENCRYPT_DECRYPT_LOAD`] run sent (`sent`, warm-up included)
/// plus its `setup` Encrypts, split into `encrypt_op` and `decrypt_op` as the mix interleaves them.
fn assert_encrypt_decrypt_counted(
    (before, after): (&str, &str),
    frontend: &str,
    (encrypt_op, decrypt_op): (&str, &str),
    sent: u64,
    setup: u64,
) {
    let frontend = format!("frontend=\"{frontend}\"");
    let count =
        |metrics: &str, op: &str| requests(metrics, &[&frontend, &format!("operation=\"{op}\"")]);
    let decrypts = decrypts_among("encrypt=1,decrypt=1", sent);
    let encrypts = sent - decrypts + setup;
    assert_eq!(
        count(after, encrypt_op) - count(before, encrypt_op),
        encrypts,
        "{after}"
    );
    assert_eq!(
        count(after, decrypt_op) - count(before, decrypt_op),
        decrypts,
        "{after}"
    );
}
