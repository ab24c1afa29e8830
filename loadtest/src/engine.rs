//! The load generator. `--connections` workers each own one keep-alive connection and claim request
//! indices from a shared counter; request `i` is sent at its planned time (or as soon as a worker
//! frees up, which makes it late) and its latency is measured from the planned time, so queueing
//! caused by a slow server is charged to the server, never hidden by sending less. Every run is
//! bounded by a request count and a hard deadline (`warm-up + duration + drain`).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant, SystemTime};

use serde::{Deserialize, Serialize};

use crate::cpu::{CpuShare, CpuTimes};
use crate::error::LoadError;
use crate::http::Conn;
use crate::kms::{Workload, classify};
use crate::kmsv2;
use crate::mix::Op;
use crate::progress::Progress;
use crate::schedule::Schedule;
use crate::sign::Signer;
use crate::stats::{Percentiles, Sample, SigningCost, Stats};
use crate::target::Target;
use crate::xks;

/// Settings shared by every run of an invocation.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Workers = keep-alive connections = the most requests in flight.
    pub connections: usize,
    /// Per-request timeout (counted as error type `Timeout`).
    pub timeout: Duration,
    /// After the last planned send, how long a backlog may still be worked off; later requests are
    /// `not_sent`.
    pub drain: Duration,
    /// A request sent more than this after its planned time is a late start.
    pub late_threshold: Duration,
    /// The most requests one run may plan.
    pub max_requests: u64,
}

/// One run: a schedule, a warm-up (excluded from results) and a measured duration.
#[derive(Debug, Clone)]
pub struct RunSpec {
    pub label: String,
    pub schedule: Schedule,
    pub warmup: Duration,
    pub duration: Duration,
}

impl RunSpec {
    /// Open loop at `rate` for `warmup + duration`.
    pub fn open(
        label: impl Into<String>,
        rate: f64,
        warmup: Duration,
        duration: Duration,
        limits: &Limits,
    ) -> Result<Self, LoadError> {
        let count = Schedule::count_for(rate, warmup + duration);
        if count > limits.max_requests {
            return Err(LoadError::Invalid(format!(
                "{rate}/s for {:.1}s plans {count} requests, more than --max-requests {}",
                (warmup + duration).as_secs_f64(),
                limits.max_requests
            )));
        }
        Ok(Self {
            label: label.into(),
            schedule: Schedule::open(rate, count)?,
            warmup,
            duration,
        })
    }

    /// Closed loop (as fast as the connections allow) for `warmup + duration`.
    pub fn closed(
        label: impl Into<String>,
        warmup: Duration,
        duration: Duration,
        limits: &Limits,
    ) -> Self {
        Self {
            label: label.into(),
            schedule: Schedule::closed(limits.max_requests),
            warmup,
            duration,
        }
    }
}

/// One operation's results.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct OpResult {
    pub ok: u64,
    pub errors: u64,
    pub latency_ms: Percentiles,
}

/// The results of one run (one element of the report's `runs`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct RunResult {
    pub label: String,
    pub target: String,
    /// `open` (planned rate) or `closed` (as fast as connections allow).
    pub loop_kind: String,
    pub planned_rate: Option<f64>,
    pub connections: usize,
    pub warmup_s: f64,
    pub duration_s: f64,
    pub planned: u64,
    pub sent: u64,
    pub completed: u64,
    pub ok: u64,
    pub errors: u64,
    pub not_sent: u64,
    pub warmup_requests: u64,
    pub warmup_errors: u64,
    pub measured_s: f64,
    pub achieved_rate: f64,
    pub ok_rate: f64,
    pub late_starts: u64,
    pub late_start_ratio: f64,
    pub late_threshold_ms: f64,
    pub latency_ms: Percentiles,
    pub service_time_ms: Percentiles,
    pub start_lag_ms: Percentiles,
    pub by_op: BTreeMap<String, OpResult>,
    pub errors_by_type: BTreeMap<String, u64>,
    pub signing: SigningCost,
    pub connections_opened: u64,
    /// The machine's CPU during the measured window (after the warm-up): busy and hypervisor
    /// steal shares; `null` where `/proc/stat` is unreadable or the window was empty.
    #[serde(default)]
    pub cpu: Option<CpuShare>,
}

