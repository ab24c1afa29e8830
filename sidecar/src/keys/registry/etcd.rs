//! The etcd v3 side of the registry: connect, load, revision-guarded transactions, the watch that
//! keeps every sidecar's index current, rotation leases, and the health that `/readyz` and the
//! registry metrics report.
//!
//! Requests require a leader (`hasleader`, see `client.rs`), so a member cut off from its quorum
//! answers at once instead of serving stale reads or hanging; writes are bounded by `write_timeout` and then fail
//! with "registry unavailable". The watch asks for a progress notification every second: the
//! revision it reports is one the sidecar has provably caught up to, which is what the watch lag
//! metric measures from.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::time::Duration;

use anyhow::{Context, bail};
use async_trait::async_trait;
use tokio::sync::watch;

use super::client::{self, Client, EventType, TxnRequest, get_values};
use super::{Change, EtcdSettings, Follower, Section};
use crate::backend::embedded::MaterialStore;
use crate::backend::{BackendError, BackendErrorKind, KeyRef};
use crate::datadir::DataDir;
use crate::keys::metrics::RegistryGauges;
use crate::kms::{ErrorKind, KmsError};

const ROOT_CHECK: &str = "root.check";
const ROOT_CHECK_PURPOSE: &str = "kms-sidecar/registry-root-check";
const ROOT_CHECK_PLAINTEXT: &[u8] = b"kms-sidecar registry root key check v1";
/// How often the watch asks etcd to confirm how far it has caught up.
const PROGRESS_EVERY: Duration = Duration::from_secs(1);

/// Why a registry write did not happen.
#[derive(Debug, thiserror::Error)]
pub enum WriteError {
    /// Another writer changed what this one read: refresh and try again.
    #[error("the registry changed concurrently")]
    Conflict,
    /// etcd did not commit (unreachable, no quorum, timed out).
    #[error("the key registry (etcd) is unavailable")]
    Unavailable(#[source] Option<client::Error>),
}

impl WriteError {
    /// The KMS error a client sees when the registry cannot take a write.
    pub fn into_kms(self) -> KmsError {
        match self {
            WriteError::Conflict => KmsError::server_fault(
                ErrorKind::DependencyTimeout,
                "The key registry kept changing concurrently; retry the request.",
            ),
            WriteError::Unavailable(source) => {
                let e = KmsError::server_fault(
                    ErrorKind::DependencyTimeout,
                    "The key registry (etcd) is unavailable: key administration is refused until it is back; cryptographic operations continue.",
                );
                match source {
                    Some(s) => e.with_source(s),
                    None => e,
                }
            }
        }
    }
}

/// A connection to the fleet's registry in etcd.
pub struct EtcdRegistry {
    client: Client,
    prefix: String,
    write_timeout: Duration,
    /// Whether the watch is connected and caught up (`/readyz` says "registry degraded" if not).
    up: AtomicBool,
    /// The revision every change up to which has been applied to the in-memory index.
    applied: AtomicI64,
    /// When `applied` was last confirmed current (unix seconds as f64 bits).
    synced_at: AtomicU64,
    /// Registry metrics (`docs/metrics.md`), attached once the metrics registry exists.
    gauges: std::sync::OnceLock<RegistryGauges>,
}

impl std::fmt::Debug for EtcdRegistry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EtcdRegistry")
            .field("prefix", &self.prefix)
            .field("up", &self.is_up())
            .field("applied", &self.applied_revision())
            .finish_non_exhaustive()
    }
}

