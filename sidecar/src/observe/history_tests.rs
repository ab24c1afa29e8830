use super::*;

use prometheus::{GaugeVec, HistogramOpts, HistogramVec, IntCounterVec, Opts};

fn registry() -> (Registry, IntCounterVec, GaugeVec, HistogramVec) {
    let r = Registry::new();
    let c = IntCounterVec::new(
        Opts::new("kms_sidecar_requests_total", "h"),
        &["operation", "outcome"],
    )
    .unwrap();
    let g = GaugeVec::new(Opts::new("kms_sidecar_circuit_state", "h"), &["backend"]).unwrap();
    let h = HistogramVec::new(
        HistogramOpts::new("kms_sidecar_request_duration_seconds", "h").buckets(vec![0.001, 0.01]),
        &["operation"],
    )
    .unwrap();
    r.register(Box::new(c.clone())).unwrap();
    r.register(Box::new(g.clone())).unwrap();
    r.register(Box::new(h.clone())).unwrap();
    (r, c, g, h)
}

fn values<'a>(s: &'a Snapshot, name: &str, label: (&str, &str)) -> &'a [Option<f64>] {
    &s.series
        .iter()
        .find(|x| x.name == name && x.labels.get(label.0).map(String::as_str) == Some(label.1))
        .unwrap()
        .values
}

#[test]
fn counters_come_back_cumulative_and_late_series_start_absent() {
    let (r, c, g, h) = registry();
    let history = History::new();
    c.with_label_values(&["Encrypt", "ok"]).inc_by(5);
    g.with_label_values(&["embedded"]).set(0.0);
    history.sample(&r, 100.0);
    c.with_label_values(&["Encrypt", "ok"]).inc_by(7);
    c.with_label_values(&["Decrypt", "ok"]).inc_by(2);
    g.with_label_values(&["embedded"]).set(2.0);
    h.with_label_values(&["Encrypt"]).observe(0.005);
    history.sample(&r, 110.0);
    let s = history.snapshot(0.0);
    assert_eq!(s.times, vec![100.0, 110.0]);
    let enc = values(&s, "kms_sidecar_requests_total", ("operation", "Encrypt"));
    assert_eq!(enc, [Some(5.0), Some(12.0)]);
    let dec = values(&s, "kms_sidecar_requests_total", ("operation", "Decrypt"));
    assert_eq!(dec, [None, Some(2.0)]);
    let circuit = values(&s, "kms_sidecar_circuit_state", ("backend", "embedded"));
    assert_eq!(circuit, [Some(0.0), Some(2.0)]);
    // buckets with the text format's `le` values, the +Inf bucket as the count
    let b = values(
        &s,
        "kms_sidecar_request_duration_seconds_bucket",
        ("le", "0.01"),
    );
    assert_eq!(b, [None, Some(1.0)]);
    let inf = values(
        &s,
        "kms_sidecar_request_duration_seconds_bucket",
        ("le", "+Inf"),
    );
    assert_eq!(inf, [None, Some(1.0)]);
    let text = String::from_utf8(crate::observe::metrics::render(&r)).unwrap();
    assert!(text.contains("le=\"0.01\"") && text.contains("le=\"+Inf\""));
    // `since` returns only newer samples, still cumulative
    let later = history.snapshot(100.0);
    assert_eq!(later.times, vec![110.0]);
    assert_eq!(
        values(
            &later,
            "kms_sidecar_requests_total",
            ("operation", "Encrypt")
        ),
        [Some(12.0)]
    );
}

#[test]
fn a_full_ring_forgets_the_oldest_and_keeps_totals() {
    let (r, c, _, _) = registry();
    let history = History::new();
    let total = CAPACITY as u64 + 50;
    for i in 0..total {
        c.with_label_values(&["Encrypt", "ok"]).inc_by(3);
        history.sample(&r, i as f64 * 10.0);
    }
    let s = history.snapshot(0.0);
    assert_eq!(s.times.len(), CAPACITY);
    assert_eq!(s.times[0], 500.0);
    let v = values(&s, "kms_sidecar_requests_total", ("operation", "Encrypt"));
    assert_eq!(v.len(), CAPACITY);
    assert_eq!(v[CAPACITY - 1], Some(3.0 * total as f64));
    assert_eq!(v[0], Some(3.0 * 51.0));
}

