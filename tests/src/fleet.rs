//! Fleet fixture: a real etcd cluster on loopback and sidecars sharing their key registry in it,
//! for the fleet tests and the propagation benchmark. It exists so that each of them states what
//! it checks, not again how a fleet is assembled: the registry arguments, the shared root key,
//! the command line run against the registry, a seed data directory imported into etcd, members
//! started in their own data directories, and polling for a change to reach another member.

use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use aws_sdk_kms::primitives::Blob;

use crate::etcd::{self, EtcdCluster};
use crate::{Creds, Sidecar, Start, binary, printed_creds, run};

/// The root key every member (and the command line) shares: ciphertexts made on one member
/// decrypt on another only because they wrap key material under the same root.
pub const ROOT_KEY: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

/// The environment that gives a process the fleet's root key.
pub fn root_env() -> Vec<(String, String)> {
    vec![("KMS_SIDECAR_ROOT_KEY".into(), ROOT_KEY.into())]
}

/// An etcd cluster, the arguments and environment every member and command-line run gets, and a
/// temp directory holding the members' and the command line's data directories. The `Sidecar`s
/// it starts belong to the caller (declared after the fleet, they stop before its cluster).
#[derive(Debug)]
pub struct Fleet {
    pub cluster: EtcdCluster,
    /// The etcd registry under a prefix, plus what the test adds (before starting members).
    pub args: Vec<String>,
    /// The root key, plus what the test adds (an etcd password, a PKCS#11 token).
    pub env: Vec<(String, String)>,
    dir: tempfile::TempDir,
}

impl Fleet {
    /// An etcd cluster of `members` and a registry under `prefix`, or `None` with a printed
    /// SKIPPED reason where etcd is not installed.
    pub fn start_or_skip(members: usize, prefix: &str) -> Option<Self> {
        if !etcd::available() {
            println!("SKIPPED: etcd is not installed (scripts/test.sh installs etcd-server)");
            return None;
        }
        Some(Self::start(members, prefix))
    }

    /// An etcd cluster of `members` and a registry under `prefix`.
    pub fn start(members: usize, prefix: &str) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let cluster = EtcdCluster::start(members);
        let args = [
            "--registry",
            "etcd",
            "--etcd-endpoints",
            &cluster.endpoints(),
            "--etcd-prefix",
            prefix,
        ]
        .map(String::from)
        .to_vec();
        Self {
            cluster,
            args,
            env: root_env(),
            dir,
        }
    }

    /// `name`'s directory in the fleet's temp directory.
    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// `kms-sidecar --data-dir <cli> <fleet args> <args>` with the fleet's environment: success
    /// and everything it printed.
    pub fn cli(&self, args: &[&str]) -> (bool, String) {
        run(Command::new(binary())
            .arg("--data-dir")
            .arg(self.path("cli"))
            .args(&self.args)
            .args(args)
            .envs(self.env.iter().map(|(k, v)| (k, v))))
    }

    /// Like [`Fleet::cli`], asserting success; returns what it printed.
    pub fn cli_ok(&self, args: &[&str]) -> String {
        let (ok, text) = self.cli(args);
        assert!(ok, "kms-sidecar {args:?} failed: {text}");
        text
    }

    /// `clients add name` against the registry: the new client's credential.
    pub fn add_client(&self, name: &str) -> Creds {
        printed_creds(&self.cli_ok(&["clients", "add", name]))
    }

    /// A single-node sidecar on the data directory `seed` (the root key, no registry), whose data
    /// a test then moves into etcd with [`Fleet::import_seed`].
    pub fn seed(&self) -> Sidecar {
        Sidecar::start_with(
            &self.path("seed"),
            Start {
                env: root_env(),
                ..Default::default()
            },
        )
        .expect("seed sidecar start")
    }

    /// `registry import --from <seed>`: the stopped seed's keys and clients move into etcd.
    /// Returns what the import printed.
    pub fn import_seed(&self) -> String {
        let seed = self.path("seed").display().to_string();
        self.cli_ok(&["registry", "import", "--from", &seed])
    }

    /// The fleet's client credential: a seed's first-run credential, its data directory
    /// imported into etcd.
    pub fn seeded_creds(&self) -> Creds {
        let seed = self.seed();
        let creds = seed.creds.clone();
        seed.stop();
        self.import_seed();
        creds
    }

    /// Starts a member on data directory `name` with the fleet's arguments and environment,
    /// using `creds`; `Err` carries what it printed if it exited instead of listening.
    pub fn try_member(&self, name: &str, creds: Option<Creds>) -> Result<Sidecar, String> {
        Sidecar::start_with(
            &self.path(name),
            Start {
                args: self.args.clone(),
                env: self.env.clone(),
                creds,
            },
        )
    }

    /// Starts a member on data directory `name`, using `creds`.
    pub fn member(&self, name: &str, creds: &Creds) -> Sidecar {
        self.try_member(name, Some(creds.clone()))
            .unwrap_or_else(|out| panic!("fleet member {name} did not start:\n{out}"))
    }
}

/// Polls `f` every 20 ms until it is true, returning how long that took, or panics after `limit`:
/// how the fleet tests wait for a change made on one member to reach another.
pub async fn within<F, Fut>(limit: Duration, what: &str, mut f: F) -> Duration
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let start = Instant::now();
    loop {
        if f().await {
            return start.elapsed();
        }
        assert!(start.elapsed() < limit, "{what}: not within {limit:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Whether `blob` decrypts to `plain` through `client`.
pub async fn decrypts(client: &aws_sdk_kms::Client, blob: &[u8], plain: &[u8]) -> bool {
    client
        .decrypt()
        .ciphertext_blob(Blob::new(blob))
        .send()
        .await
        .is_ok_and(|r| r.plaintext().map(|p| p.as_ref()) == Some(plain))
}
