//! The XKS proxy API's operations (`core/xks.rs` has their types): AES-GCM under a sidecar key for
//! AWS KMS, which keeps the parts (IV, ciphertext, tag, our `ciphertextMetadata`) in its own blob.
//!
//! The associated data given to the backend is the spec's recommendation:
//! `u16be(len aad) || aad || u8(len metadata) || metadata`, so a caller cannot move bytes between
//! the AAD and the metadata. Our metadata is a format byte and the key version that sealed the
//! data, so rotation never strands an XKS ciphertext, and the metadata is authenticated with it.
//! These bytes can never equal the associated data of a sidecar blob (it starts with the magic
//! `KSC`, read as a 16-bit length 0x4B53, larger than the 8 KiB AAD bound the front-end enforces),
//! so neither kind of ciphertext opens as the other.

use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use super::{Cx, require_enabled, required};
use crate::auth::policy::Action;
use crate::backend::KeyRef;
use crate::core::model::{Blob, SecretBlob};
use crate::core::xks::*;
use crate::crypto::{NONCE_LEN, TAG_LEN};
use crate::keys::{KeyMeta, KeyState};
use crate::kms::{ErrorKind, KmsError};

/// Format byte of our `ciphertextMetadata` (then the key version, 4 bytes big-endian).
const METADATA_V1: u8 = 1;
const METADATA_LEN: usize = 5;
/// The AAD bound the front-end enforces (the spec's required minimum); also what keeps these
/// associated data apart from a sidecar blob's (module docs).
pub const MAX_AAD: usize = 8192;

fn metadata(version: u32) -> [u8; METADATA_LEN] {
    let v = version.to_be_bytes();
    [METADATA_V1, v[0], v[1], v[2], v[3]]
}

/// The key version in our metadata, or `InvalidCiphertextException` for anything else.
fn version_of(metadata: &[u8]) -> Result<u32, KmsError> {
    match metadata {
        [METADATA_V1, a, b, c, d] => Ok(u32::from_be_bytes([*a, *b, *c, *d])),
        _ => Err(invalid_ciphertext()),
    }
}

fn invalid_ciphertext() -> KmsError {
    KmsError::new(
        ErrorKind::InvalidCiphertext,
        "the ciphertext, initialization vector, additional authenticated data, ciphertext metadata or authentication tag is invalid",
    )
}

/// The associated data the backend authenticates (module docs).
fn backend_aad(aad: &[u8], metadata: &[u8]) -> Result<Vec<u8>, KmsError> {
    let aad_len = u16::try_from(aad.len())
        .ok()
        .filter(|_| aad.len() <= MAX_AAD)
        .ok_or_else(|| KmsError::validation("additionalAuthenticatedData is too long"))?;
    let md_len = u8::try_from(metadata.len())
        .map_err(|_| KmsError::validation("ciphertextMetadata is too long"))?;
    let mut out = Vec::with_capacity(3 + aad.len() + metadata.len());
    out.extend_from_slice(&aad_len.to_be_bytes());
    out.extend_from_slice(aad);
    out.push(md_len);
    out.extend_from_slice(metadata);
    Ok(out)
}

/// Resolves the key, authorizes `action` with the request metadata as a second authorization,
/// then the usage the external key allows and the key state.
fn open_key(
    cx: &mut Cx<'_>,
    key_id: Option<String>,
    action: Action,
    metadata: &XksRequestMetadata,
    allowed: bool,
) -> Result<std::sync::Arc<KeyMeta>, KmsError> {
    let key_id = required(key_id, "externalKeyId")?;
    let meta = cx.keys.resolve(&key_id)?;
    cx.authorize_with(action, &meta, None, Some(metadata.for_policy()))?;
    if !allowed {
        return Err(KmsError::new(
            ErrorKind::InvalidKeyUsage,
            format!("the external key does not allow {}", action.name()),
        ));
    }
    require_enabled(cx.keys, &meta)?;
    Ok(meta)
}

