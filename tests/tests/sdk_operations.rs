//! Every supported operation through the official AWS SDK for Rust, pointed at a real sidecar process
//! by endpoint URL only: success paths, KMS's validation and key-state errors, aliases in all four
//! KeyId forms, encryption context, tampering, limits, rotation, paging and tags. Every case runs on
//! the embedded backend and on PKCS#11 (a SoftHSMv2 token).
#![forbid(unsafe_code)]
#![allow(clippy::unwrap_used, clippy::expect_used)]

use aws_sdk_kms::Client;
use aws_sdk_kms::primitives::Blob;
use aws_sdk_kms::types::{DataKeySpec, KeySpec, KeyState, RotationType, Tag};
use kms_sidecar_e2e::{
    BackendChoice, Sidecar, error_code as code, new_key, on_every_backend, try_encrypt,
};

/// A sidecar on `backend` in a fresh data directory, and its SDK client (the directory and the
/// process last as long as the first two).
fn start(backend: &BackendChoice) -> (tempfile::TempDir, Sidecar, Client) {
    let dir = tempfile::tempdir().unwrap();
    let sidecar = Sidecar::start_on(dir.path(), backend);
    let kms = sidecar.sdk();
    (dir, sidecar, kms)
}

async fn encrypt(kms: &Client, key: &str, plaintext: &[u8]) -> Vec<u8> {
    kms_sidecar_e2e::encrypt(kms, key, plaintext)
        .await
        .into_inner()
}

async fn decrypt(kms: &Client, blob: &[u8]) -> Vec<u8> {
    let out = kms
        .decrypt()
        .ciphertext_blob(Blob::new(blob))
        .send()
        .await
        .unwrap();
    out.plaintext().unwrap().as_ref().to_vec()
}

