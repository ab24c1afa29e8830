//! Client credentials the sidecar issued: access key id -> principal name and secret.
//!
//! They live in `clients.json` with each secret sealed under the root key. The running server reloads
//! the file within a second of a change, so `kms-sidecar clients add|revoke` takes effect without a
//! restart. Secrets are `SecretString`s: never printed by `Debug`, never logged.
//!
//! This module is the server's side, the in-memory table and its reload; the file format and the
//! CLI's edits of it are in `file`.

mod file;

use std::collections::HashMap;
use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use arc_swap::{ArcSwap, ArcSwapOption};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use secrecy::SecretString;
use zeroize::Zeroizing;

use super::Principal;
use crate::datadir::DataDir;
pub use file::{
    Exported, Issued, Listed, add, export, import, list, new_record, record_name, revoke,
    revoked_json, rotate_secret, rotated_record,
};
use file::{FILE, File, Record, RevokedRecord, purpose, read_file};

/// A derived SigV4 signing key, cached per (date, region) because deriving it costs four HMACs.
pub struct SigningKey {
    pub date: String,
    pub region: String,
    pub key: Zeroizing<[u8; 32]>,
}

impl std::fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SigningKey({}/{}, [redacted])", self.date, self.region)
    }
}

/// One issued credential.
#[derive(Debug)]
pub struct Client {
    pub access_key_id: String,
    /// The principal the credential authenticates as.
    pub principal: Arc<Principal>,
    pub created: f64,
    /// The sealed form of the secret, to notice a rotated secret on reload.
    sealed: String,
    secret: SecretString,
    signing_key: ArcSwapOption<SigningKey>,
}

impl Client {
    pub fn secret(&self) -> &SecretString {
        &self.secret
    }

    /// The cached signing key, if it was derived for this `date` and `region`.
    pub fn cached_signing_key(&self, date: &str, region: &str) -> Option<Arc<SigningKey>> {
        self.signing_key
            .load_full()
            .filter(|k| k.date == date && k.region == region)
    }

    pub fn cache_signing_key(&self, key: SigningKey) {
        self.signing_key.store(Some(Arc::new(key)));
    }
}

/// The ARN of principal `name` in `account`.
pub fn principal_arn(account: &str, name: &str) -> String {
    format!("arn:aws:iam::{account}:user/{name}")
}

/// The live table of credentials used by the server.
#[derive(Debug)]
pub struct ClientStore {
    dir: Arc<DataDir>,
    path: PathBuf,
    account: String,
    clients: ArcSwap<HashMap<String, Arc<Client>>>,
    /// Revoked access key id -> principal name.
    revoked: ArcSwap<HashMap<String, String>>,
    /// (inode, size, mtime) of the file last loaded; a rename by `write_atomic` always changes the inode.
    stamp: std::sync::Mutex<Option<(u64, u64, i64, i64)>>,
    /// Fed by the shared registry ([`replace`](Self::replace)) instead of `clients.json`.
    shared: bool,
}

impl ClientStore {
    pub fn open(dir: Arc<DataDir>, account: &str) -> anyhow::Result<Self> {
        let path = dir.path().join(FILE);
        let store = Self {
            dir,
            path,
            account: account.to_string(),
            clients: ArcSwap::from_pointee(HashMap::new()),
            revoked: ArcSwap::from_pointee(HashMap::new()),
            stamp: std::sync::Mutex::new(None),
            shared: false,
        };
        store.reload()?;
        Ok(store)
    }

    /// An empty table that the fleet's registry fills with [`replace`](Self::replace); the local
    /// `clients.json` is ignored.
    pub fn shared(dir: Arc<DataDir>, account: &str) -> Self {
        Self {
            path: dir.path().join(FILE),
            dir,
            account: account.to_string(),
            clients: ArcSwap::from_pointee(HashMap::new()),
            revoked: ArcSwap::from_pointee(HashMap::new()),
            stamp: std::sync::Mutex::new(None),
            shared: true,
        }
    }

    /// Replaces the table with the registry's records (JSON, as [`new_record`] makes them). A
    /// record that does not parse or unseal is skipped and logged: one bad entry written by a
    /// misconfigured pod must not lock every client of the fleet out.
    pub fn replace(&self, clients: &[&[u8]], revoked: &[&[u8]]) {
        let mut file = File {
            format: 1,
            clients: Vec::new(),
            revoked: Vec::new(),
        };
        for bytes in clients {
            match serde_json::from_slice::<Record>(bytes) {
                Ok(r) if self.unseal_secret(&r).is_ok() => file.clients.push(r),
                Ok(r) => {
                    tracing::error!(access_key_id = %r.access_key_id, "registry client does not unseal with this root key; skipped")
                }
                Err(e) => tracing::error!(error = %e, "registry client record is corrupt; skipped"),
            }
        }
        for bytes in revoked {
            match serde_json::from_slice::<RevokedRecord>(bytes) {
                Ok(r) => file.revoked.push(r),
                Err(e) => {
                    tracing::error!(error = %e, "registry revoked-client record is corrupt; skipped")
                }
            }
        }
        if let Err(e) = self.load(file, None) {
            tracing::error!(error = %format!("{e:#}"), "cannot apply the registry's client table");
        }
    }

    fn unseal_secret(&self, r: &Record) -> anyhow::Result<SecretString> {
        let sealed = B64.decode(&r.sealed_secret).with_context(|| {
            format!(
                "client {} in {} is corrupt",
                r.access_key_id,
                self.path.display()
            )
        })?;
        let secret = self
            .dir
            .unseal(&purpose(&r.access_key_id), &sealed)
            .with_context(|| {
                format!(
                    "client {} in {} does not unseal",
                    r.access_key_id,
                    self.path.display()
                )
            })?;
        let secret = String::from_utf8(secret.to_vec())
            .with_context(|| format!("client {} secret is not text", r.access_key_id))?;
        Ok(SecretString::from(secret))
    }

