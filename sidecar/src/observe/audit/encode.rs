//! The audit line encoder: one record's compact JSON, hashed into the chain, written straight into
//! the writer's buffer.
//!
//! Why it exists: the writer used to build an owned [`AuditRecord`] per call (a `String` for each
//! member, a `Vec` of context keys), serialize it into a fresh `Vec`, hash it into a hex `String` and
//! keep the record for `/v1/audit`: about a dozen heap allocations per KMS call on a thread that
//! shares the cores with the request path. Here each member is written from the [`AuditEvent`] by
//! serde_json's own writers (the same escaping and number formatting), so the line is byte for byte
//! what serializing the equivalent `AuditRecord` gives (a test checks), and the chain's hash covers
//! exactly the same bytes as before: `hex(SHA-256(prev_hash || line without its hash member))`.

use std::io::Write as _;

use serde::Serialize;
use sha2::{Digest, Sha256};

use super::AuditEvent;
use crate::kms::Operation;

/// Appends `,"name":` and `value` as serde_json writes them.
fn member(buf: &mut Vec<u8>, name: &str, value: &impl Serialize) -> serde_json::Result<()> {
    buf.extend_from_slice(b",\"");
    buf.extend_from_slice(name.as_bytes());
    buf.extend_from_slice(b"\":");
    serde_json::to_writer(&mut *buf, value)
}

fn finite(x: f64) -> f64 {
    if x.is_finite() { x } else { 0.0 }
}

/// Appends the record line for `ev` chained from `prev_hash` (with its newline) to `buf`, and
/// writes the record's hash (lowercase hex) into `hash`. On error `buf` is left as it was.
pub(super) fn encode_line(
    buf: &mut Vec<u8>,
    ev: &AuditEvent,
    include_context_values: bool,
    prev_hash: &str,
    hash: &mut [u8; 64],
) -> serde_json::Result<()> {
    let start = buf.len();
    let result = encode_body(buf, ev, include_context_values, prev_hash);
    if let Err(e) = result {
        buf.truncate(start);
        return Err(e);
    }
    // The hashed body is the line without its hash member: what is written so far, closed.
    let mut h = Sha256::new();
    h.update(prev_hash.as_bytes());
    h.update(&buf[start..]);
    h.update(b"}");
    // A 32-byte digest always fits 64 hex characters.
    let _ = hex::encode_to_slice(h.finalize(), hash);
    buf.extend_from_slice(b",\"hash\":\"");
    buf.extend_from_slice(hash);
    buf.extend_from_slice(b"\"}\n");
    Ok(())
}

/// The members of [`super::AuditRecord`] in order, up to and including `prev_hash`, without the
/// closing brace.
fn encode_body(
    buf: &mut Vec<u8>,
    ev: &AuditEvent,
    include_context_values: bool,
    prev_hash: &str,
) -> serde_json::Result<()> {
    buf.extend_from_slice(b"{\"time\":");
    serde_json::to_writer(&mut *buf, &finite(ev.time))?;
    member(buf, "request_id", &ev.request_id)?;
    member(buf, "principal", &ev.principal)?;
    member(buf, "source", &ev.source)?;
    member(
        buf,
        "operation",
        &ev.operation.map_or("unknown", Operation::as_str),
    )?;
    member(buf, "key_id", &ev.key_id)?;
    member(buf, "key_version", &ev.key_version)?;
    buf.extend_from_slice(b",\"context_keys\":[");
    for (i, key) in ev.encryption_context.keys().enumerate() {
        if i > 0 {
            buf.push(b',');
        }
        serde_json::to_writer(&mut *buf, key)?;
    }
    buf.push(b']');
    if include_context_values {
        member(buf, "context", &ev.encryption_context)?;
    }
    member(buf, "outcome", &ev.outcome)?;
    member(buf, "error_type", &ev.error_type.map(|k| k.name()))?;
    member(buf, "reason", &ev.reason)?;
    member(buf, "cache", &ev.cache.as_str())?;
    member(buf, "latency_ms", &finite(ev.latency_ms))?;
    // Absent (not null) unless set, as `AuditRecord` skips them.
    if let Some(id) = &ev.kms_request_id {
        member(buf, "kms_request_id", id)?;
    }
    if let Some(arn) = &ev.aws_principal_arn {
        member(buf, "aws_principal_arn", arn)?;
    }
    member(buf, "prev_hash", &prev_hash)?;
    buf.flush().map_err(serde_json::Error::io)
}

