//! HBONE's HTTP/2, written for a tunnel: CONNECT streams over one TLS 1.3
//! connection between two node proxies, nothing else.
//!
//! The wire is standard HTTP/2 (RFC 9113): preface, SETTINGS, HEADERS,
//! DATA, WINDOW_UPDATE, RST_STREAM, PING and GOAWAY, flow control on both
//! levels, HPACK header blocks. Its tests run it against hyper's HTTP/2
//! both ways. What it leaves out is what a general HTTP/2 stack spends its
//! time on when it carries a byte stream:
//!
//! - **No connection task in the data path.** A stream's task reads its TCP
//!   socket and encrypts the DATA frame onto the TLS connection itself
//!   (`out`, an async lock that also keeps TLS records in order). The
//!   connection's reader decrypts a DATA frame and writes its payload straight
//!   into the destination's TCP socket; only what that socket does not take
//!   at once is queued for the stream's task. A request costs one task
//!   wake-up per proxy pass, not three.
//! - **One TLS record per DATA frame**, header and payload in one vectored
//!   write, and one `write` to the socket.
//! - **Control frames** (SETTINGS and PING acks, WINDOW_UPDATE, RST_STREAM)
//!   go through a small per-connection task, so the reader never waits on
//!   the socket's send buffer (two readers each waiting for the other to read
//!   would deadlock).
//!
//! Locks: a stream's `recv` lock may be held while the connection's `state`
//! lock is taken, never the other way round; no std lock is held across an
//! `.await`.
//!
//! The receive windows are large (4 MiB per stream, 16 MiB per connection)
//! and are topped up when half is consumed: consumed means written to the
//! destination socket, so a slow reader slows its writer across the tunnel.

mod conn;
pub mod frame;
pub mod pool;
mod reader;
mod stream;

use std::collections::{HashMap, VecDeque};
use std::io::{self, IoSlice, Read as _, Write as _};
use std::pin::pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::task::Waker;
use std::time::{Duration, Instant};

use bytes::Bytes;
use socket2::SockRef;
use tokio::net::TcpStream;
use tokio::sync::Notify;

use crate::metrics::ConnCounters;
use crate::relay::{Moved, TcpSide, half_closed};
use frame::{code, flag, kind, setting};
use reader::{ReadError, Reader};
pub use stream::{Incoming, Stream};

/// Streams a connection carries at once (the server's
/// `SETTINGS_MAX_CONCURRENT_STREAMS`).
pub const MAX_STREAMS: usize = 100;
/// Each stream's receive window.
pub const STREAM_WINDOW: i64 = 4 << 20;
/// The connection's receive window.
pub const CONNECTION_WINDOW: i64 = 16 << 20;
/// The largest frame this side accepts.
pub const MAX_FRAME: usize = 256 << 10;
/// A quiet connection is probed with a PING after this long…
const KEEPALIVE: Duration = Duration::from_secs(30);
/// …and closed when nothing at all arrived for this much longer.
const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a closing connection may take to send its GOAWAY.
const GOAWAY_GRACE: Duration = Duration::from_secs(1);
/// Relay buffers: start small, grow while reads fill them.
const START_BUFFER: usize = 16 * 1024;
const MAX_BUFFER: usize = MAX_FRAME;
/// Ciphertext read per system call.
const READ_BUFFER: usize = 64 * 1024;
/// A header block larger than this is refused (ours are ~100 bytes).
const MAX_HEADER_BLOCK: usize = 64 * 1024;
/// The decoded size of a header list this side takes (RFC 9113 §6.5.2:
/// names, values and 32 bytes per field), advertised in SETTINGS.
const MAX_HEADER_LIST: usize = 16 * 1024;
/// The HPACK dynamic table this side's decoder keeps (the default, which
/// this side never raises).
const HPACK_TABLE: usize = 4096;
/// Control frames owed to a peer that does not read them: past this the
/// connection ends (ENHANCE_YOUR_CALM).
const MAX_PENDING: usize = 1 << 20;

