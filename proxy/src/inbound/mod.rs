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
use std::time::Duration;

use http::StatusCode;
use tokio::net::TcpStream;

pub use crate::admit::{Admitted, Delivery, Refusal, admit};
use crate::conn::Conn;
use crate::hbone::Incoming;
use crate::metrics::{Direction, Failure};
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
        let caller = self.accept(conn).await?;
        let counters = conn.relaying();
        match caller {
            Accepted::Tcp(client) => relay(client, server, idle, &counters).await,
            Accepted::Tunnel(stream) => {
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
