//! What a new user sees in the first hour, checked against a real sidecar process: the example
//! call printed with each new credential works for that credential, and the advice for making it an
//! admin works; logs written to a pipe carry no colour codes; `audit verify` takes the data
//! directory as well as the audit directory and says what it checked.
#![forbid(unsafe_code)]
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;
use std::time::{Duration, Instant};

use aws_sdk_kms::Client;
use aws_sdk_kms::error::{ProvideErrorMetadata, SdkError};
use kms_sidecar_e2e::{Creds, Sidecar, Start, cli, printed_creds, sdk_client};

/// The `aws kms` subcommand of the printed "Try it" line.
fn example_command(text: &str) -> String {
    text.lines()
        .find_map(|l| l.split_once(" aws kms "))
        .and_then(|(_, rest)| rest.split(' ').next())
        .unwrap_or_else(|| panic!("no `aws kms` example in:\n{text}"))
        .to_string()
}

/// The error code of a failed SDK call.
fn code<E: ProvideErrorMetadata + std::fmt::Debug, R: std::fmt::Debug>(
    e: SdkError<E, R>,
) -> String {
    e.code()
        .map_or_else(|| format!("no code: {e:?}"), str::to_string)
}

/// Runs an `aws kms` subcommand through the SDK (the AWS CLI may not be installed); the error
/// code if the call failed.
async fn run(kms: &Client, command: &str) -> Result<(), String> {
    match command {
        "create-key" => kms.create_key().send().await.map(drop).map_err(code),
        "list-keys" => kms.list_keys().send().await.map(drop).map_err(code),
        "list-aliases" => kms.list_aliases().send().await.map(drop).map_err(code),
        "generate-random" => kms
            .generate_random()
            .number_of_bytes(16)
            .send()
            .await
            .map(drop)
            .map_err(code),
        other => panic!("the test does not know `aws kms {other}`: add it"),
    }
}

/// A new client is accepted by a running sidecar within a second (its table is polled).
async fn run_when_known(kms: &Client, command: &str) -> Result<(), String> {
    let deadline = Instant::now() + Duration::from_secs(4);
    loop {
        match run(kms, command).await {
            Err(code) if code == "UnrecognizedClientException" && Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            other => return other,
        }
    }
}

fn start(dir: &Path, args: &[&str], creds: Option<Creds>) -> Sidecar {
    Sidecar::start_with(
        dir,
        Start {
            args: args.iter().map(|s| s.to_string()).collect(),
            creds,
            ..Start::default()
        },
    )
    .unwrap()
}

#[tokio::test]
async fn printed_examples_work_for_the_principal_they_were_printed_for() {
    let dir = tempfile::tempdir().unwrap();
    let sidecar = start(dir.path(), &[], None);
    // The first-run `default` principal is an admin: its example may create a key.
    let banner = sidecar.output.all();
    let command = example_command(&banner);
    assert_eq!(command, "create-key", "{banner}");
    assert_eq!(run(&sidecar.sdk(), &command).await, Ok(()), "{banner}");

    let (ok, text) = cli(dir.path(), &["clients", "add", "billing"]);
    assert!(ok, "{text}");
    let billing = printed_creds(&text);
    let kms = sdk_client(&sidecar.kms_url, &billing);
    let command = example_command(&text);
    assert_eq!(run_when_known(&kms, &command).await, Ok(()), "{text}");
    // What the example used to be: only admins may create keys.
    assert_eq!(
        run(&kms, "create-key").await,
        Err("AccessDeniedException".to_string())
    );

    // The printed advice, followed to the letter, makes billing an admin and keeps default one.
    let flag = text
        .split_whitespace()
        .skip_while(|w| *w != "--admin-principal")
        .nth(1)
        .unwrap_or_else(|| panic!("no --admin-principal advice in:\n{text}"));
    assert_eq!(flag, "default,billing", "{text}");
    assert!(
        text.contains("KMS_SIDECAR_ADMIN_PRINCIPALS=default,billing"),
        "{text}"
    );
    let default = sidecar.creds.clone();
    let (ok, out) = sidecar.stop();
    assert!(ok, "{}", out.all());
    let sidecar = start(dir.path(), &["--admin-principal", flag], Some(default));
    let kms = sdk_client(&sidecar.kms_url, &billing);
    assert_eq!(run(&kms, "create-key").await, Ok(()));
    assert_eq!(run(&sidecar.sdk(), "create-key").await, Ok(()));
}

#[tokio::test]
async fn a_first_run_default_that_is_not_an_admin_gets_an_example_it_may_run() {
    let dir = tempfile::tempdir().unwrap();
    let sidecar = start(dir.path(), &["--admin-principal", "ops"], None);
    let banner = sidecar.output.all();
    let command = example_command(&banner);
    assert_eq!(run(&sidecar.sdk(), &command).await, Ok(()), "{banner}");
    assert!(banner.contains("--admin-principal ops,default"), "{banner}");
}

#[tokio::test]
async fn logs_to_a_pipe_have_no_colour_codes() {
    let dir = tempfile::tempdir().unwrap();
    // An empty NO_COLOR counts as unset, so only the terminal check can keep colours out.
    let sidecar = Sidecar::start_with(
        dir.path(),
        Start {
            env: vec![("NO_COLOR".into(), String::new())],
            ..Start::default()
        },
    )
    .unwrap();
    sidecar.sdk().list_keys().send().await.unwrap();
    let (ok, out) = sidecar.stop();
    assert!(ok, "{}", out.all());
    let logs = out.stderr_text();
    assert!(logs.contains("INFO"), "no log lines to check:\n{logs}");
    assert!(
        !logs.contains('\u{1b}'),
        "ANSI escapes in piped logs:\n{logs:?}"
    );
}

#[tokio::test]
async fn audit_verify_takes_the_data_directory_or_the_audit_directory() {
    let dir = tempfile::tempdir().unwrap();
    let sidecar = start(dir.path(), &[], None);
    sidecar.sdk().list_keys().send().await.unwrap();
    let (ok, out) = sidecar.stop();
    assert!(ok, "{}", out.all());
    let audit = dir.path().join("audit");
    for path in [dir.path(), audit.as_path()] {
        let (ok, text) = cli(dir.path(), &["audit", "verify", path.to_str().unwrap()]);
        assert!(ok, "{text}");
        assert!(
            text.starts_with("audit chain intact: checked ")
                && text.contains(" in 1 file (")
                && text.contains(&audit.display().to_string())
                && text.contains(", last hash "),
            "{text}"
        );
        assert!(
            !text.contains("VerifyReport") && !text.contains('['),
            "{text}"
        );
    }

    let empty = tempfile::tempdir().unwrap();
    let (ok, text) = cli(
        dir.path(),
        &["audit", "verify", empty.path().to_str().unwrap()],
    );
    assert!(!ok, "{text}");
    assert!(
        text.contains(&format!("no audit log found in {}", empty.path().display())),
        "{text}"
    );
    assert!(!text.contains("broken"), "{text}");

    let file = audit.join("audit.jsonl");
    let log = std::fs::read_to_string(&file).unwrap();
    std::fs::write(
        &file,
        log.replacen("\"principal\":\"default\"", "\"principal\":\"x\"", 1),
    )
    .unwrap();
    let (ok, text) = cli(
        dir.path(),
        &["audit", "verify", dir.path().to_str().unwrap()],
    );
    assert!(!ok && text.contains("audit chain broken: "), "{text}");
}
