//! PromQL-like questions over the stored histories: increase and rate by label, quantiles of a
//! histogram over a window or over time, latest gauges. Every function takes the times it needs;
//! none reads a clock.

use std::collections::BTreeMap;

use super::quantile::quantile;
use super::store::{Model, group_key};

/// One plotted line: `x` is seconds relative to "now" (negative), `y` the value.
#[derive(Clone, Debug, PartialEq)]
pub struct Line {
    pub name: String,
    pub points: Vec<[f64; 2]>,
}

/// Evenly spaced sample times ending at `to`, never finer than `min_step` and at most `max_n`.
pub fn grid(from: f64, to: f64, min_step: f64, max_n: usize) -> (Vec<f64>, f64) {
    let span = (to - from).max(0.0);
    let step = (span / max_n.max(1) as f64).max(min_step).max(1e-3);
    let n = (span / step).floor() as usize;
    let ts = (0..=n).rev().map(|i| to - step * i as f64).collect();
    (ts, step)
}

impl Model {
    /// Increase of a counter family over `[from, to]`, summed per group of `by` labels.
    pub fn increase_by(
        &self,
        name: &str,
        filter: &[(&str, &str)],
        by: &[&str],
        from: f64,
        to: f64,
    ) -> BTreeMap<String, f64> {
        let mut out = BTreeMap::new();
        for (id, h) in self.select(name, filter) {
            if let Some(v) = h.increase(from, to) {
                *out.entry(group_key(&id.labels, by)).or_insert(0.0) += v;
            }
        }
        out
    }

    /// Total increase over `[from, to]`; `None` when the family was never seen.
    pub fn total(&self, name: &str, filter: &[(&str, &str)], from: f64, to: f64) -> Option<f64> {
        let mut any = false;
        let mut sum = 0.0;
        for (_, h) in self.select(name, filter) {
            any = true;
            sum += h.increase(from, to).unwrap_or(0.0);
        }
        any.then_some(sum)
    }

    /// Earliest point of any series of a family (where its lines should start).
    fn family_start(&self, name: &str, filter: &[(&str, &str)]) -> Option<f64> {
        self.select(name, filter)
            .filter_map(|(_, h)| h.first().map(|p| p.0))
            .reduce(f64::min)
    }

    /// Per-second rate of a counter family over time, one line per group.
    pub fn rate_lines(
        &self,
        name: &str,
        filter: &[(&str, &str)],
        by: &[&str],
        from: f64,
        to: f64,
        step: f64,
    ) -> Vec<Line> {
        let Some(start) = self.family_start(name, filter) else {
            return Vec::new();
        };
        let (ts, step) = grid(from.max(start), to, step, 150);
        let mut groups: BTreeMap<String, Vec<f64>> = BTreeMap::new();
        for (id, h) in self.select(name, filter) {
            let vals: Vec<f64> = ts.iter().map(|t| h.value_at(*t).unwrap_or(0.0)).collect();
            let acc = groups
                .entry(group_key(&id.labels, by))
                .or_insert_with(|| vec![0.0; ts.len()]);
            for (a, v) in acc.iter_mut().zip(vals) {
                *a += v;
            }
        }
        groups
            .into_iter()
            .map(|(name, vals)| Line {
                name,
                points: (1..ts.len())
                    .map(|i| [ts[i] - to, ((vals[i] - vals[i - 1]) / step).max(0.0)])
                    .collect(),
            })
            .collect()
    }

    /// Bucket increases of a histogram family over `[from, to]`, per group:
    /// `(upper bound, cumulative count)` pairs ready for [`quantile`].
    pub fn buckets_by(
        &self,
        family: &str,
        filter: &[(&str, &str)],
        by: &[&str],
        from: f64,
        to: f64,
    ) -> BTreeMap<String, Vec<(f64, f64)>> {
        let name = format!("{family}_bucket");
        let mut acc: BTreeMap<String, BTreeMap<u64, (f64, f64)>> = BTreeMap::new();
        for (id, h) in self.select(&name, filter) {
            let Some(le) = id
                .labels
                .get("le")
                .and_then(|s| super::prom::parse_value(s))
            else {
                continue;
            };
            let inc = h.increase(from, to).unwrap_or(0.0);
            let e = acc
                .entry(group_key(&id.labels, by))
                .or_default()
                .entry(le.to_bits())
                .or_insert((le, 0.0));
            e.1 += inc;
        }
        acc.into_iter()
            .map(|(k, m)| (k, m.into_values().collect()))
            .collect()
    }

    /// The `q` quantile of a histogram family over `[from, to]`, per group (groups without
    /// observations are left out).
    pub fn quantile_by(
        &self,
        family: &str,
        filter: &[(&str, &str)],
        by: &[&str],
        q: f64,
        from: f64,
        to: f64,
    ) -> BTreeMap<String, f64> {
        self.buckets_by(family, filter, by, from, to)
            .into_iter()
            .filter_map(|(k, b)| quantile(q, &b).map(|v| (k, v)))
            .collect()
    }

    /// Observations of a histogram family over `[from, to]` per group (its `+Inf` bucket).
    pub fn count_by(
        &self,
        family: &str,
        filter: &[(&str, &str)],
        by: &[&str],
        from: f64,
        to: f64,
    ) -> BTreeMap<String, f64> {
        self.buckets_by(family, filter, by, from, to)
            .into_iter()
            .map(|(k, b)| {
                let n = b
                    .iter()
                    .find(|(le, _)| *le == f64::INFINITY)
                    .map_or(0.0, |x| x.1);
                (k, n)
            })
            .collect()
    }

