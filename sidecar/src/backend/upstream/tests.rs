#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::convert::Infallible;
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::Full;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

use super::*;
use crate::kms::{ErrorKind, KmsError};

#[test]
fn error_codes_map_to_backend_kinds() {
    use BackendErrorKind::*;
    let cases = [
        ("InvalidCiphertextException", 400, InvalidCiphertext),
        ("IncorrectKeyException", 400, InvalidCiphertext),
        ("NotFoundException", 400, MaterialMissing),
        ("DisabledException", 400, MaterialMissing),
        ("KMSInvalidStateException", 400, MaterialMissing),
        ("ThrottlingException", 400, Unavailable),
        ("KMSInternalException", 500, Unavailable),
        ("DependencyTimeoutException", 503, Unavailable),
        ("KeyUnavailableException", 500, Unavailable),
        ("ServiceUnavailableException", 503, Unavailable),
        ("AccessDeniedException", 400, Internal),
        ("UnrecognizedClientException", 400, Internal),
        ("InvalidSignatureException", 400, Internal),
        ("ValidationException", 400, Internal),
        ("LimitExceededException", 400, Internal),
        ("InvalidKeyUsageException", 400, Internal),
        ("SomethingNewException", 400, Internal),
        ("SomethingNewException", 500, Unavailable),
        ("SomethingNewException", 429, Unavailable),
    ];
    for (code, status, want) in cases {
        assert_eq!(classify(Some(code), Some(status)), want, "{code} {status}");
    }
    assert_eq!(classify(None, Some(502)), Unavailable);
    assert_eq!(classify(None, Some(404)), Internal);
    assert_eq!(classify(None, None), Internal);
}

#[test]
fn settings_debug_hides_the_secret() {
    let shown = format!("{:?}", settings("http://127.0.0.1:1"));
    assert!(shown.contains("[redacted]"), "{shown}");
    assert!(!shown.contains("very-secret"), "{shown}");
    let backend = Upstream::new(settings("http://127.0.0.1:1")).unwrap();
    assert!(!format!("{backend:?}").contains("very-secret"));
}

#[test]
fn endpoints_must_be_urls_and_http_only_to_loopback() {
    for good in [
        "https://kms.us-east-1.amazonaws.com",
        "https://kms.example.com:8443/",
        "http://127.0.0.1:7300",
        "http://localhost:7300",
        "http://[::1]:7300",
    ] {
        check_endpoint(good).unwrap_or_else(|e| panic!("{good}: {e:#}"));
    }
    for (bad, says) in [
        ("not a url", "not a URL"),
        ("127.0.0.1:7300", "must start with https://"),
        ("ftp://kms.example.com", "must start with https://"),
        ("http://kms.example.com", "unencrypted"),
        ("http://10.0.0.1:7300", "unencrypted"),
        ("https://kms.example.com/prefix", "path or query"),
        ("https://kms.example.com/?x=1", "path or query"),
    ] {
        let err = format!("{:#}", check_endpoint(bad).unwrap_err());
        assert!(err.contains(says), "{bad}: {err}");
    }
}

#[test]
fn alias_prefixes_follow_kms_alias_rules() {
    for good in ["kms-sidecar", "team_a/prod", "a"] {
        check_alias_prefix(good).unwrap();
    }
    let long = "a".repeat(MAX_ALIAS_PREFIX + 1);
    for bad in [
        "",
        "/x",
        "x/",
        "a//b",
        "aws",
        "aws/x",
        "with space",
        "ünï",
        &long,
    ] {
        assert!(check_alias_prefix(bad).is_err(), "{bad:?}");
    }
    assert_eq!(
        alias_name("kms-sidecar", "1234abcd-12ab-34cd-56ef-1234567890ab", 7),
        "alias/kms-sidecar/1234abcd-12ab-34cd-56ef-1234567890ab/v7"
    );
    let backend = Upstream::new(settings("http://127.0.0.1:1")).unwrap();
    let longest = alias_name(&"p".repeat(MAX_ALIAS_PREFIX), &"k".repeat(36), u32::MAX);
    assert!(longest.len() <= MAX_ALIAS, "{}", longest.len());
    assert_eq!(
        backend.alias("has space", 1).unwrap_err().kind,
        BackendErrorKind::Internal
    );
}

