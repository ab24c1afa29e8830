//! `kms-sidecar audit verify`: walks every rotated file and `audit.jsonl` in order and checks the
//! hash chain. It takes the audit directory, a file in it, or the data directory whose `audit/` holds
//! the log (the path a user has at hand after a first run).
//!
//! It exists apart from the writer because it runs offline, on a copy of the directory if need be,
//! and must trust nothing the writer left behind.

use std::fmt;
use std::fs::File;
use std::io::{self, BufRead, BufReader};
use std::path::{Path, PathBuf};

use super::chain::{Problem, check_line, rotated_files};
use super::{FILE_NAME, GENESIS_HASH};

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

/// The sentence `audit verify` prints on success.
impl fmt::Display for VerifyReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let plural =
            |n: u64, one: &str, many: &str| format!("{n} {}", if n == 1 { one } else { many });
        write!(
            f,
            "audit chain intact: checked {} in {}",
            plural(self.records, "record", "records"),
            plural(self.files.len() as u64, "file", "files"),
        )?;
        if let Some(dir) = self.files.first().and_then(|p| p.parent()) {
            write!(f, " ({})", dir.display())?;
        }
        write!(f, ", last hash {}", self.last_hash)
    }
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
    /// Nothing to check: the path holds no audit file. Not a broken chain.
    #[error("no audit log found in {}", path.display())]
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

impl VerifyError {
    /// Whether the log exists and fails the check (as opposed to not being found or readable).
    pub fn is_broken(&self) -> bool {
        matches!(self, Self::Broken { .. } | Self::TailMismatch { .. })
    }
}

/// Verifies the whole chain: every rotated file in order, then `audit.jsonl`. `path` is the audit
/// directory, any file in it, or a data directory with the log in its `audit/`.
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
    let mut files = log_files(&dir).map_err(io(&dir))?;
    let mut searched = dir;
    if files.is_empty() && path.is_dir() {
        // A data directory: the default audit directory is inside it.
        let inner = searched.join(DATA_DIR_AUDIT);
        if inner.is_dir() {
            files = log_files(&inner).map_err(io(&inner))?;
            searched = inner;
        }
    }
    if files.is_empty() {
        return Err(VerifyError::NotFound { path: searched });
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

/// The audit directory's name inside a data directory (the default `--audit-dir`).
const DATA_DIR_AUDIT: &str = "audit";

/// The log files in `dir` in chain order: rotated files, then the current one if present.
fn log_files(dir: &Path) -> io::Result<Vec<PathBuf>> {
    let mut files = rotated_files(dir)?;
    let current = dir.join(FILE_NAME);
    if current.exists() {
        files.push(current);
    }
    Ok(files)
}

#[cfg(test)]
#[path = "verification_tests.rs"]
mod tests;
