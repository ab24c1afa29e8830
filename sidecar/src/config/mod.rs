//! Configuration in two stages: [`Options`] (what the command line, the environment and a TOML file
//! say, all optional) and [`Config`] (validated, with defaults applied). Precedence is flag >
//! environment > file > default; clap handles the first two, [`Config::load`] the rest.
//!
//! Secrets never come from flags (they would show in `ps`): the root key comes from the data
//! directory, a file, or the `KMS_SIDECAR_ROOT_KEY` environment variable.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use secrecy::SecretString;
use serde::Deserialize;

use crate::auth::admin_token::AdminToken;
use crate::backend::pkcs11::Pkcs11Settings;
use crate::backend::upstream::UpstreamSettings;
use crate::cache::CacheSettings;
use crate::cache::pool::PoolSettings;
use crate::cache::reuse::ReuseSettings;
use crate::datadir::RootKeySource;
use crate::keys::ArnScope;
use crate::keys::registry::{RegistryOptions, RegistrySettings};
use crate::limits::{OutboundBudget, RateSpec, RetryBudget, RetryPolicy, ValidBreakerSpec};
use crate::observe::audit::AuditConfig;
use crate::observe::{LogFormat, MetricsSettings};
use crate::tls::TlsSource;

mod backend;
mod limits;
mod service;

pub use kmsv2::KmsV2Settings;
pub use limits::Limits;

mod cli;
mod kmsv2;
pub mod proxy;
pub mod xks;

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

/// A validated configuration. Its fields are private: every value in it passed its check, and
/// nothing outside this module can change one afterwards. Read them through the accessors.
#[derive(Debug, Clone)]
pub struct Config {
    data_dir: PathBuf,
    region: Region,
    account_id: AccountId,
    root_key: RootKeySource,
    maintenance_interval: Duration,
    shutdown_grace: Duration,
    backend: BackendConfig,
    admin_principals: Vec<String>,
    /// Whether `/v1/faults` may inject faults into backend calls (off: the injector is not built).
    faults_enabled: bool,
    /// Proxy mode's settings (`None`: local mode).
    proxy: Option<proxy::ProxyConfig>,
    /// The Kubernetes KMS v2 plugin (gRPC on a Unix socket), when `kmsv2_socket` is set.
    kmsv2: Option<KmsV2Settings>,
    /// The AWS KMS External Key Store proxy API, when `xks_listen` is set (`config/xks.rs`).
    xks: Option<xks::XksSettings>,
    /// Where the key registry lives (`keys/registry/`).
    registry: RegistrySettings,
    endpoints: service::Endpoints,
    caching: service::Caching,
    observability: service::Observability,
    limits: Limits,
}

pub(super) fn ranged(
    name: &str,
    value: Option<u64>,
    default: u64,
    min: u64,
    max: u64,
) -> anyhow::Result<u64> {
    let v = value.unwrap_or(default);
    if v < min || v > max {
        bail!("{name} = {v} is out of range {min}..={max}");
    }
    Ok(v)
}

pub(super) fn addr(name: &str, value: Option<&str>, port: u16) -> anyhow::Result<SocketAddr> {
    match value {
        None => Ok(SocketAddr::from(([127, 0, 0, 1], port))),
        Some(s) => s
            .parse()
            .with_context(|| format!("{name} = {s:?} is not an address like 127.0.0.1:{port}")),
    }
}

