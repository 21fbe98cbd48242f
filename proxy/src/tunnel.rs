//! HBONE: TCP connections between meshed pods on different nodes travel as
//! HTTP/2 CONNECT streams inside TLS 1.3 mutual TLS between the two node
//! proxies, on the tunnel port (15008).
//!
//! ```text
//!  source node                                   destination node
//!  outbound ─ pool[(src id, dst id, dst node)] ══TLS 1.3 + h2══► :15008 (dst pod IP, sk_assign)
//!     CONNECT <pod ip:port>, forwarded: for=<src pod ip>          │ cert of the dst pod's identity
//!                                                                 │ peer cert → SPIFFE ID
//!                                                                 │ source IP runs as that ID?
//!                                                                 │ L4 policy (ALLOW/DENY)
//!                                                                 └► connect to the pod as the source
//! ```
//!
//! The client verifies that the server certifies the destination pod's
//! identity; the server verifies the client's chain, and that the source
//! the client speaks for runs as the identity its certificate names, so a
//! node can speak only for the identities it holds certificates for.
//!
//! Connections are pooled per (source identity, destination identity,
//! destination node); each carries up to [`STREAMS_PER_CONNECTION`]
//! streams. A renewed certificate starts new connections; the old ones
//! finish their streams and close.

use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use http::StatusCode;
use tokio::net::TcpStream;
use tokio::sync::mpsc;

use crate::Shared;
use crate::config::Workload;
use crate::hbone::{self, Connection, Incoming, Role};
use crate::identity::{Account, Certified};
use crate::metrics::{ConnLabels, Direction, Failure};
use crate::policy;
use crate::relay::TcpSide;
use crate::tls::{self, SpiffeId};
use crate::transport::{accepted, connect, reset};

/// Streams one HTTP/2 connection carries before the pool opens another
/// (also the server's `SETTINGS_MAX_CONCURRENT_STREAMS`).
pub const STREAMS_PER_CONNECTION: u32 = hbone::MAX_STREAMS as u32;
/// How long a TLS handshake may take.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// A pooled connection without streams for this long is closed.
const IDLE: Duration = Duration::from_secs(60);
/// The header that carries the original source address (RFC 7239).
const FORWARDED: &str = "forwarded";

