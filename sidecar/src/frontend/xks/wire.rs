//! The XKS proxy API's wire: which API a URI path names (under which configured prefix), and the
//! JSON bodies, checked against the spec's required members, sizes and values before the core
//! sees them. Unknown members are ignored (AWS KMS may add `requestMetadata` fields).

use serde::Deserialize;

use crate::core::model::{Blob, SecretBlob};
use crate::core::ops::XKS_MAX_AAD;
use crate::core::xks::XksRequestMetadata;
use crate::kms::{ErrorKind, KmsError, Operation};

/// The spec's plaintext and ciphertext size (the most this proxy supports, too).
pub const MAX_PLAINTEXT: usize = 4300;
/// The spec's `ciphertextMetadata` bound.
const MAX_CIPHERTEXT_METADATA: usize = 20;
/// ARNs may be 2048 characters; every metadata string is bounded so.
const MAX_METADATA_VALUE: usize = 2048;
/// A body holds at most 4300 + 8192 bytes in base64 and a few ARNs: 64 KiB is ample.
pub const MAX_BODY: usize = 64 * 1024;

/// What a URI path names.
#[derive(Debug, PartialEq, Eq)]
pub struct Route<'a> {
    /// Index of the configured prefix.
    pub prefix: usize,
    pub op: Operation,
    /// The external key id (empty for the health API).
    pub external_key_id: &'a str,
}

/// Routes `path` under the longest configured prefix; anything else is `InvalidUriPathException`.
pub fn route<'a>(prefixes: &[&str], path: &'a str) -> Result<Route<'a>, KmsError> {
    let invalid = || KmsError::new(ErrorKind::UnknownOperation, "the URI path is not valid");
    let (prefix, rest) = prefixes
        .iter()
        .enumerate()
        .filter_map(|(i, p)| {
            path.strip_prefix(p)
                .and_then(|r| r.strip_prefix('/'))
                .map(|r| (i, p.len(), r))
        })
        .max_by_key(|(_, len, _)| *len)
        .map(|(i, _, r)| (i, r))
        .ok_or_else(invalid)?;
    if rest == "health" {
        return Ok(Route {
            prefix,
            op: Operation::XksGetHealthStatus,
            external_key_id: "",
        });
    }
    let mut parts = rest.split('/');
    let (Some("keys"), Some(id), Some(api), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(invalid());
    };
    // The spec's external key id: 1 to 128 of A-Z, a-z, 0-9, '-', '.', '_'.
    if id.is_empty()
        || id.len() > 128
        || !id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_'))
    {
        return Err(invalid());
    }
    let op = match api {
        "metadata" => Operation::XksGetKeyMetadata,
        "encrypt" => Operation::XksEncrypt,
        "decrypt" => Operation::XksDecrypt,
        _ => return Err(invalid()),
    };
    Ok(Route {
        prefix,
        op,
        external_key_id: id,
    })
}

fn validation(message: impl Into<std::borrow::Cow<'static, str>>) -> KmsError {
    KmsError::validation(message)
}

/// A body of the API: the metadata and the API's own members (all optional here, checked below).
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Body {
    request_metadata: Option<XksRequestMetadata>,
    plaintext: Option<SecretBlob>,
    ciphertext: Option<Blob>,
    ciphertext_metadata: Option<Blob>,
    encryption_algorithm: Option<String>,
    additional_authenticated_data: Option<Blob>,
    initialization_vector: Option<Blob>,
    authentication_tag: Option<Blob>,
    ciphertext_data_integrity_value_algorithm: Option<String>,
}

/// A decoded, checked request body.
#[derive(Debug)]
pub struct Decoded {
    pub metadata: XksRequestMetadata,
    pub plaintext: Option<SecretBlob>,
    pub ciphertext: Vec<u8>,
    pub ciphertext_metadata: Vec<u8>,
    pub aad: Vec<u8>,
    pub iv: Vec<u8>,
    pub tag: Vec<u8>,
    pub integrity_value: bool,
}

