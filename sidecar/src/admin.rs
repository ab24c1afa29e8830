//! The admin API on its own port: `/metrics`, `/healthz`, `/readyz`, `/v1/status`, `/v1/keys`,
//! `/v1/audit`, and `/v1/faults` when fault injection is enabled (schemas in `docs/admin-api.md`).
//! It reads the sidecar's state and never returns key material; `/v1/faults` is its only write.

mod history;

use std::sync::Arc;
use std::time::{Duration, Instant};

use http::{HeaderValue, Method, Request, Response, StatusCode, header};
use http_body_util::BodyExt as _;
use hyper::body::Incoming;
use serde::Serialize;
use zeroize::Zeroizing;

use crate::auth::admin_token::{self, AdminAuthError};
use crate::backend::Backend as _;
use crate::backend::KeyRef;
use crate::backend::faults::Faults;
use crate::backend::faults::{FaultKind, FaultSpec};
use crate::config::Config;
use crate::core::Core;
use crate::core::health::{self, RoundTripError};
use crate::frontend::http::Body;
use crate::keys::{self, Index, KeyState};
use crate::observe::audit::AuditQuery;
use crate::observe::{metrics, security};

/// The largest `/v1/faults` body read.
const MAX_FAULT_BODY: usize = 16 * 1024;

/// What the admin API reads: the core (keys, caches, limits, metrics, audit log), the settings,
/// the fault injector when enabled, and the cached readiness result.
#[derive(Debug)]
pub struct Admin {
    core: Arc<Core>,
    config: Config,
    readiness: Readiness,
    faults: Option<Arc<Faults>>,
    started: Instant,
}

impl Admin {
    pub fn new(core: Arc<Core>, config: Config, faults: Option<Arc<Faults>>) -> Self {
        Self {
            core,
            config,
            readiness: Readiness::default(),
            faults,
            started: Instant::now(),
        }
    }
}

/// The cached result of the last readiness check (reused for `core::health::TTL`, so probes
/// cannot flood the backend).
#[derive(Debug, Default)]
pub struct Readiness {
    last: health::Memo<(), Report>,
}

/// What a readiness check found: reasons to take the sidecar out of service, and reasons it serves
/// but not at its best (a throttling backend is up; another replica shares the same quota, so
/// moving traffic there would not help).
#[derive(Debug, Clone, Default)]
struct Report {
    down: Vec<String>,
    degraded: Vec<String>,
}

impl Report {
    fn round_trip_failed(&mut self, e: &RoundTripError) {
        match e {
            RoundTripError::Backend { call, error } => self.backend_failed(call, error),
            RoundTripError::WrongBytes => self.down.push(e.to_string()),
        }
    }

    fn backend_failed(&mut self, call: &str, e: &crate::backend::BackendError) {
        let line = match e.source.as_deref() {
            Some(source) => format!("backend {call} failed: {:?}: {source}", e.kind),
            None => format!("backend {call} failed: {:?}", e.kind),
        };
        if crate::limits::classify::is_throttle(e) {
            self.degraded.push(line);
        } else {
            self.down.push(line);
        }
    }
}

/// One key in `/v1/status` and `/v1/keys`: metadata only.
#[derive(Debug, Serialize)]
pub struct KeySummary {
    pub key_id: String,
    pub arn: String,
    pub aliases: Vec<String>,
    pub state: &'static str,
    pub versions: usize,
    pub rotation_enabled: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rotation_period_days: Option<u32>,
    pub last_rotation: f64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next_rotation: Option<f64>,
    pub rotation_overdue: bool,
}

fn key_summaries(app: &Admin, index: &Index, now: f64) -> Vec<KeySummary> {
    let mut out: Vec<KeySummary> = index
        .keys
        .values()
        .map(|m| KeySummary {
            key_id: m.id.clone(),
            arn: app.core.keys().key_arn(&m.id),
            aliases: index
                .aliases
                .iter()
                .filter(|(_, a)| a.target == m.id)
                .map(|(name, _)| name.clone())
                .collect(),
            state: m.state.as_str(),
            versions: m.versions.len(),
            rotation_enabled: m.rotation_enabled,
            rotation_period_days: m.rotation_period_days.filter(|_| m.rotation_enabled),
            last_rotation: m.versions.last().map_or(m.created, |v| v.created),
            next_rotation: m.next_rotation.filter(|_| m.rotation_enabled),
            rotation_overdue: app.core.metrics().keys.is_overdue(m, now),
        })
        .collect();
    out.sort_by(|a, b| a.key_id.cmp(&b.key_id));
    out
}

