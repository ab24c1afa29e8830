//! The KMS operations: each takes a typed request, authorizes against the key policy, applies KMS's
//! validation and key-state rules, and answers. Dispatch by operation is here; the work is in `data`
//! (cryptographic operations, caches, the backend), `lifecycle` (keys, states, rotation),
//! `aliases`, `policies` and `tags`. Rate limits are charged before this, by the pipeline
//! (`core::Core::call`).

mod aliases;
mod data;
mod follow;
mod lifecycle;
mod policies;
mod status;
mod tags;
mod xks;

pub use xks::MAX_AAD as XKS_MAX_AAD;

pub use self::follow::CacheFollower;

use std::sync::Arc;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;

use std::collections::BTreeMap;

use crate::auth::policy::{self, Action, Decision, DenyReason, RequestContext};
use crate::cache::CacheOutcome;
use crate::cache::DecryptCache;
use crate::cache::pool::DataKeyPool;
use crate::cache::reuse::DataKeyReuse;
use crate::core::request::{Request, Response};
use crate::keys::{KeyMeta, KeyState, KeyStore};
use crate::kms::{EncryptionContext, ErrorKind, KmsError, Operation};
use crate::limits::{Breaker, State};

/// Who is calling, as key policies see it.
#[derive(Debug, Clone, Copy)]
pub struct Caller<'a> {
    /// The principal name (the client credential's name).
    pub name: &'a str,
    /// `arn:aws:iam::<account>:user/<name>`.
    pub arn: &'a str,
    /// Principal attributes (`aws:PrincipalTag/<name>`).
    pub tags: &'a BTreeMap<String, String>,
    /// A configured admin principal: may create keys and always manage policies and deletion.
    pub admin: bool,
}

/// What an operation learned about its request, filled in as it goes (also on failure), for the
/// audit log, the unauthorized-access metrics and the key-version header.
#[derive(Debug, Default)]
pub struct Observation {
    /// The key the operation touched (the destination key for ReEncrypt).
    pub key_id: Option<String>,
    /// The key version that served a cryptographic operation.
    pub key_version: Option<u32>,
    /// The request's encryption context (the audit log records its keys).
    pub context: Option<EncryptionContext>,
    /// Why authorization denied the call.
    pub denied: Option<DenyReason>,
    /// Whether a cache (decrypt cache, data-key pool) served the call.
    pub cache: CacheOutcome,
}

/// Actions a configured admin principal may always perform on any key, whatever its policy:
/// the way back from a policy that locks everyone out.
const ADMIN_ACTIONS: [Action; 6] = [
    Action::DescribeKey,
    Action::GetKeyPolicy,
    Action::ListKeyPolicies,
    Action::PutKeyPolicy,
    Action::ScheduleKeyDeletion,
    Action::CancelKeyDeletion,
];

/// One call's context: the key store, the caller, and what is being observed.
pub(crate) struct Cx<'a> {
    keys: &'a KeyStore,
    kms: &'a Kms,
    caller: Caller<'a>,
    /// ARNs of the configured admin principals.
    admins: &'a [String],
    op: Operation,
    obs: &'a mut Observation,
    /// The last key ARN authorization formatted, reused by the answer (one `format!` per call).
    arn: Option<String>,
}

