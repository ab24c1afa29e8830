//! `GET /v1/history`: the sidecar's in-process history (`observe::history`), so a dashboard opened
//! after an incident shows the hours before it opened. `?since=T` (Unix seconds) returns only
//! newer samples and events, for a dashboard that reconnects.

use http::StatusCode;

use super::{Admin, json};

/// The `/v1/history` answer: `(status, content type, body)` like the other admin handlers.
pub(super) fn get(app: &Admin, query: Option<&str>) -> (StatusCode, &'static str, Vec<u8>) {
    let mut since = 0.0;
    for pair in query
        .unwrap_or_default()
        .split('&')
        .filter(|p| !p.is_empty())
    {
        match pair.split_once('=') {
            Some(("since", v)) => match v.parse::<f64>() {
                Ok(t) if t.is_finite() => since = t,
                _ => return bad(format!("since must be Unix seconds, got {v:?}")),
            },
            _ => {
                return bad(format!(
                    "unknown query parameter {pair:?}; only since=T is known"
                ));
            }
        }
    }
    let snapshot = app.core.metrics().history.snapshot(since);
    // compact, not pretty: 6 h of a few hundred series
    match serde_json::to_vec(&snapshot) {
        Ok(body) => (StatusCode::OK, "application/json", body),
        Err(_) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            "text/plain",
            b"encoding failed\n".to_vec(),
        ),
    }
}

fn bad(message: String) -> (StatusCode, &'static str, Vec<u8>) {
    json(
        StatusCode::BAD_REQUEST,
        &serde_json::json!({ "error": message }),
    )
}