    /// Quantiles over time: one line per group and quantile, named `group pNN`; intervals with
    /// no observations have no point (a gap, not a zero).
    #[allow(clippy::too_many_arguments)]
    pub fn quantile_lines(
        &self,
        family: &str,
        filter: &[(&str, &str)],
        by: &[&str],
        qs: &[f64],
        from: f64,
        to: f64,
        step: f64,
    ) -> Vec<Line> {
        let bucket = format!("{family}_bucket");
        let Some(start) = self.family_start(&bucket, filter) else {
            return Vec::new();
        };
        let (ts, _) = grid(from.max(start), to, step, 200);
        let mut lines: BTreeMap<String, Vec<[f64; 2]>> = BTreeMap::new();
        for w in ts.windows(2) {
            for (group, b) in self.buckets_by(family, filter, by, w[0], w[1]) {
                for q in qs {
                    let name = format!("{group} p{}", (q * 100.0).round());
                    let entry = lines.entry(name).or_default();
                    if let Some(v) = quantile(*q, &b) {
                        entry.push([w[1] - to, v]);
                    }
                }
            }
        }
        lines
            .into_iter()
            .filter(|(_, p)| !p.is_empty())
            .map(|(name, points)| Line { name, points })
            .collect()
    }

    /// Latest value of a gauge family per group (summed within a group).
    pub fn gauge_by(
        &self,
        name: &str,
        filter: &[(&str, &str)],
        by: &[&str],
    ) -> BTreeMap<String, f64> {
        let mut out = BTreeMap::new();
        for (id, h) in self.select(name, filter) {
            if let Some((_, v)) = h.last() {
                *out.entry(group_key(&id.labels, by)).or_insert(0.0) += v;
            }
        }
        out
    }

    /// A gauge family over time, one line per group.
    pub fn gauge_lines(
        &self,
        name: &str,
        filter: &[(&str, &str)],
        by: &[&str],
        from: f64,
        to: f64,
        step: f64,
    ) -> Vec<Line> {
        let Some(start) = self.family_start(name, filter) else {
            return Vec::new();
        };
        let (ts, _) = grid(from.max(start), to, step, 150);
        let mut groups: BTreeMap<String, Vec<f64>> = BTreeMap::new();
        for (id, h) in self.select(name, filter) {
            let acc = groups
                .entry(group_key(&id.labels, by))
                .or_insert_with(|| vec![0.0; ts.len()]);
            for (a, t) in acc.iter_mut().zip(&ts) {
                *a += h.value_at(*t).unwrap_or(0.0);
            }
        }
        groups
            .into_iter()
            .map(|(name, vals)| Line {
                name,
                points: ts.iter().zip(vals).map(|(t, v)| [*t - to, v]).collect(),
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::prom::parse;
    use crate::model::store::ModelConfig;

    #[test]
    fn grid_is_bounded_and_ends_at_to() {
        let (ts, step) = grid(0.0, 100.0, 1.0, 10);
        assert_eq!(step, 10.0);
        assert_eq!(ts.len(), 11);
        assert_eq!(ts[0], 0.0);
        assert_eq!(*ts.last().unwrap(), 100.0);
        let (ts, step) = grid(0.0, 100.0, 50.0, 10);
        assert_eq!((ts.len(), step), (3, 50.0));
    }

    #[test]
    fn rates_and_window_quantiles_from_scrapes() {
        let mut m = Model::new(ModelConfig::default());
        let h = |n: [u32; 3]| {
            format!(
                "# TYPE d histogram\n\
                 d_bucket{{op=\"E\",le=\"0.001\"}} {}\nd_bucket{{op=\"E\",le=\"0.01\"}} {}\n\
                 d_bucket{{op=\"E\",le=\"+Inf\"}} {}\nr_total{{op=\"E\"}} {}\n",
                n[0], n[1], n[2], n[2]
            )
        };
        m.ingest("s", 0.0, &parse(&h([0, 0, 0])).unwrap());
        m.ingest("s", 10.0, &parse(&h([10, 90, 100])).unwrap());
        m.ingest("s", 20.0, &parse(&h([10, 90, 300])).unwrap());
        assert_eq!(m.total("r_total", &[], 0.0, 20.0), Some(300.0));
        assert_eq!(m.total("nope_total", &[], 0.0, 20.0), None);
        let lines = m.rate_lines("r_total", &[], &["op"], 0.0, 20.0, 10.0);
        assert_eq!(lines[0].name, "E");
        assert_eq!(lines[0].points, vec![[-10.0, 10.0], [0.0, 20.0]]);
        // first interval: p50 = 0.001 + 0.009 * 40/80
        let q = m.quantile_by("d", &[], &["op"], 0.5, 0.0, 10.0);
        assert!((q["E"] - 0.0055).abs() < 1e-12);
        // second interval: all 200 above 0.01 -> +Inf bucket -> highest finite bound
        let q = m.quantile_by("d", &[], &[], 0.5, 10.0, 20.0);
        assert_eq!(q["all"], 0.01);
        assert_eq!(m.count_by("d", &[], &[], 0.0, 20.0)["all"], 300.0);
        let ql = m.quantile_lines("d", &[], &[], &[0.5], 0.0, 20.0, 10.0);
        assert_eq!(ql[0].name, "all p50");
        assert_eq!(ql[0].points.len(), 2);
    }
}
