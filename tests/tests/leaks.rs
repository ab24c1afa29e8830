//! Planted secrets never reach the sidecar's output: plaintexts, data keys and client secrets are
//! absent from its logs (at debug level) in every encoding we can think of, and from its metrics.
#![forbid(unsafe_code)]
#![allow(clippy::unwrap_used, clippy::expect_used)]

use aws_sdk_kms::primitives::Blob;
use aws_sdk_kms::types::DataKeySpec;
use base64::Engine as _;
use kms_sidecar_e2e::{Sidecar, Start};

fn encodings(secret: &[u8]) -> Vec<String> {
    vec![
        String::from_utf8_lossy(secret).into_owned(),
        base64::engine::general_purpose::STANDARD.encode(secret),
        hex::encode(secret),
        hex::encode_upper(secret),
    ]
}

#[tokio::test]
async fn plaintexts_and_secrets_never_logged() {
    let dir = tempfile::tempdir().unwrap();
    let start = Start {
        args: vec!["--log-level".into(), "debug".into()],
        ..Start::default()
    };
    let sidecar = Sidecar::start_with(dir.path(), start).unwrap();
    let kms = sidecar.sdk();
    let planted = b"PLANTED-PLAINTEXT-7f3a9c-do-not-log".to_vec();

    let key = kms
        .create_key()
        .send()
        .await
        .unwrap()
        .key_metadata()
        .unwrap()
        .key_id()
        .to_string();
    let enc = kms
        .encrypt()
        .key_id(&key)
        .plaintext(Blob::new(planted.clone()))
        .send()
        .await
        .unwrap();
    let blob = enc.ciphertext_blob().unwrap().clone();
    let dec = kms
        .decrypt()
        .ciphertext_blob(blob.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(dec.plaintext().unwrap().as_ref(), &planted[..]);
    // Failing calls log too: make them carry the planted plaintext.
    let _ = kms
        .encrypt()
        .key_id("alias/missing")
        .plaintext(Blob::new(planted.clone()))
        .send()
        .await;
    let _ = kms
        .decrypt()
        .ciphertext_blob(blob)
        .encryption_context("wrong", "ctx")
        .send()
        .await;
    let dk = kms
        .generate_data_key()
        .key_id(&key)
        .key_spec(DataKeySpec::Aes256)
        .send()
        .await
        .unwrap();
    let data_key = dk.plaintext().unwrap().as_ref().to_vec();
    let random = kms
        .generate_random()
        .number_of_bytes(32)
        .send()
        .await
        .unwrap()
        .plaintext()
        .unwrap()
        .as_ref()
        .to_vec();

    let metrics = kms_sidecar_e2e::http_get(&format!("{}/metrics", sidecar.admin_url))
        .await
        .1;
    let secret = sidecar.creds.secret.clone();
    let (ok, output) = sidecar.stop();
    assert!(ok);
    let stderr = output.stderr_text();
    assert!(stderr.contains("DEBUG"), "debug logging was on: {stderr}");
    let stdout = output.stdout.lock().unwrap().clone();

    for (what, value) in [
        ("plaintext", &planted[..]),
        ("data key", &data_key[..]),
        ("random", &random[..]),
    ] {
        for form in encodings(value) {
            assert!(
                !stderr.contains(&form),
                "{what} leaked into the log as {form}"
            );
            assert!(
                !stdout.iter().any(|l| l.contains(&form)),
                "{what} leaked into stdout"
            );
            assert!(!metrics.contains(&form), "{what} leaked into metrics");
        }
    }
    assert!(
        !stderr.contains(&secret),
        "client secret leaked into the log"
    );
    assert!(
        !metrics.contains(&secret),
        "client secret leaked into metrics"
    );
    // The secret is printed exactly once, in the first-run banner (two lines: the variable and the example).
    let mentions = stdout.iter().filter(|l| l.contains(&secret)).count();
    assert_eq!(mentions, 2, "{stdout:?}");
    // The data directory never holds the secret or the plaintext in clear.
    for entry in walk(dir.path()) {
        let bytes = std::fs::read(&entry).unwrap();
        let text = String::from_utf8_lossy(&bytes);
        assert!(
            !text.contains(&secret),
            "client secret in clear in {}",
            entry.display()
        );
        for form in encodings(&planted) {
            assert!(!text.contains(&form), "plaintext in {}", entry.display());
        }
    }
}

fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            out.extend(walk(&path));
        } else {
            out.push(path);
        }
    }
    out
}