#[derive(Debug, Serialize)]
struct Status {
    version: &'static str,
    uptime_seconds: f64,
    backend: BackendStatus,
    limits: Vec<serde_json::Value>,
    cache: Option<serde_json::Value>,
    /// `enabled` (fault injection allowed) and `active` (a fault spec is set).
    faults: serde_json::Value,
    keys: Vec<KeySummary>,
    /// Each principal's admitted and throttled calls per second over the last minute of the
    /// history (`observe::history`), for headroom against `limits`.
    principals: Vec<crate::observe::history::PrincipalRate>,
}

#[derive(Debug, Serialize)]
struct BackendStatus {
    name: &'static str,
    /// `closed`, `half_open` or `open`.
    circuit: &'static str,
}

/// The configured inbound limits and outbound budget, as `/v1/status` lists them.
fn limits(app: &Admin) -> Vec<serde_json::Value> {
    let config = &app.config;
    // the running spec: it changes on reload
    let rate = app
        .core
        .rate()
        .map_or_else(|| Arc::new(config.rate().clone()), |r| r.spec.load_full());
    let mut out = Vec::new();
    let mut push = |scope: &str, name: &str, windows: &[crate::limits::WindowSpec]| {
        for w in windows {
            out.push(serde_json::json!({
                "scope": scope,
                "name": name,
                "rate_per_second": w.rate / w.period.as_secs_f64(),
                "burst": w.burst,
            }));
        }
    };
    push("global", "global", &rate.global);
    push("principal", "default", &rate.principal_default);
    for (name, w) in &rate.principal_overrides {
        push("principal", name, w);
    }
    push("key", "default", &rate.key_default);
    if let Some(b) = &config.outbound() {
        out.push(serde_json::json!({
            "scope": "backend", "name": "outbound", "rate_per_second": b.per_second(), "burst": b.burst(),
        }));
    }
    out
}

fn json<T: Serialize>(status: StatusCode, value: &T) -> (StatusCode, &'static str, Vec<u8>) {
    match serde_json::to_vec_pretty(value) {
        Ok(body) => (status, "application/json", body),
        Err(_) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            "text/plain",
            b"encoding failed\n".to_vec(),
        ),
    }
}

/// Runs (at most once per `core::health::TTL`) a real round trip through the backend: random
/// bytes, and an encrypt + decrypt under the current version of one enabled key if there is one.
async fn readiness(app: &Admin) -> Report {
    app.readiness
        .last
        .get_or_check((), check_readiness(app))
        .await
}

async fn check_readiness(app: &Admin) -> Report {
    let mut report = Report::default();
    if let Some(spec) = app.faults.as_ref().and_then(|f| f.spec()) {
        report.degraded.push(format!(
            "fault injection active (DELETE /v1/faults clears): {}",
            serde_json::to_string(&spec).unwrap_or_default()
        ));
    }
    if let Some(registry) = app.core.keys().registry()
        && !registry.is_up()
    {
        // Crypto is served from the last applied registry, so the pod stays ready; key
        // administration fails until etcd is back.
        report.degraded.push(format!(
            "registry degraded: etcd unreachable or without quorum; serving from revision {} applied {:.0} s ago; key administration is refused",
            registry.applied_revision(),
            registry.lag_seconds()
        ));
    }
    let reasons = &mut report.down;
    if !app.core.audit().is_healthy() {
        reasons.push(format!(
            "audit log not writable: {}",
            app.core
                .audit()
                .last_error()
                .unwrap_or_else(|| "unknown error".into())
        ));
    }
    let backend = app.core.keys().backend();
    if let Err(e) = backend.random(16).await {
        report.backend_failed("random", &e);
    }
    let probe = {
        let index = app.core.keys().snapshot();
        index
            .keys
            .values()
            .filter(|m| m.state == KeyState::Enabled)
            .min_by(|a, b| a.id.cmp(&b.id))
            .map(|m| (m.id.clone(), m.current_version()))
    };
    if let Some((key_id, version)) = probe {
        let key = KeyRef {
            key_id: &key_id,
            version,
        };
        if let Err(e) = health::round_trip(backend.as_ref(), key).await {
            report.round_trip_failed(&e);
        }
    }
    report
}

