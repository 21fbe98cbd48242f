//! `weft control` (run the control plane in file mode), `weft apply`, and
//! `weft config nodes`.

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use clap::Args;
use weft_control::auth::{NodeAuth, NodeCredentials};
use weft_control::ca::Ca;
use weft_control::client::{Target, connect};
use weft_control::index::{Check, Store};
use weft_control::server::{ControlPlane, Security, serve, serve_unix};
use weft_control::source::file;
use weft_control_api::discovery as pb;

#[derive(Debug, Args)]
#[command(group = clap::ArgGroup::new("node_auth").args(["node_credentials", "token_review"]))]
pub(crate) struct ControlArgs {
    /// Directory of Kubernetes YAML (Namespaces, Pods, Services,
    /// EndpointSlices, HTTPRoutes, GRPCRoutes, AuthorizationPolicies);
    /// applied files are stored here too.
    #[arg(
        long,
        required_unless_present = "kubernetes",
        conflicts_with = "kubernetes"
    )]
    dir: Option<PathBuf>,
    /// Follow the Kubernetes API instead of files (in a pod: its service
    /// account; elsewhere: the kubeconfig). Routes get their status.
    #[arg(long)]
    kubernetes: bool,
    /// Where node proxies connect.
    #[arg(long, default_value = "0.0.0.0:15012")]
    listen: SocketAddr,
    /// Also listen on this unix socket (for `weft apply` on this machine).
    #[arg(long)]
    unix: Option<PathBuf>,
    /// Issue workload certificates with the root in this directory
    /// (`ca.pem`, `ca-key.pem`, optional `trusted-roots.pem`, e.g. a mounted
    /// Secret); a new root is generated there when it has none.
    #[arg(long, requires = "node_auth")]
    ca_dir: Option<PathBuf>,
    /// Who the nodes are: a YAML map of node names to the SHA-256 digests
    /// of their tokens. Node proxies must then present their token.
    #[arg(long, requires = "ca_dir")]
    node_credentials: Option<PathBuf>,
    /// Who the nodes are, in Kubernetes: node proxies present a projected,
    /// pod-bound ServiceAccount token, checked with a TokenReview (needs
    /// `create` on tokenreviews); the node is the one its pod runs on.
    #[arg(long, requires_all = ["ca_dir", "kubernetes"])]
    token_review: bool,
    /// With --token-review: the node proxies' service account.
    #[arg(long, default_value = "weft-system/weft-proxy", value_parser = namespaced)]
    proxy_service_account: (String, String),
    /// With --token-review: the audience node tokens must be issued for.
    #[arg(long, default_value = "weft")]
    token_audience: String,
    /// With --ca-dir, the TCP port serves TLS with a certificate from the
    /// CA for these names (DNS names or IP addresses proxies connect to);
    /// repeat for several.
    #[arg(
        long = "tls-name",
        default_values = ["weft-control", "weft-control.weft-system.svc"]
    )]
    tls_names: Vec<String>,
    /// The trust domain of workload identities.
    #[arg(long, default_value = "cluster.local")]
    trust_domain: String,
    /// Lifetime of workload certificates, in seconds.
    #[arg(long, default_value_t = 86_400, value_parser = clap::value_parser!(u64).range(1..))]
    cert_ttl: u64,
}

/// `namespace/name`.
fn namespaced(s: &str) -> Result<(String, String), String> {
    match s.split_once('/') {
        Some((ns, name)) if !ns.is_empty() && !name.is_empty() && !name.contains('/') => {
            Ok((ns.to_owned(), name.to_owned()))
        }
        _ => Err(format!("`{s}` is not namespace/name")),
    }
}

/// Where to reach a control plane.
#[derive(Debug, Args)]
pub(crate) struct TargetArgs {
    /// The control plane of this lab (its unix socket).
    #[arg(long, env = "WEFT_LAB", default_value = crate::lab::DEFAULT_LAB)]
    lab: String,
    /// A control plane's address, `http://host:15012` (instead of --lab).
    #[arg(long)]
    server: Option<String>,
}

