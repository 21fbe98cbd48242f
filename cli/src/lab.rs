//! `weft lab …`: the lab commands.

use std::io::Write;
use std::net::{Ipv4Addr, SocketAddr};
use std::os::unix::process::ExitStatusExt;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, Result};
use bytes::Bytes;
use clap::{Args, Subcommand};
use weft_lab::app::PodIdentity;
use weft_lab::app::client::{Answer, ClientConfig, fetch, fetch_all};
use weft_lab::app::echo::{EchoConfig, serve};
use weft_lab::{DEFAULT_TOPOLOGY, DEFAULT_TOPOLOGY_NAME, LabName, Labs, Topology};

/// The lab used when `--name` is not given.
pub(crate) const DEFAULT_LAB: &str = "lab";

#[derive(Debug, Args)]
pub(crate) struct LabArgs {
    #[command(subcommand)]
    command: LabCommand,
}

impl LabArgs {
    /// Whether this runs a long-lived server (a pod's app).
    pub(crate) fn is_server(&self) -> bool {
        matches!(self.command, LabCommand::App { .. })
    }
}

/// Which lab; pods see their own lab's name in `WEFT_LAB`.
#[derive(Debug, Args)]
struct NameArg {
    /// The lab's name (1 to 12 of a-z, 0-9).
    #[arg(long, env = "WEFT_LAB", default_value = DEFAULT_LAB)]
    name: LabName,
}

#[derive(Debug, Subcommand)]
enum LabCommand {
    /// Create a lab from a topology and start its pods.
    Up {
        #[command(flatten)]
        name: NameArg,
        /// Topology YAML; the built-in examples/lab/default.yaml if absent.
        #[arg(short = 'f', long = "file")]
        file: Option<PathBuf>,
        /// Seconds to wait for pods to listen on their services' ports.
        #[arg(long, default_value_t = 15.0)]
        ready_timeout: f64,
        /// Send the proxies' trace spans to this OTLP/gRPC endpoint
        /// (reachable from the nodes) instead of the lab's own receiver.
        #[arg(long, conflicts_with = "no_otlp")]
        otlp_endpoint: Option<String>,
        /// Run no OTLP receiver; the proxies trace nothing unless a
        /// Telemetry object names a receiver.
        #[arg(long)]
        no_otlp: bool,
        /// Have the lab's OTLP receiver wait this long before it answers
        /// each export (a slow collector).
        #[arg(long, default_value_t = 0)]
        otlp_receiver_delay_ms: u64,
    },
    /// Print the most recent traces the lab's OTLP receiver stored, as
    /// waterfalls (service, hop, offset, duration, status).
    Traces {
        #[command(flatten)]
        name: NameArg,
        /// How many traces.
        #[arg(long, default_value_t = 5)]
        limit: usize,
        /// Print the stored spans as JSON lines instead.
        #[arg(long)]
        json: bool,
    },
    /// Remove a lab: its processes, namespaces, veths, cgroups and state.
    Down {
        #[command(flatten)]
        name: NameArg,
        /// Remove every lab on this host, and leftovers of crashed ones.
        #[arg(long)]
        all: bool,
    },
    /// Print nodes, pods with their IPs, and services with their cluster IPs.
    Status {
        #[command(flatten)]
        name: NameArg,
    },
    /// Run a command inside a pod's netns and cgroup (`weft` means this binary).
    Exec {
        #[command(flatten)]
        name: NameArg,
        /// The target is a node (its netns), not a pod.
        #[arg(long)]
        node: bool,
        /// `namespace/pod`, a pod name that is unique in the lab, or with
        /// --node a node name.
        pod: String,
        /// The command and its arguments.
        #[arg(last = true, required = true)]
        command: Vec<String>,
    },
    /// Print the log of a pod's command.
    Logs {
        #[command(flatten)]
        name: NameArg,
        /// `namespace/pod`, or a pod name that is unique in the lab.
        pod: String,
    },
    /// Set (`key=value`) or remove (`key-`) a label of a namespace or a pod;
    /// proxies apply it without a restart (`weft.io/mesh=enabled`).
    Label {
        #[command(flatten)]
        name: NameArg,
        /// `namespace` or `namespace/pod`.
        target: String,
        /// `key=value`, or `key-` to remove the label.
        label: String,
    },
    /// Add a pod to a running lab, or delete one; proxies follow.
    Pod {
        #[command(flatten)]
        name: NameArg,
        #[command(subcommand)]
        action: PodAction,
    },
    /// Stop, start or query a node's proxy.
    Proxy {
        #[command(flatten)]
        name: NameArg,
        #[command(subcommand)]
        action: ProxyAction,
    },
    /// The built-in test workload.
    App {
        #[command(subcommand)]
        app: AppCommand,
    },
}

