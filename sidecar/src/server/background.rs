//! Work beside the requests: the client-credential reload (once a second, which also rebuilds
//! the rate limiters for new principals and charges the per-key cost), key maintenance (rotation,
//! deletion) on its interval, and the SIGHUP reload of inbound rate limits and proxy mode's local
//! policy ([`Reloader`]).

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::watch;

use crate::auth::clients::ClientStore;
use crate::config::Config;
use crate::core::{Core, Metrics};
use crate::keys::{self, KeyStore};
use crate::limits::{RateLimits, RateSpec, ValidRateSpec};

/// Builds the inbound rate limits for `spec` and the principals known now (issued clients and
/// admins get their own limiters; any other name shares `other`), and exports them.
pub(super) fn build_rate_limits(
    spec: &RateSpec,
    admins: &[String],
    clients: &ClientStore,
    metrics: &Metrics,
) -> anyhow::Result<RateLimits> {
    let mut spec = spec.clone();
    spec.principals.extend(clients.names());
    spec.principals.extend(admins.iter().cloned());
    spec.principals.sort();
    spec.principals.dedup();
    let valid = ValidRateSpec::try_from(spec).map_err(|e| anyhow::anyhow!("rate limits: {e}"))?;
    let limits = RateLimits::new(&valid).counted(&metrics.rate);
    limits.export(&metrics.rate);
    Ok(limits)
}

/// Applies a reloaded configuration to a running sidecar (SIGHUP). Only the inbound rate limits and
/// proxy mode's local policy change without a restart; they are validated first, and a bad file
/// keeps the running settings.
#[derive(Clone)]
pub struct Reloader {
    pub(super) core: Arc<Core>,
    pub(super) clients: Arc<ClientStore>,
    /// The XKS proxy front-end, whose prefixes, credentials and keys a reload swaps.
    pub(super) xks: Option<Arc<crate::frontend::xks::Xks>>,
}

impl std::fmt::Debug for Reloader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Reloader")
    }
}

impl Reloader {
    /// Swaps in `config`'s inbound rate limits. Limiter state restarts (a full burst is available
    /// again), as when clients change.
    pub fn apply(&self, config: &Config) -> anyhow::Result<()> {
        let core = &self.core;
        let Some(rate) = core.rate() else {
            anyhow::bail!("this sidecar runs without rate limiting");
        };
        // XKS credentials first: rotating them is what a reload is most often for.
        match (&self.xks, config.xks()) {
            (Some(xks), Some(settings)) => {
                xks.reload(super::xks_options(core, config, settings));
                tracing::info!(
                    prefixes = settings.prefixes.len(),
                    keys = settings.keys.len(),
                    "XKS prefixes, credentials and keys reloaded"
                );
            }
            (None, None) => {}
            _ => tracing::warn!("turning the XKS proxy on or off needs a restart"),
        }
        let spec = config.inbound_rate_spec();
        let limits = build_rate_limits(&spec, core.admins(), &self.clients, core.metrics())?;
        // Proxy mode's local policy is read again too; everything is validated before anything
        // changes, so a bad policy file keeps the running policy and the running limits.
        let policy = match (core.proxy(), config.proxy()) {
            (Some(proxy), Some(settings)) => Some((proxy, settings.policy()?)),
            _ => None,
        };
        rate.spec.store(Arc::new(spec));
        rate.limits.store(Arc::new(limits));
        if let Some((proxy, policy)) = policy {
            proxy.set_policy(policy);
            tracing::info!("proxy policy reloaded");
        }
        core.metrics().history.events().record(
            crate::observe::history::EventKind::Reload,
            "configuration reloaded: rate limits",
        );
        tracing::info!(
            "rate limits reloaded; other settings (outbound budget, breaker, cache, listeners) need a restart"
        );
        Ok(())
    }
}

/// Reloads client credentials every second and runs key maintenance on its interval.
pub(super) async fn background(
    core: Arc<Core>,
    clients: Arc<ClientStore>,
    interval: Duration,
    mut stop: watch::Receiver<bool>,
) {
    let mut clients_tick = tokio::time::interval(Duration::from_secs(1));
    let mut maintenance_tick = tokio::time::interval(interval);
    clients_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    maintenance_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let keys: &Arc<KeyStore> = core.keys();
    let mut last_charge = Instant::now();
    loop {
        tokio::select! {
            _ = stop.changed() => return,
            _ = clients_tick.tick() => {
                // Keys cost money by the month: charge the time since the last tick.
                let now = Instant::now();
                core.metrics().backend.charge_keys(keys.snapshot().keys.len(), now - last_charge);
                last_charge = now;
                match clients.reload_if_changed() {
                    Ok(true) => {
                        tracing::info!("client credentials reloaded");
                        // New principals get limiters of their own (counters restart; see docs/resilience.md).
                        if let Some(rate) = core.rate() {
                            match build_rate_limits(&rate.spec.load(), core.admins(), &clients, core.metrics()) {
                                Ok(limits) => rate.limits.store(Arc::new(limits)),
                                Err(e) => tracing::error!(error = %format!("{e:#}"), "rate limits not rebuilt"),
                            }
                        }
                    }
                    Ok(false) => {}
                    Err(e) => tracing::error!(error = %format!("{e:#}"), "client credentials reload failed; keeping the previous set"),
                }
            }
            _ = maintenance_tick.tick() => {
                let report = keys.maintain(keys::now()).await;
                if !report.rotated.is_empty() || !report.deleted.is_empty() {
                    tracing::info!(rotated = report.rotated.len(), deleted = report.deleted.len(), "key maintenance");
                }
            }
        }
    }
}
