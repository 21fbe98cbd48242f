//! weft's node proxy: one per node, fed by eBPF capture.
//!
//! ```text
//!  meshed pod ──tc sk_assign──► :15001 outbound ──► resolve service → endpoint
//!        same node: destination policy, connect ─┐
//!        other node: HBONE stream (pooled mTLS) ═╪══► :15008 tunnel on the other node
//!  unmeshed / plaintext ──► :15006 inbound ──────┤    (TLS, SPIFFE ID, policy)
//!                                                └─► relay bytes to the pod
//!  :15000 admin (/ready /metrics /config_dump)   :15020 /metrics
//! ```
//!
//! [`run`] sets up capture ([`capture`]), binds the transparent listeners
//! ([`transport`]), and hands each accepted connection to [`outbound`],
//! [`inbound`] or [`tunnel`]. Config comes from a file and from the control
//! plane ([`update`], [`discovery`]); certificates from the control plane's
//! CA ([`identity`]); mTLS is [`tls`], authorization [`policy`].

pub mod admin;
pub mod capture;
pub mod config;
pub mod discovery;
pub mod hbone;
pub mod identity;
pub mod inbound;
pub mod metrics;
pub mod outbound;
pub mod policy;
pub mod relay;
pub mod tls;
pub mod transport;
pub mod tunnel;
pub mod update;

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;

use crate::config::{ProxyConfig, Timeouts};
use crate::discovery::Snapshot;
use crate::metrics::Metrics;

/// How long shutdown waits for open connections to finish.
const DRAIN: Duration = Duration::from_secs(5);

