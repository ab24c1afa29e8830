//! `baseline`: the same load against the in-process baseline responder and against the sidecar,
//! in one invocation, so the sidecar's cost is a ratio that a noisy machine cannot fake. Two
//! phases per target: closed-loop throughput (every connection busy), then an open-loop latency
//! run at a fixed rate (default: half the sidecar's measured throughput).

use std::sync::Arc;
use std::time::Duration;

use super::{Common, finish, new_report, now_unix, prepare_target, start_responder};
use crate::engine::{RunSpec, execute};
use crate::error::LoadError;
use crate::report::{BaselineReport, Report};
use crate::target::resolve;

#[derive(Debug, Clone)]
pub struct BaselineConfig {
    /// The latency phase's rate; default half the sidecar's closed-loop throughput.
    pub rate: Option<f64>,
    /// The latency phase's measured duration per target.
    pub duration: Duration,
    /// The throughput phase's measured duration per target.
    pub throughput_duration: Duration,
}

fn ratio(a: f64, b: f64) -> f64 {
    if b > 0.0 { a / b } else { 0.0 }
}

/// The `baseline` mode.
pub async fn baseline(common: &Common, cfg: &BaselineConfig) -> Result<Report, LoadError> {
    let sidecar = prepare_target(common, false).await?;
    let outcome = compare(common, cfg, &sidecar).await;
    let cleaned = finish(common, &sidecar).await;
    let mut report = outcome?;
    report.record_cleanup(cleaned);
    report.finished_at_unix = now_unix();
    Ok(report)
}

async fn compare(
    common: &Common,
    cfg: &BaselineConfig,
    sidecar: &super::Prepared,
) -> Result<Report, LoadError> {
    let responder = start_responder(common)?;
    let base_target = Arc::new(resolve(&responder.url, false).await?);
    let mut report = new_report(
        "baseline",
        common,
        &sidecar.target.url,
        false,
        cfg.rate,
        Some(cfg.duration),
    );
    report.setup = sidecar.setup.clone();
    let limits = &common.limits;
    let workload = &sidecar.workload;
    // Throughput: closed loop, baseline first, then the sidecar.
    let mut throughput = Vec::new();
    for (name, target) in [("baseline", &base_target), ("sidecar", &sidecar.target)] {
        let spec = RunSpec::closed(
            format!("{name}-throughput"),
            common.warmup,
            cfg.throughput_duration,
            limits,
        );
        let r = execute(&spec, limits, target, workload, &common.progress).await?;
        throughput.push(r.ok_rate);
        report.runs.push(r);
    }
    let (base_tp, side_tp) = (throughput[0], throughput[1]);
    let rate = match cfg.rate {
        Some(r) => r,
        None => (side_tp / 2.0).round().max(1.0),
    };
    // Latency: the same planned rate against both.
    let mut latency = Vec::new();
    for (name, target) in [("baseline", &base_target), ("sidecar", &sidecar.target)] {
        let spec = RunSpec::open(
            format!("{name}@{rate}/s"),
            rate,
            common.warmup,
            cfg.duration,
            limits,
        )?;
        let r = execute(&spec, limits, target, workload, &common.progress).await?;
        latency.push(r.latency_ms.clone());
        report.runs.push(r);
    }
    let (base_lat, side_lat) = (latency[0].clone(), latency[1].clone());
    report.parameters.rate = Some(rate);
    report.baseline = Some(BaselineReport {
        responder_url: responder.url.clone(),
        responder_threads: common.responder_threads,
        throughput_s: cfg.throughput_duration.as_secs_f64(),
        baseline_throughput: base_tp,
        sidecar_throughput: side_tp,
        throughput_ratio: ratio(side_tp, base_tp),
        rate,
        p50_ratio: ratio(side_lat.p50, base_lat.p50),
        p99_ratio: ratio(side_lat.p99, base_lat.p99),
        p999_ratio: ratio(side_lat.p999, base_lat.p999),
        baseline_latency_ms: base_lat,
        sidecar_latency_ms: side_lat,
    });
    report.finished_at_unix = now_unix();
    Ok(report)
}
