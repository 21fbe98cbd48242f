//! The destination side of HBONE (:15008): TLS 1.3 as the destination
//! pod's identity, the client's certificate read as a SPIFFE ID, then one
//! [`deliver`] per CONNECT stream.
//!
//! ```text
//!  :15008 (dst pod IP, sk_assign) ─ cert of the dst pod's identity
//!     peer cert → SPIFFE ID
//!     per stream: CONNECT <pod ip:port>, forwarded: for=<src pod ip>
//!       the source runs as the certified identity? (else 403)
//!       deliver: a meshed pod here of the identity presented (else 421),
//!                policy (else 403), connect as the source (else 503)
//! ```
//!
//! The source the client speaks for must run as the identity its
//! certificate names, so a node can speak only for the identities it holds
//! certificates for.

use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::sync::{Arc, Mutex};

use http::StatusCode;
use tokio::net::TcpStream;
use tokio::sync::mpsc;

use super::{Caller, Delivery, deliver};
use crate::conn::Conn;
use crate::hbone::pool::{FORWARDED, HANDSHAKE_TIMEOUT, PROTOCOL};
use crate::hbone::{Connection, Incoming, Role};
use crate::identity::{Account, Certified, SpiffeId};
use crate::metrics::{Direction, Failure};
use crate::state::Shared;
use crate::tls;
use crate::transport::reset;

/// What every stream of one accepted connection shares.
#[derive(Debug)]
struct Accepted {
    shared: Arc<Shared>,
    /// Who the client is, from its certificate.
    peer: SpiffeId,
    /// The identity this side presented (the destination pod's).
    local: Account,
    /// The connection's TCP peer (the source node).
    remote: SocketAddr,
    alive: mpsc::Sender<()>,
}

/// Handles one connection accepted on the tunnel port: TLS as the
/// destination pod's identity, then HTTP/2 CONNECT streams until it ends.
pub async fn handle(
    stream: TcpStream,
    peer: SocketAddr,
    orig: SocketAddrV4,
    shared: Arc<Shared>,
    server_tls: Arc<ServerTls>,
    alive: mpsc::Sender<()>,
) {
    let snapshot = shared.snapshot();
    let node = snapshot.config().node.clone();
    let local = match snapshot.workload(*orig.ip()) {
        Some(w) if w.node == node && w.meshed => (w.namespace.clone(), w.service_account.clone()),
        _ => {
            tracing::info!(%peer, orig = %orig, "HBONE connection for an address that is not a meshed pod here");
            shared.metrics.failed(Direction::Inbound, Failure::NotLocal);
            reset(stream);
            return;
        }
    };
    drop(snapshot);
    let Some(cert) = shared
        .identities
        .wait_for(&local, shared.timeouts().connect)
        .await
    else {
        tracing::info!(%peer, orig = %orig, namespace = %local.0, service_account = %local.1,
            "HBONE connection refused: no certificate for the destination's identity yet");
        shared
            .metrics
            .failed(Direction::Inbound, Failure::NoCertificate);
        reset(stream);
        return;
    };
    let config = match server_tls.get(&cert, &shared.identities.roots()) {
        Ok(c) => c,
        Err(e) => {
            tracing::warn!(%peer, error = %e, "HBONE connection refused: no usable TLS config");
            shared
                .metrics
                .failed(Direction::Inbound, Failure::NoCertificate);
            reset(stream);
            return;
        }
    };
    let tls = match tokio::time::timeout(
        HANDSHAKE_TIMEOUT,
        tokio_rustls::TlsAcceptor::from(config).accept(stream),
    )
    .await
    {
        Ok(Ok(tls)) => tls,
        Ok(Err(e)) => {
            tracing::info!(%peer, orig = %orig, error = %e, "HBONE handshake refused");
            shared
                .metrics
                .failed(Direction::Inbound, Failure::Handshake);
            return;
        }
        Err(_) => {
            tracing::info!(%peer, orig = %orig, "HBONE handshake timed out");
            shared
                .metrics
                .failed(Direction::Inbound, Failure::Handshake);
            return;
        }
    };
    let identity = tls
        .get_ref()
        .1
        .peer_certificates()
        .and_then(|c| c.first())
        .map(tls::identity_of);
    let peer_id = match identity {
        Some(Ok(id)) => id,
        Some(Err(e)) => {
            tracing::info!(%peer, error = %e, "HBONE client certificate names no workload");
            shared
                .metrics
                .failed(Direction::Inbound, Failure::Handshake);
            return;
        }
        None => {
            tracing::info!(%peer, "HBONE client presented no certificate");
            shared
                .metrics
                .failed(Direction::Inbound, Failure::Handshake);
            return;
        }
    };
    let _open = shared.metrics.tunnel(Direction::Inbound);
    tracing::debug!(%peer, source_principal = %peer_id, "HBONE connection accepted");
    let ctx = Arc::new(Accepted {
        shared: shared.clone(),
        peer: peer_id,
        local,
        remote: peer,
        alive,
    });
    let (tcp, session) = tls.into_inner();
    let conn = match Connection::new(Role::Server, tcp, rustls::Connection::Server(session)) {
        Ok(c) => c,
        Err(e) => {
            tracing::info!(%peer, error = %e, "HBONE connection failed as HTTP/2 started");
            return;
        }
    };
    let served = conn
        .run(|incoming| {
            tokio::spawn(stream_request(incoming, ctx.clone()));
        })
        .await;
    if let Err(e) = served {
        tracing::debug!(%peer, error = %e, "HBONE connection ended with an error");
    }
}

