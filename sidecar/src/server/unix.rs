//! The Kubernetes KMS v2 plugin's Unix socket: its file mode is the plugin's authentication, so it
//! is made race-free: bound, given mode 0600 (0660 and a group when configured), and only then put
//! in the listening state; a connection attempt before that is refused by the kernel. A stale
//! socket left by a crash is replaced; a live one (another process serving it) or a path that is
//! not a socket stops the start. The socket is removed when the server stops.

use std::os::unix::fs::{FileTypeExt as _, MetadataExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use tokio::net::{UnixListener, UnixSocket};

/// Backlog of the listening socket.
const BACKLOG: u32 = 256;

/// Removes the socket when dropped, if the path still holds the socket this process made.
#[derive(Debug)]
pub(super) struct SocketFile {
    path: PathBuf,
    /// (device, inode) of the socket made.
    id: (u64, u64),
}

impl Drop for SocketFile {
    fn drop(&mut self) {
        match std::fs::symlink_metadata(&self.path) {
            Ok(m) if m.file_type().is_socket() && (m.dev(), m.ino()) == self.id => {
                if let Err(e) = std::fs::remove_file(&self.path) {
                    tracing::warn!(path = %self.path.display(), error = %e, "cannot remove the KMS v2 socket");
                }
            }
            // Replaced by someone else since, or already gone: not ours to remove.
            _ => {}
        }
    }
}

/// Binds `path` with mode 0600 (0660 owned by `group` when given) and listens on it.
pub(super) fn bind(path: &Path, group: Option<u32>) -> anyhow::Result<(UnixListener, SocketFile)> {
    remove_stale(path)?;
    let socket = UnixSocket::new_stream().context("cannot create a Unix socket")?;
    socket
        .bind(path)
        .with_context(|| format!("cannot bind the KMS v2 socket {}", path.display()))?;
    let made = std::fs::symlink_metadata(path)
        .with_context(|| format!("cannot stat the KMS v2 socket {}", path.display()))?;
    let file = SocketFile {
        path: path.to_path_buf(),
        id: (made.dev(), made.ino()),
    };
    // Before listen(): until then nobody can connect, whatever the umask made the mode.
    let mode = if group.is_some() { 0o660 } else { 0o600 };
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .with_context(|| format!("cannot set mode {mode:o} on {}", path.display()))?;
    if let Some(gid) = group {
        std::os::unix::fs::chown(path, None, Some(gid))
            .with_context(|| format!("cannot give {} to group {gid}", path.display()))?;
    }
    let listener = socket
        .listen(BACKLOG)
        .with_context(|| format!("cannot listen on the KMS v2 socket {}", path.display()))?;
    Ok((listener, file))
}

/// Removes a socket nobody listens on; refuses a live socket or anything that is not a socket.
fn remove_stale(path: &Path) -> anyhow::Result<()> {
    let meta = match std::fs::symlink_metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e).with_context(|| format!("cannot stat {}", path.display())),
    };
    if !meta.file_type().is_socket() {
        bail!(
            "{} exists and is not a socket: refusing to replace it with the KMS v2 socket",
            path.display()
        );
    }
    if std::os::unix::net::UnixStream::connect(path).is_ok() {
        bail!(
            "{} is a socket another process is serving (a second sidecar or plugin?): stop it or choose another --kmsv2-socket",
            path.display()
        );
    }
    tracing::info!(path = %path.display(), "replacing a stale KMS v2 socket");
    std::fs::remove_file(path)
        .with_context(|| format!("cannot remove the stale {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn mode_stale_live_and_removal() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("kms.sock");
        let (listener, file) = bind(&path, None).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        // A live socket is not taken over.
        let err = bind(&path, None).unwrap_err();
        assert!(err.to_string().contains("another process"), "{err}");
        // A stale one (nobody listening) is replaced.
        drop(listener);
        std::mem::forget(file);
        let (_listener, file) = bind(&path, None).unwrap();
        drop(file);
        assert!(!path.exists(), "removed when the server stops");
        // Anything else at the path stops the start.
        std::fs::write(&path, b"not a socket").unwrap();
        let err = bind(&path, None).unwrap_err();
        assert!(err.to_string().contains("not a socket"), "{err}");
        assert_eq!(std::fs::read(&path).unwrap(), b"not a socket");
    }
}
