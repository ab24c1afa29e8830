//! Verifies the AWS Signature Version 4 that every AWS SDK already puts on its requests.
//!
//! The sidecar recomputes the signature from the request it received (canonical request, string to
//! sign, signing key derived from the client's secret) and compares in constant time. Only the
//! `Authorization` header form is accepted (SDKs never presign KMS calls). The derived signing key is
//! cached per client for its (date, region), which makes a verify about three times cheaper.

mod canonical;
mod header;

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use secrecy::ExposeSecret;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

pub use canonical::sign;
pub(crate) use canonical::{canonical_request_hash, derive_signing_key_for, hex_str, signature};
use canonical::{derive_signing_key, hex64};
pub(crate) use header::{AuthHeader, HeaderError, SignedHeader, read_authorization};

use super::clients::{Client, ClientStore, SigningKey};
use crate::kms::{ErrorKind, KmsError};

const ALGORITHM: &str = "AWS4-HMAC-SHA256";
const SERVICE: &str = "kms";

/// Why authentication failed; becomes a KMS error and (later) an `unauthorized_total` reason label.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthFailure {
    MissingToken,
    Incomplete,
    UnknownClient,
    /// The access key id was issued and then revoked.
    RevokedClient,
    BadSignature,
    Expired,
}

impl AuthFailure {
    pub const fn reason(self) -> &'static str {
        match self {
            AuthFailure::MissingToken => "missing_signature",
            AuthFailure::Incomplete => "malformed_signature",
            AuthFailure::UnknownClient => "unknown_client",
            AuthFailure::RevokedClient => "revoked_client",
            AuthFailure::BadSignature => "bad_signature",
            AuthFailure::Expired => "expired_signature",
        }
    }
}

/// An authentication error with AWS's type and message.
#[derive(Debug)]
pub struct AuthError {
    pub failure: AuthFailure,
    pub error: KmsError,
    /// The principal, when the credential is known (a revoked client).
    pub principal: Option<String>,
}

pub(crate) fn fail(
    failure: AuthFailure,
    kind: ErrorKind,
    message: impl Into<std::borrow::Cow<'static, str>>,
) -> AuthError {
    AuthError {
        failure,
        error: KmsError::new(kind, message),
        principal: None,
    }
}

pub(crate) fn incomplete(message: &'static str) -> AuthError {
    fail(
        AuthFailure::Incomplete,
        ErrorKind::IncompleteSignature,
        message,
    )
}

/// Whether the request's hex `Signature` is the one `key` gives for `canonical_hash`, compared in
/// constant time; both verifiers (AWS JSON and XKS) end with it. A signature that is not 64 hex
/// characters is an incomplete header.
pub(crate) fn signature_matches(
    key: &[u8],
    amz_date: &str,
    auth: &AuthHeader<'_>,
    service: &str,
    canonical_hash: &[u8; 64],
) -> Result<bool, AuthError> {
    let expected = signature(
        key,
        amz_date,
        auth.date,
        auth.region,
        service,
        canonical_hash,
    );
    let mut given = [0u8; 32];
    hex::decode_to_slice(auth.signature, &mut given)
        .map_err(|_| incomplete("Signature must be 64 hex characters"))?;
    Ok(bool::from(expected.ct_eq(&given)))
}

/// The parts of a request that SigV4 covers.
#[derive(Debug)]
pub struct SignedRequest<'a> {
    pub method: &'a str,
    pub path: &'a str,
    pub query: &'a str,
    pub headers: &'a http::HeaderMap,
    pub body: &'a [u8],
}

impl<'a> SignedRequest<'a> {
    /// What SigV4 covers of an HTTP request whose body has been read: method, path, query,
    /// headers and body (both HTTP front-ends, AWS JSON and XKS).
    pub fn from_parts(parts: &'a http::request::Parts, body: &'a [u8]) -> Self {
        Self {
            method: parts.method.as_str(),
            path: parts.uri.path(),
            query: parts.uri.query().unwrap_or_default(),
            headers: &parts.headers,
            body,
        }
    }
}

/// Verifies SigV4 on requests against issued client credentials.
#[derive(Debug, Clone)]
pub struct Verifier {
    max_skew: Duration,
}

