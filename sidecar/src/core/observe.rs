//! The one observation per call, whichever front-end served it: `requests_total` and the latency
//! histogram, per-key usage, `unauthorized_total` for refusals, `throttled_total{scope="backend"}`
//! for calls the outbound budget refused, the request span's fields, a log line, and the audit
//! record (which, when the audit log fails closed, can still turn a success into an error).

use std::sync::Arc;
use std::time::{Instant, SystemTime};

use tracing::Span;

use super::{Core, Observation, Principal};
pub use crate::kms::Frontend;
use crate::kms::{KmsError, Operation, Origin};
use crate::limits::{self, Scope};
use crate::observe::audit::{
    self, AuditEvent, Outcome as AuditOutcome, PrincipalName, RequestId, Source,
};
use crate::observe::security;

/// One call as the core observes it, filled in as the front-end and the pipeline learn things (also
/// when they fail), and consumed by [`Core::finish`].
#[derive(Debug)]
pub struct Exchange {
    frontend: Frontend,
    started: Instant,
    request_id: RequestId,
    /// The client's address (socket address, or the socket path for a Unix socket).
    source: Source,
    span: Span,
    /// The operation, once the front-end knows it.
    pub op: Option<Operation>,
    /// The authenticated caller.
    pub principal: Option<Arc<Principal>>,
    /// Why authentication failed (a bounded reason label), and the principal when it is known (a
    /// revoked credential).
    pub auth_failure: Option<(&'static str, Option<String>)>,
    /// What the operation learned (key, version, context, denial, cache outcome).
    pub obs: Observation,
    /// For a call AWS KMS made on someone's behalf (XKS): the KMS request id and the principal
    /// that called AWS KMS, for the log line and the audit record.
    pub kms_request_id: Option<String>,
    pub aws_principal_arn: Option<String>,
}

impl Exchange {
    pub fn request_id(&self) -> &str {
        &self.request_id
    }

    /// The call's span (`kms.request`): the front-end runs its work inside it.
    pub fn span(&self) -> &Span {
        &self.span
    }

    /// The principal for the audit log: the caller's credential (shared), a revoked one's name,
    /// or `unknown`.
    fn audit_principal(&self) -> PrincipalName {
        match (&self.principal, &self.auth_failure) {
            (Some(p), _) => PrincipalName::Caller(p.clone()),
            (None, Some((_, Some(revoked)))) => PrincipalName::Owned(revoked.clone()),
            _ => PrincipalName::Static(security::UNKNOWN_PRINCIPAL),
        }
    }

    /// The principal name for logs, metrics and the audit log: the caller's, a revoked one's, or
    /// `unknown`.
    fn principal_name(&self) -> &str {
        match (&self.principal, &self.auth_failure) {
            (Some(p), _) => p.name.as_str(),
            (None, Some((_, Some(revoked)))) => revoked.as_str(),
            _ => security::UNKNOWN_PRINCIPAL,
        }
    }
}

impl Core {
    /// Opens the observation of a new call. `request_id` comes from [`Core::request_id`]; `span`
    /// is the front-end's `kms.request` span for it (which may continue a caller's trace).
    pub fn begin(
        &self,
        frontend: Frontend,
        request_id: RequestId,
        source: impl Into<Source>,
        span: Span,
    ) -> Exchange {
        Exchange {
            frontend,
            started: Instant::now(),
            request_id,
            source: source.into(),
            span,
            op: None,
            principal: None,
            auth_failure: None,
            obs: Observation::default(),
            kms_request_id: None,
            aws_principal_arn: None,
        }
    }

