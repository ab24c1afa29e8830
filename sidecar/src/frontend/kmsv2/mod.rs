//! The Kubernetes KMS v2 plugin front-end: the kube-apiserver wraps its data-encryption keys (and
//! seeds) with the sidecar's keys over gRPC on a Unix socket (`api.proto`, the published API). It
//! owns steps 1 and 2 of the pipeline and the gRPC answer; everything between is the core's, as for
//! the AWS API: rate limits, key policy, key state, caches, breaker, retries, metrics, audit.
//!
//! - Authentication is the socket's file mode (0600, or 0660 with a configured group: see
//!   `server/unix.rs`): whoever can open it is the configured principal (`kubernetes` by default).
//! - `Status` is the core's `Status` operation on the configured key; `Encrypt` and `Decrypt` are
//!   KMS Encrypt and Decrypt. The `key_id` the API server sees is `<key ARN>#v<version>`
//!   ([`wire_key_id`]): it changes when the key rotates, which is how the API server notices.
//! - `uid` is logged and otherwise ignored; the `key_id` and annotations sent back with a Decrypt
//!   are bounded and logged, never trusted: the ciphertext's authenticated header names the key and
//!   version (`keys/ciphertext.rs`), so a changed `key_id` cannot lead to a wrong plaintext.

pub mod error;

use std::collections::HashMap;
use std::sync::Arc;

use arc_swap::ArcSwap;
use prometheus::IntGauge;
use tracing::Instrument as _;
use zeroize::Zeroizing;

use crate::auth::Principal;
use crate::core::model::{Blob, DecryptRequest, EncryptRequest, SecretBlob, StatusRequest};
use crate::core::{self, Core, Exchange, Frontend};
use crate::kms::{KmsError, Operation};
use crate::observe::telemetry;

#[allow(clippy::all, missing_debug_implementations)]
mod proto {
    tonic::include_proto!("v2");
}

pub use proto::key_management_service_server::KeyManagementServiceServer;
pub use proto::{
    DecryptRequest as WireDecryptRequest, DecryptResponse as WireDecryptResponse,
    EncryptRequest as WireEncryptRequest, EncryptResponse as WireEncryptResponse,
    StatusRequest as WireStatusRequest, StatusResponse as WireStatusResponse,
};

/// The plugin API version `Status` answers (the EncryptionConfiguration's `apiVersion: v2`).
pub const API_VERSION: &str = "v2";
/// What `Status` answers in `healthz` when the plugin is healthy.
pub const HEALTHY: &str = "ok";
/// Annotation: the version of this plugin's wire conventions (the `key_id` form, annotations).
pub const ANNOTATION_VERSION: &str = "version.kmsv2.kms-sidecar.io";
/// Annotation: the key version the data key was wrapped under (informational).
pub const ANNOTATION_KEY_VERSION: &str = "key-version.kmsv2.kms-sidecar.io";
/// The value of [`ANNOTATION_VERSION`].
const CONVENTIONS: &[u8] = b"1";

/// The API server's bounds (it refuses larger answers): ciphertext and key id 1 KiB, annotations
/// 32 KiB in total. The same bounds apply to what it sends back.
pub const MAX_CIPHERTEXT: usize = 1024;
pub const MAX_KEY_ID: usize = 1024;
pub const MAX_ANNOTATIONS: usize = 32 * 1024;
/// The largest plaintext wrapped: the API server sends 32 bytes; anything up to this still fits
/// the 1 KiB ciphertext bound with every backend's overhead.
pub const MAX_PLAINTEXT: usize = 256;
/// The largest gRPC message accepted: a Decrypt at all its bounds, with room for framing.
pub const MAX_MESSAGE: usize = MAX_CIPHERTEXT + MAX_KEY_ID + MAX_ANNOTATIONS + 4096;
/// The most of a `uid` that is logged.
const MAX_LOGGED_UID: usize = 128;

/// The `key_id` the API server sees: the key's ARN and its current version.
pub fn wire_key_id(key_arn: &str, version: u32) -> String {
    format!("{key_arn}#v{version}")
}

/// The KMS v2 front-end: the core, the configured key and principal, and the health gauge.
#[derive(Debug)]
pub struct KmsV2 {
    core: Arc<Core>,
    /// The key as configured (id, ARN or alias): resolved on every call, so an alias can be moved.
    key: String,
    principal: Arc<Principal>,
    /// Where calls come from, for the audit log: the socket path.
    source: String,
    /// `kms_sidecar_kmsv2_status_ok`: 1 when the last Status was healthy.
    status_ok: IntGauge,
    /// The last `key_id` a healthy Status answered, kept for unhealthy answers.
    last_key_id: ArcSwap<String>,
}

