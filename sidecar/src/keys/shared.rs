//! The key store's side of the fleet registry: loading the index from etcd, following its changes,
//! and the revision-guarded writes that replace the data directory's files.
//!
//! The in-memory [`Index`] stays the only thing crypto reads. A write commits to etcd first, then
//! publishes locally at the committed revision, so the sidecar that made a change sees it at once
//! and the others within the watch's delay; a watch event never rolls an entry back to an older
//! revision.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;

use super::registry::etcd::{Guarded, LeaseLock, Write, WriteError};
use super::registry::{Change, EtcdRegistry, Follower, Section};
use super::{AliasEntry, ArnScope, Index, KeyMeta, KeyStore, Publish};
use crate::auth::policy::Policy;
use crate::backend::Backend;
use crate::datadir::DataDir;
use crate::kms::KmsError;

/// How often a write that lost a race re-reads and tries again before giving up.
const MAX_ATTEMPTS: u32 = 5;
/// How long a sidecar may hold a key's rotation lock before etcd frees it.
const ROTATION_LEASE: Duration = Duration::from_secs(10);

/// A key's rotation lock: a lease-held lock in a fleet, nothing with the data directory.
#[derive(Debug)]
pub(super) struct RotationLock(Option<LeaseLock>);

impl From<WriteError> for Publish {
    fn from(e: WriteError) -> Self {
        match e {
            WriteError::Conflict => Publish::Conflict(String::new()),
            other => Publish::Failed(other.into_kms()),
        }
    }
}

impl KeyStore {
    /// A key store over the fleet's registry, indexed from `loaded` (`EtcdRegistry::load`).
    pub fn open_shared(
        dir: Arc<DataDir>,
        backend: Arc<dyn Backend>,
        scope: ArnScope,
        registry: Arc<EtcdRegistry>,
        loaded: &[Change],
    ) -> Self {
        let store = Self {
            dir,
            backend,
            index: ArcSwap::from_pointee(Index::default()),
            write: tokio::sync::Mutex::new(()),
            scope,
            metrics: None,
            shared: Some(registry),
        };
        store.reset(loaded);
        store
    }

    /// Fails fast while the fleet's registry is known to be unreachable (the watch is down), so
    /// key administration answers at once instead of after the write timeout.
    pub(super) fn writable(&self) -> Result<(), KmsError> {
        match &self.shared {
            Some(r) if !r.is_up() => Err(WriteError::Unavailable(None).into_kms()),
            _ => Ok(()),
        }
    }

    /// The fleet's registry, if keys live in etcd.
    pub fn registry(&self) -> Option<&Arc<EtcdRegistry>> {
        self.shared.as_ref()
    }

    pub(super) async fn publish_shared(
        &self,
        registry: &EtcdRegistry,
        meta: KeyMeta,
        policy: Option<Policy>,
    ) -> Result<Arc<KeyMeta>, Publish> {
        let known = self
            .index
            .load()
            .revisions
            .get(&meta.id)
            .copied()
            .unwrap_or(0);
        let bytes = serde_json::to_vec(&meta).map_err(KmsError::internal)?;
        let guard = Guarded {
            section: Section::Keys,
            name: meta.id.clone(),
            revision: known,
        };
        let revision = registry
            .commit(
                &[guard],
                vec![Write::Put(Section::Keys, meta.id.clone(), bytes)],
            )
            .await
            .map_err(|e| match Publish::from(e) {
                Publish::Conflict(_) => Publish::Conflict(meta.id.clone()),
                other => other,
            })?;
        let meta = Arc::new(meta);
        let policy = policy.map(Arc::new);
        self.index.rcu(|current| {
            let mut next = Index::clone(current);
            if next.revisions.get(&meta.id).is_none_or(|r| *r < revision) {
                match &policy {
                    Some(p) => next.policies.insert(meta.id.clone(), p.clone()),
                    None => next.policies.remove(&meta.id),
                };
                next.keys.insert(meta.id.clone(), meta.clone());
                next.revisions.insert(meta.id.clone(), revision);
            }
            next
        });
        Ok(meta)
    }

