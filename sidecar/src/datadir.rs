//! The sidecar's data directory: its exclusive lock, the root key that seals everything secret in it,
//! and the one crash-safe way to write a file (temp file, fsync, rename, fsync directory).
//!
//! Layout (see `docs/data-dir.md`):
//! `LOCK` (held by the running server), `root.key` (0600, unless the root key comes from elsewhere),
//! `root.check` (proves the root key is the right one), `keys/` (key metadata), `aliases.json`,
//! `material/` (sealed embedded key material), `clients.json` (sealed client secrets).

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use secrecy::{ExposeSecret, SecretString};
use zeroize::Zeroizing;

use crate::crypto::{self, Cipher, KEY_LEN};

const ROOT_CHECK_PLAINTEXT: &[u8] = b"kms-sidecar root key check v1";
const ROOT_CHECK_AAD: &[u8] = b"kms-sidecar/root-check";

/// Where the root key comes from.
#[derive(Debug, Clone)]
pub enum RootKeySource {
    /// `root.key` in the data directory, created (0600) on first run.
    DataDir,
    /// A file elsewhere (e.g. a mounted secret) holding 64 hex characters.
    File(PathBuf),
    /// 64 hex characters given directly (the `KMS_SIDECAR_ROOT_KEY` environment variable).
    Hex(SecretString),
}

/// An opened data directory with its root key loaded and checked.
#[derive(Debug)]
pub struct DataDir {
    path: PathBuf,
    sealer: Cipher,
}

/// Holds the data directory's exclusive lock for as long as it lives.
#[derive(Debug)]
pub struct DirLock {
    _file: File,
}

impl DataDir {
    /// Opens (creating on first use) the data directory and loads the root key.
    ///
    /// A wrong root key fails here, naming `root.check`, before anything is read or written.
    pub fn open(path: &Path, root: &RootKeySource) -> anyhow::Result<Self> {
        fs::create_dir_all(path)
            .with_context(|| format!("cannot create data directory {}", path.display()))?;
        let _ = fs::set_permissions(path, fs::Permissions::from_mode(0o700));
        for sub in ["keys", "material"] {
            let dir = path.join(sub);
            fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
            let _ = fs::set_permissions(&dir, fs::Permissions::from_mode(0o700));
        }
        let key = load_root_key(path, root)?;
        let sealer =
            Cipher::new(&key).context("the root key must be 32 bytes (64 hex characters)")?;
        let dir = Self {
            path: path.to_path_buf(),
            sealer,
        };
        dir.check_root_key()?;
        Ok(dir)
    }

