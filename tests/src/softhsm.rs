//! SoftHSMv2 tokens for end-to-end tests of the PKCS#11 backend, and the choice of backend a test
//! runs on ([`crate::on_every_backend`]). Its own module because it is the one part of the fixture
//! that needs a system package (it prints SKIPPED where SoftHSMv2 is missing).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;

use crate::Start;

/// A SoftHSMv2 token in a temp directory, for sidecars running the PKCS#11 backend. The sidecar is a
/// child process, so `SOFTHSM2_CONF` is set on it alone and every test gets its own token.
#[derive(Debug)]
pub struct SoftHsm {
    _dir: tempfile::TempDir,
    pub conf: PathBuf,
    pub label: String,
    pub pin: String,
}

/// The module the tests load.
pub const SOFTHSM_MODULE: &str = "/usr/lib/softhsm/libsofthsm2.so";

impl SoftHsm {
    /// A fresh token labelled `label`, or `None` (with a printed SKIPPED reason) where SoftHSMv2 is
    /// not installed. The test script installs it, so in CI this always returns a token.
    pub fn new(test: &str) -> Option<Self> {
        Self::with_pin(test, "1234")
    }

    /// Like [`SoftHsm::new`], with the user PIN `pin`.
    pub fn with_pin(test: &str, pin: &str) -> Option<Self> {
        if Command::new("softhsm2-util")
            .arg("--version")
            .output()
            .is_err()
            || !Path::new(SOFTHSM_MODULE).exists()
        {
            eprintln!(
                "SKIPPED {test} on pkcs11: SoftHSMv2 is not installed (apt-get install softhsm2)"
            );
            return None;
        }
        let dir = tempfile::tempdir().expect("tempdir");
        let tokens = dir.path().join("tokens");
        std::fs::create_dir_all(&tokens).expect("token dir");
        let conf = dir.path().join("softhsm2.conf");
        std::fs::write(
            &conf,
            format!(
                "directories.tokendir = {}\nobjectstore.backend = file\nlog.level = ERROR\n",
                tokens.display()
            ),
        )
        .expect("softhsm conf");
        let label = format!("e2e-{}", &test[..test.len().min(27)]);
        let pin = pin.to_string();
        let out = Command::new("softhsm2-util")
            .args([
                "--init-token",
                "--free",
                "--label",
                &label,
                "--so-pin",
                "5678",
                "--pin",
                &pin,
            ])
            .env("SOFTHSM2_CONF", &conf)
            .output()
            .expect("softhsm2-util");
        assert!(
            out.status.success(),
            "init token: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Some(Self {
            _dir: dir,
            conf,
            label,
            pin,
        })
    }

    /// Start options for a sidecar on this token.
    pub fn start(&self) -> Start {
        Start {
            args: vec![
                "--backend".into(),
                "pkcs11".into(),
                "--pkcs11-token-label".into(),
                self.label.clone(),
                "--pkcs11-module".into(),
                SOFTHSM_MODULE.into(),
            ],
            env: vec![
                ("SOFTHSM2_CONF".into(), self.conf.display().to_string()),
                ("KMS_SIDECAR_PKCS11_PIN".into(), self.pin.clone()),
            ],
            creds: None,
        }
    }
}

/// Which backend an end-to-end test runs against.
#[derive(Debug, Clone)]
pub enum BackendChoice {
    Embedded,
    Pkcs11(Arc<SoftHsm>),
}

impl BackendChoice {
    /// The SoftHSM choice, or `None` (printed as SKIPPED) where SoftHSM is missing.
    pub fn softhsm(test: &str) -> Option<Self> {
        SoftHsm::new(test).map(|t| Self::Pkcs11(Arc::new(t)))
    }

    /// Start options for this backend.
    pub fn start(&self) -> Start {
        match self {
            Self::Embedded => Start::default(),
            Self::Pkcs11(token) => token.start(),
        }
    }

    pub fn name(&self) -> &'static str {
        match self {
            Self::Embedded => "embedded",
            Self::Pkcs11(_) => "pkcs11",
        }
    }
}
