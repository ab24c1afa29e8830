//! Cryptographic operations: Encrypt, Decrypt, ReEncrypt, GenerateDataKey(WithoutPlaintext) and
//! GenerateRandom. All ciphertexts use the self-describing format in `keys::ciphertext`.

use std::sync::Arc;
use std::time::Instant;

use super::{Cx, in_range, require_enabled, required};
use crate::auth::policy::Action;
use crate::backend::KeyRef;
use crate::cache::CacheOutcome;
use crate::cache::pool::{DataKeyPool, POOLED_LEN, Pooled};
use crate::cache::reuse::DataKeyReuse;
use crate::core::model::*;
use crate::core::model::{Blob, SecretBlob};
use crate::keys::ciphertext;
use crate::keys::{KeyMeta, KeyStore};
use crate::kms::{EncryptionContext, ErrorKind, KmsError};

const ALGORITHM: &str = "SYMMETRIC_DEFAULT";
const MAX_PLAINTEXT: usize = 4096;
const MAX_CIPHERTEXT: usize = 6144;

/// Checks an `EncryptionAlgorithm` member: only SYMMETRIC_DEFAULT fits a symmetric key.
fn check_algorithm(value: Option<&str>, member: &str) -> Result<(), KmsError> {
    match value {
        None | Some(ALGORITHM) => Ok(()),
        Some("RSAES_OAEP_SHA_1" | "RSAES_OAEP_SHA_256" | "SM2PKE") => Err(KmsError::new(
            ErrorKind::InvalidKeyUsage,
            "the requested encryption algorithm is not valid for a symmetric encryption key",
        )),
        Some(_) => Err(KmsError::validation(format!(
            "1 validation error detected: Value at '{member}' failed to satisfy constraint: Member must satisfy enum value set: [SYMMETRIC_DEFAULT, RSAES_OAEP_SHA_1, RSAES_OAEP_SHA_256, SM2PKE]"
        ))),
    }
}

fn check_length(len: usize, max: usize, member: &str) -> Result<(), KmsError> {
    if len == 0 || len > max {
        return Err(KmsError::validation(format!(
            "1 validation error detected: Value at '{member}' failed to satisfy constraint: Member must have length between 1 and {max}"
        )));
    }
    Ok(())
}

/// Encrypts `plaintext` under the current version of `meta`: the complete blob and the version.
async fn seal_raw(
    keys: &KeyStore,
    meta: &KeyMeta,
    context: &EncryptionContext,
    plaintext: &[u8],
) -> Result<(Vec<u8>, u32), KmsError> {
    let version = meta.current_version();
    let mut blob = ciphertext::encode_header(&meta.id, version);
    let aad = ciphertext::aad(&blob, context);
    let key = KeyRef {
        key_id: &meta.id,
        version,
    };
    let sealed = keys.backend().encrypt(key, &aad, plaintext).await?;
    blob.extend_from_slice(&sealed);
    Ok((blob, version))
}

/// [`seal_raw`], recording the version used.
async fn seal(
    cx: &mut Cx<'_>,
    meta: &KeyMeta,
    context: &EncryptionContext,
    plaintext: &[u8],
) -> Result<Vec<u8>, KmsError> {
    let (blob, version) = seal_raw(cx.keys, meta, context, plaintext).await?;
    cx.obs.key_version = Some(version);
    Ok(blob)
}

/// Fills `key`'s data-key pool in the background (fresh keys for the empty context).
fn spawn_refill(keys: Arc<KeyStore>, pool: Arc<DataKeyPool>, meta: Arc<KeyMeta>) {
    tokio::spawn(async move {
        let wanted = pool.wanted(&meta.id);
        let mut made = Vec::with_capacity(wanted);
        for _ in 0..wanted {
            let made_one = async {
                let plaintext = keys.backend().random(POOLED_LEN).await?;
                let (blob, version) =
                    seal_raw(&keys, &meta, &EncryptionContext::new(), &plaintext).await?;
                Ok::<_, KmsError>(Pooled {
                    plaintext,
                    blob,
                    version,
                })
            };
            match made_one.await {
                Ok(p) => made.push(p),
                Err(e) => {
                    tracing::warn!(key = %meta.id, error = %e, "data-key pool refill stopped early");
                    break;
                }
            }
        }
        pool.put(&meta.id, made);
        pool.refill_done(&meta.id);
    });
}

