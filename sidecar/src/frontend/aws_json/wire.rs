//! The AWS KMS JSON 1.1 wire format: which operation a request names (`X-Amz-Target`), which
//! content types are accepted, and how bodies are decoded into the core's typed requests and
//! replies encoded. Nothing here knows about keys or backends.

use serde::de::DeserializeOwned;

use crate::core::request::Decode;
use crate::kms::{ErrorKind, KmsError, Operation};

/// The content type of every KMS request and response.
pub const CONTENT_TYPE: &str = "application/x-amz-json-1.1";
const TARGET_PREFIX: &str = "TrentService.";

/// Parses an `X-Amz-Target` header value.
pub fn operation(target: &[u8]) -> Result<Operation, KmsError> {
    let unknown = || {
        KmsError::new(
            ErrorKind::UnknownOperation,
            "the X-Amz-Target header does not name a supported TrentService operation",
        )
    };
    let target = std::str::from_utf8(target).map_err(|_| unknown())?;
    let name = target.strip_prefix(TARGET_PREFIX).ok_or_else(unknown)?;
    Operation::from_name(name)
        .filter(|op| op.is_aws())
        .ok_or_else(unknown)
}

/// Accepts the content types AWS SDKs and hand-written clients send for JSON 1.1 services.
pub fn check_content_type(value: Option<&[u8]>) -> Result<(), KmsError> {
    let Some(value) = value else {
        // The AWS CLI and SDKs always send one; curl users often forget. KMS itself is lenient here.
        return Ok(());
    };
    let media = value.split(|b| *b == b';').next().unwrap_or_default();
    let media = media.trim_ascii();
    let ok = [
        CONTENT_TYPE,
        "application/x-amz-json-1.0",
        "application/json",
    ]
    .iter()
    .any(|t| media.eq_ignore_ascii_case(t.as_bytes()));
    if ok {
        Ok(())
    } else {
        Err(KmsError::new(
            ErrorKind::Serialization,
            "unsupported Content-Type: use application/x-amz-json-1.1",
        ))
    }
}

/// A request body to decode (see [`Decode`]).
#[derive(Debug, Clone, Copy)]
pub struct Json<'a>(pub &'a [u8]);

impl Decode for Json<'_> {
    fn decode<T: DeserializeOwned>(self) -> Result<T, KmsError> {
        decode(self.0)
    }
}

/// Decodes a request body into `T`: not JSON or a wrong member type is `SerializationException`.
pub fn decode<T: DeserializeOwned>(body: &[u8]) -> Result<T, KmsError> {
    // An empty body is what some clients send for operations without required members.
    let body = if body.trim_ascii().is_empty() {
        b"{}".as_slice()
    } else {
        body
    };
    serde_json::from_slice(body).map_err(|e| {
        // serde_json's message names the member and column, never a value; safe to return.
        KmsError::new(
            ErrorKind::Serialization,
            format!("the request body could not be read: {e}"),
        )
    })
}

/// Encodes a response body, growing its buffer without leaving copies behind
/// ([`crate::frontend::http::encode_json`]).
pub fn encode<T: serde::Serialize>(value: &T) -> Result<Vec<u8>, KmsError> {
    crate::frontend::http::encode_json(value).map_err(KmsError::internal)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_larger_than_the_first_buffer_encode_whole() {
        use crate::core::model::{DecryptResponse, SecretBlob};
        use zeroize::Zeroizing;
        // 4096 bytes of plaintext: about 5.5 KB of base64, past the first 1 KiB buffer.
        for len in [0, 700, 4096] {
            let reply = DecryptResponse {
                key_id: "arn:aws:kms:us-east-1:111122223333:key/k".into(),
                plaintext: SecretBlob(Zeroizing::new(vec![0xa5; len])),
                encryption_algorithm: "SYMMETRIC_DEFAULT",
            };
            assert_eq!(
                encode(&reply).unwrap(),
                serde_json::to_vec(&reply).unwrap(),
                "{len}"
            );
        }
    }

    #[test]
    fn targets_parse_and_reject() {
        assert_eq!(
            operation(b"TrentService.Encrypt").unwrap(),
            Operation::Encrypt
        );
        for bad in [
            &b"TrentService.Nope"[..],
            b"Encrypt",
            b"",
            b"\xff\xfe",
            b"TrentService.",
            // the Kubernetes KMS v2 health call is an operation of the core, not of the AWS API
            b"TrentService.Status",
        ] {
            assert_eq!(
                operation(bad).unwrap_err().kind(),
                ErrorKind::UnknownOperation
            );
        }
    }

    #[test]
    fn content_types() {
        assert!(check_content_type(Some(b"application/x-amz-json-1.1")).is_ok());
        assert!(check_content_type(Some(b"application/x-amz-json-1.1; charset=utf-8")).is_ok());
        assert!(check_content_type(None).is_ok());
        assert_eq!(
            check_content_type(Some(b"text/xml")).unwrap_err().kind(),
            ErrorKind::Serialization
        );
    }
}
