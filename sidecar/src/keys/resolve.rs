//! Naming keys: the ARNs the sidecar builds and the four forms a KeyId member may take (key id, key
//! ARN, `alias/name`, alias ARN) resolved against an [`Index`] snapshot. Its own module because
//! every call resolves a key, with KMS's exact not-found messages, while the rest of `keys` is
//! the lifecycle and persistence behind the snapshot.

use std::sync::Arc;

use super::{Index, KeyMeta, KeyStore};
use crate::kms::{ErrorKind, KmsError};

fn shorten(s: &str) -> &str {
    match s.char_indices().nth(256) {
        Some((i, _)) => &s[..i],
        None => s,
    }
}

impl KeyStore {
    pub fn key_arn(&self, id: &str) -> String {
        self.arn(&["key/", id])
    }

    pub fn alias_arn(&self, name: &str) -> String {
        self.arn(&[name])
    }

    /// `arn:aws:kms:REGION:ACCOUNT:` followed by `resource`, in one allocation of the exact size: a
    /// `format!` here grows its buffer twice, on every call authorization makes.
    fn arn(&self, resource: &[&str]) -> String {
        const PREFIX: &str = "arn:aws:kms:";
        let (region, account) = (&self.scope.region, &self.scope.account);
        let len = PREFIX.len() + region.len() + account.len() + 2;
        let mut arn = String::with_capacity(len + resource.iter().map(|s| s.len()).sum::<usize>());
        for part in [PREFIX, region, ":", account, ":"]
            .into_iter()
            .chain(resource.iter().copied())
        {
            arn.push_str(part);
        }
        arn
    }

    /// Resolves a KeyId in any of its four forms: key id, key ARN, `alias/name`, alias ARN.
    pub fn resolve(&self, key_id: &str) -> Result<Arc<KeyMeta>, KmsError> {
        self.resolve_in(&self.snapshot(), key_id, true)
    }

    /// Resolves a key id or key ARN only (aliases refused), as TargetKeyId requires.
    pub fn resolve_key_only(&self, key_id: &str) -> Result<Arc<KeyMeta>, KmsError> {
        self.resolve_in(&self.snapshot(), key_id, false)
    }

    /// The id of the key `key_id` names (any form), or `None`: a lookup without errors or
    /// allocation, for the rate limits' per-key bucket before the operation resolves the key.
    pub fn find<'i>(&self, index: &'i Index, key_id: &str) -> Option<&'i str> {
        let local = match key_id.strip_prefix("arn:aws:kms:") {
            Some(rest) => rest
                .strip_prefix(self.scope.region.as_str())?
                .strip_prefix(':')?
                .strip_prefix(self.scope.account.as_str())?
                .strip_prefix(':')?,
            None => key_id,
        };
        let id = match local.strip_prefix("alias/") {
            Some(_) => index.aliases.get(local)?.target.as_str(),
            None if key_id.starts_with("arn:") => local.strip_prefix("key/")?,
            None => local,
        };
        index.keys.get(id).map(|m| m.id.as_str())
    }

    fn resolve_in(
        &self,
        index: &Index,
        key_id: &str,
        aliases: bool,
    ) -> Result<Arc<KeyMeta>, KmsError> {
        check_key_id_length(key_id)?;
        let invalid = || {
            KmsError::new(
                ErrorKind::NotFound,
                format!("Invalid keyId '{}'", shorten(key_id)),
            )
        };
        let local = match key_id.strip_prefix("arn:") {
            Some(_) => {
                let prefix = format!("arn:aws:kms:{}:{}:", self.scope.region, self.scope.account);
                let Some(rest) = key_id.strip_prefix(&prefix) else {
                    return Err(KmsError::new(
                        ErrorKind::NotFound,
                        format!("Key '{}' does not exist", shorten(key_id)),
                    ));
                };
                rest
            }
            None => key_id,
        };
        if local.starts_with("alias/") {
            if !aliases {
                return Err(KmsError::validation(
                    "TargetKeyId must be a key id or key ARN, not an alias",
                ));
            }
            let not_found = || {
                KmsError::new(
                    ErrorKind::NotFound,
                    format!("Alias '{}' is not found.", shorten(&self.alias_arn(local))),
                )
            };
            let target = index.aliases.get(local).ok_or_else(not_found)?;
            return index
                .keys
                .get(&target.target)
                .cloned()
                .ok_or_else(not_found);
        }
        let id = if key_id.starts_with("arn:") {
            local.strip_prefix("key/").ok_or_else(invalid)?
        } else {
            local
        };
        if id.is_empty() || !id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-') {
            return Err(invalid());
        }
        index.keys.get(id).cloned().ok_or_else(|| {
            KmsError::new(
                ErrorKind::NotFound,
                format!("Key '{}' does not exist", shorten(&self.key_arn(id))),
            )
        })
    }
}

/// KMS's length rule for KeyId members (1..2048).
pub fn check_key_id_length(key_id: &str) -> Result<(), KmsError> {
    if key_id.is_empty() || key_id.len() > 2048 {
        return Err(KmsError::validation(
            "1 validation error detected: Value at 'keyId' failed to satisfy constraint: Member must have length between 1 and 2048",
        ));
    }
    Ok(())
}
