//! The upstream backend: master keys are symmetric keys in another KMS (AWS KMS, or any endpoint
//! that speaks the KMS JSON 1.1 API, another kms-sidecar included), and every encrypt and decrypt
//! is forwarded there, signed with this sidecar's own credentials for that KMS.
//!
//! It exists so that applications get the sidecar's local features (data-key pool, Decrypt cache,
//! rate limits, per-client credentials and policies, audit, metrics) while the key material stays
//! in a KMS that this host never sees into. A copy of the data directory holds no key material.
//!
//! Each local key version is one upstream key, named by the alias
//! `alias/<prefix>/<key id>/v<version>`: the mapping lives upstream, so this backend keeps no state
//! and a restart finds every version again. The local associated data (ciphertext header and
//! canonical encryption context) is bound through the upstream encryption context, as its SHA-256.
//! `docs/backends.md` ("Upstream") records these decisions and the error mapping.
//!
//! Calls go through the official `aws-sdk-kms` client with its own retries switched off: retries,
//! backoff, the retry budget and the circuit breaker belong to [`Resilient`](super::resilient), and
//! two retry loops would multiply each other.

use std::collections::HashMap;
use std::fmt;
use std::net::IpAddr;
use std::time::Duration;

use anyhow::{Context as _, bail};
use async_trait::async_trait;
use aws_sdk_kms::config::retry::RetryConfig;
use aws_sdk_kms::config::timeout::TimeoutConfig;
use aws_sdk_kms::config::{BehaviorVersion, Credentials, Region, StalledStreamProtectionConfig};
use aws_sdk_kms::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_kms::operation::create_alias::CreateAliasError;
use aws_sdk_kms::primitives::Blob;
use aws_sdk_kms::types::{KeySpec, KeyState, KeyUsageType};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use secrecy::{ExposeSecret as _, SecretString};
use sha2::{Digest as _, Sha256};
use zeroize::Zeroizing;

use super::{Backend, BackendError, BackendErrorKind, KeyRef};
use crate::crypto;
use crate::kms::BoxError;

#[cfg(test)]
mod tests;

/// The encryption-context key that carries the SHA-256 of the local associated data.
pub const AAD_CONTEXT_KEY: &str = "kms-sidecar:aad-sha256";
/// The shortest pending window KMS allows: destroyed versions go as soon as KMS lets them.
pub const PENDING_WINDOW_DAYS: i32 = 7;
/// Longest alias prefix: with `alias/`, a 36-character key id and `/v4294967295` an alias stays
/// well inside KMS's 256 characters.
pub const MAX_ALIAS_PREFIX: usize = 128;
/// KMS's limit on alias names.
const MAX_ALIAS: usize = 256;

/// How to reach the upstream KMS.
#[derive(Clone)]
pub struct UpstreamSettings {
    /// Endpoint URL; `None` uses the AWS KMS endpoint of `region`.
    pub endpoint: Option<String>,
    /// The region requests are signed for.
    pub region: String,
    pub access_key_id: String,
    /// Never logged; `Debug` prints `[redacted]`.
    pub secret_access_key: SecretString,
    /// Aliases are `alias/<prefix>/<key id>/v<version>`, so several sidecars can share an account.
    pub alias_prefix: String,
    /// The SDK's connect, attempt and operation timeout (the configured backend timeout).
    pub timeout: Duration,
}

impl fmt::Debug for UpstreamSettings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("UpstreamSettings")
            .field("endpoint", &self.endpoint)
            .field("region", &self.region)
            .field("access_key_id", &self.access_key_id)
            .field("secret_access_key", &"[redacted]")
            .field("alias_prefix", &self.alias_prefix)
            .field("timeout", &self.timeout)
            .finish()
    }
}

