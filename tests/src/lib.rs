//! Test fixture: starts the real `kms-sidecar` binary on `127.0.0.1:0` with a temp data directory,
//! reads the addresses and first-run credentials it prints, and hands out clients for it: the
//! official `aws-sdk-kms` client and a raw, SigV4-signing hyper client for malformed requests.
#![forbid(unsafe_code)]
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use aws_sdk_kms::config::{BehaviorVersion, Credentials, Region};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client as HyperClient;
use hyper_util::rt::TokioExecutor;

pub mod etcd;
pub mod fleet;
pub mod kmsv2;
pub mod proxy;
mod raw;
mod sdk;
mod softhsm;
mod start;

pub use raw::{Raw, RawResponse, Sign, amz_date};
pub use sdk::{data_key_in, encrypt, encrypt_in, key_with_alias, new_key_from, try_encrypt};
pub use softhsm::{BackendChoice, SOFTHSM_MODULE, SoftHsm};
pub use start::FAULT_ARGS;

/// Region the fixture signs for (the sidecar's default).
pub const REGION: &str = "us-east-1";

/// The sidecar binary the tests spawn (`src/bin/kms-sidecar-e2e-server.rs`, the same entry point as
/// `kms-sidecar`). Cargo builds it before this package's integration tests; other packages that use
/// this fixture get it built here on first use. `KMS_SIDECAR_E2E_BINARY` names another binary
/// (benchmarks run a release `kms-sidecar` this way).
pub fn binary() -> PathBuf {
    static BUILT: OnceLock<PathBuf> = OnceLock::new();
    BUILT
        .get_or_init(|| {
            if let Some(bin) = std::env::var_os("KMS_SIDECAR_E2E_BINARY") {
                return PathBuf::from(bin);
            }
            let exe = std::env::current_exe().expect("current exe");
            // target/<profile>/deps/<test> -> target/<profile>
            let profile_dir = exe
                .parent()
                .and_then(Path::parent)
                .expect("target dir")
                .to_path_buf();
            let bin = profile_dir.join("kms-sidecar-e2e-server");
            if !bin.exists() {
                let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
                let mut cmd = Command::new(cargo);
                cmd.args([
                    "build",
                    "-p",
                    "kms-sidecar-e2e",
                    "--bin",
                    "kms-sidecar-e2e-server",
                ]);
                if profile_dir.file_name().is_some_and(|n| n == "release") {
                    cmd.arg("--release");
                }
                let status = cmd.status().expect("run cargo build");
                assert!(status.success(), "building kms-sidecar-e2e-server failed");
            }
            bin
        })
        .clone()
}

/// Runs an async end-to-end case once per backend: `embedded` and `pkcs11` (SoftHSMv2).
#[macro_export]
macro_rules! on_every_backend {
    ($case:ident) => {
        mod $case {
            #[tokio::test]
            async fn embedded() {
                super::$case($crate::BackendChoice::Embedded).await;
            }
            #[tokio::test]
            async fn pkcs11() {
                if let Some(backend) = $crate::BackendChoice::softhsm(stringify!($case)) {
                    super::$case(backend).await;
                }
            }
        }
    };
}

/// A client credential.
#[derive(Clone, Debug)]
pub struct Creds {
    pub access_key_id: String,
    pub secret: String,
}

/// Everything the process wrote, line by line.
#[derive(Clone, Default, Debug)]
pub struct Output {
    pub stdout: Arc<Mutex<Vec<String>>>,
    pub stderr: Arc<Mutex<Vec<String>>>,
}

impl Output {
    pub fn all(&self) -> String {
        let mut s = self.stdout.lock().unwrap().join("\n");
        s.push('\n');
        s.push_str(&self.stderr.lock().unwrap().join("\n"));
        s
    }
    pub fn stderr_text(&self) -> String {
        self.stderr.lock().unwrap().join("\n")
    }
}

/// A running sidecar process; killed on drop.
#[derive(Debug)]
pub struct Sidecar {
    child: Child,
    pub kms_url: String,
    pub admin_url: String,
    pub data_dir: PathBuf,
    pub creds: Creds,
    pub output: Output,
    start: Start,
}

/// How to start a sidecar.
#[derive(Debug, Default, Clone)]
pub struct Start {
    pub args: Vec<String>,
    pub env: Vec<(String, String)>,
    /// Credentials from an earlier run of the same data directory.
    pub creds: Option<Creds>,
}

impl Sidecar {
    /// Starts a sidecar on a fresh or existing data directory with default options.
    pub fn start(data_dir: &Path) -> Self {
        Self::start_with(data_dir, Start::default()).expect("sidecar start")
    }

