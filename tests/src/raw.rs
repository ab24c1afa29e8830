//! A raw HTTP client for the AWS JSON endpoint: sends any request, signed with the sidecar's own
//! `sigv4::sign`, unsigned, signed with a skewed clock or a corrupted signature, or with a given
//! `Authorization` header. Its own module because the SDK cannot send malformed requests and many
//! test files need to.

use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client as HyperClient;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;

use crate::{Creds, REGION};

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
