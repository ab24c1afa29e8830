//! One keep-alive HTTP/1.1 connection per worker. Each worker owns its connection (hyper's
//! low-level client), so `--connections` is an exact cap on sockets and on requests in flight, and a
//! connection that breaks is replaced on the next request and counted.

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;

use crate::error::LoadError;

/// The request body type the load tester sends.
pub type Body = Full<Bytes>;

/// A lazily (re)connected HTTP/1.1 client connection.
#[derive(Debug)]
pub struct Conn {
    addr: SocketAddr,
    sender: Option<SendRequest<Body>>,
    opened: u64,
}

impl Conn {
    pub fn new(addr: SocketAddr) -> Self {
        Self {
            addr,
            sender: None,
            opened: 0,
        }
    }

    /// How many TCP connections this worker opened (1 when keep-alive held all run).
    pub fn opened(&self) -> u64 {
        self.opened
    }

    /// Opens a fresh connection, replacing any old one.
    pub async fn connect(&mut self) -> Result<(), LoadError> {
        self.sender = None;
        let connect_err = |source| LoadError::Connect {
            addr: self.addr,
            source,
        };
        let stream = tokio::net::TcpStream::connect(self.addr)
            .await
            .map_err(connect_err)?;
        stream.set_nodelay(true).map_err(connect_err)?;
        let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
        // The connection task ends when the sender is dropped or the peer closes; its error (if any)
        // surfaces on the next send through the sender.
        tokio::spawn(async move {
            let _ = conn.await;
        });
        self.sender = Some(sender);
        self.opened += 1;
        Ok(())
    }

    /// Sends one request and reads the whole response, within `timeout`. On any failure the
    /// connection is dropped (a half-read HTTP/1.1 stream cannot be reused).
    pub async fn send(
        &mut self,
        req: http::Request<Body>,
        timeout: Duration,
    ) -> Result<(u16, Bytes), LoadError> {
        let result = match tokio::time::timeout(timeout, self.send_inner(req)).await {
            Ok(r) => r,
            Err(_) => Err(LoadError::Timeout(timeout)),
        };
        if result.is_err() {
            self.sender = None;
        }
        result
    }

    async fn send_inner(&mut self, req: http::Request<Body>) -> Result<(u16, Bytes), LoadError> {
        if self.sender.as_ref().is_none_or(SendRequest::is_closed) {
            self.connect().await?;
        }
        let mut ready = match self.sender.as_mut() {
            Some(s) => s.ready().await.is_ok(),
            None => false,
        };
        if !ready {
            // The server closed an idle keep-alive connection: reconnect, not an error.
            self.connect().await?;
            ready = match self.sender.as_mut() {
                Some(s) => s.ready().await.is_ok(),
                None => false,
            };
        }
        let Some(sender) = self.sender.as_mut().filter(|_| ready) else {
            return Err(LoadError::Connect {
                addr: self.addr,
                source: std::io::Error::other("connection not ready"),
            });
        };
        let resp = sender.send_request(req).await?;
        let status = resp.status().as_u16();
        let body = resp.into_body().collect().await?.to_bytes();
        Ok((status, body))
    }
}
