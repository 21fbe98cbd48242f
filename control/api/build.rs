//! Compiles the protos with protox (no system protoc needed) and generates
//! the messages and the gRPC client and server with tonic-prost-build.

use anyhow::{Context, Result};

fn main() -> Result<()> {
    let protos = ["proto/weft/discovery/v1/discovery.proto"];
    for p in protos {
        println!("cargo:rerun-if-changed={p}");
    }
    let fds = protox::compile(protos, ["proto"]).context("compiling the protos")?;
    tonic_prost_build::configure()
        .build_server(true)
        .build_client(true)
        .compile_fds(fds)
        .context("generating Rust from the protos")?;
    Ok(())
}
