//! `weft demo`: a lab, traffic between its pods, and what happened.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{Context, Result, bail};
use clap::Args;
use weft_lab::app::Served;
use weft_lab::{LabName, Labs, PodPlan};

use crate::lab::load_topology;

#[derive(Debug, Args)]
pub(crate) struct DemoArgs {
    /// The demo lab's name.
    #[arg(long, default_value = "demo")]
    name: LabName,
    /// Topology YAML; the built-in examples/lab/default.yaml if absent.
    #[arg(short = 'f', long = "file")]
    file: Option<PathBuf>,
    /// Leave the lab up at the end (remove it with `weft lab down --name demo`).
    #[arg(long)]
    keep: bool,
}

/// The ports `weft lab app echo` listens on by default.
const HTTP_PORT: u16 = 8080;
const ECHO_PORT: u16 = 7000;
const WHOAMI_PORT: u16 = 7001;

fn is_echo(pod: &PodPlan) -> bool {
    pod.command
        .as_ref()
        .is_some_and(|c| c.iter().take(4).eq(["weft", "lab", "app", "echo"].iter()))
}

pub(crate) fn run(args: &DemoArgs) -> Result<()> {
    let exe = std::env::current_exe().context("finding the weft binary")?;
    // The proxies send their spans to the lab's own OTLP receiver.
    let labs = Labs::new(exe)?.with_otlp(weft_lab::Otlp::Receiver { delay_ms: 0 });
    let lab = &args.name;
    println!(
        "weft demo: a local lab of network namespaces, veths and cgroups, and traffic between its pods\n"
    );

    if labs.list()?.contains(lab) {
        println!("[0/6] a lab `{lab}` is left from an earlier run: removing it");
        println!("      {}", labs.down(lab)?);
    }

    let (file, topology) = load_topology(args.file.as_ref())?;
    println!("[1/6] weft lab up --name {lab} -f {file}");
    let started = Instant::now();
    let status = labs.up(lab, &file, &topology)?;
    println!("      up in {:.2} s\n", started.elapsed().as_secs_f64());
    for line in status.to_string().lines() {
        println!("      {line}");
    }

    println!(
        "\n[2/6] traffic: each request runs `weft lab app client` as a process inside the client pod's netns and cgroup"
    );
    let result = traffic(&labs, lab, &status.plan).and_then(|(ok, failed)| {
        let (ok2, failed2) = through_the_proxy(&labs, lab, &status.plan)?;
        let (ok3, failed3) = apply_a_service(&labs, lab)?;
        let (ok4, failed4) = route_across_nodes(&labs, lab, &status.plan)?;
        Ok((ok + ok2 + ok3 + ok4, failed + failed2 + failed3 + failed4))
    });

    if args.keep {
        println!("\n[6/6] leaving lab `{lab}` up (--keep): try `weft lab status --name {lab}`,");
        println!(
            "      `weft lab exec --name {lab} default/client -- weft lab app client http://<pod ip>:8080/`,"
        );
        println!("      and remove it with `weft lab down --name {lab}`");
    } else {
        println!("\n[6/6] weft lab down --name {lab}");
        println!("      {}", labs.down(lab)?);
    }
    let (ok, failed) = result?;
    println!("\nweft demo: {ok} exchanges between pods, {failed} failed");
    println!(
        "Meshed pods' connections went through their node's proxy, steered by eBPF (no iptables); \
         across nodes they rode HBONE (HTTP/2 CONNECT over TLS 1.3 mTLS, SPIFFE identities from the lab's CA); \
         the proxies follow the lab's control plane over TLS; an HTTPRoute was applied live and routed by header \
         and by weight in the client's node proxy, and both node proxies sent their spans of a traced request \
         to the lab's OTLP receiver."
    );
    if failed > 0 {
        bail!("{failed} exchanges failed");
    }
    Ok(())
}

