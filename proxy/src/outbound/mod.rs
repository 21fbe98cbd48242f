//! Outbound (:15001): connections from local meshed pods. The original
//! destination is resolved (a service address picks an endpoint), then:
//!
//! ```text
//!  meshed pod on another node, mTLS on ─► HBONE stream (hbone::pool); the
//!                                         destination node delivers it
//!  meshed pod on this node ─────────────► inbound::deliver, here: the
//!                                         destination's checks and policy
//!  anything else ───────────────────────► a plain connection
//! ```

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;

use tokio::net::TcpStream;

use crate::balance::Balancer;
use crate::config::Workload;
use crate::conn::Conn;
use crate::detect::{Protocol, detect};
use crate::hbone::pool::{self, Pool, TunnelError};
use crate::http::upstream::{Upstreams, Version};
use crate::http::{self, Router};
use crate::identity::SpiffeId;
use crate::inbound::{Caller, Delivery, deliver};
use crate::metrics::Failure;
use crate::relay::{TcpSide, relay};
use crate::state::{Destination, Shared, Snapshot};
use crate::transport::{connect, reset};

/// How the connection leaves this proxy.
enum Path {
    /// HBONE to the destination's node.
    Tunnel {
        source: Box<Workload>,
        dest: Box<Workload>,
    },
    /// To a meshed pod on this node, as `caller`.
    Local { caller: Option<SpiffeId> },
    /// A plain connection.
    Direct,
}

/// What the outbound listener's connections share.
#[derive(Debug)]
pub struct Stack {
    /// HBONE connections to other nodes.
    pub tunnels: Arc<Pool>,
    /// Upstream HTTP connections (L7).
    pub upstreams: Arc<Upstreams>,
    /// Endpoint loads (L4 connections and L7 requests).
    pub balancer: Arc<Balancer>,
    /// The retry budget of L7 requests.
    pub budget: Arc<http::retry::Budget>,
}

impl Stack {
    /// A stack whose L7 requests and L4 connections share `tunnels`.
    pub fn new(shared: Arc<Shared>) -> Stack {
        let tunnels = Arc::new(Pool::default());
        Stack {
            upstreams: Arc::new(Upstreams::new(shared, tunnels.clone())),
            tunnels,
            balancer: Arc::new(Balancer::default()),
            budget: Arc::default(),
        }
    }
}

/// Handles one accepted outbound connection to its end: at L7 when its
/// destination is a service port with routes (or that says it speaks
/// HTTP) and the client speaks HTTP; at L4 otherwise.
pub async fn handle(conn: Conn, client: TcpStream, stack: Arc<Stack>) {
    // One snapshot for the connection's decisions, L7 or L4; let go
    // before bytes flow, so a long connection does not keep old configs.
    let snapshot = conn.shared.snapshot();
    let l7 = {
        let source = match conn.peer {
            SocketAddr::V4(p) => snapshot.workload(*p.ip()),
            SocketAddr::V6(_) => None,
        };
        match (snapshot.destination(conn.orig), source) {
            (
                Destination::Service {
                    http: Some(port), ..
                },
                Some(source),
            ) => Some((
                port.clone(),
                Arc::new(source.clone()),
                snapshot.config().timeouts.detect,
            )),
            _ => None,
        }
    };
    let Some((port, source, detect_timeout)) = l7 else {
        return l4(conn, client, &stack, snapshot).await;
    };
    let version = match detect(&client, detect_timeout).await {
        Ok(Protocol::Http1) => Version::Http1,
        Ok(Protocol::Http2) => Version::Http2,
        Ok(Protocol::Opaque) => {
            conn.shared.metrics.detected(Protocol::Opaque);
            tracing::info!(peer = %conn.peer, orig = %conn.orig, service = %port.service,
                "not HTTP on an L7 port: relayed at L4");
            return l4(conn, client, &stack, snapshot).await;
        }
        Err(e) => {
            tracing::debug!(peer = %conn.peer, orig = %conn.orig, error = %e, "detecting the protocol failed");
            let mut conn = conn;
            conn.refuse(Failure::Relay);
            return reset(client);
        }
    };
    drop(snapshot);
    let mut conn = conn;
    conn.shared.metrics.detected(match version {
        Version::Http1 => Protocol::Http1,
        Version::Http2 => Protocol::Http2,
    });
    conn.labels.source = source.key();
    conn.labels.service = port.service.clone();
    let principal = conn.shared.identity_of(&source);
    let router = Router {
        orig: conn.orig,
        port,
        source,
        upstreams: stack.upstreams.clone(),
        balancer: stack.balancer.clone(),
        version,
        budget: stack.budget.clone(),
        principal,
        counted: Arc::default(),
    };
    http::serve(conn, client, version, router).await;
}

