//! HTTPS on the KMS port: the official SDK trusting only the sidecar's own self-signed certificate
//! (as a client given `AWS_CA_BUNDLE` would), a configured certificate pair, and what a client that
//! does not trust the certificate or speaks plain HTTP gets.
#![forbid(unsafe_code)]
#![allow(clippy::unwrap_used, clippy::expect_used)]

use aws_sdk_kms::config::{BehaviorVersion, Credentials, Region};
use aws_smithy_http_client::tls::{self, TlsContext, TrustStore};
use kms_sidecar_e2e::{Creds, Sidecar, Start, http_get, try_encrypt};

/// An SDK client that trusts `ca_pem` and nothing else (no system roots).
fn sdk_trusting(endpoint: &str, creds: &Creds, ca_pem: Option<&[u8]>) -> aws_sdk_kms::Client {
    let trust = match ca_pem {
        Some(pem) => TrustStore::empty().with_pem_certificate(pem.to_vec()),
        None => TrustStore::empty(),
    };
    let http = aws_smithy_http_client::Builder::new()
        .tls_provider(tls::Provider::Rustls(
            tls::rustls_provider::CryptoMode::AwsLc,
        ))
        .tls_context(
            TlsContext::builder()
                .with_trust_store(trust)
                .build()
                .unwrap(),
        )
        .build_https();
    let conf = aws_sdk_kms::Config::builder()
        .behavior_version(BehaviorVersion::latest())
        .region(Region::new("us-east-1"))
        .endpoint_url(endpoint)
        .http_client(http)
        .credentials_provider(Credentials::new(
            &creds.access_key_id,
            &creds.secret,
            None,
            None,
            "tls-test",
        ))
        .retry_config(aws_sdk_kms::config::retry::RetryConfig::disabled())
        .build();
    aws_sdk_kms::Client::from_conf(conf)
}

fn tls_start() -> Start {
    Start {
        args: vec!["--tls".into()],
        ..Start::default()
    }
}

async fn round_trip(client: &aws_sdk_kms::Client) {
    let key = client.create_key().send().await.unwrap();
    let key_id = key.key_metadata().unwrap().key_id().to_string();
    let enc = try_encrypt(client, &key_id, b"over tls").await.unwrap();
    let dec = client
        .decrypt()
        .ciphertext_blob(enc.ciphertext_blob().unwrap().clone())
        .send()
        .await
        .unwrap();
    assert_eq!(dec.plaintext().unwrap().as_ref(), b"over tls");
    let dk = client
        .generate_data_key()
        .key_id(&key_id)
        .number_of_bytes(32)
        .send()
        .await
        .unwrap();
    assert_eq!(dk.plaintext().unwrap().as_ref().len(), 32);
}

#[tokio::test]
async fn sdk_over_https_with_the_generated_certificate() {
    let dir = tempfile::tempdir().unwrap();
    let sidecar = Sidecar::start_with(dir.path(), tls_start()).unwrap();
    assert!(
        sidecar.kms_url.starts_with("https://127.0.0.1:"),
        "{}",
        sidecar.kms_url
    );
    let cert_path = dir.path().join("tls").join("cert.pem");
    let out = sidecar.output.all();
    assert!(
        out.contains(&format!("AWS_CA_BUNDLE={}", cert_path.display())),
        "the certificate path is printed for clients: {out}"
    );
    let pem = std::fs::read(&cert_path).unwrap();
    let client = sdk_trusting(&sidecar.kms_url, &sidecar.creds, Some(&pem));
    round_trip(&client).await;

    // The admin port stays plain HTTP (Prometheus and probes).
    let (status, _) = http_get(&format!("{}/healthz", sidecar.admin_url)).await;
    assert_eq!(status, 200);

    // A client that does not trust the certificate fails the handshake: no request is served.
    let untrusting = sdk_trusting(&sidecar.kms_url, &sidecar.creds, None);
    let err = untrusting.list_keys().send().await.unwrap_err();
    assert!(
        matches!(err, aws_sdk_kms::error::SdkError::DispatchFailure(_)),
        "{err:?}"
    );

    // Plain HTTP to the TLS port gets no KMS answer.
    let plain = sidecar.kms_url.replacen("https://", "http://", 1);
    let plain_client = kms_sidecar_e2e::sdk_client(&plain, &sidecar.creds);
    assert!(plain_client.list_keys().send().await.is_err());

    // The same certificate is reused after a restart, so clients need to be told only once.
    let sidecar = sidecar.restart();
    assert_eq!(std::fs::read(&cert_path).unwrap(), pem);
    let client = sdk_trusting(&sidecar.kms_url, &sidecar.creds, Some(&pem));
    assert!(!client.list_keys().send().await.unwrap().keys().is_empty());
}

#[tokio::test]
async fn configured_certificate_pair_is_served() {
    // A pair made by an earlier --tls run stands in for an operator's own certificate.
    let donor = tempfile::tempdir().unwrap();
    let first = Sidecar::start_with(donor.path(), tls_start()).unwrap();
    drop(first);
    let cert = donor.path().join("tls").join("cert.pem");
    let key = donor.path().join("tls").join("key.pem");

    let dir = tempfile::tempdir().unwrap();
    let start = Start {
        args: vec![
            "--tls".into(),
            "--tls-cert".into(),
            cert.display().to_string(),
            "--tls-key".into(),
            key.display().to_string(),
        ],
        ..Start::default()
    };
    let sidecar = Sidecar::start_with(dir.path(), start).unwrap();
    assert!(
        !dir.path().join("tls").exists(),
        "no certificate is generated when one is configured"
    );
    let client = sdk_trusting(
        &sidecar.kms_url,
        &sidecar.creds,
        Some(&std::fs::read(&cert).unwrap()),
    );
    round_trip(&client).await;

    // Half a pair is a start-up error naming what is missing.
    let err = Sidecar::start_with(
        tempfile::tempdir().unwrap().path(),
        Start {
            args: vec![
                "--tls".into(),
                "--tls-cert".into(),
                cert.display().to_string(),
            ],
            ..Start::default()
        },
    )
    .unwrap_err();
    assert!(err.contains("tls_cert and tls_key go together"), "{err}");
}
