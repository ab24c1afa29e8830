//! Settings of the sidecar's own service: its listeners and what guards them (TLS, the admin token,
//! body and clock-skew bounds), its caches, and what it tells operators (metrics, audit log, logs).

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use anyhow::{Context, bail};

use super::{
    ADMIN_TOKEN_ENV, DEFAULT_ADMIN_PORT, DEFAULT_KMS_PORT, Options, Secrets, addr, ranged,
};
use crate::auth::admin_token::AdminToken;
use crate::cache::CacheSettings;
use crate::cache::pool::PoolSettings;
use crate::cache::reuse::ReuseSettings;
use crate::keys::metrics::RotationPolicy;
use crate::observe::audit::AuditConfig;
use crate::observe::{LogFormat, MetricsSettings};
use crate::tls::TlsSource;

/// Where the sidecar listens and what guards its ports.
#[derive(Debug, Clone)]
pub(super) struct Endpoints {
    pub listen: SocketAddr,
    pub admin_listen: SocketAddr,
    pub tls: Option<TlsSource>,
    pub admin_token: Option<AdminToken>,
    pub max_body_bytes: usize,
    pub max_clock_skew: Duration,
}

pub(super) fn endpoints(
    cli: &Options,
    file: &Options,
    secrets: &Secrets,
) -> anyhow::Result<Endpoints> {
    let (cli, file) = (cli.clone(), file.clone());
    let listen = addr(
        "listen",
        cli.listen.or(file.listen).as_deref(),
        DEFAULT_KMS_PORT,
    )?;
    let admin_listen = addr(
        "admin_listen",
        cli.admin_listen.or(file.admin_listen).as_deref(),
        DEFAULT_ADMIN_PORT,
    )?;
    if listen.port() != 0 && listen == admin_listen {
        bail!("listen and admin_listen must differ (both are {listen})");
    }
    let admin_token = match (
        secrets.admin_token.as_deref(),
        cli.admin_token_file.or(file.admin_token_file),
    ) {
        (Some(token), _) => Some(AdminToken::new(token).context(ADMIN_TOKEN_ENV)?),
        (None, Some(path)) => Some(AdminToken::from_file(&path)?),
        (None, None) => None,
    };
    let tls = match (
        cli.tls.or(file.tls).unwrap_or(false),
        cli.tls_cert.or(file.tls_cert),
        cli.tls_key.or(file.tls_key),
    ) {
        (false, None, None) => None,
        (false, _, _) => bail!("tls_cert and tls_key are set but tls is not enabled (--tls)"),
        (true, None, None) => Some(TlsSource::SelfSigned),
        (true, Some(cert), Some(key)) => Some(TlsSource::Files { cert, key }),
        (true, _, _) => bail!("tls_cert and tls_key go together: give both or neither"),
    };
    Ok(Endpoints {
        listen,
        admin_listen,
        tls,
        admin_token,
        max_body_bytes: ranged(
            "max_body_bytes",
            cli.max_body_bytes.or(file.max_body_bytes),
            65_536,
            1024,
            1_048_576,
        )? as usize,
        max_clock_skew: Duration::from_secs(ranged(
            "max_clock_skew_secs",
            cli.max_clock_skew_secs.or(file.max_clock_skew_secs),
            300,
            1,
            3600,
        )?),
    })
}

/// The decrypt cache, the data-key pool and opt-in data-key reuse.
#[derive(Debug, Clone)]
pub(super) struct Caching {
    pub cache: CacheSettings,
    pub invalidate_on_rotation: bool,
    pub pool: PoolSettings,
    pub reuse: ReuseSettings,
}