fn traffic(labs: &Labs, lab: &LabName, plan: &weft_lab::Plan) -> Result<(usize, usize)> {
    let clients: Vec<&PodPlan> = plan.pods.iter().filter(|p| p.command.is_none()).collect();
    let servers: Vec<&PodPlan> = plan.pods.iter().filter(|p| is_echo(p)).collect();
    let (mut ok, mut failed) = (0, 0);
    for client in &clients {
        for server in &servers {
            let place = if client.node == server.node {
                "same node"
            } else {
                "other node"
            };
            println!(
                "\n  {} ({}, {}, mesh {}) -> {} ({}, {}, {place})",
                client.key(),
                client.node,
                client.ip,
                client.mesh,
                server.key(),
                server.node,
                server.ip
            );
            let http = format!("http://{}:{HTTP_PORT}/demo", server.ip);
            let whoami = format!("tcp://{}:{WHOAMI_PORT}", server.ip);
            let echo = format!("tcp://{}:{ECHO_PORT}", server.ip);
            let payload = format!("hello from {}", client.key());
            let checks: [(&str, &str, Vec<&str>); 4] = [
                ("HTTP/1.1", &http, vec![]),
                ("HTTP/2 (h2c)", &http, vec!["--http2"]),
                ("TCP whoami", &whoami, vec![]),
                ("TCP echo", &echo, vec!["--data", &payload]),
            ];
            for (what, url, extra) in checks {
                let started = Instant::now();
                let outcome = labs
                    .client(lab, &client.key(), url, &extra)
                    .map_err(anyhow::Error::from)
                    .and_then(|out| judge(what, &out, server, &payload));
                let ms = started.elapsed().as_secs_f64() * 1e3;
                match outcome {
                    Ok(seen) => {
                        ok += 1;
                        println!(
                            "    ok    {what:<13} {url:<28} {seen}  ({ms:.1} ms incl. process start)"
                        );
                    }
                    Err(e) => {
                        failed += 1;
                        println!("    FAIL  {what:<13} {url:<28} {e:#}");
                    }
                }
            }
        }
    }
    Ok((ok, failed))
}

/// Checks a response and says what it showed.
fn judge(what: &str, out: &[u8], server: &PodPlan, payload: &str) -> Result<String> {
    if what == "TCP echo" {
        if out == payload.as_bytes() {
            return Ok(format!("{} bytes echoed intact", out.len()));
        }
        bail!(
            "echoed {:?}, sent {payload:?}",
            String::from_utf8_lossy(out)
        );
    }
    let served: Served = serde_json::from_slice(out)
        .with_context(|| format!("not a served-by answer: {:?}", String::from_utf8_lossy(out)))?;
    if served.key() != server.key() {
        bail!("served by {}, expected {}", served.key(), server.key());
    }
    Ok(format!(
        "served by {} on {} over {}",
        served.key(),
        served.node,
        served.protocol
    ))
}

/// Service cluster IPs from meshed clients: the node proxy picks an endpoint
/// (power of two choices on open connections), and its metrics show what
/// eBPF steered to it.
fn through_the_proxy(labs: &Labs, lab: &LabName, plan: &weft_lab::Plan) -> Result<(usize, usize)> {
    println!("\n[3/6] through the node proxy: meshed clients call each service by its cluster IP");
    let (mut ok, mut failed) = (0, 0);
    let clients = plan
        .pods
        .iter()
        .filter(|p| p.command.is_none() && p.mesh == weft_lab::MeshMode::Enabled);
    for client in clients {
        for svc in &plan.services {
            let Some(port) = svc.ports.iter().find(|p| p.target() == HTTP_PORT) else {
                continue;
            };
            let url = format!("http://{}:{}/demo", svc.cluster_ip, port.port);
            for _ in 0..svc.endpoints.len().max(1) * 2 {
                let outcome = labs
                    .client(lab, &client.key(), &url, &[])
                    .map_err(anyhow::Error::from)
                    .and_then(|out| {
                        serde_json::from_slice::<Served>(&out).context("not a served-by answer")
                    });
                match outcome {
                    Ok(s) => {
                        ok += 1;
                        println!(
                            "    ok    {} -> {} ({url}): served by {} on {}, seen from {}",
                            client.key(),
                            svc.key(),
                            s.key(),
                            s.node,
                            s.peer
                        );
                    }
                    Err(e) => {
                        failed += 1;
                        println!("    FAIL  {} -> {url}: {e:#}", client.key());
                    }
                }
            }
        }
    }
    for node in &plan.nodes {
        let (_, body) = labs.proxy_admin(lab, &node.name, "/metrics")?;
        let decisions: Vec<String> = body
            .lines()
            .filter_map(|l| l.strip_prefix("weft_capture_decisions_total{decision=\""))
            .filter_map(|l| l.split_once("\"} "))
            .filter(|(_, n)| *n != "0")
            .map(|(d, n)| format!("{d}={n}"))
            .collect();
        println!(
            "    node {} proxy, eBPF decisions: {}",
            node.name,
            decisions.join(" ")
        );
        // Connections this node accepted over HBONE, by caller identity.
        for line in body
            .lines()
            .filter(|l| l.starts_with("weft_tcp_connections_opened_total{direction=\"inbound\""))
            .filter(|l| l.contains("security=\"mutual_tls\""))
        {
            let label = |name: &str| {
                line.split(&format!("{name}=\""))
                    .nth(1)
                    .and_then(|r| r.split('"').next())
                    .unwrap_or_default()
                    .to_owned()
            };
            let count = line.rsplit(' ').next().unwrap_or_default();
            println!(
                "    node {} proxy, over HBONE mTLS: {count} connection(s) to {} from {}",
                node.name,
                label("destination_workload"),
                label("source_principal")
            );
        }
    }
    Ok((ok, failed))
}

