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

pub mod frame;

use std::collections::{HashMap, VecDeque};
use std::io::{self, IoSlice, Read as _, Write as _};
use std::pin::pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::time::{Duration, Instant};

use bytes::Bytes;
use socket2::SockRef;
use tokio::net::TcpStream;
use tokio::sync::Notify;

use crate::metrics::ConnCounters;
use crate::relay::{Moved, TcpSide};
use frame::{code, flag, kind, setting};

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

impl Connection {
    /// Starts HTTP/2 on a TLS connection whose handshake is done. `tls` may
    /// hold records read past the handshake; they are processed first.
    pub fn new(role: Role, tcp: TcpStream, mut tls: rustls::Connection) -> io::Result<Connection> {
        let mut pending = Vec::with_capacity(128);
        if role == Role::Client {
            pending.extend_from_slice(frame::PREFACE);
        }
        let mut settings = vec![
            (setting::INITIAL_WINDOW_SIZE, STREAM_WINDOW as u32),
            (setting::MAX_FRAME_SIZE, MAX_FRAME as u32),
            (setting::MAX_HEADER_LIST_SIZE, MAX_HEADER_LIST as u32),
        ];
        match role {
            Role::Client => settings.push((setting::ENABLE_PUSH, 0)),
            Role::Server => settings.push((setting::MAX_CONCURRENT_STREAMS, MAX_STREAMS as u32)),
        }
        frame::put_settings(&mut pending, &settings);
        frame::put_window_update(
            &mut pending,
            0,
            (CONNECTION_WINDOW - frame::DEFAULT_WINDOW) as u32,
        );
        // Unacknowledged bytes for this long end the connection, so a writer
        // stuck on a dead peer gets an error like the keepalive would.
        SockRef::from(&tcp).set_tcp_user_timeout(Some(KEEPALIVE + KEEPALIVE_TIMEOUT))?;
        // Sealed now, so that it goes out before any stream's first frame.
        let mut out = Vec::with_capacity(READ_BUFFER);
        tls.writer().write_all(&pending)?;
        while tls.wants_write() {
            tls.write_tls(&mut out)?;
        }
        pending.clear();
        let inner = Arc::new(Inner {
            role,
            tcp,
            tls: Mutex::new(tls),
            out: tokio::sync::Mutex::new(out),
            state: Mutex::new(State {
                streams: HashMap::new(),
                next_id: 1,
                last_peer_id: 0,
                send_window: frame::DEFAULT_WINDOW,
                peer_initial_window: frame::DEFAULT_WINDOW,
                peer_max_frame: frame::DEFAULT_MAX_FRAME,
                peer_max_streams: MAX_STREAMS,
                recv_window: CONNECTION_WINDOW,
                recv_unacked: 0,
                pending,
                goaway: false,
                ping_sent: false,
                closed: None,
            }),
            control: Notify::new(),
            done: Notify::new(),
            last_read: AtomicU64::new(now_ms()),
        });
        inner.control.notify_one();
        tokio::spawn(control(inner.clone()));
        Ok(Connection { inner })
    }

    /// Reads frames until the connection ends: a client spawns this; a
    /// server runs it, and `accept` gets every stream the peer opens (it
    /// must not block: it spawns what handles the stream). The error says
    /// why the connection ended, if not cleanly.
    pub async fn run(&self, mut accept: impl FnMut(Incoming) + Send) -> io::Result<()> {
        let inner = &self.inner;
        let result = Reader::new(inner.clone()).run(&mut accept).await;
        let (why, goaway) = match &result {
            Ok(()) => ("the peer closed the connection".to_owned(), None),
            Err(ReadError::Io(e)) => (e.to_string(), None),
            Err(ReadError::Protocol(c, why)) => (format!("{} ({why})", code::name(*c)), Some(*c)),
        };
        if result.is_err() {
            // A GOAWAY for a protocol error; for a TLS error, the alert TLS
            // has queued.
            let mut f = Vec::new();
            if let Some(c) = goaway {
                frame::put_goaway(&mut f, lock(&inner.state).last_peer_id, c);
            }
            let _ = tokio::time::timeout(GOAWAY_GRACE, inner.write_plain(&f)).await;
        }
        inner.close(&why);
        match result {
            Ok(()) => Ok(()),
            Err(ReadError::Io(e)) => Err(e),
            Err(ReadError::Protocol(..)) => Err(protocol(why)),
        }
    }

    /// Whether the connection has ended.
    pub fn is_closed(&self) -> bool {
        lock(&self.inner.state).closed.is_some()
    }

    /// Whether a new stream may be opened now.
    pub fn can_open(&self) -> bool {
        let s = lock(&self.inner.state);
        s.closed.is_none()
            && !s.goaway
            && s.streams.len() < s.peer_max_streams
            && s.next_id < (1 << 31)
    }

    /// Completes when the connection has ended.
    pub async fn closed(&self) {
        self.inner.closed().await;
    }

    /// Says GOAWAY, then closes.
    pub async fn shut_down(&self) {
        let inner = &self.inner;
        let mut f = Vec::new();
        {
            let mut s = lock(&inner.state);
            s.goaway = true;
            frame::put_goaway(&mut f, s.last_peer_id, code::NO_ERROR);
        }
        let _ = tokio::time::timeout(GOAWAY_GRACE, async {
            // Sealed under the right to write, so nothing follows the
            // close_notify.
            let mut out = inner.out.lock().await;
            inner.encrypt(&f, &mut out)?;
            {
                let mut tls = lock(&inner.tls);
                tls.send_close_notify();
                while tls.wants_write() {
                    tls.write_tls(&mut *out)?;
                }
            }
            inner.flush(&mut out).await
        })
        .await;
        inner.close("closed by this side");
    }

