//! The KMS v2 target end to end: a real sidecar process with its Kubernetes KMS v2 plugin on a Unix
//! socket (key policy allowing the `kubernetes` principal, as the e2e tests of the plugin set it
//! up), a short bounded gRPC load of Encrypt and Decrypt with zero errors, every request (setup,
//! warm-up and measured) visible in the sidecar's own `kms_sidecar_requests_total{frontend="kmsv2"}`.
#![forbid(unsafe_code)]
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use kms_sidecar_e2e::{Sidecar, kmsv2};
use support::{assert_documented_fields, cli};

const ACCOUNT: &str = "111122223333";
const ALIAS: &str = "alias/k8s-loadtest";

/// The sum of `kms_sidecar_requests_total` series of the KMS v2 front-end for `op`, any outcome.
fn kmsv2_requests(metrics: &str, op: &str) -> u64 {
    metrics
        .lines()
        .filter(|l| l.starts_with("kms_sidecar_requests_total{"))
        .filter(|l| l.contains("frontend=\"kmsv2\"") && l.contains(&format!("operation=\"{op}\"")))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .map(|v| v as u64)
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kmsv2_load_against_a_real_sidecar_has_zero_errors() {
    let dir = tempfile::tempdir().unwrap();
    let sockets = tempfile::tempdir().unwrap();
    let socket = sockets.path().join("kms.sock");
    let sidecar = Sidecar::start(dir.path());
    let kms = sidecar.sdk();
    let key = kms
        .create_key()
        .policy(kmsv2::policy(ACCOUNT))
        .send()
        .await
        .expect("CreateKey")
        .key_metadata
        .expect("metadata");
    kms.create_alias()
        .alias_name(ALIAS)
        .target_key_id(key.key_id())
        .send()
        .await
        .expect("CreateAlias");
    let sidecar = sidecar
        .restart_with(&kmsv2::args(&socket, ALIAS))
        .expect("restart with the plugin");
    let before = sidecar.metrics().await;

    let out = tempfile::tempdir().unwrap();
    let json = out.path().join("kmsv2.json");
    let report = cli(&[
        "run",
        "--no-progress",
        "--kmsv2-socket",
        socket.to_str().unwrap(),
        "--mix",
        "encrypt=1,decrypt=1",
        "--connections",
        "4",
        "--rate",
        "100",
        "--warmup-secs",
        "0.5",
        "--duration-secs",
        "2",
        "--json",
        json.to_str().unwrap(),
    ])
    .await;
    let r = &report.runs[0];
    assert_eq!(r.errors, 0, "{:?}", r.errors_by_type);
    assert_eq!(r.warmup_errors, 0);
    assert_eq!((r.planned, r.sent, r.not_sent), (250, 250, 0));
    assert_eq!(r.completed + r.warmup_requests, 250);
    assert_eq!(r.ok, r.completed);
    assert_eq!(r.by_op.len(), 2);
    assert!(r.by_op["Encrypt"].ok > 0 && r.by_op["Decrypt"].ok > 0);
    assert!(r.target.starts_with("unix:"), "{}", r.target);
    let setup = report.setup.as_ref().unwrap();
    assert_eq!((setup.ciphertexts, setup.requests), (16, 16));
    assert_eq!(report.parameters.payload_bytes, 32);
    assert_eq!(report.parameters.principals, 0);
    assert_documented_fields(&std::fs::read_to_string(&json).unwrap());

    // The sidecar counted exactly what the report says was sent: setup Encrypts plus every
    // request of the run (warm-up included), split by operation as the mix interleaves them.
    let after = sidecar.metrics().await;
    let mix = kms_loadtest::mix::Mix::parse("encrypt=1,decrypt=1").unwrap();
    let decrypts = (0..r.sent)
        .filter(|i| mix.op(*i) == kms_loadtest::mix::Op::Decrypt)
        .count() as u64;
    let encrypts = r.sent - decrypts + setup.requests;
    assert_eq!(
        kmsv2_requests(&after, "Encrypt") - kmsv2_requests(&before, "Encrypt"),
        encrypts,
        "{after}"
    );
    assert_eq!(
        kmsv2_requests(&after, "Decrypt") - kmsv2_requests(&before, "Decrypt"),
        decrypts,
        "{after}"
    );
    let (ok, out) = sidecar.stop();
    assert!(ok, "sidecar exited with an error:\n{}", out.all());
}
