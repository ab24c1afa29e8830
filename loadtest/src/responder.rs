//! The baseline: a bare hyper HTTP/1.1 responder that answers every KMS call with a canned,
//! KMS-shaped success (no auth, no crypto, no JSON parsing). Running the same load against it and
//! against the sidecar in one invocation turns the sidecar's cost into a ratio that survives a noisy
//! machine. It runs on its own tokio runtime and threads, like a separate server process would.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::thread::JoinHandle;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::sync::oneshot;

use crate::error::LoadError;
use crate::target::check_addr;

/// The canned success body for an `X-Amz-Target`.
pub fn canned(target: &[u8]) -> &'static [u8] {
    match target.strip_prefix(b"TrentService.") {
        Some(b"Decrypt") => {
            br#"{"KeyId":"arn:aws:kms:us-east-1:111122223333:key/1234abcd-12ab-34cd-56ef-1234567890ab","Plaintext":"bG9hZHRlc3QgYmFzZWxpbmUgcGxhaW50ZXh0IDAxMjM0NTY3ODk=","EncryptionAlgorithm":"SYMMETRIC_DEFAULT"}"#
        }
        Some(b"GenerateDataKey") => {
            br#"{"KeyId":"arn:aws:kms:us-east-1:111122223333:key/1234abcd-12ab-34cd-56ef-1234567890ab","Plaintext":"AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=","CiphertextBlob":"AQIDAHhbYXNlbGluZS1jaXBoZXJ0ZXh0LWJsb2ItZm9yLWxvYWR0ZXN0aW5nLW9ubHktMDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY="}"#
        }
        Some(b"GenerateRandom") => br#"{"Plaintext":"AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8="}"#,
        _ => {
            br#"{"KeyId":"arn:aws:kms:us-east-1:111122223333:key/1234abcd-12ab-34cd-56ef-1234567890ab","CiphertextBlob":"AQIDAHhbYXNlbGluZS1jaXBoZXJ0ZXh0LWJsb2ItZm9yLWxvYWR0ZXN0aW5nLW9ubHktMDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY=","EncryptionAlgorithm":"SYMMETRIC_DEFAULT"}"#
        }
    }
}

/// A running baseline responder; stops when dropped.
#[derive(Debug)]
pub struct Responder {
    pub addr: SocketAddr,
    pub url: String,
    served: Arc<AtomicU64>,
    stop: Option<oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl Responder {
    /// Starts on `listen` (port 0: any free port) with `threads` runtime workers. The address must
    /// be loopback unless `allow_non_loopback`.
    pub fn start(
        listen: SocketAddr,
        threads: usize,
        allow_non_loopback: bool,
    ) -> Result<Self, LoadError> {
        check_addr(&listen.ip().to_string(), listen, allow_non_loopback)?;
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(threads.max(1))
            .thread_name("baseline-responder")
            .enable_all()
            .build()
            .map_err(LoadError::Responder)?;
        let std_listener = std::net::TcpListener::bind(listen).map_err(LoadError::Responder)?;
        std_listener
            .set_nonblocking(true)
            .map_err(LoadError::Responder)?;
        let addr = std_listener.local_addr().map_err(LoadError::Responder)?;
        let served = Arc::new(AtomicU64::new(0));
        let (stop, stopped) = oneshot::channel();
        let counter = served.clone();
        let thread = std::thread::Builder::new()
            .name("baseline-responder".into())
            .spawn(move || runtime.block_on(serve(std_listener, counter, stopped)))
            .map_err(LoadError::Responder)?;
        Ok(Self {
            addr,
            url: format!("http://{addr}"),
            served,
            stop: Some(stop),
            thread: Some(thread),
        })
    }

    /// Responses sent so far.
    pub fn served(&self) -> u64 {
        self.served.load(Ordering::Relaxed)
    }
}

impl Drop for Responder {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

async fn serve(
    listener: std::net::TcpListener,
    served: Arc<AtomicU64>,
    mut stopped: oneshot::Receiver<()>,
) {
    let Ok(listener) = tokio::net::TcpListener::from_std(listener) else {
        return;
    };
    loop {
        let stream = tokio::select! {
            _ = &mut stopped => return,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(_) => continue,
            },
        };
        let _ = stream.set_nodelay(true);
        let served = served.clone();
        tokio::spawn(async move {
            let service = service_fn(move |req: http::Request<hyper::body::Incoming>| {
                let served = served.clone();
                async move {
                    let body = canned(
                        req.headers()
                            .get("x-amz-target")
                            .map_or(&b""[..], |v| v.as_bytes()),
                    );
                    // Read the request like a real server would before answering.
                    let _ = req.into_body().collect().await;
                    served.fetch_add(1, Ordering::Relaxed);
                    let mut resp = http::Response::new(Full::new(Bytes::from_static(body)));
                    resp.headers_mut().insert(
                        http::header::CONTENT_TYPE,
                        http::HeaderValue::from_static("application/x-amz-json-1.1"),
                    );
                    resp.headers_mut().insert(
                        "x-amzn-requestid",
                        http::HeaderValue::from_static("00000000-0000-4000-8000-000000000000"),
                    );
                    Ok::<_, Infallible>(resp)
                }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .keep_alive(true)
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mix::Op;

    #[test]
    fn canned_bodies_are_kms_shaped_json() {
        for op in Op::ALL {
            let body = canned(op.target().as_bytes());
            let v: serde_json::Value = serde_json::from_slice(body).unwrap();
            assert!(v.is_object());
            assert_eq!(crate::kms::classify(op, 200, body), Ok(()), "{op:?}");
        }
        assert!(
            std::str::from_utf8(canned(b""))
                .unwrap()
                .contains("arn:aws:kms:")
        );
    }

    #[test]
    fn refuses_non_loopback_listen_addresses() {
        let err = Responder::start("0.0.0.0:0".parse().unwrap(), 1, false).unwrap_err();
        assert!(matches!(err, LoadError::NonLoopback { .. }));
    }
}
