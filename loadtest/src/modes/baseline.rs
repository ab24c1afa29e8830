//! `baseline`: the same load against the in-process baseline responder and against the sidecar,
//! in one invocation, so the sidecar's cost is a ratio that a noisy machine cannot fake. Two
//! phases per target: closed-loop throughput (every connection busy), then an open-loop latency
//! run at a fixed rate (default: half the sidecar's measured throughput).
//!
//! A latency pair during which the hypervisor stole more than `max_steal_pct` of the machine's
//! CPU (`cpu.rs`) is run again, up to `latency_attempts` pairs: the ratios come from the least
//! disturbed pair, every pair stays in `runs`, and the report says when none was undisturbed.

use std::sync::Arc;
use std::time::Duration;

use super::{Common, finish, new_report, now_unix, prepare_target, start_responder};
use crate::cpu::CpuShare;
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
    /// Latency pairs to run at most while the hypervisor's steal exceeds `max_steal_pct`.
    pub latency_attempts: u32,
    /// The steal (percent of all CPUs' time) above which a latency pair counts as disturbed.
    pub max_steal_pct: f64,
}

/// The pair with the least steal (the first of equals) and its steal.
fn least_disturbed(steals: &[f64]) -> (usize, f64) {
    steals
        .iter()
        .copied()
        .enumerate()
        .fold(
            (0, f64::INFINITY),
            |best, (i, s)| if s < best.1 { (i, s) } else { best },
        )
}

/// The worst steal of a pair's runs; a run whose CPU could not be read counts as undisturbed.
fn pair_steal(cpus: impl IntoIterator<Item = Option<CpuShare>>) -> f64 {
    cpus.into_iter()
        .flatten()
        .map(|c| c.steal_pct)
        .fold(0.0, f64::max)
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
    // Latency: the same planned rate against both; again while the host disturbed the pair.
    let attempts = cfg.latency_attempts.max(1);
    let first_latency = report.runs.len();
    // The worst steal of each pair run, in order.
    let mut steals = Vec::new();
    for attempt in 1..=attempts {
        let first = report.runs.len();
        for (name, target) in [("baseline", &base_target), ("sidecar", &sidecar.target)] {
            let label = match attempt {
                1 => format!("{name}@{rate}/s"),
                n => format!("{name}@{rate}/s (attempt {n})"),
            };
            let spec = RunSpec::open(label, rate, common.warmup, cfg.duration, limits)?;
            let r = execute(&spec, limits, target, workload, &common.progress).await?;
            report.runs.push(r);
        }
        let steal = pair_steal(report.runs[first..].iter().map(|r| r.cpu));
        steals.push(steal);
        if steal <= cfg.max_steal_pct {
            break;
        }
    }
    let (pair, steal) = least_disturbed(&steals);
    let (base_run, side_run) = (first_latency + 2 * pair, first_latency + 2 * pair + 1);
    let (base_lat, side_lat) = (
        report.runs[base_run].latency_ms.clone(),
        report.runs[side_run].latency_ms.clone(),
    );
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
        latency_attempts: steals.len() as u32,
        max_steal_pct: cfg.max_steal_pct,
        baseline_latency_run: base_run,
        sidecar_latency_run: side_run,
        latency_steal_pct: steal,
        latency_disturbed: steal > cfg.max_steal_pct,
        baseline_latency_ms: base_lat,
        sidecar_latency_ms: side_lat,
    });
    report.finished_at_unix = now_unix();
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_least_disturbed_pair_is_chosen() {
        assert_eq!(least_disturbed(&[0.2]), (0, 0.2));
        assert_eq!(least_disturbed(&[3.0, 0.9, 1.5]), (1, 0.9));
        assert_eq!(least_disturbed(&[2.0, 2.0]), (0, 2.0));
    }

    #[test]
    fn a_pair_is_as_disturbed_as_its_worse_run() {
        let cpu = |steal_pct| {
            Some(CpuShare {
                busy_pct: 50.0,
                steal_pct,
            })
        };
        assert_eq!(pair_steal([cpu(0.1), cpu(2.5)]), 2.5);
        assert_eq!(pair_steal([cpu(0.7), None]), 0.7);
        // Unreadable CPU counters (not Linux) cannot show a disturbance.
        assert_eq!(pair_steal([None, None]), 0.0);
    }
}