impl RunResult {
    /// The share of measured responses that were `error_type`.
    pub fn error_share(&self, error_type: &str) -> f64 {
        let n = self.errors_by_type.get(error_type).copied().unwrap_or(0);
        n as f64 / self.completed.max(1) as f64
    }

    /// The share of measured responses that were errors of any type.
    pub fn total_error_share(&self) -> f64 {
        self.errors as f64 / self.completed.max(1) as f64
    }
}

/// What a run sends: signed AWS JSON over HTTP/1.1, or KMS v2 gRPC on a Unix socket.
enum Driver {
    AwsJson {
        workload: Arc<Workload>,
        signer: Signer,
    },
    KmsV2(Arc<kmsv2::Workload>),
    /// The XKS proxy API: signed JSON over HTTP/1.1 to the XKS listener.
    Xks(Arc<xks::Workload>),
}

/// A worker's own connection, of the driver's kind.
enum Channel {
    Http(Conn),
    KmsV2(kmsv2::Client),
}

impl Channel {
    fn opened(&self) -> u64 {
        match self {
            Self::Http(conn) => conn.opened(),
            // tonic reconnects on its own; one channel was opened before the clock started.
            Self::KmsV2(_) => 1,
        }
    }
}

struct Ctx {
    spec: RunSpec,
    limits: Limits,
    driver: Driver,
    start: Instant,
    next: AtomicU64,
    sent: AtomicU64,
    stats: Vec<Mutex<Stats>>,
}

/// The error type counted for a request that got no HTTP response.
fn transport_error(e: &LoadError) -> &'static str {
    match e {
        LoadError::Timeout(_) => "Timeout",
        LoadError::Connect { .. } => "ConnectError",
        LoadError::Http(_) => "ConnectionError",
        _ => "ClientError",
    }
}

/// Sends request `i` on the worker's connection: its operation, outcome and signing cost.
async fn send_one(ctx: &Ctx, chan: &mut Channel, i: u64) -> (Op, Result<(), String>, Duration) {
    match (&ctx.driver, chan) {
        (Driver::AwsJson { workload, signer }, Channel::Http(conn)) => {
            let (op, body, cred) = workload.pick(i);
            match signer.request(cred, op.target(), body.clone(), SystemTime::now()) {
                Ok((req, signing)) => match conn.send(req, ctx.limits.timeout).await {
                    Ok((status, bytes)) => (op, classify(op, status, &bytes), signing),
                    Err(e) => (op, Err(transport_error(&e).to_string()), signing),
                },
                Err(_) => (op, Err("SigningError".to_string()), Duration::ZERO),
            }
        }
        (Driver::KmsV2(workload), Channel::KmsV2(client)) => {
            let (op, call) = workload.pick(i);
            let outcome = kmsv2::send(client, call, ctx.limits.timeout).await;
            (op, outcome, Duration::ZERO)
        }
        (Driver::Xks(workload), Channel::Http(conn)) => {
            let (op, body, expected) = workload.pick(i);
            match workload.request(op, body.clone(), SystemTime::now()) {
                Ok((req, signing)) => match conn.send(req, ctx.limits.timeout).await {
                    Ok((status, bytes)) => (op, xks::classify(status, &bytes, expected), signing),
                    Err(e) => (op, Err(transport_error(&e).to_string()), signing),
                },
                Err(_) => (op, Err("SigningError".to_string()), Duration::ZERO),
            }
        }
        // `execute*` pair drivers with channels of their own kind.
        (_, _) => (Op::Encrypt, Err("ClientError".to_string()), Duration::ZERO),
    }
}

