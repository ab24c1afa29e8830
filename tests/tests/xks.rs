//! The AWS KMS External Key Store (XKS) proxy API end to end: a real sidecar process with
//! `--xks-listen`, requests signed by independent SigV4 signers (`aws-sigv4`, the AWS SDKs' crate,
//! and `curl --aws-sigv4` from `tests/xks-curl.sh`), over plain HTTP and over TLS. Every API, every
//! error of the spec's table that a client can provoke with its status, the integrity value, the
//! usages, both credentials of a prefix, the largest plaintext with the largest AAD, 405 and 404,
//! policy conditions on the request metadata, the audit record, health under a backend outage; on
//! the embedded backend and on SoftHSMv2 through PKCS#11.
#![forbid(unsafe_code)]
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use aws_credential_types::Credentials;
use aws_sigv4::http_request::{SignableBody, SignableRequest, SigningSettings, sign};
use aws_sigv4::sign::v4;
use aws_smithy_runtime_api::client::identity::Identity;
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use kms_sidecar_e2e::{BackendChoice, Sidecar, Start, http_send, on_every_backend, sample};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use tokio_rustls::rustls;

const ACCOUNT: &str = "111122223333";
/// Prefix A (the bare path) has two credentials at once; prefix B one.
const A1: (&str, &str) = (
    "AKSCXKSFIRSTCREDENTIAL2",
    "FYtE5EFA5FT0mCc3DrGUe2sti527BitkQ0Zr9MO9fvE",
);
const A2: (&str, &str) = (
    "AKSCXKSSECONDCREDENTIAL3",
    "Q2hhbmdlZCBzZWNyZXQgZm9yIHJvdGF0aW9uIHRlc3Q=",
);
const B1: (&str, &str) = (
    "AKSCXKSTENANTBCREDENTIAL",
    "dGVuYW50IGIgc2VjcmV0IGZvciB0aGUgeGtzIHRlc3Qu",
);
const PATH_A: &str = "/kms/xks/v1";
const PATH_B: &str = "/tenant-b/kms/xks/v1";

fn xks_config(dir: &std::path::Path) -> std::path::PathBuf {
    let text = format!(
        r#"
health_key_id = "alias/xks-health"
fleet_size = 2

[[prefixes]]
uri_path = "{PATH_A}"
principal = "xks-a"
credentials = [
  {{ access_key_id = "{}", secret_access_key = "{}" }},
  {{ access_key_id = "{}", secret_access_key = "{}" }},
]

[[prefixes]]
uri_path = "{PATH_B}"
principal = "xks-b"
credentials = [{{ access_key_id = "{}", secret_access_key = "{}" }}]

[keys.ext-both]
key_id = "alias/xks-main"
[keys.ext-enc]
key_id = "alias/xks-main"
usage = "encrypt"
[keys.ext-dec]
key_id = "alias/xks-main"
usage = "decrypt"
[keys.ext-none]
key_id = "alias/xks-main"
usage = "none"
[keys.ext-disabled]
key_id = "alias/xks-disabled"
[keys.ext-ebs-only]
key_id = "alias/xks-ebs-only"
[keys.ext-missing]
key_id = "alias/xks-never-created"
"#,
        A1.0, A1.1, A2.0, A2.1, B1.0, B1.1
    );
    let path = dir.join("xks.toml");
    std::fs::write(&path, text).unwrap();
    path
}

/// A key policy: the creator manages the key, both XKS principals may use it; `ebs_only` makes
/// Decrypt conditional on the request metadata (AWS KMS called via EBS).
fn policy(ebs_only: bool) -> String {
    let xks = json!([
        format!("arn:aws:iam::{ACCOUNT}:user/xks-a"),
        format!("arn:aws:iam::{ACCOUNT}:user/xks-b")
    ]);
    let mut statements = vec![
        json!({"Effect": "Allow", "Principal": {"AWS": format!("arn:aws:iam::{ACCOUNT}:user/default")}, "Action": "kms:*", "Resource": "*"}),
        json!({"Effect": "Allow", "Principal": {"AWS": xks}, "Action": ["kms:Encrypt", "kms:DescribeKey"], "Resource": "*"}),
    ];
    statements.push(if ebs_only {
        json!({"Effect": "Allow", "Principal": {"AWS": xks}, "Action": "kms:Decrypt", "Resource": "*",
               "Condition": {"StringEquals": {"xks:KmsViaService": "ebs"}}})
    } else {
        json!({"Effect": "Allow", "Principal": {"AWS": xks}, "Action": "kms:Decrypt", "Resource": "*"})
    });
    json!({"Version": "2012-10-17", "Statement": statements}).to_string()
}

