//! Key policies, unauthorized-access metrics and the audit log against a real sidecar: tenant
//! isolation with a policy variable, explicit Deny, wildcard actions, admin-only CreateKey, a
//! revoked client, PutKeyPolicy taking effect on the next call, denied calls visible in
//! `unauthorized_total` and `/v1/audit`, `audit verify` on the real log (and on an edited one), and
//! label cardinality staying bounded under random garbage.
#![forbid(unsafe_code)]
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use aws_sdk_kms::error::ProvideErrorMetadata;
use aws_sdk_kms::primitives::Blob;
use aws_sdk_kms::types::DataKeySpec;
use kms_sidecar_e2e::{
    Creds, Raw, Sidecar, cli, error_code as code, new_key_from, printed_creds, sample, sdk_client,
    try_encrypt,
};

fn add_client(data_dir: &std::path::Path, name: &str, tenant: &str) -> Creds {
    let (ok, text) = cli(
        data_dir,
        &["clients", "add", name, "--tag", &format!("tenant={tenant}")],
    );
    assert!(ok, "{text}");
    printed_creds(&text)
}

async fn get_body(url: &str) -> String {
    kms_sidecar_e2e::http_get(url).await.1
}

/// Waits until `creds` are accepted (the sidecar reloads clients within a second).
async fn wait_accepted(kms: &aws_sdk_kms::Client) {
    for _ in 0..50 {
        match kms.list_keys().send().await {
            Err(e) if e.code() == Some("UnrecognizedClientException") => {
                tokio::time::sleep(Duration::from_millis(100)).await
            }
            _ => return,
        }
    }
    panic!("client not accepted within 5 s");
}

const ACCOUNT: &str = "111122223333";

fn tenant_policy(extra: &str) -> String {
    format!(
        r#"{{"Version":"2012-10-17","Statement":[
  {{"Sid":"Admin","Effect":"Allow","Principal":{{"AWS":"arn:aws:iam::{ACCOUNT}:user/default"}},"Action":"kms:*","Resource":"*"}},
  {{"Sid":"TenantUse","Effect":"Allow",
    "Principal":{{"AWS":["arn:aws:iam::{ACCOUNT}:user/alice","arn:aws:iam::{ACCOUNT}:user/bob"]}},
    "Action":["kms:Encrypt","kms:Decrypt","kms:GenerateDataKey*"],"Resource":"*",
    "Condition":{{"StringEquals":{{"kms:EncryptionContext:tenant":"${{aws:PrincipalTag/tenant}}"}}}}}}{extra}
]}}"#
    )
}

