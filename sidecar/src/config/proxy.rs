//! Proxy mode's settings (`--mode proxy`), validated apart from the rest of the configuration so
//! that they stay one block: where the upstream KMS is, which identity the sidecar uses there, the
//! local policy file and how often the upstream is polled.
//!
//! The upstream is named by the same options as the upstream backend (`--upstream-endpoint`,
//! `--upstream-region`, `--upstream-access-key-id` and its secret); without an access key id the
//! standard AWS credential chain is used (environment, profile, web identity, container, IMDS).

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context as _, bail};
use serde::Deserialize;

use super::backend::secret;
use super::{BackendKind, Options, Region, UPSTREAM_SECRET_ENV, ranged};
use crate::auth::proxy_policy::ProxyPolicy;
use crate::backend::remote::{RemoteCredentials, RemoteSettings};
use crate::backend::upstream;

/// Whether the sidecar is the key authority or a proxy in front of an existing KMS.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    #[default]
    Local,
    Proxy,
}

/// Validated proxy-mode settings.
#[derive(Debug, Clone)]
pub struct ProxyConfig {
    pub upstream: RemoteSettings,
    /// The local policy file (read at start and on SIGHUP).
    pub policy_file: PathBuf,
    pub poll_interval: Duration,
}

impl ProxyConfig {
    /// Reads and validates the local policy.
    pub fn policy(&self) -> anyhow::Result<ProxyPolicy> {
        ProxyPolicy::load(&self.policy_file)
    }
}

/// Proxy mode's settings, or `None` in local mode.
pub(super) fn build(
    cli: &Options,
    file: &Options,
    backend: BackendKind,
    secret_env: Option<String>,
    timeout: Duration,
) -> anyhow::Result<Option<ProxyConfig>> {
    if cli.mode.or(file.mode).unwrap_or_default() == Mode::Local {
        return Ok(None);
    }
    if backend != BackendKind::Embedded {
        bail!(
            "mode proxy forwards to --upstream-endpoint and keeps no keys of its own: leave --backend at embedded"
        );
    }
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
        .or_else(|| cli.region.clone())
        .or_else(|| file.region.clone())
        .unwrap_or_else(|| "us-east-1".to_string());
    Region::parse(&region).context("upstream_region")?;
    let key_id = cli
        .upstream_access_key_id
        .clone()
        .or_else(|| file.upstream_access_key_id.clone())
        .filter(|id| !id.is_empty());
    let credentials = match key_id {
        None => RemoteCredentials::Chain,
        Some(access_key_id) => RemoteCredentials::Fixed {
            access_key_id,
            secret_access_key: secret(
                secret_env,
                cli.upstream_secret_access_key_file
                    .clone()
                    .or_else(|| file.upstream_secret_access_key_file.clone()),
                "upstream_access_key_id needs its secret access key",
                UPSTREAM_SECRET_ENV,
                "upstream_secret_access_key_file",
            )?,
        },
    };
    let policy_file = cli
        .proxy_policy_file
        .clone()
        .or_else(|| file.proxy_policy_file.clone())
        .context("mode proxy needs proxy_policy_file (--proxy-policy-file): who may use which upstream keys")?;
    let poll = ranged(
        "proxy_poll_interval_secs",
        cli.proxy_poll_interval_secs
            .or(file.proxy_poll_interval_secs),
        60,
        1,
        86_400,
    )?;
    let config = ProxyConfig {
        upstream: RemoteSettings {
            endpoint,
            region,
            credentials,
            timeout,
        },
        policy_file,
        poll_interval: Duration::from_secs(poll),
    };
    // A bad policy stops the start, naming the file.
    config.policy()?;
    Ok(Some(config))
}
