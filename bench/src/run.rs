//! The scenarios: the same workload reached with no mesh, through Envoy
//! sidecars (plain and mTLS), and through weft (same node, fast path, cross
//! node plain and HBONE), each measured by the load generator running in
//! the client pod, with the CPU time and peak memory of every proxy on the
//! path.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use serde::Serialize;
use weft_lab::{LabName, Labs, PodPhase, Topology};

use crate::envoy;
use crate::load::{Outcome, Protocol};

/// The lab with weft's mTLS on, the one with it off, and the one whose
/// proxies are fed by iptables TPROXY instead of eBPF.
const LAB: &str = "bench";
const PLAIN_LAB: &str = "benchplain";
const TPROXY_LAB: &str = "benchtp";
/// The bench lab again, its proxies tracing every request to the lab's
/// OTLP receiver.
const TRACED_LAB: &str = "benchtr";
/// The bench lab again, its proxies tracing every request to an endpoint
/// that refuses (no receiver listens).
const DEAD_LAB: &str = "benchdead";
/// Where the dead lab's proxies send spans: the underlay's address, where
/// nothing listens on the OTLP port.
const DEAD_ENDPOINT: &str = "http://198.18.0.250:4317";
/// The Telemetry object of the traced labs: every new trace sampled.
const TRACE_ALL: &str = "apiVersion: weft.io/v1alpha1\nkind: Telemetry\n\
    metadata: {name: bench, namespace: mesh}\nspec:\n  tracing: {samplingPercent: 100}\n";

/// How the client reaches the server.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Mesh {
    /// Pod to pod.
    Direct,
    /// Envoy sidecars as TCP proxies.
    Sidecar,
    /// Envoy sidecars with mTLS between them.
    SidecarMtls,
    /// weft's node proxies.
    Weft,
    /// weft's node proxies fed by iptables TPROXY rules instead of eBPF.
    WeftTproxy,
    /// Envoy sidecars routing HTTP (http_connection_manager with a header
    /// match and a weighted split), plain between them.
    SidecarHttp,
    /// The same with mTLS between the sidecars.
    SidecarHttpMtls,
    /// weft's node proxies routing HTTP by an HTTPRoute (a header match and
    /// a weighted split) on the service the client calls.
    WeftL7,
    /// The same, tracing every request (100% sampled) to a live OTLP
    /// receiver.
    WeftL7Traced,
    /// The same, tracing every request to an endpoint that refuses.
    WeftL7TracedDead,
}

impl Mesh {
    /// Whether the row routes HTTP (it runs the HTTP profiles only).
    pub fn l7(self) -> bool {
        matches!(
            self,
            Mesh::SidecarHttp
                | Mesh::SidecarHttpMtls
                | Mesh::WeftL7
                | Mesh::WeftL7Traced
                | Mesh::WeftL7TracedDead
        )
    }

    /// Whether the row traces (it runs the HTTP 1,000 req/s profile only,
    /// beside the same row without tracing).
    pub fn traced(self) -> bool {
        matches!(self, Mesh::WeftL7Traced | Mesh::WeftL7TracedDead)
    }

    /// Whether Envoy sidecars carry the row.
    fn sidecars(self) -> bool {
        matches!(
            self,
            Mesh::Sidecar | Mesh::SidecarMtls | Mesh::SidecarHttp | Mesh::SidecarHttpMtls
        )
    }

    /// Whether the sidecars speak mTLS between them.
    fn sidecar_mtls(self) -> bool {
        matches!(self, Mesh::SidecarMtls | Mesh::SidecarHttpMtls)
    }
}

/// One row.
#[derive(Debug, Clone, Copy)]
pub struct Scenario {
    /// Its name in the report.
    pub name: &'static str,
    lab: &'static str,
    /// `namespace/pod` of the client.
    client: &'static str,
    /// `namespace/pod` of the server.
    server: &'static str,
    /// `namespace/name` of the service the client calls instead of the
    /// server's address (the weft L7 rows: the route is on it).
    service: Option<&'static str>,
    /// How.
    pub mesh: Mesh,
    /// Whether the server is on the other node.
    pub cross_node: bool,
}

