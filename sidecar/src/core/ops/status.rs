//! `Status` (the Kubernetes KMS v2 plugin's health call, not an AWS operation): which version of a
//! key new ciphertexts are sealed under, and whether a real round trip through the backend stack
//! works under it. The round trip is `core::health`'s, shared with `/readyz`, and its result is
//! reused for `health::TTL` per key version, so a Status loop costs the backend at most one round
//! trip a second and a rotation is seen on the very next call.

use std::sync::Arc;

use super::{Cx, require_enabled, required};
use crate::backend::KeyRef;
use crate::core::health::{self, RoundTripError};
use crate::core::model::{StatusRequest, StatusResponse};
use crate::keys::KeyMeta;
use crate::kms::KmsError;

/// The last round trip's outcome for one key version (an error is shared by the callers that
/// reuse it).
pub(crate) type StatusMemo = health::Memo<(String, u32), Result<(), Arc<KmsError>>>;

pub(super) async fn status(
    cx: &mut Cx<'_>,
    req: StatusRequest,
) -> Result<StatusResponse, KmsError> {
    let key_id = required(req.key_id, "keyId")?;
    let meta = cx.check(&key_id, None)?;
    require_enabled(cx.keys, &meta)?;
    let version = meta.current_version();
    cx.obs.key_version = Some(version);
    memoized_round_trip(cx, &meta, version).await?;
    Ok(StatusResponse {
        key_id: cx.keys.key_arn(&meta.id),
        key_version: version,
    })
}

/// A real round trip through the backend stack under `meta`'s `version`, or the outcome of one
/// made less than `health::TTL` ago for that key version: what both health calls (KMS v2 `Status`
/// and the XKS health check) ask of the backend.
pub(super) async fn memoized_round_trip(
    cx: &Cx<'_>,
    meta: &KeyMeta,
    version: u32,
) -> Result<(), KmsError> {
    let backend = cx.keys.backend();
    let check = async {
        let key = KeyRef {
            key_id: &meta.id,
            version,
        };
        health::round_trip(backend.as_ref(), key)
            .await
            .map_err(|e| {
                Arc::new(match e {
                    RoundTripError::Backend { error, .. } => KmsError::from(error),
                    RoundTripError::WrongBytes => KmsError::internal(e),
                })
            })
    };
    cx.kms
        .status
        .get_or_check((meta.id.clone(), version), check)
        .await
        .map_err(KmsError::shared)
}
