//! The report: one serde document (`--json PATH`, schema in `docs/loadtest.md`) holding the run's
//! parameters, the machine it ran on, every run's HDR percentiles and error counts, and the
//! mode-specific findings (probe knee, baseline ratios, max rate); plus the human summary table
//! printed to stdout.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::engine::RunResult;
use crate::error::LoadError;
use crate::setup::{CleanupReport, SetupReport};
use crate::stats::Percentiles;

/// Bumped when a field changes meaning or disappears (additions keep the version).
pub const SCHEMA_VERSION: u32 = 1;

/// The whole report.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Report {
    pub schema_version: u32,
    pub tool: String,
    pub tool_version: String,
    pub mode: String,
    pub started_at_unix: f64,
    pub finished_at_unix: f64,
    pub parameters: Parameters,
    pub machine: Machine,
    pub setup: Option<SetupReport>,
    /// `null` when nothing was cleaned up (no keys created, or `--keep-keys`).
    #[serde(default)]
    pub cleanup: Option<CleanupReport>,
    /// Things that went wrong without costing the measurement (e.g. a cleanup that failed).
    #[serde(default)]
    pub warnings: Vec<String>,
    pub runs: Vec<RunResult>,
    pub probe: Option<ProbeReport>,
    pub baseline: Option<BaselineReport>,
    pub max: Option<MaxReport>,
}

/// What was asked for (never a secret: access key ids only).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Parameters {
    pub target: String,
    pub against_baseline: bool,
    pub mix: String,
    pub principals: usize,
    pub access_key_ids: Vec<String>,
    pub region: String,
    pub keys: usize,
    pub ciphertexts_per_key: usize,
    pub payload_bytes: usize,
    pub encryption_context: BTreeMap<String, String>,
    pub connections: usize,
    pub timeout_ms: f64,
    pub drain_s: f64,
    pub late_threshold_ms: f64,
    pub max_requests: u64,
    pub warmup_s: f64,
    pub rate: Option<f64>,
    pub duration_s: Option<f64>,
}

/// The machine the load tester ran on (both ends share it on loopback).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Machine {
    pub nproc: usize,
    pub memory_total_bytes: Option<u64>,
    pub kernel: Option<String>,
    pub os: String,
    pub arch: String,
    pub cpu_model: Option<String>,
    pub load_average_1m: Option<f64>,
}

impl Machine {
    /// Reads what Linux tells in `/proc`; fields it cannot read are `null`.
    pub fn detect() -> Self {
        let read = |p: &str| std::fs::read_to_string(p).ok();
        let meminfo = read("/proc/meminfo");
        let memory_total_bytes = meminfo.as_deref().and_then(|m| {
            m.lines()
                .find_map(|l| l.strip_prefix("MemTotal:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
                .map(|kb| kb * 1024)
        });
        let cpu_model = read("/proc/cpuinfo").and_then(|c| {
            c.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split_once(':'))
                .map(|(_, v)| v.trim().to_string())
        });
        Self {
            nproc: std::thread::available_parallelism().map_or(1, |n| n.get()),
            memory_total_bytes,
            kernel: read("/proc/sys/kernel/osrelease").map(|s| s.trim().to_string()),
            os: std::env::consts::OS.to_string(),
            arch: std::env::consts::ARCH.to_string(),
            cpu_model,
            load_average_1m: read("/proc/loadavg")
                .and_then(|l| l.split_whitespace().next().and_then(|v| v.parse().ok())),
        }
    }
}

/// One step of a probe or max search (its full run is in `runs`, by `run_index`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Step {
    pub rate: f64,
    pub passed: bool,
    /// Why the step failed (`throttling`, `latency_slo`, `errors`, `late_starts`), `null` if passed.
    pub reason: Option<String>,
    pub achieved_rate: f64,
    pub ok_rate: f64,
    pub p99_ms: f64,
    pub throttled_share: f64,
    pub error_share: f64,
    pub late_start_ratio: f64,
    pub run_index: usize,
}

/// One limit as the sidecar publishes it in `/v1/status`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Limit {
    pub scope: String,
    pub name: String,
    pub rate_per_second: f64,
    pub burst: f64,
}

