//! The admin API on its own port: `/metrics`, `/healthz`, `/readyz`, `/v1/status`, `/v1/keys`
//! (schemas in `docs/admin-api.md`). It reads the sidecar's state and never returns key material.

use std::sync::Arc;
use std::time::{Duration, Instant};

use http::{HeaderValue, Method, Request, Response, StatusCode, header};
use hyper::body::Incoming;
use serde::Serialize;
use zeroize::Zeroizing;

use crate::auth::admin_token::{self, AdminAuthError};
use crate::backend::KeyRef;
use crate::keys::{self, Index, KeyState};
use crate::observe::audit::AuditQuery;
use crate::observe::{metrics, security};
use crate::server::{App, Body};

/// How long a readiness result is reused, so probes cannot flood the backend.
const READINESS_TTL: Duration = Duration::from_secs(1);

/// The cached result of the last readiness check.
#[derive(Debug, Default)]
pub struct Readiness {
    last: tokio::sync::Mutex<Option<(Instant, Vec<String>)>>,
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

fn key_summaries(app: &App, index: &Index, now: f64) -> Vec<KeySummary> {
    let mut out: Vec<KeySummary> = index
        .keys
        .values()
        .map(|m| KeySummary {
            key_id: m.id.clone(),
            arn: app.keys.key_arn(&m.id),
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
            rotation_overdue: app.metrics.keys.is_overdue(m, now),
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
    keys: Vec<KeySummary>,
}

#[derive(Debug, Serialize)]
struct BackendStatus {
    name: &'static str,
    /// `closed`, `half_open` or `open`.
    circuit: &'static str,
}

/// The configured inbound limits and outbound budget, as `/v1/status` lists them.
fn limits(app: &App) -> Vec<serde_json::Value> {
    let config = &app.config;
    // the running spec: it changes on reload
    let rate = app
        .kms
        .rate()
        .map_or_else(|| Arc::new(config.rate.clone()), |r| r.spec.load_full());
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
    if let Some(b) = &config.outbound {
        out.push(serde_json::json!({
            "scope": "backend", "name": "outbound", "rate_per_second": b.per_second, "burst": b.burst,
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

/// Runs (at most once per [`READINESS_TTL`]) a real round trip through the backend: random bytes,
/// and an encrypt + decrypt under the current version of one enabled key if there is one.
async fn readiness(app: &App) -> Vec<String> {
    let mut last = app.readiness.last.lock().await;
    if let Some((at, reasons)) = last.as_ref()
        && at.elapsed() < READINESS_TTL
    {
        return reasons.clone();
    }
    let mut reasons = Vec::new();
    if !app.audit.is_healthy() {
        reasons.push(format!(
            "audit log not writable: {}",
            app.audit
                .last_error()
                .unwrap_or_else(|| "unknown error".into())
        ));
    }
    let backend = app.keys.backend();
    if let Err(e) = backend.random(16).await {
        reasons.push(format!("backend random failed: {:?}", e.kind));
    }
    let probe = {
        let index = app.keys.snapshot();
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
        let aad = b"kms-sidecar readiness probe";
        match backend.encrypt(key, aad, b"ready").await {
            Ok(sealed) => match backend.decrypt(key, aad, &sealed).await {
                Ok(p) if p.as_slice() == b"ready" => {}
                Ok(_) => reasons.push("backend round trip returned wrong bytes".into()),
                Err(e) => reasons.push(format!("backend decrypt failed: {:?}", e.kind)),
            },
            Err(e) => reasons.push(format!("backend encrypt failed: {:?}", e.kind)),
        }
    }
    *last = Some((Instant::now(), reasons.clone()));
    reasons
}

/// With an admin token configured, refuses requests without it (401), counted as unauthorized
/// calls with operation `admin`.
fn check_token(app: &App, req: &Request<Incoming>) -> Option<Response<Body>> {
    let token = app.config.admin_token.as_ref()?;
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
    app.metrics.unauthorized.record(
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
pub async fn handle(app: Arc<App>, req: Request<Incoming>) -> Response<Body> {
    if let Some(refused) = check_token(&app, &req) {
        return refused;
    }
    let now = keys::now();
    let (status, content_type, body) = match (req.method(), req.uri().path()) {
        (&Method::GET, "/metrics") => {
            let index = app.keys.snapshot();
            app.metrics.keys.refresh(&index, now);
            app.kms.cache().sync().await;
            app.kms.cache().refresh_gauges(&index);
            app.kms.pool().refresh_gauges();
            (
                StatusCode::OK,
                "text/plain; version=0.0.4",
                metrics::render(&app.metrics.registry),
            )
        }
        (&Method::GET, "/healthz") => (StatusCode::OK, "text/plain", b"ok\n".to_vec()),
        (&Method::GET, "/readyz") => {
            let reasons = readiness(&app).await;
            if reasons.is_empty() {
                (StatusCode::OK, "text/plain", b"ready\n".to_vec())
            } else {
                let text = format!("not ready:\n{}\n", reasons.join("\n"));
                (
                    StatusCode::SERVICE_UNAVAILABLE,
                    "text/plain",
                    text.into_bytes(),
                )
            }
        }
        (&Method::GET, "/v1/status") => {
            let index = app.keys.snapshot();
            let status = Status {
                version: env!("CARGO_PKG_VERSION"),
                uptime_seconds: app.started.elapsed().as_secs_f64(),
                backend: BackendStatus {
                    name: app.keys.backend().name(),
                    circuit: app.kms.breaker_state().map_or("closed", |s| s.as_str()),
                },
                limits: limits(&app),
                cache: Some(
                    serde_json::json!({ "enabled": app.kms.cache().enabled(), "pool_enabled": app.kms.pool().enabled() }),
                ),
                keys: key_summaries(&app, &index, now),
            };
            json(StatusCode::OK, &status)
        }
        (&Method::GET, "/v1/audit") => {
            match AuditQuery::from_query_string(req.uri().query().unwrap_or_default()) {
                Ok(query) => json(
                    StatusCode::OK,
                    &serde_json::json!({ "records": app.audit.query(&query) }),
                ),
                Err(e) => (
                    StatusCode::BAD_REQUEST,
                    "text/plain",
                    format!("{e}\n").into_bytes(),
                ),
            }
        }
        (&Method::GET, "/v1/keys") => {
            let index = app.keys.snapshot();
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
