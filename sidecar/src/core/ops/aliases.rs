//! Aliases: CreateAlias, UpdateAlias, DeleteAlias, ListAliases, with KMS's alias-name rules.

use super::{Cx, page, require_not_pending, required, take_page};
use crate::auth::policy::Action;
use crate::core::model::*;
use crate::keys::{self, AliasEntry};
use crate::kms::{ErrorKind, KmsError};

fn check_alias_name(name: &str) -> Result<(), KmsError> {
    let valid = name.len() <= 256
        && name
            .strip_prefix("alias/")
            .is_some_and(|rest| !rest.is_empty())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'/' | b'_' | b'-' | b':'));
    if !valid {
        return Err(KmsError::new(
            ErrorKind::InvalidAliasName,
            "Alias must start with the prefix \"alias/\", be at most 256 characters and contain only letters, digits, /, _ and -",
        ));
    }
    if name.starts_with("alias/aws/") {
        return Err(KmsError::new(
            ErrorKind::InvalidAliasName,
            "Aliases beginning with alias/aws/ are reserved for AWS managed keys",
        ));
    }
    Ok(())
}

pub(super) async fn create_alias(cx: &mut Cx<'_>, req: AliasRequest) -> Result<Empty, KmsError> {
    let keys = cx.keys;
    let name = required(req.alias_name, "aliasName")?;
    let target = required(req.target_key_id, "targetKeyId")?;
    check_alias_name(&name)?;
    let now = keys::now();
    let meta = keys.resolve_key_only(&target)?;
    cx.authorize(Action::CreateAlias, &meta, None)?;
    keys.update_aliases(|_, aliases| {
        let meta = keys.resolve_key_only(&target)?;
        require_not_pending(keys, &meta)?;
        if aliases.contains_key(&name) {
            return Err(KmsError::new(
                ErrorKind::AlreadyExists,
                format!(
                    "An alias with the name {} already exists",
                    keys.alias_arn(&name)
                ),
            ));
        }
        aliases.insert(
            name.clone(),
            AliasEntry {
                target: meta.id.clone(),
                created: now,
                updated: now,
            },
        );
        Ok(())
    })
    .await?;
    Ok(Empty {})
}

pub(super) async fn update_alias(cx: &mut Cx<'_>, req: AliasRequest) -> Result<Empty, KmsError> {
    let keys = cx.keys;
    let name = required(req.alias_name, "aliasName")?;
    let target = required(req.target_key_id, "targetKeyId")?;
    check_alias_name(&name)?;
    let now = keys::now();
    // The caller needs UpdateAlias on both the alias's current key and its new one.
    if let Some(current) = keys.snapshot().aliases.get(&name).map(|a| a.target.clone()) {
        let old = keys.resolve_key_only(&current)?;
        cx.authorize(Action::UpdateAlias, &old, None)?;
    }
    let new = keys.resolve_key_only(&target)?;
    cx.authorize(Action::UpdateAlias, &new, None)?;
    keys.update_aliases(|_, aliases| {
        let meta = keys.resolve_key_only(&target)?;
        require_not_pending(keys, &meta)?;
        let entry = aliases.get_mut(&name).ok_or_else(|| {
            KmsError::new(
                ErrorKind::NotFound,
                format!("Alias {} is not found.", keys.alias_arn(&name)),
            )
        })?;
        entry.target = meta.id.clone();
        entry.updated = now;
        Ok(())
    })
    .await?;
    Ok(Empty {})
}

pub(super) async fn delete_alias(cx: &mut Cx<'_>, req: AliasRequest) -> Result<Empty, KmsError> {
    let keys = cx.keys;
    let name = required(req.alias_name, "aliasName")?;
    check_alias_name(&name)?;
    if let Some(current) = keys.snapshot().aliases.get(&name).map(|a| a.target.clone()) {
        let target = keys.resolve_key_only(&current)?;
        cx.authorize(Action::DeleteAlias, &target, None)?;
    }
    keys.update_aliases(|_, aliases| {
        aliases.remove(&name).map(|_| ()).ok_or_else(|| {
            KmsError::new(
                ErrorKind::NotFound,
                format!("Alias {} is not found.", keys.alias_arn(&name)),
            )
        })
    })
    .await?;
    Ok(Empty {})
}

pub(super) fn list_aliases(
    cx: &mut Cx<'_>,
    req: ListRequest,
) -> Result<ListAliasesResponse, KmsError> {
    let keys = cx.keys;
    let page = page(req.limit, 100, 50, req.marker.as_deref())?;
    let filter = req
        .key_id
        .as_deref()
        .map(|k| keys.resolve_key_only(k))
        .transpose()?;
    let index = keys.snapshot();
    let items = index
        .aliases
        .iter()
        .filter(|(_, a)| filter.as_ref().is_none_or(|m| m.id == a.target))
        .map(|(name, a)| {
            (
                name.clone(),
                AliasListEntry {
                    alias_name: name.clone(),
                    alias_arn: keys.alias_arn(name),
                    target_key_id: a.target.clone(),
                    creation_date: a.created,
                    last_updated_date: a.updated,
                },
            )
        })
        .collect();
    let (aliases, next_marker, truncated) = take_page(items, &page);
    Ok(ListAliasesResponse {
        aliases,
        next_marker,
        truncated,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn alias_names() {
        assert!(check_alias_name("alias/app-1/prod_key").is_ok());
        for bad in [
            "app",
            "alias/",
            "alias/with space",
            "alias/aws/s3",
            &format!("alias/{}", "a".repeat(251)),
        ] {
            assert_eq!(
                check_alias_name(bad).unwrap_err().kind(),
                ErrorKind::InvalidAliasName,
                "{bad}"
            );
        }
    }
}
