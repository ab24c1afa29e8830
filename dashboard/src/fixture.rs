//! Synthetic data covering the whole metrics contract, for the UI tests and the frame-time
//! measurement only (`--demo` is never mixed with a real source). A real sidecar today exports
//! only the request families; this fixture is what lets every view be tested before the rest
//! of the contract ships.

use crate::model::prom::{Kind, Labels, Sample};
use crate::model::status::{AuditRecord, KeyStatus, Limit, Status};
use crate::model::{Endpoint, Model, ModelConfig};

/// The fixed "now" of fixtures and UI tests (2026-11-23 07:02:09 UTC).
pub const NOW: f64 = 1_795_417_329.0;

/// The key every rotation test looks for: overdue by 30 days.
pub const OVERDUE_ALIAS: &str = "alias/orders";

/// The denied principal in the fixture's audit log.
pub const DENIED_PRINCIPAL: &str = "intruder";

/// The fixture's source URL.
pub const SOURCE: &str = "http://127.0.0.1:7301";

const DAY: f64 = 86_400.0;
const BUCKETS: [f64; 8] = [0.00005, 0.0001, 0.0005, 0.001, 0.005, 0.01, 0.1, 1.0];

fn labels(pairs: &[(&str, &str)]) -> Labels {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn sample(name: &str, pairs: &[(&str, &str)], value: f64) -> Sample {
    let name = format!("kms_sidecar_{name}");
    let kind = crate::model::prom::kind_from_name(&name);
    Sample {
        name,
        labels: labels(pairs),
        value,
        kind,
    }
}

fn histogram(out: &mut Vec<Sample>, name: &str, pairs: &[(&str, &str)], n: f64, scale: f64) {
    // a fixed shape: most calls fast, a tail reaching `scale`
    let shares = [0.0, 0.05, 0.45, 0.75, 0.93, 0.97, 0.995, 1.0];
    for (le, share) in BUCKETS.iter().zip(shares) {
        let le_s = format!("{}", le * scale);
        let mut p: Vec<(&str, &str)> = pairs.to_vec();
        p.push(("le", &le_s));
        out.push(sample(&format!("{name}_bucket"), &p, (n * share).floor()));
    }
    let mut p: Vec<(&str, &str)> = pairs.to_vec();
    p.push(("le", "+Inf"));
    out.push(sample(&format!("{name}_bucket"), &p, n));
    out.push(sample(&format!("{name}_count"), pairs, n));
}

/// Every family of the contract, cumulative at `i` seconds into the fixture, for `keys` keys.
pub fn scrape(i: f64, keys: usize) -> Vec<Sample> {
    let mut s = Vec::new();
    let ops = [
        ("Encrypt", 40.0),
        ("Decrypt", 120.0),
        ("GenerateDataKey", 25.0),
    ];
    for (op, rate) in ops {
        let n = (rate * i).floor();
        s.push(sample(
            "requests_total",
            &[("operation", op), ("outcome", "ok")],
            n,
        ));
        s.push(sample(
            "requests_total",
            &[("operation", op), ("outcome", "ThrottlingException")],
            (n / 2500.0).floor(),
        ));
        // a backend fault as often: the bad events that cost availability
        s.push(sample(
            "requests_total",
            &[("operation", op), ("outcome", "DependencyTimeoutException")],
            (n / 2500.0).floor(),
        ));
        s.push(sample(
            "requests_total",
            &[("operation", op), ("outcome", "AccessDeniedException")],
            (n / 4000.0).floor(),
        ));
        let hit = if op == "Decrypt" { 0.8 } else { 0.0 };
        if hit > 0.0 {
            histogram(
                &mut s,
                "request_duration_seconds",
                &[("operation", op), ("cache", "hit")],
                (n * hit).floor(),
                1.0,
            );
            histogram(
                &mut s,
                "request_duration_seconds",
                &[("operation", op), ("cache", "miss")],
                (n * (1.0 - hit)).floor(),
                8.0,
            );
        } else {
            histogram(
                &mut s,
                "request_duration_seconds",
                &[("operation", op), ("cache", "none")],
                n,
                4.0,
            );
        }
    }
    s.push(sample(
        "requests_total",
        &[
            ("operation", "Decrypt"),
            ("outcome", "InvalidCiphertextException"),
        ],
        (i / 30.0).floor(),
    ));
    for (scope, principal, rate) in [
        ("principal", "batch-job", 0.05),
        ("key", "orders", 0.01),
        ("global", "global", 0.0),
    ] {
        s.push(sample(
            "throttled_total",
            &[("scope", scope), ("principal", principal)],
            (rate * i).floor(),
        ));
    }
    // admitted calls per principal (batch-job at 47.5/s against its 50/s)
    for (principal, rate) in [("batch-job", 47.5), ("billing", 137.0), ("other", 0.0)] {
        s.push(sample(
            "rate_limit_admitted_total",
            &[("principal", principal)],
            (rate * i).floor(),
        ));
    }
    for (scope, principal, limit) in [
        ("global", "global", 10_000.0),
        ("principal", "batch-job", 50.0),
        ("key", "orders", 100.0),
        ("backend", "embedded", 1000.0),
    ] {
        s.push(sample(
            "rate_limit_per_second",
            &[("scope", scope), ("principal", principal)],
            limit,
        ));
    }
    for (principal, key, reason, rate) in [
        (DENIED_PRINCIPAL, "orders", "policy_denied", 0.02),
        ("billing", "payroll", "context_mismatch", 0.01),
        ("unknown", "-", "bad_signature", 0.005),
    ] {
        s.push(sample(
            "unauthorized_total",
            &[
                ("principal", principal),
                ("operation", "Decrypt"),
                ("key", key),
                ("reason", reason),
            ],
            (rate * i).floor(),
        ));
    }
    s.push(sample(
        "cache_requests_total",
        &[("cache", "decrypt"), ("result", "hit")],
        (96.0 * i).floor(),
    ));
    s.push(sample(
        "cache_requests_total",
        &[("cache", "decrypt"), ("result", "miss")],
        (24.0 * i).floor(),
    ));
    s.push(sample(
        "cache_entries",
        &[("cache", "decrypt")],
        800.0 + (i / 10.0).floor().min(400.0),
    ));
    s.push(sample("cache_stale_entries", &[("cache", "decrypt")], 3.0));
    s.push(sample("cache_entries", &[("cache", "data_key_pool")], 64.0));
    s.push(sample(
        "backend_requests_total",
        &[
            ("backend", "embedded"),
            ("operation", "Decrypt"),
            ("outcome", "ok"),
        ],
        (24.0 * i).floor(),
    ));
    s.push(sample(
        "backend_requests_total",
        &[
            ("backend", "embedded"),
            ("operation", "Encrypt"),
            ("outcome", "ok"),
        ],
        (40.0 * i).floor(),
    ));
    s.push(sample(
        "backend_requests_total",
        &[
            ("backend", "embedded"),
            ("operation", "Decrypt"),
            ("outcome", "DependencyTimeoutException"),
        ],
        (i / 600.0).floor(),
    ));
    histogram(
        &mut s,
        "backend_duration_seconds",
        &[
            ("backend", "embedded"),
            ("operation", "Decrypt"),
            ("outcome", "ok"),
        ],
        (24.0 * i).floor(),
        2.0,
    );
    s.push(sample(
        "backend_retries_total",
        &[("backend", "embedded"), ("reason", "timeout")],
        (i / 300.0).floor(),
    ));
    s.push(sample("circuit_state", &[("backend", "embedded")], 0.0));
    s.push(sample(
        "circuit_transitions_total",
        &[("backend", "embedded"), ("to", "open")],
        (i / 1800.0).floor(),
    ));
    s.push(sample(
        "backend_cost_dollars_total",
        &[("backend", "embedded")],
        0.000_03 * 64.0 * i,
    ));
    s.push(sample(
        "audit_events_total",
        &[("outcome", "ok")],
        (185.0 * i).floor(),
    ));
    s.push(sample(
        "audit_write_errors_total",
        &[("outcome", "error")],
        0.0,
    ));
    for k in 0..keys {
        let key = key_id(k);
        let alias = alias(k);
        s.push(sample(
            "key_operations_total",
            &[("key", &key), ("operation", "Decrypt")],
            ((k % 7 + 1) as f64 * i).floor(),
        ));
        s.push(sample(
            "key_rotation_enabled",
            &[("key", &key), ("alias", &alias)],
            if k % 10 == 3 { 0.0 } else { 1.0 },
        ));
        s.push(sample(
            "key_last_rotation_timestamp_seconds",
            &[("key", &key), ("alias", &alias)],
            last_rotation(k),
        ));
        s.push(sample(
            "key_rotation_period_seconds",
            &[("key", &key), ("alias", &alias)],
            365.0 * DAY,
        ));
        s.push(sample(
            "key_rotation_overdue",
            &[("key", &key), ("alias", &alias)],
            if k == 0 { 1.0 } else { 0.0 },
        ));
        s.push(sample(
            "key_rotations_total",
            &[("key", &key), ("outcome", "ok"), ("trigger", "automatic")],
            1.0,
        ));
    }
    s
}

fn key_id(k: usize) -> String {
    format!("{k:08x}-1234-4abc-8def-{:012x}", k * 7919)
}

fn alias(k: usize) -> String {
    if k == 0 {
        OVERDUE_ALIAS.to_string()
    } else {
        format!("alias/service-{k:02}")
    }
}

fn last_rotation(k: usize) -> f64 {
    if k == 0 {
        NOW - 395.0 * DAY
    } else {
        NOW - (k as f64 * 5.0 % 360.0) * DAY - DAY
    }
}

/// `/v1/status` for the fixture's keys.
pub fn status(keys: usize) -> Status {
    Status {
        version: "0.1.0".into(),
        uptime_seconds: Some(3600.0),
        backend: Some(crate::model::status::BackendStatus {
            name: "embedded".into(),
            circuit: "closed".into(),
        }),
        limits: vec![
            Limit {
                scope: "global".into(),
                name: "global".into(),
                rate_per_second: 10_000.0,
                burst: 10_000.0,
            },
            Limit {
                scope: "principal".into(),
                name: "batch-job".into(),
                rate_per_second: 50.0,
                burst: 100.0,
            },
            Limit {
                scope: "key".into(),
                name: "orders".into(),
                rate_per_second: 100.0,
                burst: 200.0,
            },
            Limit {
                scope: "backend".into(),
                name: "embedded".into(),
                rate_per_second: 1000.0,
                burst: 1000.0,
            },
        ],
        cache: None,
        keys: (0..keys)
            .map(|k| {
                let enabled = k % 10 != 3;
                let last = last_rotation(k);
                KeyStatus {
                    key_id: key_id(k),
                    arn: format!("arn:aws:kms:us-east-1:111122223333:key/{}", key_id(k)),
                    aliases: vec![alias(k)],
                    state: "Enabled".into(),
                    versions: Some(1 + (k % 4) as u32),
                    rotation_enabled: enabled,
                    rotation_period_days: Some(365.0),
                    last_rotation: Some(last),
                    next_rotation: enabled.then_some(last + 365.0 * DAY),
                    rotation_overdue: k == 0,
                }
            })
            .collect(),
    }
}

/// Denied audit records, newest first.
pub fn denied() -> Vec<AuditRecord> {
    (0..5)
        .map(|n| AuditRecord {
            time: NOW - 60.0 * (n as f64 + 1.0),
            request_id: format!("5d2815b3-{:011x}", 42 + n),
            principal: if n == 0 {
                DENIED_PRINCIPAL.into()
            } else {
                "billing".into()
            },
            source: "127.0.0.1:50412".into(),
            operation: "Decrypt".into(),
            key_id: key_id(n),
            outcome: "denied".into(),
            error_type: "AccessDeniedException".into(),
            reason: if n == 0 {
                "policy_denied".into()
            } else {
                "context_mismatch".into()
            },
            latency_ms: Some(0.41),
        })
        .collect()
}

/// A model filled with `secs` of history scraped every `interval` seconds, ending at [`NOW`].
pub fn model(keys: usize, secs: f64, interval: f64) -> Model {
    let mut m = Model::new(ModelConfig::default());
    let n = (secs / interval) as usize;
    for step in 0..=n {
        let i = step as f64 * interval;
        let t = NOW - secs + i;
        m.ingest(SOURCE, t, &scrape(3600.0 + i, keys));
        m.record_attempt(SOURCE, t, Ok(()));
    }
    m.status.insert(SOURCE.into(), Endpoint::Ok(status(keys)));
    m.denied.insert(SOURCE.into(), Endpoint::Ok(denied()));
    m
}

/// The same sample list as a sidecar would print it (exercises the parser in tests).
pub fn exposition(samples: &[Sample]) -> String {
    let mut out = String::new();
    for s in samples {
        let kind = match s.kind {
            Kind::Counter => "counter",
            Kind::Gauge => "gauge",
        };
        out.push_str(&format!("# TYPE {} {kind}\n", s.name));
        let l: Vec<String> = s
            .labels
            .iter()
            .map(|(k, v)| format!("{k}=\"{}\"", v.replace('\\', "\\\\").replace('"', "\\\"")))
            .collect();
        out.push_str(&format!("{}{{{}}} {}\n", s.name, l.join(","), s.value));
    }
    out
}
