//! The load tester's typed errors: one enum so the binary can print a clear message and exit 1,
//! tests can match on what went wrong (a refused target, bad flags, a failed setup call), and the
//! setup and cleanup calls know which failures a retry can help with.

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
    #[error("{op} answered HTTP {status} {error_type}")]
    Call {
        op: &'static str,
        status: u16,
        error_type: String,
    },
    #[error("{op} still failing after {attempts} attempts in {seconds:.1}s")]
    GaveUp {
        op: &'static str,
        attempts: u32,
        seconds: f64,
        #[source]
        last: Box<LoadError>,
    },
    #[error("setup failed{cleanup}")]
    Setup {
        #[source]
        source: Box<LoadError>,
        /// What became of the keys created before the failure (empty when there were none).
        cleanup: String,
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
    #[error("connecting to the KMS v2 socket {socket}: {source}")]
    KmsV2Connect {
        socket: PathBuf,
        #[source]
        source: tonic::transport::Error,
    },
    #[error("KMS v2 setup: {op} answered {code}: {message}")]
    KmsV2Setup {
        op: &'static str,
        code: String,
        message: String,
    },
}

/// KMS error types the AWS SDKs retry as throttling (`aws-runtime`'s `THROTTLING_ERRORS`).
const THROTTLING_ERRORS: [&str; 14] = [
    "Throttling",
    "ThrottlingException",
    "ThrottledException",
    "RequestThrottledException",
    "TooManyRequestsException",
    "ProvisionedThroughputExceededException",
    "TransactionInProgressException",
    "RequestLimitExceeded",
    "BandwidthLimitExceeded",
    "LimitExceededException",
    "RequestThrottled",
    "SlowDown",
    "PriorRequestNotComplete",
    "EC2ThrottledException",
];
/// Error types the AWS SDKs retry as transient.
const TRANSIENT_ERRORS: [&str; 2] = ["RequestTimeout", "RequestTimeoutException"];
/// HTTP statuses the AWS SDKs retry as transient.
const TRANSIENT_STATUSES: [u16; 4] = [500, 502, 503, 504];

impl LoadError {
    /// Whether trying the same call again can help, by the AWS SDKs' rules: throttling and transient
    /// error types, 500/502/503/504, and no answer at all (timeout, connect or connection error).
    pub fn is_retryable(&self) -> bool {
        match self {
            Self::Call {
                status, error_type, ..
            } => {
                THROTTLING_ERRORS.contains(&error_type.as_str())
                    || TRANSIENT_ERRORS.contains(&error_type.as_str())
                    || TRANSIENT_STATUSES.contains(status)
            }
            Self::Timeout(_) | Self::Connect { .. } | Self::Http(_) => true,
            _ => false,
        }
    }

    /// The message with its causes, `: `-separated (for warnings, which have no chain of their own).
    pub fn chain(&self) -> String {
        let mut out = self.to_string();
        let mut source = std::error::Error::source(self);
        while let Some(s) = source {
            out.push_str(": ");
            out.push_str(&s.to_string());
            source = s.source();
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn call(status: u16, error_type: &str) -> LoadError {
        LoadError::Call {
            op: "CreateKey",
            status,
            error_type: error_type.into(),
        }
    }

    #[test]
    fn retryable_errors_are_the_sdk_ones() {
        assert!(call(400, "ThrottlingException").is_retryable());
        assert!(call(400, "LimitExceededException").is_retryable());
        assert!(call(408, "RequestTimeoutException").is_retryable());
        assert!(call(500, "KMSInternalException").is_retryable());
        assert!(call(503, "DependencyTimeoutException").is_retryable());
        assert!(call(502, "HTTP502").is_retryable());
        assert!(LoadError::Timeout(Duration::from_secs(1)).is_retryable());
        assert!(
            LoadError::Connect {
                addr: "127.0.0.1:1".parse().unwrap(),
                source: std::io::Error::from(std::io::ErrorKind::ConnectionRefused),
            }
            .is_retryable()
        );
        assert!(!call(400, "AccessDeniedException").is_retryable());
        assert!(!call(400, "NotFoundException").is_retryable());
        assert!(!call(400, "UnrecognizedClientException").is_retryable());
        assert!(!call(501, "HTTP501").is_retryable());
        assert!(!LoadError::Invalid("x".into()).is_retryable());
    }

    #[test]
    fn chain_names_every_cause() {
        let e = LoadError::GaveUp {
            op: "CreateKey",
            attempts: 3,
            seconds: 1.5,
            last: Box::new(call(400, "ThrottlingException")),
        };
        assert_eq!(
            e.chain(),
            "CreateKey still failing after 3 attempts in 1.5s: \
             CreateKey answered HTTP 400 ThrottlingException"
        );
    }
}
