//! The AWS KMS External Key Store (XKS) proxy front-end: AWS KMS calls it over HTTPS for every
//! cryptographic operation on a key in an external key store, and it answers with a key held by the
//! sidecar's backend (the HSM, through PKCS#11). It owns steps 1 and 2 of the pipeline (route and
//! parse, SigV4 with service `kms-xks-proxy`) and the answer's wire form (`error.rs`); the rest
//! (rate limits, key policy with the `xks:` conditions, key state, cache, breaker, retries, backend,
//! metrics with `frontend="xks"`, audit) is the core's, as for every front-end.
//!
//! AWS KMS gives a proxy 250 ms per call and then fails its caller's request, so this path adds no
//! work beyond the core's: routing is string matching, authentication one SigV4 verification.
//! `docs/xks.md` has the configuration, the key mapping and the ciphertext metadata.

pub mod auth;
pub mod error;
pub mod wire;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use arc_swap::ArcSwap;

use http::{HeaderValue, Method, Request, Response, StatusCode, header};
use hyper::body::Incoming;
use tracing::Instrument as _;
use zeroize::Zeroizing;

use self::auth::PrefixAuth;
use self::wire::{Decoded, Route};
use crate::auth::sigv4::SignedRequest;
use crate::core::xks::*;
use crate::core::{self, Core, Exchange, Frontend};
use crate::frontend::http::{Body, encode_json, read_body};
use crate::kms::{ErrorKind, KmsError, Operation};
use crate::observe::telemetry;

/// What the proxy says it is in GetHealthStatus.
const VENDOR: &str = "kms-sidecar";

/// One configured URI path prefix (an external key store in AWS KMS).
#[derive(Debug)]
pub struct XksPrefix {
    /// The `XksProxyUriPath`, ending in `/kms/xks/v1`.
    pub uri_path: String,
    pub auth: PrefixAuth,
}

/// An external key id's sidecar key and usages.
#[derive(Debug, Clone)]
pub struct XksKey {
    pub key_id: String,
    pub usage: XksUsage,
}

/// Everything the front-end serves with, built by the server from the validated configuration.
#[derive(Debug)]
pub struct XksOptions {
    pub region: String,
    pub max_skew: Duration,
    pub prefixes: Vec<XksPrefix>,
    pub keys: BTreeMap<String, XksKey>,
    /// The key of the deep health check; the first mapped key when none is configured.
    pub health_key_id: Option<String>,
    pub fleet_size: u32,
}

/// The options in force, swapped whole on a reload.
#[derive(Debug)]
struct Table {
    options: XksOptions,
    paths: Vec<String>,
}

impl Table {
    fn new(mut options: XksOptions) -> Self {
        if options.health_key_id.is_none() {
            options.health_key_id = options.keys.values().next().map(|k| k.key_id.clone());
        }
        let paths = options
            .prefixes
            .iter()
            .map(|p| p.uri_path.clone())
            .collect();
        Self { options, paths }
    }
}

/// The XKS proxy front-end.
#[derive(Debug)]
pub struct Xks {
    core: Arc<Core>,
    table: ArcSwap<Table>,
}

impl Xks {
    pub fn new(core: Arc<Core>, options: XksOptions) -> Self {
        Self {
            core,
            table: ArcSwap::from_pointee(Table::new(options)),
        }
    }

    /// Swaps in new prefixes, credentials and keys (on SIGHUP): the spec's credential rotation
    /// without a restart. Calls in flight finish with the table they started with.
    pub fn reload(&self, options: XksOptions) {
        self.table.store(Arc::new(Table::new(options)));
    }

    /// Serves one HTTP request: route, then the pipeline inside the request's span, then the one
    /// observation, then the wire answer.
    pub async fn handle(
        self: Arc<Self>,
        req: Request<Incoming>,
        peer: SocketAddr,
    ) -> Response<Body> {
        let request_id = self.core.request_id();
        let (parts, body) = req.into_parts();
        let span = telemetry::request_span(&parts.headers, &request_id, false);
        let mut x = self
            .core
            .begin(Frontend::Xks, request_id, peer.to_string(), span);
        let span = x.span().clone();
        let table = self.table.load_full();
        let t = table.as_ref();
        let paths: Vec<&str> = t.paths.iter().map(String::as_str).collect();
        let mut wrong_method = false;
        let result = match wire::route(&paths, parts.uri.path()) {
            Err(e) => Err(e),
            Ok(route) => {
                x.op = Some(route.op);
                if parts.method == Method::POST {
                    self.process(t, &parts, body, &route, &mut x)
                        .instrument(span)
                        .await
                } else {
                    // The spec: any other method on an API's URI is 405.
                    wrong_method = true;
                    Err(KmsError::validation("the XKS proxy API accepts only POST"))
                }
            }
        };
        let result = result.and_then(|reply| self.encode(t, reply));
        let result = self.core.finish(&mut x, result);
        respond(&x, result, wrong_method)
    }