/// The L4 path: the destination (a service endpoint picked by P2C on open
/// connections, or the address itself), then HBONE, the destination's
/// checks here, or a plain connection; bytes relayed as they are.
async fn l4(mut conn: Conn, client: TcpStream, stack: &Stack, snapshot: Arc<Snapshot>) {
    let shared = conn.shared.clone();
    let peer = conn.peer;
    let peer_ip = match peer {
        SocketAddr::V4(p) => Some(*p.ip()),
        SocketAddr::V6(_) => None,
    };
    let config = snapshot.config();
    let source = peer_ip.and_then(|ip| snapshot.workload(ip)).cloned();
    // The endpoint counts the connection as open while `conn` holds it.
    let target = match snapshot.destination(conn.orig) {
        Destination::Service {
            service,
            target_port,
            ..
        } => {
            conn.labels.service = service.key();
            match stack.balancer.connection(&service.endpoints, target_port) {
                Some(in_use) => {
                    let addr = in_use.addr;
                    conn.endpoint = Some(in_use);
                    addr
                }
                None => {
                    tracing::info!(%peer, orig = %conn.orig, service = %service.key(),
                        "outbound connection refused: the service has no endpoints");
                    conn.refuse(Failure::NoEndpoints);
                    return reset(client);
                }
            }
        }
        Destination::Address(a) => a,
    };
    let workload = snapshot.workload(*target.ip());
    let dest = workload.filter(|w| w.meshed).cloned();
    if let Some(s) = &source {
        conn.labels.source = s.key();
    }
    if let Some(w) = workload {
        conn.labels.destination = w.key();
    }
    let path = match (dest, source) {
        (Some(dest), Some(source)) if shared.mtls && dest.node != config.node => Path::Tunnel {
            source: Box::new(source),
            dest: Box::new(dest),
        },
        (Some(dest), source) if dest.node == config.node => {
            // Same node: the destination's policy, applied here, with the
            // caller's identity as its certificate names it. With mTLS on,
            // a caller whose certificate has not arrived yet waits for it,
            // and is refused without one: policy never sees a known pod as
            // anonymous.
            let caller = match &source {
                Some(s) if shared.mtls => {
                    let account = (s.namespace.clone(), s.service_account.clone());
                    let cert = shared
                        .identities
                        .wait_for(&account, config.timeouts.connect)
                        .await;
                    match cert.and_then(|c| SpiffeId::parse(&c.spiffe_id).ok()) {
                        Some(id) => Some(id),
                        None => {
                            tracing::info!(%peer, source = %s.key(),
                                "outbound connection refused: no certificate for its source yet, so policy cannot know it");
                            conn.refuse(Failure::NoCertificate);
                            return reset(client);
                        }
                    }
                }
                Some(s) => shared.identity_of(s),
                None => None,
            };
            Path::Local { caller }
        }
        (Some(dest), None) if shared.mtls => {
            tracing::info!(%peer, destination = %dest.key(),
                "outbound connection refused: its source is not a known workload, so it has no identity to tunnel as");
            conn.refuse(Failure::NoCertificate);
            return reset(client);
        }
        _ => Path::Direct,
    };
    let timeouts = config.timeouts.clone();
    let mark = config.capture.proxy_socket_mark;
    drop(snapshot);
    // The destination sees the pod's own address (unless it is on this
    // node's own addresses, whose replies would not pass capture).
    let from = shared.connect_from(peer_ip, *target.ip());

    match path {
        Path::Tunnel { source, dest } => {
            let Some(source_ip) = peer_ip else {
                return reset(client);
            };
            let (stream, _slot) = match pool::open(
                &stack.tunnels,
                &shared,
                &source,
                &dest,
                target,
                source_ip,
                None,
            )
            .await
            {
                Ok(s) => s,
                Err(e) => {
                    let failure = match e {
                        TunnelError::NoCertificate(..) => Failure::NoCertificate,
                        _ => Failure::Tunnel,
                    };
                    if e.endpoint_failed() {
                        conn.endpoint_failed();
                    }
                    tracing::info!(%peer, %target, destination = %dest.key(), error = %e,
                            "outbound HBONE stream failed");
                    conn.refuse(failure);
                    return reset(client);
                }
            };
            conn.labels.mtls = true;
            conn.labels.source_principal = shared
                .identity_of(&source)
                .map(|i| i.to_string())
                .unwrap_or_default();
            let counters = conn.relaying();
            let result = stream
                .relay(client, TcpSide::Client, timeouts.idle, &counters)
                .await;
            conn.relayed(result);
        }
        Path::Local { caller } => {
            if let Some(c) = &caller {
                conn.labels.source_principal = c.to_string();
            }
            deliver(
                conn,
                Caller::Tcp(client),
                Delivery {
                    http: false,
                    target,
                    principal: caller.as_ref(),
                    runs_as: None,
                    from,
                },
            )
            .await;
        }
        Path::Direct => {
            let server = match connect(target, timeouts.connect, mark, from).await {
                Ok(s) => s,
                Err(e) => {
                    tracing::info!(%peer, orig = %conn.orig, %target, error = %e, "outbound connect failed");
                    conn.refuse(Failure::Connect);
                    return reset(client);
                }
            };
            let counters = conn.relaying();
            let result = relay(client, server, timeouts.idle, &counters).await;
            conn.relayed(result);
        }
    }
}

/// How often state kept per endpoint or per source pod is swept.
const SWEEP: std::time::Duration = std::time::Duration::from_secs(30);

/// Forgets, every [`SWEEP`], the endpoint loads and the idle upstream
/// connections of pods and endpoints the current config no longer has, so
/// a node whose pods come and go does not keep state for all it ever saw.
pub async fn sweep(stack: Arc<Stack>, shared: Arc<Shared>) {
    let mut tick = tokio::time::interval(SWEEP);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let snapshot = shared.snapshot();
        let config = snapshot.config();
        let endpoints: std::collections::HashSet<Ipv4Addr> = config
            .services
            .iter()
            .flat_map(|s| s.endpoints.iter().copied())
            .collect();
        stack.balancer.retain(|a| endpoints.contains(a.ip()));
        stack.upstreams.retain(|source, endpoint| {
            snapshot.workload(source).is_some() && endpoints.contains(endpoint.ip())
        });
    }
}
