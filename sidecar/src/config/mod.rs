//! Configuration in two stages: [`Options`] (what the command line, the environment and a TOML file
//! say, all optional) and [`Config`] (validated, with defaults applied). Precedence is flag >
//! environment > file > default; clap handles the first two, [`Config::load`] the rest.
//!
//! Secrets never come from flags (they would show in `ps`): the root key comes from the data
//! directory, a file, or the `KMS_SIDECAR_ROOT_KEY` environment variable.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, bail};
use secrecy::SecretString;
use serde::Deserialize;

use crate::auth::admin_token::AdminToken;
use crate::backend::pkcs11::Pkcs11Settings;
use crate::backend::upstream::{self, UpstreamSettings};
use crate::cache::CacheSettings;
use crate::cache::pool::PoolSettings;
use crate::cache::reuse::ReuseSettings;
use crate::datadir::RootKeySource;
use crate::keys::ArnScope;
use crate::keys::metrics::RotationPolicy;
use crate::keys::registry::{RegistryOptions, RegistrySettings};
use crate::limits::RetryBudgetSpec;
use crate::limits::{
    BreakerSpec, BudgetSpec, OutboundBudget, RateSpec, RetryPolicy, RetrySpec, ValidRateSpec,
    WindowSpec,
};
use crate::observe::audit::AuditConfig;
use crate::observe::{LogFormat, MetricsSettings};
use crate::tls::TlsSource;

mod cli;

pub use cli::{AuditCommand, Cli, ClientsCommand, Command, Options, RegistryCommand};

/// Default port of the KMS API.
pub const DEFAULT_KMS_PORT: u16 = 7300;
/// Default port of the admin API (`/metrics`, `/healthz`).
pub const DEFAULT_ADMIN_PORT: u16 = 7301;
/// Environment variable that may hold the root key (64 hex characters).
pub const ROOT_KEY_ENV: &str = "KMS_SIDECAR_ROOT_KEY";

/// Which key backend holds the master keys.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum BackendKind {
    Embedded,
    Pkcs11,
    Upstream,
}

/// The validated backend choice.
#[derive(Debug, Clone)]
pub enum BackendConfig {
    Embedded,
    Pkcs11(Pkcs11Settings),
    Upstream(UpstreamSettings),
}

/// Environment variable that may hold the PKCS#11 user PIN.
pub const PKCS11_PIN_ENV: &str = "KMS_SIDECAR_PKCS11_PIN";
/// The admin API's bearer token (environment only; `admin_token_file` is the other way).
pub const ADMIN_TOKEN_ENV: &str = "KMS_SIDECAR_ADMIN_TOKEN";
/// The PKCS#11 module used when none is configured.
pub const DEFAULT_PKCS11_MODULE: &str = "/usr/lib/softhsm/libsofthsm2.so";

/// Environment variable that may hold the upstream KMS secret access key.
pub const UPSTREAM_SECRET_ENV: &str = "KMS_SIDECAR_UPSTREAM_SECRET_ACCESS_KEY";
/// The upstream alias prefix used when none is configured.
pub const DEFAULT_UPSTREAM_ALIAS_PREFIX: &str = "kms-sidecar";

/// A region name such as `us-east-1`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Region(String);

impl Region {
    pub fn parse(s: &str) -> anyhow::Result<Self> {
        let parts: Vec<&str> = s.split('-').collect();
        let ok = parts.len() >= 3
            && parts.iter().all(|p| {
                !p.is_empty()
                    && p.bytes()
                        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
            })
            && parts
                .last()
                .is_some_and(|p| p.bytes().all(|b| b.is_ascii_digit()));
        if !ok {
            bail!("region {s:?} is not a region name like us-east-1");
        }
        Ok(Self(s.to_string()))
    }
}

/// A 12-digit account id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AccountId(String);

impl AccountId {
    pub fn parse(s: &str) -> anyhow::Result<Self> {
        if s.len() != 12 || !s.bytes().all(|b| b.is_ascii_digit()) {
            bail!("account_id {s:?} must be 12 digits");
        }
        Ok(Self(s.to_string()))
    }
}

/// Secrets that come only from the environment (never flags), passed in so tests need not touch
/// the process environment.
#[derive(Default)]
pub struct Secrets {
    /// [`ROOT_KEY_ENV`].
    pub root_key: Option<String>,
    /// [`PKCS11_PIN_ENV`].
    pub pkcs11_pin: Option<String>,
    /// [`ADMIN_TOKEN_ENV`].
    pub admin_token: Option<String>,
    /// [`UPSTREAM_SECRET_ENV`].
    pub upstream_secret: Option<String>,
}

impl std::fmt::Debug for Secrets {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secrets([redacted])")
    }
}