#[test]
fn the_context_binds_the_whole_aad() {
    let a = aad_context(b"header|ctx");
    assert_eq!(a.len(), 1);
    assert_eq!(a[AAD_CONTEXT_KEY].len(), 44, "base64 of 32 bytes");
    assert_ne!(a, aad_context(b"header|ctx2"));
    assert_eq!(a, aad_context(b"header|ctx"));
}

#[test]
fn bad_settings_are_refused() {
    let mut s = settings("http://example.com");
    assert!(Upstream::new(s.clone()).is_err());
    s.endpoint = None;
    Upstream::new(s.clone()).unwrap();
    s.alias_prefix = "aws/x".into();
    assert!(Upstream::new(s.clone()).is_err());
    s.alias_prefix = "p".into();
    s.access_key_id = String::new();
    assert!(Upstream::new(s).is_err());
}

fn settings(endpoint: &str) -> UpstreamSettings {
    UpstreamSettings {
        endpoint: Some(endpoint.to_string()),
        region: "us-east-1".into(),
        access_key_id: "AKIAEXAMPLE".into(),
        secret_access_key: SecretString::from("very-secret-key"),
        alias_prefix: "kms-sidecar".into(),
        timeout: Duration::from_millis(500),
    }
}

/// A fake upstream that answers every request with `status` and `body`.
async fn fake(status: u16, body: impl Into<String>) -> String {
    let body = Bytes::from(body.into());
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            let body = body.clone();
            let service = hyper::service::service_fn(move |_req| {
                let body = body.clone();
                async move {
                    let mut resp = http::Response::new(Full::new(body));
                    *resp.status_mut() = http::StatusCode::from_u16(status).unwrap();
                    resp.headers_mut().insert(
                        http::header::CONTENT_TYPE,
                        http::HeaderValue::from_static("application/x-amz-json-1.1"),
                    );
                    Ok::<_, Infallible>(resp)
                }
            });
            tokio::spawn(
                hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service),
            );
        }
    });
    format!("http://{addr}")
}

const KEY: KeyRef<'static> = KeyRef {
    key_id: "1234abcd-12ab-34cd-56ef-1234567890ab",
    version: 1,
};

/// The whole error chain as text, for leak checks.
fn chain(e: &BackendError) -> String {
    let mut text = format!("{e} {e:?}");
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        text.push_str(&format!(" | {s} {s:?}"));
        source = s.source();
    }
    text
}