/// Why a stream could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum TunnelError {
    /// The source's identity has no certificate on this node (yet).
    #[error("no certificate for {0}/{1} yet")]
    NoCertificate(String, String),
    /// A certificate or roots rustls would not take.
    #[error(transparent)]
    Tls(#[from] tls::TlsError),
    /// A certificate whose SPIFFE ID cannot be read.
    #[error(transparent)]
    Identity(#[from] tls::IdentityError),
    /// TCP to the destination's tunnel port failed.
    #[error("connecting to {0}: {1}")]
    Connect(SocketAddrV4, std::io::Error),
    /// The TLS handshake failed (or timed out).
    #[error("TLS handshake with {0}: {1}")]
    Handshake(SocketAddrV4, std::io::Error),
    /// HTTP/2 failed.
    #[error("HTTP/2 with {0}: {1}")]
    Http(SocketAddrV4, String),
    /// A dial that this stream waited for failed.
    #[error("{0} (a dial this stream waited for)")]
    Dial(String),
    /// The destination proxy answered the CONNECT with an error.
    #[error("the destination proxy refused the stream to {0}: {1}")]
    Refused(SocketAddrV4, StatusCode),
}

// ---------------------------------------------------------------- client

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct PoolKey {
    source: Account,
    destination: Account,
    node: String,
}

#[derive(Debug)]
struct Pooled {
    conn: Connection,
    streams: Arc<AtomicUsize>,
    /// The certificate it was made with: after a renewal it takes no new
    /// streams.
    cert: Arc<Certified>,
}

/// Outbound HBONE connections, pooled.
#[derive(Debug, Default)]
pub struct Pool {
    entries: Mutex<HashMap<PoolKey, Arc<Entry>>>,
}

impl Pool {
    /// Forgets the closed connections of `key`, and the key once it has
    /// none (unless a dial for it is under way).
    async fn prune(&self, key: &PoolKey) {
        let entry = self
            .entries
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(key)
            .cloned();
        let Some(entry) = entry else {
            return;
        };
        let mut conns = entry.conns.lock().await;
        conns.retain(|c| !c.conn.is_closed());
        if conns.is_empty()
            && let Ok(_dialling) = entry.dialling.try_lock()
        {
            let mut entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
            if entries.get(key).is_some_and(|e| Arc::ptr_eq(e, &entry)) {
                entries.remove(key);
            }
        }
    }
}

/// The connections of one key.
#[derive(Debug, Default)]
struct Entry {
    /// Held only to look and pick, never across a dial.
    conns: tokio::sync::Mutex<Vec<Pooled>>,
    /// One dial at a time per key: a burst of new streams waits for it and
    /// then shares the new connection.
    dialling: tokio::sync::Mutex<()>,
    /// The last failed dial: those who waited for it fail with it at once
    /// instead of each timing out in turn.
    failed: Mutex<Option<(tokio::time::Instant, String)>>,
}

impl Entry {
    /// A pooled connection with room made with `cert`, claimed.
    async fn pick(&self, cert: &Arc<Certified>) -> Option<(Connection, Slot)> {
        let mut conns = self.conns.lock().await;
        // Keep open connections made with the current certificate, and older
        // ones while they still carry streams.
        conns.retain(|c| {
            !c.conn.is_closed()
                && (Arc::ptr_eq(&c.cert, cert) || c.streams.load(Ordering::Acquire) > 0)
        });
        conns
            .iter()
            .find(|c| {
                Arc::ptr_eq(&c.cert, cert)
                    && c.conn.can_open()
                    && c.streams.load(Ordering::Acquire) < STREAMS_PER_CONNECTION as usize
            })
            .map(|c| (c.conn.clone(), Slot::take(&c.streams)))
    }
}

/// A stream's claim on its connection: while it lives the connection
/// counts it (and is not closed as idle).
#[derive(Debug)]
pub struct Slot(Arc<AtomicUsize>);

impl Slot {
    fn take(streams: &Arc<AtomicUsize>) -> Slot {
        streams.fetch_add(1, Ordering::AcqRel);
        Slot(streams.clone())
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// An open stream to a pod on another node.
pub type Stream = hbone::Stream;

/// Opens a stream from the local pod `source` (at `source_ip`) to `target`
/// on the remote pod `dest`, on a pooled connection when one has room.
pub async fn open(
    shared: &Arc<Shared>,
    source: &Workload,
    dest: &Workload,
    target: SocketAddrV4,
    source_ip: Ipv4Addr,
) -> Result<(Stream, Slot), TunnelError> {
    let source_account = (source.namespace.clone(), source.service_account.clone());
    let cert = shared
        .identities
        .wait_for(&source_account, shared.timeouts().connect)
        .await
        .ok_or_else(|| {
            TunnelError::NoCertificate(source_account.0.clone(), source_account.1.clone())
        })?;
    let own = SpiffeId::parse(&cert.spiffe_id)?;
    let destination = (dest.namespace.clone(), dest.service_account.clone());
    let expected = SpiffeId::new(&own.trust_domain, &destination);
    let key = PoolKey {
        source: source_account,
        destination,
        node: dest.node.clone(),
    };
    let entry = shared
        .pool
        .entries
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .entry(key.clone())
        .or_default()
        .clone();
    let deadline = shared.timeouts().connect + HANDSHAKE_TIMEOUT;
    let opened = tokio::time::timeout(deadline, async {
        // A pooled connection may have just closed: then one more try, on a
        // fresh connection.
        for fresh in [false, true] {
            let (conn, slot, dialled) = match entry.pick(&cert).await {
                Some((conn, slot)) if !fresh => (conn, slot, false),
                _ => {
                    let (conn, slot) = dial_once(shared, &key, &entry, &cert, &expected, dest.ip).await?;
                    (conn, slot, true)
                }
            };
            match connect_stream(&conn, target, source_ip).await {
                Err(TunnelError::Http(_, e)) if !dialled && !fresh => {
                    tracing::debug!(%target, error = %e, "pooled HBONE connection failed; dialling a new one");
                }
                other => return other.map(|s| (s, slot)),
            }
        }
        Err(TunnelError::Http(target, "no usable HBONE connection".into()))
    })
    .await
    .map_err(|_| {
        TunnelError::Handshake(
            target,
            std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                format!("no stream within {:.0} s", deadline.as_secs_f64()),
            ),
        )
    })??;
    shared.metrics.tunnel_stream(Direction::Outbound);
    Ok(opened)
}

/// Dials a new connection for `entry` unless another dial that finished
/// meanwhile left one with room (or failed: then its error).
async fn dial_once(
    shared: &Arc<Shared>,
    key: &PoolKey,
    entry: &Entry,
    cert: &Arc<Certified>,
    expected: &SpiffeId,
    dest_ip: Ipv4Addr,
) -> Result<(Connection, Slot), TunnelError> {
    let waited_from = tokio::time::Instant::now();
    let _dialling = entry.dialling.lock().await;
    if let Some(claimed) = entry.pick(cert).await {
        return Ok(claimed);
    }
    if let Some((at, why)) = entry
        .failed
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .as_ref()
        && *at >= waited_from
    {
        return Err(TunnelError::Dial(why.clone()));
    }
    match dial(shared, key, cert, expected.clone(), dest_ip).await {
        Ok(c) => {
            let claimed = (c.conn.clone(), Slot::take(&c.streams));
            entry.conns.lock().await.push(c);
            Ok(claimed)
        }
        Err(e) => {
            *entry.failed.lock().unwrap_or_else(|p| p.into_inner()) =
                Some((tokio::time::Instant::now(), e.to_string()));
            Err(e)
        }
    }
}

/// Sends the CONNECT for `target` on `conn` and waits for the tunnel.
async fn connect_stream(
    conn: &Connection,
    target: SocketAddrV4,
    source_ip: Ipv4Addr,
) -> Result<Stream, TunnelError> {
    let forwarded = format!("for={source_ip}");
    let (status, stream) = conn
        .connect(&target.to_string(), &[(FORWARDED, &forwarded)])
        .await
        .map_err(|e| TunnelError::Http(target, e.to_string()))?;
    if status != 200 {
        let status = StatusCode::from_u16(status).unwrap_or(StatusCode::BAD_GATEWAY);
        return Err(TunnelError::Refused(target, status));
    }
    Ok(stream)
}

/// Opens an HBONE connection to `dest_ip`'s tunnel port, as `cert`,
/// expecting the server to certify `expected`.
async fn dial(
    shared: &Arc<Shared>,
    key: &PoolKey,
    cert: &Arc<Certified>,
    expected: SpiffeId,
    dest_ip: Ipv4Addr,
) -> Result<Pooled, TunnelError> {
    let config = tls::client_config(cert, &shared.identities.roots(), expected)?;
    let snapshot = shared.snapshot();
    let settings = snapshot.config();
    let addr = SocketAddrV4::new(dest_ip, settings.listeners.tunnel);
    let tcp = connect(
        addr,
        settings.timeouts.connect,
        settings.capture.proxy_socket_mark,
        None,
    )
    .await
    .map_err(|e| TunnelError::Connect(addr, e))?;
    drop(snapshot);
    let tls = tokio::time::timeout(
        HANDSHAKE_TIMEOUT,
        tokio_rustls::TlsConnector::from(config).connect(tls::server_name(dest_ip), tcp),
    )
    .await
    .map_err(|_| {
        TunnelError::Handshake(
            addr,
            std::io::Error::new(std::io::ErrorKind::TimedOut, "timed out"),
        )
    })?
    .map_err(|e| TunnelError::Handshake(addr, e))?;
    let (tcp, session) = tls.into_inner();
    let conn = Connection::new(Role::Client, tcp, rustls::Connection::Client(session))
        .map_err(|e| TunnelError::Http(addr, format!("starting HTTP/2: {e}")))?;
    let streams = Arc::new(AtomicUsize::new(0));
    let owner = shared.clone();
    let reader = conn.clone();
    tokio::spawn(async move {
        let _open = owner.metrics.tunnel(Direction::Outbound);
        // The client takes no streams from the server.
        if let Err(e) = reader.run(drop).await {
            tracing::debug!(%addr, error = %e, "HBONE connection ended with an error");
        }
    });
    let idle_streams = streams.clone();
    let closer = conn.clone();
    let owner = shared.clone();
    let key = key.clone();
    tokio::spawn(async move {
        tokio::select! {
            () = closer.closed() => {}
            () = idle(&idle_streams) => {
                tracing::debug!(%addr, "HBONE connection idle; closing it");
                closer.shut_down().await;
            }
        }
        owner.pool.prune(&key).await;
    });
    tracing::debug!(%addr, identity = %cert.spiffe_id, "HBONE connection open");
    Ok(Pooled {
        conn,
        streams,
        cert: cert.clone(),
    })
}

/// Completes once `streams` has been zero for [`IDLE`].
async fn idle(streams: &AtomicUsize) {
    let mut tick = tokio::time::interval(IDLE);
    tick.tick().await;
    let mut was_idle = false;
    loop {
        tick.tick().await;
        let now_idle = streams.load(Ordering::Acquire) == 0;
        if now_idle && was_idle {
            return;
        }
        was_idle = now_idle;
    }
}

// ---------------------------------------------------------------- server

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
    shared: Arc<Shared>,
    alive: mpsc::Sender<()>,
) {
    let Some((stream, orig)) = accepted(stream, peer) else {
        return;
    };
    let snapshot = shared.snapshot();
    let node = snapshot.config().node.clone();
    let local = match snapshot.workload(*orig.0.ip()) {
        Some(w) if w.node == node && w.meshed => (w.namespace.clone(), w.service_account.clone()),
        _ => {
            tracing::info!(%peer, orig = %orig.0, "HBONE connection for an address that is not a meshed pod here");
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
        tracing::info!(%peer, orig = %orig.0, namespace = %local.0, service_account = %local.1,
            "HBONE connection refused: no certificate for the destination's identity yet");
        shared
            .metrics
            .failed(Direction::Inbound, Failure::NoCertificate);
        reset(stream);
        return;
    };
    let config = match shared.server_tls.get(&cert, &shared.identities.roots()) {
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
            tracing::info!(%peer, orig = %orig.0, error = %e, "HBONE handshake refused");
            shared
                .metrics
                .failed(Direction::Inbound, Failure::Handshake);
            return;
        }
        Err(_) => {
            tracing::info!(%peer, orig = %orig.0, "HBONE handshake timed out");
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

/// One CONNECT stream: checks it, applies policy, connects to the pod,
/// answers and relays.
async fn stream_request(req: Incoming, ctx: Arc<Accepted>) {
    let shared = &ctx.shared;
    let refuse = |req: Incoming, code: StatusCode, failure: Failure| {
        shared.metrics.failed(Direction::Inbound, failure);
        req.refuse(code.as_u16())
    };
    if req.method != "CONNECT" {
        tracing::info!(remote = %ctx.remote, method = %req.method, "HBONE request is not a CONNECT");
        return refuse(req, StatusCode::METHOD_NOT_ALLOWED, Failure::BadRequest).await;
    }
    let Ok(target) = req.authority.parse::<SocketAddrV4>() else {
        tracing::info!(remote = %ctx.remote, authority = %req.authority, "HBONE CONNECT without an IPv4 target");
        return refuse(req, StatusCode::BAD_REQUEST, Failure::BadRequest).await;
    };
    let Some(source_ip) = forwarded_for(req.header(FORWARDED)) else {
        tracing::info!(remote = %ctx.remote, %target, "HBONE CONNECT without `forwarded: for=<source>`");
        return refuse(req, StatusCode::BAD_REQUEST, Failure::BadRequest).await;
    };
    let snapshot = shared.snapshot();
    let config = snapshot.config();
    let dest = match snapshot.workload(*target.ip()) {
        Some(w)
            if w.node == config.node
                && w.meshed
                && (w.namespace.as_str(), w.service_account.as_str())
                    == (ctx.local.0.as_str(), ctx.local.1.as_str()) =>
        {
            w.key()
        }
        _ => {
            tracing::info!(remote = %ctx.remote, source_principal = %ctx.peer, %target,
                "HBONE stream refused: the target is not a meshed pod here of the identity this connection authenticated");
            drop(snapshot);
            return refuse(req, StatusCode::MISDIRECTED_REQUEST, Failure::NotLocal).await;
        }
    };
    // The client may speak only for pods that run as its certified identity.
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
            return refuse(req, StatusCode::FORBIDDEN, Failure::BadRequest).await;
        }
    };
    let decision = policy::authorize(
        &config.policies,
        &policy::Request {
            source: Some(&ctx.peer),
            destination: *target.ip(),
            port: target.port(),
        },
    );
    shared
        .metrics
        .authorized(Direction::Inbound, decision.allowed(), decision.policy());
    if !decision.allowed() {
        tracing::info!(source_principal = %ctx.peer, %source, destination = %dest, %target,
            policy = decision.policy(), "connection denied by authorization policy");
        drop(snapshot);
        return refuse(req, StatusCode::FORBIDDEN, Failure::Denied).await;
    }
    let timeouts = config.timeouts.clone();
    let mark = config.capture.proxy_socket_mark;
    drop(snapshot);
    if req.is_reset() {
        tracing::debug!(source_principal = %ctx.peer, %target, "HBONE stream reset by the client before it was answered");
        return;
    }
    let server = match connect(target, timeouts.connect, mark, Some(source_ip)).await {
        Ok(s) => s,
        Err(e) => {
            tracing::info!(source_principal = %ctx.peer, %target, error = %e, "inbound connect failed");
            return refuse(req, StatusCode::SERVICE_UNAVAILABLE, Failure::Connect).await;
        }
    };
    let labels = ConnLabels {
        direction: Direction::Inbound,
        source,
        destination: dest,
        service: String::new(),
        source_principal: ctx.peer.to_string(),
        mtls: true,
    };
    let _alive = ctx.alive.clone();
    let _active = shared.metrics.active(Direction::Inbound);
    let stream = match req.accept().await {
        Ok(s) => s,
        Err(e) => {
            tracing::debug!(%target, error = %e, "HBONE stream ended before it was answered");
            shared.metrics.failed(Direction::Inbound, Failure::Relay);
            return;
        }
    };
    shared.metrics.tunnel_stream(Direction::Inbound);
    let counters = shared.metrics.conn(labels.clone());
    counters.opened.fetch_add(1, Ordering::Relaxed);
    let started = tokio::time::Instant::now();
    let outcome = stream
        .relay(server, TcpSide::Server, timeouts.idle, &counters)
        .await;
    counters.closed.fetch_add(1, Ordering::Relaxed);
    let (moved, error) = match outcome {
        Ok(m) => (m, None),
        Err(e) => {
            shared.metrics.failed(Direction::Inbound, Failure::Relay);
            (Default::default(), Some(e.to_string()))
        }
    };
    tracing::info!(
        target: "weft::access",
        direction = "inbound",
        security = "mutual_tls",
        source_principal = %labels.source_principal,
        source = %labels.source,
        destination = %labels.destination,
        %target,
        sent = moved.sent,
        received = moved.received,
        duration_ms = started.elapsed().as_millis() as u64,
        error = error.as_deref().unwrap_or(""),
        "connection closed"
    );
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
    fn get(
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
