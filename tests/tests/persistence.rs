//! State survives restarts of the real process: keys, versions, aliases, tags, rotation settings and
//! client credentials; the data directory is exclusive to one process; a wrong root key, a bad config
//! or a corrupt record stops the start with a message that names the problem.
#![forbid(unsafe_code)]
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use aws_sdk_kms::error::ProvideErrorMetadata;
use aws_sdk_kms::primitives::Blob;
use kms_sidecar_e2e::{
    BackendChoice, Sidecar, Start, cli, new_key, new_key_from, on_every_backend,
    printed_creds as issued_creds, sdk_client, try_encrypt,
};

on_every_backend!(everything_survives_a_restart);

async fn everything_survives_a_restart(backend: BackendChoice) {
    let dir = tempfile::tempdir().unwrap();
    let sidecar = Sidecar::start_on(dir.path(), &backend);
    let kms = sidecar.sdk();
    let key = new_key_from(kms.create_key().description("kept")).await;
    kms.create_alias()
        .alias_name("alias/kept")
        .target_key_id(&key)
        .send()
        .await
        .unwrap();
    kms.tag_resource()
        .key_id(&key)
        .tags(
            aws_sdk_kms::types::Tag::builder()
                .tag_key("t")
                .tag_value("v")
                .build()
                .unwrap(),
        )
        .send()
        .await
        .unwrap();
    kms.enable_key_rotation()
        .key_id(&key)
        .rotation_period_in_days(180)
        .send()
        .await
        .unwrap();
    let v1 = kms
        .encrypt()
        .key_id(&key)
        .plaintext(Blob::new(b"one".to_vec()))
        .encryption_context("c", "1")
        .send()
        .await
        .unwrap();
    kms.rotate_key_on_demand()
        .key_id(&key)
        .send()
        .await
        .unwrap();
    let v2 = try_encrypt(&kms, "alias/kept", b"two").await.unwrap();
    let doomed = new_key(&kms).await;
    kms.schedule_key_deletion()
        .key_id(&doomed)
        .pending_window_in_days(7)
        .send()
        .await
        .unwrap();

    let first_creds = sidecar.creds.clone();
    let sidecar = sidecar.restart();
    assert!(
        !sidecar.output.all().contains("first run"),
        "credentials are issued only once"
    );
    let kms = sidecar.sdk();
    let d = kms
        .describe_key()
        .key_id("alias/kept")
        .send()
        .await
        .unwrap();
    assert_eq!(d.key_metadata().unwrap().key_id(), key);
    assert_eq!(d.key_metadata().unwrap().description(), Some("kept"));
    let status = kms
        .get_key_rotation_status()
        .key_id(&key)
        .send()
        .await
        .unwrap();
    assert!(status.key_rotation_enabled());
    assert_eq!(status.rotation_period_in_days(), Some(180));
    assert_eq!(
        kms.list_key_rotations()
            .key_id(&key)
            .send()
            .await
            .unwrap()
            .rotations()
            .len(),
        1
    );
    assert_eq!(
        kms.list_resource_tags()
            .key_id(&key)
            .send()
            .await
            .unwrap()
            .tags()
            .len(),
        1
    );
    let p1 = kms
        .decrypt()
        .ciphertext_blob(v1.ciphertext_blob().unwrap().clone())
        .encryption_context("c", "1")
        .send()
        .await
        .unwrap();
    assert_eq!(p1.plaintext().unwrap().as_ref(), b"one");
    let p2 = kms
        .decrypt()
        .ciphertext_blob(v2.ciphertext_blob().unwrap().clone())
        .send()
        .await
        .unwrap();
    assert_eq!(p2.plaintext().unwrap().as_ref(), b"two");
    let gone = kms.describe_key().key_id(&doomed).send().await.unwrap();
    assert_eq!(
        gone.key_metadata().unwrap().key_state(),
        Some(&aws_sdk_kms::types::KeyState::PendingDeletion)
    );
    assert_eq!(sidecar.creds.access_key_id, first_creds.access_key_id);

    // Key material on disk is sealed: each embedded material file is nonce + sealed key + tag; the
    // PKCS#11 backend writes no material at all (the keys stay in the token).
    let material: Vec<_> = std::fs::read_dir(dir.path().join("material"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    match backend {
        BackendChoice::Embedded => {
            assert_eq!(
                material.len(),
                3,
                "two versions of one key and one other key"
            );
            for path in material {
                assert_eq!(std::fs::read(path).unwrap().len(), 12 + 32 + 16);
            }
        }
        BackendChoice::Pkcs11(_) => assert!(material.is_empty(), "{material:?}"),
    }
}

#[tokio::test]
async fn clients_added_and_revoked_while_running() {
    let dir = tempfile::tempdir().unwrap();
    let sidecar = Sidecar::start(dir.path());
    let (ok, text) = cli(dir.path(), &["clients", "add", "billing"]);
    assert!(ok, "{text}");
    let billing = issued_creds(&text);
    let (ok, listing) = cli(dir.path(), &["clients", "list"]);
    assert!(
        ok && listing.contains("billing") && listing.contains("default"),
        "{listing}"
    );
    assert!(
        !listing.contains(&billing.secret),
        "list must never show secrets"
    );

    let kms = sdk_client(&sidecar.kms_url, &billing);
    let mut accepted = false;
    for _ in 0..40 {
        if kms.list_keys().send().await.is_ok() {
            accepted = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(accepted, "new client not accepted within 4 s");

    let (ok, text) = cli(dir.path(), &["clients", "revoke", &billing.access_key_id]);
    assert!(ok, "{text}");
    let started = std::time::Instant::now();
    loop {
        match kms.list_keys().send().await {
            Err(e) if e.code() == Some("UnrecognizedClientException") => break,
            _ if started.elapsed() > Duration::from_secs(4) => {
                panic!("revoked client still accepted after 4 s")
            }
            _ => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
    // Revocation is fast: the server polls the client table every second.
    assert!(
        started.elapsed() < Duration::from_millis(2500),
        "{:?}",
        started.elapsed()
    );
    let (ok, text) = cli(dir.path(), &["clients", "revoke", &billing.access_key_id]);
    assert!(!ok && text.contains("no client"), "{text}");
    drop(sidecar);
}

#[test]
fn second_process_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let first = Sidecar::start(dir.path());
    let err = Sidecar::start_with(
        dir.path(),
        Start {
            creds: Some(first.creds.clone()),
            ..Start::default()
        },
    )
    .unwrap_err();
    assert!(
        err.contains("in use by another kms-sidecar process"),
        "{err}"
    );
    let (ok, _) = first.stop();
    assert!(ok, "graceful stop exits 0");
}

#[test]
fn bad_starts_name_the_problem() {
    let dir = tempfile::tempdir().unwrap();
    let first = Sidecar::start(dir.path());
    let creds = first.creds.clone();
    first.stop();

    let wrong_key = Start {
        env: vec![("KMS_SIDECAR_ROOT_KEY".into(), "ab".repeat(32))],
        creds: Some(creds.clone()),
        ..Start::default()
    };
    let err = Sidecar::start_with(dir.path(), wrong_key).unwrap_err();
    assert!(
        err.contains("root.check") && err.contains("different root key"),
        "{err}"
    );

    let config = dir.path().join("bad.toml");
    std::fs::write(&config, "region = \"us-east-1\"\nlisen = \"127.0.0.1:1\"\n").unwrap();
    let bad_config = Start {
        args: vec!["--config".into(), config.display().to_string()],
        creds: Some(creds.clone()),
        ..Start::default()
    };
    let err = Sidecar::start_with(dir.path(), bad_config).unwrap_err();
    assert!(
        err.contains("bad.toml") && err.contains("unknown field"),
        "{err}"
    );
    assert!(!err.contains("panicked"), "{err}");

    let bad_region = Start {
        args: vec!["--region".into(), "mars".into()],
        creds: Some(creds.clone()),
        ..Start::default()
    };
    let err = Sidecar::start_with(dir.path(), bad_region).unwrap_err();
    assert!(err.contains("region"), "{err}");

    // A torn key record is reported by name, never skipped.
    let keys_dir = dir.path().join("keys");
    std::fs::write(
        keys_dir.join("11111111-2222-4333-8444-555555555555.json"),
        b"{\"format\":1,\"id\":",
    )
    .unwrap();
    let err = Sidecar::start_with(
        dir.path(),
        Start {
            creds: Some(creds.clone()),
            ..Start::default()
        },
    )
    .unwrap_err();
    assert!(
        err.contains("11111111-2222-4333-8444-555555555555.json") && err.contains("corrupt"),
        "{err}"
    );
    std::fs::remove_file(keys_dir.join("11111111-2222-4333-8444-555555555555.json")).unwrap();

    // An unreadable data directory path.
    let file = dir.path().join("plain-file");
    std::fs::write(&file, b"x").unwrap();
    let err = Sidecar::start_with(
        &file,
        Start {
            creds: Some(creds),
            ..Start::default()
        },
    )
    .unwrap_err();
    assert!(err.contains("cannot create data directory"), "{err}");
}
