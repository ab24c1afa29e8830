//! The SigV4 computation itself: the canonical request (hashed as it is built, never held in
//! memory), the string to sign, the derived signing key and the signature, plus [`sign`], the
//! client side built from the same parts for tests and tools. Apart from the verifiers because
//! this is the part fixed by AWS's specification, while the verifiers are the sidecar's policy.

use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};
use zeroize::Zeroizing;

use super::{ALGORITHM, AuthError, SERVICE, SignedRequest, incomplete};
use crate::kms::KmsError;

type HmacSha256 = Hmac<Sha256>;

pub(crate) fn hmac(key: &[u8], data: &[u8]) -> [u8; 32] {
    // HMAC accepts keys of any length, so construction cannot fail.
    let mut mac = match HmacSha256::new_from_slice(key) {
        Ok(mac) => mac,
        Err(_) => return [0; 32],
    };
    mac.update(data);
    mac.finalize().into_bytes().into()
}

pub(super) fn derive_signing_key(secret: &str, date: &str, region: &str) -> Zeroizing<[u8; 32]> {
    derive_signing_key_for(secret, date, region, SERVICE)
}

pub(crate) fn derive_signing_key_for(
    secret: &str,
    date: &str,
    region: &str,
    service: &str,
) -> Zeroizing<[u8; 32]> {
    let seed = Zeroizing::new(format!("AWS4{secret}"));
    let k_date = Zeroizing::new(hmac(seed.as_bytes(), date.as_bytes()));
    let k_region = Zeroizing::new(hmac(&*k_date, region.as_bytes()));
    let k_service = Zeroizing::new(hmac(&*k_region, service.as_bytes()));
    Zeroizing::new(hmac(&*k_service, b"aws4_request"))
}

fn is_unreserved(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~')
}

fn uri_encode(out: &mut impl Sink, s: &[u8], keep_slash: bool) {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    for &b in s {
        if is_unreserved(b) || (keep_slash && b == b'/') {
            out.put(&[b]);
        } else {
            out.put(&[b'%', HEX[usize::from(b >> 4)], HEX[usize::from(b & 15)]]);
        }
    }
}

/// Where canonical text goes: a `String` (the query's pairs, which must be sorted first) or
/// straight into a hash, so a request's canonical form is never built in memory.
trait Sink {
    fn put(&mut self, bytes: &[u8]);
    fn put_str(&mut self, s: &str) {
        self.put(s.as_bytes());
    }
}

impl Sink for String {
    fn put(&mut self, bytes: &[u8]) {
        // Only ASCII and whole UTF-8 strings are put.
        self.push_str(&String::from_utf8_lossy(bytes));
    }
    fn put_str(&mut self, s: &str) {
        self.push_str(s);
    }
}

impl Sink for Sha256 {
    fn put(&mut self, bytes: &[u8]) {
        self.update(bytes);
    }
}

impl Sink for HmacSha256 {
    fn put(&mut self, bytes: &[u8]) {
        self.update(bytes);
    }
}

/// Lowercase hex of a SHA-256 digest, on the stack.
pub(super) fn hex64(digest: impl AsRef<[u8]>) -> [u8; 64] {
    let mut out = [0u8; 64];
    // 32 bytes always fit 64 hex digits.
    let _ = hex::encode_to_slice(digest, &mut out);
    out
}

/// The hex payload hash as text (hex digits are ASCII).
pub(crate) fn hex_str(hex: &[u8; 64]) -> &str {
    std::str::from_utf8(hex).unwrap_or_default()
}

fn percent_decode(s: &str) -> Vec<u8> {
    fn hex_val(b: u8) -> Option<u8> {
        char::from(b)
            .to_digit(16)
            .and_then(|d| u8::try_from(d).ok())
    }
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%'
            && i + 2 < bytes.len()
            && let (Some(h), Some(l)) = (hex_val(bytes[i + 1]), hex_val(bytes[i + 2]))
        {
            out.push(h << 4 | l);
            i += 3;
            continue;
        }
        out.push(bytes[i]);
        i += 1;
    }
    out
}

/// Hashes the canonical request for `signed_headers` (`;`-separated, sorted, lowercase names, checked
/// by the caller): SHA-256, in hex.
pub(crate) fn canonical_request_hash(
    req: &SignedRequest<'_>,
    signed_headers: &str,
    payload_hash: &str,
) -> Result<[u8; 64], AuthError> {
    let mut canonical = Sha256::new();
    canonical.put_str(req.method);
    canonical.put(b"\n");
    let path = if req.path.is_empty() { "/" } else { req.path };
    uri_encode(&mut canonical, path.as_bytes(), true);
    canonical.put(b"\n");
    if !req.query.is_empty() {
        canonical.put_str(&canonical_query(req.query));
    }
    canonical.put(b"\n");
    for name in signed_headers.split(';') {
        canonical.put_str(name);
        canonical.put(b":");
        canonical_header_value(&mut canonical, req.headers, name)?;
        canonical.put(b"\n");
    }
    canonical.put(b"\n");
    canonical.put_str(signed_headers);
    canonical.put(b"\n");
    canonical.put_str(payload_hash);
    Ok(hex64(canonical.finalize()))
}

