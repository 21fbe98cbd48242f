//! The gRPC server: config streams to node proxies, `Apply`, `Nodes`.
//!
//! Each stream sends one update at a time and waits for its ACK or NACK
//! before the next; changes made meanwhile are coalesced. Updates are
//! deltas from the last version the proxy ACKed; after a NACK (the proxy
//! keeps its last good config) or a reconnect, the next update is a full
//! snapshot.

use std::collections::BTreeMap;
use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::{Arc, Mutex};

use tokio::sync::{mpsc, watch};
use tokio_stream::Stream;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};
use weft_control_api::discovery as pb;
use weft_control_api::discovery::discovery_server::{Discovery, DiscoveryServer};

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;

use crate::auth::NodeAuth;
use crate::ca::Ca;
use crate::error::{Problem, ProblemKind, Rejected};
use crate::index::{Check, Store};
use crate::model::SpiffeId;
use crate::model::{Delta, NodeConfig, World};
use crate::source::ObjectKey;
use crate::source::file::{self, Document};
use crate::wire;

/// What identity needs: the CA, and who the nodes are.
#[derive(Debug)]
pub struct Security {
    /// Signs workload certificates.
    pub ca: Arc<Ca>,
    /// Authenticates nodes.
    pub nodes: NodeAuth,
}

/// A world and its version.
#[derive(Debug, Clone, Default)]
pub struct Published {
    /// Increases with every applied change.
    pub version: u64,
    /// The world at that version.
    pub world: Arc<World>,
    /// What every node gets of it ([`World::common`]), computed once.
    pub common: Arc<NodeConfig>,
}

impl Published {
    fn new(version: u64, world: World) -> Published {
        Published {
            version,
            common: Arc::new(world.common()),
            world: Arc::new(world),
        }
    }
}

/// What the control plane knows of one node's proxy.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NodeStatus {
    /// A stream is open.
    pub connected: bool,
    /// The last version it ACKed.
    pub acked_version: u64,
    /// Why it refused its last NACKed update, if it did.
    pub last_nack: String,
}

/// The control plane: a store, its published world, and node statuses.
#[derive(Debug)]
pub struct ControlPlane {
    store: Mutex<Store>,
    published: watch::Sender<Published>,
    nodes: Mutex<BTreeMap<String, NodeStatus>>,
    /// Where applied files are kept (file mode), so a restart has them.
    dir: Option<PathBuf>,
    /// The world comes from the Kubernetes API: `weft apply` is refused.
    kubernetes: bool,
    /// The CA and the node credentials, when it issues certificates.
    security: std::sync::OnceLock<Security>,
    /// Changes of the common part between two versions, computed once for
    /// all the nodes that make that step.
    steps: Mutex<BTreeMap<(u64, u64), Arc<Delta>>>,
    /// Set when the server stops: open streams end, so proxies reconnect
    /// (to the next instance) instead of waiting on a stream that will
    /// never send again.
    closing: watch::Sender<bool>,
}

impl ControlPlane {
    /// A control plane holding `store` (already valid), keeping applied
    /// files in `dir` when given.
    pub fn new(store: Store, dir: Option<PathBuf>) -> Result<Arc<ControlPlane>, Rejected> {
        // What was accepted before (references not resolved yet) is
        // accepted again.
        let (world, _) = store.world_accepting()?;
        let (published, _) = watch::channel(Published::new(1, world));
        Ok(Arc::new(ControlPlane {
            store: Mutex::new(store),
            published,
            nodes: Mutex::new(BTreeMap::new()),
            dir,
            kubernetes: false,
            steps: Mutex::default(),
            security: std::sync::OnceLock::new(),
            closing: watch::channel(false).0,
        }))
    }

    /// A control plane whose world the Kubernetes source publishes
    /// ([`crate::source::kubernetes`]). Until the first publish it has an
    /// empty world at version 0, which it does not send: proxies wait
    /// rather than drop what they hold.
    pub fn for_kubernetes() -> Arc<ControlPlane> {
        let (published, _) = watch::channel(Published::default());
        Arc::new(ControlPlane {
            store: Mutex::new(Store::default()),
            published,
            nodes: Mutex::new(BTreeMap::new()),
            dir: None,
            kubernetes: true,
            steps: Mutex::default(),
            security: std::sync::OnceLock::new(),
            closing: watch::channel(false).0,
        })
    }

