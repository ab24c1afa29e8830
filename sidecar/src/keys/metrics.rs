//! Per-key metrics: usage (`key_operations_total`), rotation compliance (`key_rotation_enabled`,
//! `key_last_rotation_timestamp_seconds`, `key_rotation_period_seconds`, `key_rotation_overdue`) and
//! rotation outcomes (`key_rotations_total`).
//!
//! Key labels are bounded: the first `max_keys` key ids seen get their own series, later ones are
//! counted under `other`, so a client creating keys in a loop cannot blow up cardinality. Rotation
//! gauges are recomputed from the key index at every scrape, so deleted keys disappear and nothing
//! has to be kept in sync by hand.

use std::collections::HashMap;
use std::sync::{Arc, OnceLock};

use arc_swap::ArcSwap;
use prometheus::{GaugeVec, IntCounter, IntCounterVec, IntGaugeVec, Opts, Registry};

use crate::keys::{Index, KeyMeta, KeyState, RotationType};
use crate::kms::{Operation, Timestamp};

/// Label value for keys beyond the cardinality bound.
pub const OTHER: &str = "other";

/// Rotation compliance settings.
#[derive(Debug, Clone, Copy)]
pub struct RotationPolicy {
    /// Time after the due date before a key counts as overdue.
    pub grace_seconds: f64,
    /// Whether a key without automatic rotation counts as non-compliant.
    pub required: bool,
}

/// One key label's `key_operations_total` handles, created on first use of each operation.
#[derive(Debug)]
struct KeyCounters {
    label: String,
    cells: Box<[OnceLock<IntCounter>]>,
}

type OpCounters = Arc<KeyCounters>;

/// Per-key metric families.
#[derive(Debug)]
pub struct KeyMetrics {
    operations: IntCounterVec,
    rotations: IntCounterVec,
    enabled: IntGaugeVec,
    last_rotation: GaugeVec,
    period: GaugeVec,
    overdue: IntGaugeVec,
    /// Pre-resolved `key_operations_total` handles per key label; copy-on-write, read lock-free.
    handles: ArcSwap<HashMap<String, OpCounters>>,
    /// Serializes handle creation; holds how many keys have their own series.
    write: std::sync::Mutex<usize>,
    max_keys: usize,
    policy: RotationPolicy,
    /// Rotation status of upstream keys (proxy mode), polled in the background and folded into
    /// the rotation gauges at every scrape like the local keys.
    upstream: ArcSwap<Vec<UpstreamRotation>>,
    /// The registry's health (`registry_up`, `registry_applied_revision`,
    /// `registry_watch_lag_seconds`): fed by the etcd registry, constant with the data directory.
    pub registry: RegistryGauges,
}

/// The key registry's health gauges.
#[derive(Debug, Clone)]
pub struct RegistryGauges {
    pub up: prometheus::IntGauge,
    pub applied: prometheus::IntGauge,
    pub lag: prometheus::Gauge,
}

/// One upstream key's rotation status, as the proxy's background poll read it.
#[derive(Debug, Clone, PartialEq)]
pub struct UpstreamRotation {
    /// The key label (the key ARN, or `other`).
    pub key: String,
    /// One of its aliases, or empty.
    pub alias: String,
    pub enabled: bool,
    /// Rotation period in days, when rotation is enabled.
    pub period_days: Option<u32>,
    /// When the next automatic rotation is due.
    pub next_rotation: Option<Timestamp>,
}

