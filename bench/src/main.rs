//! `weft-bench`: `load` runs the load generator (inside a lab pod, through
//! `weft lab exec`) and prints what it measured as JSON; `run` runs the
//! scenarios on the lab and writes the report (see bench/README.md).

use std::io::Write as _;
use std::path::PathBuf;

use anyhow::Context;
use weft_bench::{load, report, run};

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::Result;
use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(name = "weft-bench", about = "weft's benchmark harness")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Generate load against one server and print the measurements as JSON.
    Load(LoadArgs),
    /// Run every scenario on the bench lab and write the report.
    Run(RunArgs),
}

#[derive(Debug, clap::Args)]
struct RunArgs {
    /// The `weft` binary (a release build).
    #[arg(long)]
    weft: PathBuf,
    /// The bench lab topology.
    #[arg(long, default_value = "bench/lab.yaml")]
    topology: PathBuf,
    /// Where the report goes (report.json, report.md, latency.svg).
    #[arg(long, default_value = "target/bench")]
    out: PathBuf,
    /// Short runs (one profile at 1,000 req/s, 3 × 5 s per row, and a
    /// short throughput run).
    #[arg(long)]
    quick: bool,
    /// Every row once for a second: checks that the harness works end to
    /// end (the test suite runs it); not a measurement.
    #[arg(long, conflicts_with = "quick")]
    smoke: bool,
    /// Only the rows whose name contains this text (repeatable; the
    /// no-mesh rows always run, as the baselines).
    #[arg(long)]
    only: Vec<String>,
    /// Skip the generator cross-check against h2load.
    #[arg(long)]
    no_cross_check: bool,
}

#[derive(Debug, clap::Args)]
struct LoadArgs {
    /// The server, `ip:port`.
    target: SocketAddr,
    /// What to send.
    #[arg(long, value_enum, default_value = "http")]
    protocol: load::Protocol,
    /// Requests a second in all (open loop); absent: as fast as it goes.
    #[arg(long)]
    rate: Option<f64>,
    /// Seconds to measure.
    #[arg(long, default_value_t = 10.0)]
    duration: f64,
    /// Seconds to run before measuring.
    #[arg(long, default_value_t = 1.0)]
    warmup: f64,
    /// Connections (one thread each).
    #[arg(long, default_value_t = 4)]
    connections: usize,
    /// Request and response body size in bytes.
    #[arg(long, default_value_t = 1024)]
    payload: usize,
}

fn seconds(what: &str, s: f64) -> Result<Duration> {
    Duration::try_from_secs_f64(s)
        .map_err(|_| anyhow::anyhow!("--{what}: `{s}` is not a number of seconds"))
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Load(a) => {
            let outcome = load::run(&load::Load {
                target: a.target,
                protocol: a.protocol,
                rate: a.rate,
                duration: seconds("duration", a.duration)?,
                warmup: seconds("warmup", a.warmup)?,
                connections: a.connections,
                payload: a.payload,
            })?;
            println!("{}", serde_json::to_string(&outcome)?);
            Ok(())
        }
        Command::Run(a) => run_report(&a),
    }
}

/// Draws a progress bar on stderr.
fn progress(what: &str, done: usize, total: usize) {
    const WIDTH: usize = 30;
    let filled = (done * WIDTH).checked_div(total).unwrap_or(WIDTH);
    let mut err = std::io::stderr();
    let _ = write!(
        err,
        "\r\x1b[2K[{}{}] {done}/{total} {what}",
        "#".repeat(filled),
        ".".repeat(WIDTH - filled)
    );
    if done == total && what == "done" {
        let _ = writeln!(err);
    }
    let _ = err.flush();
}

