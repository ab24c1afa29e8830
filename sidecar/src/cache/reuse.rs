//! Opt-in data-key reuse for GenerateDataKey, in the manner of the AWS Encryption SDK's caching
//! materials manager: for keys an operator lists, one data key is handed out again to the same
//! principal, for the same encryption context and length, until it is `max_age` old or has been
//! handed out `max_uses` times; then a fresh key is made. Reuse trades the "one data key per
//! message" property for fewer backend calls, which is why it is off unless a key is named.
//!
//! Entries are partitioned by principal: being allowed GenerateDataKey does not mean being allowed
//! to decrypt what another principal encrypted. Authorization and key-state checks run before a
//! lookup (as for every cached answer), and an entry made under a version that has since rotated is
//! never handed out. There is no byte limit: the data a key encrypts never passes through a KMS
//! API, so a sidecar cannot count it (docs/resilience.md).

use std::collections::{BTreeSet, HashMap};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};
use zeroize::Zeroizing;

use super::CacheMetrics;
use crate::kms::EncryptionContext;

/// Reuse settings; `keys` empty turns reuse off.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ReuseSettings {
    /// Key ids or alias names (`alias/...`) whose data keys may be reused.
    pub keys: BTreeSet<String>,
    /// A data key is not handed out again once this old.
    pub max_age: Duration,
    /// A data key is handed out at most this many times in all (the first time included).
    pub max_uses: u64,
    /// Reusable data keys held at once (principal x key x context x length).
    pub max_entries: usize,
}

/// The partition one reusable data key belongs to.
pub type Slot = [u8; 32];

struct Reused {
    key_id: String,
    version: u32,
    plaintext: Zeroizing<Vec<u8>>,
    blob: Vec<u8>,
    created: Instant,
    uses: u64,
}

impl std::fmt::Debug for Reused {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "Reused({}/v{}, uses {}, [redacted])",
            self.key_id, self.version, self.uses
        )
    }
}

/// The reusable data keys.
#[derive(Debug)]
pub struct DataKeyReuse {
    settings: ReuseSettings,
    entries: Mutex<HashMap<Slot, Reused>>,
    metrics: Option<CacheMetrics>,
}

impl DataKeyReuse {
    pub fn new(settings: ReuseSettings, metrics: CacheMetrics) -> Self {
        Self {
            settings,
            entries: Mutex::new(HashMap::new()),
            metrics: Some(metrics),
        }
    }

    /// No reuse: every GenerateDataKey gets a fresh key (the default).
    pub fn disabled() -> Self {
        Self {
            settings: ReuseSettings::default(),
            entries: Mutex::new(HashMap::new()),
            metrics: None,
        }
    }

    /// Whether any key opted in.
    pub fn enabled(&self) -> bool {
        !self.settings.keys.is_empty()
    }