/// Decodes and checks `body` for `op`.
pub fn decode(op: Operation, body: &[u8]) -> Result<Decoded, KmsError> {
    let b: Body = serde_json::from_slice(body).map_err(|e| {
        validation(format!(
            "the body is not a valid request: {}",
            clip(&e.to_string())
        ))
    })?;
    let metadata = b
        .request_metadata
        .ok_or_else(|| validation("requestMetadata is required"))?;
    check_metadata(op, &metadata)?;
    let crypto = matches!(op, Operation::XksEncrypt | Operation::XksDecrypt);
    if crypto && b.encryption_algorithm.as_deref() != Some("AES_GCM") {
        return Err(validation("encryptionAlgorithm must be AES_GCM"));
    }
    let aad = b
        .additional_authenticated_data
        .map(|a| a.0)
        .unwrap_or_default();
    if aad.len() > XKS_MAX_AAD {
        return Err(too_large("additionalAuthenticatedData", XKS_MAX_AAD));
    }
    let mut out = Decoded {
        metadata,
        plaintext: None,
        ciphertext: Vec::new(),
        ciphertext_metadata: Vec::new(),
        aad,
        iv: Vec::new(),
        tag: Vec::new(),
        integrity_value: false,
    };
    match op {
        Operation::XksEncrypt => {
            let p = b
                .plaintext
                .ok_or_else(|| validation("plaintext is required"))?;
            match p.as_slice().len() {
                0 => return Err(validation("plaintext must not be empty")),
                n if n > MAX_PLAINTEXT => return Err(too_large("plaintext", MAX_PLAINTEXT)),
                _ => {}
            }
            out.plaintext = Some(p);
            out.integrity_value = match b.ciphertext_data_integrity_value_algorithm.as_deref() {
                None => false,
                Some("SHA_256") => true,
                Some(_) => {
                    return Err(validation(
                        "ciphertextDataIntegrityValueAlgorithm must be SHA_256",
                    ));
                }
            };
        }
        Operation::XksDecrypt => {
            let c = b
                .ciphertext
                .ok_or_else(|| validation("ciphertext is required"))?
                .0;
            match c.len() {
                0 => return Err(validation("ciphertext must not be empty")),
                n if n > MAX_PLAINTEXT => return Err(too_large("ciphertext", MAX_PLAINTEXT)),
                _ => {}
            }
            out.ciphertext = c;
            out.ciphertext_metadata = b.ciphertext_metadata.map(|m| m.0).unwrap_or_default();
            if out.ciphertext_metadata.len() > MAX_CIPHERTEXT_METADATA {
                return Err(validation("ciphertextMetadata must be at most 20 bytes"));
            }
            out.iv = b
                .initialization_vector
                .ok_or_else(|| validation("initializationVector is required"))?
                .0;
            if out.iv.len() != 12 && out.iv.len() != 16 {
                return Err(validation("initializationVector must be 12 or 16 bytes"));
            }
            out.tag = b
                .authentication_tag
                .ok_or_else(|| validation("authenticationTag is required"))?
                .0;
            if out.tag.len() != 16 {
                return Err(validation("authenticationTag must be 16 bytes"));
            }
        }
        _ => {}
    }
    Ok(out)
}

/// Beyond the spec's sizes is what this proxy does not support (the spec's 501), not invalid.
fn too_large(member: &str, max: usize) -> KmsError {
    KmsError::new(
        ErrorKind::UnsupportedOperation,
        format!("{member} is larger than the {max} bytes this proxy supports"),
    )
}

/// The members each API requires (the spec's REQUIRED), none empty, none over 2048 characters.
fn check_metadata(op: Operation, m: &XksRequestMetadata) -> Result<(), KmsError> {
    let required: &[(&str, &Option<String>)] = match op {
        Operation::XksGetHealthStatus => &[
            ("kmsRequestId", &m.kms_request_id),
            ("kmsOperation", &m.kms_operation),
        ],
        Operation::XksGetKeyMetadata => &[
            ("awsPrincipalArn", &m.aws_principal_arn),
            ("kmsRequestId", &m.kms_request_id),
            ("kmsOperation", &m.kms_operation),
        ],
        _ => &[
            ("awsPrincipalArn", &m.aws_principal_arn),
            ("kmsKeyArn", &m.kms_key_arn),
            ("kmsRequestId", &m.kms_request_id),
            ("kmsOperation", &m.kms_operation),
        ],
    };
    for (name, value) in required {
        if value.as_deref().is_none_or(str::is_empty) {
            return Err(validation(format!("requestMetadata.{name} is required")));
        }
    }
    for value in [
        &m.aws_principal_arn,
        &m.aws_source_vpc,
        &m.aws_source_vpce,
        &m.kms_key_arn,
        &m.kms_operation,
        &m.kms_request_id,
        &m.kms_via_service,
    ] {
        if value
            .as_deref()
            .is_some_and(|v| v.len() > MAX_METADATA_VALUE)
        {
            return Err(validation(
                "a requestMetadata value is longer than 2048 characters",
            ));
        }
    }
    Ok(())
}

