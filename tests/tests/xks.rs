//! The AWS KMS External Key Store (XKS) proxy API end to end: a real sidecar process with
//! `--xks-listen`, requests signed by independent SigV4 signers (`aws-sigv4`, the AWS SDKs' crate,
//! and `curl --aws-sigv4` from `tests/xks-curl.sh`), over plain HTTP and over TLS. Every API, every
//! error of the spec's table that a client can provoke with its status, the integrity value, the
//! usages, both credentials of a prefix, the largest plaintext with the largest AAD, 405 and 404,
//! policy conditions on the request metadata, the audit record, health under a backend outage; on
//! the embedded backend and on SoftHSMv2 through PKCS#11.
#![forbid(unsafe_code)]
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod xks_support;

use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use kms_sidecar_e2e::{BackendChoice, http_send, on_every_backend, sample};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use xks_support::*;

/// The spec's round trips, usages, key states and integrity value, on one backend.
async fn apis_round_trip_with_usages_and_integrity(backend: BackendChoice) {
    let p = start(&backend, &[]).await;
    // GetHealthStatus: a deep check through the backend.
    let h = p.send(&format!("{PATH_A}/health"), &health_body()).await;
    assert_eq!(h.status, 200, "{:?}", h.body);
    assert_eq!(h.body["xksProxyFleetSize"], 2);
    assert_eq!(h.body["ekmFleetDetails"][0]["healthStatus"], "ACTIVE");
    assert_eq!(h.body["ekmFleetDetails"][0]["id"], backend.name());
    // GetKeyMetadata per usage.
    for (ext, usage) in [
        ("ext-both", json!(["ENCRYPT", "DECRYPT"])),
        ("ext-enc", json!(["ENCRYPT"])),
        ("ext-dec", json!(["DECRYPT"])),
        ("ext-none", json!([])),
    ] {
        let m = p
            .send(
                &format!("{PATH_A}/keys/{ext}/metadata"),
                &json!({"requestMetadata": metadata("DescribeKey", None)}),
            )
            .await;
        assert_eq!(m.status, 200, "{ext}: {:?}", m.body);
        assert_eq!(
            m.body,
            json!({"keySpec": "AES_256", "keyUsage": usage, "keyStatus": "ENABLED"})
        );
    }
    // The largest plaintext with the largest AAD, and the integrity value.
    let plaintext: Vec<u8> = (0..4300u32).map(|i| (i % 251) as u8).collect();
    let aad: Vec<u8> = (0..8192u32).map(|i| (i % 241) as u8).collect();
    let sealed = p.encrypt("ext-both", &plaintext, Some(&aad)).await;
    assert_eq!(sealed.status, 200, "{:?}", sealed.body);
    assert_eq!(sealed.blob("ciphertext").len(), 4300);
    assert_eq!(sealed.blob("initializationVector").len(), 12);
    assert_eq!(sealed.blob("authenticationTag").len(), 16);
    assert!(sealed.blob("ciphertextMetadata").len() <= 20);
    let mut h = Sha256::new();
    for member in [
        "ciphertextMetadata",
        "initializationVector",
        "ciphertext",
        "authenticationTag",
    ] {
        if member == "ciphertextMetadata" {
            h.update(&aad);
        }
        h.update(sealed.blob(member));
    }
    assert_eq!(
        sealed.blob("ciphertextDataIntegrityValue"),
        h.finalize().to_vec(),
        "Appendix C: SHA-256 over aad || metadata || iv || ciphertext || tag"
    );
    let opened = p.decrypt("ext-both", &sealed, Some(&aad), None).await;
    assert_eq!(opened.status, 200, "{:?}", opened.body);
    assert_eq!(opened.blob("plaintext"), plaintext);
    // Encrypt-only and decrypt-only external keys share the key: one seals, the other opens.
    let small = p.encrypt("ext-enc", b"hello", None).await;
    assert_eq!(small.status, 200, "{:?}", small.body);
    assert_eq!(
        p.decrypt("ext-dec", &small, None, None)
            .await
            .blob("plaintext"),
        b"hello"
    );
    for (ext, encrypt) in [
        ("ext-dec", true),
        ("ext-enc", false),
        ("ext-none", true),
        ("ext-none", false),
    ] {
        let a = if encrypt {
            p.encrypt(ext, b"x", None).await
        } else {
            p.decrypt(ext, &small, None, None).await
        };
        assert_eq!(
            (a.status, a.error()),
            (400, "InvalidKeyUsageException"),
            "{ext} {encrypt}"
        );
    }
    // Wrong, missing and extra AAD, a changed tag and foreign metadata do not open.
    for body in [
        decrypt_body(&sealed, Some(b"other"), None),
        decrypt_body(&sealed, None, None),
        decrypt_body(&small, Some(b"extra"), None),
        {
            let mut b = decrypt_body(&small, None, None);
            b["authenticationTag"] = B64.encode([0u8; 16]).into();
            b
        },
        {
            let mut b = decrypt_body(&small, None, None);
            b["ciphertextMetadata"] = B64.encode(b"key_version=1").into();
            b
        },
        {
            // The metadata moved into the AAD (the attack the spec's length prefixes stop).
            let mut b = decrypt_body(&small, Some(&small.blob("ciphertextMetadata")), None);
            b.as_object_mut().unwrap().remove("ciphertextMetadata");
            b
        },
    ] {
        let a = p.decrypt_body("ext-both", body).await;
        assert_eq!(
            (a.status, a.error()),
            (400, "InvalidCiphertextException"),
            "{:?}",
            a.body
        );
    }
    // A disabled key: InvalidState for Encrypt, DISABLED in its metadata.
    let a = p.encrypt("ext-disabled", b"x", None).await;
    assert_eq!((a.status, a.error()), (400, "InvalidStateException"));
    let m = p
        .send(
            &format!("{PATH_A}/keys/ext-disabled/metadata"),
            &json!({"requestMetadata": metadata("DescribeKey", None)}),
        )
        .await;
    assert_eq!(m.body["keyStatus"], "DISABLED");
    // The calls are counted under frontend="xks".
    let metrics = p.sidecar.metrics().await;
    let ok = sample(
        &metrics,
        "kms_sidecar_requests_total{frontend=\"xks\",operation=\"XksEncrypt\",outcome=\"ok\"}",
    );
    assert!(ok.unwrap_or(0.0) >= 2.0, "{metrics}");
}
on_every_backend!(apis_round_trip_with_usages_and_integrity);

