use std::time::Duration;

use governor::clock::FakeRelativeClock;

use super::*;
use crate::limits::rate_spec::{RateSpec, WindowSpec};
use crate::observe::metrics::render;

fn build(spec: RateSpec) -> (RateLimits<FakeRelativeClock>, FakeRelativeClock) {
    let clock = FakeRelativeClock::default();
    let valid = ValidRateSpec::try_from(spec).unwrap();
    (RateLimits::with_clock(&valid, &clock), clock)
}

fn throttles(limits: &RateLimits<FakeRelativeClock>, n: usize, p: &str, k: Option<&str>) -> usize {
    (0..n).filter(|_| limits.check(p, k).is_err()).count()
}

#[test]
fn burst_plus_k_yields_exactly_k_throttles_then_refills_at_the_rate() {
    for (rate, burst, k) in [(100.0, 200, 7), (10.0, 10, 1), (1.0, 5, 30)] {
        let (limits, clock) = build(RateSpec {
            global: vec![WindowSpec::per_second(rate, burst)],
            ..RateSpec::default()
        });
        assert_eq!(
            throttles(&limits, burst as usize + k, "a", None),
            k,
            "{rate}/{burst}"
        );
        assert_eq!(
            limits.check("a", None),
            Err(Throttled {
                scope: Scope::Global
            })
        );
        // One second refills `rate` cells.
        clock.advance(Duration::from_secs(1));
        let n = rate as usize;
        assert_eq!(throttles(&limits, n + 3, "a", None), 3, "{rate}/{burst}");
    }
}

#[test]
fn principals_are_isolated_and_unknown_ones_share_other() {
    let (limits, _clock) = build(RateSpec {
        principal_default: vec![WindowSpec::per_second(5.0, 5)],
        principals: vec!["alice".into(), "bob".into()],
        principal_overrides: [("carol".into(), vec![WindowSpec::per_second(2.0, 2)])].into(),
        ..RateSpec::default()
    });
    assert_eq!(throttles(&limits, 8, "alice", None), 3);
    assert_eq!(
        limits.check("alice", None),
        Err(Throttled {
            scope: Scope::Principal
        })
    );
    // Bob has his own bucket, untouched by alice.
    assert_eq!(throttles(&limits, 5, "bob", None), 0);
    assert_eq!(throttles(&limits, 3, "carol", None), 1);
    // Unknown names all draw from one `other` bucket of the default size.
    assert_eq!(throttles(&limits, 3, "mallory-1", None), 0);
    assert_eq!(throttles(&limits, 3, "mallory-2", None), 1);
    assert_eq!(throttles(&limits, 1, "mallory-3", None), 1);
    assert_eq!(limits.principal_label("alice"), "alice");
    assert_eq!(limits.principal_label("mallory-3"), "other");
}

#[test]
fn every_window_must_have_room() {
    let (limits, clock) = build(RateSpec {
        global: vec![
            WindowSpec::per_second(10.0, 10),
            WindowSpec {
                rate: 25.0,
                period: Duration::from_secs(60),
                burst: None,
            },
        ],
        ..RateSpec::default()
    });
    // The per-second window allows 10 now, 10 more each second; the minute window caps at 25.
    assert_eq!(throttles(&limits, 12, "a", None), 2);
    clock.advance(Duration::from_secs(1));
    assert_eq!(throttles(&limits, 12, "a", None), 2);
    clock.advance(Duration::from_secs(1));
    // 20 taken from the minute window, plus two seconds of refill at 25/60 s: 5 left. The 5 refused
    // calls passed the per-second window first and kept its cells (the documented approximation).
    assert_eq!(throttles(&limits, 10, "a", None), 5);
    // A minute later both have room again.
    clock.advance(Duration::from_secs(60));
    assert_eq!(throttles(&limits, 10, "a", None), 0);
}

