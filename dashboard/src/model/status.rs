//! The admin JSON documents (`/v1/status`, `/v1/audit`, schemas in `docs/admin-api.md`) and the
//! rotation-compliance rules computed from them (or from the `key_rotation_*` metrics when the
//! sidecar does not serve `/v1/status`).

use serde::Deserialize;

/// `GET /v1/status`. Every field is optional so an older or newer sidecar still parses.
#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(default)]
pub struct Status {
    pub version: String,
    pub uptime_seconds: Option<f64>,
    pub backend: Option<BackendStatus>,
    pub limits: Vec<Limit>,
    pub cache: Option<CacheStatus>,
    pub keys: Vec<KeyStatus>,
}

/// `backend` in `/v1/status`.
#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(default)]
pub struct BackendStatus {
    pub name: String,
    /// `closed`, `half_open` or `open`.
    pub circuit: String,
}

/// One configured rate limit.
#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(default)]
pub struct Limit {
    pub scope: String,
    pub name: String,
    pub rate_per_second: f64,
    pub burst: f64,
}

/// `cache` in `/v1/status` (totals since the sidecar started).
#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(default)]
pub struct CacheStatus {
    pub entries: f64,
    pub bytes: f64,
    pub hits: f64,
    pub misses: f64,
}

/// One key's metadata (never material).
#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(default)]
pub struct KeyStatus {
    pub key_id: String,
    pub arn: String,
    pub aliases: Vec<String>,
    pub state: String,
    pub versions: Option<u32>,
    pub rotation_enabled: bool,
    pub rotation_period_days: Option<f64>,
    pub last_rotation: Option<f64>,
    pub next_rotation: Option<f64>,
    pub rotation_overdue: bool,
}

/// `GET /v1/audit`.
#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(default)]
pub struct AuditPage {
    pub records: Vec<AuditRecord>,
}

/// One audit record (the fields the dashboard shows; the hash chain is not checked here). The
/// sidecar writes `null` for what a call did not have (no key, no error): that reads as "".
#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(default)]
pub struct AuditRecord {
    pub time: f64,
    pub request_id: String,
    pub principal: String,
    pub source: String,
    pub operation: String,
    #[serde(deserialize_with = "null_as_empty")]
    pub key_id: String,
    pub outcome: String,
    #[serde(deserialize_with = "null_as_empty")]
    pub error_type: String,
    #[serde(deserialize_with = "null_as_empty")]
    pub reason: String,
    pub latency_ms: Option<f64>,
}

fn null_as_empty<'de, D: serde::Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    Ok(Option::<String>::deserialize(d)?.unwrap_or_default())
}

/// One row of the rotation-compliance table, whichever source it came from.
#[derive(Clone, Debug, PartialEq)]
pub struct RotationRow {
    pub key_id: String,
    /// First alias, or empty.
    pub alias: String,
    /// `Enabled`, `Disabled`, `PendingDeletion`, or empty when only metrics are known.
    pub state: String,
    pub rotation_enabled: bool,
    pub last_rotation: Option<f64>,
    pub next_due: Option<f64>,
    /// Days past `next_due` (0 when not overdue).
    pub days_overdue: f64,
    pub overdue: bool,
    /// Key versions; only `/v1/status` knows them.
    pub versions: Option<u32>,
}

impl RotationRow {
    /// Rotation on and not overdue. Keys that are not enabled do not need rotating.
    pub fn compliant(&self) -> bool {
        !self.counts() || (self.rotation_enabled && !self.overdue)
    }

    /// Whether the key counts towards the compliance percentage (enabled keys only; a key known
    /// only from metrics has no state and counts).
    pub fn counts(&self) -> bool {
        self.state.is_empty() || self.state == "Enabled"
    }
}

const DAY: f64 = 86_400.0;

