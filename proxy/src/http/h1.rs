//! A direct HTTP/1.1 client for upstream requests whose body is in hand
//! (none, or a known length up to the replay buffer's): the request goes
//! out in one write and the response is read on the caller's task, with
//! no connection task, no channel and no second codec in between. The
//! response body is read from the connection as the downstream asks for
//! it (backpressure as with any body); once read to its end, the
//! connection goes back to its idle list.
//!
//! ```text
//!  Router ─► Upstreams::send ─► h1::send: head + body, one write
//!         ◄─ Response<h1::Body> ◄─ the head read (interim 1xx skipped)
//!  downstream polls h1::Body ─► Length | Chunked | UntilClose ─► IdleList
//! ```
//!
//! Requests that stream (unknown length, bigger bodies), `Upgrade` and
//! `CONNECT` go through hyper's client instead (`upstream.rs`). Message
//! framing follows RFC 9112 §6: `Transfer-Encoding` over
//! `Content-Length`, no body for `HEAD`, 1xx, 204 and 304.

use std::hash::Hash;
use std::ops::Range;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};

use bytes::{Buf, BufMut, Bytes, BytesMut};
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::request::Parts;
use http::{Method, Response, StatusCode};
use hyper::body::{Frame, SizeHint};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};

use super::answer::BoxError;

/// The largest response head or trailer section read.
const MAX_HEAD: usize = 64 * 1024;
/// The longest chunk-size line.
const MAX_CHUNK_LINE: usize = 4 * 1024;
/// Header fields in one response head, at most.
const MAX_HEADERS: usize = 100;
/// How much one read asks for.
const READ_SIZE: usize = 16 * 1024;

/// Why an exchange failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The request could not be written.
    #[error("writing the request: {0}")]
    Write(std::io::Error),
    /// The connection failed while reading.
    #[error("reading the response: {0}")]
    Read(std::io::Error),
    /// The connection ended before any byte of the response.
    #[error("the connection closed before the response began")]
    ClosedEarly,
    /// The connection ended within the response.
    #[error("the connection closed within the response")]
    ClosedWithin,
    /// The response is not HTTP/1.1 as RFC 9112 says.
    #[error("malformed response: {0}")]
    Malformed(String),
    /// A head, trailer section or chunk line beyond the limits.
    #[error("response {0} longer than {1} bytes")]
    TooLong(&'static str, usize),
}

impl Error {
    /// Whether the server had closed the connection before it read the
    /// request: nothing of an answer came. On a reused connection this is
    /// the race with the server's idle timeout.
    pub fn nothing_came(&self) -> bool {
        matches!(self, Error::ClosedEarly | Error::Write(_))
    }
}

/// An upstream connection between requests, and what was read past the
/// last response (nothing, on a connection fit for reuse).
#[derive(Debug)]
pub struct Conn<IO> {
    io: IO,
    buf: BytesMut,
}

impl<IO: AsyncRead + AsyncWrite + Unpin> Conn<IO> {
    /// A new connection.
    pub fn new(io: IO) -> Conn<IO> {
        Conn {
            io,
            buf: BytesMut::new(),
        }
    }

    /// Whether an idle connection can take a request: the server has sent
    /// nothing since the last response (not even its end). Asks the
    /// connection without waiting; a socket whose readiness is known to be
    /// clear answers without a system call.
    fn idle_and_open(&mut self) -> bool {
        if !self.buf.is_empty() {
            return false;
        }
        let mut cx = Context::from_waker(Waker::noop());
        let mut byte = [0u8; 1];
        let mut probe = ReadBuf::new(&mut byte);
        Pin::new(&mut self.io)
            .poll_read(&mut cx, &mut probe)
            .is_pending()
    }
}

/// Idle connections by key (such as source pod and endpoint), shared with
/// the response bodies that give theirs back.
#[derive(Debug)]
pub struct IdleList<K, IO> {
    idle: Mutex<foldhash::HashMap<K, Vec<Conn<IO>>>>,
    per_key: usize,
}

impl<K: Hash + Eq + Clone, IO: AsyncRead + AsyncWrite + Unpin> IdleList<K, IO> {
    /// An empty list that keeps at most `per_key` connections per key.
    pub fn new(per_key: usize) -> IdleList<K, IO> {
        IdleList {
            idle: Mutex::default(),
            per_key,
        }
    }

