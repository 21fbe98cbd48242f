//! The destination side: connections for meshed pods on this node.
//!
//! ```text
//!  :15006 plaintext (unmeshed callers)  ─► plain ─┐
//!  :15008 HBONE (other nodes' proxies)  ─► hbone ─┼─► deliver: a meshed pod here?
//!  outbound, same node (source proxy = ─────────────┘     authorization policy
//!    destination proxy)                                   connect as the caller
//!                                                         relay, record
//! ```
//!
//! Every way into a local pod ends in [`deliver`], so the destination's
//! checks are written once: the target must be a meshed pod on this node
//! (of the identity the caller was promised, for HBONE), the pod's
//! authorization policies must admit the caller, and the pod is reached
//! from the caller's own address.

pub mod hbone;
pub mod l7;
pub mod plain;

use std::io;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::time::Duration;

use http::StatusCode;
use tokio::net::TcpStream;

use crate::conn::Conn;
use crate::hbone::Incoming;
use crate::identity::{Account, SpiffeId};
use crate::metrics::{Direction, Failure};
use crate::policy;
use crate::relay::{Moved, TcpSide, relay};
use crate::state::Shared;
use crate::transport::{connect, reset};

/// The caller's end of a delivery.
#[derive(Debug)]
pub enum Caller {
    /// A captured TCP connection (plaintext inbound, or a pod on this node).
    Tcp(TcpStream),
    /// An HBONE CONNECT stream, not yet answered.
    Tunnel(Incoming),
}

impl Caller {
    /// Refuses: a TCP caller is reset, a stream answered with the status
    /// that says why.
    async fn refuse(self, why: Failure) {
        match self {
            Caller::Tcp(tcp) => reset(tcp),
            Caller::Tunnel(req) => req.refuse(status(why).as_u16()).await,
        }
    }

    /// Whether the caller gave up before it was answered.
    fn is_gone(&self) -> bool {
        match self {
            Caller::Tcp(_) => false,
            Caller::Tunnel(req) => req.is_reset(),
        }
    }

    /// The caller's byte stream: the socket, or the stream once answered
    /// 200.
    async fn accept(self, conn: &Conn) -> io::Result<Accepted> {
        match self {
            Caller::Tcp(tcp) => Ok(Accepted::Tcp(tcp)),
            Caller::Tunnel(req) => {
                let stream = req.accept().await?;
                conn.shared.metrics.tunnel_stream(Direction::Inbound);
                Ok(Accepted::Tunnel(stream))
            }
        }
    }

    /// Relays between the caller and `server` until both ways end.
    async fn relay(self, conn: &mut Conn, server: TcpStream, idle: Duration) -> io::Result<Moved> {
        match self {
            Caller::Tcp(client) => {
                let counters = conn.relaying();
                relay(client, server, idle, &counters).await
            }
            Caller::Tunnel(req) => {
                let stream = req.accept().await?;
                conn.shared.metrics.tunnel_stream(Direction::Inbound);
                let counters = conn.relaying();
                stream.relay(server, TcpSide::Server, idle, &counters).await
            }
        }
    }
}

/// An admitted caller's byte stream.
#[derive(Debug)]
enum Accepted {
    Tcp(TcpStream),
    Tunnel(crate::hbone::Stream),
}

/// The HTTP status an HBONE stream is refused with.
fn status(why: Failure) -> StatusCode {
    match why {
        Failure::NotLocal => StatusCode::MISDIRECTED_REQUEST,
        Failure::Denied => StatusCode::FORBIDDEN,
        Failure::BadRequest => StatusCode::BAD_REQUEST,
        _ => StatusCode::SERVICE_UNAVAILABLE,
    }
}

/// Who is delivered where.
#[derive(Debug)]
pub struct Delivery<'a> {
    /// The pod and port.
    pub target: SocketAddrV4,
    /// The caller's identity as mTLS or this node's certificates vouch for
    /// it; `None`: a plaintext caller, whom only rules without principals
    /// or namespaces can admit.
    pub principal: Option<&'a SpiffeId>,
    /// The identity the target must run as (an HBONE connection
    /// authenticated the destination as that identity).
    pub runs_as: Option<&'a Account>,
    /// The pod is reached from this address (the caller's own), or from
    /// the node's when `None`.
    pub from: Option<Ipv4Addr>,
}