/// Authentication (both credentials, a bad secret, an unknown id, another prefix's credential,
/// clock skew, no signature), routing (405, 404), the spec's errors with their statuses, key
/// policies on the request metadata and the audit record; over TLS.
async fn errors_auth_and_policies(p: &Proxy) {
    let health = format!("{PATH_A}/health");
    for cred in [A1, A2] {
        let a = p
            .send_as("POST", &health, &health_body(), Some(cred), 0)
            .await;
        assert_eq!(a.status, 200, "{}: {:?}", cred.0, a.body);
    }
    let b = p
        .send_as(
            "POST",
            &format!("{PATH_B}/health"),
            &health_body(),
            Some(B1),
            0,
        )
        .await;
    assert_eq!(b.status, 200, "{:?}", b.body);
    let bad_secret = (A1.0, "AAAAbmV3IHNlY3JldCB0aGF0IGlzIG5vdCBjb25maWd1cmVk");
    let unknown = ("AKSCXKSUNKNOWNCREDENTIAL", A1.1);
    for (cred, skew, what) in [
        (Some(bad_secret), 0, "a bad secret"),
        (Some(unknown), 0, "an unknown access key id"),
        (Some(B1), 0, "prefix B's credential on prefix A"),
        (Some(A1), 600, "a signature 10 minutes ahead"),
        (Some(A1), -600, "a signature 10 minutes old"),
        (None, 0, "no signature"),
    ] {
        let a = p.send_as("POST", &health, &health_body(), cred, skew).await;
        assert_eq!(
            (a.status, a.error()),
            (401, "AuthenticationFailedException"),
            "{what}"
        );
    }
    // Routing: another method on an API's URI is 405; an unknown prefix or path is 404.
    let get = p.send_as("GET", &health, &health_body(), Some(A1), 0).await;
    assert_eq!(get.status, 405);
    assert_eq!(get.allow.as_deref(), Some("POST"));
    for path in [
        "/wrong/kms/xks/v1/health",
        "/kms/xks/v1/keys/ext-both/sign",
        "/kms/xks/v2/health",
    ] {
        let a = p.send_as("POST", path, &health_body(), Some(A1), 0).await;
        assert_eq!(
            (a.status, a.error()),
            (404, "InvalidUriPathException"),
            "{path}"
        );
    }
    // requestMetadata is required, health included; an unknown kmsOperation is accepted.
    for (path, body) in [
        (health.clone(), json!({})),
        (health.clone(), json!({"requestMetadata": {}})),
        (
            format!("{PATH_A}/keys/ext-both/metadata"),
            json!({"requestMetadata": {"kmsOperation": "DescribeKey"}}),
        ),
        (
            format!("{PATH_A}/keys/ext-both/encrypt"),
            json!({"requestMetadata": metadata("Encrypt", None), "plaintext": "AA==", "encryptionAlgorithm": "RSA"}),
        ),
    ] {
        let a = p.send(&path, &body).await;
        assert_eq!(
            (a.status, a.error()),
            (400, "ValidationException"),
            "{path} {body}"
        );
    }
    let odd = json!({"requestMetadata": metadata("BulkEncryptOfTheFuture", None), "plaintext": "AA==", "encryptionAlgorithm": "AES_GCM"});
    assert_eq!(
        p.send(&format!("{PATH_A}/keys/ext-both/encrypt"), &odd)
            .await
            .status,
        200
    );
    // Unknown external keys and keys that do not exist: KeyNotFound.
    for ext in ["ext-missing", "not-configured"] {
        let a = p.encrypt(ext, b"x", None).await;
        assert_eq!(
            (a.status, a.error()),
            (404, "KeyNotFoundException"),
            "{ext}"
        );
    }
    // Beyond the supported sizes: UnsupportedOperation (501).
    let a = p.encrypt("ext-both", &[7u8; 4301], None).await;
    assert_eq!(
        (a.status, a.error()),
        (501, "UnsupportedOperationException")
    );
    let a = p.encrypt("ext-both", b"x", Some(&[1u8; 8193])).await;
    assert_eq!(
        (a.status, a.error()),
        (501, "UnsupportedOperationException")
    );
    // A key policy conditioned on the request metadata: only EBS may decrypt.
    let sealed = p.encrypt("ext-ebs-only", b"volume key", None).await;
    assert_eq!(sealed.status, 200, "{:?}", sealed.body);
    let ebs = p.decrypt("ext-ebs-only", &sealed, None, Some("ebs")).await;
    assert_eq!(ebs.blob("plaintext"), b"volume key");
    for via in [Some("s3"), None] {
        let a = p.decrypt("ext-ebs-only", &sealed, None, via).await;
        assert_eq!(
            (a.status, a.error()),
            (403, "AccessDeniedException"),
            "{via:?}"
        );
    }
    // The audit log names AWS KMS's request id and caller, never the plaintext.
    tokio::time::sleep(Duration::from_millis(1300)).await;
    let (status, audit) = kms_sidecar_e2e::http_get(&format!(
        "{}/v1/audit?principal=xks-a&limit=1000",
        p.sidecar.admin_url
    ))
    .await;
    assert_eq!(status, 200, "{audit}");
    let audit: Value = serde_json::from_str(&audit).unwrap();
    let records = audit["records"].as_array().unwrap();
    assert!(
        records.iter().any(|r| r["operation"] == "XksDecrypt"
            && r["outcome"] == "denied"
            && r["kms_request_id"] == "req-Decrypt-4112f4d6"
            && r["aws_principal_arn"] == "arn:aws:iam::123456789012:user/Alice"),
        "{audit}"
    );
    let all = serde_json::to_string(records).unwrap();
    assert!(!all.contains(&B64.encode(b"volume key")) && !all.contains("volume key"));
    let metrics = p.sidecar.metrics().await;
    assert!(
        sample(&metrics, "kms_sidecar_requests_total{frontend=\"xks\",operation=\"XksDecrypt\",outcome=\"AccessDeniedException\"}")
            .unwrap_or(0.0) >= 2.0,
        "{metrics}"
    );
}

