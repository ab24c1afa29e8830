//! The AWS KMS JSON 1.1 wire format: which operation a request names, how its body is decoded, and
//! how answers and errors are encoded. Nothing here knows about keys or backends; `ops/` does the work.

pub mod error;
pub mod shapes;

use std::collections::BTreeMap;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Deserializer, Serializer};
use zeroize::Zeroizing;

pub use error::{ErrorKind, KmsError, Origin};

/// The content type of every KMS request and response.
pub const CONTENT_TYPE: &str = "application/x-amz-json-1.1";
const TARGET_PREFIX: &str = "TrentService.";

macro_rules! operations {
    ($($variant:ident),* $(,)?) => {
        /// Every KMS operation the sidecar serves.
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
        pub enum Operation {
            $($variant,)*
        }

        impl Operation {
            /// All operations, in a fixed order; `index()` is the position here.
            pub const ALL: &'static [Operation] = &[$(Operation::$variant),*];

            /// The AWS name (`Encrypt`, `CreateKey`, ...), also the metric label value.
            pub const fn as_str(self) -> &'static str {
                match self { $(Operation::$variant => stringify!($variant),)* }
            }

            /// Parses the operation name after `TrentService.`.
            pub fn from_name(name: &str) -> Option<Self> {
                match name { $(stringify!($variant) => Some(Operation::$variant),)* _ => None }
            }
        }
    };
}

operations!(
    CancelKeyDeletion,
    CreateAlias,
    CreateKey,
    Decrypt,
    DeleteAlias,
    DescribeKey,
    DisableKey,
    DisableKeyRotation,
    EnableKey,
    EnableKeyRotation,
    Encrypt,
    GenerateDataKey,
    GenerateDataKeyWithoutPlaintext,
    GenerateRandom,
    GetKeyPolicy,
    GetKeyRotationStatus,
    ListAliases,
    ListKeyPolicies,
    ListKeyRotations,
    ListKeys,
    ListResourceTags,
    PutKeyPolicy,
    ReEncrypt,
    RotateKeyOnDemand,
    ScheduleKeyDeletion,
    TagResource,
    UntagResource,
    UpdateAlias,
);

impl Operation {
    /// Position in [`Operation::ALL`], for lock-free per-operation tables.
    pub fn index(self) -> usize {
        self as usize
    }

    /// Parses an `X-Amz-Target` header value.
    pub fn from_target(target: &[u8]) -> Result<Self, KmsError> {
        let unknown = || {
            KmsError::new(
                ErrorKind::UnknownOperation,
                "the X-Amz-Target header does not name a supported TrentService operation",
            )
        };
        let target = std::str::from_utf8(target).map_err(|_| unknown())?;
        let name = target.strip_prefix(TARGET_PREFIX).ok_or_else(unknown)?;
        Self::from_name(name).ok_or_else(unknown)
    }
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

/// Encodes a response body.
pub fn encode<T: serde::Serialize>(value: &T) -> Result<Vec<u8>, KmsError> {
    serde_json::to_vec(value).map_err(KmsError::internal)
}

/// A blob member (base64 in JSON) holding secret bytes: zeroized on drop, redacted in `Debug`.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct SecretBlob(pub Zeroizing<Vec<u8>>);

impl std::fmt::Debug for SecretBlob {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("[redacted]")
    }
}

impl SecretBlob {
    pub fn as_slice(&self) -> &[u8] {
        &self.0
    }
}

impl<'de> Deserialize<'de> for SecretBlob {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = Zeroizing::new(String::deserialize(d)?);
        B64.decode(text.as_bytes())
            .map(|v| SecretBlob(Zeroizing::new(v)))
            .map_err(|_| serde::de::Error::custom("a blob member is not valid base64"))
    }
}

impl serde::Serialize for SecretBlob {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let text = Zeroizing::new(B64.encode(self.as_slice()));
        s.serialize_str(&text)
    }
}

/// A blob member that is not secret (ciphertexts).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Blob(pub Vec<u8>);

impl<'de> Deserialize<'de> for Blob {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        B64.decode(text.as_bytes())
            .map(Blob)
            .map_err(|_| serde::de::Error::custom("a blob member is not valid base64"))
    }
}

impl serde::Serialize for Blob {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&B64.encode(&self.0))
    }
}

/// An encryption context; a `BTreeMap` so it is always in canonical (sorted) order.
pub type EncryptionContext = BTreeMap<String, String>;

/// A timestamp on the wire: JSON 1.1 sends epoch seconds as a number.
pub type Timestamp = f64;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_parse_and_reject() {
        assert_eq!(
            Operation::from_target(b"TrentService.Encrypt").unwrap(),
            Operation::Encrypt
        );
        for bad in [
            &b"TrentService.Nope"[..],
            b"Encrypt",
            b"",
            b"\xff\xfe",
            b"TrentService.",
        ] {
            assert_eq!(
                Operation::from_target(bad).unwrap_err().kind(),
                ErrorKind::UnknownOperation
            );
        }
    }

    #[test]
    fn operation_index_matches_all() {
        for (i, op) in Operation::ALL.iter().enumerate() {
            assert_eq!(op.index(), i);
            assert_eq!(Operation::from_name(op.as_str()), Some(*op));
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

    #[test]
    fn secret_blob_is_redacted() {
        let b: SecretBlob = serde_json::from_str("\"c2VjcmV0\"").unwrap();
        assert_eq!(b.as_slice(), b"secret");
        assert_eq!(format!("{b:?}"), "[redacted]");
        assert!(serde_json::from_str::<SecretBlob>("\"!!\"").is_err());
    }
}
