//! The XKS target end to end: a real sidecar process with its XKS proxy API on, a key whose policy
//! allows the XKS prefix's principal, and a short bounded open-loop load of XKS Encrypt and Decrypt
//! (signed by `aws-sigv4` for `kms-xks-proxy`) with zero errors, every request (setup, warm-up and
//! measured) visible in the sidecar's own `kms_sidecar_requests_total{frontend="xks"}`.
#![forbid(unsafe_code)]
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use kms_sidecar_e2e::{Sidecar, key_with_alias};
use support::sidecar::encrypt_decrypt_load;

const XKS_ID: &str = "AKSCXKSLOADTESTCREDENTIAL";
const XKS_SECRET: &str = "bG9hZCB0ZXN0IHNlY3JldCBmb3IgdGhlIHhrcyBwcm94eQ==";

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
    let sidecar = Sidecar::start_args(
        &dir.path().join("data"),
        &[
            "--xks-listen",
            "127.0.0.1:0",
            "--xks-config",
            config.to_str().unwrap(),
        ],
    );
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
    let policy = serde_json::json!({"Version": "2012-10-17", "Statement": [
        {"Effect": "Allow", "Principal": {"AWS": "arn:aws:iam::111122223333:user/default"}, "Action": "kms:*", "Resource": "*"},
        {"Effect": "Allow", "Principal": {"AWS": "arn:aws:iam::111122223333:user/xks"}, "Action": ["kms:Encrypt", "kms:Decrypt"], "Resource": "*"}
    ]});
    key_with_alias(&sidecar.sdk(), &policy.to_string(), "alias/xks-load").await;
    let report = encrypt_decrypt_load(
        sidecar,
        &[
            "--target",
            &xks_url,
            "--xks-key-id",
            "load",
            "--access-key-id",
            XKS_ID,
            "--secret-access-key",
            XKS_SECRET,
        ],
        "xks",
        ("XksEncrypt", "XksDecrypt"),
    )
    .await;
    let r = &report.runs[0];
    assert!(r.target.starts_with("http://127.0.0.1"), "{}", r.target);
}
