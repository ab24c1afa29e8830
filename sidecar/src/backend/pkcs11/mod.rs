//! The PKCS#11 backend: master keys are AES-256 objects generated inside a token (an HSM, or
//! SoftHSMv2 in tests) and never leave it. The sidecar keeps no key material for this backend, only
//! object handles, and asks the token to run AES-GCM.
//!
//! It exists for deployments where a copy of the data directory, or of the sidecar's memory, must
//! not be enough to decrypt. Blobs keep the embedded backend's layout (`nonce || ciphertext || tag`
//! after the `keys::ciphertext` header), so the rest of the sidecar does not care which backend
//! sealed them. `docs/backends.md` has the threat model and the design.
//!
//! Token calls block, and a cryptoki `Session` is `Send` but not `Sync`, so each of `sessions`
//! worker threads owns one logged-in session and takes jobs from one bounded queue: async callers
//! never hold a session, let alone across an `.await`. A token fault drops the worker's session; the
//! worker reopens and logs in again on its next job.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::thread::JoinHandle;

use anyhow::{Context as _, bail};
use async_trait::async_trait;
use cryptoki::context::{CInitializeArgs, CInitializeFlags, Pkcs11 as Module};
use cryptoki::error::{Error as CkError, RvError};
use cryptoki::mechanism::MechanismType;
use cryptoki::object::{Attribute, ObjectClass};
use cryptoki::session::Session;
use cryptoki::slot::Slot;
use secrecy::SecretString;
use tokio::sync::{mpsc, oneshot};
use zeroize::Zeroizing;

use super::{Backend, BackendError, BackendErrorKind, KeyRef};
use crate::crypto::{self, NONCE_LEN, TAG_LEN};

mod pool;

use pool::{Job, JobPanicked, Shared, Worker, WorkersStopped, work};

/// Jobs waiting per worker before callers wait to enqueue (backpressure, not a limit on callers).
const QUEUE_PER_WORKER: usize = 64;
/// Upper bound of the job queue, whatever the pool size.
const MAX_QUEUE: usize = 1 << 16;

/// How to reach the token.
#[derive(Clone)]
pub struct Pkcs11Settings {
    /// The PKCS#11 module (shared library), e.g. `/usr/lib/softhsm/libsofthsm2.so`.
    pub module: PathBuf,
    /// The token's label; slot ids can change (SoftHSM renumbers on init), labels do not.
    pub token_label: String,
    /// The user PIN. Never logged.
    pub pin: SecretString,
    /// Object labels are `<prefix>/<key id>/<version>`, so several sidecars can share a token.
    pub label_prefix: String,
    /// Sessions, and so worker threads and concurrent token calls; at least 1.
    pub sessions: usize,
}

impl fmt::Debug for Pkcs11Settings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Pkcs11Settings")
            .field("module", &self.module)
            .field("token_label", &self.token_label)
            .field("pin", &"[redacted]")
            .field("label_prefix", &self.label_prefix)
            .field("sessions", &self.sessions)
            .finish()
    }
}

/// The label of the token object holding `key_id`'s `version` (`CKA_LABEL`).
pub fn object_label(prefix: &str, key_id: &str, version: u32) -> String {
    format!("{prefix}/{key_id}/{version}")
}

/// The `CKA_ID` of that object: the key id and version, without the prefix.
pub fn object_id(key_id: &str, version: u32) -> Vec<u8> {
    format!("{key_id}/{version}").into_bytes()
}

/// The attributes that find the object of one key version.
pub fn object_template(prefix: &str, key_id: &str, version: u32) -> Vec<Attribute> {
    vec![
        Attribute::Class(ObjectClass::SECRET_KEY),
        Attribute::Token(true),
        Attribute::Label(object_label(prefix, key_id, version).into_bytes()),
        Attribute::Id(object_id(key_id, version)),
    ]
}

/// PKCS#11 allows one `C_Initialize` per process, and unloading a module that was never finalized
/// is unsafe for some, so each module is loaded once and kept for the life of the process.
static MODULES: Mutex<BTreeMap<PathBuf, Module>> = Mutex::new(BTreeMap::new());

