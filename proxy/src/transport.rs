//! Sockets: transparent listeners, the original destination, resets, and
//! reads that hold on sockets in the fast path's socket map.

use std::io;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::pin::Pin;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use socket2::{Domain, Protocol, SockRef, Socket, Type};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::tcp::OwnedReadHalf;
use tokio::net::{TcpListener, TcpSocket, TcpStream};

/// The destination a client asked for. With `bpf_sk_assign` capture it is
/// the accepted socket's local address: no NAT, no `SO_ORIGINAL_DST`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OrigDst(pub SocketAddrV4);

/// A listener bound to `0.0.0.0:port` with `IP_TRANSPARENT`, so it accepts
/// connections for any destination address that capture assigns to it.
/// Accepted sockets inherit `mark` (`SO_MARK`), which tells the fast path
/// that they are the proxy's.
pub fn transparent_listener(port: u16, mark: u32) -> io::Result<TcpListener> {
    let socket = Socket::new(Domain::IPV4, Type::STREAM, Some(Protocol::TCP))?;
    socket.set_ip_transparent_v4(true)?;
    socket.set_mark(mark)?;
    socket.set_reuse_address(true)?;
    socket.set_nonblocking(true)?;
    socket.bind(&SocketAddr::from((Ipv4Addr::UNSPECIFIED, port)).into())?;
    socket.listen(4096)?;
    TcpListener::from_std(socket.into())
}

/// A plain listener (admin, metrics).
pub async fn plain_listener(port: u16) -> io::Result<TcpListener> {
    TcpListener::bind((Ipv4Addr::UNSPECIFIED, port)).await
}

/// The original destination of an accepted connection.
pub fn orig_dst(stream: &TcpStream) -> io::Result<OrigDst> {
    match stream.local_addr()? {
        SocketAddr::V4(a) => Ok(OrigDst(a)),
        SocketAddr::V6(a) => Err(io::Error::new(
            io::ErrorKind::Unsupported,
            format!("IPv6 destination {a} is not captured yet"),
        )),
    }
}

/// Prepares an accepted connection: `TCP_NODELAY`, and its original
/// destination. Without one (IPv6), the connection is reset and `None`
/// returned.
pub fn accepted(stream: TcpStream, peer: SocketAddr) -> Option<(TcpStream, OrigDst)> {
    if let Err(e) = stream.set_nodelay(true) {
        tracing::debug!(%peer, error = %e, "setting TCP_NODELAY");
    }
    match orig_dst(&stream) {
        Ok(o) => Some((stream, o)),
        Err(e) => {
            tracing::warn!(%peer, error = %e, "connection without a usable destination");
            reset(stream);
            None
        }
    }
}

/// Closes with a reset, so the peer fails at once instead of seeing a clean
/// end of stream.
pub fn reset(stream: TcpStream) {
    if let Ok(std) = stream.into_std() {
        let socket = Socket::from(std);
        let _ = socket.set_linger(Some(Duration::ZERO));
    }
}

/// Connects with a deadline, `TCP_NODELAY` on, the socket marked as the
/// proxy's (`SO_MARK`). With `source`, the connection comes from that
/// address (`IP_TRANSPARENT`, an ephemeral port): the server sees the
/// client's address, not the proxy's. Its replies are routed towards the
/// client and come back to this socket through capture, which gives a
/// packet to the socket that owns its 4-tuple.
pub async fn connect(
    target: SocketAddrV4,
    timeout: Duration,
    mark: u32,
    source: Option<Ipv4Addr>,
) -> io::Result<TcpStream> {
    let socket = TcpSocket::new_v4()?;
    SockRef::from(&socket).set_mark(mark)?;
    if let Some(src) = source {
        SockRef::from(&socket).set_ip_transparent_v4(true)?;
        socket.bind(SocketAddr::from((src, 0)))?;
    }
    let stream = tokio::time::timeout(timeout, socket.connect(target.into()))
        .await
        .map_err(|_| {
            io::Error::new(
                io::ErrorKind::TimedOut,
                format!(
                    "connecting to {target} took over {:.1} s",
                    timeout.as_secs_f64()
                ),
            )
        })??;
    stream.set_nodelay(true)?;
    Ok(stream)
}

/// Reads from `tcp` into `buf`, where a short read is not taken to mean the
/// socket is empty: readiness is given up only when the kernel answers
/// `EAGAIN`.
///
/// A socket in the fast path's socket map can hold bytes in two queues:
/// messages redirected to it, and TCP segments that arrived after its
/// writer's direction switched to TCP (flow control). The kernel's
/// `tcp_bpf_recvmsg` reads from the redirected queue alone while it holds
/// anything, so such a read comes back short with TCP bytes still queued.
/// tokio's `poll_read` clears readiness on a short read (on epoll a short
/// read means drained) and then waits for the next edge; if no segment is
/// on its way, the bytes already queued are never read (a suspected cause
/// of the stall in docs/ARCHITECTURE.md, not yet reproduced). Reading
/// until `EAGAIN` costs one extra `recv` per short read.
pub async fn read_drained(tcp: &TcpStream, buf: &mut [u8]) -> io::Result<usize> {
    loop {
        match tcp.try_read(buf) {
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => tcp.readable().await?,
            done => return done,
        }
    }
}

/// [`read_drained`] as a poll, for [`AsyncRead`] implementations.
pub fn poll_read_drained(
    tcp: &TcpStream,
    cx: &mut Context<'_>,
    buf: &mut ReadBuf<'_>,
) -> Poll<io::Result<()>> {
    loop {
        ready!(tcp.poll_read_ready(cx))?;
        match tcp.try_read(buf.initialize_unfilled()) {
            Ok(n) => {
                buf.advance(n);
                return Poll::Ready(Ok(()));
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
            Err(e) => return Poll::Ready(Err(e)),
        }
    }
}

/// A TCP connection (or its read half) whose reads go through
/// [`poll_read_drained`]; writes pass through.
#[derive(Debug)]
pub struct Drained<S>(pub S);

/// What [`Drained`] reads from.
pub trait AsTcp {
    /// The socket.
    fn tcp(&self) -> &TcpStream;
}

impl AsTcp for TcpStream {
    fn tcp(&self) -> &TcpStream {
        self
    }
}

impl AsTcp for OwnedReadHalf {
    fn tcp(&self) -> &TcpStream {
        self.as_ref()
    }
}

impl<S: AsTcp + Unpin> AsyncRead for Drained<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        poll_read_drained(self.0.tcp(), cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Drained<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().0).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().0).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.0.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().0).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().0).poll_shutdown(cx)
    }
}
