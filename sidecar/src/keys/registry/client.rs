//! Our own small etcd v3 gRPC client: exactly the calls the registry (`etcd.rs`) makes, over the
//! subset of etcd's API in `etcd.proto`/`mvcc.proto`, compiled in pure Rust by `build.rs`. It exists
//! so the sidecar builds with only a Rust toolchain (a third-party etcd client compiles etcd's
//! protobufs with `protoc`), and so the registry depends on nothing it does not use.
//!
//! Every call asks for a leader (`hasleader` metadata: a member cut off from its quorum refuses
//! at once instead of hanging) and carries the auth token when a user is configured; a token etcd
//! no longer accepts is renewed once and the call retried.

use std::sync::{Arc, RwLock};
use std::time::Duration;

use secrecy::{ExposeSecret, SecretString};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::metadata::{Ascii, MetadataValue};
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};
use tonic::{Code, Status};

#[allow(clippy::all, missing_debug_implementations)]
mod pb {
    pub mod mvccpb {
        tonic::include_proto!("mvccpb");
    }
    pub mod etcdserverpb {
        tonic::include_proto!("etcdserverpb");
    }
}

use pb::etcdserverpb::auth_client::AuthClient;
use pb::etcdserverpb::compare::{CompareResult, CompareTarget, TargetUnion};
use pb::etcdserverpb::kv_client::KvClient;
use pb::etcdserverpb::lease_client::LeaseClient;
use pb::etcdserverpb::request_op::Request as Op;
use pb::etcdserverpb::watch_client::WatchClient;
use pb::etcdserverpb::watch_request::RequestUnion;
use pb::etcdserverpb::{
    AuthenticateRequest, DeleteRangeRequest, LeaseGrantRequest, LeaseRevokeRequest, PutRequest,
    RangeRequest, WatchCreateRequest, WatchProgressRequest, WatchRequest,
};
pub use pb::etcdserverpb::{
    Compare, RangeResponse, RequestOp, ResponseOp, TxnRequest, TxnResponse, WatchResponse,
    response_op,
};
pub use pb::mvccpb::event::EventType;

/// Metadata etcd reads to refuse requests on a member that has lost its leader.
const REQUIRE_LEADER: &str = "hasleader";
/// Metadata that carries the token from `Authenticate`.
const TOKEN: &str = "token";
/// Watch requests queued towards etcd (a create and progress requests, one a second).
const WATCH_QUEUE: usize = 16;

/// Why an etcd call failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot set up the etcd connection: {0}")]
    Transport(#[from] tonic::transport::Error),
    /// etcd's own message says what went wrong; the status is not kept as a source, which would
    /// print the same text again in an error chain.
    #[error("etcd answered {:?}: {}", .0.code(), .0.message())]
    Status(Status),
    #[error("{0}")]
    Invalid(String),
}

impl From<Status> for Error {
    fn from(s: Status) -> Self {
        Error::Status(s)
    }
}

/// TLS towards etcd: the CA that signs the servers and, for mutual TLS, our certificate and key.
#[derive(Default)]
pub struct Tls {
    pub ca_pem: Option<Vec<u8>>,
    pub identity_pem: Option<(Vec<u8>, Vec<u8>)>,
}

/// How to connect.
pub struct Options {
    pub connect_timeout: Duration,
    /// Bound on each unary call (watch streams stay open).
    pub timeout: Duration,
    /// HTTP/2 ping interval and how long a ping may go unanswered.
    pub keep_alive: (Duration, Duration),
    pub user: Option<(String, SecretString)>,
    pub tls: Option<Tls>,
}

/// A connection to an etcd cluster, balanced over its endpoints; cheap to clone.
#[derive(Clone)]
pub struct Client {
    channel: Channel,
    user: Option<Arc<(String, SecretString)>>,
    token: Arc<RwLock<Option<MetadataValue<Ascii>>>>,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("user", &self.user.as_ref().map(|u| &u.0))
            .finish_non_exhaustive()
    }
}

impl Client {
    /// Connects to `endpoints` (`http://` or `https://` URLs) and, with a user, authenticates.
    pub async fn connect(endpoints: &[String], options: Options) -> Result<Self, Error> {
        let tls = match &options.tls {
            None => None,
            Some(t) => {
                let mut config = ClientTlsConfig::new();
                if let Some(ca) = &t.ca_pem {
                    config = config.ca_certificate(Certificate::from_pem(ca));
                }
                if let Some((cert, key)) = &t.identity_pem {
                    config = config.identity(Identity::from_pem(cert, key));
                }
                Some(config)
            }
        };
        let mut list = Vec::with_capacity(endpoints.len());
        for url in endpoints {
            let mut endpoint = Endpoint::from_shared(url.clone())
                .map_err(|_| Error::Invalid(format!("invalid etcd endpoint {url:?}")))?
                .connect_timeout(options.connect_timeout)
                .timeout(options.timeout)
                .http2_keep_alive_interval(options.keep_alive.0)
                .keep_alive_timeout(options.keep_alive.1)
                .keep_alive_while_idle(true);
            if let Some(tls) = &tls {
                endpoint = endpoint.tls_config(tls.clone())?;
            }
            list.push(endpoint);
        }
        if list.is_empty() {
            return Err(Error::Invalid("no etcd endpoints".into()));
        }
        let client = Self {
            channel: Channel::balance_list(list.into_iter()),
            user: options.user.map(Arc::new),
            token: Arc::new(RwLock::new(None)),
        };
        if client.user.is_some() {
            client.authenticate().await?;
        }
        Ok(client)
    }

