//! Settings shared by the fuzz-style property tests (see `docs/hardening.md`).
//!
//! cargo-fuzz needs a nightly compiler, which this project does not use, so fuzzing is proptest on
//! stable: a fixed seed and a bounded number of cases in CI (reproducible, fast), more cases when
//! `KMS_FUZZ_CASES=N` is set, another seed with `KMS_FUZZ_SEED=N`. Each case runs under a
//! [`Watchdog`], so a hang fails the run with the case's name instead of stalling CI.
//!
//! Included by path from the library's unit tests and from the integration tests, so it stays out
//! of the library's public API.
#![allow(dead_code)]

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use proptest::test_runner::{Config, RngSeed};

/// The seed CI runs with; any failure it finds is reproduced by running the test again.
pub const DEFAULT_SEED: u64 = 0x6b6d_735f_6675_7a7a;

/// `KMS_FUZZ_CASES` when set, otherwise `ci_default`.
pub fn cases(ci_default: u32) -> u32 {
    std::env::var("KMS_FUZZ_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(ci_default)
}

/// `KMS_FUZZ_SEED` when set, otherwise [`DEFAULT_SEED`].
pub fn seed() -> u64 {
    std::env::var("KMS_FUZZ_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(DEFAULT_SEED)
}

/// A proptest configuration: fixed seed, `cases(ci_default)` cases, no failure files written into
/// the source tree, and bounded shrinking so a failure is reported within seconds.
pub fn config(ci_default: u32) -> Config {
    Config {
        cases: cases(ci_default),
        rng_seed: RngSeed::Fixed(seed()),
        failure_persistence: None,
        max_shrink_iters: 256,
        max_shrink_time: 20_000,
        ..Config::default()
    }
}

/// Aborts the process when one case runs longer than its bound: a hang must fail the run, and a
/// stuck thread cannot be cancelled from outside. Each case calls [`Watchdog::case`].
#[derive(Debug)]
pub struct Watchdog {
    /// Milliseconds since `start` at which the running case began, or 0 when idle.
    started: Arc<AtomicU64>,
    start: Instant,
}

/// The running case; dropping it marks the watchdog idle.
#[derive(Debug)]
pub struct Case<'a>(&'a Watchdog);

impl Drop for Case<'_> {
    fn drop(&mut self) {
        self.0.started.store(0, Ordering::Relaxed);
    }
}

impl Watchdog {
    /// Starts a watchdog thread for cases bounded by `limit`; `name` is printed if one hangs.
    pub fn new(name: &'static str, limit: Duration) -> Self {
        let started = Arc::new(AtomicU64::new(0));
        let start = Instant::now();
        let seen = Arc::clone(&started);
        std::thread::spawn(move || {
            loop {
                std::thread::sleep(Duration::from_millis(100));
                if Arc::strong_count(&seen) == 1 {
                    return;
                }
                let at = seen.load(Ordering::Relaxed);
                let now = start.elapsed().as_millis() as u64;
                if at != 0 && now.saturating_sub(at) > limit.as_millis() as u64 {
                    eprintln!("fuzz case of {name} ran longer than {limit:?}: a hang; aborting");
                    std::process::abort();
                }
            }
        });
        Self { started, start }
    }

    /// Marks the start of one case.
    pub fn case(&self) -> Case<'_> {
        let now = (self.start.elapsed().as_millis() as u64).max(1);
        self.started.store(now, Ordering::Relaxed);
        Case(self)
    }
}

/// Peak resident memory of this process (VmHWM) in bytes, where /proc is available.
pub fn peak_rss() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}