    pub(super) async fn persist_aliases_shared(
        &self,
        registry: &EtcdRegistry,
        before: &Index,
        after: &BTreeMap<String, AliasEntry>,
    ) -> Result<(), Publish> {
        let mut guards = Vec::new();
        let mut writes = Vec::new();
        for (name, entry) in after {
            if before.aliases.get(name) != Some(entry) {
                guards.push(guard(before, name));
                let bytes = serde_json::to_vec(entry).map_err(KmsError::internal)?;
                writes.push(Write::Put(Section::Aliases, name.clone(), bytes));
            }
        }
        for name in before.aliases.keys().filter(|n| !after.contains_key(*n)) {
            guards.push(guard(before, name));
            writes.push(Write::Delete(Section::Aliases, name.clone()));
        }
        if writes.is_empty() {
            return Ok(());
        }
        let revision = registry.commit(&guards, writes).await?;
        self.index.rcu(|current| {
            let mut next = Index::clone(current);
            for g in &guards {
                let newer = next
                    .alias_revisions
                    .get(&g.name)
                    .is_some_and(|r| *r >= revision);
                if newer {
                    continue;
                }
                match after.get(&g.name) {
                    Some(entry) => {
                        next.aliases.insert(g.name.clone(), entry.clone());
                        next.alias_revisions.insert(g.name.clone(), revision);
                    }
                    None => {
                        next.aliases.remove(&g.name);
                        next.alias_revisions.remove(&g.name);
                    }
                }
            }
            next
        });
        Ok(())
    }

    pub(super) async fn delete_shared(
        &self,
        registry: &EtcdRegistry,
        id: &str,
    ) -> Result<(), Publish> {
        let index = self.index.load();
        let mut guards = vec![Guarded {
            section: Section::Keys,
            name: id.to_string(),
            revision: index.revisions.get(id).copied().unwrap_or(0),
        }];
        let mut writes = vec![Write::Delete(Section::Keys, id.to_string())];
        for (name, _) in index.aliases.iter().filter(|(_, a)| a.target == id) {
            guards.push(guard(&index, name));
            writes.push(Write::Delete(Section::Aliases, name.clone()));
        }
        registry.commit(&guards, writes).await?;
        self.index.rcu(|current| {
            let mut next = Index::clone(current);
            next.keys.remove(id);
            next.policies.remove(id);
            next.revisions.remove(id);
            let gone: Vec<String> = next
                .aliases
                .iter()
                .filter(|(_, a)| a.target == id)
                .map(|(n, _)| n.clone())
                .collect();
            for n in gone {
                next.aliases.remove(&n);
                next.alias_revisions.remove(&n);
            }
            next
        });
        Ok(())
    }

    /// After a lost race on key `id`: reads what the winner committed into the index (so the
    /// retry builds on it), or gives up after [`MAX_ATTEMPTS`] with a clear error.
    pub(super) async fn after_conflict(&self, attempt: &mut u32, id: &str) -> Result<(), KmsError> {
        *attempt += 1;
        let Some(registry) = &self.shared else {
            return Err(WriteError::Conflict.into_kms());
        };
        if *attempt >= MAX_ATTEMPTS {
            return Err(WriteError::Conflict.into_kms());
        }
        let fresh = registry
            .read(Section::Keys, &[id])
            .await
            .map_err(WriteError::into_kms)?;
        self.apply(&fresh);
        Ok(())
    }

    pub(super) async fn after_alias_conflict(
        &self,
        registry: &EtcdRegistry,
        attempt: &mut u32,
    ) -> Result<(), KmsError> {
        *attempt += 1;
        if *attempt >= MAX_ATTEMPTS {
            return Err(WriteError::Conflict.into_kms());
        }
        let fresh = registry
            .read_section(Section::Aliases)
            .await
            .map_err(WriteError::into_kms)?;
        // A full section read: aliases missing from it were deleted.
        self.index.rcu(|current| {
            let mut next = Index::clone(current);
            next.aliases.clear();
            next.alias_revisions.clear();
            next
        });
        self.apply(&fresh);
        Ok(())
    }