impl Verifier {
    pub fn new(max_skew: Duration) -> Self {
        Self { max_skew }
    }

    /// Authenticates `req`, returning the client that signed it.
    pub fn verify(
        &self,
        clients: &ClientStore,
        req: &SignedRequest<'_>,
        now: SystemTime,
    ) -> Result<Arc<Client>, AuthError> {
        let SignedHeader { auth, amz_date } =
            read_authorization(req, now, self.max_skew, |auth| auth.service == SERVICE).map_err(
                |e| match e {
                    HeaderError::Missing => fail(
                        AuthFailure::MissingToken,
                        ErrorKind::MissingAuthenticationToken,
                        "Missing Authentication Token",
                    ),
                    HeaderError::Malformed(e) => e,
                    HeaderError::WrongScope => fail(
                        AuthFailure::BadSignature,
                        ErrorKind::InvalidSignature,
                        "Credential should be scoped to correct service: 'kms'.",
                    ),
                    HeaderError::NoDate => incomplete(
                        "Authorization header requires existence of a 'X-Amz-Date' header.",
                    ),
                    HeaderError::DateMismatch => fail(
                        AuthFailure::BadSignature,
                        ErrorKind::InvalidSignature,
                        "Date in Credential scope does not match YYYYMMDD from ISO-8601 version of date from HTTP.",
                    ),
                    HeaderError::Expired { amz_date, skew } => fail(
                        AuthFailure::Expired,
                        ErrorKind::InvalidSignature,
                        format!(
                            "Signature expired: {amz_date} is now earlier than the allowed clock skew of {skew} seconds."
                        ),
                    ),
                    HeaderError::NotYetCurrent { amz_date, skew } => fail(
                        AuthFailure::Expired,
                        ErrorKind::InvalidSignature,
                        format!(
                            "Signature not yet current: {amz_date} is later than the allowed clock skew of {skew} seconds."
                        ),
                    ),
                },
            )?;
        if !auth.signed_headers.split(';').any(|n| n == "host") {
            return Err(incomplete("SignedHeaders must include 'host'"));
        }
        let mut prev: Option<&str> = None;
        for name in auth.signed_headers.split(';') {
            if name.is_empty()
                || name.bytes().any(|b| b.is_ascii_uppercase())
                || prev.is_some_and(|p| p >= name)
            {
                return Err(incomplete(
                    "SignedHeaders must be lowercase, sorted and unique",
                ));
            }
            prev = Some(name);
        }
        let Some(client) = clients.get(auth.access_key_id) else {
            let revoked = clients.revoked_name(auth.access_key_id);
            let failure = if revoked.is_some() {
                AuthFailure::RevokedClient
            } else {
                AuthFailure::UnknownClient
            };
            let mut err = fail(
                failure,
                ErrorKind::UnrecognizedClient,
                "The security token included in the request is invalid.",
            );
            err.principal = revoked;
            return Err(err);
        };

        let payload_hash = hex64(Sha256::digest(req.body));
        if let Some(claimed) = req.headers.get("x-amz-content-sha256")
            && claimed.as_bytes() != payload_hash
        {
            return Err(self.mismatch());
        }
        let canonical_hash =
            canonical_request_hash(req, auth.signed_headers, hex_str(&payload_hash))?;
        let signing_key = match client.cached_signing_key(auth.date, auth.region) {
            Some(k) => k,
            None => {
                let key = SigningKey {
                    date: auth.date.to_string(),
                    region: auth.region.to_string(),
                    key: derive_signing_key(
                        client.secret().expose_secret(),
                        auth.date,
                        auth.region,
                    ),
                };
                client.cache_signing_key(key);
                client
                    .cached_signing_key(auth.date, auth.region)
                    .ok_or_else(|| self.mismatch())?
            }
        };
        if signature_matches(&*signing_key.key, amz_date, &auth, SERVICE, &canonical_hash)? {
            Ok(client)
        } else {
            Err(self.mismatch())
        }
    }

    fn mismatch(&self) -> AuthError {
        fail(
            AuthFailure::BadSignature,
            ErrorKind::InvalidSignature,
            "The request signature we calculated does not match the signature you provided. Check your AWS Secret Access Key and signing method. Consult the service documentation for details.",
        )
    }
}