    /// An idle connection for `key` that can take a request, if any; those
    /// the server closed meanwhile are dropped on the way.
    pub fn take(&self, key: &K) -> Option<Conn<IO>> {
        let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        let list = idle.get_mut(key)?;
        while let Some(mut conn) = list.pop() {
            if conn.idle_and_open() {
                return Some(conn);
            }
        }
        None
    }

    fn put(&self, key: K, conn: Conn<IO>) {
        let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        let list = idle.entry(key).or_default();
        if list.len() < self.per_key {
            list.push(conn);
        }
    }

    /// Keeps the keys `keep` says yes to; the rest are closed.
    pub fn retain(&self, keep: impl Fn(&K) -> bool) {
        self.idle
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .retain(|k, list| !list.is_empty() && keep(k));
    }
}

/// Where a connection goes when its response has been read.
#[derive(Debug)]
pub struct Home<K, IO> {
    /// The list.
    pub list: Arc<IdleList<K, IO>>,
    /// Its key there.
    pub key: K,
}

/// Sends one request (`parts` and the whole `body`) on `conn` and reads
/// the response's head. The body streams from the connection as it is
/// polled; read to its end, the connection goes `home` when it can take
/// another request.
pub async fn send<K, IO>(
    mut conn: Conn<IO>,
    parts: &Parts,
    body: &Bytes,
    home: Home<K, IO>,
) -> Result<Response<Body<K, IO>>, Error>
where
    K: Hash + Eq + Clone,
    IO: AsyncRead + AsyncWrite + Unpin,
{
    let mut out = BytesMut::with_capacity(256 + body.len());
    encode(parts, body, &mut out);
    conn.io.write_all(&out).await.map_err(Error::Write)?;
    conn.io.flush().await.map_err(Error::Write)?;
    let head = read_head(&mut conn).await?;
    let framing = if parts.method == Method::HEAD {
        Framing::Done
    } else {
        head.framing
    };
    let mut body = Body {
        conn: Some(conn),
        framing,
        reusable: head.reusable,
        home: Some(home),
    };
    if body.framing.is_done() {
        body.finish();
    }
    let mut res = Response::new(body);
    *res.status_mut() = head.status;
    *res.headers_mut() = head.headers;
    Ok(res)
}

/// Writes the request head and body: origin form, the header fields as
/// they are but for the message framing, which follows `body`.
fn encode(parts: &Parts, body: &Bytes, out: &mut BytesMut) {
    out.put_slice(parts.method.as_str().as_bytes());
    out.put_u8(b' ');
    let target = parts
        .uri
        .path_and_query()
        .map_or("/", http::uri::PathAndQuery::as_str);
    out.put_slice(target.as_bytes());
    out.put_slice(b" HTTP/1.1\r\n");
    let mut host = false;
    for (name, value) in &parts.headers {
        if name == header::CONTENT_LENGTH || name == header::TRANSFER_ENCODING {
            continue;
        }
        host |= name == header::HOST;
        put_field(out, name.as_str().as_bytes(), value.as_bytes());
    }
    if !host && let Some(a) = parts.uri.authority() {
        put_field(out, b"host", a.as_str().as_bytes());
    }
    // A length for a body, or where the client gave one, or where the
    // method's semantics expect content (as clients do for an empty
    // POST).
    if !body.is_empty()
        || parts.headers.contains_key(header::CONTENT_LENGTH)
        || matches!(parts.method, Method::POST | Method::PUT | Method::PATCH)
    {
        put_field(out, b"content-length", body.len().to_string().as_bytes());
    }
    out.put_slice(b"\r\n");
    out.put_slice(body);
}

fn put_field(out: &mut BytesMut, name: &[u8], value: &[u8]) {
    out.put_slice(name);
    out.put_slice(b": ");
    out.put_slice(value);
    out.put_slice(b"\r\n");
}

/// A response head as read.
struct Head {
    status: StatusCode,
    headers: HeaderMap,
    framing: Framing,
    /// Whether the connection can take another request after this one.
    reusable: bool,
}