#[tokio::test]
async fn errors_auth_and_policies_over_tls() {
    let p = start(&BackendChoice::Embedded, &["--tls"]).await;
    assert!(p.url.starts_with("https://"), "{}", p.url);
    errors_auth_and_policies(&p).await;
    curl_round_trip(&p).await;
}

#[tokio::test]
async fn errors_auth_and_policies_over_http() {
    let p = start(&BackendChoice::Embedded, &[]).await;
    assert!(p.url.starts_with("http://"), "{}", p.url);
    errors_auth_and_policies(&p).await;
    curl_round_trip(&p).await;
}

/// Health, Encrypt and Decrypt signed by curl (`tests/xks-curl.sh`), which signs content-type and
/// a host with its port in its own canonicalisation; a bad secret is refused.
async fn curl_round_trip(p: &Proxy) {
    let version = std::process::Command::new("curl").arg("--version").output();
    let Some(version) = version
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).to_string())
    else {
        println!("SKIPPED: curl is not installed (scripts/test.sh installs it)");
        return;
    };
    let v: Vec<u32> = version
        .split_whitespace()
        .nth(1)
        .unwrap_or("0")
        .split('.')
        .map(|n| n.parse().unwrap_or(0))
        .collect();
    if (
        v.first().copied().unwrap_or(0),
        v.get(1).copied().unwrap_or(0),
    ) < (7, 75)
    {
        println!("SKIPPED: curl {v:?} has no --aws-sigv4 (7.75 or later)");
        return;
    }
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/xks-curl.sh");
    let cacert = p
        .sidecar
        .data_dir
        .join("tls")
        .join("cert.pem")
        .display()
        .to_string();
    let base = p.url.replace("127.0.0.1", "localhost");
    let curl = |path: String, body: Value, secret: &'static str| {
        let out = std::process::Command::new("bash")
            .arg(script)
            .arg(format!("{base}{path}"))
            .arg(body.to_string())
            .env("XKS_ACCESS_KEY_ID", A2.0)
            .env("XKS_SECRET_ACCESS_KEY", secret)
            .env(
                "XKS_CACERT",
                if p.tls.is_some() { cacert.as_str() } else { "" },
            )
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout).to_string();
        assert!(
            out.status.success(),
            "{text}{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let (body, status) = text
            .trim_end()
            .rsplit_once("\nstatus=")
            .expect("status line");
        (
            status.parse::<u16>().unwrap(),
            serde_json::from_str::<Value>(body).unwrap_or(Value::Null),
        )
    };
    let (status, h) = curl(format!("{PATH_A}/health"), health_body(), A2.1);
    assert_eq!(status, 200, "{h}");
    assert_eq!(h["ekmFleetDetails"][0]["healthStatus"], "ACTIVE");
    let (status, sealed) = curl(
        format!("{PATH_A}/keys/ext-both/encrypt"),
        json!({"requestMetadata": metadata("GenerateDataKey", None), "plaintext": B64.encode(b"curl"), "encryptionAlgorithm": "AES_GCM", "additionalAuthenticatedData": B64.encode(b"ctx")}),
        A2.1,
    );
    assert_eq!(status, 200, "{sealed}");
    let sealed = Answer {
        status,
        body: sealed,
        allow: None,
    };
    let (status, opened) = curl(
        format!("{PATH_A}/keys/ext-both/decrypt"),
        decrypt_body(&sealed, Some(b"ctx"), None),
        A2.1,
    );
    assert_eq!(status, 200, "{opened}");
    assert_eq!(opened["plaintext"], B64.encode(b"curl"));
    // What curl sealed opens through the aws-sigv4 path too.
    assert_eq!(
        p.decrypt("ext-both", &sealed, Some(b"ctx"), None)
            .await
            .blob("plaintext"),
        b"curl"
    );
    let (status, bad) = curl(
        format!("{PATH_A}/health"),
        health_body(),
        "AAAAbmV3IHNlY3JldCB0aGF0IGlzIG5vdCBjb25maWd1cmVk",
    );
    assert_eq!(
        (status, bad["errorName"].as_str()),
        (401, Some("AuthenticationFailedException"))
    );
}

