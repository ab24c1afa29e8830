//! What the proxy learns about the upstream in the background, never on the request path: the
//! alias-to-key map (so that local policies can match alias patterns against the key ARN an
//! upstream Decrypt answers with), the rotation status of the keys the local policy names (feeding
//! the `kms_sidecar_key_rotation_*` gauges), and the proxy's own metric families: upstream latency
//! and errors per key, and decrypt-cache hits per key.
//!
//! Key labels are bounded: only keys the local policy names literally (an ARN, a key id or an alias
//! without `*`) get their own series, at most [`MAX_KEY_LABELS`]; every other key is `other`.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use prometheus::{HistogramOpts, HistogramVec, IntCounterVec, Opts, Registry};

use super::Proxy;
use crate::keys::metrics::{OTHER, UpstreamRotation};
use crate::kms::{KmsError, LATENCY_BUCKETS, Operation};

/// Most upstream keys with their own metric series.
pub const MAX_KEY_LABELS: usize = 100;
/// Most alias pages read per poll (100 aliases a page).
const MAX_ALIAS_PAGES: usize = 50;

/// The upstream's aliases, as of the last poll.
#[derive(Debug, Default)]
pub struct Directory {
    /// Alias name (`alias/x`) -> target key ARN.
    alias_target: BTreeMap<String, String>,
    /// Key ARN -> its alias names.
    key_aliases: BTreeMap<String, Vec<String>>,
    /// Key ARNs with their own metric series.
    labeled: BTreeSet<String>,
    /// Region and account of the upstream's ARNs (`arn:aws:kms:<region>:<account>:`), learned from
    /// the alias ARNs, to resolve bare key ids.
    arn_prefix: Option<String>,
}

impl Directory {
    /// The key ARN a KeyId (key id, key ARN, alias name or alias ARN) names, if known.
    pub fn resolve(&self, named: &str) -> Option<String> {
        if named.starts_with("arn:") && named.contains(":key/") {
            return Some(named.to_string());
        }
        let alias = match named.split_once(":alias/") {
            Some((_, rest)) if named.starts_with("arn:") => format!("alias/{rest}"),
            _ => named.to_string(),
        };
        if alias.starts_with("alias/") {
            return self.alias_target.get(&alias).cloned();
        }
        self.arn_prefix.as_ref().map(|p| format!("{p}key/{named}"))
    }

    pub fn aliases_of(&self, arn: &str) -> &[String] {
        self.key_aliases.get(arn).map_or(&[], Vec::as_slice)
    }

    /// Whether KeyId `named` names the key `arn`.
    pub fn names(&self, arn: &str, named: &str) -> bool {
        named == arn
            || arn.rsplit_once("key/").is_some_and(|(_, id)| id == named)
            || self.resolve(named).is_some_and(|a| a == arn)
    }

    /// The metric label of key `arn`.
    pub fn label<'a>(&self, arn: &'a str) -> &'a str {
        if self.labeled.contains(arn) {
            arn
        } else {
            OTHER
        }
    }
}

/// The proxy's metric families.
#[derive(Debug)]
pub struct ProxyMetrics {
    latency: HistogramVec,
    errors: IntCounterVec,
    cache: IntCounterVec,
}

impl ProxyMetrics {
    pub fn register(registry: &Registry) -> prometheus::Result<Self> {
        let m = Self {
            latency: HistogramVec::new(
                HistogramOpts::new(
                    "kms_sidecar_upstream_request_duration_seconds",
                    "Proxy mode: time of forwarded calls at the upstream KMS (retries included), per key and operation.",
                )
                .buckets(LATENCY_BUCKETS.to_vec()),
                &["key", "operation"],
            )?,
            errors: IntCounterVec::new(
                Opts::new(
                    "kms_sidecar_upstream_errors_total",
                    "Proxy mode: forwarded calls that failed, per key, operation and KMS error type.",
                ),
                &["key", "operation", "error"],
            )?,
            cache: IntCounterVec::new(
                Opts::new(
                    "kms_sidecar_proxy_decrypt_cache_total",
                    "Proxy mode: Decrypts per upstream key by cache outcome (hit or miss).",
                ),
                &["key", "outcome"],
            )?,
        };
        registry.register(Box::new(m.latency.clone()))?;
        registry.register(Box::new(m.errors.clone()))?;
        registry.register(Box::new(m.cache.clone()))?;
        Ok(m)
    }

    pub fn family_names() -> [&'static str; 3] {
        [
            "kms_sidecar_upstream_request_duration_seconds",
            "kms_sidecar_upstream_errors_total",
            "kms_sidecar_proxy_decrypt_cache_total",
        ]
    }

