//! A fleet's administration reaching every sidecar, with a real etcd: a key disabled or re-policied
//! on sidecar A is refused on sidecar B within a second even for a ciphertext B holds in its
//! decrypt cache, and B drops what it cached for that key; and `kms-sidecar clients rotate-secret`
//! against the etcd registry: the new secret works everywhere and the old one nowhere within a
//! second.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use aws_sdk_kms::primitives::Blob;
use kms_sidecar_e2e::etcd::{self, EtcdCluster};
use kms_sidecar_e2e::{
    Creds, Sidecar, Start, binary, error_code, printed_creds, sample, sdk_client,
};

const ROOT: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

fn fleet_args(cluster: &EtcdCluster) -> Vec<String> {
    [
        "--registry",
        "etcd",
        "--etcd-endpoints",
        &cluster.endpoints(),
        "--etcd-prefix",
        "/fleet-admin/",
    ]
    .map(String::from)
    .to_vec()
}

/// `kms-sidecar <fleet args> <args>`: (success, everything printed).
fn cli(cluster: &EtcdCluster, data_dir: &Path, args: &[&str]) -> (bool, String) {
    let out = Command::new(binary())
        .arg("--data-dir")
        .arg(data_dir)
        .args(fleet_args(cluster))
        .args(args)
        .env("KMS_SIDECAR_ROOT_KEY", ROOT)
        .output()
        .expect("run kms-sidecar");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

fn add_client(cluster: &EtcdCluster, dir: &Path, name: &str) -> Creds {
    let (ok, text) = cli(cluster, dir, &["clients", "add", name]);
    assert!(ok, "{text}");
    printed_creds(&text)
}

fn start(cluster: &EtcdCluster, dir: &Path, creds: &Creds) -> Sidecar {
    Sidecar::start_with(
        dir,
        Start {
            args: fleet_args(cluster),
            env: vec![("KMS_SIDECAR_ROOT_KEY".into(), ROOT.into())],
            creds: Some(creds.clone()),
        },
    )
    .unwrap()
}

/// Polls `f` until it is true, or panics after `limit`.
async fn within<F, Fut>(limit: Duration, what: &str, mut f: F) -> Duration
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let started = Instant::now();
    loop {
        if f().await {
            return started.elapsed();
        }
        assert!(started.elapsed() < limit, "{what}: not within {limit:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

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
    if !etcd::available() {
        println!("SKIPPED: etcd is not installed (scripts/test.sh installs etcd-server)");
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let cluster = EtcdCluster::start(1);
    let cli_dir = tmp.path().join("cli");
    let admin = add_client(&cluster, &cli_dir, "default");
    let app = add_client(&cluster, &cli_dir, "app");
    let a = start(&cluster, &tmp.path().join("a"), &admin);
    let b = start(&cluster, &tmp.path().join("b"), &admin);
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
    if !etcd::available() {
        println!("SKIPPED: etcd is not installed (scripts/test.sh installs etcd-server)");
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let cluster = EtcdCluster::start(1);
    let cli_dir = tmp.path().join("cli");
    let admin = add_client(&cluster, &cli_dir, "default");
    let old = add_client(&cluster, &cli_dir, "app");
    let fleet = [
        start(&cluster, &tmp.path().join("a"), &admin),
        start(&cluster, &tmp.path().join("b"), &admin),
    ];
    for s in &fleet {
        assert_eq!(probe(s, &old).await, "ok");
    }

    let (ok, text) = cli(
        &cluster,
        &cli_dir,
        &["clients", "rotate-secret", &old.access_key_id],
    );
    assert!(ok, "{text}");
    let new = printed_creds(&text);
    assert_eq!(new.access_key_id, old.access_key_id);
    assert_ne!(new.secret, old.secret);
    for s in &fleet {
        within(
            Duration::from_secs(1),
            "new secret accepted, old refused",
            || async { probe(s, &new).await == "ok" && probe(s, &old).await != "ok" },
        )
        .await;
    }
    let (ok, listed) = cli(&cluster, &cli_dir, &["clients", "list"]);
    assert!(ok, "{listed}");
    assert_eq!(
        listed.matches(&old.access_key_id).count(),
        1,
        "one credential, rotated in place: {listed}"
    );
    assert!(!listed.contains(&new.secret));

    // Unknown and revoked credentials are refused clearly, and nothing is written.
    let (ok, text) = cli(
        &cluster,
        &cli_dir,
        &["clients", "rotate-secret", "AKSCNOSUCHCLIENT0000"],
    );
    assert!(
        !ok && text.contains("no client with access key id"),
        "{text}"
    );
    let (ok, text) = cli(
        &cluster,
        &cli_dir,
        &["clients", "revoke", &new.access_key_id],
    );
    assert!(ok, "{text}");
    let (ok, text) = cli(
        &cluster,
        &cli_dir,
        &["clients", "rotate-secret", &new.access_key_id],
    );
    assert!(
        !ok && text.contains("no client with access key id"),
        "{text}"
    );
    for s in &fleet {
        within(Duration::from_secs(1), "revoked everywhere", || async {
            probe(s, &new).await != "ok"
        })
        .await;
        assert_eq!(probe(s, &admin).await, "ok");
    }
}
