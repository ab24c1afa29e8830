//! The audit log: one JSON line per KMS call, hash-chained so that an edit, a deletion, an insertion
//! or a reordering of records is detectable with [`verify`].
//!
//! Why it exists: a security reviewer must be able to answer "who did what with which key" after the
//! fact and trust the answer. Each record carries `prev_hash` (the previous record's `hash`) and
//! `hash = hex(SHA-256(prev_hash || line without its hash member))`, where the line is the record's
//! compact JSON with its members in the fixed order of [`AuditRecord`]. The chain starts at
//! [`GENESIS_HASH`], survives restarts (the last line is read back on open; a torn last line is
//! reported, never chained over) and continues across size-based rotation (`audit.jsonl` is renamed
//! to `audit-<UTC timestamp>.jsonl` and the new file's first record chains from the old file's last).
//!
//! What it never holds: [`AuditRecord`] has no field that could carry a plaintext, a data key, a
//! ciphertext, a secret or a signature. Encryption-context *keys* are logged; their values only when
//! `include_context_values` is set (KMS treats the context as non-secret, CloudTrail logs it).
//!
//! Cost on the request path: [`AuditLog::record`] is a `try_send` on a bounded channel. A writer
//! thread hashes, buffers and writes, flushing at least every `flush_interval` (1 s by default) and
//! fsyncing as configured. A failed write is counted, and [`AuditLog::is_healthy`] turns false so
//! the pipeline can fail closed; under `fsync = every_record` the pipeline awaits
//! [`AuditLog::record_durable`] before answering.

use std::collections::VecDeque;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, SyncSender, TrySendError};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use prometheus::{IntCounter, IntCounterVec, Opts, Registry};
use serde::{Deserialize, Serialize};
use tokio::sync::oneshot;

use crate::cache::CacheOutcome;
use crate::kms::{EncryptionContext, ErrorKind, KmsError, Operation};

use writer::{Msg, Shared, Writer, lock, open_current};

mod chain;
mod encode;
mod event;
mod query;
#[cfg(test)]
mod tests;
mod verification;
mod writer;

pub use chain::Problem;
pub use event::{PrincipalName, RequestId, Source};
pub use query::{AuditQuery, MAX_QUERY_LIMIT, QueryError};
pub use verification::{VerifyError, VerifyOptions, VerifyReport, verify, verify_with};

/// The current file's name inside the audit directory.
pub const FILE_NAME: &str = "audit.jsonl";
/// The `prev_hash` of the very first record.
pub const GENESIS_HASH: &str = "0000000000000000000000000000000000000000000000000000000000000000";
const ROTATED_PREFIX: &str = "audit-";
const ROTATED_SUFFIX: &str = ".jsonl";
/// Buffered bytes that trigger a write before the flush deadline.
const FLUSH_BYTES: usize = 64 * 1024;
/// Messages handled per wake-up before the writer checks whether to flush.
const BATCH: usize = 1024;

/// When the writer calls fsync.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum FsyncPolicy {
    /// Leave it to the OS (records survive a process crash, not a power loss).
    #[value(name = "never")]
    Never,
    /// fsync after each flush (at least once a second while records arrive).
    #[value(name = "every_flush")]
    EveryFlush,
    /// Write and fsync before a record is acknowledged (batched under load: group commit).
    #[value(name = "every_record")]
    EveryRecord,
}

/// What the pipeline does while the audit log cannot be written.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum FailureMode {
    /// Refuse calls with `KMSInternalException` (the default: no unaudited key use).
    Closed,
    /// Keep serving; lost records are only counted.
    Open,
}

/// Audit log settings (validated by the config module before they get here).
#[derive(Clone, Debug)]
pub struct AuditConfig {
    /// The directory holding `audit.jsonl` and its rotated predecessors.
    pub dir: PathBuf,
    /// Rotate once the current file is larger than this.
    pub max_bytes: u64,
    pub fsync: FsyncPolicy,
    pub on_failure: FailureMode,
    /// Longest time a record waits in the buffer; at most 1 s is sensible.
    pub flush_interval: Duration,
    /// Records that may wait for the writer; beyond it `record` fails instead of blocking.
    pub queue_capacity: usize,
    /// Records kept in memory for `/v1/audit`.
    pub ring_capacity: usize,
    /// Log encryption-context values, not only keys.
    pub include_context_values: bool,
}

impl AuditConfig {
    /// Defaults: 100 MiB files, fsync every flush, fail closed, 1 s flushes, 10,000 recent records.
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self {
            dir: dir.into(),
            max_bytes: 100 * 1024 * 1024,
            fsync: FsyncPolicy::EveryFlush,
            on_failure: FailureMode::Closed,
            flush_interval: Duration::from_secs(1),
            queue_capacity: 65_536,
            ring_capacity: 10_000,
            include_context_values: false,
        }
    }
}