impl KeyMetrics {
    pub fn register(
        registry: &Registry,
        max_keys: usize,
        policy: RotationPolicy,
    ) -> prometheus::Result<Self> {
        let key_alias = &["key", "alias"];
        let m = Self {
            operations: IntCounterVec::new(
                Opts::new(
                    "kms_sidecar_key_operations_total",
                    "Successful operations per key and operation.",
                ),
                &["key", "operation"],
            )?,
            rotations: IntCounterVec::new(
                Opts::new(
                    "kms_sidecar_key_rotations_total",
                    "Key rotations by outcome (ok or failed) and trigger (automatic or on_demand).",
                ),
                &["key", "outcome", "trigger"],
            )?,
            enabled: IntGaugeVec::new(
                Opts::new(
                    "kms_sidecar_key_rotation_enabled",
                    "1 when automatic rotation is enabled for the key.",
                ),
                key_alias,
            )?,
            last_rotation: GaugeVec::new(
                Opts::new(
                    "kms_sidecar_key_last_rotation_timestamp_seconds",
                    "Creation time of the key's current version (its creation when never rotated), Unix seconds.",
                ),
                key_alias,
            )?,
            period: GaugeVec::new(
                Opts::new(
                    "kms_sidecar_key_rotation_period_seconds",
                    "Configured automatic rotation period in seconds (0 when rotation is disabled).",
                ),
                key_alias,
            )?,
            overdue: IntGaugeVec::new(
                Opts::new(
                    "kms_sidecar_key_rotation_overdue",
                    "1 when the key is not rotation-compliant: rotation overdue past the grace period, or disabled while rotation is required.",
                ),
                key_alias,
            )?,
            handles: ArcSwap::from_pointee(HashMap::new()),
            write: std::sync::Mutex::new(0),
            max_keys,
            policy,
            upstream: ArcSwap::from_pointee(Vec::new()),
            registry: RegistryGauges {
                up: prometheus::IntGauge::new(
                    "kms_sidecar_registry_up",
                    "1 while the key registry is current: always with the data directory; with etcd while its watch is connected and caught up.",
                )?,
                applied: prometheus::IntGauge::new(
                    "kms_sidecar_registry_applied_revision",
                    "The etcd revision up to which registry changes are applied to this sidecar's key index (0 with the data directory).",
                )?,
                lag: prometheus::Gauge::new(
                    "kms_sidecar_registry_watch_lag_seconds",
                    "Seconds since this sidecar's key index was last confirmed current with etcd (0 with the data directory).",
                )?,
            },
        };
        m.registry.up.set(1);
        registry.register(Box::new(m.registry.up.clone()))?;
        registry.register(Box::new(m.registry.applied.clone()))?;
        registry.register(Box::new(m.registry.lag.clone()))?;
        registry.register(Box::new(m.operations.clone()))?;
        registry.register(Box::new(m.rotations.clone()))?;
        registry.register(Box::new(m.enabled.clone()))?;
        registry.register(Box::new(m.last_rotation.clone()))?;
        registry.register(Box::new(m.period.clone()))?;
        registry.register(Box::new(m.overdue.clone()))?;
        Ok(m)
    }

    /// The metric family names this module exports.
    pub fn family_names() -> [&'static str; 9] {
        [
            "kms_sidecar_registry_up",
            "kms_sidecar_registry_applied_revision",
            "kms_sidecar_registry_watch_lag_seconds",
            "kms_sidecar_key_operations_total",
            "kms_sidecar_key_rotations_total",
            "kms_sidecar_key_rotation_enabled",
            "kms_sidecar_key_last_rotation_timestamp_seconds",
            "kms_sidecar_key_rotation_period_seconds",
            "kms_sidecar_key_rotation_overdue",
        ]
    }

    fn counters(&self, key_id: &str) -> Option<OpCounters> {
        if let Some(c) = self.handles.load().get(key_id) {
            return Some(c.clone());
        }
        let mut own = self.write.lock().ok()?;
        let current = self.handles.load();
        if let Some(c) = current.get(key_id) {
            return Some(c.clone());
        }
        let label = if *own < self.max_keys { key_id } else { OTHER };
        let counters: OpCounters = match current.get(OTHER).filter(|_| label == OTHER) {
            Some(other) => other.clone(),
            None => Arc::new(KeyCounters {
                label: label.to_string(),
                cells: Operation::ALL.iter().map(|_| OnceLock::new()).collect(),
            }),
        };
        let mut next = HashMap::clone(&current);
        if label == OTHER {
            next.insert(OTHER.to_string(), counters.clone());
        } else {
            *own += 1;
        }
        // Every real key id gets an entry (its own series or `other`'s), so only its first use locks.
        next.insert(key_id.to_string(), counters.clone());
        self.handles.store(Arc::new(next));
        Some(counters)
    }

    /// The bounded label of an existing key: its id, or `other` past the per-key bound.
    pub fn key_label(&self, key_id: &str) -> String {
        self.counters(key_id)
            .map_or_else(|| OTHER.to_string(), |c| c.label.clone())
    }

