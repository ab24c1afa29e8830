//! kms-sidecar: the AWS KMS JSON API on localhost, in front of an embedded or HSM key backend.
//!
//! An application changes only its AWS SDK's endpoint URL. The request path is built in
//! [`server`]; each concern has its module: the wire format ([`protocol`]), who is calling ([`auth`]),
//! key metadata and lifecycle ([`keys`]), where key material lives ([`backend`]), the operations
//! ([`ops`]), metrics and logs ([`observe`]), settings ([`config`]) and the data directory
//! ([`datadir`]).
#![forbid(unsafe_code)]

pub mod admin;
pub mod auth;
pub mod backend;
pub mod cache;
pub mod cli;
pub mod config;
pub mod crypto;
pub mod datadir;
pub mod keys;
pub mod limits;
pub mod observe;
pub mod ops;
pub mod protocol;
pub mod server;
pub mod tls;

/// Shared settings of the fuzz-style property tests (also used by `tests/fuzz_wire.rs`).
#[cfg(test)]
#[path = "../tests/support/fuzz.rs"]
mod fuzz_support;
