//! Inbound rate limits against a real sidecar: with rate 1/s and burst 5, a burst of 8 calls yields
//! exactly 3 ThrottlingExceptions seen by the AWS SDK (retries off); another principal is not
//! affected; the throttles and the configured limits are exported and listed in `/v1/status`.
#![forbid(unsafe_code)]
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use aws_sdk_kms::error::ProvideErrorMetadata;
use kms_sidecar_e2e::{Sidecar, cli, printed_creds, sample, sdk_client};

#[tokio::test]
async fn per_principal_limit_throttles_exactly_the_excess() {
    let dir = tempfile::tempdir().unwrap();
    let sidecar = Sidecar::start_args(
        dir.path(),
        &[
            "--rate-limit-per-principal",
            "1",
            "--rate-limit-per-principal-burst",
            "5",
        ],
    );
    let kms = sidecar.sdk();

    let mut throttled = 0;
    for _ in 0..8 {
        match kms.list_keys().send().await {
            Ok(_) => {}
            Err(e) if e.code() == Some("ThrottlingException") => throttled += 1,
            Err(e) => panic!("unexpected error {e:?}"),
        }
    }
    assert_eq!(throttled, 3, "burst 5 of 8 calls within a second");

    // Another principal has its own bucket.
    let (ok, text) = cli(dir.path(), &["clients", "add", "other"]);
    assert!(ok, "{text}");
    let other = sdk_client(&sidecar.kms_url, &printed_creds(&text));
    let mut ok = 0;
    for _ in 0..100 {
        match other.list_keys().send().await {
            Ok(_) => {
                ok += 1;
                if ok == 5 {
                    break;
                }
            }
            Err(e) if e.code() == Some("UnrecognizedClientException") => {
                tokio::time::sleep(Duration::from_millis(100)).await
            }
            Err(e) => panic!("the other principal was refused: {e:?}"),
        }
    }
    assert_eq!(ok, 5);

    let metrics = kms_sidecar_e2e::http_get(&format!("{}/metrics", sidecar.admin_url))
        .await
        .1;
    assert_eq!(
        sample(
            &metrics,
            "kms_sidecar_throttled_total{principal=\"default\",scope=\"principal\"}"
        ),
        Some(3.0),
        "{metrics}"
    );
    assert_eq!(
        sample(
            &metrics,
            "kms_sidecar_requests_total{frontend=\"aws_json\",operation=\"ListKeys\",outcome=\"ThrottlingException\"}"
        ),
        Some(3.0)
    );
    assert!(
        metrics.contains("kms_sidecar_rate_limit_per_second{"),
        "{metrics}"
    );
    assert_eq!(
        sample(&metrics, "kms_sidecar_circuit_state{backend=\"embedded\"}"),
        Some(0.0)
    );

    let status: serde_json::Value = serde_json::from_str(
        &kms_sidecar_e2e::http_get(&format!("{}/v1/status", sidecar.admin_url))
            .await
            .1,
    )
    .unwrap();
    let limits = status["limits"].as_array().unwrap();
    assert!(
        limits.iter().any(|l| l["scope"] == "principal"
            && l["name"] == "default"
            && l["rate_per_second"] == 1.0
            && l["burst"] == 5),
        "{status}"
    );
    assert_eq!(status["backend"]["circuit"], "closed");
}

/// The outbound budget refuses backend calls beyond its rate as `ThrottlingException`, and each
/// refusal is counted in `throttled_total{scope="backend"}` under the caller's principal (the series
/// the availability alerts add to the error budget).
#[tokio::test]
async fn outbound_budget_refusals_are_counted_as_backend_throttles() {
    let dir = tempfile::tempdir().unwrap();
    // One backend call every 10 s, and 300 ms per call: after the key is created, the next token
    // is far past every call's deadline, so the Encrypts below are refused at once.
    let sidecar = Sidecar::start_args(
        dir.path(),
        &[
            "--outbound-per-second",
            "0.1",
            "--backend-timeout-ms",
            "300",
        ],
    );
    let series = "kms_sidecar_throttled_total{principal=\"default\",scope=\"backend\"}";
    let metrics = kms_sidecar_e2e::http_get(&format!("{}/metrics", sidecar.admin_url))
        .await
        .1;
    assert_eq!(
        sample(&metrics, series),
        Some(0.0),
        "at 0 from the start: {metrics}"
    );
    let kms = sidecar.sdk();
    let key = kms.create_key().send().await.unwrap();
    let key_id = key.key_metadata().unwrap().key_id().to_string();
    let mut throttled = 0;
    for _ in 0..4 {
        match kms
            .encrypt()
            .key_id(&key_id)
            .plaintext(aws_sdk_kms::primitives::Blob::new(b"over budget".to_vec()))
            .send()
            .await
        {
            Ok(_) => {}
            Err(e) if e.code() == Some("ThrottlingException") => throttled += 1,
            Err(e) => panic!("unexpected error {e:?}"),
        }
    }
    assert!(throttled >= 3, "{throttled} of 4 Encrypts throttled");
    let metrics = kms_sidecar_e2e::http_get(&format!("{}/metrics", sidecar.admin_url))
        .await
        .1;
    assert_eq!(
        sample(&metrics, series),
        Some(f64::from(throttled)),
        "{metrics}"
    );
    // Inbound limits refused nothing.
    assert!(
        !metrics
            .lines()
            .any(|l| l.starts_with("kms_sidecar_throttled_total{")
                && !l.contains("scope=\"backend\"")
                && !l.ends_with(" 0")),
        "{metrics}"
    );
}