/// Decrypts a blob: authorizes `action` on the key the blob names, then enforces the optional
/// expected key and the key-state rules.
async fn open(
    cx: &mut Cx<'_>,
    action: Action,
    blob: &[u8],
    context: &EncryptionContext,
    expected: Option<&str>,
) -> Result<(Arc<KeyMeta>, SecretBlob), KmsError> {
    let keys = cx.keys;
    check_length(blob.len(), MAX_CIPHERTEXT, "ciphertextBlob")?;
    let parsed = ciphertext::parse(blob)?;
    let meta = keys
        .snapshot()
        .keys
        .get(parsed.header.key_id)
        .cloned()
        .ok_or_else(ciphertext::invalid)?;
    cx.authorize(action, &meta, Some(context))?;
    if let Some(expected) = expected
        && keys.resolve(expected)?.id != meta.id
    {
        return Err(KmsError::new(
            ErrorKind::IncorrectKey,
            "The key ID in the request does not identify a CMK that can perform this operation.",
        ));
    }
    require_enabled(keys, &meta)?;
    if !meta.has_version(parsed.header.version) {
        return Err(ciphertext::invalid());
    }
    let version = parsed.header.version;
    let load = async {
        // Built only on a miss: a hit needs no associated data.
        let aad = ciphertext::aad(parsed.header_bytes, context);
        let key = KeyRef {
            key_id: &meta.id,
            version,
        };
        keys.backend()
            .decrypt(key, &aad, parsed.sealed)
            .await
            .map_err(KmsError::from)
    };
    let cache = &cx.kms.cache;
    let cache_key = if cache.enabled() {
        crate::cache::cache_key(blob, context, &meta.id, ALGORITHM)
    } else {
        [0; 32]
    };
    let (plaintext, outcome) = cache
        .get_or_load(cache_key, &meta.id, version, cx.kms.backend_failing(), load)
        .await?;
    cx.obs.cache = outcome;
    cx.obs.key_version = Some(version);
    Ok((meta, SecretBlob(plaintext)))
}

pub(super) async fn encrypt(
    cx: &mut Cx<'_>,
    req: EncryptRequest,
) -> Result<EncryptResponse, KmsError> {
    let key_id = required(req.key_id, "keyId")?;
    let plaintext = required(req.plaintext, "plaintext")?;
    check_length(plaintext.as_slice().len(), MAX_PLAINTEXT, "plaintext")?;
    check_algorithm(req.encryption_algorithm.as_deref(), "encryptionAlgorithm")?;
    let context = req.encryption_context.unwrap_or_default();
    let meta = cx.check(&key_id, Some(&context))?;
    require_enabled(cx.keys, &meta)?;
    let blob = seal(cx, &meta, &context, plaintext.as_slice()).await?;
    cx.obs.context = Some(context);
    Ok(EncryptResponse {
        ciphertext_blob: Blob(blob),
        key_id: cx.key_arn(&meta.id),
        encryption_algorithm: ALGORITHM,
    })
}

pub(super) async fn decrypt(
    cx: &mut Cx<'_>,
    req: DecryptRequest,
) -> Result<DecryptResponse, KmsError> {
    let blob = required(req.ciphertext_blob, "ciphertextBlob")?;
    check_algorithm(req.encryption_algorithm.as_deref(), "encryptionAlgorithm")?;
    let context = req.encryption_context.unwrap_or_default();
    let result = open(
        cx,
        Action::Decrypt,
        &blob.0,
        &context,
        req.key_id.as_deref(),
    )
    .await;
    cx.obs.context = Some(context);
    let (meta, plaintext) = result?;
    Ok(DecryptResponse {
        key_id: cx.key_arn(&meta.id),
        plaintext,
        encryption_algorithm: ALGORITHM,
    })
}

pub(super) async fn re_encrypt(
    cx: &mut Cx<'_>,
    req: ReEncryptRequest,
) -> Result<ReEncryptResponse, KmsError> {
    let blob = required(req.ciphertext_blob, "ciphertextBlob")?;
    let destination = required(req.destination_key_id, "destinationKeyId")?;
    check_algorithm(
        req.source_encryption_algorithm.as_deref(),
        "sourceEncryptionAlgorithm",
    )?;
    check_algorithm(
        req.destination_encryption_algorithm.as_deref(),
        "destinationEncryptionAlgorithm",
    )?;
    let source_context = req.source_encryption_context.unwrap_or_default();
    let dest_context = req.destination_encryption_context.unwrap_or_default();
    let dest = cx.keys.resolve(&destination)?;
    // Both keys' policies must agree: ReEncryptFrom on the source, ReEncryptTo on the destination.
    let (source, plaintext) = open(
        cx,
        Action::ReEncryptFrom,
        &blob.0,
        &source_context,
        req.source_key_id.as_deref(),
    )
    .await?;
    cx.authorize(Action::ReEncryptTo, &dest, Some(&dest_context))?;
    require_enabled(cx.keys, &dest)?;
    let blob = seal(cx, &dest, &dest_context, plaintext.as_slice()).await?;
    cx.obs.context = Some(dest_context);
    Ok(ReEncryptResponse {
        ciphertext_blob: Blob(blob),
        source_key_id: cx.keys.key_arn(&source.id),
        key_id: cx.key_arn(&dest.id),
        source_encryption_algorithm: ALGORITHM,
        destination_encryption_algorithm: ALGORITHM,
    })
}

