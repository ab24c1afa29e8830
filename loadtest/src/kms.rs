//! Real KMS traffic: the request bodies of each operation, spread over keys and principals, and the
//! check of every response (status and `__type`). Signing is in [`crate::sign`], the setup and
//! cleanup calls in [`crate::setup`].

use std::collections::BTreeMap;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use bytes::Bytes;
use serde_json::{Value, json};

use crate::mix::{Mix, Op};
use crate::sign::Credential;

/// Checks a response: `Ok` for a 200 that carries the operation's result member, otherwise the
/// error type to count (the KMS `__type`, or `HTTP<status>` / `MalformedResponse`).
pub fn classify(op: Op, status: u16, body: &[u8]) -> Result<(), String> {
    if status == 200 {
        let member = op.expected_member();
        return if body.windows(member.len()).any(|w| w == member) {
            Ok(())
        } else {
            Err("MalformedResponse".into())
        };
    }
    Err(error_type(status, body))
}

/// The KMS error type of an error response (`com.amazonaws.kms#X` is reduced to `X`).
pub fn error_type(status: u16, body: &[u8]) -> String {
    serde_json::from_slice::<Value>(body)
        .ok()
        .and_then(|v| v.get("__type").and_then(Value::as_str).map(str::to_string))
        .map(|t| t.rsplit('#').next().unwrap_or_default().to_string())
        .filter(|t| !t.is_empty())
        .unwrap_or_else(|| format!("HTTP{status}"))
}

/// What to send: the mix, who sends it, against which keys, with what payload.
#[derive(Debug, Clone)]
pub struct WorkloadSpec {
    pub mix: Mix,
    pub creds: Vec<Credential>,
    pub region: String,
    /// Keys to create in the setup phase (ignored when `key_ids` is not empty).
    pub keys: usize,
    /// Existing keys to use instead of creating some.
    pub key_ids: Vec<String>,
    pub ciphertexts_per_key: usize,
    pub payload_bytes: usize,
    pub context: BTreeMap<String, String>,
}

/// The prepared request bodies; request `i`'s (operation, body, principal) is a pure function of `i`.
#[derive(Debug)]
pub struct Workload {
    pub mix: Mix,
    pub creds: Vec<Credential>,
    pub region: String,
    pub key_ids: Vec<String>,
    pub ciphertexts: usize,
    bodies: Vec<Vec<Bytes>>,
}

