//! Inbound rate limits against a real sidecar: with rate 1/s and burst 5, a burst of 8 calls yields
//! exactly 3 ThrottlingExceptions seen by the AWS SDK (retries off); another principal is not
//! affected; the throttles and the configured limits are exported and listed in `/v1/status`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::process::Command;
use std::time::Duration;

use aws_sdk_kms::error::ProvideErrorMetadata;
use kms_sidecar_e2e::{Creds, Sidecar, Start, binary, sdk_client};

async fn get(url: &str) -> String {
    use http_body_util::BodyExt;
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build_http::<http_body_util::Empty<bytes::Bytes>>();
    let resp = client.get(url.parse().unwrap()).await.unwrap();
    String::from_utf8(
        resp.into_body()
            .collect()
            .await
            .unwrap()
            .to_bytes()
            .to_vec(),
    )
    .unwrap()
}

fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines().find_map(|l| {
        l.strip_prefix(series)
            .and_then(|v| v.strip_prefix(' '))
            .and_then(|v| v.parse().ok())
    })
}

#[tokio::test]
async fn per_principal_limit_throttles_exactly_the_excess() {
    let dir = tempfile::tempdir().unwrap();
    let start = Start {
        args: [
            "--rate-limit-per-principal",
            "1",
            "--rate-limit-per-principal-burst",
            "5",
        ]
        .map(String::from)
        .to_vec(),
        ..Start::default()
    };
    let sidecar = Sidecar::start_with(dir.path(), start).unwrap();
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
    let out = Command::new(binary())
        .arg("--data-dir")
        .arg(dir.path())
        .args(["clients", "add", "other"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let get_line = |p: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(p).filter(|v| !v.contains(' ')))
            .unwrap()
            .to_string()
    };
    let other = sdk_client(
        &sidecar.kms_url,
        &Creds {
            access_key_id: get_line("  AWS_ACCESS_KEY_ID="),
            secret: get_line("  AWS_SECRET_ACCESS_KEY="),
        },
    );
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

    let metrics = get(&format!("{}/metrics", sidecar.admin_url)).await;
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
            "kms_sidecar_requests_total{operation=\"ListKeys\",outcome=\"ThrottlingException\"}"
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

    let status: serde_json::Value =
        serde_json::from_str(&get(&format!("{}/v1/status", sidecar.admin_url)).await).unwrap();
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