/// A service added with `weft apply` reaches every proxy and routes.
fn apply_a_service(labs: &Labs, lab: &LabName) -> Result<(usize, usize)> {
    const SERVICE: &str = "apiVersion: v1\nkind: Service\nmetadata: {name: echo-alt, namespace: default}\n\
        spec: {clusterIP: 198.19.0.20, selector: {app: echo}, ports: [{port: 9000, targetPort: 8080}]}\n";
    println!("\n[4/6] weft apply: a new service default/echo-alt at 198.19.0.20:9000");
    let started = Instant::now();
    let version = crate::control::apply_text(lab.as_str(), "echo-alt.yaml", SERVICE)?;
    let acked = weft_lab::wait_until(
        std::time::Duration::from_secs(10),
        std::time::Duration::from_millis(5),
        || {
            let nodes = crate::control::acked_versions(lab.as_str()).ok()?;
            nodes.iter().all(|(_, v)| *v >= version).then_some(nodes)
        },
    )
    .context("the proxies did not acknowledge the change")?;
    println!(
        "      version {version} acknowledged by {} in {:.1} ms",
        acked
            .iter()
            .map(|(n, _)| n.as_str())
            .collect::<Vec<_>>()
            .join(", "),
        started.elapsed().as_secs_f64() * 1e3
    );
    let out = labs.client(lab, "default/client", "http://198.19.0.20:9000/demo", &[])?;
    let served: Served = serde_json::from_slice(&out).context("not a served-by answer")?;
    println!(
        "    ok    default/client -> default/echo-alt: served by {} on {}",
        served.key(),
        served.node
    );
    Ok((1, 0))
}

/// An HTTPRoute on the echo service's HTTP port, applied live: a header
/// match sends every request to the echo pod on the other node (over
/// HBONE); the rest split 70/30 between the pod on the client's node and
/// the other. Each answer is checked against the pod that should serve it.
fn route_across_nodes(labs: &Labs, lab: &LabName, plan: &weft_lab::Plan) -> Result<(usize, usize)> {
    let client = plan
        .pods
        .iter()
        .find(|p| p.namespace == "default" && p.name == "client")
        .context("the demo needs default/client")?;
    let mut echoes: Vec<&PodPlan> = plan
        .pods
        .iter()
        .filter(|p| p.namespace == "default" && is_echo(p))
        .collect();
    // The one on the client's node first.
    echoes.sort_by_key(|p| p.node != client.node);
    let [near, far] = echoes[..] else {
        bail!("the demo's route needs two echo pods in `default`");
    };
    let svc = |name: &str, ip: &str, pod: &PodPlan| {
        format!(
            "apiVersion: v1\nkind: Service\nmetadata: {{name: {name}, namespace: default}}\n\
             spec: {{clusterIP: {ip}, selector: {{app: echo, weft.io/demo-pod: {}}}, ports: [{{port: 80, targetPort: 8080}}]}}\n",
            pod.name
        )
    };
    println!(
        "\n[5/6] an HTTPRoute on default/echo:80: `x-version: far` goes to {} (node {}), the rest 70/30 between {} (node {}) and it",
        far.key(),
        far.node,
        near.key(),
        near.node
    );
    for pod in [near, far] {
        labs.label(lab, &pod.key(), "weft.io/demo-pod", Some(&pod.name))?;
    }
    let route = format!(
        "{}---\n{}---\napiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\n\
         metadata: {{name: echo-demo, namespace: default}}\nspec:\n  parentRefs: [{{group: \"\", kind: Service, name: echo, port: 80}}]\n\
         \x20 rules:\n    - matches: [{{headers: [{{name: x-version, value: far}}]}}]\n      backendRefs: [{{name: echo-far, port: 80}}]\n\
         \x20   - backendRefs: [{{name: echo-near, port: 80, weight: 70}}, {{name: echo-far, port: 80, weight: 30}}]\n",
        svc("echo-near", "198.19.0.31", near),
        svc("echo-far", "198.19.0.32", far)
    );
    let version = crate::control::apply_text(lab.as_str(), "echo-demo-route.yaml", &route)?;
    weft_lab::wait_until(
        std::time::Duration::from_secs(10),
        std::time::Duration::from_millis(5),
        || {
            let nodes = crate::control::acked_versions(lab.as_str()).ok()?;
            nodes.iter().all(|(_, v)| *v >= version).then_some(())
        },
    )
    .context("the proxies did not acknowledge the route")?;
    let summary = |args: &[&str]| -> Result<serde_json::Value> {
        let out = labs.client(lab, &client.key(), "http://198.19.0.10/demo", args)?;
        let text = String::from_utf8_lossy(&out);
        let last = text.lines().last().context("no answer")?;
        Ok(serde_json::from_str::<serde_json::Value>(last)?["summary"].clone())
    };
    let (mut ok, mut failed) = (0, 0);
    let by_header = summary(&["--json", "--count", "20", "--header", "x-version: far"])?;
    let to_far = by_header["pods"][far.key()].as_u64().unwrap_or(0);
    if to_far == 20 {
        ok += 20;
        println!(
            "    ok    20 requests with the header: all served by {}",
            far.key()
        );
    } else {
        failed += 20;
        println!("    FAIL  20 requests with the header: {by_header}");
    }
    let split = summary(&["--json", "--count", "200"])?;
    let n = |p: &PodPlan| split["pods"][p.key()].as_u64().unwrap_or(0);
    let (to_near, to_far) = (n(near), n(far));
    if to_near + to_far == 200 && (120..=160).contains(&to_near) {
        ok += 200;
        println!(
            "    ok    200 requests without it: {to_near} to {} and {to_far} to {} (70/30 asked)",
            near.key(),
            far.key()
        );
    } else {
        failed += 200;
        println!("    FAIL  200 requests without it: {split}");
    }
    let (ok2, failed2) = trace_across_nodes(labs, lab, client, far)?;
    Ok((ok + ok2, failed + failed2))
}