impl TargetArgs {
    /// The control plane of the named lab.
    fn lab(lab: &str) -> Self {
        Self {
            lab: lab.to_owned(),
            server: None,
        }
    }

    fn target(&self) -> Target {
        match &self.server {
            Some(url) => Target::Tcp(url.clone()),
            None => Target::Unix(
                PathBuf::from(weft_lab::DEFAULT_STATE_ROOT)
                    .join(&self.lab)
                    .join("control.sock"),
            ),
        }
    }
}

#[derive(Debug, Args)]
pub(crate) struct ApplyArgs {
    /// YAML files or directories (their `*.yaml`/`*.yml`), all applied
    /// together or not at all.
    #[arg(short = 'f', long = "file", required = true)]
    files: Vec<PathBuf>,
    /// Refuse references to services that do not exist (yet), instead of
    /// applying them with a warning.
    #[arg(long)]
    strict: bool,
    #[command(flatten)]
    target: TargetArgs,
}

#[derive(Debug, Args)]
pub(crate) struct DeleteArgs {
    /// YAML files or directories naming the objects to remove (kind,
    /// namespace, name), all removed together or not at all.
    #[arg(short = 'f', long = "file", required = true)]
    files: Vec<PathBuf>,
    #[command(flatten)]
    target: TargetArgs,
}

fn runtime() -> Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("starting the async runtime")
}

pub(crate) fn run_control(args: &ControlArgs) -> Result<()> {
    let cp = match &args.dir {
        Some(dir) => {
            let docs = file::load(dir)?;
            let (store, world, warnings) = Store::default().applied_with(docs, Check::Accepting)?;
            for w in &warnings {
                tracing::warn!(file = %w.file, document = w.document, field = %w.path,
                    "{}", w.message);
            }
            tracing::info!(
                dir = %dir.display(),
                objects = store.len(),
                workloads = world.workloads.len(),
                services = world.services.len(),
                "control plane loaded"
            );
            ControlPlane::new(store, Some(dir.clone()))?
        }
        None => ControlPlane::for_kubernetes(),
    };
    let ca = match &args.ca_dir {
        Some(dir) => Some(
            Ca::from_dir(
                dir,
                &args.trust_domain,
                std::time::Duration::from_secs(args.cert_ttl),
                true,
            )
            .context("loading the CA")?,
        ),
        None => None,
    };
    // A control plane that is a CA serves TLS: node tokens and the roots
    // proxies learn must not cross the network in the clear.
    let tls = match &ca {
        Some(ca) => {
            let (cert_pem, key_pem) = ca
                .serving_certificate(&args.tls_names)
                .context("issuing the control plane's serving certificate")?;
            tracing::info!(names = ?args.tls_names, "TLS on the TCP port");
            Some(weft_control::server::ServingTls { cert_pem, key_pem })
        }
        None => None,
    };
    let tokens = match &args.node_credentials {
        Some(path) => Some(NodeCredentials::load(path).context("loading the node credentials")?),
        None => None,
    };
    runtime()?.block_on(async {
        let client = if args.kubernetes {
            Some(
                weft_control::kube::Client::try_default()
                    .await
                    .context("connecting to the Kubernetes API (in-cluster config or kubeconfig)")?,
            )
        } else {
            None
        };
        if let Some(ca) = ca {
            let nodes = match (tokens, &client) {
                (Some(tokens), _) => NodeAuth::Tokens(tokens),
                (None, Some(client)) if args.token_review => {
                    let (ns, sa) = &args.proxy_service_account;
                    tracing::info!(audience = %args.token_audience, proxy_service_account = %format!("{ns}/{sa}"),
                        "node proxies authenticate with TokenReview");
                    NodeAuth::Kubernetes(Box::new(weft_control::token_review::TokenReviewer::new(
                        client.clone(),
                        &args.token_audience,
                        (ns, sa),
                    )))
                }
                _ => bail!("--ca-dir needs --node-credentials or --token-review"),
            };
            tracing::info!(ca = ?args.ca_dir, trust_domain = %args.trust_domain, cert_ttl_s = args.cert_ttl, "issuing workload certificates");
            cp.secure(Security {
                ca: std::sync::Arc::new(ca),
                nodes,
            })
            .map_err(anyhow::Error::msg)?;
        }
        let follower = client.map(|client| {
            tracing::info!("following the Kubernetes API");
            tokio::spawn(weft_control::source::kubernetes::run(client, cp.clone()))
        });
        let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
        let stopped = |mut rx: tokio::sync::watch::Receiver<bool>| async move {
            let _ = rx.wait_for(|s| *s).await;
        };
        let tcp = {
            let (cp, listen, stop) = (cp.clone(), args.listen, stopped(stop_rx.clone()));
            tokio::spawn(async move { serve(cp, listen, tls.as_ref(), stop).await })
        };
        let unix = args.unix.clone().map(|path| {
            let cp = cp.clone();
            let stop = stopped(stop_rx.clone());
            tokio::spawn(async move { serve_unix(cp, &path, stop).await })
        });
        tracing::info!(listen = %args.listen, unix = ?args.unix, "serving");
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .context("installing the SIGTERM handler")?;
        tokio::select! {
            _ = term.recv() => {}
            _ = tokio::signal::ctrl_c() => {}
        }
        stop_tx.send_replace(true);
        if let Some(follower) = follower {
            follower.abort();
        }
        tcp.await
            .context("the TCP server task")?
            .context("serving over TCP")?;
        if let Some(unix) = unix {
            unix.await
                .context("the unix server task")?
                .context("serving on the unix socket")?;
        }
        Ok(())
    })
}

