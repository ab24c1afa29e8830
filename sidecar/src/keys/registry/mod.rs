//! Where the key registry lives: the data directory of one sidecar (the default), or an etcd v3
//! cluster that a fleet of sidecars shares and watches (`--registry etcd`).
//!
//! The registry is everything a sidecar knows besides caches: key records, aliases, sealed embedded
//! key material and client credentials. With etcd, every sidecar loads it at start, follows it with
//! a watch into the same lock-free in-memory index the data directory feeds, and writes it with
//! transactions guarded by the revision it read. Crypto only ever reads the in-memory index, so it
//! never waits on etcd; key administration does, and fails fast when etcd cannot commit.

mod client;
pub mod etcd;
mod follow;
pub mod transfer;

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, bail};
use secrecy::SecretString;

pub use etcd::EtcdRegistry;
pub use follow::{ClientFollower, MaterialFollower};

/// How long a registry write may take before the call fails with "registry unavailable".
pub const DEFAULT_WRITE_TIMEOUT: Duration = Duration::from_secs(3);

/// The validated registry choice.
#[derive(Debug, Clone, Default)]
pub enum RegistrySettings {
    /// Files in the sidecar's data directory (one sidecar per directory).
    #[default]
    DataDir,
    /// An etcd cluster shared by a fleet.
    Etcd(EtcdSettings),
}

/// How to reach and use the etcd cluster.
#[derive(Clone)]
pub struct EtcdSettings {
    /// `http://host:port` or `https://host:port`, at least one.
    pub endpoints: Vec<String>,
    /// Every registry key lives under this prefix (ends with `/`), so fleets can share a cluster.
    pub prefix: String,
    /// PEM CA bundle that signs the etcd servers' certificates (for `https://` endpoints).
    pub ca_file: Option<PathBuf>,
    /// Client certificate and key (PEM) for etcd's mutual TLS.
    pub cert_file: Option<PathBuf>,
    pub key_file: Option<PathBuf>,
    /// etcd user name and password (etcd's own authentication).
    pub user: Option<(String, SecretString)>,
    pub write_timeout: Duration,
}

impl std::fmt::Debug for EtcdSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EtcdSettings")
            .field("endpoints", &self.endpoints)
            .field("prefix", &self.prefix)
            .field("ca_file", &self.ca_file)
            .field("cert_file", &self.cert_file)
            .field("key_file", &self.key_file)
            .field("user", &self.user.as_ref().map(|(u, _)| (u, "[redacted]")))
            .finish()
    }
}

/// The raw registry options, as `config/` collects them from flags, environment and file.
#[derive(Debug, Default)]
pub struct RegistryOptions {
    pub registry: Option<String>,
    pub etcd_endpoints: Option<String>,
    pub etcd_prefix: Option<String>,
    pub etcd_ca_file: Option<PathBuf>,
    pub etcd_cert_file: Option<PathBuf>,
    pub etcd_key_file: Option<PathBuf>,
    pub etcd_user: Option<String>,
    pub etcd_password_file: Option<PathBuf>,
    /// From the environment only (`KMS_SIDECAR_ETCD_PASSWORD`).
    pub etcd_password: Option<SecretString>,
}

impl RegistrySettings {
    /// Validates the registry options; etcd settings without `--registry etcd` are an error, so a
    /// typo cannot silently leave a pod on its own data directory.
    pub fn build(o: RegistryOptions) -> anyhow::Result<Self> {
        let etcd_given = o.etcd_endpoints.is_some() || o.etcd_prefix.is_some();
        match o.registry.as_deref().unwrap_or("datadir") {
            "datadir" => {
                if etcd_given {
                    bail!(
                        "etcd_endpoints/etcd_prefix are set but registry is datadir: add --registry etcd"
                    );
                }
                Ok(Self::DataDir)
            }
            "etcd" => {
                let endpoints: Vec<String> = o
                    .etcd_endpoints
                    .as_deref()
                    .unwrap_or("")
                    .split(',')
                    .map(str::trim)
                    .filter(|e| !e.is_empty())
                    .map(str::to_string)
                    .collect();
                if endpoints.is_empty() {
                    bail!(
                        "registry etcd needs etcd_endpoints (--etcd-endpoints http://127.0.0.1:2379,...)"
                    );
                }
                for e in &endpoints {
                    if !(e.starts_with("http://") || e.starts_with("https://")) {
                        bail!("etcd endpoint {e:?} must start with http:// or https://");
                    }
                }
                let mut prefix = o.etcd_prefix.unwrap_or_else(|| "/kms-sidecar/".to_string());
                if prefix.is_empty() || prefix.len() > 256 {
                    bail!("etcd_prefix must be 1-256 characters");
                }
                if !prefix.ends_with('/') {
                    // Without the slash, prefix "/a" would also watch the fleet under "/ab".
                    prefix.push('/');
                }
                if o.etcd_cert_file.is_some() != o.etcd_key_file.is_some() {
                    bail!("etcd_cert_file and etcd_key_file go together");
                }
                let password = match (o.etcd_password, o.etcd_password_file) {
                    (Some(p), _) => Some(p),
                    (None, Some(path)) => Some(SecretString::from(
                        std::fs::read_to_string(&path)
                            .with_context(|| {
                                format!("cannot read etcd password file {}", path.display())
                            })?
                            .trim_end_matches(['\r', '\n'])
                            .to_string(),
                    )),
                    (None, None) => None,
                };
                let user = match (o.etcd_user, password) {
                    (Some(u), Some(p)) => Some((u, p)),
                    (None, None) => None,
                    _ => bail!(
                        "etcd_user and an etcd password (KMS_SIDECAR_ETCD_PASSWORD or etcd_password_file) go together"
                    ),
                };
                Ok(Self::Etcd(EtcdSettings {
                    endpoints,
                    prefix,
                    ca_file: o.etcd_ca_file,
                    cert_file: o.etcd_cert_file,
                    key_file: o.etcd_key_file,
                    user,
                    write_timeout: DEFAULT_WRITE_TIMEOUT,
                }))
            }
            other => bail!("registry {other:?} must be datadir or etcd"),
        }
    }
}