    /// Starts a sidecar; `Err` carries everything it printed if it exited instead of listening.
    pub fn start_with(data_dir: &Path, start: Start) -> Result<Self, String> {
        let mut cmd = Command::new(binary());
        cmd.arg("--data-dir")
            .arg(data_dir)
            .args(if start.args.iter().any(|a| a == "--listen") {
                // A test that needs a fixed port (to restart on it) names it.
                vec!["--admin-listen", "127.0.0.1:0"]
            } else {
                vec!["--listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0"]
            })
            .args(&start.args)
            .env_remove("KMS_SIDECAR_ROOT_KEY")
            .env_remove("RUST_LOG")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        for (k, v) in &start.env {
            cmd.env(k, v);
        }
        let start_copy = start.clone();
        let mut child = cmd.spawn().expect("spawn kms-sidecar");
        let output = Output::default();
        let (tx, rx) = mpsc::channel::<String>();
        let stdout = child.stdout.take().expect("stdout");
        let lines = output.stdout.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                lines.lock().unwrap().push(line.clone());
                let _ = tx.send(line);
            }
        });
        let stderr = child.stderr.take().expect("stderr");
        let lines = output.stderr.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                lines.lock().unwrap().push(line);
            }
        });
        let (mut akid, mut secret) = (None, None);
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        loop {
            let remaining = deadline.saturating_duration_since(std::time::Instant::now());
            let line = match rx.recv_timeout(remaining) {
                Ok(line) => line,
                Err(_) => {
                    let _ = child.kill();
                    let _ = child.wait();
                    std::thread::sleep(Duration::from_millis(100));
                    return Err(output.all());
                }
            };
            if let Some(v) = line
                .strip_prefix("  AWS_ACCESS_KEY_ID=")
                .filter(|v| !v.contains(' '))
            {
                akid = Some(v.to_string());
            } else if let Some(v) = line.strip_prefix("  AWS_SECRET_ACCESS_KEY=") {
                secret = Some(v.to_string());
            } else if let Some(rest) = line.strip_prefix("kms-sidecar: listening: ") {
                let mut kms_url = None;
                let mut admin_url = None;
                for part in rest.split(' ') {
                    if let Some(v) = part.strip_prefix("kms=") {
                        kms_url = Some(v.to_string());
                    } else if let Some(v) = part.strip_prefix("admin=") {
                        admin_url = Some(v.to_string());
                    }
                }
                let creds = match (akid, secret, start.creds) {
                    (Some(access_key_id), Some(secret), _) => Creds {
                        access_key_id,
                        secret,
                    },
                    (_, _, Some(c)) => c,
                    _ => panic!("no credentials printed and none given"),
                };
                return Ok(Self {
                    start: start_copy,
                    child,
                    kms_url: kms_url.expect("kms url"),
                    admin_url: admin_url.expect("admin url"),
                    data_dir: data_dir.to_path_buf(),
                    creds,
                    output,
                });
            }
        }
    }

    /// A scrape of this sidecar's `/metrics` (no admin token).
    pub async fn metrics(&self) -> String {
        http_get(&format!("{}/metrics", self.admin_url)).await.1
    }

    /// The process id (to send it signals).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The official AWS SDK client, with retries off so every error is seen as KMS sent it.
    pub fn sdk(&self) -> aws_sdk_kms::Client {
        sdk_client(&self.kms_url, &self.creds)
    }

    /// Stops the process with SIGTERM and waits for it; returns its exit success.
    pub fn stop(mut self) -> (bool, Output) {
        let pid = self.child.id().to_string();
        let _ = Command::new("kill").args(["-TERM", &pid]).status();
        let status = self.child.wait().expect("wait");
        std::thread::sleep(Duration::from_millis(100));
        (status.success(), self.output.clone())
    }

    /// A restart on the same data directory (and backend), keeping the credentials.
    pub fn restart(self) -> Self {
        let data_dir = self.data_dir.clone();
        let start = Start {
            creds: Some(self.creds.clone()),
            ..self.start.clone()
        };
        let (ok, out) = self.stop();
        assert!(ok, "sidecar exited with an error:\n{}", out.all());
        Self::start_with(&data_dir, start).expect("restart")
    }

    /// Starts a sidecar on `backend`.
    pub fn start_on(data_dir: &Path, backend: &BackendChoice) -> Self {
        Self::start_with(data_dir, backend.start()).expect("sidecar start")
    }

    /// A raw HTTP client for this sidecar.
    pub fn raw(&self) -> Raw {
        Raw::new(&self.kms_url, self.creds.clone())
    }
}

