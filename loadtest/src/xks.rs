//! The XKS proxy API target: the calls AWS KMS makes to an external key store proxy
//! (`POST {prefix}/keys/{externalKeyId}/encrypt` and `.../decrypt`, SigV4 for the service
//! `kms-xks-proxy`), so the sidecar's XKS front-end can be measured by the same open-loop engine,
//! histograms and report as the AWS JSON API, against AWS KMS's 250 ms budget. What is sent is what
//! AWS KMS sends for a GenerateDataKey/Decrypt: a 32-byte data key with some associated data and the
//! request metadata. Signed with `aws-sigv4`, never with the sidecar's code (the sidecar is a black
//! box). Plain HTTP on loopback, like every target of this tool.

use std::time::{Duration, Instant, SystemTime};

use aws_sigv4::http_request::{SignableBody, SignableRequest, SigningSettings, sign};
use aws_sigv4::sign::v4;
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use bytes::Bytes;
use http::HeaderValue;
use http_body_util::Full;

use crate::error::LoadError;
use crate::http::{Body, Conn};
use crate::kms::{payload, splitmix};
use crate::mix::{Mix, Op};
use crate::setup::SetupReport;
use crate::sign::Credential;
use crate::target::Target;

/// The SigV4 signing name of the XKS proxy API.
const SERVICE: &str = "kms-xks-proxy";
/// A data key: what AWS KMS asks a proxy to wrap for GenerateDataKey.
pub const DEK_BYTES: usize = 32;
/// The associated data AWS KMS adds (its own ciphertext header); the exact size is AWS's business.
const AAD_BYTES: usize = 64;
/// Distinct plaintexts Encrypt cycles through (and the setup phase seals for Decrypt).
const PLAINTEXTS: usize = 16;

/// Where the XKS calls go under the target: the URI path prefix and the external key id.
#[derive(Debug, Clone)]
pub struct XksTarget {
    /// The `XksProxyUriPath`, e.g. `/kms/xks/v1`.
    pub uri_path: String,
    pub external_key_id: String,
}

/// Only Encrypt and Decrypt are XKS cryptographic calls.
pub fn check_mix(mix: &Mix) -> Result<(), LoadError> {
    match mix
        .weights()
        .iter()
        .find(|(op, _)| !matches!(op, Op::Encrypt | Op::Decrypt))
    {
        Some((op, _)) => Err(LoadError::BadMix {
            mix: mix.spec(),
            reason: format!(
                "{} is not an XKS operation (use encrypt and decrypt)",
                op.name()
            ),
        }),
        None => Ok(()),
    }
}

/// The prepared requests: request `i`'s operation and body are a pure function of `i`.
#[derive(Debug)]
pub struct Workload {
    pub mix: Mix,
    cred: Credential,
    region: String,
    host: String,
    host_value: HeaderValue,
    settings: SigningSettings,
    encrypt_path: String,
    decrypt_path: String,
    encrypts: Vec<Bytes>,
    /// Each sealed setup payload's Decrypt body with the plaintext it must give back.
    decrypts: Vec<(Bytes, Vec<u8>)>,
}

/// `requestMetadata` as AWS KMS sends it for a call of `op`.
fn metadata(op: &str, i: u64) -> serde_json::Value {
    serde_json::json!({
        "awsPrincipalArn": "arn:aws:iam::123456789012:role/kms-loadtest",
        "kmsKeyArn": "arn:aws:kms:us-east-1:123456789012:key/00000000-0000-4000-8000-000000000000",
        "kmsOperation": op,
        "kmsRequestId": format!("kms-loadtest-{i:016x}"),
        "kmsViaService": "ebs",
    })
}

