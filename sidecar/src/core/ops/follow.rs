//! A fleet's changes reach this sidecar's caches: when the etcd watch brings a key that was
//! disabled, scheduled for deletion, deleted, re-policied or rotated on another sidecar, what this
//! sidecar holds for it (cached plaintexts, pooled and reusable data keys) is dropped, as it is when
//! the same change is made here (`lifecycle.rs`, `policies.rs`).
//!
//! Enforcement does not depend on this: every call checks the key's state and policy in the index
//! before it asks a cache, and the index follows the watch. What this adds is that plaintexts and
//! data keys of a key the fleet has disabled or deleted do not linger in memory until their TTL,
//! and that a data key pooled or kept for reuse under a version the fleet rotated away is not
//! handed out.

use std::sync::{Arc, Mutex, PoisonError};

use super::Kms;
use crate::keys::Index;
use crate::keys::registry::{Change, Follower, Section};

/// Follows the registry after the key store (its index is already updated when this runs).
#[derive(Debug)]
pub struct CacheFollower {
    kms: Kms,
    /// The index as of the last change this follower handled.
    seen: Mutex<Arc<Index>>,
}

impl CacheFollower {
    pub fn new(kms: Kms) -> Self {
        let seen = Mutex::new(Arc::clone(&kms.keys.snapshot()));
        Self { kms, seen }
    }

    /// Compares the key store's index with the one seen last and drops what changed keys hold.
    fn sync(&self) {
        let now = Arc::clone(&self.kms.keys.snapshot());
        let mut seen = self.seen.lock().unwrap_or_else(PoisonError::into_inner);
        for (id, before) in &seen.keys {
            match now.keys.get(id) {
                Some(after) if Arc::ptr_eq(before, after) => {}
                None => self.kms.invalidate(id),
                Some(after) if after.state != before.state || after.policy != before.policy => {
                    self.kms.invalidate(id)
                }
                Some(after) if after.current_version() != before.current_version() => {
                    // As for a rotation made here: old plaintexts stay valid (dropped only when
                    // configured), reusable data keys of the old version never are.
                    if self.kms.invalidate_on_rotation {
                        self.kms.cache.invalidate_key(id);
                    }
                    self.kms.pool.invalidate_key(id);
                    self.kms.reuse.invalidate_key(id);
                }
                Some(_) => {}
            }
        }
        *seen = now;
    }
}

impl Follower for CacheFollower {
    fn reset(&self, _all: &[Change]) {
        self.sync();
    }

    fn apply(&self, changes: &[Change]) {
        if changes.iter().any(|c| c.section == Section::Keys) {
            self.sync();
        }
    }
}
