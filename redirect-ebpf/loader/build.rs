//! Builds the eBPF programs with the machine's nightly for the BPF target
//! (aya-build runs `cargo +nightly build -Z build-std=core`), so the loader
//! embeds the object of the same commit.

use anyhow::{Context, Result};

fn main() -> Result<()> {
    let root = concat!(env!("CARGO_MANIFEST_DIR"), "/../programs");
    // The ABI is part of the programs too.
    println!(
        "cargo:rerun-if-changed={}",
        concat!(env!("CARGO_MANIFEST_DIR"), "/../abi")
    );
    aya_build::build_ebpf(
        [aya_build::Package {
            name: "weft-redirect-programs",
            root_dir: root,
            ..Default::default()
        }],
        aya_build::Toolchain::Nightly,
    )
    .context(
        "building the eBPF programs needs the nightly toolchain with rust-src and \
         bpf-linker built for its LLVM: run `cargo xtask setup`",
    )
}
