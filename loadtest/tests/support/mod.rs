//! Test support: small in-process HTTP servers with known behaviour (a stalled server that sleeps
//! before answering, a throttling server with a real token bucket answering `ThrottlingException`),
//! a CLI runner, and the check that a JSON report contains every field `docs/loadtest.md` documents;
//! `sidecar`: target arguments and request counters shared by the tests against a real sidecar.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

pub mod sidecar;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use clap::Parser as _;
use http_body_util::{BodyExt, Full};
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use kms_loadtest::Report;
use kms_loadtest::cli::{Cli, execute};
use serde_json::Value;

/// How a test server answers.
#[derive(Debug, Clone, Copy)]
pub enum Behaviour {
    /// Sleep this long, then answer like the baseline responder.
    Stall(Duration),
    /// A token bucket of `rate` per second holding at most `burst` tokens; without a token the
    /// answer is `400 ThrottlingException`, as KMS sends it.
    Throttle { rate: f64, burst: f64 },
}

struct Bucket {
    tokens: f64,
    last: Instant,
}

/// A test server on 127.0.0.1 with its own runtime; stops when dropped.
pub struct TestServer {
    pub url: String,
    pub throttled: Arc<AtomicU64>,
    pub served: Arc<AtomicU64>,
    runtime: Option<tokio::runtime::Runtime>,
}

impl Drop for TestServer {
    fn drop(&mut self) {
        if let Some(rt) = self.runtime.take() {
            rt.shutdown_background();
        }
    }
}

impl TestServer {
    pub fn start(behaviour: Behaviour) -> Self {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let addr: SocketAddr = listener.local_addr().unwrap();
        let throttled = Arc::new(AtomicU64::new(0));
        let served = Arc::new(AtomicU64::new(0));
        let bucket = Arc::new(Mutex::new(Bucket {
            tokens: match behaviour {
                Behaviour::Throttle { burst, .. } => burst,
                Behaviour::Stall(_) => 0.0,
            },
            last: Instant::now(),
        }));
        let (t, s) = (throttled.clone(), served.clone());
        runtime.spawn(async move {
            let listener = tokio::net::TcpListener::from_std(listener).unwrap();
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let (t, s, bucket) = (t.clone(), s.clone(), bucket.clone());
                tokio::spawn(async move {
                    let service = service_fn(move |req: http::Request<hyper::body::Incoming>| {
                        let (t, s, bucket) = (t.clone(), s.clone(), bucket.clone());
                        async move {
                            let target = req
                                .headers()
                                .get("x-amz-target")
                                .map(|v| v.as_bytes().to_vec())
                                .unwrap_or_default();
                            let _ = req.into_body().collect().await;
                            let allowed = match behaviour {
                                Behaviour::Stall(d) => {
                                    tokio::time::sleep(d).await;
                                    true
                                }
                                Behaviour::Throttle { rate, burst } => {
                                    let mut b = bucket.lock().unwrap();
                                    let now = Instant::now();
                                    let add = now.duration_since(b.last).as_secs_f64() * rate;
                                    b.tokens = (b.tokens + add).min(burst);
                                    b.last = now;
                                    if b.tokens >= 1.0 {
                                        b.tokens -= 1.0;
                                        true
                                    } else {
                                        false
                                    }
                                }
                            };
                            let resp = if allowed {
                                s.fetch_add(1, Ordering::Relaxed);
                                http::Response::new(Full::new(Bytes::from_static(
                                    kms_loadtest::responder::canned(&target),
                                )))
                            } else {
                                t.fetch_add(1, Ordering::Relaxed);
                                let mut r = http::Response::new(Full::new(Bytes::from_static(
                                    br#"{"__type":"ThrottlingException","message":"Rate exceeded"}"#,
                                )));
                                *r.status_mut() = http::StatusCode::BAD_REQUEST;
                                r
                            };
                            Ok::<_, Infallible>(resp)
                        }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        Self {
            url: format!("http://{addr}"),
            throttled,
            served,
            runtime: Some(runtime),
        }
    }
}

/// Runs the CLI with `args` (after the program name) and returns the report.
pub async fn cli(args: &[&str]) -> Report {
    let mut argv = vec!["kms-loadtest"];
    argv.extend_from_slice(args);
    let cli = Cli::try_parse_from(argv).expect("command line parses");
    execute(cli)
        .await
        .expect("load test runs")
        .report
        .expect("a report")
}

/// Field paths documented in `docs/loadtest.md` (first column of its field tables).
pub fn documented_fields() -> Vec<String> {
    let doc =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/loadtest.md"))
            .expect("docs/loadtest.md");
    let schema = doc
        .split_once("## JSON report schema")
        .expect("docs/loadtest.md has the schema section")
        .1;
    let fields: Vec<String> = schema
        .lines()
        .filter_map(|l| l.strip_prefix("| `"))
        .filter_map(|l| l.split_once('`').map(|(path, _)| path.to_string()))
        .filter(|p| !p.contains(' '))
        .collect();
    assert!(fields.len() > 40, "too few documented fields: {fields:?}");
    fields
}

/// Checks `path` (`a.b[].c`, `m.<key>.x`) exists in `v`; `[]` and `<...>` mean every element.
/// Returns how many concrete leaves matched (0 when an array or map on the way is empty).
fn resolve(v: &Value, parts: &[&str], path: &str) -> usize {
    let Some((first, rest)) = parts.split_first() else {
        return 1;
    };
    if first.starts_with('<') {
        let map = v.as_object().unwrap_or_else(|| panic!("{path}: not a map"));
        return map.values().map(|x| resolve(x, rest, path)).sum();
    }
    let (name, each) = match first.strip_suffix("[]") {
        Some(n) => (n, true),
        None => (*first, false),
    };
    let child = v
        .get(name)
        .unwrap_or_else(|| panic!("documented field {path} is missing ({name})"));
    if each {
        let arr = child
            .as_array()
            .unwrap_or_else(|| panic!("{path}: {name} is not an array"));
        arr.iter().map(|x| resolve(x, rest, path)).sum()
    } else if rest.is_empty() {
        1
    } else if child.is_null() {
        // A nullable section (e.g. `probe` in a run report): its fields are checked by the tests
        // of the mode that fills it.
        0
    } else {
        resolve(child, rest, path)
    }
}

/// Asserts that every documented field under the non-null sections of `json` is present, and that
/// the report round-trips through the library's type. Returns the number of fields checked.
pub fn assert_documented_fields(json: &str) -> usize {
    let v: Value = serde_json::from_str(json).expect("report is JSON");
    let _: Report = serde_json::from_str(json).expect("report parses as kms_loadtest::Report");
    let mut checked = 0;
    for path in documented_fields() {
        let parts: Vec<&str> = path.split('.').collect();
        checked += usize::from(resolve(&v, &parts, &path) > 0);
    }
    checked
}