#[derive(Debug, Subcommand)]
enum PodAction {
    /// Add the pod described in a YAML file (as one item under `pods:`).
    Add {
        /// The pod's YAML.
        #[arg(short = 'f', long = "file")]
        file: PathBuf,
    },
    /// Delete a pod: its processes, netns, veth and cgroup.
    Delete {
        /// `namespace/pod`.
        pod: String,
    },
}

#[derive(Debug, Subcommand)]
enum ProxyAction {
    /// Stop the proxy (capture stays pinned; meshed pods' new connections
    /// fail fast, or pass unproxied with failMode: open).
    Stop {
        /// The node.
        node: String,
    },
    /// Start a stopped proxy; it re-opens the pinned capture.
    Start {
        /// The node.
        node: String,
    },
    /// GET a path on the proxy's admin port (/ready, /metrics, /config_dump).
    Admin {
        /// The node.
        node: String,
        /// The path.
        #[arg(default_value = "/metrics")]
        path: String,
    },
}

#[derive(Debug, Subcommand)]
enum AppCommand {
    /// TCP echo, TCP whoami, and HTTP/1.1 + h2c server naming its pod.
    Echo {
        /// Raw TCP echo port (0 to disable).
        #[arg(long, default_value_t = 7000)]
        tcp_port: u16,
        /// TCP port that writes who served and closes (0 to disable).
        #[arg(long, default_value_t = 7001)]
        whoami_port: u16,
        /// HTTP/1.1 and h2c port (0 to disable).
        #[arg(long, default_value_t = 8080)]
        http_port: u16,
        /// TCP sink port: counts bytes until half-close (0 to disable).
        #[arg(long, default_value_t = 7002)]
        sink_port: u16,
        /// The gRPC echo's port (h2c; the Gateway API conformance GrpcEcho
        /// service; 0 to disable).
        #[arg(long, default_value_t = 7070)]
        grpc_port: u16,
        /// The pod's name.
        #[arg(long, env = "WEFT_POD_NAME", default_value = "unknown")]
        pod: String,
        /// The pod's namespace.
        #[arg(long, env = "WEFT_POD_NAMESPACE", default_value = "default")]
        namespace: String,
        /// The node's name.
        #[arg(long, env = "WEFT_NODE_NAME", default_value = "unknown")]
        node: String,
    },
    /// Blocking-I/O exchanges with a TCP echo server (write, shutdown,
    /// blocking reads); prints a summary, fails if any exchange failed.
    Blocking {
        /// The echo server, host:port.
        addr: SocketAddr,
        /// Bytes per exchange.
        #[arg(long, default_value_t = 64)]
        size: usize,
        /// Exchanges.
        #[arg(long, default_value_t = 1000)]
        runs: u32,
        /// Seconds a read may wait.
        #[arg(long, default_value_t = 10.0)]
        timeout: f64,
    },
    /// TCP ping-pong with an echo server; prints round-trip percentiles (JSON).
    Pingpong {
        /// The echo server, host:port.
        addr: SocketAddr,
        /// Message size in bytes.
        #[arg(long, default_value_t = 64)]
        size: usize,
        /// Measured round trips.
        #[arg(long, default_value_t = 10_000)]
        count: usize,
        /// Unmeasured round trips first.
        #[arg(long, default_value_t = 1000)]
        warmup: usize,
    },
    /// Single-stream throughput to an echo server's sink; prints JSON.
    Stream {
        /// The sink, host:port.
        addr: SocketAddr,
        /// Bytes to send.
        #[arg(long, default_value_t = 1 << 30)]
        bytes: u64,
    },
    /// One request; prints the response body (for tcp://, what came back).
    /// With `--json` (HTTP), one JSON object per response: `status`,
    /// `headers` (name to values) and `body` (parsed when it is JSON); with
    /// `--count`, a last line `{"summary": {"count", "pods", "statuses"}}`
    /// says how many responses each pod served and each status had
    /// (tests/README.md has the contract).
    Client {
        /// `tcp://host:port` or `http://host[:port]/path`.
        url: String,
        /// HTTP/2 with prior knowledge (h2c).
        #[arg(long)]
        http2: bool,
        /// Payload: TCP bytes, or an HTTP request body (POST unless
        /// --method says otherwise).
        #[arg(long)]
        data: Option<String>,
        /// Seconds for the whole exchange.
        #[arg(long, default_value_t = 5.0)]
        timeout: f64,
        /// The HTTP method.
        #[arg(long)]
        method: Option<String>,
        /// A request header, `Name: value` (repeatable).
        #[arg(long = "header")]
        headers: Vec<String>,
        /// The Host header (`:authority` over HTTP/2).
        #[arg(long)]
        host: Option<String>,
        /// Requests to send, one after another on one connection.
        #[arg(long, default_value_t = 1)]
        count: usize,
        /// Print every response as JSON (HTTP; any status).
        #[arg(long)]
        json: bool,
        /// Stream a request body of this many bytes of a fixed pattern
        /// (POST unless --method); with --json, `sent` gives its length and
        /// SHA-256.
        #[arg(long, conflicts_with = "data")]
        data_size: Option<u64>,
    },
    /// gRPC calls (h2c) with an empty EchoRequest: one JSON object per
    /// answer (`grpcStatus`, `grpcMessage`, `metadata`, `response`); with
    /// `--count` other than 1, a last line `{"summary": {"count", "pods",
    /// "statuses"}}`. Without --json, a non-OK status fails.
    Grpc {
        /// The server, `host:port`.
        addr: String,
        /// `package.Service/Method`, such as
        /// gateway_api_conformance.echo_basic.grpcecho.GrpcEcho/Echo.
        method: String,
        /// Request metadata, `name: value` (repeatable).
        #[arg(long = "metadata")]
        metadata: Vec<String>,
        /// The `:authority` (default: the address).
        #[arg(long)]
        authority: Option<String>,
        /// Calls, one after another on one connection.
        #[arg(long, default_value_t = 1)]
        count: usize,
        /// Seconds for all of them.
        #[arg(long, default_value_t = 5.0)]
        timeout: f64,
        /// Print every answer as JSON, whatever its status.
        #[arg(long)]
        json: bool,
    },
    /// A WebSocket conversation: the upgrade, then each message sent and
    /// its echo read back; prints one JSON object (`status`, `servedBy`,
    /// `echoed`: the messages that came back).
    Websocket {
        /// `ws://host[:port]/path`.
        url: String,
        /// A text message to send (repeatable; in order).
        #[arg(long = "message", required = true)]
        messages: Vec<String>,
        /// The Host header.
        #[arg(long)]
        host: Option<String>,
        /// Seconds for the whole conversation.
        #[arg(long, default_value_t = 5.0)]
        timeout: f64,
    },
}

