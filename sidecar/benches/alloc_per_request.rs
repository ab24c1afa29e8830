//! Heap allocations per request through the real HTTP path, so that a regression in the hot path's
//! allocation count is visible without a quiet machine (throughput on a shared 2-core machine moves
//! by 20% between runs; an allocation count does not).
//!
//! A sidecar runs in this process exactly as the binary serves it (`Sidecar::start` + `run`, a
//! multi-thread runtime, telemetry installed at `--log-level warn`, the embedded backend, the audit
//! log on). One blocking client thread sends N identical, pre-signed requests over one keep-alive
//! connection and reads each answer into a reused buffer, so the client allocates nothing while
//! measuring; every allocation counted (all threads: runtime workers, the audit writer) is the
//! sidecar's. The count is taken after the audit writer has drained, and the allocations of an
//! idle window of the same length (background work: the client table reload) are subtracted.
//!
//! ```text
//! cargo bench -p kms-sidecar --bench alloc_per_request            # prints one line per operation
//! ```

use std::io::{Read as _, Write as _};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use base64::Engine as _;
use kms_sidecar::auth::sigv4::{SignedRequest, sign};
use kms_sidecar::config::{Config, Options, Secrets};
use kms_sidecar::server::Sidecar;
use secrecy::ExposeSecret as _;
use stats_alloc::{INSTRUMENTED_SYSTEM, Region, StatsAlloc};

#[global_allocator]
static GLOBAL: &StatsAlloc<std::alloc::System> = &INSTRUMENTED_SYSTEM;

/// Requests per measured operation (after a warm-up of the same number).
const REQUESTS: u64 = 20_000;
const REGION: &str = "us-east-1";

/// One signed request, as bytes on the wire.
fn signed_request(
    addr: SocketAddr,
    akid: &str,
    secret: &str,
    target: &str,
    body: &[u8],
) -> Result<Vec<u8>, Box<dyn std::error::Error>> {
    let date = time::OffsetDateTime::now_utc().format(time::macros::format_description!(
        "[year][month][day]T[hour][minute][second]Z"
    ))?;
    let host = addr.to_string();
    let mut headers = http::HeaderMap::new();
    headers.insert("host", host.parse()?);
    headers.insert("content-type", "application/x-amz-json-1.1".parse()?);
    headers.insert("x-amz-date", date.parse()?);
    headers.insert("x-amz-target", target.parse()?);
    let auth = sign(
        akid,
        secret,
        REGION,
        &SignedRequest {
            method: "POST",
            path: "/",
            query: "",
            headers: &headers,
            body,
        },
        &["content-type", "host", "x-amz-date", "x-amz-target"],
    )?;
    let mut out = format!(
        "POST / HTTP/1.1\r\nhost: {host}\r\ncontent-type: application/x-amz-json-1.1\r\nx-amz-date: {date}\r\nx-amz-target: {target}\r\nauthorization: {auth}\r\ncontent-length: {}\r\n\r\n",
        body.len()
    )
    .into_bytes();
    out.extend_from_slice(body);
    Ok(out)
}

/// A blocking HTTP/1.1 client on one keep-alive connection that reads answers into one buffer.
struct Client {
    stream: TcpStream,
    buf: Vec<u8>,
}

impl Client {
    fn connect(addr: SocketAddr) -> std::io::Result<Self> {
        let stream = TcpStream::connect(addr)?;
        stream.set_nodelay(true)?;
        stream.set_read_timeout(Some(Duration::from_secs(10)))?;
        Ok(Self {
            stream,
            buf: vec![0; 64 * 1024],
        })
    }