/// One request to the far pod with a sampled `traceparent`, and the trace
/// the lab's OTLP receiver got from both node proxies.
fn trace_across_nodes(
    labs: &Labs,
    lab: &LabName,
    client: &PodPlan,
    far: &PodPlan,
) -> Result<(usize, usize)> {
    let trace = format!("{:032x}", new_trace_id());
    let traceparent = format!("traceparent: 00-{trace}-00f067aa0ba902b7-01");
    println!(
        "\n      one more with `{traceparent}` and the header: its trace, from the lab's OTLP receiver (`weft lab traces`):"
    );
    labs.client(
        lab,
        &client.key(),
        "http://198.19.0.10/traced",
        &["--header", "x-version: far", "--header", &traceparent],
    )?;
    let spans = weft_lab::wait_until(
        std::time::Duration::from_secs(10),
        std::time::Duration::from_millis(100),
        || {
            let spans: Vec<weft_lab::StoredSpan> = labs
                .spans(lab)
                .ok()?
                .into_iter()
                .filter(|s| s.trace_id == trace)
                .collect();
            (spans.len() >= 2).then_some(spans)
        },
    );
    let Some(spans) = spans else {
        println!("    FAIL  no trace {trace} from both proxies within 10 s");
        return Ok((0, 1));
    };
    for line in weft_lab::waterfalls(&spans, 1).lines() {
        println!("      {line}");
    }
    let client_span = spans.iter().find(|s| s.kind == "CLIENT");
    let server_span = spans.iter().find(|s| s.kind == "SERVER");
    match (client_span, server_span) {
        (Some(c), Some(s)) if s.parent_span_id == c.span_id && s.hop().contains(&far.node) => {
            println!(
                "    ok    one trace: the client span in {}'s proxy, the server span in {}'s",
                client.node, far.node
            );
            Ok((1, 0))
        }
        _ => {
            println!("    FAIL  the trace does not have both hops in order: {spans:?}");
            Ok((0, 1))
        }
    }
}

/// A random, non-zero trace id (from the standard library's randomly
/// keyed hasher).
fn new_trace_id() -> u128 {
    use std::hash::{BuildHasher, Hasher};
    let half = || {
        std::collections::hash_map::RandomState::new()
            .build_hasher()
            .finish()
    };
    (u128::from(half()) << 64 | u128::from(half())).max(1)
}
