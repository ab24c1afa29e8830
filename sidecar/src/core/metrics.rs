//! Every metric family of the sidecar in one registry: each module registers its own families
//! (`observe`, `backend`, `keys`, `cache`, `limits`), and this gathers them, so the registry is
//! passed explicitly and never global.

use std::sync::Arc;

use prometheus::{IntGaugeVec, Opts, Registry};

use crate::backend::faults::FaultMetrics;
use crate::backend::metrics::BackendMetrics;
use crate::cache::CacheFamilies;
use crate::keys::metrics::KeyMetrics;
use crate::limits::{BreakerMetrics, RateMetrics, RetryMetrics};
use crate::observe::MetricsSettings;
use crate::observe::audit::AuditMetrics;
use crate::observe::metrics::RequestMetrics;
use crate::observe::security::UnauthorizedMetrics;

/// Every metric family of the sidecar, registered in one registry (passed explicitly, never global).
#[derive(Debug)]
pub struct Metrics {
    pub registry: Registry,
    pub requests: RequestMetrics,
    pub backend: Arc<BackendMetrics>,
    pub keys: Arc<KeyMetrics>,
    pub unauthorized: UnauthorizedMetrics,
    pub audit: AuditMetrics,
    pub cache: CacheFamilies,
    pub rate: Arc<RateMetrics>,
    pub breaker: BreakerMetrics,
    pub retry: RetryMetrics,
    /// Injected faults; series appear only when fault injection is enabled.
    pub faults: FaultMetrics,
    /// `kms_sidecar_kmsv2_status_ok{key}`: 1 when the Kubernetes KMS v2 plugin's last Status was
    /// healthy, 0 when not; no series unless the plugin is enabled (`key` is the configured key).
    pub kmsv2_status_ok: IntGaugeVec,
    /// The last hours of these series and the event log, for `/v1/history` (`observe::history`).
    pub history: Arc<crate::observe::history::History>,
}

impl Metrics {
    pub fn register(
        backend_name: &'static str,
        settings: MetricsSettings,
    ) -> prometheus::Result<Self> {
        let registry = Registry::new();
        let history = Arc::new(crate::observe::history::History::new());
        let build = IntGaugeVec::new(
            Opts::new(
                "kms_sidecar_build_info",
                "Always 1; labels say which version runs with which backend.",
            ),
            &["version", "backend"],
        )?;
        build
            .with_label_values(&[env!("CARGO_PKG_VERSION"), backend_name])
            .set(1);
        registry.register(Box::new(build))?;
        registry.register(Box::new(
            prometheus::process_collector::ProcessCollector::for_self(),
        ))?;
        Ok(Self {
            requests: RequestMetrics::register(&registry)?,
            backend: Arc::new(BackendMetrics::register(
                &registry,
                backend_name,
                settings.price_per_10k_requests,
                settings.price_per_key_month,
            )?),
            keys: Arc::new(KeyMetrics::register(
                &registry,
                settings.max_keys,
                settings.rotation,
            )?),
            unauthorized: UnauthorizedMetrics::register(&registry)?,
            cache: CacheFamilies::register(&registry)?,
            rate: Arc::new(RateMetrics::register(&registry)?),
            breaker: BreakerMetrics::register(&registry)?.with_events(history.events()),
            retry: RetryMetrics::register(&registry)?,
            faults: FaultMetrics::register(&registry)?,
            audit: AuditMetrics::register(&registry)?,
            kmsv2_status_ok: {
                let g = IntGaugeVec::new(
                    Opts::new(
                        "kms_sidecar_kmsv2_status_ok",
                        "1 when the Kubernetes KMS v2 plugin's last Status call was healthy (a backend round trip under the configured key worked), 0 when not.",
                    ),
                    &["key"],
                )?;
                registry.register(Box::new(g.clone()))?;
                g
            },
            history,
            registry,
        })
    }

    /// Names of every `kms_sidecar_*` family this build exports (the contract `docs/metrics.md` lists).
    pub fn family_names() -> Vec<&'static str> {
        let mut names = vec!["kms_sidecar_build_info"];
        names.extend(RequestMetrics::family_names());
        names.extend(BackendMetrics::family_names());
        names.extend(KeyMetrics::family_names());
        names.extend(UnauthorizedMetrics::family_names());
        names.extend(CacheFamilies::family_names());
        names.extend(crate::limits::family_names());
        names.extend(FaultMetrics::family_names());
        names.extend([
            "kms_sidecar_audit_events_total",
            "kms_sidecar_audit_write_errors_total",
            "kms_sidecar_kmsv2_status_ok",
        ]);
        names.sort_unstable();
        names
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keys::metrics::RotationPolicy;
    use crate::kms::Operation;
    use crate::observe::metrics;
    use std::time::Duration;

