//! Outbound: connections from local meshed pods, captured to the outbound
//! listener. The original destination is resolved (a service address picks
//! an endpoint), then:
//!
//! - a meshed pod on another node, with mTLS on: an HBONE stream
//!   ([`crate::tunnel`]); the destination node applies its policy;
//! - a meshed pod on this node: this proxy applies the destination's
//!   policy, then connects (the bytes never leave the node);
//! - anything else: a plain connection.

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::Ordering;

use tokio::net::TcpStream;

use crate::Shared;
use crate::config::Workload;
use crate::metrics::{ConnLabels, Direction, Failure};
use crate::policy;
use crate::relay::{TcpSide, relay};
use crate::tls::SpiffeId;
use crate::transport::{accepted, connect, reset};
use crate::tunnel::{self, TunnelError};

/// How the connection leaves this proxy.
enum Path {
    /// HBONE to the destination's node.
    Tunnel {
        source: Box<Workload>,
        dest: Box<Workload>,
    },
    /// A plain connection.
    Direct,
}

/// Handles one accepted outbound connection to its end.
pub async fn handle(client: TcpStream, peer: SocketAddr, shared: Arc<Shared>) {
    let _active = shared.metrics.active(Direction::Outbound);
    let Some((client, orig)) = accepted(client, peer) else {
        return;
    };
    let peer_ip = match peer {
        SocketAddr::V4(p) => Some(*p.ip()),
        SocketAddr::V6(_) => None,
    };

    let snapshot = shared.snapshot();
    let config = snapshot.config();
    let source = peer_ip.and_then(|ip| snapshot.workload(ip)).cloned();
    let route = match snapshot.route(orig.0) {
        Ok(route) => route,
        Err(e) => {
            tracing::info!(%peer, orig = %orig.0, error = %e, "outbound connection refused");
            shared
                .metrics
                .failed(Direction::Outbound, Failure::NoEndpoints);
            reset(client);
            return;
        }
    };
    let target = route.target;
    let dest = route.workload.filter(|w| w.meshed).cloned();
    let mut labels = ConnLabels {
        direction: Direction::Outbound,
        source: source
            .as_ref()
            .map_or_else(|| "unknown".into(), Workload::key),
        destination: route
            .workload
            .map_or_else(|| "unknown".into(), Workload::key),
        service: route.service.unwrap_or_default(),
        source_principal: String::new(),
        mtls: false,
    };
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
                            shared
                                .metrics
                                .failed(Direction::Outbound, Failure::NoCertificate);
                            reset(client);
                            return;
                        }
                    }
                }
                Some(s) => shared.identity_of(s),
                None => None,
            };
            let decision = policy::authorize(
                &config.policies,
                &policy::Request {
                    source: caller.as_ref(),
                    destination: dest.ip,
                    port: target.port(),
                },
            );
            shared
                .metrics
                .authorized(Direction::Outbound, decision.allowed(), decision.policy());
            if !decision.allowed() {
                tracing::info!(%peer, source_principal = %caller.map(|c| c.to_string()).unwrap_or_default(),
                    destination = %dest.key(), %target, policy = decision.policy(),
                    "connection denied by authorization policy");
                shared.metrics.failed(Direction::Outbound, Failure::Denied);
                reset(client);
                return;
            }
            Path::Direct
        }
        (Some(dest), None) if shared.mtls => {
            tracing::info!(%peer, destination = %dest.key(),
                "outbound connection refused: its source is not a known workload, so it has no identity to tunnel as");
            shared
                .metrics
                .failed(Direction::Outbound, Failure::NoCertificate);
            reset(client);
            return;
        }
        _ => Path::Direct,
    };
    let timeouts = config.timeouts.clone();
    drop(snapshot);

    match path {
        Path::Tunnel { source, dest } => {
            let Some(source_ip) = peer_ip else {
                reset(client);
                return;
            };
            let (stream, _slot) =
                match tunnel::open(&shared, &source, &dest, target, source_ip).await {
                    Ok(s) => s,
                    Err(e) => {
                        let failure = match e {
                            TunnelError::NoCertificate(..) => Failure::NoCertificate,
                            _ => Failure::Tunnel,
                        };
                        tracing::info!(%peer, %target, destination = %dest.key(), error = %e,
                            "outbound HBONE stream failed");
                        shared.metrics.failed(Direction::Outbound, failure);
                        reset(client);
                        return;
                    }
                };
            labels.mtls = true;
            labels.source_principal = shared
                .identity_of(&source)
                .map(|i| i.to_string())
                .unwrap_or_default();
            let counters = shared.metrics.conn(labels);
            counters.opened.fetch_add(1, Ordering::Relaxed);
            if let Err(e) = stream
                .relay(client, TcpSide::Client, timeouts.idle, &counters)
                .await
            {
                tracing::debug!(%peer, %target, error = %e, "outbound HBONE relay ended with an error");
                shared.metrics.failed(Direction::Outbound, Failure::Relay);
            }
            counters.closed.fetch_add(1, Ordering::Relaxed);
        }
        Path::Direct => {
            // The destination sees the pod's own address (unless it is on
            // this node's own addresses, whose replies would not pass
            // capture).
            let source_ip: Option<Ipv4Addr> = peer_ip.filter(|_| !shared.is_local(*target.ip()));
            let server = match connect(target, timeouts.connect, shared.socket_mark(), source_ip)
                .await
            {
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
    }
}