pub(super) async fn encrypt(
    cx: &mut Cx<'_>,
    req: XksEncryptRequest,
) -> Result<XksEncryptResponse, KmsError> {
    let meta = open_key(
        cx,
        req.key_id,
        Action::Encrypt,
        &req.metadata,
        req.usage.encrypt,
    )?;
    let plaintext = required(req.plaintext, "plaintext")?;
    let version = meta.current_version();
    cx.obs.key_version = Some(version);
    let md = metadata(version);
    let aad = backend_aad(&req.aad, &md)?;
    let key = KeyRef {
        key_id: &meta.id,
        version,
    };
    let backend = cx.keys.backend();
    let sealed = backend.encrypt(key, &aad, plaintext.as_slice()).await?;
    if sealed.len() != NONCE_LEN + plaintext.as_slice().len() + TAG_LEN {
        return Err(KmsError::internal(std::io::Error::other(
            "the backend returned a sealed value of an unexpected length",
        )));
    }
    let (iv, rest) = sealed.split_at(NONCE_LEN);
    let (ciphertext, tag) = rest.split_at(rest.len() - TAG_LEN);
    let integrity = req.integrity_value.then(|| {
        // Appendix C: the hash over the parts as returned, computed before the check below, so
        // a corruption after it cannot go unnoticed.
        let mut h = Sha256::new();
        for part in [&req.aad[..], &md, iv, ciphertext, tag] {
            h.update(part);
        }
        Blob(h.finalize().to_vec())
    });
    if integrity.is_some() {
        // AWS KMS trusts a matching integrity value to mean the parts will decrypt: prove it.
        let opened = backend.decrypt(key, &aad, &sealed).await?;
        if !bool::from(opened.as_slice().ct_eq(plaintext.as_slice())) {
            return Err(KmsError::internal(std::io::Error::other(
                "the encrypt round trip returned other bytes",
            )));
        }
    }
    Ok(XksEncryptResponse {
        ciphertext: Blob(ciphertext.to_vec()),
        ciphertext_metadata: Blob(md.to_vec()),
        initialization_vector: Blob(iv.to_vec()),
        authentication_tag: Blob(tag.to_vec()),
        ciphertext_data_integrity_value: integrity,
    })
}

pub(super) async fn decrypt(
    cx: &mut Cx<'_>,
    req: XksDecryptRequest,
) -> Result<XksDecryptResponse, KmsError> {
    let meta = open_key(
        cx,
        req.key_id,
        Action::Decrypt,
        &req.metadata,
        req.usage.decrypt,
    )?;
    let version = version_of(&req.ciphertext_metadata)?;
    // We only ever produce 12-byte IVs; a 16-byte one (valid in the spec) was not ours.
    if !meta.has_version(version) || req.iv.len() != NONCE_LEN || req.tag.len() != TAG_LEN {
        return Err(invalid_ciphertext());
    }
    cx.obs.key_version = Some(version);
    let aad = backend_aad(&req.aad, &req.ciphertext_metadata)?;
    let mut sealed = Vec::with_capacity(NONCE_LEN + req.ciphertext.len() + TAG_LEN);
    sealed.extend_from_slice(&req.iv);
    sealed.extend_from_slice(&req.ciphertext);
    sealed.extend_from_slice(&req.tag);
    let load = async {
        let key = KeyRef {
            key_id: &meta.id,
            version,
        };
        cx.keys
            .backend()
            .decrypt(key, &aad, &sealed)
            .await
            .map_err(|e| match KmsError::from(e) {
                e if e.kind() == ErrorKind::InvalidCiphertext => invalid_ciphertext(),
                e => e,
            })
    };
    let cache = &cx.kms.cache;
    // The cache key covers the associated data (length-prefixed, so it cannot run into the
    // sealed bytes) and the sealed parts, under this key and a name no KMS algorithm has.
    let cache_key = if cache.enabled() {
        let mut blob = Vec::with_capacity(4 + aad.len() + sealed.len());
        blob.extend_from_slice(&(aad.len() as u32).to_be_bytes());
        blob.extend_from_slice(&aad);
        blob.extend_from_slice(&sealed);
        crate::cache::cache_key(&blob, &Default::default(), &meta.id, "XKS_AES_GCM")
    } else {
        [0; 32]
    };
    let failing = cx.kms.backend_failing();
    let (plaintext, outcome) = cache
        .get_or_load(cache_key, &meta.id, version, failing, load)
        .await?;
    cx.obs.cache = outcome;
    Ok(XksDecryptResponse {
        plaintext: SecretBlob(plaintext),
    })
}