    /// Publishes a world (Kubernetes mode); returns its version, unchanged
    /// when the world is.
    pub fn publish(&self, world: World) -> u64 {
        let mut version = 0;
        self.published.send_if_modified(|p| {
            if p.version > 0 && *p.world == world {
                version = p.version;
                return false;
            }
            *p = Published::new(p.version + 1, world);
            version = p.version;
            true
        });
        version
    }

    /// The current version and world.
    pub fn published(&self) -> Published {
        self.published.borrow().clone()
    }

    /// Applies YAML files all or nothing; returns the new version and the
    /// warnings (references that do not resolve yet, under
    /// [`Check::Accepting`]). With `replace_all`, the files replace what
    /// files of the same names applied before (objects they no longer have
    /// are removed); objects from other files stay.
    pub fn apply(
        &self,
        files: &[(String, String)],
        replace_all: bool,
        check: Check,
    ) -> Result<(u64, Vec<Problem>), Rejected> {
        self.file_mode(files)?;
        let mut store = self.store.lock().unwrap_or_else(|p| p.into_inner());
        // Stamped with their creation time, as the API server does.
        let (docs, files) = stamped(&store, files)?;
        let sources: Vec<String> = files.iter().map(|(name, _)| source_name(name)).collect();
        let base = if replace_all {
            store.without(|doc| sources.contains(&source_name(&doc.file)))
        } else {
            store.clone()
        };
        let (next, world, warnings) = base.applied_with(docs, check)?;
        if let Some(dir) = &self.dir {
            if replace_all {
                let stale = yaml_files(dir)
                    .into_iter()
                    .filter(|p| sources.contains(&source_name(&p.display().to_string())));
                for old in stale {
                    let _ = std::fs::remove_file(old);
                }
            }
            for (name, text) in &files {
                let base = std::path::Path::new(name)
                    .file_name()
                    .map(|n| n.to_string_lossy().into_owned())
                    .unwrap_or_else(|| "applied.yaml".to_owned());
                let path = dir.join(format!("applied-{base}"));
                std::fs::write(&path, text).map_err(|e| storing(&path, &e))?;
            }
        }
        *store = next;
        Ok((self.publish_next(world), warnings))
    }

    /// Removes the objects `files` name, all or nothing (each must exist);
    /// returns the new version and the warnings (references left
    /// dangling). The stored files lose those objects' documents, so a
    /// restart does not bring them back.
    pub fn delete(&self, files: &[(String, String)]) -> Result<(u64, Vec<Problem>), Rejected> {
        self.file_mode(files)?;
        let keys: Vec<ObjectKey> = parse_all(files)?.iter().map(Document::key).collect();
        let mut store = self.store.lock().unwrap_or_else(|p| p.into_inner());
        let (next, world, warnings) = store.removed(&keys, Check::Accepting)?;
        if let Some(dir) = &self.dir {
            for path in yaml_files(dir) {
                forget_documents(&path, &keys)?;
            }
        }
        *store = next;
        Ok((self.publish_next(world), warnings))
    }

    /// Refuses a change to a control plane that follows Kubernetes.
    fn file_mode(&self, files: &[(String, String)]) -> Result<(), Rejected> {
        if !self.kubernetes {
            return Ok(());
        }
        Err(Rejected {
            problems: vec![Problem {
                file: files.first().map(|f| f.0.clone()).unwrap_or_default(),
                document: 0,
                path: String::new(),
                message: "this control plane follows the Kubernetes API: apply and delete with \
                          kubectl"
                    .into(),
                kind: ProblemKind::Invalid,
            }],
        })
    }

    /// Publishes `world` as the next version, changed or not (a change
    /// someone applied gets its own version).
    fn publish_next(&self, world: World) -> u64 {
        let version = self.published.borrow().version + 1;
        self.published.send_replace(Published::new(version, world));
        version
    }