/// Rows from `/v1/status` keys at time `now`.
pub fn rows_from_status(keys: &[KeyStatus], now: f64) -> Vec<RotationRow> {
    keys.iter()
        .map(|k| {
            let next_due = if k.rotation_enabled {
                k.next_rotation.or_else(|| {
                    k.last_rotation
                        .zip(k.rotation_period_days)
                        .map(|(l, p)| l + p * DAY)
                })
            } else {
                None
            };
            let overdue = k.rotation_overdue || next_due.is_some_and(|d| d < now);
            RotationRow {
                key_id: k.key_id.clone(),
                alias: k.aliases.first().cloned().unwrap_or_default(),
                state: k.state.clone(),
                rotation_enabled: k.rotation_enabled,
                last_rotation: k.last_rotation,
                next_due,
                days_overdue: days_overdue(overdue, next_due, now),
                overdue,
                versions: k.versions,
            }
        })
        .collect()
}

/// The `key_rotation_*` gauges of one key, as the metrics contract exports them.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct KeyRotationMetrics {
    pub key: String,
    pub alias: String,
    pub enabled: Option<f64>,
    pub last_rotation: Option<f64>,
    pub period_seconds: Option<f64>,
    pub overdue: Option<f64>,
}

/// Rows from the rotation gauges (used when `/v1/status` is not served, e.g. via Prometheus).
pub fn rows_from_metrics(keys: &[KeyRotationMetrics], now: f64) -> Vec<RotationRow> {
    keys.iter()
        .map(|k| {
            let enabled = k.enabled.is_some_and(|v| v > 0.0);
            let next_due = if enabled {
                k.last_rotation
                    .zip(k.period_seconds)
                    .filter(|(_, p)| *p > 0.0)
                    .map(|(l, p)| l + p)
            } else {
                None
            };
            let overdue = k.overdue.is_some_and(|v| v > 0.0) || next_due.is_some_and(|d| d < now);
            RotationRow {
                key_id: k.key.clone(),
                alias: k.alias.clone(),
                state: String::new(),
                rotation_enabled: enabled,
                last_rotation: k.last_rotation.filter(|t| *t > 0.0),
                next_due,
                days_overdue: days_overdue(overdue, next_due, now),
                overdue,
                versions: None,
            }
        })
        .collect()
}

fn days_overdue(overdue: bool, next_due: Option<f64>, now: f64) -> f64 {
    match (overdue, next_due) {
        (true, Some(d)) => ((now - d) / DAY).max(0.0),
        _ => 0.0,
    }
}

/// Sorts non-compliant rows first (most overdue first), then by alias and key id.
pub fn sort_rows(rows: &mut [RotationRow]) {
    rows.sort_by(|a, b| {
        a.compliant()
            .cmp(&b.compliant())
            .then(b.days_overdue.total_cmp(&a.days_overdue))
            .then(a.alias.cmp(&b.alias))
            .then(a.key_id.cmp(&b.key_id))
    });
}

