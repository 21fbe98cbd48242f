//! The source side of HBONE: streams to pods on other nodes, on TLS 1.3
//! mTLS connections pooled per (source identity, destination identity,
//! destination node).
//!
//! ```text
//!  outbound ─ pool[(src id, dst id, dst node)] ══TLS 1.3 + h2══► <dst pod ip>:15008
//!     CONNECT <pod ip:port>, forwarded: for=<src pod ip>
//! ```
//!
//! The client accepts only a server that chains to the mesh roots and
//! certifies the destination pod's identity. Each connection carries up to
//! [`STREAMS_PER_CONNECTION`] streams. A renewed certificate starts new
//! connections; the old ones finish their streams and close. One dial at a
//! time per key: a burst of new streams waits for it and shares it.

use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use http::StatusCode;

use super::{Connection, MAX_STREAMS, Role, Stream};
use crate::config::Workload;
use crate::identity::{Account, Certified, SpiffeId};
use crate::metrics::Direction;
use crate::state::Shared;
use crate::tls;
use crate::transport::connect;

/// Streams one HTTP/2 connection carries before the pool opens another
/// (also the server's `SETTINGS_MAX_CONCURRENT_STREAMS`).
pub const STREAMS_PER_CONNECTION: u32 = MAX_STREAMS as u32;
/// How long a TLS handshake may take.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// A pooled connection without streams for this long is closed.
const IDLE: Duration = Duration::from_secs(60);
/// The header that carries the original source address (RFC 7239).
pub const FORWARDED: &str = "forwarded";
/// The CONNECT header in which a source proxy that routed HTTP says what
/// the stream carries (`http/1.1` or `h2`): the destination's proxy may
/// then read it per request (for its server spans).
pub const PROTOCOL: &str = "weft-protocol";

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
    Identity(#[from] crate::identity::IdentityError),
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

impl TunnelError {
    /// Whether it says the destination (its node, or the pod behind it)
    /// failed, rather than this node's identity or the destination's
    /// policy: what counts against an endpoint's health.
    pub fn endpoint_failed(&self) -> bool {
        match self {
            TunnelError::NoCertificate(..) | TunnelError::Tls(_) | TunnelError::Identity(_) => {
                false
            }
            TunnelError::Refused(_, status) => status.is_server_error(),
            TunnelError::Connect(..)
            | TunnelError::Handshake(..)
            | TunnelError::Http(..)
            | TunnelError::Dial(_) => true,
        }
    }
}

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

/// Opens a stream from the local pod `source` (at `source_ip`) to `target`
/// on the remote pod `dest`, on a pooled connection when one has room.
pub async fn open(
    pool: &Arc<Pool>,
    shared: &Arc<Shared>,
    source: &Workload,
    dest: &Workload,
    target: SocketAddrV4,
    source_ip: Ipv4Addr,
    protocol: Option<&'static str>,
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
    let entry = pool
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
                    let (conn, slot) = dial_once(pool, shared, &key, &entry, &cert, &expected, dest.ip).await?;
                    (conn, slot, true)
                }
            };
            match connect_stream(&conn, target, source_ip, protocol).await {
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
    pool: &Arc<Pool>,
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
    match dial(pool, shared, key, cert, expected.clone(), dest_ip).await {
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
    protocol: Option<&'static str>,
) -> Result<Stream, TunnelError> {
    let forwarded = format!("for={source_ip}");
    let mut headers = vec![(FORWARDED, forwarded.as_str())];
    if let Some(p) = protocol {
        headers.push((PROTOCOL, p));
    }
    let (status, stream) = conn
        .connect(&target.to_string(), &headers)
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
    pool: &Arc<Pool>,
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
    let pool = pool.clone();
    let key = key.clone();
    tokio::spawn(async move {
        tokio::select! {
            () = closer.closed() => {}
            () = idle(&idle_streams) => {
                tracing::debug!(%addr, "HBONE connection idle; closing it");
                closer.shut_down().await;
            }
        }
        pool.prune(&key).await;
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
