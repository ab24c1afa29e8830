//! Proxy-mode fixtures shared by the proxy tests: a `moto_server` process (a second KMS
//! implementation, and an STS), and a proxy-mode sidecar in front of an upstream with a local
//! policy and the standard AWS credential chain confined to what the test gives it.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::{Creds, Sidecar, Start};

/// A free loopback port (for processes that must be restarted on the same one).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A moto_server process; its request log is the upstream's request count.
#[derive(Debug)]
pub struct Moto {
    child: Child,
    pub url: String,
    pub port: u16,
    /// Every line moto printed (one per request served).
    pub log: Arc<Mutex<Vec<String>>>,
}

impl Moto {
    pub fn start(port: u16, log: Arc<Mutex<Vec<String>>>) -> Option<Self> {
        let mut child = Command::new("moto_server")
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .ok()?;
        let stderr = child.stderr.take()?;
        let lines = log.clone();
        std::thread::spawn(move || {
            use std::io::BufRead as _;
            for line in std::io::BufReader::new(stderr)
                .lines()
                .map_while(Result::ok)
            {
                lines.lock().unwrap().push(line);
            }
        });
        let deadline = Instant::now() + Duration::from_secs(30);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            if Instant::now() > deadline {
                let _ = child.kill();
                return None;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        Some(Self {
            child,
            url: format!("http://127.0.0.1:{port}"),
            port,
            log,
        })
    }

    pub fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Moto {
    fn drop(&mut self) {
        self.stop();
    }
}

impl Moto {
    /// API requests moto has served so far (after a short wait: its log is written after the
    /// answer).
    pub async fn requests(&self) -> usize {
        tokio::time::sleep(Duration::from_millis(300)).await;
        self.log
            .lock()
            .unwrap()
            .iter()
            .filter(|l| l.contains("\"POST / HTTP"))
            .count()
    }

    /// Fixed credentials; moto accepts any.
    pub fn creds(&self) -> Creds {
        Creds {
            access_key_id: "AKIAMOTOTEST".into(),
            secret: "moto-secret".into(),
        }
    }
}

/// A moto_server on a free port, or `None` (with a printed SKIP) when it is not installed.
pub fn moto() -> Option<Moto> {
    let found = Command::new("moto_server")
        .arg("--help")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !found {
        eprintln!("SKIP: moto_server not installed (scripts/test.sh installs it with pip)");
        return None;
    }
    Moto::start(free_port(), Arc::new(Mutex::new(Vec::new())))
}

/// Environment for the proxy's credential chain: only what `env` gives it (no instance metadata,
/// no shared config files of the machine running the tests).
pub fn chain_env(dir: &Path, env: Vec<(String, String)>) -> Vec<(String, String)> {
    let mut env = env;
    env.extend(
        [
            ("AWS_EC2_METADATA_DISABLED", "true".to_string()),
            (
                "AWS_CONFIG_FILE",
                dir.join("no-config").display().to_string(),
            ),
            (
                "AWS_SHARED_CREDENTIALS_FILE",
                dir.join("no-credentials").display().to_string(),
            ),
        ]
        .map(|(k, v)| (k.to_string(), v)),
    );
    env
}

/// Starts a proxy in front of `upstream` with `policy` as its local policy file, `env` giving its
/// upstream identity and `extra` flags; the alias poll runs once, at start.
pub fn start_proxy(
    dir: &Path,
    upstream: &str,
    env: Vec<(String, String)>,
    policy: &str,
    extra: &[&str],
) -> Sidecar {
    let policy_file = dir.join("proxy-policy.json");
    std::fs::create_dir_all(dir).unwrap();
    std::fs::write(&policy_file, policy).unwrap();
    let mut args: Vec<String> = [
        "--mode",
        "proxy",
        "--upstream-endpoint",
        upstream,
        "--upstream-region",
        "us-east-1",
        "--proxy-policy-file",
        &policy_file.display().to_string(),
        // One poll, at start: later polls would reach the upstream during request counts.
        "--proxy-poll-interval-secs",
        "3600",
        "--backend-timeout-ms",
        "2000",
    ]
    .map(String::from)
    .to_vec();
    args.extend(extra.iter().map(|s| s.to_string()));
    Sidecar::start_with(
        dir,
        Start {
            args,
            env: chain_env(dir, env),
            creds: None,
        },
    )
    .unwrap_or_else(|o| panic!("proxy did not start:\n{o}"))
}

/// Credentials as environment variables (the first link of the standard chain).
pub fn env_keys(c: &Creds) -> Vec<(String, String)> {
    vec![
        ("AWS_ACCESS_KEY_ID".into(), c.access_key_id.clone()),
        ("AWS_SECRET_ACCESS_KEY".into(), c.secret.clone()),
    ]
}

/// Creates a key and `alias/app-<suffix>` at the upstream directly: (key ARN, alias).
pub async fn upstream_key(up: &aws_sdk_kms::Client, suffix: &str) -> (String, String) {
    let meta = up.create_key().send().await.unwrap().key_metadata.unwrap();
    let arn = meta.arn.unwrap();
    let alias = format!("alias/app-{suffix}");
    up.create_alias()
        .alias_name(&alias)
        .target_key_id(&meta.key_id)
        .send()
        .await
        .unwrap();
    (arn, alias)
}
