use std::time::Duration;

use super::*;
use crate::backend::BackendErrorKind;
use crate::observe::metrics::render;

fn spec() -> BreakerSpec {
    BreakerSpec {
        consecutive_failures: 3,
        failure_ratio: 0.5,
        window: Duration::from_secs(10),
        min_requests: 10,
        cool_down: Duration::from_secs(5),
        half_open_probes: 2,
    }
}

fn breaker(spec: BreakerSpec) -> (Breaker, prometheus::Registry) {
    let registry = prometheus::Registry::new();
    let metrics = BreakerMetrics::register(&registry).unwrap();
    (Breaker::new("test", spec, &metrics).unwrap(), registry)
}

fn fail(b: &Breaker) {
    b.allow().unwrap().failure();
}

fn succeed(b: &Breaker) {
    b.allow().unwrap().success();
}

#[tokio::test(start_paused = true)]
async fn opens_after_consecutive_failures_then_probes_and_closes() {
    let (b, registry) = breaker(spec());
    fail(&b);
    fail(&b);
    succeed(&b); // resets the run
    fail(&b);
    fail(&b);
    assert_eq!(b.state(), State::Closed);
    fail(&b);
    assert_eq!(b.state(), State::Open);

    // Fail fast while open, however many calls come.
    for _ in 0..100 {
        assert_eq!(b.allow().err(), Some(Open));
    }
    tokio::time::advance(Duration::from_millis(4_999)).await;
    assert_eq!(b.state(), State::Open);
    tokio::time::advance(Duration::from_millis(1)).await;
    assert_eq!(b.state(), State::HalfOpen);

    // Two probes go through, a third call is refused while they are out.
    let p1 = b.allow().unwrap();
    let p2 = b.allow().unwrap();
    assert_eq!(b.allow().err(), Some(Open));
    p1.success();
    assert_eq!(b.state(), State::HalfOpen);
    assert_eq!(b.allow().err(), Some(Open), "one probe still out");
    p2.success();
    assert_eq!(b.state(), State::Closed);
    succeed(&b);

    let text = String::from_utf8(render(&registry)).unwrap();
    for line in [
        "kms_sidecar_circuit_state{backend=\"test\"} 0\n",
        "kms_sidecar_circuit_transitions_total{backend=\"test\",to=\"open\"} 1\n",
        "kms_sidecar_circuit_transitions_total{backend=\"test\",to=\"half_open\"} 1\n",
        "kms_sidecar_circuit_transitions_total{backend=\"test\",to=\"closed\"} 1\n",
    ] {
        assert!(text.contains(line), "missing {line}in\n{text}");
    }
}

#[tokio::test(start_paused = true)]
async fn a_failed_probe_reopens_for_another_cool_down() {
    let (b, registry) = breaker(spec());
    for _ in 0..3 {
        fail(&b);
    }
    tokio::time::advance(Duration::from_secs(5)).await;
    let probe = b.allow().unwrap();
    probe.failure();
    assert_eq!(b.state(), State::Open);
    tokio::time::advance(Duration::from_millis(4_999)).await;
    assert_eq!(b.allow().err(), Some(Open));
    tokio::time::advance(Duration::from_millis(1)).await;
    assert_eq!(b.state(), State::HalfOpen);
    let text = String::from_utf8(render(&registry)).unwrap();
    assert!(text.contains("kms_sidecar_circuit_state{backend=\"test\"} 1\n"));
    assert!(
        text.contains("kms_sidecar_circuit_transitions_total{backend=\"test\",to=\"open\"} 2\n")
    );
}

#[tokio::test(start_paused = true)]
async fn opens_on_failure_ratio_once_enough_requests_were_seen() {
    let (b, _) = breaker(BreakerSpec {
        consecutive_failures: 100,
        ..spec()
    });
    // Alternate: never 2 failures in a row, but half of the calls fail.
    for _ in 0..4 {
        succeed(&b);
        fail(&b);
    }
    succeed(&b);
    assert_eq!(b.state(), State::Closed, "9 calls < min_requests");
    fail(&b);
    assert_eq!(b.state(), State::Open, "5 of 10 failed");
}

