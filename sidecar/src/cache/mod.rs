//! Caches that take the backend off the hot path: Decrypt results ([`DecryptCache`]) and
//! pre-generated data keys ([`pool::DataKeyPool`]).
//!
//! Both sit *after* authorization in every operation, so a revoked client or a tightened policy
//! never gets a cache hit; both hold plaintext only in zeroizing buffers that are wiped when the last
//! reference goes (eviction, expiry, invalidation).

pub mod pool;
pub mod reuse;

use std::sync::Arc;
use std::time::Duration;

use moka::future::Cache;
use prometheus::{IntCounter, IntCounterVec, IntGaugeVec, Opts, Registry};
use sha2::{Digest, Sha256};
use tokio::time::Instant;
use zeroize::Zeroizing;

use crate::keys::Index;
use crate::kms::{EncryptionContext, KmsError};

/// Whether a response came from the cache.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum CacheOutcome {
    Hit,
    Miss,
    /// The operation does not use a cache.
    #[default]
    None,
}

impl CacheOutcome {
    pub const ALL: [CacheOutcome; 3] = [CacheOutcome::Hit, CacheOutcome::Miss, CacheOutcome::None];

    pub const fn as_str(self) -> &'static str {
        match self {
            CacheOutcome::Hit => "hit",
            CacheOutcome::Miss => "miss",
            CacheOutcome::None => "none",
        }
    }
}

/// Decrypt cache settings.
#[derive(Debug, Clone, Copy)]
pub struct CacheSettings {
    /// 0 disables the cache.
    pub max_entries: u64,
    pub max_bytes: u64,
    /// How long a plaintext is served from the cache.
    pub ttl: Duration,
    /// How long past `ttl` an entry may still be served while the backend is failing.
    pub stale_grace: Duration,
}

/// `kms_sidecar_cache_*` metrics for one cache.
#[derive(Debug, Clone)]
pub struct CacheMetrics {
    hit: IntCounter,
    miss: IntCounter,
    stale: IntCounter,
    entries: prometheus::IntGauge,
    stale_entries: prometheus::IntGauge,
}

/// The `cache_*` families, registered once and shared by every cache.
#[derive(Debug, Clone)]
pub struct CacheFamilies {
    requests: IntCounterVec,
    entries: IntGaugeVec,
    stale_entries: IntGaugeVec,
}

impl CacheFamilies {
    pub fn register(registry: &Registry) -> prometheus::Result<Self> {
        let f = Self {
            requests: IntCounterVec::new(
                Opts::new(
                    "kms_sidecar_cache_requests_total",
                    "Cache lookups by cache and result (hit, miss, stale).",
                ),
                &["cache", "result"],
            )?,
            entries: IntGaugeVec::new(
                Opts::new(
                    "kms_sidecar_cache_entries",
                    "Entries held by each cache (pooled data keys for the pool).",
                ),
                &["cache"],
            )?,
            stale_entries: IntGaugeVec::new(
                Opts::new(
                    "kms_sidecar_cache_stale_entries",
                    "Cached plaintexts older than the TTL or made under a key version that has since been rotated.",
                ),
                &["cache"],
            )?,
        };
        registry.register(Box::new(f.requests.clone()))?;
        registry.register(Box::new(f.entries.clone()))?;
        registry.register(Box::new(f.stale_entries.clone()))?;
        Ok(f)
    }

    pub fn family_names() -> [&'static str; 3] {
        [
            "kms_sidecar_cache_requests_total",
            "kms_sidecar_cache_entries",
            "kms_sidecar_cache_stale_entries",
        ]
    }

    /// Pre-resolved handles for cache `name`.
    pub fn for_cache(&self, name: &str) -> CacheMetrics {
        CacheMetrics {
            hit: self.requests.with_label_values(&[name, "hit"]),
            miss: self.requests.with_label_values(&[name, "miss"]),
            stale: self.requests.with_label_values(&[name, "stale"]),
            entries: self.entries.with_label_values(&[name]),
            stale_entries: self.stale_entries.with_label_values(&[name]),
        }
    }
}

/// One cached plaintext.
struct Entry {
    plaintext: Zeroizing<Vec<u8>>,
    /// Shared, so that a hit hands it out without copying it.
    key_id: Arc<str>,
    version: u32,
    inserted: Instant,
}

