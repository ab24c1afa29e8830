//! Proxy mode's data-key pool and opt-in data-key reuse: the same two caches local mode has
//! (`cache/pool.rs`, `cache/reuse.rs`), kept per upstream key so that GenerateDataKey does not wait
//! for the upstream. Every data key handed out was made by the upstream (its ciphertext is the
//! upstream's, byte for byte, and decrypts there directly); the sidecar only holds it for a while.
//!
//! - **Pool**: per upstream key ARN, fresh AES-256 data keys for the *empty* encryption context,
//!   refilled in the background through the proxy's outbound limits. A context is bound into the
//!   upstream ciphertext and cannot be known in advance; pooling per context would spend `size`
//!   upstream calls on every context seen once, so requests with a context are served on demand
//!   (or by reuse, which is per context). Key state lives upstream, so a pooled key is never older
//!   than the decrypt cache's TTL: the same bound on how long a change made at the upstream
//!   directly (a key disabled there) goes unseen by cached answers.
//! - **Reuse** (opt-in, by key id or alias): one data key per principal, upstream key, context and
//!   length is handed out again until its age or use limit, as in local mode.
//!
//! Both run after the local policy allowed the call and only when the key the request names is
//! known to the background alias poll; otherwise the call goes to the upstream as before.

use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use super::Proxy;
use crate::cache::CacheOutcome;
use crate::cache::pool::{DataKeyPool, POOLED_LEN, Pooled};
use crate::cache::reuse::DataKeyReuse;
use crate::core::model::*;
use crate::core::ops::{Caller, Observation};
use crate::kms::{EncryptionContext, KmsError};

/// Reused data keys carry no key version in proxy mode: an upstream rotation keeps old
/// ciphertexts valid, and the reuse limits bound the rest.
const REUSE_VERSION: u32 = 0;

/// The pool and reuse of one proxy.
#[derive(Debug)]
pub struct DataKeys {
    pool: Arc<DataKeyPool>,
    reuse: DataKeyReuse,
    /// The longest a pooled key is kept (the decrypt cache's TTL).
    max_age: Duration,
    started: Instant,
}

impl DataKeys {
    pub fn new(pool: DataKeyPool, reuse: DataKeyReuse, max_age: Duration) -> Self {
        Self {
            pool: Arc::new(pool),
            reuse,
            max_age: max_age.max(Duration::from_secs(1)),
            started: Instant::now(),
        }
    }

    /// Neither pool nor reuse.
    pub fn disabled() -> Self {
        Self::new(
            DataKeyPool::disabled(),
            DataKeyReuse::disabled(),
            Duration::from_secs(1),
        )
    }

    /// The pool's generation now: keys of an earlier generation are discarded, so none is handed
    /// out more than `max_age` after it was made.
    fn generation(&self) -> u32 {
        let age = self.started.elapsed().as_secs() / self.max_age.as_secs().max(1);
        u32::try_from(age).unwrap_or(u32::MAX)
    }

    /// Drops what is held for `arn` (its state changed through the proxy).
    pub fn invalidate_key(&self, arn: &str) {
        self.pool.invalidate_key(arn);
        self.reuse.invalidate_key(arn);
    }

    /// Updates the entries gauges.
    pub fn refresh_gauges(&self) {
        self.pool.refresh_gauges();
        self.reuse.refresh_gauges();
    }
}

/// The data-key length a request asks for, when it is valid; anything else goes to the upstream,
/// which answers with its own validation error.
fn requested_len(r: &GenerateDataKeyRequest) -> Option<usize> {
    match (r.number_of_bytes, r.key_spec.as_deref()) {
        (Some(n), None) if (1..=1024).contains(&n) => usize::try_from(n).ok(),
        (None, Some("AES_256")) => Some(32),
        (None, Some("AES_128")) => Some(16),
        _ => None,
    }
}

/// The key id part of a key ARN (`...:key/<id>`).
fn key_id_of(arn: &str) -> &str {
    arn.rsplit_once(":key/").map_or(arn, |(_, id)| id)
}