    /// Takes key `id`'s rotation lock; `Ok(None)`: another sidecar is rotating it.
    pub(super) async fn rotation_lock(&self, id: &str) -> Result<Option<RotationLock>, WriteError> {
        match &self.shared {
            None => Ok(Some(RotationLock(None))),
            Some(registry) => Ok(registry
                .try_lock(&format!("rotation/{id}"), ROTATION_LEASE)
                .await?
                .map(|l| RotationLock(Some(l)))),
        }
    }

    pub(super) async fn rotation_unlock(&self, lock: RotationLock) {
        if let (Some(registry), Some(lock)) = (&self.shared, lock.0) {
            registry.unlock(lock).await;
        }
    }
}

fn guard(index: &Index, alias: &str) -> Guarded {
    Guarded {
        section: Section::Aliases,
        name: alias.to_string(),
        revision: index.alias_revisions.get(alias).copied().unwrap_or(0),
    }
}

impl Follower for KeyStore {
    fn reset(&self, all: &[Change]) {
        let mut next = Index::default();
        apply_to(&mut next, all);
        self.index.store(Arc::new(next));
    }

    fn apply(&self, changes: &[Change]) {
        if !changes
            .iter()
            .any(|c| matches!(c.section, Section::Keys | Section::Aliases))
        {
            return;
        }
        self.index.rcu(|current| {
            let mut next = Index::clone(current);
            apply_to(&mut next, changes);
            next
        });
    }
}

/// Applies registry changes to `index`, never going back to an older revision of an entry. A
/// record that does not parse is logged and skipped: the sidecar keeps serving every other key.
fn apply_to(index: &mut Index, changes: &[Change]) {
    for c in changes {
        match c.section {
            Section::Keys => {
                if index
                    .revisions
                    .get(&c.name)
                    .is_some_and(|r| *r >= c.revision)
                {
                    continue;
                }
                match &c.value {
                    None => {
                        index.keys.remove(&c.name);
                        index.policies.remove(&c.name);
                        index.revisions.remove(&c.name);
                    }
                    Some(bytes) => match parse_key(&c.name, bytes) {
                        Ok((meta, policy)) => {
                            match policy {
                                Some(p) => index.policies.insert(c.name.clone(), Arc::new(p)),
                                None => index.policies.remove(&c.name),
                            };
                            index.keys.insert(c.name.clone(), Arc::new(meta));
                            index.revisions.insert(c.name.clone(), c.revision);
                        }
                        Err(e) => {
                            tracing::error!(key = %c.name, error = %e, "registry key record skipped")
                        }
                    },
                }
            }
            Section::Aliases => {
                if index
                    .alias_revisions
                    .get(&c.name)
                    .is_some_and(|r| *r >= c.revision)
                {
                    continue;
                }
                match &c.value {
                    None => {
                        index.aliases.remove(&c.name);
                        index.alias_revisions.remove(&c.name);
                    }
                    Some(bytes) => match serde_json::from_slice::<AliasEntry>(bytes) {
                        Ok(entry) => {
                            index.aliases.insert(c.name.clone(), entry);
                            index.alias_revisions.insert(c.name.clone(), c.revision);
                        }
                        Err(e) => {
                            tracing::error!(alias = %c.name, error = %e, "registry alias skipped")
                        }
                    },
                }
            }
            _ => {}
        }
    }
}

fn parse_key(name: &str, bytes: &[u8]) -> anyhow::Result<(KeyMeta, Option<Policy>)> {
    let meta: KeyMeta = serde_json::from_slice(bytes)?;
    if meta.id != name || meta.versions.is_empty() {
        anyhow::bail!("record is inconsistent");
    }
    let policy = meta.policy.as_deref().map(Policy::parse).transpose()?;
    Ok((meta, policy))
}