/// Every row, in report order.
pub const SCENARIOS: [Scenario; 20] = [
    Scenario {
        name: "no mesh, same node",
        lab: LAB,
        client: "direct/client",
        server: "direct/echo",
        mesh: Mesh::Direct,
        cross_node: false,
        service: None,
    },
    Scenario {
        name: "Envoy sidecars (TCP proxy), same node",
        lab: LAB,
        client: "sidecar/client",
        server: "sidecar/echo",
        mesh: Mesh::Sidecar,
        cross_node: false,
        service: None,
    },
    Scenario {
        name: "Envoy sidecars (mTLS), same node",
        lab: LAB,
        client: "sidecar-mtls/client",
        server: "sidecar-mtls/echo",
        mesh: Mesh::SidecarMtls,
        cross_node: false,
        service: None,
    },
    Scenario {
        name: "weft, same node",
        lab: LAB,
        client: "mesh/client",
        server: "mesh/echo",
        mesh: Mesh::Weft,
        cross_node: false,
        service: None,
    },
    Scenario {
        name: "weft fed by iptables TPROXY, same node",
        lab: TPROXY_LAB,
        client: "mesh/client",
        server: "mesh/echo",
        mesh: Mesh::WeftTproxy,
        cross_node: false,
        service: None,
    },
    Scenario {
        name: "weft, same node, fast path",
        lab: LAB,
        client: "fast/client",
        server: "fast/echo",
        mesh: Mesh::Weft,
        cross_node: false,
        service: None,
    },
    Scenario {
        name: "no mesh, cross node",
        lab: LAB,
        client: "direct/client",
        server: "direct/echo-remote",
        mesh: Mesh::Direct,
        cross_node: true,
        service: None,
    },
    Scenario {
        name: "Envoy sidecars (TCP proxy), cross node",
        lab: LAB,
        client: "sidecar/client",
        server: "sidecar/echo-remote",
        mesh: Mesh::Sidecar,
        cross_node: true,
        service: None,
    },
    Scenario {
        name: "Envoy sidecars (mTLS), cross node",
        lab: LAB,
        client: "sidecar-mtls/client",
        server: "sidecar-mtls/echo-remote",
        mesh: Mesh::SidecarMtls,
        cross_node: true,
        service: None,
    },
    Scenario {
        name: "weft, cross node (plain TCP between proxies)",
        lab: PLAIN_LAB,
        client: "mesh/client",
        server: "mesh/echo-remote",
        mesh: Mesh::Weft,
        cross_node: true,
        service: None,
    },
    Scenario {
        name: "weft, cross node (HBONE mTLS)",
        lab: LAB,
        client: "mesh/client",
        server: "mesh/echo-remote",
        mesh: Mesh::Weft,
        cross_node: true,
        service: None,
    },
    Scenario {
        name: "weft fed by iptables TPROXY, cross node (HBONE mTLS)",
        lab: TPROXY_LAB,
        client: "mesh/client",
        server: "mesh/echo-remote",
        mesh: Mesh::WeftTproxy,
        cross_node: true,
        service: None,
    },
    Scenario {
        name: "Envoy sidecars (HTTP routing), same node",
        lab: LAB,
        client: "sidecar-l7/client",
        server: "sidecar-l7/echo",
        mesh: Mesh::SidecarHttp,
        cross_node: false,
        service: None,
    },
    Scenario {
        name: "Envoy sidecars (HTTP routing, mTLS), same node",
        lab: LAB,
        client: "sidecar-l7-mtls/client",
        server: "sidecar-l7-mtls/echo",
        mesh: Mesh::SidecarHttpMtls,
        cross_node: false,
        service: None,
    },
    Scenario {
        name: "weft L7 (HTTPRoute), same node",
        lab: LAB,
        client: "mesh/client",
        server: "mesh/echo",
        mesh: Mesh::WeftL7,
        cross_node: false,
        service: Some("mesh/l7-local"),
    },
    Scenario {
        name: "Envoy sidecars (HTTP routing), cross node",
        lab: LAB,
        client: "sidecar-l7/client",
        server: "sidecar-l7/echo-remote",
        mesh: Mesh::SidecarHttp,
        cross_node: true,
        service: None,
    },
    Scenario {
        name: "Envoy sidecars (HTTP routing, mTLS), cross node",
        lab: LAB,
        client: "sidecar-l7-mtls/client",
        server: "sidecar-l7-mtls/echo-remote",
        mesh: Mesh::SidecarHttpMtls,
        cross_node: true,
        service: None,
    },
    Scenario {
        name: "weft L7 (HTTPRoute), cross node (HBONE mTLS)",
        lab: LAB,
        client: "mesh/client",
        server: "mesh/echo-remote",
        mesh: Mesh::WeftL7,
        cross_node: true,
        service: Some("mesh/l7-remote"),
    },
    Scenario {
        name: "weft L7 (HTTPRoute), same node, tracing 100% to a live receiver",
        lab: TRACED_LAB,
        client: "mesh/client",
        server: "mesh/echo",
        mesh: Mesh::WeftL7Traced,
        cross_node: false,
        service: Some("mesh/l7-local"),
    },
    Scenario {
        name: "weft L7 (HTTPRoute), same node, tracing 100% to a dead endpoint",
        lab: DEAD_LAB,
        client: "mesh/client",
        server: "mesh/echo",
        mesh: Mesh::WeftL7TracedDead,
        cross_node: false,
        service: Some("mesh/l7-local"),
    },
];

/// The lab echo's gRPC port.
pub const GRPC_PORT: u16 = 7070;

/// The routes of the weft L7 rows (applied to the bench lab).
const L7_ROUTES: &str = include_str!("../l7-routes.yaml");

/// A load to apply to every row.
#[derive(Debug, Clone, Serialize)]
pub struct Profile {
    /// Its name in the report.
    pub name: String,
    /// HTTP or TCP.
    pub protocol: Protocol,
    /// Port on the server.
    pub port: u16,
    /// Requests a second; `None`: as fast as it goes (throughput).
    pub rate: Option<f64>,
    /// Connections.
    pub connections: usize,
    /// Body size.
    pub payload: usize,
    /// Seconds measured per run.
    pub seconds: f64,
    /// Runs per row (the median is reported).
    pub runs: usize,
    /// Seconds of load before each run measures.
    pub warmup: f64,
}

