//! The Kubernetes KMS v2 plugin end to end: a real sidecar process, a real tonic client on its
//! Unix socket, the AWS SDK on its KMS port for key management. Status, 32-byte round trips,
//! rotation (the key id changes, old ciphertexts still decrypt), bad ciphertexts, concurrency, the
//! socket's mode, restarts (graceful and after a kill), a backend outage, on the embedded backend
//! and on SoftHSMv2 through PKCS#11.
#![forbid(unsafe_code)]
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::os::unix::fs::PermissionsExt as _;
use std::path::Path;
use std::time::{Duration, Instant};

use kms_sidecar_e2e::kmsv2::{self, Client, proto};
use kms_sidecar_e2e::{BackendChoice, Sidecar, Start, http_send, on_every_backend, sample};
use tonic::Code;

const ACCOUNT: &str = "111122223333";
const ALIAS: &str = "alias/k8s";

/// Creates the plugin's key and alias on a running sidecar; returns the key's ARN.
async fn create_plugin_key(sidecar: &Sidecar) -> String {
    kmsv2::create_plugin_key(sidecar, ACCOUNT, ALIAS).await
}

async fn status(client: &mut Client) -> proto::StatusResponse {
    client
        .status(proto::StatusRequest {})
        .await
        .expect("Status")
        .into_inner()
}

async fn encrypt(client: &mut Client, plaintext: &[u8]) -> proto::EncryptResponse {
    client
        .encrypt(proto::EncryptRequest {
            plaintext: plaintext.to_vec(),
            uid: "e2e-uid".into(),
        })
        .await
        .expect("Encrypt")
        .into_inner()
}

async fn decrypt(client: &mut Client, sealed: &proto::EncryptResponse) -> Result<Vec<u8>, Code> {
    client
        .decrypt(proto::DecryptRequest {
            ciphertext: sealed.ciphertext.clone(),
            uid: "e2e-uid".into(),
            key_id: sealed.key_id.clone(),
            annotations: sealed.annotations.clone(),
        })
        .await
        .map(|r| r.into_inner().plaintext)
        .map_err(|s| s.code())
}

async fn decrypt_raw(client: &mut Client, ciphertext: Vec<u8>) -> tonic::Status {
    client
        .decrypt(proto::DecryptRequest {
            ciphertext,
            uid: "e2e-uid".into(),
            key_id: String::new(),
            annotations: Default::default(),
        })
        .await
        .expect_err("a bad ciphertext must fail")
}

fn seed(n: u8) -> Vec<u8> {
    (0..32).map(|i| i ^ n).collect()
}

/// Starts a sidecar on `backend`, creates the plugin's key, and restarts it with the plugin on.
async fn plugin_sidecar(
    dir: &Path,
    socket: &Path,
    backend: &BackendChoice,
    extra: &[&str],
) -> (Sidecar, String) {
    let mut start = backend.start();
    start.args.extend(extra.iter().map(|s| s.to_string()));
    let sidecar = Sidecar::start_with(dir, start).expect("start");
    let arn = create_plugin_key(&sidecar).await;
    let sidecar = sidecar
        .restart_with(&kmsv2::args(socket, ALIAS))
        .expect("restart with the plugin");
    (sidecar, arn)
}

