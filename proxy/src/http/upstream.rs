//! Upstream HTTP connections for L7 requests, reused per (source pod,
//! endpoint): HTTP/1.1 connections kept alive in small idle lists, one
//! multiplexed HTTP/2 connection. An HTTP/1.1 request whose body is in
//! hand goes through the direct client ([`super::h1`]) on the caller's
//! task; one that streams, or switches protocols, through hyper's. A
//! connection to a pod on another node is an HBONE stream (mTLS as the source's identity, the destination node
//! applies its policy); to a meshed pod on this node it passes the
//! destination's checks here first ([`crate::admit::admit`]); anything
//! else is a plain connection from the source pod's address.

use std::net::{Ipv4Addr, SocketAddrV4};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::{Frame, Incoming, SizeHint};
use hyper::client::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo};
use sync_wrapper::SyncWrapper;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

use super::answer::{Body, BoxError};
use super::h1;
use crate::admit::{Delivery, admit};
use crate::config::Workload;
use crate::hbone::Stream;
use crate::hbone::pool::{self, Pool, Slot};
use crate::metrics::Direction;
use crate::state::Shared;
use crate::transport::connect;

/// Idle HTTP/1.1 connections kept per (source, endpoint).
const IDLE_PER_KEY: usize = 32;

/// Which HTTP the upstream connection speaks (the downstream's).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Version {
    /// HTTP/1.1.
    Http1,
    /// HTTP/2 with prior knowledge.
    Http2,
}

impl Version {
    /// As an HBONE CONNECT's `weft-protocol` says it.
    pub fn protocol(self) -> &'static str {
        match self {
            Version::Http1 => "http/1.1",
            Version::Http2 => "h2",
        }
    }
}

/// Whether a request may go over a kept-alive HTTP/1.1 connection and
/// leave it for the next one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reuse {
    /// Yes.
    Pooled,
    /// No: the connection becomes a byte relay (`Upgrade`, `CONNECT`).
    Never,
}

/// Why an upstream request could not be sent.
#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    /// The destination's checks refused it (same node).
    #[error("refused by the destination: {0}")]
    Refused(String),
    /// The connection could not be made.
    #[error("connecting to {0}: {1}")]
    Connect(SocketAddrV4, String),
    /// HTTP failed on the connection (including a reset before the answer).
    #[error("HTTP to {0}: {1}")]
    Http(SocketAddrV4, hyper::Error),
    /// HTTP/1.1 failed on a connection of the direct client.
    #[error("HTTP/1.1 to {0}: {1}")]
    Direct(SocketAddrV4, h1::Error),
    /// No response headers within the backend request timeout.
    #[error("no answer from {0} within {1:?}")]
    Timeout(SocketAddrV4, std::time::Duration),
}

type Key = (Ipv4Addr, SocketAddrV4);

/// A request body on its way upstream.
#[derive(Debug)]
pub enum Outgoing {
    /// Whole, in hand (it can be sent again).
    Buffered(Bytes),
    /// Streaming from the downstream.
    Streaming(Body),
}

impl Outgoing {
    fn into_body(self) -> Body {
        match self {
            Outgoing::Buffered(b) => Full::new(b).map_err(|never| match never {}).boxed(),
            Outgoing::Streaming(b) => b,
        }
    }
}

/// A response body from upstream: read by hyper's client, or by the
/// direct client on the reader's task.
#[derive(Debug)]
pub enum Reply {
    /// From hyper's client.
    Hyper(Incoming),
    /// From the direct HTTP/1.1 client.
    Direct(h1::Body<Key, Upstream>),
}

impl hyper::body::Body for Reply {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match self.get_mut() {
            Reply::Hyper(b) => Pin::new(b).poll_frame(cx).map_err(Into::into),
            Reply::Direct(b) => Pin::new(b).poll_frame(cx),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            Reply::Hyper(b) => b.is_end_stream(),
            Reply::Direct(b) => b.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            Reply::Hyper(b) => b.size_hint(),
            Reply::Direct(b) => b.size_hint(),
        }
    }
}

/// Every upstream connection of this proxy's L7 traffic.
#[derive(Debug)]
pub struct Upstreams {
    shared: Arc<Shared>,
    tunnels: Arc<Pool>,
    /// Idle connections of the direct HTTP/1.1 client.
    direct: Arc<h1::IdleList<Key, Upstream>>,
    /// Idle connections of hyper's HTTP/1.1 client (streaming bodies).
    http1: Mutex<foldhash::HashMap<Key, Vec<http1::SendRequest<Body>>>>,
    http2: Mutex<foldhash::HashMap<Key, http2::SendRequest<Body>>>,
}

impl Upstreams {
    /// Upstreams that open HBONE streams from `tunnels`.
    pub fn new(shared: Arc<Shared>, tunnels: Arc<Pool>) -> Upstreams {
        Upstreams {
            shared,
            tunnels,
            direct: Arc::new(h1::IdleList::new(IDLE_PER_KEY)),
            http1: Mutex::default(),
            http2: Mutex::default(),
        }
    }

