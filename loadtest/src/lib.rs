//! kms-loadtest: an open-loop load tester for kms-sidecar.
//!
//! Requests are planned at `start + i / rate` and latency is measured from the planned time
//! (coordinated-omission correction), recorded in HDR histograms; late starts are counted, never
//! hidden. Traffic is real KMS JSON 1.1, SigV4-signed with issued credentials (by `aws-sigv4`, not
//! the sidecar's code: the sidecar is a black box), in an operation mix over several keys and
//! principals. Modes: `run`, `probe` (throttle knee vs the configured limit),
//! `baseline` (same-run ratio against a bare responder) and `max`. Load only goes to loopback
//! addresses unless explicitly allowed.
#![forbid(unsafe_code)]

pub mod backoff;
pub mod cli;
pub mod cpu;
pub mod engine;
pub mod error;
pub mod http;
pub mod kms;
pub mod kmsv2;
pub mod mix;
pub mod modes;
pub mod progress;
pub mod report;
pub mod responder;
pub mod schedule;
pub mod setup;
pub mod sign;
pub mod stats;
pub mod target;
pub mod xks;

pub use error::LoadError;
pub use report::Report;
