//! Generates a tonic client for the Kubernetes KMS v2 plugin API from the sidecar's .proto (the file
//! the kube-apiserver's API is written down in). The load tester keeps the sidecar a black box: it
//! compiles the wire contract itself instead of depending on the `kms-sidecar` crate.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    const DIR: &str = "../sidecar/src/frontend/kmsv2";
    const PROTO: &str = "../sidecar/src/frontend/kmsv2/api.proto";
    println!("cargo:rerun-if-changed={PROTO}");
    let files = protox::compile([PROTO], [DIR])?;
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(false)
        .compile_fds(files)?;
    Ok(())
}