async fn create_describe_encrypt_decrypt_reencrypt(backend: BackendChoice) {
    let (_dir, _sidecar, kms) = start(&backend);

    let created = kms
        .create_key()
        .description("orders")
        .tags(
            Tag::builder()
                .tag_key("team")
                .tag_value("payments")
                .build()
                .unwrap(),
        )
        .send()
        .await
        .unwrap();
    let meta = created.key_metadata().unwrap();
    let key = meta.key_id().to_string();
    assert_eq!(
        meta.arn().unwrap(),
        format!("arn:aws:kms:us-east-1:111122223333:key/{key}")
    );
    assert_eq!(meta.key_state(), Some(&KeyState::Enabled));
    assert_eq!(meta.description(), Some("orders"));
    assert!(meta.enabled());
    assert_eq!(meta.aws_account_id(), Some("111122223333"));

    // Encrypt with a context; Decrypt needs the exact context and no KeyId.
    let out = kms
        .encrypt()
        .key_id(&key)
        .plaintext(Blob::new(b"card 4111".to_vec()))
        .encryption_context("tenant", "a")
        .encryption_context("purpose", "test")
        .send()
        .await
        .unwrap();
    assert_eq!(out.key_id(), meta.arn());
    let blob = out.ciphertext_blob().unwrap().clone();
    let plain = kms
        .decrypt()
        .ciphertext_blob(blob.clone())
        .encryption_context("purpose", "test")
        .encryption_context("tenant", "a")
        .send()
        .await
        .unwrap();
    assert_eq!(plain.plaintext().unwrap().as_ref(), b"card 4111");
    assert_eq!(plain.key_id(), meta.arn());

    // Context mismatch, missing context, extra context: all InvalidCiphertextException.
    for ctx in [
        vec![("tenant", "b"), ("purpose", "test")],
        vec![],
        vec![("tenant", "a")],
    ] {
        let mut call = kms.decrypt().ciphertext_blob(blob.clone());
        for (k, v) in ctx {
            call = call.encryption_context(k, v);
        }
        assert_eq!(code(call.send().await), "InvalidCiphertextException");
    }

    // Tampering anywhere: InvalidCiphertextException.
    let raw = blob.as_ref().to_vec();
    for i in [0, 3, 4, 10, raw.len() / 2, raw.len() - 1] {
        let mut bad = raw.clone();
        bad[i] ^= 0x40;
        let r = kms
            .decrypt()
            .ciphertext_blob(Blob::new(bad))
            .encryption_context("tenant", "a")
            .encryption_context("purpose", "test")
            .send()
            .await;
        assert_eq!(code(r), "InvalidCiphertextException", "byte {i}");
    }
    let r = kms
        .decrypt()
        .ciphertext_blob(Blob::new(raw[..raw.len() - 5].to_vec()))
        .send()
        .await;
    assert_eq!(code(r), "InvalidCiphertextException");
    let r = kms
        .decrypt()
        .ciphertext_blob(Blob::new(b"not a kms ciphertext".to_vec()))
        .send()
        .await;
    assert_eq!(code(r), "InvalidCiphertextException");

    // A KeyId on Decrypt must match the ciphertext's key.
    let other = new_key(&kms).await;
    let r = kms
        .decrypt()
        .ciphertext_blob(blob.clone())
        .key_id(&other)
        .encryption_context("tenant", "a")
        .encryption_context("purpose", "test")
        .send()
        .await;
    assert_eq!(code(r), "IncorrectKeyException");

    // Plaintext bounds: 4096 is fine, 4097 is not.
    let big = encrypt(&kms, &key, &[7u8; 4096]).await;
    assert_eq!(decrypt(&kms, &big).await, vec![7u8; 4096]);
    let r = kms
        .encrypt()
        .key_id(&key)
        .plaintext(Blob::new(vec![7u8; 4097]))
        .send()
        .await;
    assert_eq!(code(r), "ValidationException");

    // ReEncrypt moves a ciphertext to another key and context.
    let re = kms
        .re_encrypt()
        .ciphertext_blob(blob.clone())
        .source_encryption_context("tenant", "a")
        .source_encryption_context("purpose", "test")
        .destination_key_id(&other)
        .destination_encryption_context("tenant", "z")
        .send()
        .await
        .unwrap();
    assert_eq!(re.source_key_id(), meta.arn());
    assert!(re.key_id().unwrap().ends_with(&other));
    let back = kms
        .decrypt()
        .ciphertext_blob(re.ciphertext_blob().unwrap().clone())
        .encryption_context("tenant", "z")
        .send()
        .await
        .unwrap();
    assert_eq!(back.plaintext().unwrap().as_ref(), b"card 4111");
    let r = kms
        .re_encrypt()
        .ciphertext_blob(blob.clone())
        .destination_key_id(&other)
        .send()
        .await;
    assert_eq!(code(r), "InvalidCiphertextException");

    // Unsupported key kinds are refused; a policy that does not parse is MalformedPolicyDocument.
    assert_eq!(
        code(kms.create_key().key_spec(KeySpec::Rsa2048).send().await),
        "UnsupportedOperationException"
    );
    assert_eq!(
        code(kms.create_key().policy("{}").send().await),
        "MalformedPolicyDocumentException"
    );
}

