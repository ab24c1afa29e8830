//! A [`Backend`] wrapper that applies the outbound limits of [`crate::limits`] to every call: a retry
//! loop (backoff, retry budget, request deadline) around attempts that each take an outbound-budget
//! token and a circuit-breaker permit and run under a per-attempt timeout. Wrap an
//! [`Observed`](super::observed::Observed) backend with it so that every attempt is measured:
//! `Resilient(Observed(real))`.
//!
//! Failures keep the backend's classification. A refusal by the open breaker is a retryable
//! `Unavailable` error (the client may retry later; this loop does not), which the error mapping turns
//! into `DependencyTimeoutException`. An empty outbound budget is also `Unavailable`, with
//! [`BudgetExhausted`] as its source, which `limits/classify.rs` maps to `ThrottlingException`.
//!
//! `create_version` is attempted once: after a timeout its outcome is unknown, and a blind retry could
//! write key material twice.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use tokio::time::Instant;
use tracing::Instrument as _;
use zeroize::Zeroizing;

use crate::backend::{Backend, BackendError, BackendErrorKind, KeyRef};
use crate::limits::retry::{Attempt, RetryCounters, Retryable, retry_observed};
use crate::limits::{Breaker, OutboundBudget, RetryBudget, RetryPolicy};

/// Default for [`Resilience::request_timeout`]: AWS SDKs time out after a few seconds too, and a
/// caller is better served by an error than by a longer wait.
pub const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

/// The outbound limits of one backend.
#[derive(Debug, Clone)]
pub struct Resilience {
    pub breaker: Arc<Breaker>,
    pub retry: Arc<RetryPolicy>,
    pub retry_budget: Arc<RetryBudget>,
    /// `None`: the backend has no quota to respect.
    pub outbound: Option<Arc<OutboundBudget>>,
    /// Time a call may take in all, retries and waits for tokens included.
    pub request_timeout: Duration,
    /// `backend_retries_total` counters of this backend.
    pub retries: Option<RetryCounters>,
}

/// A backend behind retries, a circuit breaker and an outbound budget.
#[derive(Debug)]
pub struct Resilient {
    inner: Arc<dyn Backend>,
    limits: Resilience,
}

impl Resilient {
    pub fn new(inner: Arc<dyn Backend>, limits: Resilience) -> Self {
        Self { inner, limits }
    }

    pub fn limits(&self) -> &Resilience {
        &self.limits
    }
}

impl Resilience {
    /// One attempt: a token, a permit, the call under the attempt's deadline; the breaker is told
    /// how it went (a timeout is a failure).
    async fn attempt<T>(
        &self,
        attempt: Attempt,
        call: impl Future<Output = Result<T, BackendError>>,
    ) -> Result<T, BackendError> {
        // One span per attempt, so a trace shows each retry (and its wait for a token or permit)
        // under the request, with the backend call inside it.
        let span = tracing::debug_span!(
            "backend.attempt",
            attempt = attempt.index,
            retry = attempt.index > 0
        );
        self.attempt_inner(attempt, call).instrument(span).await
    }

    async fn attempt_inner<T>(
        &self,
        attempt: Attempt,
        call: impl Future<Output = Result<T, BackendError>>,
    ) -> Result<T, BackendError> {
        if let Some(budget) = &self.outbound {
            budget
                .acquire(attempt.deadline)
                .await
                .map_err(|e| BackendError::with_source(BackendErrorKind::Unavailable, e))?;
        }
        let permit = self
            .breaker
            .allow()
            .map_err(|e| BackendError::with_source(BackendErrorKind::Unavailable, e))?;
        let result = match tokio::time::timeout_at(attempt.deadline, call).await {
            Ok(r) => r,
            Err(_elapsed) => Err(BackendError::timed_out()),
        };
        permit.record(&result);
        result
    }

    /// When a call starting now must be done (the timeout is clamped to a day so it cannot overflow).
    fn deadline(&self, now: Instant) -> Instant {
        now + self.request_timeout.min(Duration::from_secs(86_400))
    }

    /// Runs `op` under these limits: the retry loop around attempts that each take an
    /// outbound-budget token and a breaker permit. Public for callers that are not a [`Backend`]
    /// (proxy mode forwards whole KMS operations through the same limits).
    pub async fn call<T, F, Fut>(&self, mut op: F) -> Result<T, BackendError>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, BackendError>>,
    {
        let deadline = self.deadline(Instant::now());
        retry_observed(
            &self.retry,
            &self.retry_budget,
            deadline,
            self.retries.as_ref(),
            |attempt| self.attempt(attempt, op()),
        )
        .await
    }