impl KmsV2 {
    /// `key` must name an existing key (checked by the server at start); `principal` is the name
    /// the API server's calls run as.
    pub fn new(core: Arc<Core>, key: String, principal: &str, socket: &std::path::Path) -> Self {
        let principal = Arc::new(Principal {
            arn: crate::auth::clients::principal_arn(&core.keys().scope().account, principal),
            name: principal.to_string(),
            tags: Default::default(),
        });
        let status_ok = core
            .metrics()
            .kmsv2_status_ok
            .with_label_values(&[key.as_str()]);
        Self {
            core,
            principal,
            source: format!("unix:{}", socket.display()),
            status_ok,
            last_key_id: ArcSwap::from_pointee(String::new()),
            key,
        }
    }

    /// The gRPC service, bounded in message size.
    pub fn service(self: Arc<Self>) -> KeyManagementServiceServer<Handler> {
        KeyManagementServiceServer::from_arc(Arc::new(Handler(self)))
            .max_decoding_message_size(MAX_MESSAGE)
            .max_encoding_message_size(MAX_MESSAGE)
    }

    /// One call through the core: open the observation, build the typed request (step 1; step 2,
    /// authentication, was the socket's), run the pipeline, record it.
    async fn call(
        &self,
        op: Operation,
        uid: &str,
        request: Result<core::Request, KmsError>,
    ) -> (Exchange, Result<core::Response, KmsError>) {
        let request_id = self.core.request_id();
        let span = telemetry::request_span(&http::HeaderMap::new(), &request_id, false);
        let mut x = self
            .core
            .begin(Frontend::KmsV2, request_id, self.source.clone(), span);
        x.op = Some(op);
        x.principal = Some(self.principal.clone());
        let span = x.span().clone();
        let uid: String = uid.chars().take(MAX_LOGGED_UID).collect();
        let result = async {
            tracing::debug!(request_id = x.request_id(), uid = ?uid, "kmsv2 call");
            let request = request?;
            self.core.call(&mut x, &self.principal, request).await
        }
        .instrument(span)
        .await;
        (x, result)
    }

    /// `Status`: healthy only when the configured key is usable and a backend round trip under
    /// its current version works (reused for a second, `core::health`).
    pub async fn status(&self) -> WireStatusResponse {
        let request = core::Request::Status(StatusRequest {
            key_id: Some(self.key.clone()),
        });
        let (mut x, result) = self.call(Operation::Status, "", Ok(request)).await;
        let result = result.and_then(|reply| match reply {
            core::Response::Status(s) => Ok(wire_key_id(&s.key_id, s.key_version)),
            _ => Err(unexpected()),
        });
        match self.core.finish(&mut x, result) {
            Ok(key_id) => {
                self.status_ok.set(1);
                self.last_key_id.store(Arc::new(key_id.clone()));
                WireStatusResponse {
                    version: API_VERSION.into(),
                    healthz: HEALTHY.into(),
                    key_id,
                }
            }
            Err(e) => {
                self.status_ok.set(0);
                let last = self.last_key_id.load_full();
                WireStatusResponse {
                    version: API_VERSION.into(),
                    // What the API server shows in its healthz output: the type and the
                    // client-safe message (server faults hide their details).
                    healthz: format!("{}: {}", e.kind().name(), e.wire_message()),
                    key_id: if last.is_empty() {
                        self.key.clone()
                    } else {
                        last.as_ref().clone()
                    },
                }
            }
        }
    }

