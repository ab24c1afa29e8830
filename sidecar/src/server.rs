//! The sidecar process: it opens the data directory, builds the request pipeline, serves the KMS API
//! and the admin API on loopback, runs background maintenance, and shuts down gracefully.
//!
//! [`App::process`] is the request pipeline, written down in one place in the order steps run.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context as TaskContext, Poll};
use std::time::{Duration, Instant, SystemTime};

use anyhow::Context;
use bytes::Buf;
use http::{HeaderValue, Method, Request, Response, StatusCode, header};
use http_body::{Frame, SizeHint};
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;
use tokio::sync::watch;
use zeroize::Zeroizing;

use crate::admin;
use crate::auth::clients::{self, ClientStore, Issued};
use crate::auth::sigv4::{AuthFailure, SignedRequest, Verifier};
use crate::backend::Backend;
use crate::backend::embedded::Embedded;
use crate::backend::faults::Faults;
use crate::backend::observed::Observed;
use crate::backend::pkcs11::Pkcs11;
use crate::backend::resilient::{Resilience, Resilient};
use crate::backend::upstream::Upstream;
use crate::cache::DecryptCache;
use crate::cache::pool::DataKeyPool;
use crate::cache::reuse::DataKeyReuse;
use crate::config::{BackendConfig, Config};
use crate::datadir::{DataDir, DirLock};
use crate::keys::{self, KeyStore};
use crate::limits::{
    Breaker, OutboundBudget, RateLimits, RateSpec, RetryBudget, RetryPolicy, ValidRateSpec,
};
use crate::observe::audit::{self, AuditEvent, AuditLog, Outcome as AuditOutcome};
use crate::observe::{Metrics, security, telemetry};
use crate::ops::{Caller, Kms, Observation, RateLimiting, Reply};
use crate::protocol::{self, ErrorKind, KmsError, Operation, Origin};
use crate::tls::{self, Tls};
use arc_swap::ArcSwap;
use tokio_rustls::TlsAcceptor;
use tracing::Instrument as _;

/// Response header naming the key version an operation used, so callers can verify rotation.
pub const KEY_VERSION_HEADER: &str = "x-kms-sidecar-key-version";

/// Oversized bodies up to this size are drained before the error is sent (see `read_body`).
const DRAIN_LIMIT: usize = 1 << 20;

/// How long a client may take to send a request's headers or body.
const READ_TIMEOUT: Duration = Duration::from_secs(30);

/// A response body that zeroizes its bytes when dropped (responses may carry plaintext).
#[derive(Debug, Default)]
pub struct Body(Option<SecretBuf>);

/// The data chunk of [`Body`].
#[derive(Debug)]
pub struct SecretBuf {
    bytes: Zeroizing<Vec<u8>>,
    pos: usize,
}

impl Buf for SecretBuf {
    fn remaining(&self) -> usize {
        self.bytes.len() - self.pos
    }
    fn chunk(&self) -> &[u8] {
        &self.bytes[self.pos..]
    }
    fn advance(&mut self, cnt: usize) {
        self.pos = (self.pos + cnt).min(self.bytes.len());
    }
}

impl Body {
    pub fn new(bytes: Zeroizing<Vec<u8>>) -> Self {
        Self(Some(SecretBuf { bytes, pos: 0 }))
    }
}

impl http_body::Body for Body {
    type Data = SecretBuf;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _: &mut TaskContext<'_>,
    ) -> Poll<Option<Result<Frame<SecretBuf>, Infallible>>> {
        Poll::Ready(self.0.take().map(|b| Ok(Frame::data(b))))
    }
    fn is_end_stream(&self) -> bool {
        self.0.is_none()
    }
    fn size_hint(&self) -> SizeHint {
        SizeHint::with_exact(self.0.as_ref().map_or(0, |b| b.remaining() as u64))
    }
}