#[test]
fn keys_are_limited_each_up_to_a_bound_then_share_other() {
    let (limits, _clock) = build(RateSpec {
        key_default: vec![WindowSpec::per_second(2.0, 2)],
        key_overrides: [
            ("hot".into(), vec![WindowSpec::per_second(4.0, 4)]),
            ("free".into(), vec![]),
        ]
        .into(),
        max_tracked_keys: 2,
        ..RateSpec::default()
    });
    assert_eq!(throttles(&limits, 3, "p", Some("k1")), 1);
    assert_eq!(
        limits.check("p", Some("k1")),
        Err(Throttled { scope: Scope::Key })
    );
    assert_eq!(throttles(&limits, 2, "p", Some("k2")), 0);
    // k3 and k4 are past the bound: they share one `other` bucket.
    assert_eq!(throttles(&limits, 1, "p", Some("k3")), 0);
    assert_eq!(throttles(&limits, 2, "p", Some("k4")), 1);
    assert_eq!(throttles(&limits, 6, "p", Some("hot")), 2);
    assert_eq!(throttles(&limits, 100, "p", Some("free")), 0);
    assert_eq!(throttles(&limits, 100, "p", None), 0);
    let map = limits
        .tracked_keys
        .as_ref()
        .unwrap()
        .map
        .read()
        .unwrap()
        .len();
    assert_eq!(map, 2);
}

#[test]
fn a_principal_over_its_limit_does_not_eat_the_global_limit() {
    let (limits, _clock) = build(RateSpec {
        global: vec![WindowSpec::per_second(8.0, 8)],
        principal_default: vec![WindowSpec::per_second(3.0, 3)],
        principals: vec!["a".into(), "b".into(), "c".into()],
        ..RateSpec::default()
    });
    // a's refused calls stop at its own limit and take nothing from the global one.
    assert_eq!(throttles(&limits, 100, "a", None), 97);
    assert_eq!(throttles(&limits, 3, "b", None), 0);
    assert_eq!(throttles(&limits, 2, "c", None), 0);
    assert_eq!(
        limits.check("c", None),
        Err(Throttled {
            scope: Scope::Global
        })
    );
}

#[test]
fn reload_builds_new_limits_with_full_buckets() {
    let (limits, clock) = build(RateSpec {
        global: vec![WindowSpec::per_second(1.0, 1)],
        ..RateSpec::default()
    });
    assert_eq!(throttles(&limits, 3, "a", None), 2);
    let next = ValidRateSpec::try_from(RateSpec {
        global: vec![WindowSpec::per_second(5.0, 5)],
        ..RateSpec::default()
    })
    .unwrap();
    let limits = limits.rebuild(&next, &clock);
    assert_eq!(throttles(&limits, 6, "a", None), 1);
    assert_eq!(limits.spec(), &next);
}