    /// Whether the key `key_id`, known by `aliases`, opted in.
    pub fn applies<'a>(&self, key_id: &str, mut aliases: impl Iterator<Item = &'a str>) -> bool {
        !self.settings.keys.is_empty()
            && (self.settings.keys.contains(key_id)
                || aliases.any(|a| self.settings.keys.contains(a)))
    }

    /// The partition for a call: principal, key, canonical context and length, each
    /// length-prefixed so no two different calls share a slot.
    pub fn slot(principal: &str, key_id: &str, context: &EncryptionContext, len: usize) -> Slot {
        let mut h = Sha256::new();
        for part in [principal.as_bytes(), key_id.as_bytes()] {
            h.update((part.len() as u64).to_be_bytes());
            h.update(part);
        }
        h.update((len as u64).to_be_bytes());
        h.update((context.len() as u64).to_be_bytes());
        for (k, v) in context {
            h.update((k.len() as u64).to_be_bytes());
            h.update(k.as_bytes());
            h.update((v.len() as u64).to_be_bytes());
            h.update(v.as_bytes());
        }
        h.finalize().into()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Slot, Reused>> {
        self.entries
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The data key of `slot` again, if it is younger than `max_age`, has uses left and was made
    /// under `version`; counts the use. An exhausted or outdated entry is dropped (zeroized).
    pub fn take(
        &self,
        slot: &Slot,
        version: u32,
        now: Instant,
    ) -> Option<(Zeroizing<Vec<u8>>, Vec<u8>)> {
        let mut entries = self.lock();
        let usable = entries.get(slot).is_some_and(|e| {
            e.version == version
                && e.uses < self.settings.max_uses
                && now.saturating_duration_since(e.created) < self.settings.max_age
        });
        let taken = if usable {
            entries.get_mut(slot).map(|e| {
                e.uses += 1;
                (e.plaintext.clone(), e.blob.clone())
            })
        } else {
            entries.remove(slot);
            None
        };
        if entries
            .get(slot)
            .is_some_and(|e| e.uses >= self.settings.max_uses)
        {
            entries.remove(slot);
        }
        drop(entries);
        if let Some(m) = &self.metrics {
            match taken {
                Some(_) => m.hit.inc(),
                None => m.miss.inc(),
            }
        }
        taken
    }

    /// Keeps a freshly made data key (already handed out once) for reuse.
    pub fn put(
        &self,
        slot: Slot,
        key_id: &str,
        version: u32,
        plaintext: &Zeroizing<Vec<u8>>,
        blob: &[u8],
        now: Instant,
    ) {
        if self.settings.max_uses <= 1 {
            return;
        }
        let mut entries = self.lock();
        if entries.len() >= self.settings.max_entries && !entries.contains_key(&slot) {
            let max_age = self.settings.max_age;
            entries.retain(|_, e| now.saturating_duration_since(e.created) < max_age);
            if entries.len() >= self.settings.max_entries {
                return;
            }
        }
        entries.insert(
            slot,
            Reused {
                key_id: key_id.to_string(),
                version,
                plaintext: plaintext.clone(),
                blob: blob.to_vec(),
                created: now,
                uses: 1,
            },
        );
    }

    /// Drops every reusable data key of `key_id` (disabled, deleted, rotated, policy changed).
    pub fn invalidate_key(&self, key_id: &str) {
        self.lock().retain(|_, e| e.key_id != key_id);
    }

    /// Entries held now.
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Updates the entries gauge.
    pub fn refresh_gauges(&self) {
        if let Some(m) = &self.metrics {
            m.entries.set(self.len() as i64);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reuse(max_age: u64, max_uses: u64, max_entries: usize) -> DataKeyReuse {
        DataKeyReuse {
            settings: ReuseSettings {
                keys: ["k".to_string(), "alias/orders".to_string()].into(),
                max_age: Duration::from_secs(max_age),
                max_uses,
                max_entries,
            },
            entries: Mutex::new(HashMap::new()),
            metrics: None,
        }
    }

    fn ctx(pairs: &[(&str, &str)]) -> EncryptionContext {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn key(b: u8) -> Zeroizing<Vec<u8>> {
        Zeroizing::new(vec![b; 32])
    }

    #[test]
    fn opt_in_by_id_or_alias() {
        let r = reuse(60, 3, 10);
        assert!(r.applies("k", std::iter::empty()));
        assert!(r.applies("other", ["alias/x", "alias/orders"].into_iter()));
        assert!(!r.applies("other", ["alias/x"].into_iter()));
        assert!(!DataKeyReuse::disabled().applies("k", std::iter::empty()));
    }

    #[test]
    fn max_uses_hold_exactly() {
        let r = reuse(60, 3, 10);
        let t = Instant::now();
        let s = DataKeyReuse::slot("alice", "k", &ctx(&[]), 32);
        assert!(r.take(&s, 1, t).is_none());
        r.put(s, "k", 1, &key(7), b"blob", t);
        // the fresh key was use 1; two more uses, then a fresh one
        for _ in 0..2 {
            let (p, b) = r.take(&s, 1, t).unwrap();
            assert_eq!(*p, vec![7; 32]);
            assert_eq!(b, b"blob");
        }
        assert!(r.take(&s, 1, t).is_none());
        assert!(r.is_empty(), "an exhausted key is dropped");
    }

    #[test]
    fn max_age_holds_exactly_and_rotation_ends_reuse() {
        let r = reuse(60, 100, 10);
        let t = Instant::now();
        let s = DataKeyReuse::slot("alice", "k", &ctx(&[]), 32);
        r.put(s, "k", 1, &key(1), b"b", t);
        assert!(r.take(&s, 1, t + Duration::from_millis(59_999)).is_some());
        assert!(r.take(&s, 1, t + Duration::from_secs(60)).is_none());
        r.put(s, "k", 1, &key(1), b"b", t);
        assert!(
            r.take(&s, 2, t).is_none(),
            "made under a rotated-away version"
        );
        r.put(s, "k", 2, &key(2), b"b", t);
        r.invalidate_key("k");
        assert!(r.take(&s, 2, t).is_none());
    }

    #[test]
    fn partitions_by_principal_context_and_length() {
        let base = DataKeyReuse::slot("alice", "k", &ctx(&[("a", "1")]), 32);
        for other in [
            DataKeyReuse::slot("bob", "k", &ctx(&[("a", "1")]), 32),
            DataKeyReuse::slot("alice", "k2", &ctx(&[("a", "1")]), 32),
            DataKeyReuse::slot("alice", "k", &ctx(&[("a", "2")]), 32),
            DataKeyReuse::slot("alice", "k", &ctx(&[]), 32),
            DataKeyReuse::slot("alice", "k", &ctx(&[("a", "1")]), 16),
            // length prefixes: "ab"+"c" is not "a"+"bc"
            DataKeyReuse::slot("alic", "ek", &ctx(&[("a", "1")]), 32),
        ] {
            assert_ne!(base, other);
        }
    }

    #[test]
    fn bounded_entries_and_single_use_keeps_nothing() {
        let r = reuse(60, 5, 2);
        let t = Instant::now();
        for i in 0..5u8 {
            let s = DataKeyReuse::slot(&format!("p{i}"), "k", &ctx(&[]), 32);
            r.put(s, "k", 1, &key(i), b"b", t);
        }
        assert_eq!(r.len(), 2);
        // once the held keys are too old, room is made for a new one
        let late = t + Duration::from_secs(61);
        r.put([9; 32], "k", 1, &key(9), b"b", late);
        assert_eq!(r.len(), 1);
        let single = reuse(60, 1, 10);
        single.put([1; 32], "k", 1, &key(1), b"b", t);
        assert!(single.is_empty());
        assert!(!format!("{:?}", r.lock().values().next()).contains('9'));
    }
}
