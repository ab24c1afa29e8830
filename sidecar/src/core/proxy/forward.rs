//! One upstream call per KMS operation: the typed request goes to the upstream through
//! `aws-sdk-kms`, and its answer comes back as the core's typed reply, with the upstream's key ids,
//! ARNs and ciphertexts unchanged. Every call runs inside the proxy's outbound limits (retries with
//! backoff, retry budget, outbound budget, circuit breaker: `limits/resilient.rs`); CreateKey, whose
//! outcome is unknown after a timeout, is attempted once.
//!
//! Validation is the upstream's: members go up as they came, so the caller sees the upstream's own
//! `ValidationException`s. Only what the sidecar must read itself (the ciphertext for the cache, the
//! key for local authorization) is checked here.

use std::collections::HashMap;
use std::future::Future;

use aws_sdk_kms::error::{ProvideErrorMetadata, SdkError};

use aws_sdk_kms::primitives::{Blob as SdkBlob, DateTime};
use aws_sdk_kms::types::{
    DataKeySpec, EncryptionAlgorithmSpec, KeyManagerType, KeyMetadata, KeySpec, KeyState,
    KeyUsageType, OriginType,
};
use zeroize::Zeroizing;

use super::Proxy;
use crate::backend::BackendError;
use crate::backend::remote::{failure, missing};
use crate::core::model::*;
use crate::kms::{EncryptionContext, Timestamp};

type Ctx = Option<HashMap<String, String>>;

fn ctx(c: &EncryptionContext) -> Ctx {
    (!c.is_empty()).then(|| c.iter().map(|(k, v)| (k.clone(), v.clone())).collect())
}

fn ts(d: Option<&DateTime>) -> Timestamp {
    d.map_or(0.0, DateTime::as_secs_f64)
}

/// One of an SDK enum's known values, as the `'static` string the reply types hold; a value this
/// SDK does not know is passed on as the empty string rather than failing the call.
fn known(value: &str, values: &'static [&'static str]) -> &'static str {
    values.iter().copied().find(|v| *v == value).unwrap_or("")
}

fn algorithm(a: Option<&EncryptionAlgorithmSpec>) -> &'static str {
    known(
        a.map_or("SYMMETRIC_DEFAULT", |a| a.as_str()),
        EncryptionAlgorithmSpec::values(),
    )
}

/// The upstream's key metadata as the reply type.
pub(super) fn metadata(m: KeyMetadata) -> KeyMetadataOut {
    KeyMetadataOut {
        aws_account_id: m.aws_account_id.clone().unwrap_or_default(),
        arn: m.arn.clone().unwrap_or_default(),
        creation_date: ts(m.creation_date()),
        enabled: m.enabled,
        description: m.description.clone().unwrap_or_default(),
        key_usage: known(
            m.key_usage.as_ref().map_or("", |v| v.as_str()),
            KeyUsageType::values(),
        ),
        key_state: known(
            m.key_state.as_ref().map_or("", |v| v.as_str()),
            KeyState::values(),
        ),
        deletion_date: m.deletion_date().map(|d| d.as_secs_f64()),
        pending_deletion_window_in_days: m
            .pending_deletion_window_in_days
            .and_then(|d| u32::try_from(d).ok()),
        origin: known(
            m.origin.as_ref().map_or("", |v| v.as_str()),
            OriginType::values(),
        ),
        key_manager: known(
            m.key_manager.as_ref().map_or("", |v| v.as_str()),
            KeyManagerType::values(),
        ),
        // The deprecated member carries the same values as KeySpec for symmetric keys.
        customer_master_key_spec: known(
            m.key_spec.as_ref().map_or("", |v| v.as_str()),
            KeySpec::values(),
        ),
        key_spec: known(
            m.key_spec.as_ref().map_or("", |v| v.as_str()),
            KeySpec::values(),
        ),
        encryption_algorithms: [algorithm(m.encryption_algorithms().first())],
        multi_region: m.multi_region.unwrap_or(false),
        key_id: m.key_id,
    }
}

