//! HTTP plumbing shared by the HTTP front-ends (the AWS JSON API, XKS, the admin API): a response
//! body that wipes its bytes when dropped, a JSON encoder whose buffer leaves no copies when it
//! grows, and a bounded, time-limited request body reader.

use std::convert::Infallible;
use std::pin::Pin;
use std::task::{Context as TaskContext, Poll};
use std::time::Duration;

use bytes::Buf;
use http::HeaderValue;
use http_body::{Frame, SizeHint};
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;
use zeroize::Zeroizing;

use crate::kms::{ErrorKind, KmsError};

/// Oversized bodies up to this size are drained before the error is sent (see [`read_body`]).
const DRAIN_LIMIT: usize = 1 << 20;

/// How long a client may take to send a request's headers or body.
pub const READ_TIMEOUT: Duration = Duration::from_secs(30);

/// A response body that zeroizes its bytes when dropped (responses may carry plaintext).
#[derive(Debug, Default)]
pub struct Body(Option<SecretBuf>);

/// The data chunk of [`Body`].
#[derive(Debug)]
pub struct SecretBuf {
    bytes: Zeroizing<Vec<u8>>,
    pos: usize,
}

impl Buf for SecretBuf {
    fn remaining(&self) -> usize {
        self.bytes.len() - self.pos
    }
    fn chunk(&self) -> &[u8] {
        &self.bytes[self.pos..]
    }
    fn advance(&mut self, cnt: usize) {
        self.pos = (self.pos + cnt).min(self.bytes.len());
    }
}

impl Body {
    pub fn new(bytes: Zeroizing<Vec<u8>>) -> Self {
        Self(Some(SecretBuf { bytes, pos: 0 }))
    }
}

impl http_body::Body for Body {
    type Data = SecretBuf;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _: &mut TaskContext<'_>,
    ) -> Poll<Option<Result<Frame<SecretBuf>, Infallible>>> {
        Poll::Ready(self.0.take().map(|b| Ok(Frame::data(b))))
    }
    fn is_end_stream(&self) -> bool {
        self.0.is_none()
    }
    fn size_hint(&self) -> SizeHint {
        SizeHint::with_exact(self.0.as_ref().map_or(0, |b| b.remaining() as u64))
    }
}

/// Reads a request body of at most `max` bytes within [`READ_TIMEOUT`]: larger is
/// `RequestTooLarge`, too slow a `ValidationException`.
pub async fn read_body(
    body: Incoming,
    length: Option<&HeaderValue>,
    max: usize,
) -> Result<Zeroizing<Vec<u8>>, KmsError> {
    let too_large = || {
        KmsError::new(
            ErrorKind::RequestTooLarge,
            format!("the request body is larger than the limit of {max} bytes"),
        )
    };
    if let Some(len) = length
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok())
        && len > max as u64
    {
        // Read and discard a moderately oversized body so the client sees the 4xx instead of a
        // reset connection; anything larger is refused without reading.
        if len <= DRAIN_LIMIT as u64 {
            let _ =
                tokio::time::timeout(READ_TIMEOUT, Limited::new(body, DRAIN_LIMIT).collect()).await;
        }
        return Err(too_large());
    }
    // Frames go straight into one buffer sized from Content-Length (one allocation; collecting
    // into a list of chunks and copying it out took two or three).
    let expected = length
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok())
        .unwrap_or(0)
        .min(max);
    let collected = tokio::time::timeout(READ_TIMEOUT, async {
        let mut body = Limited::new(body, max);
        let mut out = Zeroizing::new(Vec::with_capacity(expected));
        while let Some(frame) = body.frame().await {
            if let Ok(data) = frame?.into_data() {
                out.extend_from_slice(data.chunk());
            }
        }
        Ok::<_, Box<dyn std::error::Error + Send + Sync>>(out)
    })
    .await
    .map_err(|_| KmsError::new(ErrorKind::Validation, "timed out reading the request body"))?;
    match collected {
        Ok(body) => Ok(body),
        Err(e)
            if e.downcast_ref::<http_body_util::LengthLimitError>()
                .is_some() =>
        {
            Err(too_large())
        }
        Err(_) => Err(KmsError::new(
            ErrorKind::Serialization,
            "the request body could not be read",
        )),
    }
}

/// A reply's JSON in a buffer that never leaves a copy of itself in freed memory: it starts at
/// 1 KiB (a typical answer: a key ARN and a few hundred bytes of base64, so usually no growth and
/// one allocation), and when a larger answer (a plaintext of more than about 700 bytes) outgrows
/// it, the writer moves to a larger buffer itself and wipes the old one. A `Vec` grown by `extend`
/// would free its old allocation unwiped, plaintext included. The caller keeps the result in a
/// zeroizing body.
pub(crate) fn encode_json<T: serde::Serialize>(value: &T) -> serde_json::Result<Vec<u8>> {
    let mut out = WipingWriter(Zeroizing::new(Vec::with_capacity(1024)));
    serde_json::to_writer(&mut out, value)?;
    // Moves the buffer out (no copy).
    Ok(std::mem::take(&mut *out.0))
}

/// An `io::Write` into a zeroizing buffer that grows by moving, wiping what it leaves.
struct WipingWriter(Zeroizing<Vec<u8>>);

impl std::io::Write for WipingWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let needed = self.0.len().saturating_add(buf.len());
        if needed > self.0.capacity() {
            let mut bigger = Zeroizing::new(Vec::with_capacity(needed.max(self.0.capacity() * 2)));
            bigger.extend_from_slice(&self.0);
            // The old buffer is wiped (its whole capacity) as it drops here.
            self.0 = bigger;
        }
        self.0.extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}
