//! Opt-in data-key reuse through the real SDK: limits hold exactly, and reuse never crosses a
//! principal, a context, a key that did not opt in, or a rotation.
#![forbid(unsafe_code)]
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use aws_sdk_kms::primitives::Blob;
use aws_sdk_kms::types::DataKeySpec;
use kms_sidecar_e2e::{
    Sidecar, Start, cli, data_key_in, http_get, new_key, printed_creds, sample, sdk_client,
};

async fn data_key(
    kms: &aws_sdk_kms::Client,
    key: &str,
    context: Option<(&str, &str)>,
) -> (Vec<u8>, Vec<u8>) {
    let out = data_key_in(kms, key, context.as_slice()).await;
    (
        out.plaintext().unwrap().as_ref().to_vec(),
        out.ciphertext_blob().unwrap().as_ref().to_vec(),
    )
}

#[tokio::test]
async fn reuse_limits_hold_and_stay_in_their_partition() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let sidecar = Sidecar::start_with(
        &data,
        Start {
            args: [
                "--data-key-reuse-key",
                "alias/orders",
                "--data-key-reuse-max-uses",
                "3",
                "--data-key-reuse-max-age-secs",
                "2",
                "--admin-principal",
                "default,bob",
            ]
            .map(String::from)
            .to_vec(),
            ..Start::default()
        },
    )
    .unwrap();
    let kms = sidecar.sdk();
    let key_id = new_key(&kms).await;
    kms.create_alias()
        .alias_name("alias/orders")
        .target_key_id(&key_id)
        .send()
        .await
        .unwrap();
    let plain_key = new_key(&kms).await;

    // max_uses = 3: the same data key three times (by alias or by id), then a fresh one
    let first = data_key(&kms, "alias/orders", None).await;
    assert_eq!(data_key(&kms, "alias/orders", None).await, first);
    assert_eq!(data_key(&kms, &key_id, None).await, first);
    let fourth = data_key(&kms, "alias/orders", None).await;
    assert_ne!(fourth.0, first.0);
    let dec = kms
        .decrypt()
        .ciphertext_blob(Blob::new(first.1.clone()))
        .send()
        .await
        .unwrap();
    assert_eq!(dec.plaintext().unwrap().as_ref(), first.0.as_slice());

    // another context is another data key
    let ctx = data_key(&kms, "alias/orders", Some(("tenant", "a"))).await;
    assert_ne!(ctx.0, fourth.0);
    assert_eq!(
        data_key(&kms, "alias/orders", Some(("tenant", "a"))).await,
        ctx
    );

    // another principal never gets this principal's data key
    let (ok, out) = cli(&data, &["clients", "add", "bob"]);
    assert!(ok, "{out}");
    let bob = sdk_client(&sidecar.kms_url, &printed_creds(&out));
    let bobs = loop {
        match bob
            .generate_data_key()
            .key_id("alias/orders")
            .key_spec(DataKeySpec::Aes256)
            .send()
            .await
        {
            Ok(o) => break o.plaintext().unwrap().as_ref().to_vec(),
            // the running sidecar loads new clients within a second
            Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
        }
    };
    assert_ne!(bobs, fourth.0);

    // a key that did not opt in: always fresh; WithoutPlaintext: always fresh
    let a = data_key(&kms, &plain_key, None).await;
    assert_ne!(data_key(&kms, &plain_key, None).await, a);
    let without_plaintext = || {
        kms.generate_data_key_without_plaintext()
            .key_id("alias/orders")
            .key_spec(DataKeySpec::Aes256)
            .send()
    };
    let w1 = without_plaintext().await.unwrap();
    let w2 = without_plaintext().await.unwrap();
    assert_ne!(w1.ciphertext_blob(), w2.ciphertext_blob());

    // rotation ends reuse at once
    let before = data_key(&kms, "alias/orders", Some(("r", "1"))).await;
    kms.rotate_key_on_demand()
        .key_id(&key_id)
        .send()
        .await
        .unwrap();
    assert_ne!(
        data_key(&kms, "alias/orders", Some(("r", "1"))).await,
        before
    );

    // max_age = 2 s
    let aged = data_key(&kms, "alias/orders", Some(("age", "1"))).await;
    assert_eq!(
        data_key(&kms, "alias/orders", Some(("age", "1"))).await,
        aged
    );
    tokio::time::sleep(Duration::from_millis(2100)).await;
    assert_ne!(
        data_key(&kms, "alias/orders", Some(("age", "1"))).await,
        aged
    );

    // hits: 2 (first) + 1 (tenant) + 1 (age); each fresh key in an opted-in slot was a miss
    let (_, metrics) = http_get(&format!("{}/metrics", sidecar.admin_url)).await;
    let hits = sample(
        &metrics,
        "kms_sidecar_cache_requests_total{cache=\"data_key_reuse\",result=\"hit\"}",
    );
    assert_eq!(hits, Some(4.0), "{metrics}");
}