impl Workload {
    /// Builds the Encrypt bodies and, if the mix decrypts, seals `PLAINTEXTS` data keys through the
    /// proxy itself (one connection, no retries).
    pub async fn prepare(
        target: &Target,
        xks: &XksTarget,
        cred: Credential,
        region: &str,
        mix: Mix,
        timeout: Duration,
    ) -> Result<(Self, SetupReport), LoadError> {
        check_mix(&mix)?;
        let started = Instant::now();
        let host_value = HeaderValue::from_str(&target.host_header)
            .map_err(|e| LoadError::Sign(format!("Host header {:?}: {e}", target.host_header)))?;
        let mut settings = SigningSettings::default();
        settings.excluded_headers = None;
        let base = format!(
            "{}/keys/{}",
            xks.uri_path.trim_end_matches('/'),
            xks.external_key_id
        );
        let mut w = Self {
            mix,
            cred,
            region: region.to_string(),
            host: target.host_header.clone(),
            host_value,
            settings,
            encrypt_path: format!("{base}/encrypt"),
            decrypt_path: format!("{base}/decrypt"),
            encrypts: Vec::with_capacity(PLAINTEXTS),
            decrypts: Vec::new(),
        };
        for n in 0..PLAINTEXTS as u64 {
            let body = serde_json::json!({
                "requestMetadata": metadata("GenerateDataKey", n),
                "plaintext": B64.encode(payload(DEK_BYTES, n)),
                "additionalAuthenticatedData": B64.encode(payload(AAD_BYTES, n + 1000)),
                "encryptionAlgorithm": "AES_GCM",
            });
            w.encrypts.push(Bytes::from(body.to_string()));
        }
        let mut requests = 0;
        if w.mix.contains(Op::Decrypt) {
            let mut conn = Conn::new(target.addr);
            for n in 0..PLAINTEXTS as u64 {
                requests += 1;
                let (req, _) = w.request(
                    Op::Encrypt,
                    w.encrypts[n as usize].clone(),
                    SystemTime::now(),
                )?;
                let (status, body) = conn.send(req, timeout).await?;
                if status != 200 {
                    return Err(LoadError::Invalid(format!(
                        "XKS setup: Encrypt answered HTTP {status}: {}",
                        String::from_utf8_lossy(&body)
                            .chars()
                            .take(300)
                            .collect::<String>()
                    )));
                }
                let sealed: serde_json::Value =
                    serde_json::from_slice(&body).map_err(|_| LoadError::SetupShape {
                        op: "Encrypt",
                        field: "body",
                    })?;
                let mut decrypt = serde_json::json!({
                    "requestMetadata": metadata("Decrypt", n),
                    "additionalAuthenticatedData": B64.encode(payload(AAD_BYTES, n + 1000)),
                    "encryptionAlgorithm": "AES_GCM",
                });
                for member in [
                    "ciphertext",
                    "ciphertextMetadata",
                    "initializationVector",
                    "authenticationTag",
                ] {
                    match sealed.get(member) {
                        Some(v) if v.is_string() => decrypt[member] = v.clone(),
                        _ if member == "ciphertextMetadata" => {}
                        _ => {
                            return Err(LoadError::SetupShape {
                                op: "Encrypt",
                                field: "ciphertext",
                            });
                        }
                    }
                }
                w.decrypts
                    .push((Bytes::from(decrypt.to_string()), payload(DEK_BYTES, n)));
            }
        }
        let setup = SetupReport {
            keys_created: 0,
            keys_used: 1,
            ciphertexts: w.decrypts.len(),
            requests,
            retries: 0,
            seconds: started.elapsed().as_secs_f64(),
        };
        Ok((w, setup))
    }

    /// Request `i`: its operation, body and (for Decrypt) the plaintext it must give back.
    pub fn pick(&self, i: u64) -> (Op, &Bytes, Option<&[u8]>) {
        let op = self.mix.op(i);
        let h = splitmix(i) as usize;
        match (op, self.decrypts.is_empty()) {
            (Op::Decrypt, false) => {
                let (body, plaintext) = &self.decrypts[h % self.decrypts.len()];
                (op, body, Some(plaintext))
            }
            _ => (Op::Encrypt, &self.encrypts[h % self.encrypts.len()], None),
        }
    }

