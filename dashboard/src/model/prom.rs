//! Parses the Prometheus text exposition format (0.0.4) that the sidecar's `/metrics` serves.
//!
//! A small parser of our own rather than the `prometheus-parse` crate: that crate (0.2.5, last
//! released 2024) splits label pairs on `,` and `=`, so a label value containing either, or an
//! escaped quote, is silently mangled, and it reads the wall clock while parsing. Key aliases and
//! principal names are label values here, so they must survive intact.

use std::collections::BTreeMap;

/// Labels of one series, sorted by name so equal label sets compare equal.
pub type Labels = BTreeMap<String, String>;

/// What a family's `# TYPE` line said (or what its name implies).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// Only ever goes up, except when the process restarts (a reset).
    Counter,
    /// Any value; the latest one is the truth.
    Gauge,
}

/// One sample line.
#[derive(Clone, Debug, PartialEq)]
pub struct Sample {
    /// Full sample name, e.g. `kms_sidecar_request_duration_seconds_bucket`.
    pub name: String,
    /// Its labels (including `le` for histogram buckets).
    pub labels: Labels,
    /// The value (`+Inf`, `-Inf` and `NaN` are allowed by the format).
    pub value: f64,
    /// Counter or gauge, from the `# TYPE` line or the name.
    pub kind: Kind,
}

/// A parse failure, with the 1-based line number.
#[derive(Debug, thiserror::Error, PartialEq)]
#[error("metrics line {line}: {reason}")]
pub struct ParseError {
    /// 1-based line number.
    pub line: usize,
    /// What was wrong.
    pub reason: &'static str,
}

/// The kind a sample has when no `# TYPE` line says otherwise: the naming conventions of the
/// metrics contract (`_total` counters, histogram `_bucket`/`_count`/`_sum`) make this exact for
/// the families the dashboard reads, and it is all a Prometheus query result tells us.
pub fn kind_from_name(name: &str) -> Kind {
    if name.ends_with("_total")
        || name.ends_with("_bucket")
        || name.ends_with("_count")
        || name.ends_with("_sum")
    {
        Kind::Counter
    } else {
        Kind::Gauge
    }
}

/// Parses a whole exposition. Unknown `#` lines are skipped; a malformed sample line is an error
/// (a half-parsed scrape would show wrong numbers).
pub fn parse(text: &str) -> Result<Vec<Sample>, ParseError> {
    let mut types: BTreeMap<String, Kind> = BTreeMap::new();
    let mut out = Vec::new();
    for (i, raw) in text.lines().enumerate() {
        let line = raw.trim();
        if line.is_empty() {
            continue;
        }
        if let Some(rest) = line.strip_prefix('#') {
            let mut parts = rest.split_whitespace();
            if parts.next() == Some("TYPE")
                && let (Some(name), Some(t)) = (parts.next(), parts.next())
            {
                let kind = match t {
                    "counter" | "histogram" | "summary" => Kind::Counter,
                    _ => Kind::Gauge,
                };
                types.insert(name.to_string(), kind);
            }
            continue;
        }
        let err = |reason| ParseError {
            line: i + 1,
            reason,
        };
        let (name, labels, rest) = split_sample(line).map_err(err)?;
        let value_text = rest.split_whitespace().next().ok_or(err("missing value"))?;
        let value = parse_value(value_text).ok_or(err("bad value"))?;
        let kind = family_kind(&types, &name);
        out.push(Sample {
            name,
            labels,
            value,
            kind,
        });
    }
    Ok(out)
}

fn family_kind(types: &BTreeMap<String, Kind>, name: &str) -> Kind {
    if let Some(k) = types.get(name) {
        return *k;
    }
    for suffix in ["_bucket", "_count", "_sum"] {
        if let Some(base) = name.strip_suffix(suffix)
            && let Some(k) = types.get(base)
        {
            // `_sum` of a histogram is cumulative too; quantile lines of a summary are not, but
            // the sidecar exports no summaries.
            return *k;
        }
    }
    kind_from_name(name)
}

/// Parses a Prometheus float (`+Inf`, `-Inf`, `NaN` included).
pub fn parse_value(s: &str) -> Option<f64> {
    match s {
        "+Inf" | "Inf" | "inf" | "+inf" => Some(f64::INFINITY),
        "-Inf" | "-inf" => Some(f64::NEG_INFINITY),
        "NaN" | "nan" => Some(f64::NAN),
        _ => s.parse().ok(),
    }
}

