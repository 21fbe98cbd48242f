//! One HBONE connection's life: starting HTTP/2 on a finished TLS
//! handshake, opening CONNECT streams, sealing and writing records (`out`
//! is the right to write), giving back flow-control windows as bytes are
//! consumed, the control task (acks, WINDOW_UPDATE, RST_STREAM, keepalive
//! PINGs) and closing.

use super::*;

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
            writing: None,
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
    pub(super) fn peer_opens(&self, id: u32) -> bool {
        (id % 2 == 1) == (self.role == Role::Server)
    }

    /// Seals `plain` into `out` (held).
    pub(super) fn encrypt(&self, plain: &[u8], out: &mut Vec<u8>) -> io::Result<()> {
        self.encrypt_vectored(&[IoSlice::new(plain)], out)
    }

    pub(super) fn encrypt_vectored(
        &self,
        parts: &[IoSlice<'_>],
        out: &mut Vec<u8>,
    ) -> io::Result<()> {
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
    pub(super) async fn flush(&self, out: &mut Vec<u8>) -> io::Result<()> {
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
    pub(super) async fn write_plain(&self, plain: &[u8]) -> io::Result<()> {
        let mut out = self.out.lock().await;
        if !plain.is_empty() || lock(&self.tls).wants_write() {
            self.encrypt(plain, &mut out)?;
        }
        self.flush(&mut out).await
    }

    /// Queues control frames for the control task.
    pub(super) fn queue(&self, f: impl FnOnce(&mut Vec<u8>)) {
        f(&mut lock(&self.state).pending);
        self.control.notify_one();
    }

    /// Ends the connection: every stream fails with `why`.
    pub(super) fn close(&self, why: &str) {
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

    pub(super) async fn closed(&self) {
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
    pub(super) fn consumed(&self, n: i64) {
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
    pub(super) fn stream_consumed(&self, stream: &StreamShared, recv: &mut Recv, n: usize) {
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
pub(super) async fn control(inner: Arc<Inner>) {
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
    pub(super) fn new(id: u32) -> Arc<StreamShared> {
        Arc::new(StreamShared {
            id,
            recv_ready: Notify::new(),
            send_ready: Notify::new(),
            reader: Mutex::new(None),
            recv: Mutex::new(Recv {
                window: STREAM_WINDOW,
                ..Recv::default()
            }),
            activity: AtomicU64::new(now_ms()),
            gone: AtomicBool::new(false),
        })
    }

    pub(super) fn fail(&self, why: &str) {
        self.gone.store(true, Ordering::Release);
        {
            let mut r = lock(&self.recv);
            if r.reset.is_none() {
                r.reset = Some(why.to_owned());
            }
            r.direct = None;
        }
        self.wake_recv();
        self.send_ready.notify_one();
    }

    /// Data, the end, a reset or the response arrived: wakes whoever
    /// waits to read.
    pub(super) fn wake_recv(&self) {
        self.recv_ready.notify_one();
        if let Some(w) = lock(&self.reader).take() {
            w.wake();
        }
    }
}
