//! `/v1/audit` queries over the ring of recent records the writer keeps in memory.
//!
//! Separate from the writer because it is read-only: parsing a query string and filtering the
//! ring never touches the files.

use super::writer::lock;
use super::{AuditLog, AuditRecord, Outcome};

// ---------------------------------------------------------------------------------------------
// `/v1/audit` queries.

/// The largest page `/v1/audit` returns.
pub const MAX_QUERY_LIMIT: usize = 1000;
const DEFAULT_QUERY_LIMIT: usize = 100;

/// A filter over recent records (all conditions must hold).
#[derive(Clone, Debug, PartialEq)]
pub struct AuditQuery {
    pub outcome: Option<Outcome>,
    pub principal: Option<String>,
    pub key: Option<String>,
    /// Records at or after this epoch time.
    pub since: Option<f64>,
    /// 1..=1000.
    pub limit: usize,
}

impl Default for AuditQuery {
    fn default() -> Self {
        Self {
            outcome: None,
            principal: None,
            key: None,
            since: None,
            limit: DEFAULT_QUERY_LIMIT,
        }
    }
}

/// A `/v1/audit` query string that cannot be honoured (answer 400 with this message).
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("invalid query parameter {name}: {problem}")]
pub struct QueryError {
    pub name: String,
    pub problem: &'static str,
}

fn percent_decode(s: &str) -> Option<String> {
    let mut out = Vec::with_capacity(s.len());
    let mut bytes = s.bytes();
    while let Some(b) = bytes.next() {
        match b {
            b'+' => out.push(b' '),
            b'%' => {
                let hi = char::from(bytes.next()?).to_digit(16)?;
                let lo = char::from(bytes.next()?).to_digit(16)?;
                out.push(u8::try_from(hi * 16 + lo).ok()?);
            }
            b => out.push(b),
        }
    }
    String::from_utf8(out).ok()
}

impl AuditQuery {
    /// Parses `outcome=denied&principal=billing&key=…&since=…&limit=…` (no leading `?`).
    pub fn from_query_string(query: &str) -> Result<Self, QueryError> {
        let mut q = Self::default();
        for pair in query.split('&').filter(|p| !p.is_empty()) {
            let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
            let bad = |problem| QueryError {
                name: name.chars().take(32).collect(),
                problem,
            };
            let value = percent_decode(value).ok_or_else(|| bad("bad percent-encoding"))?;
            match name {
                "outcome" => {
                    q.outcome = Some(
                        Outcome::parse(&value)
                            .ok_or_else(|| bad("expected ok, denied or error"))?,
                    );
                }
                "principal" => q.principal = Some(value),
                "key" => q.key = Some(value),
                "since" => {
                    q.since = Some(
                        value
                            .parse::<f64>()
                            .ok()
                            .filter(|s| s.is_finite())
                            .ok_or_else(|| bad("expected epoch seconds"))?,
                    );
                }
                "limit" => {
                    q.limit = value
                        .parse::<usize>()
                        .ok()
                        .filter(|l| (1..=MAX_QUERY_LIMIT).contains(l))
                        .ok_or_else(|| bad("expected 1..=1000"))?;
                }
                _ => return Err(bad("unknown parameter")),
            }
        }
        Ok(q)
    }

    fn matches(&self, r: &AuditRecord) -> bool {
        self.outcome.is_none_or(|o| o == r.outcome)
            && self.principal.as_ref().is_none_or(|p| *p == r.principal)
            && self
                .key
                .as_ref()
                .is_none_or(|k| r.key_id.as_ref() == Some(k))
            && self.since.is_none_or(|s| r.time >= s)
    }
}

impl AuditLog {
    /// Recent written records matching `q`, newest first. The ring holds the written lines; they are
    /// parsed here, outside the lock the writer takes, since queries are rare and records are not.
    pub fn query(&self, q: &AuditQuery) -> Vec<AuditRecord> {
        let lines: Vec<std::sync::Arc<str>> = lock(&self.shared.ring).iter().cloned().collect();
        lines
            .iter()
            .rev()
            .filter_map(|line| serde_json::from_str::<AuditRecord>(line).ok())
            .filter(|r| q.matches(r))
            .take(q.limit)
            .collect()
    }
}