    /// Issues certificates with `security` from now on (once).
    pub fn secure(&self, security: Security) -> Result<(), String> {
        self.security
            .set(security)
            .map_err(|_| "the control plane is already secured".to_owned())
    }

    /// Which node a request comes from: `None` when the control plane has
    /// no node credentials (it then issues no certificates and trusts the
    /// Hello); an error for a missing or unknown credential.
    async fn caller<T>(&self, request: &Request<T>) -> Result<Option<String>, Status> {
        let Some(security) = self.security.get() else {
            return Ok(None);
        };
        let token = request
            .metadata()
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .ok_or_else(|| {
                Status::unauthenticated(
                    "a node credential is required (authorization: Bearer <token>)",
                )
            })?;
        match security.nodes.node_of(token).await {
            Ok(node) => Ok(Some(node)),
            Err(why) => {
                tracing::info!(remote = ?request.remote_addr(), %why, "node credential refused");
                Err(Status::unauthenticated(why))
            }
        }
    }

    /// Signs a certificate for `namespace/service_account`, which must have
    /// a pod on `node`.
    fn certificate(
        &self,
        node: &str,
        request: &pb::CertificateRequest,
    ) -> Result<pb::CertificateResponse, Status> {
        let Some(security) = self.security.get() else {
            return Err(Status::failed_precondition(
                "this control plane issues no certificates (start it with --ca-dir and --node-credentials)",
            ));
        };
        let world = self.published().world;
        let has_pod = world.workloads.values().any(|w| {
            w.node == node
                && w.namespace == request.namespace
                && w.service_account == request.service_account
        });
        if !has_pod {
            tracing::warn!(%node, namespace = %request.namespace, service_account = %request.service_account,
                "refused a certificate: no such pod on the node");
            return Err(Status::permission_denied(format!(
                "node {node} has no pod with service account {}/{}",
                request.namespace, request.service_account
            )));
        }
        let identity = SpiffeId {
            trust_domain: security.ca.trust_domain().to_owned(),
            namespace: request.namespace.clone(),
            service_account: request.service_account.clone(),
        };
        let issued = security
            .ca
            .sign(&identity, &request.csr)
            .map_err(|e| match e {
                crate::ca::CaError::Csr(_) => Status::invalid_argument(e.to_string()),
                _ => Status::internal(e.to_string()),
            })?;
        let not_after = issued
            .not_after
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or_default();
        tracing::info!(%node, %identity, not_after, "issued a certificate");
        Ok(pb::CertificateResponse {
            chain: issued.chain,
            roots: security.ca.roots().to_vec(),
            not_after,
            spiffe_id: identity.to_string(),
        })
    }

    /// What turns the common part at `from` into the one at `to`.
    fn step(&self, from: (u64, &NodeConfig), to: (u64, &NodeConfig)) -> Arc<Delta> {
        let mut steps = self.steps.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(d) = steps.get(&(from.0, to.0)) {
            return d.clone();
        }
        // Steps to older versions are not asked for again.
        steps.retain(|(_, t), _| *t >= to.0);
        let d = Arc::new(from.1.delta_to(to.1));
        steps.insert((from.0, to.0), d.clone());
        d
    }

    /// Ends every open config stream.
    pub fn close_streams(&self) {
        self.closing.send_replace(true);
    }

