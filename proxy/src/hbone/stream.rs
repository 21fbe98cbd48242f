//! CONNECT streams: one the peer opened and this side has yet to answer
//! ([`Incoming`]), and an open one ([`Stream`]): relayed to a TCP socket
//! on the fast path, or read and written as an ordinary byte stream
//! (`AsyncRead`/`AsyncWrite`) so HTTP can run over it.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use super::*;

/// A stream the peer opened, not yet answered.
#[derive(Debug)]
pub struct Incoming {
    /// `:method`.
    pub method: String,
    /// `:authority`.
    pub authority: String,
    /// The other fields, names in lower case.
    pub headers: Vec<(String, String)>,
    pub(super) stream: Stream,
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
    pub(super) conn: Arc<Inner>,
    pub(super) shared: Arc<StreamShared>,
    pub(super) sent_end: bool,
    /// A write under way (`AsyncWrite`).
    pub(super) writing: Option<Writing>,
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
    pub(super) async fn send(&mut self, data: &[u8], end: bool) -> io::Result<()> {
        send(&self.conn, &self.shared, data, end).await?;
        if end {
            self.sent_end = true;
        }
        Ok(())
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
    pub(super) async fn up(
        &mut self,
        tcp: &TcpStream,
        total: &AtomicU64,
        counters: &ConnCounters,
        is_sent: bool,
    ) -> io::Result<()> {
        let mut buf = vec![0u8; START_BUFFER];
        loop {
            let n = crate::transport::read_drained(tcp, &mut buf).await?;
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

/// Sends `data` on `shared`'s stream as DATA frames as the windows allow
/// (`END_STREAM` on the last when `end`): each frame is one TLS record.
pub(super) async fn send(
    conn: &Inner,
    shared: &StreamShared,
    data: &[u8],
    end: bool,
) -> io::Result<()> {
    let mut offset = 0;
    loop {
        let n = reserve(conn, shared, data.len() - offset).await?;
        // Dropped while waiting for the right to write (the relay gave
        // up), it gives the window back.
        let mut reserved = Reserved {
            conn,
            id: shared.id,
            n,
        };
        let last = offset + n == data.len();
        let flags = if end && last { flag::END_STREAM } else { 0 };
        let head = frame::head(n, kind::DATA, flags, shared.id);
        let payload = &data[offset..offset + n];
        {
            let mut out = conn.out.lock().await;
            conn.encrypt_vectored(&[IoSlice::new(&head), IoSlice::new(payload)], &mut out)?;
            reserved.n = 0;
            conn.flush(&mut out).await?;
        }
        offset += n;
        if last {
            return Ok(());
        }
    }
}

/// Takes up to `want` bytes of send window (0 only when `want` is 0),
/// waiting while there is none.
async fn reserve(conn: &Inner, shared: &StreamShared, want: usize) -> io::Result<usize> {
    loop {
        let mut ready = pin!(shared.send_ready.notified());
        ready.as_mut().enable();
        {
            let mut s = lock(&conn.state);
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
                .get_mut(&shared.id)
                .filter(|_| !shared.gone.load(Ordering::Acquire));
            let Some(entry) = entry else {
                // A stream's lock is never taken under the state's: the
                // reader takes them the other way round.
                drop(s);
                let why = lock(&shared.recv).reset.clone();
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

/// A write under way on a stream used as a byte stream: the bytes were
/// taken (`poll_write` said so), the frame is not on the socket yet.
pub(super) struct Writing {
    sending: Pin<Box<dyn Future<Output = io::Result<()>> + Send>>,
    /// It carries `END_STREAM`.
    end: bool,
}

impl std::fmt::Debug for Writing {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Writing").field("end", &self.end).finish()
    }
}

impl Stream {
    /// Drives the write under way, if any, to its end.
    fn poll_written(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let Some(w) = &mut self.writing else {
            return Poll::Ready(Ok(()));
        };
        let done = ready!(w.sending.as_mut().poll(cx));
        if w.end && done.is_ok() {
            self.sent_end = true;
        }
        self.writing = None;
        Poll::Ready(done)
    }

    /// Starts sending `data` (and `END_STREAM` when `end`), and drives it
    /// as far as it goes now.
    fn start_write(&mut self, cx: &mut Context<'_>, data: Bytes, end: bool) -> io::Result<()> {
        let (conn, shared) = (self.conn.clone(), self.shared.clone());
        self.writing = Some(Writing {
            sending: Box::pin(async move { send(&conn, &shared, &data, end).await }),
            end,
        });
        match self.poll_written(cx) {
            Poll::Ready(r) => r,
            Poll::Pending => Ok(()),
        }
    }
}

/// Reading: the peer's DATA, in order; the end of the stream at
/// `END_STREAM`; an error when it was reset. What is read gives window
/// back to the peer, so a reader that stops reading stops its writer.
impl AsyncRead for Stream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let shared = &this.shared;
        let mut r = lock(&shared.recv);
        if let Some(front) = r.queue.front_mut() {
            let n = front.len().min(buf.remaining());
            buf.put_slice(&front.split_to(n));
            if front.is_empty() {
                r.queue.pop_front();
            }
            r.delivered += n as u64;
            r.count(n);
            shared.activity.store(now_ms(), Ordering::Relaxed);
            this.conn.stream_consumed(shared, &mut r, n);
            return Poll::Ready(Ok(()));
        }
        if r.end {
            return Poll::Ready(Ok(()));
        }
        if let Some(why) = &r.reset {
            return Poll::Ready(Err(io::Error::new(
                io::ErrorKind::ConnectionReset,
                why.clone(),
            )));
        }
        // Registered under the stream's lock: DATA queued after the check
        // above is queued under it too, and wakes this waker.
        *lock(&shared.reader) = Some(cx.waker().clone());
        Poll::Pending
    }
}

/// Writing: each write becomes DATA frames as the windows allow. A write
/// is taken whole (up to a frame) and sent before the next one starts;
/// `poll_flush` waits for it; `poll_shutdown` sends `END_STREAM` (a
/// half-close: the peer's side stays open).
impl AsyncWrite for Stream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        ready!(this.poll_written(cx))?;
        if this.sent_end {
            return Poll::Ready(Err(io::Error::new(
                io::ErrorKind::BrokenPipe,
                "the stream's sending side is closed",
            )));
        }
        if buf.is_empty() {
            return Poll::Ready(Ok(0));
        }
        let n = buf.len().min(MAX_FRAME);
        this.start_write(cx, Bytes::copy_from_slice(&buf[..n]), false)?;
        Poll::Ready(Ok(n))
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.get_mut().poll_written(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        ready!(this.poll_written(cx))?;
        if this.sent_end {
            return Poll::Ready(Ok(()));
        }
        this.start_write(cx, Bytes::new(), true)?;
        this.poll_written(cx)
    }
}

/// Send window taken and not yet used.
pub(super) struct Reserved<'a> {
    pub(super) conn: &'a Inner,
    pub(super) id: u32,
    pub(super) n: usize,
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
pub(super) async fn down(conn: &Inner, shared: &StreamShared, tcp: &TcpStream) -> io::Result<()> {
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
                return half_closed(SockRef::from(tcp).shutdown(std::net::Shutdown::Write));
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

pub(super) async fn idle_watch(activity: &AtomicU64, idle: Duration) {
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