    /// Opens a CONNECT stream to `authority` with `headers` and waits for
    /// the response: the stream and the status (200: it relays; any other:
    /// the peer refused and the stream is over).
    pub async fn connect(
        &self,
        authority: &str,
        headers: &[(&str, &str)],
    ) -> io::Result<(u16, Stream)> {
        let inner = &self.inner;
        let mut fields = vec![(":method", "CONNECT"), (":authority", authority)];
        fields.extend_from_slice(headers);
        // Stream ids must rise in the order streams appear on the wire: the
        // id is taken with the right to write.
        let mut out = inner.out.lock().await;
        let shared = {
            let mut s = lock(&inner.state);
            if let Some(why) = &s.closed {
                return Err(io::Error::new(io::ErrorKind::NotConnected, why.clone()));
            }
            if s.goaway || s.next_id >= 1 << 31 {
                return Err(io::Error::new(
                    io::ErrorKind::NotConnected,
                    "the connection takes no new streams (GOAWAY)",
                ));
            }
            let id = s.next_id;
            s.next_id += 2;
            s.open(id)
        };
        let stream = Stream {
            conn: inner.clone(),
            shared,
            sent_end: false,
        };
        let mut f = Vec::with_capacity(128);
        frame::put_headers(&mut f, stream.shared.id, false, &fields);
        inner.encrypt(&f, &mut out)?;
        inner.flush(&mut out).await?;
        drop(out);
        let shared = stream.shared.clone();
        loop {
            let mut ready = pin!(shared.recv_ready.notified());
            ready.as_mut().enable();
            {
                let recv = lock(&shared.recv);
                if let Some(status) = recv.status {
                    return Ok((status, stream));
                }
                if let Some(why) = &recv.reset {
                    return Err(io::Error::new(io::ErrorKind::ConnectionReset, why.clone()));
                }
            }
            ready.await;
        }
    }
}

impl Inner {
    /// Whether stream `id` is one the peer opens (clients open odd ids).
    fn peer_opens(&self, id: u32) -> bool {
        (id % 2 == 1) == (self.role == Role::Server)
    }

    /// Seals `plain` into `out` (held).
    fn encrypt(&self, plain: &[u8], out: &mut Vec<u8>) -> io::Result<()> {
        self.encrypt_vectored(&[IoSlice::new(plain)], out)
    }

