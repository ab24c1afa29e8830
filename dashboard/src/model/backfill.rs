//! History from before the dashboard opened: the sidecar's `GET /v1/history` document (its last
//! hours of series at 10 s, and its event log) merged into the [`Model`] as if the dashboard had
//! been scraping all along. Merging is by time per source: only samples newer than the source's
//! last ingested scrape are added, and they carry the same raw counter values `/metrics` shows, so
//! a backfill before, between or after live scrapes never counts an increase twice.

use std::collections::BTreeMap;

use serde::Deserialize;

use super::prom::{Kind, Labels, Sample};
use super::store::Model;

/// `GET /v1/history` (schema in `docs/admin-api.md`). Unknown fields are ignored.
#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(default)]
pub struct HistoryDoc {
    pub resolution_seconds: f64,
    pub times: Vec<f64>,
    pub series: Vec<HistorySeries>,
    pub events: Vec<Event>,
}

/// One series of the history: `null` where it did not exist yet.
#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(default)]
pub struct HistorySeries {
    pub name: String,
    #[serde(rename = "type")]
    pub kind: String,
    pub labels: Labels,
    pub values: Vec<Option<f64>>,
}

/// Something that happened in a sidecar, drawn as a marker on the time series.
#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(default)]
pub struct Event {
    /// Unix seconds.
    pub time: f64,
    /// `start`, `breaker`, `rotation`, `faults_on`, `faults_off`, `reload`.
    pub kind: String,
    pub detail: String,
}

impl HistoryDoc {
    /// The samples of each sample time, oldest first, as a scrape would have returned them.
    pub fn steps(&self) -> Vec<(f64, Vec<Sample>)> {
        self.times
            .iter()
            .enumerate()
            .map(|(i, t)| {
                let samples = self
                    .series
                    .iter()
                    .filter_map(|s| {
                        let value = s.values.get(i).copied().flatten()?;
                        Some(Sample {
                            name: s.name.clone(),
                            labels: s.labels.clone(),
                            value,
                            kind: if s.kind == "counter" {
                                Kind::Counter
                            } else {
                                Kind::Gauge
                            },
                        })
                    })
                    .collect();
                (*t, samples)
            })
            .collect()
    }
}

impl Model {
    /// Adds a source's history: every sample newer than its last ingested scrape, then its
    /// events (each kept once). Returns the number of samples added.
    pub fn backfill(&mut self, source: &str, doc: &HistoryDoc) -> usize {
        let mut added = 0;
        for (t, samples) in doc.steps() {
            if self.last_ingest(source).is_some_and(|last| t <= last) {
                continue;
            }
            self.ingest(source, t, &samples);
            added += 1;
        }
        // Another source's points may already be newer than these: the fleet-wide sums of the
        // series this history touched are rebuilt from every source's own, in time order.
        if added > 0 && self.per_source.len() > 1 {
            self.rebuild_fleet_series(source);
        }
        self.add_events(source, &doc.events);
        added
    }

    /// Adds events of `source`, skipping ones already known.
    pub fn add_events(&mut self, source: &str, events: &[Event]) {
        let known = self.events.entry(source.to_string()).or_default();
        for e in events {
            if !known.contains(e) {
                known.push(e.clone());
            }
        }
        known.sort_by(|a, b| a.time.total_cmp(&b.time));
        // bounded like the sidecar's own log
        let excess = known.len().saturating_sub(2048);
        known.drain(..excess);
        self.version += 1;
    }

    /// Events of every source in `[from, to]`, oldest first, with their source.
    pub fn events_in(&self, from: f64, to: f64) -> Vec<(String, Event)> {
        let mut out: Vec<(String, Event)> = self
            .events
            .iter()
            .flat_map(|(s, es)| es.iter().map(move |e| (s.clone(), e.clone())))
            .filter(|(_, e)| e.time >= from && e.time <= to)
            .collect();
        out.sort_by(|a, b| a.1.time.total_cmp(&b.1.time));
        out
    }
}