fn is_loopback(host: &str) -> bool {
    host.eq_ignore_ascii_case("localhost")
        || host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .parse::<IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// Checks an endpoint URL: `https://host[:port]`, or `http://` to a loopback host only, since
/// plaintexts and data keys travel in the request and response bodies.
pub fn check_endpoint(url: &str) -> anyhow::Result<()> {
    let example = "a URL like https://kms.us-east-1.amazonaws.com or http://127.0.0.1:7300";
    let uri: http::Uri = url
        .parse()
        .with_context(|| format!("upstream_endpoint {url:?} is not {example}"))?;
    let Some(host) = uri.host().filter(|h| !h.is_empty()) else {
        bail!("upstream_endpoint {url:?} has no host; it must be {example}");
    };
    match uri.scheme_str() {
        Some("https") => {}
        Some("http") if is_loopback(host) => {}
        Some("http") => bail!(
            "upstream_endpoint {url:?} is plain http to a host that is not loopback: plaintexts and \
             data keys would cross the network unencrypted; use https"
        ),
        _ => bail!("upstream_endpoint {url:?} must start with https:// (or http:// for loopback)"),
    }
    if uri.query().is_some() || !matches!(uri.path(), "" | "/") {
        bail!("upstream_endpoint {url:?} must not have a path or query; it must be {example}");
    }
    Ok(())
}

/// Checks an alias prefix: KMS alias characters, no empty segment, not under `alias/aws/`.
pub fn check_alias_prefix(prefix: &str) -> anyhow::Result<()> {
    let ok = !prefix.is_empty()
        && prefix.len() <= MAX_ALIAS_PREFIX
        && prefix
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'/' | b'_' | b'-'))
        && prefix.split('/').all(|segment| !segment.is_empty())
        && prefix.split('/').next() != Some("aws");
    if !ok {
        bail!(
            "upstream_alias_prefix {prefix:?} must be 1..={MAX_ALIAS_PREFIX} characters of letters, \
             digits, _, - and / (no empty segment), and must not start with aws/"
        );
    }
    Ok(())
}

/// The upstream alias of one key version.
pub fn alias_name(prefix: &str, key_id: &str, version: u32) -> String {
    format!("alias/{prefix}/{key_id}/v{version}")
}

/// The upstream encryption context that binds the local associated data. Hashed because the
/// local AAD is binary and can approach KMS's 8 KiB context limit on its own.
pub fn aad_context(aad: &[u8]) -> HashMap<String, String> {
    HashMap::from([(AAD_CONTEXT_KEY.to_string(), B64.encode(Sha256::digest(aad)))])
}

/// Classifies an upstream error by its KMS error code (`__type`) and HTTP status.
pub fn classify(code: Option<&str>, status: Option<u16>) -> BackendErrorKind {
    use BackendErrorKind::*;
    match code {
        Some("InvalidCiphertextException" | "IncorrectKeyException") => InvalidCiphertext,
        // The alias is gone, or its key can no longer be used (disabled, pending deletion).
        Some("NotFoundException" | "DisabledException" | "KMSInvalidStateException") => {
            MaterialMissing
        }
        Some(
            "ThrottlingException"
            | "Throttling"
            | "TooManyRequestsException"
            | "RequestLimitExceeded"
            | "KMSInternalException"
            | "DependencyTimeoutException"
            | "KeyUnavailableException"
            | "InternalFailure"
            | "ServiceUnavailable"
            | "ServiceUnavailableException",
        ) => Unavailable,
        // Unknown codes: a 5xx or 429 is the server's trouble, anything else ours.
        _ => match status {
            Some(429 | 500..=599) => Unavailable,
            _ => Internal,
        },
    }
}

/// An upstream call that did not return an answer: the operation, the error code and HTTP status
/// when there was a response, and the SDK's error as the source. Never a request or response body.
#[derive(Debug, thiserror::Error)]
#[error("upstream {operation} failed (code {}, status {})", .code.as_deref().unwrap_or("none"), .status.map_or_else(|| "none".to_string(), |s| s.to_string()))]
pub struct UpstreamError {
    pub operation: &'static str,
    pub code: Option<String>,
    pub status: Option<u16>,
    #[source]
    source: Option<BoxError>,
}

/// An answer without a field it must have.
#[derive(Debug, thiserror::Error)]
#[error("upstream {operation} answered without {field}")]
pub struct MissingField {
    operation: &'static str,
    field: &'static str,
}

