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
use std::fmt;
use std::fs::{self, File, OpenOptions};
use std::io::{self, BufRead, BufReader, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, SyncSender, TrySendError};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use prometheus::{IntCounter, IntCounterVec, Opts, Registry};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tokio::sync::oneshot;

use crate::observe::metrics::CacheOutcome;
use crate::protocol::{EncryptionContext, ErrorKind, KmsError, Operation};

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
    pub request_id: String,
    /// The principal name (`unknown` when authentication failed).
    pub principal: String,
    /// The client's socket address.
    pub source: String,
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
// Hashing and line checks, shared by the writer and `verify`.

fn record_hash(prev_hash: &str, body: &[u8]) -> String {
    let mut h = Sha256::new();
    h.update(prev_hash.as_bytes());
    h.update(body);
    hex::encode(h.finalize())
}

fn is_hash(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

/// Why a record breaks the chain.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Problem {
    /// The record's content does not hash to its `hash`: it was edited.
    HashMismatch,
    /// The record does not follow the one before it: a record was deleted, inserted or moved.
    PrevHashMismatch { expected: String, found: String },
    /// Not a JSON audit record.
    Unparsable(String),
    /// The last line has no newline: the file was cut.
    Truncated,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Problem::HashMismatch => {
                f.write_str("hash mismatch: the record was changed after it was written")
            }
            Problem::PrevHashMismatch { expected, found } => write!(
                f,
                "prev_hash mismatch: expected {expected}, found {found} (a record was deleted, inserted or reordered)"
            ),
            Problem::Unparsable(why) => write!(f, "unparsable record: {why}"),
            Problem::Truncated => f.write_str("truncated: the last line is incomplete"),
        }
    }
}

/// Checks one line (without its newline) on its own; returns its `(prev_hash, hash)`.
fn check_line(line: &[u8]) -> Result<(String, String), Problem> {
    let value: serde_json::Value =
        serde_json::from_slice(line).map_err(|e| Problem::Unparsable(e.to_string()))?;
    let field = |name: &str| {
        value
            .get(name)
            .and_then(|v| v.as_str())
            .filter(|s| is_hash(s))
            .map(str::to_owned)
            .ok_or_else(|| Problem::Unparsable(format!("no valid \"{name}\" member")))
    };
    let (prev, hash) = (field("prev_hash")?, field("hash")?);
    // The hash member is last, so the hashed body is the line with `,"hash":"…"` cut out.
    let suffix = format!(",\"hash\":\"{hash}\"}}");
    let Some(head) = line.strip_suffix(suffix.as_bytes()) else {
        return Err(Problem::Unparsable(
            "\"hash\" is not the last member".into(),
        ));
    };
    let mut body = Vec::with_capacity(head.len() + 1);
    body.extend_from_slice(head);
    body.push(b'}');
    if record_hash(&prev, &body) != hash {
        return Err(Problem::HashMismatch);
    }
    Ok((prev, hash))
}

/// Reads the last line of a file: `Ok(None)` for an empty file, the last hash otherwise.
fn read_tail(path: &Path, file: &mut File) -> Result<Option<String>, AuditError> {
    let len = file.metadata().map_err(io_err("inspect", path))?.len();
    if len == 0 {
        return Ok(None);
    }
    // Read backwards in chunks until the newline before the last line is found.
    let mut tail: Vec<u8> = Vec::new();
    let mut pos = len;
    loop {
        let step = pos.min(8192);
        pos -= step;
        let mut chunk = vec![0u8; usize::try_from(step).unwrap_or(8192)];
        file.seek(SeekFrom::Start(pos))
            .map_err(io_err("seek", path))?;
        file.read_exact(&mut chunk).map_err(io_err("read", path))?;
        chunk.extend_from_slice(&tail);
        tail = chunk;
        let body_end = tail.len().saturating_sub(1);
        if pos == 0 || tail[..body_end].contains(&b'\n') {
            break;
        }
    }
    if tail.last() != Some(&b'\n') {
        let complete = tail.iter().rposition(|b| *b == b'\n').map_or(0, |i| i + 1);
        return Err(AuditError::TornTail {
            path: path.to_path_buf(),
            valid_len: pos + complete as u64,
        });
    }
    let body = &tail[..tail.len() - 1];
    let start = body.iter().rposition(|b| *b == b'\n').map_or(0, |i| i + 1);
    check_line(&body[start..])
        .map(|(_, hash)| Some(hash))
        .map_err(|problem| AuditError::CorruptTail {
            path: path.to_path_buf(),
            problem,
        })
}

/// Rotated files in chain order (their names sort by time).
fn rotated_files(dir: &Path) -> Result<Vec<PathBuf>, io::Error> {
    let mut files: Vec<PathBuf> = fs::read_dir(dir)?
        .filter_map(Result::ok)
        .filter(|e| {
            let name = e.file_name();
            let name = name.to_string_lossy();
            name.starts_with(ROTATED_PREFIX) && name.ends_with(ROTATED_SUFFIX)
        })
        .map(|e| e.path())
        .collect();
    files.sort();
    Ok(files)
}

fn sync_dir(dir: &Path) -> Result<(), AuditError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io_err("fsync directory", dir))
}

// ---------------------------------------------------------------------------------------------
// The writer.

struct Shared {
    healthy: AtomicBool,
    ring: Mutex<VecDeque<AuditRecord>>,
    ring_capacity: usize,
    last_error: Mutex<Option<String>>,
    metrics: AuditMetrics,
}

