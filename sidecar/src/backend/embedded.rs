//! The default backend: AES-256-GCM master keys held in process, sealed at rest under the data
//! directory's root key (`material/<key id>.<version>.key`), never written in clear.
//!
//! Zero setup is the point: `cargo run` and a data directory is a working KMS. The price is that key
//! material is in the sidecar's memory; `docs/backends.md` compares it with the PKCS#11 backend.
//!
//! In a fleet the sealed material lives in the shared registry instead of `material/`: a
//! [`MaterialStore`] (implemented by `keys/registry/etcd.rs`) stores it, and the registry's watch
//! hands every sidecar the versions others created ([`Embedded::adopt`]).

use std::collections::{BTreeMap, HashMap};
use std::fs;
use std::sync::Arc;

use anyhow::Context;
use arc_swap::ArcSwap;
use async_trait::async_trait;
use zeroize::Zeroizing;

use super::{Backend, BackendError, BackendErrorKind, KeyRef};
use crate::crypto::{self, Cipher, KEY_LEN};
use crate::datadir::{self, DataDir};

type Versions = BTreeMap<u32, Arc<Cipher>>;

/// Where sealed material is kept when it is shared by a fleet (the backend knows no registry).
#[async_trait]
pub trait MaterialStore: Send + Sync + std::fmt::Debug {
    /// Stores `sealed` for `key` unless material exists; returns the sealed material in force.
    async fn put_if_absent(
        &self,
        key: KeyRef<'_>,
        sealed: Vec<u8>,
    ) -> Result<Vec<u8>, BackendError>;
    /// Removes the listed versions' material.
    async fn remove(&self, key_id: &str, versions: &[u32]) -> Result<(), BackendError>;
}

/// Master keys in memory, sealed on disk (or in the shared registry).
#[derive(Debug)]
pub struct Embedded {
    dir: Arc<DataDir>,
    shared: Option<Arc<dyn MaterialStore>>,
    keys: ArcSwap<HashMap<String, Versions>>,
    /// Serializes writers; readers never take it.
    write: tokio::sync::Mutex<()>,
}

fn purpose(key_id: &str, version: u32) -> String {
    format!("kms-sidecar/material/{key_id}/{version}")
}

fn file_name(key_id: &str, version: u32) -> String {
    format!("{key_id}.{version}.key")
}

impl Embedded {
    /// Loads every sealed key version from `material/`. A file that does not unseal stops the start
    /// with its name: it was tampered with or belongs to another root key.
    pub fn open(dir: Arc<DataDir>) -> anyhow::Result<Self> {
        let material = dir.path().join("material");
        let mut keys: HashMap<String, Versions> = HashMap::new();
        let entries = fs::read_dir(&material)
            .with_context(|| format!("cannot read {}", material.display()))?;
        for entry in entries {
            let entry = entry.with_context(|| format!("cannot read {}", material.display()))?;
            let name = entry.file_name();
            let name = name.to_string_lossy();
            if name.starts_with('.') {
                // A temp file left by a crash mid-write: the rename never happened, so it is not a key.
                continue;
            }
            let Some((key_id, version)) = name
                .strip_suffix(".key")
                .and_then(|stem| stem.rsplit_once('.'))
                .and_then(|(id, v)| Some((id.to_string(), v.parse::<u32>().ok()?)))
            else {
                anyhow::bail!(
                    "unexpected file {} in the material directory",
                    entry.path().display()
                );
            };
            let sealed = fs::read(entry.path())
                .with_context(|| format!("cannot read {}", entry.path().display()))?;
            let key = dir
                .unseal(&purpose(&key_id, version), &sealed)
                .with_context(|| {
                    format!("key material {} does not unseal", entry.path().display())
                })?;
            let cipher = Cipher::new(&key).with_context(|| {
                format!("key material {} has a wrong length", entry.path().display())
            })?;
            keys.entry(key_id)
                .or_default()
                .insert(version, Arc::new(cipher));
        }
        Ok(Self {
            dir,
            shared: None,
            keys: ArcSwap::from_pointee(keys),
            write: tokio::sync::Mutex::new(()),
        })
    }

    /// An embedded backend whose sealed material lives in `store` (the fleet's registry); the
    /// data directory only provides the root key. Material arrives through [`adopt`](Self::adopt).
    pub fn shared(dir: Arc<DataDir>, store: Arc<dyn MaterialStore>) -> Self {
        Self {
            dir,
            shared: Some(store),
            keys: ArcSwap::from_pointee(HashMap::new()),
            write: tokio::sync::Mutex::new(()),
        }
    }

    fn open_sealed(&self, key_id: &str, version: u32, sealed: &[u8]) -> anyhow::Result<Cipher> {
        let key = self
            .dir
            .unseal(&purpose(key_id, version), sealed)
            .with_context(|| format!("key material {key_id}/{version} does not unseal"))?;
        Cipher::new(&key)
            .with_context(|| format!("key material {key_id}/{version} has a wrong length"))
    }

    /// Takes sealed material another sidecar stored (or that was loaded from the registry).
    pub fn adopt(&self, key_id: &str, version: u32, sealed: &[u8]) -> anyhow::Result<()> {
        let cipher = Arc::new(self.open_sealed(key_id, version, sealed)?);
        self.keys.rcu(|current| {
            let mut next = HashMap::clone(current);
            next.entry(key_id.to_string())
                .or_default()
                .insert(version, cipher.clone());
            next
        });
        Ok(())
    }