/// The profiles of a run: the field's standard first (HTTP/1.1, 1 KiB at
/// 1,000 requests a second), which the table and the plot show.
pub fn profiles(quick: bool, smoke: bool) -> Vec<Profile> {
    let warmup = if quick || smoke { 0.5 } else { 1.0 };
    let http = |name: &str, rate: Option<f64>, seconds: f64, runs: usize| Profile {
        name: name.to_owned(),
        protocol: Protocol::Http,
        port: 8080,
        rate,
        connections: 16,
        payload: 1024,
        seconds,
        runs,
        warmup,
    };
    // gRPC unary calls (h2c, 1 KiB requests) at 1,000 a second: the L7
    // rows and the baselines run it.
    let grpc = |seconds: f64, runs: usize| Profile {
        name: "grpc-1k-rps-1kib".to_owned(),
        protocol: Protocol::Grpc,
        port: GRPC_PORT,
        rate: Some(1000.0),
        connections: 16,
        payload: 1024,
        seconds,
        runs,
        warmup,
    };
    if smoke {
        vec![
            http("http-1k-rps-1kib", Some(1000.0), 1.0, 1),
            grpc(1.0, 1),
            http("http-max-1kib", None, 0.5, 1),
        ]
    } else if quick {
        // More, shorter rounds rather than fewer, longer ones: the rounds
        // interleave the rows, and noise of the machine averages out over
        // rounds, not over seconds.
        vec![
            http("http-1k-rps-1kib", Some(1000.0), 3.0, 5),
            grpc(3.0, 3),
            http("http-max-1kib", None, 2.0, 1),
        ]
    } else {
        vec![
            http("http-1k-rps-1kib", Some(1000.0), 10.0, 5),
            http("http-5k-rps-1kib", Some(5000.0), 5.0, 3),
            grpc(5.0, 3),
            Profile {
                name: "tcp-1k-rps-64b".into(),
                protocol: Protocol::Tcp,
                port: 7000,
                rate: Some(1000.0),
                connections: 16,
                payload: 64,
                seconds: 5.0,
                runs: 3,
                warmup,
            },
            http("http-max-1kib", None, 3.0, 3),
        ]
    }
}

/// One run's numbers.
#[derive(Debug, Clone, Serialize)]
pub struct Run {
    /// What the generator measured.
    pub load: Outcome,
    /// CPU seconds of the proxies on the path during the run.
    pub proxy_cpu_s: f64,
}

/// A row's runs of one profile.
#[derive(Debug, Clone, Serialize)]
pub struct Measured {
    /// The row.
    pub scenario: &'static str,
    /// How it is reached.
    pub mesh: Mesh,
    /// Same or other node.
    pub cross_node: bool,
    /// The profile's name.
    pub profile: String,
    /// Every run.
    pub runs: Vec<Run>,
    /// Resident memory of each proxy on the path after the runs (kB).
    pub proxy_rss_kb: Vec<u64>,
    /// Peak resident memory of each proxy on the path so far (kB; a node
    /// proxy's peak may come from an earlier row it also carried).
    pub proxy_peak_rss_kb: Vec<u64>,
}

/// What the harness needs.
#[derive(Debug, Clone)]
pub struct Options {
    /// The `weft` binary.
    pub weft: PathBuf,
    /// This binary (the generator runs in the client pod).
    pub bench: PathBuf,
    /// The lab topology (bench/lab.yaml).
    pub topology: PathBuf,
    /// Where logs, configs and the report go.
    pub out: PathBuf,
    /// Short runs.
    pub quick: bool,
    /// Every row once, briefly: checks that the harness works end to end
    /// (the suite runs it); its figures are not worth reading.
    pub smoke: bool,
    /// Only the rows whose name contains one of these (the no-mesh rows,
    /// the baselines, always run); empty: every row.
    pub only: Vec<String>,
    /// Skip the generator cross-check.
    pub skip_cross_check: bool,
}

impl Options {
    /// The rows this run measures; an `--only` text that names no row is
    /// an error (a typo must not leave a run of baselines alone).
    pub fn scenarios(&self) -> Result<Vec<Scenario>> {
        if let Some(text) = self
            .only
            .iter()
            .find(|o| !SCENARIOS.iter().any(|s| s.name.contains(o.as_str())))
        {
            let names: Vec<&str> = SCENARIOS.iter().map(|s| s.name).collect();
            bail!(
                "--only `{text}` matches no row; the rows are: {}",
                names.join("; ")
            );
        }
        Ok(SCENARIOS
            .iter()
            .filter(|s| {
                self.only.is_empty()
                    || s.mesh == Mesh::Direct
                    || self.only.iter().any(|o| s.name.contains(o.as_str()))
            })
            .copied()
            .collect())
    }

    /// The load profiles of this run.
    pub fn profiles(&self) -> Vec<Profile> {
        profiles(self.quick, self.smoke)
    }
}

/// The rate of the generator cross-check, on one connection (h2load's
/// `--rps` paces each connection).
pub const CROSS_CHECK_RATE: f64 = 5000.0;

