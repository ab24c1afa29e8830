//! The SigV4 `Authorization` header and `X-Amz-Date`: parsing them, and the checks both verifiers
//! (the AWS JSON front-end's [`super::Verifier`] and the XKS proxy's) make before they look up a
//! credential. Its own module so the two verifiers share one reading of the header, each wording
//! the failures in its own API's terms.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use super::{ALGORITHM, AuthError, SignedRequest, incomplete};
use crate::auth::amz_date::parse_amz_date;

/// The `Authorization` header's three parts.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct AuthHeader<'a> {
    pub(crate) access_key_id: &'a str,
    pub(crate) date: &'a str,
    pub(crate) region: &'a str,
    pub(crate) service: &'a str,
    pub(crate) signed_headers: &'a str,
    pub(crate) signature: &'a str,
}

pub(crate) fn parse_authorization(value: &str) -> Result<AuthHeader<'_>, AuthError> {
    let rest = value
        .strip_prefix(ALGORITHM)
        .and_then(|r| r.strip_prefix(' '))
        .ok_or_else(|| {
            incomplete("Authorization header must use the AWS4-HMAC-SHA256 algorithm")
        })?;
    let (mut credential, mut signed_headers, mut signature) = (None, None, None);
    for part in rest.split(',') {
        let part = part.trim();
        if let Some(v) = part.strip_prefix("Credential=") {
            credential = Some(v);
        } else if let Some(v) = part.strip_prefix("SignedHeaders=") {
            signed_headers = Some(v);
        } else if let Some(v) = part.strip_prefix("Signature=") {
            signature = Some(v);
        } else {
            return Err(incomplete("Authorization header has an unknown element"));
        }
    }
    let credential = credential
        .ok_or_else(|| incomplete("Authorization header requires 'Credential' parameter"))?;
    let signed_headers = signed_headers
        .ok_or_else(|| incomplete("Authorization header requires 'SignedHeaders' parameter"))?;
    let signature = signature
        .ok_or_else(|| incomplete("Authorization header requires 'Signature' parameter"))?;
    let mut scope = credential.split('/');
    let (Some(access_key_id), Some(date), Some(region), Some(service), Some("aws4_request"), None) = (
        scope.next(),
        scope.next(),
        scope.next(),
        scope.next(),
        scope.next(),
        scope.next(),
    ) else {
        return Err(incomplete(
            "Credential must have the form <access key id>/<date>/<region>/<service>/aws4_request",
        ));
    };
    if access_key_id.is_empty() || date.len() != 8 || region.is_empty() || signed_headers.is_empty()
    {
        return Err(incomplete("Authorization header is malformed"));
    }
    if signature.len() != 64 || !signature.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(incomplete("Signature must be 64 hex characters"));
    }
    Ok(AuthHeader {
        access_key_id,
        date,
        region,
        service,
        signed_headers,
        signature,
    })
}

/// Why [`read_authorization`] rejected a request, for each verifier to word in its own API's terms
/// (the AWS JSON front-end copies AWS KMS's messages, the XKS proxy its own). Malformed text that
/// both word the same way is already an [`AuthError`].
#[derive(Debug)]
pub(crate) enum HeaderError<'a> {
    /// No `Authorization` header.
    Missing,
    /// The header or the `X-Amz-Date` is malformed.
    Malformed(AuthError),
    /// The credential scope failed the verifier's own check (service, region).
    WrongScope,
    /// No readable `X-Amz-Date` header.
    NoDate,
    /// The credential scope's date is not the `X-Amz-Date`'s day.
    DateMismatch,
    /// Signed more than the allowed skew before now.
    Expired { amz_date: &'a str, skew: i64 },
    /// Signed more than the allowed skew after now.
    NotYetCurrent { amz_date: &'a str, skew: i64 },
}

/// A request's parsed `Authorization` header and its `X-Amz-Date`, checked against each other and
/// the clock.
#[derive(Debug)]
pub(crate) struct SignedHeader<'a> {
    pub(crate) auth: AuthHeader<'a>,
    pub(crate) amz_date: &'a str,
}

/// Reads what both SigV4 verifiers check before they look up a credential, in the order AWS
/// checks it: the `Authorization` header, its scope (`scope_ok`), the `X-Amz-Date` and its
/// distance from `now` (at most `max_skew` either way).
pub(crate) fn read_authorization<'a>(
    req: &SignedRequest<'a>,
    now: SystemTime,
    max_skew: Duration,
    scope_ok: impl FnOnce(&AuthHeader<'_>) -> bool,
) -> Result<SignedHeader<'a>, HeaderError<'a>> {
    let headers: &'a http::HeaderMap = req.headers;
    let Some(auth) = headers.get(http::header::AUTHORIZATION) else {
        return Err(HeaderError::Missing);
    };
    let auth = auth.to_str().map_err(|_| {
        HeaderError::Malformed(incomplete("Authorization header is not valid text"))
    })?;
    let auth = parse_authorization(auth).map_err(HeaderError::Malformed)?;
    if !scope_ok(&auth) {
        return Err(HeaderError::WrongScope);
    }
    let amz_date = headers
        .get("x-amz-date")
        .and_then(|v| v.to_str().ok())
        .ok_or(HeaderError::NoDate)?;
    let signed_at = parse_amz_date(amz_date).ok_or_else(|| {
        HeaderError::Malformed(incomplete(
            "X-Amz-Date is not a valid ISO 8601 basic timestamp",
        ))
    })?;
    if !amz_date.starts_with(auth.date) {
        return Err(HeaderError::DateMismatch);
    }
    let now_secs = now
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64);
    let skew = max_skew.as_secs() as i64;
    if signed_at < now_secs - skew {
        return Err(HeaderError::Expired { amz_date, skew });
    }
    if signed_at > now_secs + skew {
        return Err(HeaderError::NotYetCurrent { amz_date, skew });
    }
    Ok(SignedHeader { auth, amz_date })
}

#[cfg(test)]
mod tests {
    use super::super::AuthFailure;
    use super::*;

    #[test]
    fn parses_authorization_header() {
        let a = parse_authorization(
            "AWS4-HMAC-SHA256 Credential=AKID/20250101/eu-west-1/kms/aws4_request, SignedHeaders=host;x-amz-date, Signature=0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef",
        )
        .unwrap();
        assert_eq!(a.access_key_id, "AKID");
        assert_eq!(a.region, "eu-west-1");
        assert_eq!(a.signed_headers, "host;x-amz-date");
        for bad in [
            "",
            "AWS4-HMAC-SHA1 Credential=a/b/c/d/aws4_request",
            "AWS4-HMAC-SHA256 Credential=AKID/20250101/eu-west-1/kms/aws4_request, SignedHeaders=host",
            "AWS4-HMAC-SHA256 Credential=AKID/2025/eu-west-1/kms/aws4_request, SignedHeaders=host, Signature=00",
            "AWS4-HMAC-SHA256 Credential=AKID, SignedHeaders=host, Signature=0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef",
        ] {
            assert_eq!(
                parse_authorization(bad).unwrap_err().failure,
                AuthFailure::Incomplete,
                "{bad}"
            );
        }
    }
}
