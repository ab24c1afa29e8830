//! Key lifecycle: CreateKey, DescribeKey, ListKeys, Enable/DisableKey, Schedule/CancelKeyDeletion and
//! rotation (Enable/DisableKeyRotation, GetKeyRotationStatus, RotateKeyOnDemand, ListKeyRotations),
//! with the key-state rules KMS applies to each.

use super::{Cx, in_range, page, require_enabled, require_not_pending, required, take_page};
use crate::auth::policy::{self, Policy};
use crate::core::model::*;
use crate::keys::model::days;
use crate::keys::{self, KeyMeta, KeyState, RotationType};
use crate::kms::{ErrorKind, KmsError};

/// The KMS `KeyMetadata` view of a key record.
fn key_metadata(meta: &KeyMeta, arn: String, account: &str) -> KeyMetadataOut {
    KeyMetadataOut {
        aws_account_id: account.to_string(),
        key_id: meta.id.clone(),
        arn,
        creation_date: meta.created,
        enabled: meta.state == KeyState::Enabled,
        description: meta.description.clone(),
        key_usage: "ENCRYPT_DECRYPT",
        key_state: meta.state.as_str(),
        deletion_date: meta.deletion_date,
        pending_deletion_window_in_days: meta.pending_window_days,
        origin: "AWS_KMS",
        key_manager: "CUSTOMER",
        customer_master_key_spec: "SYMMETRIC_DEFAULT",
        key_spec: "SYMMETRIC_DEFAULT",
        encryption_algorithms: ["SYMMETRIC_DEFAULT"],
        multi_region: false,
    }
}

/// KMS allows ten on-demand rotations per key.
const MAX_ON_DEMAND_ROTATIONS: usize = 10;

fn unsupported(what: &str) -> KmsError {
    KmsError::new(
        ErrorKind::UnsupportedOperation,
        format!(
            "{what} is not supported by kms-sidecar: only SYMMETRIC_DEFAULT ENCRYPT_DECRYPT keys with origin AWS_KMS"
        ),
    )
}

fn enum_error(member: &str, allowed: &str) -> KmsError {
    KmsError::validation(format!(
        "1 validation error detected: Value at '{member}' failed to satisfy constraint: Member must satisfy enum value set: [{allowed}]"
    ))
}

const KEY_SPECS: &str = "RSA_2048, RSA_3072, RSA_4096, ECC_NIST_P256, ECC_NIST_P384, ECC_NIST_P521, ECC_SECG_P256K1, SYMMETRIC_DEFAULT, HMAC_224, HMAC_256, HMAC_384, HMAC_512, SM2, ML_DSA_44, ML_DSA_65, ML_DSA_87";

fn check_key_spec(value: Option<&str>, member: &str) -> Result<(), KmsError> {
    match value {
        None | Some("SYMMETRIC_DEFAULT") => Ok(()),
        Some(v) if KEY_SPECS.split(", ").any(|s| s == v) => {
            Err(unsupported(&format!("{member} {v}")))
        }
        Some(_) => Err(enum_error(member, KEY_SPECS)),
    }
}

pub(super) async fn create_key(
    cx: &mut Cx<'_>,
    req: CreateKeyRequest,
) -> Result<KeyMetadataResponse, KmsError> {
    let keys = cx.keys;
    match req.key_usage.as_deref() {
        None | Some("ENCRYPT_DECRYPT") => {}
        Some(v @ ("SIGN_VERIFY" | "GENERATE_VERIFY_MAC" | "KEY_AGREEMENT")) => {
            return Err(unsupported(&format!("KeyUsage {v}")));
        }
        Some(_) => {
            return Err(enum_error(
                "keyUsage",
                "SIGN_VERIFY, ENCRYPT_DECRYPT, GENERATE_VERIFY_MAC, KEY_AGREEMENT",
            ));
        }
    }
    if req.key_spec.is_some() && req.customer_master_key_spec.is_some() {
        return Err(KmsError::validation(
            "You cannot specify KeySpec and CustomerMasterKeySpec in the same request.",
        ));
    }
    check_key_spec(req.key_spec.as_deref(), "keySpec")?;
    check_key_spec(
        req.customer_master_key_spec.as_deref(),
        "customerMasterKeySpec",
    )?;
    match req.origin.as_deref() {
        None | Some("AWS_KMS") => {}
        Some(v @ ("EXTERNAL" | "AWS_CLOUDHSM" | "EXTERNAL_KEY_STORE")) => {
            return Err(unsupported(&format!("Origin {v}")));
        }
        Some(_) => {
            return Err(enum_error(
                "origin",
                "AWS_KMS, EXTERNAL, AWS_CLOUDHSM, EXTERNAL_KEY_STORE",
            ));
        }
    }
    if req.multi_region == Some(true) {
        return Err(unsupported("MultiRegion"));
    }
    if req.custom_key_store_id.is_some() || req.xks_key_id.is_some() {
        return Err(unsupported("a custom key store"));
    }
    cx.require_admin()?;
    let policy = match req.policy {
        Some(text) => {
            Policy::parse(&text)?;
            text
        }
        None => policy::default_policy(&keys.scope().account, cx.caller.arn, &cx.admin_arns()),
    };
    let description = req.description.unwrap_or_default();
    if description.chars().count() > 8192 {
        return Err(KmsError::validation(
            "1 validation error detected: Value at 'description' failed to satisfy constraint: Member must have length less than or equal to 8192",
        ));
    }
    let tags = super::tags::validate_tags(req.tags.unwrap_or_default())?;
    let meta = keys.create(description, tags, policy).await?;
    cx.obs.key_id = Some(meta.id.clone());
    Ok(KeyMetadataResponse {
        key_metadata: key_metadata(&meta, keys.key_arn(&meta.id), &keys.scope().account),
    })
}

