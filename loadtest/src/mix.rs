//! The operations a load test sends and their mix (`decrypt=80,generate-data-key=15,encrypt=5`).
//! The mix becomes a fixed, evenly interleaved cycle (smooth weighted round robin), so request `i`'s
//! operation depends only on `i`: workers need no shared random state and two runs of the same mix
//! send exactly the same sequence.

use crate::error::LoadError;

/// A KMS operation the load tester can drive.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Op {
    Encrypt,
    Decrypt,
    GenerateDataKey,
    GenerateDataKeyWithoutPlaintext,
    ReEncrypt,
    GenerateRandom,
}

impl Op {
    pub const ALL: [Op; 6] = [
        Op::Encrypt,
        Op::Decrypt,
        Op::GenerateDataKey,
        Op::GenerateDataKeyWithoutPlaintext,
        Op::ReEncrypt,
        Op::GenerateRandom,
    ];

    /// The mix name (kebab case, as the AWS CLI spells it).
    pub fn name(self) -> &'static str {
        match self {
            Op::Encrypt => "encrypt",
            Op::Decrypt => "decrypt",
            Op::GenerateDataKey => "generate-data-key",
            Op::GenerateDataKeyWithoutPlaintext => "generate-data-key-without-plaintext",
            Op::ReEncrypt => "re-encrypt",
            Op::GenerateRandom => "generate-random",
        }
    }

    /// The KMS operation name (as in `X-Amz-Target: TrentService.<name>` and the sidecar's metrics).
    pub fn operation(self) -> &'static str {
        match self {
            Op::Encrypt => "Encrypt",
            Op::Decrypt => "Decrypt",
            Op::GenerateDataKey => "GenerateDataKey",
            Op::GenerateDataKeyWithoutPlaintext => "GenerateDataKeyWithoutPlaintext",
            Op::ReEncrypt => "ReEncrypt",
            Op::GenerateRandom => "GenerateRandom",
        }
    }

    /// The `X-Amz-Target` header value.
    pub fn target(self) -> &'static str {
        match self {
            Op::Encrypt => "TrentService.Encrypt",
            Op::Decrypt => "TrentService.Decrypt",
            Op::GenerateDataKey => "TrentService.GenerateDataKey",
            Op::GenerateDataKeyWithoutPlaintext => "TrentService.GenerateDataKeyWithoutPlaintext",
            Op::ReEncrypt => "TrentService.ReEncrypt",
            Op::GenerateRandom => "TrentService.GenerateRandom",
        }
    }

    /// A member every successful response carries; its absence makes a 200 a malformed response.
    pub fn expected_member(self) -> &'static [u8] {
        match self {
            Op::Encrypt | Op::ReEncrypt | Op::GenerateDataKeyWithoutPlaintext => {
                b"\"CiphertextBlob\""
            }
            Op::Decrypt | Op::GenerateDataKey | Op::GenerateRandom => b"\"Plaintext\"",
        }
    }

    /// Whether the operation needs ciphertexts from the setup phase.
    pub fn needs_ciphertext(self) -> bool {
        matches!(self, Op::Decrypt | Op::ReEncrypt)
    }

    pub fn index(self) -> usize {
        self as usize
    }

    pub fn from_name(name: &str) -> Option<Op> {
        Op::ALL.into_iter().find(|op| {
            op.name() == name
                || op.operation().eq_ignore_ascii_case(name)
                || op.name().replace('-', "_") == name
        })
    }
}

/// Largest cycle: weights are reduced by their gcd and must sum to at most this.
const MAX_CYCLE: u32 = 100_000;

/// A weighted op mix, expanded into its interleaved cycle.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mix {
    weights: Vec<(Op, u32)>,
    cycle: Vec<Op>,
}