impl Cx<'_> {
    /// The ARN of key `id`: the one authorization formatted when it is that key's, else a new one.
    fn key_arn(&mut self, id: &str) -> String {
        match self.arn.take() {
            Some(arn)
                if arn
                    .strip_suffix(id)
                    .is_some_and(|prefix| prefix.ends_with(":key/")) =>
            {
                arn
            }
            _ => self.keys.key_arn(id),
        }
    }

    /// Authorizes `action` on `meta` against its key policy. Runs before any key use, on every call.
    fn authorize(
        &mut self,
        action: Action,
        meta: &KeyMeta,
        context: Option<&EncryptionContext>,
    ) -> Result<(), KmsError> {
        self.authorize_with(action, meta, context, None)
    }

    /// [`Cx::authorize`] with the XKS request metadata the `xks:` condition keys read.
    fn authorize_with(
        &mut self,
        action: Action,
        meta: &KeyMeta,
        context: Option<&EncryptionContext>,
        xks: Option<policy::XksMetadata<'_>>,
    ) -> Result<(), KmsError> {
        self.obs.key_id = Some(meta.id.clone());
        if self.caller.admin && ADMIN_ACTIONS.contains(&action) {
            return Ok(());
        }
        let key_arn = self.keys.key_arn(&meta.id);
        let decision = match self.keys.policy(&meta.id) {
            Some(p) => p.evaluate(&RequestContext {
                principal_arn: self.caller.arn,
                caller_account: &self.keys.scope().account,
                action,
                key_arn: &key_arn,
                encryption_context: context,
                principal_tags: self.caller.tags,
                xks,
            }),
            // Keys created before policies existed: admins only.
            None if self.caller.admin => Decision::Allow,
            None => Decision::ImplicitDeny {
                reason: DenyReason::PolicyDenied,
            },
        };
        if decision.is_allowed() {
            self.arn = Some(key_arn);
            return Ok(());
        }
        self.obs.denied = decision.deny_reason();
        Err(policy::access_denied(
            self.caller.arn,
            action,
            &key_arn,
            &decision,
        ))
    }

    /// Resolves `key_id` (any form) and authorizes this call's operation on it.
    fn check(
        &mut self,
        key_id: &str,
        context: Option<&EncryptionContext>,
    ) -> Result<Arc<KeyMeta>, KmsError> {
        let meta = self.keys.resolve(key_id)?;
        self.authorize(Action::for_operation(self.op), &meta, context)?;
        Ok(meta)
    }

    /// ARNs of the configured admin principals that hold a credential (for default key policies).
    fn admin_arns(&self) -> Vec<String> {
        self.admins.to_vec()
    }

    /// The shape of every key-management call: the required `KeyId`, authorization on that key,
    /// then `change` applied and persisted under the key store's write lock (`Fn`: with a shared
    /// registry, a lost race re-applies it to what the winner committed).
    async fn update_key(
        &mut self,
        key_id: Option<String>,
        change: impl Fn(&mut KeyMeta) -> Result<(), KmsError>,
    ) -> Result<Arc<KeyMeta>, KmsError> {
        let key_id = required(key_id, "keyId")?;
        self.check(&key_id, None)?;
        self.keys.update(&key_id, change).await
    }

    /// Account-level operations that only admin principals may call (CreateKey).
    fn require_admin(&mut self) -> Result<(), KmsError> {
        if self.caller.admin {
            return Ok(());
        }
        self.obs.denied = Some(DenyReason::PolicyDenied);
        let action = Action::for_operation(self.op);
        Err(KmsError::new(
            ErrorKind::AccessDenied,
            format!(
                "User: {} is not authorized to perform: {} because it is not an admin principal of this kms-sidecar",
                self.caller.arn,
                action.name()
            ),
        ))
    }
}

/// The KMS service over a key store.
/// Clones share the key store and the caches.
#[derive(Debug, Clone)]
pub struct Kms {
    keys: Arc<KeyStore>,
    /// ARNs of the configured admin principals, named in every default key policy.
    admin_arns: Vec<String>,
    cache: DecryptCache,
    pool: Arc<DataKeyPool>,
    /// Opt-in data-key reuse (off unless keys are listed).
    reuse: Arc<DataKeyReuse>,
    /// Drop a key's cached plaintexts when it rotates (they stay valid; this trades hits for
    /// freshness).
    invalidate_on_rotation: bool,
    /// The backend's circuit breaker: while it is open, cached plaintexts past their TTL are served
    /// within the stale grace.
    breaker: Option<Arc<Breaker>>,
    /// The last KMS v2 `Status` round trip (see `status.rs`).
    status: Arc<status::StatusMemo>,
}