async fn plugin_end_to_end(backend: BackendChoice) {
    let dir = tempfile::tempdir().unwrap();
    let sockets = tempfile::tempdir().unwrap();
    let socket = sockets.path().join("kms.sock");
    let (sidecar, arn) = plugin_sidecar(dir.path(), &socket, &backend, &[]).await;
    let name = backend.name();

    // The socket is the authentication: owner-only.
    let mode = std::fs::metadata(&socket).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "{name}: socket mode {mode:o}");

    let mut client = kmsv2::connect(&socket).await;
    let s = status(&mut client).await;
    assert_eq!(s.version, "v2");
    assert_eq!(s.healthz, "ok", "{name}");
    assert_eq!(s.key_id, format!("{arn}#v1"), "{name}");

    // A 32-byte seed, as the API server sends.
    let v1 = encrypt(&mut client, &seed(1)).await;
    assert_eq!(v1.key_id, s.key_id, "{name}: Encrypt and Status agree");
    assert!(
        !v1.ciphertext.is_empty() && v1.ciphertext.len() <= 1024,
        "{name}: {} bytes",
        v1.ciphertext.len()
    );
    assert_ne!(&v1.ciphertext[..], &seed(1)[..]);
    let annotations: usize = v1.annotations.iter().map(|(k, v)| k.len() + v.len()).sum();
    assert!(annotations <= 32 * 1024);
    assert!(
        v1.annotations
            .keys()
            .all(|k| k.ends_with(".kms-sidecar.io")),
        "{:?}",
        v1.annotations.keys()
    );
    assert_eq!(decrypt(&mut client, &v1).await.unwrap(), seed(1), "{name}");

    // Rotation through the AWS API: the key id changes at once, old data still decrypts.
    sidecar
        .sdk()
        .rotate_key_on_demand()
        .key_id(ALIAS)
        .send()
        .await
        .expect("RotateKeyOnDemand");
    let s2 = status(&mut client).await;
    assert_eq!(s2.healthz, "ok");
    assert_eq!(
        s2.key_id,
        format!("{arn}#v2"),
        "{name}: rotation is visible"
    );
    let v2 = encrypt(&mut client, &seed(2)).await;
    assert_eq!(v2.key_id, s2.key_id);
    assert_eq!(decrypt(&mut client, &v1).await.unwrap(), seed(1));
    assert_eq!(decrypt(&mut client, &v2).await.unwrap(), seed(2));

    // Tampered, foreign, empty and oversized ciphertexts: errors, and the plugin stays healthy.
    let mut tampered = v2.ciphertext.clone();
    *tampered.last_mut().unwrap() ^= 1;
    let mut header_changed = v2.ciphertext.clone();
    header_changed[10] ^= 0x40; // inside the key id of the header
    for (what, blob) in [
        ("tampered", tampered),
        ("header changed", header_changed),
        ("foreign", vec![0x5a; 120]),
        ("empty", Vec::new()),
        ("oversized", vec![1; 4096]),
    ] {
        let err = decrypt_raw(&mut client, blob).await;
        assert_eq!(err.code(), Code::InvalidArgument, "{name} {what}: {err:?}");
    }
    let err = client
        .encrypt(proto::EncryptRequest {
            plaintext: Vec::new(),
            uid: String::new(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert_eq!(status(&mut client).await.healthz, "ok", "{name}");

    // 32 concurrent callers, each on its own stream of the shared connection.
    let mut tasks = Vec::new();
    for i in 0..32u8 {
        let mut c = client.clone();
        tasks.push(tokio::spawn(async move {
            let sealed = encrypt(&mut c, &seed(i)).await;
            assert_eq!(decrypt(&mut c, &sealed).await.unwrap(), seed(i));
            sealed.key_id
        }));
    }
    for t in tasks {
        assert_eq!(
            tokio::time::timeout(Duration::from_secs(60), t)
                .await
                .unwrap()
                .unwrap(),
            s2.key_id
        );
    }

    // Observed like any other call: the principal, the front-end's operations, the health gauge.
    let metrics = sidecar.metrics().await;
    assert_eq!(
        sample(&metrics, "kms_sidecar_kmsv2_status_ok{key=\"alias/k8s\"}"),
        Some(1.0),
        "{metrics}"
    );
    assert!(
        metrics.contains("operation=\"Status\""),
        "Status is counted"
    );

    // A graceful restart removes the socket, a new one serves the same data.
    drop(client);
    let creds = sidecar.creds.clone();
    let (ok, out) = sidecar.stop();
    assert!(ok, "{}", out.all());
    assert!(!socket.exists(), "{name}: socket removed at shutdown");
    let start = Start {
        args: [backend.start().args, kmsv2::args(&socket, ALIAS)].concat(),
        creds: Some(creds),
        ..backend.start()
    };
    let sidecar = Sidecar::start_with(dir.path(), start.clone()).expect("restart");
    let mut client = kmsv2::connect(&socket).await;
    assert_eq!(status(&mut client).await.key_id, format!("{arn}#v2"));
    assert_eq!(decrypt(&mut client, &v1).await.unwrap(), seed(1), "{name}");
    assert_eq!(decrypt(&mut client, &v2).await.unwrap(), seed(2), "{name}");

    // Killed: the stale socket is replaced by the next start.
    drop(client);
    drop(sidecar);
    assert!(socket.exists(), "a killed process leaves its socket");
    let _sidecar = Sidecar::start_with(dir.path(), start).expect("start over a stale socket");
    let mut client = kmsv2::connect(&socket).await;
    assert_eq!(decrypt(&mut client, &v1).await.unwrap(), seed(1), "{name}");
}

on_every_backend!(plugin_end_to_end);

#[tokio::test]
async fn a_missing_key_stops_the_start_and_a_live_socket_is_not_taken() {
    let dir = tempfile::tempdir().unwrap();
    let sockets = tempfile::tempdir().unwrap();
    let socket = sockets.path().join("kms.sock");
    let err = Sidecar::start_with(
        dir.path(),
        Start {
            args: kmsv2::args(&socket, "alias/missing"),
            ..Start::default()
        },
    )
    .unwrap_err();
    assert!(
        err.contains("kmsv2_key_id") && err.contains("alias/missing"),
        "{err}"
    );
    assert!(!socket.exists());

    let dir = tempfile::tempdir().unwrap();
    let (_first, _) = plugin_sidecar(dir.path(), &socket, &BackendChoice::Embedded, &[]).await;
    let other = tempfile::tempdir().unwrap();
    let second = Sidecar::start(other.path());
    create_plugin_key(&second).await;
    let err = second
        .restart_with(&kmsv2::args(&socket, ALIAS))
        .unwrap_err();
    assert!(err.contains("another process"), "{err}");
}

#[tokio::test]
async fn a_backend_outage_fails_status_while_cached_decrypts_keep_working() {
    let dir = tempfile::tempdir().unwrap();
    let sockets = tempfile::tempdir().unwrap();
    let socket = sockets.path().join("kms.sock");
    let (sidecar, _) = plugin_sidecar(
        dir.path(),
        &socket,
        &BackendChoice::Embedded,
        &[
            "--faults-enabled",
            "--breaker-cool-down-secs",
            "1",
            "--retry-base-ms",
            "2",
            "--retry-cap-ms",
            "10",
        ],
    )
    .await;
    let mut client = kmsv2::connect(&socket).await;
    let sealed = encrypt(&mut client, &seed(7)).await;
    // Decrypted once: now in the decrypt cache.
    assert_eq!(decrypt(&mut client, &sealed).await.unwrap(), seed(7));

    let faults = format!("{}/v1/faults", sidecar.admin_url);
    let (code, body) = http_send("PUT", &faults, r#"{"outage": "fail"}"#).await;
    assert_eq!(code, 200, "{body}");
    // The Status result is reused for up to a second; within a few it must turn unhealthy.
    let deadline = Instant::now() + Duration::from_secs(10);
    let unhealthy = loop {
        let s = status(&mut client).await;
        if s.healthz != "ok" {
            break s;
        }
        assert!(
            Instant::now() < deadline,
            "Status stayed ok during an outage"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(unhealthy.version, "v2");
    assert!(!unhealthy.key_id.is_empty(), "the last key id is kept");
    assert!(
        unhealthy.healthz.contains("Exception"),
        "{}",
        unhealthy.healthz
    );
    let metrics = sidecar.metrics().await;
    assert_eq!(
        sample(&metrics, "kms_sidecar_kmsv2_status_ok{key=\"alias/k8s\"}"),
        Some(0.0)
    );
    // The API server's cached data keys still decrypt; new wraps fail with a gRPC error.
    assert_eq!(decrypt(&mut client, &sealed).await.unwrap(), seed(7));
    let err = client
        .encrypt(proto::EncryptRequest {
            plaintext: seed(8),
            uid: "u".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unavailable, "{err:?}");

    let (code, body) = http_send("DELETE", &faults, "").await;
    assert_eq!(code, 200, "{body}");
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        if status(&mut client).await.healthz == "ok" {
            break;
        }
        assert!(Instant::now() < deadline, "Status did not recover");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let again = encrypt(&mut client, &seed(9)).await;
    assert_eq!(decrypt(&mut client, &again).await.unwrap(), seed(9));
    let metrics = sidecar.metrics().await;
    assert_eq!(
        sample(&metrics, "kms_sidecar_kmsv2_status_ok{key=\"alias/k8s\"}"),
        Some(1.0)
    );
}