/// Reads until a final response head is complete (interim 1xx answers
/// are read past).
async fn read_head<IO: AsyncRead + Unpin>(conn: &mut Conn<IO>) -> Result<Head, Error> {
    let mut received = false;
    loop {
        if !conn.buf.is_empty() {
            received = true;
            if let Some(head) = parse_head(&mut conn.buf)? {
                return Ok(head);
            }
            if conn.buf.len() >= MAX_HEAD {
                return Err(Error::TooLong("head", MAX_HEAD));
            }
        }
        conn.buf.reserve(READ_SIZE);
        let n = conn.io.read_buf(&mut conn.buf).await.map_err(Error::Read)?;
        if n == 0 {
            return Err(if received {
                Error::ClosedWithin
            } else {
                Error::ClosedEarly
            });
        }
    }
}

/// A final response head from the front of `buf` (taken from it), `None`
/// while it is incomplete; interim answers are taken and skipped.
fn parse_head(buf: &mut BytesMut) -> Result<Option<Head>, Error> {
    loop {
        let mut fields = [httparse::EMPTY_HEADER; MAX_HEADERS];
        let mut res = httparse::Response::new(&mut fields);
        let len = match res.parse(buf) {
            Ok(httparse::Status::Complete(len)) => len,
            Ok(httparse::Status::Partial) => return Ok(None),
            Err(e) => return Err(Error::Malformed(format!("head: {e}"))),
        };
        let code = res.code.unwrap_or_default();
        if (100..200).contains(&code) && code != 101 {
            buf.advance(len);
            continue;
        }
        let status = StatusCode::from_u16(code)
            .map_err(|_| Error::Malformed(format!("status code {code}")))?;
        let http10 = res.version == Some(0);
        // Names now; values once the head is its own `Bytes`, so they share
        // it instead of being copied one by one.
        let base = buf.as_ptr() as usize;
        let mut named: Vec<(HeaderName, Range<usize>)> = Vec::with_capacity(res.headers.len());
        for f in res.headers.iter() {
            let name = HeaderName::from_bytes(f.name.as_bytes())
                .map_err(|_| Error::Malformed(format!("header name {:?}", f.name)))?;
            let start = f.value.as_ptr() as usize - base;
            named.push((name, start..start + f.value.len()));
        }
        let head = buf.split_to(len).freeze();
        let mut headers = HeaderMap::with_capacity(named.len());
        let mut chunked = false;
        let mut coded = false;
        let mut length: Option<u64> = None;
        let mut close = http10;
        for (name, range) in named {
            let value = HeaderValue::from_maybe_shared(head.slice(range))
                .map_err(|_| Error::Malformed(format!("value of {name}")))?;
            if name == header::TRANSFER_ENCODING {
                coded = true;
                // Chunked is the last coding when it is there at all.
                chunked = value
                    .as_bytes()
                    .rsplit(|b| *b == b',')
                    .next()
                    .is_some_and(|c| c.trim_ascii().eq_ignore_ascii_case(b"chunked"));
            } else if name == header::CONTENT_LENGTH {
                let n = std::str::from_utf8(value.as_bytes())
                    .ok()
                    .and_then(|s| s.trim().parse::<u64>().ok())
                    .ok_or_else(|| Error::Malformed(format!("content-length {value:?}")))?;
                if length.is_some_and(|l| l != n) {
                    return Err(Error::Malformed("content-length values differ".to_owned()));
                }
                length = Some(n);
            } else if name == header::CONNECTION {
                for token in value.as_bytes().split(|b| *b == b',') {
                    let token = token.trim_ascii();
                    if token.eq_ignore_ascii_case(b"close") {
                        close = true;
                    } else if http10 && token.eq_ignore_ascii_case(b"keep-alive") {
                        close = false;
                    }
                }
            }
            headers.append(name, value);
        }
        let framing = if code == 101 || code == 204 || code == 304 {
            Framing::Done
        } else if coded && chunked {
            Framing::Chunked(Chunk::Size)
        } else if coded {
            Framing::UntilClose
        } else {
            match length {
                Some(0) => Framing::Done,
                Some(n) => Framing::Length(n),
                None => Framing::UntilClose,
            }
        };
        // A 101 here was not asked for: the connection is no longer HTTP.
        let reusable =
            !(close || code == 101 || framing == Framing::UntilClose || coded && length.is_some());
        return Ok(Some(Head {
            status,
            headers,
            framing,
            reusable,
        }));
    }
}

