//! The four modes (`run`, `probe`, `baseline`, `max`) as library functions: each resolves its
//! targets, runs the setup phase, drives one or more engine runs and returns a [`Report`]. The CLI
//! and the tests call exactly these.

mod baseline;
mod max;
mod probe;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

pub use baseline::{BaselineConfig, baseline};
pub use max::{MaxConfig, max};
pub use probe::{ProbeConfig, fetch_configured_limit, probe};

use crate::backoff::Backoff;
use crate::engine::{Limits, RunResult, RunSpec, execute, execute_kmsv2, execute_xks};
use crate::error::LoadError;
use crate::kms::{Workload, WorkloadSpec};
use crate::kmsv2;
use crate::progress::Progress;
use crate::report::{Machine, Parameters, Report, SCHEMA_VERSION, Step};
use crate::responder::Responder;
use crate::setup::{CleanupReport, SetupReport, cleanup, prepare};
use crate::target::{Target, resolve};
use crate::xks;

/// Settings every mode shares.
#[derive(Debug, Clone)]
pub struct Common {
    /// The sidecar's KMS URL.
    pub target: String,
    /// The sidecar's admin URL (probe reads `/v1/status` there); default: KMS port + 1.
    pub admin_url: Option<String>,
    pub allow_non_loopback: bool,
    pub workload: WorkloadSpec,
    pub limits: Limits,
    /// Excluded from results at the start of each measured run.
    pub warmup: Duration,
    /// Leave the keys the setup phase created (default: schedule their deletion at the end).
    pub keep_keys: bool,
    /// How the setup and cleanup calls retry throttling and transient errors.
    pub retry: Backoff,
    /// Worker threads of the in-process baseline responder.
    pub responder_threads: usize,
    pub progress: Progress,
}

/// The `run` mode: a fixed rate for a duration.
#[derive(Debug, Clone)]
pub struct RunConfig {
    /// Requests per second; 0 means closed loop.
    pub rate: f64,
    pub duration: Duration,
    /// Drive the in-process baseline responder instead of a sidecar (no setup, no sidecar needed).
    pub against_baseline: bool,
    /// Send KMS v2 gRPC (Encrypt/Decrypt) to the sidecar's plugin socket instead of AWS JSON.
    pub kmsv2_socket: Option<PathBuf>,
    /// Send XKS proxy API calls (Encrypt/Decrypt) to the target, an XKS listener, instead of AWS JSON.
    pub xks: Option<xks::XksTarget>,
}

/// A prepared target: where load goes and what it sends.
pub(crate) struct Prepared {
    pub target: Arc<Target>,
    pub workload: Arc<Workload>,
    pub setup: Option<SetupReport>,
    pub created: Vec<String>,
    /// Keeps the baseline responder serving until the prepared target is dropped.
    pub _responder: Option<Responder>,
}

pub(crate) fn now_unix() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

/// Starts a loopback baseline responder.
pub(crate) fn start_responder(common: &Common) -> Result<Responder, LoadError> {
    let listen: SocketAddr = SocketAddr::from(([127, 0, 0, 1], 0));
    Responder::start(listen, common.responder_threads, false)
}

/// Resolves the target and runs the setup phase (or starts the baseline responder).
pub(crate) async fn prepare_target(
    common: &Common,
    against_baseline: bool,
) -> Result<Prepared, LoadError> {
    if against_baseline {
        let responder = start_responder(common)?;
        let target = Arc::new(resolve(&responder.url, false).await?);
        return Ok(Prepared {
            target,
            workload: Arc::new(Workload::synthetic(&common.workload)),
            setup: None,
            created: Vec::new(),
            _responder: Some(responder),
        });
    }
    let target = Arc::new(resolve(&common.target, common.allow_non_loopback).await?);
    let mut created = Vec::new();
    let prepared = prepare(
        &target,
        &common.workload,
        common.limits.timeout,
        common.retry,
        &mut created,
    )
    .await;
    match prepared {
        Ok((workload, setup)) => Ok(Prepared {
            target,
            workload: Arc::new(workload),
            setup: Some(setup),
            created,
            _responder: None,
        }),
        Err(e) => {
            // Keys created before the failure would otherwise be left behind unnoticed.
            let cleanup = if created.is_empty() {
                String::new()
            } else if common.keep_keys {
                format!(
                    "; kept the {} key(s) it created (--keep-keys)",
                    created.len()
                )
            } else {
                let report = cleanup_keys(common, &target, &created).await;
                match report.warning() {
                    Some(w) => format!("; {w}"),
                    None => format!(
                        "; the {} key(s) it created are scheduled for deletion",
                        created.len()
                    ),
                }
            };
            Err(LoadError::Setup {
                source: Box::new(e),
                cleanup,
            })
        }
    }
}

