//! The KMS calls the end-to-end tests make over and over through the official SDK (create a key,
//! encrypt, generate a data key), written once so that a test shows what it checks rather than the
//! builder chain. Each panics on failure except [`try_encrypt`], whose answer the caller checks.

/// Sends a CreateKey the caller has filled in (a policy, a description) and returns the new key's
/// id; panics on failure.
pub async fn new_key_from(
    create: aws_sdk_kms::operation::create_key::builders::CreateKeyFluentBuilder,
) -> String {
    create
        .send()
        .await
        .expect("CreateKey")
        .key_metadata()
        .expect("KeyMetadata")
        .key_id()
        .to_string()
}

/// Encrypts `plaintext` under `key` with the SDK: the ciphertext; panics on failure.
pub async fn encrypt(
    kms: &aws_sdk_kms::Client,
    key: &str,
    plaintext: &[u8],
) -> aws_sdk_kms::primitives::Blob {
    encrypt_in(kms, key, plaintext, &[]).await
}

/// Encrypts `plaintext` under `key` with the SDK and returns what it answered, for tests that
/// expect an error (`error_code(try_encrypt(..).await)`) or only load the sidecar.
pub async fn try_encrypt(
    kms: &aws_sdk_kms::Client,
    key: &str,
    plaintext: &[u8],
) -> Result<
    aws_sdk_kms::operation::encrypt::EncryptOutput,
    aws_sdk_kms::error::SdkError<
        aws_sdk_kms::operation::encrypt::EncryptError,
        aws_sdk_kms::config::http::HttpResponse,
    >,
> {
    kms.encrypt()
        .key_id(key)
        .plaintext(aws_sdk_kms::primitives::Blob::new(plaintext))
        .send()
        .await
}

/// Like [`encrypt`], with the encryption context `context` (pairs of key and value).
pub async fn encrypt_in(
    kms: &aws_sdk_kms::Client,
    key: &str,
    plaintext: &[u8],
    context: &[(&str, &str)],
) -> aws_sdk_kms::primitives::Blob {
    let mut call = kms
        .encrypt()
        .key_id(key)
        .plaintext(aws_sdk_kms::primitives::Blob::new(plaintext));
    for (k, v) in context {
        call = call.encryption_context(*k, *v);
    }
    call.send()
        .await
        .expect("Encrypt")
        .ciphertext_blob
        .expect("CiphertextBlob")
}

/// GenerateDataKey (AES-256) under `key` with the SDK and the encryption context `context`;
/// panics on failure.
pub async fn data_key_in(
    kms: &aws_sdk_kms::Client,
    key: &str,
    context: &[(&str, &str)],
) -> aws_sdk_kms::operation::generate_data_key::GenerateDataKeyOutput {
    let mut call = kms
        .generate_data_key()
        .key_id(key)
        .key_spec(aws_sdk_kms::types::DataKeySpec::Aes256);
    for (k, v) in context {
        call = call.encryption_context(*k, *v);
    }
    call.send().await.expect("GenerateDataKey")
}

/// Creates a key with `policy` and points `alias` at it; returns the key's metadata. Panics on
/// failure.
pub async fn key_with_alias(
    kms: &aws_sdk_kms::Client,
    policy: &str,
    alias: &str,
) -> aws_sdk_kms::types::KeyMetadata {
    let meta = kms
        .create_key()
        .policy(policy)
        .send()
        .await
        .expect("CreateKey")
        .key_metadata
        .expect("metadata");
    kms.create_alias()
        .alias_name(alias)
        .target_key_id(meta.key_id())
        .send()
        .await
        .expect("CreateAlias");
    meta
}