    /// Records the call (metrics, span, log, audit) and returns what the front-end must answer:
    /// `result`, unless the audit log fails closed and could not take the record of a success.
    pub fn finish<T>(&self, x: &mut Exchange, result: Result<T, KmsError>) -> Result<T, KmsError> {
        let elapsed = x.started.elapsed();
        let op_name = x.op.map_or("unknown", Operation::as_str);
        let outcome = result.as_ref().err().map(KmsError::kind);
        match &result {
            Ok(_) => {
                if let (Some(op), Some(key)) = (x.op, x.obs.key_id.as_deref()) {
                    self.metrics.keys.record(key, op);
                }
                tracing::debug!(
                    request_id = x.request_id.as_str(),
                    frontend = x.frontend.as_str(),
                    operation = op_name,
                    principal = x.principal_name(),
                    outcome = "ok",
                    latency_us = elapsed.as_micros() as u64,
                    "request"
                );
            }
            Err(err) if err.kind().origin() == Origin::Server => {
                tracing::error!(request_id = x.request_id.as_str(), frontend = x.frontend.as_str(), operation = op_name, principal = x.principal_name(), outcome = err.kind().name(), error = %err, cause = ?std::error::Error::source(err), "request failed");
            }
            Err(err) => {
                tracing::info!(
                    request_id = x.request_id.as_str(),
                    frontend = x.frontend.as_str(),
                    operation = op_name,
                    principal = x.principal_name(),
                    outcome = err.kind().name(),
                    message = err.wire_message(),
                    "request rejected"
                );
            }
        }
        let reason = match (&x.auth_failure, x.obs.denied) {
            (Some((reason, _)), _) => Some(*reason),
            (None, Some(denied)) => Some(denied.as_str()),
            (None, None) => None,
        };
        if let Some(reason) = reason {
            self.count_unauthorized(x, reason);
        }
        if let Err(err) = &result
            && limits::classify::is_outbound_budget_refusal(err)
        {
            self.count_backend_throttle(x);
        }
        let cache = x.obs.cache;
        if !x.span.is_disabled() {
            let span = &x.span;
            span.record("operation", op_name);
            span.record("principal", x.principal_name());
            span.record("cache", cache.as_str());
            if let Some(k) = &x.obs.key_id {
                span.record("key_id", k.as_str());
            }
            if let Some(v) = x.obs.key_version {
                span.record("key_version", v);
            }
            if let Some(kind) = outcome {
                span.record("error_type", kind.name());
            }
        }
        self.metrics
            .requests
            .record(x.frontend, x.op, outcome, cache, elapsed);
        let audited = self.audit.record(AuditEvent {
            time: audit::epoch_seconds(SystemTime::now()),
            principal: x.audit_principal(),
            request_id: x.request_id,
            source: x.source.clone(),
            operation: x.op,
            key_id: x.obs.key_id.take(),
            key_version: x.obs.key_version,
            encryption_context: x.obs.context.take().unwrap_or_default(),
            outcome: match (outcome, reason) {
                (None, _) => AuditOutcome::Ok,
                (Some(_), Some(_)) => AuditOutcome::Denied,
                (Some(_), None) => AuditOutcome::Error,
            },
            error_type: outcome,
            reason,
            cache,
            latency_ms: elapsed.as_secs_f64() * 1000.0,
            kms_request_id: x.kms_request_id.take(),
            aws_principal_arn: x.aws_principal_arn.take(),
        });
        // Fail closed: a success whose audit record cannot be queued is not returned.
        match audited {
            Err(e) if outcome.is_none() && self.audit.fails_closed() => {
                let err = KmsError::from(e);
                tracing::error!(operation = op_name, error = %err, "audit record lost; failing the call");
                Err(err)
            }
            _ => result,
        }
    }

    /// Counts a call the outbound budget refused in `throttled_total{scope="backend"}`, under the
    /// caller's bounded principal label (as for the inbound limits).
    fn count_backend_throttle(&self, x: &Exchange) {
        let name = x.principal_name();
        let metrics = &self.metrics.rate;
        match &self.rate {
            Some(rate) => {
                metrics.throttled(rate.limits.load().principal_label(name), Scope::Backend)
            }
            None => metrics.throttled(limits::rate_spec::OTHER, Scope::Backend),
        }
    }

    /// Counts a refused call in `unauthorized_total` with bounded labels.
    fn count_unauthorized(&self, x: &Exchange, reason: &'static str) {
        let key = x
            .obs
            .key_id
            .as_deref()
            .map(|k| self.metrics.keys.key_label(k));
        let op = x.op.map_or("unknown", Operation::as_str);
        self.metrics.unauthorized.record(
            x.frontend.as_str(),
            x.principal_name(),
            op,
            key.as_deref().unwrap_or(security::NO_KEY),
            reason,
        );
    }
}