impl Proxy {
    /// One upstream operation under the outbound limits, its SDK errors classified.
    async fn up<T, E, F, Fut>(
        &self,
        operation: &'static str,
        mut send: F,
    ) -> Result<T, BackendError>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, SdkError<E>>>,
        E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
    {
        // Boxed: SDK futures are large, and a proxy call holds one per operation it can forward.
        Box::pin(self.limits.call(|| {
            let sent = Box::pin(send());
            async move { sent.await.map_err(|e| failure(operation, e)) }
        }))
        .await
    }

    /// [`up`](Self::up) with one attempt only.
    async fn up_once<T, E>(
        &self,
        operation: &'static str,
        sent: impl Future<Output = Result<T, SdkError<E>>>,
    ) -> Result<T, BackendError>
    where
        E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
    {
        let sent = Box::pin(sent);
        Box::pin(
            self.limits
                .once(async move { sent.await.map_err(|e| failure(operation, e)) }),
        )
        .await
    }

    pub(super) async fn encrypt(
        &self,
        key_id: &str,
        plaintext: &[u8],
        context: &EncryptionContext,
        algo: Option<&str>,
    ) -> Result<EncryptResponse, BackendError> {
        let out = self
            .up("Encrypt", || {
                self.client
                    .encrypt()
                    .key_id(key_id)
                    .plaintext(SdkBlob::new(plaintext))
                    .set_encryption_context(ctx(context))
                    .set_encryption_algorithm(algo.map(EncryptionAlgorithmSpec::from))
                    .send()
            })
            .await?;
        Ok(EncryptResponse {
            encryption_algorithm: algorithm(out.encryption_algorithm()),
            key_id: out.key_id.ok_or_else(|| missing("Encrypt", "KeyId"))?,
            ciphertext_blob: Blob(
                out.ciphertext_blob
                    .ok_or_else(|| missing("Encrypt", "CiphertextBlob"))?
                    .into_inner(),
            ),
        })
    }

    /// Decrypt at the upstream: the plaintext and the ARN of the key it was under.
    pub(super) async fn decrypt(
        &self,
        blob: &[u8],
        context: &EncryptionContext,
        key_id: Option<&str>,
        algo: Option<&str>,
    ) -> Result<(Zeroizing<Vec<u8>>, String), BackendError> {
        let out = self
            .up("Decrypt", || {
                self.client
                    .decrypt()
                    .ciphertext_blob(SdkBlob::new(blob))
                    .set_encryption_context(ctx(context))
                    .set_key_id(key_id.map(str::to_string))
                    .set_encryption_algorithm(algo.map(EncryptionAlgorithmSpec::from))
                    .send()
            })
            .await?;
        let plaintext = out
            .plaintext
            .map(|p| Zeroizing::new(p.into_inner()))
            .ok_or_else(|| missing("Decrypt", "Plaintext"))?;
        let key = out.key_id.ok_or_else(|| missing("Decrypt", "KeyId"))?;
        Ok((plaintext, key))
    }