/// One response as the client's JSON contract prints it.
fn answer_json(a: &Answer) -> serde_json::Value {
    let body = serde_json::from_slice::<serde_json::Value>(&a.body).unwrap_or_else(|_| {
        serde_json::Value::String(String::from_utf8_lossy(&a.body).into_owned())
    });
    let mut v = serde_json::json!({
        "status": a.status,
        "headers": a.headers,
        "body": body,
        "elapsed_ms": a.elapsed.as_secs_f64() * 1000.0,
    });
    if let Some((bytes, sha256)) = &a.sent {
        v["sent"] = serde_json::json!({"bytes": bytes, "sha256": sha256});
    }
    v
}

/// How many responses each pod served (by `x-weft-served-by`, else the
/// body's `namespace`/`pod`) and each status had.
fn summary_json(answers: &[Answer]) -> serde_json::Value {
    let mut pods = std::collections::BTreeMap::<String, u64>::new();
    let mut statuses = std::collections::BTreeMap::<String, u64>::new();
    for a in answers {
        *statuses.entry(a.status.to_string()).or_default() += 1;
        let pod = a
            .headers
            .get(weft_lab::app::SERVED_BY_HEADER)
            .and_then(|v| v.first().cloned())
            .or_else(|| {
                let body: serde_json::Value = serde_json::from_slice(&a.body).ok()?;
                Some(format!(
                    "{}/{}",
                    body["namespace"].as_str()?,
                    body["pod"].as_str()?
                ))
            });
        if let Some(pod) = pod {
            *pods.entry(pod).or_default() += 1;
        }
    }
    serde_json::json!({"summary": {"count": answers.len(), "pods": pods, "statuses": statuses}})
}