impl EtcdRegistry {
    /// Connects (bounded) and checks that the fleet's registry is sealed with this root key.
    pub async fn connect(settings: &EtcdSettings, dir: &DataDir) -> anyhow::Result<Arc<Self>> {
        let mut options = client::Options {
            connect_timeout: Duration::from_secs(3),
            timeout: settings.write_timeout,
            keep_alive: (Duration::from_secs(2), Duration::from_secs(2)),
            user: settings.user.clone(),
            tls: None,
        };
        if settings.ca_file.is_some() || settings.cert_file.is_some() {
            let mut tls = client::Tls::default();
            if let Some(ca) = &settings.ca_file {
                let pem = std::fs::read(ca)
                    .with_context(|| format!("cannot read etcd CA file {}", ca.display()))?;
                tls.ca_pem = Some(pem);
            }
            if let (Some(cert), Some(key)) = (&settings.cert_file, &settings.key_file) {
                let cert = std::fs::read(cert)
                    .with_context(|| format!("cannot read etcd cert file {}", cert.display()))?;
                let key = std::fs::read(key)
                    .with_context(|| format!("cannot read etcd key file {}", key.display()))?;
                tls.identity_pem = Some((cert, key));
            }
            options.tls = Some(tls);
        }
        let client = tokio::time::timeout(
            Duration::from_secs(10),
            Client::connect(&settings.endpoints, options),
        )
        .await
        .map_err(|_| anyhow::anyhow!("timed out connecting to etcd {:?}", settings.endpoints))?
        .with_context(|| format!("cannot connect to etcd {:?}", settings.endpoints))?;
        let registry = Arc::new(Self {
            client,
            prefix: settings.prefix.clone(),
            write_timeout: settings.write_timeout,
            up: AtomicBool::new(false),
            applied: AtomicI64::new(0),
            synced_at: AtomicU64::new(crate::kms::now().to_bits()),
            gauges: std::sync::OnceLock::new(),
        });
        registry.check_root(dir).await?;
        Ok(registry)
    }

    /// Reports the registry's health in `gauges` (`KeyMetrics::registry`) from now on.
    pub fn attach_metrics(&self, gauges: RegistryGauges) {
        let _ = self.gauges.set(gauges);
        self.export();
    }

    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// The full etcd key of `name` in `section`.
    pub fn path(&self, section: Section, name: &str) -> String {
        format!("{}{}{name}", self.prefix, section.dir())
    }

    /// Whether the watch is connected and caught up.
    pub fn is_up(&self) -> bool {
        self.up.load(Ordering::Relaxed)
    }

    pub fn applied_revision(&self) -> i64 {
        self.applied.load(Ordering::Relaxed)
    }

    /// Seconds since the index was last confirmed current.
    pub fn lag_seconds(&self) -> f64 {
        (crate::kms::now() - f64::from_bits(self.synced_at.load(Ordering::Relaxed))).max(0.0)
    }

    fn client(&self) -> Client {
        self.client.clone()
    }

    /// The registry is sealed with the fleet's root key: a pod given another key refuses to start
    /// instead of failing every Decrypt.
    async fn check_root(&self, dir: &DataDir) -> anyhow::Result<()> {
        let key = format!("{}{ROOT_CHECK}", self.prefix);
        let sealed = dir.seal(ROOT_CHECK_PURPOSE, ROOT_CHECK_PLAINTEXT)?;
        let txn = TxnRequest {
            compare: vec![client::create_revision_is(key.clone(), 0)],
            success: vec![client::put(key.clone(), sealed, 0)],
            failure: vec![client::get(key.clone())],
        };
        let resp = self
            .client()
            .txn(txn)
            .await
            .context("cannot read the registry's root key check from etcd")?;
        if resp.succeeded {
            return Ok(());
        }
        let existing = get_values(resp.responses);
        let Some(found) = existing.first() else {
            bail!("etcd lost {key} during the start-up check");
        };
        match dir.unseal(ROOT_CHECK_PURPOSE, found) {
            Ok(p) if p.as_slice() == ROOT_CHECK_PLAINTEXT => Ok(()),
            _ => bail!(
                "the root key does not open {key} in etcd: this fleet's registry was sealed with a different root key"
            ),
        }
    }

    /// Reads the whole registry (a linearizable read) and the revision it reflects.
    pub async fn load(&self) -> anyhow::Result<(i64, Vec<Change>)> {
        let resp = self
            .client()
            .get(self.prefix.clone(), true)
            .await
            .with_context(|| format!("cannot load the registry under {} from etcd", self.prefix))?;
        let revision = resp.header.map_or(0, |h| h.revision);
        let changes = resp
            .kvs
            .into_iter()
            .filter_map(|kv| self.change(&kv.key, Some(kv.value), kv.mod_revision))
            .collect();
        Ok((revision, changes))
    }

