//! `cargo xtask latency`: a quick same-node and cross-node latency and
//! throughput report on the latency lab (examples/lab/latency.yaml), with a
//! release build. Cross-node rows run twice, in the same invocation: in the
//! lab as it is (HBONE mTLS between the proxies) and in a copy with mTLS
//! off (plain TCP between the proxies), to show what mTLS costs. The full
//! benchmark harness (bench/) grows from this.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail};

/// The lab as configured (mTLS on).
const LAB: &str = "latency";
/// The same lab with `identity: {mtls: false}`.
const PLAIN_LAB: &str = "latplain";
const RUNS: usize = 3;

struct Row {
    name: &'static str,
    lab: &'static str,
    client: &'static str,
    echo: &'static str,
}

const ROWS: [Row; 6] = [
    Row {
        name: "direct, same node",
        lab: LAB,
        client: "direct/client",
        echo: "direct/echo",
    },
    Row {
        name: "captured, same node (TCP both legs)",
        lab: LAB,
        client: "mesh/client",
        echo: "mesh/echo",
    },
    Row {
        name: "captured, same node, fast path",
        lab: LAB,
        client: "fast/client",
        echo: "fast/echo",
    },
    Row {
        name: "direct, cross node",
        lab: LAB,
        client: "direct/client",
        echo: "direct/echo-remote",
    },
    Row {
        name: "captured, cross node, plain TCP between proxies",
        lab: PLAIN_LAB,
        client: "mesh/client",
        echo: "mesh/echo-remote",
    },
    Row {
        name: "captured, cross node, HBONE (TLS 1.3 mTLS)",
        lab: LAB,
        client: "mesh/client",
        echo: "mesh/echo-remote",
    },
];

pub(crate) fn run(root: &Path) -> Result<()> {
    crate::step(
        "cargo build --release -p weft",
        crate::cargo()
            .args(["build", "--release", "--locked", "-p", "weft"])
            .current_dir(root),
    )?;
    let weft = target_dir(root)?.join("release/weft");
    let topology = root.join("examples/lab/latency.yaml");
    let plain = target_dir(root)?.join("bench/latency-plain.yaml");
    let text = std::fs::read_to_string(&topology)
        .with_context(|| format!("reading {}", topology.display()))?;
    if let Some(dir) = plain.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    std::fs::write(&plain, format!("{text}\nidentity: {{mtls: false}}\n"))
        .with_context(|| format!("writing {}", plain.display()))?;
    let mut statuses = Vec::new();
    let mut result = Ok(());
    for (lab, file) in [(LAB, &topology), (PLAIN_LAB, &plain)] {
        let _ = Command::new(&weft)
            .args(["lab", "down", "--name", lab])
            .output();
        let up = Command::new(&weft)
            .args(["lab", "up", "--name", lab, "-f"])
            .arg(file)
            .output()
            .context("running weft lab up")?;
        if !up.status.success() {
            result = Err(anyhow::anyhow!(
                "weft lab up --name {lab} failed: {}",
                String::from_utf8_lossy(&up.stderr)
            ));
            break;
        }
        statuses.push((lab, String::from_utf8_lossy(&up.stdout).into_owned()));
    }
    if result.is_ok() {
        result = measure(&weft, &statuses);
    }
    for (lab, _) in &statuses {
        if let Ok(d) = Command::new(&weft)
            .args(["lab", "down", "--name", lab])
            .output()
        {
            println!("{}", String::from_utf8_lossy(&d.stdout).trim());
        }
    }
    result
}

pub(crate) fn target_dir(root: &Path) -> Result<PathBuf> {
    let out = crate::cargo()
        .args(["metadata", "--format-version", "1", "--no-deps"])
        .current_dir(root)
        .output()
        .context("cargo metadata")?;
    let meta: serde_json::Value =
        serde_json::from_slice(&out.stdout).context("cargo metadata JSON")?;
    meta["target_directory"]
        .as_str()
        .map(PathBuf::from)
        .context("no target_directory in cargo metadata")
}