/// The parts of the registry, each under its own prefix in etcd.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Section {
    /// `keys/<key id>`: a key record (JSON, `keys::model::KeyMeta`).
    Keys,
    /// `aliases/alias/<name>`: one alias (JSON, `AliasEntry`).
    Aliases,
    /// `material/<key id>/<version>`: sealed embedded key material.
    Material,
    /// `clients/<access key id>`: an issued credential, its secret sealed.
    Clients,
    /// `revoked/<access key id>`: a revoked credential.
    Revoked,
    /// `locks/...` and `root.check`: not part of the index.
    Other,
}

impl Section {
    pub const fn dir(self) -> &'static str {
        match self {
            Section::Keys => "keys/",
            Section::Aliases => "aliases/",
            Section::Material => "material/",
            Section::Clients => "clients/",
            Section::Revoked => "revoked/",
            Section::Other => "",
        }
    }

    fn of(rest: &str) -> (Self, &str) {
        for s in [
            Section::Keys,
            Section::Aliases,
            Section::Material,
            Section::Clients,
            Section::Revoked,
        ] {
            if let Some(name) = rest.strip_prefix(s.dir()) {
                return (s, name);
            }
        }
        (Section::Other, rest)
    }
}

/// One registry entry as loaded or as a watch event: `value` is `None` when it was deleted.
#[derive(Clone)]
pub struct Change {
    pub section: Section,
    pub name: String,
    pub value: Option<Vec<u8>>,
    /// The etcd revision that last modified it (the CAS guard for the next write).
    pub revision: i64,
}

impl std::fmt::Debug for Change {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Values may be sealed material: their length is enough for a log.
        write!(
            f,
            "Change({:?} {} rev {} {:?} bytes)",
            self.section,
            self.name,
            self.revision,
            self.value.as_ref().map(Vec::len)
        )
    }
}

/// What follows the registry: loaded once (`reset`), then fed every change in revision order.
pub trait Follower: Send + Sync + std::fmt::Debug {
    /// Replaces everything this follower holds with `all` (start, or reload after compaction).
    fn reset(&self, all: &[Change]);
    /// Applies changes in revision order.
    fn apply(&self, changes: &[Change]);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opts(registry: &str, endpoints: Option<&str>) -> RegistryOptions {
        RegistryOptions {
            registry: Some(registry.into()),
            etcd_endpoints: endpoints.map(str::to_string),
            ..Default::default()
        }
    }

    #[test]
    fn settings_validate() {
        assert!(matches!(
            RegistrySettings::build(RegistryOptions::default()).unwrap(),
            RegistrySettings::DataDir
        ));
        assert!(RegistrySettings::build(opts("datadir", Some("http://a:1"))).is_err());
        assert!(RegistrySettings::build(opts("etcd", None)).is_err());
        assert!(RegistrySettings::build(opts("etcd", Some("a:1"))).is_err());
        assert!(RegistrySettings::build(opts("zookeeper", None)).is_err());
        let RegistrySettings::Etcd(s) =
            RegistrySettings::build(opts("etcd", Some("http://a:1, http://b:2"))).unwrap()
        else {
            panic!("not etcd")
        };
        assert_eq!(s.endpoints, ["http://a:1", "http://b:2"]);
        assert_eq!(s.prefix, "/kms-sidecar/");
        let mut o = opts("etcd", Some("http://a:1"));
        o.etcd_prefix = Some("/fleet-a".into());
        o.etcd_user = Some("u".into());
        assert!(RegistrySettings::build(o).is_err(), "user without password");
        let mut o = opts("etcd", Some("http://a:1"));
        o.etcd_prefix = Some("/fleet-a".into());
        o.etcd_user = Some("u".into());
        o.etcd_password = Some(SecretString::from("pw"));
        let RegistrySettings::Etcd(s) = RegistrySettings::build(o).unwrap() else {
            panic!("not etcd")
        };
        assert_eq!(s.prefix, "/fleet-a/");
        assert!(!format!("{s:?}").contains("pw"));
    }

    #[test]
    fn sections_split_names() {
        assert_eq!(Section::of("keys/abc"), (Section::Keys, "abc"));
        assert_eq!(
            Section::of("aliases/alias/x"),
            (Section::Aliases, "alias/x")
        );
        assert_eq!(Section::of("material/k/2"), (Section::Material, "k/2"));
        assert_eq!(
            Section::of("locks/rotation/k"),
            (Section::Other, "locks/rotation/k")
        );
    }
}
