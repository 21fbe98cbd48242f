//! Bidirectional byte relay between a client and a server connection.
//!
//! Each direction reads into its own buffer and writes everything it read
//! before reading again, so a slow reader slows its writer (backpressure by
//! construction). End of stream in one direction becomes a half-close
//! (`shutdown(SHUT_WR)`) of the other side, and the other direction goes on.
//! Buffers start small, so an idle or chatty connection costs little, and
//! grow while reads fill them, so a bulk stream is not bound by syscalls.
//! Reads go on until the kernel says `EAGAIN`, never stopping at a short
//! read ([`read_drained`]: a fast-path socket can hold bytes in two queues
//! and return them one queue at a time).

use std::io;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::io::{AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;

use crate::metrics::ConnCounters;
use crate::transport::{AsTcp, read_drained, reset};

const START_BUFFER: usize = 16 * 1024;
const MAX_BUFFER: usize = 256 * 1024;

/// Bytes moved by a finished relay.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Moved {
    /// Client to server.
    pub sent: u64,
    /// Server to client.
    pub received: u64,
}

/// Relays until both directions have ended, either fails, or nothing moved
/// for `idle`. When it fails, both connections are reset, so that a peer
/// sees an abort as an abort and never a clean end of a cut-short stream.
pub async fn relay(
    client: TcpStream,
    server: TcpStream,
    idle: Duration,
    counters: &ConnCounters,
) -> io::Result<Moved> {
    let (mut cr, mut cw) = client.into_split();
    let (mut sr, mut sw) = server.into_split();
    let result = relay_halves((&mut cr, &mut cw), (&mut sr, &mut sw), idle, counters).await;
    if result.is_err() {
        for stream in [cr.reunite(cw), sr.reunite(sw)].into_iter().flatten() {
            reset(stream);
        }
    }
    result
}

/// Which end of a relay the TCP connection is (HBONE streams relay with a
/// TCP connection at one end: [`crate::hbone::Stream::relay`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TcpSide {
    /// The connection came from the client (outbound: the local pod).
    Client,
    /// The connection goes to the server (inbound: the local pod).
    Server,
}

async fn relay_halves<CR, CW, SR, SW>(
    (cr, cw): (&mut CR, &mut CW),
    (sr, sw): (&mut SR, &mut SW),
    idle: Duration,
    counters: &ConnCounters,
) -> io::Result<Moved>
where
    CR: AsTcp,
    CW: AsyncWrite + Unpin,
    SR: AsTcp,
    SW: AsyncWrite + Unpin,
{
    let start = Instant::now();
    let last = Arc::new(AtomicU64::new(0));
    let up = pump(cr, sw, &counters.sent, &last, start);
    let down = pump(sr, cw, &counters.received, &last, start);
    let both = async { tokio::try_join!(up, down) };
    tokio::select! {
        r = both => r.map(|(sent, received)| Moved { sent, received }),
        () = idle_watch(&last, start, idle) => Err(io::Error::new(
            io::ErrorKind::TimedOut,
            format!("idle for {:.0} s", idle.as_secs_f64()),
        )),
    }
}

async fn pump<R, W>(
    from: &mut R,
    to: &mut W,
    bytes: &AtomicU64,
    last: &AtomicU64,
    start: Instant,
) -> io::Result<u64>
where
    R: AsTcp,
    W: AsyncWrite + Unpin,
{
    let mut buf = vec![0u8; START_BUFFER];
    let mut total = 0u64;
    loop {
        let n = read_drained(from.tcp(), &mut buf).await?;
        if n == 0 {
            half_closed(to.shutdown().await)?;
            return Ok(total);
        }
        to.write_all(&buf[..n]).await?;
        to.flush().await?;
        total += n as u64;
        bytes.fetch_add(n as u64, Ordering::Relaxed);
        last.store(start.elapsed().as_millis() as u64, Ordering::Relaxed);
        if n == buf.len() && buf.len() < MAX_BUFFER {
            buf.resize(buf.len() * 2, 0);
        }
    }
}

/// The result of passing a half-close on. A peer that is already gone
/// (`ENOTCONN`: it closed and reset after its own end) has nobody left to
/// tell: that direction is over, not failed. Were it an error, the relay
/// would reset the other side and could cut off the answer that peer sent
/// before it closed, which a direct connection would have delivered. If
/// the peer reset early, the other direction's read sees the reset.
pub fn half_closed(result: io::Result<()>) -> io::Result<()> {
    match result {
        Err(e) if e.kind() == io::ErrorKind::NotConnected => Ok(()),
        other => other,
    }
}

