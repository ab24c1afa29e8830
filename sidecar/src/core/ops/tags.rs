//! Tags: TagResource, UntagResource, ListResourceTags, and the tag rules CreateKey shares.

use std::collections::BTreeMap;

use super::{Cx, page, require_not_pending, required, take_page};
use crate::core::model::*;
use crate::kms::{ErrorKind, KmsError};

/// KMS allows 50 tags per key.
const MAX_TAGS: usize = 50;

fn tag_error(message: &'static str) -> KmsError {
    KmsError::new(ErrorKind::Tag, message)
}

/// Validates tag members: keys 1..128 characters not starting with `aws:`, values up to 256.
pub(super) fn validate_tags(tags: Vec<Tag>) -> Result<BTreeMap<String, String>, KmsError> {
    let mut out = BTreeMap::new();
    for tag in tags {
        let key = required(tag.tag_key, "tagKey")?;
        let value = required(tag.tag_value, "tagValue")?;
        if key.is_empty() || key.chars().count() > 128 {
            return Err(tag_error("Tag keys must be between 1 and 128 characters"));
        }
        if value.chars().count() > 256 {
            return Err(tag_error("Tag values must be at most 256 characters"));
        }
        if key.starts_with("aws:") {
            return Err(tag_error("Tag keys beginning with aws: are reserved"));
        }
        out.insert(key, value);
    }
    if out.len() > MAX_TAGS {
        return Err(KmsError::new(
            ErrorKind::LimitExceeded,
            "A key can have at most 50 tags",
        ));
    }
    Ok(out)
}

pub(super) async fn tag_resource(
    cx: &mut Cx<'_>,
    req: TagResourceRequest,
) -> Result<Empty, KmsError> {
    let keys = cx.keys;
    let key_id = required(req.key_id, "keyId")?;
    let tags = validate_tags(required(req.tags, "tags")?)?;
    cx.update_key(Some(key_id), |m| {
        require_not_pending(keys, m)?;
        m.tags.extend(tags.clone());
        if m.tags.len() > MAX_TAGS {
            return Err(KmsError::new(
                ErrorKind::LimitExceeded,
                "A key can have at most 50 tags",
            ));
        }
        Ok(())
    })
    .await?;
    Ok(Empty {})
}

pub(super) async fn untag_resource(
    cx: &mut Cx<'_>,
    req: UntagResourceRequest,
) -> Result<Empty, KmsError> {
    let keys = cx.keys;
    let key_id = required(req.key_id, "keyId")?;
    let tag_keys = required(req.tag_keys, "tagKeys")?;
    cx.update_key(Some(key_id), |m| {
        require_not_pending(keys, m)?;
        for k in &tag_keys {
            m.tags.remove(k);
        }
        Ok(())
    })
    .await?;
    Ok(Empty {})
}

pub(super) fn list_resource_tags(
    cx: &mut Cx<'_>,
    req: ListRequest,
) -> Result<ListResourceTagsResponse, KmsError> {
    let meta = cx.check(&required(req.key_id, "keyId")?, None)?;
    let page = page(req.limit, 50, 50, req.marker.as_deref())?;
    let items = meta
        .tags
        .iter()
        .map(|(k, v)| {
            (
                k.clone(),
                TagOut {
                    tag_key: k.clone(),
                    tag_value: v.clone(),
                },
            )
        })
        .collect();
    let (tags, next_marker, truncated) = take_page(items, &page);
    Ok(ListResourceTagsResponse {
        tags,
        next_marker,
        truncated,
    })
}