fn run_report(a: &RunArgs) -> Result<()> {
    std::fs::create_dir_all(&a.out).with_context(|| format!("creating {}", a.out.display()))?;
    let out = std::fs::canonicalize(&a.out)?;
    let opts = run::Options {
        weft: std::fs::canonicalize(&a.weft)
            .with_context(|| format!("the weft binary {}", a.weft.display()))?,
        bench: std::env::current_exe().context("this binary's path")?,
        topology: a.topology.clone(),
        out: out.clone(),
        quick: a.quick,
        smoke: a.smoke,
        only: a.only.clone(),
        skip_cross_check: a.no_cross_check,
    };
    let started = std::time::Instant::now();
    let (measured, check) = run::run_all(&opts, &mut progress)?;
    let rows = report::rows(&measured);
    let profiles = opts.profiles();
    let machine = machine();
    let mut md = String::new();
    md.push_str(&format!(
        "# weft bench ({})\n\n{machine}\n\nEach row: medians of its runs (min–max of the p50 shown); added latency is over no mesh at the same placement; proxy CPU and memory are of every proxy on the path (two sidecars, or one or two node proxies).\n\n",
        if a.smoke {
            "smoke: a check of the harness, not a measurement"
        } else if a.quick {
            "quick"
        } else {
            "full"
        }
    ));
    let mut versus = Vec::new();
    let mut targets = Vec::new();
    for p in &profiles {
        md.push_str(&format!(
            "## {} ({}, {} connections, {} B, {})\n\n",
            p.name,
            match p.protocol {
                load::Protocol::Http => "HTTP/1.1",
                load::Protocol::Tcp => "TCP ping-pong",
                load::Protocol::Grpc => "gRPC unary over h2c",
            },
            p.connections,
            p.payload,
            match p.rate {
                Some(r) => format!("{r:.0} req/s constant rate, {} × {} s", p.runs, p.seconds),
                None => format!("as fast as it goes, {} × {} s", p.runs, p.seconds),
            }
        ));
        md.push_str(&report::markdown(&rows, &p.name));
        md.push('\n');
        if p.rate.is_some() {
            let pairs = report::versus(&rows, &p.name);
            if !pairs.is_empty() {
                md.push_str("weft against the Envoy sidecars doing the same job (added over no mesh, medians of the runs):\n\n");
                md.push_str(&report::versus_table(&pairs));
                md.push('\n');
            }
            versus.extend(pairs);
            let met = report::targets(&rows, &p.name);
            md.push_str(&report::targets_text(&met));
            targets.extend(met);
        }
    }
    if let Some(check) = &check {
        md.push_str(&report::cross_check(check));
    }
    md.push_str(&format!("\n{}\n", report::ANCHORS));
    md.push_str(&format!(
        "\nTook {:.0} s.\n",
        started.elapsed().as_secs_f64()
    ));
    println!("\n{md}");
    let first = profiles.first().map(|p| p.name.clone()).unwrap_or_default();
    std::fs::write(out.join("report.md"), &md)?;
    std::fs::write(out.join("latency.svg"), report::svg(&rows, &first))?;
    let json = serde_json::json!({
        "machine": machine,
        "quick": a.quick,
        "smoke": a.smoke,
        "scenarios": rows.iter().filter(|r| r.profile == first).collect::<Vec<_>>(),
        "profiles": profiles,
        "all": rows,
        "cross_check": check,
        "versus": versus,
        "targets": targets,
        "anchors": report::ANCHORS,
    });
    std::fs::write(out.join("report.json"), serde_json::to_vec_pretty(&json)?)?;
    eprintln!(
        "report: {} (and report.md, latency.svg)",
        out.join("report.json").display()
    );
    Ok(())
}

/// The machine and kernel, for the record.
fn machine() -> String {
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find_map(|l| l.strip_prefix("model name"))
        .map(|m| m.trim_start_matches([' ', '\t', ':']).to_owned())
        .unwrap_or_else(|| "unknown CPU".into());
    let cores = cpuinfo
        .lines()
        .filter(|l| l.starts_with("processor"))
        .count();
    format!("Machine: {cores} × {model}; kernel {}", kernel.trim())
}
