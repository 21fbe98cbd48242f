//! Outbound: connections from local meshed pods, captured to the outbound
//! listener. The original destination is resolved (a service address picks
//! an endpoint) and the bytes are relayed to it.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use tokio::net::TcpStream;

use crate::Shared;
use crate::metrics::{ConnLabels, Direction, Failure};
use crate::relay::relay;
use crate::transport::{accepted, connect, reset};

/// Handles one accepted outbound connection to its end.
pub async fn handle(client: TcpStream, peer: SocketAddr, shared: Arc<Shared>) {
    let _active = shared.metrics.active(Direction::Outbound);
    let Some((client, orig)) = accepted(client, peer) else {
        return;
    };

    let snapshot = shared.snapshot();
    let source = match peer {
        SocketAddr::V4(p) => snapshot.workload(*p.ip()).map(|w| w.key()),
        SocketAddr::V6(_) => None,
    };
    let (target, labels) = match snapshot.route(orig.0) {
        Ok(route) => (
            route.target,
            ConnLabels {
                direction: Direction::Outbound,
                source: source.unwrap_or_else(|| "unknown".into()),
                destination: route.workload.map_or_else(|| "unknown".into(), |w| w.key()),
                service: route.service.unwrap_or_default(),
            },
        ),
        Err(e) => {
            tracing::info!(%peer, orig = %orig.0, error = %e, "outbound connection refused");
            shared
                .metrics
                .failed(Direction::Outbound, Failure::NoEndpoints);
            reset(client);
            return;
        }
    };
    drop(snapshot);
    let timeouts = shared.timeouts();
    // The destination sees the pod's own address (unless it is on this
    // node's own addresses, whose replies would not pass capture).
    let source = match peer {
        SocketAddr::V4(p) if !shared.is_local(*target.ip()) => Some(*p.ip()),
        _ => None,
    };
    let server = match connect(target, timeouts.connect, shared.socket_mark(), source).await {
        Ok(s) => s,
        Err(e) => {
            tracing::info!(%peer, orig = %orig.0, %target, error = %e, "outbound connect failed");
            shared.metrics.failed(Direction::Outbound, Failure::Connect);
            reset(client);
            return;
        }
    };
    let counters = shared.metrics.conn(labels);
    counters.opened.fetch_add(1, Ordering::Relaxed);
    if let Err(e) = relay(client, server, timeouts.idle, &counters).await {
        tracing::debug!(%peer, %target, error = %e, "outbound relay ended with an error");
        shared.metrics.failed(Direction::Outbound, Failure::Relay);
    }
    counters.closed.fetch_add(1, Ordering::Relaxed);
}