/// Events derived from counters when the source keeps no event log (Prometheus mode): one per
/// interval in which `circuit_transitions_total` or `key_rotations_total` rose.
pub fn events_from_counters(model: &Model, from: f64, to: f64) -> Vec<Event> {
    let mut out = Vec::new();
    for (family, kind, label) in [
        ("kms_sidecar_circuit_transitions_total", "breaker", "to"),
        ("kms_sidecar_key_rotations_total", "rotation", "key"),
    ] {
        let mut by_time: BTreeMap<u64, Vec<String>> = BTreeMap::new();
        for (id, h) in model.select(family, &[]) {
            let pts = h.points();
            for w in pts.iter().collect::<Vec<_>>().windows(2) {
                let ((_, v0), (t1, v1)) = (*w[0], *w[1]);
                if v1 > v0 && t1 >= from && t1 <= to {
                    let what = id.labels.get(label).cloned().unwrap_or_default();
                    let who = id.labels.get("backend").cloned().unwrap_or_default();
                    let text = match kind {
                        "breaker" => format!("{who} breaker {what}"),
                        _ => format!("{what} rotated"),
                    };
                    by_time.entry(t1.to_bits()).or_default().push(text);
                }
            }
        }
        for (t, texts) in by_time {
            out.push(Event {
                time: f64::from_bits(t),
                kind: kind.to_string(),
                detail: texts.join(", "),
            });
        }
    }
    out.sort_by(|a, b| a.time.total_cmp(&b.time));
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::prom::parse;
    use crate::model::store::ModelConfig;

    fn doc(times: &[f64], values: &[Option<f64>]) -> HistoryDoc {
        HistoryDoc {
            resolution_seconds: 10.0,
            times: times.to_vec(),
            series: vec![HistorySeries {
                name: "kms_sidecar_throttled_total".into(),
                kind: "counter".into(),
                labels: [("scope".to_string(), "principal".to_string())].into(),
                values: values.to_vec(),
            }],
            events: vec![Event {
                time: times[0],
                kind: "start".into(),
                detail: "started".into(),
            }],
        }
    }

    fn live(m: &mut Model, t: f64, v: u32) {
        let text = format!("kms_sidecar_throttled_total{{scope=\"principal\"}} {v}\n");
        m.ingest("s", t, &parse(&text).unwrap());
    }

    #[test]
    fn backfill_then_live_scrapes_count_each_increase_once() {
        // The sidecar started at 1000 and throttled 30 calls per 10 s; the dashboard opens at 1062.
        let mut m = Model::new(ModelConfig::default());
        let history = doc(
            &[1000.0, 1010.0, 1020.0, 1030.0, 1040.0, 1050.0, 1060.0],
            &[0.0, 30.0, 60.0, 90.0, 120.0, 150.0, 180.0].map(Some),
        );
        assert_eq!(m.backfill("s", &history), 7);
        live(&mut m, 1062.0, 186);
        live(&mut m, 1064.0, 192);
        // the same history again (a reconnect) and a newer sample between live scrapes
        assert_eq!(m.backfill("s", &history), 0);
        let mut newer = doc(&[1060.0, 1070.0], &[Some(180.0), Some(210.0)]);
        newer.events = history.events.clone();
        assert_eq!(m.backfill("s", &newer), 1);
        live(&mut m, 1072.0, 216);
        let all = m.total("kms_sidecar_throttled_total", &[], 900.0, 1072.0);
        assert_eq!(
            all,
            Some(216.0),
            "every throttled call once, from the first frame"
        );
        assert_eq!(
            m.total("kms_sidecar_throttled_total", &[], 1010.0, 1040.0),
            Some(90.0)
        );
        assert_eq!(m.first_time(), Some(1000.0));
        // events are kept once
        assert_eq!(m.events_in(0.0, 2000.0).len(), 1);
    }

    #[test]
    fn two_sidecars_backfilled_one_after_the_other_sum_over_time() {
        // A throttled 30 per 10 s, B 10 per 10 s, over the same minute; A's history arrives
        // first, so B's points are all older than the fleet series' newest point
        let mut m = Model::new(ModelConfig::default());
        let times = [1000.0, 1010.0, 1020.0, 1030.0, 1040.0, 1050.0, 1060.0];
        let a = doc(&times, &times.map(|t| Some(3.0 * (t - 1000.0))));
        let b = doc(&times, &times.map(|t| Some(t - 1000.0)));
        assert_eq!(m.backfill("a", &a), 7);
        assert_eq!(m.backfill("b", &b), 7);
        let total = |m: &Model, from, to| m.total("kms_sidecar_throttled_total", &[], from, to);
        assert_eq!(total(&m, 1000.0, 1060.0), Some(240.0));
        assert_eq!(total(&m, 1010.0, 1040.0), Some(120.0));
        // and live scrapes after it keep adding
        m.ingest(
            "b",
            1062.0,
            &parse("kms_sidecar_throttled_total{scope=\"principal\"} 64\n").unwrap(),
        );
        assert_eq!(total(&m, 1000.0, 1062.0), Some(244.0));
        assert_eq!(
            m.scoped("a")
                .unwrap()
                .total("kms_sidecar_throttled_total", &[], 1000.0, 1062.0),
            Some(180.0)
        );
    }

    #[test]
    fn a_series_born_mid_history_counts_from_zero() {
        let mut m = Model::new(ModelConfig::default());
        let history = doc(&[0.0, 10.0, 20.0], &[None, Some(4.0), Some(9.0)]);
        m.backfill("s", &history);
        assert_eq!(
            m.total("kms_sidecar_throttled_total", &[], 0.0, 20.0),
            Some(9.0)
        );
    }

    #[test]
    fn a_history_after_a_restart_counts_the_new_process() {
        // the dashboard saw 500, the sidecar restarted, its history starts at 0 again
        let mut m = Model::new(ModelConfig::default());
        live(&mut m, 100.0, 400);
        live(&mut m, 110.0, 500);
        m.backfill("s", &doc(&[120.0, 130.0], &[Some(0.0), Some(20.0)]));
        live(&mut m, 132.0, 25);
        assert_eq!(
            m.total("kms_sidecar_throttled_total", &[], 100.0, 132.0),
            Some(125.0)
        );
    }

    #[test]
    fn prometheus_mode_events_come_from_counters() {
        let mut m = Model::new(ModelConfig::default());
        let s = |v: u32| {
            format!(
                "kms_sidecar_circuit_transitions_total{{backend=\"embedded\",to=\"open\"}} {v}\n"
            )
        };
        m.ingest("p", 0.0, &parse(&s(0)).unwrap());
        m.ingest("p", 15.0, &parse(&s(0)).unwrap());
        m.ingest("p", 30.0, &parse(&s(1)).unwrap());
        let e = events_from_counters(&m, 0.0, 100.0);
        assert_eq!(e.len(), 1);
        assert_eq!(
            (e[0].time, e[0].detail.as_str()),
            (30.0, "embedded breaker open")
        );
    }
}
