//! Proxy mode in front of two different KMS implementations, both real processes: another
//! kms-sidecar (embedded backend) and `moto_server` (a KMS whose ciphertext format the proxy never
//! parses). Against each, the same scenario: keys made at the upstream are used through the proxy by
//! ARN and alias; ciphertexts cross in both directions byte for byte; a repeated Decrypt is a cache
//! hit that does not reach the upstream (counted at the upstream); a locally denied principal is
//! refused on a cache hit; with the upstream stopped, cached Decrypts keep working and the rest fail
//! fast with a KMS error, and both recover. The proxy reaches the upstream with credentials from the
//! environment through the standard AWS chain, and (moto) from a web identity token file through STS.
#![forbid(unsafe_code)]
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use aws_sdk_kms::primitives::Blob;
use kms_sidecar_e2e::proxy::{self, Moto, env_keys, free_port, moto, upstream_key};
use kms_sidecar_e2e::{
    Creds, Sidecar, Start, cli, encrypt_in, error_code, printed_creds, sdk_client, sum_series,
};

const POLICY: &str = r#"{"rules":[
  {"principals":["default"],"actions":["*"],"keys":["alias/app-*"]},
  {"principals":["default"],"actions":["CreateKey","ListKeys","ListAliases","GenerateRandom"]},
  {"principals":["other"],"actions":["Encrypt"],"keys":["*"]}
]}"#;

/// The upstream under test.
enum Upstream {
    Sidecar(Box<Option<Sidecar>>, PathBuf, u16, Creds),
    Moto(Moto),
}

impl Upstream {
    fn url(&self) -> String {
        match self {
            Upstream::Sidecar(_, _, port, _) => format!("http://127.0.0.1:{port}"),
            Upstream::Moto(m) => m.url.clone(),
        }
    }

    fn creds(&self) -> Creds {
        match self {
            Upstream::Sidecar(_, _, _, c) => c.clone(),
            Upstream::Moto(m) => m.creds(),
        }
    }

    fn sdk(&self) -> aws_sdk_kms::Client {
        sdk_client(&self.url(), &self.creds())
    }

    /// KMS requests the upstream has served so far.
    async fn requests(&self) -> f64 {
        match self {
            Upstream::Sidecar(s, ..) if s.is_some() => {
                let s = s.as_ref().as_ref().unwrap();
                sum_series(&s.metrics().await, "kms_sidecar_requests_total{")
            }
            Upstream::Sidecar(..) => f64::NAN,
            Upstream::Moto(m) => m.requests().await as f64,
        }
    }

    fn stop(&mut self) {
        match self {
            Upstream::Sidecar(s, ..) => {
                if let Some(s) = (**s).take() {
                    let (ok, out) = s.stop();
                    assert!(ok, "{}", out.all());
                }
            }
            Upstream::Moto(m) => m.stop(),
        }
    }

    fn restart(&mut self) {
        match self {
            Upstream::Sidecar(s, dir, port, creds) => {
                **s = Some(start_sidecar(dir, *port, Some(creds.clone())));
            }
            Upstream::Moto(m) => {
                // moto keeps its keys in memory: a restarted moto has none, which the scenario
                // allows for (it checks recovery with a fresh key).
                let log = m.log.clone();
                *m = Moto::start(m.port, log).expect("moto restart");
            }
        }
    }
}

fn start_sidecar(dir: &Path, port: u16, creds: Option<Creds>) -> Sidecar {
    Sidecar::start_with(
        dir,
        Start {
            args: vec!["--listen".into(), format!("127.0.0.1:{port}")],
            env: vec![],
            creds,
        },
    )
    .unwrap_or_else(|o| panic!("upstream sidecar did not start:\n{o}"))
}

/// Starts a proxy in front of `upstream`, with `env` giving its upstream identity.
fn start_proxy(dir: &Path, upstream: &str, env: Vec<(String, String)>) -> Sidecar {
    // Without the data-key pool: its background refills would reach the upstream while the
    // scenario counts requests (the pool has its own test, proxy_caches.rs).
    proxy::start_proxy(dir, upstream, env, POLICY, &["--data-key-pool-size", "0"])
}

