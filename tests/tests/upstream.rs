//! Two real sidecar processes chained: A runs the `upstream` backend pointed at B, which runs the
//! embedded backend. The AWS SDK drives A; every key operation must reach B under A's own
//! credentials for it, and when B goes away A must answer with KMS's retryable
//! `DependencyTimeoutException` (or a cached Decrypt), never a 500 or a body with internals.
#![forbid(unsafe_code)]
#![allow(clippy::unwrap_used, clippy::expect_used)]

use aws_sdk_kms::error::ProvideErrorMetadata as _;
use aws_sdk_kms::primitives::Blob;
use kms_sidecar_e2e::{Sidecar, Start, data_key_in, encrypt_in, error_code, new_key};

const UPSTREAM_OK: &str =
    "kms_sidecar_backend_requests_total{backend=\"upstream\",operation=\"encrypt\",outcome=\"ok\"}";

/// Starts A on `dir`, forwarding to `upstream` with its first-run credential.
fn start_chained(dir: &std::path::Path, upstream: &Sidecar) -> Sidecar {
    Sidecar::start_with(
        dir,
        Start {
            args: [
                "--backend",
                "upstream",
                "--upstream-endpoint",
                &upstream.kms_url,
                "--upstream-access-key-id",
                &upstream.creds.access_key_id,
                "--upstream-alias-prefix",
                "sidecar-a",
                "--backend-timeout-ms",
                "2000",
            ]
            .map(String::from)
            .to_vec(),
            env: vec![(
                "KMS_SIDECAR_UPSTREAM_SECRET_ACCESS_KEY".into(),
                upstream.creds.secret.clone(),
            )],
            creds: None,
        },
    )
    .unwrap_or_else(|out| panic!("sidecar A did not start:\n{out}"))
}

async fn encrypt(kms: &aws_sdk_kms::Client, key: &str, plaintext: &[u8]) -> Blob {
    encrypt_in(kms, key, plaintext, &[("tenant", "a")]).await
}

async fn decrypt(kms: &aws_sdk_kms::Client, blob: &Blob) -> Vec<u8> {
    kms.decrypt()
        .ciphertext_blob(blob.clone())
        .encryption_context("tenant", "a")
        .send()
        .await
        .unwrap()
        .plaintext
        .unwrap()
        .into_inner()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sidecar_forwards_to_another_and_survives_its_outage() {
    let (dir_a, dir_b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let b = Sidecar::start(dir_b.path());
    let a = start_chained(dir_a.path(), &b);
    let kms = a.sdk();

    let key = new_key(&kms).await;
    let first = encrypt(&kms, &key, b"before rotation").await;
    assert_eq!(decrypt(&kms, &first).await, b"before rotation");
    let wrong = kms
        .decrypt()
        .ciphertext_blob(first.clone())
        .encryption_context("tenant", "b")
        .send()
        .await;
    assert_eq!(error_code(wrong), "InvalidCiphertextException");

    let dk = data_key_in(&kms, &key, &[("tenant", "a")]).await;
    let plain = dk.plaintext.unwrap().into_inner();
    assert_eq!(plain.len(), 32);
    assert_eq!(decrypt(&kms, &dk.ciphertext_blob.unwrap()).await, plain);

    kms.rotate_key_on_demand()
        .key_id(&key)
        .send()
        .await
        .unwrap();
    let second = encrypt(&kms, &key, b"after rotation").await;
    assert_eq!(decrypt(&kms, &second).await, b"after rotation");
    assert_eq!(decrypt(&kms, &first).await, b"before rotation");

    // Each version of A's key is a key in B, found by its alias.
    let aliases: Vec<String> = b
        .sdk()
        .list_aliases()
        .send()
        .await
        .unwrap()
        .aliases
        .unwrap_or_default()
        .into_iter()
        .filter_map(|a| a.alias_name)
        .collect();
    for version in [1, 2] {
        let alias = format!("alias/sidecar-a/{key}/v{version}");
        assert!(aliases.contains(&alias), "{alias} not in {aliases:?}");
    }
    let scraped = kms_sidecar_e2e::http_get(&format!("{}/metrics", a.admin_url))
        .await
        .1;
    assert!(
        kms_sidecar_e2e::sample(&scraped, UPSTREAM_OK).is_some_and(|n| n >= 2.0),
        "{UPSTREAM_OK} missing"
    );

    // B goes away. A blob never decrypted before (and everything needing B) fails retryably.
    let unseen = encrypt(&kms, &key, b"never decrypted").await;
    let b_secret = b.creds.secret.clone();
    let (stopped, _) = b.stop();
    assert!(stopped);

    let failed = kms
        .decrypt()
        .ciphertext_blob(unseen)
        .encryption_context("tenant", "a")
        .send()
        .await;
    assert_eq!(error_code(failed), "DependencyTimeoutException");
    let failed = kms
        .encrypt()
        .key_id(&key)
        .plaintext(Blob::new(&b"x"[..]))
        .send()
        .await;
    assert_eq!(error_code(failed), "DependencyTimeoutException");
    assert_eq!(
        error_code(kms.create_key().send().await),
        "DependencyTimeoutException"
    );
    // What A decrypted before is still served from its cache.
    assert_eq!(decrypt(&kms, &second).await, b"after rotation");

    // On the wire: 503 with KMS's error shape, and nothing about B or the transport in the body.
    let raw = a.raw();
    for _ in 0..8 {
        let body = serde_json::json!({"KeyId": key, "Plaintext": "eA=="}).to_string();
        let resp = raw.call("Encrypt", body.as_bytes()).await;
        assert_eq!(resp.status, 503, "{}", resp.text);
        assert_eq!(resp.error_type(), Some("DependencyTimeoutException"));
        for internal in ["127.0.0.1", "onnect", "upstream", "dispatch", "alias/"] {
            assert!(!resp.text.contains(internal), "{internal}: {}", resp.text);
        }
    }
    let err = kms
        .encrypt()
        .key_id(&key)
        .plaintext(Blob::new(&b"x"[..]))
        .send()
        .await
        .unwrap_err();
    assert_ne!(err.code(), Some("KMSInternalException"));

    let (ok, out) = a.stop();
    assert!(ok, "sidecar A exited with an error:\n{}", out.all());
    let logged = out.all();
    assert!(!logged.contains(&b_secret), "B's secret was logged");
    assert!(!logged.contains("before rotation") && !logged.contains("after rotation"));
}