async fn worker(ctx: Arc<Ctx>, idx: usize, mut chan: Channel) -> u64 {
    let count = ctx.spec.schedule.count();
    let warm_end = ctx.start + ctx.spec.warmup;
    let run_end = warm_end + ctx.spec.duration;
    let deadline = run_end + ctx.limits.drain;
    loop {
        let i = ctx.next.fetch_add(1, Ordering::Relaxed);
        if i >= count {
            break;
        }
        let planned = match ctx.spec.schedule.offset(i) {
            Some(offset) => ctx.start + offset,
            None => {
                let now = Instant::now();
                if now >= run_end {
                    break;
                }
                now
            }
        };
        if planned > Instant::now() {
            tokio::time::sleep_until(planned.into()).await;
        }
        let sent_at = Instant::now();
        if sent_at >= deadline {
            break;
        }
        ctx.sent.fetch_add(1, Ordering::Relaxed);
        let (op, outcome, signing) = send_one(&ctx, &mut chan, i).await;
        let done = Instant::now();
        let mut stats = ctx.stats[idx]
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if planned < warm_end {
            stats.record_warmup(outcome.is_ok());
        } else {
            let lag = sent_at.saturating_duration_since(planned);
            stats.record(&Sample {
                op,
                outcome: outcome.as_ref().map(|_| ()).map_err(String::as_str),
                latency: done.saturating_duration_since(planned),
                service: done.saturating_duration_since(sent_at),
                lag,
                signing,
                late: ctx.spec.schedule.rate().is_some() && lag > ctx.limits.late_threshold,
                done: done.saturating_duration_since(ctx.start),
            });
        }
    }
    chan.opened()
}

/// Merges every worker's records (used for live progress and the final result).
fn merged(ctx: &Ctx, ops: &[Op]) -> Result<Stats, LoadError> {
    let mut total = Stats::new(ops)?;
    for s in &ctx.stats {
        total.merge(&s.lock().unwrap_or_else(PoisonError::into_inner));
    }
    Ok(total)
}

/// Runs `spec` against `target` (AWS JSON) and summarises it.
pub async fn execute(
    spec: &RunSpec,
    limits: &Limits,
    target: &Arc<Target>,
    workload: &Arc<Workload>,
    progress: &Progress,
) -> Result<RunResult, LoadError> {
    check_connections(limits)?;
    // Connect before the clock starts, so handshakes do not land on the first planned requests.
    let mut chans = Vec::with_capacity(limits.connections);
    for _ in 0..limits.connections {
        let mut conn = Conn::new(target.addr);
        conn.connect().await?;
        chans.push(Channel::Http(conn));
    }
    let driver = Driver::AwsJson {
        workload: workload.clone(),
        signer: Signer::new(target, &workload.region)?,
    };
    let ops: Vec<Op> = workload.mix.weights().iter().map(|(op, _)| *op).collect();
    drive(spec, limits, &target.url, ops, driver, chans, progress).await
}

/// Runs `spec` against a KMS v2 plugin socket (gRPC, one HTTP/2 connection per worker).
pub async fn execute_kmsv2(
    spec: &RunSpec,
    limits: &Limits,
    workload: &Arc<kmsv2::Workload>,
    progress: &Progress,
) -> Result<RunResult, LoadError> {
    check_connections(limits)?;
    let mut chans = Vec::with_capacity(limits.connections);
    for _ in 0..limits.connections {
        let client = kmsv2::connect(&workload.socket, limits.timeout).await?;
        chans.push(Channel::KmsV2(client));
    }
    let ops: Vec<Op> = workload.mix.weights().iter().map(|(op, _)| *op).collect();
    let label = format!("unix:{}", workload.socket.display());
    let driver = Driver::KmsV2(workload.clone());
    drive(spec, limits, &label, ops, driver, chans, progress).await
}

/// Runs `spec` against an XKS proxy listener (signed JSON over HTTP/1.1).
pub async fn execute_xks(
    spec: &RunSpec,
    limits: &Limits,
    target: &Arc<Target>,
    workload: &Arc<xks::Workload>,
    progress: &Progress,
) -> Result<RunResult, LoadError> {
    check_connections(limits)?;
    let mut chans = Vec::with_capacity(limits.connections);
    for _ in 0..limits.connections {
        let mut conn = Conn::new(target.addr);
        conn.connect().await?;
        chans.push(Channel::Http(conn));
    }
    let ops: Vec<Op> = workload.mix.weights().iter().map(|(op, _)| *op).collect();
    let driver = Driver::Xks(workload.clone());
    drive(spec, limits, &target.url, ops, driver, chans, progress).await
}

fn check_connections(limits: &Limits) -> Result<(), LoadError> {
    if limits.connections == 0 || limits.connections > 4096 {
        return Err(LoadError::Invalid(
            "--connections must be between 1 and 4096".into(),
        ));
    }
    Ok(())
}