/// A per-second window with a burst (one second's worth by default).
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

    /// Each area's builder validates its settings and returns them in their validated types.
    fn merge(cli: Options, file: Options, mut secrets: Secrets) -> anyhow::Result<Self> {
        let kmsv2 = kmsv2::build(&cli, &file)?;
        let xks = xks::build(
            &cli,
            &file,
            &Region::parse(
                cli.region
                    .as_deref()
                    .or(file.region.as_deref())
                    .unwrap_or("us-east-1"),
            )?,
        )?;
        let registry = registry_settings(&cli, &file)?;
        let limits = limits::limits(&cli, &file)?;
        let proxy = proxy::build(
            &cli,
            &file,
            cli.backend
                .or(file.backend)
                .unwrap_or(BackendKind::Embedded),
            secrets.upstream_secret.clone(),
            limits.backend_timeout,
        )?;
        let backend = backend::backend(&cli, &file, &mut secrets, limits.backend_timeout)?;
        let endpoints = service::endpoints(&cli, &file, &secrets)?;
        let caching = service::caching(&cli, &file)?;
        let data_dir = cli
            .data_dir
            .clone()
            .or_else(|| file.data_dir.clone())
            .unwrap_or_else(|| PathBuf::from("kms-sidecar-data"));
        let observability = service::observability(&cli, &file, &data_dir)?;
        let root_key = match (
            secrets.root_key.take(),
            cli.root_key_file
                .clone()
                .or_else(|| file.root_key_file.clone()),
        ) {
            (Some(hex), _) => RootKeySource::Hex(SecretString::from(hex)),
            (None, Some(path)) => RootKeySource::File(path),
            (None, None) => RootKeySource::DataDir,
        };
        let admin_principals = cli
            .admin_principals
            .clone()
            .or_else(|| file.admin_principals.clone())
            .unwrap_or_else(|| vec!["default".to_string()]);
        if admin_principals.iter().any(|p| p.is_empty()) {
            bail!("admin_principals must not contain an empty name");
        }
        Ok(Self {
            data_dir,
            region: Region::parse(
                cli.region
                    .as_deref()
                    .or(file.region.as_deref())
                    .unwrap_or("us-east-1"),
            )?,
            account_id: AccountId::parse(
                cli.account_id
                    .as_deref()
                    .or(file.account_id.as_deref())
                    .unwrap_or("111122223333"),
            )?,
            root_key,
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
            backend,
            admin_principals,
            faults_enabled: cli.faults_enabled.or(file.faults_enabled).unwrap_or(false),
            proxy,
            kmsv2,
            xks,
            registry,
            endpoints,
            caching,
            observability,
            limits,
        })
    }

    /// The region and account for ARNs.
    pub fn arn_scope(&self) -> ArnScope {
        ArnScope {
            region: self.region.0.clone(),
            account: self.account_id.0.clone(),
        }
    }

    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }
    pub fn root_key(&self) -> &RootKeySource {
        &self.root_key
    }
    pub fn maintenance_interval(&self) -> Duration {
        self.maintenance_interval
    }
    pub fn shutdown_grace(&self) -> Duration {
        self.shutdown_grace
    }
    pub fn backend(&self) -> &BackendConfig {
        &self.backend
    }
    /// Names of the principals that may create keys and always manage policies and deletion.
    pub fn admin_principals(&self) -> &[String] {
        &self.admin_principals
    }
    pub fn faults_enabled(&self) -> bool {
        self.faults_enabled
    }
    /// Where the key registry lives.
    pub fn registry(&self) -> &RegistrySettings {
        &self.registry
    }
    /// The KMS v2 plugin's settings, when enabled.
    pub fn kmsv2(&self) -> Option<&KmsV2Settings> {
        self.kmsv2.as_ref()
    }
    /// Proxy mode's settings, or `None` in local mode.
    pub fn proxy(&self) -> Option<&proxy::ProxyConfig> {
        self.proxy.as_ref()
    }
    pub fn listen(&self) -> SocketAddr {
        self.endpoints.listen
    }
    pub fn admin_listen(&self) -> SocketAddr {
        self.endpoints.admin_listen
    }
    /// HTTPS on the KMS port, when enabled.
    pub fn tls(&self) -> Option<&TlsSource> {
        self.endpoints.tls.as_ref()
    }
    /// Bearer token the admin API requires (all but `/healthz` and `/readyz`), when set.
    pub fn admin_token(&self) -> Option<&AdminToken> {
        self.endpoints.admin_token.as_ref()
    }
    pub fn max_body_bytes(&self) -> usize {
        self.endpoints.max_body_bytes
    }
    pub fn max_clock_skew(&self) -> Duration {
        self.endpoints.max_clock_skew
    }
    pub fn cache(&self) -> CacheSettings {
        self.caching.cache
    }
    pub fn cache_invalidate_on_rotation(&self) -> bool {
        self.caching.invalidate_on_rotation
    }
    pub fn pool(&self) -> PoolSettings {
        self.caching.pool
    }
    /// Opt-in data-key reuse.
    pub fn reuse(&self) -> &ReuseSettings {
        &self.caching.reuse
    }
    pub fn metrics(&self) -> MetricsSettings {
        self.observability.metrics
    }
    pub fn audit(&self) -> &AuditConfig {
        &self.observability.audit
    }
    pub fn log_format(&self) -> LogFormat {
        self.observability.log_format
    }
    pub fn log_level(&self) -> &str {
        &self.observability.log_level
    }
    pub fn otlp_endpoint(&self) -> Option<&str> {
        self.observability.otlp_endpoint.as_deref()
    }
    /// Inbound limits as configured (see [`Limits::rate`]).
    pub fn rate(&self) -> &RateSpec {
        &self.limits.rate
    }
    /// The outbound budget: one bucket, shared by every backend call of this process.
    pub fn outbound(&self) -> Option<&Arc<OutboundBudget>> {
        self.limits.outbound.as_ref()
    }
    pub fn breaker(&self) -> ValidBreakerSpec {
        self.limits.breaker
    }
    pub fn retry(&self) -> &Arc<RetryPolicy> {
        &self.limits.retry
    }
    pub fn retry_budget(&self) -> &Arc<RetryBudget> {
        &self.limits.retry_budget
    }
    pub fn backend_timeout(&self) -> Duration {
        self.limits.backend_timeout
    }
}

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

#[cfg(test)]
mod fuzz_tests;

#[cfg(test)]
mod tests;
