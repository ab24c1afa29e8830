//! The backend conformance suite: one set of cases, each run against every backend (the embedded
//! store, PKCS#11 on a fresh SoftHSMv2 token, and upstream: a second sidecar with an embedded
//! backend, started in process, as the upstream KMS), so a backend cannot pass by being tested less.
//!
//! SoftHSM reads `SOFTHSM2_CONF` once, when the module is initialized, and does not see tokens that
//! another process creates afterwards; setting an environment variable in a running test binary
//! is `unsafe` (edition 2024) and forbidden here. So each PKCS#11 test creates its own token
//! directory and token, then runs itself again as a child process (`--exact <test>`) with
//! `SOFTHSM2_CONF` set: every PKCS#11 case gets a fresh module and token, and tests stay parallel.
#![forbid(unsafe_code)]
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use cryptoki::context::{CInitializeArgs, CInitializeFlags};
use cryptoki::object::{Attribute, AttributeInfo, AttributeType};
use cryptoki::session::{Session, UserType};
use kms_sidecar::backend::embedded::Embedded;
use kms_sidecar::backend::pkcs11::{self as p11, Pkcs11, Pkcs11Settings};
use kms_sidecar::backend::upstream::{self as up, Upstream, UpstreamSettings};
use kms_sidecar::backend::{Backend, BackendError, BackendErrorKind, KeyRef};
use kms_sidecar::config::{Config, Options, Secrets};
use kms_sidecar::core::Kms;
use kms_sidecar::datadir::{DataDir, RootKeySource};
use kms_sidecar::frontend::aws_json::call_internal;
use kms_sidecar::keys::{self, ArnScope, KeyStore};
use kms_sidecar::kms::{ErrorKind, Operation};
use secrecy::SecretString;
use serde_json::{Value, json};
use tempfile::TempDir;

const MODULE: &str = "/usr/lib/softhsm/libsofthsm2.so";
const PIN: &str = "1234";
const SO_PIN: &str = "5678";
const PREFIX: &str = "kms-sidecar";
const DAY: f64 = 86_400.0;
/// Set in the child process: the label of the token the parent created for it.
const CHILD_TOKEN: &str = "KMS_CONFORMANCE_TOKEN";

/// Which backend a case runs against.
#[derive(Debug, Clone)]
enum Kind {
    Embedded,
    Pkcs11 { token: String },
    Upstream(Arc<UpstreamKms>),
}

/// The upstream KMS of the upstream cases: a sidecar (embedded backend) on its own runtime, so it
/// outlives every stack a case opens (a restart of the backend under test keeps the upstream).
#[derive(Debug)]
struct UpstreamKms {
    runtime: Option<tokio::runtime::Runtime>,
    url: String,
    access_key_id: String,
    secret: SecretString,
    _data: TempDir,
}

impl UpstreamKms {
    fn start() -> Self {
        let data = tempfile::tempdir().unwrap();
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let options = Options {
            data_dir: Some(data.path().to_path_buf()),
            listen: Some("127.0.0.1:0".into()),
            admin_listen: Some("127.0.0.1:0".into()),
            ..Options::default()
        };
        let config = Config::load(&options, Secrets::default()).unwrap();
        let mut sidecar = runtime
            .block_on(kms_sidecar::server::Sidecar::start(config))
            .unwrap();
        let issued = sidecar
            .take_issued()
            .expect("first run issues a credential");
        let url = format!("http://{}", sidecar.kms_addr());
        runtime.spawn(sidecar.run(std::future::pending()));
        Self {
            runtime: Some(runtime),
            url,
            access_key_id: issued.access_key_id,
            secret: issued.secret,
            _data: data,
        }
    }

    fn settings(&self) -> UpstreamSettings {
        UpstreamSettings {
            endpoint: Some(self.url.clone()),
            region: "us-east-1".into(),
            access_key_id: self.access_key_id.clone(),
            secret_access_key: self.secret.clone(),
            alias_prefix: PREFIX.into(),
            timeout: std::time::Duration::from_secs(10),
        }
    }

    /// An SDK client for the upstream sidecar, to look at it from outside the backend.
    fn sdk(&self) -> aws_sdk_kms::Client {
        use aws_sdk_kms::config::{BehaviorVersion, Credentials, Region};
        use secrecy::ExposeSecret as _;
        let conf = aws_sdk_kms::Config::builder()
            .behavior_version(BehaviorVersion::latest())
            .region(Region::new("us-east-1"))
            .endpoint_url(&self.url)
            .credentials_provider(Credentials::new(
                &self.access_key_id,
                self.secret.expose_secret(),
                None,
                None,
                "conformance",
            ))
            .build();
        aws_sdk_kms::Client::from_conf(conf)
    }
}