impl Proxy {
    /// GenerateDataKey(WithoutPlaintext) for a caller the local policy allowed: from the reuse slot
    /// or the pool when they can answer, otherwise at the upstream.
    pub(super) async fn data_key(
        &self,
        r: &GenerateDataKeyRequest,
        named: &str,
        context: &EncryptionContext,
        with_plaintext: bool,
        caller: &Caller<'_>,
        obs: &mut Observation,
    ) -> Result<GenerateDataKeyResponse, KmsError> {
        let keys = &self.data_keys;
        let arn = self.directory.load().resolve(named);
        let (Some(arn), Some(len)) = (arn, requested_len(r)) else {
            return self
                .upstream_data_key(r, named, context, with_plaintext)
                .await;
        };
        let slot = (with_plaintext && keys.reuse.enabled() && {
            let dir = self.directory.load();
            let aliases = dir.aliases_of(&arn).iter().map(String::as_str);
            keys.reuse
                .applies(key_id_of(&arn), aliases.chain(std::iter::once(named)))
        })
        .then(|| DataKeyReuse::slot(caller.arn, &arn, context, len));
        if let Some(slot) = &slot
            && let Some((plaintext, blob)) = keys.reuse.take(slot, REUSE_VERSION, Instant::now())
        {
            obs.cache = CacheOutcome::Hit;
            return Ok(GenerateDataKeyResponse {
                ciphertext_blob: Blob(blob),
                plaintext: Some(SecretBlob(plaintext)),
                key_id: arn,
            });
        }
        let mut answer = None;
        if context.is_empty() && len == POOLED_LEN && keys.pool.enabled() {
            let (taken, refill) = keys.pool.take(&arn, keys.generation());
            if refill {
                self.spawn_refill(arn.clone());
            }
            obs.cache = CacheOutcome::Miss;
            if let Some(pooled) = taken {
                obs.cache = CacheOutcome::Hit;
                answer = Some(GenerateDataKeyResponse {
                    ciphertext_blob: Blob(pooled.blob),
                    plaintext: Some(SecretBlob(pooled.plaintext)),
                    key_id: arn.clone(),
                });
            }
        }
        let mut answer = match answer {
            Some(a) => a,
            None => {
                self.upstream_data_key(r, named, context, with_plaintext)
                    .await?
            }
        };
        // Kept for reuse only under the key it was filed for (an alias may have moved upstream
        // since the last poll).
        if let (Some(slot), Some(plaintext)) = (slot, &answer.plaintext)
            && answer.key_id == arn
        {
            keys.reuse.put(
                slot,
                &arn,
                REUSE_VERSION,
                &plaintext.0,
                &answer.ciphertext_blob.0,
                Instant::now(),
            );
        }
        if !with_plaintext {
            answer.plaintext = None;
        }
        Ok(answer)
    }

    async fn upstream_data_key(
        &self,
        r: &GenerateDataKeyRequest,
        key_id: &str,
        context: &EncryptionContext,
        with_plaintext: bool,
    ) -> Result<GenerateDataKeyResponse, KmsError> {
        self.generate_data_key(r, key_id, context, with_plaintext)
            .await
            .map_err(super::upstream_error)
    }

    /// Fills `arn`'s pool in the background, through the same outbound limits as every call.
    fn spawn_refill(&self, arn: String) {
        let me: Weak<Proxy> = self.me.clone();
        tokio::spawn(async move {
            let Some(proxy) = me.upgrade() else { return };
            let keys = &proxy.data_keys;
            let generation = keys.generation();
            let request = GenerateDataKeyRequest {
                key_spec: Some("AES_256".into()),
                ..Default::default()
            };
            let mut made = Vec::new();
            for _ in 0..keys.pool.wanted(&arn) {
                match proxy
                    .generate_data_key(&request, &arn, &EncryptionContext::new(), true)
                    .await
                {
                    Ok(GenerateDataKeyResponse {
                        ciphertext_blob,
                        plaintext: Some(plaintext),
                        key_id,
                    }) if key_id == arn => made.push(Pooled {
                        plaintext: plaintext.0,
                        blob: ciphertext_blob.0,
                        version: generation,
                    }),
                    Ok(_) => {
                        tracing::warn!(key = %arn, "upstream data key for another key or without plaintext; pool refill stopped");
                        break;
                    }
                    Err(e) => {
                        tracing::warn!(key = %arn, error = %e, "data-key pool refill stopped early");
                        break;
                    }
                }
            }
            keys.pool.put(&arn, made);
            keys.pool.refill_done(&arn);
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(bytes: Option<i64>, spec: Option<&str>) -> GenerateDataKeyRequest {
        GenerateDataKeyRequest {
            number_of_bytes: bytes,
            key_spec: spec.map(str::to_string),
            ..Default::default()
        }
    }

    #[test]
    fn only_valid_lengths_are_served_locally() {
        assert_eq!(requested_len(&req(None, Some("AES_256"))), Some(32));
        assert_eq!(requested_len(&req(None, Some("AES_128"))), Some(16));
        assert_eq!(requested_len(&req(Some(32), None)), Some(32));
        for upstream_decides in [
            req(None, None),
            req(Some(32), Some("AES_256")),
            req(Some(0), None),
            req(Some(1025), None),
            req(None, Some("AES_512")),
        ] {
            assert_eq!(requested_len(&upstream_decides), None);
        }
        assert_eq!(key_id_of("arn:aws:kms:us-east-1:1:key/abc"), "abc");
    }
}
