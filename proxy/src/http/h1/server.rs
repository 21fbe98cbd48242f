//! A direct HTTP/1.1 server loop for a downstream connection whose
//! requests are plain: HTTP/1.1, a known body length up to the replay
//! buffer's (or none), no `Upgrade`, `CONNECT`, `Expect` or
//! `Transfer-Encoding`. Each such request is read whole, handed to the
//! router, and its response written as the body comes, head and first
//! data in one write. The first request that is not plain hands the
//! connection, with the bytes already read, to hyper's server for the
//! rest of its life ([`Served::Handoff`]).
//!
//! ```text
//!  read ─► httparse head ─► plain? ─no─► Handoff(Rewind { read bytes, io }) ─► hyper
//!                             │yes
//!          body (Content-Length) ─► handle(Request) ─► Response<Body>
//!          head (+ first data, one write) ─► the rest, Content-Length or chunked
//! ```
//!
//! Framing of the response follows RFC 9112 §6: no body for `HEAD`, 1xx,
//! 204 and 304; a `Content-Length` when the body's length is known, else
//! chunked, with the trailers written after the last chunk.

use std::future::Future;
use std::ops::Range;
use std::pin::Pin;
use std::task::{Context, Poll, Waker};

use bytes::{Buf, BufMut, Bytes, BytesMut};
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, Request, Response, StatusCode, Uri, Version};
use http_body_util::Full;
use hyper::body::{Body as _, Frame};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};

use super::{MAX_HEAD, MAX_HEADERS, READ_SIZE, put_field};
use crate::http::answer::Body;

/// How a connection's service by the direct loop ended.
#[derive(Debug)]
pub enum Served<IO> {
    /// The connection is finished: the client closed it, asked to, or sent
    /// something that was answered with an error and a close.
    Closed,
    /// A request that is not plain arrived: the connection, with what was
    /// read of it, goes to a full HTTP/1.1 server.
    Handoff(Rewind<IO>),
}

/// Serves the plain requests of `io` with `handle`, one at a time, until
/// the connection ends or a request that is not plain comes. `max_body`
/// bounds the request bodies read whole; a longer one hands off.
pub async fn serve<IO, F, Fut>(
    mut io: IO,
    max_body: u64,
    mut handle: F,
) -> std::io::Result<Served<IO>>
where
    IO: AsyncRead + AsyncWrite + Unpin,
    F: FnMut(Request<Full<Bytes>>) -> Fut,
    Fut: Future<Output = Response<Body>>,
{
    let mut buf = BytesMut::with_capacity(READ_SIZE);
    let mut out = BytesMut::new();
    loop {
        let head = loop {
            if !buf.is_empty() {
                match parse_head(&buf, max_body) {
                    Ok(Parsed::Partial) if buf.len() >= MAX_HEAD => {
                        refuse(&mut io, StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE).await;
                        return Ok(Served::Closed);
                    }
                    Ok(Parsed::Partial) => {}
                    Ok(Parsed::NotPlain) => {
                        return Ok(Served::Handoff(Rewind {
                            prefix: buf.freeze(),
                            io,
                        }));
                    }
                    Ok(Parsed::Plain(head)) => break head,
                    Err(why) => {
                        tracing::debug!(%why, "malformed request");
                        refuse(&mut io, StatusCode::BAD_REQUEST).await;
                        return Ok(Served::Closed);
                    }
                }
            }
            buf.reserve(READ_SIZE);
            if io.read_buf(&mut buf).await? == 0 {
                // Between requests a close is the normal end; within a
                // head, the client gave up.
                return Ok(Served::Closed);
            }
        };
        let req = match take_request(head, &mut buf, &mut io).await? {
            Taken::Whole(req) => req,
            Taken::Closed => return Ok(Served::Closed),
            Taken::Bad(why) => {
                tracing::debug!(%why, "malformed request");
                refuse(&mut io, StatusCode::BAD_REQUEST).await;
                return Ok(Served::Closed);
            }
        };
        let close = req.close;
        let head_request = req.request.method() == Method::HEAD;
        let res = handle(req.request).await;
        write_response(&mut io, &mut out, res, head_request, close).await?;
        if close {
            let _ = io.shutdown().await;
            return Ok(Served::Closed);
        }
    }
}

/// Answers a request that cannot be read with `status` and no body; the
/// connection closes after it.
async fn refuse<IO: AsyncWrite + Unpin>(io: &mut IO, status: StatusCode) {
    let line = format!(
        "HTTP/1.1 {} {}\r\ncontent-length: 0\r\nconnection: close\r\n\r\n",
        status.as_u16(),
        status.canonical_reason().unwrap_or_default()
    );
    let _ = io.write_all(line.as_bytes()).await;
    let _ = io.shutdown().await;
}

/// What the front of the read buffer holds.
#[derive(Debug)]
enum Parsed {
    /// Not a whole head yet.
    Partial,
    /// A request this loop does not serve.
    NotPlain,
    Plain(Head),
}