    /// Trades the configured user and password for a fresh token.
    async fn authenticate(&self) -> Result<(), Error> {
        let Some(user) = &self.user else {
            return Ok(());
        };
        let req = AuthenticateRequest {
            name: user.0.clone(),
            password: user.1.expose_secret().to_string(),
        };
        let token = AuthClient::new(self.channel.clone())
            .authenticate(tonic::Request::new(req))
            .await?
            .into_inner()
            .token;
        let token = MetadataValue::try_from(token.as_str())
            .map_err(|_| Error::Invalid("etcd returned an unusable auth token".into()))?;
        if let Ok(mut slot) = self.token.write() {
            *slot = Some(token);
        }
        Ok(())
    }

    /// Wraps `msg` with the metadata every call carries.
    fn request<T>(&self, msg: T) -> tonic::Request<T> {
        let mut req = tonic::Request::new(msg);
        req.metadata_mut()
            .insert(REQUIRE_LEADER, MetadataValue::from_static("true"));
        if let Ok(slot) = self.token.read()
            && let Some(token) = slot.as_ref()
        {
            req.metadata_mut().insert(TOKEN, token.clone());
        }
        req
    }

    /// Runs a unary call; when etcd rejects the token (expired), authenticates again and retries
    /// once. A rejected token means nothing was applied, so the retry cannot apply twice.
    async fn unary<Req: Clone, Resp, Fut>(
        &self,
        msg: Req,
        call: impl Fn(Channel, tonic::Request<Req>) -> Fut,
    ) -> Result<Resp, Error>
    where
        Fut: Future<Output = Result<tonic::Response<Resp>, Status>>,
    {
        match call(self.channel.clone(), self.request(msg.clone())).await {
            Err(s) if s.code() == Code::Unauthenticated && self.user.is_some() => {
                self.authenticate().await?;
                Ok(call(self.channel.clone(), self.request(msg))
                    .await?
                    .into_inner())
            }
            r => Ok(r?.into_inner()),
        }
    }

    /// Reads `key`, or every key starting with it when `prefix` (a linearizable read).
    pub async fn get(&self, key: impl Into<Vec<u8>>, prefix: bool) -> Result<RangeResponse, Error> {
        let req = range(key.into(), prefix);
        self.unary(req, |ch, r| async move { KvClient::new(ch).range(r).await })
            .await
    }

    /// Runs a transaction.
    pub async fn txn(&self, txn: TxnRequest) -> Result<TxnResponse, Error> {
        self.unary(txn, |ch, r| async move { KvClient::new(ch).txn(r).await })
            .await
    }

    /// Grants a lease of `ttl` seconds; returns its ID.
    pub async fn lease_grant(&self, ttl: i64) -> Result<i64, Error> {
        let req = LeaseGrantRequest { ttl, id: 0 };
        let resp = self
            .unary(req, |ch, r| async move {
                LeaseClient::new(ch).lease_grant(r).await
            })
            .await?;
        if !resp.error.is_empty() {
            return Err(Error::Invalid(format!(
                "etcd refused a lease: {}",
                resp.error
            )));
        }
        Ok(resp.id)
    }

    /// Revokes a lease, deleting every key attached to it.
    pub async fn lease_revoke(&self, id: i64) -> Result<(), Error> {
        let req = LeaseRevokeRequest { id };
        self.unary(req, |ch, r| async move {
            LeaseClient::new(ch).lease_revoke(r).await
        })
        .await
        .map(|_| ())
    }

    /// Opens a watch on every key starting with `prefix`, from `start_revision`, with etcd's
    /// periodic progress notifications.
    pub async fn watch_prefix(
        &self,
        prefix: impl Into<Vec<u8>>,
        start_revision: i64,
    ) -> Result<WatchStream, Error> {
        let key = prefix.into();
        let create = WatchRequest {
            request_union: Some(RequestUnion::CreateRequest(WatchCreateRequest {
                range_end: prefix_end(&key),
                key,
                start_revision,
                progress_notify: true,
            })),
        };
        let open = |client: &Self| {
            let (tx, rx) = mpsc::channel(WATCH_QUEUE);
            let create = create.clone();
            let req = client.request(ReceiverStream::new(rx));
            let channel = client.channel.clone();
            async move {
                // The queue is empty and its receiver alive: this cannot fail.
                let _ = tx.send(create).await;
                let inbound = WatchClient::new(channel).watch(req).await?.into_inner();
                Ok::<_, Status>(WatchStream { tx, inbound })
            }
        };
        match open(self).await {
            Err(s) if s.code() == Code::Unauthenticated && self.user.is_some() => {
                self.authenticate().await?;
                Ok(open(self).await?)
            }
            r => Ok(r?),
        }
    }
}