    async fn encrypt(&self, mut req: WireEncryptRequest) -> Result<WireEncryptResponse, KmsError> {
        let plaintext = Zeroizing::new(std::mem::take(&mut req.plaintext));
        let request = if plaintext.is_empty() || plaintext.len() > MAX_PLAINTEXT {
            Err(KmsError::validation(format!(
                "plaintext must be 1 to {MAX_PLAINTEXT} bytes"
            )))
        } else {
            Ok(core::Request::Encrypt(EncryptRequest {
                key_id: Some(self.key.clone()),
                plaintext: Some(SecretBlob(plaintext)),
                ..Default::default()
            }))
        };
        let (mut x, result) = self.call(Operation::Encrypt, &req.uid, request).await;
        let version = x.obs.key_version;
        let result = result.and_then(|reply| match (reply, version) {
            (core::Response::Encrypt(r), Some(version)) => {
                if r.ciphertext_blob.0.len() > MAX_CIPHERTEXT {
                    return Err(KmsError::internal(std::io::Error::other(format!(
                        "the backend's ciphertext is {} bytes, over the KMS v2 bound of {MAX_CIPHERTEXT}",
                        r.ciphertext_blob.0.len()
                    ))));
                }
                Ok(WireEncryptResponse {
                    ciphertext: r.ciphertext_blob.0,
                    key_id: wire_key_id(&r.key_id, version),
                    annotations: HashMap::from([
                        (ANNOTATION_VERSION.to_string(), CONVENTIONS.to_vec()),
                        (
                            ANNOTATION_KEY_VERSION.to_string(),
                            version.to_string().into_bytes(),
                        ),
                    ]),
                })
            }
            _ => Err(unexpected()),
        });
        self.core.finish(&mut x, result)
    }

    async fn decrypt(&self, req: WireDecryptRequest) -> Result<WireDecryptResponse, KmsError> {
        let request = check_decrypt(&req).map(|()| {
            core::Request::Decrypt(DecryptRequest {
                ciphertext_blob: Some(Blob(req.ciphertext)),
                ..Default::default()
            })
        });
        let (mut x, result) = self.call(Operation::Decrypt, &req.uid, request).await;
        let result = result.and_then(|reply| match reply {
            core::Response::Decrypt(mut r) => Ok(WireDecryptResponse {
                plaintext: std::mem::take(&mut *r.plaintext.0),
            }),
            _ => Err(unexpected()),
        });
        self.core.finish(&mut x, result)
    }
}

/// The bounds of a Decrypt request (the key id and annotations are otherwise not used).
fn check_decrypt(req: &WireDecryptRequest) -> Result<(), KmsError> {
    if req.ciphertext.is_empty() || req.ciphertext.len() > MAX_CIPHERTEXT {
        return Err(KmsError::validation(format!(
            "ciphertext must be 1 to {MAX_CIPHERTEXT} bytes"
        )));
    }
    if req.key_id.len() > MAX_KEY_ID {
        return Err(KmsError::validation(format!(
            "key_id must be at most {MAX_KEY_ID} bytes"
        )));
    }
    let annotations: usize = req.annotations.iter().map(|(k, v)| k.len() + v.len()).sum();
    if annotations > MAX_ANNOTATIONS {
        return Err(KmsError::validation(format!(
            "annotations must be at most {MAX_ANNOTATIONS} bytes in total"
        )));
    }
    Ok(())
}

/// The core answered with another operation's reply: a bug, never the caller's fault.
fn unexpected() -> KmsError {
    KmsError::internal(std::io::Error::other(
        "the core answered with another operation's reply",
    ))
}

/// The tonic service: each call through [`KmsV2`], errors through `error.rs`.
#[derive(Debug)]
pub struct Handler(Arc<KmsV2>);

#[tonic::async_trait]
impl proto::key_management_service_server::KeyManagementService for Handler {
    async fn status(
        &self,
        _request: tonic::Request<WireStatusRequest>,
    ) -> Result<tonic::Response<WireStatusResponse>, tonic::Status> {
        Ok(tonic::Response::new(self.0.status().await))
    }

    async fn decrypt(
        &self,
        request: tonic::Request<WireDecryptRequest>,
    ) -> Result<tonic::Response<WireDecryptResponse>, tonic::Status> {
        self.0
            .decrypt(request.into_inner())
            .await
            .map(tonic::Response::new)
            .map_err(|e| error::status(&e))
    }

    async fn encrypt(
        &self,
        request: tonic::Request<WireEncryptRequest>,
    ) -> Result<tonic::Response<WireEncryptResponse>, tonic::Status> {
        self.0
            .encrypt(request.into_inner())
            .await
            .map(tonic::Response::new)
            .map_err(|e| error::status(&e))
    }
}

// The messages that carry a plaintext print it redacted (build.rs skips their derived Debug).
impl std::fmt::Debug for WireEncryptRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EncryptRequest")
            .field("plaintext", &"[redacted]")
            .field("uid", &self.uid)
            .finish()
    }
}

impl std::fmt::Debug for WireDecryptResponse {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DecryptResponse")
            .field("plaintext", &"[redacted]")
            .finish()
    }
}