    /// The proxy's shared view.
    pub fn shared(&self) -> &Arc<Shared> {
        &self.shared
    }

    /// Sends `req` from `source` to `endpoint` over a reused connection
    /// when one is free, a new one otherwise.
    pub async fn send(
        &self,
        source: &Workload,
        endpoint: SocketAddrV4,
        version: Version,
        reuse: Reuse,
        req: http::Request<Outgoing>,
    ) -> Result<http::Response<Reply>, UpstreamError> {
        let (parts, body) = req.into_parts();
        match (version, reuse, body) {
            (Version::Http1, Reuse::Pooled, Outgoing::Buffered(body)) => {
                self.direct(source, endpoint, &parts, &body).await
            }
            (_, _, body) => {
                let req = http::Request::from_parts(parts, body.into_body());
                let res = self.hyper(source, endpoint, version, reuse, req).await?;
                Ok(res.map(Reply::Hyper))
            }
        }
    }

    /// The direct client's exchange. An idle connection the server closed
    /// meanwhile, found out only once the request is written, gives the
    /// request to a new connection when sending it again is safe: it is
    /// idempotent (RFC 9110 §9.2.2), and nothing of an answer came.
    async fn direct(
        &self,
        source: &Workload,
        endpoint: SocketAddrV4,
        parts: &http::request::Parts,
        body: &Bytes,
    ) -> Result<http::Response<Reply>, UpstreamError> {
        let key = (source.ip, endpoint);
        let home = || h1::Home {
            list: self.direct.clone(),
            key,
        };
        let fail = |e| UpstreamError::Direct(endpoint, e);
        if let Some(conn) = self.direct.take(&key) {
            match h1::send(conn, parts, body, home()).await {
                Ok(res) => return Ok(res.map(Reply::Direct)),
                Err(e) if e.nothing_came() && parts.method.is_idempotent() => {
                    tracing::debug!(%endpoint, error = %e, "kept-alive connection closed by the server; sending again on a new one");
                }
                Err(e) => return Err(fail(e)),
            }
        }
        let conn = h1::Conn::new(self.connect(source, endpoint, Version::Http1).await?);
        let res = h1::send(conn, parts, body, home()).await.map_err(fail)?;
        Ok(res.map(Reply::Direct))
    }

    /// hyper's client: for bodies that stream, protocol switches, HTTP/2.
    async fn hyper(
        &self,
        source: &Workload,
        endpoint: SocketAddrV4,
        version: Version,
        reuse: Reuse,
        req: http::Request<Body>,
    ) -> Result<http::Response<Incoming>, UpstreamError> {
        let key = (source.ip, endpoint);
        match version {
            Version::Http1 if reuse == Reuse::Never => {
                let mut sender = self.handshake_http1(source, endpoint).await?;
                sender
                    .send_request(req)
                    .await
                    .map_err(|e| UpstreamError::Http(endpoint, e))
            }
            Version::Http1 => {
                // A kept-alive connection the server closed meanwhile fails
                // before the request is sent: then a new one takes it.
                let mut req = req;
                while let Some(mut sender) = self.idle_http1(&key) {
                    match sender.try_send_request(req).await {
                        Ok(res) => {
                            self.keep_http1(key, sender);
                            return Ok(res);
                        }
                        Err(mut e) => match e.take_message() {
                            Some(unsent) => req = unsent,
                            None => return Err(UpstreamError::Http(endpoint, e.into_error())),
                        },
                    }
                }
                let mut sender = self.handshake_http1(source, endpoint).await?;
                let res = sender
                    .send_request(req)
                    .await
                    .map_err(|e| UpstreamError::Http(endpoint, e))?;
                self.keep_http1(key, sender);
                Ok(res)
            }
            Version::Http2 => {
                let existing = self
                    .http2
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .get(&key)
                    .filter(|s| !s.is_closed())
                    .cloned();
                let mut sender = match existing {
                    Some(s) => s,
                    None => {
                        let io = self.connect(source, endpoint, version).await?;
                        let (sender, conn) =
                            http2::handshake(TokioExecutor::new(), TokioIo::new(io))
                                .await
                                .map_err(|e| UpstreamError::Http(endpoint, e))?;
                        tokio::spawn(async move {
                            if let Err(e) = conn.await {
                                tracing::debug!(%endpoint, error = %e, "upstream HTTP/2 connection ended");
                            }
                        });
                        self.http2
                            .lock()
                            .unwrap_or_else(|p| p.into_inner())
                            .insert(key, sender.clone());
                        sender
                    }
                };
                sender
                    .send_request(req)
                    .await
                    .map_err(|e| UpstreamError::Http(endpoint, e))
            }
        }
    }

    /// Keeps the connections of the (source pod, endpoint) pairs `keep`
    /// says yes to, and drops closed ones; the rest are closed.
    pub fn retain(&self, keep: impl Fn(Ipv4Addr, SocketAddrV4) -> bool) {
        self.direct
            .retain(|(source, endpoint)| keep(*source, *endpoint));
        self.http1
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .retain(|(source, endpoint), list| {
                list.retain(|s| !s.is_closed());
                !list.is_empty() && keep(*source, *endpoint)
            });
        self.http2
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .retain(|(source, endpoint), s| !s.is_closed() && keep(*source, *endpoint));
    }