/// Which end of the connection this side is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Opens streams (the source node).
    Client,
    /// Accepts them (the destination node).
    Server,
}

/// Milliseconds since the first call: a clock the idle checks share.
fn now_ms() -> u64 {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    EPOCH.get_or_init(Instant::now).elapsed().as_millis() as u64
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn protocol(what: impl Into<String>) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, what.into())
}

/// One HBONE connection; clones share it.
#[derive(Debug, Clone)]
pub struct Connection {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    role: Role,
    tcp: TcpStream,
    tls: Mutex<rustls::Connection>,
    /// Ciphertext not yet written. Holding it is the right to encrypt and
    /// write, so records reach the socket in the order they were sealed.
    out: tokio::sync::Mutex<Vec<u8>>,
    state: Mutex<State>,
    /// Control frames are queued, or TLS has records of its own to send.
    control: Notify,
    /// The connection closed.
    done: Notify,
    /// When a frame last arrived ([`now_ms`]).
    last_read: AtomicU64,
}

#[derive(Debug)]
struct State {
    streams: HashMap<u32, Entry>,
    /// The next stream this (client) side opens.
    next_id: u32,
    /// The highest stream the peer opened.
    last_peer_id: u32,
    /// What this side may still send on the connection.
    send_window: i64,
    peer_initial_window: i64,
    peer_max_frame: usize,
    peer_max_streams: usize,
    /// What the peer may still send on the connection.
    recv_window: i64,
    /// Consumed but not yet given back with a WINDOW_UPDATE.
    recv_unacked: i64,
    /// Control frames to send.
    pending: Vec<u8>,
    /// A GOAWAY was sent or received: no new streams.
    goaway: bool,
    ping_sent: bool,
    /// Why the connection ended.
    closed: Option<String>,
}

impl State {
    /// Registers stream `id`, with the send window the peer's settings give.
    fn open(&mut self, id: u32) -> Arc<StreamShared> {
        let shared = StreamShared::new(id);
        let entry = Entry {
            shared: shared.clone(),
            send_window: self.peer_initial_window,
        };
        self.streams.insert(id, entry);
        shared
    }
}

#[derive(Debug)]
struct Entry {
    shared: Arc<StreamShared>,
    send_window: i64,
}

#[derive(Debug)]
struct StreamShared {
    id: u32,
    /// Data, the end, a reset or the response arrived.
    recv_ready: Notify,
    /// Send window opened, or the stream or connection ended.
    send_ready: Notify,
    /// The task reading the stream as a byte stream (`AsyncRead`), waiting.
    reader: Mutex<Option<Waker>>,
    recv: Mutex<Recv>,
    /// When bytes last moved either way ([`now_ms`]).
    activity: AtomicU64,
    /// Reset, or its connection ended (`recv.reset` says why): read
    /// without the stream's lock.
    gone: AtomicBool,
}

#[derive(Debug, Default)]
struct Recv {
    /// Payload the destination socket has not taken yet.
    queue: VecDeque<Bytes>,
    /// The peer ended its side (END_STREAM).
    end: bool,
    /// The stream was reset or its connection ended, and why.
    reset: Option<String>,
    /// The response status (client streams).
    status: Option<u16>,
    /// The socket DATA goes into, once the stream relays.
    direct: Option<Arc<TcpStream>>,
    /// Where delivered bytes are counted.
    counter: Option<(Arc<ConnCounters>, bool)>,
    /// What the peer may still send on this stream.
    window: i64,
    unacked: i64,
    /// Bytes written to `direct`.
    delivered: u64,
}

impl Recv {
    fn count(&self, n: usize) {
        if let Some((c, sent)) = &self.counter {
            let field = if *sent { &c.sent } else { &c.received };
            field.fetch_add(n as u64, Ordering::Relaxed);
        }
    }
}

#[cfg(test)]
mod tests;
