//! XKS authentication: AWS KMS signs every call with SigV4 for the service `kms-xks-proxy`, in the
//! configured region, with a credential configured for the URI path prefix it calls. Each prefix
//! holds one or two credentials at once, so they can be rotated without a failed call.
//!
//! The canonicalisation (every signed header, `content-type` and a `host` with a port included, as
//! several SigV4 clients sign them) and the reading of the `Authorization` and `X-Amz-Date` headers
//! with their date and clock checks (`read_authorization`) are `auth/sigv4/`'s, shared with the AWS
//! JSON front-end; what is XKS's own is here: the service name, the region check, the per-prefix
//! credential table, the headers that must be signed and the wording of its errors.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use secrecy::{ExposeSecret, SecretString};
use sha2::{Digest, Sha256};

use crate::auth::Principal;
use crate::auth::sigv4::{
    AuthError, AuthFailure, AuthHeader, HeaderError, SignedHeader, SignedRequest,
    canonical_request_hash, derive_signing_key_for, fail, incomplete, read_authorization,
    signature_matches,
};
use crate::kms::ErrorKind;

/// The SigV4 service name of the XKS proxy API.
pub const SERVICE: &str = "kms-xks-proxy";

/// One URI path prefix's callers: the principal its calls run as and its credentials.
#[derive(Debug)]
pub struct PrefixAuth {
    pub principal: Arc<Principal>,
    pub credentials: Vec<(String, SecretString)>,
}

/// Verifies `req` against `prefix`'s credentials; the principal on success.
pub fn verify(
    prefix: &PrefixAuth,
    region: &str,
    max_skew: Duration,
    req: &SignedRequest<'_>,
    now: SystemTime,
) -> Result<Arc<Principal>, AuthError> {
    let scope_ok = |auth: &AuthHeader<'_>| auth.service == SERVICE && auth.region == region;
    let SignedHeader { auth, amz_date } = read_authorization(req, now, max_skew, scope_ok)
        .map_err(|e| match e {
            HeaderError::Missing => fail(
                AuthFailure::MissingToken,
                ErrorKind::MissingAuthenticationToken,
                "the request is not signed",
            ),
            HeaderError::Malformed(e) => e,
            HeaderError::WrongScope => fail(
                AuthFailure::BadSignature,
                ErrorKind::InvalidSignature,
                format!("the credential must be scoped to {region}/{SERVICE}"),
            ),
            HeaderError::NoDate => incomplete("the X-Amz-Date header is missing"),
            HeaderError::DateMismatch => fail(
                AuthFailure::BadSignature,
                ErrorKind::InvalidSignature,
                "the credential scope's date is not the X-Amz-Date's",
            ),
            HeaderError::Expired { skew, .. } | HeaderError::NotYetCurrent { skew, .. } => fail(
                AuthFailure::Expired,
                ErrorKind::InvalidSignature,
                format!("the signature's time is more than {skew} seconds from the proxy's clock"),
            ),
        })?;
    let names: Vec<&str> = auth.signed_headers.split(';').collect();
    // The host and the time must be covered, or a signature could be replayed elsewhere or later.
    if !names.contains(&"host") || !names.contains(&"x-amz-date") {
        return Err(incomplete("SignedHeaders must include host and x-amz-date"));
    }
    if names.windows(2).any(|w| w[0] >= w[1])
        || names
            .iter()
            .any(|n| n.is_empty() || n.bytes().any(|b| b.is_ascii_uppercase()))
    {
        return Err(incomplete(
            "SignedHeaders must be lowercase, sorted and unique",
        ));
    }
    let Some((_, secret)) = prefix
        .credentials
        .iter()
        .find(|(id, _)| id == auth.access_key_id)
    else {
        return Err(fail(
            AuthFailure::UnknownClient,
            ErrorKind::UnrecognizedClient,
            "the access key id is not configured for this URI path",
        ));
    };
    let payload_hash = hex::encode(Sha256::digest(req.body));
    if let Some(claimed) = req.headers.get("x-amz-content-sha256")
        && claimed.as_bytes() != payload_hash.as_bytes()
    {
        return Err(mismatch());
    }
    let canonical_hash = canonical_request_hash(req, auth.signed_headers, &payload_hash)?;
    let key = derive_signing_key_for(secret.expose_secret(), auth.date, auth.region, SERVICE);
    if signature_matches(&*key, amz_date, &auth, SERVICE, &canonical_hash)? {
        Ok(prefix.principal.clone())
    } else {
        Err(mismatch())
    }
}