/// The limit the probe's knee is compared with.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ConfiguredLimit {
    /// `flag` (`--expected-limit`), `status` (the sidecar's `/v1/status`) or `unknown`.
    pub source: String,
    /// The limit that binds this load (`null` when unknown).
    pub rate_per_second: Option<f64>,
    pub limits: Vec<Limit>,
    pub note: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ProbeReport {
    pub start_rate: f64,
    pub factor: f64,
    pub step_s: f64,
    pub refine_steps: u32,
    pub max_rate: f64,
    pub throttle_threshold: f64,
    pub slo_p99_ms: f64,
    pub steps: Vec<Step>,
    /// The highest step rate that passed; `null` if none did.
    pub knee_rate: Option<f64>,
    /// Why the ramp stopped: `throttling`, `latency_slo`, `errors`, `late_starts`, `max_rate`.
    pub stop_reason: String,
    /// Successful responses per second in the lowest failing step (what the limit let through).
    pub saturated_ok_rate: Option<f64>,
    pub configured_limit: ConfiguredLimit,
    /// `knee_rate / configured_limit.rate_per_second`.
    pub knee_vs_limit: Option<f64>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct BaselineReport {
    pub responder_url: String,
    pub responder_threads: usize,
    pub throughput_s: f64,
    /// Requests per second of the closed-loop phase (all `--connections` busy).
    pub baseline_throughput: f64,
    pub sidecar_throughput: f64,
    /// `sidecar_throughput / baseline_throughput`.
    pub throughput_ratio: f64,
    /// The fixed rate both targets got in the latency phase.
    pub rate: f64,
    pub baseline_latency_ms: Percentiles,
    pub sidecar_latency_ms: Percentiles,
    /// Sidecar over baseline latency at `rate` (1.0 = no overhead; higher is slower).
    pub p50_ratio: f64,
    pub p99_ratio: f64,
    pub p999_ratio: f64,
    /// Latency pairs run (more than one when the hypervisor disturbed the first).
    #[serde(default)]
    pub latency_attempts: u32,
    /// The steal (percent of all CPUs' time) above which a pair counted as disturbed.
    #[serde(default)]
    pub max_steal_pct: f64,
    /// Indices in `runs` of the pair the latency ratios come from (the least disturbed).
    #[serde(default)]
    pub baseline_latency_run: usize,
    #[serde(default)]
    pub sidecar_latency_run: usize,
    /// The worst steal of that pair's two runs.
    #[serde(default)]
    pub latency_steal_pct: f64,
    /// True when every pair was disturbed: the latency ratios then measure the host too.
    #[serde(default)]
    pub latency_disturbed: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct MaxReport {
    pub start_rate: f64,
    pub step_s: f64,
    pub refine_steps: u32,
    pub p99_bound_ms: f64,
    pub max_late_ratio: f64,
    pub max_error_share: f64,
    pub steps: Vec<Step>,
    /// The highest step rate that met every bound; `null` if none did.
    pub max_sustainable_rate: Option<f64>,
    pub stop_reason: String,
}

impl Report {
    /// Records a cleanup phase and its warning, if any.
    pub fn record_cleanup(&mut self, cleanup: Option<CleanupReport>) {
        if let Some(c) = cleanup {
            self.warnings.extend(c.warning());
            self.cleanup = Some(c);
        }
    }

    /// Writes the report as pretty JSON.
    pub fn write_json(&self, path: &Path) -> Result<(), LoadError> {
        let text = serde_json::to_string_pretty(self)?;
        std::fs::write(path, text + "\n").map_err(|source| LoadError::WriteReport {
            path: path.to_path_buf(),
            source,
        })
    }

    /// The human summary.
    pub fn summary(&self) -> String {
        let mut out = String::new();
        let m = &self.machine;
        let _ = writeln!(
            out,
            "kms-loadtest {} ({}) target {}  machine: {} cpus, {} MiB, kernel {}",
            self.mode,
            self.tool_version,
            self.parameters.target,
            m.nproc,
            m.memory_total_bytes.unwrap_or(0) / (1024 * 1024),
            m.kernel.as_deref().unwrap_or("?")
        );
        if let Some(s) = &self.setup {
            let _ = writeln!(
                out,
                "setup: {} keys ({} created), {} ciphertexts, {} requests ({} retries) in {:.2}s",
                s.keys_used, s.keys_created, s.ciphertexts, s.requests, s.retries, s.seconds
            );
        }
        for run in &self.runs {
            run_summary(&mut out, run);
        }
        if let Some(p) = &self.probe {
            steps_summary(&mut out, "probe", &p.steps);
            let _ = writeln!(
                out,
                "knee: {}  (stopped by {}; ok rate at the first failing step: {})",
                opt_rate(p.knee_rate),
                p.stop_reason,
                opt_rate(p.saturated_ok_rate)
            );
            match (p.configured_limit.rate_per_second, p.knee_vs_limit) {
                (Some(limit), Some(ratio)) => {
                    let _ = writeln!(
                        out,
                        "configured limit: {limit:.1} req/s ({}); knee / limit = {ratio:.3} ({:+.1}%)",
                        p.configured_limit.source,
                        (ratio - 1.0) * 100.0
                    );
                }
                _ => {
                    let _ = writeln!(out, "configured limit unknown: {}", p.configured_limit.note);
                }
            }
        }
        if let Some(b) = &self.baseline {
            let _ = writeln!(
                out,
                "baseline vs sidecar (same run):\n  throughput  baseline {:.0} req/s  sidecar {:.0} req/s  ratio {:.3}\n  at {:.0} req/s  p50 {:.3} vs {:.3} ms (x{:.2})  p99 {:.3} vs {:.3} ms (x{:.2})  p99.9 x{:.2}",
                b.baseline_throughput,
                b.sidecar_throughput,
                b.throughput_ratio,
                b.rate,
                b.baseline_latency_ms.p50,
                b.sidecar_latency_ms.p50,
                b.p50_ratio,
                b.baseline_latency_ms.p99,
                b.sidecar_latency_ms.p99,
                b.p99_ratio,
                b.p999_ratio
            );
            let _ = writeln!(
                out,
                "  latency pairs run: {}; ratios from runs {} and {}, hypervisor steal {:.2}% of the CPUs (limit {:.2}%){}",
                b.latency_attempts,
                b.baseline_latency_run + 1,
                b.sidecar_latency_run + 1,
                b.latency_steal_pct,
                b.max_steal_pct,
                if b.latency_disturbed {
                    "; DISTURBED: every pair ran while the host took CPU, so these ratios measure the host too"
                } else {
                    ""
                }
            );
        }
        if let Some(x) = &self.max {
            steps_summary(&mut out, "max", &x.steps);
            let _ = writeln!(
                out,
                "max sustainable rate: {} (p99 <= {} ms, late starts <= {:.1}%, errors <= {:.2}%; stopped: {})",
                opt_rate(x.max_sustainable_rate),
                x.p99_bound_ms,
                x.max_late_ratio * 100.0,
                x.max_error_share * 100.0,
                x.stop_reason
            );
        }
        if let Some(c) = &self.cleanup {
            let _ = writeln!(
                out,
                "\ncleanup: {} key(s) scheduled for deletion, {} not; {} requests ({} retries) in {:.2}s",
                c.keys_scheduled,
                c.failed_keys.len(),
                c.requests,
                c.retries,
                c.seconds
            );
        }
        for w in &self.warnings {
            let _ = writeln!(out, "warning: {w}");
        }
        out
    }
}

fn opt_rate(r: Option<f64>) -> String {
    r.map_or("none".into(), |r| format!("{r:.1} req/s"))
}

fn row(out: &mut String, name: &str, p: &Percentiles) {
    let _ = writeln!(
        out,
        "  {name:<32} {:>9} {:>9.3} {:>9.3} {:>9.3} {:>9.3} {:>9.3}",
        p.count, p.p50, p.p90, p.p99, p.p999, p.max
    );
}

fn run_summary(out: &mut String, r: &RunResult) {
    let plan = r.planned_rate.map_or("closed loop".to_string(), |rate| {
        format!("open loop {rate}/s")
    });
    let _ = writeln!(
        out,
        "\n[{}] {}  {plan}, {} connections, {:.1}s measured after {:.1}s warm-up",
        r.label, r.target, r.connections, r.measured_s, r.warmup_s
    );
    let _ = writeln!(
        out,
        "  requests: planned {} sent {} ok {} errors {} not sent {}  achieved {:.1} req/s (ok {:.1})",
        r.planned, r.sent, r.ok, r.errors, r.not_sent, r.achieved_rate, r.ok_rate
    );
    let _ = writeln!(
        out,
        "  late starts: {} ({:.2}% incl. not sent; threshold {} ms)  start lag p99 {:.3} ms  signing {:.1} us mean / {:.1} us p99  connections opened {}",
        r.late_starts,
        r.late_start_ratio * 100.0,
        r.late_threshold_ms,
        r.start_lag_ms.p99,
        r.signing.mean_us,
        r.signing.p99_us,
        r.connections_opened
    );
    if let Some(c) = &r.cpu {
        let _ = writeln!(
            out,
            "  machine during the measured window: busy {:.1}% of all CPUs, hypervisor steal {:.2}%",
            c.busy_pct, c.steal_pct
        );
    }
    let _ = writeln!(
        out,
        "  {:<32} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9}",
        "latency (ms)", "count", "p50", "p90", "p99", "p99.9", "max"
    );
    row(out, "all ok, from planned time", &r.latency_ms);
    row(out, "all ok, service time", &r.service_time_ms);
    for (op, s) in &r.by_op {
        row(out, op, &s.latency_ms);
    }
    if r.errors_by_type.is_empty() {
        let _ = writeln!(out, "  errors: none");
    } else {
        let list: Vec<String> = r
            .errors_by_type
            .iter()
            .map(|(k, v)| format!("{k} {v}"))
            .collect();
        let _ = writeln!(out, "  errors: {}", list.join(", "));
    }
}

fn steps_summary(out: &mut String, what: &str, steps: &[Step]) {
    let _ = writeln!(
        out,
        "\n{what} steps:\n  {:>10} {:>7} {:>10} {:>9} {:>10} {:>8} {:>8}  reason",
        "rate", "passed", "ok/s", "p99 ms", "throttled", "errors", "late"
    );
    for s in steps {
        let _ = writeln!(
            out,
            "  {:>10.1} {:>7} {:>10.1} {:>9.3} {:>9.2}% {:>7.2}% {:>7.2}%  {}",
            s.rate,
            s.passed,
            s.ok_rate,
            s.p99_ms,
            s.throttled_share * 100.0,
            s.error_share * 100.0,
            s.late_start_ratio * 100.0,
            s.reason.as_deref().unwrap_or("-")
        );
    }
}