/// How a call ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Outcome {
    Ok,
    Denied,
    Error,
}

impl Outcome {
    pub const ALL: [Outcome; 3] = [Outcome::Ok, Outcome::Denied, Outcome::Error];

    pub const fn as_str(self) -> &'static str {
        match self {
            Outcome::Ok => "ok",
            Outcome::Denied => "denied",
            Outcome::Error => "error",
        }
    }

    fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|o| o.as_str() == s)
    }
}

/// What the pipeline reports about one call. Cheap to build: enums and the strings it already has.
#[derive(Clone, Debug)]
pub struct AuditEvent {
    /// Unix epoch seconds ([`epoch_seconds`]).
    pub time: f64,
    pub request_id: RequestId,
    /// The principal name (`unknown` when authentication failed).
    pub principal: PrincipalName,
    /// The client's socket address (or socket path).
    pub source: Source,
    /// `None` when the target named no known operation.
    pub operation: Option<Operation>,
    pub key_id: Option<String>,
    pub key_version: Option<u32>,
    /// The request's encryption context; only its keys are logged unless configured otherwise.
    pub encryption_context: EncryptionContext,
    pub outcome: Outcome,
    pub error_type: Option<ErrorKind>,
    /// A bounded reason label such as `policy_denied`.
    pub reason: Option<&'static str>,
    pub cache: CacheOutcome,
    pub latency_ms: f64,
    /// For a call AWS KMS made on someone's behalf (the XKS proxy API): its request id, which
    /// CloudTrail shows, and the principal that called AWS KMS.
    pub kms_request_id: Option<String>,
    pub aws_principal_arn: Option<String>,
}

/// One line of the audit log, members in hashing order. There is deliberately no field for a
/// plaintext, data key, ciphertext, secret or signature: the type cannot carry one.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct AuditRecord {
    pub time: f64,
    pub request_id: String,
    pub principal: String,
    pub source: String,
    pub operation: String,
    pub key_id: Option<String>,
    pub key_version: Option<u32>,
    pub context_keys: Vec<String>,
    /// Encryption-context values, present only with `include_context_values`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub context: Option<EncryptionContext>,
    pub outcome: Outcome,
    pub error_type: Option<String>,
    pub reason: Option<String>,
    pub cache: String,
    pub latency_ms: f64,
    /// Absent (not null) unless set, so records written before these members existed verify.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kms_request_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub aws_principal_arn: Option<String>,
    pub prev_hash: String,
    /// Empty while the hashed body is serialized, so the body is the line without this member.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub hash: String,
}

/// Unix epoch seconds of `t`, the audit and admin API time format.
pub fn epoch_seconds(t: SystemTime) -> f64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

/// Audit failures. Sources are kept; none of them holds record content.
#[derive(Debug, thiserror::Error)]
pub enum AuditError {
    #[error("cannot {action} {}", path.display())]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{} is not a regular file", path.display())]
    NotAFile { path: PathBuf },
    #[error(
        "{} ends with a partial record (torn write); its complete records end at byte {valid_len}: \
         run `kms-sidecar audit verify`, then truncate or move the file",
        path.display()
    )]
    TornTail { path: PathBuf, valid_len: u64 },
    #[error("the last record of {} is corrupt: {problem}", path.display())]
    CorruptTail { path: PathBuf, problem: Problem },
    #[error("{} does not end with the last record this process wrote; refusing to chain over it", path.display())]
    ChainMismatch { path: PathBuf },
    #[error("the audit queue is full")]
    QueueFull,
    #[error("the audit log is closed")]
    Closed,
    #[error("the audit record could not be written")]
    WriteFailed,
    #[error("cannot encode an audit record")]
    Encode(#[source] serde_json::Error),
}

impl From<AuditError> for KmsError {
    fn from(e: AuditError) -> Self {
        KmsError::internal(e)
    }
}

fn io_err<'a>(action: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> AuditError + 'a {
    move |source| AuditError::Io {
        action,
        path: path.to_path_buf(),
        source,
    }
}

/// `kms_sidecar_audit_events_total{outcome}` and `kms_sidecar_audit_write_errors_total`.
#[derive(Clone, Debug)]
pub struct AuditMetrics {
    events: [IntCounter; 3],
    write_errors: IntCounter,
}

impl AuditMetrics {
    pub fn register(registry: &Registry) -> prometheus::Result<Self> {
        let events = IntCounterVec::new(
            Opts::new(
                "kms_sidecar_audit_events_total",
                "Audit records written, by call outcome.",
            ),
            &["outcome"],
        )?;
        let write_errors = IntCounter::new(
            "kms_sidecar_audit_write_errors_total",
            "Audit records that could not be written (I/O failure or a full queue).",
        )?;
        registry.register(Box::new(events.clone()))?;
        registry.register(Box::new(write_errors.clone()))?;
        Ok(Self {
            events: Outcome::ALL.map(|o| events.with_label_values(&[o.as_str()])),
            write_errors,
        })
    }
}