/// Everything a request needs, shared by all connections.
#[derive(Debug)]
pub struct App {
    pub(crate) kms: Kms,
    pub(crate) keys: Arc<KeyStore>,
    clients: Arc<ClientStore>,
    verifier: Verifier,
    pub(crate) metrics: Arc<Metrics>,
    pub(crate) audit: AuditLog,
    pub(crate) config: Config,
    admins: Vec<String>,
    pub(crate) started: Instant,
    /// Continue callers' W3C trace context (only when traces are exported).
    trace_propagation: bool,
    pub(crate) readiness: admin::Readiness,
    /// The fault injector, when `faults_enabled`.
    pub(crate) faults: Option<Arc<Faults>>,
    max_body: usize,
    next_id: AtomicU64,
    id_prefix: u32,
}

/// What [`App::process`] learned about a request, for metrics, the audit log and logs.
#[derive(Default)]
struct Outcome {
    op: Option<Operation>,
    principal: Option<Arc<clients::Client>>,
    /// Why authentication failed, and the principal when it is known (revoked).
    auth_failure: Option<(AuthFailure, Option<String>)>,
    obs: Observation,
}

impl App {
    /// The request pipeline, in order. Cheap rejections first; then every request is authenticated
    /// before anything else, and the operation authorizes against the key policy before it touches
    /// a key, so a revoked client or a tightened policy is refused on the very next call.
    async fn process(
        &self,
        parts: &http::request::Parts,
        body: Incoming,
        out: &mut Outcome,
    ) -> Result<Reply, KmsError> {
        // 1. Parse: POST, a TrentService target and a JSON content type, then a bounded body.
        if parts.method != Method::POST {
            return Err(KmsError::new(
                ErrorKind::UnknownOperation,
                "the KMS API accepts only POST requests",
            ));
        }
        let target = parts
            .headers
            .get("x-amz-target")
            .map(HeaderValue::as_bytes)
            .unwrap_or_default();
        let op = Operation::from_target(target)?;
        out.op = Some(op);
        protocol::check_content_type(
            parts
                .headers
                .get(header::CONTENT_TYPE)
                .map(HeaderValue::as_bytes),
        )?;
        let body = read_body(
            body,
            parts.headers.get(header::CONTENT_LENGTH),
            self.max_body,
        )
        .await?;
        // 2. Authenticate: a valid SigV4 signature from an issued, unrevoked client.
        let signed = SignedRequest {
            method: parts.method.as_str(),
            path: parts.uri.path(),
            query: parts.uri.query().unwrap_or_default(),
            headers: &parts.headers,
            body: &body,
        };
        let client = self
            .verifier
            .verify(&self.clients, &signed, SystemTime::now())
            .map_err(|e| {
                out.auth_failure = Some((e.failure, e.principal));
                e.error
            })?;
        out.principal = Some(client.clone());
        // 3. Audit gate: with the audit log down and fail-closed configured, no key is used unaudited.
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
        // 4. The operation (ops/): resolve the key, rate-limit (principal, key, global), authorize
        //    against the key policy, then the caches (decrypt cache, data-key reuse and pool), and
        //    on a miss the backend stack: outbound budget, circuit breaker, retries with backoff
        //    and budget, per-attempt timeout (backend/resilient.rs), metrics (backend/observed.rs).
        let caller = Caller {
            name: &client.name,
            arn: &client.arn,
            tags: &client.tags,
            admin: self.admins.iter().any(|a| a == &client.name),
        };
        self.kms.call(op, &body, caller, &mut out.obs).await
    }

    /// Counts a refused call in `unauthorized_total` with bounded labels.
    fn count_unauthorized(&self, out: &Outcome, reason: &'static str) {
        let principal = match (&out.principal, &out.auth_failure) {
            (Some(c), _) => c.name.as_str(),
            (None, Some((_, Some(revoked)))) => revoked.as_str(),
            _ => security::UNKNOWN_PRINCIPAL,
        };
        let key = out
            .obs
            .key_id
            .as_deref()
            .map(|k| self.metrics.keys.key_label(k));
        let op = out.op.map_or("unknown", Operation::as_str);
        self.metrics.unauthorized.record(
            principal,
            op,
            key.as_deref().unwrap_or(security::NO_KEY),
            reason,
        );
    }

