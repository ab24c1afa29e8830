//! The limits' settings: inbound rate limits, the outbound budget, the circuit breaker, retries and
//! the retry budget, and the backend call timeout. Each is validated here by its own constructor and
//! kept validated in [`Limits`], so the server builds from them without a second check.

use std::sync::Arc;
use std::time::Duration;

use super::{Options, ranged};
use crate::limits::{
    BreakerSpec, BudgetSpec, OutboundBudget, RateSpec, RetryBudget, RetryBudgetSpec, RetryPolicy,
    RetrySpec, ValidBreakerSpec, ValidRateSpec, WindowSpec,
};

/// Validated limits, as `Config` keeps them.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Inbound limits as configured. The server adds the principals it knows (issued clients,
    /// admins) when it builds the limiters, which checks their names (they exist only at run time).
    pub rate: RateSpec,
    pub outbound: Option<Arc<OutboundBudget>>,
    pub breaker: ValidBreakerSpec,
    pub retry: Arc<RetryPolicy>,
    pub retry_budget: Arc<RetryBudget>,
    pub backend_timeout: Duration,
}

fn window(rate: f64, burst: Option<u32>) -> WindowSpec {
    let burst = burst.unwrap_or_else(|| {
        if rate.is_finite() && rate >= 1.0 {
            rate.ceil() as u32
        } else {
            1
        }
    });
    WindowSpec::per_second(rate, burst)
}

/// Rate limits, outbound budget, breaker and retries, each validated by its own constructor.
pub(super) fn limits(cli: &Options, file: &Options) -> anyhow::Result<Limits> {
    let mut rate = if cli
        .emulate_aws_quotas
        .or(file.emulate_aws_quotas)
        .unwrap_or(false)
    {
        RateSpec::emulate_aws_quotas(crate::limits::rate_spec::AWS_SYMMETRIC_QUOTA_PER_SECOND)
    } else {
        RateSpec::default()
    };
    if let Some(r) = cli.rate_limit_global.or(file.rate_limit_global) {
        rate.global = vec![window(
            r,
            cli.rate_limit_global_burst.or(file.rate_limit_global_burst),
        )];
    }
    if let Some(r) = cli
        .rate_limit_per_principal
        .or(file.rate_limit_per_principal)
    {
        rate.principal_default = vec![window(
            r,
            cli.rate_limit_per_principal_burst
                .or(file.rate_limit_per_principal_burst),
        )];
    }
    if let Some(r) = cli.rate_limit_per_key.or(file.rate_limit_per_key) {
        rate.key_default = vec![window(
            r,
            cli.rate_limit_per_key_burst
                .or(file.rate_limit_per_key_burst),
        )];
    }
    for (name, r) in file.rate_limit_principals.clone().unwrap_or_default() {
        rate.principals.push(name.clone());
        rate.principal_overrides.insert(name, vec![window(r, None)]);
    }
    ValidRateSpec::try_from(rate.clone()).map_err(|e| anyhow::anyhow!("{e}"))?;
    let outbound = cli
        .outbound_per_second
        .or(file.outbound_per_second)
        .map(|r| BudgetSpec {
            per_second: r,
            burst: if r >= 1.0 { r.ceil() as u32 } else { 1 },
        });
    let outbound = outbound
        .map(OutboundBudget::new)
        .transpose()
        .map_err(|e| anyhow::anyhow!("outbound_per_second: {e}"))?
        .map(Arc::new);
    let defaults = BreakerSpec::default();
    let breaker = BreakerSpec {
        consecutive_failures: cli
            .breaker_consecutive_failures
            .or(file.breaker_consecutive_failures)
            .unwrap_or(defaults.consecutive_failures),
        cool_down: cli
            .breaker_cool_down_secs
            .or(file.breaker_cool_down_secs)
            .map_or(defaults.cool_down, Duration::from_secs),
        ..defaults
    };
    let breaker =
        ValidBreakerSpec::try_from(breaker).map_err(|e| anyhow::anyhow!("circuit breaker: {e}"))?;
    let d = RetrySpec::default();
    let retry = RetrySpec {
        base: cli
            .retry_base_ms
            .or(file.retry_base_ms)
            .map_or(d.base, Duration::from_millis),
        cap: cli
            .retry_cap_ms
            .or(file.retry_cap_ms)
            .map_or(d.cap, Duration::from_millis),
        max_attempts: cli
            .retry_max_attempts
            .or(file.retry_max_attempts)
            .unwrap_or(d.max_attempts),
        ..d
    };
    let retry = RetryPolicy::new(retry).map_err(|e| anyhow::anyhow!("retries: {e}"))?;
    let retry_budget = RetryBudget::new(RetryBudgetSpec::default())
        .map_err(|e| anyhow::anyhow!("retry budget: {e}"))?;
    let timeout = Duration::from_millis(ranged(
        "backend_timeout_ms",
        cli.backend_timeout_ms.or(file.backend_timeout_ms),
        5000,
        1,
        600_000,
    )?);
    Ok(Limits {
        rate,
        outbound,
        breaker,
        retry: Arc::new(retry),
        retry_budget: Arc::new(retry_budget),
        backend_timeout: timeout,
    })
}