#[test]
fn metrics_show_limits_and_count_throttles() {
    let registry = prometheus::Registry::new();
    let metrics = RateMetrics::register(&registry).unwrap();
    let (limits, clock) = build(RateSpec {
        global: vec![WindowSpec::per_second(100.0, 200), WindowSpec::per_day(1e6)],
        principal_default: vec![WindowSpec::per_second(1.0, 1)],
        principals: vec!["alice".into()],
        key_default: vec![WindowSpec::per_second(50.0, 50)],
        key_overrides: [("k1".into(), vec![WindowSpec::per_second(7.0, 7)])].into(),
        max_tracked_keys: 10,
        ..RateSpec::default()
    });
    limits.export(&metrics);
    let _ = limits.check_recorded(&metrics, "alice", None);
    let _ = limits.check_recorded(&metrics, "alice", None);
    let _ = limits.check_recorded(&metrics, "eve", None);
    let _ = limits.check_recorded(&metrics, "mallory", None);
    metrics.set_limit(Scope::Backend, "upstream", 5000.0);
    let text = String::from_utf8(render(&registry)).unwrap();
    for line in [
        "kms_sidecar_rate_limit_per_second{name=\"global\",scope=\"global\"} 100\n",
        "kms_sidecar_rate_limit_per_second{name=\"alice\",scope=\"principal\"} 1\n",
        "kms_sidecar_rate_limit_per_second{name=\"other\",scope=\"principal\"} 1\n",
        "kms_sidecar_rate_limit_per_second{name=\"k1\",scope=\"key\"} 7\n",
        "kms_sidecar_rate_limit_per_second{name=\"default\",scope=\"key\"} 50\n",
        "kms_sidecar_rate_limit_per_second{name=\"upstream\",scope=\"backend\"} 5000\n",
        "kms_sidecar_throttled_total{principal=\"alice\",scope=\"principal\"} 1\n",
        "kms_sidecar_throttled_total{principal=\"other\",scope=\"principal\"} 1\n",
    ] {
        assert!(text.contains(line), "missing {line}in\n{text}");
    }

    // A reload without principals drops their gauges but keeps the backend's.
    let next = ValidRateSpec::try_from(RateSpec {
        global: vec![WindowSpec::per_second(20.0, 20)],
        ..RateSpec::default()
    })
    .unwrap();
    limits.rebuild(&next, &clock).export(&metrics);
    let text = String::from_utf8(render(&registry)).unwrap();
    let mut gauges: Vec<&str> = text
        .lines()
        .filter(|l| l.starts_with("kms_sidecar_rate_limit_per_second{"))
        .collect();
    gauges.sort_unstable();
    assert_eq!(
        gauges,
        [
            "kms_sidecar_rate_limit_per_second{name=\"global\",scope=\"global\"} 20",
            "kms_sidecar_rate_limit_per_second{name=\"upstream\",scope=\"backend\"} 5000",
        ]
    );
}

#[test]
fn throttled_becomes_aws_throttling_exception() {
    let err: KmsError = Throttled { scope: Scope::Key }.into();
    assert_eq!(err.kind(), ErrorKind::Throttling);
    assert_eq!(err.wire_message(), "Rate exceeded");
    assert_eq!(
        Scope::ALL.map(Scope::as_str),
        ["global", "principal", "key", "backend"]
    );
}

#[test]
fn admitted_calls_are_counted_per_principal_from_zero_and_survive_a_rebuild() {
    let registry = prometheus::Registry::new();
    let metrics = RateMetrics::register(&registry).unwrap();
    let spec = RateSpec {
        global: vec![WindowSpec::per_second(100.0, 100)],
        principal_default: vec![WindowSpec::per_second(3.0, 3)],
        principals: vec!["alice".into(), "bob".into()],
        ..RateSpec::default()
    };
    let (limits, clock) = build(spec.clone());
    let limits = limits.counted(&metrics);
    limits.export(&metrics);
    let text = String::from_utf8(render(&registry)).unwrap();
    // every bounded principal name from the start, at 0
    for p in ["alice", "bob", "other"] {
        let line = format!("kms_sidecar_rate_limit_admitted_total{{principal=\"{p}\"}} 0\n");
        assert!(text.contains(&line), "missing {line}in\n{text}");
    }
    // alice asks 5 against 3: 3 admitted, 2 throttled; unknown callers share `other`
    assert_eq!(throttles(&limits, 5, "alice", None), 2);
    assert_eq!(throttles(&limits, 2, "mallory", None), 0);
    let admitted = |p: &str| metrics.admitted_counter(p).get();
    assert_eq!(
        (admitted("alice"), admitted("bob"), admitted("other")),
        (3, 0, 2)
    );
    // uncounted limits (tests, tools) count nothing
    let (plain, _) = build(spec.clone());
    assert_eq!(throttles(&plain, 1, "bob", None), 0);
    assert_eq!(admitted("bob"), 0);
    // a reload builds new limiters; the counts continue (no reset for Prometheus)
    let next = ValidRateSpec::try_from(spec).unwrap();
    let limits = limits.rebuild(&next, &clock).counted(&metrics);
    assert_eq!(throttles(&limits, 1, "alice", None), 0);
    assert_eq!(admitted("alice"), 4);
}