    /// Every node's status.
    pub fn nodes(&self) -> BTreeMap<String, NodeStatus> {
        self.nodes.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    fn set_node(&self, node: &str, f: impl FnOnce(&mut NodeStatus)) {
        let mut nodes = self.nodes.lock().unwrap_or_else(|p| p.into_inner());
        f(nodes.entry(node.to_owned()).or_default());
    }

    /// The gRPC service, as the network sees it.
    pub fn service(self: &Arc<Self>) -> DiscoveryServer<Service> {
        DiscoveryServer::new(Service(self.clone(), Face::Network))
    }

    /// The gRPC service on the local unix socket (administrators).
    fn local_service(self: &Arc<Self>) -> DiscoveryServer<Service> {
        DiscoveryServer::new(Service(self.clone(), Face::Local))
    }
}

/// Serves the control plane on `addr` until `shutdown` completes.
pub async fn serve(
    cp: Arc<ControlPlane>,
    addr: SocketAddr,
    tls: Option<&ServingTls>,
    shutdown: impl Future<Output = ()>,
) -> Result<(), tonic::transport::Error> {
    let service = cp.service();
    builder(tls)?
        .add_service(service)
        .serve_with_shutdown(addr, async move {
            shutdown.await;
            cp.close_streams();
        })
        .await
}

/// The control plane's own certificate and key (PEM), for TLS on its TCP
/// port.
#[derive(Debug, Clone)]
pub struct ServingTls {
    /// Certificate chain, PEM.
    pub cert_pem: String,
    /// Private key, PEM.
    pub key_pem: String,
}

fn builder(tls: Option<&ServingTls>) -> Result<tonic::transport::Server, tonic::transport::Error> {
    let builder = tonic::transport::Server::builder();
    match tls {
        None => Ok(builder),
        Some(t) => builder.tls_config(tonic::transport::ServerTlsConfig::new().identity(
            tonic::transport::Identity::from_pem(&t.cert_pem, &t.key_pem),
        )),
    }
}

/// Serves the control plane on an already bound listener (tests, and
/// callers that need the port before serving) until `shutdown` completes.
pub async fn serve_on(
    cp: Arc<ControlPlane>,
    listener: tokio::net::TcpListener,
    tls: Option<&ServingTls>,
    shutdown: impl Future<Output = ()>,
) -> Result<(), tonic::transport::Error> {
    let service = cp.service();
    builder(tls)?
        .add_service(service)
        .serve_with_incoming_shutdown(
            tokio_stream::wrappers::TcpListenerStream::new(listener),
            async move {
                shutdown.await;
                cp.close_streams();
            },
        )
        .await
}

/// Serves the control plane on a unix socket (for `weft apply` on the same
/// machine) until `shutdown` completes. A stale socket file is replaced.
pub async fn serve_unix(
    cp: Arc<ControlPlane>,
    path: &std::path::Path,
    shutdown: impl Future<Output = ()>,
) -> Result<(), std::io::Error> {
    let _ = std::fs::remove_file(path);
    let listener = tokio::net::UnixListener::bind(path)?;
    tonic::transport::Server::builder()
        .add_service(cp.local_service())
        .serve_with_incoming_shutdown(
            tokio_stream::wrappers::UnixListenerStream::new(listener),
            shutdown,
        )
        .await
        .map_err(std::io::Error::other)
}

/// The gRPC face of a [`ControlPlane`].
#[derive(Debug, Clone)]
pub struct Service(Arc<ControlPlane>, Face);

/// Where a request arrives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Face {
    /// The TCP port nodes reach (and, in the lab, pods can reach).
    Network,
    /// The unix socket on the control plane's machine.
    Local,
}

type UpdateStream = Pin<Box<dyn Stream<Item = Result<pb::ConfigUpdate, Status>> + Send>>;

/// The files of a request, as (name, text).
fn files(files: Vec<pb::File>) -> Vec<(String, String)> {
    files.into_iter().map(|f| (f.name, f.content)).collect()
}

/// The answer to an apply or a delete.
fn answer(result: Result<(u64, Vec<Problem>), Rejected>) -> pb::ApplyResponse {
    match result {
        Ok((version, warnings)) => pb::ApplyResponse {
            version,
            problems: Vec::new(),
            warnings: warnings.iter().map(Into::into).collect(),
        },
        Err(rejected) => pb::ApplyResponse {
            version: 0,
            problems: rejected.problems.iter().map(Into::into).collect(),
            warnings: Vec::new(),
        },
    }
}

/// Files as (name, text).
type Files = Vec<(String, String)>;

