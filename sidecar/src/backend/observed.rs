//! A [`Backend`] wrapper that measures every call into the real backend (count, latency, outcome,
//! cost) and emits a tracing span for it. Retries and breakers wrap this, so each attempt is counted.

use std::sync::Arc;
use std::time::Instant;

use async_trait::async_trait;
use tracing::Instrument as _;
use zeroize::Zeroizing;

use super::{Backend, BackendError, KeyRef};
use crate::backend::metrics::{BackendMetrics, BackendOp};

/// Measures an inner backend.
#[derive(Debug)]
pub struct Observed {
    inner: Arc<dyn Backend>,
    metrics: Arc<BackendMetrics>,
}

impl Observed {
    pub fn new(inner: Arc<dyn Backend>, metrics: Arc<BackendMetrics>) -> Self {
        Self { inner, metrics }
    }

    async fn measure<T>(
        &self,
        op: BackendOp,
        call: impl std::future::Future<Output = Result<T, BackendError>>,
    ) -> Result<T, BackendError> {
        let started = Instant::now();
        let span = tracing::debug_span!(
            "backend",
            backend = self.inner.name(),
            operation = op.as_str()
        );
        let result = call.instrument(span).await;
        self.metrics
            .record(op, result.as_ref().err().map(|e| e.kind), started.elapsed());
        result
    }
}

#[async_trait]
impl Backend for Observed {
    fn name(&self) -> &'static str {
        self.inner.name()
    }

    async fn create_version(&self, key: KeyRef<'_>) -> Result<(), BackendError> {
        self.measure(BackendOp::CreateVersion, self.inner.create_version(key))
            .await
    }

    async fn encrypt(
        &self,
        key: KeyRef<'_>,
        aad: &[u8],
        plaintext: &[u8],
    ) -> Result<Vec<u8>, BackendError> {
        self.measure(BackendOp::Encrypt, self.inner.encrypt(key, aad, plaintext))
            .await
    }

    async fn decrypt(
        &self,
        key: KeyRef<'_>,
        aad: &[u8],
        sealed: &[u8],
    ) -> Result<Zeroizing<Vec<u8>>, BackendError> {
        self.measure(BackendOp::Decrypt, self.inner.decrypt(key, aad, sealed))
            .await
    }

    async fn destroy(&self, key_id: &str, versions: &[u32]) -> Result<(), BackendError> {
        self.measure(BackendOp::Destroy, self.inner.destroy(key_id, versions))
            .await
    }

    async fn random(&self, n: usize) -> Result<Zeroizing<Vec<u8>>, BackendError> {
        self.measure(BackendOp::Random, self.inner.random(n)).await
    }
}