    async fn handle(self: Arc<Self>, req: Request<Incoming>, peer: SocketAddr) -> Response<Body> {
        let started = Instant::now();
        let request_id = format!(
            "{:08x}-{:012x}",
            self.id_prefix,
            self.next_id.fetch_add(1, Ordering::Relaxed)
        );
        let (parts, body) = req.into_parts();
        let span = telemetry::request_span(&parts.headers, &request_id, self.trace_propagation);
        let mut out = Outcome::default();
        let result = self
            .process(&parts, body, &mut out)
            .instrument(span.clone())
            .await;
        let elapsed = started.elapsed();
        let op_name = out.op.map_or("unknown", Operation::as_str);
        let principal = out.principal.as_ref().map_or("-", |c| c.name.as_str());
        let (status, body, outcome) = match result {
            Ok(reply) => {
                if let (Some(op), Some(key)) = (out.op, out.obs.key_id.as_deref()) {
                    self.metrics.keys.record(key, op);
                }
                tracing::debug!(
                    request_id,
                    operation = op_name,
                    principal,
                    outcome = "ok",
                    latency_us = elapsed.as_micros() as u64,
                    "request"
                );
                (StatusCode::OK, reply.body, None)
            }
            Err(err) => {
                let kind = err.kind();
                if kind.origin() == Origin::Server {
                    tracing::error!(request_id, operation = op_name, principal, outcome = kind.aws_type(), error = %err, cause = ?std::error::Error::source(&err), "request failed");
                } else {
                    tracing::info!(
                        request_id,
                        operation = op_name,
                        principal,
                        outcome = kind.aws_type(),
                        message = err.wire_message(),
                        "request rejected"
                    );
                }
                (kind.status(), Zeroizing::new(err.to_body()), Some(kind))
            }
        };
        let reason = match (&out.auth_failure, out.obs.denied) {
            (Some((failure, _)), _) => Some(failure.reason()),
            (None, Some(denied)) => Some(denied.as_str()),
            (None, None) => None,
        };
        if let Some(reason) = reason {
            self.count_unauthorized(&out, reason);
        }
        let cache = out.obs.cache;
        if !span.is_disabled() {
            span.record("operation", op_name);
            span.record("principal", principal);
            span.record("cache", cache.as_str());
            if let Some(k) = &out.obs.key_id {
                span.record("key_id", k.as_str());
            }
            if let Some(v) = out.obs.key_version {
                span.record("key_version", v);
            }
            if let Some(kind) = outcome {
                span.record("error_type", kind.aws_type());
            }
        }
        self.metrics
            .requests
            .record(out.op, outcome, cache, elapsed);
        let audited = self.audit.record(AuditEvent {
            time: audit::epoch_seconds(SystemTime::now()),
            request_id: request_id.clone(),
            principal: match (&out.principal, &out.auth_failure) {
                (Some(c), _) => c.name.clone(),
                (None, Some((_, Some(revoked)))) => revoked.clone(),
                _ => security::UNKNOWN_PRINCIPAL.to_string(),
            },
            source: peer.to_string(),
            operation: out.op,
            key_id: out.obs.key_id.take(),
            key_version: out.obs.key_version,
            encryption_context: out.obs.context.take().unwrap_or_default(),
            outcome: match (outcome, reason) {
                (None, _) => AuditOutcome::Ok,
                (Some(_), Some(_)) => AuditOutcome::Denied,
                (Some(_), None) => AuditOutcome::Error,
            },
            error_type: outcome,
            reason,
            cache,
            latency_ms: elapsed.as_secs_f64() * 1000.0,
        });
        // Fail closed: a success whose audit record cannot be queued is not returned.
        let (status, body, outcome) = match audited {
            Err(e) if outcome.is_none() && self.audit.fails_closed() => {
                let err = KmsError::from(e);
                tracing::error!(request_id, operation = op_name, error = %err, "audit record lost; failing the call");
                (
                    err.kind().status(),
                    Zeroizing::new(err.to_body()),
                    Some(err.kind()),
                )
            }
            _ => (status, body, outcome),
        };
        let mut response = Response::new(Body::new(body));
        *response.status_mut() = status;
        let headers = response.headers_mut();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static(protocol::CONTENT_TYPE),
        );
        if let Ok(v) = HeaderValue::from_str(&request_id) {
            headers.insert("x-amzn-requestid", v);
        }
        if let (None, Some(version)) = (outcome, out.obs.key_version) {
            headers.insert(KEY_VERSION_HEADER, HeaderValue::from(version));
        }
        if let Some(kind) = outcome {
            headers.insert(
                "x-amzn-errortype",
                HeaderValue::from_static(kind.aws_type()),
            );
        }
        response
    }
}

