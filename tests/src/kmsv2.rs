//! A gRPC client for the Kubernetes KMS v2 plugin on a sidecar's Unix socket, and the arguments and
//! key policy its tests start a sidecar with. Its own module because only the KMS v2 tests use it
//! and it carries the generated protobuf code.

#[allow(clippy::all, missing_debug_implementations)]
pub mod proto {
    tonic::include_proto!("v2");
}

use std::path::{Path, PathBuf};
use std::time::Duration;

pub use proto::key_management_service_client::KeyManagementServiceClient;
use tonic::transport::{Channel, Endpoint, Uri};

/// The client type.
pub type Client = KeyManagementServiceClient<Channel>;

/// Connects to the plugin's socket (the URI is a placeholder: the connector dials the socket).
pub async fn connect(socket: &Path) -> Client {
    let path: PathBuf = socket.to_path_buf();
    let channel = Endpoint::from_static("http://kmsv2.invalid")
        .connect_timeout(Duration::from_secs(5))
        .timeout(Duration::from_secs(30))
        .connect_with_connector(tower::service_fn(move |_: Uri| {
            let path = path.clone();
            async move {
                let stream = tokio::net::UnixStream::connect(path).await?;
                Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(stream))
            }
        }))
        .await
        .expect("connect to the KMS v2 socket");
    KeyManagementServiceClient::new(channel)
}

/// The arguments that enable the plugin on `socket` with key `key_id`.
pub fn args(socket: &Path, key_id: &str) -> Vec<String> {
    vec![
        "--kmsv2-socket".into(),
        socket.display().to_string(),
        "--kmsv2-key-id".into(),
        key_id.into(),
    ]
}

/// Creates the plugin's key (policy allowing `kubernetes` in `account`) and `alias` for it on a
/// running sidecar; returns the key's ARN.
pub async fn create_plugin_key(sidecar: &crate::Sidecar, account: &str, alias: &str) -> String {
    let meta = crate::key_with_alias(&sidecar.sdk(), &policy(account), alias).await;
    meta.arn().expect("arn").to_string()
}

/// A key policy for keys the plugin uses: the creator (`default`) may do everything, the
/// API server's principal (`kubernetes`) may Encrypt, Decrypt and DescribeKey (Status).
pub fn policy(account: &str) -> String {
    serde_json::json!({
        "Version": "2012-10-17",
        "Statement": [
            {
                "Sid": "creator",
                "Effect": "Allow",
                "Principal": {"AWS": format!("arn:aws:iam::{account}:user/default")},
                "Action": "kms:*",
                "Resource": "*"
            },
            {
                "Sid": "kube-apiserver",
                "Effect": "Allow",
                "Principal": {"AWS": format!("arn:aws:iam::{account}:user/kubernetes")},
                "Action": ["kms:Encrypt", "kms:Decrypt", "kms:DescribeKey"],
                "Resource": "*"
            }
        ]
    })
    .to_string()
}