async fn cleanup_keys(common: &Common, target: &Target, created: &[String]) -> CleanupReport {
    cleanup(
        target,
        &common.workload,
        created,
        common.limits.timeout,
        common.retry,
    )
    .await
}

/// Schedules deletion of the keys a setup phase created, unless `--keep-keys` (`None`: nothing to
/// clean up). Never fails, so the report survives a cleanup that does
/// ([`Report::record_cleanup`]).
pub(crate) async fn finish(common: &Common, prepared: &Prepared) -> Option<CleanupReport> {
    if common.keep_keys || prepared.created.is_empty() {
        return None;
    }
    Some(cleanup_keys(common, &prepared.target, &prepared.created).await)
}

/// An empty report with the invocation's parameters and machine.
pub(crate) fn new_report(
    mode: &str,
    common: &Common,
    target: &str,
    against_baseline: bool,
    rate: Option<f64>,
    duration: Option<Duration>,
) -> Report {
    let w = &common.workload;
    Report {
        schema_version: SCHEMA_VERSION,
        tool: "kms-loadtest".into(),
        tool_version: env!("CARGO_PKG_VERSION").into(),
        mode: mode.into(),
        started_at_unix: now_unix(),
        finished_at_unix: 0.0,
        parameters: Parameters {
            target: target.into(),
            against_baseline,
            mix: w.mix.spec(),
            principals: w.creds.len(),
            access_key_ids: w.creds.iter().map(|c| c.access_key_id.clone()).collect(),
            region: w.region.clone(),
            keys: if w.key_ids.is_empty() {
                w.keys
            } else {
                w.key_ids.len()
            },
            ciphertexts_per_key: w.ciphertexts_per_key,
            payload_bytes: w.payload_bytes,
            encryption_context: w.context.clone(),
            connections: common.limits.connections,
            timeout_ms: common.limits.timeout.as_secs_f64() * 1000.0,
            drain_s: common.limits.drain.as_secs_f64(),
            late_threshold_ms: common.limits.late_threshold.as_secs_f64() * 1000.0,
            max_requests: common.limits.max_requests,
            warmup_s: common.warmup.as_secs_f64(),
            rate,
            duration_s: duration.map(|d| d.as_secs_f64()),
        },
        machine: Machine::detect(),
        setup: None,
        cleanup: None,
        warnings: Vec::new(),
        runs: Vec::new(),
        probe: None,
        baseline: None,
        max: None,
    }
}

/// The open-loop (`rate` > 0) or closed-loop (0) spec of a `run`.
fn run_spec(common: &Common, cfg: &RunConfig, label: String) -> Result<RunSpec, LoadError> {
    // Rate 0: closed loop (every connection busy), the way oha or wrk measure raw throughput.
    if cfg.rate == 0.0 {
        Ok(RunSpec::closed(
            label,
            common.warmup,
            cfg.duration,
            &common.limits,
        ))
    } else {
        RunSpec::open(label, cfg.rate, common.warmup, cfg.duration, &common.limits)
    }
}

/// The `run` mode against the KMS v2 plugin socket: no keys to create (the sidecar's
/// `--kmsv2-key-id` is used), no credentials (the socket is the authentication).
async fn run_kmsv2(common: &Common, cfg: &RunConfig, socket: &Path) -> Result<Report, LoadError> {
    let (workload, setup) =
        kmsv2::Workload::prepare(socket, common.workload.mix.clone(), common.limits.timeout)
            .await
            .map_err(|e| LoadError::Setup {
                source: Box::new(e),
                cleanup: String::new(),
            })?;
    let target = format!("unix:{}", socket.display());
    let mut report = new_report(
        "run",
        common,
        &target,
        false,
        Some(cfg.rate),
        Some(cfg.duration),
    );
    let p = &mut report.parameters;
    p.principals = 0;
    p.access_key_ids.clear();
    p.keys = 1;
    p.ciphertexts_per_key = setup.ciphertexts;
    p.payload_bytes = kmsv2::DEK_BYTES;
    p.encryption_context.clear();
    report.setup = Some(setup);
    let spec = run_spec(common, cfg, format!("kmsv2@{}/s", cfg.rate))?;
    let result =
        execute_kmsv2(&spec, &common.limits, &Arc::new(workload), &common.progress).await?;
    report.runs.push(result);
    report.finished_at_unix = now_unix();
    Ok(report)
}