    /// Looks up a credential by access key id (lock-free).
    pub fn get(&self, access_key_id: &str) -> Option<Arc<Client>> {
        self.clients.load().get(access_key_id).cloned()
    }

    /// The principal name of a revoked credential.
    pub fn revoked_name(&self, access_key_id: &str) -> Option<String> {
        self.revoked.load().get(access_key_id).cloned()
    }

    /// Principal names of all active credentials (the bounded set of `principal` label values).
    pub fn names(&self) -> Vec<String> {
        self.clients
            .load()
            .values()
            .map(|c| c.principal.name.clone())
            .collect()
    }

    pub fn is_empty(&self) -> bool {
        self.clients.load().is_empty()
    }

    fn current_stamp(&self) -> Option<(u64, u64, i64, i64)> {
        fs::metadata(&self.path)
            .ok()
            .map(|m| (m.ino(), m.size(), m.mtime(), m.mtime_nsec()))
    }

    /// Reloads `clients.json` if it changed since the last load. Returns whether it did.
    pub fn reload_if_changed(&self) -> anyhow::Result<bool> {
        if self.shared {
            return Ok(false);
        }
        let stamp = self.current_stamp();
        let unchanged = self.stamp.lock().map(|s| *s == stamp).unwrap_or(false);
        if unchanged {
            return Ok(false);
        }
        self.reload()?;
        Ok(true)
    }

    /// Loads `clients.json`, keeping cached signing keys of credentials that did not change.
    pub fn reload(&self) -> anyhow::Result<()> {
        if self.shared {
            return Ok(());
        }
        let stamp = self.current_stamp();
        let file = read_file(&self.path)?;
        self.load(file, stamp)
    }

    fn load(&self, file: File, stamp: Option<(u64, u64, i64, i64)>) -> anyhow::Result<()> {
        let old = self.clients.load();
        let mut next = HashMap::with_capacity(file.clients.len());
        for r in file.clients {
            if let Some(existing) = old.get(&r.access_key_id).filter(|c| {
                c.sealed == r.sealed_secret
                    && c.principal.tags == r.tags
                    && c.principal.name == r.name
            }) {
                next.insert(r.access_key_id.clone(), existing.clone());
                continue;
            }
            let secret = self.unseal_secret(&r)?;
            next.insert(
                r.access_key_id.clone(),
                Arc::new(Client {
                    access_key_id: r.access_key_id,
                    principal: Arc::new(Principal {
                        arn: principal_arn(&self.account, &r.name),
                        name: r.name,
                        tags: r.tags,
                    }),
                    sealed: r.sealed_secret,
                    created: r.created,
                    secret,
                    signing_key: ArcSwapOption::empty(),
                }),
            );
        }
        self.clients.store(Arc::new(next));
        self.revoked.store(Arc::new(
            file.revoked
                .into_iter()
                .map(|r| (r.access_key_id, r.name))
                .collect(),
        ));
        if let Ok(mut s) = self.stamp.lock() {
            *s = stamp;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::datadir::RootKeySource;
    use secrecy::ExposeSecret;
    use std::collections::BTreeMap;

    #[test]
    fn add_list_revoke_reload() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = Arc::new(DataDir::open(tmp.path(), &RootKeySource::DataDir).unwrap());
        let store = ClientStore::open(dir.clone(), "111122223333").unwrap();
        assert!(store.is_empty());
        let issued = add(
            &dir,
            "app",
            BTreeMap::from([("tenant".to_string(), "a".to_string())]),
        )
        .unwrap();
        assert!(issued.access_key_id.starts_with("AKSC") && issued.access_key_id.len() == 20);
        assert!(!format!("{issued:?}").contains(issued.secret.expose_secret()));
        assert!(add(&dir, "app", BTreeMap::new()).is_err());
        assert!(add(&dir, "bad name", BTreeMap::new()).is_err());
        assert!(store.reload_if_changed().unwrap());
        assert!(!store.reload_if_changed().unwrap());
        let client = store.get(&issued.access_key_id).unwrap();
        assert_eq!(client.principal.arn, "arn:aws:iam::111122223333:user/app");
        assert_eq!(client.principal.tags["tenant"], "a");
        let rotated = rotate_secret(&dir, &issued.access_key_id).unwrap();
        assert!(store.reload_if_changed().unwrap());
        let client = store.get(&issued.access_key_id).unwrap();
        assert_eq!(
            client.secret().expose_secret(),
            rotated.secret.expose_secret()
        );
        let issued = rotated;
        assert_eq!(
            client.secret().expose_secret(),
            issued.secret.expose_secret()
        );
        assert!(!format!("{client:?}").contains(issued.secret.expose_secret()));
        let raw = fs::read_to_string(tmp.path().join(FILE)).unwrap();
        assert!(
            !raw.contains(issued.secret.expose_secret()),
            "secret stored in clear"
        );
        assert_eq!(list(&dir).unwrap()[0].name, "app");
        revoke(&dir, &issued.access_key_id).unwrap();
        assert!(revoke(&dir, &issued.access_key_id).is_err());
        assert!(store.reload_if_changed().unwrap());
        assert!(store.get(&issued.access_key_id).is_none());
        assert_eq!(
            store.revoked_name(&issued.access_key_id).as_deref(),
            Some("app")
        );
    }
}
