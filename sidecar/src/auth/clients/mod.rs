//! Client credentials the sidecar issued: access key id -> principal name and secret.
//!
//! They live in `clients.json` with each secret sealed under the root key. The running server reloads
//! the file within a second of a change, so `kms-sidecar clients add|revoke` takes effect without a
//! restart. Secrets are `SecretString`s: never printed by `Debug`, never logged.

use std::collections::{BTreeMap, HashMap};
use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context, bail};
use arc_swap::{ArcSwap, ArcSwapOption};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use secrecy::SecretString;
use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

use super::Principal;
use crate::crypto;
use crate::datadir::{self, DataDir};

const FILE: &str = "clients.json";
const LOCK: &str = "clients.lock";

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

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Record {
    access_key_id: String,
    name: String,
    created: f64,
    /// The secret access key sealed under the root key (base64).
    sealed_secret: String,
    /// Principal attributes (e.g. `tenant`), visible to key policies as `aws:PrincipalTag/<name>`.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    tags: BTreeMap<String, String>,
}

/// A revoked credential: kept (without its secret) so a later use is reported as revoked.
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct RevokedRecord {
    access_key_id: String,
    name: String,
    revoked: f64,
}

#[derive(Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct File {
    format: u32,
    clients: Vec<Record>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    revoked: Vec<RevokedRecord>,
}

/// What `clients add` returns: shown once, then only the sealed copy exists.
pub struct Issued {
    pub access_key_id: String,
    pub name: String,
    pub secret: SecretString,
}

impl std::fmt::Debug for Issued {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "Issued({}, {}, [redacted])",
            self.access_key_id, self.name
        )
    }
}

/// A listing row (no secret).
#[derive(Debug, Clone, PartialEq)]
pub struct Listed {
    pub access_key_id: String,
    pub name: String,
    pub created: f64,
}

/// The ARN of principal `name` in `account`.
pub fn principal_arn(account: &str, name: &str) -> String {
    format!("arn:aws:iam::{account}:user/{name}")
}

fn purpose(access_key_id: &str) -> String {
    format!("kms-sidecar/client-secret/{access_key_id}")
}

fn read_file(path: &Path) -> anyhow::Result<File> {
    match fs::read(path) {
        Ok(bytes) => serde_json::from_slice(&bytes)
            .with_context(|| format!("client table {} is corrupt or truncated", path.display())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(File {
            format: 1,
            clients: Vec::new(),
            revoked: Vec::new(),
        }),
        Err(e) => Err(e).with_context(|| format!("cannot read {}", path.display())),
    }
}

fn write_file(path: &Path, file: &File) -> anyhow::Result<()> {
    datadir::write_atomic(path, &serde_json::to_vec_pretty(file)?)
}

/// Runs `f` holding `clients.lock`, so two CLI invocations cannot lose each other's changes.
fn with_lock<T>(dir: &DataDir, f: impl FnOnce(&Path) -> anyhow::Result<T>) -> anyhow::Result<T> {
    let lock_path = dir.path().join(LOCK);
    let lock = fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&lock_path)
        .with_context(|| format!("cannot open {}", lock_path.display()))?;
    lock.lock()
        .with_context(|| format!("cannot lock {}", lock_path.display()))?;
    f(&dir.path().join(FILE))
}

fn random_token(len: usize, alphabet: &[u8]) -> anyhow::Result<String> {
    let bytes = crypto::random_bytes(len)?;
    // 256 % alphabet.len() bias is negligible for 32/62-letter alphabets at these lengths, and the
    // alphabets used here divide 256 (32) or are only used for the non-secret id.
    Ok(bytes
        .iter()
        .map(|b| char::from(alphabet[usize::from(*b) % alphabet.len()]))
        .collect())
}

fn check_new(name: &str, tags: &BTreeMap<String, String>) -> anyhow::Result<()> {
    for (k, v) in tags {
        if k.is_empty() || k.len() > 128 || v.len() > 256 {
            bail!(
                "principal tag {k:?} must have a 1-128 character name and a value of at most 256 characters"
            );
        }
    }
    if name.is_empty()
        || name.len() > 64
        || !name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"+=,.@_-".contains(&b))
    {
        bail!("client name must be 1-64 characters of letters, digits and +=,.@_-");
    }
    Ok(())
}