    /// Takes the exclusive lock; a second sidecar on the same directory is refused.
    pub fn lock(&self) -> anyhow::Result<DirLock> {
        let lock_path = self.path.join("LOCK");
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .with_context(|| format!("cannot open {}", lock_path.display()))?;
        match file.try_lock() {
            Ok(()) => Ok(DirLock { _file: file }),
            Err(fs::TryLockError::WouldBlock) => bail!(
                "data directory {} is in use by another kms-sidecar process (lock {} is held)",
                self.path.display(),
                lock_path.display()
            ),
            Err(fs::TryLockError::Error(e)) => {
                Err(e).with_context(|| format!("cannot lock {}", lock_path.display()))
            }
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Seals `plaintext` under the root key, bound to `purpose` (which names what it is and whose).
    pub fn seal(&self, purpose: &str, plaintext: &[u8]) -> anyhow::Result<Vec<u8>> {
        Ok(self.sealer.seal(purpose.as_bytes(), plaintext)?)
    }

    /// Opens a sealed value; a different `purpose` or a tampered file fails.
    pub fn unseal(&self, purpose: &str, sealed: &[u8]) -> anyhow::Result<Zeroizing<Vec<u8>>> {
        Ok(self.sealer.open(purpose.as_bytes(), sealed)?)
    }

    fn check_root_key(&self) -> anyhow::Result<()> {
        let check = self.path.join("root.check");
        match fs::read(&check) {
            Ok(sealed) => {
                let opened = self.sealer.open(ROOT_CHECK_AAD, &sealed).map_err(|_| {
                    anyhow::anyhow!(
                        "the root key does not open {}: the file is truncated or corrupt, or this data directory was sealed with a different root key",
                        check.display()
                    )
                })?;
                if opened.as_slice() != ROOT_CHECK_PLAINTEXT {
                    bail!("{} is corrupt", check.display());
                }
                Ok(())
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let sealed = self.sealer.seal(ROOT_CHECK_AAD, ROOT_CHECK_PLAINTEXT)?;
                write_atomic(&check, &sealed)
            }
            Err(e) => Err(e).with_context(|| format!("cannot read {}", check.display())),
        }
    }
}

fn load_root_key(dir: &Path, source: &RootKeySource) -> anyhow::Result<Zeroizing<Vec<u8>>> {
    match source {
        RootKeySource::Hex(hex) => decode_root_key(hex.expose_secret())
            .context("KMS_SIDECAR_ROOT_KEY must be 64 hex characters"),
        RootKeySource::File(path) => {
            let text = Zeroizing::new(
                fs::read_to_string(path)
                    .with_context(|| format!("cannot read root key file {}", path.display()))?,
            );
            decode_root_key(&text).with_context(|| {
                format!(
                    "root key file {} must hold 64 hex characters",
                    path.display()
                )
            })
        }
        RootKeySource::DataDir => {
            let path = dir.join("root.key");
            match fs::read_to_string(&path) {
                Ok(text) => {
                    let text = Zeroizing::new(text);
                    decode_root_key(&text).with_context(|| {
                        format!(
                            "root key file {} must hold 64 hex characters",
                            path.display()
                        )
                    })
                }
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                    if dir.join("root.check").exists() {
                        bail!(
                            "{} is missing but the data directory was sealed with a root key: restore it or set KMS_SIDECAR_ROOT_KEY",
                            path.display()
                        );
                    }
                    let key = crypto::random_bytes(KEY_LEN)?;
                    let text = Zeroizing::new(hex::encode(&key));
                    write_atomic(&path, text.as_bytes())?;
                    Ok(key)
                }
                Err(e) => Err(e).with_context(|| format!("cannot read {}", path.display())),
            }
        }
    }
}

fn decode_root_key(text: &str) -> anyhow::Result<Zeroizing<Vec<u8>>> {
    let key = Zeroizing::new(hex::decode(text.trim()).map_err(|_| anyhow::anyhow!("not hex"))?);
    if key.len() != KEY_LEN {
        bail!("wrong length");
    }
    Ok(key)
}

/// Writes `bytes` to `path` so that a crash leaves either the old file or the new one, never a mix:
/// a temp file (0600) in the same directory, fsync, rename over `path`, fsync the directory.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    let dir = path
        .parent()
        .with_context(|| format!("{} has no parent directory", path.display()))?;
    let name = path
        .file_name()
        .with_context(|| format!("{} has no file name", path.display()))?;
    let suffix = getrandom::u64().unwrap_or_default();
    let tmp = dir.join(format!(".{}.{suffix:016x}.tmp", name.to_string_lossy()));
    let result = (|| -> anyhow::Result<()> {
        let mut file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)
            .with_context(|| format!("cannot create {}", tmp.display()))?;
        file.write_all(bytes)
            .with_context(|| format!("cannot write {}", tmp.display()))?;
        file.sync_all()
            .with_context(|| format!("cannot fsync {}", tmp.display()))?;
        fs::rename(&tmp, path).with_context(|| format!("cannot rename onto {}", path.display()))?;
        sync_dir(dir)
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

/// Removes `path` durably (the directory entry's removal is fsynced). A missing file is fine.
pub fn remove_durable(path: &Path) -> anyhow::Result<()> {
    match fs::remove_file(path) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e).with_context(|| format!("cannot remove {}", path.display())),
    }
    match path.parent() {
        Some(dir) => sync_dir(dir),
        None => Ok(()),
    }
}

fn sync_dir(dir: &Path) -> anyhow::Result<()> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .with_context(|| format!("cannot fsync directory {}", dir.display()))
}

/// Runs blocking file work off the async executor.
pub async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> anyhow::Result<T> + Send + 'static,
) -> anyhow::Result<T> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| anyhow::anyhow!("blocking task failed: {e}"))?
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn creates_root_key_and_rejects_wrong_one() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = DataDir::open(tmp.path(), &RootKeySource::DataDir).unwrap();
        let mode = fs::metadata(tmp.path().join("root.key"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        let sealed = dir.seal("purpose", b"secret").unwrap();
        assert_eq!(&dir.unseal("purpose", &sealed).unwrap()[..], b"secret");
        assert!(dir.unseal("other", &sealed).is_err());

        let wrong = RootKeySource::Hex(SecretString::from("11".repeat(32)));
        let err = DataDir::open(tmp.path(), &wrong).unwrap_err();
        assert!(format!("{err:#}").contains("root.check"), "{err:#}");

        let short = RootKeySource::Hex(SecretString::from("11".repeat(8)));
        assert!(DataDir::open(tmp.path(), &short).is_err());
    }

    #[test]
    fn lock_is_exclusive() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = DataDir::open(tmp.path(), &RootKeySource::DataDir).unwrap();
        let held = dir.lock().unwrap();
        let err = dir.lock().unwrap_err();
        assert!(err.to_string().contains("in use"), "{err}");
        drop(held);
        dir.lock().unwrap();
    }

    #[test]
    fn write_atomic_replaces_and_leaves_no_temp() {
        let tmp = tempfile::tempdir().unwrap();
        let p = tmp.path().join("f.json");
        write_atomic(&p, b"one").unwrap();
        write_atomic(&p, b"two").unwrap();
        assert_eq!(fs::read(&p).unwrap(), b"two");
        assert_eq!(fs::read_dir(tmp.path()).unwrap().count(), 1);
        remove_durable(&p).unwrap();
        remove_durable(&p).unwrap();
    }
}