    /// One attempt only, for calls whose outcome is unknown after a timeout (a blind retry could
    /// do the work twice).
    pub async fn once<T>(
        &self,
        call: impl Future<Output = Result<T, BackendError>>,
    ) -> Result<T, BackendError> {
        let now = Instant::now();
        let deadline = self.deadline(now);
        let deadline = self
            .retry
            .spec()
            .attempt_timeout
            .map_or(deadline, |t| (now + t).min(deadline));
        self.attempt(Attempt { index: 0, deadline }, call).await
    }
}

#[async_trait]
impl Backend for Resilient {
    fn name(&self) -> &'static str {
        self.inner.name()
    }

    async fn create_version(&self, key: KeyRef<'_>) -> Result<(), BackendError> {
        self.limits.once(self.inner.create_version(key)).await
    }

    async fn encrypt(
        &self,
        key: KeyRef<'_>,
        aad: &[u8],
        plaintext: &[u8],
    ) -> Result<Vec<u8>, BackendError> {
        self.limits
            .call(|| self.inner.encrypt(key, aad, plaintext))
            .await
    }

    async fn decrypt(
        &self,
        key: KeyRef<'_>,
        aad: &[u8],
        sealed: &[u8],
    ) -> Result<Zeroizing<Vec<u8>>, BackendError> {
        self.limits
            .call(|| self.inner.decrypt(key, aad, sealed))
            .await
    }

    async fn destroy(&self, key_id: &str, versions: &[u32]) -> Result<(), BackendError> {
        // Destroying what is already gone succeeds, so a retry is safe.
        self.limits
            .call(|| self.inner.destroy(key_id, versions))
            .await
    }

    async fn random(&self, n: usize) -> Result<Zeroizing<Vec<u8>>, BackendError> {
        self.limits.call(|| self.inner.random(n)).await
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;
    use std::sync::atomic::{AtomicU32, Ordering};

    use super::*;
    use crate::kms::{ErrorKind, KmsError};
    use crate::limits::{
        BreakerMetrics, BreakerSpec, BudgetSpec, RetryBudgetSpec, RetrySpec, State,
    };

    #[derive(Debug, Clone, Copy)]
    enum Mode {
        Ok,
        Fail(BackendErrorKind),
        /// Fail with `Unavailable` this many times, then succeed.
        FailTimes(u32),
        /// Refuse every call for the backend's own quota (an upstream `ThrottlingException`).
        Throttle,
        Hang,
    }

    #[derive(Debug)]
    struct Fake {
        calls: AtomicU32,
        mode: Mutex<Mode>,
    }

    impl Fake {
        fn new(mode: Mode) -> Arc<Self> {
            Arc::new(Self {
                calls: AtomicU32::new(0),
                mode: Mutex::new(mode),
            })
        }

        fn set(&self, mode: Mode) {
            *self.mode.lock().unwrap() = mode;
        }

        fn calls(&self) -> u32 {
            self.calls.load(Ordering::SeqCst)
        }

        async fn run(&self) -> Result<(), BackendError> {
            self.calls.fetch_add(1, Ordering::SeqCst);
            let mode = *self.mode.lock().unwrap();
            match mode {
                Mode::Ok => Ok(()),
                Mode::Fail(kind) => Err(BackendError::new(kind)),
                Mode::FailTimes(0) => Ok(()),
                Mode::FailTimes(n) => {
                    self.set(Mode::FailTimes(n - 1));
                    Err(BackendError::new(BackendErrorKind::Unavailable))
                }
                Mode::Throttle => Err(BackendError::throttled(std::io::Error::other(
                    "upstream ThrottlingException",
                ))),
                Mode::Hang => std::future::pending().await,
            }
        }
    }

    #[async_trait]
    impl Backend for Fake {
        fn name(&self) -> &'static str {
            "fake"
        }
        async fn create_version(&self, _key: KeyRef<'_>) -> Result<(), BackendError> {
            self.run().await
        }
        async fn encrypt(
            &self,
            _key: KeyRef<'_>,
            _aad: &[u8],
            plaintext: &[u8],
        ) -> Result<Vec<u8>, BackendError> {
            self.run().await.map(|()| plaintext.to_vec())
        }
        async fn decrypt(
            &self,
            _key: KeyRef<'_>,
            _aad: &[u8],
            sealed: &[u8],
        ) -> Result<Zeroizing<Vec<u8>>, BackendError> {
            self.run().await.map(|()| Zeroizing::new(sealed.to_vec()))
        }
        async fn destroy(&self, _key_id: &str, _versions: &[u32]) -> Result<(), BackendError> {
            self.run().await
        }
        async fn random(&self, n: usize) -> Result<Zeroizing<Vec<u8>>, BackendError> {
            self.run().await.map(|()| Zeroizing::new(vec![0; n]))
        }
    }

    const KEY: KeyRef<'static> = KeyRef {
        key_id: "k",
        version: 1,
    };

    fn resilient(fake: &Arc<Fake>, outbound: Option<BudgetSpec>) -> Resilient {
        let registry = prometheus::Registry::new();
        let breaker = Breaker::new(
            "fake",
            BreakerSpec {
                consecutive_failures: 3,
                cool_down: Duration::from_secs(5),
                half_open_probes: 1,
                ..BreakerSpec::default()
            },
            &BreakerMetrics::register(&registry).unwrap(),
        )
        .unwrap();
        let retry = RetryPolicy::with_seed(
            RetrySpec {
                base: Duration::from_millis(10),
                cap: Duration::from_millis(100),
                max_attempts: 3,
                attempt_timeout: Some(Duration::from_millis(200)),
            },
            7,
        )
        .unwrap();
        Resilient::new(
            fake.clone(),
            Resilience {
                breaker: Arc::new(breaker),
                retry: Arc::new(retry),
                retry_budget: Arc::new(RetryBudget::new(RetryBudgetSpec::default()).unwrap()),
                outbound: outbound.map(|s| Arc::new(OutboundBudget::new(s).unwrap())),
                request_timeout: Duration::from_secs(2),
                retries: None,
            },
        )
    }

    #[test]
    fn each_attempt_is_a_child_span_with_the_backend_call_inside() {
        use opentelemetry::trace::TracerProvider as _;
        use opentelemetry_sdk::trace::{InMemorySpanExporter, SdkTracerProvider};
        use tracing_subscriber::layer::SubscriberExt as _;
        use tracing_subscriber::{Layer as _, Registry};

        let exporter = InMemorySpanExporter::default();
        let provider = SdkTracerProvider::builder()
            .with_simple_exporter(exporter.clone())
            .build();
        let subscriber = Registry::default().with(
            tracing_opentelemetry::layer()
                .with_tracer(provider.tracer("test"))
                .with_filter(crate::observe::telemetry::trace_filter()),
        );
        let fake = Fake::new(Mode::FailTimes(2));
        let metrics = Arc::new(
            crate::backend::metrics::BackendMetrics::register(
                &prometheus::Registry::new(),
                "fake",
                0.0,
                0.0,
            )
            .unwrap(),
        );
        let observed: Arc<dyn Backend> = Arc::new(crate::backend::observed::Observed::new(
            fake.clone(),
            metrics,
        ));
        let mut r = resilient(&fake, None);
        r.inner = observed;
        tracing::subscriber::with_default(subscriber, || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            let request = tracing::debug_span!("kms.request");
            rt.block_on(r.decrypt(KEY, b"", b"x").instrument(request))
                .unwrap();
        });
        provider.force_flush().unwrap();
        let spans = exporter.get_finished_spans().unwrap();
        let request = spans.iter().find(|s| s.name == "kms.request").unwrap();
        let mut attempts: Vec<_> = spans
            .iter()
            .filter(|s| s.name == "backend.attempt")
            .collect();
        attempts.sort_by_key(|s| s.start_time);
        assert_eq!(
            attempts.len(),
            3,
            "two failures and the success: {spans:#?}"
        );
        let attr = |s: &opentelemetry_sdk::trace::SpanData, k: &str| {
            s.attributes
                .iter()
                .find(|kv| kv.key.as_str() == k)
                .map(|kv| kv.value.to_string())
        };
        for (i, a) in attempts.iter().enumerate() {
            assert_eq!(a.parent_span_id, request.span_context.span_id());
            assert_eq!(attr(a, "attempt"), Some(i.to_string()));
            assert_eq!(attr(a, "retry"), Some((i > 0).to_string()));
            let calls: Vec<_> = spans
                .iter()
                .filter(|s| s.name == "backend" && s.parent_span_id == a.span_context.span_id())
                .collect();
            assert_eq!(calls.len(), 1, "one backend call inside attempt {i}");
        }
    }

    #[tokio::test(start_paused = true)]
    async fn retries_a_blip_and_succeeds() {
        let fake = Fake::new(Mode::FailTimes(2));
        let r = resilient(&fake, None);
        let out = r.decrypt(KEY, b"", b"secret").await.unwrap();
        assert_eq!(out.as_slice(), b"secret");
        assert_eq!(fake.calls(), 3);
        // Two failures then a success: the run of failures was reset, the breaker stays closed.
        assert_eq!(r.limits().breaker.state(), State::Closed);
    }

    #[tokio::test(start_paused = true)]
    async fn an_outage_opens_the_breaker_and_calls_then_fail_fast() {
        let fake = Fake::new(Mode::Fail(BackendErrorKind::Unavailable));
        let r = resilient(&fake, None);
        let err = r.encrypt(KEY, b"", b"x").await.unwrap_err();
        assert!(err.is_retryable());
        assert_eq!(fake.calls(), 3, "every attempt reached the backend");
        assert_eq!(r.limits().breaker.state(), State::Open);

        let start = Instant::now();
        for _ in 0..20 {
            let err = r.encrypt(KEY, b"", b"x").await.unwrap_err();
            assert_eq!(err.kind, BackendErrorKind::Unavailable);
            assert!(
                err.source
                    .as_deref()
                    .is_some_and(|s| s.is::<crate::limits::Open>())
            );
            assert_eq!(KmsError::from(err).kind(), ErrorKind::DependencyTimeout);
        }
        assert_eq!(Instant::now(), start, "no backoff while open");
        assert_eq!(fake.calls(), 3, "the backend was left alone");

        // Recovery: after the cool-down one probe goes through and closes the breaker.
        fake.set(Mode::Ok);
        tokio::time::advance(Duration::from_secs(5)).await;
        r.encrypt(KEY, b"", b"x").await.unwrap();
        assert_eq!(r.limits().breaker.state(), State::Closed);
    }

    #[tokio::test(start_paused = true)]
    async fn client_errors_are_not_retried_and_never_trip_the_breaker() {
        let fake = Fake::new(Mode::Fail(BackendErrorKind::InvalidCiphertext));
        let r = resilient(&fake, None);
        for _ in 0..10 {
            let err = r.decrypt(KEY, b"", b"x").await.unwrap_err();
            assert_eq!(err.kind, BackendErrorKind::InvalidCiphertext);
        }
        assert_eq!(fake.calls(), 10);
        assert_eq!(r.limits().breaker.state(), State::Closed);
    }

    #[tokio::test(start_paused = true)]
    async fn hung_attempts_time_out_and_count_as_failures() {
        let fake = Fake::new(Mode::Hang);
        let r = resilient(&fake, None);
        let start = Instant::now();
        let err = r.random(32).await.unwrap_err();
        assert_eq!(
            err.retry_reason(),
            Some(crate::limits::RetryReason::Timeout)
        );
        assert_eq!(fake.calls(), 3);
        // Three 200 ms attempts plus backoff, well inside the 2 s request timeout.
        assert!(Instant::now() - start < Duration::from_secs(1));
        assert_eq!(r.limits().breaker.state(), State::Open);
    }

    #[tokio::test(start_paused = true)]
    async fn create_version_is_attempted_once() {
        let fake = Fake::new(Mode::Fail(BackendErrorKind::Unavailable));
        let r = resilient(&fake, None);
        assert!(r.create_version(KEY).await.is_err());
        assert_eq!(fake.calls(), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn an_empty_outbound_budget_is_a_throttle() {
        let fake = Fake::new(Mode::Ok);
        let r = resilient(
            &fake,
            Some(BudgetSpec {
                per_second: 1.0,
                burst: 1,
            }),
        );
        r.destroy("k", &[1]).await.unwrap();
        // The next token is 1 s away, past the 200 ms attempt deadline: refused at once, not retried.
        let err = r.destroy("k", &[1]).await.unwrap_err();
        assert_eq!(fake.calls(), 1);
        assert_eq!(KmsError::from(err).kind(), ErrorKind::Throttling);
        assert_eq!(
            KmsError::from(BackendError::new(BackendErrorKind::Unavailable)).kind(),
            ErrorKind::DependencyTimeout
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_throttling_backend_is_retried_and_never_opens_the_breaker() {
        let fake = Fake::new(Mode::Throttle);
        let r = resilient(&fake, None);
        // Three times the breaker's failure threshold, each call with its retries.
        for i in 0..9 {
            let err = r.decrypt(KEY, b"", b"x").await.unwrap_err();
            if i == 0 {
                assert_eq!(fake.calls(), 3, "retried up to max_attempts, with backoff");
            }
            let kms = KmsError::from(err);
            assert_eq!(kms.kind(), ErrorKind::Throttling);
            assert!(kms.is_retryable(), "a stale cached answer may stand in");
            assert_eq!(r.limits().breaker.state(), State::Closed);
        }
        // Later calls retry less: the retry budget, not the breaker, bounds a throttled backend.
        assert!((9..27).contains(&fake.calls()), "{}", fake.calls());
        // A real outage still opens it.
        fake.set(Mode::Fail(BackendErrorKind::Unavailable));
        for _ in 0..3 {
            let _ = r.decrypt(KEY, b"", b"x").await;
        }
        assert_eq!(r.limits().breaker.state(), State::Open);
    }
}
