//! Resilience end to end, driven by fault injection (`/v1/faults`) on a real sidecar: an outage is
//! survived by cached Decrypts while uncached calls fail fast and the breaker opens and recovers;
//! the retry budget bounds backend attempts; `/readyz` follows the backend; injected faults are
//! counted; latency hits misses and spares hits. Timings are small (1 s TTL and cool-down) so every
//! case runs in a few seconds; the AWS SDK's own retries are off, so every error is the sidecar's.
#![forbid(unsafe_code)]
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::{Duration, Instant};

use kms_sidecar_e2e::{
    FAULT_ARGS, Sidecar, encrypt, error_code, http_get, http_send, new_key, sample, sum_series,
    try_encrypt,
};

/// Fault injection on, quick breaker and cache timings, no data-key pool (its background refills
/// would add backend calls the counts below do not expect).
fn start(extra: &[&str]) -> (tempfile::TempDir, Sidecar) {
    let dir = tempfile::tempdir().unwrap();
    let sidecar = Sidecar::start_args(dir.path(), &[&FAULT_ARGS[..], extra].concat());
    (dir, sidecar)
}

async fn set_faults(sidecar: &Sidecar, spec: &str) -> serde_json::Value {
    let (status, body) = http_send("PUT", &format!("{}/v1/faults", sidecar.admin_url), spec).await;
    assert_eq!(status, 200, "{body}");
    serde_json::from_str(&body).unwrap()
}

async fn clear_faults(sidecar: &Sidecar) {
    let (status, body) = http_send("DELETE", &format!("{}/v1/faults", sidecar.admin_url), "").await;
    assert_eq!(status, 200, "{body}");
}