impl Drop for UpstreamKms {
    fn drop(&mut self) {
        // Dropped at the end of a case, inside the case's runtime, where a blocking shutdown panics.
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

/// Everything one case needs, and the way to build (and rebuild) its backend on the same state.
struct Fixture {
    kind: Kind,
    data: TempDir,
}

/// One opened stack: data directory, backend, key store, KMS operations.
struct Stack {
    kms: Kms,
    backend: Arc<dyn Backend>,
}

impl Fixture {
    fn embedded() -> Self {
        Self {
            kind: Kind::Embedded,
            data: tempfile::tempdir().unwrap(),
        }
    }

    fn upstream() -> Self {
        Self {
            kind: Kind::Upstream(Arc::new(UpstreamKms::start())),
            data: tempfile::tempdir().unwrap(),
        }
    }

    fn settings(token: &str, pin: &str, module: &Path) -> Pkcs11Settings {
        Pkcs11Settings {
            module: module.to_path_buf(),
            token_label: token.to_string(),
            pin: SecretString::from(pin),
            label_prefix: PREFIX.to_string(),
            sessions: 4,
        }
    }

    fn backend(&self, dir: &Arc<DataDir>) -> Arc<dyn Backend> {
        match &self.kind {
            Kind::Embedded => Arc::new(Embedded::open(dir.clone()).unwrap()),
            Kind::Pkcs11 { token } => {
                Arc::new(Pkcs11::open(Self::settings(token, PIN, Path::new(MODULE))).unwrap())
            }
            Kind::Upstream(kms) => Arc::new(Upstream::new(kms.settings()).unwrap()),
        }
    }

    /// Opens the data directory, the backend and the key store: the first start, or a restart.
    fn open(&self) -> Stack {
        let dir = Arc::new(DataDir::open(self.data.path(), &RootKeySource::DataDir).unwrap());
        let backend = self.backend(&dir);
        let scope = ArnScope {
            region: "us-east-1".into(),
            account: "111122223333".into(),
        };
        let store = KeyStore::open(dir, backend.clone(), scope).unwrap();
        Stack {
            kms: Kms::new(Arc::new(store), Vec::new()),
            backend,
        }
    }

    /// Whether the backend still holds material for `key_id`'s `version`, looked at from outside
    /// the backend (the material file, the token's objects through cryptoki, or the upstream
    /// alias and the state of its key through the AWS SDK).
    async fn material_count(&self, key_id: &str, version: u32) -> usize {
        match &self.kind {
            Kind::Embedded => {
                let file = self
                    .data
                    .path()
                    .join("material")
                    .join(format!("{key_id}.{version}.key"));
                usize::from(file.exists())
            }
            Kind::Pkcs11 { token } => token_session(token)
                .find_objects(&p11::object_template(PREFIX, key_id, version))
                .unwrap()
                .len(),
            Kind::Upstream(kms) => {
                let alias = up::alias_name(PREFIX, key_id, version);
                match kms.sdk().describe_key().key_id(alias).send().await {
                    Ok(d) => {
                        let state = d.key_metadata.unwrap().key_state.unwrap();
                        usize::from(state == aws_sdk_kms::types::KeyState::Enabled)
                    }
                    Err(e) => {
                        use aws_sdk_kms::error::ProvideErrorMetadata as _;
                        assert_eq!(e.code(), Some("NotFoundException"), "{e:?}");
                        0
                    }
                }
            }
        }
    }

    /// Whether sealed bytes are `nonce || ciphertext || tag` (the upstream's are its own blob).
    fn seals_locally(&self) -> bool {
        !matches!(self.kind, Kind::Upstream(_))
    }
}

/// A logged-in session on `token` for looking at its objects.
fn token_session(token: &str) -> Session {
    let module = p11::module_context(Path::new(MODULE)).unwrap();
    let slot = module
        .get_slots_with_initialized_token()
        .unwrap()
        .into_iter()
        .find(|s| module.get_token_info(*s).unwrap().label() == token)
        .unwrap();
    let session = module.open_ro_session(slot).unwrap();
    match session.login(UserType::User, Some(&SecretString::from(PIN))) {
        Ok(())
        | Err(cryptoki::error::Error::Pkcs11(cryptoki::error::RvError::UserAlreadyLoggedIn, _)) => {
        }
        Err(e) => panic!("login: {e}"),
    }
    session
}

/// `Some` in the process that should run the PKCS#11 case; `None` in the parent, after it has run
/// the case in a child (and asserted that it passed), or when SoftHSM is not installed.
fn pkcs11_fixture(test: &str) -> Option<Fixture> {
    if let Ok(token) = std::env::var(CHILD_TOKEN) {
        return Some(Fixture {
            kind: Kind::Pkcs11 { token },
            data: tempfile::tempdir().unwrap(),
        });
    }
    if Command::new("softhsm2-util")
        .arg("--version")
        .output()
        .is_err()
    {
        eprintln!("SKIPPED: softhsm2-util not found (install softhsm2) [{test}]");
        return None;
    }
    let hsm = tempfile::tempdir().unwrap();
    let conf = softhsm_conf(hsm.path());
    let token = format!("t-{}", test.rsplit("::").next().unwrap_or(test));
    let token = &token[..token.len().min(32)];
    init_token(&conf, token);
    let exe = std::env::current_exe().unwrap();
    let out = Command::new(exe)
        .args([test, "--exact", "--nocapture", "--test-threads=1"])
        .env("SOFTHSM2_CONF", &conf)
        .env(CHILD_TOKEN, token)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    eprintln!("--- child {test} ---\n{stdout}\n{stderr}");
    assert!(
        out.status.success(),
        "{test} failed on SoftHSM:\n{stdout}\n{stderr}"
    );
    // A filter that matched nothing would "pass" with 0 tests: make sure the case really ran.
    assert!(
        stdout.contains("1 passed"),
        "{test} did not run in the child:\n{stdout}"
    );
    None
}

/// A SoftHSM configuration whose token directory is inside `dir`.
fn softhsm_conf(dir: &Path) -> PathBuf {
    let tokens = dir.join("tokens");
    std::fs::create_dir_all(&tokens).unwrap();
    let conf = dir.join("softhsm2.conf");
    std::fs::write(
        &conf,
        format!(
            "directories.tokendir = {}\nobjectstore.backend = file\nlog.level = ERROR\nslots.removable = false\n",
            tokens.display()
        ),
    )
    .unwrap();
    conf
}

fn init_token(conf: &Path, label: &str) {
    let out = Command::new("softhsm2-util")
        .args(["--init-token", "--free", "--label", label])
        .args(["--so-pin", SO_PIN, "--pin", PIN])
        .env("SOFTHSM2_CONF", conf)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "softhsm2-util --init-token: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(4)
        .enable_all()
        .build()
        .unwrap()
}

/// Declares each case once per backend: `embedded::<case>`, `pkcs11::<case>` and `upstream::<case>`.
macro_rules! conformance {
    ($($case:ident),* $(,)?) => {
        mod embedded {
            $(
                #[test]
                fn $case() {
                    super::runtime().block_on(super::cases::$case(super::Fixture::embedded()));
                }
            )*
        }
        mod pkcs11 {
            $(
                #[test]
                fn $case() {
                    if let Some(fx) = super::pkcs11_fixture(concat!("pkcs11::", stringify!($case))) {
                        super::runtime().block_on(super::cases::$case(fx));
                    }
                }
            )*
        }
        mod upstream {
            $(
                #[test]
                fn $case() {
                    let fx = super::Fixture::upstream();
                    super::runtime().block_on(super::cases::$case(fx));
                }
            )*
        }
    };
}

conformance!(
    round_trips,
    context_mismatch_is_invalid_ciphertext,
    tampered_bytes_are_invalid_ciphertext,
    backend_contract,
    rotation_keeps_old_versions,
    disable_and_enable,
    deletion_destroys_material,
    concurrent_operations,
    restart_keeps_keys,
);

async fn call(kms: &Kms, op: Operation, body: Value) -> Result<Value, ErrorKind> {
    call_internal(kms, op, &serde_json::to_vec(&body).unwrap())
        .await
        .map(|r| serde_json::from_slice(&r).unwrap())
        .map_err(|e| e.kind())
}

async fn create_key(kms: &Kms) -> String {
    let created = call(kms, Operation::CreateKey, json!({})).await.unwrap();
    created["KeyMetadata"]["KeyId"]
        .as_str()
        .unwrap()
        .to_string()
}

async fn encrypt(
    kms: &Kms,
    key: &str,
    plaintext: &[u8],
    context: Value,
) -> Result<Vec<u8>, ErrorKind> {
    let body =
        json!({"KeyId": key, "Plaintext": B64.encode(plaintext), "EncryptionContext": context});
    let out = call(kms, Operation::Encrypt, body).await?;
    Ok(B64.decode(out["CiphertextBlob"].as_str().unwrap()).unwrap())
}

async fn decrypt(kms: &Kms, blob: &[u8], context: Value) -> Result<Vec<u8>, ErrorKind> {
    let body = json!({"CiphertextBlob": B64.encode(blob), "EncryptionContext": context});
    let out = call(kms, Operation::Decrypt, body).await?;
    Ok(B64.decode(out["Plaintext"].as_str().unwrap()).unwrap())
}

/// The error kind of a backend call that must fail.
fn kind<T>(result: Result<T, BackendError>) -> BackendErrorKind {
    match result {
        Ok(_) => panic!("the call succeeded"),
        Err(e) => e.kind,
    }
}

/// The blob's key version, read from its header (`KSC`, format, id length, id, version).
fn blob_version(blob: &[u8]) -> u32 {
    let id_len = usize::from(blob[4]);
    u32::from_be_bytes(blob[5 + id_len..9 + id_len].try_into().unwrap())
}

mod cases {
    use super::*;

    pub async fn round_trips(fx: Fixture) {
        let stack = fx.open();
        let kms = &stack.kms;
        let key = create_key(kms).await;
        let ctx = json!({"tenant": "a", "purpose": "test"});
        for plaintext in [&b"x"[..], b"hello, token", &[7u8; 4096][..]] {
            let blob = encrypt(kms, &key, plaintext, ctx.clone()).await.unwrap();
            assert_eq!(decrypt(kms, &blob, ctx.clone()).await.unwrap(), plaintext);
        }
        let a = encrypt(kms, &key, b"same", json!({})).await.unwrap();
        let b = encrypt(kms, &key, b"same", json!({})).await.unwrap();
        assert_ne!(a, b, "every encryption must use a fresh nonce");

        let dk = call(
            kms,
            Operation::GenerateDataKey,
            json!({"KeyId": key, "KeySpec": "AES_256", "EncryptionContext": ctx}),
        )
        .await
        .unwrap();
        let plain = B64.decode(dk["Plaintext"].as_str().unwrap()).unwrap();
        assert_eq!(plain.len(), 32);
        let blob = B64.decode(dk["CiphertextBlob"].as_str().unwrap()).unwrap();
        assert_eq!(decrypt(kms, &blob, ctx.clone()).await.unwrap(), plain);

        let other = create_key(kms).await;
        let re = call(
            kms,
            Operation::ReEncrypt,
            json!({
                "CiphertextBlob": B64.encode(&blob),
                "SourceEncryptionContext": ctx,
                "DestinationKeyId": other,
            }),
        )
        .await
        .unwrap();
        let re = B64.decode(re["CiphertextBlob"].as_str().unwrap()).unwrap();
        assert_eq!(decrypt(kms, &re, json!({})).await.unwrap(), plain);

        let random = call(kms, Operation::GenerateRandom, json!({"NumberOfBytes": 64}))
            .await
            .unwrap();
        assert_eq!(
            B64.decode(random["Plaintext"].as_str().unwrap())
                .unwrap()
                .len(),
            64
        );
    }

    pub async fn context_mismatch_is_invalid_ciphertext(fx: Fixture) {
        let stack = fx.open();
        let kms = &stack.kms;
        let key = create_key(kms).await;
        let blob = encrypt(kms, &key, b"secret", json!({"a": "1", "b": "2"}))
            .await
            .unwrap();
        for wrong in [
            json!({}),
            json!({"a": "1"}),
            json!({"a": "1", "b": "3"}),
            json!({"a": "1", "b": "2", "c": "3"}),
        ] {
            assert_eq!(
                decrypt(kms, &blob, wrong.clone()).await,
                Err(ErrorKind::InvalidCiphertext),
                "{wrong}"
            );
        }
        let plain = encrypt(kms, &key, b"secret", json!({})).await.unwrap();
        assert_eq!(
            decrypt(kms, &plain, json!({"a": "1"})).await,
            Err(ErrorKind::InvalidCiphertext)
        );
        // The right context still works after all those failures (no session left in a bad state).
        assert_eq!(
            decrypt(kms, &blob, json!({"b": "2", "a": "1"}))
                .await
                .unwrap(),
            b"secret"
        );
    }

    pub async fn tampered_bytes_are_invalid_ciphertext(fx: Fixture) {
        let stack = fx.open();
        let kms = &stack.kms;
        let key = create_key(kms).await;
        let blob = encrypt(kms, &key, b"sixteen byte msg", json!({}))
            .await
            .unwrap();
        for i in 0..blob.len() {
            let mut bad = blob.clone();
            bad[i] ^= 0x01;
            let got = decrypt(kms, &bad, json!({})).await;
            // Flipping a version byte can name a version that does not exist; that is still only
            // "invalid ciphertext" to the caller, never a server error.
            assert_eq!(
                got,
                Err(ErrorKind::InvalidCiphertext),
                "byte {i} of {}",
                blob.len()
            );
        }
        for cut in [1, 16, 17, blob.len() - 1] {
            let got = decrypt(kms, &blob[..blob.len() - cut], json!({})).await;
            assert_eq!(got, Err(ErrorKind::InvalidCiphertext), "cut {cut}");
        }
        assert_eq!(
            decrypt(kms, &blob, json!({})).await.unwrap(),
            b"sixteen byte msg"
        );
    }

    /// The trait itself: layout, error kinds, idempotent destroy, randomness.
    pub async fn backend_contract(fx: Fixture) {
        let stack = fx.open();
        let backend = &stack.backend;
        let id = "0bac4e7d-0000-4000-8000-00000000c0de";
        let key = KeyRef {
            key_id: id,
            version: 1,
        };
        backend.create_version(key).await.unwrap();
        let sealed = backend.encrypt(key, b"aad", b"plaintext").await.unwrap();
        if fx.seals_locally() {
            assert_eq!(
                sealed.len(),
                12 + 9 + 16,
                "nonce(12) || ciphertext || tag(16)"
            );
        } else {
            // The upstream's own blob: opaque, longer than nonce + tag, no plaintext in it.
            assert!(sealed.len() > 12 + 9 + 16, "{}", sealed.len());
            assert!(!sealed.windows(9).any(|w| w == b"plaintext"));
        }
        assert_eq!(
            &backend.decrypt(key, b"aad", &sealed).await.unwrap()[..],
            b"plaintext"
        );
        assert_eq!(
            kind(backend.decrypt(key, b"other", &sealed).await),
            BackendErrorKind::InvalidCiphertext
        );
        assert_eq!(
            kind(backend.decrypt(key, b"aad", &sealed[..27]).await),
            BackendErrorKind::InvalidCiphertext
        );
        assert_eq!(
            kind(backend.decrypt(key, b"aad", &sealed[..10]).await),
            BackendErrorKind::InvalidCiphertext
        );
        let missing = KeyRef {
            key_id: id,
            version: 2,
        };
        assert_eq!(
            kind(backend.encrypt(missing, b"", b"x").await),
            BackendErrorKind::MaterialMissing
        );
        assert_eq!(
            kind(backend.decrypt(missing, b"aad", &sealed).await),
            BackendErrorKind::MaterialMissing
        );
        assert_eq!(fx.material_count(id, 1).await, 1);

        backend.destroy(id, &[1]).await.unwrap();
        backend.destroy(id, &[1]).await.unwrap();
        backend.destroy("never-existed", &[1, 2, 3]).await.unwrap();
        assert_eq!(fx.material_count(id, 1).await, 0);
        assert_eq!(
            kind(backend.decrypt(key, b"aad", &sealed).await),
            BackendErrorKind::MaterialMissing
        );

        let a = backend.random(32).await.unwrap();
        let b = backend.random(32).await.unwrap();
        assert_eq!((a.len(), b.len()), (32, 32));
        assert_ne!(a, b);
    }

    pub async fn rotation_keeps_old_versions(fx: Fixture) {
        let stack = fx.open();
        let kms = &stack.kms;
        let key = create_key(kms).await;
        let mut blobs = vec![encrypt(kms, &key, b"v1", json!({"k": "v"})).await.unwrap()];
        for _ in 0..2 {
            call(kms, Operation::RotateKeyOnDemand, json!({"KeyId": key}))
                .await
                .unwrap();
            blobs.push(encrypt(kms, &key, b"vN", json!({"k": "v"})).await.unwrap());
        }
        assert_eq!(
            blobs.iter().map(|b| blob_version(b)).collect::<Vec<_>>(),
            [1, 2, 3]
        );
        for (i, blob) in blobs.iter().enumerate() {
            let want: &[u8] = if i == 0 { b"v1" } else { b"vN" };
            assert_eq!(decrypt(kms, blob, json!({"k": "v"})).await.unwrap(), want);
        }
        for version in 1..=3 {
            assert_eq!(
                fx.material_count(&key, version).await,
                1,
                "version {version}"
            );
        }
    }

    pub async fn disable_and_enable(fx: Fixture) {
        let stack = fx.open();
        let kms = &stack.kms;
        let key = create_key(kms).await;
        let blob = encrypt(kms, &key, b"x", json!({})).await.unwrap();
        call(kms, Operation::DisableKey, json!({"KeyId": key}))
            .await
            .unwrap();
        assert_eq!(
            encrypt(kms, &key, b"x", json!({})).await,
            Err(ErrorKind::Disabled)
        );
        assert_eq!(
            decrypt(kms, &blob, json!({})).await,
            Err(ErrorKind::Disabled)
        );
        call(kms, Operation::EnableKey, json!({"KeyId": key}))
            .await
            .unwrap();
        assert_eq!(decrypt(kms, &blob, json!({})).await.unwrap(), b"x");
        encrypt(kms, &key, b"y", json!({})).await.unwrap();
    }

    pub async fn deletion_destroys_material(fx: Fixture) {
        let stack = fx.open();
        let kms = &stack.kms;
        let key = create_key(kms).await;
        let keep = create_key(kms).await;
        call(kms, Operation::RotateKeyOnDemand, json!({"KeyId": key}))
            .await
            .unwrap();
        let blob = encrypt(kms, &key, b"gone soon", json!({})).await.unwrap();
        let kept = encrypt(kms, &keep, b"stays", json!({})).await.unwrap();
        call(
            kms,
            Operation::ScheduleKeyDeletion,
            json!({"KeyId": key, "PendingWindowInDays": 7}),
        )
        .await
        .unwrap();
        assert_eq!(
            encrypt(kms, &key, b"x", json!({})).await,
            Err(ErrorKind::InvalidState)
        );
        assert_eq!(
            (
                fx.material_count(&key, 1).await,
                fx.material_count(&key, 2).await
            ),
            (1, 1)
        );

        let done = kms.keys().maintain(keys::now() + 31.0 * DAY).await;
        assert_eq!(done.deleted, vec![key.clone()]);
        assert!(done.deletion_failed.is_empty(), "{done:?}");
        assert_eq!(
            (
                fx.material_count(&key, 1).await,
                fx.material_count(&key, 2).await
            ),
            (0, 0)
        );
        assert_eq!(
            call(kms, Operation::DescribeKey, json!({"KeyId": key})).await,
            Err(ErrorKind::NotFound)
        );
        assert_eq!(
            decrypt(kms, &blob, json!({})).await,
            Err(ErrorKind::InvalidCiphertext)
        );
        // Deleting one key leaves the others alone.
        assert_eq!(fx.material_count(&keep, 1).await, 1);
        assert_eq!(decrypt(kms, &kept, json!({})).await.unwrap(), b"stays");
    }

    pub async fn concurrent_operations(fx: Fixture) {
        let stack = fx.open();
        let kms = &stack.kms;
        let keys = [create_key(kms).await, create_key(kms).await];
        let tasks: Vec<_> = (0..64)
            .map(|t| {
                let kms = kms.clone();
                let key = keys[t % 2].clone();
                tokio::spawn(async move {
                    for i in 0..20 {
                        let plaintext = format!("task {t} op {i}");
                        let ctx = json!({"task": t.to_string()});
                        let blob = encrypt(&kms, &key, plaintext.as_bytes(), ctx.clone())
                            .await
                            .unwrap();
                        assert_eq!(
                            decrypt(&kms, &blob, ctx).await.unwrap(),
                            plaintext.as_bytes()
                        );
                    }
                })
            })
            .collect();
        for task in tasks {
            task.await.unwrap();
        }
    }

    pub async fn restart_keeps_keys(fx: Fixture) {
        let (key, blobs) = {
            let stack = fx.open();
            let kms = &stack.kms;
            let key = create_key(kms).await;
            let first = encrypt(kms, &key, b"before rotation", json!({"r": "1"}))
                .await
                .unwrap();
            call(kms, Operation::RotateKeyOnDemand, json!({"KeyId": key}))
                .await
                .unwrap();
            let second = encrypt(kms, &key, b"after rotation", json!({"r": "2"}))
                .await
                .unwrap();
            (key, vec![first, second])
        };
        // Everything above is dropped: key store, backend (its sessions), data directory.
        let stack = fx.open();
        let kms = &stack.kms;
        assert_eq!(
            decrypt(kms, &blobs[0], json!({"r": "1"})).await.unwrap(),
            b"before rotation"
        );
        assert_eq!(
            decrypt(kms, &blobs[1], json!({"r": "2"})).await.unwrap(),
            b"after rotation"
        );
        let third = encrypt(kms, &key, b"after restart", json!({}))
            .await
            .unwrap();
        assert_eq!(blob_version(&third), 2);
        assert_eq!(
            decrypt(kms, &third, json!({})).await.unwrap(),
            b"after restart"
        );
    }
}

// ---- PKCS#11 only: what the token itself must guarantee, and startup errors. ----

/// Runs `f` in the child that owns a fresh token (see [`pkcs11_fixture`]).
fn with_token(test: &str, f: impl FnOnce(Fixture)) {
    if let Some(fx) = pkcs11_fixture(test) {
        f(fx);
    }
}

#[test]
fn pkcs11_key_objects_never_reveal_material() {
    with_token("pkcs11_key_objects_never_reveal_material", |fx| {
        runtime().block_on(async {
            let stack = fx.open();
            let id = "5e1f0000-0000-4000-8000-000000000001";
            stack
                .backend
                .create_version(KeyRef {
                    key_id: id,
                    version: 1,
                })
                .await
                .unwrap();
            let Kind::Pkcs11 { token } = &fx.kind else {
                unreachable!()
            };
            let session = token_session(token);
            let found = session
                .find_objects(&p11::object_template(PREFIX, id, 1))
                .unwrap();
            assert_eq!(found.len(), 1);
            let wanted = [
                AttributeType::Token,
                AttributeType::Sensitive,
                AttributeType::Extractable,
                AttributeType::Private,
                AttributeType::Encrypt,
                AttributeType::Decrypt,
                AttributeType::Label,
                AttributeType::Id,
                AttributeType::ValueLen,
            ];
            let attrs = session.get_attributes(found[0], &wanted).unwrap();
            let has = |a: Attribute| attrs.contains(&a);
            assert!(has(Attribute::Token(true)), "{attrs:?}");
            assert!(has(Attribute::Sensitive(true)), "{attrs:?}");
            assert!(has(Attribute::Extractable(false)), "{attrs:?}");
            assert!(has(Attribute::Private(true)), "{attrs:?}");
            assert!(
                has(Attribute::Encrypt(true)) && has(Attribute::Decrypt(true)),
                "{attrs:?}"
            );
            assert!(
                has(Attribute::Label(format!("{PREFIX}/{id}/1").into_bytes())),
                "{attrs:?}"
            );
            assert!(
                has(Attribute::Id(format!("{id}/1").into_bytes())),
                "{attrs:?}"
            );
            assert!(has(Attribute::ValueLen(32u64.into())), "{attrs:?}");
            // CKA_VALUE: the token refuses to reveal it.
            let info = session
                .get_attribute_info(found[0], &[AttributeType::Value])
                .unwrap();
            assert!(matches!(info[..], [AttributeInfo::Sensitive]), "{info:?}");
            let value = session
                .get_attributes(found[0], &[AttributeType::Value])
                .unwrap();
            assert!(value.is_empty(), "CKA_VALUE was readable");

            // Creating the same version again finds it instead of making a second object.
            stack
                .backend
                .create_version(KeyRef {
                    key_id: id,
                    version: 1,
                })
                .await
                .unwrap();
            assert_eq!(fx.material_count(id, 1).await, 1);
        });
    });
}

#[test]
fn pkcs11_startup_errors_name_the_problem() {
    let err = Pkcs11::open(Fixture::settings(
        "any",
        PIN,
        Path::new("/nonexistent/libnope.so"),
    ))
    .unwrap_err();
    assert!(
        format!("{err:#}").contains("/nonexistent/libnope.so"),
        "{err:#}"
    );

    with_token("pkcs11_startup_errors_name_the_problem", |fx| {
        let Kind::Pkcs11 { token } = &fx.kind else {
            unreachable!()
        };
        let module = Path::new(MODULE);
        let err = Pkcs11::open(Fixture::settings("no-such-token", PIN, module)).unwrap_err();
        let msg = format!("{err:#}");
        eprintln!("wrong label: {msg}");
        assert!(
            msg.contains("no-such-token") && msg.contains(token.as_str()),
            "{msg}"
        );

        let err = Pkcs11::open(Fixture::settings(token, "9999", module)).unwrap_err();
        assert_eq!(
            format!("{err:#}"),
            format!("PIN rejected for token {token}")
        );
        assert!(!format!("{err:?}").contains("9999"));

        let mut settings = Fixture::settings(token, PIN, module);
        settings.sessions = 0;
        assert!(Pkcs11::open(settings).is_err());
        // The right settings still work after the failures.
        let backend = Pkcs11::open(Fixture::settings(token, PIN, module)).unwrap();
        assert_eq!(backend.name(), "pkcs11");
    });
}

/// Decrypts `blob` until 16 calls in a row succeed. Failures on the way must be retryable
/// (`DependencyTimeoutException`), and fewer than 32; returns how many there were.
async fn until_recovered(kms: &Kms, blob: &[u8], want: &[u8]) -> usize {
    let mut retryable = 0;
    let mut ok_in_a_row = 0;
    while ok_in_a_row < 16 {
        match decrypt(kms, blob, json!({})).await {
            Ok(plain) => {
                assert_eq!(plain, want);
                ok_in_a_row += 1;
            }
            Err(kind) => {
                assert_eq!(kind, ErrorKind::DependencyTimeout);
                ok_in_a_row = 0;
                retryable += 1;
                assert!(retryable < 32, "the backend does not recover");
            }
        }
    }
    retryable
}

/// Broken sessions are replaced: finalizing the module under the backend (every session and
/// handle gone, as after a token reset) makes calls fail as retryable, and once the module is
/// back the workers reconnect, log in, find their objects again and work. The same for a logout.
#[test]
fn pkcs11_recovers_from_a_token_reset() {
    with_token("pkcs11_recovers_from_a_token_reset", |fx| {
        runtime().block_on(async {
            let stack = fx.open();
            let kms = &stack.kms;
            let key = create_key(kms).await;
            let blob = encrypt(kms, &key, b"survives", json!({})).await.unwrap();
            let module = p11::module_context(Path::new(MODULE)).unwrap();
            module.clone().finalize().unwrap();
            assert_eq!(
                decrypt(kms, &blob, json!({})).await,
                Err(ErrorKind::DependencyTimeout)
            );
            assert_eq!(
                encrypt(kms, &key, b"x", json!({})).await,
                Err(ErrorKind::DependencyTimeout)
            );
            module
                .initialize(CInitializeArgs::new(CInitializeFlags::OS_LOCKING_OK))
                .unwrap();
            until_recovered(kms, &blob, b"survives").await;
            // Each worker notices the reset on its own next call, and an idle worker may not have
            // been given any of the decrypts above: its first call can still fail, retryably, once.
            let mut again = encrypt(kms, &key, b"new", json!({})).await;
            for _ in 0..4 {
                match again {
                    Err(ErrorKind::DependencyTimeout) => {
                        again = encrypt(kms, &key, b"new", json!({})).await;
                    }
                    _ => break,
                }
            }
            let again = again.unwrap();
            assert_eq!(decrypt(kms, &again, json!({})).await.unwrap(), b"new");

            // A logout behind the backend's back hides every private object: that must look like
            // a fault (retryable, the session is replaced and logs in), never like deleted keys.
            let Kind::Pkcs11 { token } = &fx.kind else {
                unreachable!()
            };
            token_session(token).logout().unwrap();
            let retryable = until_recovered(kms, &blob, b"survives").await;
            assert!(retryable > 0, "a logged-out session went unnoticed");
        });
    });
}

// ---- Upstream only: what the upstream KMS must see. ----

/// The upstream keys whose description names `key_id`, with their states.
async fn upstream_keys(kms: &UpstreamKms, key_id: &str) -> Vec<aws_sdk_kms::types::KeyState> {
    let sdk = kms.sdk();
    let listed = sdk.list_keys().limit(1000).send().await.unwrap();
    let mut states = Vec::new();
    for entry in listed.keys.unwrap_or_default() {
        let id = entry.key_id.unwrap();
        let meta = sdk
            .describe_key()
            .key_id(id)
            .send()
            .await
            .unwrap()
            .key_metadata
            .unwrap();
        if meta.description.as_deref() == Some(&format!("kms-sidecar key {key_id} version 1")) {
            states.push(meta.key_state.unwrap());
        }
    }
    states.sort_by_key(|s| s.as_str().to_string());
    states
}

/// Creating a version twice keeps the first upstream key (ciphertexts stay valid) and schedules
/// the spare for deletion; destroying schedules the key's deletion and removes the alias, and
/// repeating either is harmless.
#[test]
fn upstream_create_is_idempotent_and_destroy_schedules_deletion() {
    use aws_sdk_kms::types::KeyState;
    let fx = Fixture::upstream();
    let Kind::Upstream(kms) = fx.kind.clone() else {
        unreachable!()
    };
    runtime().block_on(async {
        let stack = fx.open();
        let backend = &stack.backend;
        let id = "5e1f0000-0000-4000-8000-00000000beef";
        let key = KeyRef {
            key_id: id,
            version: 1,
        };
        backend.create_version(key).await.unwrap();
        let sealed = backend.encrypt(key, b"aad", b"kept").await.unwrap();
        backend.create_version(key).await.unwrap();
        assert_eq!(
            &backend.decrypt(key, b"aad", &sealed).await.unwrap()[..],
            b"kept"
        );
        assert_eq!(
            upstream_keys(&kms, id).await,
            [KeyState::Enabled, KeyState::PendingDeletion]
        );
        assert_eq!(fx.material_count(id, 1).await, 1);

        backend.destroy(id, &[1]).await.unwrap();
        backend.destroy(id, &[1]).await.unwrap();
        assert_eq!(
            upstream_keys(&kms, id).await,
            [KeyState::PendingDeletion, KeyState::PendingDeletion]
        );
        assert_eq!(fx.material_count(id, 1).await, 0);
    });
}
