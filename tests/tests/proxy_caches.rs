//! Proxy mode's data-key caches and its policy reload, against a real upstream (another
//! kms-sidecar, whose request counters say what reached it): the data-key pool answers
//! GenerateDataKey without an upstream call and refills in the background; opt-in reuse hands a
//! data key out again per principal, key and context up to its use limit; every data key handed out
//! is the upstream's and decrypts there directly. SIGHUP re-reads the local policy, and a file that
//! does not validate is refused while the running policy stays.
#![forbid(unsafe_code)]
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;
use std::time::{Duration, Instant};

use aws_sdk_kms::primitives::Blob;
use kms_sidecar_e2e::proxy::{env_keys, start_proxy, upstream_key};
use kms_sidecar_e2e::{Sidecar, cli, data_key_in, error_code, printed_creds, sample, sdk_client};

const POLICY: &str = r#"{"rules":[
  {"principals":["default","other"],"actions":["GenerateDataKey","Decrypt","Encrypt","ListAliases"],"keys":["alias/app-*"]}
]}"#;

/// Requests of `operation` the upstream sidecar has served.
async fn served(upstream: &Sidecar, operation: &str) -> f64 {
    let label = format!("operation=\"{operation}\"");
    upstream
        .metrics()
        .await
        .lines()
        .filter(|l| l.starts_with("kms_sidecar_requests_total{") && l.contains(&label))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// Waits until the upstream has served `want` GenerateDataKey calls.
async fn wait_served(upstream: &Sidecar, want: f64) {
    let started = Instant::now();
    loop {
        let have = served(upstream, "GenerateDataKey").await;
        if have == want {
            return;
        }
        assert!(
            have < want && started.elapsed() < Duration::from_secs(10),
            "upstream GenerateDataKey calls: {have}, expected {want}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// GenerateDataKey through `kms`: (plaintext, ciphertext, key ARN).
async fn data_key(
    kms: &aws_sdk_kms::Client,
    key: &str,
    context: Option<(&str, &str)>,
) -> (Vec<u8>, Blob, String) {
    let out = data_key_in(kms, key, context.as_slice()).await;
    (
        out.plaintext().unwrap().as_ref().to_vec(),
        out.ciphertext_blob().unwrap().clone(),
        out.key_id().unwrap().to_string(),
    )
}

/// The upstream opens `blob` (made through the proxy) to `plaintext` under `arn`.
async fn opens_upstream(direct: &aws_sdk_kms::Client, blob: &Blob, plaintext: &[u8], arn: &str) {
    let out = direct
        .decrypt()
        .ciphertext_blob(blob.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(out.plaintext().unwrap().as_ref(), plaintext);
    assert_eq!(out.key_id(), Some(arn));
}

fn start_upstream(dir: &Path) -> Sidecar {
    Sidecar::start(&dir.join("upstream"))
}

/// The proxy's first alias poll runs at start (one ListAliases at the upstream); the local policy
/// matches `alias/app-*` against it, and the data-key caches need it to know the key's ARN.
async fn wait_for_poll(upstream: &Sidecar) {
    let started = Instant::now();
    while served(upstream, "ListAliases").await < 1.0 {
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "the proxy never polled the upstream's aliases"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // The poll stores what it read right after the answer.
    tokio::time::sleep(Duration::from_millis(200)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pool_and_reuse_per_upstream_key_spare_the_upstream() {
    let dir = tempfile::tempdir().unwrap();
    let upstream = start_upstream(dir.path());
    let direct = upstream.sdk();
    let (pool_arn, pool_alias) = upstream_key(&direct, "pool").await;
    let (reuse_arn, reuse_alias) = upstream_key(&direct, "reuse").await;
    let proxy = start_proxy(
        &dir.path().join("proxy"),
        &upstream.kms_url,
        env_keys(&upstream.creds),
        POLICY,
        &[
            "--data-key-pool-size",
            "4",
            "--data-key-pool-low-watermark",
            "2",
            "--data-key-reuse-key",
            "alias/app-reuse",
            "--data-key-reuse-max-uses",
            "3",
        ],
    );
    wait_for_poll(&upstream).await;
    let kms = proxy.sdk();

    // Pool: the first call goes upstream and starts a refill of 4; the next two are pooled keys,
    // each handed out once, with no upstream call.
    let first = data_key(&kms, &pool_alias, None).await;
    wait_served(&upstream, 5.0).await;
    let mut seen = vec![first.0.clone()];
    for _ in 0..2 {
        let (plaintext, blob, arn) = data_key(&kms, &pool_alias, None).await;
        assert_eq!(arn, pool_arn);
        assert!(
            !seen.contains(&plaintext),
            "a pooled key was handed out twice"
        );
        opens_upstream(&direct, &blob, &plaintext, &pool_arn).await;
        seen.push(plaintext);
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        served(&upstream, "GenerateDataKey").await,
        5.0,
        "pooled data keys reached the upstream"
    );
    let metrics = proxy.metrics().await;
    assert_eq!(
        sample(
            &metrics,
            "kms_sidecar_cache_requests_total{cache=\"proxy_data_key_pool\",result=\"hit\"}"
        ),
        Some(2.0),
        "{metrics}"
    );
    // A context cannot be pooled: on demand, at the upstream.
    let (plaintext, blob, _) = data_key(&kms, &pool_alias, Some(("tenant", "a"))).await;
    wait_served(&upstream, 6.0).await;
    let out = direct
        .decrypt()
        .ciphertext_blob(blob)
        .encryption_context("tenant", "a")
        .send()
        .await
        .unwrap();
    assert_eq!(out.plaintext().unwrap().as_ref(), plaintext.as_slice());

    // Reuse, opted in by alias: the same data key three times for the same principal and
    // context (one upstream call), then a fresh one.
    let ctx = Some(("tenant", "a"));
    let reused = data_key(&kms, &reuse_alias, ctx).await;
    assert_eq!(reused.2, reuse_arn);
    for _ in 0..2 {
        let again = data_key(&kms, &reuse_alias, ctx).await;
        assert_eq!(again.0, reused.0);
        assert_eq!(again.1, reused.1);
    }
    wait_served(&upstream, 7.0).await;
    let fresh = data_key(&kms, &reuse_alias, ctx).await;
    assert_ne!(fresh.0, reused.0, "used more than max_uses times");
    wait_served(&upstream, 8.0).await;
    // Another context, another principal: their own data keys.
    let other_ctx = data_key(&kms, &reuse_alias, Some(("tenant", "b"))).await;
    assert!(other_ctx.0 != fresh.0 && other_ctx.0 != reused.0);
    let (ok, text) = cli(&dir.path().join("proxy"), &["clients", "add", "other"]);
    assert!(ok, "{text}");
    let other = sdk_client(&proxy.kms_url, &printed_creds(&text));
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let theirs = data_key(&other, &reuse_alias, ctx).await;
    assert!(theirs.0 != fresh.0, "reuse crossed principals");
    wait_served(&upstream, 10.0).await;
    // Reused keys are the upstream's: they open there.
    let out = direct
        .decrypt()
        .ciphertext_blob(reused.1.clone())
        .encryption_context("tenant", "a")
        .send()
        .await
        .unwrap();
    assert_eq!(out.plaintext().unwrap().as_ref(), reused.0.as_slice());
    assert!(
        !proxy.output.all().contains(&upstream.creds.secret),
        "the upstream secret was logged"
    );
}

/// Encrypt through the proxy: the KMS error type or "ok".
async fn try_encrypt(kms: &aws_sdk_kms::Client, key: &str) -> String {
    match kms
        .encrypt()
        .key_id(key)
        .plaintext(Blob::new(b"x".as_slice()))
        .send()
        .await
    {
        Ok(_) => "ok".into(),
        Err(e) => error_code::<(), _, _>(Err(e)),
    }
}

async fn wait_encrypt(kms: &aws_sdk_kms::Client, key: &str, want: &str) {
    let started = Instant::now();
    loop {
        let have = try_encrypt(kms, key).await;
        if have == want {
            return;
        }
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "Encrypt answered {have}, expected {want} after the reload"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_reloads_the_proxy_policy_and_refuses_a_bad_file() {
    let dir = tempfile::tempdir().unwrap();
    let upstream = start_upstream(dir.path());
    let direct = upstream.sdk();
    let (_, alias) = upstream_key(&direct, "reload").await;
    let proxy_dir = dir.path().join("proxy");
    let proxy = start_proxy(
        &proxy_dir,
        &upstream.kms_url,
        env_keys(&upstream.creds),
        POLICY,
        &[],
    );
    wait_for_poll(&upstream).await;
    let kms = proxy.sdk();
    let blob = kms
        .encrypt()
        .key_id(&alias)
        .plaintext(Blob::new(b"kept".as_slice()))
        .send()
        .await
        .unwrap()
        .ciphertext_blob
        .unwrap();

    // Tighten: Decrypt only. Encrypt is refused once the reload is applied; Decrypt still works.
    let policy_file = proxy_dir.join("proxy-policy.json");
    std::fs::write(
        &policy_file,
        r#"{"rules":[{"principals":["default"],"actions":["Decrypt"],"keys":["alias/app-*"]}]}"#,
    )
    .unwrap();
    proxy.hup();
    wait_encrypt(&kms, &alias, "AccessDeniedException").await;
    let opened = kms.decrypt().ciphertext_blob(blob.clone()).send().await;
    assert_eq!(
        opened.unwrap().plaintext().unwrap().as_ref(),
        b"kept".as_slice()
    );

    // A file that does not validate (an unknown member) is refused: the running policy stays.
    std::fs::write(
        &policy_file,
        r#"{"rules":[{"principals":["default"],"actions":["*"],"keys":["*"],"effect":"Allow"}]}"#,
    )
    .unwrap();
    proxy.hup();
    let started = Instant::now();
    while !proxy.output.all().contains("reload failed") {
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "no reload error logged:\n{}",
            proxy.output.all()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(try_encrypt(&kms, &alias).await, "AccessDeniedException");
    assert!(kms.decrypt().ciphertext_blob(blob).send().await.is_ok());

    // A valid file again: applied.
    std::fs::write(&policy_file, POLICY).unwrap();
    proxy.hup();
    wait_encrypt(&kms, &alias, "ok").await;
}
