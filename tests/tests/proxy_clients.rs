//! Proxy mode with real clients and a real credential source, against both upstreams (another
//! kms-sidecar and `moto_server`):
//! - the AWS CLI (`aws kms ...`) through the proxy: its ciphertexts are the upstream's and open
//!   there directly;
//! - the proxy's own identity from a web identity token file exchanged at moto's STS for
//!   short-lived credentials: the sidecar fetches new ones before the old ones expire and keeps
//!   serving across the change.
#![forbid(unsafe_code)]
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::convert::Infallible;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use aws_sdk_kms::primitives::Blob;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::client::legacy::Client as HyperClient;
use hyper_util::rt::{TokioExecutor, TokioIo};
use kms_sidecar_e2e::proxy::{Moto, env_keys, moto, start_proxy, upstream_key};
use kms_sidecar_e2e::{Creds, Sidecar, sdk_client};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

const POLICY: &str = r#"{"rules":[
  {"principals":["default"],"actions":["*"],"keys":["alias/app-*"]},
  {"principals":["default"],"actions":["ListAliases","ListKeys"]}
]}"#;

fn aws_cli() -> bool {
    let found = Command::new("aws")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !found {
        eprintln!("SKIP: the AWS CLI is not installed (scripts/test.sh installs awscli with pip)");
    }
    found
}

