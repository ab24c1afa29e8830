//! The core: one request pipeline for every front-end.
//!
//! A front-end (the AWS JSON API today; the Kubernetes KMS v2 plugin and the XKS proxy next) owns its
//! wire format, its authentication and its error mapping. It opens an [`Exchange`] when a request
//! arrives, turns the request into a typed [`Request`] and an authenticated [`Principal`], and hands
//! them to [`Core::call`], which runs the same steps for everyone, in the order written there. Then
//! the front-end gives the result back to [`Core::finish`], the one observation per call (metrics,
//! span fields, log line, audit record), and encodes whatever `finish` returns on its wire.
//!
//! `docs/architecture.md` walks a Decrypt through these files in order.

pub mod health;
pub mod metrics;
pub mod model;
mod observe;
pub mod ops;
pub mod proxy;
pub mod request;
pub mod xks;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

pub use self::metrics::Metrics;
pub use self::observe::{Exchange, Frontend};
pub use self::ops::{Caller, Kms, Observation};
pub use self::request::{Request, Response, Subject};

pub use crate::auth::Principal;
use crate::keys::{KeyStore, ciphertext};
use crate::kms::{ErrorKind, KmsError};
use crate::limits::{RateLimits, RateMetrics, RateSpec};
use crate::observe::audit::{AuditLog, RequestId};

/// Inbound rate limits (swappable on reload) and their metrics.
#[derive(Debug)]
pub struct RateLimiting {
    pub limits: arc_swap::ArcSwap<RateLimits>,
    /// The configured spec the limits were built from (before principals were added); replaced on
    /// reload, read by `/v1/status`.
    pub spec: arc_swap::ArcSwap<RateSpec>,
    pub metrics: Arc<RateMetrics>,
}

/// Everything a call needs after its front-end: the operations over the key store and caches, the
/// inbound limits, the metrics and the audit log. Shared by every front-end and connection.
#[derive(Debug)]
pub struct Core {
    kms: Kms,
    rate: Option<Arc<RateLimiting>>,
    metrics: Arc<Metrics>,
    audit: AuditLog,
    /// Names of the configured admin principals.
    admins: Vec<String>,
    next_id: AtomicU64,
    id_prefix: u32,
    /// Proxy mode: the operations are served by an upstream KMS instead of `kms`.
    proxy: Option<Arc<proxy::Proxy>>,
}

impl Core {
    pub fn new(
        kms: Kms,
        rate: Option<Arc<RateLimiting>>,
        metrics: Arc<Metrics>,
        audit: AuditLog,
        admins: Vec<String>,
    ) -> Self {
        Self {
            kms,
            rate,
            metrics,
            audit,
            admins,
            next_id: AtomicU64::new(0),
            id_prefix: getrandom::u32().unwrap_or_default(),
            proxy: None,
        }
    }

    /// Serves the operations from an upstream KMS (proxy mode) instead of the local key store.
    pub fn with_proxy(mut self, proxy: Arc<proxy::Proxy>) -> Self {
        self.proxy = Some(proxy);
        self
    }

    /// The proxy, in proxy mode.
    pub fn proxy(&self) -> Option<&Arc<proxy::Proxy>> {
        self.proxy.as_ref()
    }

    /// The request pipeline after the front-end has parsed and authenticated a request. Every step
    /// runs on every call, cache hits included, so a revoked client, a lowered limit or a tightened
    /// policy is enforced on the very next call.
    pub async fn call(
        &self,
        x: &mut Exchange,
        caller: &Principal,
        request: Request,
    ) -> Result<Response, KmsError> {
        // (1. parse and 2. authenticate were the front-end's.)
        // 3. Audit gate: with the audit log down and fail-closed configured, no key is used
        //    unaudited.
        if self.audit.blocks_requests() {
            return Err(
                KmsError::new(ErrorKind::Internal, "the audit log cannot be written").with_source(
                    std::io::Error::other(
                        self.audit
                            .last_error()
                            .unwrap_or_else(|| "audit log unhealthy".into()),
                    ),
                ),
            );
        }
        // 4. Rate limit: principal, the key the request names (if it names one that exists), and
        //    global; before authorization, so a flood is refused cheaply.
        self.rate_limit(&caller.name, request.subject())?;
        // 5. The operation (ops/): authorize against the key policy, key state, then the caches
        //    (decrypt cache, data-key reuse and pool), and on a miss the backend stack: circuit
        //    breaker, retries with backoff and budget, outbound budget, per-attempt timeout
        //    (limits/resilient.rs) and per-attempt metrics (backend/observed.rs).
        let caller = Caller {
            name: &caller.name,
            arn: &caller.arn,
            tags: &caller.tags,
            admin: self.is_admin(&caller.name),
        };
        // In proxy mode the same step is the proxy's (core/proxy/): local proxy policy, the
        //    decrypt cache, then the upstream KMS under the same breaker, retries and budgets.
        match &self.proxy {
            // Boxed: the forwarded SDK calls make a large future, which must not grow every
            // local call's stack frame.
            Some(proxy) => Box::pin(proxy.run(request, caller, &mut x.obs)).await,
            None => self.kms.run(request, caller, &mut x.obs).await,
        }
        // 6. Observe: the front-end hands the result to `finish` (core/observe.rs).
    }

    /// Charges a call to the inbound limits; over one is `ThrottlingException`.
    fn rate_limit(&self, principal: &str, subject: Subject<'_>) -> Result<(), KmsError> {
        let Some(rate) = &self.rate else {
            return Ok(());
        };
        let index = self.kms.keys().snapshot();
        // A key that does not resolve is charged to the principal and global limits only; the
        // operation then answers NotFoundException (or InvalidCiphertextException).
        let key = match subject {
            Subject::None => None,
            Subject::KeyId(id) => self.kms.keys().find(&index, id),
            Subject::Ciphertext(blob) => ciphertext::parse(blob)
                .ok()
                .and_then(|c| index.keys.get(c.header.key_id).map(|m| m.id.as_str())),
        };
        rate.limits
            .load()
            .check_recorded(&rate.metrics, principal, key)
            .map_err(KmsError::from)
    }

    pub fn is_admin(&self, name: &str) -> bool {
        self.admins.iter().any(|a| a == name)
    }

    /// A new request id: a random per-process prefix and a counter, unique without coordination.
    /// Held inline (no allocation); it derefs to `&str`.
    pub fn request_id(&self) -> RequestId {
        RequestId::new(self.id_prefix, self.next_id.fetch_add(1, Ordering::Relaxed))
    }

    pub fn kms(&self) -> &Kms {
        &self.kms
    }

    pub fn keys(&self) -> &Arc<KeyStore> {
        self.kms.keys()
    }

    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    pub fn audit(&self) -> &AuditLog {
        &self.audit
    }

    pub fn admins(&self) -> &[String] {
        &self.admins
    }

    /// The inbound rate limits, if configured.
    pub fn rate(&self) -> Option<&Arc<RateLimiting>> {
        self.rate.as_ref()
    }
}
