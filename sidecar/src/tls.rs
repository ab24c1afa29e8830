//! HTTPS on the KMS port, opt-in. Some KMS clients refuse plain HTTP (the AWS Encryption SDK in some
//! languages, older database drivers); with `tls = true` the KMS listener speaks TLS through rustls.
//!
//! The certificate comes from the config (`tls_cert` + `tls_key`, PEM) or, when none is given, is
//! generated once into `<data-dir>/tls/` (self-signed for `localhost`, `127.0.0.1`, `::1` and the
//! listen address) and reused on every later start, so a client can be told once to trust that file
//! (`AWS_CA_BUNDLE=<data-dir>/tls/cert.pem`). The private key file is written crash-safe with mode
//! 0600 and never logged. The admin port stays plain HTTP on loopback (Prometheus, probes).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context, bail};
use tokio_rustls::TlsAcceptor;
use tokio_rustls::rustls::ServerConfig;
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};
use zeroize::Zeroizing;

use crate::datadir::write_atomic;

/// Where the certificate comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TlsSource {
    /// PEM files given in the config.
    Files { cert: PathBuf, key: PathBuf },
    /// Generated on first run into `<data-dir>/tls/`, then reused.
    SelfSigned,
}

/// A ready acceptor and the certificate file clients should trust.
#[derive(Clone)]
pub struct Tls {
    pub acceptor: TlsAcceptor,
    pub cert_path: PathBuf,
    /// True when this start generated the certificate.
    pub generated: bool,
}

impl std::fmt::Debug for Tls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tls")
            .field("cert_path", &self.cert_path)
            .field("generated", &self.generated)
            .finish_non_exhaustive()
    }
}

/// The self-signed certificate's location under the data directory.
pub fn self_signed_paths(data_dir: &Path) -> (PathBuf, PathBuf) {
    let dir = data_dir.join("tls");
    (dir.join("cert.pem"), dir.join("key.pem"))
}

/// Loads (or first generates) the certificate and builds the acceptor.
pub fn load(source: &TlsSource, data_dir: &Path, listen: SocketAddr) -> anyhow::Result<Tls> {
    let (cert_path, key_path, generated) = match source {
        TlsSource::Files { cert, key } => (cert.clone(), key.clone(), false),
        TlsSource::SelfSigned => {
            let (cert, key) = self_signed_paths(data_dir);
            let generated = match (cert.exists(), key.exists()) {
                (true, true) => false,
                (false, false) => {
                    generate(&cert, &key, listen)?;
                    true
                }
                _ => bail!(
                    "{} and {} must both exist or both be absent (remove the other to generate a new pair)",
                    cert.display(),
                    key.display()
                ),
            };
            (cert, key, generated)
        }
    };
    let certs = CertificateDer::pem_file_iter(&cert_path)
        .with_context(|| format!("cannot read TLS certificate {}", cert_path.display()))?
        .collect::<Result<Vec<_>, _>>()
        .with_context(|| format!("TLS certificate {} is not valid PEM", cert_path.display()))?;
    if certs.is_empty() {
        bail!(
            "TLS certificate {} holds no certificate",
            cert_path.display()
        );
    }
    let key_pem = Zeroizing::new(
        std::fs::read(&key_path)
            .with_context(|| format!("cannot read TLS key {}", key_path.display()))?,
    );
    // The parse error names only the file: a key's bytes never reach an error message.
    let key = PrivateKeyDer::from_pem_slice(&key_pem).map_err(|_| {
        anyhow::anyhow!(
            "TLS key {} holds no PEM private key (PKCS#8, PKCS#1 or SEC1)",
            key_path.display()
        )
    })?;
    let mut config = ServerConfig::builder()
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .with_context(|| {
            format!(
                "TLS key {} does not match certificate {}",
                key_path.display(),
                cert_path.display()
            )
        })?;
    // The SDKs speak HTTP/1.1 to KMS; offering only that keeps ALPN honest.
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Tls {
        acceptor: TlsAcceptor::from(Arc::new(config)),
        cert_path,
        generated,
    })
}

/// Generates a self-signed certificate for the loopback names and the listen address.
fn generate(cert_path: &Path, key_path: &Path, listen: SocketAddr) -> anyhow::Result<()> {
    let mut names = vec![
        "localhost".to_string(),
        "127.0.0.1".to_string(),
        "::1".to_string(),
    ];
    let ip = listen.ip();
    if !ip.is_unspecified() && !names.contains(&ip.to_string()) {
        names.push(ip.to_string());
    }
    let certified = rcgen::generate_simple_self_signed(names)
        .context("cannot generate a self-signed TLS certificate")?;
    let dir = cert_path
        .parent()
        .with_context(|| format!("{} has no parent directory", cert_path.display()))?;
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let key_pem = Zeroizing::new(certified.signing_key.serialize_pem());
    // Key first: a crash between the two writes leaves a key without a certificate, which the next
    // start reports instead of silently pairing a new certificate with an old key.
    write_atomic(key_path, key_pem.as_bytes())?;
    write_atomic(cert_path, certified.cert.pem().as_bytes())?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn listen() -> SocketAddr {
        "127.0.0.1:0".parse().unwrap()
    }

    #[test]
    fn self_signed_is_generated_once_and_reused() {
        let dir = tempfile::tempdir().unwrap();
        let first = load(&TlsSource::SelfSigned, dir.path(), listen()).unwrap();
        assert!(first.generated);
        let (cert, key) = self_signed_paths(dir.path());
        assert_eq!(first.cert_path, cert);
        let pem = std::fs::read_to_string(&cert).unwrap();
        assert!(pem.starts_with("-----BEGIN CERTIFICATE-----"));
        use std::os::unix::fs::PermissionsExt as _;
        let mode = std::fs::metadata(&key).unwrap().permissions().mode();
        assert_eq!(
            mode & 0o777,
            0o600,
            "the private key is readable by its owner only"
        );
        let second = load(&TlsSource::SelfSigned, dir.path(), listen()).unwrap();
        assert!(!second.generated);
        assert_eq!(std::fs::read_to_string(&cert).unwrap(), pem);
        assert!(!format!("{second:?}").contains("PRIVATE"));
    }

    #[test]
    fn half_a_pair_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        load(&TlsSource::SelfSigned, dir.path(), listen()).unwrap();
        let (cert, _) = self_signed_paths(dir.path());
        std::fs::remove_file(&cert).unwrap();
        let err = load(&TlsSource::SelfSigned, dir.path(), listen()).unwrap_err();
        assert!(format!("{err:#}").contains("both exist"), "{err:#}");
    }

    #[test]
    fn bad_files_name_the_file_and_not_the_key() {
        let dir = tempfile::tempdir().unwrap();
        let cert = dir.path().join("c.pem");
        let key = dir.path().join("k.pem");
        std::fs::write(&cert, "not a certificate").unwrap();
        std::fs::write(&key, "secret-key-bytes").unwrap();
        let source = TlsSource::Files {
            cert: cert.clone(),
            key: key.clone(),
        };
        let err = format!("{:#}", load(&source, dir.path(), listen()).unwrap_err());
        assert!(err.contains("c.pem"), "{err}");
        // A real certificate with a key that is not PEM.
        load(&TlsSource::SelfSigned, dir.path(), listen()).unwrap();
        let (good_cert, _) = self_signed_paths(dir.path());
        let source = TlsSource::Files {
            cert: good_cert,
            key: key.clone(),
        };
        let err = format!("{:#}", load(&source, dir.path(), listen()).unwrap_err());
        assert!(err.contains("k.pem"), "{err}");
        assert!(!err.contains("secret-key-bytes"), "{err}");
    }
}