impl Mix {
    /// Parses `op=weight,op=weight`; a bare `op` means weight 1.
    pub fn parse(spec: &str) -> Result<Self, LoadError> {
        let bad = |reason: String| LoadError::BadMix {
            mix: spec.to_string(),
            reason,
        };
        let mut weights: Vec<(Op, u32)> = Vec::new();
        for part in spec.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let (name, weight) = match part.split_once('=') {
                Some((n, w)) => (
                    n.trim(),
                    w.trim()
                        .parse::<u32>()
                        .map_err(|_| bad(format!("weight of {n:?} is not a whole number")))?,
                ),
                None => (part, 1),
            };
            let op = Op::from_name(name).ok_or_else(|| {
                bad(format!(
                    "unknown operation {name:?} (known: {})",
                    Op::ALL.map(Op::name).join(", ")
                ))
            })?;
            if weights.iter().any(|(o, _)| *o == op) {
                return Err(bad(format!("{name:?} is listed twice")));
            }
            if weight > 0 {
                weights.push((op, weight));
            }
        }
        if weights.is_empty() {
            return Err(bad("no operation has a positive weight".into()));
        }
        let g = weights.iter().fold(0, |g, (_, w)| gcd(g, *w));
        for (_, w) in &mut weights {
            *w /= g;
        }
        let total: u64 = weights.iter().map(|(_, w)| u64::from(*w)).sum();
        if total > u64::from(MAX_CYCLE) {
            return Err(bad(format!(
                "weights reduce to a cycle of {total}; keep it at most {MAX_CYCLE}"
            )));
        }
        let cycle = smooth_cycle(&weights);
        Ok(Self { weights, cycle })
    }

    /// The operation of request `i`.
    pub fn op(&self, i: u64) -> Op {
        let len = self.cycle.len() as u64;
        self.cycle[(i % len) as usize]
    }

    /// The (reduced) weights, in the order given.
    pub fn weights(&self) -> &[(Op, u32)] {
        &self.weights
    }

    pub fn contains(&self, op: Op) -> bool {
        self.weights.iter().any(|(o, _)| *o == op)
    }

    /// The mix as `op=weight,...`.
    pub fn spec(&self) -> String {
        self.weights
            .iter()
            .map(|(op, w)| format!("{}={w}", op.name()))
            .collect::<Vec<_>>()
            .join(",")
    }
}

fn gcd(a: u32, b: u32) -> u32 {
    if b == 0 { a } else { gcd(b, a % b) }
}

/// Nginx's smooth weighted round robin: each op appears `weight` times per cycle, spread evenly.
fn smooth_cycle(weights: &[(Op, u32)]) -> Vec<Op> {
    let total: i64 = weights.iter().map(|(_, w)| i64::from(*w)).sum();
    let mut current = vec![0i64; weights.len()];
    let mut cycle = Vec::with_capacity(total as usize);
    for _ in 0..total {
        let mut best = 0;
        for (j, (_, w)) in weights.iter().enumerate() {
            current[j] += i64::from(*w);
            if current[j] > current[best] {
                best = j;
            }
        }
        current[best] -= total;
        cycle.push(weights[best].0);
    }
    cycle
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_keeps_exact_proportions() {
        let m = Mix::parse("decrypt=80,generate-data-key=15,encrypt=5").unwrap();
        assert_eq!(
            m.weights(),
            &[
                (Op::Decrypt, 16),
                (Op::GenerateDataKey, 3),
                (Op::Encrypt, 1)
            ]
        );
        let mut counts = [0u32; 6];
        for i in 0..2000 {
            counts[m.op(i).index()] += 1;
        }
        assert_eq!(counts[Op::Decrypt.index()], 1600);
        assert_eq!(counts[Op::GenerateDataKey.index()], 300);
        assert_eq!(counts[Op::Encrypt.index()], 100);
        // Interleaved, not in blocks: no run of 16 decrypts in a row.
        let seq: Vec<Op> = (0..20).map(|i| m.op(i)).collect();
        assert!(seq.windows(16).all(|w| w.iter().any(|o| *o != Op::Decrypt)));
        assert_eq!(m.spec(), "decrypt=16,generate-data-key=3,encrypt=1");
    }

    #[test]
    fn accepts_aliases_and_bare_names() {
        let m = Mix::parse("Decrypt, generate_data_key=2, encrypt=0").unwrap();
        assert_eq!(m.weights(), &[(Op::Decrypt, 1), (Op::GenerateDataKey, 2)]);
        assert!(!m.contains(Op::Encrypt));
    }

    #[test]
    fn rejects_bad_mixes() {
        for bad in [
            "",
            "decrypt=0",
            "sign=5",
            "decrypt=x",
            "decrypt=-1",
            "decrypt=1,decrypt=2",
            "decrypt=99999,encrypt=99998",
        ] {
            assert!(
                matches!(Mix::parse(bad), Err(LoadError::BadMix { .. })),
                "{bad}"
            );
        }
    }
}