/// Compliant share of the keys that count; `None` when no key counts.
pub fn compliance(rows: &[RotationRow]) -> Option<f64> {
    let counted: Vec<&RotationRow> = rows.iter().filter(|r| r.counts()).collect();
    if counted.is_empty() {
        return None;
    }
    let ok = counted.iter().filter(|r| r.compliant()).count();
    Some(ok as f64 / counted.len() as f64)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(id: &str, enabled: bool, last: f64, next: Option<f64>, overdue: bool) -> KeyStatus {
        KeyStatus {
            key_id: id.into(),
            aliases: vec![format!("alias/{id}")],
            state: "Enabled".into(),
            versions: Some(2),
            rotation_enabled: enabled,
            rotation_period_days: Some(365.0),
            last_rotation: Some(last),
            next_rotation: next,
            rotation_overdue: overdue,
            ..KeyStatus::default()
        }
    }

    #[test]
    fn status_document_parses() {
        let json = r#"{"version":"0.1.0","uptime_seconds":1234.5,
          "backend":{"name":"embedded","circuit":"closed"},
          "limits":[{"scope":"global","name":"global","rate_per_second":10000.0,"burst":10000}],
          "cache":{"entries":0,"bytes":0,"hits":3,"misses":1},
          "keys":[{"key_id":"k1","arn":"arn:x","aliases":["alias/orders"],"state":"Enabled",
            "versions":3,"rotation_enabled":true,"rotation_period_days":365,
            "last_rotation":1795434129.0,"next_rotation":1826970129.0,"rotation_overdue":false,
            "future_field":1}]}"#;
        let s: Status = serde_json::from_str(json).unwrap();
        assert_eq!(s.keys[0].versions, Some(3));
        assert_eq!(s.limits[0].rate_per_second, 10000.0);
        assert_eq!(s.backend.unwrap().circuit, "closed");
    }

    #[test]
    fn audit_records_with_nulls_parse() {
        // a call refused before it named a key, exactly as the sidecar writes it
        let json = r#"{"records":[{"time":1795443767.6,"request_id":"ab-1","principal":"unknown",
          "source":"127.0.0.1:5000","operation":"Encrypt","key_id":null,"key_version":null,
          "context_keys":[],"outcome":"denied","error_type":"UnrecognizedClientException",
          "reason":null,"cache":"none","latency_ms":0.1,"prev_hash":"00","hash":"11"}]}"#;
        let page: AuditPage = serde_json::from_str(json).unwrap();
        let r = &page.records[0];
        assert_eq!(r.key_id, "");
        assert_eq!(r.reason, "");
        assert_eq!(r.error_type, "UnrecognizedClientException");
        assert_eq!(r.latency_ms, Some(0.1));
    }

    #[test]
    fn compliance_counts_enabled_keys_and_sorts_overdue_first() {
        let now = 100.0 * DAY;
        let mut disabled = key("d", true, 0.0, None, false);
        disabled.state = "Disabled".into();
        disabled.rotation_enabled = false;
        let keys = vec![
            key("a", true, 50.0 * DAY, Some(200.0 * DAY), false), // compliant
            key("b", true, 0.0, Some(90.0 * DAY), true),          // 10 days overdue
            key("c", false, 0.0, None, false),                    // rotation off
            disabled,                                             // does not count
            key("e", true, 0.0, Some(97.5 * DAY), false),         // due date passed: overdue
        ];
        let mut rows = rows_from_status(&keys, now);
        assert_eq!(compliance(&rows), Some(0.25));
        sort_rows(&mut rows);
        let order: Vec<&str> = rows.iter().map(|r| r.key_id.as_str()).collect();
        assert_eq!(order, ["b", "e", "c", "a", "d"]);
        assert_eq!(rows[0].days_overdue, 10.0);
        assert_eq!(rows[1].days_overdue, 2.5);
        assert!(rows[1].overdue);
        assert_eq!(rows[2].next_due, None);
        assert_eq!(compliance(&[]), None);
    }

    #[test]
    fn rows_from_rotation_gauges() {
        let now = 400.0 * DAY;
        let m = vec![
            KeyRotationMetrics {
                key: "k1".into(),
                alias: "alias/orders".into(),
                enabled: Some(1.0),
                last_rotation: Some(0.0 + DAY),
                period_seconds: Some(365.0 * DAY),
                overdue: Some(1.0),
            },
            KeyRotationMetrics {
                key: "k2".into(),
                enabled: Some(1.0),
                last_rotation: Some(300.0 * DAY),
                period_seconds: Some(365.0 * DAY),
                overdue: Some(0.0),
                ..KeyRotationMetrics::default()
            },
        ];
        let rows = rows_from_metrics(&m, now);
        assert!(rows[0].overdue);
        assert_eq!(rows[0].next_due, Some(366.0 * DAY));
        assert_eq!(rows[0].days_overdue, 34.0);
        assert_eq!(rows[1].versions, None);
        assert_eq!(compliance(&rows), Some(0.5));
    }
}
