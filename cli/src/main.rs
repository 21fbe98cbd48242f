//! `weft`: the one user CLI. Parses arguments, sets up logging, runs the
//! command, and maps its error to an exit code; the work lives in libraries.

mod control;
mod demo;
mod lab;
mod proxy;

use std::io::IsTerminal;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// weft: a sidecarless service mesh. This build has the local lab.
#[derive(Debug, Parser)]
#[command(name = "weft", version, about, propagate_version = true)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// The local lab: network namespaces as nodes and pods.
    Lab(lab::LabArgs),
    /// Bring up a lab, send traffic between its pods, show what happened,
    /// take it down.
    Demo(demo::DemoArgs),
    /// Run the node proxy (one per node, in the node's network namespace).
    Proxy(proxy::ProxyArgs),
    /// Run the control plane in file mode (a directory of Kubernetes YAML).
    Control(control::ControlArgs),
    /// Validate and apply Kubernetes YAML to a control plane, all or nothing.
    Apply(control::ApplyArgs),
    /// Remove the objects Kubernetes YAML names from a control plane, all or
    /// nothing.
    Delete(control::DeleteArgs),
    /// What the control plane knows.
    Config {
        #[command(subcommand)]
        what: ConfigCommand,
    },
}

#[derive(Debug, Subcommand)]
enum ConfigCommand {
    /// Every node proxy: connected, the version it acknowledged, its last refusal.
    Nodes(control::TargetArgs),
    /// What a node proxy holds (its /config_dump), in a lab.
    Dump {
        /// The lab.
        #[arg(long, env = "WEFT_LAB", default_value = lab::DEFAULT_LAB)]
        lab: weft_lab::LabName,
        /// The node; every node when absent.
        #[arg(long)]
        node: Option<String>,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // Servers must survive a peer that closes first (a write then fails
    // with EPIPE, which they handle); command-line tools end quietly.
    let server = match &cli.command {
        Command::Proxy(_) | Command::Control(_) => true,
        Command::Lab(args) => args.is_server(),
        _ => false,
    };
    if !server {
        restore_sigpipe();
    }
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();
    if matches!(
        cli.command,
        Command::Proxy(_) | Command::Lab(_) | Command::Control(_)
    ) {
        raise_fd_limit();
    }
    let result = match cli.command {
        Command::Lab(args) => lab::run(args),
        Command::Demo(args) => demo::run(&args).map(|()| ExitCode::SUCCESS),
        Command::Proxy(args) => proxy::run(&args).map(|()| ExitCode::SUCCESS),
        Command::Control(args) => control::run_control(&args).map(|()| ExitCode::SUCCESS),
        Command::Apply(args) => control::apply(&args).map(|()| ExitCode::SUCCESS),
        Command::Delete(args) => control::delete(&args).map(|()| ExitCode::SUCCESS),
        Command::Config {
            what: ConfigCommand::Nodes(target),
        } => control::nodes(&target).map(|()| ExitCode::SUCCESS),
        Command::Config {
            what: ConfigCommand::Dump { lab, node },
        } => control::dump(&lab, node.as_deref()).map(|()| ExitCode::SUCCESS),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Raises the soft limit on open files to the hard limit: a proxy holds two
/// descriptors per relayed connection, and 1,024 is a common default.
fn raise_fd_limit() {
    #[expect(
        unsafe_code,
        reason = "getrlimit/setrlimit have no safe wrapper in std"
    )]
    // SAFETY: both calls get a valid pointer to an initialised rlimit.
    unsafe {
        let mut lim = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) == 0 && lim.rlim_cur < lim.rlim_max {
            lim.rlim_cur = lim.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
        }
    }
}

/// A command-line tool ends quietly when its reader goes away (`weft lab
/// status | head`); Rust ignores SIGPIPE by default and would panic instead.
fn restore_sigpipe() {
    #[expect(unsafe_code, reason = "signal(2) has no safe wrapper in std")]
    // SAFETY: restoring the default disposition of one signal at start,
    // before any thread exists.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
}