/// Maps an SDK error to a classified backend error. The raw HTTP response is dropped (a response
/// that failed to parse could be a Decrypt answer with plaintext in it).
fn failure<E>(operation: &'static str, e: SdkError<E>) -> BackendError
where
    E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
{
    use BackendErrorKind::*;
    let status = e.raw_response().map(|r| r.status().as_u16());
    let code = e
        .as_service_error()
        .and_then(|s| s.code())
        .map(str::to_string);
    let kind = match &e {
        SdkError::ServiceError(_) => classify(code.as_deref(), status),
        SdkError::ResponseError(_) => classify(None, status),
        SdkError::TimeoutError(_) => Unavailable,
        SdkError::DispatchFailure(d) if d.is_user() => Internal,
        SdkError::DispatchFailure(_) => Unavailable,
        _ => Internal,
    };
    // The upstream's own quota: back off and retry, and keep the breaker closed (a throttling
    // KMS is up); the caller sees ThrottlingException, as from KMS itself.
    let throttled = kind == Unavailable && is_throttling(code.as_deref(), status);
    let error = UpstreamError {
        operation,
        code,
        status,
        source: e.into_source().ok(),
    };
    if throttled {
        BackendError::throttled(error)
    } else {
        BackendError::with_source(kind, error)
    }
}

/// Whether an upstream answer refused the call for its request quota.
pub fn is_throttling(code: Option<&str>, status: Option<u16>) -> bool {
    match code {
        Some(
            "ThrottlingException"
            | "Throttling"
            | "TooManyRequestsException"
            | "RequestLimitExceeded",
        ) => true,
        Some(_) => false,
        None => status == Some(429),
    }
}

fn missing(operation: &'static str, field: &'static str) -> BackendError {
    BackendError::with_source(
        BackendErrorKind::Internal,
        MissingField { operation, field },
    )
}

/// Master keys in an upstream KMS, one upstream key per local key version.
pub struct Upstream {
    client: aws_sdk_kms::Client,
    endpoint: Option<String>,
    prefix: String,
    /// Serializes `create_version`, so two callers cannot both create a key for one version.
    create: tokio::sync::Mutex<()>,
}

impl fmt::Debug for Upstream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Upstream")
            .field("endpoint", &self.endpoint)
            .field("prefix", &self.prefix)
            .finish_non_exhaustive()
    }
}

impl Upstream {
    /// Builds the client; nothing is sent until the first call, so an upstream that is down at
    /// start delays nothing (calls fail as retryable until it is back).
    pub fn new(settings: UpstreamSettings) -> anyhow::Result<Self> {
        if let Some(endpoint) = &settings.endpoint {
            check_endpoint(endpoint)?;
        }
        check_alias_prefix(&settings.alias_prefix)?;
        if settings.access_key_id.is_empty() {
            bail!("upstream_access_key_id must not be empty");
        }
        if settings.timeout.is_zero() {
            bail!("the upstream timeout must be positive");
        }
        let credentials = Credentials::new(
            &settings.access_key_id,
            settings.secret_access_key.expose_secret(),
            None,
            None,
            "kms-sidecar-config",
        );
        let timeouts = TimeoutConfig::builder()
            .connect_timeout(settings.timeout)
            .operation_attempt_timeout(settings.timeout)
            .operation_timeout(settings.timeout)
            .build();
        let mut config = aws_sdk_kms::Config::builder()
            .behavior_version(BehaviorVersion::latest())
            .region(Region::new(settings.region.clone()))
            .credentials_provider(credentials)
            // Resilient retries; a second loop here would multiply attempts and hide failures
            // from the breaker.
            .retry_config(RetryConfig::disabled())
            .timeout_config(timeouts)
            // Bodies are small JSON documents; the timeouts above bound a stalled one.
            .stalled_stream_protection(StalledStreamProtectionConfig::disabled());
        if let Some(endpoint) = &settings.endpoint {
            config = config.endpoint_url(endpoint);
        }
        Ok(Self {
            client: aws_sdk_kms::Client::from_conf(config.build()),
            endpoint: settings.endpoint,
            prefix: settings.alias_prefix,
            create: tokio::sync::Mutex::new(()),
        })
    }

    fn alias(&self, key_id: &str, version: u32) -> Result<String, BackendError> {
        let alias = alias_name(&self.prefix, key_id, version);
        let valid = alias.len() <= MAX_ALIAS
            && key_id
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-'));
        if valid {
            Ok(alias)
        } else {
            Err(BackendError::with_source(
                BackendErrorKind::Internal,
                std::io::Error::other("key id cannot be part of an upstream alias"),
            ))
        }
    }

    /// Schedules the deletion of upstream key `key_id`; a key already gone or pending succeeds.
    async fn schedule_deletion(&self, key_id: &str) -> Result<(), BackendError> {
        match self
            .client
            .schedule_key_deletion()
            .key_id(key_id)
            .pending_window_in_days(PENDING_WINDOW_DAYS)
            .send()
            .await
        {
            Ok(_) => Ok(()),
            Err(e) => match failure("ScheduleKeyDeletion", e) {
                e if e.kind == BackendErrorKind::MaterialMissing => Ok(()),
                e => Err(e),
            },
        }
    }