/// `/v1/faults`: the current fault spec (GET), a new one (PUT, POST), none (DELETE). Refused with
/// 403 unless fault injection is enabled; a bad spec is a 400 naming the problem.
async fn faults(app: &Admin, req: Request<Incoming>) -> (StatusCode, &'static str, Vec<u8>) {
    let error = |status: StatusCode, message: String| {
        json(status, &serde_json::json!({ "error": message }))
    };
    let Some(faults) = &app.faults else {
        return error(
            StatusCode::FORBIDDEN,
            "fault injection is disabled: start the sidecar with --faults-enabled (or faults_enabled = true in its config file)".into(),
        );
    };
    match *req.method() {
        Method::GET => {}
        Method::PUT | Method::POST => {
            let body = tokio::time::timeout(
                Duration::from_secs(10),
                http_body_util::Limited::new(req.into_body(), MAX_FAULT_BODY).collect(),
            )
            .await;
            let body = match body {
                Ok(Ok(collected)) => collected.to_bytes(),
                Ok(Err(_)) => {
                    return error(
                        StatusCode::BAD_REQUEST,
                        format!(
                            "the body could not be read or is larger than {MAX_FAULT_BODY} bytes"
                        ),
                    );
                }
                Err(_) => {
                    return error(
                        StatusCode::REQUEST_TIMEOUT,
                        "timed out reading the body".into(),
                    );
                }
            };
            let spec = match FaultSpec::parse(&body, faults.name()) {
                Ok(spec) => spec,
                Err(e) => return error(StatusCode::BAD_REQUEST, e.to_string()),
            };
            let detail = serde_json::to_string(&spec).unwrap_or_default();
            if let Err(e) = faults.set(spec) {
                return error(StatusCode::BAD_REQUEST, e.to_string());
            }
            app.core
                .metrics()
                .history
                .events()
                .record(crate::observe::history::EventKind::FaultsOn, detail);
        }
        Method::DELETE => {
            faults.clear();
            app.core.metrics().history.events().record(
                crate::observe::history::EventKind::FaultsOff,
                "fault injection cleared",
            );
        }
        _ => {
            return error(
                StatusCode::METHOD_NOT_ALLOWED,
                "use GET, PUT, POST or DELETE".into(),
            );
        }
    }
    let spec = faults.spec();
    let injected: serde_json::Map<String, serde_json::Value> = FaultKind::ALL
        .iter()
        .map(|k| (k.as_str().to_string(), faults.counters().get(*k).into()))
        .collect();
    json(
        StatusCode::OK,
        &serde_json::json!({
            "enabled": true,
            "backend": faults.name(),
            "active": spec.is_some(),
            "spec": spec,
            "injected": injected,
        }),
    )
}

/// With an admin token configured, refuses requests without it (401), counted as unauthorized
/// calls with operation `admin`.
fn check_token(app: &Admin, req: &Request<Incoming>) -> Option<Response<Body>> {
    let token = app.config.admin_token()?;
    if admin_token::is_open_path(req.uri().path()) {
        return None;
    }
    let presented = req
        .headers()
        .get(header::AUTHORIZATION)
        .map(HeaderValue::as_bytes);
    let err = token.check(presented).err()?;
    let reason = match err {
        AdminAuthError::Missing => "missing_signature",
        AdminAuthError::Wrong => "bad_signature",
    };
    app.core.metrics().unauthorized.record(
        "admin",
        security::UNKNOWN_PRINCIPAL,
        "admin",
        security::NO_KEY,
        reason,
    );
    tracing::warn!(path = req.uri().path(), error = %err, "admin request refused");
    let (status, content_type, body) = json(
        StatusCode::UNAUTHORIZED,
        &serde_json::json!({ "error": err.to_string() }),
    );
    let mut response = Response::new(Body::new(Zeroizing::new(body)));
    *response.status_mut() = status;
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    headers.insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
    Some(response)
}

