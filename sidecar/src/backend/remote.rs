//! The KMS client of proxy mode: how the sidecar reaches the KMS it stands in front of, with which
//! identity, and how that KMS's errors are classified.
//!
//! Unlike [`Upstream`](super::upstream::Upstream), which uses another KMS as a place to keep the
//! sidecar's own key material, proxy mode forwards whole KMS operations (`core/proxy/`): the keys,
//! their ARNs and the ciphertexts are the upstream's. This module only builds the client and turns
//! its failures into [`BackendError`]s so that the retry loop, the budget and the circuit breaker of
//! `limits/resilient.rs` apply unchanged:
//! - a refusal the caller caused (`NotFoundException`, `DisabledException`, `AccessDeniedException`,
//!   ...) carries the upstream's KMS error type in [`UpstreamRefused`] and is neither retried nor
//!   counted by the breaker (the upstream answered, so it is up);
//! - `ThrottlingException` is [`BackendError::throttled`]: backed off and retried, never an open
//!   circuit;
//! - server faults, timeouts and connection failures are retryable `Unavailable` errors.
//!
//! Credentials come from the standard AWS chain of `aws-config` (environment, shared profile, web
//! identity token file, container endpoint, instance metadata), cached and refreshed before they
//! expire by the SDK's identity cache; fixed keys stay possible. Neither is ever logged.

use std::fmt;
use std::time::Duration;

use anyhow::bail;
use aws_sdk_kms::config::retry::RetryConfig;
use aws_sdk_kms::config::timeout::TimeoutConfig;
use aws_sdk_kms::config::{BehaviorVersion, Credentials, Region, StalledStreamProtectionConfig};
use aws_sdk_kms::error::{ProvideErrorMetadata, SdkError};
use secrecy::{ExposeSecret as _, SecretString};

use super::upstream::{check_endpoint, is_throttling};
use super::{BackendError, BackendErrorKind};
use crate::kms::{BoxError, ErrorKind, Origin};

/// Which identity the sidecar uses at the upstream.
#[derive(Clone)]
pub enum RemoteCredentials {
    /// The standard AWS credential chain (the pod's role, the instance profile, ...).
    Chain,
    /// A fixed access key.
    Fixed {
        access_key_id: String,
        secret_access_key: SecretString,
    },
}

impl fmt::Debug for RemoteCredentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Chain => f.write_str("Chain"),
            Self::Fixed { access_key_id, .. } => f
                .debug_struct("Fixed")
                .field("access_key_id", access_key_id)
                .field("secret_access_key", &"[redacted]")
                .finish(),
        }
    }
}

/// How to reach the upstream KMS in proxy mode.
#[derive(Debug, Clone)]
pub struct RemoteSettings {
    /// Endpoint URL; `None` uses the AWS KMS endpoint of `region`.
    pub endpoint: Option<String>,
    /// The region requests are signed for.
    pub region: String,
    pub credentials: RemoteCredentials,
    /// The SDK's connect and attempt timeout (the configured backend timeout).
    pub timeout: Duration,
}

/// Builds the upstream client. The credential chain is resolved lazily, on the first call, so an
/// identity that is not available yet (a token file still being mounted) delays nothing at start.
pub async fn client(settings: &RemoteSettings) -> anyhow::Result<aws_sdk_kms::Client> {
    if let Some(endpoint) = &settings.endpoint {
        check_endpoint(endpoint)?;
    }
    if settings.timeout.is_zero() {
        bail!("the upstream timeout must be positive");
    }
    // The chain reads its own settings (AWS_PROFILE, AWS_WEB_IDENTITY_TOKEN_FILE,
    // AWS_ENDPOINT_URL_STS, ...); the KMS endpoint is set on the KMS client only, so that STS and
    // IMDS calls of the chain are not sent to the KMS endpoint.
    let shared = aws_config::defaults(BehaviorVersion::latest())
        .region(Region::new(settings.region.clone()))
        .load()
        .await;
    let timeouts = TimeoutConfig::builder()
        .connect_timeout(settings.timeout)
        .operation_attempt_timeout(settings.timeout)
        .build();
    let mut config = aws_sdk_kms::config::Builder::from(&shared)
        .region(Region::new(settings.region.clone()))
        // Retries belong to limits/resilient.rs; a second loop would multiply attempts and hide
        // failures from the breaker.
        .retry_config(RetryConfig::disabled())
        .timeout_config(timeouts)
        .stalled_stream_protection(StalledStreamProtectionConfig::disabled());
    if let RemoteCredentials::Fixed {
        access_key_id,
        secret_access_key,
    } = &settings.credentials
    {
        if access_key_id.is_empty() {
            bail!("upstream_access_key_id must not be empty");
        }
        config = config.credentials_provider(Credentials::new(
            access_key_id,
            secret_access_key.expose_secret(),
            None,
            None,
            "kms-sidecar-config",
        ));
    }
    if let Some(endpoint) = &settings.endpoint {
        config = config.endpoint_url(endpoint);
    }
    Ok(aws_sdk_kms::Client::from_conf(config.build()))
}

