//! End to end: a real kms-sidecar process under a short load from the official AWS SDK, scraped
//! by the dashboard's own fetch code, and the numbers checked in the model and derived views.
#![forbid(unsafe_code)]

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use aws_sdk_kms::primitives::Blob;
use kms_dashboard::model::derive::EndpointState;
use kms_dashboard::model::{Derived, Model, ModelConfig, Settings};
use kms_dashboard::source::{self, FetchSettings, Shared, Sources};
use kms_sidecar_e2e::Sidecar;

const REQ: &str = "kms_sidecar_requests_total";

#[test]
fn model_sees_a_real_sidecars_requests_and_errors() {
    let dir = tempfile::tempdir().unwrap();
    let sidecar = Sidecar::start(dir.path());
    let url = sidecar.admin_url.clone();
    let agent = source::agent(Duration::from_secs(5));
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
    rt.block_on(async {
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
    });

    source::apply_sidecar(
        &mut model,
        &url,
        1010.0,
        source::scrape_sidecar(&agent, &url),
    );
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

    let d = Derived::compute(
        &model,
        Settings {
            window_secs: 300.0,
            ..Settings::default()
        },
        1010.0,
    );
    assert_eq!(d.requests, Some(12.0));
    assert_eq!(d.outcomes.get("InvalidCiphertextException"), Some(&1.0));
    // a client error is a correct answer: availability stays 100 %
    assert_eq!(d.availability, Some(1.0));
    let enc = d
        .op_latency
        .iter()
        .find(|o| o.operation == "Encrypt")
        .unwrap();
    assert_eq!(enc.calls, 5.0);
    assert!(enc.p95.is_some_and(|p| p > 0.0 && p < 10.0), "{enc:?}");
    // today's sidecar answers 404 here; once it serves the documents they parse
    assert!(
        matches!(d.status, EndpointState::NotServed | EndpointState::Ok),
        "{:?}",
        d.status
    );
    assert!(
        matches!(d.audit, EndpointState::NotServed | EndpointState::Ok),
        "{:?}",
        d.audit
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