pub(super) fn describe_key(
    cx: &mut Cx<'_>,
    req: KeyIdOnly,
) -> Result<KeyMetadataResponse, KmsError> {
    let keys = cx.keys;
    let meta = cx.check(&required(req.key_id, "keyId")?, None)?;
    Ok(KeyMetadataResponse {
        key_metadata: key_metadata(&meta, keys.key_arn(&meta.id), &keys.scope().account),
    })
}

pub(super) fn list_keys(cx: &mut Cx<'_>, req: ListRequest) -> Result<ListKeysResponse, KmsError> {
    let keys = cx.keys;
    let page = page(req.limit, 1000, 100, req.marker.as_deref())?;
    let index = keys.snapshot();
    let mut items: Vec<(String, KeyListEntry)> = index
        .keys
        .keys()
        .map(|id| {
            (
                id.clone(),
                KeyListEntry {
                    key_id: id.clone(),
                    key_arn: keys.key_arn(id),
                },
            )
        })
        .collect();
    items.sort_by(|a, b| a.0.cmp(&b.0));
    let (keys, next_marker, truncated) = take_page(items, &page);
    Ok(ListKeysResponse {
        keys,
        next_marker,
        truncated,
    })
}

pub(super) async fn enable_key(cx: &mut Cx<'_>, req: KeyIdOnly) -> Result<Empty, KmsError> {
    let keys = cx.keys;
    cx.update_key(req.key_id, |m| {
        require_not_pending(keys, m)?;
        m.state = KeyState::Enabled;
        Ok(())
    })
    .await?;
    Ok(Empty {})
}

pub(super) async fn disable_key(cx: &mut Cx<'_>, req: KeyIdOnly) -> Result<Empty, KmsError> {
    let keys = cx.keys;
    let meta = cx
        .update_key(req.key_id, |m| {
            require_not_pending(keys, m)?;
            m.state = KeyState::Disabled;
            Ok(())
        })
        .await?;
    cx.kms.invalidate(&meta.id);
    Ok(Empty {})
}

pub(super) async fn schedule_key_deletion(
    cx: &mut Cx<'_>,
    req: ScheduleKeyDeletionRequest,
) -> Result<ScheduleKeyDeletionResponse, KmsError> {
    let keys = cx.keys;
    let window = in_range(
        req.pending_window_in_days.unwrap_or(30),
        7,
        30,
        "pendingWindowInDays",
    )?;
    let deletion_date = keys::now() + days(window);
    let meta = cx
        .update_key(req.key_id, |m| {
            require_not_pending(keys, m)?;
            m.state = KeyState::PendingDeletion;
            m.deletion_date = Some(deletion_date);
            m.pending_window_days = Some(window);
            Ok(())
        })
        .await?;
    cx.kms.invalidate(&meta.id);
    Ok(ScheduleKeyDeletionResponse {
        key_id: keys.key_arn(&meta.id),
        deletion_date,
        key_state: KeyState::PendingDeletion.as_str(),
        pending_window_in_days: window,
    })
}