    /// Reads the entries named by `paths` now (after a conflict), as changes to apply.
    pub async fn read(&self, section: Section, names: &[&str]) -> Result<Vec<Change>, WriteError> {
        let mut out = Vec::new();
        for name in names {
            let resp = self
                .bounded(self.client().get(self.path(section, name), false))
                .await?;
            let revision = resp.header.map_or(0, |h| h.revision);
            match resp.kvs.into_iter().next() {
                Some(kv) => out.push(Change {
                    section,
                    name: (*name).to_string(),
                    value: Some(kv.value),
                    revision: kv.mod_revision,
                }),
                None => out.push(Change {
                    section,
                    name: (*name).to_string(),
                    value: None,
                    revision,
                }),
            }
        }
        Ok(out)
    }

    /// Reads a whole section now.
    pub async fn read_section(&self, section: Section) -> Result<Vec<Change>, WriteError> {
        let resp = self
            .bounded(
                self.client()
                    .get(format!("{}{}", self.prefix, section.dir()), true),
            )
            .await?;
        Ok(resp
            .kvs
            .into_iter()
            .filter_map(|kv| self.change(&kv.key, Some(kv.value), kv.mod_revision))
            .collect())
    }

    fn change(&self, key: &[u8], value: Option<Vec<u8>>, revision: i64) -> Option<Change> {
        let key = std::str::from_utf8(key).ok()?;
        let rest = key.strip_prefix(&self.prefix)?;
        let (section, name) = Section::of(rest);
        (section != Section::Other).then(|| Change {
            section,
            name: name.to_string(),
            value,
            revision,
        })
    }

