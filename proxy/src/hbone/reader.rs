//! The connection's reader: decrypts TLS records, parses frames and acts
//! on them: DATA straight into the destination socket (or the stream's
//! queue), HEADERS through HPACK into new streams and answers, SETTINGS,
//! WINDOW_UPDATE, RST_STREAM, PING and GOAWAY; a protocol violation ends
//! the connection with GOAWAY.

use super::*;

#[derive(Debug)]
pub(super) enum ReadError {
    Io(io::Error),
    /// A connection error: GOAWAY with this code.
    Protocol(u32, String),
}

impl From<io::Error> for ReadError {
    fn from(e: io::Error) -> Self {
        ReadError::Io(e)
    }
}

pub(super) fn violation(c: u32, why: impl Into<String>) -> ReadError {
    ReadError::Protocol(c, why.into())
}

/// A header block being received (HEADERS, then CONTINUATIONs).
pub(super) struct Block {
    pub(super) stream: u32,
    pub(super) flags: u8,
    pub(super) bytes: Vec<u8>,
}

pub(super) struct Reader {
    pub(super) inner: Arc<Inner>,
    pub(super) plain: Vec<u8>,
    /// Offset of the first byte not yet parsed in `plain`.
    pub(super) start: usize,
    pub(super) preface_left: usize,
    pub(super) hpack: loona_hpack::Decoder<'static>,
    pub(super) block: Option<Block>,
    pub(super) peer_closed: bool,
}

impl Reader {
    pub(super) fn new(inner: Arc<Inner>) -> Reader {
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

    pub(super) async fn run(
        &mut self,
        accept: &mut (dyn FnMut(Incoming) + Send),
    ) -> Result<(), ReadError> {
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
    pub(super) fn decrypt(&mut self, mut cipher: &[u8]) -> Result<(), ReadError> {
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
    pub(super) fn frames(
        &mut self,
        accept: &mut (dyn FnMut(Incoming) + Send),
    ) -> Result<(), ReadError> {
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

    pub(super) fn frame(
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

    pub(super) fn settings(&mut self, head: frame::Head, payload: &[u8]) -> Result<(), ReadError> {
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

    pub(super) fn window_update(
        &mut self,
        head: frame::Head,
        payload: &[u8],
    ) -> Result<(), ReadError> {
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

    pub(super) fn data(&self, head: frame::Head, payload: &[u8]) -> Result<(), ReadError> {
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
            shared.wake_recv();
        }
        Ok(())
    }

    /// Whether `id` names a stream that was never opened.
    pub(super) fn is_idle(&self, s: &State, id: u32) -> bool {
        if self.inner.peer_opens(id) {
            id > s.last_peer_id
        } else {
            id >= s.next_id
        }
    }

    pub(super) fn reset_stream(&self, id: u32, c: u32, why: &str) {
        let e = lock(&self.inner.state)
            .streams
            .get(&id)
            .map(|e| e.shared.clone());
        self.inner.queue(|p| frame::put_rst(p, id, c));
        if let Some(shared) = e {
            shared.fail(&format!("{why} ({})", code::name(c)));
        }
    }

    pub(super) fn headers(
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
            shared.wake_recv();
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
                writing: None,
            },
        });
        Ok(())
    }
}
