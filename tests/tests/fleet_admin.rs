//! A fleet's administration reaching every sidecar, with a real etcd: a key disabled or re-policied
//! on sidecar A is refused on sidecar B within a second even for a ciphertext B holds in its
//! decrypt cache, and B drops what it cached for that key; and `kms-sidecar clients rotate-secret`
//! against the etcd registry: the new secret works everywhere and the old one nowhere within a
//! second.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use aws_sdk_kms::primitives::Blob;
use kms_sidecar_e2e::fleet::{Fleet, within};
use kms_sidecar_e2e::{Creds, Sidecar, error_code, printed_creds, sample, sdk_client};

const PREFIX: &str = "/fleet-admin/";

/// Decrypt: "ok" with the right plaintext, else the error type.
async fn decrypt(kms: &aws_sdk_kms::Client, blob: &Blob, want: &[u8]) -> String {
    match kms.decrypt().ciphertext_blob(blob.clone()).send().await {
        Ok(o) if o.plaintext().map(|p| p.as_ref()) == Some(want) => "ok".into(),
        Ok(_) => "wrong plaintext".into(),
        Err(e) => error_code::<(), _, _>(Err(e)),
    }
}

/// Entries in `sidecar`'s decrypt cache.
async fn cached(sidecar: &Sidecar) -> Option<f64> {
    sample(
        &sidecar.metrics().await,
        "kms_sidecar_cache_entries{cache=\"decrypt\"}",
    )
}