/// A plain request head: its parts by position in the buffer.
#[derive(Debug)]
struct Head {
    len: usize,
    method: Method,
    target: Range<usize>,
    fields: Vec<(HeaderName, Range<usize>)>,
    body: usize,
    close: bool,
}

/// What reading a request after its head gave.
#[expect(
    clippy::large_enum_variant,
    reason = "the large variant is the one nearly every request takes; boxing it would allocate per request"
)]
enum Taken {
    Whole(Whole),
    /// The client closed within the body.
    Closed,
    /// The head does not make a request (what is wrong with it).
    Bad(String),
}

/// A request read whole, and whether the client asked to close after it.
struct Whole {
    request: Request<Full<Bytes>>,
    close: bool,
}

/// Parses the request head at the front of `buf` without taking it.
fn parse_head(buf: &[u8], max_body: u64) -> Result<Parsed, String> {
    let mut fields = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut fields);
    let len = match req.parse(buf) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) => return Ok(Parsed::Partial),
        // Beyond the field count this loop keeps: a full server decides.
        Err(httparse::Error::TooManyHeaders) => return Ok(Parsed::NotPlain),
        Err(e) => return Err(e.to_string()),
    };
    let (Some(method), Some(target), Some(1)) = (req.method, req.path, req.version) else {
        return Ok(Parsed::NotPlain);
    };
    let method = Method::from_bytes(method.as_bytes()).map_err(|e| e.to_string())?;
    if method == Method::CONNECT {
        return Ok(Parsed::NotPlain);
    }
    let base = buf.as_ptr() as usize;
    let offset = |s: &[u8]| s.as_ptr() as usize - base;
    let mut named = Vec::with_capacity(req.headers.len());
    let mut length: Option<u64> = None;
    let mut close = false;
    for f in req.headers.iter() {
        let name = HeaderName::from_bytes(f.name.as_bytes())
            .map_err(|_| format!("header name {:?}", f.name))?;
        if name == header::TRANSFER_ENCODING || name == header::UPGRADE || name == header::EXPECT {
            return Ok(Parsed::NotPlain);
        }
        if name == header::CONTENT_LENGTH {
            let n = std::str::from_utf8(f.value)
                .ok()
                .and_then(|s| s.trim().parse::<u64>().ok())
                .ok_or_else(|| format!("content-length {:?}", String::from_utf8_lossy(f.value)))?;
            if length.is_some_and(|l| l != n) {
                return Err("content-length values differ".to_owned());
            }
            length = Some(n);
        } else if name == header::CONNECTION {
            for token in f.value.split(|b| *b == b',') {
                let token = token.trim_ascii();
                if token.eq_ignore_ascii_case(b"close") {
                    close = true;
                } else if token.eq_ignore_ascii_case(b"upgrade") {
                    return Ok(Parsed::NotPlain);
                }
            }
        }
        let start = offset(f.value);
        named.push((name, start..start + f.value.len()));
    }
    let body = length.unwrap_or(0);
    if body > max_body {
        return Ok(Parsed::NotPlain);
    }
    let start = offset(target.as_bytes());
    Ok(Parsed::Plain(Head {
        len,
        method,
        target: start..start + target.len(),
        fields: named,
        body: body as usize,
        close,
    }))
}

/// Takes the head and its body off `buf`, reading the rest of the body
/// from `io`.
async fn take_request<IO: AsyncRead + Unpin>(
    head: Head,
    buf: &mut BytesMut,
    io: &mut IO,
) -> std::io::Result<Taken> {
    let bytes = buf.split_to(head.len).freeze();
    while buf.len() < head.body {
        buf.reserve(head.body - buf.len());
        if io.read_buf(buf).await? == 0 {
            return Ok(Taken::Closed);
        }
    }
    let body = buf.split_to(head.body).freeze();
    let uri = match Uri::from_maybe_shared(bytes.slice(head.target.clone())) {
        Ok(uri) => uri,
        Err(e) => return Ok(Taken::Bad(format!("request target: {e}"))),
    };
    let mut headers = HeaderMap::with_capacity(head.fields.len());
    for (name, range) in head.fields {
        let Ok(value) = HeaderValue::from_maybe_shared(bytes.slice(range)) else {
            return Ok(Taken::Bad(format!("value of {name}")));
        };
        headers.append(name, value);
    }
    let mut request = Request::new(Full::new(body));
    *request.method_mut() = head.method;
    *request.uri_mut() = uri;
    *request.version_mut() = Version::HTTP_11;
    *request.headers_mut() = headers;
    Ok(Taken::Whole(Whole {
        request,
        close: head.close,
    }))
}

/// How a response body goes on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Framing {
    /// No body at all (`HEAD`, 1xx, 204, 304).
    None,
    /// This many bytes, as the `Content-Length` says.
    Length(u64),
    Chunked,
}

