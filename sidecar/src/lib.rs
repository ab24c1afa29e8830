//! kms-sidecar: a KMS on localhost, in front of an embedded, HSM or upstream key backend.
//!
//! An application changes only its AWS SDK's endpoint URL. Modules, from the outside in (arrows
//! point down this list; nothing imports a module above it):
//! - [`server`]: listeners, connections, start-up, shutdown and background work;
//!   [`admin`]: the admin API;
//! - [`frontend`]: one folder per wire format (the AWS JSON API), each decoding its requests,
//!   authenticating its callers and mapping errors to its wire;
//! - [`core`]: the request pipeline every front-end shares, the operations, the one observation;
//! - [`auth`] (credentials, SigV4, key policies), [`cache`], [`limits`] (rate limits, breaker,
//!   retries), [`keys`] (metadata, lifecycle, ciphertext, registry), [`observe`] (request metrics,
//!   audit, traces), [`backend`] (where key material lives);
//! - [`config`], [`datadir`], [`crypto`], [`tls`], and [`kms`]: the vocabulary all of them speak.
#![forbid(unsafe_code)]

pub mod admin;
pub mod auth;
pub mod backend;
pub mod cache;
pub mod cli;
pub mod config;
pub mod core;
pub mod crypto;
pub mod datadir;
pub mod frontend;
pub mod keys;
pub mod kms;
pub mod limits;
pub mod observe;
pub mod server;
pub mod tls;

/// Shared settings of the fuzz-style property tests (also used by `tests/fuzz_wire.rs`).
#[cfg(test)]
#[path = "../tests/support/fuzz.rs"]
mod fuzz_support;
