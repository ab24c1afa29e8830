//! Compiles the gRPC APIs the sidecar speaks, in pure Rust (protox parses the .proto files; no
//! `protoc` on the build machine, so a fresh machine with only a Rust toolchain builds):
//! - the Kubernetes KMS v2 plugin API (`src/frontend/kmsv2/api.proto`): server code;
//! - the subset of etcd's v3 API the fleet registry uses (`src/keys/registry/etcd.proto` and
//!   `mvcc.proto`): client code.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    const KMSV2: &str = "src/frontend/kmsv2/api.proto";
    println!("cargo:rerun-if-changed={KMSV2}");
    let files = protox::compile([KMSV2], ["src/frontend/kmsv2"])?;
    tonic_prost_build::configure()
        .build_client(false)
        .build_server(true)
        // Messages that carry a plaintext get a hand-written Debug that redacts it
        // (frontend/kmsv2/mod.rs), so no log line can print a data key.
        .skip_debug([".v2.EncryptRequest", ".v2.DecryptResponse"])
        .compile_fds(files)?;

    const ETCD: &str = "src/keys/registry/etcd.proto";
    const MVCC: &str = "src/keys/registry/mvcc.proto";
    println!("cargo:rerun-if-changed={ETCD}");
    println!("cargo:rerun-if-changed={MVCC}");
    let files = protox::compile([ETCD], ["src/keys/registry"])?;
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(false)
        // The auth request carries the etcd password: its Debug is left out so it cannot be logged.
        .skip_debug([".etcdserverpb.AuthenticateRequest"])
        .compile_fds(files)?;
    Ok(())
}
