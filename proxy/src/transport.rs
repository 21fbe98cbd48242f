//! Sockets: transparent listeners, the original destination, resets.

use std::io;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::time::Duration;

use socket2::{Domain, Protocol, SockRef, Socket, Type};
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