    pub(super) async fn re_encrypt(
        &self,
        r: &ReEncryptRequest,
        blob: &[u8],
        destination: &str,
    ) -> Result<ReEncryptResponse, BackendError> {
        let empty = EncryptionContext::new();
        let out = self
            .up("ReEncrypt", || {
                self.client
                    .re_encrypt()
                    .ciphertext_blob(SdkBlob::new(blob))
                    .set_source_encryption_context(ctx(r
                        .source_encryption_context
                        .as_ref()
                        .unwrap_or(&empty)))
                    .set_source_key_id(r.source_key_id.clone())
                    .destination_key_id(destination)
                    .set_destination_encryption_context(ctx(r
                        .destination_encryption_context
                        .as_ref()
                        .unwrap_or(&empty)))
                    .set_source_encryption_algorithm(
                        r.source_encryption_algorithm
                            .as_deref()
                            .map(EncryptionAlgorithmSpec::from),
                    )
                    .set_destination_encryption_algorithm(
                        r.destination_encryption_algorithm
                            .as_deref()
                            .map(EncryptionAlgorithmSpec::from),
                    )
                    .send()
            })
            .await?;
        Ok(ReEncryptResponse {
            source_encryption_algorithm: algorithm(out.source_encryption_algorithm()),
            destination_encryption_algorithm: algorithm(out.destination_encryption_algorithm()),
            source_key_id: out
                .source_key_id
                .ok_or_else(|| missing("ReEncrypt", "SourceKeyId"))?,
            key_id: out.key_id.ok_or_else(|| missing("ReEncrypt", "KeyId"))?,
            ciphertext_blob: Blob(
                out.ciphertext_blob
                    .ok_or_else(|| missing("ReEncrypt", "CiphertextBlob"))?
                    .into_inner(),
            ),
        })
    }

    pub(super) async fn generate_data_key(
        &self,
        r: &GenerateDataKeyRequest,
        key_id: &str,
        context: &EncryptionContext,
        with_plaintext: bool,
    ) -> Result<GenerateDataKeyResponse, BackendError> {
        let bytes = r.number_of_bytes.and_then(|n| i32::try_from(n).ok());
        let spec = r.key_spec.as_deref().map(DataKeySpec::from);
        if with_plaintext {
            let out = self
                .up("GenerateDataKey", || {
                    self.client
                        .generate_data_key()
                        .key_id(key_id)
                        .set_encryption_context(ctx(context))
                        .set_number_of_bytes(bytes)
                        .set_key_spec(spec.clone())
                        .send()
                })
                .await?;
            Ok(GenerateDataKeyResponse {
                plaintext: Some(SecretBlob(Zeroizing::new(
                    out.plaintext
                        .ok_or_else(|| missing("GenerateDataKey", "Plaintext"))?
                        .into_inner(),
                ))),
                key_id: out
                    .key_id
                    .ok_or_else(|| missing("GenerateDataKey", "KeyId"))?,
                ciphertext_blob: Blob(
                    out.ciphertext_blob
                        .ok_or_else(|| missing("GenerateDataKey", "CiphertextBlob"))?
                        .into_inner(),
                ),
            })
        } else {
            let out = self
                .up("GenerateDataKeyWithoutPlaintext", || {
                    self.client
                        .generate_data_key_without_plaintext()
                        .key_id(key_id)
                        .set_encryption_context(ctx(context))
                        .set_number_of_bytes(bytes)
                        .set_key_spec(spec.clone())
                        .send()
                })
                .await?;
            Ok(GenerateDataKeyResponse {
                plaintext: None,
                key_id: out
                    .key_id
                    .ok_or_else(|| missing("GenerateDataKeyWithoutPlaintext", "KeyId"))?,
                ciphertext_blob: Blob(
                    out.ciphertext_blob
                        .ok_or_else(|| {
                            missing("GenerateDataKeyWithoutPlaintext", "CiphertextBlob")
                        })?
                        .into_inner(),
                ),
            })
        }
    }

    pub(super) async fn generate_random(
        &self,
        r: &GenerateRandomRequest,
    ) -> Result<GenerateRandomResponse, BackendError> {
        let n = r.number_of_bytes.and_then(|n| i32::try_from(n).ok());
        let out = self
            .up("GenerateRandom", || {
                self.client
                    .generate_random()
                    .set_number_of_bytes(n)
                    .set_custom_key_store_id(r.custom_key_store_id.clone())
                    .send()
            })
            .await?;
        Ok(GenerateRandomResponse {
            plaintext: SecretBlob(Zeroizing::new(
                out.plaintext
                    .ok_or_else(|| missing("GenerateRandom", "Plaintext"))?
                    .into_inner(),
            )),
        })
    }