impl fmt::Debug for Shared {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Shared")
            .field("healthy", &self.healthy)
            .finish_non_exhaustive()
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding these locks cannot leave them inconsistent; keep going.
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

type Ack = oneshot::Sender<Result<(), AuditError>>;

enum Msg {
    Record(Box<AuditEvent>, Option<Ack>),
    Flush(Ack),
}

/// An open file and what is known to be in it.
struct Current {
    file: File,
    /// Bytes known to be completely written.
    len: u64,
    ino: (u64, u64),
}

struct Writer {
    cfg: AuditConfig,
    path: PathBuf,
    current: Option<Current>,
    /// `(dev, inode)` of the last file this writer had open, kept across failures.
    last_ino: Option<(u64, u64)>,
    last_len: u64,
    /// The hash of the last record chained (buffered included).
    chained: String,
    /// The hash of the last record known to be in the file.
    written: String,
    buf: Vec<u8>,
    buffered: Vec<AuditRecord>,
    waiters: Vec<Ack>,
    deadline: Option<Instant>,
    shared: Arc<Shared>,
}

/// Opens `audit.jsonl` (creating it) and finds the hash the next record chains from.
fn open_current(dir: &Path, path: &Path) -> Result<(Current, String), AuditError> {
    if let Ok(meta) = fs::symlink_metadata(path)
        && !meta.is_file()
    {
        return Err(AuditError::NotAFile {
            path: path.to_path_buf(),
        });
    }
    let mut file = OpenOptions::new()
        .read(true)
        .append(true)
        .create(true)
        .mode(0o600)
        .open(path)
        .map_err(io_err("open", path))?;
    let meta = file.metadata().map_err(io_err("inspect", path))?;
    let last = match read_tail(path, &mut file)? {
        Some(hash) => hash,
        None => match rotated_files(dir).map_err(io_err("list", dir))?.last() {
            Some(prev) => {
                let mut f = File::open(prev).map_err(io_err("open", prev))?;
                read_tail(prev, &mut f)?.unwrap_or_else(|| GENESIS_HASH.to_owned())
            }
            None => GENESIS_HASH.to_owned(),
        },
    };
    let current = Current {
        file,
        len: meta.len(),
        ino: (meta.dev(), meta.ino()),
    };
    Ok((current, last))
}

impl Writer {
    fn fail(&mut self, error: &AuditError, lost: usize) {
        if self.shared.healthy.swap(false, Ordering::AcqRel) || lost > 0 {
            tracing::error!(error = %error, lost, "audit log write failed");
        } else {
            tracing::debug!(error = %error, "audit log still cannot be written");
        }
        self.shared.metrics.write_errors.inc_by(lost as u64);
        *lock(&self.shared.last_error) = Some(error.to_string());
        if let Some(c) = self.current.take() {
            self.last_ino = Some(c.ino);
            self.last_len = c.len;
        }
    }

    fn push(&mut self, ev: AuditEvent) -> Result<(), AuditError> {
        let finite = |x: f64| if x.is_finite() { x } else { 0.0 };
        let mut record = AuditRecord {
            time: finite(ev.time),
            request_id: ev.request_id,
            principal: ev.principal,
            source: ev.source,
            operation: ev.operation.map_or("unknown", Operation::as_str).to_owned(),
            key_id: ev.key_id,
            key_version: ev.key_version,
            context_keys: ev.encryption_context.keys().cloned().collect(),
            context: self
                .cfg
                .include_context_values
                .then_some(ev.encryption_context),
            outcome: ev.outcome,
            error_type: ev.error_type.map(|k| k.aws_type().to_owned()),
            reason: ev.reason.map(str::to_owned),
            cache: ev.cache.as_str().to_owned(),
            latency_ms: finite(ev.latency_ms),
            prev_hash: self.chained.clone(),
            hash: String::new(),
        };
        let body = serde_json::to_vec(&record).map_err(AuditError::Encode)?;
        record.hash = record_hash(&record.prev_hash, &body);
        let head = body.strip_suffix(b"}").unwrap_or(&body);
        self.buf.extend_from_slice(head);
        self.buf.extend_from_slice(b",\"hash\":\"");
        self.buf.extend_from_slice(record.hash.as_bytes());
        self.buf.extend_from_slice(b"\"}\n");
        self.chained.clone_from(&record.hash);
        self.buffered.push(record);
        if self.deadline.is_none() {
            self.deadline = Some(Instant::now() + self.cfg.flush_interval);
        }
        Ok(())
    }

    fn handle(&mut self, msg: Msg) {
        match msg {
            Msg::Record(ev, ack) => match self.push(*ev) {
                Ok(()) => self.waiters.extend(ack),
                Err(e) => {
                    self.fail(&e, 1);
                    if let Some(ack) = ack {
                        let _ = ack.send(Err(e));
                    }
                }
            },
            Msg::Flush(ack) => self.waiters.push(ack),
        }
    }

    fn wants_flush(&self) -> bool {
        !self.waiters.is_empty()
            || self.buf.len() >= FLUSH_BYTES
            || (self.cfg.fsync == FsyncPolicy::EveryRecord && !self.buffered.is_empty())
            || self.deadline.is_some_and(|d| Instant::now() >= d)
    }

    /// Reopens the file after a failure. Our own partial write is cut off; a file that does not end
    /// with our last written record is refused rather than chained over.
    fn recover(&mut self) -> Result<(), AuditError> {
        if self.current.is_some() {
            return Ok(());
        }
        let path = self.path.clone();
        if let (Some(ino), Ok(meta)) = (self.last_ino, fs::symlink_metadata(&path))
            && meta.is_file()
            && (meta.dev(), meta.ino()) == ino
            && meta.len() > self.last_len
        {
            OpenOptions::new()
                .write(true)
                .open(&path)
                .and_then(|f| f.set_len(self.last_len))
                .map_err(io_err("truncate a partial record in", &path))?;
        }
        let (current, last) = open_current(&self.cfg.dir, &path)?;
        // A missing file (deleted, or never created after a rotation) restarts from our own chain,
        // so the gap is visible to `verify`; anything else must end where we stopped.
        if current.len > 0 && last != self.written {
            return Err(AuditError::ChainMismatch { path });
        }
        self.current = Some(current);
        Ok(())
    }

