//! weft's node proxy: one per node, fed by eBPF capture.
//!
//! ```text
//!  meshed pod ──tc sk_assign──► :15001 outbound ──► resolve service → endpoint
//!        same node ──────────────────────────────┐
//!        other node: HBONE stream (hbone::pool) ═╪══► :15008 inbound::hbone on the other node
//!  unmeshed / plaintext ──► :15006 inbound::plain┤    (TLS, SPIFFE ID) ─► deliver there
//!                                                └─► inbound::deliver: local pod? policy,
//!                                                    connect as the caller, relay
//!  :15000 admin (/ready /metrics /config_dump)   :15020 /metrics
//! ```
//!
//! [`run`] sets up capture ([`capture`]), binds the transparent listeners
//! ([`transport`]) and gives each listener its stack: every accepted
//! connection gets a [`conn::Conn`] context (whose drop records it) and
//! goes one way through [`outbound`] or [`inbound`]. The shared view is
//! [`state`]; config comes from a file and from the control plane
//! ([`update`], [`discovery`]); certificates from the control plane's CA
//! ([`identity`]); mTLS is [`tls`], HBONE's HTTP/2 [`hbone`],
//! authorization [`policy`].

pub mod admin;
pub mod admit;
pub mod balance;
pub mod capture;
pub mod config;
pub mod conn;
pub mod detect;
pub mod discovery;
pub mod hbone;
pub mod http;
pub mod identity;
pub mod inbound;
pub mod metrics;
pub mod outbound;
pub mod policy;
pub mod relay;
pub mod route;
pub mod state;
pub mod telemetry;
pub mod tls;
pub mod transport;
pub mod update;

use std::future::Future;
use std::io;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::mpsc;

use crate::config::ProxyConfig;
use crate::conn::Conn;
use crate::inbound::hbone::ServerTls;
use crate::metrics::Direction;
use crate::state::{Shared, apply};
use crate::transport::accepted;

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
/// meshed pod on this node. `otel` is what the process's `OTEL_*`
/// variables say (trace export when the mesh names no receiver).
pub async fn run(
    config: ProxyConfig,
    mut updates: mpsc::Receiver<update::Update>,
    ca: Option<discovery::client::ControlPlaneClient>,
    otel: telemetry::Env,
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
    let shared = Arc::new(Shared::new(
        config,
        capture,
        enrolled.local_addresses.clone(),
        ca.is_some(),
        otel,
    ));
    let trace_export = tokio::spawn(telemetry::run(shared.tracer.clone()));
    let identity_task = ca.map(|client| {
        tokio::spawn(identity::run(
            client,
            shared.accounts(),
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
    let outbound_stack = Arc::new(outbound::Stack::new(shared.clone()));
    tasks.spawn(outbound::sweep(outbound_stack.clone(), shared.clone()));
    let stacks = [
        (outbound, Stack::Outbound(outbound_stack)),
        (inbound, Stack::Inbound),
        (tunnel, Stack::Tunnel(Arc::new(ServerTls::default()))),
    ];
    for (listener, stack) in stacks {
        tasks.spawn(accept(listener, shared.clone(), conn_tx.clone(), stack));
    }
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
    trace_export.abort();
    Ok(())
}

/// What a listener hands its connections to, with what that needs.
#[derive(Debug, Clone)]
enum Stack {
    /// From local meshed pods: the HBONE pool, upstream HTTP connections
    /// and endpoint loads.
    Outbound(Arc<outbound::Stack>),
    /// Plaintext to local meshed pods.
    Inbound,
    /// HBONE from other nodes; the TLS configs per identity are cached.
    Tunnel(Arc<ServerTls>),
}

/// Accepts connections until the task is aborted, and runs each to its end
/// in a task of its own.
async fn accept(listener: TcpListener, shared: Arc<Shared>, alive: mpsc::Sender<()>, stack: Stack) {
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(x) => x,
            Err(e) => {
                tracing::warn!(?stack, error = %e, "accept failed");
                continue;
            }
        };
        let Some((stream, orig)) = accepted(stream, peer) else {
            continue;
        };
        let shared = shared.clone();
        let alive = alive.clone();
        let stack = stack.clone();
        tokio::spawn(async move {
            match stack {
                Stack::Outbound(stack) => {
                    let conn = Conn::new(shared, Direction::Outbound, peer, orig.0, alive);
                    outbound::handle(conn, stream, stack).await;
                }
                Stack::Inbound => {
                    let conn = Conn::new(shared, Direction::Inbound, peer, orig.0, alive);
                    inbound::plain::handle(conn, stream).await;
                }
                // Each of its streams is a connection of its own.
                Stack::Tunnel(tls) => {
                    inbound::hbone::handle(stream, peer, orig.0, shared, tls, alive).await;
                }
            }
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