#[tokio::test]
async fn upstream_answers_are_classified_through_the_sdk() {
    use BackendErrorKind::*;
    let cases: [(u16, &'static str, BackendErrorKind); 8] = [
        (
            400,
            r#"{"__type":"InvalidCiphertextException","message":"bad"}"#,
            InvalidCiphertext,
        ),
        (
            400,
            r#"{"__type":"com.amazonaws.kms#IncorrectKeyException","message":"no"}"#,
            InvalidCiphertext,
        ),
        (
            400,
            r#"{"__type":"NotFoundException","message":"Alias not found"}"#,
            MaterialMissing,
        ),
        (400, r#"{"__type":"ThrottlingException"}"#, Unavailable),
        (429, "slow down", Unavailable),
        (500, r#"{"__type":"KMSInternalException"}"#, Unavailable),
        (400, r#"{"__type":"AccessDeniedException"}"#, Internal),
        (502, "<html>bad gateway</html>", Unavailable),
    ];
    for (status, body, want) in cases {
        let backend = Upstream::new(settings(&fake(status, body).await)).unwrap();
        let err = backend.decrypt(KEY, b"aad", b"blob").await.unwrap_err();
        assert_eq!(err.kind, want, "{status} {body}: {}", chain(&err));
        // A throttle is marked as one (retried, never counted by the breaker); nothing else is.
        let throttle = body.contains("Throttling") || status == 429;
        assert_eq!(err.is_backend_throttle(), throttle, "{status} {body}");
        let mut source = err.source.as_deref();
        if let Some(t) = source.and_then(|s| s.downcast_ref::<crate::backend::BackendThrottled>()) {
            source = t.cause.as_deref();
        }
        let upstream = source
            .and_then(|s| s.downcast_ref::<UpstreamError>())
            .expect("the upstream error is kept");
        assert_eq!(upstream.operation, "Decrypt");
        assert_eq!(upstream.status, Some(status));
    }
}

#[tokio::test]
async fn errors_never_carry_plaintext_or_secrets() {
    // A Decrypt answer that does not parse: the raw response (with the plaintext) must be dropped.
    let secret_b64 = "c2VjcmV0LXBsYWludGV4dC12YWx1ZQ=="; // "secret-plaintext-value"
    let body = format!(r#"{{"Plaintext":"{secret_b64}","#);
    let backend = Upstream::new(settings(&fake(200, body).await)).unwrap();
    let err = backend.decrypt(KEY, b"aad", b"blob").await.unwrap_err();
    let text = chain(&err);
    assert!(!text.contains(secret_b64), "{text}");
    assert!(!text.contains("secret-plaintext-value"), "{text}");
    assert!(!text.contains("very-secret"), "{text}");
    // Encrypt's plaintext is not in the error either.
    let backend = Upstream::new(settings(
        &fake(500, r#"{"__type":"KMSInternalException"}"#).await,
    ))
    .unwrap();
    let err = backend
        .encrypt(KEY, b"aad", b"top-secret-plaintext")
        .await
        .unwrap_err();
    assert!(!chain(&err).contains("top-secret-plaintext"));
    // And the client sees a retryable KMS error without internals.
    let kms = KmsError::from(err);
    assert_eq!(kms.kind(), ErrorKind::DependencyTimeout);
    assert!(!kms.wire_message().contains("127.0.0.1"));
}

#[tokio::test]
async fn connection_failures_and_timeouts_are_retryable() {
    // Nothing listens on a port that was just released.
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let closed = format!("http://{}", listener.local_addr().unwrap());
    drop(listener);
    let backend = Upstream::new(settings(&closed)).unwrap();
    let err = backend.encrypt(KEY, b"", b"x").await.unwrap_err();
    assert_eq!(err.kind, BackendErrorKind::Unavailable, "{}", chain(&err));
    assert!(err.is_retryable());

    // A listener that accepts and never answers: the SDK's timeout (from the settings) fires.
    let silent = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", silent.local_addr().unwrap());
    let held = Arc::new(tokio::sync::Mutex::new(Vec::new()));
    let keep = held.clone();
    tokio::spawn(async move {
        while let Ok((stream, _)) = silent.accept().await {
            keep.lock().await.push(stream);
        }
    });
    let backend = Upstream::new(settings(&url)).unwrap();
    let started = std::time::Instant::now();
    let err = backend.decrypt(KEY, b"", b"x").await.unwrap_err();
    assert_eq!(err.kind, BackendErrorKind::Unavailable, "{}", chain(&err));
    assert!(started.elapsed() < Duration::from_secs(5));
}

#[tokio::test]
async fn random_needs_no_upstream() {
    let backend = Upstream::new(settings("http://127.0.0.1:1")).unwrap();
    let a = backend.random(32).await.unwrap();
    let b = backend.random(32).await.unwrap();
    assert_eq!((a.len(), b.len()), (32, 32));
    assert_ne!(a, b);
}
