//! The XKS target end to end: a real sidecar process with its XKS proxy API on, a key whose policy
//! allows the XKS prefix's principal, and a short bounded open-loop load of XKS Encrypt and Decrypt
//! (signed by `aws-sigv4` for `kms-xks-proxy`) with zero errors, every request (setup, warm-up and
//! measured) visible in the sidecar's own `kms_sidecar_requests_total{frontend="xks"}`.
#![forbid(unsafe_code)]
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use kms_sidecar_e2e::{Sidecar, Start};
use support::{assert_documented_fields, cli};

const XKS_ID: &str = "AKSCXKSLOADTESTCREDENTIAL";
const XKS_SECRET: &str = "bG9hZCB0ZXN0IHNlY3JldCBmb3IgdGhlIHhrcyBwcm94eQ==";

/// The sum of `kms_sidecar_requests_total` series of the XKS front-end for `op`, any outcome.
fn xks_requests(metrics: &str, op: &str) -> u64 {
    metrics
        .lines()
        .filter(|l| l.starts_with("kms_sidecar_requests_total{"))
        .filter(|l| l.contains("frontend=\"xks\"") && l.contains(&format!("operation=\"{op}\"")))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .map(|v| v as u64)
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn xks_load_against_a_real_sidecar_has_zero_errors() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("xks.toml");
    std::fs::write(
        &config,
        format!(
            "[[prefixes]]\nuri_path = \"/kms/xks/v1\"\nprincipal = \"xks\"\ncredentials = [{{ access_key_id = \"{XKS_ID}\", secret_access_key = \"{XKS_SECRET}\" }}]\n\n[keys.load]\nkey_id = \"alias/xks-load\"\n"
        ),
    )
    .unwrap();
    let sidecar = Sidecar::start_with(
        &dir.path().join("data"),
        Start {
            args: [
                "--xks-listen",
                "127.0.0.1:0",
                "--xks-config",
                config.to_str().unwrap(),
            ]
            .map(String::from)
            .to_vec(),
            ..Start::default()
        },
    )
    .unwrap();
    let xks_url = sidecar
        .output
        .stdout
        .lock()
        .unwrap()
        .iter()
        .find_map(|l| {
            l.split_whitespace()
                .find_map(|p| p.strip_prefix("xks="))
                .map(String::from)
        })
        .expect("the XKS address");
    let kms = sidecar.sdk();
    let policy = serde_json::json!({"Version": "2012-10-17", "Statement": [
        {"Effect": "Allow", "Principal": {"AWS": "arn:aws:iam::111122223333:user/default"}, "Action": "kms:*", "Resource": "*"},
        {"Effect": "Allow", "Principal": {"AWS": "arn:aws:iam::111122223333:user/xks"}, "Action": ["kms:Encrypt", "kms:Decrypt"], "Resource": "*"}
    ]});
    let key = kms
        .create_key()
        .policy(policy.to_string())
        .send()
        .await
        .expect("CreateKey")
        .key_metadata
        .expect("metadata");
    kms.create_alias()
        .alias_name("alias/xks-load")
        .target_key_id(key.key_id())
        .send()
        .await
        .expect("CreateAlias");
    let before = sidecar.metrics().await;

    let out = tempfile::tempdir().unwrap();
    let json = out.path().join("xks.json");
    let report = cli(&[
        "run",
        "--no-progress",
        "--target",
        &xks_url,
        "--xks-key-id",
        "load",
        "--access-key-id",
        XKS_ID,
        "--secret-access-key",
        XKS_SECRET,
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
        "--json",
        json.to_str().unwrap(),
    ])
    .await;
    let r = &report.runs[0];
    assert_eq!(r.errors, 0, "{:?}", r.errors_by_type);
    assert_eq!(r.warmup_errors, 0);
    assert_eq!((r.planned, r.sent, r.not_sent), (250, 250, 0));
    assert_eq!(r.ok, r.completed);
    assert!(r.by_op["Encrypt"].ok > 0 && r.by_op["Decrypt"].ok > 0);
    assert!(r.target.starts_with("http://127.0.0.1"), "{}", r.target);
    let setup = report.setup.as_ref().unwrap();
    assert_eq!((setup.ciphertexts, setup.requests), (16, 16));
    assert_eq!(report.parameters.payload_bytes, 32);
    assert_documented_fields(&std::fs::read_to_string(&json).unwrap());

    let after = sidecar.metrics().await;
    let mix = kms_loadtest::mix::Mix::parse("encrypt=1,decrypt=1").unwrap();
    let decrypts = (0..r.sent)
        .filter(|i| mix.op(*i) == kms_loadtest::mix::Op::Decrypt)
        .count() as u64;
    let encrypts = r.sent - decrypts + setup.requests;
    assert_eq!(
        xks_requests(&after, "XksEncrypt") - xks_requests(&before, "XksEncrypt"),
        encrypts,
        "{after}"
    );
    assert_eq!(
        xks_requests(&after, "XksDecrypt") - xks_requests(&before, "XksDecrypt"),
        decrypts,
        "{after}"
    );
    let (ok, out) = sidecar.stop();
    assert!(ok, "sidecar exited with an error:\n{}", out.all());
}