impl Kms {
    /// A service without caches (tools and tests); the server uses [`Kms::with_caches`].
    pub fn new(keys: Arc<KeyStore>, admin_arns: Vec<String>) -> Self {
        Self::with_caches(
            keys,
            admin_arns,
            DecryptCache::disabled(),
            DataKeyPool::disabled(),
            true,
        )
    }

    /// A service with a decrypt cache and a data-key pool.
    pub fn with_caches(
        keys: Arc<KeyStore>,
        admin_arns: Vec<String>,
        cache: DecryptCache,
        pool: DataKeyPool,
        invalidate_on_rotation: bool,
    ) -> Self {
        Self {
            keys,
            admin_arns,
            cache,
            pool: Arc::new(pool),
            reuse: Arc::new(DataKeyReuse::disabled()),
            invalidate_on_rotation,
            breaker: None,
            status: Arc::default(),
        }
    }

    /// Lets the keys `reuse` names hand out a data key more than once (see `cache::reuse`).
    pub fn with_reuse(mut self, reuse: DataKeyReuse) -> Self {
        self.reuse = Arc::new(reuse);
        self
    }

    pub fn reuse(&self) -> &DataKeyReuse {
        &self.reuse
    }

    /// Adds the backend's breaker (for stale-if-error).
    pub fn with_breaker(mut self, breaker: Arc<Breaker>) -> Self {
        self.breaker = Some(breaker);
        self
    }

    /// The backend's circuit breaker state, when there is a breaker.
    pub fn breaker_state(&self) -> Option<State> {
        self.breaker.as_ref().map(|b| b.state())
    }

    /// Whether the backend's breaker is open (the backend is failing).
    pub fn backend_failing(&self) -> bool {
        self.breaker
            .as_ref()
            .is_some_and(|b| b.state() == State::Open)
    }

    pub fn cache(&self) -> &DecryptCache {
        &self.cache
    }

    pub fn pool(&self) -> &DataKeyPool {
        &self.pool
    }

    /// Drops everything cached for `key_id` (its state or policy changed).
    fn invalidate(&self, key_id: &str) {
        self.cache.invalidate_key(key_id);
        self.pool.invalidate_key(key_id);
        self.reuse.invalidate_key(key_id);
    }

    pub fn keys(&self) -> &Arc<KeyStore> {
        &self.keys
    }

    /// Runs `request` as the built-in admin principal `arn:aws:iam::<account>:user/kms-sidecar`:
    /// for tools and tests that drive the operations without a front-end.
    pub async fn call_internal(&self, request: Request) -> Result<Response, KmsError> {
        let arn = format!(
            "arn:aws:iam::{}:user/kms-sidecar",
            self.keys.scope().account
        );
        let tags = BTreeMap::new();
        let caller = Caller {
            name: "kms-sidecar",
            arn: &arn,
            tags: &tags,
            admin: true,
        };
        self.run(request, caller, &mut Observation::default()).await
    }

