//! `cargo xtask latency`: a quick same-node and cross-node latency and
//! throughput report on the latency lab (examples/lab/latency.yaml), with a
//! release build. The full benchmark harness (bench/) grows from this.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail};

const LAB: &str = "latency";
const RUNS: usize = 3;

struct Row {
    name: &'static str,
    client: &'static str,
    echo: &'static str,
}

const ROWS: [Row; 5] = [
    Row {
        name: "direct, same node",
        client: "direct/client",
        echo: "direct/echo",
    },
    Row {
        name: "captured, same node (TCP both legs)",
        client: "mesh/client",
        echo: "mesh/echo",
    },
    Row {
        name: "captured, same node, fast path",
        client: "fast/client",
        echo: "fast/echo",
    },
    Row {
        name: "direct, cross node",
        client: "direct/client",
        echo: "direct/echo-remote",
    },
    Row {
        name: "captured, cross node (two proxies, plain TCP)",
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
    let _ = Command::new(&weft)
        .args(["lab", "down", "--name", LAB])
        .output();
    let up = Command::new(&weft)
        .args(["lab", "up", "--name", LAB, "-f"])
        .arg(&topology)
        .output()
        .context("running weft lab up")?;
    if !up.status.success() {
        bail!(
            "weft lab up failed: {}",
            String::from_utf8_lossy(&up.stderr)
        );
    }
    let result = measure(&weft, &String::from_utf8_lossy(&up.stdout));
    let down = Command::new(&weft)
        .args(["lab", "down", "--name", LAB])
        .output();
    if let Ok(d) = down {
        println!("{}", String::from_utf8_lossy(&d.stdout).trim());
    }
    result
}

fn target_dir(root: &Path) -> Result<PathBuf> {
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

fn exec_json(weft: &Path, pod: &str, args: &[&str]) -> Result<serde_json::Value> {
    let out = Command::new(weft)
        .args([
            "lab", "exec", "--name", LAB, pod, "--", "weft", "lab", "app",
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

fn measure(weft: &Path, status: &str) -> Result<()> {
    println!("\n| path | p50 µs | p99 µs | p50 over direct | single stream Gbit/s |");
    println!("|---|---|---|---|---|");
    let mut direct_same = None;
    let mut direct_cross = None;
    let mut report = Vec::new();
    for row in &ROWS {
        let ip = pod_ip(status, row.echo)?;
        let (mut p50, mut p99, mut gbit) = (Vec::new(), Vec::new(), Vec::new());
        for _ in 0..RUNS {
            let pp = exec_json(
                weft,
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
    let rss: Vec<String> = status
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