/// The auth request carries the etcd password: build.rs leaves out its generated Debug for this one.
impl std::fmt::Debug for AuthenticateRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuthenticateRequest")
            .field("name", &self.name)
            .field("password", &"[redacted]")
            .finish()
    }
}

/// An open watch: responses in order, and a way to ask for a progress report.
#[derive(Debug)]
pub struct WatchStream {
    tx: mpsc::Sender<WatchRequest>,
    inbound: tonic::Streaming<WatchResponse>,
}

impl WatchStream {
    /// Asks etcd for an immediate progress response (an empty one carrying the revision up to
    /// which everything has been delivered).
    pub async fn request_progress(&mut self) -> Result<(), Error> {
        let req = WatchRequest {
            request_union: Some(RequestUnion::ProgressRequest(WatchProgressRequest {})),
        };
        self.tx
            .send(req)
            .await
            .map_err(|_| Error::Invalid("the etcd watch stream is closed".into()))
    }

    /// The next response; `None` when etcd closed the stream.
    pub async fn message(&mut self) -> Result<Option<WatchResponse>, Error> {
        Ok(self.inbound.message().await?)
    }
}

fn range(key: Vec<u8>, prefix: bool) -> RangeRequest {
    RangeRequest {
        range_end: if prefix { prefix_end(&key) } else { Vec::new() },
        key,
        ..RangeRequest::default()
    }
}

/// The end of the range of keys that start with `prefix`: the prefix with its last byte that is
/// not 0xff incremented (and what follows dropped). No such byte: `\0`, etcd's "to the end".
fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    vec![0]
}

/// Compare: `key` was created at `revision` (0: `key` does not exist).
pub fn create_revision_is(key: impl Into<Vec<u8>>, revision: i64) -> Compare {
    Compare {
        result: CompareResult::Equal as i32,
        target: CompareTarget::Create as i32,
        key: key.into(),
        target_union: Some(TargetUnion::CreateRevision(revision)),
    }
}

/// Compare: `key` was last written at `revision`.
pub fn mod_revision_is(key: impl Into<Vec<u8>>, revision: i64) -> Compare {
    Compare {
        result: CompareResult::Equal as i32,
        target: CompareTarget::Mod as i32,
        key: key.into(),
        target_union: Some(TargetUnion::ModRevision(revision)),
    }
}

/// Op: put `value` at `key`, attached to `lease` (0: none).
pub fn put(key: impl Into<Vec<u8>>, value: Vec<u8>, lease: i64) -> RequestOp {
    RequestOp {
        request: Some(Op::RequestPut(PutRequest {
            key: key.into(),
            value,
            lease,
        })),
    }
}

/// Op: delete `key`.
pub fn delete(key: impl Into<Vec<u8>>) -> RequestOp {
    RequestOp {
        request: Some(Op::RequestDeleteRange(DeleteRangeRequest {
            key: key.into(),
            range_end: Vec::new(),
        })),
    }
}

/// Op: read `key`.
pub fn get(key: impl Into<Vec<u8>>) -> RequestOp {
    RequestOp {
        request: Some(Op::RequestRange(range(key.into(), false))),
    }
}

/// Every value read by the `get` ops of a transaction's responses, in order.
pub fn get_values(responses: Vec<ResponseOp>) -> Vec<Vec<u8>> {
    responses
        .into_iter()
        .filter_map(|r| match r.response {
            Some(response_op::Response::ResponseRange(g)) => Some(g.kvs),
            _ => None,
        })
        .flatten()
        .map(|kv| kv.value)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefix_end_covers_exactly_the_keys_under_the_prefix() {
        assert_eq!(prefix_end(b"/kms/"), b"/kms0".to_vec());
        assert_eq!(prefix_end(b"a\xff"), b"b".to_vec());
        assert_eq!(prefix_end(b"\xff\xff"), vec![0]);
        assert_eq!(prefix_end(b""), vec![0]);
    }

    #[test]
    fn the_auth_request_debug_redacts_the_password() {
        let r = AuthenticateRequest {
            name: "fleet".into(),
            password: "hunter2".into(),
        };
        let shown = format!("{r:?}");
        assert!(
            shown.contains("fleet") && !shown.contains("hunter2"),
            "{shown}"
        );
    }
}
