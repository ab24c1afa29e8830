//! Which backend holds the master keys, and its settings: PKCS#11 (module, token, PIN) or an
//! upstream KMS (endpoint, region, credentials). Secrets come from the environment or a file, never
//! a flag.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, bail};
use secrecy::SecretString;

use super::{
    BackendConfig, BackendKind, DEFAULT_PKCS11_MODULE, DEFAULT_UPSTREAM_ALIAS_PREFIX, Options,
    PKCS11_PIN_ENV, Region, Secrets, UPSTREAM_SECRET_ENV, ranged,
};
use crate::backend::pkcs11::Pkcs11Settings;
use crate::backend::upstream::{self, UpstreamSettings};

/// The validated backend choice; `timeout` bounds each upstream call.
pub(super) fn backend(
    cli: &Options,
    file: &Options,
    secrets: &mut Secrets,
    timeout: Duration,
) -> anyhow::Result<BackendConfig> {
    let cli = cli.clone();
    let file = file.clone();
    let backend_kind = cli
        .backend
        .or(file.backend)
        .unwrap_or(BackendKind::Embedded);
    let upstream = match backend_kind {
        BackendKind::Upstream => Some(upstream_settings(
            &cli,
            &file,
            secrets.upstream_secret.take(),
            cli.region
                .as_deref()
                .or(file.region.as_deref())
                .unwrap_or("us-east-1"),
            timeout,
        )?),
        _ => None,
    };
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
                secrets.pkcs11_pin.take(),
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
    Ok(backend)
}

/// A secret from its environment variable, else from a file (trimmed), else an error naming both.
pub(super) fn secret(
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
