//! End to end: a real kms-sidecar process (admin API behind a bearer token, a per-principal rate
//! limit) under a short load from the official AWS SDK, including a throttled burst and a call a key
//! policy denies, scraped by the dashboard's own fetch code, and the numbers checked in the model
//! and derived views.
#![forbid(unsafe_code)]

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use aws_sdk_kms::error::ProvideErrorMetadata;
use aws_sdk_kms::primitives::Blob;
use kms_dashboard::model::derive::EndpointState;
use kms_dashboard::model::{Derived, Endpoint, Model, ModelConfig, Settings};
use kms_dashboard::source::{self, FetchSettings, Shared, Sources};
use kms_sidecar_e2e::{Sidecar, Start, cli, printed_creds, sdk_client};

const REQ: &str = "kms_sidecar_requests_total";
const TOKEN: &str = "dashboard-e2e-admin-token";
/// Calls sent at once by one principal; the limit's burst lets through at most `BURST`.
const BURST_CALLS: usize = 40;
const BURST: u32 = 5;

#[test]
fn model_sees_a_real_sidecars_requests_and_errors() {
    let dir = tempfile::tempdir().unwrap();
    // mallory (added below) may make 5 calls/s with a burst of 5; everyone else is unlimited
    let config = dir.path().join("sidecar.toml");
    std::fs::write(&config, "[rate_limit_principals]\nmallory = 5.0\n").unwrap();
    let sidecar = Sidecar::start_with(
        &dir.path().join("data"),
        Start {
            args: vec!["--config".into(), config.display().to_string()],
            env: vec![("KMS_SIDECAR_ADMIN_TOKEN".into(), TOKEN.into())],
            ..Start::default()
        },
    )
    .unwrap();
    let url = sidecar.admin_url.clone();
    // Without the token the sidecar refuses the scrape, and the model says so.
    let mut refused = Model::new(ModelConfig::default());
    source::apply_sidecar(
        &mut refused,
        &url,
        1000.0,
        source::scrape_sidecar(&source::agent(Duration::from_secs(5)), &url),
    );
    let error = refused.sources[&url].error.clone().unwrap_or_default();
    assert!(error.contains("401"), "{error}");
    let agent = source::agent_with_token(Duration::from_secs(5), Some(TOKEN));
    let mut model = Model::new(ModelConfig::default());

    // baseline: whatever the sidecar counted before is history, not this window
    source::apply_sidecar(
        &mut model,
        &url,
        1000.0,
        source::scrape_sidecar(&agent, &url),
    );
    assert_eq!(model.sources[&url].error, None, "{:?}", model.sources[&url]);

    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let key_id = rt.block_on(async {
        let kms = sidecar.sdk();
        let key = kms.create_key().send().await.unwrap();
        let key_id = key.key_metadata().unwrap().key_id().to_string();
        for i in 0..5u8 {
            let ct = kms
                .encrypt()
                .key_id(&key_id)
                .plaintext(Blob::new(vec![i; 32]))
                .send()
                .await
                .unwrap();
            let pt = kms
                .decrypt()
                .ciphertext_blob(ct.ciphertext_blob().unwrap().clone())
                .send()
                .await
                .unwrap();
            assert_eq!(pt.plaintext().unwrap().as_ref(), &[i; 32]);
        }
        let err = kms
            .decrypt()
            .ciphertext_blob(Blob::new(vec![7u8; 80]))
            .send()
            .await
            .unwrap_err()
            .into_service_error();
        assert!(err.is_invalid_ciphertext_exception(), "{err:?}");

        // A second principal: the key's default policy does not name it, so it is denied.
        let (ok, out) = cli(&dir.path().join("data"), &["clients", "add", "mallory"]);
        assert!(ok, "{out}");
        let mallory = sdk_client(&sidecar.kms_url, &printed_creds(&out));
        loop {
            // the running sidecar picks up new clients within a second
            let r = mallory
                .encrypt()
                .key_id(&key_id)
                .plaintext(Blob::new(b"not yours".to_vec()))
                .send()
                .await;
            let e = r.expect_err("mallory encrypted under a key whose policy does not allow it");
            match e.as_service_error().and_then(ProvideErrorMetadata::code) {
                Some("AccessDeniedException") => break,
                _ => tokio::time::sleep(Duration::from_millis(200)).await,
            }
        }

        // A burst from mallory beyond its per-principal burst is throttled.
        let mut burst = tokio::task::JoinSet::new();
        for _ in 0..BURST_CALLS {
            let m = mallory.clone();
            burst.spawn(async move { m.generate_random().number_of_bytes(16).send().await });
        }
        let mut throttled = 0;
        while let Some(r) = burst.join_next().await {
            if let Err(e) = r.unwrap() {
                let code = e.as_service_error().and_then(ProvideErrorMetadata::code);
                assert_eq!(code, Some("ThrottlingException"), "{e:?}");
                throttled += 1;
            }
        }
        assert!(
            throttled >= BURST_CALLS - BURST as usize - 2,
            "throttled {throttled}"
        );
        key_id
    });

    // The audit writer flushes at least every second; /v1/audit shows records once written.
    let started = Instant::now();
    let scrape = loop {
        let scrape = source::scrape_sidecar(&agent, &url);
        let written = matches!(&scrape.denied, Endpoint::Ok(r) if r.iter().any(|r| r.principal.contains("mallory")));
        if written || started.elapsed() > Duration::from_secs(5) {
            break scrape;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    source::apply_sidecar(&mut model, &url, 1010.0, scrape);
    assert_eq!(model.sources[&url].scrapes, 2);
    let by = model.increase_by(REQ, &[], &["operation", "outcome"], 1000.0, 1010.0);
    assert_eq!(by.get("CreateKey / ok"), Some(&1.0), "{by:?}");
    assert_eq!(by.get("Encrypt / ok"), Some(&5.0), "{by:?}");
    assert_eq!(by.get("Decrypt / ok"), Some(&5.0), "{by:?}");
    assert_eq!(
        by.get("Decrypt / InvalidCiphertextException"),
        Some(&1.0),
        "{by:?}"
    );
    let throttled = by
        .get("GenerateRandom / ThrottlingException")
        .copied()
        .unwrap_or(0.0);
    assert!(
        throttled >= (BURST_CALLS - BURST as usize - 2) as f64,
        "{by:?}"
    );
    let denied = model.increase_by(
        "kms_sidecar_unauthorized_total",
        &[],
        &["principal", "operation", "reason"],
        1000.0,
        1010.0,
    );
    assert_eq!(
        denied.get("mallory / Encrypt / policy_denied"),
        Some(&1.0),
        "{denied:?}"
    );

    let d = Derived::compute(
        &model,
        Settings {
            window_secs: 300.0,
            ..Settings::default()
        },
        1010.0,
    );
    assert_eq!(d.outcomes.get("InvalidCiphertextException"), Some(&1.0));
    assert_eq!(d.outcomes.get("AccessDeniedException"), Some(&1.0));
    assert_eq!(d.outcomes.get("ThrottlingException"), Some(&throttled));
    assert_eq!(d.throttled, Some(throttled));
    // mallory's calls before the sidecar loaded its credential count as unknown_client
    assert_eq!(d.unauthorized, Some(denied.values().sum::<f64>()));
    // a client error is a correct answer: availability stays 100 %
    assert_eq!(d.availability, Some(1.0));
    let enc = d
        .op_latency
        .iter()
        .find(|o| o.operation == "Encrypt")
        .unwrap();
    let encrypts: f64 = by
        .iter()
        .filter(|(k, _)| k.starts_with("Encrypt /"))
        .map(|(_, v)| v)
        .sum();
    assert_eq!(enc.calls, encrypts, "5 ok and mallory's refused attempts");
    assert!(enc.p95.is_some_and(|p| p > 0.0 && p < 10.0), "{enc:?}");
    assert_eq!(d.status, EndpointState::Ok);
    assert_eq!(d.audit, EndpointState::Ok);
    let record = d
        .denied_records
        .iter()
        .find(|r| r.principal.contains("mallory"))
        .unwrap_or_else(|| {
            panic!(
                "denied record missing: {:?} {:?}",
                d.denied_records, model.denied
            )
        });
    assert_eq!(record.operation, "Encrypt");
    assert!(
        key_id.contains(&record.key_id) || record.key_id.contains(&key_id),
        "{record:?}"
    );

    // the threaded fetcher: a live and a dead source side by side, the dead one never blocks
    let dead = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        format!("http://{}", l.local_addr().unwrap())
    };
    let shared = Shared::new(
        Model::new(ModelConfig::default()),
        FetchSettings {
            interval_secs: 0.2,
            window_secs: 300.0,
        },
    );
    let repaints = Arc::new(AtomicUsize::new(0));
    let r = repaints.clone();
    source::spawn(
        &Sources::Sidecars(vec![url.clone(), dead.clone()]),
        &shared,
        Some(TOKEN),
        Arc::new(move || {
            r.fetch_add(1, Ordering::Relaxed);
        }),
    );
    let started = Instant::now();
    while shared.model().sources[&url].scrapes < 3 {
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "live source not scraped"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    shared.stop();
    let m = shared.model();
    assert!(m.sources[&dead].error.is_some());
    assert_eq!(m.sources[&dead].last_ok, None);
    assert!(repaints.load(Ordering::Relaxed) >= 3);
    assert!(m.has(REQ));
}