/// The process-wide, initialized context of the module at `path` (loaded on first use). Tests and
/// tools that inspect the token use this rather than initializing the module a second time.
pub fn module_context(path: &Path) -> anyhow::Result<Module> {
    let mut modules = MODULES.lock().unwrap_or_else(PoisonError::into_inner);
    if let Some(module) = modules.get(path) {
        return Ok(module.clone());
    }
    if !path.is_file() {
        bail!(
            "PKCS#11 module {} does not exist or is not a file",
            path.display()
        );
    }
    let module = Module::new(path)
        .with_context(|| format!("cannot load PKCS#11 module {}", path.display()))?;
    match module.initialize(CInitializeArgs::new(CInitializeFlags::OS_LOCKING_OK)) {
        Ok(()) | Err(CkError::Pkcs11(RvError::CryptokiAlreadyInitialized, _)) => {}
        Err(e) => {
            return Err(e).with_context(|| {
                format!("PKCS#11 module {} failed to initialize", path.display())
            });
        }
    }
    modules.insert(path.to_path_buf(), module.clone());
    Ok(module)
}

/// Classifies a token error. `decrypting` matters because a failed GCM tag comes back as
/// `CKR_GENERAL_ERROR` from SoftHSM (and `CKR_ENCRYPTED_DATA_INVALID` from others): there it is the
/// caller's bad ciphertext, elsewhere a token fault.
pub fn classify(error: &CkError, decrypting: bool) -> BackendErrorKind {
    use BackendErrorKind::*;
    let CkError::Pkcs11(rv, _) = error else {
        return Internal;
    };
    match rv {
        RvError::GeneralError | RvError::EncryptedDataInvalid | RvError::EncryptedDataLenRange
            if decrypting =>
        {
            InvalidCiphertext
        }
        RvError::ObjectHandleInvalid | RvError::KeyHandleInvalid => MaterialMissing,
        RvError::SessionHandleInvalid
        | RvError::SessionClosed
        | RvError::SessionCount
        | RvError::DeviceError
        | RvError::DeviceMemory
        | RvError::DeviceRemoved
        | RvError::TokenNotPresent
        | RvError::TokenNotRecognized
        | RvError::HostMemory
        | RvError::GeneralError
        | RvError::FunctionFailed
        | RvError::FunctionCanceled
        | RvError::OperationActive
        | RvError::UserNotLoggedIn
        | RvError::CryptokiNotInitialized
        | RvError::CantLock => Unavailable,
        _ => Internal,
    }
}

fn token_error(error: CkError, decrypting: bool) -> BackendError {
    BackendError::with_source(classify(&error, decrypting), error)
}

/// Master keys in a PKCS#11 token, used through a pool of logged-in sessions.
pub struct Pkcs11 {
    shared: Arc<Shared>,
    token_label: String,
    /// `None` only while dropping: closing the queue stops the workers.
    jobs: Option<mpsc::Sender<Job>>,
    workers: Vec<JoinHandle<()>>,
}

impl fmt::Debug for Pkcs11 {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Pkcs11")
            .field("token_label", &self.token_label)
            .field("shared", &self.shared)
            .field("sessions", &self.workers.len())
            .finish_non_exhaustive()
    }
}

/// The slot holding the one initialized token labelled `label`, or an error listing the labels found.
fn find_slot(module: &Module, path: &Path, label: &str) -> anyhow::Result<Slot> {
    let slots = module
        .get_slots_with_initialized_token()
        .with_context(|| format!("cannot list the slots of PKCS#11 module {}", path.display()))?;
    let mut matching = Vec::new();
    let mut labels = Vec::new();
    for slot in slots {
        let info = module
            .get_token_info(slot)
            .with_context(|| format!("cannot read token information of slot {}", slot.id()))?;
        if info.label() == label {
            matching.push(slot);
        }
        labels.push(info.label().to_string());
    }
    match matching.as_slice() {
        [slot] => Ok(*slot),
        [] => bail!(
            "no token labelled {label:?} in PKCS#11 module {}; tokens found: {labels:?}",
            path.display()
        ),
        _ => bail!(
            "{} tokens are labelled {label:?} in PKCS#11 module {}; token labels must be unique",
            matching.len(),
            path.display()
        ),
    }
}

