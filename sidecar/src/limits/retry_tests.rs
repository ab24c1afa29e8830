use std::cell::Cell;
use std::time::Duration;

use super::*;
use crate::observe::metrics::render;

const MS: Duration = Duration::from_millis(1);

fn policy(base_ms: u64, cap_ms: u64, max_attempts: u32, timeout: Option<Duration>) -> RetryPolicy {
    RetryPolicy::with_seed(
        RetrySpec {
            base: MS * base_ms as u32,
            cap: MS * cap_ms as u32,
            max_attempts,
            attempt_timeout: timeout,
        },
        42,
    )
    .unwrap()
}

fn roomy_budget() -> RetryBudget {
    RetryBudget::new(RetryBudgetSpec {
        ratio: 1.0,
        min_per_second: 1000.0,
        window: Duration::from_secs(60),
    })
    .unwrap()
}

fn unavailable() -> BackendError {
    BackendError::new(BackendErrorKind::Unavailable)
}

#[test]
fn delays_are_full_jitter_within_the_exponential_bound() {
    let p = policy(10, 1_000, 5, None);
    let bounds: Vec<u64> = (0..10)
        .map(|n| p.delay_bound(n).as_millis() as u64)
        .collect();
    assert_eq!(bounds, [10, 20, 40, 80, 160, 320, 640, 1000, 1000, 1000]);
    assert_eq!(p.delay_bound(200), Duration::from_secs(1), "no overflow");
    for n in 0..10 {
        let bound = p.delay_bound(n);
        let samples: Vec<Duration> = (0..2_000).map(|_| p.delay(n)).collect();
        assert!(samples.iter().all(|d| *d <= bound), "retry {n}");
        // Full jitter: the whole range is used, not just its top.
        assert!(samples.iter().any(|d| *d < bound / 10), "retry {n}");
        assert!(samples.iter().any(|d| *d > bound * 9 / 10), "retry {n}");
    }
}

#[test]
fn constructor_rejects_bad_settings() {
    let ok = RetrySpec::default();
    let bad = [
        RetrySpec {
            base: Duration::ZERO,
            ..ok
        },
        RetrySpec {
            base: MS * 100,
            cap: MS * 50,
            ..ok
        },
        RetrySpec {
            max_attempts: 0,
            ..ok
        },
        RetrySpec {
            max_attempts: 1000,
            ..ok
        },
        RetrySpec {
            attempt_timeout: Some(Duration::ZERO),
            ..ok
        },
    ];
    for spec in bad {
        assert!(RetryPolicy::new(spec).is_err(), "{spec:?}");
    }
    let err = RetryPolicy::new(RetrySpec {
        base: MS * 100,
        cap: MS * 50,
        ..ok
    })
    .unwrap_err();
    assert_eq!(
        err.to_string(),
        "retry: cap 50ms must be at least base 100ms and at most 1h"
    );
    assert!(RetryPolicy::new(ok).is_ok());
    let b = RetryBudgetSpec::default();
    for spec in [
        RetryBudgetSpec {
            ratio: f64::NAN,
            ..b
        },
        RetryBudgetSpec { ratio: -0.1, ..b },
        RetryBudgetSpec {
            min_per_second: f64::INFINITY,
            ..b
        },
        RetryBudgetSpec {
            window: Duration::ZERO,
            ..b
        },
    ] {
        assert!(RetryBudget::new(spec).is_err(), "{spec:?}");
    }
}

#[tokio::test(start_paused = true)]
async fn attempts_are_bounded_and_backoff_is_within_bounds() {
    let p = policy(100, 250, 4, None);
    let registry = prometheus::Registry::new();
    let counters = RetryMetrics::register(&registry)
        .unwrap()
        .for_backend("test");
    let starts = std::cell::RefCell::new(Vec::new());
    let deadline = Instant::now() + Duration::from_secs(60);
    let result: Result<(), BackendError> =
        retry_observed(&p, &roomy_budget(), deadline, Some(&counters), |a| {
            starts.borrow_mut().push((a.index, Instant::now()));
            async { Err(unavailable()) }
        })
        .await;
    assert_eq!(result.unwrap_err().kind, BackendErrorKind::Unavailable);
    let starts = starts.into_inner();
    assert_eq!(starts.iter().map(|s| s.0).collect::<Vec<_>>(), [0, 1, 2, 3]);
    for (n, pair) in starts.windows(2).enumerate() {
        let gap = pair[1].1 - pair[0].1;
        assert!(gap <= p.delay_bound(n as u32), "gap {n}: {gap:?}");
    }
    let text = String::from_utf8(render(&registry)).unwrap();
    assert!(
        text.contains(
            "kms_sidecar_backend_retries_total{backend=\"test\",reason=\"unavailable\"} 3\n"
        ),
        "{text}"
    );
}