    pub(super) async fn create_key(
        &self,
        r: &CreateKeyRequest,
    ) -> Result<KeyMetadataResponse, BackendError> {
        let out = self
            .up_once(
                "CreateKey",
                self.client
                    .create_key()
                    .set_description(r.description.clone())
                    .set_policy(r.policy.clone())
                    .set_key_usage(r.key_usage.as_deref().map(KeyUsageType::from))
                    .set_key_spec(r.key_spec.as_deref().map(KeySpec::from))
                    .set_origin(r.origin.as_deref().map(OriginType::from))
                    .set_multi_region(r.multi_region)
                    .send(),
            )
            .await?;
        Ok(KeyMetadataResponse {
            key_metadata: metadata(
                out.key_metadata
                    .ok_or_else(|| missing("CreateKey", "KeyMetadata"))?,
            ),
        })
    }

    pub(super) async fn describe_key(
        &self,
        key_id: &str,
    ) -> Result<KeyMetadataResponse, BackendError> {
        let out = self
            .up("DescribeKey", || {
                self.client.describe_key().key_id(key_id).send()
            })
            .await?;
        Ok(KeyMetadataResponse {
            key_metadata: metadata(
                out.key_metadata
                    .ok_or_else(|| missing("DescribeKey", "KeyMetadata"))?,
            ),
        })
    }

    pub(super) async fn list_keys(
        &self,
        r: &ListRequest,
    ) -> Result<ListKeysResponse, BackendError> {
        let limit = r.limit.and_then(|n| i32::try_from(n).ok());
        let out = self
            .up("ListKeys", || {
                self.client
                    .list_keys()
                    .set_limit(limit)
                    .set_marker(r.marker.clone())
                    .send()
            })
            .await?;
        Ok(ListKeysResponse {
            keys: out
                .keys()
                .iter()
                .map(|k| KeyListEntry {
                    key_id: k.key_id.clone().unwrap_or_default(),
                    key_arn: k.key_arn.clone().unwrap_or_default(),
                })
                .collect(),
            truncated: out.truncated,
            next_marker: out.next_marker,
        })
    }

    pub(super) async fn list_aliases(
        &self,
        key_id: Option<&str>,
        limit: Option<i64>,
        marker: Option<&str>,
    ) -> Result<ListAliasesResponse, BackendError> {
        let limit = limit.and_then(|n| i32::try_from(n).ok());
        let out = self
            .up("ListAliases", || {
                self.client
                    .list_aliases()
                    .set_key_id(key_id.map(str::to_string))
                    .set_limit(limit)
                    .set_marker(marker.map(str::to_string))
                    .send()
            })
            .await?;
        Ok(ListAliasesResponse {
            aliases: out
                .aliases()
                .iter()
                .map(|a| AliasListEntry {
                    alias_name: a.alias_name.clone().unwrap_or_default(),
                    alias_arn: a.alias_arn.clone().unwrap_or_default(),
                    target_key_id: a.target_key_id.clone().unwrap_or_default(),
                    creation_date: ts(a.creation_date()),
                    last_updated_date: ts(a.last_updated_date()),
                })
                .collect(),
            truncated: out.truncated,
            next_marker: out.next_marker,
        })
    }

    pub(super) async fn get_key_rotation_status(
        &self,
        key_id: &str,
    ) -> Result<GetKeyRotationStatusResponse, BackendError> {
        let out = self
            .up("GetKeyRotationStatus", || {
                self.client.get_key_rotation_status().key_id(key_id).send()
            })
            .await?;
        Ok(GetKeyRotationStatusResponse {
            key_rotation_enabled: out.key_rotation_enabled,
            rotation_period_in_days: out
                .rotation_period_in_days
                .and_then(|d| u32::try_from(d).ok()),
            next_rotation_date: out.next_rotation_date().map(|d| d.as_secs_f64()),
            on_demand_rotation_start_date: out
                .on_demand_rotation_start_date()
                .map(|d| d.as_secs_f64()),
            key_id: out.key_id.unwrap_or_else(|| key_id.to_string()),
        })
    }