/// Builds the inbound rate limits for `spec` and the principals known now (issued clients and
/// admins get their own limiters; any other name shares `other`), and exports them.
fn build_rate_limits(
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
    let limits = RateLimits::new(&valid);
    limits.export(&metrics.rate);
    Ok(limits)
}

/// Applies a reloaded configuration to a running sidecar (SIGHUP). Only the inbound rate limits
/// change without a restart; they are validated first, and a bad file keeps the running limits.
#[derive(Clone)]
pub struct Reloader {
    app: Arc<App>,
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
        let app = &self.app;
        let Some(rate) = app.kms.rate() else {
            anyhow::bail!("this sidecar runs without rate limiting");
        };
        let limits = build_rate_limits(&config.rate, &app.admins, &app.clients, &app.metrics)?;
        rate.spec.store(Arc::new(config.rate.clone()));
        rate.limits.store(Arc::new(limits));
        tracing::info!(
            "rate limits reloaded; other settings (outbound budget, breaker, cache, listeners) need a restart"
        );
        Ok(())
    }
}

/// Every version that a key record names has its material on disk. A missing material file (lost,
/// or deleted by hand) would otherwise surface only when a Decrypt fails; it stops the start here,
/// naming both files. Keys pending deletion are exempt: their material is destroyed first, so a
/// crash part-way through a deletion leaves a record without it, which maintenance finishes.
fn check_material(keys: &KeyStore, embedded: &Embedded) -> anyhow::Result<()> {
    let index = keys.snapshot();
    let mut ids: Vec<&String> = index.keys.keys().collect();
    ids.sort();
    for id in ids {
        let Some(meta) = index.keys.get(id) else {
            continue;
        };
        if meta.state == keys::KeyState::PendingDeletion {
            continue;
        }
        if let Some(v) = meta
            .versions
            .iter()
            .find(|v| !embedded.holds(id, v.version))
        {
            anyhow::bail!(
                "key record {} names version {} but its key material {} is missing: restore it from a backup (without it, data encrypted under that version cannot be decrypted)",
                keys.record_path(id).display(),
                v.version,
                embedded.material_path(id, v.version).display()
            );
        }
    }
    Ok(())
}

async fn read_body(
    body: Incoming,
    length: Option<&HeaderValue>,
    max: usize,
) -> Result<Zeroizing<Vec<u8>>, KmsError> {
    let too_large = || {
        KmsError::new(
            ErrorKind::RequestTooLarge,
            format!("the request body is larger than the limit of {max} bytes"),
        )
    };
    if let Some(len) = length
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok())
        && len > max as u64
    {
        // Read and discard a moderately oversized body so the client sees the 4xx instead of a
        // reset connection; anything larger is refused without reading.
        if len <= DRAIN_LIMIT as u64 {
            let _ =
                tokio::time::timeout(READ_TIMEOUT, Limited::new(body, DRAIN_LIMIT).collect()).await;
        }
        return Err(too_large());
    }
    let collected = tokio::time::timeout(READ_TIMEOUT, Limited::new(body, max).collect())
        .await
        .map_err(|_| KmsError::new(ErrorKind::Validation, "timed out reading the request body"))?;
    match collected {
        Ok(c) => Ok(Zeroizing::new(c.to_bytes().to_vec())),
        Err(e)
            if e.downcast_ref::<http_body_util::LengthLimitError>()
                .is_some() =>
        {
            Err(too_large())
        }
        Err(_) => Err(KmsError::new(
            ErrorKind::Serialization,
            "the request body could not be read",
        )),
    }
}

