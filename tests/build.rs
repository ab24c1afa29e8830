//! Generates a tonic client for the Kubernetes KMS v2 plugin API from the sidecar's own .proto (the
//! same file the kube-apiserver's API is written down in), so the tests speak gRPC as a real client.

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