async fn encrypt(kms: &aws_sdk_kms::Client, key: &str, text: &[u8]) -> Blob {
    encrypt_in(kms, key, text, &[("tenant", "a")]).await
}

async fn decrypt(kms: &aws_sdk_kms::Client, blob: &Blob) -> Result<Vec<u8>, String> {
    kms.decrypt()
        .ciphertext_blob(blob.clone())
        .encryption_context("tenant", "a")
        .send()
        .await
        .map(|o| o.plaintext.unwrap().into_inner())
        .map_err(|e| error_code::<(), _, _>(Err(e)))
}

/// Waits until the proxy's first background poll (at start) has read the upstream's aliases, which
/// local policies need to match alias patterns against the ARN an upstream Decrypt names.
/// (The poll is one ListAliases on loopback; the test that follows fails with
/// AccessDeniedException on its first Decrypt if it had not finished.)
async fn wait_for_poll(proxy: &Sidecar) {
    let _ = proxy;
    tokio::time::sleep(Duration::from_millis(1500)).await;
}

async fn scenario(mut up: Upstream, proxy_env: Vec<(String, String)>) {
    let direct = up.sdk();
    let (arn, alias) = upstream_key(&direct, "main").await;
    let dir = tempfile::tempdir().unwrap();
    let proxy = start_proxy(dir.path(), &up.url(), proxy_env);
    wait_for_poll(&proxy).await;
    let kms = proxy.sdk();

    // By alias and by ARN; the answer names the upstream's key.
    let by_alias = kms
        .encrypt()
        .key_id(&alias)
        .plaintext(Blob::new(b"by alias".as_slice()))
        .encryption_context("tenant", "a")
        .send()
        .await
        .unwrap();
    assert_eq!(by_alias.key_id(), Some(arn.as_str()));
    let by_arn = encrypt(&kms, &arn, b"by arn").await;
    let described = kms.describe_key().key_id(&alias).send().await.unwrap();
    assert_eq!(described.key_metadata().unwrap().arn(), Some(arn.as_str()));

    // Proxy ciphertexts decrypt at the upstream directly, and the other way round.
    assert_eq!(decrypt(&direct, &by_arn).await.unwrap(), b"by arn");
    assert_eq!(
        decrypt(&direct, by_alias.ciphertext_blob().unwrap())
            .await
            .unwrap(),
        b"by alias"
    );
    let upstream_made = encrypt(&direct, &arn, b"made upstream").await;
    assert_eq!(
        decrypt(&kms, &upstream_made).await.unwrap(),
        b"made upstream"
    );
    // A data key made through the proxy opens at the upstream.
    let dk = kms
        .generate_data_key()
        .key_id(&alias)
        .key_spec(aws_sdk_kms::types::DataKeySpec::Aes256)
        .send()
        .await
        .unwrap();
    let opened = direct
        .decrypt()
        .ciphertext_blob(dk.ciphertext_blob().unwrap().clone())
        .send()
        .await
        .unwrap();
    assert_eq!(opened.plaintext(), dk.plaintext());

    // A repeated Decrypt is a cache hit that the upstream never sees.
    let before = up.requests().await;
    assert_eq!(
        decrypt(&kms, &upstream_made).await.unwrap(),
        b"made upstream"
    );
    assert_eq!(
        up.requests().await,
        before,
        "a cache hit reached the upstream"
    );

    // Another principal the local policy does not allow Decrypt: refused, on a cache hit, and the
    // upstream is not asked either.
    let (ok, text) = cli(dir.path(), &["clients", "add", "other"]);
    assert!(ok, "{text}");
    let other = sdk_client(&proxy.kms_url, &printed_creds(&text));
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(
        decrypt(&other, &upstream_made).await.unwrap_err(),
        "AccessDeniedException"
    );
    assert_eq!(up.requests().await, before);
    // The upstream's own refusals keep their type.
    assert_eq!(
        error_code(kms.describe_key().key_id("alias/app-missing").send().await),
        "NotFoundException"
    );
    // Calls the local policy does not allow never leave the sidecar.
    assert_eq!(
        error_code(kms.describe_key().key_id("alias/not-app").send().await),
        "AccessDeniedException"
    );

    // The upstream stops: the cached Decrypt keeps working, the rest fail fast with a KMS error.
    up.stop();
    assert_eq!(
        decrypt(&kms, &upstream_made).await.unwrap(),
        b"made upstream"
    );
    let started = Instant::now();
    let code = error_code(
        kms.encrypt()
            .key_id(&alias)
            .plaintext(Blob::new(b"x".as_slice()))
            .send()
            .await,
    );
    assert_eq!(code, "DependencyTimeoutException");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );

    // Back: the proxy recovers without a restart.
    up.restart();
    let direct = up.sdk();
    let (arn2, alias2) = match &up {
        Upstream::Sidecar(..) => (arn.clone(), alias.clone()),
        Upstream::Moto(_) => upstream_key(&direct, "after").await,
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    let blob = loop {
        let r = kms
            .encrypt()
            .key_id(&alias2)
            .plaintext(Blob::new(b"after".as_slice()))
            .send()
            .await;
        match r {
            Ok(o) => break o.ciphertext_blob.unwrap(),
            Err(_) if Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(500)).await
            }
            Err(e) => panic!("the proxy did not recover: {e:?}"),
        }
    };
    let back = direct.decrypt().ciphertext_blob(blob).send().await.unwrap();
    assert_eq!(back.key_id(), Some(arn2.as_str()));
    assert_eq!(
        decrypt(&kms, &upstream_made).await.unwrap(),
        b"made upstream"
    );

    // Observability: upstream latency and cache outcomes per key.
    let metrics = proxy.metrics().await;
    assert!(
        sum_series(
            &metrics,
            "kms_sidecar_proxy_decrypt_cache_total{key=\"other\",outcome=\"hit\"}"
        ) >= 1.0,
        "{metrics}"
    );
    assert!(metrics.contains("kms_sidecar_upstream_request_duration_seconds_count"));
    assert!(!metrics.contains(&proxy.creds.secret));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proxy_in_front_of_another_sidecar() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let upstream = start_sidecar(dir.path(), port, None);
    let creds = upstream.creds.clone();
    let env = env_keys(&creds);
    scenario(
        Upstream::Sidecar(
            Box::new(Some(upstream)),
            dir.path().to_path_buf(),
            port,
            creds,
        ),
        env,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proxy_in_front_of_moto_with_env_keys() {
    let Some(m) = moto() else { return };
    let up = Upstream::Moto(m);
    let env = env_keys(&up.creds());
    scenario(up, env).await;
}

/// The proxy's identity from a web identity token file (as Kubernetes service-account roles give
/// it), exchanged at moto's STS.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proxy_with_a_web_identity_token_file() {
    let Some(m) = moto() else { return };
    let dir = tempfile::tempdir().unwrap();
    let token = dir.path().join("token");
    std::fs::write(&token, "eyJhbGciOiJub25lIn0.eyJzdWIiOiJwcm94eSJ9.").unwrap();
    let up = Upstream::Moto(m);
    let (arn, alias) = upstream_key(&up.sdk(), "wi").await;
    let proxy_dir = dir.path().join("proxy");
    let proxy = start_proxy(
        &proxy_dir,
        &up.url(),
        vec![
            (
                "AWS_WEB_IDENTITY_TOKEN_FILE".into(),
                token.display().to_string(),
            ),
            (
                "AWS_ROLE_ARN".into(),
                "arn:aws:iam::123456789012:role/kms-sidecar".into(),
            ),
            ("AWS_ROLE_SESSION_NAME".into(), "kms-sidecar-test".into()),
            ("AWS_ENDPOINT_URL_STS".into(), up.url()),
        ],
    );
    wait_for_poll(&proxy).await;
    let kms = proxy.sdk();
    let blob = encrypt(&kms, &alias, b"web identity").await;
    assert_eq!(decrypt(&up.sdk(), &blob).await.unwrap(), b"web identity");
    let Upstream::Moto(m) = &up else {
        unreachable!()
    };
    let log = m.log.lock().unwrap().join("\n");
    assert!(
        log.contains("POST / HTTP"),
        "no request reached moto: {log}"
    );
    let _ = arn;
}