fn policy(account: &str, app_may_decrypt: bool) -> String {
    let mut statements = vec![serde_json::json!({
        "Sid": "creator",
        "Effect": "Allow",
        "Principal": {"AWS": format!("arn:aws:iam::{account}:user/default")},
        "Action": "kms:*",
        "Resource": "*"
    })];
    if app_may_decrypt {
        statements.push(serde_json::json!({
            "Sid": "app",
            "Effect": "Allow",
            "Principal": {"AWS": format!("arn:aws:iam::{account}:user/app")},
            "Action": ["kms:Decrypt"],
            "Resource": "*"
        }));
    }
    serde_json::json!({"Version": "2012-10-17", "Statement": statements}).to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn changes_on_one_sidecar_reach_cached_calls_on_another() {
    let Some(fleet) = Fleet::start_or_skip(1, PREFIX) else {
        return;
    };
    let admin = fleet.add_client("default");
    let app = fleet.add_client("app");
    let a = fleet.member("a", &admin);
    let b = fleet.member("b", &admin);
    let on_a = a.sdk();
    let (admin_b, app_b) = (b.sdk(), sdk_client(&b.kms_url, &app));

    let meta = on_a
        .create_key()
        .send()
        .await
        .unwrap()
        .key_metadata
        .unwrap();
    let (key, arn) = (meta.key_id, meta.arn.unwrap());
    let account = arn.split(':').nth(4).unwrap().to_string();
    let put = |allow: bool| {
        on_a.put_key_policy()
            .key_id(&key)
            .policy(policy(&account, allow))
            .send()
    };
    put(true).await.unwrap();
    let blob = on_a
        .encrypt()
        .key_id(&key)
        .plaintext(Blob::new(b"fleet".as_slice()))
        .send()
        .await
        .unwrap()
        .ciphertext_blob
        .unwrap();

    // B learns the key and its policy, and caches app's Decrypt.
    within(Duration::from_secs(1), "app decrypts on B", || async {
        decrypt(&app_b, &blob, b"fleet").await == "ok"
    })
    .await;
    assert_eq!(decrypt(&app_b, &blob, b"fleet").await, "ok");
    let hits = |m: &str| {
        sample(
            m,
            "kms_sidecar_cache_requests_total{cache=\"decrypt\",result=\"hit\"}",
        )
        .unwrap_or(0.0)
    };
    assert!(
        hits(&b.metrics().await) >= 1.0,
        "the second Decrypt was not a hit"
    );
    assert_eq!(cached(&b).await, Some(1.0));

    // A takes Decrypt away from app: refused on B within a second, cache entry or not, and B's
    // cached plaintext for the key is gone.
    put(false).await.unwrap();
    let took = within(
        Duration::from_secs(1),
        "policy change enforced on B",
        || async { decrypt(&app_b, &blob, b"fleet").await == "AccessDeniedException" },
    )
    .await;
    println!("policy change enforced on B after {took:?}");
    within(
        Duration::from_secs(1),
        "B dropped the key's cached plaintexts",
        || async { cached(&b).await == Some(0.0) },
    )
    .await;

    // The creator still decrypts on B (cached again), until A disables the key.
    assert_eq!(decrypt(&admin_b, &blob, b"fleet").await, "ok");
    assert_eq!(decrypt(&admin_b, &blob, b"fleet").await, "ok");
    assert_eq!(cached(&b).await, Some(1.0));
    on_a.disable_key().key_id(&key).send().await.unwrap();
    let took = within(Duration::from_secs(1), "disable enforced on B", || async {
        decrypt(&admin_b, &blob, b"fleet").await == "DisabledException"
    })
    .await;
    println!("DisableKey enforced on B after {took:?}");
    within(
        Duration::from_secs(1),
        "B dropped the disabled key's plaintexts",
        || async { cached(&b).await == Some(0.0) },
    )
    .await;
    on_a.enable_key().key_id(&key).send().await.unwrap();
    within(Duration::from_secs(1), "enable seen on B", || async {
        decrypt(&admin_b, &blob, b"fleet").await == "ok"
    })
    .await;
}

/// GenerateRandom as `creds` on `sidecar`: "ok" or the error type.
async fn probe(sidecar: &Sidecar, creds: &Creds) -> String {
    match sdk_client(&sidecar.kms_url, creds)
        .generate_random()
        .number_of_bytes(8)
        .send()
        .await
    {
        Ok(_) => "ok".into(),
        Err(e) => error_code::<(), _, _>(Err(e)),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_rotate_secret_with_the_etcd_registry() {
    let Some(fleet) = Fleet::start_or_skip(1, PREFIX) else {
        return;
    };
    let admin = fleet.add_client("default");
    let old = fleet.add_client("app");
    let members = [fleet.member("a", &admin), fleet.member("b", &admin)];
    for s in &members {
        assert_eq!(probe(s, &old).await, "ok");
    }

    let (ok, text) = fleet.cli(&["clients", "rotate-secret", &old.access_key_id]);
    assert!(ok, "{text}");
    let new = printed_creds(&text);
    assert_eq!(new.access_key_id, old.access_key_id);
    assert_ne!(new.secret, old.secret);
    for s in &members {
        within(
            Duration::from_secs(1),
            "new secret accepted, old refused",
            || async { probe(s, &new).await == "ok" && probe(s, &old).await != "ok" },
        )
        .await;
    }
    let (ok, listed) = fleet.cli(&["clients", "list"]);
    assert!(ok, "{listed}");
    assert_eq!(
        listed.matches(&old.access_key_id).count(),
        1,
        "one credential, rotated in place: {listed}"
    );
    assert!(!listed.contains(&new.secret));

    // Unknown and revoked credentials are refused clearly, and nothing is written.
    let (ok, text) = fleet.cli(&["clients", "rotate-secret", "AKSCNOSUCHCLIENT0000"]);
    assert!(
        !ok && text.contains("no client with access key id"),
        "{text}"
    );
    let (ok, text) = fleet.cli(&["clients", "revoke", &new.access_key_id]);
    assert!(ok, "{text}");
    let (ok, text) = fleet.cli(&["clients", "rotate-secret", &new.access_key_id]);
    assert!(
        !ok && text.contains("no client with access key id"),
        "{text}"
    );
    for s in &members {
        within(Duration::from_secs(1), "revoked everywhere", || async {
            probe(s, &new).await != "ok"
        })
        .await;
        assert_eq!(probe(s, &admin).await, "ok");
    }
}