/// Issues a new credential for principal `name` and stores it sealed.
pub fn add(dir: &DataDir, name: &str, tags: BTreeMap<String, String>) -> anyhow::Result<Issued> {
    check_new(name, &tags)?;
    with_lock(dir, |path| {
        let mut file = read_file(path)?;
        if file.clients.iter().any(|c| c.name == name) {
            bail!("a client named {name} already exists (revoke it first, or choose another name)");
        }
        let access_key_id = format!(
            "AKSC{}",
            random_token(16, b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567")?
        );
        let secret = Zeroizing::new(B64.encode(&*crypto::random_bytes(30)?));
        let sealed = dir.seal(&purpose(&access_key_id), secret.as_bytes())?;
        file.clients.push(Record {
            access_key_id: access_key_id.clone(),
            name: name.to_string(),
            created: crate::kms::now(),
            sealed_secret: B64.encode(sealed),
            tags,
        });
        write_file(path, &file)?;
        Ok(Issued {
            access_key_id,
            name: name.to_string(),
            secret: SecretString::from(secret.to_string()),
        })
    })
}

/// Removes a credential; the running server stops accepting it within a second.
pub fn revoke(dir: &DataDir, access_key_id: &str) -> anyhow::Result<()> {
    with_lock(dir, |path| {
        let mut file = read_file(path)?;
        let Some(pos) = file
            .clients
            .iter()
            .position(|c| c.access_key_id == access_key_id)
        else {
            bail!("no client with access key id {access_key_id}");
        };
        let gone = file.clients.remove(pos);
        file.revoked.push(RevokedRecord {
            access_key_id: gone.access_key_id,
            name: gone.name,
            revoked: crate::kms::now(),
        });
        write_file(path, &file)
    })
}

/// Issues a new secret for an existing credential (same access key id and principal); the old
/// secret stops working within a second.
pub fn rotate_secret(dir: &DataDir, access_key_id: &str) -> anyhow::Result<Issued> {
    with_lock(dir, |path| {
        let mut file = read_file(path)?;
        let Some(record) = file
            .clients
            .iter_mut()
            .find(|c| c.access_key_id == access_key_id)
        else {
            bail!("no client with access key id {access_key_id}");
        };
        let secret = Zeroizing::new(B64.encode(&*crypto::random_bytes(30)?));
        record.sealed_secret = B64.encode(dir.seal(&purpose(access_key_id), secret.as_bytes())?);
        let name = record.name.clone();
        write_file(path, &file)?;
        Ok(Issued {
            access_key_id: access_key_id.to_string(),
            name,
            secret: SecretString::from(secret.to_string()),
        })
    })
}

/// Lists credentials without secrets.
pub fn list(dir: &DataDir) -> anyhow::Result<Vec<Listed>> {
    Ok(read_file(&dir.path().join(FILE))?
        .clients
        .into_iter()
        .map(|r| Listed {
            access_key_id: r.access_key_id,
            name: r.name,
            created: r.created,
        })
        .collect())
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

/// A new credential for the shared registry: what to show once, and its record (JSON, the secret
/// sealed under the root key).
pub fn new_record(
    dir: &DataDir,
    name: &str,
    tags: BTreeMap<String, String>,
) -> anyhow::Result<(Issued, Vec<u8>)> {
    check_new(name, &tags)?;
    let access_key_id = format!(
        "AKSC{}",
        random_token(16, b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567")?
    );
    let secret = Zeroizing::new(B64.encode(&*crypto::random_bytes(30)?));
    let sealed = dir.seal(&purpose(&access_key_id), secret.as_bytes())?;
    let record = Record {
        access_key_id: access_key_id.clone(),
        name: name.to_string(),
        created: crate::kms::now(),
        sealed_secret: B64.encode(sealed),
        tags,
    };
    Ok((
        Issued {
            access_key_id,
            name: name.to_string(),
            secret: SecretString::from(secret.to_string()),
        },
        serde_json::to_vec(&record)?,
    ))
}

/// A registry client record with a new secret (same access key id, principal and tags): what to
/// show once, and the record to write in place of the old one.
pub fn rotated_record(dir: &DataDir, record: &[u8]) -> anyhow::Result<(Issued, Vec<u8>)> {
    let mut record: Record = serde_json::from_slice(record).context("client record is corrupt")?;
    let secret = Zeroizing::new(B64.encode(&*crypto::random_bytes(30)?));
    record.sealed_secret =
        B64.encode(dir.seal(&purpose(&record.access_key_id), secret.as_bytes())?);
    Ok((
        Issued {
            access_key_id: record.access_key_id.clone(),
            name: record.name.clone(),
            secret: SecretString::from(secret.to_string()),
        },
        serde_json::to_vec(&record)?,
    ))
}

/// The principal name in a registry client record.
pub fn record_name(record: &[u8]) -> anyhow::Result<String> {
    Ok(serde_json::from_slice::<Record>(record)
        .context("client record is corrupt")?
        .name)
}

/// The registry record that marks `access_key_id` (principal `name`) revoked.
pub fn revoked_json(access_key_id: &str, name: &str) -> anyhow::Result<Vec<u8>> {
    Ok(serde_json::to_vec(&RevokedRecord {
        access_key_id: access_key_id.to_string(),
        name: name.to_string(),
        revoked: crate::kms::now(),
    })?)
}

/// Issued and revoked credentials as registry records: (access key id, record JSON) each.
pub type Exported = (Vec<(String, Vec<u8>)>, Vec<(String, Vec<u8>)>);

/// The data directory's client table as registry records (for `registry import`).
pub fn export(dir: &DataDir) -> anyhow::Result<Exported> {
    let file = read_file(&dir.path().join(FILE))?;
    let mut clients = Vec::new();
    for r in file.clients {
        clients.push((r.access_key_id.clone(), serde_json::to_vec(&r)?));
    }
    let mut revoked = Vec::new();
    for r in file.revoked {
        revoked.push((r.access_key_id.clone(), serde_json::to_vec(&r)?));
    }
    Ok((clients, revoked))
}

/// Writes registry records into the data directory's client table (for `registry export`).
pub fn import(dir: &DataDir, clients: &[&[u8]], revoked: &[&[u8]]) -> anyhow::Result<()> {
    with_lock(dir, |path| {
        let mut file = read_file(path)?;
        for bytes in clients {
            let r: Record = serde_json::from_slice(bytes).context("client record is corrupt")?;
            file.clients.retain(|c| c.access_key_id != r.access_key_id);
            file.clients.push(r);
        }
        for bytes in revoked {
            let r: RevokedRecord =
                serde_json::from_slice(bytes).context("revoked client record is corrupt")?;
            file.clients.retain(|c| c.access_key_id != r.access_key_id);
            file.revoked.retain(|c| c.access_key_id != r.access_key_id);
            file.revoked.push(r);
        }
        write_file(path, &file)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::datadir::RootKeySource;
    use secrecy::ExposeSecret;

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
