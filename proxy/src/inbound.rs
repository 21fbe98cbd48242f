//! Inbound plaintext: connections to local meshed pods from outside the
//! mesh (unmeshed pods, or other nodes' proxies when mTLS is off), captured
//! to the inbound listener. The caller is not authenticated: policy sees no
//! principal, so only rules without principals or namespaces can admit it.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use tokio::net::TcpStream;

use crate::Shared;
use crate::metrics::{ConnLabels, Direction, Failure};
use crate::policy;
use crate::relay::relay;
use crate::transport::{accepted, connect, reset};

/// Handles one accepted inbound connection to its end.
pub async fn handle(client: TcpStream, peer: SocketAddr, shared: Arc<Shared>) {
    let _active = shared.metrics.active(Direction::Inbound);
    let Some((client, orig)) = accepted(client, peer) else {
        return;
    };

    let snapshot = shared.snapshot();
    let node = snapshot.config().node.clone();
    let destination = match snapshot.workload(*orig.0.ip()) {
        Some(w) if w.node == node && w.meshed => w.key(),
        _ => {
            tracing::info!(%peer, orig = %orig.0, "inbound connection for an address that is not a meshed pod here");
            shared.metrics.failed(Direction::Inbound, Failure::NotLocal);
            reset(client);
            return;
        }
    };
    let source = match peer {
        SocketAddr::V4(p) => snapshot.workload(*p.ip()).map(|w| w.key()),
        SocketAddr::V6(_) => None,
    };
    let decision = policy::authorize(
        &snapshot.config().policies,
        &policy::Request {
            source: None,
            destination: *orig.0.ip(),
            port: orig.0.port(),
        },
    );
    drop(snapshot);
    shared
        .metrics
        .authorized(Direction::Inbound, decision.allowed(), decision.policy());
    if !decision.allowed() {
        tracing::info!(%peer, orig = %orig.0, %destination, policy = decision.policy(),
            "plaintext connection denied by authorization policy");
        shared.metrics.failed(Direction::Inbound, Failure::Denied);
        reset(client);
        return;
    }
    let labels = ConnLabels {
        direction: Direction::Inbound,
        source: source.unwrap_or_else(|| "unknown".into()),
        destination,
        service: String::new(),
        source_principal: String::new(),
        mtls: false,
    };
    let timeouts = shared.timeouts();
    // The pod sees its client's address, not the proxy's.
    let source = match peer {
        SocketAddr::V4(p) => Some(*p.ip()),
        SocketAddr::V6(_) => None,
    };
    let server = match connect(orig.0, timeouts.connect, shared.socket_mark(), source).await {
        Ok(s) => s,
        Err(e) => {
            tracing::info!(%peer, orig = %orig.0, error = %e, "inbound connect failed");
            shared.metrics.failed(Direction::Inbound, Failure::Connect);
            reset(client);
            return;
        }
    };
    let counters = shared.metrics.conn(labels);
    counters.opened.fetch_add(1, Ordering::Relaxed);
    if let Err(e) = relay(client, server, timeouts.idle, &counters).await {
        tracing::debug!(%peer, orig = %orig.0, error = %e, "inbound relay ended with an error");
        shared.metrics.failed(Direction::Inbound, Failure::Relay);
    }
    counters.closed.fetch_add(1, Ordering::Relaxed);
}