    fn encrypt_vectored(&self, parts: &[IoSlice<'_>], out: &mut Vec<u8>) -> io::Result<()> {
        let total: usize = parts.iter().map(|p| p.len()).sum();
        let mut tls = lock(&self.tls);
        let mut written = 0;
        while written < total {
            let n = if written == 0 {
                tls.writer().write_vectored(parts)?
            } else {
                // Rare: TLS took part of it (its buffer limit); the rest
                // goes one slice at a time.
                let mut skip = written;
                let mut n = 0;
                for p in parts {
                    if skip >= p.len() {
                        skip -= p.len();
                        continue;
                    }
                    n = tls.writer().write(&p[skip..])?;
                    break;
                }
                n
            };
            while tls.wants_write() {
                tls.write_tls(out)?;
            }
            if n == 0 {
                return Err(io::Error::other("TLS took no plaintext"));
            }
            written += n;
        }
        while tls.wants_write() {
            tls.write_tls(out)?;
        }
        Ok(())
    }

    /// Writes `out` (held) to the socket. Cancel-safe: what is not written
    /// stays for the next holder.
    async fn flush(&self, out: &mut Vec<u8>) -> io::Result<()> {
        while !out.is_empty() {
            match self.tcp.try_write(out) {
                Ok(n) => {
                    out.drain(..n);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => self.tcp.writable().await?,
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    /// Seals and writes `plain`, and whatever else waits to go out.
    async fn write_plain(&self, plain: &[u8]) -> io::Result<()> {
        let mut out = self.out.lock().await;
        if !plain.is_empty() || lock(&self.tls).wants_write() {
            self.encrypt(plain, &mut out)?;
        }
        self.flush(&mut out).await
    }

    /// Queues control frames for the control task.
    fn queue(&self, f: impl FnOnce(&mut Vec<u8>)) {
        f(&mut lock(&self.state).pending);
        self.control.notify_one();
    }

    /// Ends the connection: every stream fails with `why`.
    fn close(&self, why: &str) {
        let streams: Vec<Arc<StreamShared>> = {
            let mut s = lock(&self.state);
            if s.closed.is_none() {
                s.closed = Some(why.to_owned());
            }
            s.goaway = true;
            s.streams.drain().map(|(_, e)| e.shared).collect()
        };
        for shared in streams {
            shared.fail(&format!("the HBONE connection ended: {why}"));
        }
        let _ = SockRef::from(&self.tcp).shutdown(std::net::Shutdown::Both);
        self.done.notify_waiters();
        self.control.notify_one();
    }

    async fn closed(&self) {
        loop {
            let mut done = pin!(self.done.notified());
            done.as_mut().enable();
            if lock(&self.state).closed.is_some() {
                return;
            }
            done.await;
        }
    }

    /// Gives back `n` consumed bytes of the connection window.
    fn consumed(&self, n: i64) {
        if n == 0 {
            return;
        }
        let mut s = lock(&self.state);
        s.recv_unacked += n;
        // Half the window consumed, or the peer's room below half while
        // queued bytes hold the rest: give back what was consumed.
        let due = s.recv_unacked >= CONNECTION_WINDOW / 2 || s.recv_window < CONNECTION_WINDOW / 2;
        if due && s.closed.is_none() {
            let inc = s.recv_unacked;
            s.recv_unacked = 0;
            s.recv_window += inc;
            frame::put_window_update(&mut s.pending, 0, inc as u32);
            drop(s);
            self.control.notify_one();
        }
    }

    /// Gives back `n` consumed bytes of `stream`'s window (and the
    /// connection's).
    fn stream_consumed(&self, stream: &StreamShared, recv: &mut Recv, n: usize) {
        recv.unacked += n as i64;
        if recv.unacked >= STREAM_WINDOW / 2 && !recv.end && recv.reset.is_none() {
            let inc = recv.unacked;
            recv.unacked = 0;
            recv.window += inc;
            self.queue(|p| frame::put_window_update(p, stream.id, inc as u32));
        }
        self.consumed(n as i64);
    }
}

/// Sends queued control frames, probes a quiet connection, and closes a
/// dead one.
async fn control(inner: Arc<Inner>) {
    let mut tick = tokio::time::interval(KEEPALIVE_TIMEOUT);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await;
    loop {
        tokio::select! {
            () = inner.control.notified() => {}
            _ = tick.tick() => {
                let quiet = Duration::from_millis(now_ms().saturating_sub(inner.last_read.load(Ordering::Relaxed)));
                if quiet > KEEPALIVE + KEEPALIVE_TIMEOUT {
                    inner.close(&format!("nothing arrived for {} s, not even a PING's answer", quiet.as_secs()));
                    return;
                }
                let mut s = lock(&inner.state);
                if quiet > KEEPALIVE && !s.ping_sent {
                    s.ping_sent = true;
                    frame::put_ping(&mut s.pending, false, *b"weftping");
                }
            }
        }
        let (pending, closed) = {
            let mut s = lock(&inner.state);
            (std::mem::take(&mut s.pending), s.closed.is_some())
        };
        if closed {
            return;
        }
        let written =
            tokio::time::timeout(KEEPALIVE + KEEPALIVE_TIMEOUT, inner.write_plain(&pending)).await;
        let failed = match written {
            Ok(Ok(())) => continue,
            Ok(Err(e)) => format!("writing: {e}"),
            Err(_) => format!(
                "nothing could be written for {} s",
                (KEEPALIVE + KEEPALIVE_TIMEOUT).as_secs()
            ),
        };
        inner.close(&failed);
        return;
    }
}

impl StreamShared {
    fn new(id: u32) -> Arc<StreamShared> {
        Arc::new(StreamShared {
            id,
            recv_ready: Notify::new(),
            send_ready: Notify::new(),
            recv: Mutex::new(Recv {
                window: STREAM_WINDOW,
                ..Recv::default()
            }),
            activity: AtomicU64::new(now_ms()),
            gone: AtomicBool::new(false),
        })
    }

    fn fail(&self, why: &str) {
        self.gone.store(true, Ordering::Release);
        {
            let mut r = lock(&self.recv);
            if r.reset.is_none() {
                r.reset = Some(why.to_owned());
            }
            r.direct = None;
        }
        self.recv_ready.notify_one();
        self.send_ready.notify_one();
    }
}

/// A stream the peer opened, not yet answered.
#[derive(Debug)]
pub struct Incoming {
    /// `:method`.
    pub method: String,
    /// `:authority`.
    pub authority: String,
    /// The other fields, names in lower case.
    pub headers: Vec<(String, String)>,
    stream: Stream,
}

impl Incoming {
    /// The first value of a header.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// Answers with `status` and ends the stream.
    pub async fn refuse(mut self, status: u16) {
        let s = status.to_string();
        let mut f = Vec::with_capacity(32);
        frame::put_headers(&mut f, self.stream.shared.id, true, &[(":status", &s)]);
        self.stream.sent_end = true;
        {
            let mut r = lock(&self.stream.shared.recv);
            // The peer may still be sending: a reset after the answer tells
            // it to stop (RFC 9113 §8.1).
            if !r.end {
                frame::put_rst(&mut f, self.stream.shared.id, code::NO_ERROR);
            }
            r.reset = Some(format!("refused with {status}"));
        }
        let _ = self.stream.conn.write_plain(&f).await;
    }

    /// Whether the peer reset the stream (or the connection ended) before
    /// it was answered.
    pub fn is_reset(&self) -> bool {
        self.stream.shared.gone.load(Ordering::Acquire)
    }

    /// Answers 200: the stream relays.
    pub async fn accept(self) -> io::Result<Stream> {
        if let Some(why) = &lock(&self.stream.shared.recv).reset {
            return Err(io::Error::new(io::ErrorKind::ConnectionReset, why.clone()));
        }
        let mut f = Vec::with_capacity(32);
        frame::put_headers(&mut f, self.stream.shared.id, false, &[(":status", "200")]);
        self.stream.conn.write_plain(&f).await?;
        Ok(self.stream)
    }
}

/// One CONNECT stream.
#[derive(Debug)]
pub struct Stream {
    conn: Arc<Inner>,
    shared: Arc<StreamShared>,
    sent_end: bool,
}

impl Drop for Stream {
    fn drop(&mut self) {
        let id = self.shared.id;
        let (queued, finished) = {
            let mut r = lock(&self.shared.recv);
            r.direct = None;
            r.counter = None;
            let queued: usize = r.queue.drain(..).map(|b| b.len()).sum();
            let finished = r.reset.is_some() || (r.end && self.sent_end);
            if r.reset.is_none() {
                r.reset = Some("the stream is closed".into());
            }
            (queued, finished)
        };
        let removed = lock(&self.conn.state).streams.remove(&id).is_some();
        if removed && !finished {
            self.conn.queue(|p| frame::put_rst(p, id, code::CANCEL));
        }
        self.conn.consumed(queued as i64);
    }
}

impl Stream {
    /// Sends `data` as DATA frames as the windows allow (`END_STREAM` on
    /// the last when `end`): each frame is one TLS record.
    async fn send(&mut self, data: &[u8], end: bool) -> io::Result<()> {
        let mut offset = 0;
        loop {
            let n = self.reserve(data.len() - offset).await?;
            // Dropped while waiting for the right to write (the relay gave
            // up), it gives the window back.
            let mut reserved = Reserved {
                conn: &self.conn,
                id: self.shared.id,
                n,
            };
            let last = offset + n == data.len();
            let flags = if end && last { flag::END_STREAM } else { 0 };
            let head = frame::head(n, kind::DATA, flags, self.shared.id);
            let payload = &data[offset..offset + n];
            {
                let mut out = self.conn.out.lock().await;
                self.conn
                    .encrypt_vectored(&[IoSlice::new(&head), IoSlice::new(payload)], &mut out)?;
                reserved.n = 0;
                self.conn.flush(&mut out).await?;
            }
            offset += n;
            if last {
                if end {
                    self.sent_end = true;
                }
                return Ok(());
            }
        }
    }

    /// Takes up to `want` bytes of send window (0 only when `want` is 0),
    /// waiting while there is none.
    async fn reserve(&self, want: usize) -> io::Result<usize> {
        loop {
            let mut ready = pin!(self.shared.send_ready.notified());
            ready.as_mut().enable();
            {
                let mut s = lock(&self.conn.state);
                if let Some(why) = &s.closed {
                    return Err(io::Error::new(
                        io::ErrorKind::ConnectionReset,
                        format!("the HBONE connection ended: {why}"),
                    ));
                }
                let max_frame = s.peer_max_frame;
                let conn_window = s.send_window;
                let entry = s
                    .streams
                    .get_mut(&self.shared.id)
                    .filter(|_| !self.shared.gone.load(Ordering::Acquire));
                let Some(entry) = entry else {
                    // A stream's lock is never taken under the state's: the
                    // reader takes them the other way round.
                    drop(s);
                    let why = lock(&self.shared.recv).reset.clone();
                    return Err(io::Error::new(
                        io::ErrorKind::ConnectionReset,
                        why.unwrap_or_else(|| "the stream was reset".into()),
                    ));
                };
                let room = conn_window.min(entry.send_window).max(0) as usize;
                let n = want.min(room).min(max_frame);
                if n > 0 || want == 0 {
                    entry.send_window -= n as i64;
                    s.send_window -= n as i64;
                    return Ok(n);
                }
            }
            ready.await;
        }
    }

    /// Relays between this stream and `tcp` until both ways have ended,
    /// either fails, or nothing moved for `idle`. On failure the TCP
    /// connection is reset and the stream too.
    pub async fn relay(
        mut self,
        tcp: TcpStream,
        side: TcpSide,
        idle: Duration,
        counters: &Arc<ConnCounters>,
    ) -> io::Result<Moved> {
        let tcp = Arc::new(tcp);
        // Bytes from the TCP side: `sent` when it is the client.
        let up_is_sent = side == TcpSide::Client;
        {
            let mut r = lock(&self.shared.recv);
            r.direct = Some(tcp.clone());
            r.counter = Some((counters.clone(), !up_is_sent));
        }
        // Whatever arrived before the relay began goes first.
        self.shared.recv_ready.notify_one();
        let up_total = Arc::new(AtomicU64::new(0));
        let result = {
            let shared = self.shared.clone();
            let conn = self.conn.clone();
            let up = self.up(&tcp, &up_total, counters, up_is_sent);
            let down = down(&conn, &shared, &tcp);
            let both = async { tokio::try_join!(up, down) };
            tokio::select! {
                r = both => r.map(|((), ())| ()),
                () = idle_watch(&shared.activity, idle) => Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!("idle for {:.0} s", idle.as_secs_f64()),
                )),
            }
        };
        let delivered = {
            let mut r = lock(&self.shared.recv);
            r.direct = None;
            r.counter = None;
            r.delivered
        };
        let up = up_total.load(Ordering::Relaxed);
        if let Err(e) = result {
            let _ = SockRef::from(&*tcp).set_linger(Some(Duration::ZERO));
            // Dropping the stream before its end resets it.
            return Err(e);
        }
        Ok(if up_is_sent {
            Moved {
                sent: up,
                received: delivered,
            }
        } else {
            Moved {
                sent: delivered,
                received: up,
            }
        })
    }

    /// TCP to the stream, then END_STREAM.
    async fn up(
        &mut self,
        tcp: &TcpStream,
        total: &AtomicU64,
        counters: &ConnCounters,
        is_sent: bool,
    ) -> io::Result<()> {
        let mut buf = vec![0u8; START_BUFFER];
        loop {
            let n = loop {
                match tcp.try_read(&mut buf) {
                    Ok(n) => break n,
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => tcp.readable().await?,
                    Err(e) => return Err(e),
                }
            };
            self.send(&buf[..n], n == 0).await?;
            if n == 0 {
                return Ok(());
            }
            total.fetch_add(n as u64, Ordering::Relaxed);
            let field = if is_sent {
                &counters.sent
            } else {
                &counters.received
            };
            field.fetch_add(n as u64, Ordering::Relaxed);
            self.shared.activity.store(now_ms(), Ordering::Relaxed);
            if n == buf.len() && buf.len() < MAX_BUFFER {
                buf.resize(buf.len() * 2, 0);
            }
        }
    }
}

/// Send window taken and not yet used.
struct Reserved<'a> {
    conn: &'a Inner,
    id: u32,
    n: usize,
}

impl Drop for Reserved<'_> {
    fn drop(&mut self) {
        if self.n == 0 {
            return;
        }
        let n = self.n as i64;
        let waiting: Vec<Arc<StreamShared>> = {
            let mut s = lock(&self.conn.state);
            s.send_window += n;
            if let Some(e) = s.streams.get_mut(&self.id) {
                e.send_window += n;
            }
            s.streams.values().map(|e| e.shared.clone()).collect()
        };
        for shared in waiting {
            shared.send_ready.notify_one();
        }
    }
}

/// The stream to TCP: what the reader could not write at once, then the
/// half-close at the peer's END_STREAM.
async fn down(conn: &Inner, shared: &StreamShared, tcp: &TcpStream) -> io::Result<()> {
    loop {
        let mut ready = pin!(shared.recv_ready.notified());
        ready.as_mut().enable();
        let next = {
            let r = lock(&shared.recv);
            if let Some(why) = &r.reset {
                return Err(io::Error::new(io::ErrorKind::ConnectionReset, why.clone()));
            }
            match r.queue.front() {
                Some(b) => Ok(b.clone()),
                None => Err(r.end),
            }
        };
        let front = match next {
            Ok(front) => front,
            Err(true) => {
                SockRef::from(tcp).shutdown(std::net::Shutdown::Write)?;
                return Ok(());
            }
            Err(false) => {
                ready.await;
                continue;
            }
        };
        let n = loop {
            match tcp.try_write(&front) {
                Ok(n) => break n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => tcp.writable().await?,
                Err(e) => return Err(e),
            }
        };
        let mut r = lock(&shared.recv);
        if let Some(b) = r.queue.front_mut() {
            if n >= b.len() {
                r.queue.pop_front();
            } else {
                let _ = b.split_to(n);
            }
        }
        r.delivered += n as u64;
        r.count(n);
        shared.activity.store(now_ms(), Ordering::Relaxed);
        conn.stream_consumed(shared, &mut r, n);
    }
}

async fn idle_watch(activity: &AtomicU64, idle: Duration) {
    loop {
        let seen = activity.load(Ordering::Relaxed);
        let idle_ms = u64::try_from(idle.as_millis()).unwrap_or(u64::MAX);
        let wait = Duration::from_millis(seen.saturating_add(idle_ms))
            .saturating_sub(Duration::from_millis(now_ms()));
        tokio::time::sleep_until(tokio::time::Instant::now() + wait).await;
        if activity.load(Ordering::Relaxed) == seen {
            return;
        }
    }
}

// ---------------------------------------------------------------- reader

#[derive(Debug)]
enum ReadError {
    Io(io::Error),
    /// A connection error: GOAWAY with this code.
    Protocol(u32, String),
}

impl From<io::Error> for ReadError {
    fn from(e: io::Error) -> Self {
        ReadError::Io(e)
    }
}

fn violation(c: u32, why: impl Into<String>) -> ReadError {
    ReadError::Protocol(c, why.into())
}

/// A header block being received (HEADERS, then CONTINUATIONs).
struct Block {
    stream: u32,
    flags: u8,
    bytes: Vec<u8>,
}

struct Reader {
    inner: Arc<Inner>,
    plain: Vec<u8>,
    /// Offset of the first byte not yet parsed in `plain`.
    start: usize,
    preface_left: usize,
    hpack: loona_hpack::Decoder<'static>,
    block: Option<Block>,
    peer_closed: bool,
}

impl Reader {
    fn new(inner: Arc<Inner>) -> Reader {
        let preface_left = match inner.role {
            Role::Server => frame::PREFACE.len(),
            Role::Client => 0,
        };
        Reader {
            inner,
            plain: Vec::with_capacity(READ_BUFFER),
            start: 0,
            preface_left,
            hpack: {
                let mut d = loona_hpack::Decoder::new();
                d.set_max_allowed_table_size(HPACK_TABLE);
                d
            },
            block: None,
            peer_closed: false,
        }
    }