/// Polls `check` every 50 ms until it is true or `limit` has passed.
async fn eventually<F, Fut>(limit: Duration, mut check: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + limit;
    loop {
        if check().await {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Polls `/readyz` until `want` holds (or 5 s passed); the last answer.
async fn readyz_until(url: &str, want: impl Fn(u16, &str) -> bool) -> (u16, String) {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let (status, body) = http_get(url).await;
        if want(status, &body) || Instant::now() >= deadline {
            return (status, body);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

const CIRCUIT: &str = "kms_sidecar_circuit_state{backend=\"embedded\"}";

#[tokio::test]
async fn an_outage_is_survived_by_the_cache_and_the_breaker_recovers() {
    let (_dir, sidecar) = start(&[
        "--cache-ttl-secs",
        "1",
        "--cache-stale-grace-secs",
        "60",
        "--breaker-consecutive-failures",
        "3",
    ]);
    let kms = sidecar.sdk();
    let key = new_key(&kms).await;
    let mut cached = Vec::new();
    for i in 0..20u8 {
        let blob = encrypt(&kms, &key, &[i; 32]).await;
        let out = kms
            .decrypt()
            .ciphertext_blob(blob.clone())
            .send()
            .await
            .unwrap();
        assert_eq!(out.plaintext().unwrap().as_ref(), &[i; 32]);
        cached.push((blob, i));
    }
    let mut uncached = Vec::new();
    for i in 0..5u8 {
        uncached.push(encrypt(&kms, &key, &[100 + i; 32]).await);
    }

    let shown = set_faults(&sidecar, r#"{"outage": "fail"}"#).await;
    assert_eq!(shown["active"], true);
    // Past the 1 s TTL: every cached entry is stale, within the 60 s grace.
    tokio::time::sleep(Duration::from_millis(1200)).await;

    // 100% of cached items are served, the first ones while the backend fails under them.
    for (blob, i) in &cached {
        let out = kms
            .decrypt()
            .ciphertext_blob(blob.clone())
            .send()
            .await
            .unwrap_or_else(|e| panic!("cached item {i} failed during the outage: {e:?}"));
        assert_eq!(out.plaintext().unwrap().as_ref(), &[*i; 32]);
    }
    let text = sidecar.metrics().await;
    assert_eq!(sample(&text, CIRCUIT), Some(2.0), "breaker open\n{text}");
    assert_eq!(
        sample(
            &text,
            "kms_sidecar_cache_requests_total{cache=\"decrypt\",result=\"stale\"}"
        ),
        Some(20.0),
        "{text}"
    );
    assert!(
        sample(
            &text,
            "kms_sidecar_faults_injected_total{backend=\"embedded\",fault=\"outage\"}"
        )
        .unwrap()
            >= 3.0
    );

    // Uncached calls fail fast with DependencyTimeoutException while the breaker is open (or
    // after one failed half-open probe).
    for blob in &uncached {
        let started = Instant::now();
        let result = kms.decrypt().ciphertext_blob(blob.clone()).send().await;
        let took = started.elapsed();
        assert_eq!(error_code(result), "DependencyTimeoutException");
        assert!(took < Duration::from_millis(50), "fail fast took {took:?}");
    }
    let started = Instant::now();
    let result = try_encrypt(&kms, &key, b"x").await;
    assert_eq!(error_code(result), "DependencyTimeoutException");
    assert!(started.elapsed() < Duration::from_millis(50));

    // Cleared: after the cool-down, half-open probes succeed and the breaker closes.
    clear_faults(&sidecar).await;
    let closed = eventually(Duration::from_secs(5), || async {
        let _ = try_encrypt(&kms, &key, b"probe").await;
        sample(&sidecar.metrics().await, CIRCUIT) == Some(0.0)
    })
    .await;
    assert!(closed, "breaker closed again\n{}", sidecar.metrics().await);
    let text = sidecar.metrics().await;
    for to in ["open", "half_open", "closed"] {
        let series =
            format!("kms_sidecar_circuit_transitions_total{{backend=\"embedded\",to=\"{to}\"}}");
        assert!(sample(&text, &series).unwrap() >= 1.0, "{series}\n{text}");
    }
    for (i, blob) in uncached.iter().enumerate() {
        let out = kms
            .decrypt()
            .ciphertext_blob(blob.clone())
            .send()
            .await
            .unwrap();
        assert_eq!(out.plaintext().unwrap().as_ref(), &[100 + i as u8; 32]);
    }
}

#[tokio::test]
async fn the_retry_budget_bounds_backend_attempts() {
    // A breaker that only the failure ratio can open, so that the random errors below are retried.
    let (_dir, sidecar) = start(&["--breaker-consecutive-failures", "50"]);
    let kms = sidecar.sdk();
    let key = new_key(&kms).await;
    let attempts = |text: &str| {
        sum_series(
            text,
            "kms_sidecar_backend_requests_total{backend=\"embedded\",operation=\"encrypt\",",
        )
    };
    let requests = |text: &str| {
        sum_series(
            text,
            "kms_sidecar_requests_total{frontend=\"aws_json\",operation=\"Encrypt\",",
        )
    };
    let retries = |text: &str| {
        sum_series(
            text,
            "kms_sidecar_backend_retries_total{backend=\"embedded\",",
        )
    };
    let before = sidecar.metrics().await;

    // 30% of attempts fail: unbounded, three attempts per call would make ~1.39 attempts per
    // request; the budget (10% of requests plus 10 per 10 s window) must hold it near 1.1.
    set_faults(
        &sidecar,
        r#"{"error_rate": 0.3, "operations": ["encrypt"]}"#,
    )
    .await;
    for _ in 0..300 {
        let _ = try_encrypt(&kms, &key, b"x").await;
    }
    let middle = sidecar.metrics().await;
    let (n, a, r) = (
        requests(&middle) - requests(&before),
        attempts(&middle) - attempts(&before),
        retries(&middle) - retries(&before),
    );
    eprintln!("retry budget, 30% errors: {a} backend attempts for {n} requests, {r} retries");
    assert_eq!(n, 300.0);
    assert!(r > 0.0, "errors were retried");
    // Ratio 0.1 and a reserve of 10 per window; the test may straddle two windows.
    assert!(
        a <= 1.1 * n + 20.0,
        "{a} attempts for {n} requests\n{middle}"
    );

    // A full outage, from 4 callers at once.
    set_faults(&sidecar, r#"{"outage": "fail", "operations": ["encrypt"]}"#).await;
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..4 {
        let kms = kms.clone();
        let key = key.clone();
        tasks.spawn(async move {
            for _ in 0..50 {
                let result = try_encrypt(&kms, &key, b"x").await;
                assert_eq!(error_code(result), "DependencyTimeoutException");
            }
        });
    }
    while let Some(r) = tasks.join_next().await {
        r.unwrap();
    }
    let after = sidecar.metrics().await;
    let n = requests(&after) - requests(&middle);
    let a = attempts(&after) - attempts(&middle);
    eprintln!("retry budget, outage: {a} backend attempts for {n} requests");
    assert_eq!(n, 200.0, "{after}");
    assert!(
        a <= 1.1 * n + 20.0,
        "{a} attempts for {n} requests\n{after}"
    );
}

#[tokio::test]
async fn readiness_follows_the_backend() {
    let (_dir, sidecar) = start(&["--breaker-consecutive-failures", "3"]);
    let kms = sidecar.sdk();
    let key = new_key(&kms).await;
    let readyz = format!("{}/readyz", sidecar.admin_url);
    assert_eq!(http_get(&readyz).await, (200, "ready\n".to_string()));

    set_faults(&sidecar, r#"{"outage": "fail"}"#).await;
    let last = readyz_until(&readyz, |status, _| status == 503).await;
    assert_eq!(last.0, 503, "{}", last.1);
    assert!(last.1.starts_with("not ready:\n"), "{}", last.1);
    assert!(
        last.1
            .contains("backend random failed: Unavailable: injected fault: outage")
            || last
                .1
                .contains("backend random failed: Unavailable: circuit open"),
        "{}",
        last.1
    );
    assert!(last.1.contains("fault injection active"), "{}", last.1);

    clear_faults(&sidecar).await;
    let last = readyz_until(&readyz, |status, body| status == 200 && body == "ready\n").await;
    assert_eq!(last, (200, "ready\n".to_string()));

    // Throttling: the backend is up, so the sidecar stays in service, reported as degraded, and the
    // breaker stays closed; callers see ThrottlingException.
    set_faults(&sidecar, r#"{"throttle_rate": 1}"#).await;
    let last = readyz_until(&readyz, |_, body| body.contains("throttled")).await;
    assert!(last.1.contains("throttled"), "{last:?}");
    assert_eq!(last.0, 200, "{}", last.1);
    assert!(last.1.starts_with("degraded:\n"), "{}", last.1);
    let result = try_encrypt(&kms, &key, b"x").await;
    assert_eq!(error_code(result), "ThrottlingException");
    let text = sidecar.metrics().await;
    assert_eq!(sample(&text, CIRCUIT), Some(0.0), "{text}");
    assert!(
        sample(
            &text,
            "kms_sidecar_faults_injected_total{backend=\"embedded\",fault=\"throttle\"}"
        )
        .unwrap()
            >= 3.0
    );

    clear_faults(&sidecar).await;
    let last = readyz_until(&readyz, |status, body| status == 200 && body == "ready\n").await;
    assert_eq!(last, (200, "ready\n".to_string()));
}

#[tokio::test]
async fn faults_round_trip_are_counted_and_refused_when_disabled() {
    // Disabled (the default): every method is refused with a JSON error that says how to enable it.
    let dir = tempfile::tempdir().unwrap();
    let plain = Sidecar::start(dir.path());
    let url = format!("{}/v1/faults", plain.admin_url);
    for method in ["GET", "PUT", "POST", "DELETE"] {
        let (status, body) = http_send(method, &url, r#"{"outage": "fail"}"#).await;
        assert_eq!(status, 403, "{method}: {body}");
        let body: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert!(
            body["error"].as_str().unwrap().contains("--faults-enabled"),
            "{body}"
        );
    }
    let (_, status) = http_get(&format!("{}/v1/status", plain.admin_url)).await;
    let status: serde_json::Value = serde_json::from_str(&status).unwrap();
    assert_eq!(status["faults"]["enabled"], false);
    drop(plain);

    let (_dir, sidecar) = start(&["--breaker-consecutive-failures", "100"]);
    let kms = sidecar.sdk();
    let key = new_key(&kms).await;
    let url = format!("{}/v1/faults", sidecar.admin_url);
    let (status, body) = http_get(&url).await;
    assert_eq!(status, 200);
    let shown: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(shown["enabled"], true);
    assert_eq!(shown["active"], false);
    assert_eq!(shown["backend"], "embedded");
    assert!(shown["spec"].is_null());

    let spec = serde_json::json!({"error_rate": 1.0, "operations": ["encrypt"]});
    let (status, _) = http_send("POST", &url, &spec.to_string()).await;
    assert_eq!(status, 200);
    let shown: serde_json::Value = serde_json::from_str(&http_get(&url).await.1).unwrap();
    assert_eq!(shown["active"], true);
    assert_eq!(shown["spec"], spec, "{shown}");

    // Bad input: 400 with a message, and the spec in force is kept.
    let bad = [
        (
            r#"{"error_rate": 1.5}"#,
            "error_rate must be a number in [0, 1]",
        ),
        (r#"{"latency_ms": 999999999}"#, "latency_ms must be at most"),
        (
            r#"{"outage": "fail", "surprise": true}"#,
            "unknown field `surprise`",
        ),
        (
            r#"{"outage": "fail", "backend": "pkcs11"}"#,
            "backend is \"embedded\"",
        ),
        ("{}", "injects nothing"),
        ("{not json", "invalid fault spec"),
    ];
    for (body, message) in bad {
        let (status, text) = http_send("PUT", &url, body).await;
        assert_eq!(status, 400, "{body}: {text}");
        let err: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert!(
            err["error"].as_str().unwrap().contains(message),
            "{body}: {text}"
        );
    }
    let (status, _) = http_send("PATCH", &url, "{}").await;
    assert_eq!(status, 405);
    let shown: serde_json::Value = serde_json::from_str(&http_get(&url).await.1).unwrap();
    assert_eq!(shown["spec"], spec);

    // In scope: Encrypt fails as a backend outage; out of scope: GenerateRandom works.
    let result = try_encrypt(&kms, &key, b"x").await;
    assert_eq!(error_code(result), "DependencyTimeoutException");
    kms.generate_random()
        .number_of_bytes(16)
        .send()
        .await
        .unwrap();
    let text = sidecar.metrics().await;
    let injected = sample(
        &text,
        "kms_sidecar_faults_injected_total{backend=\"embedded\",fault=\"error\"}",
    )
    .unwrap();
    // Every attempt (retries included) was an injected error, and each shows as a backend failure.
    assert!(injected >= 1.0, "{text}");
    assert_eq!(
        sample(
            &text,
            "kms_sidecar_backend_requests_total{backend=\"embedded\",operation=\"encrypt\",outcome=\"unavailable\"}"
        ),
        Some(injected),
        "{text}"
    );
    let (_, status) = http_get(&format!("{}/v1/status", sidecar.admin_url)).await;
    let status: serde_json::Value = serde_json::from_str(&status).unwrap();
    assert_eq!(
        status["faults"],
        serde_json::json!({"enabled": true, "active": true})
    );
    let shown: serde_json::Value = serde_json::from_str(&http_get(&url).await.1).unwrap();
    assert_eq!(shown["injected"]["error"], injected as u64);

    clear_faults(&sidecar).await;
    let shown: serde_json::Value = serde_json::from_str(&http_get(&url).await.1).unwrap();
    assert_eq!(shown["active"], false);
    assert!(shown["spec"].is_null());
    encrypt(&kms, &key, b"x").await;
    // Injected faults are logged at most once a second per kind, each line with the number not
    // logged since the last; the clear line reports the rest, so every fault is accounted for.
    // (The log is read from the process asynchronously.)
    let suppressed = |line: &str| -> f64 {
        line.split_whitespace()
            .find_map(|w| w.strip_prefix("suppressed="))
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("no suppressed= in {line}"))
    };
    let logged = || {
        let text = sidecar.output.stderr_text();
        let lines: Vec<f64> = text
            .lines()
            .filter(|l| l.contains("WARN") && l.contains("injected backend fault"))
            .map(|l| 1.0 + suppressed(l))
            .collect();
        let cleared: f64 = text
            .lines()
            .filter(|l| l.contains("fault injection cleared"))
            .map(suppressed)
            .sum();
        (lines.len(), lines.iter().sum::<f64>() + cleared)
    };
    eventually(Duration::from_secs(2), || async { logged().1 >= injected }).await;
    let (lines, accounted) = logged();
    let text = sidecar.output.stderr_text();
    assert_eq!(accounted, injected, "{text}");
    assert!(lines >= 1 && (lines as f64) <= injected, "{text}");
}

#[tokio::test]
async fn latency_slows_misses_and_spares_cache_hits() {
    let (_dir, sidecar) = start(&[]);
    let kms = sidecar.sdk();
    let key = new_key(&kms).await;
    let hot = encrypt(&kms, &key, b"hot").await;
    kms.decrypt()
        .ciphertext_blob(hot.clone())
        .send()
        .await
        .unwrap();
    let cold = encrypt(&kms, &key, b"cold").await;

    set_faults(
        &sidecar,
        r#"{"latency_ms": 300, "operations": ["decrypt"]}"#,
    )
    .await;
    let started = Instant::now();
    let out = kms.decrypt().ciphertext_blob(cold).send().await.unwrap();
    let miss = started.elapsed();
    assert_eq!(out.plaintext().unwrap().as_ref(), b"cold");
    assert!(miss >= Duration::from_millis(300), "miss took {miss:?}");

    let started = Instant::now();
    let out = kms.decrypt().ciphertext_blob(hot).send().await.unwrap();
    let hit = started.elapsed();
    assert_eq!(out.plaintext().unwrap().as_ref(), b"hot");
    assert!(hit < Duration::from_millis(150), "hit took {hit:?}");

    let started = Instant::now();
    encrypt(&kms, &key, b"out of scope").await;
    assert!(started.elapsed() < Duration::from_millis(150));
    assert_eq!(
        sample(
            &sidecar.metrics().await,
            "kms_sidecar_faults_injected_total{backend=\"embedded\",fault=\"latency\"}"
        ),
        Some(1.0)
    );
}
