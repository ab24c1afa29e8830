//! The fleet view: one row per sidecar (availability, p99, throttled share, breaker, overdue keys,
//! version), worst first, so the one sidecar in trouble is the first thing read. Computed from
//! each source's own series ([`Model::per_source`]) with the same definitions as the Overview.

use super::derive::Circuit;
use super::quantile::quantile;
use super::sli::{self, Health};
use super::store::{Endpoint, Model};

/// One sidecar (or one Prometheus `job/instance`).
#[derive(Clone, Debug, PartialEq)]
pub struct FleetRow {
    pub source: String,
    pub requests: f64,
    pub availability: Option<f64>,
    pub p99: Option<f64>,
    /// Throttled calls / all calls in the window.
    pub throttled_share: Option<f64>,
    pub breaker: Option<Circuit>,
    pub overdue_keys: Option<usize>,
    pub version: Option<String>,
    pub reachable: bool,
    pub health: Health,
}

fn m(name: &str) -> String {
    format!("kms_sidecar_{name}")
}

/// The fleet's rows over `[now - window, now]`, worst first: unreachable, breaker open, below the
/// SLO, then by availability, throttled share and p99.
pub fn rows(model: &Model, window: f64, slo: f64, now: f64) -> Vec<FleetRow> {
    let from = now - window;
    let mut out: Vec<FleetRow> = model
        .per_source
        .iter()
        .map(|(source, one)| {
            let req = m("requests_total");
            let outcomes = one.increase_by(&req, &[], &["outcome"], from, now);
            let total: f64 = outcomes.values().sum();
            let faults: f64 = outcomes
                .iter()
                .filter(|(o, _)| sli::is_bad(o))
                .map(|(_, v)| v)
                .sum();
            let throttled = one.increase_by(&m("throttled_total"), &[], &["scope"], from, now);
            let shared: f64 = throttled
                .iter()
                .filter(|(s, _)| sli::is_shared_throttle(s))
                .map(|(_, v)| v)
                .sum();
            let all_throttled: f64 = throttled.values().sum();
            let availability = sli::availability(total, faults + shared);
            let buckets = one.buckets_by(&m("request_duration_seconds"), &[], &[], from, now);
            let p99 = buckets.get("all").and_then(|b| quantile(0.99, b));
            let status = match model.status.get(source) {
                Some(Endpoint::Ok(s)) => Some(s),
                _ => None,
            };
            let breaker = one
                .gauge_by(&m("circuit_state"), &[], &[])
                .get("all")
                .and_then(|v| Circuit::from_gauge(*v))
                .or_else(|| {
                    status
                        .and_then(|s| s.backend.as_ref())
                        .and_then(|b| Circuit::from_status(&b.circuit))
                });
            let overdue_keys = status
                .map(|s| {
                    s.keys
                        .iter()
                        .filter(|k| k.rotation_overdue && k.state == "Enabled")
                        .count()
                })
                .or_else(|| {
                    one.has(&m("key_rotation_overdue")).then(|| {
                        one.gauge_by(&m("key_rotation_overdue"), &[], &["key"])
                            .values()
                            .filter(|v| **v > 0.0)
                            .count()
                    })
                });
            let version = status
                .map(|s| s.version.clone())
                .filter(|v| !v.is_empty())
                .or_else(|| {
                    one.select(&m("build_info"), &[])
                        .find_map(|(id, _)| id.labels.get("version").cloned())
                });
            let reachable = model.sources.get(source).is_none_or(|h| h.error.is_none());
            let health = if !reachable
                || breaker == Some(Circuit::Open)
                || availability.is_some_and(|a| a < slo)
            {
                Health::Bad
            } else if breaker == Some(Circuit::HalfOpen)
                || overdue_keys.is_some_and(|n| n > 0)
                || all_throttled > 0.0
            {
                Health::Warn
            } else if availability.is_some() {
                Health::Good
            } else {
                Health::Unknown
            };
            FleetRow {
                source: source.clone(),
                requests: total,
                availability,
                p99,
                throttled_share: (total > 0.0).then(|| all_throttled / total),
                breaker,
                overdue_keys,
                version,
                reachable,
                health,
            }
        })
        .collect();
    let rank = |h: Health| match h {
        Health::Bad => 0,
        Health::Warn => 1,
        Health::Unknown => 2,
        Health::Good => 3,
    };
    out.sort_by(|a, b| {
        rank(a.health)
            .cmp(&rank(b.health))
            .then(
                a.availability
                    .unwrap_or(1.0)
                    .total_cmp(&b.availability.unwrap_or(1.0)),
            )
            .then(
                b.throttled_share
                    .unwrap_or(0.0)
                    .total_cmp(&a.throttled_share.unwrap_or(0.0)),
            )
            .then(b.p99.unwrap_or(0.0).total_cmp(&a.p99.unwrap_or(0.0)))
            .then(a.source.cmp(&b.source))
    });
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::prom::parse;
    use crate::model::store::ModelConfig;

    fn text(ok: u32, internal: u32, throttled: u32, circuit: u32) -> String {
        format!(
            "kms_sidecar_requests_total{{outcome=\"ok\"}} {ok}\n\
kms_sidecar_requests_total{{outcome=\"KMSInternalException\"}} {internal}\n\
kms_sidecar_throttled_total{{principal=\"p\",scope=\"principal\"}} {throttled}\n\
kms_sidecar_circuit_state{{backend=\"embedded\"}} {circuit}\n\
kms_sidecar_build_info{{backend=\"embedded\",version=\"0.1.0\"}} 1\n"
        )
    }

    #[test]
    fn one_row_per_sidecar_worst_first_and_scoping() {
        let mut model = Model::new(ModelConfig::default());
        for (t, k) in [(0.0, 0), (60.0, 1)] {
            model.ingest("http://a", t, &parse(&text(1000 * k, 0, 0, 0)).unwrap());
            model.ingest(
                "http://b",
                t,
                &parse(&text(900 * k, 100 * k, 0, 2 * k)).unwrap(),
            );
            model.ingest(
                "http://c",
                t,
                &parse(&text(1000 * k, 0, 50 * k, 0)).unwrap(),
            );
        }
        let rows = rows(&model, 300.0, 0.999, 60.0);
        let order: Vec<&str> = rows.iter().map(|r| r.source.as_str()).collect();
        assert_eq!(order, ["http://b", "http://c", "http://a"]);
        assert_eq!(rows[0].breaker, Some(Circuit::Open));
        assert_eq!(rows[0].availability, Some(0.9));
        assert_eq!(rows[1].throttled_share, Some(0.05));
        assert_eq!(rows[1].health, Health::Warn);
        assert_eq!(rows[2].version.as_deref(), Some("0.1.0"));
        assert_eq!(rows[2].health, Health::Good);
        // scoping: one sidecar's totals, not the fleet's
        let b = model.scoped("http://b").unwrap();
        assert_eq!(b.total(&m("requests_total"), &[], 0.0, 60.0), Some(1000.0));
        assert_eq!(
            model.total(&m("requests_total"), &[], 0.0, 60.0),
            Some(3000.0)
        );
        assert!(model.scoped("http://nope").is_none());
    }
}