    /// Runs `request` for `caller`, who has been authenticated and charged to the rate limits;
    /// `obs` records what was learned on the way.
    pub async fn run(
        &self,
        request: Request,
        caller: Caller<'_>,
        obs: &mut Observation,
    ) -> Result<Response, KmsError> {
        use Request as R;
        use Response as A;
        let k = &mut Cx {
            keys: &self.keys,
            kms: self,
            caller,
            admins: &self.admin_arns,
            op: request.operation(),
            obs,
            arn: None,
        };
        Ok(match request {
            R::Encrypt(r) => A::Encrypt(data::encrypt(k, r).await?),
            R::Decrypt(r) => A::Decrypt(data::decrypt(k, r).await?),
            R::ReEncrypt(r) => A::ReEncrypt(data::re_encrypt(k, r).await?),
            R::GenerateDataKey(r) => A::GenerateDataKey(data::generate_data_key(k, r, true).await?),
            R::GenerateDataKeyWithoutPlaintext(r) => {
                A::GenerateDataKeyWithoutPlaintext(data::generate_data_key(k, r, false).await?)
            }
            R::GenerateRandom(r) => A::GenerateRandom(data::generate_random(k, r).await?),
            R::CreateKey(r) => A::CreateKey(lifecycle::create_key(k, r).await?),
            R::DescribeKey(r) => A::DescribeKey(lifecycle::describe_key(k, r)?),
            R::ListKeys(r) => A::ListKeys(lifecycle::list_keys(k, r)?),
            R::EnableKey(r) => A::EnableKey(lifecycle::enable_key(k, r).await?),
            R::DisableKey(r) => A::DisableKey(lifecycle::disable_key(k, r).await?),
            R::ScheduleKeyDeletion(r) => {
                A::ScheduleKeyDeletion(lifecycle::schedule_key_deletion(k, r).await?)
            }
            R::CancelKeyDeletion(r) => {
                A::CancelKeyDeletion(lifecycle::cancel_key_deletion(k, r).await?)
            }
            R::EnableKeyRotation(r) => {
                A::EnableKeyRotation(lifecycle::enable_key_rotation(k, r).await?)
            }
            R::DisableKeyRotation(r) => {
                A::DisableKeyRotation(lifecycle::disable_key_rotation(k, r).await?)
            }
            R::GetKeyRotationStatus(r) => {
                A::GetKeyRotationStatus(lifecycle::get_key_rotation_status(k, r)?)
            }
            R::RotateKeyOnDemand(r) => {
                A::RotateKeyOnDemand(lifecycle::rotate_key_on_demand(k, r).await?)
            }
            R::ListKeyRotations(r) => A::ListKeyRotations(lifecycle::list_key_rotations(k, r)?),
            R::CreateAlias(r) => A::CreateAlias(aliases::create_alias(k, r).await?),
            R::UpdateAlias(r) => A::UpdateAlias(aliases::update_alias(k, r).await?),
            R::DeleteAlias(r) => A::DeleteAlias(aliases::delete_alias(k, r).await?),
            R::ListAliases(r) => A::ListAliases(aliases::list_aliases(k, r)?),
            R::TagResource(r) => A::TagResource(tags::tag_resource(k, r).await?),
            R::UntagResource(r) => A::UntagResource(tags::untag_resource(k, r).await?),
            R::ListResourceTags(r) => A::ListResourceTags(tags::list_resource_tags(k, r)?),
            R::PutKeyPolicy(r) => A::PutKeyPolicy(policies::put_key_policy(k, r).await?),
            R::Status(r) => A::Status(status::status(k, r).await?),
            R::GetKeyPolicy(r) => A::GetKeyPolicy(policies::get_key_policy(k, r)?),
            R::ListKeyPolicies(r) => A::ListKeyPolicies(policies::list_key_policies(k, r)?),
            R::XksEncrypt(r) => A::XksEncrypt(xks::encrypt(k, r).await?),
            R::XksDecrypt(r) => A::XksDecrypt(xks::decrypt(k, r).await?),
            R::XksGetKeyMetadata(r) => A::XksGetKeyMetadata(xks::key_metadata(k, r)?),
            R::XksGetHealthStatus(r) => A::XksGetHealthStatus(xks::health(k, r).await?),
        })
    }
}

/// A required member, or the `ValidationException` KMS gives when it is missing.
fn required<T>(value: Option<T>, member: &str) -> Result<T, KmsError> {
    value.ok_or_else(|| KmsError::missing(member))
}

/// An integer member within `min..=max`.
fn in_range(value: i64, min: i64, max: i64, member: &str) -> Result<u32, KmsError> {
    if value < min || value > max {
        return Err(KmsError::validation(format!(
            "1 validation error detected: Value '{value}' at '{member}' failed to satisfy constraint: Member must have value between {min} and {max}"
        )));
    }
    u32::try_from(value).map_err(|_| KmsError::validation(format!("'{member}' is out of range")))
}