/// A cheap, well-mixed hash of the request index (SplitMix64), to spread keys and principals.
pub(crate) fn splitmix(i: u64) -> u64 {
    let mut z = i.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

impl Workload {
    /// Request `i`: its operation, body and signing principal.
    pub fn pick(&self, i: u64) -> (Op, &Bytes, &Credential) {
        let op = self.mix.op(i);
        let h = splitmix(i);
        let bodies = &self.bodies[op.index()];
        let body = &bodies[(h % bodies.len() as u64) as usize];
        let cred = &self.creds[((h >> 32) % self.creds.len() as u64) as usize];
        (op, body, cred)
    }

    /// Builds every body from keys and ciphertexts (base64).
    pub(crate) fn build(spec: &WorkloadSpec, key_ids: Vec<String>, cts: Vec<String>) -> Self {
        let ctx = &spec.context;
        let with_ctx = |mut v: Value, member: &str| {
            if !ctx.is_empty() {
                v[member] = json!(ctx);
            }
            v
        };
        let payload = B64.encode(payload(spec.payload_bytes, 0));
        let mut bodies = vec![Vec::new(); Op::ALL.len()];
        for op in Op::ALL {
            let list: Vec<Value> = match op {
                Op::Encrypt => key_ids
                    .iter()
                    .map(|k| {
                        with_ctx(
                            json!({"KeyId": k, "Plaintext": payload}),
                            "EncryptionContext",
                        )
                    })
                    .collect(),
                Op::GenerateDataKey | Op::GenerateDataKeyWithoutPlaintext => key_ids
                    .iter()
                    .map(|k| {
                        with_ctx(
                            json!({"KeyId": k, "KeySpec": "AES_256"}),
                            "EncryptionContext",
                        )
                    })
                    .collect(),
                Op::Decrypt => cts
                    .iter()
                    .map(|c| with_ctx(json!({"CiphertextBlob": c}), "EncryptionContext"))
                    .collect(),
                Op::ReEncrypt => cts
                    .iter()
                    .zip(key_ids.iter().cycle())
                    .map(|(c, k)| {
                        let v = json!({"CiphertextBlob": c, "DestinationKeyId": k});
                        with_ctx(
                            with_ctx(v, "SourceEncryptionContext"),
                            "DestinationEncryptionContext",
                        )
                    })
                    .collect(),
                Op::GenerateRandom => vec![json!({"NumberOfBytes": 32})],
            };
            bodies[op.index()] = list
                .into_iter()
                .map(|v| Bytes::from(v.to_string()))
                .collect();
        }
        // An op with no body (no ciphertexts) cannot be in the mix; `prepare` checked that.
        for b in &mut bodies {
            if b.is_empty() {
                b.push(Bytes::from_static(b"{}"));
            }
        }
        Self {
            mix: spec.mix.clone(),
            creds: spec.creds.clone(),
            region: spec.region.clone(),
            key_ids,
            ciphertexts: cts.len(),
            bodies,
        }
    }

    /// A workload with made-up keys and ciphertexts of realistic size, for the baseline responder
    /// alone (it checks nothing), so no sidecar is needed.
    pub fn synthetic(spec: &WorkloadSpec) -> Self {
        let n = spec.keys.max(1);
        let keys: Vec<String> = (0..n)
            .map(|k| format!("00000000-0000-4000-8000-{k:012}"))
            .collect();
        let per_key = spec.ciphertexts_per_key.max(1);
        let cts = (0..n * per_key)
            .map(|i| B64.encode(payload(spec.payload_bytes + 80, i as u64 + 1)))
            .collect();
        Self::build(spec, keys, cts)
    }
}

/// Deterministic filler bytes (the content of a payload does not matter, only its size).
pub(crate) fn payload(len: usize, seed: u64) -> Vec<u8> {
    (0..len as u64)
        .map(|i| (splitmix(seed.wrapping_mul(1_000_003).wrapping_add(i)) & 0xff) as u8)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(mix: &str) -> WorkloadSpec {
        WorkloadSpec {
            mix: Mix::parse(mix).unwrap(),
            creds: crate::sign::credentials(
                vec!["AKIDA".into(), "AKIDB".into()],
                vec!["s1".into(), "s2".into()],
            )
            .unwrap(),
            region: "us-east-1".into(),
            keys: 3,
            key_ids: vec![],
            ciphertexts_per_key: 2,
            payload_bytes: 64,
            context: BTreeMap::from([("app".to_string(), "lt".to_string())]),
        }
    }

    #[test]
    fn classifies_responses() {
        assert_eq!(
            classify(Op::Decrypt, 200, br#"{"Plaintext":"aGk="}"#),
            Ok(())
        );
        assert_eq!(
            classify(Op::Encrypt, 200, br#"{"Plaintext":"aGk="}"#),
            Err("MalformedResponse".into())
        );
        assert_eq!(
            classify(
                Op::Decrypt,
                400,
                br#"{"__type":"ThrottlingException","message":"slow down"}"#
            ),
            Err("ThrottlingException".into())
        );
        assert_eq!(
            classify(
                Op::Decrypt,
                400,
                br#"{"__type":"com.amazonaws.kms#NotFoundException"}"#
            ),
            Err("NotFoundException".into())
        );
        assert_eq!(classify(Op::Decrypt, 502, b"<html>"), Err("HTTP502".into()));
    }

    #[test]
    fn workload_spreads_keys_principals_and_ops() {
        let w = Workload::synthetic(&spec("decrypt=3,encrypt=1"));
        assert_eq!(w.ciphertexts, 6);
        let mut principals = std::collections::HashSet::new();
        let mut bodies = std::collections::HashSet::new();
        let mut decrypts = 0;
        for i in 0..400 {
            let (op, body, cred) = w.pick(i);
            principals.insert(cred.access_key_id.clone());
            bodies.insert(body.clone());
            if op == Op::Decrypt {
                decrypts += 1;
                let v: Value = serde_json::from_slice(body).unwrap();
                assert_eq!(v["EncryptionContext"]["app"], "lt");
                assert!(v["CiphertextBlob"].is_string());
            }
        }
        assert_eq!(decrypts, 300);
        assert_eq!(principals.len(), 2);
        assert_eq!(bodies.len(), 6 + 3);
    }
}
