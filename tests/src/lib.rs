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
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;

pub mod etcd;
pub mod fleet;
pub mod proxy;
mod sdk;
mod start;

pub use sdk::{data_key_in, encrypt, encrypt_in, key_with_alias, new_key_from, try_encrypt};
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

/// A SoftHSMv2 token in a temp directory, for sidecars running the PKCS#11 backend. The sidecar is a
/// child process, so `SOFTHSM2_CONF` is set on it alone and every test gets its own token.
#[derive(Debug)]
pub struct SoftHsm {
    _dir: tempfile::TempDir,
    pub conf: PathBuf,
    pub label: String,
    pub pin: String,
}

/// The module the tests load.
pub const SOFTHSM_MODULE: &str = "/usr/lib/softhsm/libsofthsm2.so";

impl SoftHsm {
    /// A fresh token labelled `label`, or `None` (with a printed SKIPPED reason) where SoftHSMv2 is
    /// not installed. The test script installs it, so in CI this always returns a token.
    pub fn new(test: &str) -> Option<Self> {
        Self::with_pin(test, "1234")
    }

    /// Like [`SoftHsm::new`], with the user PIN `pin`.
    pub fn with_pin(test: &str, pin: &str) -> Option<Self> {
        if Command::new("softhsm2-util")
            .arg("--version")
            .output()
            .is_err()
            || !Path::new(SOFTHSM_MODULE).exists()
        {
            eprintln!(
                "SKIPPED {test} on pkcs11: SoftHSMv2 is not installed (apt-get install softhsm2)"
            );
            return None;
        }
        let dir = tempfile::tempdir().expect("tempdir");
        let tokens = dir.path().join("tokens");
        std::fs::create_dir_all(&tokens).expect("token dir");
        let conf = dir.path().join("softhsm2.conf");
        std::fs::write(
            &conf,
            format!(
                "directories.tokendir = {}\nobjectstore.backend = file\nlog.level = ERROR\n",
                tokens.display()
            ),
        )
        .expect("softhsm conf");
        let label = format!("e2e-{}", &test[..test.len().min(27)]);
        let pin = pin.to_string();
        let out = Command::new("softhsm2-util")
            .args([
                "--init-token",
                "--free",
                "--label",
                &label,
                "--so-pin",
                "5678",
                "--pin",
                &pin,
            ])
            .env("SOFTHSM2_CONF", &conf)
            .output()
            .expect("softhsm2-util");
        assert!(
            out.status.success(),
            "init token: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Some(Self {
            _dir: dir,
            conf,
            label,
            pin,
        })
    }

    /// Start options for a sidecar on this token.
    pub fn start(&self) -> Start {
        Start {
            args: vec![
                "--backend".into(),
                "pkcs11".into(),
                "--pkcs11-token-label".into(),
                self.label.clone(),
                "--pkcs11-module".into(),
                SOFTHSM_MODULE.into(),
            ],
            env: vec![
                ("SOFTHSM2_CONF".into(), self.conf.display().to_string()),
                ("KMS_SIDECAR_PKCS11_PIN".into(), self.pin.clone()),
            ],
            creds: None,
        }
    }
}

/// Which backend an end-to-end test runs against.
#[derive(Debug, Clone)]
pub enum BackendChoice {
    Embedded,
    Pkcs11(Arc<SoftHsm>),
}

impl BackendChoice {
    /// The SoftHSM choice, or `None` (printed as SKIPPED) where SoftHSM is missing.
    pub fn softhsm(test: &str) -> Option<Self> {
        SoftHsm::new(test).map(|t| Self::Pkcs11(Arc::new(t)))
    }

    /// Start options for this backend.
    pub fn start(&self) -> Start {
        match self {
            Self::Embedded => Start::default(),
            Self::Pkcs11(token) => token.start(),
        }
    }

    pub fn name(&self) -> &'static str {
        match self {
            Self::Embedded => "embedded",
            Self::Pkcs11(_) => "pkcs11",
        }
    }
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

/// A raw response.
#[derive(Debug)]
pub struct RawResponse {
    pub status: u16,
    pub body: serde_json::Value,
    pub text: String,
}