/// The IP of `ns/pod` from `weft lab status` output.
fn pod_ip(status: &str, key: &str) -> Result<String> {
    status
        .lines()
        .find(|l| l.split_whitespace().next() == Some(key))
        .and_then(|l| l.split_whitespace().nth(2))
        .map(str::to_owned)
        .with_context(|| format!("no pod {key} in the lab status"))
}

fn exec_json(weft: &Path, lab: &str, pod: &str, args: &[&str]) -> Result<serde_json::Value> {
    let out = Command::new(weft)
        .args([
            "lab", "exec", "--name", lab, pod, "--", "weft", "lab", "app",
        ])
        .args(args)
        .output()
        .context("weft lab exec")?;
    if !out.status.success() {
        bail!("{pod}: {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    }
    serde_json::from_slice(&out.stdout).with_context(|| format!("{pod}: not JSON"))
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn measure(weft: &Path, statuses: &[(&str, String)]) -> Result<()> {
    let status_of = |lab: &str| {
        statuses
            .iter()
            .find(|(l, _)| *l == lab)
            .map(|(_, s)| s.as_str())
            .with_context(|| format!("lab {lab} is not up"))
    };
    println!("\n| path | p50 µs | p99 µs | p50 over direct | single stream Gbit/s |");
    println!("|---|---|---|---|---|");
    let mut direct_same = None;
    let mut direct_cross = None;
    let mut report = Vec::new();
    for row in &ROWS {
        let ip = pod_ip(status_of(row.lab)?, row.echo)?;
        let (mut p50, mut p99, mut gbit) = (Vec::new(), Vec::new(), Vec::new());
        for _ in 0..RUNS {
            let pp = exec_json(
                weft,
                row.lab,
                row.client,
                &[
                    "pingpong",
                    &format!("{ip}:7000"),
                    "--count",
                    "20000",
                    "--warmup",
                    "2000",
                ],
            )?;
            p50.push(pp["p50_us"].as_f64().context("p50_us")?);
            p99.push(pp["p99_us"].as_f64().context("p99_us")?);
            let st = exec_json(
                weft,
                row.lab,
                row.client,
                &["stream", &format!("{ip}:7002"), "--bytes", "2147483648"],
            )?;
            gbit.push(st["gbit_per_s"].as_f64().context("gbit_per_s")?);
        }
        let (p50, p99, gbit) = (median(p50), median(p99), median(gbit));
        let base = if row.name.contains("cross") {
            &mut direct_cross
        } else {
            &mut direct_same
        };
        let baseline = *base.get_or_insert((p50, gbit));
        println!(
            "| {} | {p50:.1} | {p99:.1} | {:+.1} µs | {gbit:.2} ({:.2}x direct) |",
            row.name,
            p50 - baseline.0,
            gbit / baseline.1
        );
        report.push(
            serde_json::json!({"name": row.name, "p50_us": p50, "p99_us": p99, "gbit_per_s": gbit}),
        );
    }
    let rss: Vec<String> = status_of(LAB)?
        .lines()
        .filter(|l| l.contains("running, pid") && l.starts_with("node-"))
        .filter_map(|l| {
            let pid = l.split("pid ").nth(1)?.split_whitespace().next()?;
            let text = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
            let kb = text
                .lines()
                .find(|l| l.starts_with("VmRSS:"))?
                .split_whitespace()
                .nth(1)?
                .to_owned();
            Some(format!("{} {kb} kB", l.split_whitespace().next()?))
        })
        .collect();
    println!("\nproxy RSS after the runs: {}", rss.join(", "));
    println!("(medians of {RUNS} runs; 64-byte ping-pong, 20,000 round trips; 2 GiB stream)");
    let out = Path::new("target/bench");
    std::fs::create_dir_all(out).ok();
    std::fs::write(
        out.join("latency.json"),
        serde_json::to_vec_pretty(&report)?,
    )?;
    Ok(())
}