pub(super) fn key_metadata(
    cx: &mut Cx<'_>,
    req: XksKeyMetadataRequest,
) -> Result<XksKeyMetadataResponse, KmsError> {
    let key_id = required(req.key_id, "externalKeyId")?;
    let meta = cx.keys.resolve(&key_id)?;
    cx.authorize_with(
        Action::DescribeKey,
        &meta,
        None,
        Some(req.metadata.for_policy()),
    )?;
    Ok(XksKeyMetadataResponse {
        key_spec: "AES_256",
        key_usage: req.usage.names(),
        key_status: match meta.state {
            KeyState::Enabled => "ENABLED",
            KeyState::Disabled | KeyState::PendingDeletion => "DISABLED",
        },
    })
}

/// The deep health check: a round trip under the probe key's current version through the whole
/// backend stack (breaker, retries, faults), reused for `health::TTL` like KMS v2 `Status`. The
/// spec excludes it from secondary authorization, so no key policy is evaluated; the caller was
/// authenticated and rate limited like any other.
pub(super) async fn health(
    cx: &mut Cx<'_>,
    req: XksHealthRequest,
) -> Result<XksHealthResponse, KmsError> {
    let backend = cx.keys.backend();
    let status = match probe(cx, req.probe_key_id.as_deref()).await {
        Ok(()) => "ACTIVE",
        Err(e) if e.kind() == ErrorKind::Throttling => {
            tracing::warn!(error = %e, "XKS health: the backend throttles");
            "DEGRADED"
        }
        Err(e) => {
            tracing::warn!(error = %e, cause = ?std::error::Error::source(&e), "XKS health: the backend cannot serve");
            "UNAVAILABLE"
        }
    };
    Ok(XksHealthResponse {
        backend: backend.name(),
        health_status: status,
    })
}

async fn probe(cx: &mut Cx<'_>, key_id: Option<&str>) -> Result<(), KmsError> {
    let key_id = key_id.ok_or_else(|| {
        KmsError::new(
            ErrorKind::InvalidState,
            "no key for the XKS health check is configured",
        )
    })?;
    let meta = cx.keys.resolve(key_id)?;
    require_enabled(cx.keys, &meta)?;
    let version = meta.current_version();
    super::status::memoized_round_trip(cx, &meta, version).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn associated_data_has_the_spec_layout() {
        let aad = backend_aad(b"abc", &metadata(7)).unwrap();
        assert_eq!(aad, [0, 3, b'a', b'b', b'c', 5, 1, 0, 0, 0, 7]);
        assert_eq!(backend_aad(b"", b"").unwrap(), [0, 0, 0]);
        assert!(backend_aad(&[0; MAX_AAD + 1], b"").is_err());
        // Moving bytes from the AAD into the metadata changes the associated data.
        assert_ne!(
            backend_aad(b"ab", b"c").unwrap(),
            backend_aad(b"a", b"bc").unwrap()
        );
        // Never a sidecar blob's: those begin with "KS" (0x4B53 > MAX_AAD).
        assert!(usize::from(u16::from_be_bytes([b'K', b'S'])) > MAX_AAD);
    }

    #[test]
    fn metadata_round_trips_and_rejects_foreign_bytes() {
        assert_eq!(version_of(&metadata(42)).unwrap(), 42);
        for bad in [&b""[..], b"\x02\0\0\0\x01", b"\x01\0\0\0", b"key_version=1"] {
            assert_eq!(
                version_of(bad).unwrap_err().kind(),
                ErrorKind::InvalidCiphertext
            );
        }
    }
}
