//! SIGHUP reloads the inbound rate limits from the config file without a restart; a file that does
//! not validate is refused and the running limits stay.
#![forbid(unsafe_code)]
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::{Duration, Instant};

use kms_sidecar_e2e::{Sidecar, error_code, http_get};

/// The `rate_per_second` of the principal default limit in `/v1/status`.
async fn principal_rate(sidecar: &Sidecar) -> Option<f64> {
    let (_, body) = http_get(&format!("{}/v1/status", sidecar.admin_url)).await;
    let status: serde_json::Value = serde_json::from_str(&body).unwrap();
    status["limits"]
        .as_array()?
        .iter()
        .find(|l| l["scope"] == "principal" && l["name"] == "default")
        .and_then(|l| l["rate_per_second"].as_f64())
}

async fn wait_for_rate(sidecar: &Sidecar, want: f64) {
    let started = Instant::now();
    while principal_rate(sidecar).await != Some(want) {
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "limit not reloaded: {:?}\n{}",
            principal_rate(sidecar).await,
            sidecar.output.all()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn sighup_reloads_rate_limits_and_refuses_a_bad_file() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("sidecar.toml");
    std::fs::write(&config, "rate_limit_per_principal = 1000.0\n").unwrap();
    let sidecar = Sidecar::start_args(
        &dir.path().join("data"),
        &["--config", config.to_str().unwrap()],
    );
    let kms = sidecar.sdk();
    assert_eq!(principal_rate(&sidecar).await, Some(1000.0));
    for _ in 0..5 {
        kms.generate_random()
            .number_of_bytes(8)
            .send()
            .await
            .unwrap();
    }

    // Tighten: 0.5 calls/s with a burst of 2.
    std::fs::write(
        &config,
        "rate_limit_per_principal = 0.5\nrate_limit_per_principal_burst = 2\n",
    )
    .unwrap();
    sidecar.hup();
    wait_for_rate(&sidecar, 0.5).await;
    for _ in 0..2 {
        kms.generate_random()
            .number_of_bytes(8)
            .send()
            .await
            .unwrap();
    }
    let third = kms.generate_random().number_of_bytes(8).send().await;
    assert_eq!(error_code(third), "ThrottlingException");
    let (_, metrics) = http_get(&format!("{}/metrics", sidecar.admin_url)).await;
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("kms_sidecar_rate_limit_per_second{")
                && l.contains("scope=\"principal\"")
                && l.ends_with(" 0.5")),
        "the exported limit follows the reload:\n{metrics}"
    );

    // A file that does not validate is refused; the running limits stay.
    std::fs::write(&config, "rate_limit_per_principal = 0.0\n").unwrap();
    sidecar.hup();
    let started = Instant::now();
    while !sidecar.output.all().contains("reload failed") {
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "no reload error logged"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(principal_rate(&sidecar).await, Some(0.5));
    let still = kms.generate_random().number_of_bytes(8).send().await;
    assert_eq!(error_code(still), "ThrottlingException");

    // Loosen again: calls flow.
    std::fs::write(&config, "rate_limit_per_principal = 1000.0\n").unwrap();
    sidecar.hup();
    wait_for_rate(&sidecar, 1000.0).await;
    kms.generate_random()
        .number_of_bytes(8)
        .send()
        .await
        .unwrap();
}
