//! AES-256-GCM and randomness helpers shared by the embedded backend and the data directory's sealing.
//!
//! One layout everywhere: `nonce (12) || ciphertext || tag (16)`, with a fresh random nonce per message
//! from the OS RNG. Keeping this in one place means one audited use of the AEAD API.

use aes_gcm::aead::{Aead, Payload};
use aes_gcm::{Aes256Gcm, KeyInit};
use zeroize::Zeroizing;

/// Nonce length of AES-GCM as used here.
pub const NONCE_LEN: usize = 12;
/// Authentication tag length.
pub const TAG_LEN: usize = 16;
/// Length of an AES-256 key.
pub const KEY_LEN: usize = 32;

/// The AEAD failed: wrong key, wrong associated data, or tampered bytes. Deliberately says no more.
#[derive(Debug, thiserror::Error)]
#[error("authenticated decryption failed")]
pub struct OpenError;

/// The OS RNG failed; nothing sensible can continue without randomness.
#[derive(Debug, thiserror::Error)]
#[error("the operating system's random number generator failed")]
pub struct RngError;

/// Fills a new zeroizing buffer of `n` random bytes from the OS RNG.
pub fn random_bytes(n: usize) -> Result<Zeroizing<Vec<u8>>, RngError> {
    let mut buf = Zeroizing::new(vec![0u8; n]);
    getrandom::fill(&mut buf).map_err(|_| RngError)?;
    Ok(buf)
}

/// An AES-256-GCM cipher whose key schedule is zeroized on drop.
pub struct Cipher(Aes256Gcm);

impl std::fmt::Debug for Cipher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Cipher([redacted])")
    }
}

impl Cipher {
    /// Builds a cipher from 32 bytes of key material; any other length is refused.
    pub fn new(key: &[u8]) -> Option<Self> {
        (key.len() == KEY_LEN)
            .then(|| Aes256Gcm::new_from_slice(key).ok())
            .flatten()
            .map(Self)
    }

    /// Encrypts `plaintext` with `aad`, returning `nonce || ciphertext || tag`.
    pub fn seal(&self, aad: &[u8], plaintext: &[u8]) -> Result<Vec<u8>, RngError> {
        let mut nonce = [0u8; NONCE_LEN];
        getrandom::fill(&mut nonce).map_err(|_| RngError)?;
        let sealed = self
            .0
            .encrypt(
                &nonce.into(),
                Payload {
                    msg: plaintext,
                    aad,
                },
            )
            // Encryption fails only for messages longer than GCM's limit (64 GiB); bodies are bounded far below.
            .map_err(|_| RngError)?;
        let mut out = Vec::with_capacity(NONCE_LEN + sealed.len());
        out.extend_from_slice(&nonce);
        out.extend_from_slice(&sealed);
        Ok(out)
    }

    /// Decrypts `nonce || ciphertext || tag` with `aad`.
    pub fn open(&self, aad: &[u8], sealed: &[u8]) -> Result<Zeroizing<Vec<u8>>, OpenError> {
        if sealed.len() < NONCE_LEN + TAG_LEN {
            return Err(OpenError);
        }
        let (nonce, body) = sealed.split_at(NONCE_LEN);
        let nonce: [u8; NONCE_LEN] = nonce.try_into().map_err(|_| OpenError)?;
        self.0
            .decrypt(&nonce.into(), Payload { msg: body, aad })
            .map(Zeroizing::new)
            .map_err(|_| OpenError)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_tamper() {
        let key = random_bytes(KEY_LEN).unwrap();
        let c = Cipher::new(&key).unwrap();
        let sealed = c.seal(b"aad", b"hello").unwrap();
        assert_eq!(sealed.len(), NONCE_LEN + 5 + TAG_LEN);
        assert_eq!(&c.open(b"aad", &sealed).unwrap()[..], b"hello");
        assert!(c.open(b"other", &sealed).is_err());
        let mut bad = sealed.clone();
        bad[NONCE_LEN] ^= 1;
        assert!(c.open(b"aad", &bad).is_err());
        assert!(c.open(b"aad", &sealed[..10]).is_err());
        assert!(Cipher::new(&key[..16]).is_none());
        assert_eq!(format!("{c:?}"), "Cipher([redacted])");
    }
}
