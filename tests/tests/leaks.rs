//! Planted secrets never reach the sidecar's output: plaintexts, data keys, client secrets, the
//! HSM PIN and the admin token are absent from its logs (at debug level, with tracing on), its
//! metrics, its admin documents, its error bodies and its data directory, in every encoding we can
//! think of (raw, base64, hex).
#![forbid(unsafe_code)]
#![allow(clippy::unwrap_used, clippy::expect_used)]

use aws_sdk_kms::primitives::Blob;
use base64::Engine as _;
use kms_sidecar_e2e::{Sidecar, SoftHsm, data_key_in, encrypt, encrypt_in, http_get_with, new_key};

fn encodings(secret: &[u8]) -> Vec<String> {
    vec![
        String::from_utf8_lossy(secret).into_owned(),
        base64::engine::general_purpose::STANDARD.encode(secret),
        hex::encode(secret),
        hex::encode_upper(secret),
    ]
}

#[tokio::test]
async fn plaintexts_and_secrets_never_logged() {
    let dir = tempfile::tempdir().unwrap();
    let sidecar = Sidecar::start_args(dir.path(), &["--log-level", "debug"]);
    let kms = sidecar.sdk();
    let planted = b"PLANTED-PLAINTEXT-7f3a9c-do-not-log".to_vec();

    let key = new_key(&kms).await;
    let blob = encrypt(&kms, &key, &planted).await;
    let dec = kms
        .decrypt()
        .ciphertext_blob(blob.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(dec.plaintext().unwrap().as_ref(), &planted[..]);
    // Failing calls log too: make them carry the planted plaintext.
    let _ = kms
        .encrypt()
        .key_id("alias/missing")
        .plaintext(Blob::new(planted.clone()))
        .send()
        .await;
    let _ = kms
        .decrypt()
        .ciphertext_blob(blob)
        .encryption_context("wrong", "ctx")
        .send()
        .await;
    let dk = data_key_in(&kms, &key, &[]).await;
    let data_key = dk.plaintext().unwrap().as_ref().to_vec();
    let random = kms
        .generate_random()
        .number_of_bytes(32)
        .send()
        .await
        .unwrap()
        .plaintext()
        .unwrap()
        .as_ref()
        .to_vec();

    let metrics = kms_sidecar_e2e::http_get(&format!("{}/metrics", sidecar.admin_url))
        .await
        .1;
    let secret = sidecar.creds.secret.clone();
    let (ok, output) = sidecar.stop();
    assert!(ok);
    let stderr = output.stderr_text();
    assert!(stderr.contains("DEBUG"), "debug logging was on: {stderr}");
    let stdout = output.stdout.lock().unwrap().clone();

    for (what, value) in [
        ("plaintext", &planted[..]),
        ("data key", &data_key[..]),
        ("random", &random[..]),
    ] {
        for form in encodings(value) {
            assert!(
                !stderr.contains(&form),
                "{what} leaked into the log as {form}"
            );
            assert!(
                !stdout.iter().any(|l| l.contains(&form)),
                "{what} leaked into stdout"
            );
            assert!(!metrics.contains(&form), "{what} leaked into metrics");
        }
    }
    assert!(
        !stderr.contains(&secret),
        "client secret leaked into the log"
    );
    assert!(
        !metrics.contains(&secret),
        "client secret leaked into metrics"
    );
    // The secret is printed exactly once, in the first-run banner (two lines: the variable and the example).
    let mentions = stdout.iter().filter(|l| l.contains(&secret)).count();
    assert_eq!(mentions, 2, "{stdout:?}");
    // The data directory never holds the secret or the plaintext in clear.
    for entry in walk(dir.path()) {
        let bytes = std::fs::read(&entry).unwrap();
        let text = String::from_utf8_lossy(&bytes);
        assert!(
            !text.contains(&secret),
            "client secret in clear in {}",
            entry.display()
        );
        for form in encodings(&planted) {
            assert!(!text.contains(&form), "plaintext in {}", entry.display());
        }
    }
}

fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            out.extend(walk(&path));
        } else {
            out.push(path);
        }
    }
    out
}