impl Pkcs11 {
    /// Loads the module, finds the token by label, logs in and starts `sessions` workers, each with
    /// an open session. Blocks (startup only). Every error names what is wrong: the module path,
    /// the missing label and the labels found, or the rejected PIN.
    pub fn open(settings: Pkcs11Settings) -> anyhow::Result<Self> {
        if settings.sessions == 0 {
            bail!("the PKCS#11 session pool needs at least one session");
        }
        if settings.label_prefix.is_empty() {
            bail!("the PKCS#11 object label prefix must not be empty");
        }
        let label = &settings.token_label;
        let module = module_context(&settings.module)?;
        let slot = find_slot(&module, &settings.module, label)?;
        let mechanisms = module
            .get_mechanism_list(slot)
            .with_context(|| format!("cannot list the mechanisms of token {label}"))?;
        for (mechanism, name) in [
            (MechanismType::AES_KEY_GEN, "CKM_AES_KEY_GEN"),
            (MechanismType::AES_GCM, "CKM_AES_GCM"),
        ] {
            if !mechanisms.contains(&mechanism) {
                bail!("token {label} does not support {name}");
            }
        }
        let shared = Arc::new(Shared {
            module,
            slot,
            pin: settings.pin,
            prefix: settings.label_prefix,
            handles: RwLock::new(HashMap::new()),
            create: Mutex::new(()),
        });
        let mut sessions = Vec::with_capacity(settings.sessions);
        for _ in 0..settings.sessions {
            let session = shared.open_session().map_err(|e| match e {
                CkError::Pkcs11(
                    RvError::PinIncorrect | RvError::PinInvalid | RvError::PinLenRange,
                    _,
                ) => {
                    anyhow::anyhow!("PIN rejected for token {label}")
                }
                CkError::Pkcs11(RvError::PinLocked, _) => {
                    anyhow::anyhow!("PIN locked for token {label}")
                }
                CkError::Pkcs11(RvError::PinExpired, _) => {
                    anyhow::anyhow!("PIN expired for token {label}")
                }
                e => anyhow::Error::new(e)
                    .context(format!("cannot open a logged-in session on token {label}")),
            })?;
            sessions.push(session);
        }
        let (jobs, queue) = mpsc::channel::<Job>(
            QUEUE_PER_WORKER
                .saturating_mul(settings.sessions)
                .min(MAX_QUEUE),
        );
        let queue = Arc::new(Mutex::new(queue));
        let mut backend = Self {
            shared: Arc::clone(&shared),
            token_label: label.clone(),
            jobs: Some(jobs),
            workers: Vec::with_capacity(settings.sessions),
        };
        for (i, session) in sessions.into_iter().enumerate() {
            let worker = Worker {
                shared: Arc::clone(&shared),
                session: Some(session),
            };
            let queue = Arc::clone(&queue);
            let handle = std::thread::Builder::new()
                .name(format!("pkcs11-{i}"))
                .spawn(move || work(worker, queue))
                .context("cannot start a PKCS#11 worker thread")?;
            // On an error above, dropping `backend` stops the workers already started.
            backend.workers.push(handle);
        }
        Ok(backend)
    }

    /// Runs `f` on a worker's session and waits for its answer without blocking the executor.
    async fn submit<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Shared, &Session) -> Result<T, BackendError> + Send + 'static,
    ) -> Result<T, BackendError> {
        let stopped = || BackendError::with_source(BackendErrorKind::Unavailable, WorkersStopped);
        let jobs = self.jobs.as_ref().ok_or_else(stopped)?;
        let (tx, rx) = oneshot::channel();
        let job: Job = Box::new(move |worker: &mut Worker| {
            // The caller may have gone (cancelled); the work is done either way.
            let _ = tx.send(worker.run(f));
        });
        jobs.send(job).await.map_err(|_| stopped())?;
        rx.await
            .map_err(|_| BackendError::with_source(BackendErrorKind::Internal, JobPanicked))?
    }
}

impl Drop for Pkcs11 {
    fn drop(&mut self) {
        // Closing the queue lets each worker finish what is queued, close its session and exit.
        self.jobs = None;
        for worker in self.workers.drain(..) {
            let _ = worker.join();
        }
    }
}

