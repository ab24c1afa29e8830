//! The XKS end-to-end tests' fixture: a sidecar with two URI prefixes (two credentials on one),
//! external keys of every usage, keys whose policies allow the XKS principals, and a client that
//! signs with `aws-sigv4` for `kms-xks-proxy` over plain HTTP or TLS.

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
use kms_sidecar_e2e::{BackendChoice, Sidecar, Start};
use serde_json::{Value, json};
use tokio_rustls::rustls;

pub(crate) const ACCOUNT: &str = "111122223333";
/// Prefix A (the bare path) has two credentials at once; prefix B one.
pub(crate) const A1: (&str, &str) = (
    "AKSCXKSFIRSTCREDENTIAL2",
    "FYtE5EFA5FT0mCc3DrGUe2sti527BitkQ0Zr9MO9fvE",
);
pub(crate) const A2: (&str, &str) = (
    "AKSCXKSSECONDCREDENTIAL3",
    "Q2hhbmdlZCBzZWNyZXQgZm9yIHJvdGF0aW9uIHRlc3Q=",
);
pub(crate) const B1: (&str, &str) = (
    "AKSCXKSTENANTBCREDENTIAL",
    "dGVuYW50IGIgc2VjcmV0IGZvciB0aGUgeGtzIHRlc3Qu",
);
pub(crate) const PATH_A: &str = "/kms/xks/v1";
pub(crate) const PATH_B: &str = "/tenant-b/kms/xks/v1";

pub(crate) fn xks_config(dir: &std::path::Path) -> std::path::PathBuf {
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
pub(crate) fn policy(ebs_only: bool) -> String {
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
pub(crate) struct Proxy {
    pub(crate) sidecar: Sidecar,
    pub(crate) url: String,
    pub(crate) tls: Option<tokio_rustls::TlsConnector>,
    pub(crate) _dir: tempfile::TempDir,
}

pub(crate) async fn start(backend: &BackendChoice, extra: &[&str]) -> Proxy {
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
pub(crate) fn sdk_trusting(sidecar: &Sidecar, pem: &[u8]) -> aws_sdk_kms::Client {
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

pub(crate) fn connector(ca_pem: &[u8]) -> tokio_rustls::TlsConnector {
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
pub(crate) struct Answer {
    pub(crate) status: u16,
    pub(crate) body: Value,
    pub(crate) allow: Option<String>,
}

impl Answer {
    pub(crate) fn error(&self) -> &str {
        self.body["errorName"].as_str().unwrap_or("")
    }
    pub(crate) fn blob(&self, member: &str) -> Vec<u8> {
        B64.decode(self.body[member].as_str().expect(member))
            .unwrap()
    }
}

impl Proxy {
    /// Sends `body` to `path` with `method`, signed with `cred` by `aws-sigv4` (content-type, host
    /// with its port and x-amz-date signed), `skew` seconds off the clock.
    pub(crate) async fn send_as(
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

    pub(crate) async fn send(&self, path: &str, body: &Value) -> Answer {
        self.send_as("POST", path, body, Some(A1), 0).await
    }

    pub(crate) async fn encrypt(&self, ext: &str, plaintext: &[u8], aad: Option<&[u8]>) -> Answer {
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

    pub(crate) async fn decrypt(
        &self,
        ext: &str,
        sealed: &Answer,
        aad: Option<&[u8]>,
        via: Option<&str>,
    ) -> Answer {
        self.decrypt_body(ext, decrypt_body(sealed, aad, via)).await
    }

    pub(crate) async fn decrypt_body(&self, ext: &str, body: Value) -> Answer {
        self.send(&format!("{PATH_A}/keys/{ext}/decrypt"), &body)
            .await
    }
}

pub(crate) async fn exchange<S>(
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

pub(crate) fn metadata(op: &str, via: Option<&str>) -> Value {
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

pub(crate) fn decrypt_body(sealed: &Answer, aad: Option<&[u8]>, via: Option<&str>) -> Value {
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

pub(crate) fn health_body() -> Value {
    json!({"requestMetadata": {"kmsRequestId": "health-1", "kmsOperation": "KmsHealthCheck"}})
}