    fn write_buffer(&mut self) -> Result<(), AuditError> {
        self.recover()?;
        let path = &self.path;
        let Some(cur) = self.current.as_mut() else {
            return Err(AuditError::WriteFailed);
        };
        // Writing to a file that was deleted or replaced would succeed and audit nothing.
        let meta = fs::symlink_metadata(path).map_err(io_err("inspect", path))?;
        if (meta.dev(), meta.ino()) != cur.ino {
            return Err(AuditError::Io {
                action: "write",
                path: path.clone(),
                source: io::Error::other("the file was removed or replaced"),
            });
        }
        cur.file
            .write_all(&self.buf)
            .map_err(io_err("write", path))?;
        if self.cfg.fsync != FsyncPolicy::Never {
            cur.file.sync_data().map_err(io_err("fsync", path))?;
        }
        // Only now are the bytes known good; after a failure `recover` cuts back to `len`.
        cur.len += self.buf.len() as u64;
        Ok(())
    }

    fn flush(&mut self) {
        self.deadline = None;
        let result = if self.buf.is_empty() {
            if self.shared.healthy.load(Ordering::Acquire) {
                Ok(())
            } else {
                self.recover()
            }
        } else {
            self.write_buffer()
        };
        self.buf.clear();
        let records = std::mem::take(&mut self.buffered);
        match result {
            Ok(()) => {
                self.written.clone_from(&self.chained);
                for r in &records {
                    if let Some(c) = self.shared.metrics.events.get(r.outcome as usize) {
                        c.inc();
                    }
                }
                let mut ring = lock(&self.shared.ring);
                for r in records {
                    if ring.len() >= self.shared.ring_capacity {
                        ring.pop_front();
                    }
                    ring.push_back(r);
                }
                drop(ring);
                self.shared.healthy.store(true, Ordering::Release);
                for w in self.waiters.drain(..) {
                    let _ = w.send(Ok(()));
                }
                if let Err(e) = self.rotate_if_full() {
                    self.fail(&e, 0);
                }
            }
            Err(e) => {
                // The lost records leave the chain: the next record follows the last one on disk.
                self.chained.clone_from(&self.written);
                self.fail(&e, records.len());
                for w in self.waiters.drain(..) {
                    let _ = w.send(Err(AuditError::WriteFailed));
                }
            }
        }
    }

    fn rotate_if_full(&mut self) -> Result<(), AuditError> {
        if self
            .current
            .as_ref()
            .is_none_or(|c| c.len <= self.cfg.max_bytes)
        {
            return Ok(());
        }
        self.current = None;
        self.last_ino = None;
        let dir = &self.cfg.dir;
        let mut nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        let target = loop {
            let t = rotated_name(dir, nanos);
            if !t.exists() {
                break t;
            }
            nanos += 1;
        };
        fs::rename(&self.path, &target).map_err(io_err("rotate", &self.path))?;
        if self.cfg.fsync != FsyncPolicy::Never {
            sync_dir(dir)?;
        }
        self.recover()
    }

