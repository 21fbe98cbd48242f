//! Inbound plaintext: connections to local meshed pods from outside the
//! mesh (unmeshed pods) or from other nodes' proxies until HBONE exists,
//! captured to the inbound listener. Destination-side policy will sit here.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use tokio::net::TcpStream;

use crate::Shared;
use crate::metrics::{ConnLabels, Direction, Failure};
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
    drop(snapshot);
    let labels = ConnLabels {
        direction: Direction::Inbound,
        source: source.unwrap_or_else(|| "unknown".into()),
        destination,
        service: String::new(),
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