impl Secrets {
    /// Reads them from the process environment.
    pub fn from_env() -> Self {
        Self {
            root_key: std::env::var(ROOT_KEY_ENV).ok(),
            pkcs11_pin: std::env::var(PKCS11_PIN_ENV).ok(),
            admin_token: std::env::var(ADMIN_TOKEN_ENV).ok(),
            upstream_secret: std::env::var(UPSTREAM_SECRET_ENV).ok(),
        }
    }
}

/// A validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    pub listen: SocketAddr,
    pub admin_listen: SocketAddr,
    pub data_dir: PathBuf,
    pub region: Region,
    pub account_id: AccountId,
    pub root_key: RootKeySource,
    pub log_format: LogFormat,
    pub log_level: String,
    pub otlp_endpoint: Option<String>,
    pub max_body_bytes: usize,
    pub max_clock_skew: Duration,
    pub maintenance_interval: Duration,
    pub shutdown_grace: Duration,
    pub backend: BackendConfig,
    pub metrics: MetricsSettings,
    pub admin_principals: Vec<String>,
    pub audit: AuditConfig,
    pub cache: CacheSettings,
    pub cache_invalidate_on_rotation: bool,
    pub pool: PoolSettings,
    /// Opt-in data-key reuse.
    pub reuse: ReuseSettings,
    /// Inbound limits; the server adds the principals it knows before validating for use.
    pub rate: RateSpec,
    pub outbound: Option<BudgetSpec>,
    pub breaker: BreakerSpec,
    pub retry: RetrySpec,
    pub retry_budget: RetryBudgetSpec,
    pub backend_timeout: Duration,
    /// HTTPS on the KMS port, when enabled.
    pub tls: Option<TlsSource>,
    /// Where the key registry lives (`keys/registry/`).
    pub registry: RegistrySettings,
    /// Bearer token the admin API requires (all but `/healthz` and `/readyz`), when set.
    pub admin_token: Option<AdminToken>,
    /// Whether `/v1/faults` may inject faults into backend calls (off: the injector is not built).
    pub faults_enabled: bool,
}

fn ranged(name: &str, value: Option<u64>, default: u64, min: u64, max: u64) -> anyhow::Result<u64> {
    let v = value.unwrap_or(default);
    if v < min || v > max {
        bail!("{name} = {v} is out of range {min}..={max}");
    }
    Ok(v)
}

fn addr(name: &str, value: Option<&str>, port: u16) -> anyhow::Result<SocketAddr> {
    match value {
        None => Ok(SocketAddr::from(([127, 0, 0, 1], port))),
        Some(s) => s
            .parse()
            .with_context(|| format!("{name} = {s:?} is not an address like 127.0.0.1:{port}")),
    }
}

/// A per-second window with a burst (one second's worth by default).
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

type Resilience = (
    RateSpec,
    Option<BudgetSpec>,
    BreakerSpec,
    RetrySpec,
    Duration,
);

/// Rate limits, outbound budget, breaker and retries, each validated by its own constructor.
fn resilience(cli: &Options, file: &Options) -> anyhow::Result<Resilience> {
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
    if let Some(spec) = outbound {
        OutboundBudget::new(spec).map_err(|e| anyhow::anyhow!("outbound_per_second: {e}"))?;
    }
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
    breaker
        .validate()
        .map_err(|e| anyhow::anyhow!("circuit breaker: {e}"))?;
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
    RetryPolicy::new(retry).map_err(|e| anyhow::anyhow!("retries: {e}"))?;
    let timeout = Duration::from_millis(ranged(
        "backend_timeout_ms",
        cli.backend_timeout_ms.or(file.backend_timeout_ms),
        5000,
        1,
        600_000,
    )?);
    Ok((rate, outbound, breaker, retry, timeout))
}

/// A secret from its environment variable, else from a file (trimmed), else an error naming both.
fn secret(
    env_value: Option<String>,
    file: Option<PathBuf>,
    needs: &str,
    env: &str,
    file_option: &str,
) -> anyhow::Result<SecretString> {
    match (env_value, file) {
        (Some(value), _) => Ok(SecretString::from(value)),
        (None, Some(path)) => {
            let text = zeroize::Zeroizing::new(
                std::fs::read_to_string(&path)
                    .with_context(|| format!("cannot read {file_option} {}", path.display()))?,
            );
            Ok(SecretString::from(text.trim().to_string()))
        }
        (None, None) => bail!("{needs}: set {env} or {file_option}"),
    }
}

