//! The live progress line (elapsed, achieved rate, p99 so far, errors, late starts) on a terminal.
//! It goes to stderr and is skipped entirely when stderr is not a TTY or `--no-progress` is given,
//! so logs and CI output only get the final summary.

use std::io::IsTerminal as _;
use std::time::Duration;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

use crate::stats::{Percentiles, Stats};

/// Whether to draw progress lines.
#[derive(Debug, Clone, Copy)]
pub struct Progress {
    enabled: bool,
}

impl Progress {
    /// Enabled only when asked for and stderr is a terminal.
    pub fn new(wanted: bool) -> Self {
        Self {
            enabled: wanted && std::io::stderr().is_terminal(),
        }
    }

    /// Never draws (tests, JSON-only use).
    pub fn hidden() -> Self {
        Self { enabled: false }
    }

    /// A progress line for one run of `total` length, or `None` when hidden.
    pub fn bar(&self, label: &str, total: Duration) -> Option<Bar> {
        if !self.enabled {
            return None;
        }
        let bar = ProgressBar::with_draw_target(
            Some(total.as_millis() as u64),
            ProgressDrawTarget::stderr_with_hz(4),
        );
        let style = ProgressStyle::with_template("{prefix:>14} [{bar:20}] {msg}")
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> ");
        bar.set_style(style);
        bar.set_prefix(label.to_string());
        Some(Bar { bar })
    }
}

/// One live progress line.
#[derive(Debug, Clone)]
pub struct Bar {
    bar: ProgressBar,
}

impl Bar {
    pub fn update(&self, elapsed: Duration, s: &Stats, measured_s: f64) {
        self.bar.set_position(elapsed.as_millis() as u64);
        let rate = if measured_s > 0.0 {
            s.completed as f64 / measured_s
        } else {
            0.0
        };
        let p99 = Percentiles::micros(&s.latency, false).p99;
        let warm = if s.completed == 0 && s.warmup > 0 {
            " (warm-up)"
        } else {
            ""
        };
        self.bar.set_message(format!(
            "{:>5.1}s {rate:>9.0} req/s  p99 {p99:>8.3} ms  errors {}  late {}{warm}",
            elapsed.as_secs_f64(),
            s.failed,
            s.late
        ));
    }

    pub fn finish(&self) {
        self.bar.finish_and_clear();
    }
}