/// A sidecar with the XKS proxy on, and its keys (created through the AWS SDK).
struct Proxy {
    sidecar: Sidecar,
    url: String,
    tls: Option<tokio_rustls::TlsConnector>,
    _dir: tempfile::TempDir,
}

async fn start(backend: &BackendChoice, extra: &[&str]) -> Proxy {
    let dir = tempfile::tempdir().unwrap();
    let config = xks_config(dir.path());
    let mut start: Start = backend.start();
    start.args.extend(
        [
            "--xks-listen",
            "127.0.0.1:0",
            "--xks-config",
            config.to_str().unwrap(),
            "--data-key-pool-size",
            "0",
        ]
        .map(String::from),
    );
    start.args.extend(extra.iter().map(|s| s.to_string()));
    let data = dir.path().join("data");
    let sidecar = Sidecar::start_with(&data, start).unwrap();
    let line = sidecar.output.stdout.lock().unwrap().join("\n");
    let url = line
        .split_whitespace()
        .find_map(|p| p.strip_prefix("xks="))
        .expect("the listening line names the XKS address")
        .to_string();
    let pem = url
        .starts_with("https://")
        .then(|| std::fs::read(data.join("tls").join("cert.pem")).unwrap());
    let tls = pem.as_deref().map(connector);
    let kms = match &pem {
        None => sidecar.sdk(),
        Some(pem) => sdk_trusting(&sidecar, pem),
    };
    for (alias, ebs_only) in [
        ("alias/xks-main", false),
        ("alias/xks-disabled", false),
        ("alias/xks-ebs-only", true),
        ("alias/xks-health", false),
    ] {
        let key = kms
            .create_key()
            .policy(policy(ebs_only))
            .send()
            .await
            .unwrap();
        let id = key.key_metadata().unwrap().key_id().to_string();
        kms.create_alias()
            .alias_name(alias)
            .target_key_id(&id)
            .send()
            .await
            .unwrap();
        if alias == "alias/xks-disabled" {
            kms.disable_key().key_id(&id).send().await.unwrap();
        }
    }
    Proxy {
        sidecar,
        url,
        tls,
        _dir: dir,
    }
}

/// The AWS SDK on the KMS port, trusting the sidecar's self-signed certificate (with --tls).
fn sdk_trusting(sidecar: &Sidecar, pem: &[u8]) -> aws_sdk_kms::Client {
    use aws_smithy_http_client::tls::{self, TlsContext, TrustStore};
    let http = aws_smithy_http_client::Builder::new()
        .tls_provider(tls::Provider::Rustls(
            tls::rustls_provider::CryptoMode::AwsLc,
        ))
        .tls_context(
            TlsContext::builder()
                .with_trust_store(TrustStore::empty().with_pem_certificate(pem.to_vec()))
                .build()
                .unwrap(),
        )
        .build_https();
    let conf = aws_sdk_kms::Config::builder()
        .behavior_version(aws_sdk_kms::config::BehaviorVersion::latest())
        .region(aws_sdk_kms::config::Region::new("us-east-1"))
        .endpoint_url(&sidecar.kms_url)
        .http_client(http)
        .credentials_provider(Credentials::new(
            &sidecar.creds.access_key_id,
            &sidecar.creds.secret,
            None,
            None,
            "xks-e2e",
        ))
        .retry_config(aws_sdk_kms::config::retry::RetryConfig::disabled())
        .build();
    aws_sdk_kms::Client::from_conf(conf)
}

fn connector(ca_pem: &[u8]) -> tokio_rustls::TlsConnector {
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject as _;
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(ca_pem) {
        roots.add(cert.unwrap()).unwrap();
    }
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    tokio_rustls::TlsConnector::from(Arc::new(config))
}

/// An HTTP answer: status and JSON body.
#[derive(Debug)]
struct Answer {
    status: u16,
    body: Value,
    allow: Option<String>,
}

impl Answer {
    fn error(&self) -> &str {
        self.body["errorName"].as_str().unwrap_or("")
    }
    fn blob(&self, member: &str) -> Vec<u8> {
        B64.decode(self.body[member].as_str().expect(member))
            .unwrap()
    }
}