    /// Steps 1 and 2, then the core.
    async fn process(
        &self,
        t: &Table,
        parts: &http::request::Parts,
        body: Incoming,
        route: &Route<'_>,
        x: &mut Exchange,
    ) -> Result<core::Response, KmsError> {
        let body = read_body(
            body,
            parts.headers.get(header::CONTENT_LENGTH),
            wire::MAX_BODY,
        )
        .await?;
        // 2. Authenticate with a credential of the prefix the path names, before the body is
        //    decoded, so an unauthenticated caller learns nothing about its shape.
        let signed = SignedRequest::from_parts(parts, &body);
        let prefix = t
            .options
            .prefixes
            .get(route.prefix)
            .ok_or_else(|| KmsError::internal(std::io::Error::other("no such prefix")))?;
        let principal = auth::verify(
            &prefix.auth,
            &t.options.region,
            t.options.max_skew,
            &signed,
            SystemTime::now(),
        )
        .map_err(|e| {
            x.auth_failure = Some((e.failure.reason(), e.principal));
            e.error
        })?;
        x.principal = Some(principal.clone());
        let decoded = wire::decode(route.op, &body)?;
        x.kms_request_id = decoded.metadata.kms_request_id.clone();
        x.aws_principal_arn = decoded.metadata.aws_principal_arn.clone();
        tracing::debug!(
            request_id = x.request_id(),
            kms_request_id = x.kms_request_id.as_deref().unwrap_or_default(),
            aws_principal_arn = x.aws_principal_arn.as_deref().unwrap_or_default(),
            kms_operation = decoded
                .metadata
                .kms_operation
                .as_deref()
                .unwrap_or_default(),
            kms_via_service = decoded
                .metadata
                .kms_via_service
                .as_deref()
                .unwrap_or_default(),
            "xks call"
        );
        let request = self.request(t, route, decoded)?;
        // 3.. The core: audit gate, rate limits, authorization, key state, caches, backend.
        self.core.call(x, &principal, request).await
    }

    /// The core request for a route; an external key id that is not configured is
    /// `KeyNotFoundException`.
    fn request(&self, t: &Table, route: &Route<'_>, d: Decoded) -> Result<core::Request, KmsError> {
        if route.op == Operation::XksGetHealthStatus {
            return Ok(core::Request::XksGetHealthStatus(XksHealthRequest {
                probe_key_id: t.options.health_key_id.clone(),
                metadata: d.metadata,
            }));
        }
        let key = t.options.keys.get(route.external_key_id).ok_or_else(|| {
            KmsError::new(
                ErrorKind::NotFound,
                "the external key is not configured in this proxy",
            )
        })?;
        let key_id = Some(key.key_id.clone());
        Ok(match route.op {
            Operation::XksEncrypt => core::Request::XksEncrypt(XksEncryptRequest {
                key_id,
                usage: key.usage,
                metadata: d.metadata,
                plaintext: d.plaintext,
                aad: d.aad,
                integrity_value: d.integrity_value,
            }),
            Operation::XksDecrypt => core::Request::XksDecrypt(XksDecryptRequest {
                key_id,
                usage: key.usage,
                metadata: d.metadata,
                ciphertext: d.ciphertext,
                ciphertext_metadata: d.ciphertext_metadata,
                aad: d.aad,
                iv: d.iv,
                tag: d.tag,
            }),
            _ => core::Request::XksGetKeyMetadata(XksKeyMetadataRequest {
                key_id,
                usage: key.usage,
                metadata: d.metadata,
            }),
        })
    }

    /// The reply's JSON, in a zeroizing buffer (a Decrypt reply holds plaintext).
    fn encode(&self, t: &Table, reply: core::Response) -> Result<Zeroizing<Vec<u8>>, KmsError> {
        let json = match reply {
            core::Response::XksGetHealthStatus(h) => encode_json(&serde_json::json!({
                "xksProxyFleetSize": t.options.fleet_size,
                "xksProxyVendor": VENDOR,
                "xksProxyModel": format!("kms-sidecar XKS proxy {}", env!("CARGO_PKG_VERSION")),
                "ekmVendor": ekm_vendor(h.backend),
                "ekmFleetDetails": [{
                    "id": h.backend,
                    "model": format!("kms-sidecar {} backend", h.backend),
                    "healthStatus": h.health_status,
                }],
            })),
            // Grows without leaving copies of a plaintext behind.
            other => encode_json(&other),
        };
        json.map(Zeroizing::new).map_err(KmsError::internal)
    }
}

fn ekm_vendor(backend: &str) -> &'static str {
    match backend {
        "pkcs11" => "PKCS#11 token",
        _ => VENDOR,
    }
}

/// The wire answer: the reply's JSON, or the error's name, message and status (`error.rs`).
fn respond(
    x: &Exchange,
    result: Result<Zeroizing<Vec<u8>>, KmsError>,
    wrong_method: bool,
) -> Response<Body> {
    let (status, body) = match result {
        Ok(body) => (StatusCode::OK, body),
        Err(err) => {
            let status = if wrong_method {
                StatusCode::METHOD_NOT_ALLOWED
            } else {
                error::name_and_status(err.kind()).1
            };
            (status, Zeroizing::new(error::body(&err)))
        }
    };
    let mut response = Response::new(Body::new(body));
    *response.status_mut() = status;
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    if wrong_method {
        headers.insert(header::ALLOW, HeaderValue::from_static("POST"));
    }
    if let Ok(v) = HeaderValue::from_str(x.request_id()) {
        headers.insert("x-amzn-requestid", v);
    }
    response
}