    /// A signed call of `op` with `body` at `time`, and how long signing took. Signed headers:
    /// `content-type;host;x-amz-date`, as AWS KMS and curl sign them.
    pub fn request(
        &self,
        op: Op,
        body: Bytes,
        time: SystemTime,
    ) -> Result<(http::Request<Body>, Duration), LoadError> {
        let started = Instant::now();
        let path = if op == Op::Decrypt {
            &self.decrypt_path
        } else {
            &self.encrypt_path
        };
        let params = v4::SigningParams::builder()
            .identity(self.cred.identity())
            .region(&self.region)
            .name(SERVICE)
            .time(time)
            .settings(self.settings.clone())
            .build()
            .map_err(|e| LoadError::Sign(e.to_string()))?
            .into();
        let signable = SignableRequest::new(
            "POST",
            path,
            [
                ("content-type", "application/json"),
                ("host", self.host.as_str()),
            ]
            .into_iter(),
            SignableBody::Bytes(&body),
        )
        .map_err(|e| LoadError::Sign(e.to_string()))?;
        let (instructions, _) = sign(signable, &params)
            .map_err(|e| LoadError::Sign(e.to_string()))?
            .into_parts();
        let (added, _) = instructions.into_parts();
        let mut req = http::Request::post(path.as_str()).body(Full::new(body))?;
        let headers = req.headers_mut();
        headers.insert(http::header::HOST, self.host_value.clone());
        headers.insert(
            http::header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        for h in &added {
            let value =
                HeaderValue::from_str(h.value()).map_err(|e| LoadError::Sign(e.to_string()))?;
            headers.insert(h.name(), value);
        }
        Ok((req, started.elapsed()))
    }
}

/// The outcome of one answer: `Ok` for a 200 with the parts (Encrypt) or the expected plaintext
/// (Decrypt); otherwise the spec's `errorName`, or `HTTP<status>` when there is none.
pub fn classify(status: u16, body: &[u8], expected: Option<&[u8]>) -> Result<(), String> {
    let json: Option<serde_json::Value> = serde_json::from_slice(body).ok();
    if status != 200 {
        return Err(json
            .as_ref()
            .and_then(|j| j.get("errorName"))
            .and_then(|n| n.as_str())
            .map_or_else(|| format!("HTTP{status}"), str::to_string));
    }
    let Some(json) = json else {
        return Err("MalformedResponse".into());
    };
    match expected {
        Some(plaintext) => {
            let got = json
                .get("plaintext")
                .and_then(|p| p.as_str())
                .and_then(|p| B64.decode(p).ok());
            if got.as_deref() == Some(plaintext) {
                Ok(())
            } else {
                Err("WrongPlaintext".into())
            }
        }
        None if ["ciphertext", "initializationVector", "authenticationTag"]
            .iter()
            .all(|m| json.get(m).is_some_and(serde_json::Value::is_string)) =>
        {
            Ok(())
        }
        None => Err("MalformedResponse".into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_encrypt_and_decrypt() {
        assert!(check_mix(&Mix::parse("encrypt=1,decrypt=3").unwrap()).is_ok());
        let err = check_mix(&Mix::parse("decrypt=1,generate-random=1").unwrap()).unwrap_err();
        assert!(err.to_string().contains("not an XKS operation"), "{err}");
    }

    #[test]
    fn answers_are_classified_by_the_spec_error_name() {
        assert_eq!(
            classify(429, br#"{"errorName":"ThrottlingException"}"#, None),
            Err("ThrottlingException".into())
        );
        assert_eq!(classify(502, b"<html>", None), Err("HTTP502".into()));
        let sealed =
            br#"{"ciphertext":"AA==","initializationVector":"AA==","authenticationTag":"AA=="}"#;
        assert_eq!(classify(200, sealed, None), Ok(()));
        assert_eq!(classify(200, b"{}", None), Err("MalformedResponse".into()));
        assert_eq!(
            classify(200, br#"{"plaintext":"aGk="}"#, Some(b"hi")),
            Ok(())
        );
        assert_eq!(
            classify(200, br#"{"plaintext":"aGk="}"#, Some(b"ho")),
            Err("WrongPlaintext".into())
        );
    }
}