/// Every document of `files`, each with `metadata.creationTimestamp` as
/// the API server sets it: given, else kept from the stored object of the
/// same key, else now (to the second); and the files' texts with the
/// stamps written in (what is stored, so a restart keeps them). Or every
/// problem.
fn stamped(store: &Store, files: &[(String, String)]) -> Result<(Vec<Document>, Files), Rejected> {
    let now = Time(Timestamp::from_second(Timestamp::now().as_second()).unwrap_or_default());
    let mut all = Vec::new();
    let mut texts = Vec::with_capacity(files.len());
    let mut problems = Vec::new();
    for (name, text) in files {
        let mut docs = match file::parse(name, text) {
            Ok(d) => d,
            Err(mut r) => {
                problems.append(&mut r.problems);
                continue;
            }
        };
        let mut stamps = Vec::with_capacity(docs.len());
        for doc in &mut docs {
            let stamp = doc.object.meta().creation_timestamp.is_none().then(|| {
                store
                    .get(&doc.key())
                    .and_then(|d| d.object.meta().creation_timestamp.clone())
                    .unwrap_or_else(|| now.clone())
            });
            if let Some(t) = &stamp {
                doc.object.meta_mut().creation_timestamp = Some(t.clone());
            }
            stamps.push(stamp);
        }
        let text = if stamps.iter().all(Option::is_none) {
            text.clone()
        } else {
            stamp_text(text, &stamps).unwrap_or_else(|| text.clone())
        };
        texts.push((name.clone(), text));
        all.append(&mut docs);
    }
    Rejected::check(problems)?;
    Ok((all, texts))
}

/// `text` with each (non-empty) document's `metadata.creationTimestamp`
/// set from `stamps`, in order; `None` if it cannot be rewritten.
fn stamp_text(text: &str, stamps: &[Option<Time>]) -> Option<String> {
    let mut out = Vec::new();
    let values = serde_yaml::Deserializer::from_str(text).filter_map(|de| {
        let v: serde_yaml::Value = serde::Deserialize::deserialize(de).ok()?;
        (!v.is_null()).then_some(v)
    });
    for (mut value, stamp) in values.zip(stamps) {
        if let Some(t) = stamp {
            let meta = value.get_mut("metadata")?.as_mapping_mut()?;
            meta.insert("creationTimestamp".into(), serde_yaml::to_value(t).ok()?);
        }
        out.push(serde_yaml::to_string(&value).ok()?);
    }
    Some(out.join("---\n"))
}

/// Every document of every file, or every problem.
fn parse_all(files: &[(String, String)]) -> Result<Vec<Document>, Rejected> {
    let mut docs = Vec::new();
    let mut problems = Vec::new();
    for (name, text) in files {
        match file::parse(name, text) {
            Ok(mut d) => docs.append(&mut d),
            Err(mut r) => problems.append(&mut r.problems),
        }
    }
    Rejected::check(problems)?;
    Ok(docs)
}

/// The name a file is applied under: its file name, without the
/// `applied-` its stored copy has.
fn source_name(file: &str) -> String {
    let name = std::path::Path::new(file)
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    match name.strip_prefix("applied-") {
        Some(rest) => rest.to_owned(),
        None => name,
    }
}

/// The YAML files directly in `dir`.
fn yaml_files(dir: &std::path::Path) -> Vec<PathBuf> {
    std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "yaml" || x == "yml"))
        .collect()
}

fn storing(path: &std::path::Path, e: &std::io::Error) -> Rejected {
    Rejected {
        problems: vec![Problem {
            file: path.display().to_string(),
            document: 0,
            path: String::new(),
            message: format!("cannot store the change: {e}"),
            kind: ProblemKind::Invalid,
        }],
    }
}