/// A started sidecar: listeners bound, data directory locked, not yet serving.
#[derive(Debug)]
pub struct Sidecar {
    app: Arc<App>,
    keys: Arc<KeyStore>,
    kms_listener: TcpListener,
    admin_listener: TcpListener,
    kms_addr: SocketAddr,
    admin_addr: SocketAddr,
    config: Config,
    issued: Option<Issued>,
    tls: Option<Tls>,
    _lock: DirLock,
}

impl Sidecar {
    /// Opens and checks everything the sidecar needs; any problem is an error naming it.
    pub async fn start(config: Config) -> anyhow::Result<Self> {
        let dir = Arc::new(DataDir::open(&config.data_dir, &config.root_key)?);
        let lock = dir.lock()?;
        let (raw, embedded): (Arc<dyn Backend>, _) = match &config.backend {
            BackendConfig::Embedded => {
                let embedded = Arc::new(Embedded::open(dir.clone())?);
                (embedded.clone(), Some(embedded))
            }
            BackendConfig::Pkcs11(settings) => (Arc::new(Pkcs11::open(settings.clone())?), None),
            BackendConfig::Upstream(settings) => (Arc::new(Upstream::new(settings.clone())?), None),
        };
        let metrics =
            Arc::new(Metrics::register(raw.name(), config.metrics).context("registering metrics")?);
        // Fault injection, only when enabled, sits right on the real backend so that an injected
        // failure is measured, retried and seen by the breaker exactly like a real one.
        let faults = config.faults_enabled.then(|| {
            Arc::new(Faults::new(
                raw.clone(),
                config.backend_timeout,
                &metrics.faults,
            ))
        });
        let raw: Arc<dyn Backend> = match &faults {
            Some(f) => {
                tracing::warn!(
                    "fault injection is enabled: /v1/faults on the admin port can make backend calls fail"
                );
                f.clone()
            }
            None => raw,
        };
        // Every backend attempt is measured (Observed); retries, the outbound budget and the circuit
        // breaker wrap that (Resilient), so each attempt shows in backend_requests_total.
        let observed: Arc<dyn Backend> = Arc::new(Observed::new(raw, metrics.backend.clone()));
        let breaker = Arc::new(Breaker::new(
            observed.name(),
            config.breaker,
            &metrics.breaker,
        )?);
        let outbound = config
            .outbound
            .map(OutboundBudget::new)
            .transpose()?
            .map(Arc::new);
        if let Some(budget) = &outbound {
            budget.export(&metrics.rate, observed.name());
        }
        let resilience = Resilience {
            breaker: breaker.clone(),
            retry: Arc::new(RetryPolicy::new(config.retry)?),
            retry_budget: Arc::new(RetryBudget::new(config.retry_budget)?),
            outbound,
            request_timeout: config.backend_timeout,
            retries: Some(metrics.retry.for_backend(observed.name())),
        };
        let backend: Arc<dyn Backend> = Arc::new(Resilient::new(observed, resilience));
        let keys = Arc::new(
            KeyStore::open(dir.clone(), backend.clone(), config.arn_scope())?
                .with_metrics(metrics.keys.clone()),
        );
        let foreign = keys
            .snapshot()
            .keys
            .values()
            .filter(|k| k.backend != backend.name())
            .count();
        if foreign > 0 {
            anyhow::bail!(
                "data directory {} holds {foreign} key(s) of another backend than {}: use one data directory per backend",
                config.data_dir.display(),
                backend.name()
            );
        }
        if let Some(embedded) = &embedded {
            check_material(&keys, embedded)?;
        }
        let scope = config.arn_scope();
        let clients = Arc::new(ClientStore::open(dir.clone(), &scope.account)?);
        let issued = if clients.is_empty() {
            let issued = clients::add(&dir, "default", Default::default())?;
            clients.reload()?;
            Some(issued)
        } else {
            None
        };
        let rate = Arc::new(RateLimiting {
            limits: ArcSwap::from_pointee(build_rate_limits(
                &config.rate,
                &config.admin_principals,
                &clients,
                &metrics,
            )?),
            spec: ArcSwap::from_pointee(config.rate.clone()),
            metrics: metrics.rate.clone(),
        });
        let audit =
            AuditLog::open(config.audit.clone(), metrics.audit.clone()).with_context(|| {
                format!(
                    "cannot open the audit log in {}",
                    config.audit.dir.display()
                )
            })?;
        let tls = config
            .tls
            .as_ref()
            .map(|source| tls::load(source, &config.data_dir, config.listen))
            .transpose()?;
        let kms_listener = TcpListener::bind(config.listen)
            .await
            .with_context(|| format!("cannot listen on {} (KMS API)", config.listen))?;
        let admin_listener = TcpListener::bind(config.admin_listen)
            .await
            .with_context(|| format!("cannot listen on {} (admin API)", config.admin_listen))?;
        let kms_addr = kms_listener.local_addr()?;
        let admin_addr = admin_listener.local_addr()?;
        let report = keys.maintain(keys::now()).await;
        if !report.rotation_failed.is_empty() || !report.deletion_failed.is_empty() {
            tracing::warn!(rotation_failed = ?report.rotation_failed, deletion_failed = ?report.deletion_failed, "maintenance at start left work for later");
        }
        let app = Arc::new(App {
            kms: Kms::with_caches(
                keys.clone(),
                config
                    .admin_principals
                    .iter()
                    .map(|n| clients::principal_arn(&scope.account, n))
                    .collect(),
                DecryptCache::new(config.cache, metrics.cache.for_cache("decrypt")),
                DataKeyPool::new(config.pool, metrics.cache.for_cache("data_key_pool")),
                config.cache_invalidate_on_rotation,
            )
            .with_limits(rate, Some(breaker))
            .with_reuse(DataKeyReuse::new(
                config.reuse.clone(),
                metrics.cache.for_cache("data_key_reuse"),
            )),
            audit,
            config: config.clone(),
            admins: config.admin_principals.clone(),
            keys: keys.clone(),
            clients,
            verifier: Verifier::new(config.max_clock_skew),
            metrics,
            started: Instant::now(),
            trace_propagation: config.otlp_endpoint.is_some(),
            readiness: admin::Readiness::default(),
            faults,
            max_body: config.max_body_bytes,
            next_id: AtomicU64::new(0),
            id_prefix: getrandom::u32().unwrap_or_default(),
        });
        Ok(Self {
            app,
            keys,
            kms_listener,
            admin_listener,
            kms_addr,
            admin_addr,
            config,
            issued,
            tls,
            _lock: lock,
        })
    }

