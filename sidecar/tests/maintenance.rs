//! Automatic rotation and scheduled deletion, driven with a chosen "now" so that 90 days pass in a
//! test: due keys rotate (and old ciphertexts still decrypt), keys past their deletion date are really
//! removed (record, aliases, material), and both survive a reopen of the data directory.
#![forbid(unsafe_code)]
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use kms_sidecar::backend::Backend;
use kms_sidecar::backend::embedded::Embedded;
use kms_sidecar::core::Kms;
use kms_sidecar::datadir::{DataDir, RootKeySource};
use kms_sidecar::frontend::aws_json::call_internal;
use kms_sidecar::keys::{self, ArnScope, KeyStore};
use kms_sidecar::kms::{ErrorKind, Operation};
use serde_json::{Value, json};

const DAY: f64 = 86_400.0;

fn open(path: &std::path::Path) -> Kms {
    let dir = Arc::new(DataDir::open(path, &RootKeySource::DataDir).unwrap());
    let backend: Arc<dyn Backend> = Arc::new(Embedded::open(dir.clone()).unwrap());
    let scope = ArnScope {
        region: "us-east-1".into(),
        account: "111122223333".into(),
    };
    Kms::new(
        Arc::new(KeyStore::open(dir, backend, scope).unwrap()),
        Vec::new(),
    )
}

async fn call(kms: &Kms, op: Operation, body: Value) -> Result<Value, ErrorKind> {
    call_internal(kms, op, &serde_json::to_vec(&body).unwrap())
        .await
        .map(|r| serde_json::from_slice(&r).unwrap())
        .map_err(|e| e.kind())
}

#[tokio::test]
async fn automatic_rotation_when_due_and_after_restart() {
    let tmp = tempfile::tempdir().unwrap();
    let kms = open(tmp.path());
    let key = call(&kms, Operation::CreateKey, json!({})).await.unwrap()["KeyMetadata"]["KeyId"]
        .as_str()
        .unwrap()
        .to_string();
    let idle = call(&kms, Operation::CreateKey, json!({})).await.unwrap()["KeyMetadata"]["KeyId"]
        .as_str()
        .unwrap()
        .to_string();
    call(
        &kms,
        Operation::EnableKeyRotation,
        json!({"KeyId": key, "RotationPeriodInDays": 90}),
    )
    .await
    .unwrap();
    let old = call(
        &kms,
        Operation::Encrypt,
        json!({"KeyId": key, "Plaintext": B64.encode("v1")}),
    )
    .await
    .unwrap();

    let now = keys::now();
    // Not due yet: nothing happens.
    let report = kms.keys().maintain(now + 89.0 * DAY).await;
    assert!(report.rotated.is_empty(), "{report:?}");
    // Due: exactly the key with rotation enabled rotates.
    let report = kms.keys().maintain(now + 91.0 * DAY).await;
    assert_eq!(report.rotated, vec![key.clone()]);
    let rotations = call(&kms, Operation::ListKeyRotations, json!({"KeyId": key}))
        .await
        .unwrap();
    assert_eq!(rotations["Rotations"][0]["RotationType"], "AUTOMATIC");
    assert_eq!(kms.keys().resolve(&idle).unwrap().versions.len(), 1);
    // The next rotation is scheduled a period later, from the rotation time.
    let meta = kms.keys().resolve(&key).unwrap();
    assert_eq!(meta.current_version(), 2);
    assert!(meta.next_rotation.unwrap() > now + 89.0 * DAY);
    let report = kms.keys().maintain(now + 92.0 * DAY).await;
    assert!(
        report.rotated.is_empty(),
        "rotates once per period: {report:?}"
    );

    // Disabled keys do not rotate (as in KMS) until enabled again.
    drop(kms);
    let kms = open(tmp.path());
    call(&kms, Operation::DisableKey, json!({"KeyId": key}))
        .await
        .unwrap();
    assert!(
        kms.keys()
            .maintain(now + 1000.0 * DAY)
            .await
            .rotated
            .is_empty()
    );
    call(&kms, Operation::EnableKey, json!({"KeyId": key}))
        .await
        .unwrap();
    assert_eq!(
        kms.keys().maintain(now + 1000.0 * DAY).await.rotated,
        vec![key.clone()]
    );

    // Every older ciphertext still decrypts after rotations and a reopen.
    drop(kms);
    let kms = open(tmp.path());
    let plain = call(
        &kms,
        Operation::Decrypt,
        json!({"CiphertextBlob": old["CiphertextBlob"]}),
    )
    .await
    .unwrap();
    assert_eq!(plain["Plaintext"], B64.encode("v1"));
    assert_eq!(kms.keys().resolve(&key).unwrap().current_version(), 3);
}