/// A delivery the destination's checks let through.
#[derive(Debug)]
pub struct Admitted {
    /// The destination pod, `namespace/name`.
    pub destination: String,
    /// The connect and idle timeouts, and the proxy's socket mark.
    pub timeouts: crate::config::Timeouts,
    /// `SO_MARK` of the proxy's sockets.
    pub mark: u32,
    /// The pod's policies look at HTTP: no decision was made here; each
    /// request is decided on its own ([`l7::serve`]).
    pub per_request: bool,
}

/// Why the destination's checks refused a delivery.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// The target is not a meshed pod on this node (of the identity
    /// expected).
    NotLocal,
    /// An authorization policy refused it (the deciding policy).
    Denied(String),
}

impl Refusal {
    /// The failure it counts as.
    pub fn failure(&self) -> Failure {
        match self {
            Refusal::NotLocal => Failure::NotLocal,
            Refusal::Denied(_) => Failure::Denied,
        }
    }
}

/// The destination's checks for `d`, with the current config: the target
/// is a meshed pod here (of the identity expected), and its authorization
/// policies admit the caller. Every way into a local pod asks this (L7
/// upstream connections too).
pub fn admit(shared: &Shared, direction: Direction, d: &Delivery<'_>) -> Result<Admitted, Refusal> {
    let snapshot = shared.snapshot();
    let config = snapshot.config();
    let local = snapshot.workload(*d.target.ip()).filter(|w| {
        w.node == config.node
            && w.meshed
            && d.runs_as
                .is_none_or(|(ns, sa)| (&w.namespace, &w.service_account) == (ns, sa))
    });
    let Some(dest) = local else {
        return Err(Refusal::NotLocal);
    };
    if policy::needs_http(&config.policies, *d.target.ip()) {
        return Ok(Admitted {
            destination: dest.key(),
            timeouts: config.timeouts.clone(),
            mark: config.capture.proxy_socket_mark,
            per_request: true,
        });
    }
    let decision = policy::authorize(
        &config.policies,
        &policy::Request {
            source: d.principal,
            destination: *d.target.ip(),
            port: d.target.port(),
            http: None,
        },
    );
    shared
        .metrics
        .authorized(direction, decision.allowed(), decision.policy());
    if !decision.allowed() {
        return Err(Refusal::Denied(decision.policy().to_owned()));
    }
    Ok(Admitted {
        destination: dest.key(),
        timeouts: config.timeouts.clone(),
        mark: config.capture.proxy_socket_mark,
        per_request: false,
    })
}

/// Admits and delivers a connection to a meshed pod on this node, then
/// relays it to its end; `conn` records how it went.
pub async fn deliver(mut conn: Conn, caller: Caller, d: Delivery<'_>) {
    let admitted = match admit(&conn.shared, conn.direction(), &d) {
        Ok(a) => a,
        Err(refusal) => {
            match &refusal {
                Refusal::NotLocal => {
                    tracing::info!(peer = %conn.peer, target = %d.target, runs_as = ?d.runs_as,
                    "refused: the target is not a meshed pod on this node (of the identity expected)");
                }
                Refusal::Denied(policy) => {
                    tracing::info!(peer = %conn.peer, source = %conn.labels.source,
                    source_principal = %conn.labels.source_principal, target = %d.target, %policy,
                    "connection denied by authorization policy");
                }
            }
            let failure = refusal.failure();
            conn.refuse(failure);
            return caller.refuse(failure).await;
        }
    };
    conn.labels.destination = admitted.destination.clone();
    if caller.is_gone() {
        tracing::debug!(peer = %conn.peer, target = %d.target,
            "the caller gave up before it was answered");
        return;
    }
    if admitted.per_request {
        let principal = d.principal.cloned();
        return l7::serve(conn, caller, d.target, d.from, principal, admitted).await;
    }
    let timeouts = admitted.timeouts;
    let server = match connect(d.target, timeouts.connect, admitted.mark, d.from).await {
        Ok(s) => s,
        Err(e) => {
            tracing::info!(peer = %conn.peer, target = %d.target, error = %e, "connecting to the pod failed");
            conn.refuse(Failure::Connect);
            return caller.refuse(Failure::Connect).await;
        }
    };
    let result = caller.relay(&mut conn, server, timeouts.idle).await;
    conn.relayed(result);
}
