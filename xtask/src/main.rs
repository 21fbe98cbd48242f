//! `cargo xtask <task>`: the developer entry points named in README.md.
//!
//! - `setup`: install what the build and the suite need, idempotently and
//!   non-interactively, and say what was done.
//! - `test`: setup, then format check, clippy with `-D warnings`, and every
//!   test, the privileged lab tests included.
//! - `demo`: setup, build, and run `weft demo` on a local lab.
//!
//! This is a harness, so it uses `anyhow` and prints to the terminal.

mod bench;
mod latency;
mod setup;

use std::process::{Command, ExitCode};
use std::time::Instant;

use anyhow::{Context, Result, bail};

/// Built with nightly for the BPF target only; the loader's build script
/// compiles it, and stable cargo commands leave it out.
const EBPF_PROGRAMS: &str = "weft-redirect-programs";

const USAGE: &str = "usage: cargo xtask <setup | test | demo | latency | bench [--quick] [--only TEXT]... [--no-cross-check] | crds> [-- args for weft demo]";

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = match args.first().map(String::as_str) {
        Some("setup") => setup::run(),
        Some("test") => test(),
        Some("demo") => demo(&args[1..]),
        Some("crds") => crds(),
        Some("latency") => setup::require_root("the latency lab creates network namespaces")
            .and_then(|()| setup::run())
            .and_then(|()| latency::run(&workspace_root())),
        Some("bench") => setup::require_root("the bench lab creates network namespaces")
            .and_then(|()| setup::run())
            .and_then(|()| bench::run(&workspace_root(), &args[1..])),
        Some("-h" | "--help") => {
            println!("{USAGE}");
            Ok(())
        }
        _ => Err(anyhow::anyhow!("{USAGE}")),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("xtask: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Runs one step, prints its duration, and fails with the step's name.
fn step(name: &str, cmd: &mut Command) -> Result<()> {
    println!("\n==> {name}");
    let started = Instant::now();
    let status = cmd
        .status()
        .with_context(|| format!("{name}: could not start {cmd:?}"))?;
    let secs = started.elapsed().as_secs_f64();
    if !status.success() {
        bail!("{name} failed ({status}) after {secs:.1} s");
    }
    println!("==> {name}: ok in {secs:.1} s");
    Ok(())
}

#[expect(
    clippy::disallowed_methods,
    reason = "xtask is a harness binary: cargo tells it which cargo to use"
)]
fn cargo() -> Command {
    Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()))
}

fn test() -> Result<()> {
    let started = Instant::now();
    setup::require_root("the lab tests create network namespaces and cgroups")?;
    setup::run()?;
    step(
        "cargo fmt --check",
        cargo().args(["fmt", "--all", "--check"]),
    )?;
    step(
        "cargo clippy (workspace, all targets, -D warnings)",
        cargo().args([
            "clippy",
            "--workspace",
            "--exclude",
            EBPF_PROGRAMS,
            "--all-targets",
            "--locked",
            "--",
            "-D",
            "warnings",
        ]),
    )?;
    step(
        "cargo +nightly clippy (eBPF programs, bpfel-unknown-none, -D warnings)",
        Command::new("cargo").args([
            "+nightly",
            "clippy",
            "--package",
            EBPF_PROGRAMS,
            "--target",
            "bpfel-unknown-none",
            "-Z",
            "build-std=core",
            "--release",
            "--locked",
            "--",
            "-D",
            "warnings",
        ]),
    )?;
    step(
        "cargo test (unit, component and privileged lab tests)",
        cargo().args([
            "test",
            "--workspace",
            "--exclude",
            EBPF_PROGRAMS,
            "--locked",
        ]),
    )?;
    println!(
        "\nxtask test: all steps passed in {:.0} s",
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

fn demo(extra: &[String]) -> Result<()> {
    setup::require_root("the demo lab creates network namespaces and cgroups")?;
    setup::run()?;
    let extra = match extra.first().map(String::as_str) {
        Some("--") => &extra[1..],
        _ => extra,
    };
    step(
        "weft demo",
        cargo()
            .args([
                "run", "--locked", "--quiet", "-p", "weft", "--bin", "weft", "--", "demo",
            ])
            .args(extra),
    )
}

/// The workspace root (xtask lives one level below it). `cargo run` says
/// where xtask's manifest is when it starts it; the path compiled in is only
/// the fallback, as it names the checkout the binary was built from, which
/// need not be this one when checkouts share a target directory.
#[expect(
    clippy::disallowed_methods,
    reason = "xtask is a harness binary: cargo tells it where its manifest is"
)]
fn workspace_root() -> std::path::PathBuf {
    let manifest = std::env::var_os("CARGO_MANIFEST_DIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")));
    manifest
        .parent()
        .map(std::path::Path::to_path_buf)
        .unwrap_or_default()
}

/// Regenerates charts/weft/crds/ from the Rust types (control/src/crd.rs).
fn crds() -> Result<()> {
    let dir = workspace_root().join("charts/weft/crds");
    std::fs::create_dir_all(&dir)?;
    step(
        "weft-crdgen (charts/weft/crds from control/src/crd.rs)",
        cargo()
            .args([
                "run",
                "--locked",
                "--quiet",
                "-p",
                "weft-control",
                "--bin",
                "weft-crdgen",
                "--",
            ])
            .arg(&dir),
    )
}