/// Key-state rule shared by cryptographic operations and most management calls: the key must be
/// Enabled. Disabled is `DisabledException`, pending deletion `KMSInvalidStateException`.
fn require_enabled(keys: &KeyStore, meta: &KeyMeta) -> Result<(), KmsError> {
    match meta.state {
        KeyState::Enabled => Ok(()),
        KeyState::Disabled => Err(KmsError::new(
            ErrorKind::Disabled,
            format!("{} is disabled.", keys.key_arn(&meta.id)),
        )),
        KeyState::PendingDeletion => Err(pending_deletion(keys, meta)),
    }
}

fn pending_deletion(keys: &KeyStore, meta: &KeyMeta) -> KmsError {
    KmsError::new(
        ErrorKind::InvalidState,
        format!("{} is pending deletion.", keys.key_arn(&meta.id)),
    )
}

/// Rejects keys pending deletion (management calls that work on Disabled keys too).
fn require_not_pending(keys: &KeyStore, meta: &KeyMeta) -> Result<(), KmsError> {
    if meta.state == KeyState::PendingDeletion {
        return Err(pending_deletion(keys, meta));
    }
    Ok(())
}

/// Paging parameters: `Limit` within `1..=max` (default `default`) and the decoded `Marker`.
struct Page {
    limit: usize,
    after: Option<String>,
}

fn page(
    limit: Option<i64>,
    max: i64,
    default: u32,
    marker: Option<&str>,
) -> Result<Page, KmsError> {
    let limit = match limit {
        Some(l) => in_range(l, 1, max, "limit")?,
        None => default,
    };
    let after = marker
        .map(|m| {
            URL_SAFE_NO_PAD
                .decode(m)
                .ok()
                .and_then(|b| String::from_utf8(b).ok())
                .ok_or_else(|| KmsError::new(ErrorKind::InvalidMarker, "the marker is not valid"))
        })
        .transpose()?;
    Ok(Page {
        limit: usize::try_from(limit).unwrap_or(usize::MAX),
        after,
    })
}

/// Takes one page from `items` (sorted by their marker key), returning the page, the next marker
/// and whether the listing was truncated.
fn take_page<T>(items: Vec<(String, T)>, page: &Page) -> (Vec<T>, Option<String>, bool) {
    let mut out = Vec::with_capacity(page.limit.min(items.len()));
    let mut last = None;
    let mut truncated = false;
    for (key, item) in items {
        if page
            .after
            .as_ref()
            .is_some_and(|a| key.as_str() <= a.as_str())
        {
            continue;
        }
        if out.len() == page.limit {
            truncated = true;
            break;
        }
        last = Some(key);
        out.push(item);
    }
    let marker = last
        .filter(|_| truncated)
        .map(|k| URL_SAFE_NO_PAD.encode(k.as_bytes()));
    (out, marker, truncated)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paging_walks_every_item_once() {
        let items: Vec<(String, u32)> = (0..7).map(|i| (format!("k{i}"), i)).collect();
        let mut marker = None;
        let mut seen = Vec::new();
        loop {
            let p = page(Some(3), 100, 50, marker.as_deref()).unwrap();
            let (got, next, truncated) = take_page(items.clone(), &p);
            seen.extend(got);
            assert_eq!(truncated, next.is_some());
            match next {
                Some(m) => marker = Some(m),
                None => break,
            }
        }
        assert_eq!(seen, (0..7).collect::<Vec<_>>());
        assert_eq!(
            page(None, 100, 50, Some("!!")).err().map(|e| e.kind()),
            Some(ErrorKind::InvalidMarker)
        );
        assert_eq!(
            page(Some(0), 100, 50, None).err().map(|e| e.kind()),
            Some(ErrorKind::Validation)
        );
        assert_eq!(
            page(Some(101), 100, 50, None).err().map(|e| e.kind()),
            Some(ErrorKind::Validation)
        );
    }
}