    fn settings() -> MetricsSettings {
        MetricsSettings {
            max_keys: 2,
            rotation: RotationPolicy {
                grace_seconds: 86_400.0,
                required: false,
            },
            price_per_10k_requests: 0.03,
            price_per_key_month: 1.0,
        }
    }

    #[test]
    fn docs_table_matches_registry() {
        let m = Metrics::register("embedded", settings()).unwrap();
        // Touch every vector family so it has a child and shows up when rendered.
        m.requests.record(
            crate::kms::Frontend::AwsJson,
            Some(Operation::Encrypt),
            None,
            crate::cache::CacheOutcome::None,
            Duration::from_micros(1),
        );
        m.backend.record(
            crate::backend::metrics::BackendOp::Encrypt,
            None,
            Duration::from_micros(1),
        );
        m.keys.record("k1", Operation::Encrypt);
        m.keys
            .rotation("k1", true, crate::keys::RotationType::OnDemand);
        m.unauthorized
            .record("aws_json", "unknown", "Encrypt", "none", "bad_signature");
        let _ = m.cache.for_cache("decrypt");
        m.rate.throttled("p", crate::limits::Scope::Global);
        let _ = m.rate.admitted_counter("p");
        m.rate
            .set_limit(crate::limits::Scope::Global, "global", 1.0);
        let _breaker = crate::limits::Breaker::new(
            "embedded",
            crate::limits::BreakerSpec::default(),
            &m.breaker,
        )
        .unwrap();
        let _ = m.retry.for_backend("embedded");
        let _ = m.faults.for_backend("embedded");
        m.kmsv2_status_ok.with_label_values(&["alias/k8s"]).set(1);
        let mut index = crate::keys::Index::default();
        let meta: crate::keys::KeyMeta = serde_json::from_value(serde_json::json!({
            "format": 1, "id": "k1", "backend": "embedded", "created": 0.0, "description": "",
            "state": "Enabled", "deletion_date": null, "pending_window_days": null,
            "versions": [{"version": 1, "created": 0.0, "rotation": null}],
            "rotation_enabled": true, "rotation_period_days": 90, "next_rotation": 100.0, "tags": {}
        }))
        .unwrap();
        index.keys.insert("k1".into(), std::sync::Arc::new(meta));
        m.keys.refresh(&index, 1e9);
        let text = String::from_utf8(metrics::render(&m.registry)).unwrap();
        let mut rendered: Vec<&str> = text
            .lines()
            .filter_map(|l| l.strip_prefix("# TYPE "))
            .filter_map(|l| l.split(' ').next())
            .filter(|n| n.starts_with("kms_sidecar_"))
            .collect();
        rendered.sort_unstable();
        assert_eq!(rendered, Metrics::family_names());
        assert!(
            text.contains("process_resident_memory_bytes"),
            "process metrics"
        );
        assert!(
            text.contains("kms_sidecar_key_rotation_overdue{alias=\"\",key=\"k1\"} 1"),
            "{text}"
        );

        let doc = include_str!("../../../docs/metrics.md");
        let mut documented: Vec<&str> = doc
            .lines()
            .filter_map(|l| l.strip_prefix("| `"))
            .filter_map(|l| l.split('`').next())
            .filter(|n| n.starts_with("kms_sidecar_"))
            .collect();
        documented.sort_unstable();
        assert_eq!(
            documented,
            Metrics::family_names(),
            "docs/metrics.md and the registry differ"
        );
    }

    #[test]
    fn key_labels_are_bounded() {
        let m = Metrics::register("embedded", settings()).unwrap();
        for i in 0..1000 {
            m.keys.record(&format!("key-{i}"), Operation::Decrypt);
        }
        let text = String::from_utf8(metrics::render(&m.registry)).unwrap();
        let series = text
            .lines()
            .filter(|l| l.starts_with("kms_sidecar_key_operations_total{"))
            .count();
        // Two keys of their own (max_keys = 2) plus `other`, for each operation that was used.
        assert_eq!(series, 3, "{text}");
        assert!(
            text.contains(
                "kms_sidecar_key_operations_total{key=\"other\",operation=\"Decrypt\"} 998"
            )
        );
    }
}