impl Drop for Sidecar {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// An `aws-sdk-kms` client for `endpoint` and `creds`.
pub fn sdk_client(endpoint: &str, creds: &Creds) -> aws_sdk_kms::Client {
    let conf = aws_sdk_kms::Config::builder()
        .behavior_version(BehaviorVersion::latest())
        .region(Region::new(REGION))
        .endpoint_url(endpoint)
        .credentials_provider(Credentials::new(
            &creds.access_key_id,
            &creds.secret,
            None,
            None,
            "kms-sidecar-test",
        ))
        .retry_config(aws_sdk_kms::config::retry::RetryConfig::disabled())
        .build();
    aws_sdk_kms::Client::from_conf(conf)
}

/// GETs `url` (the admin API): status and body.
pub async fn http_get(url: &str) -> (u16, String) {
    http_get_with(url, &[]).await
}

/// GETs `url` with extra request headers: status and body.
pub async fn http_get_with(url: &str, headers: &[(&str, &str)]) -> (u16, String) {
    let client =
        HyperClient::builder(TokioExecutor::new()).build_http::<http_body_util::Empty<Bytes>>();
    let mut req = http::Request::get(url);
    for (name, value) in headers {
        req = req.header(*name, *value);
    }
    let req = req.body(http_body_util::Empty::new()).expect("request");
    let resp = client.request(req).await.expect("GET");
    let status = resp.status().as_u16();
    let body = resp.into_body().collect().await.expect("body").to_bytes();
    (status, String::from_utf8_lossy(&body).into_owned())
}

/// Sends `method` with `body` to `url` (the admin API, e.g. `PUT /v1/faults`): status and body.
pub async fn http_send(method: &str, url: &str, body: &str) -> (u16, String) {
    let client = HyperClient::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
    let req = http::Request::builder()
        .method(method)
        .uri(url)
        .header("content-type", "application/json")
        .body(Full::new(Bytes::copy_from_slice(body.as_bytes())))
        .expect("request");
    let resp = tokio::time::timeout(Duration::from_secs(30), client.request(req))
        .await
        .expect("admin request timed out")
        .expect("admin request failed");
    let status = resp.status().as_u16();
    let body = resp.into_body().collect().await.expect("body").to_bytes();
    (status, String::from_utf8_lossy(&body).into_owned())
}

/// The sum of every series whose line starts with `prefix` (e.g. all outcomes of one operation)
/// in a Prometheus text scrape.
pub fn sum_series(text: &str, prefix: &str) -> f64 {
    text.lines()
        .filter(|l| l.starts_with(prefix))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// The value of one exact series (`name{labels}`) in a Prometheus text scrape.
pub fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines().find_map(|l| {
        l.strip_prefix(series)
            .and_then(|v| v.strip_prefix(' '))
            .and_then(|v| v.parse().ok())
    })
}

/// Creates a symmetric key with the SDK and returns its id; panics on failure.
pub async fn new_key(kms: &aws_sdk_kms::Client) -> String {
    new_key_from(kms.create_key()).await
}

/// The KMS error type of a failed AWS SDK call; panics if the call succeeded.
pub fn error_code<T, E, R>(result: Result<T, aws_sdk_kms::error::SdkError<E, R>>) -> String
where
    T: std::fmt::Debug,
    E: aws_sdk_kms::error::ProvideErrorMetadata + std::fmt::Debug,
    R: std::fmt::Debug,
{
    use aws_sdk_kms::error::ProvideErrorMetadata as _;
    match result {
        Ok(v) => panic!("expected an error, got {v:?}"),
        Err(e) => e
            .code()
            .map(str::to_string)
            .unwrap_or_else(|| format!("no code: {e:?}")),
    }
}

/// Runs the sidecar's command line on `data_dir`: success and everything it printed.
pub fn cli(data_dir: &Path, args: &[&str]) -> (bool, String) {
    run(Command::new(binary())
        .arg("--data-dir")
        .arg(data_dir)
        .args(args)
        .env_remove("KMS_SIDECAR_ROOT_KEY"))
}

/// Runs `cmd` to its end: success and everything it printed (stdout, then stderr).
pub fn run(cmd: &mut Command) -> (bool, String) {
    let out = cmd.output().expect("run the sidecar CLI");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

/// The credential `clients add` (or the first-run banner) printed.
pub fn printed_creds(text: &str) -> Creds {
    let get = |prefix: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(prefix).filter(|v| !v.contains(' ')))
            .unwrap_or_else(|| panic!("no {prefix} in {text}"))
            .to_string()
    };
    Creds {
        access_key_id: get("  AWS_ACCESS_KEY_ID="),
        secret: get("  AWS_SECRET_ACCESS_KEY="),
    }
}

impl Sidecar {
    /// A restart on the same data directory and backend with `extra` arguments added (the
    /// credentials are kept).
    pub fn restart_with(self, extra: &[String]) -> Result<Self, String> {
        let data_dir = self.data_dir.clone();
        let mut start = Start {
            creds: Some(self.creds.clone()),
            ..self.start.clone()
        };
        start.args.extend(extra.iter().cloned());
        let (ok, out) = self.stop();
        assert!(ok, "sidecar exited with an error:\n{}", out.all());
        Self::start_with(&data_dir, start)
    }
}