#[tokio::test]
async fn deletion_after_the_waiting_period_removes_everything() {
    let tmp = tempfile::tempdir().unwrap();
    let kms = open(tmp.path());
    let key = call(&kms, Operation::CreateKey, json!({})).await.unwrap()["KeyMetadata"]["KeyId"]
        .as_str()
        .unwrap()
        .to_string();
    let keep = call(&kms, Operation::CreateKey, json!({})).await.unwrap()["KeyMetadata"]["KeyId"]
        .as_str()
        .unwrap()
        .to_string();
    call(&kms, Operation::RotateKeyOnDemand, json!({"KeyId": key}))
        .await
        .unwrap();
    call(
        &kms,
        Operation::CreateAlias,
        json!({"AliasName": "alias/doomed", "TargetKeyId": key}),
    )
    .await
    .unwrap();
    call(
        &kms,
        Operation::CreateAlias,
        json!({"AliasName": "alias/kept", "TargetKeyId": keep}),
    )
    .await
    .unwrap();
    let blob = call(
        &kms,
        Operation::Encrypt,
        json!({"KeyId": key, "Plaintext": B64.encode("x")}),
    )
    .await
    .unwrap();
    call(
        &kms,
        Operation::ScheduleKeyDeletion,
        json!({"KeyId": key, "PendingWindowInDays": 7}),
    )
    .await
    .unwrap();

    let now = keys::now();
    assert!(
        kms.keys()
            .maintain(now + 6.0 * DAY)
            .await
            .deleted
            .is_empty()
    );
    drop(kms);
    // The schedule survives a restart.
    let kms = open(tmp.path());
    let report = kms.keys().maintain(now + 7.0 * DAY + 60.0).await;
    assert_eq!(report.deleted, vec![key.clone()]);

    assert_eq!(
        call(&kms, Operation::DescribeKey, json!({"KeyId": key}))
            .await
            .unwrap_err(),
        ErrorKind::NotFound
    );
    assert_eq!(
        call(
            &kms,
            Operation::DescribeKey,
            json!({"KeyId": "alias/doomed"})
        )
        .await
        .unwrap_err(),
        ErrorKind::NotFound
    );
    assert_eq!(
        call(
            &kms,
            Operation::Decrypt,
            json!({"CiphertextBlob": blob["CiphertextBlob"]})
        )
        .await
        .unwrap_err(),
        ErrorKind::InvalidCiphertext
    );
    assert!(!tmp.path().join("keys").join(format!("{key}.json")).exists());
    let material: Vec<String> = std::fs::read_dir(tmp.path().join("material"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert!(
        material.iter().all(|m| !m.starts_with(&key)),
        "{material:?}"
    );
    assert!(
        material.iter().any(|m| m.starts_with(&keep)),
        "{material:?}"
    );
    let aliases = call(&kms, Operation::ListAliases, json!({})).await.unwrap();
    assert_eq!(aliases["Aliases"].as_array().unwrap().len(), 1);

    // Still gone after a reopen.
    drop(kms);
    let kms = open(tmp.path());
    assert_eq!(
        call(&kms, Operation::DescribeKey, json!({"KeyId": key}))
            .await
            .unwrap_err(),
        ErrorKind::NotFound
    );
    call(&kms, Operation::DescribeKey, json!({"KeyId": keep}))
        .await
        .unwrap();
}
