//! SigV4 signing with `aws-sigv4`, the crate the AWS SDKs for Rust sign with, never with the
//! sidecar's own code: the load tester treats the sidecar as a black box, so every request it sends
//! is also a second opinion on the sidecar's verifier. Signing runs once per request on the hot
//! path, so everything that does not change between requests is built once: each principal's
//! signing identity (in [`Credential`]), and per target the signing settings and the `Host` header
//! (in [`Signer`]).

use std::time::{Duration, Instant, SystemTime};

use aws_credential_types::Credentials;
use aws_sigv4::http_request::{SignableBody, SignableRequest, SigningSettings, sign};
use aws_sigv4::sign::v4;
use aws_smithy_runtime_api::client::identity::Identity;
use bytes::Bytes;
use http::HeaderValue;
use http_body_util::Full;

use crate::error::LoadError;
use crate::http::Body;
use crate::target::Target;

/// The signing name of AWS KMS (the `kms` in `.../us-east-1/kms/aws4_request`).
const SERVICE: &str = "kms";
/// The body type of the KMS JSON 1.1 protocol.
pub const CONTENT_TYPE: &str = "application/x-amz-json-1.1";

/// One principal's credential pair, held as the signing identity `aws-sigv4` takes, so nothing is
/// converted per request. The secret lives inside it, zeroized on drop and printed as
/// `** redacted **`.
#[derive(Debug, Clone)]
pub struct Credential {
    pub access_key_id: String,
    identity: Identity,
}

impl Credential {
    /// The signing identity (for targets that sign their own requests, like the XKS proxy API).
    pub fn identity(&self) -> &Identity {
        &self.identity
    }

    pub fn new(access_key_id: String, secret: String) -> Self {
        let identity =
            Credentials::new(access_key_id.clone(), secret, None, None, "kms-loadtest").into();
        Self {
            access_key_id,
            identity,
        }
    }
}

/// Pairs repeated `--access-key-id` / `--secret-access-key` values in order.
pub fn credentials(ids: Vec<String>, secrets: Vec<String>) -> Result<Vec<Credential>, LoadError> {
    if ids.is_empty() && secrets.is_empty() {
        return Err(LoadError::NoCredentials);
    }
    if ids.len() != secrets.len() {
        return Err(LoadError::CredentialCount {
            ids: ids.len(),
            secrets: secrets.len(),
        });
    }
    Ok(ids
        .into_iter()
        .zip(secrets)
        .map(|(id, secret)| Credential::new(id, secret))
        .collect())
}

/// Signs `POST /` KMS requests for one target and region.
#[derive(Debug, Clone)]
pub struct Signer {
    region: String,
    host: String,
    host_value: HeaderValue,
    settings: SigningSettings,
}

impl Signer {
    pub fn new(target: &Target, region: &str) -> Result<Self, LoadError> {
        let host_value = HeaderValue::from_str(&target.host_header)
            .map_err(|e| LoadError::Sign(format!("Host header {:?}: {e}", target.host_header)))?;
        let mut settings = SigningSettings::default();
        // The default lists headers a proxy may rewrite (User-Agent, ...) to leave unsigned. We
        // send none of them, and without the list cloning the settings per request allocates
        // nothing.
        settings.excluded_headers = None;
        Ok(Self {
            region: region.to_string(),
            host: target.host_header.clone(),
            host_value,
            settings,
        })
    }

