//! The sidecar binary as the end-to-end tests run it: the same entry point as `kms-sidecar`, built as
//! part of this package so cargo always rebuilds it before the tests that spawn it.
#![forbid(unsafe_code)]

fn main() -> std::process::ExitCode {
    kms_sidecar::cli::main()
}
