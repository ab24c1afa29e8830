//! The AWS KMS JSON 1.1 front-end: what every AWS SDK, the AWS CLI and the AWS Encryption SDK
//! speak. It owns steps 1 and 2 of the pipeline (parse, authenticate with SigV4) and the answer's
//! wire form; everything between is the core's ([`Core::call`], then [`Core::finish`]).

pub mod error;
pub mod wire;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::SystemTime;

use http::{HeaderName, HeaderValue, Method, Request, Response, StatusCode, header};
use hyper::body::Incoming;
use tracing::Instrument as _;
use zeroize::Zeroizing;

use crate::auth::clients::ClientStore;
use crate::auth::sigv4::{SignedRequest, Verifier};
use crate::core::{self, Core, Exchange, Frontend};
use crate::frontend::http::{Body, read_body};
use crate::kms::{ErrorKind, KmsError};
use crate::observe::telemetry;

/// Response header naming the key version an operation used, so callers can verify rotation.
pub const KEY_VERSION_HEADER: &str = "x-kms-sidecar-key-version";

/// The AWS JSON front-end: the core, and what authenticates its callers.
#[derive(Debug)]
pub struct AwsJson {
    core: Arc<Core>,
    clients: Arc<ClientStore>,
    verifier: Verifier,
    max_body: usize,
    /// Continue callers' W3C trace context (only when traces are exported).
    trace_propagation: bool,
}

impl AwsJson {
    pub fn new(
        core: Arc<Core>,
        clients: Arc<ClientStore>,
        verifier: Verifier,
        max_body: usize,
        trace_propagation: bool,
    ) -> Self {
        Self {
            core,
            clients,
            verifier,
            max_body,
            trace_propagation,
        }
    }

    /// Serves one HTTP request: the pipeline inside the request's span, then the one observation,
    /// then the wire answer.
    pub async fn handle(
        self: Arc<Self>,
        req: Request<Incoming>,
        peer: SocketAddr,
    ) -> Response<Body> {
        let request_id = self.core.request_id();
        let (parts, body) = req.into_parts();
        let span = telemetry::request_span(&parts.headers, &request_id, self.trace_propagation);
        let mut x = self.core.begin(Frontend::AwsJson, request_id, peer, span);
        let span = x.span().clone();
        let result = self
            .process(&parts, body, &mut x)
            .instrument(span)
            .await
            // The reply's JSON, in a zeroizing buffer (it may hold plaintext).
            .and_then(|reply| wire::encode(&reply).map(Zeroizing::new));
        let result = self.core.finish(&mut x, result);
        respond(&x, result)
    }

    /// Steps 1 and 2, then the core.
    async fn process(
        &self,
        parts: &http::request::Parts,
        body: Incoming,
        x: &mut Exchange,
    ) -> Result<core::Response, KmsError> {
        // 1. Parse: POST, a TrentService target and a JSON content type, then a bounded body.
        if parts.method != Method::POST {
            return Err(KmsError::new(
                ErrorKind::UnknownOperation,
                "the KMS API accepts only POST requests",
            ));
        }
        let target = parts
            .headers
            .get("x-amz-target")
            .map(HeaderValue::as_bytes)
            .unwrap_or_default();
        let op = wire::operation(target)?;
        x.op = Some(op);
        wire::check_content_type(
            parts
                .headers
                .get(header::CONTENT_TYPE)
                .map(HeaderValue::as_bytes),
        )?;
        let body = read_body(
            body,
            parts.headers.get(header::CONTENT_LENGTH),
            self.max_body,
        )
        .await?;
        // 2. Authenticate: a valid SigV4 signature from an issued, unrevoked client. Before the
        //    body is decoded, so an unauthenticated caller learns nothing about its shape.
        let signed = SignedRequest::from_parts(parts, &body);
        let client = self
            .verifier
            .verify(&self.clients, &signed, SystemTime::now())
            .map_err(|e| {
                x.auth_failure = Some((e.failure.reason(), e.principal));
                e.error
            })?;
        let principal = client.principal.clone();
        x.principal = Some(principal.clone());
        let request = core::Request::decode(op, wire::Json(&body))?;
        // 3.. The core: audit gate, rate limits, authorization, key state, caches, backend.
        self.core.call(x, &principal, request).await
    }
}

/// The wire answer: the reply's JSON, or the error's `__type`, message and status (`error.rs`),
/// with the request id and, for cryptographic operations, the key version used.
fn respond(x: &Exchange, result: Result<Zeroizing<Vec<u8>>, KmsError>) -> Response<Body> {
    let (status, body, failed) = match result {
        Ok(body) => (StatusCode::OK, body, None),
        Err(err) => (
            error::status(err.kind()),
            Zeroizing::new(error::body(&err)),
            Some(err.kind()),
        ),
    };
    let mut response = Response::new(Body::new(body));
    *response.status_mut() = status;
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(wire::CONTENT_TYPE),
    );
    if let Ok(v) = HeaderValue::from_str(x.request_id()) {
        // Header names from static text: a name given as `&str` is parsed and, not being a
        // standard header, copied to the heap on every response.
        headers.insert(HeaderName::from_static("x-amzn-requestid"), v);
    }
    if let (None, Some(version)) = (failed, x.obs.key_version) {
        headers.insert(
            HeaderName::from_static(KEY_VERSION_HEADER),
            version_header(version),
        );
    }
    if let Some(kind) = failed {
        headers.insert(
            HeaderName::from_static("x-amzn-errortype"),
            HeaderValue::from_static(error::aws_type(kind)),
        );
    }
    response
}

/// The key version as a header value: the first versions from static text (formatting an integer
/// into a header value allocates, and most keys have been rotated only a few times).
fn version_header(version: u32) -> HeaderValue {
    const SMALL: [&str; 17] = [
        "0", "1", "2", "3", "4", "5", "6", "7", "8", "9", "10", "11", "12", "13", "14", "15", "16",
    ];
    match SMALL.get(version as usize) {
        Some(text) => HeaderValue::from_static(text),
        None => HeaderValue::from(version),
    }
}

/// Runs one operation on a JSON body as the built-in admin principal, without HTTP, SigV4, limits
/// or observation: for tools and tests that drive the operations directly ([`core::Kms`]).
pub async fn call_internal(
    kms: &core::Kms,
    op: crate::kms::Operation,
    body: &[u8],
) -> Result<Zeroizing<Vec<u8>>, KmsError> {
    let request = core::Request::decode(op, wire::Json(body))?;
    let reply = kms.call_internal(request).await?;
    wire::encode(&reply).map(Zeroizing::new)
}

#[cfg(test)]
mod tests {
    #[test]
    fn version_headers_print_the_version() {
        for v in [0, 1, 9, 16, 17, 1234, u32::MAX] {
            assert_eq!(super::version_header(v).to_str().unwrap(), v.to_string());
        }
    }
}