impl Proxy {
    /// Sends `body` to `path` with `method`, signed with `cred` by `aws-sigv4` (content-type, host
    /// with its port and x-amz-date signed), `skew` seconds off the clock.
    async fn send_as(
        &self,
        method: &str,
        path: &str,
        body: &Value,
        cred: Option<(&str, &str)>,
        skew: i64,
    ) -> Answer {
        let addr = self.url.split("://").nth(1).unwrap().to_string();
        let port = addr.rsplit(':').next().unwrap();
        let host = format!("localhost:{port}");
        let body = Bytes::from(serde_json::to_vec(body).unwrap());
        let mut builder = http::Request::builder()
            .method(method)
            .uri(path)
            .header("host", &host)
            .header("content-type", "application/json");
        if let Some((id, secret)) = cred {
            let identity: Identity = Credentials::new(id, secret, None, None, "xks-e2e").into();
            let time = if skew >= 0 {
                SystemTime::now() + Duration::from_secs(skew as u64)
            } else {
                SystemTime::now() - Duration::from_secs((-skew) as u64)
            };
            let params = v4::SigningParams::builder()
                .identity(&identity)
                .region("us-east-1")
                .name("kms-xks-proxy")
                .time(time)
                .settings(SigningSettings::default())
                .build()
                .unwrap()
                .into();
            let signable = SignableRequest::new(
                method,
                path,
                [
                    ("host", host.as_str()),
                    ("content-type", "application/json"),
                ]
                .into_iter(),
                SignableBody::Bytes(&body),
            )
            .unwrap();
            let (instructions, _) = sign(signable, &params).unwrap().into_parts();
            for h in instructions.into_parts().0 {
                builder = builder.header(h.name(), h.value());
            }
        }
        let request = builder.body(Full::new(body)).unwrap();
        let tcp = tokio::net::TcpStream::connect(&addr).await.unwrap();
        let response = match &self.tls {
            None => exchange(tcp, request).await,
            Some(tls) => {
                let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
                exchange(tls.connect(name, tcp).await.unwrap(), request).await
            }
        };
        let (parts, body) = response.into_parts();
        let bytes = body.collect().await.unwrap().to_bytes();
        Answer {
            status: parts.status.as_u16(),
            body: serde_json::from_slice(&bytes).unwrap_or(Value::Null),
            allow: parts
                .headers
                .get("allow")
                .map(|v| v.to_str().unwrap().to_string()),
        }
    }

    async fn send(&self, path: &str, body: &Value) -> Answer {
        self.send_as("POST", path, body, Some(A1), 0).await
    }

    async fn encrypt(&self, ext: &str, plaintext: &[u8], aad: Option<&[u8]>) -> Answer {
        let mut body = json!({
            "requestMetadata": metadata("Encrypt", None),
            "plaintext": B64.encode(plaintext),
            "encryptionAlgorithm": "AES_GCM",
            "ciphertextDataIntegrityValueAlgorithm": "SHA_256",
        });
        if let Some(aad) = aad {
            body["additionalAuthenticatedData"] = B64.encode(aad).into();
        }
        self.send(&format!("{PATH_A}/keys/{ext}/encrypt"), &body)
            .await
    }

    async fn decrypt(
        &self,
        ext: &str,
        sealed: &Answer,
        aad: Option<&[u8]>,
        via: Option<&str>,
    ) -> Answer {
        self.decrypt_body(ext, decrypt_body(sealed, aad, via)).await
    }

    async fn decrypt_body(&self, ext: &str, body: Value) -> Answer {
        self.send(&format!("{PATH_A}/keys/{ext}/decrypt"), &body)
            .await
    }
}

async fn exchange<S>(
    stream: S,
    request: http::Request<Full<Bytes>>,
) -> http::Response<hyper::body::Incoming>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
            .await
            .unwrap();
    tokio::spawn(conn);
    tokio::time::timeout(Duration::from_secs(30), sender.send_request(request))
        .await
        .expect("an answer within 30 s")
        .unwrap()
}

fn metadata(op: &str, via: Option<&str>) -> Value {
    let mut m = json!({
        "awsPrincipalArn": "arn:aws:iam::123456789012:user/Alice",
        "kmsKeyArn": "arn:aws:kms:us-east-1:123456789012:key/1234abcd-12ab-34cd-56ef-1234567890ab",
        "kmsOperation": op,
        "kmsRequestId": format!("req-{op}-4112f4d6"),
    });
    if let Some(via) = via {
        m["kmsViaService"] = via.into();
    }
    m
}

fn decrypt_body(sealed: &Answer, aad: Option<&[u8]>, via: Option<&str>) -> Value {
    let mut body = json!({
        "requestMetadata": metadata("Decrypt", via),
        "ciphertext": sealed.body["ciphertext"],
        "ciphertextMetadata": sealed.body["ciphertextMetadata"],
        "initializationVector": sealed.body["initializationVector"],
        "authenticationTag": sealed.body["authenticationTag"],
        "encryptionAlgorithm": "AES_GCM",
    });
    if let Some(aad) = aad {
        body["additionalAuthenticatedData"] = B64.encode(aad).into();
    }
    body
}

fn health_body() -> Value {
    json!({"requestMetadata": {"kmsRequestId": "health-1", "kmsOperation": "KmsHealthCheck"}})
}

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
