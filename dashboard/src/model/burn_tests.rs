//! The dashboard's burn rates against the alert rules: `alerts/tests/dashboard_burn.yml` is a
//! promtool test (run by `alerts/check.sh`) that pins what the recording rules compute on one
//! synthetic incident; this test feeds the same series, read from that file, into the model and
//! checks the dashboard computes the same error ratios for the same windows.

use super::*;
use crate::model::prom::parse;
use crate::model::store::ModelConfig;

const FILE: &str = include_str!("../../../alerts/tests/dashboard_burn.yml");

/// promtool's expanding notation for the forms the file uses: `AxN` (N+1 times A) and `A+BxN`.
fn expand(values: &str) -> Vec<f64> {
    let mut out = Vec::new();
    for token in values.split_whitespace() {
        let (head, n) = token.split_once('x').unwrap();
        let n: usize = n.parse().unwrap();
        let (a, b) = match head.split_once('+') {
            Some((a, b)) => (a.parse::<f64>().unwrap(), b.parse::<f64>().unwrap()),
            None => (head.parse::<f64>().unwrap(), 0.0),
        };
        out.extend((0..=n).map(|i| a + b * i as f64));
    }
    out
}

fn quoted(line: &str) -> &str {
    line.split('\'').nth(1).unwrap()
}

#[test]
fn burn_rates_equal_the_recording_rules_on_the_same_series() {
    let lines: Vec<&str> = FILE.lines().map(str::trim).collect();
    let mut series: Vec<(String, Vec<f64>)> = Vec::new();
    for (i, l) in lines.iter().enumerate() {
        if l.starts_with("- series:") {
            // job/instance are Prometheus' target labels; the model keys sources apart itself
            let sel = quoted(l).replace("job=\"kms-sidecar\",instance=\"a:7301\",", "");
            series.push((sel, expand(quoted(lines[i + 1]))));
        }
    }
    assert_eq!(series.len(), 4);
    let mut m = Model::new(ModelConfig::default());
    let n = series[0].1.len();
    for step in 0..n {
        let text: String = series
            .iter()
            .map(|(sel, v)| format!("{sel} {}\n", v[step]))
            .collect();
        m.ingest("a", step as f64 * 60.0, &parse(&text).unwrap());
    }
    let now = (n - 1) as f64 * 60.0;
    let slo = 0.999;
    let settings = Settings {
        window_secs: 3600.0,
        slo,
        p95_target_secs: 0.025,
    };
    let d = Derived::compute(&m, settings, now);
    for (i, window) in ["5m", "1h", "6h"].iter().enumerate() {
        let rule = format!("- expr: kms_sidecar:sli_availability_error_ratio:rate{window}");
        let at = lines.iter().position(|l| *l == rule).unwrap();
        let expected: f64 = lines[at..]
            .iter()
            .find_map(|l| l.strip_prefix("value: "))
            .unwrap()
            .parse()
            .unwrap();
        let ratio = d.burn[i].unwrap() * (1.0 - slo);
        assert!(
            (ratio - expected).abs() < 1e-12,
            "{window}: dashboard {ratio}, recording rule {expected}"
        );
    }
}