    /// Counts one successful `op` on `key_id`.
    pub fn record(&self, key_id: &str, op: Operation) {
        if cfg!(feature = "bench-noop-metrics") {
            return;
        }
        if let Some(counters) = self.counters(key_id)
            && let Some(cell) = counters.cells.get(op.index())
        {
            cell.get_or_init(|| {
                self.operations
                    .with_label_values(&[&counters.label, op.as_str()])
            })
            .inc();
        }
    }

    /// Counts a rotation attempt.
    pub fn rotation(&self, key_id: &str, ok: bool, trigger: RotationType) {
        let own = self.counters(key_id).is_some_and(|c| {
            !self
                .handles
                .load()
                .get(OTHER)
                .is_some_and(|o| Arc::ptr_eq(o, &c))
        });
        let label = if own { key_id } else { OTHER };
        let trigger = match trigger {
            RotationType::Automatic => "automatic",
            RotationType::OnDemand => "on_demand",
        };
        self.rotations
            .with_label_values(&[label, if ok { "ok" } else { "failed" }, trigger])
            .inc();
    }

    /// Whether `meta` is out of rotation compliance at `now`.
    pub fn is_overdue(&self, meta: &KeyMeta, now: Timestamp) -> bool {
        if meta.state == KeyState::PendingDeletion {
            return false;
        }
        if meta.rotation_enabled {
            meta.next_rotation
                .is_some_and(|due| now > due + self.policy.grace_seconds)
        } else {
            self.policy.required
        }
    }

    /// Replaces the upstream keys' rotation status (proxy mode).
    pub fn set_upstream_rotation(&self, keys: Vec<UpstreamRotation>) {
        self.upstream.store(Arc::new(keys));
    }

    fn refresh_upstream(&self, now: Timestamp) {
        for k in self.upstream.load().iter().take(self.max_keys) {
            let labels = [k.key.as_str(), k.alias.as_str()];
            let period = k
                .period_days
                .filter(|_| k.enabled)
                .map_or(0.0, |d| f64::from(d) * 86_400.0);
            self.enabled
                .with_label_values(&labels)
                .set(i64::from(k.enabled));
            self.period.with_label_values(&labels).set(period);
            // KMS does not say when a key last rotated; one period before the next rotation is
            // when it did (or was created), which is what the gauge means.
            if let Some(next) = k.next_rotation.filter(|_| period > 0.0) {
                self.last_rotation
                    .with_label_values(&labels)
                    .set(next - period);
            }
            let overdue = if k.enabled {
                k.next_rotation
                    .is_some_and(|due| now > due + self.policy.grace_seconds)
            } else {
                self.policy.required
            };
            self.overdue
                .with_label_values(&labels)
                .set(i64::from(overdue));
        }
    }

    /// Recomputes the rotation gauges from the index (called at scrape time).
    pub fn refresh(&self, index: &Index, now: Timestamp) {
        for g in [&self.enabled, &self.overdue] {
            g.reset();
        }
        self.last_rotation.reset();
        self.period.reset();
        self.refresh_upstream(now);
        let mut aliases: HashMap<&str, &str> = HashMap::new();
        for (name, a) in &index.aliases {
            aliases.entry(a.target.as_str()).or_insert(name.as_str());
        }
        let mut ids: Vec<&String> = index.keys.keys().collect();
        ids.sort();
        for (i, id) in ids.into_iter().enumerate() {
            if i >= self.max_keys {
                break;
            }
            let Some(meta) = index.keys.get(id) else {
                continue;
            };
            let labels = [id.as_str(), aliases.get(id.as_str()).copied().unwrap_or("")];
            self.enabled
                .with_label_values(&labels)
                .set(i64::from(meta.rotation_enabled));
            let last = meta.versions.last().map_or(meta.created, |v| v.created);
            self.last_rotation.with_label_values(&labels).set(last);
            let period = meta
                .rotation_period_days
                .filter(|_| meta.rotation_enabled)
                .map_or(0.0, |d| f64::from(d) * 86_400.0);
            self.period.with_label_values(&labels).set(period);
            self.overdue
                .with_label_values(&labels)
                .set(i64::from(self.is_overdue(meta, now)));
        }
    }
}
