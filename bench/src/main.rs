//! `weft-bench`: `load` runs the load generator (inside a lab pod, through
//! `weft lab exec`) and prints what it measured as JSON; `run` runs the
//! scenarios on the lab and writes the report (see bench/README.md).

use weft_bench::load;

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
    }
}
