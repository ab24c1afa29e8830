//! Proxy mode: the operations of [`Kms`](super::Kms) served by an existing KMS upstream, so that an
//! application that calls AWS KMS today can point its endpoint URL at the sidecar and change nothing
//! else: key ids, ARNs and aliases are the upstream's, ciphertexts are the upstream's byte for byte,
//! and anything encrypted through the sidecar decrypts at the upstream directly.
//!
//! [`Proxy::run`] takes the place of `Kms::run` behind the same pipeline (`Core::call`: audit gate,
//! rate limits, then this). Per call it
//! 1. authorizes locally against the proxy policy (`auth/proxy_policy.rs`), before the cache and
//!    before the upstream;
//! 2. for Decrypt, asks the decrypt cache (keyed by ciphertext, context and algorithm); a hit is
//!    authorized again against the key the cached answer came from;
//! 3. for GenerateDataKey, asks the data-key reuse and pool (`data_keys.rs`), per upstream key;
//! 4. otherwise forwards the call (`forward.rs`) under the outbound limits of `limits/resilient.rs`
//!    (retries with backoff and budget, outbound budget, circuit breaker; an upstream throttle backs
//!    off and never opens the circuit);
//! 5. maps upstream refusals to the same KMS error types (`backend/remote.rs`).
//!
//! There is no local key registry: the alias-to-key map that local policies need to match alias
//! patterns against the ARN an upstream Decrypt answers with is polled in the background
//! (`poll.rs`), never on the request path.

mod data_keys;
mod forward;
mod poll;

use std::sync::{Arc, Weak};
use std::time::Instant;

use arc_swap::ArcSwap;

use super::model::*;
use super::ops::{Caller, Observation};
use super::request::{Request, Response};
use crate::auth::policy::DenyReason;
use crate::auth::proxy_policy::{KeyNames, ProxyPolicy};
use crate::backend::BackendError;
use crate::backend::remote::UpstreamRefused;
use crate::cache::{CacheOutcome, DecryptCache};
use crate::kms::{EncryptionContext, ErrorKind, KmsError, Operation};
use crate::limits::State;
use crate::limits::resilient::Resilience;

pub use self::data_keys::DataKeys;
pub use self::poll::{Directory, ProxyMetrics};

/// Operations the proxy does not forward: tags and key policies are administered at the upstream.
const NOT_FORWARDED: [Operation; 7] = [
    Operation::TagResource,
    Operation::UntagResource,
    Operation::ListResourceTags,
    Operation::GetKeyPolicy,
    Operation::PutKeyPolicy,
    Operation::ListKeyPolicies,
    Operation::ListKeyRotations,
];

/// The KMS operations served by an upstream KMS.
#[derive(Debug)]
pub struct Proxy {
    client: aws_sdk_kms::Client,
    limits: Resilience,
    cache: DecryptCache,
    policy: ArcSwap<ProxyPolicy>,
    /// Aliases and keys of the upstream, polled in the background.
    directory: ArcSwap<Directory>,
    metrics: Arc<ProxyMetrics>,
    /// The data-key pool and opt-in reuse, per upstream key (`data_keys.rs`).
    data_keys: DataKeys,
    /// Itself, for the pool's background refills.
    me: Weak<Proxy>,
}

/// The error a caller sees for an upstream failure: the upstream's own KMS error type for a refusal,
/// the classified server error otherwise.
fn upstream_error(e: BackendError) -> KmsError {
    if let Some(refused) = e
        .source
        .as_deref()
        .and_then(|s| s.downcast_ref::<UpstreamRefused>())
    {
        return KmsError::new(refused.kind, refused.message.clone()).with_source(e);
    }
    KmsError::from(e)
}

fn required<T>(value: Option<T>, member: &str) -> Result<T, KmsError> {
    value.ok_or_else(|| KmsError::missing(member))
}