    /// Destroys one version: schedules its key's deletion, then deletes the alias. In this order
    /// an interrupted destroy leaves the alias, so a repeat finds the key again.
    async fn destroy_version(&self, key_id: &str, version: u32) -> Result<(), BackendError> {
        let alias = self.alias(key_id, version)?;
        let described = match self.client.describe_key().key_id(&alias).send().await {
            Ok(d) => d,
            Err(e) => {
                let e = failure("DescribeKey", e);
                return if e.kind == BackendErrorKind::MaterialMissing {
                    Ok(())
                } else {
                    Err(e)
                };
            }
        };
        let meta = described
            .key_metadata
            .ok_or_else(|| missing("DescribeKey", "KeyMetadata"))?;
        if meta.key_state != Some(KeyState::PendingDeletion) {
            self.schedule_deletion(&meta.key_id).await?;
        }
        match self.client.delete_alias().alias_name(&alias).send().await {
            Ok(_) => Ok(()),
            Err(e) => match failure("DeleteAlias", e) {
                e if e.kind == BackendErrorKind::MaterialMissing => Ok(()),
                e => Err(e),
            },
        }
    }
}

#[async_trait]
impl Backend for Upstream {
    fn name(&self) -> &'static str {
        "upstream"
    }

    /// CreateKey, then CreateAlias. An alias that exists already maps this version (a repeat after
    /// a crash before the key record was written): the key just made is scheduled for deletion and
    /// the existing one kept, so no ciphertext made under it is stranded.
    async fn create_version(&self, key: KeyRef<'_>) -> Result<(), BackendError> {
        let alias = self.alias(key.key_id, key.version)?;
        let _guard = self.create.lock().await;
        let created = self
            .client
            .create_key()
            .key_spec(KeySpec::SymmetricDefault)
            .key_usage(KeyUsageType::EncryptDecrypt)
            .description(format!(
                "kms-sidecar key {} version {}",
                key.key_id, key.version
            ))
            .send()
            .await
            .map_err(|e| failure("CreateKey", e))?;
        let upstream_id = created
            .key_metadata
            .map(|m| m.key_id)
            .ok_or_else(|| missing("CreateKey", "KeyMetadata"))?;
        let aliased = self
            .client
            .create_alias()
            .alias_name(&alias)
            .target_key_id(&upstream_id)
            .send()
            .await;
        match aliased {
            Ok(_) => Ok(()),
            Err(e) => {
                // Either way the new key is not used: do not leave it (and its monthly cost) behind.
                if let Err(cleanup) = self.schedule_deletion(&upstream_id).await {
                    tracing::warn!(upstream_key = %upstream_id, error = %cleanup, "unused upstream key not scheduled for deletion");
                }
                if e.as_service_error()
                    .is_some_and(CreateAliasError::is_already_exists_exception)
                {
                    Ok(())
                } else {
                    Err(failure("CreateAlias", e))
                }
            }
        }
    }

    async fn encrypt(
        &self,
        key: KeyRef<'_>,
        aad: &[u8],
        plaintext: &[u8],
    ) -> Result<Vec<u8>, BackendError> {
        let alias = self.alias(key.key_id, key.version)?;
        let out = self
            .client
            .encrypt()
            .key_id(alias)
            .plaintext(Blob::new(plaintext))
            .set_encryption_context(Some(aad_context(aad)))
            .send()
            .await
            .map_err(|e| failure("Encrypt", e))?;
        out.ciphertext_blob
            .map(Blob::into_inner)
            .ok_or_else(|| missing("Encrypt", "CiphertextBlob"))
    }

    async fn decrypt(
        &self,
        key: KeyRef<'_>,
        aad: &[u8],
        sealed: &[u8],
    ) -> Result<Zeroizing<Vec<u8>>, BackendError> {
        let alias = self.alias(key.key_id, key.version)?;
        let out = self
            .client
            .decrypt()
            .key_id(alias)
            .ciphertext_blob(Blob::new(sealed))
            .set_encryption_context(Some(aad_context(aad)))
            .send()
            .await
            .map_err(|e| failure("Decrypt", e))?;
        out.plaintext
            .map(|p| Zeroizing::new(p.into_inner()))
            .ok_or_else(|| missing("Decrypt", "Plaintext"))
    }

    async fn destroy(&self, key_id: &str, versions: &[u32]) -> Result<(), BackendError> {
        for version in versions {
            self.destroy_version(key_id, *version).await?;
        }
        Ok(())
    }

    /// Data keys come from the OS RNG, not upstream GenerateRandom: a data key leaves in clear the
    /// moment it is returned, and a paid, failure-prone round trip per data key would buy nothing
    /// (`docs/backends.md`, "Upstream").
    async fn random(&self, n: usize) -> Result<Zeroizing<Vec<u8>>, BackendError> {
        crypto::random_bytes(n)
            .map_err(|e| BackendError::with_source(BackendErrorKind::Internal, e))
    }
}
