//! `clients.json`, the issued credentials on disk: its format (each secret sealed under the root
//! key), the CLI's edits (`clients add|revoke|rotate|list`, under a lock file) and the same records
//! as the fleet registry stores them. Apart from the in-memory [`super::ClientStore`] because this
//! side runs in the CLI and only writes, while the store runs in the server and only reads.

use std::collections::BTreeMap;
use std::fs;
use std::path::Path;

use anyhow::{Context, bail};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use secrecy::SecretString;
use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

use crate::crypto;
use crate::datadir::{self, DataDir};

pub(super) const FILE: &str = "clients.json";
const LOCK: &str = "clients.lock";

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct Record {
    pub(super) access_key_id: String,
    pub(super) name: String,
    pub(super) created: f64,
    /// The secret access key sealed under the root key (base64).
    pub(super) sealed_secret: String,
    /// Principal attributes (e.g. `tenant`), visible to key policies as `aws:PrincipalTag/<name>`.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub(super) tags: BTreeMap<String, String>,
}

/// A revoked credential: kept (without its secret) so a later use is reported as revoked.
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RevokedRecord {
    pub(super) access_key_id: String,
    pub(super) name: String,
    pub(super) revoked: f64,
}

#[derive(Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct File {
    pub(super) format: u32,
    pub(super) clients: Vec<Record>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub(super) revoked: Vec<RevokedRecord>,
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

pub(super) fn purpose(access_key_id: &str) -> String {
    format!("kms-sidecar/client-secret/{access_key_id}")
}

pub(super) fn read_file(path: &Path) -> anyhow::Result<File> {
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