pub(super) async fn generate_data_key(
    cx: &mut Cx<'_>,
    req: GenerateDataKeyRequest,
    with_plaintext: bool,
) -> Result<GenerateDataKeyResponse, KmsError> {
    let key_id = required(req.key_id, "keyId")?;
    let len = match (req.number_of_bytes, req.key_spec.as_deref()) {
        (Some(_), Some(_)) => {
            return Err(KmsError::validation(
                "Please specify either number of bytes or key spec, not both.",
            ));
        }
        (None, None) => {
            return Err(KmsError::validation(
                "Please specify either number of bytes or key spec.",
            ));
        }
        (Some(n), None) => in_range(n, 1, 1024, "numberOfBytes")? as usize,
        (None, Some("AES_256")) => 32,
        (None, Some("AES_128")) => 16,
        (None, Some(_)) => {
            return Err(KmsError::validation(
                "1 validation error detected: Value at 'keySpec' failed to satisfy constraint: Member must satisfy enum value set: [AES_256, AES_128]",
            ));
        }
    };
    let context = req.encryption_context.unwrap_or_default();
    let meta = cx.check(&key_id, Some(&context))?;
    require_enabled(cx.keys, &meta)?;
    // Opt-in reuse (after authorization, like every cached answer): the same principal, context
    // and length get the same data key until its age or use limit.
    let reuse = &cx.kms.reuse;
    let slot = (with_plaintext && reuse.enabled() && {
        let index = cx.keys.snapshot();
        let aliases = index.aliases.iter().filter(|(_, a)| a.target == meta.id);
        reuse.applies(&meta.id, aliases.map(|(name, _)| name.as_str()))
    })
    .then(|| DataKeyReuse::slot(cx.caller.arn, &meta.id, &context, len));
    if let Some(slot) = &slot
        && let Some((plaintext, blob)) = reuse.take(slot, meta.current_version(), Instant::now())
    {
        cx.obs.cache = CacheOutcome::Hit;
        cx.obs.key_version = Some(meta.current_version());
        cx.obs.context = Some(context);
        return Ok(GenerateDataKeyResponse {
            ciphertext_blob: Blob(blob),
            plaintext: Some(SecretBlob(plaintext)),
            key_id: cx.key_arn(&meta.id),
        });
    }
    let mut fresh = None;
    if context.is_empty() && len == POOLED_LEN && cx.kms.pool.enabled() {
        let (taken, refill) = cx.kms.pool.take(&meta.id, meta.current_version());
        if refill {
            spawn_refill(cx.kms.keys.clone(), cx.kms.pool.clone(), meta.clone());
        }
        cx.obs.cache = CacheOutcome::Miss;
        if let Some(pooled) = taken {
            cx.obs.cache = CacheOutcome::Hit;
            cx.obs.key_version = Some(pooled.version);
            fresh = Some((pooled.plaintext, pooled.blob, pooled.version));
        }
    }
    let (data_key, blob, version) = match fresh {
        Some(f) => f,
        None => {
            let data_key = cx.keys.backend().random(len).await?;
            let blob = seal(cx, &meta, &context, &data_key).await?;
            (data_key, blob, meta.current_version())
        }
    };
    if let Some(slot) = slot {
        reuse.put(slot, &meta.id, version, &data_key, &blob, Instant::now());
    }
    cx.obs.context = Some(context);
    Ok(GenerateDataKeyResponse {
        ciphertext_blob: Blob(blob),
        plaintext: with_plaintext.then(|| SecretBlob(data_key)),
        key_id: cx.key_arn(&meta.id),
    })
}

pub(super) async fn generate_random(
    cx: &mut Cx<'_>,
    req: GenerateRandomRequest,
) -> Result<GenerateRandomResponse, KmsError> {
    if req.custom_key_store_id.is_some() {
        return Err(KmsError::new(
            ErrorKind::UnsupportedOperation,
            "custom key stores are not supported",
        ));
    }
    let n = in_range(
        required(req.number_of_bytes, "numberOfBytes")?,
        1,
        1024,
        "numberOfBytes",
    )?;
    Ok(GenerateRandomResponse {
        plaintext: SecretBlob(cx.keys.backend().random(n as usize).await?),
    })
}