#[tokio::test]
async fn tenant_isolation_deny_revocation_and_audit() {
    let dir = tempfile::tempdir().unwrap();
    let sidecar = Sidecar::start(dir.path());
    let admin = sidecar.sdk();
    let alice_creds = add_client(dir.path(), "alice", "a");
    let bob_creds = add_client(dir.path(), "bob", "b");
    let alice = sdk_client(&sidecar.kms_url, &alice_creds);
    let bob = sdk_client(&sidecar.kms_url, &bob_creds);
    wait_accepted(&alice).await;
    wait_accepted(&bob).await;

    let key = new_key_from(admin.create_key().policy(tenant_policy(""))).await;
    let stored = admin.get_key_policy().key_id(&key).send().await.unwrap();
    assert!(stored.policy().unwrap().contains("TenantUse"));
    assert_eq!(
        admin
            .list_key_policies()
            .key_id(&key)
            .send()
            .await
            .unwrap()
            .policy_names(),
        ["default"]
    );

    // Only admins create keys.
    assert_eq!(
        code(alice.create_key().send().await),
        "AccessDeniedException"
    );

    // Alice may use the key with her tenant's context only.
    let enc = |c: &aws_sdk_kms::Client, tenant: &str| {
        c.encrypt()
            .key_id(&key)
            .plaintext(Blob::new(b"tenant data".to_vec()))
            .encryption_context("tenant", tenant)
            .send()
    };
    let mine = enc(&alice, "a")
        .await
        .unwrap()
        .ciphertext_blob()
        .unwrap()
        .clone();
    let r = enc(&alice, "b").await;
    let err = r.unwrap_err();
    assert_eq!(err.code(), Some("AccessDeniedException"));
    assert!(
        err.message().unwrap().contains(
            "arn:aws:iam::111122223333:user/alice is not authorized to perform: kms:Encrypt"
        ),
        "{err:?}"
    );
    assert_eq!(
        code(try_encrypt(&alice, &key, b"x").await),
        "AccessDeniedException"
    );
    assert_eq!(
        code(alice.describe_key().key_id(&key).send().await),
        "AccessDeniedException"
    );
    // Bob cannot read Alice's data, whatever context he claims.
    for tenant in ["a", "b"] {
        let r = bob
            .decrypt()
            .ciphertext_blob(mine.clone())
            .encryption_context("tenant", tenant)
            .send()
            .await;
        let c = code(r);
        assert!(
            c == "AccessDeniedException" || c == "InvalidCiphertextException",
            "{tenant}: {c}"
        );
    }
    assert_eq!(
        code(
            bob.decrypt()
                .ciphertext_blob(mine.clone())
                .encryption_context("tenant", "a")
                .send()
                .await
        ),
        "AccessDeniedException"
    );
    enc(&bob, "b").await.unwrap();
    let plain = alice
        .decrypt()
        .ciphertext_blob(mine.clone())
        .encryption_context("tenant", "a")
        .send()
        .await
        .unwrap();
    assert_eq!(plain.plaintext().unwrap().as_ref(), b"tenant data");
    // kms:GenerateDataKey* covers GenerateDataKeyWithoutPlaintext.
    alice
        .generate_data_key_without_plaintext()
        .key_id(&key)
        .key_spec(DataKeySpec::Aes256)
        .encryption_context("tenant", "a")
        .send()
        .await
        .unwrap();

    // PutKeyPolicy takes effect on the next call; an explicit Deny beats the Allow.
    let deny = format!(
        r#",{{"Sid":"NoAliceDecrypt","Effect":"Deny","Principal":{{"AWS":"arn:aws:iam::{ACCOUNT}:user/alice"}},"Action":"kms:Decrypt","Resource":"*"}}"#
    );
    admin
        .put_key_policy()
        .key_id(&key)
        .policy(tenant_policy(&deny))
        .send()
        .await
        .unwrap();
    let r = alice
        .decrypt()
        .ciphertext_blob(mine.clone())
        .encryption_context("tenant", "a")
        .send()
        .await;
    let err = r.unwrap_err();
    assert_eq!(err.code(), Some("AccessDeniedException"));
    assert!(err.message().unwrap().contains("explicit deny"), "{err:?}");
    enc(&alice, "a").await.unwrap();
    // A malformed policy is refused, naming the element, and the old one stays.
    let bad = r#"{"Version":"2012-10-17","Statement":[{"Effect":"Allow","NotAction":"kms:*","Principal":"*","Resource":"*"}]}"#;
    let err = admin
        .put_key_policy()
        .key_id(&key)
        .policy(bad)
        .send()
        .await
        .unwrap_err();
    assert_eq!(err.code(), Some("MalformedPolicyDocumentException"));
    assert!(err.message().unwrap().contains("NotAction"), "{err:?}");
    enc(&alice, "a").await.unwrap();

    // Revocation: the next call after the reload is refused, reported as revoked.
    let (ok, text) = cli(dir.path(), &["clients", "revoke", &bob_creds.access_key_id]);
    assert!(ok, "{text}");
    let started = std::time::Instant::now();
    loop {
        match enc(&bob, "b").await {
            Err(e) if e.code() == Some("UnrecognizedClientException") => break,
            _ if started.elapsed() > Duration::from_secs(3) => {
                panic!("revoked client still accepted")
            }
            _ => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }

    let metrics = get_body(&format!("{}/metrics", sidecar.admin_url)).await;
    let series = |principal: &str, op: &str, key: &str, reason: &str| {
        sample(
            &metrics,
            &format!(
                "kms_sidecar_unauthorized_total{{frontend=\"aws_json\",key=\"{key}\",operation=\"{op}\",principal=\"{principal}\",reason=\"{reason}\"}}"
            ),
        )
    };
    assert_eq!(
        series("alice", "Encrypt", &key, "context_mismatch"),
        Some(2.0),
        "{metrics}"
    );
    assert_eq!(
        series("alice", "CreateKey", "none", "policy_denied"),
        Some(1.0),
        "{metrics}"
    );
    assert_eq!(
        series("alice", "DescribeKey", &key, "policy_denied"),
        Some(1.0),
        "{metrics}"
    );
    assert_eq!(
        series("alice", "Decrypt", &key, "policy_denied"),
        Some(1.0),
        "{metrics}"
    );
    assert!(
        series("bob", "Decrypt", &key, "context_mismatch").unwrap() >= 1.0,
        "{metrics}"
    );
    assert_eq!(
        series("bob", "Encrypt", "none", "revoked_client"),
        Some(1.0),
        "{metrics}"
    );

    // The denied calls are in /v1/audit (records reach it within the 1 s flush).
    tokio::time::sleep(Duration::from_millis(1300)).await;
    let audit: serde_json::Value = serde_json::from_str(
        &get_body(&format!(
            "{}/v1/audit?outcome=denied&principal=alice",
            sidecar.admin_url
        ))
        .await,
    )
    .unwrap();
    let records = audit["records"].as_array().unwrap();
    assert!(records.len() >= 5, "{audit}");
    assert!(
        records
            .iter()
            .all(|r| r["principal"] == "alice" && r["outcome"] == "denied")
    );
    assert!(
        records
            .iter()
            .any(|r| r["reason"] == "context_mismatch" && r["key_id"] == key.as_str())
    );
    assert!(records.iter().any(|r| r["context_keys"][0] == "tenant"));
    let all = get_body(&format!("{}/v1/audit?limit=1000", sidecar.admin_url)).await;
    assert!(!all.contains("tenant data") && !all.contains(&alice_creds.secret));

    // The audit log on disk verifies; an edited copy does not.
    let (ok, out) = sidecar.stop();
    assert!(ok, "{}", out.all());
    let audit_dir = dir.path().join("audit");
    let (ok, text) = cli(
        dir.path(),
        &["audit", "verify", audit_dir.to_str().unwrap()],
    );
    assert!(ok, "{text}");
    let log = std::fs::read_to_string(audit_dir.join("audit.jsonl")).unwrap();
    assert!(
        !log.contains("tenant data")
            && !log.contains(&alice_creds.secret)
            && !log.contains(&bob_creds.secret)
    );
    let edited = log.replacen("\"principal\":\"alice\"", "\"principal\":\"mallory\"", 1);
    assert_ne!(edited, log);
    std::fs::write(audit_dir.join("audit.jsonl"), edited).unwrap();
    let (ok, text) = cli(
        dir.path(),
        &["audit", "verify", audit_dir.to_str().unwrap()],
    );
    assert!(!ok && text.contains("broken"), "{text}");
}

#[tokio::test]
async fn label_cardinality_stays_bounded() {
    let dir = tempfile::tempdir().unwrap();
    let sidecar = Sidecar::start(dir.path());
    let valid = sidecar.raw();
    let mut tasks = tokio::task::JoinSet::new();
    for worker in 0..16u32 {
        let url = sidecar.kms_url.clone();
        let valid = valid.clone();
        tasks.spawn(async move {
            for i in 0..625u32 {
                let n = worker * 1000 + i;
                if n % 2 == 0 {
                    // A random access key id: unknown_client.
                    let stranger = Raw::new(
                        &url,
                        Creds {
                            access_key_id: format!("AKSCRANDOM{n:010}"),
                            secret: "x".into(),
                        },
                    );
                    stranger
                        .call("Encrypt", br#"{"KeyId":"alias/x","Plaintext":"eA=="}"#)
                        .await;
                } else {
                    // A valid client naming a random key id.
                    let body = format!(
                        r#"{{"KeyId":"{:08x}-0000-4000-8000-{n:012}","Plaintext":"eA=="}}"#,
                        n
                    );
                    valid.call("Encrypt", body.as_bytes()).await;
                }
            }
        });
    }
    while let Some(r) = tasks.join_next().await {
        r.unwrap();
    }
    let sent_unknown = (0..16u32)
        .flat_map(|w| (0..625u32).map(move |i| w * 1000 + i))
        .filter(|n| n % 2 == 0)
        .count();
    let metrics = get_body(&format!("{}/metrics", sidecar.admin_url)).await;
    let count = |prefix: &str| metrics.lines().filter(|l| l.starts_with(prefix)).count();
    assert_eq!(count("kms_sidecar_unauthorized_total{"), 1, "{metrics}");
    assert_eq!(
        sample(
            &metrics,
            "kms_sidecar_unauthorized_total{frontend=\"aws_json\",key=\"none\",operation=\"Encrypt\",principal=\"unknown\",reason=\"unknown_client\"}"
        ),
        Some(sent_unknown as f64)
    );
    assert_eq!(count("kms_sidecar_requests_total{"), 2, "{metrics}");
    assert_eq!(count("kms_sidecar_key_operations_total{"), 0, "{metrics}");
    assert!(
        metrics.lines().count() < 400,
        "{} lines",
        metrics.lines().count()
    );
}