impl std::fmt::Debug for Entry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Entry({}/{}, [redacted])", self.key_id, self.version)
    }
}

/// The cache key: SHA-256 over the ciphertext, the canonical context, the key id and the algorithm,
/// each length-prefixed. A different context can never hit another context's entry.
pub fn cache_key(
    blob: &[u8],
    context: &EncryptionContext,
    key_id: &str,
    algorithm: &str,
) -> [u8; 32] {
    let mut h = Sha256::new();
    for part in [blob, key_id.as_bytes(), algorithm.as_bytes()] {
        h.update((part.len() as u64).to_be_bytes());
        h.update(part);
    }
    h.update((context.len() as u64).to_be_bytes());
    for (k, v) in context {
        h.update((k.len() as u64).to_be_bytes());
        h.update(k.as_bytes());
        h.update((v.len() as u64).to_be_bytes());
        h.update(v.as_bytes());
    }
    h.finalize().into()
}

/// Decrypt results by ciphertext and context. Clones share one cache.
#[derive(Debug, Clone)]
pub struct DecryptCache {
    cache: Option<Cache<[u8; 32], Arc<Entry>>>,
    settings: CacheSettings,
    metrics: Option<CacheMetrics>,
}

impl DecryptCache {
    pub fn new(settings: CacheSettings, metrics: CacheMetrics) -> Self {
        let cache = (settings.max_entries > 0 && settings.max_bytes > 0).then(|| {
            // Each entry weighs at least max_bytes / max_entries, so both bounds hold at once.
            let floor = (settings.max_bytes / settings.max_entries).max(1);
            Cache::builder()
                .max_capacity(settings.max_bytes)
                .weigher(move |_, e: &Arc<Entry>| {
                    u32::try_from((e.plaintext.len() as u64 + 128).max(floor)).unwrap_or(u32::MAX)
                })
                .time_to_live(settings.ttl + settings.stale_grace)
                .support_invalidation_closures()
                .build()
        });
        Self {
            cache,
            settings,
            metrics: Some(metrics),
        }
    }

    pub fn enabled(&self) -> bool {
        self.cache.is_some()
    }

    /// No cache: every lookup loads (tools and tests).
    pub fn disabled() -> Self {
        let settings = CacheSettings {
            max_entries: 0,
            max_bytes: 0,
            ttl: Duration::ZERO,
            stale_grace: Duration::ZERO,
        };
        Self {
            cache: None,
            settings,
            metrics: None,
        }
    }

    fn count(&self, pick: impl Fn(&CacheMetrics) -> &IntCounter) {
        if cfg!(feature = "bench-noop-metrics") {
            return;
        }
        if let Some(m) = &self.metrics {
            pick(m).inc();
        }
    }

    /// Serves a plaintext from the cache, or runs `load` (one call for all concurrent misses of the
    /// same entry) and caches its result. An entry past the TTL but within the stale grace is served
    /// without a load when `serve_stale` (the breaker is open), and in place of a load that failed
    /// with a retryable error (stale-if-error).
    pub async fn get_or_load<F>(
        &self,
        key: [u8; 32],
        key_id: &str,
        version: u32,
        serve_stale: bool,
        load: F,
    ) -> Result<(Zeroizing<Vec<u8>>, CacheOutcome), KmsError>
    where
        F: std::future::Future<Output = Result<Zeroizing<Vec<u8>>, KmsError>>,
    {
        let load = async { load.await.map(|p| (p, Arc::from(key_id), version)) };
        self.get_or_load_keyed(key, serve_stale, load)
            .await
            .map(|(p, _, outcome)| (p, outcome))
    }