// ---------------------------------------------------------------------------------------------
// The handle the pipeline holds.

/// The audit log. Share it behind an `Arc`; dropping the last handle flushes and stops the writer.
#[derive(Debug)]
pub struct AuditLog {
    tx: SyncSender<Msg>,
    shared: Arc<Shared>,
    on_failure: FailureMode,
    thread: Option<JoinHandle<()>>,
}

impl AuditLog {
    /// Opens (or creates) the log in `cfg.dir`, recovers the chain and starts the writer thread.
    /// Fails on a torn or corrupt last record, or when `audit.jsonl` is not a regular file.
    pub fn open(cfg: AuditConfig, metrics: AuditMetrics) -> Result<Self, AuditError> {
        fs::create_dir_all(&cfg.dir).map_err(io_err("create", &cfg.dir))?;
        let path = cfg.dir.join(FILE_NAME);
        let (current, last) = open_current(&cfg.dir, &path)?;
        let shared = Arc::new(Shared {
            healthy: AtomicBool::new(true),
            ring: Mutex::new(VecDeque::with_capacity(cfg.ring_capacity.min(16_384))),
            ring_capacity: cfg.ring_capacity.max(1),
            last_error: Mutex::new(None),
            metrics,
        });
        let (tx, rx) = mpsc::sync_channel(cfg.queue_capacity.max(1));
        let on_failure = cfg.on_failure;
        let writer = Writer {
            last_ino: Some(current.ino),
            last_len: current.len,
            current: Some(current),
            path,
            chained: last.clone(),
            written: last,
            buf: Vec::with_capacity(FLUSH_BYTES),
            buffered: Vec::new(),
            waiters: Vec::new(),
            deadline: None,
            shared: Arc::clone(&shared),
            cfg,
        };
        let thread = std::thread::Builder::new()
            .name("audit-writer".into())
            .spawn(move || writer.run(rx))
            .map_err(io_err("start the writer for", Path::new(FILE_NAME)))?;
        Ok(Self {
            tx,
            shared,
            on_failure,
            thread: Some(thread),
        })
    }

    fn send(&self, msg: Msg) -> Result<(), AuditError> {
        self.tx.try_send(msg).map_err(|e| {
            if matches!(
                e,
                TrySendError::Full(Msg::Record(..)) | TrySendError::Disconnected(Msg::Record(..))
            ) {
                self.shared.metrics.write_errors.inc();
            }
            match e {
                TrySendError::Full(_) => AuditError::QueueFull,
                TrySendError::Disconnected(_) => AuditError::Closed,
            }
        })
    }

    /// Queues a record; never blocks. An error means the record is lost (and counted).
    pub fn record(&self, event: AuditEvent) -> Result<(), AuditError> {
        self.send(Msg::Record(Box::new(event), None))
    }

    /// Queues a record and resolves once it is written (and fsynced unless the policy is `never`).
    /// Under `fsync = every_record` the pipeline awaits this before answering.
    pub async fn record_durable(&self, event: AuditEvent) -> Result<(), AuditError> {
        let (ack, done) = oneshot::channel();
        self.send(Msg::Record(Box::new(event), Some(ack)))?;
        done.await.map_err(|_| AuditError::Closed)?
    }

    /// Writes everything queued so far.
    pub async fn flush(&self) -> Result<(), AuditError> {
        let (ack, done) = oneshot::channel();
        self.send(Msg::Flush(ack))?;
        done.await.map_err(|_| AuditError::Closed)?
    }

    /// Whether the last write (or recovery) succeeded. One atomic load.
    pub fn is_healthy(&self) -> bool {
        self.shared.healthy.load(Ordering::Acquire)
    }

    /// Whether calls must be refused now: unhealthy and configured to fail closed.
    pub fn blocks_requests(&self) -> bool {
        self.on_failure == FailureMode::Closed && !self.is_healthy()
    }

    /// Whether the log is configured to fail closed (refuse what it cannot record).
    pub fn fails_closed(&self) -> bool {
        self.on_failure == FailureMode::Closed
    }

    /// The last write failure, for `/readyz` reasons and logs.
    pub fn last_error(&self) -> Option<String> {
        lock(&self.shared.last_error).clone()
    }
}

impl Drop for AuditLog {
    fn drop(&mut self) {
        // Disconnecting the channel makes the writer flush and exit.
        let (closed, _) = mpsc::sync_channel(1);
        drop(std::mem::replace(&mut self.tx, closed));
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