    /// A signed `POST /` call of `op_target` (e.g. `TrentService.Decrypt`) at `time`; also returns
    /// how long signing took. Signed headers: `content-type;host;x-amz-date;x-amz-target`.
    pub fn request(
        &self,
        cred: &Credential,
        op_target: &'static str,
        body: Bytes,
        time: SystemTime,
    ) -> Result<(http::Request<Body>, Duration), LoadError> {
        let started = Instant::now();
        let params = v4::SigningParams::builder()
            .identity(&cred.identity)
            .region(&self.region)
            .name(SERVICE)
            .time(time)
            .settings(self.settings.clone())
            .build()
            .map_err(|e| LoadError::Sign(e.to_string()))?
            .into();
        let signable = SignableRequest::new(
            "POST",
            "/",
            [
                ("content-type", CONTENT_TYPE),
                ("host", self.host.as_str()),
                ("x-amz-target", op_target),
            ]
            .into_iter(),
            SignableBody::Bytes(&body),
        )
        .map_err(|e| LoadError::Sign(e.to_string()))?;
        let (instructions, _signature) = sign(signable, &params)
            .map_err(|e| LoadError::Sign(e.to_string()))?
            .into_parts();
        let (added, _query) = instructions.into_parts();
        let mut headers = http::HeaderMap::with_capacity(6);
        headers.insert(http::header::HOST, self.host_value.clone());
        headers.insert(
            http::header::CONTENT_TYPE,
            HeaderValue::from_static(CONTENT_TYPE),
        );
        headers.insert("x-amz-target", HeaderValue::from_static(op_target));
        // `x-amz-date` and `authorization`.
        for h in &added {
            let value =
                HeaderValue::from_str(h.value()).map_err(|e| LoadError::Sign(e.to_string()))?;
            headers.insert(h.name(), value);
        }
        let signing = started.elapsed();
        let mut req = http::Request::post("/").body(Full::new(body))?;
        *req.headers_mut() = headers;
        Ok((req, signing))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn target() -> Target {
        Target {
            url: "http://127.0.0.1:7300".into(),
            host_header: "127.0.0.1:7300".into(),
            addr: "127.0.0.1:7300".parse().unwrap(),
        }
    }

    #[test]
    fn credentials_pair_up_and_hide_secrets() {
        assert!(matches!(
            credentials(vec![], vec![]),
            Err(LoadError::NoCredentials)
        ));
        assert!(matches!(
            credentials(vec!["a".into()], vec![]),
            Err(LoadError::CredentialCount { ids: 1, secrets: 0 })
        ));
        let c = credentials(vec!["AKID".into()], vec!["topsecret".into()]).unwrap();
        assert_eq!(c[0].access_key_id, "AKID");
        assert!(!format!("{c:?}").contains("topsecret"));
    }

    /// The signature of a fixed request, computed independently of both `aws-sigv4` and the
    /// sidecar: the canonical request and string to sign written out by hand from the SigV4
    /// specification and hashed with Python's `hashlib`/`hmac`.
    #[test]
    fn signs_a_known_request() {
        let cred = Credential::new(
            "AKIDEXAMPLE".into(),
            "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY".into(),
        );
        let signer = Signer::new(&target(), "us-east-1").unwrap();
        let time = SystemTime::UNIX_EPOCH + Duration::from_secs(1_440_938_160);
        let (req, took) = signer
            .request(
                &cred,
                "TrentService.Decrypt",
                Bytes::from_static(b"{}"),
                time,
            )
            .unwrap();
        let h = req.headers();
        assert_eq!(h["host"], "127.0.0.1:7300");
        assert_eq!(h["content-type"], CONTENT_TYPE);
        assert_eq!(h["x-amz-target"], "TrentService.Decrypt");
        assert_eq!(h["x-amz-date"], "20150830T123600Z");
        assert_eq!(
            h["authorization"],
            "AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20150830/us-east-1/kms/aws4_request, \
             SignedHeaders=content-type;host;x-amz-date;x-amz-target, \
             Signature=5ebcf23c88893b6a0bab5851187c8e602f0890d7ecbb093bef33a68a0c48fa37"
        );
        assert_eq!(h.len(), 5);
        assert!(took < Duration::from_secs(1));
    }

    #[test]
    fn signatures_depend_on_body_time_and_principal() {
        let signer = Signer::new(&target(), "us-east-1").unwrap();
        let a = Credential::new("AKIDA".into(), "s1".into());
        let b = Credential::new("AKIDB".into(), "s2".into());
        let t = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        let auth = |cred: &Credential, body: &'static [u8], time| {
            let (req, _) = signer
                .request(cred, "TrentService.Encrypt", Bytes::from_static(body), time)
                .unwrap();
            req.headers()["authorization"].to_str().unwrap().to_string()
        };
        let base = auth(&a, b"{}", t);
        assert_eq!(base, auth(&a, b"{}", t));
        assert_ne!(base, auth(&a, b"{ }", t));
        assert_ne!(base, auth(&a, b"{}", t + Duration::from_secs(1)));
        assert_ne!(base, auth(&b, b"{}", t));
        assert!(auth(&b, b"{}", t).contains("Credential=AKIDB/"));
    }
}