pub(super) async fn cancel_key_deletion(
    cx: &mut Cx<'_>,
    req: KeyIdOnly,
) -> Result<KeyIdResponse, KmsError> {
    let keys = cx.keys;
    let meta = cx
        .update_key(req.key_id, |m| {
            if m.state != KeyState::PendingDeletion {
                return Err(KmsError::new(
                    ErrorKind::InvalidState,
                    format!("{} is not pending deletion.", keys.key_arn(&m.id)),
                ));
            }
            // As in KMS, a key whose deletion is cancelled comes back Disabled.
            m.state = KeyState::Disabled;
            m.deletion_date = None;
            m.pending_window_days = None;
            Ok(())
        })
        .await?;
    Ok(KeyIdResponse {
        key_id: keys.key_arn(&meta.id),
    })
}

pub(super) async fn enable_key_rotation(
    cx: &mut Cx<'_>,
    req: EnableKeyRotationRequest,
) -> Result<Empty, KmsError> {
    let keys = cx.keys;
    let period = in_range(
        req.rotation_period_in_days.unwrap_or(365),
        90,
        2560,
        "rotationPeriodInDays",
    )?;
    let now = keys::now();
    cx.update_key(req.key_id, |m| {
        require_enabled(keys, m)?;
        m.rotation_enabled = true;
        m.rotation_period_days = Some(period);
        m.next_rotation = m.next_rotation_from(now);
        Ok(())
    })
    .await?;
    Ok(Empty {})
}

pub(super) async fn disable_key_rotation(
    cx: &mut Cx<'_>,
    req: KeyIdOnly,
) -> Result<Empty, KmsError> {
    let keys = cx.keys;
    cx.update_key(req.key_id, |m| {
        require_enabled(keys, m)?;
        m.rotation_enabled = false;
        m.next_rotation = None;
        Ok(())
    })
    .await?;
    Ok(Empty {})
}

pub(super) fn get_key_rotation_status(
    cx: &mut Cx<'_>,
    req: KeyIdOnly,
) -> Result<GetKeyRotationStatusResponse, KmsError> {
    let keys = cx.keys;
    let meta = cx.check(&required(req.key_id, "keyId")?, None)?;
    Ok(GetKeyRotationStatusResponse {
        key_rotation_enabled: meta.rotation_enabled,
        key_id: keys.key_arn(&meta.id),
        rotation_period_in_days: meta.rotation_period_days.filter(|_| meta.rotation_enabled),
        next_rotation_date: meta.next_rotation.filter(|_| meta.rotation_enabled),
        on_demand_rotation_start_date: None,
    })
}

pub(super) async fn rotate_key_on_demand(
    cx: &mut Cx<'_>,
    req: KeyIdOnly,
) -> Result<KeyIdResponse, KmsError> {
    let keys = cx.keys;
    let key_id = required(req.key_id, "keyId")?;
    cx.check(&key_id, None)?;
    let meta = keys
        .rotate(&key_id, RotationType::OnDemand, keys::now(), |m| {
            require_enabled(keys, m)?;
            let on_demand = m.versions.iter().filter(|v| v.rotation == Some(RotationType::OnDemand)).count();
            if on_demand >= MAX_ON_DEMAND_ROTATIONS {
                return Err(KmsError::new(
                    ErrorKind::LimitExceeded,
                    format!("{} has reached the limit of {MAX_ON_DEMAND_ROTATIONS} on-demand rotations.", keys.key_arn(&m.id)),
                ));
            }
            Ok(())
        })
        .await?;
    if cx.kms.invalidate_on_rotation {
        cx.kms.cache.invalidate_key(&meta.id);
    }
    // reused data keys are tied to a version anyway; dropping them frees the memory now
    cx.kms.reuse.invalidate_key(&meta.id);
    Ok(KeyIdResponse {
        key_id: meta.id.clone(),
    })
}

pub(super) fn list_key_rotations(
    cx: &mut Cx<'_>,
    req: ListRequest,
) -> Result<ListKeyRotationsResponse, KmsError> {
    let keys = cx.keys;
    let meta = cx.check(&required(req.key_id, "keyId")?, None)?;
    let page = page(req.limit, 1000, 100, req.marker.as_deref())?;
    let arn = keys.key_arn(&meta.id);
    let items = meta
        .versions
        .iter()
        .filter_map(|v| {
            v.rotation.map(|r| {
                // Zero-padded so that string order is version order.
                (
                    format!("{:010}", v.version),
                    RotationEntry {
                        key_id: arn.clone(),
                        rotation_date: v.created,
                        rotation_type: r.as_str(),
                    },
                )
            })
        })
        .collect();
    let (rotations, next_marker, truncated) = take_page(items, &page);
    Ok(ListKeyRotationsResponse {
        rotations,
        next_marker,
        truncated,
    })
}