/// Serves one admin request.
pub async fn handle(app: Arc<Admin>, req: Request<Incoming>) -> Response<Body> {
    if let Some(refused) = check_token(&app, &req) {
        return refused;
    }
    let now = keys::now();
    let (status, content_type, body) = match (req.method(), req.uri().path()) {
        (&Method::GET, "/metrics") => {
            let index = app.core.keys().snapshot();
            app.core.metrics().keys.refresh(&index, now);
            app.core.kms().cache().sync().await;
            app.core.kms().cache().refresh_gauges(&index);
            app.core.kms().pool().refresh_gauges();
            app.core.kms().reuse().refresh_gauges();
            if let Some(proxy) = app.core.proxy() {
                proxy.data_keys().refresh_gauges();
            }
            (
                StatusCode::OK,
                "text/plain; version=0.0.4",
                metrics::render(&app.core.metrics().registry),
            )
        }
        (&Method::GET, "/healthz") => (StatusCode::OK, "text/plain", b"ok\n".to_vec()),
        (&Method::GET, "/readyz") => {
            let report = readiness(&app).await;
            let mut text = String::new();
            if !report.down.is_empty() {
                text.push_str(&format!("not ready:\n{}\n", report.down.join("\n")));
            }
            if !report.degraded.is_empty() {
                text.push_str(&format!("degraded:\n{}\n", report.degraded.join("\n")));
            }
            if text.is_empty() {
                text.push_str("ready\n");
            }
            let status = if report.down.is_empty() {
                StatusCode::OK
            } else {
                StatusCode::SERVICE_UNAVAILABLE
            };
            (status, "text/plain", text.into_bytes())
        }
        (_, "/v1/faults") => faults(&app, req).await,
        (&Method::GET, "/v1/status") => {
            let index = app.core.keys().snapshot();
            let status = Status {
                version: env!("CARGO_PKG_VERSION"),
                uptime_seconds: app.started.elapsed().as_secs_f64(),
                backend: BackendStatus {
                    name: app.core.keys().backend().name(),
                    circuit: app
                        .core
                        .kms()
                        .breaker_state()
                        .map_or("closed", |s| s.as_str()),
                },
                limits: limits(&app),
                cache: Some(
                    serde_json::json!({ "enabled": app.core.kms().cache().enabled(), "pool_enabled": app.core.kms().pool().enabled() }),
                ),
                faults: serde_json::json!({
                    "enabled": app.faults.is_some(),
                    "active": app.faults.as_ref().is_some_and(|f| f.spec().is_some()),
                }),
                keys: key_summaries(&app, &index, now),
                principals: app.core.metrics().history.principal_rates(60.0),
            };
            json(StatusCode::OK, &status)
        }
        (&Method::GET, "/v1/audit") => {
            match AuditQuery::from_query_string(req.uri().query().unwrap_or_default()) {
                Ok(query) => json(
                    StatusCode::OK,
                    &serde_json::json!({ "records": app.core.audit().query(&query) }),
                ),
                Err(e) => (
                    StatusCode::BAD_REQUEST,
                    "text/plain",
                    format!("{e}\n").into_bytes(),
                ),
            }
        }
        (&Method::GET, "/v1/history") => history::get(&app, req.uri().query()),
        (&Method::GET, "/v1/keys") => {
            let index = app.core.keys().snapshot();
            json(
                StatusCode::OK,
                &serde_json::json!({ "keys": key_summaries(&app, &index, now) }),
            )
        }
        _ => (StatusCode::NOT_FOUND, "text/plain", b"not found\n".to_vec()),
    };
    let mut response = Response::new(Body::new(Zeroizing::new(body)));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    response
}
