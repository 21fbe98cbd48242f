//! Compiles the gRPC echo's proto with protox (no system protoc needed) and
//! generates its messages, server and client with tonic-prost-build.

use anyhow::{Context, Result};

fn main() -> Result<()> {
    let proto = "proto/grpcecho.proto";
    println!("cargo:rerun-if-changed={proto}");
    let fds = protox::compile([proto], ["proto"]).context("compiling the gRPC echo proto")?;
    tonic_prost_build::configure()
        .build_server(true)
        .build_client(true)
        .compile_fds(fds)
        .context("generating Rust from the gRPC echo proto")?;
    Ok(())
}