    async fn bounded<T>(
        &self,
        call: impl Future<Output = Result<T, client::Error>>,
    ) -> Result<T, WriteError> {
        match tokio::time::timeout(self.write_timeout, call).await {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(e)) => Err(WriteError::Unavailable(Some(e))),
            Err(_) => Err(WriteError::Unavailable(None)),
        }
    }

    /// Commits `writes` if every guarded entry still has the revision it was read at (0: must not
    /// exist). Returns the revision of the commit, after which the write is durable in etcd.
    pub async fn commit(&self, guards: &[Guarded], writes: Vec<Write>) -> Result<i64, WriteError> {
        let compare = guards
            .iter()
            .map(|g| {
                let key = self.path(g.section, &g.name);
                if g.revision == 0 {
                    client::create_revision_is(key, 0)
                } else {
                    client::mod_revision_is(key, g.revision)
                }
            })
            .collect();
        let success = writes
            .into_iter()
            .map(|w| match w {
                Write::Put(section, name, value) => {
                    client::put(self.path(section, &name), value, 0)
                }
                Write::Delete(section, name) => client::delete(self.path(section, &name)),
            })
            .collect();
        let txn = TxnRequest {
            compare,
            success,
            failure: Vec::new(),
        };
        let resp = self.bounded(self.client().txn(txn)).await?;
        if !resp.succeeded {
            return Err(WriteError::Conflict);
        }
        Ok(resp.header.map_or(0, |h| h.revision))
    }

    /// Puts `value` unless the entry exists; returns what the entry holds after the call.
    pub async fn put_if_absent(
        &self,
        section: Section,
        name: &str,
        value: Vec<u8>,
    ) -> Result<Vec<u8>, WriteError> {
        let key = self.path(section, name);
        let txn = TxnRequest {
            compare: vec![client::create_revision_is(key.clone(), 0)],
            success: vec![client::put(key.clone(), value.clone(), 0)],
            failure: vec![client::get(key)],
        };
        let resp = self.bounded(self.client().txn(txn)).await?;
        if resp.succeeded {
            return Ok(value);
        }
        get_values(resp.responses)
            .into_iter()
            .next()
            .ok_or(WriteError::Conflict)
    }

    /// Takes the fleet-wide lock `name` for at most `ttl` (an etcd lease: if this sidecar dies,
    /// the lock frees itself). `None`: another sidecar holds it.
    pub async fn try_lock(
        &self,
        name: &str,
        ttl: Duration,
    ) -> Result<Option<LeaseLock>, WriteError> {
        let secs = i64::try_from(ttl.as_secs().max(2)).unwrap_or(60);
        let lease = self.bounded(self.client().lease_grant(secs)).await?;
        let key = format!("{}locks/{name}", self.prefix);
        let txn = TxnRequest {
            compare: vec![client::create_revision_is(key.clone(), 0)],
            success: vec![client::put(key, holder().into_bytes(), lease)],
            failure: Vec::new(),
        };
        let taken = self.bounded(self.client().txn(txn)).await?.succeeded;
        if taken {
            Ok(Some(LeaseLock { lease }))
        } else {
            let _ = self.bounded(self.client().lease_revoke(lease)).await;
            Ok(None)
        }
    }

    /// Releases a lock taken with [`try_lock`](Self::try_lock).
    pub async fn unlock(&self, lock: LeaseLock) {
        if let Err(e) = self.bounded(self.client().lease_revoke(lock.lease)).await {
            tracing::warn!(error = %e, "could not release a registry lock; its lease will expire");
        }
    }

    /// Marks the registry loaded at `revision` (the start-up load).
    pub fn loaded(&self, revision: i64) {
        self.synced(revision);
    }

    fn synced(&self, revision: i64) {
        self.applied.fetch_max(revision, Ordering::Relaxed);
        self.synced_at
            .store(crate::kms::now().to_bits(), Ordering::Relaxed);
        self.up.store(true, Ordering::Relaxed);
        self.export();
    }

    fn export(&self) {
        if let Some(g) = self.gauges.get() {
            g.up.set(i64::from(self.is_up()));
            g.applied.set(self.applied_revision());
            g.lag.set(self.lag_seconds());
        }
    }

    /// Follows the registry from the applied revision until `stop`, feeding `followers` in order.
    /// On a broken watch it reconnects with backoff and resumes from the applied revision, or
    /// reloads everything when etcd compacted that revision away.
    pub async fn follow(
        self: Arc<Self>,
        followers: Vec<Arc<dyn Follower>>,
        mut stop: watch::Receiver<bool>,
    ) {
        let mut backoff = Duration::from_millis(100);
        while !*stop.borrow() {
            match self.watch_once(&followers, &mut stop).await {
                Ok(()) => backoff = Duration::from_millis(100),
                Err(e) => {
                    if self.up.swap(false, Ordering::Relaxed) {
                        tracing::warn!(error = %format!("{e:#}"), "registry watch lost: serving from the last applied registry");
                    }
                    self.export();
                    tokio::select! {
                        _ = tokio::time::sleep(backoff) => {}
                        _ = stop.changed() => {}
                    }
                    backoff = (backoff * 2).min(Duration::from_secs(2));
                }
            }
        }
    }

    /// One watch session; `Ok` when it ended for a reload or a stop, `Err` when etcd failed.
    async fn watch_once(
        &self,
        followers: &[Arc<dyn Follower>],
        stop: &mut watch::Receiver<bool>,
    ) -> anyhow::Result<()> {
        let start = self.applied_revision() + 1;
        let mut stream = tokio::time::timeout(
            self.write_timeout,
            self.client().watch_prefix(self.prefix.clone(), start),
        )
        .await
        .context("timed out opening the registry watch")??;
        let mut tick = tokio::time::interval(PROGRESS_EVERY);
        // A progress answer that has not come by the next tick means etcd is not answering.
        let mut awaiting = false;
        loop {
            tokio::select! {
                _ = stop.changed() => return Ok(()),
                _ = tick.tick() => {
                    self.export();
                    if awaiting {
                        bail!("etcd did not confirm watch progress within {PROGRESS_EVERY:?}");
                    }
                    stream.request_progress().await.context("requesting watch progress")?;
                    awaiting = true;
                }
                msg = stream.message() => {
                    let Some(resp) = msg.context("registry watch failed")? else {
                        bail!("etcd closed the registry watch");
                    };
                    if resp.compact_revision > 0 {
                        tracing::warn!(from = start, compacted = resp.compact_revision, "registry revision compacted: reloading");
                        return self.reload(followers).await;
                    }
                    if resp.canceled {
                        bail!("etcd canceled the registry watch: {}", resp.cancel_reason);
                    }
                    let revision = resp.header.as_ref().map_or(0, |h| h.revision);
                    let changes: Vec<Change> = resp
                        .events
                        .iter()
                        .filter_map(|ev| {
                            let kv = ev.kv.as_ref()?;
                            let value = match ev.r#type() {
                                EventType::Put => Some(kv.value.clone()),
                                EventType::Delete => None,
                            };
                            self.change(&kv.key, value, kv.mod_revision)
                        })
                        .collect();
                    if !changes.is_empty() {
                        for f in followers {
                            f.apply(&changes);
                        }
                    }
                    if resp.created {
                        // The answer to the create request: its header revision is etcd's current
                        // one, not how far this watch has delivered (events from `start` may still
                        // be on their way), so it confirms nothing.
                    } else if resp.events.is_empty() {
                        // A progress notification: everything up to `revision` was delivered.
                        awaiting = false;
                        self.synced(revision);
                    } else if let Some(last) = resp.events.iter().filter_map(|e| e.kv.as_ref()).map(|kv| kv.mod_revision).max() {
                        self.applied.fetch_max(last, Ordering::Relaxed);
                    }
                }
            }
        }
    }

    async fn reload(&self, followers: &[Arc<dyn Follower>]) -> anyhow::Result<()> {
        let (revision, all) = self.load().await?;
        for f in followers {
            f.reset(&all);
        }
        self.applied.store(revision, Ordering::Relaxed);
        self.synced(revision);
        Ok(())
    }
}