/// Why the proxy could not start.
#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    /// eBPF capture could not be set up.
    #[error("capture: {0}")]
    Capture(#[from] weft_redirect::CaptureError),
    /// A listener could not be bound.
    #[error("cannot listen on port {port} ({what}): {source}")]
    Bind {
        /// Which listener.
        what: &'static str,
        /// The port.
        port: u16,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// A start-up task failed.
    #[error("start-up: {0}")]
    Startup(String),
}

/// State shared by every connection and the admin server.
#[derive(Debug)]
pub struct Shared {
    snapshot: RwLock<Arc<Snapshot>>,
    generation: AtomicU64,
    local_addresses: RwLock<std::collections::BTreeSet<std::net::Ipv4Addr>>,
    /// Connection metrics.
    pub metrics: Metrics,
    capture: Mutex<Option<weft_redirect::Capture>>,
    /// This node's workload certificates.
    pub identities: Arc<identity::Identities>,
    /// The service accounts of this node's meshed pods (what
    /// [`identity::run`] keeps certificates for).
    accounts: tokio::sync::watch::Sender<std::collections::BTreeSet<identity::Account>>,
    /// Whether pods on other nodes are reached over HBONE (mTLS): on when
    /// the proxy gets certificates from a CA.
    pub mtls: bool,
    /// Outbound HBONE connections.
    pool: tunnel::Pool,
    /// Inbound HBONE TLS configs.
    server_tls: tunnel::ServerTls,
}

impl Shared {
    /// The current config snapshot.
    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.snapshot
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// How many configs have been applied (1 at start).
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    /// Whether `ip` is an address of this node (the proxy's netns).
    pub fn is_local(&self, ip: std::net::Ipv4Addr) -> bool {
        self.local_addresses
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .contains(&ip)
    }

    /// The identity of a workload, as this node can vouch for it: from the
    /// certificate its service account holds, or in the trust domain of the
    /// certificates held. `None` without a CA (no identities at all).
    pub fn identity_of(&self, w: &config::Workload) -> Option<tls::SpiffeId> {
        let account = (w.namespace.clone(), w.service_account.clone());
        let trust_domain = match self.identities.get(&account) {
            Some(c) => return tls::SpiffeId::parse(&c.spiffe_id).ok(),
            None => self.identities.trust_domain()?,
        };
        Some(tls::SpiffeId::new(&trust_domain, &account))
    }

    /// `SO_MARK` of the proxy's sockets.
    pub fn socket_mark(&self) -> u32 {
        self.snapshot().config().capture.proxy_socket_mark
    }

    /// The relay timeouts.
    pub fn timeouts(&self) -> Timeouts {
        self.snapshot().config().timeouts.clone()
    }

    /// Metrics text, with the eBPF counters when capture is up.
    pub fn render_metrics(&self) -> String {
        let decisions = {
            let capture = self.capture.lock().unwrap_or_else(|p| p.into_inner());
            capture.as_ref().and_then(|c| match c.counters() {
                Ok(cs) => Some(cs.map(|(d, n)| (d.name(), n))),
                Err(e) => {
                    tracing::warn!(error = %e, "reading capture counters");
                    None
                }
            })
        };
        let mut out = self.metrics.render(decisions.as_ref().map(|d| &d[..]));
        let ids = &self.identities;
        for (name, help, value) in [
            (
                "weft_identity_certificates_issued_total",
                "Workload certificates received from the CA",
                ids.issued.load(Ordering::Relaxed),
            ),
            (
                "weft_identity_certificate_failures_total",
                "Certificate requests that failed (the valid certificate stays)",
                ids.failures.load(Ordering::Relaxed),
            ),
        ] {
            out.push_str(&format!(
                "# HELP {name} {help}\n# TYPE {name} counter\n{name} {value}\n"
            ));
        }
        out
    }

    /// Tells the identity manager which service accounts have meshed pods
    /// here now.
    fn track_accounts(&self, config: &ProxyConfig) {
        let accounts: std::collections::BTreeSet<identity::Account> = config
            .local_workloads()
            .filter(|w| w.meshed)
            .map(|w| (w.namespace.clone(), w.service_account.clone()))
            .collect();
        self.accounts.send_if_modified(|a| {
            let changed = *a != accounts;
            *a = accounts;
            changed
        });
    }
}

async fn bind_transparent(
    what: &'static str,
    port: u16,
    mark: u32,
) -> Result<TcpListener, ProxyError> {
    transport::transparent_listener(port, mark).map_err(|source| ProxyError::Bind {
        what,
        port,
        source,
    })
}

async fn bind_plain(what: &'static str, port: u16) -> Result<TcpListener, ProxyError> {
    transport::plain_listener(port)
        .await
        .map_err(|source| ProxyError::Bind { what, port, source })
}

/// Runs the proxy until `shutdown` completes, then stops accepting and
/// gives open connections [`DRAIN`] to finish. Each config from `updates`
/// is applied in turn ([`apply`]); one that cannot be applied is refused and
/// the last good one stays.
/// With `ca`, it keeps a certificate for each service account that has a
/// meshed pod on this node.
pub async fn run(
    config: ProxyConfig,
    mut updates: mpsc::Receiver<update::Update>,
    ca: Option<discovery::client::ControlPlaneClient>,
    shutdown: impl Future<Output = ()>,
) -> Result<(), ProxyError> {
    tracing::info!(config = %serde_json::to_string(&config).unwrap_or_default(), "starting");
    let capture_config = config.clone();
    let (capture, enrolled) = tokio::task::spawn_blocking(move || capture::setup(&capture_config))
        .await
        .map_err(|e| ProxyError::Startup(format!("capture setup task: {e}")))??;
    release_startup_memory();
    tracing::info!(
        origin = %enrolled
            .origin
            .map_or_else(|| "none (attach: external, no eBPF)".to_owned(), |o| format!("{o:?}")),
        pins = %config.capture.pin_dir.display(),
        interfaces = ?enrolled.interfaces,
        removed = ?enrolled.removed,
        "capture in place"
    );

    let l = config.listeners.clone();
    let mark = config.capture.proxy_socket_mark;
    let outbound = bind_transparent("outbound", l.outbound, mark).await?;
    let inbound = bind_transparent("inbound", l.inbound, mark).await?;
    let tunnel = bind_transparent("tunnel (HBONE)", l.tunnel, mark).await?;
    let admin = bind_plain("admin", l.admin).await?;
    let metrics_listener = bind_plain("metrics", l.metrics).await?;

    // The two sources of the running config (see [`update`]).
    let mut file = config.clone();
    let mut mesh: Option<update::Mesh> = None;
    let shared = Arc::new(Shared {
        snapshot: RwLock::new(Arc::new(Snapshot::new(config))),
        generation: AtomicU64::new(1),
        local_addresses: RwLock::new(enrolled.local_addresses.clone()),
        metrics: Metrics::default(),
        capture: Mutex::new(capture),
        identities: Arc::default(),
        accounts: tokio::sync::watch::channel(Default::default()).0,
        mtls: ca.is_some(),
        pool: tunnel::Pool::default(),
        server_tls: tunnel::ServerTls::default(),
    });
    shared.track_accounts(&shared.snapshot().config().clone());
    let identity_task = ca.map(|client| {
        tokio::spawn(identity::run(
            client,
            shared.accounts.subscribe(),
            shared.identities.clone(),
        ))
    });
    let ready = Arc::new(AtomicBool::new(false));
    let (conn_tx, mut conn_rx) = mpsc::channel::<()>(1);

    let mut tasks = tokio::task::JoinSet::new();
    tasks.spawn(admin::serve(
        admin,
        shared.clone(),
        ready.clone(),
        admin::Endpoints::Admin,
    ));
    tasks.spawn(admin::serve(
        metrics_listener,
        shared.clone(),
        ready.clone(),
        admin::Endpoints::Metrics,
    ));
    tasks.spawn(accept(
        outbound,
        shared.clone(),
        conn_tx.clone(),
        Kind::Outbound,
    ));
    tasks.spawn(accept(
        inbound,
        shared.clone(),
        conn_tx.clone(),
        Kind::Inbound,
    ));
    tasks.spawn(accept(
        tunnel,
        shared.clone(),
        conn_tx.clone(),
        Kind::Tunnel,
    ));
    drop(conn_tx);
    ready.store(true, Ordering::Release);
    tracing::info!(
        outbound = l.outbound,
        inbound = l.inbound,
        tunnel = l.tunnel,
        mtls = shared.mtls,
        admin = l.admin,
        metrics = l.metrics,
        "ready"
    );

    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            () = &mut shutdown => break,
            Some(u) = updates.recv() => {
                let outcome = match u.change {
                    update::Change::File(next) => {
                        let outcome = apply(&shared, update::compose(&next, mesh.as_ref())).await;
                        if outcome.is_ok() {
                            file = *next;
                        }
                        outcome
                    }
                    update::Change::Mesh(next) => {
                        let outcome = apply(&shared, update::compose(&file, Some(&next))).await;
                        if outcome.is_ok() {
                            mesh = Some(next);
                        }
                        outcome
                    }
                };
                if let Some(done) = u.done {
                    let _ = done.send(outcome);
                }
            }
        }
    }
    ready.store(false, Ordering::Release);
    tasks.abort_all();
    if let Some(t) = identity_task {
        t.abort();
    }
    tracing::info!(
        "shutting down: no new connections; draining open ones for up to {} s",
        DRAIN.as_secs()
    );
    // Every connection task holds a sender; recv() ends when all are gone.
    if tokio::time::timeout(DRAIN, conn_rx.recv()).await.is_err() {
        tracing::warn!("connections still open after the drain period; closing them");
    }
    Ok(())
}

