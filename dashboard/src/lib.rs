//! `kms-dashboard`: a desktop window for SREs watching kms-sidecar. The crate is a library so the
//! UI tests, the end-to-end test and the frame-time measurement drive exactly what the binary
//! runs: [`model`] (plain Rust, no UI), [`source`] (fetch threads), [`views`] and [`app`] (egui).
#![forbid(unsafe_code)]

pub mod app;
pub mod fixture;
pub mod model;
pub mod source;
pub mod views;
