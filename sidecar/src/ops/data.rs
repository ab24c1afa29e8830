//! Cryptographic operations: Encrypt, Decrypt, ReEncrypt, GenerateDataKey(WithoutPlaintext) and
//! GenerateRandom. All ciphertexts use the self-describing format in `keys::ciphertext`.

use std::sync::Arc;

use super::{KeyUse, in_range, require_enabled, required};
use crate::backend::KeyRef;
use crate::keys::ciphertext;
use crate::keys::{KeyMeta, KeyStore};
use crate::protocol::shapes::*;
use crate::protocol::{Blob, EncryptionContext, ErrorKind, KmsError, SecretBlob};

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

/// Encrypts `plaintext` under the current version of `meta`, returning the complete blob.
async fn seal(
    keys: &KeyStore,
    meta: &KeyMeta,
    context: &EncryptionContext,
    plaintext: &[u8],
) -> Result<(Vec<u8>, u32), KmsError> {
    let version = meta.current_version();
    let mut blob = ciphertext::encode_header(&meta.id, version);
    let aad = ciphertext::aad(&blob, context);
    let sealed = keys
        .backend()
        .encrypt(
            KeyRef {
                key_id: &meta.id,
                version,
            },
            &aad,
            plaintext,
        )
        .await?;
    blob.extend_from_slice(&sealed);
    Ok((blob, version))
}

/// Decrypts a blob, enforcing the key-state rules and an optional expected key.
async fn open(
    keys: &KeyStore,
    blob: &[u8],
    context: &EncryptionContext,
    expected: Option<&str>,
) -> Result<(Arc<KeyMeta>, SecretBlob, KeyUse), KmsError> {
    check_length(blob.len(), MAX_CIPHERTEXT, "ciphertextBlob")?;
    let parsed = ciphertext::parse(blob)?;
    let meta = keys
        .snapshot()
        .keys
        .get(parsed.header.key_id)
        .cloned()
        .ok_or_else(ciphertext::invalid)?;
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
    let aad = ciphertext::aad(parsed.header_bytes, context);
    let plaintext = keys
        .backend()
        .decrypt(
            KeyRef {
                key_id: &meta.id,
                version: parsed.header.version,
            },
            &aad,
            parsed.sealed,
        )
        .await?;
    let used = KeyUse {
        key_id: meta.id.clone(),
        version: parsed.header.version,
    };
    Ok((meta, SecretBlob(plaintext), used))
}

pub(super) async fn encrypt(
    keys: &KeyStore,
    req: EncryptRequest,
) -> Result<(EncryptResponse, KeyUse), KmsError> {
    let key_id = required(req.key_id, "keyId")?;
    let plaintext = required(req.plaintext, "plaintext")?;
    check_length(plaintext.as_slice().len(), MAX_PLAINTEXT, "plaintext")?;
    check_algorithm(req.encryption_algorithm.as_deref(), "encryptionAlgorithm")?;
    let meta = keys.resolve(&key_id)?;
    require_enabled(keys, &meta)?;
    let context = req.encryption_context.unwrap_or_default();
    let (blob, version) = seal(keys, &meta, &context, plaintext.as_slice()).await?;
    let response = EncryptResponse {
        ciphertext_blob: Blob(blob),
        key_id: keys.key_arn(&meta.id),
        encryption_algorithm: ALGORITHM,
    };
    Ok((response, KeyUse::of(&meta, version)))
}

pub(super) async fn decrypt(
    keys: &KeyStore,
    req: DecryptRequest,
) -> Result<(DecryptResponse, KeyUse), KmsError> {
    let blob = required(req.ciphertext_blob, "ciphertextBlob")?;
    check_algorithm(req.encryption_algorithm.as_deref(), "encryptionAlgorithm")?;
    let context = req.encryption_context.unwrap_or_default();
    let (meta, plaintext, used) = open(keys, &blob.0, &context, req.key_id.as_deref()).await?;
    let response = DecryptResponse {
        key_id: keys.key_arn(&meta.id),
        plaintext,
        encryption_algorithm: ALGORITHM,
    };
    Ok((response, used))
}

pub(super) async fn re_encrypt(
    keys: &KeyStore,
    req: ReEncryptRequest,
) -> Result<(ReEncryptResponse, KeyUse), KmsError> {
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
    let dest = keys.resolve(&destination)?;
    let source_context = req.source_encryption_context.unwrap_or_default();
    let (source, plaintext, _) =
        open(keys, &blob.0, &source_context, req.source_key_id.as_deref()).await?;
    require_enabled(keys, &dest)?;
    let dest_context = req.destination_encryption_context.unwrap_or_default();
    let (blob, version) = seal(keys, &dest, &dest_context, plaintext.as_slice()).await?;
    let response = ReEncryptResponse {
        ciphertext_blob: Blob(blob),
        source_key_id: keys.key_arn(&source.id),
        key_id: keys.key_arn(&dest.id),
        source_encryption_algorithm: ALGORITHM,
        destination_encryption_algorithm: ALGORITHM,
    };
    Ok((response, KeyUse::of(&dest, version)))
}

pub(super) async fn generate_data_key(
    keys: &KeyStore,
    req: GenerateDataKeyRequest,
    with_plaintext: bool,
) -> Result<(GenerateDataKeyResponse, KeyUse), KmsError> {
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
    let meta = keys.resolve(&key_id)?;
    require_enabled(keys, &meta)?;
    let data_key = keys.backend().random(len).await?;
    let context = req.encryption_context.unwrap_or_default();
    let (blob, version) = seal(keys, &meta, &context, &data_key).await?;
    let response = GenerateDataKeyResponse {
        ciphertext_blob: Blob(blob),
        plaintext: with_plaintext.then(|| SecretBlob(data_key)),
        key_id: keys.key_arn(&meta.id),
    };
    Ok((response, KeyUse::of(&meta, version)))
}

pub(super) async fn generate_random(
    keys: &KeyStore,
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
        plaintext: SecretBlob(keys.backend().random(n as usize).await?),
    })
}