/// The source address in `forwarded: for=<ipv4>`.
fn forwarded_for(value: Option<&str>) -> Option<Ipv4Addr> {
    value?.split([';', ',']).find_map(|part| {
        let (k, v) = part.trim().split_once('=')?;
        if !k.eq_ignore_ascii_case("for") {
            return None;
        }
        v.trim_matches('"').parse().ok()
    })
}

/// One CONNECT stream: checks the request and who it speaks for, then
/// [`deliver`]s it.
async fn stream_request(req: Incoming, ctx: Arc<Accepted>) {
    let target = req.authority.parse::<SocketAddrV4>();
    let mut conn = Conn::new(
        ctx.shared.clone(),
        Direction::Inbound,
        ctx.remote,
        *target
            .as_ref()
            .unwrap_or(&SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 0)),
        ctx.alive.clone(),
    );
    conn.labels.source_principal = ctx.peer.to_string();
    conn.labels.mtls = true;
    let bad = |mut conn: Conn, req: Incoming, code: StatusCode| async move {
        conn.refuse(Failure::BadRequest);
        req.refuse(code.as_u16()).await;
    };
    if req.method != "CONNECT" {
        tracing::info!(remote = %ctx.remote, method = %req.method, "HBONE request is not a CONNECT");
        return bad(conn, req, StatusCode::METHOD_NOT_ALLOWED).await;
    }
    let Ok(target) = target else {
        tracing::info!(remote = %ctx.remote, authority = %req.authority, "HBONE CONNECT without an IPv4 target");
        return bad(conn, req, StatusCode::BAD_REQUEST).await;
    };
    let Some(source_ip) = forwarded_for(req.header(FORWARDED)) else {
        tracing::info!(remote = %ctx.remote, %target, "HBONE CONNECT without `forwarded: for=<source>`");
        return bad(conn, req, StatusCode::BAD_REQUEST).await;
    };
    // The client may speak only for pods that run as its certified identity.
    let snapshot = ctx.shared.snapshot();
    let source = match snapshot.workload(source_ip) {
        Some(w)
            if w.namespace == ctx.peer.namespace
                && w.service_account == ctx.peer.service_account =>
        {
            w.key()
        }
        other => {
            let runs_as = other.map_or_else(
                || "no known workload".to_owned(),
                |w| format!("{}/{}", w.namespace, w.service_account),
            );
            tracing::info!(remote = %ctx.remote, source_principal = %ctx.peer, source = %source_ip, %runs_as, %target,
                "HBONE stream refused: the certificate does not match the source it speaks for");
            drop(snapshot);
            return bad(conn, req, StatusCode::FORBIDDEN).await;
        }
    };
    drop(snapshot);
    conn.labels.source = source;
    let http = matches!(req.header(PROTOCOL), Some("http/1.1" | "h2"));
    deliver(
        conn,
        Caller::Tunnel(req),
        Delivery {
            target,
            principal: Some(&ctx.peer),
            runs_as: Some(&ctx.local),
            from: Some(source_ip),
            http,
        },
    )
    .await;
}

/// Server TLS configs, one per certificate held (rebuilt when the
/// certificate or the roots change).
#[derive(Debug, Default)]
pub struct ServerTls {
    cache: Mutex<HashMap<Account, CachedServer>>,
}

#[derive(Debug)]
struct CachedServer {
    cert: Arc<Certified>,
    roots: Arc<Vec<rustls_pki_types::CertificateDer<'static>>>,
    config: Arc<rustls::ServerConfig>,
}

impl ServerTls {
    /// The config that presents `cert` and trusts `roots`.
    pub fn get(
        &self,
        cert: &Arc<Certified>,
        roots: &Arc<Vec<rustls_pki_types::CertificateDer<'static>>>,
    ) -> Result<Arc<rustls::ServerConfig>, tls::TlsError> {
        let account = SpiffeId::parse(&cert.spiffe_id)
            .map(|id| id.account())
            .unwrap_or_default();
        let mut cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(c) = cache.get(&account)
            && Arc::ptr_eq(&c.cert, cert)
            && Arc::ptr_eq(&c.roots, roots)
        {
            return Ok(c.config.clone());
        }
        let config = tls::server_config(cert, roots)?;
        cache.insert(
            account,
            CachedServer {
                cert: cert.clone(),
                roots: roots.clone(),
                config: config.clone(),
            },
        );
        Ok(config)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_forwarded_source_is_read_quoted_or_not_and_nothing_else_is_taken() {
        assert_eq!(
            forwarded_for(Some("for=10.1.0.5")),
            Some(Ipv4Addr::new(10, 1, 0, 5))
        );
        assert_eq!(
            forwarded_for(Some("proto=http;For=\"10.1.0.6\"")),
            Some(Ipv4Addr::new(10, 1, 0, 6))
        );
        assert_eq!(forwarded_for(Some("for=unknown")), None);
        assert_eq!(forwarded_for(Some("by=10.1.0.5")), None);
        assert_eq!(forwarded_for(None), None);
    }
}
