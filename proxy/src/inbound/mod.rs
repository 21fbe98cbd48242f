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
pub mod plain;

use std::io;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::time::Duration;

use http::StatusCode;
use tokio::net::TcpStream;

use crate::conn::Conn;
use crate::hbone::Incoming;
use crate::identity::{Account, SpiffeId};
use crate::metrics::Failure;
use crate::policy;
use crate::relay::{Moved, TcpSide, relay};
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

    /// Relays between the caller and `server` until both ways end.
    async fn relay(self, conn: &mut Conn, server: TcpStream, idle: Duration) -> io::Result<Moved> {
        match self {
            Caller::Tcp(client) => {
                let counters = conn.relaying();
                relay(client, server, idle, &counters).await
            }
            Caller::Tunnel(req) => {
                let stream = req.accept().await?;
                conn.shared
                    .metrics
                    .tunnel_stream(crate::metrics::Direction::Inbound);
                let counters = conn.relaying();
                stream.relay(server, TcpSide::Server, idle, &counters).await
            }
        }
    }
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

/// Admits and delivers a connection to a meshed pod on this node, then
/// relays it to its end; `conn` records how it went.
pub async fn deliver(mut conn: Conn, caller: Caller, d: Delivery<'_>) {
    let shared = conn.shared.clone();
    let snapshot = shared.snapshot();
    let config = snapshot.config();
    let local = snapshot.workload(*d.target.ip()).filter(|w| {
        w.node == config.node
            && w.meshed
            && d.runs_as
                .is_none_or(|(ns, sa)| (&w.namespace, &w.service_account) == (ns, sa))
    });
    let Some(dest) = local else {
        tracing::info!(peer = %conn.peer, target = %d.target, runs_as = ?d.runs_as,
            "refused: the target is not a meshed pod on this node (of the identity expected)");
        drop(snapshot);
        conn.refuse(Failure::NotLocal);
        return caller.refuse(Failure::NotLocal).await;
    };
    conn.labels.destination = dest.key();
    let decision = policy::authorize(
        &config.policies,
        &policy::Request {
            source: d.principal,
            destination: *d.target.ip(),
            port: d.target.port(),
        },
    );
    shared
        .metrics
        .authorized(conn.direction(), decision.allowed(), decision.policy());
    if !decision.allowed() {
        tracing::info!(peer = %conn.peer, source = %conn.labels.source,
            source_principal = %conn.labels.source_principal, destination = %conn.labels.destination,
            target = %d.target, policy = decision.policy(),
            "connection denied by authorization policy");
        drop(snapshot);
        conn.refuse(Failure::Denied);
        return caller.refuse(Failure::Denied).await;
    }
    let timeouts = config.timeouts.clone();
    let mark = config.capture.proxy_socket_mark;
    drop(snapshot);
    if caller.is_gone() {
        tracing::debug!(peer = %conn.peer, target = %d.target,
            "the caller gave up before it was answered");
        return;
    }
    let server = match connect(d.target, timeouts.connect, mark, d.from).await {
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
