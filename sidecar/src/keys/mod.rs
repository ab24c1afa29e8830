//! Keys as KMS clients see them: metadata, states, aliases, tags, versions and rotation, persisted in
//! the registry (the data directory, or the fleet's etcd: `registry/`, `shared.rs`) before any call
//! that changed them returns.
//!
//! Readers (every Encrypt/Decrypt) load an immutable [`Index`] snapshot without a lock; writers are
//! serialized, build the next index, write the changed files crash-safe, and only then publish it, so
//! no reader ever sees a state that a crash could lose.

pub mod ciphertext;
pub mod metrics;
pub mod model;
pub mod registry;
mod resolve;
mod shared;

use std::collections::{BTreeMap, HashMap};
use std::fs;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use arc_swap::{ArcSwap, Guard};

use crate::auth::policy::Policy;
use crate::backend::{Backend, KeyRef};
use crate::datadir::{self, DataDir};
use crate::kms::{ErrorKind, KmsError, Timestamp};
use metrics::KeyMetrics;
pub use model::{AliasEntry, AliasFile, KeyMeta, KeyState, KeyVersion, RotationType};

pub use crate::kms::now;
pub use resolve::check_key_id_length;

/// The region and account that ARNs are built with.
#[derive(Debug, Clone)]
pub struct ArnScope {
    pub region: String,
    pub account: String,
}

/// An immutable view of all keys and aliases.
#[derive(Debug, Clone, Default)]
pub struct Index {
    pub keys: HashMap<String, Arc<KeyMeta>>,
    pub aliases: BTreeMap<String, AliasEntry>,
    /// Parsed key policies, by key id (parsed once, evaluated on every call).
    pub policies: HashMap<String, Arc<Policy>>,
    /// With the etcd registry: the revision each key record was last written at (the guard of the
    /// next write to it). Empty with the data directory.
    pub revisions: HashMap<String, i64>,
    /// The same for aliases.
    pub alias_revisions: HashMap<String, i64>,
}

/// What one maintenance pass did.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Maintenance {
    pub rotated: Vec<String>,
    pub deleted: Vec<String>,
    pub rotation_failed: Vec<String>,
    pub deletion_failed: Vec<String>,
}

/// Key metadata store and lifecycle.
#[derive(Debug)]
pub struct KeyStore {
    dir: Arc<DataDir>,
    backend: Arc<dyn Backend>,
    index: ArcSwap<Index>,
    /// Serializes writers; readers never take it.
    write: tokio::sync::Mutex<()>,
    scope: ArnScope,
    metrics: Option<Arc<KeyMetrics>>,
    /// The fleet's registry, when keys live in etcd instead of the data directory.
    shared: Option<Arc<registry::EtcdRegistry>>,
}