/// Rewrites the stored file at `path` without the documents of `keys`
/// (removing it when none is left); a file without them is untouched.
fn forget_documents(path: &std::path::Path, keys: &[ObjectKey]) -> Result<(), Rejected> {
    let Ok(text) = std::fs::read_to_string(path) else {
        return Ok(());
    };
    let name = path.display().to_string();
    let Ok(docs) = file::parse(&name, &text) else {
        return Ok(());
    };
    if !docs.iter().any(|d| keys.contains(&d.key())) {
        return Ok(());
    }
    let mut kept = Vec::new();
    for (doc, de) in docs
        .iter()
        .zip(serde_yaml::Deserializer::from_str(&text).filter_map(|de| {
            let v: serde_yaml::Value = serde::Deserialize::deserialize(de).ok()?;
            (!v.is_null()).then_some(v)
        }))
    {
        if !keys.contains(&doc.key()) {
            kept.push(
                serde_yaml::to_string(&de).map_err(|e| storing(path, &std::io::Error::other(e)))?,
            );
        }
    }
    if kept.is_empty() {
        std::fs::remove_file(path).map_err(|e| storing(path, &e))
    } else {
        std::fs::write(path, kept.join("---\n")).map_err(|e| storing(path, &e))
    }
}

#[tonic::async_trait]
impl Discovery for Service {
    type StreamStream = UpdateStream;