/// How the rest of a response body is delimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Framing {
    /// This many bytes are left.
    Length(u64),
    /// Chunked, at this point of it.
    Chunked(Chunk),
    /// Until the server closes the connection.
    UntilClose,
    /// Nothing left.
    Done,
}

impl Framing {
    fn is_done(&self) -> bool {
        *self == Framing::Done
    }
}

/// Where a chunked body's reading stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Chunk {
    /// A chunk-size line comes next.
    Size,
    /// This many bytes of a chunk's data are left.
    Data(u64),
    /// The CRLF after a chunk's data comes next.
    DataEnd,
    /// The trailer section (after the last, empty chunk) comes next.
    Trailers,
}

/// What one step of decoding gave.
#[derive(Debug, PartialEq)]
enum Decoded {
    Data(Bytes),
    Trailers(HeaderMap),
    /// The body ended (nothing more to give).
    End,
    /// More bytes are needed.
    More,
}

/// Takes the next piece of the body from the front of `buf`.
fn decode(framing: &mut Framing, buf: &mut BytesMut) -> Result<Decoded, Error> {
    match framing {
        Framing::Done => Ok(Decoded::End),
        Framing::Length(left) => {
            if buf.is_empty() {
                return Ok(Decoded::More);
            }
            let n = (*left).min(buf.len() as u64);
            *left -= n;
            if *left == 0 {
                *framing = Framing::Done;
            }
            Ok(Decoded::Data(buf.split_to(n as usize).freeze()))
        }
        Framing::UntilClose => {
            if buf.is_empty() {
                Ok(Decoded::More)
            } else {
                Ok(Decoded::Data(buf.split().freeze()))
            }
        }
        Framing::Chunked(chunk) => {
            let decoded = decode_chunked(chunk, buf)?;
            if matches!(decoded, Decoded::End | Decoded::Trailers(_)) {
                *framing = Framing::Done;
            }
            Ok(decoded)
        }
    }
}

