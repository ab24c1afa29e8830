//! The admin API's bearer token: probes stay open, everything else needs the token, refusals are
//! counted as unauthorized calls, and the token never shows up in anything the sidecar prints.
#![forbid(unsafe_code)]
#![allow(clippy::unwrap_used, clippy::expect_used)]

use kms_sidecar_e2e::{Sidecar, Start, http_get, http_get_with, sample};

const TOKEN: &str = "admin-token-for-tests-7f3a9c";

#[tokio::test]
async fn token_guards_all_but_the_probes() {
    let dir = tempfile::tempdir().unwrap();
    let sidecar = Sidecar::start_with(
        dir.path(),
        Start {
            env: vec![("KMS_SIDECAR_ADMIN_TOKEN".into(), TOKEN.into())],
            ..Start::default()
        },
    )
    .unwrap();
    let admin = &sidecar.admin_url;
    let bearer = format!("Bearer {TOKEN}");
    let good = [("authorization", bearer.as_str())];

    for open in ["/healthz", "/readyz"] {
        let (status, _) = http_get(&format!("{admin}{open}")).await;
        assert_eq!(status, 200, "{open} stays open for probes");
    }
    for guarded in ["/metrics", "/v1/status", "/v1/keys", "/v1/audit"] {
        let url = format!("{admin}{guarded}");
        let (status, body) = http_get(&url).await;
        assert_eq!(status, 401, "{guarded} without a token: {body}");
        assert!(body.contains("missing bearer token"), "{body}");
        let (status, _) =
            http_get_with(&url, &[("authorization", "Bearer not-the-token-at-all")]).await;
        assert_eq!(status, 401, "{guarded} with a wrong token");
        let (status, _) = http_get_with(&url, &good).await;
        assert_eq!(status, 200, "{guarded} with the token");
    }

    // KMS calls are not affected: they authenticate with SigV4.
    sidecar.sdk().list_keys().send().await.unwrap();

    let (_, metrics) = http_get_with(&format!("{admin}/metrics"), &good).await;
    let refused = |reason: &str| {
        sample(
            &metrics,
            &format!(
                "kms_sidecar_unauthorized_total{{frontend=\"admin\",key=\"none\",operation=\"admin\",principal=\"unknown\",reason=\"{reason}\"}}"
            ),
        )
    };
    assert_eq!(refused("missing_signature"), Some(4.0), "{metrics}");
    assert_eq!(refused("bad_signature"), Some(4.0), "{metrics}");

    let (ok, out) = sidecar.stop();
    assert!(ok);
    let printed = out.all();
    assert!(
        printed.contains("admin request refused"),
        "refusals are logged"
    );
    assert!(!printed.contains(TOKEN), "the token is never printed");
    assert!(!metrics.contains(TOKEN));
}

#[tokio::test]
async fn token_file_and_validation() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("admin.token");
    std::fs::write(&file, format!("{TOKEN}\n")).unwrap();
    let data = dir.path().join("data");
    let sidecar = Sidecar::start_args(&data, &["--admin-token-file", file.to_str().unwrap()]);
    let url = format!("{}/v1/status", sidecar.admin_url);
    assert_eq!(http_get(&url).await.0, 401);
    let bearer = format!("Bearer {TOKEN}");
    assert_eq!(
        http_get_with(&url, &[("authorization", &bearer)]).await.0,
        200
    );
    drop(sidecar);

    // A guessable token stops the start, and the message does not echo it.
    let err = Sidecar::start_with(
        &dir.path().join("other"),
        Start {
            env: vec![("KMS_SIDECAR_ADMIN_TOKEN".into(), "hunter2".into())],
            ..Start::default()
        },
    )
    .unwrap_err();
    assert!(err.contains("at least 16 characters"), "{err}");
    assert!(!err.contains("hunter2"), "{err}");
}