    pub(super) fn upstream(
        &self,
        dir: &Directory,
        arn: &str,
        op: Operation,
        error: Option<&KmsError>,
        took: Duration,
    ) {
        let key = dir.label(arn);
        self.latency
            .with_label_values(&[key, op.as_str()])
            .observe(took.as_secs_f64());
        if let Some(e) = error {
            self.errors
                .with_label_values(&[key, op.as_str(), e.kind().name()])
                .inc();
        }
    }

    pub(super) fn cache(&self, dir: &Directory, arn: &str, hit: bool) {
        self.cache
            .with_label_values(&[dir.label(arn), if hit { "hit" } else { "miss" }])
            .inc();
    }
}

impl Proxy {
    /// Reads the upstream's aliases into a new [`Directory`].
    async fn read_directory(&self) -> Result<Directory, KmsError> {
        let mut dir = Directory::default();
        let mut marker: Option<String> = None;
        for _ in 0..MAX_ALIAS_PAGES {
            let page = self
                .list_aliases(None, Some(100), marker.as_deref())
                .await
                .map_err(super::upstream_error)?;
            for a in page.aliases {
                if dir.arn_prefix.is_none()
                    && let Some((prefix, _)) = a.alias_arn.split_once("alias/")
                {
                    dir.arn_prefix = Some(prefix.to_string());
                }
                if a.target_key_id.is_empty() {
                    continue;
                }
                let arn = match &dir.arn_prefix {
                    Some(p) if !a.target_key_id.starts_with("arn:") => {
                        format!("{p}key/{}", a.target_key_id)
                    }
                    _ => a.target_key_id.clone(),
                };
                dir.key_aliases
                    .entry(arn.clone())
                    .or_default()
                    .push(a.alias_name.clone());
                dir.alias_target.insert(a.alias_name, arn);
            }
            match page.next_marker.filter(|_| page.truncated) {
                Some(m) => marker = Some(m),
                None => break,
            }
        }
        let policy = self.policy.load();
        for k in policy.literal_keys() {
            if dir.labeled.len() >= MAX_KEY_LABELS {
                break;
            }
            if let Some(arn) = dir.resolve(k) {
                dir.labeled.insert(arn);
            }
        }
        Ok(dir)
    }

    /// One poll: the aliases, then the rotation status of the labeled keys.
    pub async fn poll_once(&self, keys: &crate::keys::metrics::KeyMetrics) -> Result<(), KmsError> {
        let dir = self.read_directory().await?;
        let mut rotation = Vec::new();
        for arn in &dir.labeled {
            match self.get_key_rotation_status(arn).await {
                Ok(s) => rotation.push(UpstreamRotation {
                    key: arn.clone(),
                    alias: dir.aliases_of(arn).first().cloned().unwrap_or_default(),
                    enabled: s.key_rotation_enabled,
                    period_days: s.rotation_period_in_days,
                    next_rotation: s.next_rotation_date,
                }),
                Err(e) => {
                    tracing::warn!(key = %arn, error = %e, "upstream GetKeyRotationStatus failed")
                }
            }
        }
        self.directory.store(Arc::new(dir));
        keys.set_upstream_rotation(rotation);
        Ok(())
    }

    /// Polls every `interval` until the process ends; a failed poll keeps the last directory.
    pub async fn poll(
        self: Arc<Self>,
        keys: Arc<crate::keys::metrics::KeyMetrics>,
        interval: Duration,
    ) {
        loop {
            if let Err(e) = self.poll_once(&keys).await {
                tracing::warn!(error = %e, "polling the upstream KMS failed; keeping the last alias map");
            }
            tokio::time::sleep(interval).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ARN: &str = "arn:aws:kms:us-east-1:111122223333:key/k1";

    #[test]
    fn directory_resolves_every_key_id_form() {
        let mut d = Directory {
            arn_prefix: Some("arn:aws:kms:us-east-1:111122223333:".into()),
            ..Default::default()
        };
        d.alias_target.insert("alias/app".into(), ARN.into());
        d.key_aliases.insert(ARN.into(), vec!["alias/app".into()]);
        assert_eq!(d.resolve("alias/app").as_deref(), Some(ARN));
        assert_eq!(
            d.resolve("arn:aws:kms:us-east-1:111122223333:alias/app")
                .as_deref(),
            Some(ARN)
        );
        assert_eq!(d.resolve("k1").as_deref(), Some(ARN));
        assert_eq!(d.resolve(ARN).as_deref(), Some(ARN));
        assert_eq!(d.resolve("alias/unknown"), None);
        assert!(d.names(ARN, "k1") && d.names(ARN, "alias/app") && !d.names(ARN, "alias/x"));
        assert_eq!(d.label(ARN), OTHER);
        d.labeled.insert(ARN.into());
        assert_eq!(d.label(ARN), ARN);
    }
}