impl Proxy {
    pub fn new(
        client: aws_sdk_kms::Client,
        limits: Resilience,
        cache: DecryptCache,
        policy: ProxyPolicy,
        metrics: Arc<ProxyMetrics>,
        data_keys: DataKeys,
    ) -> Arc<Self> {
        Arc::new_cyclic(|me| Self {
            client,
            limits,
            cache,
            policy: ArcSwap::from_pointee(policy),
            directory: ArcSwap::from_pointee(Directory::default()),
            metrics,
            data_keys,
            me: me.clone(),
        })
    }

    /// Replaces the local policy (SIGHUP reload).
    pub fn set_policy(&self, policy: ProxyPolicy) {
        self.policy.store(Arc::new(policy));
    }

    pub fn cache(&self) -> &DecryptCache {
        &self.cache
    }

    pub fn data_keys(&self) -> &DataKeys {
        &self.data_keys
    }

    /// The upstream's circuit breaker state.
    pub fn breaker_state(&self) -> State {
        self.limits.breaker.state()
    }

    /// Checks the local policy for `op` on `key`; a refusal is recorded for the audit log and the
    /// unauthorized-access metrics, and answered as KMS does.
    fn authorize(
        &self,
        caller: &Caller<'_>,
        obs: &mut Observation,
        op: Operation,
        key: KeyNames<'_>,
        context: Option<&EncryptionContext>,
    ) -> Result<(), KmsError> {
        if self.policy.load().allows(caller.name, op, key, context) {
            return Ok(());
        }
        obs.denied = Some(DenyReason::PolicyDenied);
        let what = key.arn.or(key.named).unwrap_or("*");
        Err(KmsError::new(
            ErrorKind::AccessDenied,
            format!(
                "User: {} is not authorized to perform: kms:{} on resource: {what} because no proxy policy rule of this kms-sidecar allows it",
                caller.arn,
                op.as_str()
            ),
        ))
    }

    /// Authorizes `op` on the key the request names.
    fn check_named(
        &self,
        caller: &Caller<'_>,
        obs: &mut Observation,
        op: Operation,
        named: &str,
        context: Option<&EncryptionContext>,
    ) -> Result<(), KmsError> {
        let dir = self.directory.load();
        let arn = dir.resolve(named);
        let names = KeyNames {
            named: Some(named),
            arn: arn.as_deref(),
            aliases: arn.as_deref().map_or(&[], |a| dir.aliases_of(a)),
        };
        self.authorize(caller, obs, op, names, context)
    }

    /// Authorizes `op` on the key the upstream answered with (`arn`).
    fn check_answered(
        &self,
        caller: &Caller<'_>,
        obs: &mut Observation,
        op: Operation,
        named: Option<&str>,
        arn: &str,
        context: Option<&EncryptionContext>,
    ) -> Result<(), KmsError> {
        obs.key_id = Some(arn.to_string());
        let dir = self.directory.load();
        let names = KeyNames {
            named,
            arn: Some(arn),
            aliases: dir.aliases_of(arn),
        };
        self.authorize(caller, obs, op, names, context)
    }

    /// Runs `request` for `caller` at the upstream (or from the decrypt cache).
    pub async fn run(
        &self,
        request: Request,
        caller: Caller<'_>,
        obs: &mut Observation,
    ) -> Result<Response, KmsError> {
        let op = request.operation();
        let started = Instant::now();
        let result = self.dispatch(request, &caller, obs).await;
        // Upstream latency and errors per key; cache hits never reached the upstream.
        if obs.cache != CacheOutcome::Hit && obs.denied.is_none() {
            let key = obs.key_id.as_deref().unwrap_or("");
            self.metrics.upstream(
                &self.directory.load(),
                key,
                op,
                result.as_ref().err(),
                started.elapsed(),
            );
        }
        result
    }

