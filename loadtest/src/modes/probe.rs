//! `probe`: ramps the rate in steps until `ThrottlingException`s exceed a share of responses (or
//! the p99 SLO breaks), refines the boundary, reports the knee and compares it with the configured
//! limit: `--expected-limit`, else the `limits` the sidecar publishes at `GET /v1/status` on its
//! admin port, else "configured limit unknown".

use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use serde::Deserialize;

use super::{Common, Search, new_report, now_unix, prepare_target, run_search};
use crate::engine::RunResult;
use crate::error::LoadError;
use crate::http::Conn;
use crate::report::{ConfiguredLimit, Limit, ProbeReport, Report};
use crate::target::{default_admin_url, resolve};

#[derive(Debug, Clone)]
pub struct ProbeConfig {
    pub start_rate: f64,
    /// Each passing step multiplies the rate by this (> 1).
    pub factor: f64,
    pub step: Duration,
    /// Bisection steps between the last pass and the first failure.
    pub refine: u32,
    pub max_rate: f64,
    /// A step fails when more than this share of responses are `ThrottlingException`.
    pub throttle_threshold: f64,
    /// A step fails when its p99 (from planned time) is above this.
    pub slo_p99_ms: f64,
    /// The limit to compare the knee with; when absent, `/v1/status` is asked.
    pub expected_limit: Option<f64>,
    /// A step fails when more than this share starts late (or is never sent): the plan was not
    /// delivered, so the step says nothing about the target.
    pub max_late_ratio: f64,
    /// Idle time between steps, so token buckets refill and queues drain.
    pub pause: Duration,
    /// Drive the in-process baseline responder (a plumbing check: it never throttles).
    pub against_baseline: bool,
}

impl ProbeConfig {
    fn validate(&self) -> Result<(), LoadError> {
        if !(self.factor > 1.0 && self.factor <= 10.0) {
            return Err(LoadError::Invalid("--factor must be in (1, 10]".into()));
        }
        if !(0.0..1.0).contains(&self.throttle_threshold) {
            return Err(LoadError::Invalid(
                "--throttle-threshold must be in [0, 1)".into(),
            ));
        }
        if self.step.is_zero() || self.start_rate <= 0.0 || self.max_rate < self.start_rate {
            return Err(LoadError::Invalid(
                "need a positive --step-secs and 0 < --start-rate <= --max-rate".into(),
            ));
        }
        Ok(())
    }

    /// Why a step fails, or `None` if it passed.
    fn verdict(&self, r: &RunResult) -> Option<String> {
        let throttled = r.error_share("ThrottlingException");
        let other = r.total_error_share() - throttled;
        if throttled > self.throttle_threshold {
            Some("throttling".into())
        } else if other > self.throttle_threshold {
            Some("errors".into())
        } else if r.latency_ms.p99 > self.slo_p99_ms {
            Some("latency_slo".into())
        } else if r.late_start_ratio > self.max_late_ratio {
            Some("late_starts".into())
        } else {
            None
        }
    }
}

/// The `limits` array of `/v1/status` (other members are ignored).
#[derive(Debug, Deserialize)]
struct Status {
    limits: Vec<Limit>,
}

/// The limit that binds a load spread over `principals` principals and `keys` keys: the global
/// limit, or each scope's smallest per-entity limit times the entities this load uses.
pub fn binding_limit(limits: &[Limit], principals: usize, keys: usize) -> Option<f64> {
    let min_of = |scope: &str| {
        limits
            .iter()
            .filter(|l| l.scope == scope)
            .map(|l| l.rate_per_second)
            .reduce(f64::min)
    };
    [
        min_of("global"),
        min_of("principal").map(|r| r * principals as f64),
        min_of("key").map(|r| r * keys as f64),
    ]
    .into_iter()
    .flatten()
    .reduce(f64::min)
}