async fn data_keys_and_random(backend: BackendChoice) {
    let (_dir, _sidecar, kms) = start(&backend);
    let key = new_key(&kms).await;

    let dk = kms
        .generate_data_key()
        .key_id(&key)
        .key_spec(DataKeySpec::Aes256)
        .encryption_context("app", "x")
        .send()
        .await
        .unwrap();
    let plain = dk.plaintext().unwrap().as_ref().to_vec();
    assert_eq!(plain.len(), 32);
    let opened = kms
        .decrypt()
        .ciphertext_blob(dk.ciphertext_blob().unwrap().clone())
        .encryption_context("app", "x")
        .send()
        .await
        .unwrap();
    assert_eq!(opened.plaintext().unwrap().as_ref(), &plain[..]);

    let dk128 = kms
        .generate_data_key()
        .key_id(&key)
        .key_spec(DataKeySpec::Aes128)
        .send()
        .await
        .unwrap();
    assert_eq!(dk128.plaintext().unwrap().as_ref().len(), 16);
    let dk64 = kms
        .generate_data_key()
        .key_id(&key)
        .number_of_bytes(64)
        .send()
        .await
        .unwrap();
    assert_eq!(dk64.plaintext().unwrap().as_ref().len(), 64);
    assert_ne!(dk64.plaintext().unwrap().as_ref()[..32], plain[..]);

    let r = kms.generate_data_key().key_id(&key).send().await;
    assert_eq!(code(r), "ValidationException");
    let r = kms
        .generate_data_key()
        .key_id(&key)
        .number_of_bytes(32)
        .key_spec(DataKeySpec::Aes256)
        .send()
        .await;
    assert_eq!(code(r), "ValidationException");
    let r = kms
        .generate_data_key()
        .key_id(&key)
        .number_of_bytes(1025)
        .send()
        .await;
    assert_eq!(code(r), "ValidationException");

    let wp = kms
        .generate_data_key_without_plaintext()
        .key_id(&key)
        .key_spec(DataKeySpec::Aes256)
        .send()
        .await
        .unwrap();
    assert_eq!(
        decrypt(&kms, wp.ciphertext_blob().unwrap().as_ref())
            .await
            .len(),
        32
    );

    let r1 = kms
        .generate_random()
        .number_of_bytes(1024)
        .send()
        .await
        .unwrap();
    let r2 = kms
        .generate_random()
        .number_of_bytes(1024)
        .send()
        .await
        .unwrap();
    assert_eq!(r1.plaintext().unwrap().as_ref().len(), 1024);
    assert_ne!(
        r1.plaintext().unwrap().as_ref(),
        r2.plaintext().unwrap().as_ref()
    );
    assert_eq!(
        code(kms.generate_random().number_of_bytes(1025).send().await),
        "ValidationException"
    );
    assert_eq!(
        code(kms.generate_random().number_of_bytes(0).send().await),
        "ValidationException"
    );

    // Unknown keys.
    let r = kms
        .generate_data_key()
        .key_id("00000000-0000-4000-8000-000000000000")
        .key_spec(DataKeySpec::Aes256)
        .send()
        .await;
    assert_eq!(code(r), "NotFoundException");
}

async fn key_states_follow_kms_rules(backend: BackendChoice) {
    let (_dir, _sidecar, kms) = start(&backend);
    let key = new_key(&kms).await;
    let blob = encrypt(&kms, &key, b"x").await;
    // Encrypt and Decrypt with the key, asked again in each state below.
    let encrypt_x = || try_encrypt(&kms, &key, b"x");
    let decrypt_blob = || {
        kms.decrypt()
            .ciphertext_blob(Blob::new(blob.clone()))
            .send()
    };

    kms.disable_key().key_id(&key).send().await.unwrap();
    let d = kms.describe_key().key_id(&key).send().await.unwrap();
    assert_eq!(
        d.key_metadata().unwrap().key_state(),
        Some(&KeyState::Disabled)
    );
    assert!(!d.key_metadata().unwrap().enabled());
    assert_eq!(code(encrypt_x().await), "DisabledException");
    assert_eq!(code(decrypt_blob().await), "DisabledException");
    assert_eq!(
        code(kms.enable_key_rotation().key_id(&key).send().await),
        "DisabledException"
    );
    kms.enable_key().key_id(&key).send().await.unwrap();
    assert_eq!(decrypt(&kms, &blob).await, b"x");

    assert_eq!(
        code(
            kms.schedule_key_deletion()
                .key_id(&key)
                .pending_window_in_days(6)
                .send()
                .await
        ),
        "ValidationException"
    );
    assert_eq!(
        code(
            kms.schedule_key_deletion()
                .key_id(&key)
                .pending_window_in_days(31)
                .send()
                .await
        ),
        "ValidationException"
    );
    let s = kms
        .schedule_key_deletion()
        .key_id(&key)
        .pending_window_in_days(7)
        .send()
        .await
        .unwrap();
    assert_eq!(s.key_state(), Some(&KeyState::PendingDeletion));
    assert_eq!(s.pending_window_in_days(), Some(7));
    let in_days =
        s.deletion_date().unwrap().secs() - time::OffsetDateTime::now_utc().unix_timestamp();
    assert!(
        (7 * 86_400 - 60..=7 * 86_400 + 60).contains(&in_days),
        "{in_days}"
    );
    let d = kms.describe_key().key_id(&key).send().await.unwrap();
    assert_eq!(
        d.key_metadata().unwrap().key_state(),
        Some(&KeyState::PendingDeletion)
    );
    assert!(d.key_metadata().unwrap().deletion_date().is_some());

    assert_eq!(code(encrypt_x().await), "KMSInvalidStateException");
    assert_eq!(code(decrypt_blob().await), "KMSInvalidStateException");
    assert_eq!(
        code(kms.enable_key().key_id(&key).send().await),
        "KMSInvalidStateException"
    );
    assert_eq!(
        code(kms.disable_key().key_id(&key).send().await),
        "KMSInvalidStateException"
    );
    assert_eq!(
        code(kms.schedule_key_deletion().key_id(&key).send().await),
        "KMSInvalidStateException"
    );
    assert_eq!(
        code(kms.rotate_key_on_demand().key_id(&key).send().await),
        "KMSInvalidStateException"
    );

    let c = kms.cancel_key_deletion().key_id(&key).send().await.unwrap();
    assert!(c.key_id().unwrap().ends_with(&key));
    let d = kms.describe_key().key_id(&key).send().await.unwrap();
    assert_eq!(
        d.key_metadata().unwrap().key_state(),
        Some(&KeyState::Disabled)
    );
    assert!(d.key_metadata().unwrap().deletion_date().is_none());
    assert_eq!(
        code(kms.cancel_key_deletion().key_id(&key).send().await),
        "KMSInvalidStateException"
    );
    kms.enable_key().key_id(&key).send().await.unwrap();
    assert_eq!(decrypt(&kms, &blob).await, b"x");

    // Default deletion window is 30 days.
    let s = kms
        .schedule_key_deletion()
        .key_id(&key)
        .send()
        .await
        .unwrap();
    assert_eq!(s.pending_window_in_days(), Some(30));
}

