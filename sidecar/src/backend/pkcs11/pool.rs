//! The session worker pool: what the worker threads share (module, slot, PIN, handle cache), the
//! token operations they run, and the job loop each thread runs on its own logged-in session.
//!
//! Separate from the backend because a cryptoki `Session` is `Send` but not `Sync`: everything that
//! touches a session lives here, on the worker threads, and async callers only submit jobs.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::panic::AssertUnwindSafe;
use std::sync::{Arc, Mutex, PoisonError, RwLock};

use cryptoki::context::Pkcs11 as Module;
use cryptoki::error::{Error as CkError, RvError};
use cryptoki::mechanism::Mechanism;
use cryptoki::mechanism::aead::GcmParams;
use cryptoki::object::{Attribute, KeyType, ObjectClass, ObjectHandle};
use cryptoki::session::{Session, SessionState, UserType};
use cryptoki::slot::Slot;
use cryptoki::types::Ulong;
use secrecy::SecretString;
use tokio::sync::mpsc;
use zeroize::Zeroizing;

use super::{object_id, object_label, object_template, token_error};
use crate::backend::{BackendError, BackendErrorKind, KeyRef};
use crate::crypto::{self, KEY_LEN, NONCE_LEN, TAG_LEN};

/// Every worker thread has stopped (only while shutting down).
#[derive(Debug, thiserror::Error)]
#[error("the PKCS#11 worker threads have stopped")]
pub(super) struct WorkersStopped;

/// A job ended without an answer: it panicked (the worker survives, see `work`).
#[derive(Debug, thiserror::Error)]
#[error("a PKCS#11 call panicked")]
pub(super) struct JobPanicked;

/// The session lost its login (someone called `C_Logout` on the token): private objects are
/// invisible to it, so "not found" means nothing until it logs in again.
#[derive(Debug, thiserror::Error)]
#[error("the PKCS#11 session is not logged in")]
struct NotLoggedIn;

/// Believes "no such object" only from a logged-in session; otherwise the session is a fault
/// (dropped and replaced by a logged-in one), so a logout can never make keys look deleted.
fn check_logged_in(session: &Session) -> Result<(), BackendError> {
    let info = session
        .get_session_info()
        .map_err(|e| token_error(e, false))?;
    match info.session_state() {
        SessionState::RoUser | SessionState::RwUser => Ok(()),
        _ => Err(BackendError::with_source(
            BackendErrorKind::Unavailable,
            NotLoggedIn,
        )),
    }
}

/// The token returned a ciphertext of an unexpected length.
#[derive(Debug, thiserror::Error)]
#[error("the token returned {got} bytes of AES-GCM output, expected {expected}")]
struct UnexpectedLength {
    got: usize,
    expected: usize,
}

/// What the workers share: the module, the slot, the PIN for re-login, and the handle cache.
pub(super) struct Shared {
    pub(super) module: Module,
    pub(super) slot: Slot,
    pub(super) pin: SecretString,
    pub(super) prefix: String,
    /// Object handles per key id and version. Handles stay valid across the sessions of one
    /// login; the cache is cleared whenever a worker reconnects.
    pub(super) handles: RwLock<HashMap<String, BTreeMap<u32, ObjectHandle>>>,
    /// Serializes find-then-generate, so a version is never created twice.
    pub(super) create: Mutex<()>,
}

impl fmt::Debug for Shared {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Shared")
            .field("slot", &self.slot)
            .field("prefix", &self.prefix)
            .finish_non_exhaustive()
    }
}

impl Shared {
    pub(super) fn open_session(&self) -> Result<Session, CkError> {
        let session = self.module.open_rw_session(self.slot)?;
        match session.login(UserType::User, Some(&self.pin)) {
            // Login is per token and application: a second session is already logged in.
            Ok(()) | Err(CkError::Pkcs11(RvError::UserAlreadyLoggedIn, _)) => Ok(session),
            Err(e) => Err(e),
        }
    }

    fn cached(&self, key_id: &str, version: u32) -> Option<ObjectHandle> {
        let handles = self.handles.read().unwrap_or_else(PoisonError::into_inner);
        handles.get(key_id).and_then(|v| v.get(&version)).copied()
    }

    fn remember(&self, key_id: &str, version: u32, handle: ObjectHandle) {
        let mut handles = self.handles.write().unwrap_or_else(PoisonError::into_inner);
        handles
            .entry(key_id.to_string())
            .or_default()
            .insert(version, handle);
    }