    pub fn kms_addr(&self) -> SocketAddr {
        self.kms_addr
    }

    pub fn admin_addr(&self) -> SocketAddr {
        self.admin_addr
    }

    /// A handle that applies a reloaded configuration (see [`Reloader`]).
    pub fn reloader(&self) -> Reloader {
        Reloader {
            app: self.app.clone(),
        }
    }

    /// The KMS API's base URL (`http://` or `https://`).
    pub fn kms_endpoint(&self) -> String {
        let scheme = if self.tls.is_some() { "https" } else { "http" };
        format!("{scheme}://{}", self.kms_addr)
    }

    /// The TLS settings in use, if the KMS port speaks HTTPS.
    pub fn tls(&self) -> Option<&Tls> {
        self.tls.as_ref()
    }

    /// The credential issued on first run, to be shown once.
    pub fn take_issued(&mut self) -> Option<Issued> {
        self.issued.take()
    }

    /// Serves until `shutdown` resolves, then lets in-flight requests finish (up to the grace period).
    pub async fn run(self, shutdown: impl Future<Output = ()>) -> anyhow::Result<()> {
        let (stop_tx, stop_rx) = watch::channel(false);
        let graceful = Arc::new(GracefulShutdown::new());
        let kms_app = self.app.clone();
        let kms = tokio::spawn(accept_loop(
            self.kms_listener,
            self.tls.map(|t| t.acceptor),
            stop_rx.clone(),
            graceful.clone(),
            move |req, peer| kms_app.clone().handle(req, peer),
        ));
        let admin_app = self.app.clone();
        let admin = tokio::spawn(accept_loop(
            self.admin_listener,
            None,
            stop_rx.clone(),
            graceful.clone(),
            move |req, _peer| admin::handle(admin_app.clone(), req),
        ));
        let background = tokio::spawn(background(
            self.app.clone(),
            self.keys.clone(),
            self.config.maintenance_interval,
            stop_rx,
        ));
        shutdown.await;
        tracing::info!("shutting down: no new connections, letting in-flight requests finish");
        let _ = stop_tx.send(true);
        let _ = tokio::join!(kms, admin, background);
        match Arc::try_unwrap(graceful) {
            Ok(g) => {
                if tokio::time::timeout(self.config.shutdown_grace, g.shutdown())
                    .await
                    .is_err()
                {
                    tracing::warn!("shutdown grace period over; closing remaining connections");
                }
            }
            Err(_) => tracing::warn!("connections still referenced at shutdown"),
        }
        Ok(())
    }
}