/// One step of a chunked body (RFC 9112 §7.1): data as it comes, then
/// the trailers if any.
fn decode_chunked(chunk: &mut Chunk, buf: &mut BytesMut) -> Result<Decoded, Error> {
    loop {
        match chunk {
            Chunk::Size => {
                let Some(eol) = find(buf, b"\r\n") else {
                    if buf.len() > MAX_CHUNK_LINE {
                        return Err(Error::TooLong("chunk-size line", MAX_CHUNK_LINE));
                    }
                    return Ok(Decoded::More);
                };
                // The size, then optional whitespace and extensions.
                let line = &buf[..eol];
                let digits = line.iter().take_while(|b| b.is_ascii_hexdigit()).count();
                let rest = line[digits..].trim_ascii_start();
                if digits == 0 || digits > 16 || !(rest.is_empty() || rest[0] == b';') {
                    return Err(Error::Malformed(format!(
                        "chunk-size line {:?}",
                        String::from_utf8_lossy(line)
                    )));
                }
                let size = line[..digits].iter().fold(0u64, |n, d| {
                    n * 16 + u64::from((*d as char).to_digit(16).unwrap_or_default())
                });
                buf.advance(eol + 2);
                *chunk = if size == 0 {
                    Chunk::Trailers
                } else {
                    Chunk::Data(size)
                };
            }
            Chunk::Data(left) => {
                if buf.is_empty() {
                    return Ok(Decoded::More);
                }
                let n = (*left).min(buf.len() as u64);
                *left -= n;
                if *left == 0 {
                    *chunk = Chunk::DataEnd;
                }
                return Ok(Decoded::Data(buf.split_to(n as usize).freeze()));
            }
            Chunk::DataEnd => {
                if buf.len() < 2 {
                    return Ok(Decoded::More);
                }
                if &buf[..2] != b"\r\n" {
                    return Err(Error::Malformed(
                        "chunk data not followed by CRLF".to_owned(),
                    ));
                }
                buf.advance(2);
                *chunk = Chunk::Size;
            }
            Chunk::Trailers => {
                if buf.starts_with(b"\r\n") {
                    buf.advance(2);
                    return Ok(Decoded::End);
                }
                let Some(end) = find(buf, b"\r\n\r\n") else {
                    if buf.len() > MAX_HEAD {
                        return Err(Error::TooLong("trailer section", MAX_HEAD));
                    }
                    return Ok(Decoded::More);
                };
                let mut fields = [httparse::EMPTY_HEADER; MAX_HEADERS];
                let parsed = httparse::parse_headers(&buf[..end + 4], &mut fields)
                    .map_err(|e| Error::Malformed(format!("trailers: {e}")))?;
                let httparse::Status::Complete((len, fields)) = parsed else {
                    return Err(Error::Malformed("trailers incomplete".to_owned()));
                };
                let mut trailers = HeaderMap::with_capacity(fields.len());
                for f in fields.iter() {
                    let (Ok(n), Ok(v)) = (
                        HeaderName::from_bytes(f.name.as_bytes()),
                        HeaderValue::from_bytes(f.value),
                    ) else {
                        return Err(Error::Malformed(format!("trailer {:?}", f.name)));
                    };
                    trailers.append(n, v);
                }
                buf.advance(len);
                return Ok(Decoded::Trailers(trailers));
            }
        }
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// A response body read from its connection as it is polled.
#[derive(Debug)]
pub struct Body<K, IO> {
    /// The connection, until the body ends (then it goes home) or fails.
    conn: Option<Conn<IO>>,
    framing: Framing,
    reusable: bool,
    home: Option<Home<K, IO>>,
}

impl<K: Hash + Eq + Clone, IO: AsyncRead + AsyncWrite + Unpin> Body<K, IO> {
    /// The body has been read to its end: the connection goes home if it
    /// can take another request and nothing was read past the end.
    fn finish(&mut self) {
        let (Some(conn), Some(home)) = (self.conn.take(), self.home.take()) else {
            return;
        };
        if self.reusable && conn.buf.is_empty() {
            home.list.put(home.key, conn);
        }
    }
}

impl<K, IO> hyper::body::Body for Body<K, IO>
where
    K: Hash + Eq + Clone + Unpin,
    IO: AsyncRead + AsyncWrite + Unpin,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        loop {
            let Some(conn) = this.conn.as_mut() else {
                return Poll::Ready(None);
            };
            let step = decode(&mut this.framing, &mut conn.buf);
            let frame = match step {
                Ok(Decoded::More) => None,
                Ok(Decoded::End) => {
                    this.finish();
                    return Poll::Ready(None);
                }
                Ok(Decoded::Data(d)) => Some(Frame::data(d)),
                Ok(Decoded::Trailers(t)) => Some(Frame::trailers(t)),
                Err(e) => {
                    this.conn = None;
                    return Poll::Ready(Some(Err(e.into())));
                }
            };
            if let Some(frame) = frame {
                // The last piece: the connection goes home now, not when
                // (if ever) the reader polls past the end.
                if this.framing.is_done() {
                    this.finish();
                }
                return Poll::Ready(Some(Ok(frame)));
            }
            conn.buf.reserve(READ_SIZE);
            match tokio_util::io::poll_read_buf(Pin::new(&mut conn.io), cx, &mut conn.buf) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Ok(0)) if this.framing == Framing::UntilClose => {
                    this.framing = Framing::Done;
                    this.conn = None;
                    return Poll::Ready(None);
                }
                Poll::Ready(Ok(0)) => {
                    this.conn = None;
                    return Poll::Ready(Some(Err(Error::ClosedWithin.into())));
                }
                Poll::Ready(Ok(_)) => {}
                Poll::Ready(Err(e)) => {
                    this.conn = None;
                    return Poll::Ready(Some(Err(Error::Read(e).into())));
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.framing.is_done() || self.conn.is_none()
    }

    fn size_hint(&self) -> SizeHint {
        match self.framing {
            Framing::Length(n) => SizeHint::with_exact(n),
            Framing::Done => SizeHint::with_exact(0),
            _ => SizeHint::default(),
        }
    }
}

pub mod server;

#[cfg(test)]
mod tests;
