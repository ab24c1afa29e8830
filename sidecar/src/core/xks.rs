//! The typed requests and replies of the AWS KMS External Key Store (XKS) proxy API
//! (`frontend/xks/` decodes them from its wire; `ops/xks.rs` serves them).
//!
//! They live beside the KMS model because the core runs them through the same pipeline (audit gate,
//! rate limits, key policy, key state, caches, backend stack, one observation), but they are not
//! KMS operations: the ciphertext is raw AES-GCM parts under the spec's associated data, not the
//! sidecar's self-describing blob. The replies serialize with the spec's member names, so the
//! front-end writes them as they are. Request members are `serde(skip)`: the front-end builds them
//! (the generic `Request::decode` only ever yields empty ones, which the AWS front-end never asks
//! for).

use serde::{Deserialize, Serialize};

use super::model::{Blob, SecretBlob};
use crate::auth::policy::XksMetadata;

/// Which cryptographic operations an external key allows (configured per external key).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct XksUsage {
    pub encrypt: bool,
    pub decrypt: bool,
}

impl XksUsage {
    pub const BOTH: XksUsage = XksUsage {
        encrypt: true,
        decrypt: true,
    };

    /// The spec's `keyUsage` list.
    pub fn names(self) -> Vec<&'static str> {
        let mut out = Vec::with_capacity(2);
        if self.encrypt {
            out.push("ENCRYPT");
        }
        if self.decrypt {
            out.push("DECRYPT");
        }
        out
    }
}

/// The spec's `requestMetadata`: who called AWS KMS, for which KMS operation and key, through which
/// service. Logged (`kmsRequestId`, `awsPrincipalArn` go to the audit log) and readable by key
/// policies through the `xks:` condition keys.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct XksRequestMetadata {
    pub aws_principal_arn: Option<String>,
    pub aws_source_vpc: Option<String>,
    pub aws_source_vpce: Option<String>,
    pub kms_key_arn: Option<String>,
    pub kms_operation: Option<String>,
    pub kms_request_id: Option<String>,
    pub kms_via_service: Option<String>,
}

impl XksRequestMetadata {
    /// The view key policies evaluate.
    pub fn for_policy(&self) -> XksMetadata<'_> {
        XksMetadata {
            aws_principal_arn: self.aws_principal_arn.as_deref(),
            aws_source_vpc: self.aws_source_vpc.as_deref(),
            aws_source_vpce: self.aws_source_vpce.as_deref(),
            kms_key_arn: self.kms_key_arn.as_deref(),
            kms_operation: self.kms_operation.as_deref(),
            kms_via_service: self.kms_via_service.as_deref(),
        }
    }
}

/// GetKeyMetadata on the sidecar key an external key id maps to.
#[derive(Debug, Default, Deserialize)]
pub struct XksKeyMetadataRequest {
    /// The sidecar key (id, ARN or alias) the external key id maps to.
    #[serde(skip)]
    pub key_id: Option<String>,
    #[serde(skip)]
    pub usage: XksUsage,
    #[serde(skip)]
    pub metadata: XksRequestMetadata,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct XksKeyMetadataResponse {
    pub key_spec: &'static str,
    pub key_usage: Vec<&'static str>,
    pub key_status: &'static str,
}

#[derive(Debug, Default, Deserialize)]
pub struct XksEncryptRequest {
    #[serde(skip)]
    pub key_id: Option<String>,
    #[serde(skip)]
    pub usage: XksUsage,
    #[serde(skip)]
    pub metadata: XksRequestMetadata,
    #[serde(skip)]
    pub plaintext: Option<SecretBlob>,
    /// `additionalAuthenticatedData`, decoded (empty when absent).
    #[serde(skip)]
    pub aad: Vec<u8>,
    /// Whether `ciphertextDataIntegrityValueAlgorithm` (`SHA_256`) was given.
    #[serde(skip)]
    pub integrity_value: bool,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct XksEncryptResponse {
    pub ciphertext: Blob,
    pub ciphertext_metadata: Blob,
    pub initialization_vector: Blob,
    pub authentication_tag: Blob,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ciphertext_data_integrity_value: Option<Blob>,
}

#[derive(Debug, Default, Deserialize)]
pub struct XksDecryptRequest {
    #[serde(skip)]
    pub key_id: Option<String>,
    #[serde(skip)]
    pub usage: XksUsage,
    #[serde(skip)]
    pub metadata: XksRequestMetadata,
    #[serde(skip)]
    pub ciphertext: Vec<u8>,
    /// `ciphertextMetadata` (empty when absent).
    #[serde(skip)]
    pub ciphertext_metadata: Vec<u8>,
    #[serde(skip)]
    pub aad: Vec<u8>,
    #[serde(skip)]
    pub iv: Vec<u8>,
    #[serde(skip)]
    pub tag: Vec<u8>,
}

#[derive(Debug, Serialize)]
pub struct XksDecryptResponse {
    pub plaintext: SecretBlob,
}

/// GetHealthStatus: a real round trip through the backend stack under the probe key.
#[derive(Debug, Default, Deserialize)]
pub struct XksHealthRequest {
    /// The key the deep health check uses (a test key, not one AWS KMS uses).
    #[serde(skip)]
    pub probe_key_id: Option<String>,
    #[serde(skip)]
    pub metadata: XksRequestMetadata,
}

/// The backend's health as the spec's `ekmFleetDetails` entry says it; the front-end adds the
/// proxy's vendor, model and fleet size.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct XksHealthResponse {
    /// The backend's name (`embedded`, `pkcs11`).
    pub backend: &'static str,
    /// `ACTIVE`, `DEGRADED` or `UNAVAILABLE`.
    pub health_status: &'static str,
}