#[async_trait]
impl Backend for Pkcs11 {
    fn name(&self) -> &'static str {
        "pkcs11"
    }

    async fn create_version(&self, key: KeyRef<'_>) -> Result<(), BackendError> {
        let (key_id, version) = (key.key_id.to_string(), key.version);
        self.submit(move |shared, session| {
            shared.create(
                session,
                KeyRef {
                    key_id: &key_id,
                    version,
                },
            )
        })
        .await
    }

    async fn encrypt(
        &self,
        key: KeyRef<'_>,
        aad: &[u8],
        plaintext: &[u8],
    ) -> Result<Vec<u8>, BackendError> {
        let (key_id, version) = (key.key_id.to_string(), key.version);
        let aad = aad.to_vec();
        let plaintext = Zeroizing::new(plaintext.to_vec());
        self.submit(move |shared, session| {
            shared.encrypt(
                session,
                KeyRef {
                    key_id: &key_id,
                    version,
                },
                &aad,
                &plaintext,
            )
        })
        .await
    }

    async fn decrypt(
        &self,
        key: KeyRef<'_>,
        aad: &[u8],
        sealed: &[u8],
    ) -> Result<Zeroizing<Vec<u8>>, BackendError> {
        if sealed.len() < NONCE_LEN + TAG_LEN {
            return Err(BackendError::new(BackendErrorKind::InvalidCiphertext));
        }
        let (key_id, version) = (key.key_id.to_string(), key.version);
        let aad = aad.to_vec();
        let sealed = sealed.to_vec();
        self.submit(move |shared, session| {
            shared.decrypt(
                session,
                KeyRef {
                    key_id: &key_id,
                    version,
                },
                &aad,
                &sealed,
            )
        })
        .await
    }

    async fn destroy(&self, key_id: &str, versions: &[u32]) -> Result<(), BackendError> {
        let key_id = key_id.to_string();
        let versions = versions.to_vec();
        self.submit(move |shared, session| shared.destroy(session, &key_id, &versions))
            .await
    }

    /// Data keys come from the OS RNG, not `C_GenerateRandom`: they leave the token's boundary in
    /// clear anyway, and a token round trip would spend a session per data key
    /// (`docs/backends.md`, "Randomness").
    async fn random(&self, n: usize) -> Result<Zeroizing<Vec<u8>>, BackendError> {
        crypto::random_bytes(n)
            .map_err(|e| BackendError::with_source(BackendErrorKind::Internal, e))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use cryptoki::context::Function;

    use super::*;

    fn rv(rv: RvError) -> CkError {
        CkError::Pkcs11(rv, Function::Decrypt)
    }

    #[test]
    fn faults_are_retryable_and_bad_tags_are_not() {
        use BackendErrorKind::*;
        for fault in [
            RvError::SessionHandleInvalid,
            RvError::SessionClosed,
            RvError::DeviceError,
            RvError::DeviceRemoved,
            RvError::DeviceMemory,
            RvError::TokenNotPresent,
            RvError::UserNotLoggedIn,
        ] {
            assert_eq!(classify(&rv(fault), true), Unavailable, "{fault:?}");
            assert_eq!(classify(&rv(fault), false), Unavailable, "{fault:?}");
        }
        for bad in [
            RvError::GeneralError,
            RvError::EncryptedDataInvalid,
            RvError::EncryptedDataLenRange,
        ] {
            assert_eq!(classify(&rv(bad), true), InvalidCiphertext, "{bad:?}");
        }
        assert_eq!(classify(&rv(RvError::GeneralError), false), Unavailable);
        assert_eq!(
            classify(&rv(RvError::EncryptedDataInvalid), false),
            Internal
        );
        assert_eq!(
            classify(&rv(RvError::ObjectHandleInvalid), true),
            MaterialMissing
        );
        assert_eq!(
            classify(&rv(RvError::KeyHandleInvalid), false),
            MaterialMissing
        );
        assert_eq!(classify(&rv(RvError::MechanismInvalid), false), Internal);
        assert_eq!(classify(&CkError::NotSupported, false), Internal);
    }

    #[test]
    fn settings_debug_hides_the_pin() {
        let settings = Pkcs11Settings {
            module: "/nonexistent.so".into(),
            token_label: "L".into(),
            pin: SecretString::from("1234-very-secret"),
            label_prefix: "kms-sidecar".into(),
            sessions: 2,
        };
        let shown = format!("{settings:?}");
        assert!(shown.contains("[redacted]"), "{shown}");
        assert!(!shown.contains("very-secret"), "{shown}");
    }

    #[test]
    fn labels_and_ids_name_key_and_version() {
        assert_eq!(
            object_label("kms-sidecar", "abc-1", 7),
            "kms-sidecar/abc-1/7"
        );
        assert_eq!(object_id("abc-1", 7), b"abc-1/7");
        assert_ne!(object_id("abc-1", 1), object_id("abc-11", 1));
    }

    #[test]
    fn bad_settings_are_refused_before_loading_anything() {
        let settings = |module: &str, sessions| Pkcs11Settings {
            module: module.into(),
            token_label: "L".into(),
            pin: SecretString::from("1234"),
            label_prefix: "p".into(),
            sessions,
        };
        let err = Pkcs11::open(settings("/nonexistent/libpkcs11.so", 1)).unwrap_err();
        assert!(
            format!("{err:#}").contains("/nonexistent/libpkcs11.so"),
            "{err:#}"
        );
        let err = Pkcs11::open(settings("/nonexistent/libpkcs11.so", 0)).unwrap_err();
        assert!(
            format!("{err:#}").contains("at least one session"),
            "{err:#}"
        );
    }
}
