//! Property test: no mutation of a valid ciphertext (flipped bits, truncation, extension, splices of
//! random bytes) ever decrypts or panics; each gives InvalidCiphertextException.
#![forbid(unsafe_code)]
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use kms_sidecar::backend::Backend;
use kms_sidecar::backend::embedded::Embedded;
use kms_sidecar::core::Kms;
use kms_sidecar::datadir::{DataDir, RootKeySource};
use kms_sidecar::frontend::aws_json::call_internal;
use kms_sidecar::keys::{ArnScope, KeyStore};
use kms_sidecar::kms::{ErrorKind, Operation};
use proptest::prelude::*;
use serde_json::json;

#[derive(Debug, Clone)]
enum Mutation {
    Flip { at: usize, bit: u8 },
    Truncate { len: usize },
    Append { bytes: Vec<u8> },
    Splice { at: usize, bytes: Vec<u8> },
}

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        (any::<usize>(), 0u8..8).prop_map(|(at, bit)| Mutation::Flip { at, bit }),
        any::<usize>().prop_map(|len| Mutation::Truncate { len }),
        prop::collection::vec(any::<u8>(), 1..32).prop_map(|bytes| Mutation::Append { bytes }),
        (any::<usize>(), prop::collection::vec(any::<u8>(), 1..16))
            .prop_map(|(at, bytes)| Mutation::Splice { at, bytes }),
    ]
}

fn apply(blob: &[u8], m: &Mutation) -> Vec<u8> {
    let mut b = blob.to_vec();
    match m {
        Mutation::Flip { at, bit } => {
            let i = at % b.len();
            b[i] ^= 1 << bit;
        }
        Mutation::Truncate { len } => b.truncate(len % b.len()),
        Mutation::Append { bytes } => b.extend_from_slice(bytes),
        Mutation::Splice { at, bytes } => {
            let i = at % b.len();
            for (j, x) in bytes.iter().enumerate() {
                if let Some(slot) = b.get_mut(i + j) {
                    *slot = *x;
                }
            }
        }
    }
    b
}

#[test]
fn mutated_ciphertexts_never_decrypt() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let dir = Arc::new(DataDir::open(tmp.path(), &RootKeySource::DataDir).unwrap());
    let backend: Arc<dyn Backend> = Arc::new(Embedded::open(dir.clone()).unwrap());
    let scope = ArnScope {
        region: "us-east-1".into(),
        account: "111122223333".into(),
    };
    let kms = Kms::new(
        Arc::new(KeyStore::open(dir, backend, scope).unwrap()),
        Vec::new(),
    );
    let blob = rt.block_on(async {
        let body = call_internal(&kms, Operation::CreateKey, b"{}").await.unwrap();
        let key: serde_json::Value = serde_json::from_slice(&body).unwrap();
        let key_id = key["KeyMetadata"]["KeyId"].as_str().unwrap().to_string();
        let req = json!({"KeyId": key_id, "Plaintext": B64.encode("attack at dawn"), "EncryptionContext": {"a": "b"}});
        let body = call_internal(&kms, Operation::Encrypt, req.to_string().as_bytes()).await.unwrap();
        let out: serde_json::Value = serde_json::from_slice(&body).unwrap();
        // A second key exists, so a header mutation could name another real key id prefix.
        call_internal(&kms, Operation::CreateKey, b"{}").await.unwrap();
        B64.decode(out["CiphertextBlob"].as_str().unwrap()).unwrap()
    });
    // The unmutated blob decrypts, so a failure below is the mutation's doing.
    let ok = json!({"CiphertextBlob": B64.encode(&blob), "EncryptionContext": {"a": "b"}});
    assert!(
        rt.block_on(call_internal(
            &kms,
            Operation::Decrypt,
            ok.to_string().as_bytes()
        ))
        .is_ok()
    );

    let cases: u32 = std::env::var("KMS_SIDECAR_PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2000);
    let config = ProptestConfig {
        cases,
        failure_persistence: None,
        ..ProptestConfig::default()
    };
    proptest!(config, |(m in mutation())| {
        let bad = apply(&blob, &m);
        prop_assume!(bad != blob);
        let req = json!({"CiphertextBlob": B64.encode(&bad), "EncryptionContext": {"a": "b"}});
        let result = rt.block_on(call_internal(&kms, Operation::Decrypt, req.to_string().as_bytes()));
        match result {
            Ok(_) => prop_assert!(false, "mutation {:?} decrypted", m),
            // Truncation to nothing is a length violation (ValidationException), as in KMS.
            Err(e) => prop_assert!(
                matches!(e.kind(), ErrorKind::InvalidCiphertext | ErrorKind::Validation),
                "mutation {:?} gave {:?}", m, e.kind()
            ),
        }
    });
}