#[tokio::test(start_paused = true)]
async fn old_failures_slide_out_of_the_ratio_window() {
    let (b, _) = breaker(BreakerSpec {
        consecutive_failures: 100,
        ..spec()
    });
    for _ in 0..9 {
        fail(&b);
    }
    assert_eq!(b.state(), State::Closed, "9 calls < min_requests");
    tokio::time::advance(Duration::from_secs(11)).await;
    // Counting the 9 old failures this would be 10 of 19; in the window it is 1 of 10.
    for _ in 0..9 {
        succeed(&b);
    }
    fail(&b);
    assert_eq!(b.state(), State::Closed);
}

#[tokio::test(start_paused = true)]
async fn only_retryable_errors_count() {
    let (b, _) = breaker(spec());
    for _ in 0..50 {
        let r: Result<(), BackendError> =
            Err(BackendError::new(BackendErrorKind::InvalidCiphertext));
        b.allow().unwrap().record(&r);
        let r: Result<(), BackendError> = Err(BackendError::new(BackendErrorKind::MaterialMissing));
        b.allow().unwrap().record(&r);
    }
    assert_eq!(b.state(), State::Closed);
    // A throttling backend is up: neither a failure nor a success that would reset the run.
    let unavailable =
        || -> Result<(), BackendError> { Err(BackendError::new(BackendErrorKind::Unavailable)) };
    b.allow().unwrap().record(&unavailable());
    for _ in 0..50 {
        let r: Result<(), BackendError> = Err(BackendError::throttled("quota"));
        b.allow().unwrap().record(&r);
    }
    assert_eq!(b.state(), State::Closed);
    for _ in 0..2 {
        b.allow().unwrap().record(&unavailable());
    }
    assert_eq!(b.state(), State::Open);
}

#[tokio::test(start_paused = true)]
async fn dropped_permits_count_as_neither_and_free_probe_slots() {
    let (b, _) = breaker(spec());
    for _ in 0..10 {
        drop(b.allow().unwrap());
    }
    fail(&b);
    fail(&b);
    drop(b.allow().unwrap());
    fail(&b);
    assert_eq!(b.state(), State::Open, "drops did not reset the run");
    tokio::time::advance(Duration::from_secs(5)).await;
    drop(b.allow().unwrap());
    drop(b.allow().unwrap());
    // Both probe slots were given back.
    succeed(&b);
    succeed(&b);
    assert_eq!(b.state(), State::Closed);
}

#[tokio::test(start_paused = true)]
async fn reports_from_before_a_state_change_are_ignored() {
    let (b, _) = breaker(spec());
    let slow = b.allow().unwrap();
    for _ in 0..3 {
        fail(&b);
    }
    tokio::time::advance(Duration::from_secs(5)).await;
    assert_eq!(b.state(), State::HalfOpen);
    // A call from before the outage succeeds late: it says nothing about the backend now.
    slow.success();
    assert_eq!(b.state(), State::HalfOpen);
}

#[test]
fn rejects_bad_specs() {
    let registry = prometheus::Registry::new();
    let m = BreakerMetrics::register(&registry).unwrap();
    let bad = [
        BreakerSpec {
            consecutive_failures: 0,
            ..spec()
        },
        BreakerSpec {
            failure_ratio: f64::NAN,
            ..spec()
        },
        BreakerSpec {
            failure_ratio: 0.0,
            ..spec()
        },
        BreakerSpec {
            failure_ratio: 1.5,
            ..spec()
        },
        BreakerSpec {
            window: Duration::ZERO,
            ..spec()
        },
        BreakerSpec {
            min_requests: 0,
            ..spec()
        },
        BreakerSpec {
            cool_down: Duration::ZERO,
            ..spec()
        },
        BreakerSpec {
            half_open_probes: 0,
            ..spec()
        },
    ];
    for s in bad {
        assert!(Breaker::new("x", s, &m).is_err(), "{s:?}");
    }
    assert_eq!(
        BreakerSpec {
            failure_ratio: 2.0,
            ..spec()
        }
        .validate()
        .unwrap_err()
        .to_string(),
        "circuit breaker: failure_ratio must be in (0, 1], got 2"
    );
    assert!(BreakerSpec::default().validate().is_ok());
}