    /// [`get_or_load`](Self::get_or_load) for callers that learn the key only from the load (proxy
    /// mode: an upstream ciphertext is opaque, the upstream's answer names its key). `load` yields
    /// the plaintext, the key id and version it was under; the answer includes the key id, cached
    /// with the entry, so that a hit is authorized against the same key as the miss was.
    pub async fn get_or_load_keyed<F>(
        &self,
        key: [u8; 32],
        serve_stale: bool,
        load: F,
    ) -> Result<(Zeroizing<Vec<u8>>, Arc<str>, CacheOutcome), KmsError>
    where
        F: std::future::Future<Output = Result<(Zeroizing<Vec<u8>>, Arc<str>, u32), KmsError>>,
    {
        let Some(cache) = &self.cache else {
            return load.await.map(|(p, k, _)| (p, k, CacheOutcome::None));
        };
        let mut stale = None;
        if let Some(entry) = cache.get(&key).await {
            let age = entry.inserted.elapsed();
            if age <= self.settings.ttl {
                self.count(|m| &m.hit);
                return Ok((
                    entry.plaintext.clone(),
                    entry.key_id.clone(),
                    CacheOutcome::Hit,
                ));
            }
            // The cache's own expiry is TTL + grace, but a stale entry put back below must not
            // outlive the grace.
            if age <= self.settings.ttl + self.settings.stale_grace {
                if serve_stale {
                    self.count(|m| &m.stale);
                    return Ok((
                        entry.plaintext.clone(),
                        entry.key_id.clone(),
                        CacheOutcome::Hit,
                    ));
                }
                stale = Some(entry);
            }
            cache.invalidate(&key).await;
        }
        let loaded = cache
            .try_get_with(key, async {
                match load.await {
                    Ok((plaintext, key_id, version)) => Ok(Arc::new(Entry {
                        plaintext,
                        key_id,
                        version,
                        inserted: Instant::now(),
                    })),
                    // Stale-if-error: the backend failed in a way a retry may cure, so the expired
                    // plaintext stands in (and is put back for the next caller) until the grace runs
                    // out. Decided inside the shared load, so that callers who joined it after the
                    // entry was taken out get the stand-in too, not the error.
                    Err(e) if e.is_retryable() => stale.ok_or(e),
                    Err(e) => Err(e),
                }
            })
            .await;
        match loaded {
            Ok(entry) if entry.inserted.elapsed() > self.settings.ttl => {
                self.count(|m| &m.stale);
                Ok((
                    entry.plaintext.clone(),
                    entry.key_id.clone(),
                    CacheOutcome::Hit,
                ))
            }
            Ok(entry) => {
                self.count(|m| &m.miss);
                Ok((
                    entry.plaintext.clone(),
                    entry.key_id.clone(),
                    CacheOutcome::Miss,
                ))
            }
            Err(e) => {
                self.count(|m| &m.miss);
                Err(KmsError::shared(e))
            }
        }
    }

    /// Drops every entry of `key_id` (disabled, pending deletion, rotated, policy changed).
    pub fn invalidate_key(&self, key_id: &str) {
        if let Some(cache) = &self.cache {
            let id = key_id.to_string();
            if let Err(e) = cache.invalidate_entries_if(move |_, entry| *entry.key_id == *id) {
                tracing::warn!(error = %e, "decrypt cache invalidation failed; entries expire by TTL");
            }
        }
    }

    /// Updates the entry gauges: entries, and stale ones (past the TTL, or of a rotated-away version).
    pub fn refresh_gauges(&self, index: &Index) {
        let Some(cache) = &self.cache else { return };
        let mut stale = 0i64;
        for (_, entry) in cache.iter() {
            let rotated = index
                .keys
                .get(&*entry.key_id)
                .is_none_or(|m| m.current_version() != entry.version);
            if rotated || entry.inserted.elapsed() > self.settings.ttl {
                stale += 1;
            }
        }
        if let Some(m) = &self.metrics {
            m.entries
                .set(i64::try_from(cache.entry_count()).unwrap_or(i64::MAX));
            m.stale_entries.set(stale);
        }
    }