    /// Sends `req` and returns the status and the answer's body (a slice of the reused buffer).
    fn call(&mut self, req: &[u8]) -> std::io::Result<(u16, &[u8])> {
        self.stream.write_all(req)?;
        let mut filled = 0;
        loop {
            if filled == self.buf.len() {
                return Err(std::io::Error::other("answer larger than the buffer"));
            }
            let n = self.stream.read(&mut self.buf[filled..])?;
            if n == 0 {
                return Err(std::io::Error::other("connection closed"));
            }
            filled += n;
            let Some(end) = find(&self.buf[..filled], b"\r\n\r\n") else {
                continue;
            };
            let head = &self.buf[..end];
            let status = head
                .get(9..12)
                .and_then(|s| std::str::from_utf8(s).ok())
                .and_then(|s| s.parse().ok())
                .unwrap_or(0);
            let length = content_length(head).unwrap_or(0);
            let total = end + 4 + length;
            if total > self.buf.len() {
                return Err(std::io::Error::other("answer larger than the buffer"));
            }
            while filled < total {
                let n = self.stream.read(&mut self.buf[filled..total])?;
                if n == 0 {
                    return Err(std::io::Error::other("connection closed"));
                }
                filled += n;
            }
            return Ok((status, &self.buf[end + 4..total]));
        }
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

fn content_length(head: &[u8]) -> Option<usize> {
    head.split(|&b| b == b'\n').find_map(|line| {
        let line = std::str::from_utf8(line).ok()?.trim();
        let (name, value) = line.split_once(':')?;
        name.eq_ignore_ascii_case("content-length")
            .then(|| value.trim().parse().ok())?
    })
}

/// Sends `req` `n` times and fails on any answer but 200.
fn drive(client: &mut Client, req: &[u8], n: u64) -> Result<(), Box<dyn std::error::Error>> {
    for _ in 0..n {
        let (status, body) = client.call(req)?;
        if status != 200 {
            return Err(format!("status {status}: {}", String::from_utf8_lossy(body)).into());
        }
    }
    Ok(())
}

/// Allocations and bytes per request of `n` requests, less those of an idle window as long.
fn measure(client: &mut Client, req: &[u8]) -> Result<(f64, f64), Box<dyn std::error::Error>> {
    drive(client, req, REQUESTS)?;
    // The audit writer lingers a few milliseconds after a batch; let it drain before counting.
    std::thread::sleep(Duration::from_millis(100));
    let region = Region::new(GLOBAL);
    let started = Instant::now();
    drive(client, req, REQUESTS)?;
    std::thread::sleep(Duration::from_millis(100));
    let busy = region.change();
    let elapsed = started.elapsed();
    let idle = Region::new(GLOBAL);
    std::thread::sleep(elapsed);
    let idle = idle.change();
    let allocs = busy.allocations.saturating_sub(idle.allocations) as f64 / REQUESTS as f64;
    let bytes = busy.bytes_allocated.saturating_sub(idle.bytes_allocated) as f64 / REQUESTS as f64;
    Ok((allocs, bytes))
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let dir = tempfile::tempdir()?;
    let options = Options {
        data_dir: Some(dir.path().join("data")),
        listen: Some("127.0.0.1:0".into()),
        admin_listen: Some("127.0.0.1:0".into()),
        log_level: Some("warn".into()),
        ..Options::default()
    };
    let config = Config::load(&options, Secrets::default())?;
    let _telemetry = kms_sidecar::observe::telemetry::init(
        config.log_format(),
        config.log_level(),
        config.otlp_endpoint(),
    )?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let (addr, issued, server) = rt.block_on(async {
        let mut sidecar = Sidecar::start(config).await?;
        let issued = sidecar
            .take_issued()
            .ok_or("the first run issues a credential")?;
        let addr = sidecar.kms_addr();
        let server = tokio::spawn(sidecar.run(async {
            let _ = stopped.await;
        }));
        Ok::<_, Box<dyn std::error::Error>>((addr, issued, server))
    })?;
    let akid = issued.access_key_id.clone();
    let secret = issued.secret.expose_secret().to_string();
    let call = |client: &mut Client, target: &str, body: serde_json::Value| {
        let req = signed_request(addr, &akid, &secret, target, body.to_string().as_bytes())?;
        let (status, answer) = client.call(&req)?;
        if status != 200 {
            return Err(format!("{target}: {status}").into());
        }
        Ok::<_, Box<dyn std::error::Error>>(serde_json::from_slice::<serde_json::Value>(answer)?)
    };
    let mut client = Client::connect(addr)?;
    let created = call(&mut client, "TrentService.CreateKey", serde_json::json!({}))?;
    let key_id = created["KeyMetadata"]["KeyId"]
        .as_str()
        .ok_or("CreateKey answered without a KeyId")?
        .to_string();
    let plaintext = base64::engine::general_purpose::STANDARD.encode([7u8; 256]);
    let context = serde_json::json!({"app": "kms-loadtest"});
    let encrypt_body = serde_json::json!({
        "KeyId": key_id, "Plaintext": plaintext, "EncryptionContext": context,
    });
    let sealed = call(&mut client, "TrentService.Encrypt", encrypt_body.clone())?;
    let decrypt_body = serde_json::json!({
        "CiphertextBlob": sealed["CiphertextBlob"], "EncryptionContext": context,
    });
    let decrypt = signed_request(
        addr,
        &akid,
        &secret,
        "TrentService.Decrypt",
        decrypt_body.to_string().as_bytes(),
    )?;
    let encrypt = signed_request(
        addr,
        &akid,
        &secret,
        "TrentService.Encrypt",
        encrypt_body.to_string().as_bytes(),
    )?;
    for (name, req) in [("decrypt_cached", &decrypt), ("encrypt", &encrypt)] {
        let (allocs, bytes) = measure(&mut client, req)?;
        println!(
            "alloc_per_request op={name} requests={REQUESTS} allocations={allocs:.2} bytes={bytes:.0}"
        );
    }
    drop(client);
    let _ = stop.send(());
    rt.block_on(server)??;
    Ok(())
}