/// Writes `res`: the head with the first piece of the body in one write
/// when it is at hand, then the rest as it comes.
async fn write_response<IO: AsyncWrite + Unpin>(
    io: &mut IO,
    out: &mut BytesMut,
    res: Response<Body>,
    head_request: bool,
    close: bool,
) -> std::io::Result<()> {
    let (parts, mut body) = res.into_parts();
    let code = parts.status.as_u16();
    let framing = if head_request || (100..200).contains(&code) || code == 204 || code == 304 {
        Framing::None
    } else {
        match body.size_hint().exact() {
            Some(n) => Framing::Length(n),
            None => Framing::Chunked,
        }
    };
    out.clear();
    out.put_slice(b"HTTP/1.1 ");
    out.put_slice(parts.status.as_str().as_bytes());
    out.put_u8(b' ');
    out.put_slice(
        parts
            .status
            .canonical_reason()
            .unwrap_or_default()
            .as_bytes(),
    );
    out.put_slice(b"\r\n");
    for (name, value) in &parts.headers {
        // The framing is this hop's; for a bodiless answer the length
        // the sender gave stays (a HEAD's says what a GET would get).
        if name == header::TRANSFER_ENCODING
            || name == header::CONNECTION
            || (name == header::CONTENT_LENGTH && framing != Framing::None)
        {
            continue;
        }
        put_field(out, name.as_str().as_bytes(), value.as_bytes());
    }
    match framing {
        Framing::None => {}
        Framing::Length(n) => put_field(out, b"content-length", n.to_string().as_bytes()),
        Framing::Chunked => put_field(out, b"transfer-encoding", b"chunked"),
    }
    if close {
        put_field(out, b"connection", b"close");
    }
    out.put_slice(b"\r\n");
    if framing == Framing::None {
        return io.write_all(out).await;
    }
    // The first piece goes with the head when it is ready now; a body
    // that is slow to start does not hold the head back.
    let mut left = match framing {
        Framing::Length(n) => n,
        _ => u64::MAX,
    };
    let mut ended = false;
    if let Poll::Ready(frame) =
        Pin::new(&mut body).poll_frame(&mut Context::from_waker(Waker::noop()))
    {
        ended = put_frame(out, frame, framing, &mut left)?;
    }
    io.write_all(out).await?;
    while !ended {
        out.clear();
        let frame = std::future::poll_fn(|cx| Pin::new(&mut body).poll_frame(cx)).await;
        ended = put_frame(out, frame, framing, &mut left)?;
        io.write_all(out).await?;
    }
    if framing != Framing::Chunked && left != 0 {
        return Err(std::io::Error::other(format!(
            "the response body ended {left} bytes short of its length"
        )));
    }
    Ok(())
}

/// Puts one body frame into `out` as `framing` writes it; `true` when the
/// body has ended. `left` counts down the bytes a length allows.
fn put_frame(
    out: &mut BytesMut,
    frame: Option<Result<Frame<Bytes>, crate::http::answer::BoxError>>,
    framing: Framing,
    left: &mut u64,
) -> std::io::Result<bool> {
    let frame = match frame {
        None => {
            if framing == Framing::Chunked {
                out.put_slice(b"0\r\n\r\n");
            }
            return Ok(true);
        }
        Some(Err(e)) => {
            return Err(std::io::Error::other(format!("the response body: {e}")));
        }
        Some(Ok(frame)) => frame,
    };
    match frame.into_data() {
        Ok(data) => {
            if data.is_empty() {
                return Ok(false);
            }
            if framing == Framing::Chunked {
                out.put_slice(format!("{:x}\r\n", data.len()).as_bytes());
                out.put_slice(&data);
                out.put_slice(b"\r\n");
            } else {
                let n = data.len() as u64;
                if n > *left {
                    return Err(std::io::Error::other(
                        "the response body is longer than its length",
                    ));
                }
                *left -= n;
                out.put_slice(&data);
            }
            Ok(false)
        }
        Err(frame) => {
            // Trailers end the body; only chunked framing can carry them.
            if framing == Framing::Chunked {
                out.put_slice(b"0\r\n");
                if let Ok(trailers) = frame.into_trailers() {
                    for (name, value) in &trailers {
                        put_field(out, name.as_str().as_bytes(), value.as_bytes());
                    }
                }
                out.put_slice(b"\r\n");
            }
            Ok(true)
        }
    }
}

/// A connection with bytes already read from it, given back first.
#[derive(Debug)]
pub struct Rewind<IO> {
    prefix: Bytes,
    io: IO,
}

impl<IO: AsyncRead + Unpin> AsyncRead for Rewind<IO> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        dst: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        if !this.prefix.is_empty() {
            let n = this.prefix.len().min(dst.remaining());
            dst.put_slice(&this.prefix[..n]);
            this.prefix.advance(n);
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut this.io).poll_read(cx, dst)
    }
}

impl<IO: AsyncWrite + Unpin> AsyncWrite for Rewind<IO> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests;