impl RawResponse {
    /// The KMS error type, if any.
    pub fn error_type(&self) -> Option<&str> {
        self.body.get("__type").and_then(|v| v.as_str())
    }
}

/// A hyper client that can send any request, signed or not.
#[derive(Debug, Clone)]
pub struct Raw {
    url: String,
    host: String,
    pub creds: Creds,
    client: HyperClient<HttpConnector, Full<Bytes>>,
}

/// The current time as `X-Amz-Date`, shifted by `offset_secs`.
pub fn amz_date(offset_secs: i64) -> String {
    let t = time::OffsetDateTime::now_utc() + time::Duration::seconds(offset_secs);
    let f = time::macros::format_description!("[year][month][day]T[hour][minute][second]Z");
    t.format(f).expect("format date")
}

impl Raw {
    pub fn new(url: &str, creds: Creds) -> Self {
        let host = url
            .trim_start_matches("http://")
            .trim_end_matches('/')
            .to_string();
        Self {
            url: url.to_string(),
            host,
            creds,
            client: HyperClient::builder(TokioExecutor::new()).build_http(),
        }
    }

    /// Sends `body` to `TrentService.<target>`, signed with this client's credentials.
    pub async fn call(&self, target: &str, body: &[u8]) -> RawResponse {
        self.send(
            Some(&format!("TrentService.{target}")),
            body,
            Sign::Valid { offset_secs: 0 },
            &[],
        )
        .await
    }

    /// Like [`Raw::call`], also returning the response headers.
    pub async fn call_with_headers(
        &self,
        target: &str,
        body: &[u8],
    ) -> (http::HeaderMap, RawResponse) {
        let mut headers = http::HeaderMap::new();
        let r = self
            .send_inner(
                Some(&format!("TrentService.{target}")),
                body,
                Sign::Valid { offset_secs: 0 },
                &[],
                &mut headers,
            )
            .await;
        (headers, r)
    }

    /// Full control: target header (or none), signature mode and extra headers.
    pub async fn send(
        &self,
        target: Option<&str>,
        body: &[u8],
        sign: Sign<'_>,
        extra: &[(&str, &str)],
    ) -> RawResponse {
        let mut ignored = http::HeaderMap::new();
        self.send_inner(target, body, sign, extra, &mut ignored)
            .await
    }

    async fn send_inner(
        &self,
        target: Option<&str>,
        body: &[u8],
        sign: Sign<'_>,
        extra: &[(&str, &str)],
        response_headers: &mut http::HeaderMap,
    ) -> RawResponse {
        let mut headers = http::HeaderMap::new();
        headers.insert("host", self.host.parse().unwrap());
        headers.insert(
            "content-type",
            "application/x-amz-json-1.1".parse().unwrap(),
        );
        if let Some(t) = target {
            headers.insert("x-amz-target", t.parse().unwrap());
        }
        for (k, v) in extra {
            headers.insert(
                http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                v.parse().unwrap(),
            );
        }
        match sign {
            Sign::None => {}
            Sign::Valid { offset_secs } | Sign::Corrupt { offset_secs } => {
                headers.insert("x-amz-date", amz_date(offset_secs).parse().unwrap());
                let req = kms_sidecar::auth::sigv4::SignedRequest {
                    method: "POST",
                    path: "/",
                    query: "",
                    headers: &headers,
                    body,
                };
                let mut names = vec!["host", "x-amz-date", "content-type"];
                if target.is_some() {
                    names.push("x-amz-target");
                }
                let mut auth = kms_sidecar::auth::sigv4::sign(
                    &self.creds.access_key_id,
                    &self.creds.secret,
                    REGION,
                    &req,
                    &names,
                )
                .expect("sign");
                if matches!(sign, Sign::Corrupt { .. }) {
                    let last = auth.pop().unwrap();
                    auth.push(if last == '0' { '1' } else { '0' });
                }
                headers.insert("authorization", auth.parse().unwrap());
            }
            Sign::Header(value) => {
                headers.insert("x-amz-date", amz_date(0).parse().unwrap());
                headers.insert("authorization", value.parse().unwrap());
            }
        }
        let mut builder = http::Request::builder()
            .method("POST")
            .uri(format!("{}/", self.url));
        for (k, v) in &headers {
            if k != "host" {
                builder = builder.header(k, v);
            }
        }
        let req = builder
            .body(Full::new(Bytes::copy_from_slice(body)))
            .unwrap();
        let resp = tokio::time::timeout(Duration::from_secs(30), self.client.request(req))
            .await
            .expect("request timed out")
            .expect("request failed");
        let status = resp.status().as_u16();
        *response_headers = resp.headers().clone();
        let bytes = resp.into_body().collect().await.expect("body").to_bytes();
        let text = String::from_utf8_lossy(&bytes).into_owned();
        let body = serde_json::from_slice(&bytes).unwrap_or(serde_json::Value::Null);
        RawResponse { status, body, text }
    }
}