async fn aliases_in_all_keyid_forms(backend: BackendChoice) {
    let (_dir, _sidecar, kms) = start(&backend);
    let k1 = new_key(&kms).await;
    let k2 = new_key(&kms).await;
    let arn1 = format!("arn:aws:kms:us-east-1:111122223333:key/{k1}");

    kms.create_alias()
        .alias_name("alias/orders")
        .target_key_id(&k1)
        .send()
        .await
        .unwrap();
    assert_eq!(
        code(
            kms.create_alias()
                .alias_name("alias/orders")
                .target_key_id(&k2)
                .send()
                .await
        ),
        "AlreadyExistsException"
    );
    assert_eq!(
        code(
            kms.create_alias()
                .alias_name("orders")
                .target_key_id(&k1)
                .send()
                .await
        ),
        "InvalidAliasNameException"
    );
    assert_eq!(
        code(
            kms.create_alias()
                .alias_name("alias/aws/s3")
                .target_key_id(&k1)
                .send()
                .await
        ),
        "InvalidAliasNameException"
    );
    assert_eq!(
        code(
            kms.create_alias()
                .alias_name("alias/x")
                .target_key_id("alias/orders")
                .send()
                .await
        ),
        "ValidationException"
    );
    assert_eq!(
        code(
            kms.create_alias()
                .alias_name("alias/x")
                .target_key_id("00000000-0000-4000-8000-000000000000")
                .send()
                .await
        ),
        "NotFoundException"
    );

    // All four forms of KeyId reach the same key.
    for form in [
        k1.clone(),
        arn1.clone(),
        "alias/orders".to_string(),
        "arn:aws:kms:us-east-1:111122223333:alias/orders".to_string(),
    ] {
        let out = try_encrypt(&kms, &form, b"p").await.unwrap();
        assert_eq!(out.key_id(), Some(arn1.as_str()), "{form}");
        let d = kms.describe_key().key_id(&form).send().await.unwrap();
        assert_eq!(d.key_metadata().unwrap().key_id(), k1, "{form}");
    }
    for missing in [
        "alias/nope",
        "arn:aws:kms:us-east-1:111122223333:alias/nope",
        "arn:aws:kms:eu-west-1:111122223333:key/00000000-0000-4000-8000-000000000000",
        "arn:aws:kms:us-east-1:999999999999:alias/orders",
        "not a key id!",
        "00000000-0000-4000-8000-000000000000",
    ] {
        assert_eq!(
            code(kms.describe_key().key_id(missing).send().await),
            "NotFoundException",
            "{missing}"
        );
    }

    kms.update_alias()
        .alias_name("alias/orders")
        .target_key_id(&k2)
        .send()
        .await
        .unwrap();
    let out = try_encrypt(&kms, "alias/orders", b"p").await.unwrap();
    assert!(out.key_id().unwrap().ends_with(&k2));
    assert_eq!(
        code(
            kms.update_alias()
                .alias_name("alias/nope")
                .target_key_id(&k2)
                .send()
                .await
        ),
        "NotFoundException"
    );

    kms.create_alias()
        .alias_name("alias/second")
        .target_key_id(&k1)
        .send()
        .await
        .unwrap();
    let all = kms.list_aliases().send().await.unwrap();
    let names: Vec<&str> = all
        .aliases()
        .iter()
        .filter_map(|a| a.alias_name())
        .collect();
    assert_eq!(names, ["alias/orders", "alias/second"]);
    let for_k1 = kms.list_aliases().key_id(&k1).send().await.unwrap();
    assert_eq!(for_k1.aliases().len(), 1);
    assert_eq!(for_k1.aliases()[0].target_key_id(), Some(k1.as_str()));
    assert_eq!(
        for_k1.aliases()[0].alias_arn(),
        Some("arn:aws:kms:us-east-1:111122223333:alias/second")
    );

    kms.delete_alias()
        .alias_name("alias/second")
        .send()
        .await
        .unwrap();
    assert_eq!(
        code(kms.delete_alias().alias_name("alias/second").send().await),
        "NotFoundException"
    );

    // A key pending deletion cannot receive an alias.
    kms.schedule_key_deletion()
        .key_id(&k1)
        .send()
        .await
        .unwrap();
    assert_eq!(
        code(
            kms.create_alias()
                .alias_name("alias/late")
                .target_key_id(&k1)
                .send()
                .await
        ),
        "KMSInvalidStateException"
    );
}