/// Reads the configured limits from the sidecar's admin `/v1/status` (sending
/// `KMS_SIDECAR_ADMIN_TOKEN` as a bearer token when it is set).
pub async fn fetch_configured_limit(
    admin_url: &str,
    allow_non_loopback: bool,
    principals: usize,
    keys: usize,
    timeout: Duration,
) -> ConfiguredLimit {
    let unknown = |note: String| ConfiguredLimit {
        source: "unknown".into(),
        rate_per_second: None,
        limits: Vec::new(),
        note,
    };
    let target = match resolve(admin_url, allow_non_loopback).await {
        Ok(t) => t,
        Err(e) => return unknown(format!("admin URL: {e}")),
    };
    let mut req = http::Request::get("/v1/status").header(http::header::HOST, &target.host_header);
    // A sidecar started with an admin token wants it here too (the same variable it reads).
    if let Ok(token) = std::env::var("KMS_SIDECAR_ADMIN_TOKEN") {
        req = req.header(
            http::header::AUTHORIZATION,
            format!("Bearer {}", token.trim()),
        );
    }
    let req = match req.body(Full::new(Bytes::new())) {
        Ok(r) => r,
        Err(e) => return unknown(e.to_string()),
    };
    let mut conn = Conn::new(target.addr);
    let (status, body) = match conn.send(req, timeout).await {
        Ok(r) => r,
        Err(e) => return unknown(format!("{admin_url}/v1/status: {e}")),
    };
    if status != 200 {
        return unknown(format!(
            "{admin_url}/v1/status answered HTTP {status} (the sidecar does not publish its limits yet)"
        ));
    }
    match serde_json::from_slice::<Status>(&body) {
        Ok(s) => match binding_limit(&s.limits, principals, keys) {
            Some(rate) => ConfiguredLimit {
                source: "status".into(),
                rate_per_second: Some(rate),
                note: format!(
                    "binding limit for {principals} principal(s) and {keys} key(s) from {admin_url}/v1/status"
                ),
                limits: s.limits,
            },
            None => ConfiguredLimit {
                limits: s.limits,
                ..unknown(format!("{admin_url}/v1/status lists no rate limit"))
            },
        },
        Err(e) => unknown(format!("{admin_url}/v1/status: unexpected JSON: {e}")),
    }
}

/// The `probe` mode.
pub async fn probe(common: &Common, cfg: &ProbeConfig) -> Result<Report, LoadError> {
    cfg.validate()?;
    let prepared = prepare_target(common, cfg.against_baseline).await?;
    let mut report = new_report(
        "probe",
        common,
        &prepared.target.url,
        cfg.against_baseline,
        None,
        None,
    );
    report.setup = prepared.setup.clone();
    let keys = prepared.workload.key_ids.len();
    let principals = prepared.workload.creds.len();
    let configured = match cfg.expected_limit {
        Some(rate) => ConfiguredLimit {
            source: "flag".into(),
            rate_per_second: Some(rate),
            limits: Vec::new(),
            note: "--expected-limit".into(),
        },
        None if cfg.against_baseline => ConfiguredLimit {
            source: "unknown".into(),
            rate_per_second: None,
            limits: Vec::new(),
            note: "the baseline responder has no limit".into(),
        },
        None => {
            let admin = match &common.admin_url {
                Some(a) => a.clone(),
                None => default_admin_url(&common.target)?,
            };
            fetch_configured_limit(
                &admin,
                common.allow_non_loopback,
                principals,
                keys,
                common.limits.timeout,
            )
            .await
        }
    };
    let mut search = Search::new(cfg.start_rate, cfg.factor, cfg.max_rate, cfg.refine);
    let steps = run_search(
        common,
        &prepared,
        &mut report,
        "probe",
        &mut search,
        cfg.step,
        cfg.pause,
        |r| cfg.verdict(r),
    )
    .await?;
    let (knee, lowest_fail, stop_reason) = search.result();
    let saturated_ok_rate = lowest_fail.and_then(|f| {
        steps
            .iter()
            .find(|s| !s.passed && s.rate == f)
            .map(|s| s.ok_rate)
    });
    let knee_vs_limit = match (knee, configured.rate_per_second) {
        (Some(k), Some(l)) if l > 0.0 => Some(k / l),
        _ => None,
    };
    report.probe = Some(ProbeReport {
        start_rate: cfg.start_rate,
        factor: cfg.factor,
        step_s: cfg.step.as_secs_f64(),
        refine_steps: cfg.refine,
        max_rate: cfg.max_rate,
        throttle_threshold: cfg.throttle_threshold,
        slo_p99_ms: cfg.slo_p99_ms,
        steps,
        knee_rate: knee,
        stop_reason,
        saturated_ok_rate,
        configured_limit: configured,
        knee_vs_limit,
    });
    report.finished_at_unix = now_unix();
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limit(scope: &str, rate: f64) -> Limit {
        Limit {
            scope: scope.into(),
            name: scope.into(),
            rate_per_second: rate,
            burst: rate,
        }
    }

    #[test]
    fn binding_limit_takes_the_tightest_scope() {
        assert_eq!(binding_limit(&[], 1, 1), None);
        assert_eq!(binding_limit(&[limit("global", 400.0)], 3, 3), Some(400.0));
        let l = [
            limit("global", 10_000.0),
            limit("principal", 500.0),
            limit("principal", 300.0),
            limit("key", 1000.0),
            limit("backend", 1.0),
        ];
        assert_eq!(binding_limit(&l, 2, 4), Some(600.0));
        assert_eq!(binding_limit(&l, 40, 4), Some(4000.0));
    }

    #[test]
    fn status_schema_parses() {
        let s: Status = serde_json::from_str(
            r#"{"version":"0.1.0","limits":[{"scope":"global","name":"global","rate_per_second":400.0,"burst":400}],"keys":[]}"#,
        )
        .unwrap();
        assert_eq!(s.limits[0].rate_per_second, 400.0);
        assert_eq!(s.limits[0].burst, 400.0);
    }
}