#[tokio::test(start_paused = true)]
async fn errors_that_are_not_retryable_are_returned_at_once() {
    let p = policy(1, 10, 5, None);
    for kind in [
        BackendErrorKind::InvalidCiphertext,
        BackendErrorKind::MaterialMissing,
        BackendErrorKind::Internal,
    ] {
        let calls = Cell::new(0);
        let r: Result<(), _> = retry(&p, &roomy_budget(), Instant::now() + MS * 1000, |_| {
            calls.set(calls.get() + 1);
            async move { Err(BackendError::new(kind)) }
        })
        .await;
        assert_eq!(r.unwrap_err().kind, kind);
        assert_eq!(calls.get(), 1, "{kind:?}");
    }
    // Nor are a refusal by the breaker or the outbound budget.
    for source in [
        BackendError::with_source(BackendErrorKind::Unavailable, Open),
        BackendError::with_source(BackendErrorKind::Unavailable, BudgetExhausted),
    ] {
        assert_eq!(source.retry_reason(), None);
    }
    assert_eq!(unavailable().retry_reason(), Some(RetryReason::Unavailable));
    assert_eq!(
        BackendError::timed_out().retry_reason(),
        Some(RetryReason::Timeout)
    );
}

#[tokio::test(start_paused = true)]
async fn the_deadline_is_respected() {
    let p = policy(50, 200, 20, None);
    let start = Instant::now();
    let deadline = start + MS * 1000;
    let calls = Cell::new(0);
    // Each attempt takes 300 ms and fails: the loop never sleeps past the deadline.
    let r: Result<(), BackendError> = retry(&p, &roomy_budget(), deadline, |_| {
        calls.set(calls.get() + 1);
        async {
            tokio::time::sleep(MS * 300).await;
            Err(unavailable())
        }
    })
    .await;
    assert!(r.is_err());
    assert!(Instant::now() <= deadline, "{:?}", Instant::now() - start);
    assert!((2..=4).contains(&calls.get()), "{}", calls.get());

    // An attempt that hangs is cut at the deadline and reported as a timeout.
    let start = Instant::now();
    let r: Result<(), BackendError> = retry(&p, &roomy_budget(), start + MS * 500, |_| {
        std::future::pending()
    })
    .await;
    assert_eq!(Instant::now() - start, MS * 500);
    assert_eq!(r.unwrap_err().retry_reason(), Some(RetryReason::Timeout));
}

#[tokio::test(start_paused = true)]
async fn a_hung_attempt_times_out_and_the_next_one_succeeds() {
    let p = policy(10, 10, 3, Some(MS * 100));
    let registry = prometheus::Registry::new();
    let counters = RetryMetrics::register(&registry)
        .unwrap()
        .for_backend("test");
    let start = Instant::now();
    let r = retry_observed(
        &p,
        &roomy_budget(),
        start + Duration::from_secs(5),
        Some(&counters),
        |a| async move {
            assert_eq!(a.deadline, Instant::now() + MS * 100);
            if a.index == 0 {
                std::future::pending::<()>().await;
            }
            Ok::<_, BackendError>(a.index)
        },
    )
    .await;
    assert_eq!(r.unwrap(), 1);
    let elapsed = Instant::now() - start;
    assert!(elapsed >= MS * 100 && elapsed <= MS * 110, "{elapsed:?}");
    let text = String::from_utf8(render(&registry)).unwrap();
    assert!(
        text.contains("kms_sidecar_backend_retries_total{backend=\"test\",reason=\"timeout\"} 1\n")
    );
}

#[tokio::test(start_paused = true)]
async fn the_budget_bounds_attempts_during_an_outage() {
    let p = policy(1, 1, 10, None);
    let spec = RetryBudgetSpec {
        ratio: 0.1,
        min_per_second: 1.0,
        window: Duration::from_secs(10),
    };
    let budget = RetryBudget::new(spec).unwrap();
    let attempts = Cell::new(0u64);
    let requests = 200u64;
    for _ in 0..requests {
        let r: Result<(), BackendError> =
            retry(&p, &budget, Instant::now() + Duration::from_secs(1), |_| {
                attempts.set(attempts.get() + 1);
                async { Err(unavailable()) }
            })
            .await;
        assert!(r.is_err());
    }
    // All of this ran inside one window (delays are at most 1 ms).
    let floor = spec.min_per_second * spec.window.as_secs_f64();
    let bound = (1.0 + spec.ratio) * requests as f64 + floor;
    let attempts = attempts.get() as f64;
    assert!(attempts <= bound, "{attempts} > {bound}");
    // And the budget is used, not refused outright: 10 from the floor + 10% of 200.
    assert!(attempts >= bound - 2.0, "{attempts}");
    assert!(!budget.try_withdraw());
    // Once the window has passed, the floor is back.
    tokio::time::advance(Duration::from_secs(11)).await;
    assert!(budget.try_withdraw());
}
