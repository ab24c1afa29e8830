//! Ways of starting and signalling a sidecar that several test files share: a start with a list
//! of arguments, the fault-injection arguments, and SIGHUP.

use std::path::Path;
use std::process::Command;

use crate::{Sidecar, Start};

/// Fault injection on (`/v1/faults`), a 1 s breaker cool-down, 2-10 ms retry backoff and no
/// data-key pool (its background refills would add backend calls that tests counting them do not
/// expect): the arguments of the tests that inject backend faults.
pub const FAULT_ARGS: [&str; 9] = [
    "--faults-enabled",
    "--breaker-cool-down-secs",
    "1",
    "--retry-base-ms",
    "2",
    "--retry-cap-ms",
    "10",
    "--data-key-pool-size",
    "0",
];

impl Sidecar {
    /// Starts a sidecar with `args` (and nothing else set); panics with what it printed if it does
    /// not start.
    pub fn start_args(data_dir: &Path, args: &[&str]) -> Self {
        let start = Start {
            args: args.iter().map(|a| a.to_string()).collect(),
            ..Start::default()
        };
        Self::start_with(data_dir, start)
            .unwrap_or_else(|out| panic!("sidecar did not start with {args:?}:\n{out}"))
    }

    /// Sends SIGHUP (re-read the configuration) and asserts it was delivered.
    pub fn hup(&self) {
        let ok = Command::new("kill")
            .args(["-HUP", &self.pid().to_string()])
            .status()
            .expect("run kill")
            .success();
        assert!(ok, "SIGHUP not delivered to {}", self.pid());
    }
}