    async fn run(&mut self, accept: &mut (dyn FnMut(Incoming) + Send)) -> Result<(), ReadError> {
        let mut cipher = vec![0u8; READ_BUFFER];
        // Records read with the handshake.
        self.decrypt(&[])?;
        self.frames(accept)?;
        loop {
            if self.peer_closed {
                return Ok(());
            }
            let n = match self.inner.tcp.try_read(&mut cipher) {
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    tokio::select! {
                        r = self.inner.tcp.readable() => { r?; continue; }
                        () = self.inner.closed() => return Ok(()),
                    }
                }
                Err(e) => return Err(e.into()),
            };
            if n == 0 {
                if lock(&self.inner.state).closed.is_some() {
                    return Ok(());
                }
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "the peer closed TCP without a TLS close_notify",
                )
                .into());
            }
            self.decrypt(&cipher[..n])?;
            self.frames(accept)?;
        }
    }

    /// Feeds ciphertext to TLS and appends the plaintext to `plain`.
    fn decrypt(&mut self, mut cipher: &[u8]) -> Result<(), ReadError> {
        if self.start > 0 {
            self.plain.drain(..self.start);
            self.start = 0;
        }
        let mut tls = lock(&self.inner.tls);
        loop {
            // After the peer's close_notify TLS takes nothing more (read_tls
            // gives 0): what follows it is dropped.
            let fed = if cipher.is_empty() || self.peer_closed {
                0
            } else {
                tls.read_tls(&mut cipher)?
            };
            let state = tls
                .process_new_packets()
                .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, format!("TLS: {e}")));
            // On an error, the alert TLS queued goes out as the connection
            // closes.
            let state = state?;
            let available = state.plaintext_bytes_to_read();
            if state.peer_has_closed() {
                self.peer_closed = true;
            }
            if available > 0 {
                let at = self.plain.len();
                self.plain.resize(at + available, 0);
                let mut got = 0;
                while got < available {
                    match tls.reader().read(&mut self.plain[at + got..]) {
                        Ok(0) => break,
                        Ok(k) => got += k,
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                        Err(e) => return Err(e.into()),
                    }
                }
                self.plain.truncate(at + got);
            }
            if cipher.is_empty() || self.peer_closed || fed == 0 {
                break;
            }
        }
        if tls.wants_write() {
            drop(tls);
            self.inner.control.notify_one();
        }
        Ok(())
    }

    /// Handles every complete frame in `plain`.
    fn frames(&mut self, accept: &mut (dyn FnMut(Incoming) + Send)) -> Result<(), ReadError> {
        if self.preface_left > 0 {
            let have = self.plain.len() - self.start;
            let done = frame::PREFACE.len() - self.preface_left;
            let take = have.min(self.preface_left);
            if self.plain[self.start..self.start + take] != frame::PREFACE[done..done + take] {
                return Err(violation(
                    code::PROTOCOL_ERROR,
                    "the client did not start with the HTTP/2 preface",
                ));
            }
            self.start += take;
            self.preface_left -= take;
            if self.preface_left > 0 {
                return Ok(());
            }
        }
        let mut any = false;
        loop {
            let rest = &self.plain[self.start..];
            let Some(head) = rest.get(..frame::HEAD) else {
                break;
            };
            let head = frame::Head::parse(head.try_into().map_err(|_| {
                violation(code::INTERNAL_ERROR, "a frame header of the wrong size")
            })?);
            if head.len > MAX_FRAME {
                return Err(violation(
                    code::FRAME_SIZE_ERROR,
                    format!(
                        "a frame of {} bytes, over the {MAX_FRAME} allowed",
                        head.len
                    ),
                ));
            }
            if rest.len() < frame::HEAD + head.len {
                break;
            }
            let (from, to) = (
                self.start + frame::HEAD,
                self.start + frame::HEAD + head.len,
            );
            self.start = to;
            any = true;
            if head.kind == kind::DATA {
                if self.block.is_some() {
                    return Err(violation(
                        code::PROTOCOL_ERROR,
                        "a header block interrupted by DATA",
                    ));
                }
                // DATA is handled in place, without a copy.
                self.data(head, &self.plain[from..to])?;
            } else {
                let payload = self.plain[from..to].to_vec();
                self.frame(head, &payload, accept)?;
            }
        }
        if any {
            self.inner.last_read.store(now_ms(), Ordering::Relaxed);
        }
        if lock(&self.inner.state).pending.len() > MAX_PENDING {
            return Err(violation(
                code::ENHANCE_YOUR_CALM,
                format!(
                    "over {MAX_PENDING} bytes of control frames owed to a peer that does not read them"
                ),
            ));
        }
        Ok(())
    }

    fn frame(
        &mut self,
        head: frame::Head,
        payload: &[u8],
        accept: &mut (dyn FnMut(Incoming) + Send),
    ) -> Result<(), ReadError> {
        if let Some(block) = &mut self.block {
            if head.kind != kind::CONTINUATION || head.stream != block.stream {
                return Err(violation(
                    code::PROTOCOL_ERROR,
                    "a header block interrupted by another frame",
                ));
            }
            if block.bytes.len() + payload.len() > MAX_HEADER_BLOCK {
                return Err(violation(
                    code::PROTOCOL_ERROR,
                    format!("a header block over {MAX_HEADER_BLOCK} bytes"),
                ));
            }
            block.bytes.extend_from_slice(payload);
            if head.flags & flag::END_HEADERS != 0 {
                let block = self
                    .block
                    .take()
                    .ok_or_else(|| violation(code::INTERNAL_ERROR, "a header block vanished"))?;
                return self.headers(&block, accept);
            }
            return Ok(());
        }
        match head.kind {
            kind::HEADERS => {
                if head.stream == 0 {
                    return Err(violation(code::PROTOCOL_ERROR, "HEADERS on stream 0"));
                }
                let body = frame::unpad(head.flags, head.kind, payload)
                    .map_err(|e| violation(code::PROTOCOL_ERROR, e))?;
                if body.len() > MAX_HEADER_BLOCK {
                    return Err(violation(
                        code::PROTOCOL_ERROR,
                        format!("a header block over {MAX_HEADER_BLOCK} bytes"),
                    ));
                }
                let block = Block {
                    stream: head.stream,
                    flags: head.flags,
                    bytes: body.to_vec(),
                };
                if head.flags & flag::END_HEADERS != 0 {
                    self.headers(&block, accept)
                } else {
                    self.block = Some(block);
                    Ok(())
                }
            }
            kind::CONTINUATION => Err(violation(
                code::PROTOCOL_ERROR,
                "CONTINUATION without HEADERS",
            )),
            kind::SETTINGS => self.settings(head, payload),
            kind::PING => {
                if head.stream != 0 || payload.len() != 8 {
                    return Err(violation(code::PROTOCOL_ERROR, "a malformed PING"));
                }
                if head.flags & flag::ACK != 0 {
                    lock(&self.inner.state).ping_sent = false;
                } else {
                    let mut data = [0u8; 8];
                    data.copy_from_slice(payload);
                    self.inner.queue(|p| frame::put_ping(p, true, data));
                }
                Ok(())
            }
            kind::WINDOW_UPDATE => self.window_update(head, payload),
            kind::RST_STREAM => {
                if head.stream == 0 || payload.len() != 4 {
                    return Err(violation(code::PROTOCOL_ERROR, "a malformed RST_STREAM"));
                }
                let c = u32::from_be_bytes([payload[0], payload[1], payload[2], payload[3]]);
                // The entry stays until the stream's handle drops: it counts
                // against the stream limit while anything works for it.
                let (entry, idle) = {
                    let s = lock(&self.inner.state);
                    let entry = s.streams.get(&head.stream).map(|e| e.shared.clone());
                    (entry, self.is_idle(&s, head.stream))
                };
                if idle {
                    return Err(violation(
                        code::PROTOCOL_ERROR,
                        format!(
                            "RST_STREAM on stream {}, which was never opened",
                            head.stream
                        ),
                    ));
                }
                if let Some(shared) = entry {
                    shared.fail(&format!("the peer reset the stream ({})", code::name(c)));
                }
                Ok(())
            }
            kind::GOAWAY => {
                if head.stream != 0 || payload.len() < 8 {
                    return Err(violation(code::PROTOCOL_ERROR, "a malformed GOAWAY"));
                }
                let last = u32::from_be_bytes([payload[0], payload[1], payload[2], payload[3]])
                    & 0x7fff_ffff;
                let c = u32::from_be_bytes([payload[4], payload[5], payload[6], payload[7]]);
                let refused: Vec<Arc<StreamShared>> = {
                    let mut s = lock(&self.inner.state);
                    s.goaway = true;
                    s.streams
                        .iter()
                        .filter(|(id, _)| !self.inner.peer_opens(**id) && **id > last)
                        .map(|(_, e)| e.shared.clone())
                        .collect()
                };
                for shared in refused {
                    shared.fail(&format!(
                        "the peer is going away ({}) and did not take the stream",
                        code::name(c)
                    ));
                }
                Ok(())
            }
            kind::PUSH_PROMISE => Err(violation(
                code::PROTOCOL_ERROR,
                "PUSH_PROMISE, which this side disabled",
            )),
            kind::PRIORITY if payload.len() != 5 => Err(violation(
                code::FRAME_SIZE_ERROR,
                "a PRIORITY frame not of 5 bytes",
            )),
            kind::PRIORITY => Ok(()),
            // Unknown frame types are ignored (RFC 9113 §4.1).
            _ => Ok(()),
        }
    }

    fn settings(&mut self, head: frame::Head, payload: &[u8]) -> Result<(), ReadError> {
        if head.stream != 0 {
            return Err(violation(code::PROTOCOL_ERROR, "SETTINGS on a stream"));
        }
        if head.flags & flag::ACK != 0 {
            if !payload.is_empty() {
                return Err(violation(
                    code::FRAME_SIZE_ERROR,
                    "a SETTINGS ack with a payload",
                ));
            }
            return Ok(());
        }
        if !payload.len().is_multiple_of(6) {
            return Err(violation(
                code::FRAME_SIZE_ERROR,
                "a SETTINGS frame of odd size",
            ));
        }
        let mut wake = Vec::new();
        {
            let mut s = lock(&self.inner.state);
            for pair in payload.chunks_exact(6) {
                let id = u16::from_be_bytes([pair[0], pair[1]]);
                let value = u32::from_be_bytes([pair[2], pair[3], pair[4], pair[5]]);
                match id {
                    setting::INITIAL_WINDOW_SIZE => {
                        if i64::from(value) > frame::MAX_WINDOW {
                            return Err(violation(
                                code::FLOW_CONTROL_ERROR,
                                format!("an initial window of {value}"),
                            ));
                        }
                        let delta = i64::from(value) - s.peer_initial_window;
                        s.peer_initial_window = i64::from(value);
                        for e in s.streams.values_mut() {
                            e.send_window += delta;
                            if e.send_window > frame::MAX_WINDOW {
                                return Err(violation(
                                    code::FLOW_CONTROL_ERROR,
                                    "a stream window over 2^31-1",
                                ));
                            }
                            wake.push(e.shared.clone());
                        }
                    }
                    setting::MAX_FRAME_SIZE => {
                        if !(frame::DEFAULT_MAX_FRAME..1 << 24).contains(&(value as usize)) {
                            return Err(violation(
                                code::PROTOCOL_ERROR,
                                format!("a max frame size of {value}"),
                            ));
                        }
                        s.peer_max_frame = value as usize;
                    }
                    setting::MAX_CONCURRENT_STREAMS => {
                        s.peer_max_streams = (value as usize).min(MAX_STREAMS);
                    }
                    setting::ENABLE_PUSH if value > 1 => {
                        return Err(violation(
                            code::PROTOCOL_ERROR,
                            format!("ENABLE_PUSH {value}"),
                        ));
                    }
                    // This side's encoder uses no table; other settings do
                    // not concern a tunnel.
                    _ => {}
                }
            }
            s.pending
                .extend_from_slice(&[0, 0, 0, kind::SETTINGS, flag::ACK, 0, 0, 0, 0]);
        }
        self.inner.control.notify_one();
        for shared in wake {
            shared.send_ready.notify_one();
        }
        Ok(())
    }

    fn window_update(&mut self, head: frame::Head, payload: &[u8]) -> Result<(), ReadError> {
        if payload.len() != 4 {
            return Err(violation(
                code::FRAME_SIZE_ERROR,
                "a WINDOW_UPDATE not of 4 bytes",
            ));
        }
        let inc = i64::from(
            u32::from_be_bytes([payload[0], payload[1], payload[2], payload[3]]) & 0x7fff_ffff,
        );
        let mut s = lock(&self.inner.state);
        if head.stream == 0 {
            if inc == 0 {
                return Err(violation(code::PROTOCOL_ERROR, "a WINDOW_UPDATE of 0"));
            }
            s.send_window += inc;
            if s.send_window > frame::MAX_WINDOW {
                return Err(violation(
                    code::FLOW_CONTROL_ERROR,
                    "the connection window over 2^31-1",
                ));
            }
            let all: Vec<Arc<StreamShared>> =
                s.streams.values().map(|e| e.shared.clone()).collect();
            drop(s);
            for shared in all {
                shared.send_ready.notify_one();
            }
            return Ok(());
        }
        let id = head.stream;
        if self.is_idle(&s, id) {
            return Err(violation(
                code::PROTOCOL_ERROR,
                format!("WINDOW_UPDATE on stream {id}, which was never opened"),
            ));
        }
        let Some(entry) = s.streams.get_mut(&id) else {
            return Ok(());
        };
        if inc == 0 || entry.send_window + inc > frame::MAX_WINDOW {
            let shared = entry.shared.clone();
            drop(s);
            self.inner
                .queue(|p| frame::put_rst(p, id, code::FLOW_CONTROL_ERROR));
            shared.fail("the peer sent a bad WINDOW_UPDATE (FLOW_CONTROL_ERROR)");
            return Ok(());
        }
        entry.send_window += inc;
        let shared = entry.shared.clone();
        drop(s);
        shared.send_ready.notify_one();
        Ok(())
    }

    fn data(&self, head: frame::Head, payload: &[u8]) -> Result<(), ReadError> {
        if head.stream == 0 {
            return Err(violation(code::PROTOCOL_ERROR, "DATA on stream 0"));
        }
        let len = head.len as i64;
        let body = frame::unpad(head.flags, head.kind, payload)
            .map_err(|e| violation(code::PROTOCOL_ERROR, e))?;
        let padding = head.len - body.len();
        let shared = {
            let mut s = lock(&self.inner.state);
            s.recv_window -= len;
            if s.recv_window < 0 {
                return Err(violation(
                    code::FLOW_CONTROL_ERROR,
                    "DATA beyond the connection window",
                ));
            }
            let known = s.streams.get(&head.stream).map(|e| e.shared.clone());
            if known.is_none() && self.is_idle(&s, head.stream) {
                return Err(violation(
                    code::PROTOCOL_ERROR,
                    format!("DATA on stream {}, which was never opened", head.stream),
                ));
            }
            known
        };
        let Some(shared) = shared else {
            // A stream closed here, whose end or reset crossed this frame: it
            // is ignored (RFC 9113 §5.1), and its bytes count as consumed.
            self.inner.consumed(len);
            return Ok(());
        };
        let end = head.flags & flag::END_STREAM != 0;
        let mut r = lock(&shared.recv);
        if r.reset.is_some() {
            // Reset here or by the peer: what was in flight is dropped.
            drop(r);
            self.inner.consumed(len);
            return Ok(());
        }
        if r.end {
            drop(r);
            self.inner.consumed(len);
            self.reset_stream(head.stream, code::STREAM_CLOSED, "DATA after END_STREAM");
            return Ok(());
        }
        r.window -= len;
        if r.window < 0 {
            drop(r);
            self.inner.consumed(len);
            self.reset_stream(
                head.stream,
                code::FLOW_CONTROL_ERROR,
                "DATA beyond the stream window",
            );
            return Ok(());
        }
        let mut rest = body;
        let mut delivered = 0usize;
        if r.queue.is_empty()
            && let Some(tcp) = r.direct.clone()
        {
            while !rest.is_empty() {
                match tcp.try_write(rest) {
                    Ok(n) => {
                        rest = &rest[n..];
                        delivered += n;
                    }
                    // A socket that fails is the stream task's to see: it
                    // gets the bytes through the queue and the error.
                    Err(_) => break,
                }
            }
        }
        if !rest.is_empty() {
            r.queue.push_back(Bytes::copy_from_slice(rest));
        }
        if end {
            r.end = true;
        }
        r.delivered += delivered as u64;
        r.count(delivered);
        if delivered > 0 {
            shared.activity.store(now_ms(), Ordering::Relaxed);
        }
        self.inner
            .stream_consumed(&shared, &mut r, delivered + padding);
        let wake = !rest.is_empty() || end;
        drop(r);
        if wake {
            shared.recv_ready.notify_one();
        }
        Ok(())
    }

    /// Whether `id` names a stream that was never opened.
    fn is_idle(&self, s: &State, id: u32) -> bool {
        if self.inner.peer_opens(id) {
            id > s.last_peer_id
        } else {
            id >= s.next_id
        }
    }

    fn reset_stream(&self, id: u32, c: u32, why: &str) {
        let e = lock(&self.inner.state)
            .streams
            .get(&id)
            .map(|e| e.shared.clone());
        self.inner.queue(|p| frame::put_rst(p, id, c));
        if let Some(shared) = e {
            shared.fail(&format!("{why} ({})", code::name(c)));
        }
    }

    fn headers(
        &mut self,
        block: &Block,
        accept: &mut (dyn FnMut(Incoming) + Send),
    ) -> Result<(), ReadError> {
        // Every block is decoded, even one for a stream that is gone: the
        // decoder's table must follow the peer's encoder.
        let mut fields: Vec<(String, String)> = Vec::new();
        let mut size = 0usize;
        self.hpack
            .decode_with_cb(&block.bytes, |n, v| {
                size += n.len() + v.len() + 32;
                if size <= MAX_HEADER_LIST {
                    fields.push((
                        String::from_utf8_lossy(&n).into_owned(),
                        String::from_utf8_lossy(&v).into_owned(),
                    ));
                }
            })
            .map_err(|e| {
                violation(
                    code::COMPRESSION_ERROR,
                    format!("an undecodable header block: {e:?}"),
                )
            })?;
        if size > MAX_HEADER_LIST {
            return Err(violation(
                code::PROTOCOL_ERROR,
                format!("a header list of {size} bytes, over the {MAX_HEADER_LIST} allowed"),
            ));
        }
        let end = block.flags & flag::END_STREAM != 0;
        let id = block.stream;
        let existing = lock(&self.inner.state)
            .streams
            .get(&id)
            .map(|e| e.shared.clone());
        if let Some(shared) = existing {
            let mut r = lock(&shared.recv);
            if self.inner.role == Role::Client && r.status.is_none() {
                let status = fields
                    .iter()
                    .find(|(n, _)| n == ":status")
                    .and_then(|(_, v)| v.parse::<u16>().ok());
                match status {
                    // Informational: the final answer follows.
                    Some(s) if (100..200).contains(&s) => return Ok(()),
                    Some(s) => r.status = Some(s),
                    None => {
                        drop(r);
                        self.reset_stream(id, code::PROTOCOL_ERROR, "a response without :status");
                        return Ok(());
                    }
                }
            }
            if end {
                r.end = true;
            }
            drop(r);
            shared.recv_ready.notify_one();
            return Ok(());
        }
        if self.inner.role == Role::Client {
            // A stream this side already dropped.
            return Ok(());
        }
        let mut s = lock(&self.inner.state);
        if id.is_multiple_of(2) || id <= s.last_peer_id {
            if id % 2 == 1 {
                drop(s);
                self.inner
                    .queue(|p| frame::put_rst(p, id, code::STREAM_CLOSED));
                return Ok(());
            }
            return Err(violation(
                code::PROTOCOL_ERROR,
                format!("the client opened stream {id}, which it may not"),
            ));
        }
        s.last_peer_id = id;
        if s.streams.len() >= MAX_STREAMS || s.goaway || s.closed.is_some() {
            drop(s);
            self.inner
                .queue(|p| frame::put_rst(p, id, code::REFUSED_STREAM));
            return Ok(());
        }
        let shared = s.open(id);
        drop(s);
        if end {
            lock(&shared.recv).end = true;
        }
        let mut method = String::new();
        let mut authority = String::new();
        let mut headers = Vec::new();
        for (n, v) in fields {
            match n.as_str() {
                ":method" => method = v,
                ":authority" => authority = v,
                _ if n.starts_with(':') => {}
                _ => headers.push((n.to_ascii_lowercase(), v)),
            }
        }
        accept(Incoming {
            method,
            authority,
            headers,
            stream: Stream {
                conn: self.inner.clone(),
                shared,
                sent_end: false,
            },
        });
        Ok(())
    }
}

#[cfg(test)]
mod tests;
