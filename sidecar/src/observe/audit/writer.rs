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

use super::chain::{read_tail, rotated_files, sync_dir};
use super::encode::encode_line;
use super::{
    AuditConfig, AuditError, AuditEvent, AuditMetrics, BATCH, FLUSH_BYTES, FsyncPolicy,
    GENESIS_HASH, Outcome, ROTATED_PREFIX, ROTATED_SUFFIX, io_err,
};

// ---------------------------------------------------------------------------------------------
// The writer.

pub(super) struct Shared {
    pub(super) healthy: AtomicBool,
    /// Recent written lines (without newline), oldest first, for `/v1/audit`.
    pub(super) ring: Mutex<VecDeque<Arc<str>>>,
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
    /// The records in `buf`: their outcome and where their line is (`start..end`, no newline).
    pub(super) buffered: Vec<(Outcome, usize, usize)>,
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
        let start = self.buf.len();
        let mut hash = [0u8; 64];
        encode_line(
            &mut self.buf,
            &ev,
            self.cfg.include_context_values,
            &self.chained,
            &mut hash,
        )
        .map_err(AuditError::Encode)?;
        // The line without its newline, for `/v1/audit` once it is written.
        self.buffered.push((ev.outcome, start, self.buf.len() - 1));
        // Hex digits are ASCII; `chained` keeps its 64-byte capacity.
        self.chained.clear();
        self.chained.extend(hash.iter().map(|&b| char::from(b)));
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
        match result {
            Ok(()) => {
                self.written.clone_from(&self.chained);
                // Only the newest `ring_capacity` lines can stay in the ring.
                let skip = self
                    .buffered
                    .len()
                    .saturating_sub(self.shared.ring_capacity);
                let mut lines = Vec::with_capacity(self.buffered.len() - skip);
                for (i, &(outcome, start, end)) in self.buffered.iter().enumerate() {
                    if let Some(c) = self.shared.metrics.events.get(outcome as usize) {
                        c.inc();
                    }
                    // The encoder writes only UTF-8 (serde_json's strings and ASCII).
                    if i >= skip
                        && let Some(line) = self.buf.get(start..end)
                        && let Ok(line) = std::str::from_utf8(line)
                    {
                        lines.push(Arc::<str>::from(line));
                    }
                }
                self.buffered.clear();
                self.buf.clear();
                let mut ring = lock(&self.shared.ring);
                for line in lines {
                    if ring.len() >= self.shared.ring_capacity {
                        ring.pop_front();
                    }
                    ring.push_back(line);
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
                let lost = self.buffered.len();
                self.buffered.clear();
                self.buf.clear();
                // The lost records leave the chain: the next record follows the last one on disk.
                self.chained.clone_from(&self.written);
                self.fail(&e, lost);
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