#[derive(Debug, Clone, Copy)]
enum Kind {
    Outbound,
    Inbound,
    Tunnel,
}

async fn accept(listener: TcpListener, shared: Arc<Shared>, alive: mpsc::Sender<()>, kind: Kind) {
    loop {
        let (stream, peer): (TcpStream, SocketAddr) = match listener.accept().await {
            Ok(x) => x,
            Err(e) => {
                tracing::warn!(?kind, error = %e, "accept failed");
                continue;
            }
        };
        let shared = shared.clone();
        let alive = alive.clone();
        tokio::spawn(async move {
            match kind {
                Kind::Outbound => outbound::handle(stream, peer, shared).await,
                Kind::Inbound => inbound::handle(stream, peer, shared).await,
                // Its streams outlive this task; each holds its own sender.
                Kind::Tunnel => tunnel::handle(stream, peer, shared, alive.clone()).await,
            }
            drop(alive);
        });
    }
}

/// Loading eBPF parses the kernel's BTF (megabytes) once; give those pages
/// back to the system instead of keeping them in the allocator's free lists,
/// so an idle proxy stays small.
fn release_startup_memory() {
    #[cfg(target_env = "gnu")]
    {
        #[expect(unsafe_code, reason = "malloc_trim(3) has no safe wrapper")]
        // SAFETY: malloc_trim only releases free heap memory; no pointer is
        // involved.
        unsafe {
            libc::malloc_trim(0);
        }
    }
}