/// The upstream backend's settings; the endpoint and prefix are checked here so a bad value stops
/// the start with a message naming the option.
fn upstream_settings(
    cli: &Options,
    file: &Options,
    secret_env: Option<String>,
    default_region: &str,
    timeout: Duration,
) -> anyhow::Result<UpstreamSettings> {
    let endpoint = cli
        .upstream_endpoint
        .clone()
        .or_else(|| file.upstream_endpoint.clone());
    if let Some(url) = &endpoint {
        upstream::check_endpoint(url)?;
    }
    let region = cli
        .upstream_region
        .clone()
        .or_else(|| file.upstream_region.clone())
        .unwrap_or_else(|| default_region.to_string());
    Region::parse(&region).context("upstream_region")?;
    let access_key_id = cli
        .upstream_access_key_id
        .clone()
        .or_else(|| file.upstream_access_key_id.clone())
        .filter(|id| !id.is_empty())
        .context("backend upstream needs upstream_access_key_id (--upstream-access-key-id)")?;
    let secret_access_key = secret(
        secret_env,
        cli.upstream_secret_access_key_file
            .clone()
            .or_else(|| file.upstream_secret_access_key_file.clone()),
        "backend upstream needs a secret access key",
        UPSTREAM_SECRET_ENV,
        "upstream_secret_access_key_file",
    )?;
    let alias_prefix = cli
        .upstream_alias_prefix
        .clone()
        .or_else(|| file.upstream_alias_prefix.clone())
        .unwrap_or_else(|| DEFAULT_UPSTREAM_ALIAS_PREFIX.to_string());
    upstream::check_alias_prefix(&alias_prefix)?;
    Ok(UpstreamSettings {
        endpoint,
        region,
        access_key_id,
        secret_access_key,
        alias_prefix,
        timeout,
    })
}

/// The largest config file read; a real one is a few kilobytes, and a path naming a device that
/// never ends (`/dev/zero`) must fail instead of filling memory.
const MAX_CONFIG_BYTES: u64 = 1 << 20;

fn read_file(path: &Path) -> anyhow::Result<Options> {
    use std::io::Read as _;
    let mut text = String::new();
    std::fs::File::open(path)
        .and_then(|f| f.take(MAX_CONFIG_BYTES + 1).read_to_string(&mut text))
        .with_context(|| format!("cannot read config file {}", path.display()))?;
    if text.len() as u64 > MAX_CONFIG_BYTES {
        bail!(
            "config file {} is larger than {MAX_CONFIG_BYTES} bytes",
            path.display()
        );
    }
    toml::from_str(&text).with_context(|| format!("config file {} is invalid", path.display()))
}

impl Config {
    /// Merges flags/environment over the file (if any) over defaults, and validates.
    /// `root_key_env` is the value of [`ROOT_KEY_ENV`], passed in so tests need not touch the process
    /// environment.
    pub fn load(cli: &Options, secrets: Secrets) -> anyhow::Result<Self> {
        let file = match &cli.config {
            Some(path) => read_file(path)?,
            None => Options::default(),
        };
        Self::merge(cli.clone(), file, secrets)
    }