async fn rotation_keeps_old_ciphertexts(backend: BackendChoice) {
    let (_dir, _sidecar, kms) = start(&backend);
    let key = new_key(&kms).await;

    let status = kms
        .get_key_rotation_status()
        .key_id(&key)
        .send()
        .await
        .unwrap();
    assert!(!status.key_rotation_enabled());
    assert_eq!(
        code(
            kms.enable_key_rotation()
                .key_id(&key)
                .rotation_period_in_days(89)
                .send()
                .await
        ),
        "ValidationException"
    );
    assert_eq!(
        code(
            kms.enable_key_rotation()
                .key_id(&key)
                .rotation_period_in_days(2561)
                .send()
                .await
        ),
        "ValidationException"
    );
    kms.enable_key_rotation()
        .key_id(&key)
        .rotation_period_in_days(90)
        .send()
        .await
        .unwrap();
    let status = kms
        .get_key_rotation_status()
        .key_id(&key)
        .send()
        .await
        .unwrap();
    assert!(status.key_rotation_enabled());
    assert_eq!(status.rotation_period_in_days(), Some(90));
    let next = status.next_rotation_date().unwrap().secs()
        - time::OffsetDateTime::now_utc().unix_timestamp();
    assert!(
        (90 * 86_400 - 60..=90 * 86_400 + 60).contains(&next),
        "{next}"
    );

    let v1 = encrypt(&kms, &key, b"version one").await;
    let r = kms
        .rotate_key_on_demand()
        .key_id(&key)
        .send()
        .await
        .unwrap();
    assert_eq!(r.key_id(), Some(key.as_str()));
    let v2 = encrypt(&kms, &key, b"version two").await;
    // Header: "KSC", format 1, id length, 36-byte key id, then the big-endian key version.
    assert_eq!(v1[41..45], 1u32.to_be_bytes(), "first version");
    assert_eq!(
        v2[41..45],
        2u32.to_be_bytes(),
        "the header names the new version"
    );
    assert_eq!(decrypt(&kms, &v1).await, b"version one");
    assert_eq!(decrypt(&kms, &v2).await, b"version two");

    let rotations = kms.list_key_rotations().key_id(&key).send().await.unwrap();
    assert_eq!(rotations.rotations().len(), 1);
    assert_eq!(
        rotations.rotations()[0].rotation_type(),
        Some(&RotationType::OnDemand)
    );
    assert!(!rotations.truncated());

    for _ in 0..9 {
        kms.rotate_key_on_demand()
            .key_id(&key)
            .send()
            .await
            .unwrap();
    }
    assert_eq!(
        code(kms.rotate_key_on_demand().key_id(&key).send().await),
        "LimitExceededException"
    );
    let page1 = kms
        .list_key_rotations()
        .key_id(&key)
        .limit(4)
        .send()
        .await
        .unwrap();
    assert_eq!(page1.rotations().len(), 4);
    assert!(page1.truncated());
    let page2 = kms
        .list_key_rotations()
        .key_id(&key)
        .limit(1000)
        .marker(page1.next_marker().unwrap())
        .send()
        .await
        .unwrap();
    assert_eq!(page2.rotations().len(), 6);
    assert_eq!(decrypt(&kms, &v1).await, b"version one");

    kms.disable_key_rotation()
        .key_id(&key)
        .send()
        .await
        .unwrap();
    let status = kms
        .get_key_rotation_status()
        .key_id(&key)
        .send()
        .await
        .unwrap();
    assert!(!status.key_rotation_enabled());
    assert!(status.next_rotation_date().is_none());
}

