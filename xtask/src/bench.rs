//! `cargo xtask bench [--quick] [--only TEXT]... [--no-cross-check]`: with
//! what the benchmark needs installed by setup (Envoy
//! 1.40 from PyPI, h2load from Debian), builds weft and the harness in
//! release mode, and runs every scenario (bench/README.md).

use std::path::Path;
use std::process::Command;

use anyhow::{Result, bail};

pub(crate) fn run(root: &Path, args: &[String]) -> Result<()> {
    const KNOWN: [&str; 3] = ["--quick", "--only", "--no-cross-check"];
    if let Some(bad) = args
        .iter()
        .enumerate()
        .find(|(i, a)| !KNOWN.contains(&a.as_str()) && (*i == 0 || args[i - 1] != "--only"))
    {
        bail!(
            "cargo xtask bench: unknown argument `{}`; usage: cargo xtask bench [--quick] [--only TEXT]... [--no-cross-check]",
            bad.1
        );
    }
    crate::step(
        "cargo build --release -p weft -p weft-bench",
        crate::cargo()
            .args([
                "build",
                "--release",
                "--locked",
                "-p",
                "weft",
                "-p",
                "weft-bench",
            ])
            .current_dir(root),
    )?;
    let target = crate::latency::target_dir(root)?;
    let mut cmd = Command::new(target.join("release/weft-bench"));
    cmd.arg("run")
        .arg("--weft")
        .arg(target.join("release/weft"))
        .arg("--topology")
        .arg(root.join("bench/lab.yaml"))
        .arg("--out")
        .arg(target.join("bench"));
    // The harness parses and checks them.
    cmd.args(args);
    crate::step("weft-bench run", &mut cmd)
}
