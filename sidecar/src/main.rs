//! The `kms-sidecar` binary; everything is in the library's `cli` module.
#![forbid(unsafe_code)]

fn main() -> std::process::ExitCode {
    kms_sidecar::cli::main()
}