impl KeyStore {
    /// Loads `keys/*.json` and `aliases.json`. A record that does not parse stops the start, naming
    /// the file: a key is never silently dropped.
    pub fn open(
        dir: Arc<DataDir>,
        backend: Arc<dyn Backend>,
        scope: ArnScope,
    ) -> anyhow::Result<Self> {
        let keys_dir = dir.path().join("keys");
        let mut keys = HashMap::new();
        let mut policies = HashMap::new();
        for entry in fs::read_dir(&keys_dir)
            .with_context(|| format!("cannot read {}", keys_dir.display()))?
        {
            let path = entry
                .with_context(|| format!("cannot read {}", keys_dir.display()))?
                .path();
            let name = path
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            if name.starts_with('.') || !name.ends_with(".json") {
                continue;
            }
            let bytes =
                fs::read(&path).with_context(|| format!("cannot read {}", path.display()))?;
            let meta: KeyMeta = serde_json::from_slice(&bytes).with_context(|| {
                format!("key record {} is corrupt or truncated", path.display())
            })?;
            if meta.versions.is_empty() || format!("{}.json", meta.id) != name {
                anyhow::bail!("key record {} is inconsistent", path.display());
            }
            if let Some(text) = &meta.policy {
                let policy = Policy::parse(text).with_context(|| {
                    format!("key record {} holds an invalid policy", path.display())
                })?;
                policies.insert(meta.id.clone(), Arc::new(policy));
            }
            keys.insert(meta.id.clone(), Arc::new(meta));
        }
        let alias_path = dir.path().join("aliases.json");
        let aliases = match fs::read(&alias_path) {
            Ok(bytes) => {
                serde_json::from_slice::<AliasFile>(&bytes)
                    .with_context(|| {
                        format!(
                            "alias table {} is corrupt or truncated",
                            alias_path.display()
                        )
                    })?
                    .aliases
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => BTreeMap::new(),
            Err(e) => {
                return Err(e).with_context(|| format!("cannot read {}", alias_path.display()));
            }
        };
        Ok(Self {
            dir,
            backend,
            index: ArcSwap::from_pointee(Index {
                keys,
                aliases,
                policies,
                ..Index::default()
            }),
            write: tokio::sync::Mutex::new(()),
            scope,
            metrics: None,
            shared: None,
        })
    }

    /// Counts every rotation (automatic and on demand, ok or failed) in `metrics`.
    pub fn with_metrics(mut self, metrics: Arc<KeyMetrics>) -> Self {
        self.metrics = Some(metrics);
        self
    }

    pub fn backend(&self) -> &Arc<dyn Backend> {
        &self.backend
    }

    pub fn scope(&self) -> &ArnScope {
        &self.scope
    }

    /// The parsed policy of key `id` (`None` for keys that predate policies).
    pub fn policy(&self, id: &str) -> Option<Arc<Policy>> {
        self.index.load().policies.get(id).cloned()
    }

    /// A lock-free snapshot of all keys and aliases.
    pub fn snapshot(&self) -> Guard<Arc<Index>> {
        self.index.load()
    }

    /// Creates a key with its first version. The material is stored by the backend, then the record;
    /// both are on disk before this returns.
    pub async fn create(
        &self,
        description: String,
        tags: BTreeMap<String, String>,
        policy: String,
    ) -> Result<Arc<KeyMeta>, KmsError> {
        self.writable()?;
        let _guard = self.write.lock().await;
        let id = uuid::Uuid::new_v4().to_string();
        self.backend
            .create_version(KeyRef {
                key_id: &id,
                version: 1,
            })
            .await?;
        let created = now();
        let meta = KeyMeta {
            format: model::RECORD_FORMAT,
            id: id.clone(),
            backend: self.backend.name().to_string(),
            created,
            description,
            state: KeyState::Enabled,
            deletion_date: None,
            pending_window_days: None,
            versions: vec![KeyVersion {
                version: 1,
                created,
                rotation: None,
            }],
            rotation_enabled: false,
            rotation_period_days: None,
            next_rotation: None,
            tags,
            policy: Some(policy),
        };
        self.publish_key(meta).await
    }

    /// Applies `change` to the key named by `key_id` (any form) and persists it.
    ///
    /// With the etcd registry, a write that lost a race to another sidecar re-reads the key and
    /// applies `change` again to what that sidecar committed, so nothing is silently overwritten.
    pub async fn update(
        &self,
        key_id: &str,
        change: impl Fn(&mut KeyMeta) -> Result<(), KmsError>,
    ) -> Result<Arc<KeyMeta>, KmsError> {
        self.writable()?;
        let _guard = self.write.lock().await;
        let mut attempt = 0;
        loop {
            let mut meta = KeyMeta::clone(&*self.resolve(key_id)?);
            change(&mut meta)?;
            match self.try_publish_key(meta).await {
                Err(Publish::Conflict(id)) => self.after_conflict(&mut attempt, &id).await?,
                other => return other.map_err(Publish::into_kms),
            }
        }
    }

    /// Adds a key version (rotation) at time `at`. `check` enforces the caller's state rules under
    /// the write lock.
    pub async fn rotate(
        &self,
        key_id: &str,
        trigger: RotationType,
        at: Timestamp,
        check: impl Fn(&KeyMeta) -> Result<(), KmsError>,
    ) -> Result<Arc<KeyMeta>, KmsError> {
        self.writable()?;
        let _guard = self.write.lock().await;
        let mut attempt = 0;
        loop {
            let mut meta = KeyMeta::clone(&*self.resolve(key_id)?);
            check(&meta)?;
            let version = meta.current_version() + 1;
            // Idempotent per version: material made by a rotation that died before its record was
            // written (here or, in a fleet, on another sidecar) is reused, never replaced.
            let created = self
                .backend
                .create_version(KeyRef {
                    key_id: &meta.id,
                    version,
                })
                .await;
            if let (Err(_), Some(m)) = (&created, &self.metrics) {
                m.rotation(&meta.id, false, trigger);
            }
            created?;
            meta.versions.push(KeyVersion {
                version,
                created: at,
                rotation: Some(trigger),
            });
            if meta.rotation_enabled {
                meta.next_rotation = meta.next_rotation_from(at);
            }
            let id = meta.id.clone();
            match self.try_publish_key(meta).await {
                Err(Publish::Conflict(id)) => self.after_conflict(&mut attempt, &id).await?,
                other => {
                    if let Some(m) = &self.metrics {
                        m.rotation(&id, other.is_ok(), trigger);
                    }
                    return other.map_err(Publish::into_kms);
                }
            }
        }
    }

    async fn publish_key(&self, meta: KeyMeta) -> Result<Arc<KeyMeta>, KmsError> {
        self.try_publish_key(meta).await.map_err(Publish::into_kms)
    }

    async fn try_publish_key(&self, meta: KeyMeta) -> Result<Arc<KeyMeta>, Publish> {
        // Parsed before anything is written: a record on disk always holds a valid policy.
        let policy = meta
            .policy
            .as_deref()
            .map(Policy::parse)
            .transpose()
            .map_err(KmsError::from)?;
        if let Some(registry) = &self.shared {
            return self.publish_shared(registry, meta, policy).await;
        }
        let path = self.key_path(&meta.id);
        let bytes = serde_json::to_vec_pretty(&meta).map_err(KmsError::internal)?;
        datadir::blocking(move || datadir::write_atomic(&path, &bytes))
            .await
            .map_err(|e| KmsError::internal(e.context("persisting key metadata")))?;
        let meta = Arc::new(meta);
        let mut next = Index::clone(&self.index.load());
        match policy {
            Some(p) => next.policies.insert(meta.id.clone(), Arc::new(p)),
            None => next.policies.remove(&meta.id),
        };
        next.keys.insert(meta.id.clone(), meta.clone());
        self.index.store(Arc::new(next));
        Ok(meta)
    }

    fn key_path(&self, id: &str) -> PathBuf {
        self.dir.path().join("keys").join(format!("{id}.json"))
    }

    /// The file that holds key `id`'s record.
    pub fn record_path(&self, id: &str) -> PathBuf {
        self.key_path(id)
    }

    /// Changes the alias table with `change` (given the current index) and persists it.
    pub async fn update_aliases(
        &self,
        change: impl Fn(&Index, &mut BTreeMap<String, AliasEntry>) -> Result<(), KmsError>,
    ) -> Result<(), KmsError> {
        self.writable()?;
        let _guard = self.write.lock().await;
        let mut attempt = 0;
        loop {
            let mut next = Index::clone(&self.index.load());
            let mut aliases = next.aliases.clone();
            change(&next, &mut aliases)?;
            if let Some(registry) = &self.shared {
                // Each changed alias is guarded by its own revision: of two sidecars creating one
                // alias, one commits and the other re-runs `change`, which then finds it taken.
                match self.persist_aliases_shared(registry, &next, &aliases).await {
                    Err(Publish::Conflict(_)) => {
                        self.after_alias_conflict(registry, &mut attempt).await?;
                        continue;
                    }
                    other => return other.map_err(Publish::into_kms),
                }
            }
            self.persist_aliases(&aliases).await?;
            next.aliases = aliases;
            self.index.store(Arc::new(next));
            return Ok(());
        }
    }

    async fn persist_aliases(
        &self,
        aliases: &BTreeMap<String, AliasEntry>,
    ) -> Result<(), KmsError> {
        let file = AliasFile {
            format: model::RECORD_FORMAT,
            aliases: aliases.clone(),
        };
        let bytes = serde_json::to_vec_pretty(&file).map_err(KmsError::internal)?;
        let path = self.dir.path().join("aliases.json");
        datadir::blocking(move || datadir::write_atomic(&path, &bytes))
            .await
            .map_err(|e| KmsError::internal(e.context("persisting aliases")))
    }

    /// Destroys a key whose waiting period is over: material first, then its aliases, then its
    /// record, so a crash part-way leaves a key that the next pass deletes again.
    async fn delete(&self, id: &str) -> Result<(), KmsError> {
        self.writable()?;
        let _guard = self.write.lock().await;
        let Some(meta) = self.index.load().keys.get(id).cloned() else {
            return Ok(());
        };
        let versions: Vec<u32> = meta.versions.iter().map(|v| v.version).collect();
        self.backend.destroy(id, &versions).await?;
        if let Some(registry) = &self.shared {
            return self
                .delete_shared(registry, id)
                .await
                .map_err(Publish::into_kms);
        }
        let mut next = Index::clone(&self.index.load());
        let before = next.aliases.len();
        next.aliases.retain(|_, a| a.target != id);
        if next.aliases.len() != before {
            self.persist_aliases(&next.aliases).await?;
        }
        let path = self.key_path(id);
        datadir::blocking(move || datadir::remove_durable(&path))
            .await
            .map_err(|e| KmsError::internal(e.context("removing key metadata")))?;
        next.keys.remove(id);
        next.policies.remove(id);
        self.index.store(Arc::new(next));
        Ok(())
    }

    /// Rotates keys whose automatic rotation is due and deletes keys whose waiting period is over.
    /// Runs at start (catching up after downtime) and then periodically.
    pub async fn maintain(&self, now: Timestamp) -> Maintenance {
        let mut done = Maintenance::default();
        let index = self.snapshot();
        let mut ids: Vec<&Arc<KeyMeta>> = index.keys.values().collect();
        ids.sort_by(|a, b| a.id.cmp(&b.id));
        for meta in ids {
            if meta.deletion_due(now) {
                match self.delete(&meta.id).await {
                    Ok(()) => done.deleted.push(meta.id.clone()),
                    Err(e) => {
                        tracing::error!(key = %meta.id, error = %e, source = ?std::error::Error::source(&e), "scheduled key deletion failed");
                        done.deletion_failed.push(meta.id.clone());
                    }
                }
            } else if meta.rotation_due(now) {
                // In a fleet one sidecar rotates a key per period: the lease-held lock keeps the
                // others off; the record's revision guard and idempotent material make even a
                // lock lost to a crash safe (no version duplicated or skipped).
                let lock = match self.rotation_lock(&meta.id).await {
                    Ok(Some(lock)) => lock,
                    Ok(None) => continue,
                    Err(e) => {
                        tracing::warn!(key = %meta.id, error = %e, "automatic rotation postponed: registry unavailable");
                        done.rotation_failed.push(meta.id.clone());
                        continue;
                    }
                };
                let result = self
                    .rotate(&meta.id, RotationType::Automatic, now, |m| {
                        if m.rotation_due(now) {
                            Ok(())
                        } else {
                            Err(KmsError::new(ErrorKind::InvalidState, "no longer due"))
                        }
                    })
                    .await;
                self.rotation_unlock(lock).await;
                match result {
                    Ok(m) => {
                        tracing::info!(key = %m.id, version = m.current_version(), "automatic rotation");
                        done.rotated.push(meta.id.clone());
                    }
                    Err(e) if e.kind() == ErrorKind::InvalidState && self.shared.is_some() => {
                        tracing::debug!(key = %meta.id, "rotated by another sidecar");
                    }
                    Err(e) => {
                        tracing::error!(key = %meta.id, error = %e, "automatic rotation failed");
                        done.rotation_failed.push(meta.id.clone());
                    }
                }
            }
        }
        done
    }
}

/// Why a registry write did not happen.
enum Publish {
    /// Another sidecar changed key `0` (or an alias: empty) first.
    Conflict(String),
    Failed(KmsError),
}

impl From<KmsError> for Publish {
    fn from(e: KmsError) -> Self {
        Publish::Failed(e)
    }
}

impl Publish {
    fn into_kms(self) -> KmsError {
        match self {
            Publish::Conflict(_) => registry::etcd::WriteError::Conflict.into_kms(),
            Publish::Failed(e) => e,
        }
    }
}