async fn accept_loop<F, Fut>(
    listener: TcpListener,
    tls: Option<TlsAcceptor>,
    mut stop: watch::Receiver<bool>,
    graceful: Arc<GracefulShutdown>,
    handler: F,
) where
    F: Fn(Request<Incoming>, SocketAddr) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = Response<Body>> + Send + 'static,
{
    loop {
        let accepted = tokio::select! {
            a = listener.accept() => a,
            _ = stop.changed() => return,
        };
        let (stream, peer) = match accepted {
            Ok(a) => a,
            Err(e) => {
                // Out of file descriptors and the like: back off instead of spinning.
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let handler = handler.clone();
        let service = hyper::service::service_fn(move |req| {
            let fut = handler(req, peer);
            async move { Ok::<_, Infallible>(fut.await) }
        });
        match &tls {
            None => serve_connection(TokioIo::new(stream), service, &graceful),
            Some(acceptor) => {
                // The handshake runs in its own task, bounded like a request read, so a slow or
                // silent client cannot hold up the accept loop.
                let acceptor = acceptor.clone();
                let graceful = graceful.clone();
                tokio::spawn(async move {
                    match tokio::time::timeout(READ_TIMEOUT, acceptor.accept(stream)).await {
                        Ok(Ok(stream)) => {
                            serve_connection(TokioIo::new(stream), service, &graceful)
                        }
                        Ok(Err(e)) => tracing::debug!(%peer, error = %e, "TLS handshake failed"),
                        Err(_) => tracing::debug!(%peer, "TLS handshake timed out"),
                    }
                });
            }
        }
    }
}

/// Serves one HTTP/1.1 connection in a task of its own, tracked for graceful shutdown.
fn serve_connection<I, S>(io: I, service: S, graceful: &GracefulShutdown)
where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
    S: hyper::service::Service<Request<Incoming>, Response = Response<Body>, Error = Infallible>
        + Send
        + 'static,
    S::Future: Send + 'static,
{
    let conn = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(READ_TIMEOUT)
        .serve_connection(io, service);
    let conn = graceful.watch(conn);
    tokio::spawn(async move {
        if let Err(e) = conn.await {
            tracing::debug!(error = %e, "connection ended with an error");
        }
    });
}

/// Reloads client credentials every second and runs key maintenance on its interval.
async fn background(
    app: Arc<App>,
    keys: Arc<KeyStore>,
    interval: Duration,
    mut stop: watch::Receiver<bool>,
) {
    let mut clients_tick = tokio::time::interval(Duration::from_secs(1));
    let mut maintenance_tick = tokio::time::interval(interval);
    clients_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    maintenance_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last_charge = Instant::now();
    loop {
        tokio::select! {
            _ = stop.changed() => return,
            _ = clients_tick.tick() => {
                // Keys cost money by the month: charge the time since the last tick.
                let now = Instant::now();
                app.metrics.backend.charge_keys(keys.snapshot().keys.len(), now - last_charge);
                last_charge = now;
                match app.clients.reload_if_changed() {
                    Ok(true) => {
                        tracing::info!("client credentials reloaded");
                        // New principals get limiters of their own (counters restart; see docs/resilience.md).
                        if let Some(rate) = app.kms.rate() {
                            match build_rate_limits(&rate.spec.load(), &app.admins, &app.clients, &app.metrics) {
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