/// The run itself, whatever the target: workers, progress, and the summary.
async fn drive(
    spec: &RunSpec,
    limits: &Limits,
    target_url: &str,
    ops: Vec<Op>,
    driver: Driver,
    chans: Vec<Channel>,
    progress: &Progress,
) -> Result<RunResult, LoadError> {
    let stats = (0..limits.connections)
        .map(|_| Stats::new(&ops).map(Mutex::new))
        .collect::<Result<Vec<_>, _>>()?;
    let ctx = Arc::new(Ctx {
        spec: spec.clone(),
        limits: limits.clone(),
        driver,
        start: Instant::now(),
        next: AtomicU64::new(0),
        sent: AtomicU64::new(0),
        stats,
    });
    let workers: Vec<_> = chans
        .into_iter()
        .enumerate()
        .map(|(idx, chan)| tokio::spawn(worker(ctx.clone(), idx, chan)))
        .collect();
    // The machine's CPU counters when the measured window opens (see `cpu`).
    let window_start = {
        let at = ctx.start + spec.warmup;
        tokio::spawn(async move {
            tokio::time::sleep_until(at.into()).await;
            CpuTimes::now()
        })
    };
    let bar = progress.bar(&spec.label, spec.warmup + spec.duration);
    let ticker = bar.clone().map(|bar| {
        let ctx = ctx.clone();
        let ops = ops.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_millis(250));
            loop {
                tick.tick().await;
                if let Ok(s) = merged(&ctx, &ops) {
                    let elapsed = ctx.start.elapsed();
                    let measured = elapsed.saturating_sub(ctx.spec.warmup).as_secs_f64();
                    bar.update(elapsed, &s, measured);
                }
            }
        })
    });
    let mut opened = 0;
    for w in workers {
        opened += w.await.unwrap_or(0);
    }
    if let Some(t) = ticker {
        t.abort();
    }
    if let Some(bar) = bar {
        bar.finish();
    }
    let cpu = if window_start.is_finished() {
        match window_start.await {
            Ok(Some(start)) => CpuTimes::now().and_then(|end| CpuShare::between(start, end)),
            _ => None,
        }
    } else {
        // The run ended within its warm-up: no measured window.
        window_start.abort();
        None
    };
    let total = merged(&ctx, &ops)?;
    let sent = ctx.sent.load(Ordering::Relaxed);
    let open = spec.schedule.rate().is_some();
    let planned = if open { spec.schedule.count() } else { sent };
    let not_sent = planned.saturating_sub(sent);
    let measured_s = if open {
        spec.duration
            .max(total.last_done.saturating_sub(spec.warmup))
            .as_secs_f64()
    } else {
        total
            .last_done
            .saturating_sub(spec.warmup)
            .max(Duration::from_millis(1))
            .as_secs_f64()
    };
    let by_op = total
        .by_op
        .iter()
        .enumerate()
        .filter_map(|(i, s)| {
            s.as_ref().map(|s| {
                (
                    Op::ALL[i].operation().to_string(),
                    OpResult {
                        ok: s.ok,
                        errors: s.errors,
                        latency_ms: Percentiles::micros(&s.latency, false),
                    },
                )
            })
        })
        .collect();
    Ok(RunResult {
        label: spec.label.clone(),
        target: target_url.to_string(),
        loop_kind: if open { "open" } else { "closed" }.into(),
        planned_rate: spec.schedule.rate(),
        connections: limits.connections,
        warmup_s: spec.warmup.as_secs_f64(),
        duration_s: spec.duration.as_secs_f64(),
        planned,
        sent,
        completed: total.completed,
        ok: total.ok,
        errors: total.failed,
        not_sent,
        warmup_requests: total.warmup,
        warmup_errors: total.warmup_errors,
        measured_s,
        achieved_rate: total.completed as f64 / measured_s,
        ok_rate: total.ok as f64 / measured_s,
        late_starts: total.late,
        late_start_ratio: (total.late + not_sent) as f64
            / (total.completed + not_sent).max(1) as f64,
        late_threshold_ms: limits.late_threshold.as_secs_f64() * 1000.0,
        latency_ms: Percentiles::micros(&total.latency, true),
        service_time_ms: Percentiles::micros(&total.service, false),
        start_lag_ms: Percentiles::micros(&total.lag, false),
        by_op,
        errors_by_type: total.errors.clone(),
        signing: SigningCost::from_nanos(&total.signing),
        connections_opened: opened,
        cpu,
    })
}
