//! What operators see, checked against a real sidecar after a scripted scenario: exact metric values,
//! `promtool check metrics` on the real scrape, `/v1/status`, `/v1/keys`, `/readyz`, and the
//! `x-kms-sidecar-key-version` header that proves which key version served a call.
#![forbid(unsafe_code)]
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::Write;
use std::process::{Command, Stdio};

use aws_sdk_kms::primitives::Blob;
use kms_sidecar_e2e::{Sidecar, http_get as get, new_key, sample, try_encrypt};

#[tokio::test]
async fn metrics_status_and_key_versions() {
    let dir = tempfile::tempdir().unwrap();
    let sidecar = Sidecar::start_args(dir.path(), &["--rotation-required", "true"]);
    let kms = sidecar.sdk();
    let raw = sidecar.raw();

    let (status, body) = get(&format!("{}/readyz", sidecar.admin_url)).await;
    assert_eq!(
        (status, body.as_str()),
        (200, "ready\n"),
        "ready with no keys (backend RNG answers)"
    );

    let key = new_key(&kms).await;
    let plain = new_key(&kms).await;
    kms.create_alias()
        .alias_name("alias/rotated")
        .target_key_id(&key)
        .send()
        .await
        .unwrap();
    kms.enable_key_rotation().key_id(&key).send().await.unwrap();
    let mut blobs = Vec::new();
    for _ in 0..3 {
        let out = try_encrypt(&kms, &key, b"m").await.unwrap();
        blobs.push(out.ciphertext_blob().unwrap().clone());
    }
    kms.decrypt()
        .ciphertext_blob(blobs[0].clone())
        .send()
        .await
        .unwrap();
    let _ = kms
        .decrypt()
        .ciphertext_blob(Blob::new(b"garbage".to_vec()))
        .send()
        .await
        .unwrap_err();
    kms.rotate_key_on_demand()
        .key_id(&key)
        .send()
        .await
        .unwrap();

    // The key version header: version 1 before the rotation, 2 after; Decrypt names the version used.
    let encrypt = format!(r#"{{"KeyId":"{key}","Plaintext":"bQ=="}}"#);
    let r = raw.call_with_headers("Encrypt", encrypt.as_bytes()).await;
    assert_eq!(r.0.get("x-kms-sidecar-key-version").unwrap(), "2");
    let old = base64::Engine::encode(
        &base64::engine::general_purpose::STANDARD,
        blobs[1].as_ref(),
    );
    let r = raw
        .call_with_headers(
            "Decrypt",
            format!(r#"{{"CiphertextBlob":"{old}"}}"#).as_bytes(),
        )
        .await;
    assert_eq!(r.0.get("x-kms-sidecar-key-version").unwrap(), "1");
    let r = raw.call_with_headers("ListKeys", b"{}").await;
    assert!(r.0.get("x-kms-sidecar-key-version").is_none());

    let (status, text) = get(&format!("{}/metrics", sidecar.admin_url)).await;
    assert_eq!(status, 200);
    let exact = [
        (
            "kms_sidecar_requests_total{frontend=\"aws_json\",operation=\"CreateKey\",outcome=\"ok\"}",
            2.0,
        ),
        (
            "kms_sidecar_requests_total{frontend=\"aws_json\",operation=\"Encrypt\",outcome=\"ok\"}",
            4.0,
        ),
        (
            "kms_sidecar_requests_total{frontend=\"aws_json\",operation=\"Decrypt\",outcome=\"ok\"}",
            2.0,
        ),
        (
            "kms_sidecar_requests_total{frontend=\"aws_json\",operation=\"Decrypt\",outcome=\"InvalidCiphertextException\"}",
            1.0,
        ),
        (
            "kms_sidecar_request_duration_seconds_count{cache=\"none\",frontend=\"aws_json\",operation=\"Encrypt\"}",
            4.0,
        ),
        (
            &format!("kms_sidecar_key_operations_total{{key=\"{key}\",operation=\"Encrypt\"}}"),
            4.0,
        ),
        (
            &format!("kms_sidecar_key_operations_total{{key=\"{key}\",operation=\"Decrypt\"}}"),
            2.0,
        ),
        (
            &format!(
                "kms_sidecar_key_rotations_total{{key=\"{key}\",outcome=\"ok\",trigger=\"on_demand\"}}"
            ),
            1.0,
        ),
        (
            &format!("kms_sidecar_key_rotation_enabled{{alias=\"alias/rotated\",key=\"{key}\"}}"),
            1.0,
        ),
        (
            &format!(
                "kms_sidecar_key_rotation_period_seconds{{alias=\"alias/rotated\",key=\"{key}\"}}"
            ),
            365.0 * 86400.0,
        ),
        (
            &format!("kms_sidecar_key_rotation_overdue{{alias=\"alias/rotated\",key=\"{key}\"}}"),
            0.0,
        ),
        // Rotation is required and this key has none: non-compliant.
        (
            &format!("kms_sidecar_key_rotation_overdue{{alias=\"\",key=\"{plain}\"}}"),
            1.0,
        ),
        (
            "kms_sidecar_backend_requests_total{backend=\"embedded\",operation=\"create_version\",outcome=\"ok\"}",
            3.0,
        ),
        (
            "kms_sidecar_backend_requests_total{backend=\"embedded\",operation=\"encrypt\",outcome=\"ok\"}",
            4.0,
        ),
        (
            "kms_sidecar_build_info{backend=\"embedded\",version=\"0.1.0\"}",
            1.0,
        ),
    ];
    for (series, value) in exact {
        assert_eq!(sample(&text, series), Some(value), "{series}\n{text}");
    }
    // The garbage ciphertext never reached the backend; the readiness probe's calls did.
    assert!(sample(&text, "kms_sidecar_backend_requests_total{backend=\"embedded\",operation=\"decrypt\",outcome=\"ok\"}").unwrap() >= 2.0);
    assert!(
        sample(
            &text,
            "kms_sidecar_backend_cost_dollars_total{backend=\"embedded\"}"
        )
        .unwrap()
            > 0.0
    );
    assert!(sample(&text, "process_resident_memory_bytes").unwrap() > 0.0);

    // promtool (installed by the test script) accepts the real scrape.
    match Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
    {
        Ok(mut child) => {
            child
                .stdin
                .take()
                .unwrap()
                .write_all(text.as_bytes())
                .unwrap();
            let out = child.wait_with_output().unwrap();
            assert!(
                out.status.success(),
                "promtool check metrics failed:\n{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Err(e) => eprintln!(
            "SKIPPED promtool check metrics: promtool not found ({e}); install the prometheus package"
        ),
    }

    let (status, body) = get(&format!("{}/v1/status", sidecar.admin_url)).await;
    assert_eq!(status, 200);
    let status: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(status["backend"]["name"], "embedded");
    assert!(status["uptime_seconds"].as_f64().unwrap() > 0.0);
    let keys = status["keys"].as_array().unwrap();
    assert_eq!(keys.len(), 2);
    let rotated = keys.iter().find(|k| k["key_id"] == key.as_str()).unwrap();
    assert_eq!(rotated["aliases"][0], "alias/rotated");
    assert_eq!(rotated["versions"], 2);
    assert_eq!(rotated["rotation_enabled"], true);
    assert_eq!(rotated["rotation_period_days"], 365);
    assert_eq!(rotated["rotation_overdue"], false);
    let unrotated = keys.iter().find(|k| k["key_id"] == plain.as_str()).unwrap();
    assert_eq!(unrotated["rotation_overdue"], true);
    assert!(!body.contains("material") && !body.contains("secret"));

    let (status, body) = get(&format!("{}/v1/keys", sidecar.admin_url)).await;
    assert_eq!(status, 200);
    assert_eq!(
        serde_json::from_str::<serde_json::Value>(&body).unwrap()["keys"]
            .as_array()
            .unwrap()
            .len(),
        2
    );

    let (status, body) = get(&format!("{}/readyz", sidecar.admin_url)).await;
    assert_eq!(
        (status, body.as_str()),
        (200, "ready\n"),
        "round trip through a real key"
    );
    let (status, _) = get(&format!("{}/nope", sidecar.admin_url)).await;
    assert_eq!(status, 404);
}
