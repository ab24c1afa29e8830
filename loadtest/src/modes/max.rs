//! `max`: the highest rate the target sustains with p99 under a bound, at most 1% late starts
//! (including requests never sent) and errors under a share. Against the baseline responder this
//! is the load tester's own ceiling, which must be well above the sidecar's for its figures to be
//! about the sidecar and not about itself.

use std::time::Duration;

use super::{Common, Search, new_report, now_unix, prepare_target, run_search};
use crate::engine::RunResult;
use crate::error::LoadError;
use crate::report::{MaxReport, Report};

#[derive(Debug, Clone)]
pub struct MaxConfig {
    pub start_rate: f64,
    /// Passing steps multiply the rate by this (> 1).
    pub factor: f64,
    pub step: Duration,
    pub refine: u32,
    pub max_rate: f64,
    pub p99_bound_ms: f64,
    pub max_late_ratio: f64,
    pub max_error_share: f64,
    pub pause: Duration,
    pub against_baseline: bool,
}

impl MaxConfig {
    fn verdict(&self, r: &RunResult) -> Option<String> {
        if r.total_error_share() > self.max_error_share {
            Some(if r.error_share("ThrottlingException") > 0.0 {
                "throttling".into()
            } else {
                "errors".into()
            })
        } else if r.late_start_ratio > self.max_late_ratio {
            Some("late_starts".into())
        } else if r.latency_ms.p99 > self.p99_bound_ms {
            Some("latency_bound".into())
        } else {
            None
        }
    }
}

/// The `max` mode.
pub async fn max(common: &Common, cfg: &MaxConfig) -> Result<Report, LoadError> {
    if !(cfg.factor > 1.0 && cfg.factor <= 10.0) || cfg.step.is_zero() || cfg.start_rate <= 0.0 {
        return Err(LoadError::Invalid(
            "need --factor in (1, 10], a positive --step-secs and --start-rate".into(),
        ));
    }
    let prepared = prepare_target(common, cfg.against_baseline).await?;
    let mut report = new_report(
        "max",
        common,
        &prepared.target.url,
        cfg.against_baseline,
        None,
        None,
    );
    report.setup = prepared.setup.clone();
    let mut search = Search::new(cfg.start_rate, cfg.factor, cfg.max_rate, cfg.refine);
    let steps = run_search(
        common,
        &prepared,
        &mut report,
        "max",
        &mut search,
        cfg.step,
        cfg.pause,
        |r| cfg.verdict(r),
    )
    .await?;
    let (best, _, stop_reason) = search.result();
    report.max = Some(MaxReport {
        start_rate: cfg.start_rate,
        step_s: cfg.step.as_secs_f64(),
        refine_steps: cfg.refine,
        p99_bound_ms: cfg.p99_bound_ms,
        max_late_ratio: cfg.max_late_ratio,
        max_error_share: cfg.max_error_share,
        steps,
        max_sustainable_rate: best,
        stop_reason,
    });
    report.finished_at_unix = now_unix();
    Ok(report)
}