    async fn dispatch(
        &self,
        request: Request,
        caller: &Caller<'_>,
        obs: &mut Observation,
    ) -> Result<Response, KmsError> {
        use Request as R;
        use Response as A;
        let op = request.operation();
        if NOT_FORWARDED.contains(&op) || matches!(request, R::RotateKeyOnDemand(_)) {
            return Err(KmsError::new(
                ErrorKind::UnsupportedOperation,
                format!(
                    "{} is not forwarded in proxy mode; administer it at the upstream KMS",
                    op.as_str()
                ),
            ));
        }
        Ok(match request {
            R::Encrypt(r) => {
                let key_id = required(r.key_id, "keyId")?;
                let plaintext = required(r.plaintext, "plaintext")?;
                let context = r.encryption_context.unwrap_or_default();
                self.check_named(caller, obs, op, &key_id, Some(&context))?;
                let out = self
                    .encrypt(
                        &key_id,
                        plaintext.as_slice(),
                        &context,
                        r.encryption_algorithm.as_deref(),
                    )
                    .await
                    .map_err(upstream_error)?;
                obs.key_id = Some(out.key_id.clone());
                obs.context = Some(context);
                A::Encrypt(out)
            }
            R::Decrypt(r) => A::Decrypt(self.decrypt_cached(r, caller, obs).await?),
            R::ReEncrypt(r) => {
                let blob = required(r.ciphertext_blob.clone(), "ciphertextBlob")?;
                let destination = required(r.destination_key_id.clone(), "destinationKeyId")?;
                let source_context = r.source_encryption_context.clone().unwrap_or_default();
                let dest_context = r.destination_encryption_context.clone().unwrap_or_default();
                // Both ends, before the upstream: the destination by name, the source as far as
                // it is known (checked again once the upstream has named it).
                match r.source_key_id.as_deref() {
                    Some(s) => self.check_named(caller, obs, op, s, Some(&source_context))?,
                    None => {
                        self.authorize(caller, obs, op, KeyNames::default(), Some(&source_context))?
                    }
                }
                self.check_named(caller, obs, op, &destination, Some(&dest_context))?;
                let out = self
                    .re_encrypt(&r, &blob.0, &destination)
                    .await
                    .map_err(upstream_error)?;
                self.check_answered(
                    caller,
                    obs,
                    op,
                    r.source_key_id.as_deref(),
                    &out.source_key_id,
                    Some(&source_context),
                )?;
                obs.key_id = Some(out.key_id.clone());
                obs.context = Some(dest_context);
                A::ReEncrypt(out)
            }
            R::GenerateDataKey(r) | R::GenerateDataKeyWithoutPlaintext(r) => {
                let with_plaintext = op == Operation::GenerateDataKey;
                let key_id = required(r.key_id.clone(), "keyId")?;
                let context = r.encryption_context.clone().unwrap_or_default();
                self.check_named(caller, obs, op, &key_id, Some(&context))?;
                let out = self
                    .data_key(&r, &key_id, &context, with_plaintext, caller, obs)
                    .await?;
                obs.key_id = Some(out.key_id.clone());
                obs.context = Some(context);
                if with_plaintext {
                    A::GenerateDataKey(out)
                } else {
                    A::GenerateDataKeyWithoutPlaintext(out)
                }
            }
            R::GenerateRandom(r) => {
                self.authorize(caller, obs, op, KeyNames::default(), None)?;
                A::GenerateRandom(self.generate_random(&r).await.map_err(upstream_error)?)
            }
            R::CreateKey(r) => {
                self.authorize(caller, obs, op, KeyNames::default(), None)?;
                let out = self.create_key(&r).await.map_err(upstream_error)?;
                obs.key_id = Some(out.key_metadata.arn.clone());
                A::CreateKey(out)
            }
            R::ListKeys(r) => {
                self.authorize(caller, obs, op, KeyNames::default(), None)?;
                A::ListKeys(self.list_keys(&r).await.map_err(upstream_error)?)
            }
            R::ListAliases(r) => {
                match r.key_id.as_deref() {
                    Some(k) => self.check_named(caller, obs, op, k, None)?,
                    None => self.authorize(caller, obs, op, KeyNames::default(), None)?,
                }
                A::ListAliases(
                    self.list_aliases(r.key_id.as_deref(), r.limit, r.marker.as_deref())
                        .await
                        .map_err(upstream_error)?,
                )
            }
            R::DescribeKey(r) => {
                let key_id = required(r.key_id, "keyId")?;
                self.check_named(caller, obs, op, &key_id, None)?;
                let out = self.describe_key(&key_id).await.map_err(upstream_error)?;
                obs.key_id = Some(out.key_metadata.arn.clone());
                A::DescribeKey(out)
            }
            R::GetKeyRotationStatus(r) => {
                let key_id = required(r.key_id, "keyId")?;
                self.check_named(caller, obs, op, &key_id, None)?;
                A::GetKeyRotationStatus(
                    self.get_key_rotation_status(&key_id)
                        .await
                        .map_err(upstream_error)?,
                )
            }
            other => {
                let named = match other.subject() {
                    super::Subject::KeyId(k) => k.to_string(),
                    _ => return Err(KmsError::missing("keyId")),
                };
                self.check_named(caller, obs, op, &named, None)?;
                let answer = self.manage(&other).await.map_err(upstream_error)?;
                // A key whose state changed may not decrypt any more: its cached plaintexts go.
                if let Some(arn) = self.directory.load().resolve(&named) {
                    self.cache.invalidate_key(&arn);
                    self.data_keys.invalidate_key(&arn);
                    obs.key_id = Some(arn);
                }
                answer.ok_or_else(|| {
                    KmsError::new(
                        ErrorKind::UnsupportedOperation,
                        "not forwarded in proxy mode",
                    )
                })?
            }
        })
    }