/// Runs `aws kms <args>` against `endpoint` with `creds`: stdout, or a panic with stderr.
fn aws(dir: &Path, endpoint: &str, creds: &Creds, args: &[&str]) -> String {
    let out = Command::new("aws")
        .args(["--endpoint-url", endpoint, "--region", "us-east-1", "kms"])
        .args(args)
        .env("AWS_ACCESS_KEY_ID", &creds.access_key_id)
        .env("AWS_SECRET_ACCESS_KEY", &creds.secret)
        .env("AWS_CONFIG_FILE", dir.join("no-config"))
        .env("AWS_SHARED_CREDENTIALS_FILE", dir.join("no-credentials"))
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .env("AWS_PAGER", "")
        .env_remove("AWS_PROFILE")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "aws kms {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

/// The CLI scenario: encrypt, decrypt, describe and list through the proxy; what the CLI encrypted
/// opens at the upstream directly, and what the upstream encrypted opens through the CLI.
async fn cli_through_proxy(upstream_url: &str, upstream_creds: &Creds) {
    let dir = tempfile::tempdir().unwrap();
    let direct = sdk_client(upstream_url, upstream_creds);
    let (arn, alias) = upstream_key(&direct, "cli").await;
    let proxy = start_proxy(
        &dir.path().join("proxy"),
        upstream_url,
        env_keys(upstream_creds),
        POLICY,
        &[],
    );
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let (d, url, creds) = (dir.path(), proxy.kms_url.as_str(), &proxy.creds);

    let plain = d.join("plain");
    std::fs::write(&plain, b"from the aws cli").unwrap();
    let encrypted = aws(
        d,
        url,
        creds,
        &[
            "encrypt",
            "--key-id",
            &alias,
            "--plaintext",
            &format!("fileb://{}", plain.display()),
            "--encryption-context",
            "tenant=a",
            "--output",
            "json",
        ],
    );
    let encrypted: serde_json::Value = serde_json::from_str(&encrypted).unwrap();
    assert_eq!(encrypted["KeyId"], arn.as_str());
    use base64::Engine as _;
    let blob = base64::engine::general_purpose::STANDARD
        .decode(encrypted["CiphertextBlob"].as_str().unwrap())
        .unwrap();
    let opened = direct
        .decrypt()
        .ciphertext_blob(Blob::new(blob.clone()))
        .encryption_context("tenant", "a")
        .send()
        .await
        .unwrap();
    assert_eq!(
        opened.plaintext().unwrap().as_ref(),
        b"from the aws cli".as_slice()
    );

    let made_upstream = direct
        .encrypt()
        .key_id(&arn)
        .plaintext(Blob::new(b"made upstream".as_slice()))
        .send()
        .await
        .unwrap()
        .ciphertext_blob
        .unwrap();
    let blob_file = d.join("blob");
    std::fs::write(&blob_file, made_upstream.as_ref()).unwrap();
    let decrypted = aws(
        d,
        url,
        creds,
        &[
            "decrypt",
            "--ciphertext-blob",
            &format!("fileb://{}", blob_file.display()),
            "--output",
            "text",
            "--query",
            "Plaintext",
        ],
    );
    assert_eq!(
        base64::engine::general_purpose::STANDARD
            .decode(decrypted)
            .unwrap(),
        b"made upstream"
    );
    let described = aws(
        d,
        url,
        creds,
        &[
            "describe-key",
            "--key-id",
            &alias,
            "--output",
            "text",
            "--query",
            "KeyMetadata.Arn",
        ],
    );
    assert_eq!(described, arn);
    let aliases = aws(d, url, creds, &["list-aliases", "--output", "json"]);
    assert!(aliases.contains(&alias), "{aliases}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn aws_cli_through_the_proxy_to_another_sidecar() {
    if !aws_cli() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let upstream = Sidecar::start(dir.path());
    cli_through_proxy(&upstream.kms_url, &upstream.creds).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn aws_cli_through_the_proxy_to_moto() {
    if !aws_cli() {
        return;
    }
    let Some(m) = moto() else { return };
    cli_through_proxy(&m.url, &m.creds()).await;
}

/// One AssumeRoleWithWebIdentity answered: when, and when its credentials expire.
#[derive(Debug, Clone, Copy)]
struct Fetch {
    at: OffsetDateTime,
    expiration: OffsetDateTime,
}

/// A loopback hop in front of moto's STS that asks for credentials of `lifetime` seconds: the
/// SDK's web identity provider sends no DurationSeconds (AWS's default is an hour), and moto
/// honours the member. Everything else passes through unchanged; every exchange is recorded.
async fn sts_hop(moto: &Moto, lifetime: u32) -> (String, Arc<Mutex<Vec<Fetch>>>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let fetches = Arc::new(Mutex::new(Vec::new()));
    let (target, seen) = (moto.url.clone(), fetches.clone());
    tokio::spawn(async move {
        let client = HyperClient::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
        while let Ok((stream, _)) = listener.accept().await {
            let (client, target, seen) = (client.clone(), target.clone(), seen.clone());
            tokio::spawn(async move {
                let service = hyper::service::service_fn(move |req: hyper::Request<Incoming>| {
                    let (client, target, seen) = (client.clone(), target.clone(), seen.clone());
                    async move {
                        let (parts, body) = req.into_parts();
                        let mut body = body.collect().await.unwrap().to_bytes().to_vec();
                        let web_identity = String::from_utf8_lossy(&body)
                            .contains("Action=AssumeRoleWithWebIdentity");
                        if web_identity {
                            body.extend(format!("&DurationSeconds={lifetime}").as_bytes());
                        }
                        let mut up = hyper::Request::builder()
                            .method(parts.method)
                            .uri(format!("{target}{}", parts.uri));
                        for (name, value) in &parts.headers {
                            if name != "host" && name != "content-length" {
                                up = up.header(name, value);
                            }
                        }
                        let answer = client
                            .request(up.body(Full::new(Bytes::from(body))).unwrap())
                            .await
                            .unwrap();
                        let status = answer.status();
                        let bytes = answer.into_body().collect().await.unwrap().to_bytes();
                        if web_identity {
                            let text = String::from_utf8_lossy(&bytes);
                            let expiration = text
                                .split_once("<Expiration>")
                                .and_then(|(_, rest)| rest.split_once("</Expiration>"))
                                .map(|(e, _)| OffsetDateTime::parse(e, &Rfc3339).unwrap())
                                .unwrap_or_else(|| panic!("no Expiration from STS: {text}"));
                            seen.lock().unwrap().push(Fetch {
                                at: OffsetDateTime::now_utc(),
                                expiration,
                            });
                        }
                        let mut reply = hyper::Response::new(Full::new(bytes));
                        *reply.status_mut() = status;
                        reply.headers_mut().insert(
                            "content-type",
                            hyper::header::HeaderValue::from_static("text/xml"),
                        );
                        Ok::<_, Infallible>(reply)
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    (url, fetches)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn web_identity_credentials_are_refreshed_before_they_expire() {
    let Some(m) = moto() else { return };
    let dir = tempfile::tempdir().unwrap();
    let token = dir.path().join("token");
    std::fs::write(&token, "eyJhbGciOiJub25lIn0.eyJzdWIiOiJwcm94eSJ9.").unwrap();
    let (_, alias) = upstream_key(&sdk_client(&m.url, &m.creds()), "refresh").await;
    let (sts, fetches) = sts_hop(&m, 20).await;
    let proxy_dir = dir.path().join("proxy");
    let env = vec![
        (
            "AWS_WEB_IDENTITY_TOKEN_FILE".to_string(),
            token.display().to_string(),
        ),
        (
            "AWS_ROLE_ARN".into(),
            "arn:aws:iam::123456789012:role/kms-sidecar".into(),
        ),
        ("AWS_ROLE_SESSION_NAME".into(), "kms-sidecar-refresh".into()),
        ("AWS_ENDPOINT_URL_STS".into(), sts),
    ];
    let proxy = start_proxy(&proxy_dir, &m.url, env, POLICY, &[]);
    let kms = proxy.sdk();
    let direct = sdk_client(&m.url, &m.creds());

    // The start-up poll fetched the first credentials.
    let started = Instant::now();
    let first = loop {
        if let Some(f) = fetches.lock().unwrap().first().copied() {
            break f;
        }
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "no STS exchange at start:\n{}",
            proxy.output.all()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let lifetime = first.expiration - first.at;
    assert!(
        lifetime <= time::Duration::seconds(21),
        "moto issued {lifetime} credentials"
    );

    // Calls every 250 ms until a second past the first credentials' expiry: every one succeeds,
    // and new credentials arrived before the first expired.
    let mut calls = 0;
    while OffsetDateTime::now_utc() < first.expiration + time::Duration::seconds(1) {
        let text = format!("call {calls}");
        let blob = kms
            .encrypt()
            .key_id(&alias)
            .plaintext(Blob::new(text.as_bytes()))
            .send()
            .await
            .unwrap_or_else(|e| panic!("call {calls} failed: {e:?}"))
            .ciphertext_blob
            .unwrap();
        let opened = direct.decrypt().ciphertext_blob(blob).send().await.unwrap();
        assert_eq!(opened.plaintext().unwrap().as_ref(), text.as_bytes());
        calls += 1;
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let all = fetches.lock().unwrap().clone();
    assert!(all.len() >= 2, "credentials never refreshed: {all:?}");
    assert!(
        all[1].at < first.expiration,
        "refreshed only after expiry: {all:?}"
    );
    assert!(all[1].expiration > first.expiration, "{all:?}");
    assert!(calls >= 40, "only {calls} calls");
    let log = proxy.output.all();
    let leaked: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("ASIA") || l.contains("SessionToken"))
        .collect();
    assert!(leaked.is_empty(), "credentials in the log: {leaked:?}");
}