#[test]
fn memory_stays_under_its_bound_with_too_many_series() {
    let r = Registry::new();
    let c =
        IntCounterVec::new(Opts::new("kms_sidecar_key_operations_total", "h"), &["key"]).unwrap();
    r.register(Box::new(c.clone())).unwrap();
    for i in 0..(MAX_SERIES + 300) {
        c.with_label_values(&[&format!("key-{i:05}")]).inc();
    }
    let history = History::new();
    let events = history.events();
    for i in 0..(CAPACITY + 10) {
        history.sample(&r, i as f64);
        events.record(EventKind::Breaker, "x".repeat(1000));
    }
    assert_eq!(history.series_count(), MAX_SERIES);
    assert_eq!(history.snapshot(0.0).dropped_series, 300);
    assert_eq!(events.since(0.0).len(), MAX_EVENTS);
    assert!(
        events
            .since(0.0)
            .iter()
            .all(|e| e.detail.len() == MAX_DETAIL)
    );
    let used = history.memory_used();
    assert!(
        used <= History::memory_bound(),
        "{used} > {}",
        History::memory_bound()
    );
    // the bound is what docs/admin-api.md states (about 9.6 MB), and a full history is near it
    assert!(
        History::memory_bound() < 10_000_000,
        "{}",
        History::memory_bound()
    );
    assert!(used > History::memory_bound() * 8 / 10, "{used}");
    // more samples do not grow it
    for i in 0..100 {
        history.sample(&r, (CAPACITY + 10 + i) as f64);
    }
    assert_eq!(history.memory_used(), used);
}

#[test]
fn events_stay_in_time_order_and_rotations_are_found() {
    let history = History::new();
    let events = history.events();
    events.record_at(20.0, EventKind::FaultsOn, "error_rate 0.5");
    events.record_at(10.0, EventKind::Start, "started");
    events.record_at(30.0, EventKind::FaultsOff, "cleared");
    let kinds: Vec<EventKind> = events.since(0.0).iter().map(|e| e.kind).collect();
    assert_eq!(
        kinds,
        [EventKind::Start, EventKind::FaultsOn, EventKind::FaultsOff]
    );
    assert_eq!(events.since(20.0).len(), 1);

    let meta = |versions: u32| -> crate::keys::KeyMeta {
        let vs: Vec<serde_json::Value> = (1..=versions)
            .map(|v| serde_json::json!({"version": v, "created": 100.0 * f64::from(v), "rotation": null}))
            .collect();
        serde_json::from_value(serde_json::json!({
            "format": 1, "id": "k1", "backend": "embedded", "created": 0.0, "description": "",
            "state": "Enabled", "deletion_date": null, "pending_window_days": null,
            "versions": vs, "rotation_enabled": true, "rotation_period_days": 90,
            "next_rotation": 100.0, "tags": {}
        }))
        .unwrap()
    };
    let mut index = crate::keys::Index::default();
    index.keys.insert("k1".into(), Arc::new(meta(1)));
    history.watch_keys(&index);
    assert_eq!(events.since(0.0).len(), 3, "the first look only learns");
    index.keys.insert("k1".into(), Arc::new(meta(2)));
    history.watch_keys(&index);
    history.watch_keys(&index);
    let rotations: Vec<Event> = events
        .since(0.0)
        .into_iter()
        .filter(|e| e.kind == EventKind::Rotation)
        .collect();
    assert_eq!(rotations.len(), 1);
    assert_eq!(rotations[0].time, 200.0);
    assert_eq!(rotations[0].detail, "k1 rotated to version 2");
}

#[test]
fn principal_rates_over_the_last_minute_from_the_admitted_and_throttled_counters() {
    let r = Registry::new();
    let metrics = crate::limits::RateMetrics::register(&r).unwrap();
    let history = History::new();
    assert!(history.principal_rates(60.0).is_empty());
    let batch = metrics.admitted_counter("batch");
    let _ = metrics.admitted_counter("other");
    // 90 s at 10 s: batch asks 450/s, 400 admitted and 50 refused by its own limit
    for i in 0..10 {
        if i > 0 {
            batch.inc_by(4000);
            for _ in 0..500 {
                metrics.throttled("batch", crate::limits::Scope::Principal);
            }
        }
        history.sample(&r, 1000.0 + 10.0 * f64::from(i));
    }
    let rates = history.principal_rates(60.0);
    assert_eq!(
        rates,
        [
            PrincipalRate {
                principal: "batch".into(),
                admitted_per_second: 400.0,
                throttled_per_second: 50.0,
            },
            PrincipalRate {
                principal: "other".into(),
                admitted_per_second: 0.0,
                throttled_per_second: 0.0,
            },
        ]
    );
    // fewer samples than the window: over what there is
    let short = History::new();
    short.sample(&r, 0.0);
    batch.inc_by(100);
    short.sample(&r, 10.0);
    assert_eq!(short.principal_rates(60.0)[0].admitted_per_second, 10.0);
    // the family is sampled and served on /v1/history
    let s = history.snapshot(0.0);
    let v = values(
        &s,
        "kms_sidecar_rate_limit_admitted_total",
        ("principal", "batch"),
    );
    assert_eq!(v.last(), Some(&Some(36_000.0)));
}
