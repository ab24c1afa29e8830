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
        .map_err(KmsError::shared)?;
    Ok(StatusResponse {
        key_id: cx.keys.key_arn(&meta.id),
        key_version: version,
    })
}