/// The signature: HMAC of the string to sign under the derived `key`.
pub(crate) fn signature(
    key: &[u8],
    amz_date: &str,
    date: &str,
    region: &str,
    service: &str,
    canonical_hash: &[u8; 64],
) -> [u8; 32] {
    // HMAC accepts keys of any length, so construction cannot fail.
    let Ok(mut mac) = HmacSha256::new_from_slice(key) else {
        return [0; 32];
    };
    for part in [
        ALGORITHM,
        "\n",
        amz_date,
        "\n",
        date,
        "/",
        region,
        "/",
        service,
        "/aws4_request\n",
    ] {
        mac.put_str(part);
    }
    mac.put(canonical_hash);
    mac.finalize().into_bytes().into()
}

fn canonical_query(query: &str) -> String {
    if query.is_empty() {
        return String::new();
    }
    let mut pairs: Vec<(String, String)> = query
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            let mut ek = String::new();
            uri_encode(&mut ek, &percent_decode(k), false);
            let mut ev = String::new();
            uri_encode(&mut ev, &percent_decode(v), false);
            (ek, ev)
        })
        .collect();
    pairs.sort();
    pairs
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join("&")
}

fn canonical_header_value(
    out: &mut impl Sink,
    headers: &http::HeaderMap,
    name: &str,
) -> Result<(), AuthError> {
    let mut first = true;
    let mut any = false;
    for value in headers.get_all(name) {
        any = true;
        let value = value
            .to_str()
            .map_err(|_| incomplete("a signed header is not valid text"))?;
        if !first {
            out.put(b",");
        }
        first = false;
        // Runs of spaces and tabs become one space.
        let words = value.trim().split([' ', '\t']).filter(|w| !w.is_empty());
        for (i, word) in words.enumerate() {
            if i > 0 {
                out.put(b" ");
            }
            out.put_str(word);
        }
    }
    if !any {
        return Err(incomplete("a header named in SignedHeaders is missing"));
    }
    Ok(())
}

/// Signs a request the way AWS SDKs do; used by tests and the load tester to produce valid requests.
/// Returns the `Authorization` header value for a request whose headers already hold `host` and
/// `x-amz-date`.
pub fn sign(
    access_key_id: &str,
    secret: &str,
    region: &str,
    req: &SignedRequest<'_>,
    signed_headers: &[&str],
) -> Result<String, KmsError> {
    let amz_date = req
        .headers
        .get("x-amz-date")
        .and_then(|v| v.to_str().ok())
        .ok_or_else(|| KmsError::validation("x-amz-date header required to sign"))?;
    let date = amz_date
        .get(..8)
        .ok_or_else(|| KmsError::validation("bad x-amz-date"))?;
    let mut names: Vec<&str> = signed_headers.to_vec();
    names.sort_unstable();
    let names = names.join(";");
    let payload_hash = hex64(Sha256::digest(req.body));
    let canonical_hash =
        canonical_request_hash(req, &names, hex_str(&payload_hash)).map_err(|e| e.error)?;
    let key = derive_signing_key(secret, date, region);
    let signature = hex::encode(signature(
        &*key,
        amz_date,
        date,
        region,
        SERVICE,
        &canonical_hash,
    ));
    Ok(format!(
        "{ALGORITHM} Credential={access_key_id}/{date}/{region}/{SERVICE}/aws4_request, SignedHeaders={names}, Signature={signature}"
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signing_key_matches_aws_documented_example() {
        // From the AWS SigV4 documentation ("Examples of how to derive a signing key").
        let key = derive_signing_key_for(
            "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY",
            "20150830",
            "us-east-1",
            "iam",
        );
        assert_eq!(
            hex::encode(*key),
            "c4afb1cc5771d871763a393e44b703571b55cc28424d1a5e86da6ed3c154a4b9"
        );
    }

    #[test]
    fn canonical_query_sorts_and_encodes() {
        assert_eq!(canonical_query("b=2&a=1%2F&c"), "a=1%2F&b=2&c=");
        assert_eq!(canonical_query(""), "");
        assert_eq!(percent_decode("%4"), b"%4");
        assert_eq!(percent_decode("%zz%41"), b"%zzA");
    }
}