fn clip(s: &str) -> String {
    s.chars().take(200).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const P: &[&str] = &["/kms/xks/v1", "/tenant/kms/xks/v1"];

    #[test]
    fn routes() {
        let r = route(P, "/kms/xks/v1/keys/k-1.a_b/encrypt").unwrap();
        assert_eq!(
            (r.prefix, r.op, r.external_key_id),
            (0, Operation::XksEncrypt, "k-1.a_b")
        );
        let r = route(P, "/tenant/kms/xks/v1/health").unwrap();
        assert_eq!((r.prefix, r.op), (1, Operation::XksGetHealthStatus));
        assert_eq!(
            route(P, "/tenant/kms/xks/v1/keys/k/metadata").unwrap().op,
            Operation::XksGetKeyMetadata
        );
        for bad in [
            "/",
            "/other/kms/xks/v1/health",
            "/kms/xks/v1",
            "/kms/xks/v1/keys/k/sign",
            "/kms/xks/v1/keys/k/encrypt/x",
            "/kms/xks/v1/keys//encrypt",
            "/kms/xks/v1/keys/a%20b/encrypt",
            "/kms/xks/v2/health",
        ] {
            assert_eq!(
                route(P, bad).unwrap_err().kind(),
                ErrorKind::UnknownOperation,
                "{bad}"
            );
        }
    }

    fn kind(op: Operation, body: &str) -> ErrorKind {
        decode(op, body.as_bytes()).unwrap_err().kind()
    }

    const MD: &str = r#""requestMetadata":{"awsPrincipalArn":"arn:aws:iam::123456789012:user/Alice","kmsKeyArn":"arn:aws:kms:us-east-2:123456789012:key/k","kmsOperation":"Encrypt","kmsRequestId":"r-1"}"#;

    #[test]
    fn metadata_is_required_everywhere() {
        assert_eq!(
            kind(Operation::XksGetHealthStatus, "{}"),
            ErrorKind::Validation
        );
        assert_eq!(
            kind(Operation::XksGetHealthStatus, r#"{"requestMetadata":{}}"#),
            ErrorKind::Validation
        );
        assert!(
            decode(
                Operation::XksGetHealthStatus,
                br#"{"requestMetadata":{"kmsRequestId":"r","kmsOperation":"SomethingNew"}}"#
            )
            .is_ok(),
            "an unknown kmsOperation is accepted"
        );
        assert_eq!(kind(Operation::XksEncrypt, "[]"), ErrorKind::Validation);
    }

    #[test]
    fn encrypt_members() {
        let ok = format!(
            r#"{{{MD},"plaintext":"SGVsbG8=","encryptionAlgorithm":"AES_GCM","unknown":1}}"#
        );
        assert!(decode(Operation::XksEncrypt, ok.as_bytes()).is_ok());
        let wrong_alg =
            format!(r#"{{{MD},"plaintext":"SGVsbG8=","encryptionAlgorithm":"AES_CBC"}}"#);
        assert_eq!(
            kind(Operation::XksEncrypt, &wrong_alg),
            ErrorKind::Validation
        );
        let bad_b64 = format!(r#"{{{MD},"plaintext":"!!","encryptionAlgorithm":"AES_GCM"}}"#);
        assert_eq!(kind(Operation::XksEncrypt, &bad_b64), ErrorKind::Validation);
        let big = base64::Engine::encode(
            &base64::engine::general_purpose::STANDARD,
            vec![0u8; MAX_PLAINTEXT + 1],
        );
        let too_big = format!(r#"{{{MD},"plaintext":"{big}","encryptionAlgorithm":"AES_GCM"}}"#);
        assert_eq!(
            kind(Operation::XksEncrypt, &too_big),
            ErrorKind::UnsupportedOperation
        );
        let cdiv = format!(
            r#"{{{MD},"plaintext":"SGVsbG8=","encryptionAlgorithm":"AES_GCM","ciphertextDataIntegrityValueAlgorithm":"MD5"}}"#
        );
        assert_eq!(kind(Operation::XksEncrypt, &cdiv), ErrorKind::Validation);
    }

    #[test]
    fn decrypt_members() {
        let iv = "AAAAAAAAAAAAAAAA"; // 12 bytes
        let tag = "AAAAAAAAAAAAAAAAAAAAAA=="; // 16 bytes
        let ok = format!(
            r#"{{{MD},"ciphertext":"SGVsbG8=","encryptionAlgorithm":"AES_GCM","initializationVector":"{iv}","authenticationTag":"{tag}"}}"#
        );
        assert!(decode(Operation::XksDecrypt, ok.as_bytes()).is_ok());
        let short_tag = ok.replace(tag, "AAAA");
        assert_eq!(
            kind(Operation::XksDecrypt, &short_tag),
            ErrorKind::Validation
        );
        let no_iv = ok.replace(&format!(r#","initializationVector":"{iv}""#), "");
        assert_eq!(kind(Operation::XksDecrypt, &no_iv), ErrorKind::Validation);
        let md = ok.replace(
            r#""ciphertext":"#,
            r#""ciphertextMetadata":"AAAAAAAAAAAAAAAAAAAAAAAAAAAA","ciphertext":"#,
        );
        assert_eq!(kind(Operation::XksDecrypt, &md), ErrorKind::Validation);
    }
}