/// Every file named, directories expanded to their YAML files.
fn read_files(paths: &[PathBuf]) -> Result<Vec<pb::File>> {
    let mut files = Vec::new();
    for path in paths {
        let mut list: Vec<PathBuf> = if path.is_dir() {
            std::fs::read_dir(path)
                .with_context(|| format!("reading {}", path.display()))?
                .filter_map(Result::ok)
                .map(|e| e.path())
                .filter(|p| p.extension().is_some_and(|x| x == "yaml" || x == "yml"))
                .collect()
        } else {
            vec![path.clone()]
        };
        list.sort();
        for f in list {
            let content =
                std::fs::read_to_string(&f).with_context(|| format!("reading {}", f.display()))?;
            files.push(pb::File {
                name: f.display().to_string(),
                content,
            });
        }
    }
    Ok(files)
}

pub(crate) fn apply(args: &ApplyArgs) -> Result<()> {
    let files = read_files(&args.files)?;
    let target = args.target.target();
    let response = runtime()?.block_on(async {
        connect_to(&target)
            .await?
            .apply(pb::ApplyRequest {
                files,
                replace_all: false,
                strict: args.strict,
            })
            .await
            .map(tonic::Response::into_inner)
            .context("applying")
    })?;
    report(&response, "applied")
}

pub(crate) fn delete(args: &DeleteArgs) -> Result<()> {
    let files = read_files(&args.files)?;
    let target = args.target.target();
    let response = runtime()?.block_on(async {
        connect_to(&target)
            .await?
            .delete(pb::DeleteRequest { files })
            .await
            .map(tonic::Response::into_inner)
            .context("deleting")
    })?;
    report(&response, "deleted")
}

/// A client of the control plane at `target`.
async fn connect_to(
    target: &Target,
) -> Result<pb::discovery_client::DiscoveryClient<tonic::transport::Channel>> {
    connect(target)
        .await
        .with_context(|| format!("connecting to the control plane at {target:?}"))
}

/// One line per problem: file, document, field, message.
fn problem_line(p: &pb::Problem) -> String {
    let mut line = p.file.clone();
    if p.document > 0 {
        line.push_str(&format!(" document {}", p.document));
    }
    if !p.path.is_empty() {
        line.push_str(&format!(": {}", p.path));
    }
    format!("{line}: {}", p.message)
}