    /// Drops material that was removed from the registry.
    pub fn forget(&self, key_id: &str, version: u32) {
        self.keys.rcu(|current| {
            let mut next = HashMap::clone(current);
            if let Some(held) = next.get_mut(key_id) {
                held.remove(&version);
                if held.is_empty() {
                    next.remove(key_id);
                }
            }
            next
        });
    }

    /// Drops all material (before a full reload from the registry).
    pub fn forget_all(&self) {
        self.keys.store(Arc::new(HashMap::new()));
    }

    /// Whether the material of `key_id` version `version` was loaded.
    pub fn holds(&self, key_id: &str, version: u32) -> bool {
        self.keys
            .load()
            .get(key_id)
            .is_some_and(|versions| versions.contains_key(&version))
    }

    /// The file that holds (or should hold) one version's sealed material.
    pub fn material_path(&self, key_id: &str, version: u32) -> std::path::PathBuf {
        self.dir
            .path()
            .join("material")
            .join(file_name(key_id, version))
    }

    fn cipher(&self, key: KeyRef<'_>) -> Result<Arc<Cipher>, BackendError> {
        self.keys
            .load()
            .get(key.key_id)
            .and_then(|versions| versions.get(&key.version))
            .cloned()
            .ok_or_else(|| BackendError::new(BackendErrorKind::MaterialMissing))
    }
}

#[async_trait]
impl Backend for Embedded {
    fn name(&self) -> &'static str {
        "embedded"
    }

    async fn create_version(&self, key: KeyRef<'_>) -> Result<(), BackendError> {
        let _guard = self.write.lock().await;
        // Idempotent: material that exists (a crash after writing it, before the key record) is
        // kept, never overwritten, so no ciphertext made under it can be stranded.
        if self.cipher(key).is_ok() {
            return Ok(());
        }
        let material = crypto::random_bytes(KEY_LEN)
            .map_err(|e| BackendError::with_source(BackendErrorKind::Internal, e))?;
        let cipher =
            Cipher::new(&material).ok_or_else(|| BackendError::new(BackendErrorKind::Internal))?;
        let sealed = self
            .dir
            .seal(&purpose(key.key_id, key.version), &material)
            .map_err(|e| BackendError::with_source(BackendErrorKind::Internal, e))?;
        if let Some(store) = &self.shared {
            // Whoever stored this version first wins; a sidecar that lost the race uses theirs.
            let in_force = store.put_if_absent(key, sealed).await?;
            self.adopt(key.key_id, key.version, &in_force)
                .map_err(|e| BackendError::with_source(BackendErrorKind::Internal, e))?;
            return Ok(());
        }
        let path = self
            .dir
            .path()
            .join("material")
            .join(file_name(key.key_id, key.version));
        datadir::blocking(move || datadir::write_atomic(&path, &sealed))
            .await
            .map_err(|e| BackendError::with_source(BackendErrorKind::Internal, e))?;
        let mut next = HashMap::clone(&self.keys.load());
        next.entry(key.key_id.to_string())
            .or_default()
            .insert(key.version, Arc::new(cipher));
        self.keys.store(Arc::new(next));
        Ok(())
    }

    async fn encrypt(
        &self,
        key: KeyRef<'_>,
        aad: &[u8],
        plaintext: &[u8],
    ) -> Result<Vec<u8>, BackendError> {
        self.cipher(key)?
            .seal(aad, plaintext)
            .map_err(|e| BackendError::with_source(BackendErrorKind::Internal, e))
    }

    async fn decrypt(
        &self,
        key: KeyRef<'_>,
        aad: &[u8],
        sealed: &[u8],
    ) -> Result<Zeroizing<Vec<u8>>, BackendError> {
        self.cipher(key)?
            .open(aad, sealed)
            .map_err(|_| BackendError::new(BackendErrorKind::InvalidCiphertext))
    }

    async fn destroy(&self, key_id: &str, versions: &[u32]) -> Result<(), BackendError> {
        let _guard = self.write.lock().await;
        if let Some(store) = &self.shared {
            store.remove(key_id, versions).await?;
            for v in versions {
                self.forget(key_id, *v);
            }
            return Ok(());
        }
        let dir = self.dir.path().join("material");
        let paths: Vec<_> = versions
            .iter()
            .map(|v| dir.join(file_name(key_id, *v)))
            .collect();
        datadir::blocking(move || paths.iter().try_for_each(|p| datadir::remove_durable(p)))
            .await
            .map_err(|e| BackendError::with_source(BackendErrorKind::Internal, e))?;
        let mut next = HashMap::clone(&self.keys.load());
        if let Some(held) = next.get_mut(key_id) {
            held.retain(|v, _| !versions.contains(v));
            if held.is_empty() {
                next.remove(key_id);
            }
        }
        self.keys.store(Arc::new(next));
        Ok(())
    }

    async fn random(&self, n: usize) -> Result<Zeroizing<Vec<u8>>, BackendError> {
        crypto::random_bytes(n)
            .map_err(|e| BackendError::with_source(BackendErrorKind::Internal, e))
    }
}
