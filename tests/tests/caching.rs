//! The decrypt cache and the data-key pool against a real sidecar: a repeated Decrypt does not reach
//! the backend, contexts never share entries, 100 concurrent misses cost one backend call, a
//! disabled key or a denying policy still refuses cached plaintexts, and pooled data keys are unique
//! and served without a synchronous backend call.
#![forbid(unsafe_code)]
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashSet;
use std::time::Duration;

use aws_sdk_kms::error::ProvideErrorMetadata;
use aws_sdk_kms::types::DataKeySpec;
use base64::Engine as _;
use kms_sidecar_e2e::{Sidecar, encrypt_in, new_key, try_encrypt};

fn sample(text: &str, series: &str) -> f64 {
    kms_sidecar_e2e::sample(text, series).unwrap_or(0.0)
}

const BACKEND_DECRYPT: &str =
    "kms_sidecar_backend_requests_total{backend=\"embedded\",operation=\"decrypt\",outcome=\"ok\"}";
const BACKEND_RANDOM: &str =
    "kms_sidecar_backend_requests_total{backend=\"embedded\",operation=\"random\",outcome=\"ok\"}";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn decrypt_cache_hits_coalesces_and_still_authorizes() {
    let dir = tempfile::tempdir().unwrap();
    let sidecar = Sidecar::start(dir.path());
    let kms = sidecar.sdk();
    let key = new_key(&kms).await;
    let blob = encrypt_in(&kms, &key, b"cached", &[("app", "x")]).await;
    let decrypt = || {
        kms.decrypt()
            .ciphertext_blob(blob.clone())
            .encryption_context("app", "x")
            .send()
    };

    assert_eq!(
        decrypt().await.unwrap().plaintext().unwrap().as_ref(),
        b"cached"
    );
    let before = sidecar.metrics().await;
    for _ in 0..5 {
        assert_eq!(
            decrypt().await.unwrap().plaintext().unwrap().as_ref(),
            b"cached"
        );
    }
    let after = sidecar.metrics().await;
    assert_eq!(
        sample(&after, BACKEND_DECRYPT),
        sample(&before, BACKEND_DECRYPT),
        "hits never reach the backend"
    );
    assert_eq!(
        sample(
            &after,
            "kms_sidecar_cache_requests_total{cache=\"decrypt\",result=\"hit\"}"
        ),
        5.0
    );
    assert_eq!(
        sample(
            &after,
            "kms_sidecar_request_duration_seconds_count{cache=\"hit\",frontend=\"aws_json\",operation=\"Decrypt\"}"
        ),
        5.0
    );
    assert_eq!(
        sample(&after, "kms_sidecar_cache_entries{cache=\"decrypt\"}"),
        1.0,
        "{after}"
    );

    // Another context never hits this entry.
    let other = kms
        .decrypt()
        .ciphertext_blob(blob.clone())
        .encryption_context("app", "y")
        .send()
        .await;
    assert_eq!(
        other.unwrap_err().code(),
        Some("InvalidCiphertextException")
    );

    // 100 concurrent Decrypts of one uncached ciphertext: one backend call.
    let fresh = try_encrypt(&kms, &key, b"herd").await.unwrap();
    let fresh =
        base64::engine::general_purpose::STANDARD.encode(fresh.ciphertext_blob().unwrap().as_ref());
    let before = sample(&sidecar.metrics().await, BACKEND_DECRYPT);
    let raw = sidecar.raw();
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..100 {
        let raw = raw.clone();
        let body = format!(r#"{{"CiphertextBlob":"{fresh}"}}"#);
        tasks.spawn(async move { raw.call("Decrypt", body.as_bytes()).await });
    }
    while let Some(r) = tasks.join_next().await {
        let r = r.unwrap();
        assert_eq!(r.status, 200, "{}", r.text);
    }
    let after = sample(&sidecar.metrics().await, BACKEND_DECRYPT);
    assert_eq!(after - before, 1.0, "concurrent misses are coalesced");

    // Authorization and key state are checked before the cache: a disabled key refuses hits.
    kms.disable_key().key_id(&key).send().await.unwrap();
    assert_eq!(
        decrypt().await.unwrap_err().code(),
        Some("DisabledException")
    );
    kms.enable_key().key_id(&key).send().await.unwrap();
    let deny_all = r#"{"Version":"2012-10-17","Statement":[
      {"Effect":"Allow","Principal":{"AWS":"arn:aws:iam::111122223333:user/default"},"Action":"kms:*","Resource":"*"},
      {"Effect":"Deny","Principal":{"AWS":"arn:aws:iam::111122223333:user/default"},"Action":"kms:Decrypt","Resource":"*"}]}"#;
    kms.put_key_policy()
        .key_id(&key)
        .policy(deny_all)
        .send()
        .await
        .unwrap();
    assert_eq!(
        decrypt().await.unwrap_err().code(),
        Some("AccessDeniedException")
    );
}