#[cfg(test)]
mod tests {
    use super::super::chain::{check_line, record_hash};
    use super::super::{AuditRecord, Outcome, RequestId, Source};
    use super::*;
    use crate::cache::CacheOutcome;
    use crate::kms::ErrorKind;

    fn event(outcome: Outcome, context: &[(&str, &str)]) -> AuditEvent {
        AuditEvent {
            time: 1_795_434_129.123_456,
            request_id: RequestId::new(0x0bad_f00d, 42),
            principal: "billing \"quoted\" \u{1f512}".into(),
            source: Source::Addr("127.0.0.1:50412".parse().unwrap()),
            operation: Some(Operation::Decrypt),
            key_id: (outcome != Outcome::Error).then(|| "k1".into()),
            key_version: (outcome == Outcome::Ok).then_some(3),
            encryption_context: context
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            outcome,
            error_type: (outcome != Outcome::Ok).then_some(ErrorKind::AccessDenied),
            reason: (outcome == Outcome::Denied).then_some("policy_denied"),
            cache: CacheOutcome::Hit,
            latency_ms: 0.041_7,
            kms_request_id: None,
            aws_principal_arn: None,
        }
    }

    /// What the writer produced before this encoder: the serialized `AuditRecord`.
    fn with_serde(ev: &AuditEvent, include: bool, prev: &str) -> Vec<u8> {
        let mut record = AuditRecord {
            time: ev.time,
            request_id: ev.request_id.to_string(),
            principal: ev.principal.as_str().to_owned(),
            source: ev.source.to_string(),
            operation: ev.operation.map_or("unknown", Operation::as_str).into(),
            key_id: ev.key_id.clone(),
            key_version: ev.key_version,
            context_keys: ev.encryption_context.keys().cloned().collect(),
            context: include.then(|| ev.encryption_context.clone()),
            outcome: ev.outcome,
            error_type: ev.error_type.map(|k| k.name().to_owned()),
            reason: ev.reason.map(str::to_owned),
            cache: ev.cache.as_str().into(),
            latency_ms: ev.latency_ms,
            kms_request_id: ev.kms_request_id.clone(),
            aws_principal_arn: ev.aws_principal_arn.clone(),
            prev_hash: prev.into(),
            hash: String::new(),
        };
        let body = serde_json::to_vec(&record).unwrap();
        record.hash = record_hash(prev, &body);
        let mut line = serde_json::to_vec(&record).unwrap();
        line.push(b'\n');
        line
    }

    #[test]
    fn lines_are_byte_identical_to_the_serialized_record_and_chain() {
        let prev = "ab".repeat(32);
        for outcome in Outcome::ALL {
            for context in [&[][..], &[("app", "x"), ("tenant", "a\"b\\c\n\u{7}")][..]] {
                for (include, xks) in [(false, false), (true, false), (false, true)] {
                    let mut ev = event(outcome, context);
                    if xks {
                        ev.kms_request_id = Some("4112f4d6-db54-4af4-ae30-c55a22a8dfae".into());
                        ev.aws_principal_arn = Some("arn:aws:iam::123456789012:user/\"x\"".into());
                    }
                    let mut buf = b"previous line\n".to_vec();
                    let mut hash = [0u8; 64];
                    encode_line(&mut buf, &ev, include, &prev, &mut hash).unwrap();
                    let line = &buf[b"previous line\n".len()..];
                    assert_eq!(
                        String::from_utf8_lossy(line),
                        String::from_utf8_lossy(&with_serde(&ev, include, &prev))
                    );
                    let (p, h) = check_line(&line[..line.len() - 1]).unwrap();
                    assert_eq!((p.as_str(), h.as_bytes()), (prev.as_str(), &hash[..]));
                }
            }
        }
    }

    #[test]
    fn non_finite_numbers_are_written_as_zero() {
        let mut ev = event(Outcome::Ok, &[]);
        ev.time = f64::NAN;
        ev.latency_ms = f64::INFINITY;
        let mut buf = Vec::new();
        encode_line(&mut buf, &ev, false, &"0".repeat(64), &mut [0; 64]).unwrap();
        let r: AuditRecord = serde_json::from_slice(&buf).unwrap();
        assert_eq!((r.time, r.latency_ms), (0.0, 0.0));
    }
}
