//! The writer thread: chaining, buffering, writing, flushing, fsync, size-based rotation, and
//! recovery after a failed write.
//!
//! It exists so that the request path only does a `try_send`: all file I/O happens here, on one
//! thread that owns the open file and the hash the next record chains from.

use std::collections::VecDeque;
use std::fmt;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use tokio::sync::oneshot;

use crate::kms::Operation;

use super::chain::{read_tail, record_hash, rotated_files, sync_dir};
use super::{
    AuditConfig, AuditError, AuditEvent, AuditMetrics, AuditRecord, BATCH, FLUSH_BYTES,
    FsyncPolicy, GENESIS_HASH, ROTATED_PREFIX, ROTATED_SUFFIX, io_err,
};

// ---------------------------------------------------------------------------------------------
// The writer.

pub(super) struct Shared {
    pub(super) healthy: AtomicBool,
    pub(super) ring: Mutex<VecDeque<AuditRecord>>,
    pub(super) ring_capacity: usize,
    pub(super) last_error: Mutex<Option<String>>,
    pub(super) metrics: AuditMetrics,
}

impl fmt::Debug for Shared {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Shared")
            .field("healthy", &self.healthy)
            .finish_non_exhaustive()
    }
}

pub(super) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding these locks cannot leave them inconsistent; keep going.
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

type Ack = oneshot::Sender<Result<(), AuditError>>;

pub(super) enum Msg {
    Record(Box<AuditEvent>, Option<Ack>),
    Flush(Ack),
}

/// An open file and what is known to be in it.
pub(super) struct Current {
    pub(super) file: File,
    /// Bytes known to be completely written.
    pub(super) len: u64,
    pub(super) ino: (u64, u64),
}

pub(super) struct Writer {
    pub(super) cfg: AuditConfig,
    pub(super) path: PathBuf,
    pub(super) current: Option<Current>,
    /// `(dev, inode)` of the last file this writer had open, kept across failures.
    pub(super) last_ino: Option<(u64, u64)>,
    pub(super) last_len: u64,
    /// The hash of the last record chained (buffered included).
    pub(super) chained: String,
    /// The hash of the last record known to be in the file.
    pub(super) written: String,
    pub(super) buf: Vec<u8>,
    pub(super) buffered: Vec<AuditRecord>,
    pub(super) waiters: Vec<Ack>,
    pub(super) deadline: Option<Instant>,
    pub(super) shared: Arc<Shared>,
}

/// Opens `audit.jsonl` (creating it) and finds the hash the next record chains from.
pub(super) fn open_current(dir: &Path, path: &Path) -> Result<(Current, String), AuditError> {
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
            error_type: ev.error_type.map(|k| k.name().to_owned()),
            reason: ev.reason.map(str::to_owned),
            cache: ev.cache.as_str().to_owned(),
            latency_ms: finite(ev.latency_ms),
            kms_request_id: ev.kms_request_id,
            aws_principal_arn: ev.aws_principal_arn,
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

    pub(super) fn run(mut self, rx: Receiver<Msg>) {
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
                    // Linger before waiting again: records queue up meanwhile, so a sender finds the
                    // writer busy instead of parked and needs no futex wake-up (a syscall and a
                    // context switch per request were the largest cost in a profile). Durable
                    // acknowledgement (`every_record`) does not linger.
                    if self.cfg.fsync != FsyncPolicy::EveryRecord {
                        std::thread::sleep(LINGER);
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

/// How long the writer lets records accumulate after a batch (see `run`).
const LINGER: Duration = Duration::from_millis(5);

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