/// Health reports the backend's real state: UNAVAILABLE under an injected outage (and Encrypt
/// fails with DependencyTimeout), ACTIVE again after; a prefix over its rate limit is throttled.
async fn health_under_outage_and_throttling(backend: BackendChoice) {
    let p = start(
        &backend,
        &[
            "--faults-enabled",
            "--retry-base-ms",
            "2",
            "--retry-cap-ms",
            "10",
            "--breaker-cool-down-secs",
            "1",
        ],
    )
    .await;
    let health = format!("{PATH_A}/health");
    let faults = format!("{}/v1/faults", p.sidecar.admin_url);
    let (status, body) = http_send("PUT", &faults, r#"{"outage": "fail"}"#).await;
    assert_eq!(status, 200, "{body}");
    // The health result is reused for a second: wait past it.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let h = p.send(&health, &health_body()).await;
    assert_eq!(h.status, 200, "{:?}", h.body);
    assert_eq!(h.body["ekmFleetDetails"][0]["healthStatus"], "UNAVAILABLE");
    let a = p.encrypt("ext-both", b"x", None).await;
    assert_eq!(
        (a.status, a.error()),
        (503, "DependencyTimeoutException"),
        "{:?}",
        a.body
    );
    let (status, _) = http_send("DELETE", &faults, "").await;
    assert_eq!(status, 200);
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let h = p.send(&health, &health_body()).await;
        if h.body["ekmFleetDetails"][0]["healthStatus"] == "ACTIVE" {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "health did not recover: {:?}",
            h.body
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // Throttling: prefix B's principal has 1 call a second in the sidecar's rate limits.
    drop(p);
    let limits = tempfile::tempdir().unwrap();
    let file = limits.path().join("limits.toml");
    std::fs::write(&file, "rate_limit_principals = { \"xks-b\" = 1.0 }\n").unwrap();
    let p = start(&backend, &["--config", file.to_str().unwrap()]).await;
    let mut statuses = Vec::new();
    for _ in 0..5 {
        let a = p
            .send_as(
                "POST",
                &format!("{PATH_B}/health"),
                &health_body(),
                Some(B1),
                0,
            )
            .await;
        statuses.push((a.status, a.error().to_string()));
    }
    assert!(
        statuses.contains(&(429, "ThrottlingException".to_string())),
        "{statuses:?}"
    );
}
on_every_backend!(health_under_outage_and_throttling);

/// The spec's credential rotation without a restart: a new credential in the XKS file is accepted
/// after SIGHUP, the one it replaced is refused, the other one keeps working.
#[tokio::test]
async fn credentials_rotate_on_sighup_without_a_restart() {
    const NEW: (&str, &str) = (
        "AKSCXKSROTATEDCREDENTIAL",
        "cm90YXRlZCBzZWNyZXQgZm9yIHRoZSB4a3MgdGVzdCBvbmUu",
    );
    let p = start(&BackendChoice::Embedded, &[]).await;
    let health = format!("{PATH_A}/health");
    let config = p._dir.path().join("xks.toml");
    let text = std::fs::read_to_string(&config).unwrap();
    std::fs::write(&config, text.replace(A2.0, NEW.0).replace(A2.1, NEW.1)).unwrap();
    let new = p
        .send_as("POST", &health, &health_body(), Some(NEW), 0)
        .await;
    assert_eq!(new.status, 401, "not before the reload");
    let pid = p.sidecar.pid().to_string();
    assert!(
        std::process::Command::new("kill")
            .args(["-HUP", &pid])
            .status()
            .unwrap()
            .success()
    );
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while p
        .send_as("POST", &health, &health_body(), Some(NEW), 0)
        .await
        .status
        != 200
    {
        assert!(
            std::time::Instant::now() < deadline,
            "the new credential was never accepted"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let old = p
        .send_as("POST", &health, &health_body(), Some(A2), 0)
        .await;
    assert_eq!(
        (old.status, old.error()),
        (401, "AuthenticationFailedException")
    );
    let kept = p
        .send_as("POST", &health, &health_body(), Some(A1), 0)
        .await;
    assert_eq!(kept.status, 200);
}