/// The PKCS#11 backend at debug level with span export on: the PIN, the admin token, plaintexts,
/// data keys and the client secret appear in no output, no admin document, no error body and no
/// file the sidecar wrote (data directory, audit log).
#[tokio::test]
async fn pin_token_and_material_never_in_any_output_or_document() {
    const PIN: &str = "PIN-planted-5e1d9a";
    const TOKEN: &str = "admin-token-planted-0b7c44";
    let Some(hsm) = SoftHsm::with_pin("leaks-pin", PIN) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    // An OTLP endpoint nobody listens on: spans are made and exported (and fail quietly).
    let dead = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let otlp = format!("http://{}/v1/traces", dead.local_addr().unwrap());
    drop(dead);
    let mut start = hsm.start();
    start.args.extend(
        ["--log-level", "debug", "--otlp-endpoint", &otlp]
            .iter()
            .map(|s| s.to_string()),
    );
    start
        .env
        .push(("KMS_SIDECAR_ADMIN_TOKEN".into(), TOKEN.into()));
    let sidecar = Sidecar::start_with(dir.path(), start).unwrap();
    let kms = sidecar.sdk();
    let planted = b"PLANTED-HSM-PLAINTEXT-41c2-do-not-log".to_vec();
    let key = new_key(&kms).await;
    let blob = encrypt_in(&kms, &key, &planted, &[("tenant", "a")]).await;
    let dk = data_key_in(&kms, &key, &[]).await;
    let data_key = dk.plaintext().unwrap().as_ref().to_vec();

    // Error bodies, from calls that carry the planted values.
    let raw = sidecar.raw();
    let b64 = base64::engine::general_purpose::STANDARD.encode(&planted);
    let mut bodies = Vec::new();
    for (target, body) in [
        (
            "TrentService.Encrypt",
            format!(r#"{{"KeyId":"alias/missing","Plaintext":"{b64}"}}"#),
        ),
        (
            "TrentService.Decrypt",
            format!(
                r#"{{"CiphertextBlob":"{}","EncryptionContext":{{"tenant":"b"}}}}"#,
                base64::engine::general_purpose::STANDARD.encode(blob.as_ref())
            ),
        ),
        (
            "TrentService.Encrypt",
            format!(r#"{{"KeyId":"{key}","Plaintext":"{b64}","Bogus":1}}"#),
        ),
        ("TrentService.Encrypt", format!(r#"{{"KeyId":{b64}}}"#)),
    ] {
        let r = raw.call(target, body.as_bytes()).await;
        assert!((400..500).contains(&r.status), "{target}: {}", r.status);
        bodies.push(r.body.to_string());
    }

    let bearer = format!("Bearer {TOKEN}");
    let mut documents = Vec::new();
    for path in [
        "/metrics",
        "/v1/status",
        "/v1/keys",
        "/v1/audit?limit=1000",
        "/readyz",
    ] {
        let (status, body) = http_get_with(
            &format!("{}{path}", sidecar.admin_url),
            &[("authorization", &bearer)],
        )
        .await;
        assert_eq!(status, 200, "{path}: {body}");
        documents.push((path, body));
    }
    // A refused admin request does not echo what it was sent.
    let (status, refused) = http_get_with(
        &format!("{}/v1/status", sidecar.admin_url),
        &[("authorization", &format!("Bearer {PIN}"))],
    )
    .await;
    assert_eq!(status, 401);
    documents.push(("refused admin request", refused));

    let secret = sidecar.creds.secret.clone();
    let (ok, output) = sidecar.stop();
    assert!(ok);
    let logs = output.all();
    assert!(logs.contains("DEBUG"), "debug logging was on");
    let files: Vec<(String, String)> = walk(dir.path())
        .into_iter()
        .map(|p| {
            let text = String::from_utf8_lossy(&std::fs::read(&p).unwrap()).into_owned();
            (p.display().to_string(), text)
        })
        .collect();

    let mut places: Vec<(String, &str)> = vec![("logs".into(), logs.as_str())];
    places.extend(
        documents
            .iter()
            .map(|(p, b)| (format!("admin {p}"), b.as_str())),
    );
    places.extend(
        bodies
            .iter()
            .map(|b| ("an error body".to_string(), b.as_str())),
    );
    places.extend(files.iter().map(|(p, t)| (p.clone(), t.as_str())));
    for (what, value) in [
        ("plaintext", &planted[..]),
        ("data key", &data_key[..]),
        ("PIN", PIN.as_bytes()),
        ("admin token", TOKEN.as_bytes()),
    ] {
        for form in encodings(value) {
            for (place, text) in &places {
                assert!(!text.contains(&form), "{what} found in {place} as {form}");
            }
        }
    }
    // The client secret appears once, in the first-run banner (its line and the example), never
    // anywhere else.
    for (place, text) in places.iter().skip(1) {
        assert!(!text.contains(&secret), "client secret found in {place}");
    }
    assert_eq!(logs.matches(secret.as_str()).count(), 2);
}