fn split_sample(line: &str) -> Result<(String, Labels, &str), &'static str> {
    let name_end = line
        .find(|c: char| c == '{' || c.is_whitespace())
        .ok_or("missing value")?;
    let name = &line[..name_end];
    if name.is_empty()
        || !name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
    {
        return Err("bad metric name");
    }
    let rest = &line[name_end..];
    let Some(body) = rest.strip_prefix('{') else {
        return Ok((name.to_string(), Labels::new(), rest));
    };
    let mut labels = Labels::new();
    let mut chars = body.char_indices().peekable();
    loop {
        // skip separators and whitespace
        while let Some((_, c)) = chars.peek() {
            if *c == ',' || c.is_whitespace() {
                chars.next();
            } else {
                break;
            }
        }
        let Some((start, c)) = chars.next() else {
            return Err("unterminated labels");
        };
        if c == '}' {
            return Ok((name.to_string(), labels, &body[start + 1..]));
        }
        let mut key = String::from(c);
        loop {
            match chars.next() {
                Some((_, '=')) => break,
                Some((_, c)) if c.is_ascii_alphanumeric() || c == '_' => key.push(c),
                Some((_, c)) if c.is_whitespace() => {}
                _ => return Err("bad label name"),
            }
        }
        while chars.peek().is_some_and(|(_, c)| c.is_whitespace()) {
            chars.next();
        }
        if chars.next().map(|(_, c)| c) != Some('"') {
            return Err("label value must be quoted");
        }
        let mut value = String::new();
        loop {
            match chars.next() {
                Some((_, '"')) => break,
                Some((_, '\\')) => match chars.next() {
                    Some((_, 'n')) => value.push('\n'),
                    Some((_, c)) => value.push(c),
                    None => return Err("unterminated label value"),
                },
                Some((_, c)) => value.push(c),
                None => return Err("unterminated label value"),
            }
        }
        labels.insert(key, value);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_counters_histograms_and_escapes() {
        let text = "# HELP kms_sidecar_requests_total KMS API requests.\n\
# TYPE kms_sidecar_requests_total counter\n\
kms_sidecar_requests_total{operation=\"Encrypt\",outcome=\"ok\"} 2\n\
# TYPE kms_sidecar_request_duration_seconds histogram\n\
kms_sidecar_request_duration_seconds_bucket{cache=\"none\",operation=\"Encrypt\",le=\"0.0001\"} 1\n\
kms_sidecar_request_duration_seconds_bucket{cache=\"none\",operation=\"Encrypt\",le=\"+Inf\"} 2\n\
kms_sidecar_request_duration_seconds_sum{cache=\"none\",operation=\"Encrypt\"} 0.0003\n\
kms_sidecar_cache_entries{cache=\"decrypt\"} 7 1700000000000\n\
kms_sidecar_key_rotation_enabled{alias=\"alias/a,b=c \\\"q\\\"\",key=\"k1\"} 1\n";
        let s = parse(text).unwrap();
        assert_eq!(s.len(), 6);
        assert_eq!(s[0].name, "kms_sidecar_requests_total");
        assert_eq!(s[0].labels["outcome"], "ok");
        assert_eq!(s[0].value, 2.0);
        assert_eq!(s[0].kind, Kind::Counter);
        assert_eq!(s[2].labels["le"], "+Inf");
        assert_eq!(s[2].kind, Kind::Counter);
        assert_eq!(s[3].kind, Kind::Counter);
        assert_eq!(s[4].value, 7.0);
        assert_eq!(s[4].kind, Kind::Gauge);
        assert_eq!(s[5].labels["alias"], "alias/a,b=c \"q\"");
        assert_eq!(s[5].labels["key"], "k1");
    }

    #[test]
    fn special_values_and_no_labels() {
        let s = parse("up 1\nx_total NaN\ny +Inf\n").unwrap();
        assert_eq!(s[0].labels.len(), 0);
        assert!(s[1].value.is_nan());
        assert_eq!(s[1].kind, Kind::Counter);
        assert_eq!(s[2].value, f64::INFINITY);
    }

    #[test]
    fn malformed_lines_are_errors_with_line_numbers() {
        assert_eq!(
            parse("ok 1\nbad{a=\"x} 1\n").unwrap_err(),
            ParseError {
                line: 2,
                reason: "unterminated label value"
            }
        );
        assert_eq!(
            parse("x{a=b} 1").unwrap_err().reason,
            "label value must be quoted"
        );
        assert_eq!(parse("x abc").unwrap_err().reason, "bad value");
        assert_eq!(parse("x").unwrap_err().reason, "missing value");
    }
}