/// The `run` mode against an XKS proxy listener: no keys to create (the external key id names a
/// key the sidecar's XKS config maps), signed with the first credential (an XKS credential).
async fn run_xks(
    common: &Common,
    cfg: &RunConfig,
    x: &xks::XksTarget,
) -> Result<Report, LoadError> {
    let target = Arc::new(resolve(&common.target, common.allow_non_loopback).await?);
    let cred = common
        .workload
        .creds
        .first()
        .cloned()
        .ok_or(LoadError::NoCredentials)?;
    let (workload, setup) = xks::Workload::prepare(
        &target,
        x,
        cred,
        &common.workload.region,
        common.workload.mix.clone(),
        common.limits.timeout,
    )
    .await
    .map_err(|e| LoadError::Setup {
        source: Box::new(e),
        cleanup: String::new(),
    })?;
    let mut report = new_report(
        "run",
        common,
        &format!("{}{}", target.url, x.uri_path),
        false,
        Some(cfg.rate),
        Some(cfg.duration),
    );
    let p = &mut report.parameters;
    p.keys = 1;
    p.ciphertexts_per_key = setup.ciphertexts;
    p.payload_bytes = xks::DEK_BYTES;
    p.encryption_context.clear();
    report.setup = Some(setup);
    let spec = run_spec(common, cfg, format!("xks@{}/s", cfg.rate))?;
    let result = execute_xks(
        &spec,
        &common.limits,
        &target,
        &Arc::new(workload),
        &common.progress,
    )
    .await?;
    report.runs.push(result);
    report.finished_at_unix = now_unix();
    Ok(report)
}

/// The `run` mode.
pub async fn run(common: &Common, cfg: &RunConfig) -> Result<Report, LoadError> {
    if let Some(socket) = &cfg.kmsv2_socket {
        return run_kmsv2(common, cfg, socket).await;
    }
    if let Some(x) = &cfg.xks {
        return run_xks(common, cfg, x).await;
    }
    let prepared = prepare_target(common, cfg.against_baseline).await?;
    let mut report = new_report(
        "run",
        common,
        &prepared.target.url,
        cfg.against_baseline,
        Some(cfg.rate),
        Some(cfg.duration),
    );
    report.setup = prepared.setup.clone();
    let label = if cfg.against_baseline {
        format!("baseline@{}/s", cfg.rate)
    } else {
        format!("run@{}/s", cfg.rate)
    };
    let spec = run_spec(common, cfg, label)?;
    let result = execute(
        &spec,
        &common.limits,
        &prepared.target,
        &prepared.workload,
        &common.progress,
    )
    .await;
    // Keys are cleaned up even when the run failed.
    report.record_cleanup(finish(common, &prepared).await);
    report.runs.push(result?);
    report.finished_at_unix = now_unix();
    Ok(report)
}

/// Runs one step of a ramp (probe or max) and records it in the report.
pub(crate) async fn step(
    common: &Common,
    prepared: &Prepared,
    report: &mut Report,
    label: &str,
    rate: f64,
    warmup: Duration,
    duration: Duration,
) -> Result<RunResult, LoadError> {
    let spec = RunSpec::open(
        format!("{label}@{rate:.1}/s"),
        rate,
        warmup,
        duration,
        &common.limits,
    )?;
    let r = execute(
        &spec,
        &common.limits,
        &prepared.target,
        &prepared.workload,
        &common.progress,
    )
    .await?;
    report.runs.push(r.clone());
    Ok(r)
}

/// Runs the steps a rate search proposes (only the first warms up; later ones start on warm
/// connections and caches), each judged by `verdict`, `pause` apart, then cleans up the target
/// (recorded in `report`). The steps so far are kept in `report` even when one fails.
#[allow(clippy::too_many_arguments)]
pub(crate) async fn run_search(
    common: &Common,
    prepared: &Prepared,
    report: &mut Report,
    label: &str,
    search: &mut Search,
    duration: Duration,
    pause: Duration,
    verdict: impl Fn(&RunResult) -> Option<String>,
) -> Result<Vec<Step>, LoadError> {
    let mut steps = Vec::new();
    let mut outcome = Ok(());
    while let Some(rate) = search.next_rate() {
        let warmup = if steps.is_empty() {
            common.warmup
        } else {
            Duration::ZERO
        };
        let r = match step(common, prepared, report, label, rate, warmup, duration).await {
            Ok(r) => r,
            Err(e) => {
                outcome = Err(e);
                break;
            }
        };
        let reason = verdict(&r);
        steps.push(step_of(&r, rate, reason.as_deref(), report.runs.len() - 1));
        search.observe(rate, reason);
        if search.next_rate().is_some() {
            tokio::time::sleep(pause).await;
        }
    }
    report.record_cleanup(finish(common, prepared).await);
    outcome?;
    Ok(steps)
}