fn labs() -> Result<Labs> {
    let exe = std::env::current_exe().context("finding the weft binary")?;
    Ok(Labs::new(exe)?)
}

fn duration(secs: f64, flag: &str) -> Result<Duration> {
    Duration::try_from_secs_f64(secs)
        .with_context(|| format!("{flag}: {secs} is not a duration in seconds"))
}

pub(crate) fn run(args: LabArgs) -> Result<ExitCode> {
    match args.command {
        LabCommand::Up {
            name,
            file,
            ready_timeout,
            otlp_endpoint,
            no_otlp,
            otlp_receiver_delay_ms,
        } => {
            let (file_name, topology) = load_topology(file.as_ref())?;
            let otlp = match (otlp_endpoint, no_otlp) {
                (Some(url), _) => {
                    weft_model::Endpoint::new(&url)
                        .map_err(|e| anyhow::anyhow!("--otlp-endpoint: {e}"))?;
                    weft_lab::Otlp::Endpoint(url)
                }
                (None, true) => weft_lab::Otlp::Off,
                (None, false) => weft_lab::Otlp::Receiver {
                    delay_ms: otlp_receiver_delay_ms,
                },
            };
            let labs = labs()?
                .with_ready_timeout(duration(ready_timeout, "--ready-timeout")?)
                .with_otlp(otlp);
            let status = labs.up(&name.name, &file_name, &topology)?;
            println!("{status}");
        }
        LabCommand::Down { name, all } => {
            let labs = labs()?;
            let reports = if all {
                labs.down_all()?
            } else {
                vec![labs.down(&name.name)?]
            };
            if reports.is_empty() {
                println!("no labs on this host");
            }
            for r in reports {
                println!("{r}");
            }
        }
        LabCommand::Status { name } => println!("{}", labs()?.status(&name.name)?),
        LabCommand::Traces { name, limit, json } => {
            let spans = labs()?.spans(&name.name)?;
            if json {
                for s in &spans {
                    println!("{}", serde_json::to_string(s)?);
                }
            } else {
                print!("{}", weft_lab::waterfalls(&spans, limit));
            }
        }
        LabCommand::Exec {
            name,
            node,
            pod,
            command,
        } => {
            let labs = labs()?;
            let mut cmd = if node {
                labs.exec_on_node(&name.name, &pod, &command)?
            } else {
                labs.exec(&name.name, &pod, &command)?
            };
            let status = cmd
                .status()
                .with_context(|| format!("running {command:?} in pod {pod}"))?;
            let code = status
                .code()
                .or_else(|| status.signal().map(|s| 128 + s))
                .unwrap_or(1);
            return Ok(ExitCode::from(u8::try_from(code).unwrap_or(1)));
        }
        LabCommand::Logs { name, pod } => {
            let path = labs()?.log_path(&name.name, &pod)?;
            let text =
                std::fs::read(&path).with_context(|| format!("reading {}", path.display()))?;
            std::io::stdout().write_all(&text)?;
        }
        LabCommand::Label {
            name,
            target,
            label,
        } => {
            let (key, value) = match label.split_once('=') {
                Some((k, v)) => (k, Some(v)),
                None => match label.strip_suffix('-') {
                    Some(k) => (k, None),
                    None => anyhow::bail!("label `{label}`: write key=value, or key- to remove it"),
                },
            };
            labs()?.label(&name.name, &target, key, value)?;
            match value {
                Some(v) => println!("{target}: {key}={v}; every proxy applied it"),
                None => println!("{target}: {key} removed; every proxy applied it"),
            }
        }
        LabCommand::Pod { name, action } => {
            let labs = labs()?;
            match action {
                PodAction::Add { file } => {
                    let shown = file.display().to_string();
                    let text = std::fs::read_to_string(&file)
                        .with_context(|| format!("reading {shown}"))?;
                    let spec = weft_lab::PodSpec::parse(&shown, &text)?;
                    let key = format!("{}/{}", spec.namespace, spec.name);
                    let ip = labs.add_pod(&name.name, spec)?;
                    println!("pod {key} added at {ip}; every proxy applied the change");
                }
                PodAction::Delete { pod } => {
                    labs.delete_pod(&name.name, &pod)?;
                    println!("pod {pod} deleted; every proxy applied the change");
                }
            }
        }
        LabCommand::Proxy { name, action } => {
            let labs = labs()?;
            match action {
                ProxyAction::Stop { node } => {
                    labs.stop_proxy(&name.name, &node)?;
                    println!("proxy of node {node} stopped");
                }
                ProxyAction::Start { node } => {
                    let pid = labs.start_proxy_again(&name.name, &node)?;
                    println!("proxy of node {node} ready, pid {pid}");
                }
                ProxyAction::Admin { node, path } => {
                    let (status, body) = labs.proxy_admin(&name.name, &node, &path)?;
                    print!("{body}");
                    if status != 200 {
                        anyhow::bail!("GET {path} on node {node}: HTTP {status}");
                    }
                }
            }
        }
        LabCommand::App { app } => app_run(app)?,
    }
    Ok(ExitCode::SUCCESS)
}

