//! The KMS v2 target end to end: a real sidecar process with its Kubernetes KMS v2 plugin on a Unix
//! socket (key policy allowing the `kubernetes` principal, as the e2e tests of the plugin set it
//! up), a short bounded gRPC load of Encrypt and Decrypt with zero errors, every request (setup,
//! warm-up and measured) visible in the sidecar's own `kms_sidecar_requests_total{frontend="kmsv2"}`.
#![forbid(unsafe_code)]
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use kms_sidecar_e2e::{Sidecar, kmsv2};
use support::sidecar::encrypt_decrypt_load;

const ACCOUNT: &str = "111122223333";
const ALIAS: &str = "alias/k8s-loadtest";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kmsv2_load_against_a_real_sidecar_has_zero_errors() {
    let dir = tempfile::tempdir().unwrap();
    let sockets = tempfile::tempdir().unwrap();
    let socket = sockets.path().join("kms.sock");
    let sidecar = Sidecar::start(dir.path());
    kmsv2::create_plugin_key(&sidecar, ACCOUNT, ALIAS).await;
    let sidecar = sidecar
        .restart_with(&kmsv2::args(&socket, ALIAS))
        .expect("restart with the plugin");
    let report = encrypt_decrypt_load(
        sidecar,
        &["--kmsv2-socket", socket.to_str().unwrap()],
        "kmsv2",
        ("Encrypt", "Decrypt"),
    )
    .await;
    let r = &report.runs[0];
    assert_eq!(r.completed + r.warmup_requests, 250);
    assert_eq!(r.by_op.len(), 2);
    assert!(r.target.starts_with("unix:"), "{}", r.target);
    assert_eq!(report.parameters.principals, 0);
}
