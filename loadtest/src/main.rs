//! The `kms-loadtest` binary: parses the command line, runs the mode on a multi-threaded tokio
//! runtime, prints the human summary and exits 1 with a clear message on any error.
#![forbid(unsafe_code)]

use std::error::Error as _;
use std::process::ExitCode;

use clap::Parser as _;
use kms_loadtest::cli::{Cli, execute};

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("kms-loadtest: error: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(execute(cli)) {
        Ok(outcome) => {
            if let Some(report) = &outcome.report {
                print!("{}", report.summary());
                // Also on stderr: stdout is often a file or a pipe.
                for w in &report.warnings {
                    eprintln!("kms-loadtest: warning: {w}");
                }
            }
            if let Some(path) = &outcome.json {
                println!("report: {}", path.display());
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("kms-loadtest: error: {e}");
            let mut source = e.source();
            while let Some(s) = source {
                eprintln!("  caused by: {s}");
                source = s.source();
            }
            ExitCode::FAILURE
        }
    }
}