    /// A new HTTP/1.1 connection from `source` to `endpoint`.
    async fn handshake_http1(
        &self,
        source: &Workload,
        endpoint: SocketAddrV4,
    ) -> Result<http1::SendRequest<Body>, UpstreamError> {
        let io = self.connect(source, endpoint, Version::Http1).await?;
        let (sender, conn) = http1::handshake(TokioIo::new(io))
            .await
            .map_err(|e| UpstreamError::Http(endpoint, e))?;
        tokio::spawn(async move {
            if let Err(e) = conn.with_upgrades().await {
                tracing::debug!(%endpoint, error = %e, "upstream HTTP/1.1 connection ended");
            }
        });
        Ok(sender)
    }

    /// A kept-alive HTTP/1.1 connection that is free now, if any.
    fn idle_http1(&self, key: &Key) -> Option<http1::SendRequest<Body>> {
        let mut idle = self.http1.lock().unwrap_or_else(|p| p.into_inner());
        let list = idle.get_mut(key)?;
        // Drop closed ones; a busy one (its last response still streaming)
        // stays for later.
        list.retain(|s| !s.is_closed());
        let free = list.iter().position(http1::SendRequest::is_ready)?;
        Some(list.swap_remove(free))
    }

    /// Keeps an HTTP/1.1 connection for the next request.
    fn keep_http1(&self, key: Key, sender: http1::SendRequest<Body>) {
        let mut idle = self.http1.lock().unwrap_or_else(|p| p.into_inner());
        let list = idle.entry(key).or_default();
        if list.len() < IDLE_PER_KEY {
            list.push(sender);
        }
    }

    /// A connection from `source` to `endpoint` that will carry
    /// `version`, as the mesh makes it.
    async fn connect(
        &self,
        source: &Workload,
        endpoint: SocketAddrV4,
        version: Version,
    ) -> Result<Upstream, UpstreamError> {
        let shared = &self.shared;
        let snapshot = shared.snapshot();
        let config = snapshot.config();
        let dest = snapshot
            .workload(*endpoint.ip())
            .filter(|w| w.meshed)
            .cloned();
        let (timeouts, mark, node) = (
            config.timeouts.clone(),
            config.capture.proxy_socket_mark,
            config.node.clone(),
        );
        drop(snapshot);
        let from = shared.connect_from(Some(source.ip), *endpoint.ip());
        match dest {
            Some(dest) if dest.node != node && shared.mtls => {
                let (stream, slot) = pool::open(
                    &self.tunnels,
                    shared,
                    source,
                    &dest,
                    endpoint,
                    source.ip,
                    Some(version.protocol()),
                )
                .await
                .map_err(|e| UpstreamError::Connect(endpoint, e.to_string()))?;
                return Ok(Upstream::Tunnel {
                    io: SyncWrapper::new(stream),
                    _slot: slot,
                });
            }
            Some(dest) if dest.node == node => {
                let principal = shared.identity_of(source);
                let delivery = Delivery {
                    http: false,
                    target: endpoint,
                    principal: principal.as_ref(),
                    runs_as: None,
                    from,
                };
                admit(shared, Direction::Outbound, &delivery)
                    .map_err(|r| UpstreamError::Refused(format!("{r:?} ({})", dest.key())))?;
            }
            _ => {}
        }
        let tcp = connect(endpoint, timeouts.connect, mark, from)
            .await
            .map_err(|e| UpstreamError::Connect(endpoint, e.to_string()))?;
        Ok(Upstream::Tcp(tcp))
    }
}

/// An upstream connection: a socket, or an HBONE stream and its claim on
/// its pooled connection.
#[derive(Debug)]
pub enum Upstream {
    /// A socket.
    Tcp(TcpStream),
    /// An HBONE stream.
    Tunnel {
        /// The stream (only ever used through `&mut`, which makes it
        /// `Sync` as response bodies must be).
        io: SyncWrapper<Stream>,
        /// Held while the stream lives: its pooled connection counts it.
        _slot: Slot,
    },
}

impl AsyncRead for Upstream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Upstream::Tcp(io) => crate::transport::poll_read_drained(io, cx, buf),
            Upstream::Tunnel { io, .. } => Pin::new(io.get_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Upstream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        match self.get_mut() {
            Upstream::Tcp(io) => Pin::new(io).poll_write(cx, buf),
            Upstream::Tunnel { io, .. } => Pin::new(io.get_mut()).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Upstream::Tcp(io) => Pin::new(io).poll_flush(cx),
            Upstream::Tunnel { io, .. } => Pin::new(io.get_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Upstream::Tcp(io) => Pin::new(io).poll_shutdown(cx),
            Upstream::Tunnel { io, .. } => Pin::new(io.get_mut()).poll_shutdown(cx),
        }
    }
}