    /// Decrypt through the cache: a local check before anything (with the key the request names, or
    /// for any key), the cache or the upstream, then the check against the key the ciphertext is
    /// under, on hits and misses alike.
    async fn decrypt_cached(
        &self,
        r: DecryptRequest,
        caller: &Caller<'_>,
        obs: &mut Observation,
    ) -> Result<DecryptResponse, KmsError> {
        let op = Operation::Decrypt;
        let blob = required(r.ciphertext_blob, "ciphertextBlob")?;
        let context = r.encryption_context.unwrap_or_default();
        obs.context = Some(context.clone());
        let named = r.key_id.as_deref();
        match named {
            Some(k) => self.check_named(caller, obs, op, k, Some(&context))?,
            None => self.authorize(caller, obs, op, KeyNames::default(), Some(&context))?,
        }
        let algorithm = r
            .encryption_algorithm
            .as_deref()
            .unwrap_or("SYMMETRIC_DEFAULT");
        let cache_key = crate::cache::cache_key(&blob.0, &context, "", algorithm);
        let algo = r.encryption_algorithm.as_deref();
        let load = async {
            let (plaintext, arn) = self
                .decrypt(&blob.0, &context, named, algo)
                .await
                .map_err(upstream_error)?;
            Ok((plaintext, arn.into(), 0))
        };
        let serve_stale = self.limits.breaker.state() == State::Open;
        let (mut plaintext, cached_arn, outcome) = self
            .cache
            .get_or_load_keyed(cache_key, serve_stale, load)
            .await?;
        let mut arn = cached_arn.to_string();
        // A cached answer for a request that names a key must be under that key; if the name cannot
        // be told from here (an alias not polled yet), the upstream decides.
        if outcome == CacheOutcome::Hit
            && let Some(k) = named
            && !self.directory.load().names(&arn, k)
        {
            (plaintext, arn) = self
                .decrypt(&blob.0, &context, named, algo)
                .await
                .map_err(upstream_error)?;
            obs.cache = CacheOutcome::Miss;
        } else {
            obs.cache = outcome;
        }
        self.metrics
            .cache(&self.directory.load(), &arn, obs.cache == CacheOutcome::Hit);
        self.check_answered(caller, obs, op, named, &arn, Some(&context))?;
        Ok(DecryptResponse {
            key_id: arn,
            plaintext: SecretBlob(plaintext),
            encryption_algorithm: "SYMMETRIC_DEFAULT",
        })
    }
}