/// Prints what an apply or a delete did; fails when it was refused.
fn report(response: &pb::ApplyResponse, done: &str) -> Result<()> {
    if response.problems.is_empty() {
        for w in &response.warnings {
            eprintln!("warning: {}", problem_line(w));
        }
        if !response.warnings.is_empty() {
            eprintln!(
                "  (accepted: a route's share for a service that does not exist answers 500 \
                 until it does; --strict refuses this)"
            );
        }
        println!("{done}: version {}", response.version);
        return Ok(());
    }
    eprintln!(
        "rejected, nothing {done}: {} problem(s)",
        response.problems.len()
    );
    for p in &response.problems {
        eprintln!("  {}", problem_line(p));
    }
    bail!("the control plane rejected the files")
}

/// Applies one YAML text to a lab's control plane; returns the version.
pub(crate) fn apply_text(lab: &str, name: &str, yaml: &str) -> Result<u64> {
    let target = TargetArgs::lab(lab).target();
    let response = runtime()?.block_on(async {
        let mut client = connect(&target)
            .await
            .context("connecting to the control plane")?;
        client
            .apply(pb::ApplyRequest {
                files: vec![pb::File {
                    name: name.to_owned(),
                    content: yaml.to_owned(),
                }],
                replace_all: false,
                strict: false,
            })
            .await
            .map(tonic::Response::into_inner)
            .context("applying")
    })?;
    if let Some(p) = response.problems.first() {
        bail!(
            "rejected: {} document {}: {}: {}",
            p.file,
            p.document,
            p.path,
            p.message
        );
    }
    Ok(response.version)
}

/// Each node and the version it acknowledged, from a lab's control plane.
pub(crate) fn acked_versions(lab: &str) -> Result<Vec<(String, u64)>> {
    let target = TargetArgs::lab(lab).target();
    let response = runtime()?.block_on(async {
        let mut client = connect(&target)
            .await
            .context("connecting to the control plane")?;
        client
            .nodes(pb::NodesRequest {})
            .await
            .map(tonic::Response::into_inner)
            .context("asking for the nodes")
    })?;
    Ok(response
        .nodes
        .into_iter()
        .map(|n| (n.node, n.acked_version))
        .collect())
}

pub(crate) fn nodes(target: &TargetArgs) -> Result<()> {
    let target = target.target();
    let response = runtime()?.block_on(async {
        let mut client = connect(&target)
            .await
            .with_context(|| format!("connecting to the control plane at {target:?}"))?;
        client
            .nodes(pb::NodesRequest {})
            .await
            .map(tonic::Response::into_inner)
            .context("asking for the nodes")
    })?;
    println!("control plane version {}", response.version);
    println!(
        "{:<16} {:<10} {:<8} LAST NACK",
        "NODE", "CONNECTED", "ACKED"
    );
    for n in response.nodes {
        println!(
            "{:<16} {:<10} {:<8} {}",
            n.node,
            if n.connected { "yes" } else { "no" },
            n.acked_version,
            if n.last_nack.is_empty() {
                "-"
            } else {
                &n.last_nack
            }
        );
    }
    Ok(())
}

/// Prints what each (or one) node proxy of a lab holds.
pub(crate) fn dump(lab: &weft_lab::LabName, node: Option<&str>) -> Result<()> {
    let exe = std::env::current_exe().context("finding the weft binary")?;
    let labs = weft_lab::Labs::new(exe)?;
    let status = labs.status(lab)?;
    if let Some(want) = node {
        status.plan.find_node(want).map_err(anyhow::Error::msg)?;
    }
    for n in status
        .plan
        .nodes
        .iter()
        .filter(|n| node.is_none_or(|want| n.name == want))
    {
        let (code, body) = labs.proxy_admin(lab, &n.name, "/config_dump")?;
        if code != 200 {
            bail!("node {}: /config_dump answered {code}", n.name);
        }
        println!("# node {}\n{body}", n.name);
    }
    Ok(())
}