    /// Runs pending evictions (tests and gauges want exact counts).
    pub async fn sync(&self) {
        if let Some(cache) = &self.cache {
            cache.run_pending_tasks().await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kms::ErrorKind;
    use std::sync::atomic::{AtomicUsize, Ordering};

    fn cache(ttl: Duration, entries: u64, bytes: u64) -> (DecryptCache, Registry) {
        let registry = Registry::new();
        let families = CacheFamilies::register(&registry).unwrap();
        let settings = CacheSettings {
            max_entries: entries,
            max_bytes: bytes,
            ttl,
            stale_grace: Duration::from_secs(60),
        };
        (
            DecryptCache::new(settings, families.for_cache("decrypt")),
            registry,
        )
    }

    fn plain(b: &[u8]) -> Result<Zeroizing<Vec<u8>>, KmsError> {
        Ok(Zeroizing::new(b.to_vec()))
    }

    #[test]
    fn keys_separate_contexts_and_blobs() {
        let mut a = EncryptionContext::new();
        a.insert("t".into(), "a".into());
        let mut b = EncryptionContext::new();
        b.insert("t".into(), "b".into());
        assert_ne!(cache_key(b"x", &a, "k", "S"), cache_key(b"x", &b, "k", "S"));
        assert_ne!(cache_key(b"x", &a, "k", "S"), cache_key(b"y", &a, "k", "S"));
        assert_ne!(cache_key(b"xk", &a, "", "S"), cache_key(b"x", &a, "k", "S"));
    }

    #[tokio::test(start_paused = true)]
    async fn hit_then_ttl_expiry_then_stale() {
        let (c, _r) = cache(Duration::from_secs(300), 100, 1 << 20);
        let k = [1u8; 32];
        let (_, o) = c
            .get_or_load(k, "key", 1, false, async { plain(b"p") })
            .await
            .unwrap();
        assert_eq!(o, CacheOutcome::Miss);
        let (p, o) = c
            .get_or_load(k, "key", 1, false, async { panic!("no load on a hit") })
            .await
            .unwrap();
        assert_eq!((p.as_slice(), o), (&b"p"[..], CacheOutcome::Hit));
        tokio::time::advance(Duration::from_secs(301)).await;
        // Past the TTL: served only when stale is allowed (the backend is failing).
        let (_, o) = c
            .get_or_load(k, "key", 1, true, async { panic!("stale served") })
            .await
            .unwrap();
        assert_eq!(o, CacheOutcome::Hit);
        let loads = AtomicUsize::new(0);
        let (_, o) = c
            .get_or_load(k, "key", 1, false, async {
                loads.fetch_add(1, Ordering::SeqCst);
                plain(b"p")
            })
            .await
            .unwrap();
        assert_eq!((o, loads.load(Ordering::SeqCst)), (CacheOutcome::Miss, 1));
    }

    #[tokio::test(start_paused = true)]
    async fn stale_entries_stand_in_for_failed_loads_within_the_grace() {
        let (c, _r) = cache(Duration::from_secs(300), 100, 1 << 20);
        let k = [3u8; 32];
        let down =
            || async { Err(KmsError::new(ErrorKind::DependencyTimeout, "down").retryable()) };
        c.get_or_load(k, "key", 1, false, async { plain(b"p") })
            .await
            .unwrap();
        tokio::time::advance(Duration::from_secs(301)).await;
        // The breaker is not open (yet): the load is tried, fails, and the stale entry is served,
        // again and again, until the grace (60 s) is over.
        for _ in 0..3 {
            let (p, o) = c.get_or_load(k, "key", 1, false, down()).await.unwrap();
            assert_eq!((p.as_slice(), o), (&b"p"[..], CacheOutcome::Hit));
        }
        // A client error is not a backend failure: no stand-in.
        let err = c
            .get_or_load(k, "key", 1, false, async {
                Err(KmsError::new(ErrorKind::InvalidCiphertext, "bad"))
            })
            .await
            .unwrap_err();
        assert_eq!(err.kind(), ErrorKind::InvalidCiphertext);
        c.get_or_load(k, "key", 1, false, async { plain(b"p") })
            .await
            .unwrap();
        tokio::time::advance(Duration::from_secs(361)).await;
        let err = c.get_or_load(k, "key", 1, false, down()).await.unwrap_err();
        assert_eq!(err.kind(), ErrorKind::DependencyTimeout, "past the grace");
    }

    /// The reload of a stale entry takes it out of the cache; a caller who arrives while that
    /// reload is in flight joins it, and must get the stand-in as well when it fails (found by the
    /// soak test: cached Decrypts failed during a hanging outage).
    #[tokio::test(start_paused = true)]
    async fn callers_joining_a_failing_reload_get_the_stale_entry_too() {
        async fn slow_failure() -> Result<Zeroizing<Vec<u8>>, KmsError> {
            tokio::time::sleep(Duration::from_millis(100)).await;
            Err(KmsError::new(ErrorKind::DependencyTimeout, "down").retryable())
        }
        let (c, registry) = cache(Duration::from_secs(300), 100, 1 << 20);
        let c = Arc::new(c);
        let k = [4u8; 32];
        c.get_or_load(k, "key", 1, false, async { plain(b"p") })
            .await
            .unwrap();
        tokio::time::advance(Duration::from_secs(301)).await;
        let first = {
            let c = c.clone();
            tokio::spawn(async move { c.get_or_load(k, "key", 1, false, slow_failure()).await })
        };
        tokio::time::sleep(Duration::from_millis(10)).await;
        let (p, o) = c
            .get_or_load(k, "key", 1, false, slow_failure())
            .await
            .expect("the joining caller gets the stale entry");
        assert_eq!((p.as_slice(), o), (&b"p"[..], CacheOutcome::Hit));
        let (p, o) = first.await.unwrap().unwrap();
        assert_eq!((p.as_slice(), o), (&b"p"[..], CacheOutcome::Hit));
        // Put back: the next caller finds it again (and tries the backend again).
        let (p, _) = c
            .get_or_load(k, "key", 1, false, slow_failure())
            .await
            .unwrap();
        assert_eq!(p.as_slice(), b"p");
        let text = prometheus::TextEncoder::new()
            .encode_to_string(&registry.gather())
            .unwrap();
        assert!(
            text.contains(
                "kms_sidecar_cache_requests_total{cache=\"decrypt\",result=\"stale\"} 3\n"
            ),
            "{text}"
        );
    }

    #[tokio::test]
    async fn errors_are_not_cached_and_invalidation_works() {
        let (c, _r) = cache(Duration::from_secs(300), 100, 1 << 20);
        let k = [2u8; 32];
        let err = c
            .get_or_load(k, "key", 1, false, async {
                Err(KmsError::new(ErrorKind::InvalidCiphertext, "bad"))
            })
            .await
            .unwrap_err();
        assert_eq!(err.kind(), ErrorKind::InvalidCiphertext);
        c.get_or_load(k, "key", 1, false, async { plain(b"p") })
            .await
            .unwrap();
        c.invalidate_key("other");
        c.sync().await;
        let (_, o) = c
            .get_or_load(k, "key", 1, false, async { plain(b"p") })
            .await
            .unwrap();
        assert_eq!(o, CacheOutcome::Hit);
        c.invalidate_key("key");
        c.sync().await;
        let (_, o) = c
            .get_or_load(k, "key", 1, false, async { plain(b"p") })
            .await
            .unwrap();
        assert_eq!(o, CacheOutcome::Miss);
    }

    #[tokio::test]
    async fn bounded_by_entries_and_bytes() {
        // 10 entries of at most 1 KiB total: 100 small entries keep at most 10.
        let (c, _r) = cache(Duration::from_secs(300), 10, 10 * 1024);
        for i in 0..100u8 {
            c.get_or_load([i; 32], "key", 1, false, async { plain(&[i; 16]) })
                .await
                .unwrap();
        }
        c.sync().await;
        let n = c.cache.as_ref().unwrap().entry_count();
        assert!(n <= 10, "{n}");
        // Large entries are bounded by bytes: 4 KiB each in a 10 KiB cache keeps at most 2.
        let (c, _r) = cache(Duration::from_secs(300), 1000, 10 * 1024);
        for i in 0..20u8 {
            c.get_or_load([i; 32], "key", 1, false, async { plain(&[i; 4096]) })
                .await
                .unwrap();
        }
        c.sync().await;
        let n = c.cache.as_ref().unwrap().entry_count();
        assert!(n <= 2, "{n}");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_misses_are_coalesced() {
        let (c, _r) = cache(Duration::from_secs(300), 100, 1 << 20);
        let c = Arc::new(c);
        let loads = Arc::new(AtomicUsize::new(0));
        let mut tasks = tokio::task::JoinSet::new();
        for _ in 0..100 {
            let (c, loads) = (c.clone(), loads.clone());
            tasks.spawn(async move {
                c.get_or_load([9; 32], "key", 1, false, async move {
                    loads.fetch_add(1, Ordering::SeqCst);
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    plain(b"p")
                })
                .await
                .unwrap()
            });
        }
        while let Some(r) = tasks.join_next().await {
            assert_eq!(r.unwrap().0.as_slice(), b"p");
        }
        assert_eq!(loads.load(Ordering::SeqCst), 1);
    }
}