/// A step's summary for the report.
pub(crate) fn step_of(r: &RunResult, rate: f64, reason: Option<&str>, run_index: usize) -> Step {
    Step {
        rate,
        passed: reason.is_none(),
        reason: reason.map(str::to_string),
        achieved_rate: r.achieved_rate,
        ok_rate: r.ok_rate,
        p99_ms: r.latency_ms.p99,
        throttled_share: r.error_share("ThrottlingException"),
        error_share: r.total_error_share(),
        late_start_ratio: r.late_start_ratio,
        run_index,
    }
}

/// The rate search of `probe` and `max`: ramp by `factor` from `start` while steps pass, then
/// bisect between the best pass and the lowest failure `refine` times (stepping down first if the
/// start already fails). A plain state machine so the caller owns the async work of each step.
#[derive(Debug, Clone)]
pub(crate) struct Search {
    factor: f64,
    max_rate: f64,
    refine: u32,
    refinements: u32,
    steps: usize,
    best_pass: Option<f64>,
    lowest_fail: Option<(f64, String)>,
    next: Option<f64>,
    stop: Option<String>,
}

impl Search {
    const MAX_STEPS: usize = 40;

    pub(crate) fn new(start: f64, factor: f64, max_rate: f64, refine: u32) -> Self {
        Self {
            factor,
            max_rate,
            refine,
            refinements: 0,
            steps: 0,
            best_pass: None,
            lowest_fail: None,
            next: Some(start.min(max_rate)),
            stop: None,
        }
    }

    /// The next rate to try, or `None` when the search is over.
    pub(crate) fn next_rate(&self) -> Option<f64> {
        self.next
    }

    /// Records a step: `None` if it passed, otherwise why it failed.
    pub(crate) fn observe(&mut self, rate: f64, failure: Option<String>) {
        self.steps += 1;
        match failure {
            None => self.best_pass = Some(self.best_pass.map_or(rate, |b| b.max(rate))),
            Some(reason) => {
                if self.lowest_fail.as_ref().is_none_or(|(f, _)| rate < *f) {
                    self.lowest_fail = Some((rate, reason));
                }
            }
        }
        let next = match (self.best_pass, &self.lowest_fail) {
            (Some(pass), None) if pass >= self.max_rate => Err("max_rate".to_string()),
            (Some(pass), None) => Ok((pass * self.factor).min(self.max_rate)),
            (None, Some((fail, reason))) => {
                let down = fail / self.factor;
                if down < 1.0 {
                    Err(reason.clone())
                } else {
                    Ok(down)
                }
            }
            (Some(pass), Some((fail, reason))) => {
                if self.refinements >= self.refine || (fail - pass) / pass < 0.005 {
                    Err(reason.clone())
                } else {
                    self.refinements += 1;
                    Ok((pass + fail) / 2.0)
                }
            }
            (None, None) => Ok(rate),
        };
        self.next = match next {
            Ok(_) if self.steps >= Self::MAX_STEPS => {
                self.stop = Some("max_steps".into());
                None
            }
            Ok(r) => Some((r * 10.0).round() / 10.0),
            Err(reason) => {
                self.stop = Some(reason);
                None
            }
        };
    }

    /// The best passing rate, the lowest failing rate and why the search stopped.
    pub(crate) fn result(&self) -> (Option<f64>, Option<f64>, String) {
        (
            self.best_pass,
            self.lowest_fail.as_ref().map(|(f, _)| *f),
            self.stop.clone().unwrap_or_else(|| "unfinished".into()),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn simulate(limit: f64, start: f64, factor: f64, refine: u32) -> (Option<f64>, Vec<f64>) {
        let mut rates = Vec::new();
        let mut search = Search::new(start, factor, 1e6, refine);
        while let Some(rate) = search.next_rate() {
            rates.push(rate);
            search.observe(rate, (rate > limit).then(|| "throttling".to_string()));
        }
        let (knee, _, reason) = search.result();
        assert!(reason == "throttling" || knee.is_none(), "{reason}");
        (knee, rates)
    }

    #[test]
    fn search_ramps_then_bisects() {
        let (knee, rates) = simulate(400.0, 100.0, 2.0, 4);
        assert_eq!(&rates[..4], &[100.0, 200.0, 400.0, 800.0]);
        assert_eq!(knee, Some(400.0));
        assert_eq!(rates.len(), 4 + 4);
        let (knee, _) = simulate(1000.0, 100.0, 1.25, 6);
        let knee = knee.unwrap();
        assert!((950.0..=1000.0).contains(&knee), "{knee}");
    }

    #[test]
    fn search_steps_down_when_the_start_fails() {
        let (knee, rates) = simulate(30.0, 100.0, 2.0, 2);
        assert_eq!(&rates[..3], &[100.0, 50.0, 25.0]);
        assert!(knee.unwrap() >= 25.0);
        let (knee, _) = simulate(0.0, 4.0, 2.0, 2);
        assert_eq!(knee, None);
    }
}