    /// The key-state and alias calls that answer nothing (or just the key id).
    pub(super) async fn manage(
        &self,
        request: &crate::core::Request,
    ) -> Result<Option<crate::core::Response>, BackendError> {
        use crate::core::{Request as R, Response as A};
        let c = &self.client;
        Ok(Some(match request {
            R::EnableKey(r) => {
                let id = r.key_id.clone();
                self.up("EnableKey", || c.enable_key().set_key_id(id.clone()).send())
                    .await?;
                A::EnableKey(Empty {})
            }
            R::DisableKey(r) => {
                let id = r.key_id.clone();
                self.up("DisableKey", || {
                    c.disable_key().set_key_id(id.clone()).send()
                })
                .await?;
                A::DisableKey(Empty {})
            }
            R::EnableKeyRotation(r) => {
                let days = r
                    .rotation_period_in_days
                    .and_then(|d| i32::try_from(d).ok());
                self.up("EnableKeyRotation", || {
                    c.enable_key_rotation()
                        .set_key_id(r.key_id.clone())
                        .set_rotation_period_in_days(days)
                        .send()
                })
                .await?;
                A::EnableKeyRotation(Empty {})
            }
            R::DisableKeyRotation(r) => {
                self.up("DisableKeyRotation", || {
                    c.disable_key_rotation().set_key_id(r.key_id.clone()).send()
                })
                .await?;
                A::DisableKeyRotation(Empty {})
            }
            R::CancelKeyDeletion(r) => {
                let out = self
                    .up("CancelKeyDeletion", || {
                        c.cancel_key_deletion().set_key_id(r.key_id.clone()).send()
                    })
                    .await?;
                A::CancelKeyDeletion(KeyIdResponse {
                    key_id: out.key_id.unwrap_or_default(),
                })
            }
            R::ScheduleKeyDeletion(r) => {
                let days = r.pending_window_in_days.and_then(|d| i32::try_from(d).ok());
                let out = self
                    .up("ScheduleKeyDeletion", || {
                        c.schedule_key_deletion()
                            .set_key_id(r.key_id.clone())
                            .set_pending_window_in_days(days)
                            .send()
                    })
                    .await?;
                A::ScheduleKeyDeletion(ScheduleKeyDeletionResponse {
                    key_id: out.key_id.clone().unwrap_or_default(),
                    deletion_date: ts(out.deletion_date()),
                    key_state: known(
                        out.key_state.as_ref().map_or("", |v| v.as_str()),
                        KeyState::values(),
                    ),
                    pending_window_in_days: out
                        .pending_window_in_days
                        .and_then(|d| u32::try_from(d).ok())
                        .unwrap_or_default(),
                })
            }
            R::CreateAlias(r) => {
                self.up("CreateAlias", || {
                    c.create_alias()
                        .set_alias_name(r.alias_name.clone())
                        .set_target_key_id(r.target_key_id.clone())
                        .send()
                })
                .await?;
                A::CreateAlias(Empty {})
            }
            R::UpdateAlias(r) => {
                self.up("UpdateAlias", || {
                    c.update_alias()
                        .set_alias_name(r.alias_name.clone())
                        .set_target_key_id(r.target_key_id.clone())
                        .send()
                })
                .await?;
                A::UpdateAlias(Empty {})
            }
            R::DeleteAlias(r) => {
                self.up("DeleteAlias", || {
                    c.delete_alias().set_alias_name(r.alias_name.clone()).send()
                })
                .await?;
                A::DeleteAlias(Empty {})
            }
            _ => return Ok(None),
        }))
    }
}