/// Applies a new config: reconciles capture with it (enrolls new pods'
/// interfaces, unenrolls gone ones, updates the meshed set), then swaps the
/// snapshot that new connections use. Open connections keep going. A config
/// that changes what only a restart can change, or whose capture cannot be
/// reconciled, is refused: the last good config stays.
pub async fn apply(shared: &Shared, next: ProxyConfig) -> Result<u64, String> {
    let current = shared.snapshot();
    let now = current.config();
    let generation = shared.generation();
    if next.listeners != now.listeners
        || next.capture.pin_dir != now.capture.pin_dir
        || next.node != now.node
        || next.control_plane != now.control_plane
    {
        let reason = "node, listeners, capture.pinDir and controlPlane change only with a restart"
            .to_owned();
        tracing::error!(generation, %reason, "config refused; keeping the current config");
        return Err(reason);
    }
    // Capture depends only on this node's own workloads and the capture
    // settings: when those did not change, swap the snapshot alone.
    if capture_inputs(now) == capture_inputs(&next) {
        *shared.snapshot.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(Snapshot::new(next));
        shared.track_accounts(shared.snapshot().config());
        let generation = shared.generation.fetch_add(1, Ordering::AcqRel) + 1;
        tracing::info!(generation, "config applied (capture unchanged)");
        return Ok(generation);
    }
    let capture_config = next.clone();
    let outcome = tokio::task::spawn_blocking(move || capture::setup(&capture_config)).await;
    match outcome {
        Ok(Ok((capture, enrolled))) => {
            *shared.capture.lock().unwrap_or_else(|p| p.into_inner()) = capture;
            *shared
                .local_addresses
                .write()
                .unwrap_or_else(|p| p.into_inner()) = enrolled.local_addresses.clone();
            *shared.snapshot.write().unwrap_or_else(|p| p.into_inner()) =
                Arc::new(Snapshot::new(next));
            shared.track_accounts(shared.snapshot().config());
            let generation = shared.generation.fetch_add(1, Ordering::AcqRel) + 1;
            tracing::info!(
                generation,
                interfaces = ?enrolled.interfaces,
                removed = ?enrolled.removed,
                "config applied"
            );
            Ok(generation)
        }
        Ok(Err(e)) => {
            tracing::error!(
                generation,
                error = %e,
                "config refused: capture could not be reconciled; keeping the current config"
            );
            Err(format!("capture could not be reconciled: {e}"))
        }
        Err(e) => {
            tracing::error!(
                generation,
                error = %e,
                "config refused: the capture task failed; keeping the current config"
            );
            Err(format!("the capture task failed: {e}"))
        }
    }
}

/// What capture set-up reads from a config.
fn capture_inputs(
    c: &ProxyConfig,
) -> (&config::CaptureSpec, Vec<(std::net::Ipv4Addr, bool, bool)>) {
    let mut local: Vec<_> = c
        .local_workloads()
        .map(|w| (w.ip, w.meshed, w.fast_path))
        .collect();
    local.sort();
    (&c.capture, local)
}
