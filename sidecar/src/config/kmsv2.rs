//! The Kubernetes KMS v2 plugin's settings: which Unix socket the kube-apiserver calls, who may
//! open it, which key wraps its data keys, and which principal the calls run as. Validated here
//! so the front-end (`frontend/kmsv2/`) and the server only see a usable [`KmsV2Settings`].

use std::path::PathBuf;

use anyhow::{Context, bail};

use super::{Config, Options};
use crate::limits::RateSpec;

/// The principal the API server's calls run as unless configured.
pub const DEFAULT_PRINCIPAL: &str = "kubernetes";

/// `sun_path` holds 108 bytes on Linux, the terminating NUL included.
const MAX_SOCKET_PATH: usize = 107;

/// A validated KMS v2 plugin configuration (present only when `kmsv2_socket` is set).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KmsV2Settings {
    /// The Unix socket to serve gRPC on (`endpoint: unix://<path>` in the EncryptionConfiguration).
    pub socket: PathBuf,
    /// A group allowed to connect too (the socket becomes 0660 and owned by it); none: 0600.
    pub socket_group: Option<u32>,
    /// The key that wraps the API server's data keys: id, ARN, alias name or alias ARN.
    pub key_id: String,
    /// The principal the API server calls as: key policies, rate limits, metrics and the audit
    /// log name it. The socket's file mode is its authentication.
    pub principal: String,
}

/// Builds the settings from flags/environment over the file; `None` when the plugin is off.
pub(super) fn build(cli: &Options, file: &Options) -> anyhow::Result<Option<KmsV2Settings>> {
    let socket = cli
        .kmsv2_socket
        .clone()
        .or_else(|| file.kmsv2_socket.clone());
    let key_id = cli
        .kmsv2_key_id
        .clone()
        .or_else(|| file.kmsv2_key_id.clone());
    let group = cli
        .kmsv2_socket_group
        .clone()
        .or_else(|| file.kmsv2_socket_group.clone());
    let principal = cli
        .kmsv2_principal
        .clone()
        .or_else(|| file.kmsv2_principal.clone());
    let Some(socket) = socket else {
        if key_id.is_some() || group.is_some() || principal.is_some() {
            bail!(
                "kmsv2_key_id, kmsv2_socket_group and kmsv2_principal need kmsv2_socket (the KMS v2 plugin is off without it)"
            );
        }
        return Ok(None);
    };
    let len = socket.as_os_str().len();
    if len == 0 || len > MAX_SOCKET_PATH {
        bail!(
            "kmsv2_socket = {} must be a path of 1 to {MAX_SOCKET_PATH} bytes (a Unix socket address limit)",
            socket.display()
        );
    }
    let Some(key_id) = key_id.filter(|k| !k.trim().is_empty()) else {
        bail!(
            "kmsv2_socket is set but kmsv2_key_id is not: name the key (id, ARN or alias) that wraps the API server's data keys"
        );
    };
    let principal = principal.unwrap_or_else(|| DEFAULT_PRINCIPAL.to_string());
    if principal.is_empty()
        || principal.len() > 64
        || !principal
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"+=,.@_-".contains(&b))
    {
        bail!("kmsv2_principal must be 1-64 characters of letters, digits and +=,.@_-");
    }
    let socket_group = group
        .map(|g| {
            resolve_group(&g, std::path::Path::new("/etc/group"))
                .with_context(|| format!("kmsv2_socket_group = {g:?}"))
        })
        .transpose()?;
    Ok(Some(KmsV2Settings {
        socket,
        socket_group,
        key_id,
        principal,
    }))
}

/// A numeric group id, or a group name looked up in `group_file` (`/etc/group`).
fn resolve_group(group: &str, group_file: &std::path::Path) -> anyhow::Result<u32> {
    if let Ok(gid) = group.parse::<u32>() {
        return Ok(gid);
    }
    let text = std::fs::read_to_string(group_file)
        .with_context(|| format!("cannot read {}", group_file.display()))?;
    text.lines()
        .filter_map(|line| {
            let mut fields = line.split(':');
            let name = fields.next()?;
            let gid = fields.nth(1)?.parse::<u32>().ok()?;
            (name == group).then_some(gid)
        })
        .next()
        .with_context(|| format!("no such group in {}", group_file.display()))
}

impl Config {
    /// The inbound rate-limit spec with the KMS v2 principal named, so its limits and metrics
    /// have a row of their own instead of falling under `other`.
    pub fn inbound_rate_spec(&self) -> RateSpec {
        let mut spec = self.rate().clone();
        if let Some(k) = &self.kmsv2 {
            spec.principals.push(k.principal.clone());
        }
        if let Some(x) = &self.xks {
            spec.principals.extend(x.principals().map(str::to_owned));
        }
        spec
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opts(socket: Option<&str>, key: Option<&str>) -> Options {
        Options {
            kmsv2_socket: socket.map(PathBuf::from),
            kmsv2_key_id: key.map(String::from),
            ..Options::default()
        }
    }

    #[test]
    fn off_by_default_and_needs_a_key() {
        let none = Options::default();
        assert_eq!(build(&none, &none).unwrap(), None);
        let err = build(&opts(Some("/run/k.sock"), None), &none).unwrap_err();
        assert!(err.to_string().contains("kmsv2_key_id"), "{err}");
        let err = build(&opts(None, Some("alias/k8s")), &none).unwrap_err();
        assert!(err.to_string().contains("need kmsv2_socket"), "{err}");
        let s = build(
            &opts(Some("/run/k.sock"), None),
            &opts(None, Some("alias/k8s")),
        )
        .unwrap()
        .unwrap();
        assert_eq!(s.key_id, "alias/k8s");
        assert_eq!(s.principal, DEFAULT_PRINCIPAL);
        assert_eq!(s.socket_group, None);
    }

    #[test]
    fn bad_paths_principals_and_groups_are_refused() {
        let none = Options::default();
        let long = format!("/{}", "s".repeat(200));
        assert!(build(&opts(Some(&long), Some("k")), &none).is_err());
        let mut o = opts(Some("/run/k.sock"), Some("k"));
        o.kmsv2_principal = Some("kube system".into());
        assert!(build(&o, &none).is_err());
        o.kmsv2_principal = None;
        o.kmsv2_socket_group = Some("no-such-group-kms-sidecar".into());
        assert!(build(&o, &none).is_err());
        o.kmsv2_socket_group = Some("1234".into());
        assert_eq!(build(&o, &none).unwrap().unwrap().socket_group, Some(1234));
    }

    #[test]
    fn group_names_resolve_from_the_group_file() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("group");
        std::fs::write(&file, "root:x:0:\nkube:x:998:alice,bob\n").unwrap();
        assert_eq!(resolve_group("kube", &file).unwrap(), 998);
        assert_eq!(resolve_group("root", &file).unwrap(), 0);
        assert!(resolve_group("nobody", &file).is_err());
    }
}