/// How to sign a raw request.
#[derive(Debug, Clone, Copy)]
pub enum Sign<'a> {
    None,
    Valid { offset_secs: i64 },
    Corrupt { offset_secs: i64 },
    Header(&'a str),
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

/// A gRPC client for the Kubernetes KMS v2 plugin on a sidecar's Unix socket.
pub mod kmsv2 {
    #[allow(clippy::all, missing_debug_implementations)]
    pub mod proto {
        tonic::include_proto!("v2");
    }

    use std::path::{Path, PathBuf};
    use std::time::Duration;

    pub use proto::key_management_service_client::KeyManagementServiceClient;
    use tonic::transport::{Channel, Endpoint, Uri};

    /// The client type.
    pub type Client = KeyManagementServiceClient<Channel>;

    /// Connects to the plugin's socket (the URI is a placeholder: the connector dials the socket).
    pub async fn connect(socket: &Path) -> Client {
        let path: PathBuf = socket.to_path_buf();
        let channel = Endpoint::from_static("http://kmsv2.invalid")
            .connect_timeout(Duration::from_secs(5))
            .timeout(Duration::from_secs(30))
            .connect_with_connector(tower::service_fn(move |_: Uri| {
                let path = path.clone();
                async move {
                    let stream = tokio::net::UnixStream::connect(path).await?;
                    Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(stream))
                }
            }))
            .await
            .expect("connect to the KMS v2 socket");
        KeyManagementServiceClient::new(channel)
    }

    /// The arguments that enable the plugin on `socket` with key `key_id`.
    pub fn args(socket: &Path, key_id: &str) -> Vec<String> {
        vec![
            "--kmsv2-socket".into(),
            socket.display().to_string(),
            "--kmsv2-key-id".into(),
            key_id.into(),
        ]
    }

    /// Creates the plugin's key (policy allowing `kubernetes` in `account`) and `alias` for it on a
    /// running sidecar; returns the key's ARN.
    pub async fn create_plugin_key(sidecar: &crate::Sidecar, account: &str, alias: &str) -> String {
        let meta = crate::key_with_alias(&sidecar.sdk(), &policy(account), alias).await;
        meta.arn().expect("arn").to_string()
    }

    /// A key policy for keys the plugin uses: the creator (`default`) may do everything, the
    /// API server's principal (`kubernetes`) may Encrypt, Decrypt and DescribeKey (Status).
    pub fn policy(account: &str) -> String {
        serde_json::json!({
            "Version": "2012-10-17",
            "Statement": [
                {
                    "Sid": "creator",
                    "Effect": "Allow",
                    "Principal": {"AWS": format!("arn:aws:iam::{account}:user/default")},
                    "Action": "kms:*",
                    "Resource": "*"
                },
                {
                    "Sid": "kube-apiserver",
                    "Effect": "Allow",
                    "Principal": {"AWS": format!("arn:aws:iam::{account}:user/kubernetes")},
                    "Action": ["kms:Encrypt", "kms:Decrypt", "kms:DescribeKey"],
                    "Resource": "*"
                }
            ]
        })
        .to_string()
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