    fn merge(cli: Options, file: Options, secrets: Secrets) -> anyhow::Result<Self> {
        let root_key_env = secrets.root_key;
        let (rate, outbound, breaker, retry, backend_timeout) = resilience(&cli, &file)?;
        let registry = registry_settings(&cli, &file)?;
        let backend_kind = cli
            .backend
            .or(file.backend)
            .unwrap_or(BackendKind::Embedded);
        let upstream = match backend_kind {
            BackendKind::Upstream => Some(upstream_settings(
                &cli,
                &file,
                secrets.upstream_secret,
                cli.region
                    .as_deref()
                    .or(file.region.as_deref())
                    .unwrap_or("us-east-1"),
                backend_timeout,
            )?),
            _ => None,
        };
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
        let root_key = match (root_key_env, cli.root_key_file.or(file.root_key_file)) {
            (Some(hex), _) => RootKeySource::Hex(SecretString::from(hex)),
            (None, Some(path)) => RootKeySource::File(path),
            (None, None) => RootKeySource::DataDir,
        };
        let log_level = cli
            .log_level
            .or(file.log_level)
            .unwrap_or_else(|| "info".to_string());
        tracing_subscriber::EnvFilter::try_new(&log_level)
            .with_context(|| format!("log_level {log_level:?} is not a valid filter"))?;
        let backend = match (backend_kind, upstream) {
            (BackendKind::Upstream, Some(settings)) => BackendConfig::Upstream(settings),
            (BackendKind::Upstream, None) => bail!("backend upstream has no settings"),
            (BackendKind::Embedded, _) => BackendConfig::Embedded,
            (BackendKind::Pkcs11, _) => {
                let token_label = cli
                    .pkcs11_token_label
                    .or(file.pkcs11_token_label)
                    .context("backend pkcs11 needs pkcs11_token_label (--pkcs11-token-label)")?;
                let pin = secret(
                    secrets.pkcs11_pin,
                    cli.pkcs11_pin_file.or(file.pkcs11_pin_file),
                    "backend pkcs11 needs a PIN",
                    PKCS11_PIN_ENV,
                    "pkcs11_pin_file",
                )?;
                BackendConfig::Pkcs11(Pkcs11Settings {
                    module: cli
                        .pkcs11_module
                        .or(file.pkcs11_module)
                        .unwrap_or_else(|| PathBuf::from(DEFAULT_PKCS11_MODULE)),
                    token_label,
                    pin,
                    label_prefix: cli
                        .pkcs11_key_label_prefix
                        .or(file.pkcs11_key_label_prefix)
                        .unwrap_or_else(|| "kms-sidecar".to_string()),
                    sessions: ranged(
                        "pkcs11_sessions",
                        cli.pkcs11_sessions.or(file.pkcs11_sessions),
                        2,
                        1,
                        64,
                    )? as usize,
                })
            }
        };
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
        let data_dir = cli
            .data_dir
            .or(file.data_dir)
            .unwrap_or_else(|| PathBuf::from("kms-sidecar-data"));
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
        let admin_principals = cli
            .admin_principals
            .or(file.admin_principals)
            .unwrap_or_else(|| vec!["default".to_string()]);
        if admin_principals.iter().any(|p| p.is_empty()) {
            bail!("admin_principals must not contain an empty name");
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
        Ok(Self {
            registry,
            tls,
            admin_token,
            reuse,
            rate,
            outbound,
            breaker,
            retry,
            retry_budget: RetryBudgetSpec::default(),
            backend_timeout,
            faults_enabled: cli.faults_enabled.or(file.faults_enabled).unwrap_or(false),
            backend,
            metrics,
            admin_principals,
            audit,
            cache,
            cache_invalidate_on_rotation: cli
                .cache_invalidate_on_rotation
                .or(file.cache_invalidate_on_rotation)
                .unwrap_or(true),
            pool: PoolSettings {
                size: pool_size as usize,
                low_watermark: low_watermark as usize,
            },
            listen,
            admin_listen,
            data_dir,
            region: Region::parse(cli.region.or(file.region).as_deref().unwrap_or("us-east-1"))?,
            account_id: AccountId::parse(
                cli.account_id
                    .or(file.account_id)
                    .as_deref()
                    .unwrap_or("111122223333"),
            )?,
            root_key,
            log_format: cli
                .log_format
                .or(file.log_format)
                .unwrap_or(LogFormat::Text),
            log_level,
            otlp_endpoint: cli.otlp_endpoint.or(file.otlp_endpoint),
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
            maintenance_interval: Duration::from_secs(ranged(
                "maintenance_interval_secs",
                cli.maintenance_interval_secs
                    .or(file.maintenance_interval_secs),
                60,
                1,
                86_400,
            )?),
            shutdown_grace: Duration::from_secs(ranged(
                "shutdown_grace_secs",
                cli.shutdown_grace_secs.or(file.shutdown_grace_secs),
                30,
                0,
                600,
            )?),
        })
    }

    /// The region and account for ARNs.
    pub fn arn_scope(&self) -> ArnScope {
        ArnScope {
            region: self.region.0.clone(),
            account: self.account_id.0.clone(),
        }
    }
}

#[cfg(test)]
mod fuzz_tests;

#[cfg(test)]
mod tests;

/// The registry options, flag over file; the password only from the environment or its file.
fn registry_settings(cli: &Options, file: &Options) -> anyhow::Result<RegistrySettings> {
    let pick = |a: &Option<String>, b: &Option<String>| a.clone().or_else(|| b.clone());
    let path = |a: &Option<PathBuf>, b: &Option<PathBuf>| a.clone().or_else(|| b.clone());
    RegistrySettings::build(RegistryOptions {
        registry: pick(&cli.registry, &file.registry),
        etcd_endpoints: pick(&cli.etcd_endpoints, &file.etcd_endpoints),
        etcd_prefix: pick(&cli.etcd_prefix, &file.etcd_prefix),
        etcd_ca_file: path(&cli.etcd_ca_file, &file.etcd_ca_file),
        etcd_cert_file: path(&cli.etcd_cert_file, &file.etcd_cert_file),
        etcd_key_file: path(&cli.etcd_key_file, &file.etcd_key_file),
        etcd_user: pick(&cli.etcd_user, &file.etcd_user),
        etcd_password_file: path(&cli.etcd_password_file, &file.etcd_password_file),
        etcd_password: std::env::var("KMS_SIDECAR_ETCD_PASSWORD")
            .ok()
            .map(SecretString::from),
    })
}