pub(crate) fn load_topology(file: Option<&PathBuf>) -> Result<(String, Topology)> {
    Ok(match file {
        Some(path) => {
            let name = path.display().to_string();
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("reading topology {name}"))?;
            let topo = Topology::parse(&name, &text)?;
            (name, topo)
        }
        None => (
            DEFAULT_TOPOLOGY_NAME.to_owned(),
            Topology::parse(DEFAULT_TOPOLOGY_NAME, DEFAULT_TOPOLOGY)?,
        ),
    })
}

fn any_addr(port: u16) -> Option<SocketAddr> {
    (port != 0).then(|| SocketAddr::from((Ipv4Addr::UNSPECIFIED, port)))
}

fn app_run(app: AppCommand) -> Result<()> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    match app {
        AppCommand::Echo {
            tcp_port,
            whoami_port,
            http_port,
            sink_port,
            grpc_port,
            pod,
            namespace,
            node,
        } => {
            let config = EchoConfig {
                identity: PodIdentity {
                    namespace,
                    pod,
                    node,
                },
                tcp: any_addr(tcp_port),
                whoami: any_addr(whoami_port),
                http: any_addr(http_port),
                sink: any_addr(sink_port),
                grpc: any_addr(grpc_port),
            };
            rt.block_on(async {
                let mut term =
                    tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
                        .context("installing the SIGTERM handler")?;
                tokio::select! {
                    r = serve(config) => r.map_err(anyhow::Error::from),
                    _ = tokio::signal::ctrl_c() => Ok(()),
                    _ = term.recv() => Ok(()),
                }
            })
        }
        AppCommand::Blocking {
            addr,
            size,
            runs,
            timeout,
        } => {
            let outcomes =
                weft_lab::app::blocking::run(addr, size, runs, duration(timeout, "--timeout")?);
            let failed: Vec<_> = outcomes
                .iter()
                .filter(|o| **o != weft_lab::app::blocking::Outcome::Ok)
                .collect();
            println!(
                "{} of {runs} exchanges of {size} bytes ok",
                runs as usize - failed.len()
            );
            for f in failed.iter().take(5) {
                println!("  {f:?}");
            }
            if !failed.is_empty() {
                anyhow::bail!("{} of {runs} blocking exchanges failed", failed.len());
            }
            Ok(())
        }
        AppCommand::Pingpong {
            addr,
            size,
            count,
            warmup,
        } => {
            let result = weft_lab::app::pingpong::run(addr, size, count, warmup)
                .with_context(|| format!("ping-pong with {addr}"))?;
            println!("{}", serde_json::to_string(&result)?);
            Ok(())
        }
        AppCommand::Stream { addr, bytes } => {
            let result = weft_lab::app::stream::run(addr, bytes)
                .with_context(|| format!("streaming to {addr}"))?;
            println!("{}", serde_json::to_string(&result)?);
            Ok(())
        }
        AppCommand::Client {
            url,
            http2,
            data,
            timeout,
            method,
            headers,
            host,
            count,
            json,
            data_size,
        } => {
            let headers = headers
                .iter()
                .map(|h| {
                    h.split_once(':')
                        .map(|(n, v)| (n.trim().to_owned(), v.trim().to_owned()))
                        .filter(|(n, _)| !n.is_empty())
                        .with_context(|| format!("--header `{h}`: use `Name: value`"))
                })
                .collect::<Result<Vec<_>>>()?;
            let method = method
                .map(|m| {
                    http::Method::from_bytes(m.as_bytes())
                        .with_context(|| format!("--method `{m}` is not an HTTP method"))
                })
                .transpose()?;
            let config = ClientConfig {
                url,
                http2,
                data: data.map(Bytes::from),
                timeout: duration(timeout, "--timeout")?,
                method,
                headers,
                host,
                data_size,
            };
            let mut out = std::io::stdout().lock();
            if json || count != 1 {
                let answers = rt.block_on(fetch_all(&config, count))?;
                for a in &answers {
                    if json {
                        writeln!(out, "{}", answer_json(a))?;
                    } else {
                        out.write_all(&a.body)?;
                    }
                }
                if json && count != 1 {
                    writeln!(out, "{}", summary_json(&answers))?;
                }
            } else {
                let body = rt.block_on(fetch(&config))?;
                out.write_all(&body)?;
            }
            out.flush()?;
            Ok(())
        }
        AppCommand::Grpc {
            addr,
            method,
            metadata,
            authority,
            count,
            timeout,
            json,
        } => {
            let metadata = metadata
                .iter()
                .map(|h| {
                    h.split_once(':')
                        .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_owned()))
                        .filter(|(n, _)| !n.is_empty())
                        .with_context(|| format!("--metadata `{h}`: use `name: value`"))
                })
                .collect::<Result<Vec<_>>>()?;
            let call = weft_lab::app::grpc::GrpcCall {
                addr,
                method,
                metadata,
                authority,
                count,
                timeout: duration(timeout, "--timeout")?,
            };
            let answers = rt.block_on(weft_lab::app::grpc::call(&call))?;
            let mut out = std::io::stdout().lock();
            for a in &answers {
                writeln!(out, "{a}")?;
            }
            if count != 1 {
                writeln!(out, "{}", weft_lab::app::grpc::summary(&answers))?;
            }
            out.flush()?;
            if !json && let Some(bad) = answers.iter().find(|a| a["grpcStatus"] != 0) {
                anyhow::bail!("gRPC status {}: {}", bad["grpcStatus"], bad["grpcMessage"]);
            }
            Ok(())
        }
        AppCommand::Websocket {
            url,
            messages,
            host,
            timeout,
        } => {
            let talk = weft_lab::app::client::websocket(&url, host.as_deref(), &messages);
            let deadline = duration(timeout, "--timeout")?;
            let talked = rt
                .block_on(async { tokio::time::timeout(deadline, talk).await })
                .map_err(|_| anyhow::anyhow!("{url}: the conversation took over {timeout} s"))??;
            println!("{talked}");
            Ok(())
        }
    }
}
