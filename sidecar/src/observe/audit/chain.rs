//! Hashing and line checks shared by the writer (recovering the chain on open) and
//! [`verify`](super::verify) (checking it afterwards): one definition of what a valid record line
//! is.

use std::fmt;
use std::fs::{self, File};
use std::io::{self, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use super::{AuditError, ROTATED_PREFIX, ROTATED_SUFFIX, io_err};

// ---------------------------------------------------------------------------------------------
// Hashing and line checks, shared by the writer and `verify`.

pub(super) fn record_hash(prev_hash: &str, body: &[u8]) -> String {
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
pub(super) fn check_line(line: &[u8]) -> Result<(String, String), Problem> {
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
pub(super) fn read_tail(path: &Path, file: &mut File) -> Result<Option<String>, AuditError> {
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
pub(super) fn rotated_files(dir: &Path) -> Result<Vec<PathBuf>, io::Error> {
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

pub(super) fn sync_dir(dir: &Path) -> Result<(), AuditError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io_err("fsync directory", dir))
}