/// Who holds a lock, stored as its value: an operator (or a test) reading `locks/...` sees which
/// sidecar is rotating a key (`HOSTNAME` is the pod's name in Kubernetes; else the kernel's name).
fn holder() -> String {
    let host = std::env::var("HOSTNAME")
        .ok()
        .or_else(|| std::fs::read_to_string("/proc/sys/kernel/hostname").ok())
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "unknown-host".into());
    format!("{host} pid {}", std::process::id())
}

/// A fleet-wide lock held through an etcd lease.
#[derive(Debug)]
pub struct LeaseLock {
    lease: i64,
}

/// An entry a transaction requires to be unchanged since it was read at `revision` (0: absent).
#[derive(Debug, Clone)]
pub struct Guarded {
    pub section: Section,
    pub name: String,
    pub revision: i64,
}

/// One write in a transaction.
#[derive(Debug)]
pub enum Write {
    Put(Section, String, Vec<u8>),
    Delete(Section, String),
}

fn material_name(key_id: &str, version: u32) -> String {
    format!("{key_id}/{version}")
}

/// Embedded key material sealed in the registry: the first sidecar to create a version's material
/// wins, every other adopts it, so racing rotations never fork a version.
#[async_trait]
impl MaterialStore for EtcdRegistry {
    async fn put_if_absent(
        &self,
        key: KeyRef<'_>,
        sealed: Vec<u8>,
    ) -> Result<Vec<u8>, BackendError> {
        EtcdRegistry::put_if_absent(
            self,
            Section::Material,
            &material_name(key.key_id, key.version),
            sealed,
        )
        .await
        .map_err(|e| BackendError::with_source(BackendErrorKind::Unavailable, e))
    }

    async fn remove(&self, key_id: &str, versions: &[u32]) -> Result<(), BackendError> {
        let writes = versions
            .iter()
            .map(|v| Write::Delete(Section::Material, material_name(key_id, *v)))
            .collect();
        self.commit(&[], writes)
            .await
            .map(|_| ())
            .map_err(|e| BackendError::with_source(BackendErrorKind::Unavailable, e))
    }
}