async fn listing_paging_and_tags(backend: BackendChoice) {
    let (_dir, _sidecar, kms) = start(&backend);
    let mut created = Vec::new();
    for _ in 0..5 {
        created.push(new_key(&kms).await);
    }
    created.sort();

    let mut seen = Vec::new();
    let mut marker: Option<String> = None;
    loop {
        let page = kms
            .list_keys()
            .limit(2)
            .set_marker(marker.clone())
            .send()
            .await
            .unwrap();
        assert!(page.keys().len() <= 2);
        seen.extend(page.keys().iter().map(|k| k.key_id().unwrap().to_string()));
        if !page.truncated() {
            assert!(page.next_marker().is_none());
            break;
        }
        marker = page.next_marker().map(str::to_string);
    }
    assert_eq!(seen, created);
    assert_eq!(
        code(kms.list_keys().marker("%%%").send().await),
        "InvalidMarkerException"
    );
    assert_eq!(
        code(kms.list_keys().limit(0).send().await),
        "ValidationException"
    );
    assert_eq!(
        code(kms.list_keys().limit(1001).send().await),
        "ValidationException"
    );

    let key = &created[0];
    let tag = |k: &str, v: &str| Tag::builder().tag_key(k).tag_value(v).build().unwrap();
    kms.tag_resource()
        .key_id(key)
        .tags(tag("env", "prod"))
        .tags(tag("team", "a"))
        .send()
        .await
        .unwrap();
    kms.tag_resource()
        .key_id(key)
        .tags(tag("team", "b"))
        .send()
        .await
        .unwrap();
    let tags = kms.list_resource_tags().key_id(key).send().await.unwrap();
    let pairs: Vec<(&str, &str)> = tags
        .tags()
        .iter()
        .map(|t| (t.tag_key(), t.tag_value()))
        .collect();
    assert_eq!(pairs, [("env", "prod"), ("team", "b")]);
    kms.untag_resource()
        .key_id(key)
        .tag_keys("env")
        .send()
        .await
        .unwrap();
    let tags = kms.list_resource_tags().key_id(key).send().await.unwrap();
    assert_eq!(tags.tags().len(), 1);
    assert_eq!(
        code(
            kms.tag_resource()
                .key_id(key)
                .tags(tag("aws:x", "1"))
                .send()
                .await
        ),
        "TagException"
    );
    let mut too_many = kms.tag_resource().key_id(key);
    for i in 0..51 {
        too_many = too_many.tags(tag(&format!("k{i}"), "v"));
    }
    assert_eq!(code(too_many.send().await), "LimitExceededException");
}

on_every_backend!(create_describe_encrypt_decrypt_reencrypt);
on_every_backend!(data_keys_and_random);
on_every_backend!(key_states_follow_kms_rules);
on_every_backend!(aliases_in_all_keyid_forms);
on_every_backend!(rotation_keeps_old_ciphertexts);
on_every_backend!(listing_paging_and_tags);
