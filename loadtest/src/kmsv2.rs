//! The Kubernetes KMS v2 plugin target: the gRPC API the kube-apiserver calls on the sidecar's Unix
//! socket (`--kmsv2-socket`), so its Encrypt/Decrypt cost can be measured by the same open-loop
//! engine, histograms and report as the AWS JSON API, on the same sidecar. The client is generated
//! in `build.rs` from the sidecar's `.proto`, not taken from the `kms-sidecar` crate: the sidecar
//! stays a black box. The socket is the authentication (no signing); the sidecar calls as the
//! `kubernetes` principal with its configured `--kmsv2-key-id`.

/// The generated protobuf messages and tonic client of the `v2` package.
#[allow(clippy::all, missing_debug_implementations)]
pub mod proto {
    tonic::include_proto!("v2");
}

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use proto::key_management_service_client::KeyManagementServiceClient;
use tonic::transport::{Channel, Endpoint, Uri};

use crate::error::LoadError;
use crate::kms::{payload, splitmix};
use crate::mix::{Mix, Op};
use crate::setup::SetupReport;

/// A client on one HTTP/2 connection to the plugin's socket.
pub type Client = KeyManagementServiceClient<Channel>;

/// The plaintext size the API server sends: a 32-byte data encryption key (seed).
pub const DEK_BYTES: usize = 32;

/// Distinct plaintexts Encrypt cycles through (and the setup phase seals for Decrypt).
const PLAINTEXTS: usize = 16;

/// Opens one connection to the socket (the URI is a placeholder: the connector dials the socket).
/// Each engine worker owns one, like the HTTP/1.1 connections of the AWS JSON target.
pub async fn connect(socket: &Path, timeout: Duration) -> Result<Client, LoadError> {
    let path: PathBuf = socket.to_path_buf();
    let channel = Endpoint::from_static("http://kmsv2.invalid")
        .connect_timeout(timeout)
        .connect_with_connector(tower::service_fn(move |_: Uri| {
            let path = path.clone();
            async move {
                let stream = tokio::net::UnixStream::connect(path).await?;
                Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(stream))
            }
        }))
        .await
        .map_err(|source| LoadError::KmsV2Connect {
            socket: socket.to_path_buf(),
            source,
        })?;
    Ok(KeyManagementServiceClient::new(channel))
}

/// Only Encrypt and Decrypt exist in the plugin API (Status is a health check, not load).
pub fn check_mix(mix: &Mix) -> Result<(), LoadError> {
    match mix
        .weights()
        .iter()
        .find(|(op, _)| !matches!(op, Op::Encrypt | Op::Decrypt))
    {
        Some((op, _)) => Err(LoadError::BadMix {
            mix: mix.spec(),
            reason: format!(
                "{} is not a KMS v2 operation (use encrypt and decrypt)",
                op.name()
            ),
        }),
        None => Ok(()),
    }
}

/// The prepared requests: request `i`'s operation and message are a pure function of `i`.
#[derive(Debug)]
pub struct Workload {
    pub mix: Mix,
    pub socket: PathBuf,
    encrypts: Vec<proto::EncryptRequest>,
    /// Each sealed setup payload with the plaintext its Decrypt must give back.
    decrypts: Vec<(proto::DecryptRequest, Vec<u8>)>,
}

/// One request to send.
#[derive(Debug)]
pub enum Call<'a> {
    Encrypt(&'a proto::EncryptRequest),
    Decrypt(&'a proto::DecryptRequest, &'a [u8]),
}