/// The generator against h2load on the no-mesh row, at the same rate and
/// connection count, twice: with idle CPUs polling, which is the check, and
/// with them halting as in every other row, for the record.
///
/// Why two: h2load's `--rps` does not send on a uniform schedule. Its timer
/// runs on libev, whose epoll wait has millisecond resolution, so requests
/// leave in bursts, back to back; ours leave evenly spaced. A request sent
/// while the CPUs are still awake from the previous one is answered sooner
/// than one that must wake them (on a VM, a halted vCPU costs a VM exit and
/// an interrupt to wake), so with halting CPUs the two p50s differ by the
/// cost of a wake-up times the share of requests that pay it, which is a
/// property of the schedule, not of the measuring. With idle CPUs polling
/// (`/dev/cpu_dma_latency` held at 0 while the check runs) no request pays
/// it, and what remains is how each tool measures.
#[derive(Debug, Clone, Serialize)]
pub struct CrossCheck {
    /// Requests a second.
    pub rate: f64,
    /// Idle CPUs polling: the check.
    pub polling: Agreement,
    /// Idle CPUs halting (the conditions of the other rows).
    pub halting: Agreement,
}

/// Both tools' p50 over the same runs.
#[derive(Debug, Clone, Serialize)]
pub struct Agreement {
    /// Our generator's p50 (median of the runs), µs.
    pub ours_p50_us: f64,
    /// h2load's p50 (median of the runs), µs.
    pub h2load_p50_us: f64,
    /// Every run: (ours, h2load).
    pub runs: Vec<(f64, f64)>,
    /// h2load's median gap between request starts, µs (a uniform schedule
    /// would give 1e6 / rate): how bursty its pacing was.
    pub h2load_median_gap_us: f64,
}

impl Agreement {
    /// |ours − h2load| / h2load.
    pub fn difference(&self) -> f64 {
        (self.ours_p50_us - self.h2load_p50_us).abs() / self.h2load_p50_us.max(1.0)
    }
}

/// Idle CPUs poll instead of halting while this lives: the kernel's PM QoS
/// request for a zero wake-up latency, which holds as long as the file
/// stays open.
struct PollingIdle(
    #[expect(dead_code, reason = "held, not read: closing it ends the request")] std::fs::File,
);

impl PollingIdle {
    const PATH: &str = "/dev/cpu_dma_latency";

    fn hold() -> Result<Self> {
        use std::io::Write as _;
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .open(Self::PATH)
            .with_context(|| format!("opening {} (the cross-check needs root)", Self::PATH))?;
        file.write_all(&0i32.to_ne_bytes())
            .with_context(|| format!("asking {} for a zero wake-up latency", Self::PATH))?;
        Ok(Self(file))
    }
}

/// Brings the labs and sidecars up, runs every profile on every row, and
/// takes everything down again (also on failure).
pub fn run_all(
    opts: &Options,
    progress: &mut dyn FnMut(&str, usize, usize),
) -> Result<(Vec<Measured>, Option<CrossCheck>)> {
    // Bad flags fail before anything is brought up.
    let scenarios = opts.scenarios()?;
    let envoy_bin = envoy::find_envoy()?;
    let labs = Labs::new(&opts.weft).context("the lab")?;
    let text = std::fs::read_to_string(&opts.topology)
        .with_context(|| format!("reading {}", opts.topology.display()))?;
    let file = opts.topology.display().to_string();
    let topology = Topology::parse(&file, &text)?;
    let plain_text = format!("{text}\nidentity: {{mtls: false}}\n");
    let plain = Topology::parse(&file, &plain_text)?;
    let mut tproxy = topology.clone();
    for node in &mut tproxy.nodes {
        node.attach = weft_lab::Attach::External;
    }
    let mut env = Env {
        labs,
        up: Vec::new(),
        sidecars: Vec::new(),
    };
    for (name, topology) in [(LAB, &topology), (PLAIN_LAB, &plain), (TPROXY_LAB, &tproxy)] {
        let name: LabName = name.parse().map_err(anyhow::Error::msg)?;
        let _ = env.labs.down(&name);
        env.labs
            .up(&name, &file, topology)
            .with_context(|| format!("weft lab up {name}"))?;
        env.up.push(name);
    }
    for (name, otlp) in [
        (TRACED_LAB, weft_lab::Otlp::Receiver { delay_ms: 0 }),
        (DEAD_LAB, weft_lab::Otlp::Endpoint(DEAD_ENDPOINT.to_owned())),
    ] {
        let name: LabName = name.parse().map_err(anyhow::Error::msg)?;
        let _ = env.labs.down(&name);
        env.labs
            .clone()
            .with_otlp(otlp)
            .up(&name, &file, &topology)
            .with_context(|| format!("weft lab up {name}"))?;
        env.up.push(name);
    }
    env.start_sidecars(&envoy_bin, &opts.out)?;
    env.tproxy_rules()?;
    for lab in [LAB, TRACED_LAB, DEAD_LAB] {
        env.apply_routes(opts, lab)?;
    }

    let profiles = opts.profiles();
    // The L7 rows route HTTP: they run the HTTP and gRPC profiles only;
    // gRPC runs on them and the baselines.
    let rows_of = |p: &Profile| -> Vec<Scenario> {
        scenarios
            .iter()
            .filter(|s| !s.mesh.traced() || p.name == "http-1k-rps-1kib")
            .filter(|s| match p.protocol {
                Protocol::Http => true,
                Protocol::Tcp => !s.mesh.l7(),
                Protocol::Grpc => s.mesh.l7() || s.mesh == Mesh::Direct,
            })
            .copied()
            .collect()
    };
    let total: usize = profiles.iter().map(|p| p.runs * rows_of(p).len()).sum();
    let mut done = 0;
    let mut results = Vec::new();
    for profile in &profiles {
        let scenarios = rows_of(profile);
        // In rounds: run r of every row, then run r + 1 of every row, so
        // that a slow or noisy spell of the machine spreads over all rows
        // instead of landing on the few that ran during it.
        let pids = scenarios
            .iter()
            .map(|s| env.proxy_pids(s))
            .collect::<Result<Vec<_>>>()?;
        let mut runs: Vec<Vec<Run>> = vec![Vec::new(); scenarios.len()];
        for r in 0..profile.runs {
            // Odd rounds go backwards, so that no row always follows the
            // same one.
            let mut order: Vec<usize> = (0..scenarios.len()).collect();
            if r % 2 == 1 {
                order.reverse();
            }
            for i in order {
                let scenario = &scenarios[i];
                progress(
                    &format!(
                        "{} · {} · run {}/{}",
                        profile.name,
                        scenario.name,
                        r + 1,
                        profile.runs
                    ),
                    done,
                    total,
                );
                let cpu_before = cpu_seconds(&pids[i]);
                let load = env.load(opts, scenario, profile)?;
                let proxy_cpu_s = cpu_seconds(&pids[i]) - cpu_before;
                runs[i].push(Run { load, proxy_cpu_s });
                done += 1;
            }
        }
        for ((scenario, runs), pids) in scenarios.iter().zip(runs).zip(&pids) {
            results.push(Measured {
                scenario: scenario.name,
                mesh: scenario.mesh,
                cross_node: scenario.cross_node,
                profile: profile.name.clone(),
                runs,
                proxy_rss_kb: pids.iter().map(|&p| memory_kb(p, "VmRSS:")).collect(),
                proxy_peak_rss_kb: pids.iter().map(|&p| memory_kb(p, "VmHWM:")).collect(),
            });
        }
    }
    let check = if opts.skip_cross_check {
        None
    } else {
        progress("h2load cross-check on the no-mesh row", total, total);
        Some(env.cross_check(opts)?)
    };
    progress("done", total, total);
    Ok((results, check))
}