pub(super) fn caching(cli: &Options, file: &Options) -> anyhow::Result<Caching> {
    let (cli, file) = (cli.clone(), file.clone());
    let reuse = ReuseSettings {
        keys: cli
            .data_key_reuse_keys
            .or(file.data_key_reuse_keys)
            .unwrap_or_default()
            .into_iter()
            .collect(),
        max_age: Duration::from_secs(ranged(
            "data_key_reuse_max_age_secs",
            cli.data_key_reuse_max_age_secs
                .or(file.data_key_reuse_max_age_secs),
            300,
            1,
            86_400,
        )?),
        max_uses: ranged(
            "data_key_reuse_max_uses",
            cli.data_key_reuse_max_uses.or(file.data_key_reuse_max_uses),
            100,
            1,
            1_000_000,
        )?,
        max_entries: ranged(
            "data_key_reuse_max_entries",
            cli.data_key_reuse_max_entries
                .or(file.data_key_reuse_max_entries),
            10_000,
            1,
            1_000_000,
        )? as usize,
    };
    if reuse
        .keys
        .iter()
        .any(|k| k.is_empty() || k.starts_with("arn:"))
    {
        bail!(
            "data_key_reuse_keys takes key ids or alias names (alias/...), not empty names or ARNs"
        );
    }
    let cache = CacheSettings {
        ttl: Duration::from_secs(ranged(
            "cache_ttl_secs",
            cli.cache_ttl_secs.or(file.cache_ttl_secs),
            300,
            1,
            86_400,
        )?),
        max_entries: ranged(
            "cache_max_entries",
            cli.cache_max_entries.or(file.cache_max_entries),
            10_000,
            0,
            10_000_000,
        )?,
        max_bytes: ranged(
            "cache_max_bytes",
            cli.cache_max_bytes.or(file.cache_max_bytes),
            16 << 20,
            0,
            16 << 30,
        )?,
        stale_grace: Duration::from_secs(ranged(
            "cache_stale_grace_secs",
            cli.cache_stale_grace_secs.or(file.cache_stale_grace_secs),
            300,
            0,
            86_400,
        )?),
    };
    let pool_size = ranged(
        "data_key_pool_size",
        cli.data_key_pool_size.or(file.data_key_pool_size),
        16,
        0,
        1024,
    )?;
    let low_watermark = ranged(
        "data_key_pool_low_watermark",
        cli.data_key_pool_low_watermark
            .or(file.data_key_pool_low_watermark),
        pool_size / 2,
        0,
        pool_size,
    )?;
    Ok(Caching {
        cache,
        invalidate_on_rotation: cli
            .cache_invalidate_on_rotation
            .or(file.cache_invalidate_on_rotation)
            .unwrap_or(true),
        pool: PoolSettings {
            size: pool_size as usize,
            low_watermark: low_watermark as usize,
        },
        reuse,
    })
}

/// Metrics, the audit log and logs.
#[derive(Debug, Clone)]
pub(super) struct Observability {
    pub metrics: MetricsSettings,
    pub audit: AuditConfig,
    pub log_format: LogFormat,
    pub log_level: String,
    pub otlp_endpoint: Option<String>,
}

pub(super) fn observability(
    cli: &Options,
    file: &Options,
    data_dir: &Path,
) -> anyhow::Result<Observability> {
    let (cli, file) = (cli.clone(), file.clone());
    let log_level = cli
        .log_level
        .or(file.log_level)
        .unwrap_or_else(|| "info".to_string());
    tracing_subscriber::EnvFilter::try_new(&log_level)
        .with_context(|| format!("log_level {log_level:?} is not a valid filter"))?;
    let price = |name: &str, v: Option<f64>, default: f64| -> anyhow::Result<f64> {
        let v = v.unwrap_or(default);
        if !v.is_finite() || v < 0.0 {
            bail!("{name} = {v} must be a non-negative number");
        }
        Ok(v)
    };
    let metrics = MetricsSettings {
        max_keys: ranged(
            "metrics_max_keys",
            cli.metrics_max_keys.or(file.metrics_max_keys),
            100,
            1,
            10_000,
        )? as usize,
        rotation: RotationPolicy {
            grace_seconds: ranged(
                "rotation_grace_days",
                cli.rotation_grace_days.or(file.rotation_grace_days),
                1,
                0,
                365,
            )? as f64
                * 86_400.0,
            required: cli
                .rotation_required
                .or(file.rotation_required)
                .unwrap_or(false),
        },
        price_per_10k_requests: price(
            "price_per_10k_requests",
            cli.price_per_10k_requests.or(file.price_per_10k_requests),
            crate::backend::metrics::DEFAULT_PRICE_PER_10K_REQUESTS,
        )?,
        price_per_key_month: price(
            "price_per_key_month",
            cli.price_per_key_month.or(file.price_per_key_month),
            crate::backend::metrics::DEFAULT_PRICE_PER_KEY_MONTH,
        )?,
    };
    let mut audit = AuditConfig::new(
        cli.audit_dir
            .or(file.audit_dir)
            .unwrap_or_else(|| data_dir.join("audit")),
    );
    audit.fsync = cli.audit_fsync.or(file.audit_fsync).unwrap_or(audit.fsync);
    audit.on_failure = cli
        .audit_on_failure
        .or(file.audit_on_failure)
        .unwrap_or(audit.on_failure);
    audit.max_bytes = ranged(
        "audit_max_bytes",
        cli.audit_max_bytes.or(file.audit_max_bytes),
        audit.max_bytes,
        4096,
        10 * 1024 * 1024 * 1024,
    )?;
    audit.include_context_values = cli
        .audit_include_context_values
        .or(file.audit_include_context_values)
        .unwrap_or(false);
    Ok(Observability {
        metrics,
        audit,
        log_format: cli
            .log_format
            .or(file.log_format)
            .unwrap_or(LogFormat::Text),
        log_level,
        otlp_endpoint: cli.otlp_endpoint.or(file.otlp_endpoint),
    })
}
