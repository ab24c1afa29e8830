//! The KMS vocabulary that every layer and every front-end speaks: which operation a call is,
//! its encryption context, timestamps, and the one error type ([`KmsError`]).
//!
//! It sits at the bottom of the crate and imports nothing from it, so that the core, the key
//! registry, the caches, the limits and the observers can share these words without depending on
//! any wire format. The AWS JSON front-end, the Kubernetes KMS v2 front-end and the XKS front-end
//! each map them to and from their own wire.

pub mod error;

use std::collections::BTreeMap;
use std::time::{SystemTime, UNIX_EPOCH};

pub use error::{BoxError, ErrorKind, KmsError, Origin};

macro_rules! operations {
    ($($variant:ident),* $(,)?) => {
        /// Every KMS operation the sidecar serves.
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
        pub enum Operation {
            $($variant,)*
        }

        impl Operation {
            /// All operations, in a fixed order; `index()` is the position here.
            pub const ALL: &'static [Operation] = &[$(Operation::$variant),*];

            /// The AWS name (`Encrypt`, `CreateKey`, ...), also the metric label value.
            pub const fn as_str(self) -> &'static str {
                match self { $(Operation::$variant => stringify!($variant),)* }
            }

            /// Parses an operation's name (`Encrypt`).
            pub fn from_name(name: &str) -> Option<Self> {
                match name { $(stringify!($variant) => Some(Operation::$variant),)* _ => None }
            }
        }
    };
}

operations!(
    CancelKeyDeletion,
    CreateAlias,
    CreateKey,
    Decrypt,
    DeleteAlias,
    DescribeKey,
    DisableKey,
    DisableKeyRotation,
    EnableKey,
    EnableKeyRotation,
    Encrypt,
    GenerateDataKey,
    GenerateDataKeyWithoutPlaintext,
    GenerateRandom,
    GetKeyPolicy,
    GetKeyRotationStatus,
    ListAliases,
    ListKeyPolicies,
    ListKeyRotations,
    ListKeys,
    ListResourceTags,
    PutKeyPolicy,
    ReEncrypt,
    RotateKeyOnDemand,
    ScheduleKeyDeletion,
    Status,
    TagResource,
    UntagResource,
    UpdateAlias,
    XksDecrypt,
    XksEncrypt,
    XksGetHealthStatus,
    XksGetKeyMetadata,
);

impl Operation {
    /// Whether the AWS KMS API has this operation. `Status` is the Kubernetes KMS v2 plugin's
    /// health call (the current key version and a backend round trip), and the `Xks*` operations
    /// are the External Key Store proxy API's (`frontend/xks/`); AWS front-ends refuse them.
    pub const fn is_aws(self) -> bool {
        !matches!(
            self,
            Operation::Status
                | Operation::XksDecrypt
                | Operation::XksEncrypt
                | Operation::XksGetHealthStatus
                | Operation::XksGetKeyMetadata
        )
    }

    /// Position in [`Operation::ALL`], for lock-free per-operation tables.
    pub fn index(self) -> usize {
        self as usize
    }
}

/// Which front-end served a call: the `frontend` label of the request metrics, and a field of
/// logs and spans.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Frontend {
    /// The AWS KMS JSON 1.1 API.
    AwsJson,
    /// The Kubernetes KMS v2 plugin API (gRPC on a Unix socket).
    KmsV2,
    /// The AWS KMS External Key Store proxy API.
    Xks,
}

impl Frontend {
    pub const ALL: [Frontend; 3] = [Frontend::AwsJson, Frontend::KmsV2, Frontend::Xks];

    pub const fn as_str(self) -> &'static str {
        match self {
            Frontend::AwsJson => "aws_json",
            Frontend::KmsV2 => "kmsv2",
            Frontend::Xks => "xks",
        }
    }
}

/// An encryption context; a `BTreeMap` so it is always in canonical (sorted) order.
pub type EncryptionContext = BTreeMap<String, String>;

/// A timestamp: seconds since the Unix epoch, as KMS sends them.
pub type Timestamp = f64;

/// Seconds since the Unix epoch, now.
pub fn now() -> Timestamp {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

/// The latency histograms' buckets (the metrics contract): 50 µs to 10 s, in seconds. Shared by
/// the request and backend histograms so their quantiles compare.
pub const LATENCY_BUCKETS: &[f64] = &[
    0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
    1.0, 2.5, 5.0, 10.0,
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn operation_index_matches_all() {
        for (i, op) in Operation::ALL.iter().enumerate() {
            assert_eq!(op.index(), i);
            assert_eq!(Operation::from_name(op.as_str()), Some(*op));
        }
    }
}