fn mismatch() -> AuthError {
    fail(
        AuthFailure::BadSignature,
        ErrorKind::InvalidSignature,
        "the request signature does not match",
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::sigv4::signature;
    use std::time::UNIX_EPOCH;

    const ID: &str = "AKSCXKSTESTKEY2345672";
    const SECRET: &str = "FYtE5EFA5FT0mCc3DrGUe2sti527BitkQ0Zr9MO9fvE";

    fn prefix() -> PrefixAuth {
        PrefixAuth {
            principal: Arc::new(Principal {
                name: "xks".into(),
                arn: "arn:aws:iam::111122223333:user/xks".into(),
                tags: Default::default(),
            }),
            credentials: vec![(ID.into(), SecretString::from(SECRET.to_string()))],
        }
    }

    /// Signs like AWS KMS does, with this module's own helpers (the e2e tests sign with
    /// `aws-sigv4` and curl, independent implementations).
    fn signed(headers: &mut http::HeaderMap, body: &[u8], secret: &str, service: &str) {
        let req = SignedRequest {
            method: "POST",
            path: "/kms/xks/v1/health",
            query: "",
            headers,
            body,
        };
        let hash = hex::encode(Sha256::digest(body));
        let canonical_hash = canonical_request_hash(&req, "host;x-amz-date", &hash).unwrap();
        let scope = format!("20260101/us-east-1/{service}/aws4_request");
        let key = derive_signing_key_for(secret, "20260101", "us-east-1", service);
        let sig = hex::encode(signature(
            &*key,
            "20260101T000000Z",
            "20260101",
            "us-east-1",
            service,
            &canonical_hash,
        ));
        let value = format!(
            "AWS4-HMAC-SHA256 Credential={ID}/{scope}, SignedHeaders=host;x-amz-date, Signature={sig}"
        );
        headers.insert(http::header::AUTHORIZATION, value.parse().unwrap());
    }

    fn check(secret: &str, service: &str, at: u64) -> Result<Arc<Principal>, AuthError> {
        let mut headers = http::HeaderMap::new();
        headers.insert("host", "xks.example.com:8443".parse().unwrap());
        headers.insert("x-amz-date", "20260101T000000Z".parse().unwrap());
        signed(&mut headers, b"{}", secret, service);
        let req = SignedRequest {
            method: "POST",
            path: "/kms/xks/v1/health",
            query: "",
            headers: &headers,
            body: b"{}",
        };
        let now = UNIX_EPOCH + Duration::from_secs(at);
        verify(&prefix(), "us-east-1", Duration::from_secs(300), &req, now)
    }

    const JAN_1_2026: u64 = 1_767_225_600;

    #[test]
    fn a_good_signature_with_a_host_port_passes() {
        assert_eq!(check(SECRET, SERVICE, JAN_1_2026).unwrap().name, "xks");
    }

    #[test]
    fn wrong_secret_service_or_time_fails() {
        let bad = "x".repeat(43);
        assert_eq!(
            check(&bad, SERVICE, JAN_1_2026).unwrap_err().failure,
            AuthFailure::BadSignature
        );
        assert_eq!(
            check(SECRET, "kms", JAN_1_2026).unwrap_err().failure,
            AuthFailure::BadSignature
        );
        assert_eq!(
            check(SECRET, SERVICE, JAN_1_2026 + 301)
                .unwrap_err()
                .failure,
            AuthFailure::Expired
        );
        assert!(check(SECRET, SERVICE, JAN_1_2026 - 299).is_ok());
    }
}
