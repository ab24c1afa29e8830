//! Hostile and malformed requests over raw HTTP against a real sidecar: each gets the right 4xx KMS
//! error (never a 5xx, a panic or a hang), and authentication failures get AWS's error types.
#![forbid(unsafe_code)]
#![allow(clippy::unwrap_used, clippy::expect_used)]

use kms_sidecar_e2e::{Creds, Raw, Sidecar, Sign};

fn assert_error(r: &kms_sidecar_e2e::RawResponse, status: u16, ty: &str) {
    assert_eq!(r.status, status, "{}", r.text);
    assert_eq!(r.error_type(), Some(ty), "{}", r.text);
    assert!(
        r.body.get("message").and_then(|m| m.as_str()).is_some(),
        "{}",
        r.text
    );
}

#[tokio::test]
async fn malformed_bodies_are_client_errors() {
    let dir = tempfile::tempdir().unwrap();
    let sidecar = Sidecar::start(dir.path());
    let raw = sidecar.raw();
    let key = raw.call("CreateKey", b"{}").await.body["KeyMetadata"]["KeyId"]
        .as_str()
        .unwrap()
        .to_string();

    assert_error(
        &raw.call("Encrypt", b"{not json").await,
        400,
        "SerializationException",
    );
    assert_error(
        &raw.call("Encrypt", b"\xff\xfe\x00garbage").await,
        400,
        "SerializationException",
    );
    assert_error(
        &raw.call("Encrypt", b"[]").await,
        400,
        "SerializationException",
    );
    assert_error(
        &raw.call("Encrypt", b"{\"KeyId\": 5}").await,
        400,
        "SerializationException",
    );
    assert_error(
        &raw.call("Encrypt", br#"{"KeyId":"k","Plaintext":"***"}"#)
            .await,
        400,
        "SerializationException",
    );
    assert_error(
        &raw.call("GenerateRandom", br#"{"NumberOfBytes":"ten"}"#)
            .await,
        400,
        "SerializationException",
    );
    assert_error(
        &raw.call("GenerateRandom", br#"{"NumberOfBytes":1e400}"#)
            .await,
        400,
        "SerializationException",
    );
    let nested = format!("{}{}", "[".repeat(100_000 / 2), "]".repeat(100_000 / 2));
    let r = raw.call("Encrypt", nested.as_bytes()).await;
    assert_eq!(r.status, 413, "{}", r.text);
    let nested = format!("{{\"KeyId\":{}{}}}", "[".repeat(5000), "]".repeat(5000));
    assert_error(
        &raw.call("Encrypt", nested.as_bytes()).await,
        400,
        "SerializationException",
    );

    // Missing required members are ValidationException, as KMS answers.
    let r = raw.call("Encrypt", br#"{"Plaintext":"aGk="}"#).await;
    assert_error(&r, 400, "ValidationException");
    assert!(r.text.contains("keyId"), "{}", r.text);
    let body = format!(r#"{{"KeyId":"{key}"}}"#);
    assert_error(
        &raw.call("Encrypt", body.as_bytes()).await,
        400,
        "ValidationException",
    );
    assert_error(
        &raw.call("Decrypt", b"{}").await,
        400,
        "ValidationException",
    );
    let empty_plaintext = format!(r#"{{"KeyId":"{key}","Plaintext":""}}"#);
    assert_error(
        &raw.call("Encrypt", empty_plaintext.as_bytes()).await,
        400,
        "ValidationException",
    );
    let bad_algorithm =
        format!(r#"{{"KeyId":"{key}","Plaintext":"aGk=","EncryptionAlgorithm":"ROT13"}}"#);
    assert_error(
        &raw.call("Encrypt", bad_algorithm.as_bytes()).await,
        400,
        "ValidationException",
    );
    let rsa = format!(
        r#"{{"KeyId":"{key}","Plaintext":"aGk=","EncryptionAlgorithm":"RSAES_OAEP_SHA_256"}}"#
    );
    assert_error(
        &raw.call("Encrypt", rsa.as_bytes()).await,
        400,
        "InvalidKeyUsageException",
    );
    let long_id = format!(r#"{{"KeyId":"{}"}}"#, "k".repeat(3000));
    assert_error(
        &raw.call("DescribeKey", long_id.as_bytes()).await,
        400,
        "ValidationException",
    );

    // An empty body works for operations without required members.
    let r = raw.call("ListKeys", b"").await;
    assert_eq!(r.status, 200, "{}", r.text);
}

#[tokio::test]
async fn targets_sizes_and_methods() {
    let dir = tempfile::tempdir().unwrap();
    let sidecar = Sidecar::start(dir.path());
    let raw = sidecar.raw();

    assert_error(
        &raw.call("DoSomethingElse", b"{}").await,
        400,
        "UnknownOperationException",
    );
    assert_error(
        &raw.send(
            Some("Other.ListKeys"),
            b"{}",
            Sign::Valid { offset_secs: 0 },
            &[],
        )
        .await,
        400,
        "UnknownOperationException",
    );
    assert_error(
        &raw.send(None, b"{}", Sign::Valid { offset_secs: 0 }, &[])
            .await,
        400,
        "UnknownOperationException",
    );
    assert_error(
        &raw.send(
            Some("TrentService.ListKeys"),
            b"{}",
            Sign::Valid { offset_secs: 0 },
            &[("content-type", "text/xml")],
        )
        .await,
        400,
        "SerializationException",
    );

    // Oversized: refused by Content-Length before reading, with a 4xx.
    let big = vec![b' '; 70 * 1024];
    let r = raw.call("ListKeys", &big).await;
    assert_error(&r, 413, "ValidationException");
    // Exactly at the limit is read (all whitespace: an empty body, which ListKeys accepts).
    let at_limit = vec![b' '; 64 * 1024];
    let r = raw.call("ListKeys", &at_limit).await;
    assert_eq!(r.status, 200, "{}", r.text);

    // Every operation with junk members answers 4xx or 200, never 5xx.
    for op in kms_sidecar::kms::Operation::ALL {
        for body in [
            &b"{}"[..],
            br#"{"KeyId":"alias/none","Limit":-1,"NumberOfBytes":0}"#,
            b"null",
            b"\"s\"",
        ] {
            let r = raw.call(op.as_str(), body).await;
            assert!(
                r.status < 500,
                "{} {:?}: {}",
                op.as_str(),
                String::from_utf8_lossy(body),
                r.text
            );
        }
    }
}

#[tokio::test]
async fn authentication_failures() {
    let dir = tempfile::tempdir().unwrap();
    let sidecar = Sidecar::start(dir.path());
    let raw = sidecar.raw();
    let list = Some("TrentService.ListKeys");

    let r = raw.send(list, b"{}", Sign::None, &[]).await;
    assert_error(&r, 400, "MissingAuthenticationTokenException");
    let r = raw
        .send(list, b"{}", Sign::Corrupt { offset_secs: 0 }, &[])
        .await;
    assert_error(&r, 400, "InvalidSignatureException");
    let r = raw
        .send(list, b"{}", Sign::Valid { offset_secs: -600 }, &[])
        .await;
    assert_error(&r, 400, "InvalidSignatureException");
    assert!(r.text.contains("Signature expired"), "{}", r.text);
    let r = raw
        .send(list, b"{}", Sign::Valid { offset_secs: 600 }, &[])
        .await;
    assert_error(&r, 400, "InvalidSignatureException");
    // Within the 5-minute skew is fine.
    let r = raw
        .send(list, b"{}", Sign::Valid { offset_secs: -240 }, &[])
        .await;
    assert_eq!(r.status, 200, "{}", r.text);

    let stranger = Raw::new(
        &sidecar.kms_url,
        Creds {
            access_key_id: "AKSCNOTISSUED0000000".into(),
            secret: "x".into(),
        },
    );
    assert_error(
        &stranger.call("ListKeys", b"{}").await,
        400,
        "UnrecognizedClientException",
    );
    let wrong_secret = Raw::new(
        &sidecar.kms_url,
        Creds {
            secret: "wrong".into(),
            ..sidecar.creds.clone()
        },
    );
    assert_error(
        &wrong_secret.call("ListKeys", b"{}").await,
        400,
        "InvalidSignatureException",
    );

    for header in [
        "Bearer abc",
        "AWS4-HMAC-SHA256 Credential=x",
        "AWS4-HMAC-SHA256 Credential=AKID/20250101/us-east-1/kms/aws4_request, SignedHeaders=host, Signature=zz",
    ] {
        let r = raw.send(list, b"{}", Sign::Header(header), &[]).await;
        assert_error(&r, 400, "IncompleteSignatureException");
    }

    // The signature covers the body: a body changed after signing is rejected.
    let r = raw
        .send(
            list,
            b"{}",
            Sign::Valid { offset_secs: 0 },
            &[(
                "x-amz-content-sha256",
                "0000000000000000000000000000000000000000000000000000000000000000",
            )],
        )
        .await;
    assert_error(&r, 400, "InvalidSignatureException");

    // The metrics count the failures by outcome.
    let metrics = kms_sidecar_e2e::http_get(&format!("{}/metrics", sidecar.admin_url))
        .await
        .1;
    assert!(metrics.contains("kms_sidecar_requests_total{frontend=\"aws_json\",operation=\"ListKeys\",outcome=\"InvalidSignatureException\"} 5"), "{metrics}");
    assert!(metrics.contains("kms_sidecar_requests_total{frontend=\"aws_json\",operation=\"ListKeys\",outcome=\"UnrecognizedClientException\"} 1"), "{metrics}");
    let health = kms_sidecar_e2e::http_get(&format!("{}/healthz", sidecar.admin_url))
        .await
        .1;
    assert_eq!(health, "ok\n");
}