/// The upstream refused the call with a KMS error the caller should see as it is: its type and
/// message (client errors only; server faults never carry their text to a caller).
#[derive(Debug, thiserror::Error)]
#[error("upstream {operation} refused: {}", .kind.name())]
pub struct UpstreamRefused {
    pub operation: &'static str,
    pub kind: ErrorKind,
    pub message: String,
}

/// An upstream call that failed for another reason: the code and status when there was a response.
#[derive(Debug, thiserror::Error)]
#[error("upstream {operation} failed (code {}, status {})", .code.as_deref().unwrap_or("none"), .status.map_or_else(|| "none".to_string(), |s| s.to_string()))]
pub struct UpstreamFailed {
    pub operation: &'static str,
    pub code: Option<String>,
    pub status: Option<u16>,
    #[source]
    source: Option<BoxError>,
}

/// The client-side KMS error type named `code`, if it is one.
pub fn client_kind(code: &str) -> Option<ErrorKind> {
    ErrorKind::ALL
        .iter()
        .copied()
        .find(|k| k.name() == code && k.origin() == Origin::Client)
}

/// Maps an SDK error to a classified backend error. The raw HTTP response is dropped (a response
/// that failed to parse could be a Decrypt answer with plaintext in it).
pub fn failure<E>(operation: &'static str, e: SdkError<E>) -> BackendError
where
    E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
{
    use BackendErrorKind::*;
    let status = e.raw_response().map(|r| r.status().as_u16());
    let code = e
        .as_service_error()
        .and_then(|s| s.code())
        .map(str::to_string);
    if is_throttling(code.as_deref(), status) && matches!(e, SdkError::ServiceError(_)) {
        return BackendError::throttled(UpstreamFailed {
            operation,
            code,
            status,
            source: None,
        });
    }
    if let (SdkError::ServiceError(_), Some(kind)) = (&e, code.as_deref().and_then(client_kind)) {
        let message = e
            .as_service_error()
            .and_then(|s| s.message())
            .unwrap_or_default()
            .chars()
            .take(1024)
            .collect();
        return BackendError::with_source(
            Internal,
            UpstreamRefused {
                operation,
                kind,
                message,
            },
        );
    }
    let kind = match &e {
        SdkError::ServiceError(_) | SdkError::ResponseError(_) => match status {
            Some(429 | 500..=599) => Unavailable,
            // A server-side KMS error type with an unusual status is still the server's trouble.
            _ if code.is_some() => Unavailable,
            _ => Internal,
        },
        SdkError::TimeoutError(_) => Unavailable,
        SdkError::DispatchFailure(d) if d.is_user() => Internal,
        SdkError::DispatchFailure(_) => Unavailable,
        _ => Internal,
    };
    BackendError::with_source(
        kind,
        UpstreamFailed {
            operation,
            code,
            status,
            source: e.into_source().ok(),
        },
    )
}

/// An answer without a member it must have.
pub fn missing(operation: &'static str, member: &'static str) -> BackendError {
    BackendError::with_source(
        BackendErrorKind::Internal,
        std::io::Error::other(format!("upstream {operation} answered without {member}")),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn client_kinds_are_the_kms_client_error_types() {
        assert_eq!(client_kind("NotFoundException"), Some(ErrorKind::NotFound));
        assert_eq!(
            client_kind("ValidationException"),
            Some(ErrorKind::Validation)
        );
        assert_eq!(
            client_kind("AccessDeniedException"),
            Some(ErrorKind::AccessDenied)
        );
        // Server faults are retried, never forwarded by name.
        assert_eq!(client_kind("KMSInternalException"), None);
        assert_eq!(client_kind("DependencyTimeoutException"), None);
        assert_eq!(client_kind("SomethingNew"), None);
    }

    #[test]
    fn fixed_credentials_are_redacted() {
        let c = RemoteCredentials::Fixed {
            access_key_id: "AKIDEXAMPLE".into(),
            secret_access_key: SecretString::from("wJalrXUtnFEMI"),
        };
        let shown = format!("{c:?}");
        assert!(shown.contains("AKIDEXAMPLE") && !shown.contains("wJalr"));
    }
}