impl Workload {
    /// Builds the Encrypt requests and, if the mix decrypts, seals `PLAINTEXTS` payloads through the
    /// plugin itself (one connection, no retries: a plugin that cannot answer 16 calls cannot be
    /// measured).
    pub async fn prepare(
        socket: &Path,
        mix: Mix,
        timeout: Duration,
    ) -> Result<(Self, SetupReport), LoadError> {
        check_mix(&mix)?;
        let started = Instant::now();
        let encrypts: Vec<proto::EncryptRequest> = (0..PLAINTEXTS as u64)
            .map(|n| proto::EncryptRequest {
                plaintext: payload(DEK_BYTES, n),
                uid: format!("kms-loadtest-setup-{n}"),
            })
            .collect();
        let mut decrypts = Vec::new();
        let mut requests = 0;
        if mix.contains(Op::Decrypt) {
            let mut client = connect(socket, timeout).await?;
            for req in &encrypts {
                requests += 1;
                let setup_err = |status: tonic::Status| LoadError::KmsV2Setup {
                    op: "Encrypt",
                    code: format!("{:?}", status.code()),
                    message: status.message().to_string(),
                };
                let sealed = tokio::time::timeout(timeout, client.encrypt(req.clone()))
                    .await
                    .map_err(|_| LoadError::Timeout(timeout))?
                    .map_err(setup_err)?
                    .into_inner();
                if sealed.ciphertext.is_empty() {
                    return Err(LoadError::SetupShape {
                        op: "Encrypt",
                        field: "ciphertext",
                    });
                }
                decrypts.push((
                    proto::DecryptRequest {
                        ciphertext: sealed.ciphertext,
                        uid: req.uid.clone(),
                        key_id: sealed.key_id,
                        annotations: sealed.annotations,
                    },
                    req.plaintext.clone(),
                ));
            }
        }
        let setup = SetupReport {
            keys_created: 0,
            keys_used: 1,
            ciphertexts: decrypts.len(),
            requests,
            retries: 0,
            seconds: started.elapsed().as_secs_f64(),
        };
        let workload = Self {
            mix,
            socket: socket.to_path_buf(),
            encrypts,
            decrypts,
        };
        Ok((workload, setup))
    }

    /// Request `i`: its operation and message.
    pub fn pick(&self, i: u64) -> (Op, Call<'_>) {
        let op = self.mix.op(i);
        let h = splitmix(i) as usize;
        match (op, self.decrypts.is_empty()) {
            (Op::Decrypt, false) => {
                let (req, plaintext) = &self.decrypts[h % self.decrypts.len()];
                (op, Call::Decrypt(req, plaintext))
            }
            _ => (
                Op::Encrypt,
                Call::Encrypt(&self.encrypts[h % self.encrypts.len()]),
            ),
        }
    }
}

/// Sends request `i` and checks the answer: `Ok` for an Encrypt with a ciphertext and key id, or a
/// Decrypt that gave back the sealed plaintext; otherwise the error type to count (`Grpc<Code>`,
/// `Timeout`, `MalformedResponse`, `WrongPlaintext`).
pub async fn send(client: &mut Client, call: Call<'_>, timeout: Duration) -> Result<(), String> {
    let grpc = |s: tonic::Status| format!("Grpc{:?}", s.code());
    match call {
        Call::Encrypt(req) => {
            match tokio::time::timeout(timeout, client.encrypt(req.clone())).await {
                Err(_) => Err("Timeout".into()),
                Ok(Err(s)) => Err(grpc(s)),
                Ok(Ok(r)) => {
                    let r = r.into_inner();
                    if r.ciphertext.is_empty() || r.key_id.is_empty() {
                        Err("MalformedResponse".into())
                    } else {
                        Ok(())
                    }
                }
            }
        }
        Call::Decrypt(req, expected) => {
            match tokio::time::timeout(timeout, client.decrypt(req.clone())).await {
                Err(_) => Err("Timeout".into()),
                Ok(Err(s)) => Err(grpc(s)),
                Ok(Ok(r)) if r.get_ref().plaintext == expected => Ok(()),
                Ok(Ok(_)) => Err("WrongPlaintext".into()),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_encrypt_and_decrypt_are_kmsv2_operations() {
        assert!(check_mix(&Mix::parse("encrypt=1,decrypt=3").unwrap()).is_ok());
        assert!(check_mix(&Mix::parse("decrypt=1").unwrap()).is_ok());
        let err = check_mix(&Mix::parse("decrypt=1,generate-data-key=1").unwrap()).unwrap_err();
        assert!(err.to_string().contains("not a KMS v2 operation"), "{err}");
    }

    #[test]
    fn encrypt_sends_a_dek_sized_plaintext() {
        let w = Workload {
            mix: Mix::parse("encrypt=1").unwrap(),
            socket: PathBuf::from("/nonexistent"),
            encrypts: vec![proto::EncryptRequest {
                plaintext: payload(DEK_BYTES, 0),
                uid: "u".into(),
            }],
            decrypts: Vec::new(),
        };
        for i in 0..4 {
            match w.pick(i) {
                (Op::Encrypt, Call::Encrypt(r)) => assert_eq!(r.plaintext.len(), 32),
                other => panic!("{other:?}"),
            }
        }
    }
}