    async fn stream(
        &self,
        request: Request<Streaming<pb::NodeMessage>>,
    ) -> Result<Response<UpdateStream>, Status> {
        let caller = self.0.caller(&request).await?;
        let mut inbound = request.into_inner();
        let node = match inbound.message().await? {
            Some(pb::NodeMessage {
                kind: Some(pb::node_message::Kind::Hello(h)),
            }) if !h.node.is_empty() => h.node,
            _ => {
                return Err(Status::invalid_argument(
                    "the first message must be a Hello naming the node",
                ));
            }
        };
        if let Some(caller) = caller
            && caller != node
        {
            return Err(Status::permission_denied(format!(
                "this credential is node {caller}'s, not node {node}'s"
            )));
        }
        let (tx, rx) = mpsc::channel(1);
        let cp = self.0.clone();
        tokio::spawn(async move {
            cp.set_node(&node, |s| s.connected = true);
            let reason = feed(&cp, &node, &mut inbound, &tx).await;
            tracing::info!(%node, %reason, "config stream ended");
            cp.set_node(&node, |s| s.connected = false);
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn apply(
        &self,
        request: Request<pb::ApplyRequest>,
    ) -> Result<Response<pb::ApplyResponse>, Status> {
        if self.1 == Face::Network && self.0.security.get().is_some() {
            // Node credentials name nodes, not administrators.
            return Err(Status::permission_denied(
                "a control plane with node credentials takes `weft apply` on its unix socket only",
            ));
        }
        let request = request.into_inner();
        let replace_all = request.replace_all;
        let check = if request.strict {
            Check::Strict
        } else {
            Check::Accepting
        };
        let files = files(request.files);
        let cp = self.0.clone();
        let result = tokio::task::spawn_blocking(move || cp.apply(&files, replace_all, check))
            .await
            .map_err(|e| Status::internal(format!("apply task: {e}")))?;
        Ok(Response::new(answer(result)))
    }

    async fn delete(
        &self,
        request: Request<pb::DeleteRequest>,
    ) -> Result<Response<pb::ApplyResponse>, Status> {
        if self.1 == Face::Network && self.0.security.get().is_some() {
            return Err(Status::permission_denied(
                "a control plane with node credentials takes `weft delete` on its unix socket only",
            ));
        }
        let files = files(request.into_inner().files);
        let cp = self.0.clone();
        let result = tokio::task::spawn_blocking(move || cp.delete(&files))
            .await
            .map_err(|e| Status::internal(format!("delete task: {e}")))?;
        Ok(Response::new(answer(result)))
    }

    async fn certificate(
        &self,
        request: Request<pb::CertificateRequest>,
    ) -> Result<Response<pb::CertificateResponse>, Status> {
        let Some(node) = self.0.caller(&request).await? else {
            return Err(Status::failed_precondition(
                "this control plane issues no certificates (start it with --ca-dir and --node-credentials)",
            ));
        };
        self.0
            .certificate(&node, request.get_ref())
            .map(Response::new)
    }

    async fn nodes(
        &self,
        _: Request<pb::NodesRequest>,
    ) -> Result<Response<pb::NodesResponse>, Status> {
        Ok(Response::new(pb::NodesResponse {
            version: self.0.published().version,
            nodes: self
                .0
                .nodes()
                .into_iter()
                .map(|(node, s)| pb::NodeStatus {
                    node,
                    connected: s.connected,
                    acked_version: s.acked_version,
                    last_nack: s.last_nack,
                })
                .collect(),
        }))
    }
}

/// Sends `node` its config, one update at a time, until the stream ends.
/// Returns why it ended.
async fn feed(
    cp: &ControlPlane,
    node: &str,
    inbound: &mut Streaming<pb::NodeMessage>,
    tx: &mpsc::Sender<Result<pb::ConfigUpdate, Status>>,
) -> String {
    let mut changes = cp.published.subscribe();
    let mut closing = cp.closing.subscribe();
    if *closing.borrow_and_update() {
        return "the control plane is stopping".into();
    }
    // What the proxy holds (ACKed), as the version and its common part and
    // this node's own part: none yet, so the first update is full.
    let mut held: Option<(u64, Arc<NodeConfig>, NodeConfig)> = None;
    loop {
        let current = changes.borrow_and_update().clone();
        if current.version == 0 {
            // Nothing published yet (Kubernetes mode, still listing).
            if let Err(why) = next_change(&mut changes, &mut closing, inbound).await {
                return why;
            }
            continue;
        }
        let want = current.world.local(node, &current.common);
        let update = match &held {
            Some((_, common, local)) if Arc::ptr_eq(common, &current.common) && *local == want => {
                None
            }
            Some((base, common, local)) => {
                let delta = if Arc::ptr_eq(common, &current.common) {
                    local.delta_to(&want)
                } else {
                    cp.step((*base, common), (current.version, &current.common))
                        .and(local.delta_to(&want))
                };
                Some(wire::incremental(current.version, *base, &delta))
            }
            None => Some(wire::full(current.version, &current.common, &want)),
        };
        if let Some(update) = update {
            if tx.send(Ok(update)).await.is_err() {
                return "the proxy went away".into();
            }
            let answer = tokio::select! {
                _ = closing.changed() => return "the control plane is stopping".into(),
                m = inbound.message() => m,
            };
            match answer {
                Ok(Some(pb::NodeMessage {
                    kind: Some(pb::node_message::Kind::Ack(a)),
                })) if a.version == current.version => {
                    cp.set_node(node, |s| s.acked_version = a.version);
                    held = Some((current.version, current.common.clone(), want));
                }
                Ok(Some(pb::NodeMessage {
                    kind: Some(pb::node_message::Kind::Nack(n)),
                })) => {
                    tracing::warn!(%node, version = n.version, reason = %n.reason, "the proxy refused a config");
                    cp.set_node(node, |s| s.last_nack = n.reason.clone());
                    // It keeps its last good config. A refused delta is
                    // retried at once as a full snapshot; a refused full
                    // snapshot waits for the next change.
                    let was_full = held.is_none();
                    held = None;
                    if was_full
                        && let Err(why) = next_change(&mut changes, &mut closing, inbound).await
                    {
                        return why;
                    }
                    continue;
                }
                Ok(Some(other)) => return format!("unexpected message {other:?}"),
                Ok(None) => return "the proxy closed the stream".into(),
                Err(e) => return format!("stream error: {e}"),
            }
        }
        if let Err(why) = next_change(&mut changes, &mut closing, inbound).await {
            return why;
        }
    }
}

/// Waits for the next published change; or why the stream must end: the
/// control plane stops, or the proxy goes away or says something out of
/// turn.
async fn next_change(
    changes: &mut watch::Receiver<Published>,
    closing: &mut watch::Receiver<bool>,
    inbound: &mut Streaming<pb::NodeMessage>,
) -> Result<(), String> {
    tokio::select! {
        _ = closing.changed() => Err("the control plane is stopping".into()),
        changed = changes.changed() => changed.map_err(|_| "the control plane stopped".into()),
        msg = inbound.message() => Err(match msg {
            Ok(None) => "the proxy closed the stream".into(),
            Err(e) => format!("stream error: {e}"),
            Ok(Some(other)) => format!("unexpected message {other:?}"),
        }),
    }
}
