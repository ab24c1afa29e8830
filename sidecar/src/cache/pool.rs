//! Pre-generated data keys, so GenerateDataKey does not wait for the backend.
//!
//! Per KMS key, a queue of fresh 32-byte data keys (plaintext + ciphertext) made for the *empty*
//! encryption context under the key's current version. Each pooled key is handed out exactly once,
//! then a background task refills the queue when it falls below the low watermark. Requests with an
//! encryption context (the context is bound into the ciphertext, so it cannot be known in advance),
//! other lengths, or an empty pool are served on demand. Pooled keys of a rotated-away version are
//! discarded, never handed out. Authorization and key-state checks run before the pool is touched.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use arc_swap::ArcSwap;
use zeroize::Zeroizing;

use super::CacheMetrics;

/// Pool settings.
#[derive(Debug, Clone, Copy)]
pub struct PoolSettings {
    /// Keys held per KMS key; 0 disables the pool.
    pub size: usize,
    /// Refill when fewer than this many remain.
    pub low_watermark: usize,
}

/// The length of pooled data keys (AES_256, the common case).
pub const POOLED_LEN: usize = 32;

/// One pre-generated data key.
pub struct Pooled {
    pub plaintext: Zeroizing<Vec<u8>>,
    pub blob: Vec<u8>,
    pub version: u32,
}

impl std::fmt::Debug for Pooled {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Pooled(v{}, [redacted])", self.version)
    }
}

#[derive(Debug, Default)]
struct KeyPool {
    queue: Mutex<VecDeque<Pooled>>,
    refilling: AtomicBool,
}

/// Pools for every key that has been asked for a data key.
#[derive(Debug)]
pub struct DataKeyPool {
    pools: ArcSwap<HashMap<String, Arc<KeyPool>>>,
    create: Mutex<()>,
    settings: PoolSettings,
    metrics: Option<CacheMetrics>,
}

impl DataKeyPool {
    pub fn new(settings: PoolSettings, metrics: CacheMetrics) -> Self {
        Self {
            pools: ArcSwap::from_pointee(HashMap::new()),
            create: Mutex::new(()),
            settings,
            metrics: Some(metrics),
        }
    }

    /// No pool: every data key is generated on demand.
    pub fn disabled() -> Self {
        Self {
            pools: ArcSwap::from_pointee(HashMap::new()),
            create: Mutex::new(()),
            settings: PoolSettings {
                size: 0,
                low_watermark: 0,
            },
            metrics: None,
        }
    }

    pub fn enabled(&self) -> bool {
        self.settings.size > 0
    }

    fn pool(&self, key_id: &str) -> Option<Arc<KeyPool>> {
        if let Some(p) = self.pools.load().get(key_id) {
            return Some(p.clone());
        }
        let _guard = self.create.lock().ok()?;
        let current = self.pools.load();
        if let Some(p) = current.get(key_id) {
            return Some(p.clone());
        }
        let pool = Arc::new(KeyPool::default());
        let mut next = HashMap::clone(&current);
        next.insert(key_id.to_string(), pool.clone());
        self.pools.store(Arc::new(next));
        Some(pool)
    }

    /// Takes a pooled key of `version` for `key_id`; keys of other versions are discarded. Returns
    /// whether a refill should be started (the caller spawns it with access to the backend).
    pub fn take(&self, key_id: &str, version: u32) -> (Option<Pooled>, bool) {
        if !self.enabled() {
            return (None, false);
        }
        let Some(pool) = self.pool(key_id) else {
            return (None, false);
        };
        let (taken, remaining) = match pool.queue.lock() {
            Ok(mut q) => {
                q.retain(|p| p.version == version);
                (q.pop_front(), q.len())
            }
            Err(_) => (None, 0),
        };
        if let Some(m) = &self.metrics {
            match taken {
                Some(_) => m.hit.inc(),
                None => m.miss.inc(),
            }
        }
        let refill = remaining < self.settings.low_watermark.max(1)
            && !pool.refilling.swap(true, Ordering::AcqRel);
        (taken, refill)
    }

    /// How many keys the refill for `key_id` should make.
    pub fn wanted(&self, key_id: &str) -> usize {
        let held = self
            .pools
            .load()
            .get(key_id)
            .and_then(|p| p.queue.lock().ok().map(|q| q.len()))
            .unwrap_or(0);
        self.settings.size.saturating_sub(held)
    }

    /// Adds freshly generated keys (the refill task's output).
    pub fn put(&self, key_id: &str, keys: Vec<Pooled>) {
        if let Some(pool) = self.pool(key_id)
            && let Ok(mut q) = pool.queue.lock()
        {
            let room = self.settings.size.saturating_sub(q.len());
            q.extend(keys.into_iter().take(room));
        }
    }

    /// Marks the refill of `key_id` finished (whether it succeeded or not).
    pub fn refill_done(&self, key_id: &str) {
        if let Some(p) = self.pools.load().get(key_id) {
            p.refilling.store(false, Ordering::Release);
        }
    }

    /// Drops every pooled key of `key_id` (disabled, deleted, rotated).
    pub fn invalidate_key(&self, key_id: &str) {
        if let Some(p) = self.pools.load().get(key_id)
            && let Ok(mut q) = p.queue.lock()
        {
            q.clear();
        }
    }

    /// Updates the entries gauge (pooled keys across all KMS keys).
    pub fn refresh_gauges(&self) {
        let held: usize = self
            .pools
            .load()
            .values()
            .filter_map(|p| p.queue.lock().ok().map(|q| q.len()))
            .sum();
        if let Some(m) = &self.metrics {
            m.entries.set(i64::try_from(held).unwrap_or(i64::MAX));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cache::CacheFamilies;

    fn pool(size: usize, low: usize) -> DataKeyPool {
        let families = CacheFamilies::register(&prometheus::Registry::new()).unwrap();
        DataKeyPool::new(
            PoolSettings {
                size,
                low_watermark: low,
            },
            families.for_cache("data_key_pool"),
        )
    }

    fn keys(n: u8, version: u32) -> Vec<Pooled> {
        (0..n)
            .map(|i| Pooled {
                plaintext: Zeroizing::new(vec![i; 32]),
                blob: vec![i],
                version,
            })
            .collect()
    }

    #[test]
    fn each_key_once_and_refill_signalled_once() {
        let p = pool(4, 2);
        let (none, refill) = p.take("k", 1);
        assert!(none.is_none() && refill, "empty pool asks for a refill");
        assert!(!p.take("k", 1).1, "only one refill at a time");
        assert_eq!(p.wanted("k"), 4);
        p.put("k", keys(6, 1));
        p.refill_done("k");
        let mut seen = Vec::new();
        for _ in 0..4 {
            seen.push(p.take("k", 1).0.unwrap().blob[0]);
        }
        assert_eq!(
            seen,
            [0, 1, 2, 3],
            "at most `size` kept, each handed out once"
        );
        assert!(p.take("k", 1).0.is_none());
    }

    #[test]
    fn rotated_versions_are_discarded() {
        let p = pool(4, 1);
        p.put("k", keys(3, 1));
        assert!(
            p.take("k", 2).0.is_none(),
            "version 1 keys are never served for version 2"
        );
        assert_eq!(p.wanted("k"), 4);
        p.put("k", keys(2, 2));
        p.invalidate_key("k");
        assert!(p.take("k", 2).0.is_none());
        assert!(pool(0, 0).take("k", 1).0.is_none());
    }
}