async fn idle_watch(last: &AtomicU64, start: Instant, idle: Duration) {
    loop {
        let seen = Duration::from_millis(last.load(Ordering::Relaxed));
        let deadline = start + seen + idle;
        tokio::time::sleep_until(deadline).await;
        if Duration::from_millis(last.load(Ordering::Relaxed)) == seen {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::{TcpListener, TcpStream};

    use super::*;

    /// Two connected loopback sockets.
    async fn pair() -> (TcpStream, TcpStream) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (a, b) = tokio::join!(TcpStream::connect(addr), listener.accept());
        (a.unwrap(), b.unwrap().0)
    }

    /// A client and a server connected through a running relay.
    async fn relayed() -> (
        TcpStream,
        tokio::task::JoinHandle<io::Result<Moved>>,
        TcpStream,
    ) {
        let (client, proxy_client_side) = pair().await;
        let (proxy_server_side, server) = pair().await;
        let relay = tokio::spawn(async move {
            let counters = ConnCounters::default();
            relay(
                proxy_client_side,
                proxy_server_side,
                Duration::from_secs(5),
                &counters,
            )
            .await
        });
        (client, relay, server)
    }

    #[tokio::test]
    async fn bytes_flow_both_ways_and_a_half_close_is_passed_on_while_the_other_way_goes_on() {
        let (mut client, relay, mut server) = relayed().await;
        client.write_all(b"request").await.unwrap();
        client.shutdown().await.unwrap();
        let mut got = Vec::new();
        server.read_to_end(&mut got).await.unwrap();
        assert_eq!(got, b"request", "the server saw the data, then the end");
        // The server still writes after the client half-closed.
        server.write_all(&vec![7u8; 1 << 20]).await.unwrap();
        server.shutdown().await.unwrap();
        let mut back = Vec::new();
        client.read_to_end(&mut back).await.unwrap();
        assert_eq!(back.len(), 1 << 20);
        let moved = relay.await.unwrap().unwrap();
        assert_eq!(
            moved,
            Moved {
                sent: 7,
                received: 1 << 20
            }
        );
    }

    #[tokio::test]
    async fn a_reset_from_the_server_reaches_the_client_as_a_reset_not_a_clean_end() {
        let (mut client, relay, mut server) = relayed().await;
        client.write_all(b"request").await.unwrap();
        let mut got = [0u8; 7];
        server.read_exact(&mut got).await.unwrap();
        server.write_all(b"half a resp").await.unwrap();
        // The server aborts.
        reset(server);
        assert!(relay.await.unwrap().is_err());
        let mut back = Vec::new();
        let end = client.read_to_end(&mut back).await;
        assert_eq!(
            end.map_err(|e| e.kind()),
            Err(io::ErrorKind::ConnectionReset),
            "after {back:?}"
        );
    }

    #[tokio::test]
    async fn a_half_close_towards_a_server_that_answered_closed_and_reset_ends_the_relay_cleanly() {
        let (mut client, relay, mut server) = relayed().await;
        client.write_all(b"hello\n").await.unwrap();
        server.readable().await.unwrap();
        server.write_all(b"answer").await.unwrap();
        server.shutdown().await.unwrap();
        let mut back = Vec::new();
        client.read_to_end(&mut back).await.unwrap();
        assert_eq!(back, b"answer");
        // It closes with "hello" unread: the kernel resets.
        reset(server);
        client.shutdown().await.unwrap();
        let moved = relay.await.unwrap().expect("the relay ends cleanly");
        assert_eq!(
            moved,
            Moved {
                sent: 6,
                received: 6
            }
        );
    }

    #[tokio::test]
    async fn a_connection_with_no_bytes_for_the_idle_timeout_is_closed() {
        let (_client, proxy_client_side) = pair().await;
        let (proxy_server_side, _server) = pair().await;
        let counters = ConnCounters::default();
        let started = Instant::now();
        let err = relay(
            proxy_client_side,
            proxy_server_side,
            Duration::from_millis(200),
            &counters,
        )
        .await
        .unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);
        assert!(started.elapsed() >= Duration::from_millis(200));
    }
}
