//! Key policies: PutKeyPolicy, GetKeyPolicy, ListKeyPolicies. A key has one policy, named
//! `default`, as in KMS; a document that does not parse, or uses an element outside the supported
//! subset (`docs/policy.md`), is `MalformedPolicyDocumentException` naming the element.

use super::{Cx, page, require_not_pending, required};
use crate::auth::policy::Policy;
use crate::core::model::*;
use crate::kms::{ErrorKind, KmsError};

const POLICY_NAME: &str = "default";

fn check_name(name: Option<&str>) -> Result<(), KmsError> {
    match name {
        None | Some(POLICY_NAME) => Ok(()),
        Some(_) => Err(KmsError::new(
            ErrorKind::NotFound,
            "No such policy exists: the only policy name is \"default\"",
        )),
    }
}

pub(super) async fn put_key_policy(
    cx: &mut Cx<'_>,
    req: KeyPolicyRequest,
) -> Result<Empty, KmsError> {
    let keys = cx.keys;
    let key_id = required(req.key_id, "keyId")?;
    let text = required(req.policy, "policy")?;
    check_name(req.policy_name.as_deref())?;
    Policy::parse(&text)?;
    let meta = cx
        .update_key(Some(key_id), |m| {
            require_not_pending(keys, m)?;
            m.policy = Some(text.clone());
            Ok(())
        })
        .await?;
    // Authorization runs before every cache lookup anyway; dropping the entries also frees them.
    cx.kms.invalidate(&meta.id);
    Ok(Empty {})
}

pub(super) fn get_key_policy(
    cx: &mut Cx<'_>,
    req: KeyPolicyRequest,
) -> Result<GetKeyPolicyResponse, KmsError> {
    check_name(req.policy_name.as_deref())?;
    let meta = cx.check(&required(req.key_id, "keyId")?, None)?;
    Ok(GetKeyPolicyResponse {
        policy: meta.policy.clone().unwrap_or_default(),
        policy_name: POLICY_NAME,
    })
}

pub(super) fn list_key_policies(
    cx: &mut Cx<'_>,
    req: ListRequest,
) -> Result<ListKeyPoliciesResponse, KmsError> {
    page(req.limit, 1000, 100, req.marker.as_deref())?;
    cx.check(&required(req.key_id, "keyId")?, None)?;
    Ok(ListKeyPoliciesResponse {
        policy_names: [POLICY_NAME],
        truncated: false,
    })
}
