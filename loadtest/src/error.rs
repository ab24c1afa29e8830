//! The load tester's typed errors: one enum so the binary can print a clear message and exit 1, and
//! tests can match on what went wrong (a refused target, bad flags, a failed setup call).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

/// Everything that can stop a load-test invocation (per-request failures are counted, not raised).
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("invalid target URL {url:?}: {reason}")]
    BadTarget { url: String, reason: &'static str },
    #[error(
        "refusing to send load to {host} ({addr}): it is not a loopback address; pass --allow-non-loopback if you really mean to load another machine"
    )]
    NonLoopback { host: String, addr: SocketAddr },
    #[error("cannot resolve {host}: {source}")]
    Resolve {
        host: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{host} resolved to no address")]
    NoAddress { host: String },
    #[error("invalid op mix {mix:?}: {reason}")]
    BadMix { mix: String, reason: String },
    #[error(
        "no credentials: pass --access-key-id and --secret-access-key, or set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY"
    )]
    NoCredentials,
    #[error("{ids} access key id(s) but {secrets} secret key(s): they pair up in order")]
    CredentialCount { ids: usize, secrets: usize },
    #[error("invalid parameter: {0}")]
    Invalid(String),
    #[error("setup: {op} answered HTTP {status} {error_type}")]
    Setup {
        op: &'static str,
        status: u16,
        error_type: String,
    },
    #[error("setup: {op} answered without {field}")]
    SetupShape {
        op: &'static str,
        field: &'static str,
    },
    #[error("connecting to {addr}: {source}")]
    Connect {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("HTTP: {0}")]
    Http(#[from] hyper::Error),
    #[error("building a request: {0}")]
    Request(#[from] http::Error),
    #[error("request timed out after {0:?}")]
    Timeout(Duration),
    #[error("signing a request: {0}")]
    Sign(String),
    #[error("writing the report to {path}: {source}")]
    WriteReport {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("JSON: {0}")]
    Json(#[from] serde_json::Error),
    #[error("histogram: {0}")]
    Histogram(#[from] hdrhistogram::CreationError),
    #[error("baseline responder: {0}")]
    Responder(#[source] std::io::Error),
}