/// The labs and sidecars of a run, removed on drop.
struct Env {
    labs: Labs,
    up: Vec<LabName>,
    sidecars: Vec<(&'static str, Child)>,
}

impl Drop for Env {
    fn drop(&mut self) {
        for (_, child) in &mut self.sidecars {
            let _ = child.kill();
            let _ = child.wait();
        }
        for name in &self.up {
            let _ = self.labs.down(name);
        }
    }
}

fn lab_name(name: &str) -> Result<LabName> {
    name.parse().map_err(anyhow::Error::msg)
}

impl Env {
    /// An Envoy in every pod of the sidecar namespaces, with the iptables
    /// rules that feed it.
    fn start_sidecars(&mut self, envoy_bin: &Path, out: &Path) -> Result<()> {
        let lab = lab_name(LAB)?;
        let status = self.labs.status(&lab)?;
        let ca = envoy::SidecarCa::new()?;
        let dir = out.join("envoy");
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        let pods: Vec<(&'static str, Mesh)> = SCENARIOS
            .iter()
            .filter(|s| s.mesh.sidecars())
            .flat_map(|s| [(s.client, s.mesh), (s.server, s.mesh)])
            .collect();
        let mut seen = std::collections::BTreeSet::new();
        for (pod, mesh) in pods {
            if !seen.insert(pod) {
                continue;
            }
            let mtls = mesh.sidecar_mtls();
            let plan = status.plan.find_pod(pod).map_err(anyhow::Error::msg)?;
            for rule in envoy::redirect_rules() {
                iptables(&plan.netns, &rule).with_context(|| format!("in {pod}'s netns"))?;
            }
            let file_name = pod.replace('/', "_");
            let tls = if mtls {
                Some(ca.issue(
                    &format!(
                        "spiffe://cluster.local/ns/{}/sa/{}",
                        plan.namespace, plan.service_account
                    ),
                    &dir.join(&file_name),
                )?)
            } else {
                None
            };
            let config = envoy::config(
                tls.as_ref(),
                &format!("spiffe://cluster.local/ns/{}/", plan.namespace),
                mesh.l7(),
            );
            let config_path = dir.join(format!("{file_name}.json"));
            std::fs::write(&config_path, serde_json::to_vec_pretty(&config)?)
                .with_context(|| format!("writing {}", config_path.display()))?;
            let log = std::fs::File::create(dir.join(format!("{file_name}.log")))?;
            let argv: Vec<String> = vec![
                envoy_bin.display().to_string(),
                "-c".into(),
                config_path.display().to_string(),
                "--concurrency".into(),
                "2".into(),
                "--disable-hot-restart".into(),
                "--log-level".into(),
                "warn".into(),
            ];
            let child = self
                .labs
                .exec(&lab, pod, &argv)?
                .stdin(Stdio::null())
                .stdout(log.try_clone()?)
                .stderr(log)
                .spawn()
                .with_context(|| format!("starting Envoy in {pod}"))?;
            self.sidecars.push((pod, child));
            wait_listening(&plan.netns, &[envoy::OUTBOUND_PORT, envoy::INBOUND_PORT])
                .with_context(|| {
                    format!(
                        "Envoy in {pod} (log: {})",
                        dir.join(format!("{file_name}.log")).display()
                    )
                })?;
        }
        Ok(())
    }

    /// The iptables rules that feed the TPROXY lab's node proxies: new TCP
    /// connections from its meshed pods to the outbound listener, to them
    /// (from elsewhere) to the tunnel or inbound listener; packets of the
    /// proxies' own transparent sockets delivered to them (the policy route
    /// the proxy installed takes marked packets).
    fn tproxy_rules(&self) -> Result<()> {
        let lab = lab_name(TPROXY_LAB)?;
        let status = self.labs.status(&lab)?;
        for node in &status.plan.nodes {
            let config_path = self.labs.proxy_config_path(&lab, &node.name);
            let text = std::fs::read_to_string(&config_path)
                .with_context(|| format!("reading {}", config_path.display()))?;
            let config: serde_yaml::Value = serde_yaml::from_str(&text)
                .with_context(|| format!("parsing {}", config_path.display()))?;
            let number = |path: [&str; 2]| {
                config[path[0]][path[1]].as_u64().with_context(|| {
                    format!("no {}.{} in {}", path[0], path[1], config_path.display())
                })
            };
            let mark = number(["capture", "mark"])?;
            let outbound = number(["listeners", "outbound"])?;
            let inbound = number(["listeners", "inbound"])?;
            let tunnel = number(["listeners", "tunnel"])?;
            let tproxy = |port: u64| format!("-j TPROXY --on-port {port} --tproxy-mark {mark}");
            let mut rules = vec![
                format!("-p tcp -m socket --transparent -j MARK --set-mark {mark}"),
                format!("-p tcp -m mark --mark {mark} -j ACCEPT"),
                "-m addrtype --dst-type LOCAL -j ACCEPT".to_owned(),
            ];
            for pod in status
                .plan
                .pods
                .iter()
                .filter(|p| p.node == node.name && p.mesh == weft_lab::MeshMode::Enabled)
            {
                let (veth, ip) = (&pod.host_veth, pod.ip);
                rules.push(format!("-i {veth} -p tcp --syn {}", tproxy(outbound)));
                rules.push(format!(
                    "! -i {veth} -d {ip} -p tcp --syn --dport {tunnel} {}",
                    tproxy(tunnel)
                ));
                rules.push(format!(
                    "! -i {veth} -d {ip} -p tcp --syn {}",
                    tproxy(inbound)
                ));
            }
            for rule in rules {
                iptables(
                    &node.netns,
                    &envoy::words(&format!("-t mangle -A PREROUTING {rule}")),
                )
                .with_context(|| format!("in {}'s netns", node.name))?;
            }
        }
        Ok(())
    }

    /// Runs `argv` in `pod` to its end; its stdout, or an error naming
    /// `what` with its stderr.
    fn exec_ok(&self, lab: &LabName, pod: &str, argv: &[String], what: &str) -> Result<Vec<u8>> {
        let out = self
            .labs
            .exec(lab, pod, argv)?
            .stdin(Stdio::null())
            .output()
            .with_context(|| format!("running {what}"))?;
        if !out.status.success() {
            bail!(
                "{what} failed: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(out.stdout)
    }

    /// The PIDs of the proxies a row's traffic passes.
    fn proxy_pids(&self, s: &Scenario) -> Result<Vec<u32>> {
        match s.mesh {
            Mesh::Direct => Ok(Vec::new()),
            Mesh::Sidecar | Mesh::SidecarMtls | Mesh::SidecarHttp | Mesh::SidecarHttpMtls => {
                Ok(self
                    .sidecars
                    .iter()
                    .filter(|(pod, _)| *pod == s.client || *pod == s.server)
                    .map(|(_, c)| c.id())
                    .collect())
            }
            Mesh::Weft
            | Mesh::WeftTproxy
            | Mesh::WeftL7
            | Mesh::WeftL7Traced
            | Mesh::WeftL7TracedDead => {
                let status = self.labs.status(&lab_name(s.lab)?)?;
                let nodes: Vec<&str> = if s.cross_node {
                    vec!["node-1", "node-2"]
                } else {
                    vec!["node-1"]
                };
                Ok(status
                    .proxies
                    .iter()
                    .filter(|(n, _)| nodes.contains(&n.as_str()))
                    .filter_map(|(_, phase)| match phase {
                        PodPhase::Running { pid } => Some(*pid),
                        _ => None,
                    })
                    .collect())
            }
        }
    }

    /// One load run from the row's client to its server.
    fn load(&self, opts: &Options, s: &Scenario, p: &Profile) -> Result<Outcome> {
        let lab = lab_name(s.lab)?;
        let status = self.labs.status(&lab)?;
        let target = match s.service {
            Some(key) => {
                status
                    .plan
                    .services
                    .iter()
                    .find(|svc| format!("{}/{}", svc.namespace, svc.name) == key)
                    .with_context(|| format!("{}: no service {key} in the lab", s.name))?
                    .cluster_ip
            }
            None => {
                status
                    .plan
                    .find_pod(s.server)
                    .map_err(anyhow::Error::msg)?
                    .ip
            }
        };
        let mut argv = vec![
            opts.bench.display().to_string(),
            "load".into(),
            format!("{target}:{}", p.port),
            "--protocol".into(),
            match p.protocol {
                Protocol::Http => "http".into(),
                Protocol::Tcp => "tcp".into(),
                Protocol::Grpc => "grpc".into(),
            },
            "--duration".into(),
            p.seconds.to_string(),
            "--warmup".into(),
            p.warmup.to_string(),
            "--connections".into(),
            p.connections.to_string(),
            "--payload".into(),
            p.payload.to_string(),
        ];
        if let Some(rate) = p.rate {
            argv.extend(["--rate".into(), rate.to_string()]);
        }
        let out = self.exec_ok(
            &lab,
            s.client,
            &argv,
            &format!("{}: the load generator", s.name),
        )?;
        serde_json::from_slice(&out).with_context(|| format!("{}: the generator's JSON", s.name))
    }
}

impl Env {
    /// Applies the weft L7 rows' routes to the bench lab and waits until
    /// its node-1 proxy has them.
    /// Applies the L7 routes to `lab` (and, to the traced labs, the
    /// Telemetry object that samples every request).
    fn apply_routes(&self, opts: &Options, lab: &str) -> Result<()> {
        let file = opts.out.join(format!("l7-routes-{lab}.yaml"));
        let yaml = if lab == LAB {
            L7_ROUTES.to_owned()
        } else {
            format!("{L7_ROUTES}\n---\n{TRACE_ALL}")
        };
        std::fs::write(&file, yaml).with_context(|| format!("writing {}", file.display()))?;
        let out = Command::new(&opts.weft)
            .args(["apply", "--strict", "--lab", lab, "-f"])
            .arg(&file)
            .output()
            .context("running weft apply")?;
        if !out.status.success() {
            bail!(
                "weft apply of the L7 routes failed: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        let lab = lab_name(lab)?;
        let arrived =
            weft_lab::wait_until(Duration::from_secs(20), Duration::from_millis(50), || {
                let (_, dump) = self.labs.proxy_admin(&lab, "node-1", "/config_dump").ok()?;
                [
                    "HTTPRoute/mesh/l7-local",
                    "HTTPRoute/mesh/l7-remote",
                    "GRPCRoute/mesh/l7-local-grpc",
                    "GRPCRoute/mesh/l7-remote-grpc",
                ]
                .iter()
                .all(|route| dump.contains(route))
                .then_some(())
            });
        arrived.context("the L7 routes did not reach node-1's proxy within 20 s")
    }

    /// The cross-check (see [`CrossCheck`]): with idle CPUs polling, then
    /// halting.
    fn cross_check(&self, opts: &Options) -> Result<CrossCheck> {
        let polling = {
            let _hold = PollingIdle::hold()?;
            self.agreement(opts, "polling")?
        };
        let halting = self.agreement(opts, "halting")?;
        Ok(CrossCheck {
            rate: CROSS_CHECK_RATE,
            polling,
            halting,
        })
    }

    /// Our generator and h2load, alternately, 3 times each, at
    /// [`CROSS_CHECK_RATE`] on one connection, HTTP/1.1 with 1 KiB, against
    /// the no-mesh server on the same node.
    fn agreement(&self, opts: &Options, tag: &str) -> Result<Agreement> {
        let direct = SCENARIOS[0];
        let lab = lab_name(direct.lab)?;
        let status = self.labs.status(&lab)?;
        let server = status
            .plan
            .find_pod(direct.server)
            .map_err(anyhow::Error::msg)?;
        let body = opts.out.join("h2load-body");
        std::fs::write(&body, vec![b'w'; 1024]).context("writing the h2load body")?;
        let profile = Profile {
            name: "cross-check".into(),
            protocol: Protocol::Http,
            port: 8080,
            rate: Some(CROSS_CHECK_RATE),
            connections: 1,
            payload: 1024,
            seconds: if opts.smoke {
                1.0
            } else if opts.quick {
                3.0
            } else {
                5.0
            },
            runs: if opts.smoke { 1 } else { 3 },
            warmup: 1.0,
        };
        let rps = format!("{CROSS_CHECK_RATE:.0}");
        let mut runs = Vec::new();
        let mut gaps = Vec::new();
        for i in 0..profile.runs {
            let ours = self.load(opts, &direct, &profile)?.p50_us;
            let log = opts.out.join(format!("h2load-{tag}-{i}.log"));
            let _ = std::fs::remove_file(&log);
            let argv: Vec<String> = [
                "h2load",
                "--h1",
                "-c",
                "1",
                "--rps",
                &rps,
                "-D",
                &format!("{}", profile.seconds),
                "--warm-up-time",
                &format!("{}", profile.warmup),
                "-d",
                &body.display().to_string(),
                "--log-file",
                &log.display().to_string(),
                &format!("http://{}:8080/", server.ip),
            ]
            .iter()
            .map(|s| (*s).to_owned())
            .collect();
            self.exec_ok(
                &lab,
                direct.client,
                &argv,
                "h2load (Debian's nghttp2-client)",
            )?;
            let text = std::fs::read_to_string(&log)
                .with_context(|| format!("reading {}", log.display()))?;
            let (mut lat, starts) = h2load_log(&text);
            gaps.extend(starts.windows(2).map(|w| w[1] - w[0]));
            if lat.is_empty() {
                bail!("h2load logged no request in {}", log.display());
            }
            lat.sort_by(f64::total_cmp);
            runs.push((ours, lat[lat.len() / 2]));
        }
        let med = |f: fn(&(f64, f64)) -> f64| {
            let mut v: Vec<f64> = runs.iter().map(f).collect();
            v.sort_by(f64::total_cmp);
            v[v.len() / 2]
        };
        gaps.sort_by(f64::total_cmp);
        Ok(Agreement {
            ours_p50_us: med(|r| r.0),
            h2load_p50_us: med(|r| r.1),
            h2load_median_gap_us: gaps.get(gaps.len() / 2).copied().unwrap_or_default(),
            runs,
        })
    }
}

/// h2load's `--log-file`: a line per request with its start (µs since the
/// epoch), its status, and the µs to the end of its response. Gives the
/// latencies and the starts.
fn h2load_log(text: &str) -> (Vec<f64>, Vec<f64>) {
    let field = |l: &str, i: usize| l.split_whitespace().nth(i)?.parse::<f64>().ok();
    let latencies = text.lines().filter_map(|l| field(l, 2)).collect();
    let starts = text.lines().filter_map(|l| field(l, 0)).collect();
    (latencies, starts)
}

/// Runs `iptables args` in `netns`.
fn iptables(netns: &str, args: &[String]) -> Result<()> {
    let ok = Command::new("ip")
        .args(["netns", "exec", netns, "iptables"])
        .args(args)
        .status()
        .context("running iptables")?
        .success();
    if !ok {
        bail!("iptables {} failed", args.join(" "));
    }
    Ok(())
}

/// Waits until something in `netns` listens on every port.
fn wait_listening(netns: &str, ports: &[u16]) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(20);
    let listening = || -> Result<bool> {
        let out = Command::new("ip")
            .args(["netns", "exec", netns, "ss", "-Hltn"])
            .output()
            .context("running ss")?;
        let text = String::from_utf8_lossy(&out.stdout);
        Ok(ports
            .iter()
            .all(|p| text.lines().any(|l| l.contains(&format!(":{p} ")))))
    };
    let found = weft_lab::wait_until(deadline - Instant::now(), Duration::from_millis(50), || {
        listening().ok().filter(|&l| l)
    });
    if found.is_none() {
        bail!("nothing listened on {ports:?} within 20 s");
    }
    Ok(())
}

/// User + system CPU seconds of these processes so far.
fn cpu_seconds(pids: &[u32]) -> f64 {
    #[expect(unsafe_code, reason = "sysconf has no safe wrapper")]
    // SAFETY: sysconf only reads a constant.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    pids.iter()
        .filter_map(|pid| {
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
            // Fields after the command name (which may hold spaces).
            let rest = stat.rsplit_once(')')?.1;
            let f: Vec<&str> = rest.split_whitespace().collect();
            let utime: f64 = f.get(11)?.parse().ok()?;
            let stime: f64 = f.get(12)?.parse().ok()?;
            Some((utime + stime) / ticks)
        })
        .sum()
}

/// A memory figure of a process from /proc (`VmRSS:`, `VmHWM:`), kB.
fn memory_kb(pid: u32, field: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with(field))?
                .split_whitespace()
                .nth(1)?
                .parse()
                .ok()
        })
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_keeps_the_named_rows_and_the_baselines_and_refuses_a_text_that_names_none() {
        let opts = |only: &[&str]| Options {
            weft: PathBuf::new(),
            bench: PathBuf::new(),
            topology: PathBuf::new(),
            out: PathBuf::new(),
            quick: true,
            smoke: false,
            only: only.iter().map(|s| (*s).to_owned()).collect(),
            skip_cross_check: true,
        };
        assert_eq!(opts(&[]).scenarios().unwrap().len(), SCENARIOS.len());
        let names: Vec<&str> = opts(&["HBONE"])
            .scenarios()
            .unwrap()
            .iter()
            .map(|s| s.name)
            .collect();
        assert_eq!(
            names,
            [
                "no mesh, same node",
                "no mesh, cross node",
                "weft, cross node (HBONE mTLS)",
                "weft fed by iptables TPROXY, cross node (HBONE mTLS)",
                "weft L7 (HTTPRoute), cross node (HBONE mTLS)"
            ]
        );
        let e = opts(&["HBONE", "HBOEN"])
            .scenarios()
            .unwrap_err()
            .to_string();
        assert!(e.contains("`HBOEN` matches no row"), "{e}");
    }

    #[test]
    fn an_h2load_log_gives_each_requests_latency_and_start_and_skips_what_is_not_a_number() {
        let log = "1764064000000000\t200\t31\n1764064000000200 200 29\nnot a line\n";
        let (lat, starts) = h2load_log(log);
        assert_eq!(lat, vec![31.0, 29.0]);
        assert_eq!(
            starts,
            vec![1_764_064_000_000_000.0, 1_764_064_000_000_200.0]
        );
    }
}