    fn forget(&self, key_id: &str, version: u32) {
        let mut handles = self.handles.write().unwrap_or_else(PoisonError::into_inner);
        if let Some(versions) = handles.get_mut(key_id) {
            versions.remove(&version);
            if versions.is_empty() {
                handles.remove(key_id);
            }
        }
    }

    fn forget_all(&self) {
        self.handles
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .clear();
    }

    fn find(
        &self,
        session: &Session,
        key_id: &str,
        version: u32,
    ) -> Result<Vec<ObjectHandle>, CkError> {
        session.find_objects(&object_template(&self.prefix, key_id, version))
    }

    /// The key version's handle, from the cache or found on the token.
    fn handle(
        &self,
        session: &Session,
        key_id: &str,
        version: u32,
    ) -> Result<ObjectHandle, BackendError> {
        if let Some(handle) = self.cached(key_id, version) {
            return Ok(handle);
        }
        let found = self
            .find(session, key_id, version)
            .map_err(|e| token_error(e, false))?;
        // Duplicates can only come from outside the sidecar; the first is as good as any other.
        let Some(&handle) = found.first() else {
            check_logged_in(session)?;
            return Err(BackendError::new(BackendErrorKind::MaterialMissing));
        };
        self.remember(key_id, version, handle);
        Ok(handle)
    }

    /// Runs `f` with the key version's handle; a stale cached handle is found again once.
    fn with_key<T>(
        &self,
        session: &Session,
        key: KeyRef<'_>,
        decrypting: bool,
        f: impl Fn(ObjectHandle) -> Result<T, CkError>,
    ) -> Result<T, BackendError> {
        let handle = self.handle(session, key.key_id, key.version)?;
        match f(handle) {
            Err(CkError::Pkcs11(RvError::KeyHandleInvalid | RvError::ObjectHandleInvalid, _)) => {
                self.forget(key.key_id, key.version);
                let handle = self.handle(session, key.key_id, key.version)?;
                f(handle).map_err(|e| token_error(e, decrypting))
            }
            other => other.map_err(|e| token_error(e, decrypting)),
        }
    }

    pub(super) fn create(&self, session: &Session, key: KeyRef<'_>) -> Result<(), BackendError> {
        let _guard = self.create.lock().unwrap_or_else(PoisonError::into_inner);
        let found = self
            .find(session, key.key_id, key.version)
            .map_err(|e| token_error(e, false))?;
        if let Some(handle) = found.first() {
            // Created before a crash that lost the metadata write: reuse it, never duplicate it.
            self.remember(key.key_id, key.version, *handle);
            return Ok(());
        }
        check_logged_in(session)?;
        let template = [
            Attribute::Class(ObjectClass::SECRET_KEY),
            Attribute::KeyType(KeyType::AES),
            Attribute::ValueLen(Ulong::from(KEY_LEN as u64)),
            Attribute::Token(true),
            Attribute::Private(true),
            Attribute::Sensitive(true),
            Attribute::Extractable(false),
            Attribute::Encrypt(true),
            Attribute::Decrypt(true),
            Attribute::Wrap(false),
            Attribute::Unwrap(false),
            Attribute::Sign(false),
            Attribute::Verify(false),
            Attribute::Derive(false),
            Attribute::Label(object_label(&self.prefix, key.key_id, key.version).into_bytes()),
            Attribute::Id(object_id(key.key_id, key.version)),
        ];
        let handle = session
            .generate_key(&Mechanism::AesKeyGen, &template)
            .map_err(|e| token_error(e, false))?;
        self.remember(key.key_id, key.version, handle);
        Ok(())
    }

    pub(super) fn encrypt(
        &self,
        session: &Session,
        key: KeyRef<'_>,
        aad: &[u8],
        plaintext: &[u8],
    ) -> Result<Vec<u8>, BackendError> {
        let mut nonce = [0u8; NONCE_LEN];
        getrandom::fill(&mut nonce)
            .map_err(|_| BackendError::with_source(BackendErrorKind::Internal, crypto::RngError))?;
        let sealed = self.with_key(session, key, false, |handle| {
            let mut iv = nonce;
            let params = GcmParams::new(&mut iv, aad, Ulong::from(TAG_LEN as u64 * 8))?;
            session.encrypt(&Mechanism::AesGcm(params), handle, plaintext)
        })?;
        let expected = plaintext.len() + TAG_LEN;
        if sealed.len() != expected {
            return Err(BackendError::with_source(
                BackendErrorKind::Internal,
                UnexpectedLength {
                    got: sealed.len(),
                    expected,
                },
            ));
        }
        let mut out = Vec::with_capacity(NONCE_LEN + sealed.len());
        out.extend_from_slice(&nonce);
        out.extend_from_slice(&sealed);
        Ok(out)
    }