#[tokio::test]
async fn pooled_data_keys_are_unique_and_off_the_hot_path() {
    let dir = tempfile::tempdir().unwrap();
    let sidecar = Sidecar::start(dir.path());
    let kms = sidecar.sdk();
    let key = new_key(&kms).await;
    let gdk = || {
        kms.generate_data_key()
            .key_id(&key)
            .key_spec(DataKeySpec::Aes256)
            .send()
    };

    // The first call finds an empty pool (served on demand) and starts a refill of 16.
    let first = gdk().await.unwrap();
    let mut seen = HashSet::new();
    seen.insert(first.plaintext().unwrap().as_ref().to_vec());
    let mut filled = false;
    for _ in 0..100 {
        if sample(
            &sidecar.metrics().await,
            "kms_sidecar_cache_entries{cache=\"data_key_pool\"}",
        ) >= 16.0
        {
            filled = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(filled, "pool refilled in the background");
    let before = sidecar.metrics().await;
    let mut blobs = Vec::new();
    for _ in 0..8 {
        let dk = gdk().await.unwrap();
        assert!(
            seen.insert(dk.plaintext().unwrap().as_ref().to_vec()),
            "each pooled key is handed out once"
        );
        blobs.push((
            dk.ciphertext_blob().unwrap().clone(),
            dk.plaintext().unwrap().as_ref().to_vec(),
        ));
    }
    let after = sidecar.metrics().await;
    assert_eq!(
        sample(
            &after,
            "kms_sidecar_cache_requests_total{cache=\"data_key_pool\",result=\"hit\"}"
        ),
        8.0
    );
    // Eight pooled keys cost no synchronous RNG calls (a refill below the watermark may add its own).
    assert!(sample(&after, BACKEND_RANDOM) - sample(&before, BACKEND_RANDOM) <= 16.0);
    // Pooled ciphertexts decrypt to their plaintexts.
    for (blob, plain) in blobs {
        let out = kms.decrypt().ciphertext_blob(blob).send().await.unwrap();
        assert_eq!(out.plaintext().unwrap().as_ref(), &plain[..]);
    }
    // After a rotation, pooled keys of the old version are never handed out.
    kms.rotate_key_on_demand()
        .key_id(&key)
        .send()
        .await
        .unwrap();
    let rotated = gdk().await.unwrap();
    let header = rotated.ciphertext_blob().unwrap().as_ref();
    assert_eq!(header[41..45], 2u32.to_be_bytes());
    // A context means on demand: still correct.
    let ctx = kms
        .generate_data_key()
        .key_id(&key)
        .number_of_bytes(32)
        .encryption_context("a", "b")
        .send()
        .await
        .unwrap();
    let out = kms
        .decrypt()
        .ciphertext_blob(ctx.ciphertext_blob().unwrap().clone())
        .encryption_context("a", "b")
        .send()
        .await
        .unwrap();
    assert_eq!(
        out.plaintext().unwrap().as_ref(),
        ctx.plaintext().unwrap().as_ref()
    );
}