    fn run(mut self, rx: Receiver<Msg>) {
        loop {
            let wait = self.deadline.map_or(Duration::from_secs(1), |d| {
                d.saturating_duration_since(Instant::now())
            });
            match rx.recv_timeout(wait) {
                Ok(msg) => {
                    self.handle(msg);
                    for msg in rx.try_iter().take(BATCH) {
                        self.handle(msg);
                    }
                }
                Err(RecvTimeoutError::Timeout) => {
                    // Idle and unhealthy: try to recover so health comes back without traffic.
                    if self.deadline.is_none() && !self.shared.healthy.load(Ordering::Acquire) {
                        self.flush();
                    }
                }
                Err(RecvTimeoutError::Disconnected) => {
                    self.flush();
                    return;
                }
            }
            if self.wants_flush() {
                self.flush();
            }
        }
    }
}

fn rotated_name(dir: &Path, nanos: u128) -> PathBuf {
    let format = time::macros::format_description!(
        "[year][month][day]T[hour][minute][second].[subsecond digits:9]Z"
    );
    let stamp = i128::try_from(nanos)
        .ok()
        .and_then(|n| time::OffsetDateTime::from_unix_timestamp_nanos(n).ok())
        .and_then(|t| t.format(format).ok())
        .unwrap_or_else(|| format!("{nanos:030}"));
    dir.join(format!("{ROTATED_PREFIX}{stamp}{ROTATED_SUFFIX}"))
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

    /// Recent written records matching `q`, newest first.
    pub fn query(&self, q: &AuditQuery) -> Vec<AuditRecord> {
        lock(&self.shared.ring)
            .iter()
            .rev()
            .filter(|r| q.matches(r))
            .take(q.limit)
            .cloned()
            .collect()
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

// ---------------------------------------------------------------------------------------------
// `/v1/audit` queries.

/// The largest page `/v1/audit` returns.
pub const MAX_QUERY_LIMIT: usize = 1000;
const DEFAULT_QUERY_LIMIT: usize = 100;

/// A filter over recent records (all conditions must hold).
#[derive(Clone, Debug, PartialEq)]
pub struct AuditQuery {
    pub outcome: Option<Outcome>,
    pub principal: Option<String>,
    pub key: Option<String>,
    /// Records at or after this epoch time.
    pub since: Option<f64>,
    /// 1..=1000.
    pub limit: usize,
}

impl Default for AuditQuery {
    fn default() -> Self {
        Self {
            outcome: None,
            principal: None,
            key: None,
            since: None,
            limit: DEFAULT_QUERY_LIMIT,
        }
    }
}

/// A `/v1/audit` query string that cannot be honoured (answer 400 with this message).
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("invalid query parameter {name}: {problem}")]
pub struct QueryError {
    pub name: String,
    pub problem: &'static str,
}

fn percent_decode(s: &str) -> Option<String> {
    let mut out = Vec::with_capacity(s.len());
    let mut bytes = s.bytes();
    while let Some(b) = bytes.next() {
        match b {
            b'+' => out.push(b' '),
            b'%' => {
                let hi = char::from(bytes.next()?).to_digit(16)?;
                let lo = char::from(bytes.next()?).to_digit(16)?;
                out.push(u8::try_from(hi * 16 + lo).ok()?);
            }
            b => out.push(b),
        }
    }
    String::from_utf8(out).ok()
}

impl AuditQuery {
    /// Parses `outcome=denied&principal=billing&key=…&since=…&limit=…` (no leading `?`).
    pub fn from_query_string(query: &str) -> Result<Self, QueryError> {
        let mut q = Self::default();
        for pair in query.split('&').filter(|p| !p.is_empty()) {
            let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
            let bad = |problem| QueryError {
                name: name.chars().take(32).collect(),
                problem,
            };
            let value = percent_decode(value).ok_or_else(|| bad("bad percent-encoding"))?;
            match name {
                "outcome" => {
                    q.outcome = Some(
                        Outcome::parse(&value)
                            .ok_or_else(|| bad("expected ok, denied or error"))?,
                    );
                }
                "principal" => q.principal = Some(value),
                "key" => q.key = Some(value),
                "since" => {
                    q.since = Some(
                        value
                            .parse::<f64>()
                            .ok()
                            .filter(|s| s.is_finite())
                            .ok_or_else(|| bad("expected epoch seconds"))?,
                    );
                }
                "limit" => {
                    q.limit = value
                        .parse::<usize>()
                        .ok()
                        .filter(|l| (1..=MAX_QUERY_LIMIT).contains(l))
                        .ok_or_else(|| bad("expected 1..=1000"))?;
                }
                _ => return Err(bad("unknown parameter")),
            }
        }
        Ok(q)
    }

    fn matches(&self, r: &AuditRecord) -> bool {
        self.outcome.is_none_or(|o| o == r.outcome)
            && self.principal.as_ref().is_none_or(|p| *p == r.principal)
            && self
                .key
                .as_ref()
                .is_none_or(|k| r.key_id.as_ref() == Some(k))
            && self.since.is_none_or(|s| r.time >= s)
    }
}

// ---------------------------------------------------------------------------------------------
// `kms-sidecar audit verify`.

/// A chain that verified.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VerifyReport {
    /// The files checked, oldest first (rotated files, then `audit.jsonl`).
    pub files: Vec<PathBuf>,
    pub records: u64,
    /// The last record's hash: compare it with a copy kept elsewhere to detect a cut-off tail.
    pub last_hash: String,
}

/// Options for [`verify_with`].
#[derive(Clone, Debug, Default)]
pub struct VerifyOptions {
    /// The chain may start from a non-genesis hash (the oldest rotated files were deleted on
    /// purpose). Without it the first record must follow [`GENESIS_HASH`].
    pub allow_pruned_head: bool,
    /// The hash the last record must have (an anchor recorded earlier).
    pub expected_last_hash: Option<String>,
}

/// Why a log did not verify.
#[derive(Debug, thiserror::Error)]
pub enum VerifyError {
    #[error("cannot read {}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("no audit log at {}", path.display())]
    NotFound { path: PathBuf },
    /// The first broken record.
    #[error("{} line {line}: {problem}", file.display())]
    Broken {
        file: PathBuf,
        line: u64,
        problem: Problem,
    },
    #[error("the log ends with {found}, not the expected {expected}: records were cut off the end")]
    TailMismatch { expected: String, found: String },
}

/// Verifies the whole chain: every rotated file in order, then `audit.jsonl`. `path` is the audit
/// directory or any file in it.
pub fn verify(path: &Path) -> Result<VerifyReport, VerifyError> {
    verify_with(path, &VerifyOptions::default())
}

/// [`verify`] with options: a deliberately pruned head, or an anchored tail.
pub fn verify_with(path: &Path, opts: &VerifyOptions) -> Result<VerifyReport, VerifyError> {
    let dir = if path.is_dir() {
        path.to_path_buf()
    } else {
        match path.parent() {
            Some(p) if path.exists() && p.as_os_str().is_empty() => PathBuf::from("."),
            Some(p) if path.exists() => p.to_path_buf(),
            _ => {
                return Err(VerifyError::NotFound {
                    path: path.to_path_buf(),
                });
            }
        }
    };
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| VerifyError::Io { path, source }
    };
    let mut files = rotated_files(&dir).map_err(io(&dir))?;
    let current = dir.join(FILE_NAME);
    if current.exists() {
        files.push(current);
    }
    if files.is_empty() {
        return Err(VerifyError::NotFound { path: dir });
    }
    let mut expected: Option<String> = (!opts.allow_pruned_head).then(|| GENESIS_HASH.to_owned());
    let mut records = 0u64;
    for file in &files {
        let mut reader = BufReader::new(File::open(file).map_err(io(file))?);
        let mut line = Vec::new();
        let mut n = 0u64;
        loop {
            line.clear();
            if reader.read_until(b'\n', &mut line).map_err(io(file))? == 0 {
                break;
            }
            n += 1;
            let broken = |problem| VerifyError::Broken {
                file: file.clone(),
                line: n,
                problem,
            };
            let Some(content) = line.strip_suffix(b"\n") else {
                return Err(broken(Problem::Truncated));
            };
            let (prev, hash) = check_line(content).map_err(broken)?;
            if let Some(exp) = expected.as_ref()
                && *exp != prev
            {
                return Err(broken(Problem::PrevHashMismatch {
                    expected: exp.clone(),
                    found: prev,
                }));
            }
            expected = Some(hash);
            records += 1;
        }
    }
    let last_hash = expected.unwrap_or_else(|| GENESIS_HASH.to_owned());
    if let Some(want) = &opts.expected_last_hash
        && *want != last_hash
    {
        return Err(VerifyError::TailMismatch {
            expected: want.clone(),
            found: last_hash,
        });
    }
    Ok(VerifyReport {
        files,
        records,
        last_hash,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(principal: &str, outcome: Outcome, key: &str, time: f64) -> AuditEvent {
        AuditEvent {
            time,
            request_id: format!("req-{time}"),
            principal: principal.into(),
            source: "127.0.0.1:50412".into(),
            operation: Some(Operation::Decrypt),
            key_id: Some(key.into()),
            key_version: Some(2),
            encryption_context: [("tenant".to_string(), "PLANTED-CONTEXT-VALUE".to_string())]
                .into(),
            outcome,
            error_type: (outcome == Outcome::Denied).then_some(ErrorKind::AccessDenied),
            reason: (outcome == Outcome::Denied).then_some("policy_denied"),
            cache: CacheOutcome::None,
            latency_ms: 0.41,
        }
    }

    fn ok(i: usize) -> AuditEvent {
        event("billing", Outcome::Ok, "k1", 1_795_434_129.25 + i as f64)
    }

    fn open(cfg: AuditConfig) -> (AuditLog, Registry) {
        let registry = Registry::new();
        let log = AuditLog::open(cfg, AuditMetrics::register(&registry).unwrap()).unwrap();
        (log, registry)
    }

    fn lines(path: &Path) -> Vec<String> {
        fs::read_to_string(path)
            .unwrap()
            .lines()
            .map(str::to_owned)
            .collect()
    }

    fn broken(dir: &Path) -> (String, u64, Problem) {
        match verify(dir).unwrap_err() {
            VerifyError::Broken {
                file,
                line,
                problem,
            } => (
                file.file_name().unwrap().to_string_lossy().into_owned(),
                line,
                problem,
            ),
            other => panic!("unexpected {other}"),
        }
    }

    #[tokio::test]
    async fn records_are_chained_and_verify() {
        let tmp = tempfile::tempdir().unwrap();
        let (log, registry) = open(AuditConfig::new(tmp.path()));
        log.record(ok(0)).unwrap();
        log.record(event("ops", Outcome::Denied, "k2", 1.0))
            .unwrap();
        log.record(event("ops", Outcome::Error, "k2", 2.0)).unwrap();
        log.flush().await.unwrap();
        let report = verify(tmp.path()).unwrap();
        assert_eq!(report.records, 3);
        assert_eq!(report.files, vec![tmp.path().join(FILE_NAME)]);

        let ls = lines(&tmp.path().join(FILE_NAME));
        let first: serde_json::Value = serde_json::from_str(&ls[0]).unwrap();
        let keys: Vec<&str> = first
            .as_object()
            .unwrap()
            .keys()
            .map(String::as_str)
            .collect();
        let mut want = vec![
            "time",
            "request_id",
            "principal",
            "source",
            "operation",
            "key_id",
            "key_version",
            "context_keys",
            "outcome",
            "error_type",
            "reason",
            "cache",
            "latency_ms",
            "prev_hash",
            "hash",
        ];
        want.sort_unstable();
        assert_eq!(keys, want, "the admin-api.md schema");
        assert_eq!(first["prev_hash"], GENESIS_HASH);
        assert_eq!(first["context_keys"], serde_json::json!(["tenant"]));
        assert!(ls[0].starts_with(r#"{"time":1795434129.25,"request_id":"req-1795434129.25""#));
        let denied: AuditRecord = serde_json::from_str(&ls[1]).unwrap();
        assert_eq!(denied.prev_hash, first["hash"]);
        assert_eq!(denied.error_type.as_deref(), Some("AccessDeniedException"));
        assert_eq!(denied.reason.as_deref(), Some("policy_denied"));
        assert_eq!(
            report.last_hash,
            serde_json::from_str::<AuditRecord>(&ls[2]).unwrap().hash
        );
        // Context values stay out unless configured.
        let text = fs::read_to_string(tmp.path().join(FILE_NAME)).unwrap();
        assert!(!text.contains("PLANTED-CONTEXT-VALUE"));

        let metrics = String::from_utf8(crate::observe::metrics::render(&registry)).unwrap();
        for line in [
            "kms_sidecar_audit_events_total{outcome=\"ok\"} 1",
            "kms_sidecar_audit_events_total{outcome=\"denied\"} 1",
            "kms_sidecar_audit_events_total{outcome=\"error\"} 1",
            "kms_sidecar_audit_write_errors_total 0",
        ] {
            assert!(metrics.lines().any(|l| l == line), "{line} in\n{metrics}");
        }
        assert!(log.is_healthy());
        assert!(!log.blocks_requests());
    }

    #[tokio::test]
    async fn context_values_only_when_configured() {
        let tmp = tempfile::tempdir().unwrap();
        let mut cfg = AuditConfig::new(tmp.path());
        cfg.include_context_values = true;
        let (log, _r) = open(cfg);
        log.record_durable(ok(0)).await.unwrap();
        let r: AuditRecord = serde_json::from_str(&lines(&tmp.path().join(FILE_NAME))[0]).unwrap();
        assert_eq!(
            r.context.unwrap()["tenant"],
            "PLANTED-CONTEXT-VALUE".to_string()
        );
        verify(tmp.path()).unwrap();
    }

    #[tokio::test]
    async fn every_record_is_on_disk_when_acknowledged() {
        let tmp = tempfile::tempdir().unwrap();
        let mut cfg = AuditConfig::new(tmp.path());
        cfg.fsync = FsyncPolicy::EveryRecord;
        cfg.flush_interval = Duration::from_secs(3600);
        let (log, _r) = open(cfg);
        for i in 0..5 {
            log.record_durable(ok(i)).await.unwrap();
            assert_eq!(lines(&tmp.path().join(FILE_NAME)).len(), i + 1);
        }
    }

    #[test]
    fn buffered_records_are_flushed_by_the_interval() {
        let tmp = tempfile::tempdir().unwrap();
        let mut cfg = AuditConfig::new(tmp.path());
        cfg.flush_interval = Duration::from_millis(100);
        cfg.fsync = FsyncPolicy::Never;
        let (log, _r) = open(cfg);
        log.record(ok(0)).unwrap();
        let start = Instant::now();
        while lines(&tmp.path().join(FILE_NAME)).is_empty() {
            assert!(start.elapsed() < Duration::from_secs(5), "never flushed");
            std::thread::sleep(Duration::from_millis(20));
        }
        assert!(!log.query(&AuditQuery::default()).is_empty());
    }

    /// Writes `n` records, flushing every `per_file` so that with `max_bytes = 1` each flush rotates.
    async fn rotated_log(dir: &Path, n: usize, per_file: usize) {
        let mut cfg = AuditConfig::new(dir);
        cfg.max_bytes = 1;
        let (log, _r) = open(cfg);
        for i in 0..n {
            log.record(ok(i)).unwrap();
            if (i + 1) % per_file == 0 {
                log.flush().await.unwrap();
            }
        }
    }

    #[tokio::test]
    async fn the_chain_continues_across_rotation_and_restart() {
        let tmp = tempfile::tempdir().unwrap();
        rotated_log(tmp.path(), 6, 2).await;
        let report = verify(tmp.path()).unwrap();
        assert_eq!(report.records, 6);
        assert_eq!(
            report.files.len(),
            4,
            "three rotated files and an empty current one"
        );
        // Restart: the empty current file chains from the newest rotated file.
        {
            let (log, _r) = open(AuditConfig::new(tmp.path()));
            log.record(ok(7)).unwrap();
        }
        {
            let (log, _r) = open(AuditConfig::new(tmp.path()));
            log.record(ok(8)).unwrap();
            log.record(ok(9)).unwrap();
        }
        let report = verify(tmp.path()).unwrap();
        assert_eq!(report.records, 9);
        // Verifying by the current file's path is the same.
        assert_eq!(verify(&tmp.path().join(FILE_NAME)).unwrap(), report);
        let anchored = VerifyOptions {
            expected_last_hash: Some(report.last_hash.clone()),
            ..Default::default()
        };
        verify_with(tmp.path(), &anchored).unwrap();
    }

    fn rewrite(path: &Path, f: impl FnOnce(&mut Vec<String>)) {
        let mut ls = lines(path);
        f(&mut ls);
        let mut text = ls.join("\n");
        text.push('\n');
        fs::write(path, text).unwrap();
    }

    fn copy_dir(from: &Path) -> tempfile::TempDir {
        let to = tempfile::tempdir().unwrap();
        for e in fs::read_dir(from).unwrap() {
            let e = e.unwrap();
            fs::copy(e.path(), to.path().join(e.file_name())).unwrap();
        }
        to
    }

    #[tokio::test]
    async fn verify_detects_each_kind_of_tampering() {
        let tmp = tempfile::tempdir().unwrap();
        {
            let (log, _r) = open(AuditConfig::new(tmp.path()));
            for i in 0..6 {
                log.record(ok(i)).unwrap();
            }
        }
        let current = |d: &tempfile::TempDir| d.path().join(FILE_NAME);
        verify(tmp.path()).unwrap();

        let edit = copy_dir(tmp.path());
        rewrite(&current(&edit), |ls| {
            ls[2] = ls[2].replace("billing", "nobody")
        });
        assert_eq!(
            broken(edit.path()),
            (FILE_NAME.into(), 3, Problem::HashMismatch)
        );

        let delete = copy_dir(tmp.path());
        rewrite(&current(&delete), |ls| {
            ls.remove(2);
        });
        let (_, line, problem) = broken(delete.path());
        assert_eq!(line, 3);
        assert!(
            matches!(problem, Problem::PrevHashMismatch { .. }),
            "{problem}"
        );

        let delete_first = copy_dir(tmp.path());
        rewrite(&current(&delete_first), |ls| {
            ls.remove(0);
        });
        assert_eq!(broken(delete_first.path()).1, 1);
        let pruned = VerifyOptions {
            allow_pruned_head: true,
            ..Default::default()
        };
        assert_eq!(
            verify_with(delete_first.path(), &pruned).unwrap().records,
            5
        );

        let insert = copy_dir(tmp.path());
        rewrite(&current(&insert), |ls| {
            let copy = ls[1].clone();
            ls.insert(4, copy);
        });
        let (_, line, problem) = broken(insert.path());
        assert_eq!(line, 5);
        assert!(
            matches!(problem, Problem::PrevHashMismatch { .. }),
            "{problem}"
        );

        let reorder = copy_dir(tmp.path());
        rewrite(&current(&reorder), |ls| ls.swap(3, 4));
        assert_eq!(broken(reorder.path()).1, 4);

        let truncate = copy_dir(tmp.path());
        let text = fs::read(current(&truncate)).unwrap();
        fs::write(current(&truncate), &text[..text.len() - 10]).unwrap();
        assert_eq!(
            broken(truncate.path()),
            (FILE_NAME.into(), 6, Problem::Truncated)
        );

        let garbage = copy_dir(tmp.path());
        rewrite(&current(&garbage), |ls| ls[0] = "not json".into());
        assert!(matches!(broken(garbage.path()).2, Problem::Unparsable(_)));

        // Cutting whole records off the end needs an anchor.
        let cut = copy_dir(tmp.path());
        let anchor = verify(cut.path()).unwrap().last_hash;
        rewrite(&current(&cut), |ls| {
            ls.pop();
        });
        let anchored = VerifyOptions {
            expected_last_hash: Some(anchor),
            ..Default::default()
        };
        assert!(matches!(
            verify_with(cut.path(), &anchored),
            Err(VerifyError::TailMismatch { .. })
        ));
    }

    #[tokio::test]
    async fn verify_detects_tampering_across_a_rotation_boundary() {
        let tmp = tempfile::tempdir().unwrap();
        rotated_log(tmp.path(), 6, 3).await;
        let files = verify(tmp.path()).unwrap().files;
        assert_eq!(files.len(), 3);
        let name = |i: usize| files[i].file_name().unwrap().to_string_lossy().into_owned();
        let in_copy =
            |d: &tempfile::TempDir, i: usize| d.path().join(files[i].file_name().unwrap());

        // The last record of the first file deleted: the second file's first record no longer follows.
        let delete = copy_dir(tmp.path());
        rewrite(&in_copy(&delete, 0), |ls| {
            ls.pop();
        });
        let (file, line, problem) = broken(delete.path());
        assert_eq!((file, line), (name(1), 1));
        assert!(matches!(problem, Problem::PrevHashMismatch { .. }));

        // A whole rotated file removed.
        let drop_file = copy_dir(tmp.path());
        fs::remove_file(in_copy(&drop_file, 0)).unwrap();
        assert_eq!(broken(drop_file.path()).1, 1);

        // Records moved from one file to the other (reorder across the boundary).
        let moved = copy_dir(tmp.path());
        let first_of_second = lines(&in_copy(&moved, 1))[0].clone();
        rewrite(&in_copy(&moved, 1), |ls| {
            ls.remove(0);
        });
        rewrite(&in_copy(&moved, 0), |ls| ls.insert(0, first_of_second));
        assert_eq!(broken(moved.path()), (name(0), 1, broken(moved.path()).2));

        // A rotated file truncated mid-record.
        let cut = copy_dir(tmp.path());
        let text = fs::read(in_copy(&cut, 0)).unwrap();
        fs::write(in_copy(&cut, 0), &text[..text.len() - 3]).unwrap();
        assert_eq!(broken(cut.path()), (name(0), 3, Problem::Truncated));
    }

    #[tokio::test]
    async fn a_torn_or_corrupt_tail_is_reported_on_open_never_chained_over() {
        let tmp = tempfile::tempdir().unwrap();
        {
            let (log, _r) = open(AuditConfig::new(tmp.path()));
            log.record(ok(0)).unwrap();
            log.record(ok(1)).unwrap();
        }
        let path = tmp.path().join(FILE_NAME);
        let good = fs::read(&path).unwrap();
        let mut torn = good.clone();
        torn.extend_from_slice(br#"{"time":17954"#);
        fs::write(&path, &torn).unwrap();
        let registry = Registry::new();
        let metrics = AuditMetrics::register(&registry).unwrap();
        match AuditLog::open(AuditConfig::new(tmp.path()), metrics.clone()) {
            Err(AuditError::TornTail { valid_len, .. }) => {
                assert_eq!(valid_len, good.len() as u64);
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(fs::read(&path).unwrap(), torn, "the file is left alone");

        let text = String::from_utf8(good)
            .unwrap()
            .replace("billing", "BILLING");
        fs::write(&path, text).unwrap();
        match AuditLog::open(AuditConfig::new(tmp.path()), metrics) {
            Err(AuditError::CorruptTail { problem, .. }) => {
                assert_eq!(problem, Problem::HashMismatch);
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn an_audit_path_that_is_not_a_file_is_refused() {
        let tmp = tempfile::tempdir().unwrap();
        fs::create_dir(tmp.path().join(FILE_NAME)).unwrap();
        let registry = Registry::new();
        let err = AuditLog::open(
            AuditConfig::new(tmp.path()),
            AuditMetrics::register(&registry).unwrap(),
        )
        .unwrap_err();
        assert!(matches!(err, AuditError::NotAFile { .. }), "{err}");
        let under_file = tmp.path().join("plain");
        fs::write(&under_file, b"x").unwrap();
        let err = AuditLog::open(
            AuditConfig::new(under_file.join("audit")),
            AuditMetrics::register(&Registry::new()).unwrap(),
        )
        .unwrap_err();
        assert!(matches!(err, AuditError::Io { .. }), "{err}");
        assert!(KmsError::from(err).kind() == ErrorKind::Internal);
    }

    #[tokio::test]
    async fn fails_closed_while_the_directory_is_gone_and_recovers() {
        // Tests run as root, where permissions do not stop writes: the directory is replaced by a
        // regular file instead, so every path under it fails with ENOTDIR.
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("audit");
        let (log, registry) = open(AuditConfig::new(&dir));
        log.record_durable(ok(0)).await.unwrap();
        fs::remove_dir_all(&dir).unwrap();
        fs::write(&dir, b"not a directory").unwrap();

        let err = log.record_durable(ok(1)).await.unwrap_err();
        assert!(matches!(err, AuditError::WriteFailed), "{err}");
        assert!(!log.is_healthy());
        assert!(log.blocks_requests());
        assert!(log.last_error().unwrap().contains("audit.jsonl"));
        assert!(log.record_durable(ok(2)).await.is_err());
        let metrics = String::from_utf8(crate::observe::metrics::render(&registry)).unwrap();
        assert!(
            metrics
                .lines()
                .any(|l| l == "kms_sidecar_audit_write_errors_total 2"),
            "{metrics}"
        );

        // The directory comes back: the writer recovers by itself within about a second.
        fs::remove_file(&dir).unwrap();
        fs::create_dir(&dir).unwrap();
        let start = Instant::now();
        while !log.is_healthy() {
            assert!(start.elapsed() < Duration::from_secs(5), "never recovered");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        log.record_durable(ok(3)).await.unwrap();
        // The destroyed records are a visible gap, not a silently restarted chain.
        let (_, line, problem) = broken(&dir);
        assert_eq!(line, 1);
        assert!(matches!(problem, Problem::PrevHashMismatch { .. }));
        let pruned = VerifyOptions {
            allow_pruned_head: true,
            ..Default::default()
        };
        assert_eq!(verify_with(&dir, &pruned).unwrap().records, 1);
    }

    #[tokio::test]
    async fn fail_open_keeps_serving() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("audit");
        let mut cfg = AuditConfig::new(&dir);
        cfg.on_failure = FailureMode::Open;
        let (log, _r) = open(cfg);
        fs::remove_dir_all(&dir).unwrap();
        fs::write(&dir, b"x").unwrap();
        assert!(log.record_durable(ok(0)).await.is_err());
        assert!(!log.is_healthy());
        assert!(!log.blocks_requests());
    }

    #[tokio::test]
    async fn a_partial_write_of_our_own_is_cut_off_on_recovery() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("audit");
        let (log, _r) = open(AuditConfig::new(&dir));
        log.record_durable(ok(0)).await.unwrap();
        // Simulate a torn write by this process: garbage after the last good record, then a
        // failure (the file is briefly replaced), then recovery of the same file.
        let path = dir.join(FILE_NAME);
        let moved = tmp.path().join("moved.jsonl");
        fs::rename(&path, &moved).unwrap();
        assert!(log.record_durable(ok(1)).await.is_err());
        let mut f = OpenOptions::new().append(true).open(&moved).unwrap();
        f.write_all(br#"{"time":1"#).unwrap();
        fs::rename(&moved, &path).unwrap();
        let start = Instant::now();
        while !log.is_healthy() {
            assert!(start.elapsed() < Duration::from_secs(5), "never recovered");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        log.record_durable(ok(2)).await.unwrap();
        assert_eq!(verify(&dir).unwrap().records, 2);
    }

    #[tokio::test]
    async fn queries_filter_newest_first_and_the_ring_is_bounded() {
        let tmp = tempfile::tempdir().unwrap();
        let mut cfg = AuditConfig::new(tmp.path());
        cfg.ring_capacity = 4;
        let (log, _r) = open(cfg);
        log.record(event("a", Outcome::Ok, "k1", 10.0)).unwrap();
        log.record(event("b", Outcome::Denied, "k1", 20.0)).unwrap();
        log.record(event("a", Outcome::Denied, "k2", 30.0)).unwrap();
        log.record(event("b", Outcome::Error, "k2", 40.0)).unwrap();
        log.record(event("a", Outcome::Ok, "k2", 50.0)).unwrap();
        log.flush().await.unwrap();
        let times = |q: AuditQuery| log.query(&q).iter().map(|r| r.time).collect::<Vec<_>>();
        assert_eq!(times(AuditQuery::default()), [50.0, 40.0, 30.0, 20.0]);
        let q = |s: &str| AuditQuery::from_query_string(s).unwrap();
        assert_eq!(times(q("outcome=denied")), [30.0, 20.0]);
        assert_eq!(times(q("principal=a")), [50.0, 30.0]);
        assert_eq!(times(q("key=k2&outcome=ok")), [50.0]);
        assert_eq!(times(q("since=35")), [50.0, 40.0]);
        assert_eq!(times(q("limit=1")), [50.0]);
        let r = &log.query(&q("limit=1"))[0];
        assert_eq!(r.hash.len(), 64);
    }

    #[test]
    fn query_strings() {
        let q = AuditQuery::from_query_string(
            "outcome=denied&principal=arn%3Aaws%3Aiam%3A%3A1%3Auser%2Fa+b&since=1.5&limit=1000",
        )
        .unwrap();
        assert_eq!(q.outcome, Some(Outcome::Denied));
        assert_eq!(q.principal.as_deref(), Some("arn:aws:iam::1:user/a b"));
        assert_eq!(q.since, Some(1.5));
        assert_eq!(q.limit, 1000);
        assert_eq!(
            AuditQuery::from_query_string("").unwrap(),
            AuditQuery::default()
        );
        for bad in [
            "limit=0",
            "limit=1001",
            "limit=x",
            "outcome=maybe",
            "since=NaN",
            "key=%zz",
            "other=1",
        ] {
            assert!(AuditQuery::from_query_string(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn verify_of_a_missing_log_says_so() {
        let tmp = tempfile::tempdir().unwrap();
        assert!(matches!(
            verify(tmp.path()),
            Err(VerifyError::NotFound { .. })
        ));
        assert!(matches!(
            verify(&tmp.path().join("nope.jsonl")),
            Err(VerifyError::NotFound { .. })
        ));
    }
}