    pub(super) fn decrypt(
        &self,
        session: &Session,
        key: KeyRef<'_>,
        aad: &[u8],
        sealed: &[u8],
    ) -> Result<Zeroizing<Vec<u8>>, BackendError> {
        if sealed.len() < NONCE_LEN + TAG_LEN {
            return Err(BackendError::new(BackendErrorKind::InvalidCiphertext));
        }
        let (nonce, body) = sealed.split_at(NONCE_LEN);
        self.with_key(session, key, true, |handle| {
            let mut iv = [0u8; NONCE_LEN];
            iv.copy_from_slice(nonce);
            let params = GcmParams::new(&mut iv, aad, Ulong::from(TAG_LEN as u64 * 8))?;
            session
                .decrypt(&Mechanism::AesGcm(params), handle, body)
                .map(Zeroizing::new)
        })
    }

    pub(super) fn destroy(
        &self,
        session: &Session,
        key_id: &str,
        versions: &[u32],
    ) -> Result<(), BackendError> {
        // Logged out, nothing would be found and a deletion would "succeed" leaving the keys.
        check_logged_in(session)?;
        for &version in versions {
            self.forget(key_id, version);
            for handle in self
                .find(session, key_id, version)
                .map_err(|e| token_error(e, false))?
            {
                match session.destroy_object(handle) {
                    // Destroyed by someone else between the find and now: already gone is success.
                    Ok(()) | Err(CkError::Pkcs11(RvError::ObjectHandleInvalid, _)) => {}
                    Err(e) => return Err(token_error(e, false)),
                }
            }
            // A job that found the handle before it was destroyed may have cached it again.
            self.forget(key_id, version);
        }
        Ok(())
    }
}

/// One worker thread's state: the shared context and its own session, if it has a working one.
pub(super) struct Worker {
    pub(super) shared: Arc<Shared>,
    pub(super) session: Option<Session>,
}

impl Worker {
    /// Runs `f` on this worker's session, reconnecting first if the last one broke. A fault drops
    /// the session; a bad ciphertext or a missing key leaves it in use.
    pub(super) fn run<T>(
        &mut self,
        f: impl FnOnce(&Shared, &Session) -> Result<T, BackendError>,
    ) -> Result<T, BackendError> {
        if self.session.is_none() {
            let session = self
                .shared
                .open_session()
                .map_err(|e| BackendError::with_source(BackendErrorKind::Unavailable, e))?;
            tracing::info!("PKCS#11 session reopened");
            // After a reconnect (perhaps to a replaced token) no cached handle is trusted.
            self.shared.forget_all();
            self.session = Some(session);
        }
        let Some(session) = self.session.as_ref() else {
            return Err(BackendError::new(BackendErrorKind::Internal));
        };
        let result = f(&self.shared, session);
        if let Err(e) = &result
            && matches!(
                e.kind,
                BackendErrorKind::Unavailable | BackendErrorKind::Internal
            )
        {
            tracing::warn!(error = ?e.source, "PKCS#11 call failed; dropping the session");
            self.session = None;
        }
        result
    }
}

pub(super) type Job = Box<dyn FnOnce(&mut Worker) + Send>;

pub(super) fn work(mut worker: Worker, queue: Arc<Mutex<mpsc::Receiver<Job>>>) {
    loop {
        // Idle workers wait for the queue's lock; the one holding it waits for a job.
        let job = queue
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .blocking_recv();
        let Some(job) = job else {
            return;
        };
        // A panic in a token call must not take a worker (and a share of the pool) with it: the
        // caller sees its answer channel close, and the session, in an unknown state, is replaced.
        if std::panic::catch_unwind(AssertUnwindSafe(|| job(&mut worker))).is_err() {
            tracing::error!("PKCS#11 job panicked; dropping the session");
            worker.session = None;
        }
    }
}
