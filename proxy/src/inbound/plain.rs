//! Inbound plaintext (:15006): connections to local meshed pods from
//! outside the mesh (unmeshed pods, or other nodes' proxies when mTLS is
//! off). The caller is not authenticated: policy sees no principal.

use std::net::SocketAddr;

use tokio::net::TcpStream;

use super::{Caller, Delivery, deliver};
use crate::conn::Conn;

/// Handles one accepted plaintext connection to its end.
pub async fn handle(mut conn: Conn, client: TcpStream) {
    let snapshot = conn.shared.snapshot();
    let caller_ip = match conn.peer {
        SocketAddr::V4(p) => Some(*p.ip()),
        SocketAddr::V6(_) => None,
    };
    if let Some(w) = caller_ip.and_then(|ip| snapshot.workload(ip)) {
        conn.labels.source = w.key();
    }
    drop(snapshot);
    let target = conn.orig;
    deliver(
        conn,
        Caller::Tcp(client),
        Delivery {
            http: false,
            target,
            principal: None,
            runs_as: None,
            // The pod sees its client's address, not the proxy's.
            from: caller_ip,
        },
    )
    .await;
}
