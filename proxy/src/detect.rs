//! Protocol detection on L7 ports: HTTP/1.1, HTTP/2 with prior knowledge
//! (h2c), or something else, which falls back to L4. Bytes are peeked,
//! never consumed, so whichever path takes the connection reads it whole.

use std::io;
use std::mem::MaybeUninit;
use std::time::Duration;

use socket2::SockRef;
use tokio::io::Interest;
use tokio::net::TcpStream;

/// What a connection speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    /// HTTP/1.x.
    Http1 = 0,
    /// HTTP/2 prior knowledge (the client sent the preface).
    Http2,
    /// Not HTTP, or nothing arrived in time: relayed as bytes.
    Opaque,
}

const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
/// A request line longer than this without its end is not HTTP we handle.
const MAX_PEEK: usize = 8 * 1024;

/// Looks at the first bytes of `stream` until they tell, for up to
/// `timeout` (a client that says nothing is opaque: a server-first
/// protocol).
pub async fn detect(stream: &TcpStream, timeout: Duration) -> io::Result<Protocol> {
    let mut buf = vec![0u8; 1024];
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        let n = match tokio::time::timeout_at(deadline, stream.peek(&mut buf)).await {
            Ok(r) => r?,
            Err(_) => return Ok(Protocol::Opaque),
        };
        if n == 0 {
            return Ok(Protocol::Opaque);
        }
        match classify(&buf[..n]) {
            Some(p) => return Ok(p),
            None if n == buf.len() && buf.len() < MAX_PEEK => buf.resize(buf.len() * 2, 0),
            None if n == buf.len() => return Ok(Protocol::Opaque),
            // More may come: wait for it (peek returns at once while the
            // bytes are the same, so wait for the socket to change).
            None => {
                let more = tokio::time::timeout_at(deadline, wait_for_more(stream, n)).await;
                match more {
                    Ok(r) => r?,
                    Err(_) => return Ok(Protocol::Opaque),
                }
            }
        }
    }
}

/// Waits until more than `have` bytes can be peeked (or the peer closed).
/// Peeking leaves the socket readable, so readiness is cleared by hand
/// (`try_io` with `WouldBlock`) and the next wake-up is new bytes.
async fn wait_for_more(stream: &TcpStream, have: usize) -> io::Result<()> {
    let mut probe = vec![MaybeUninit::<u8>::uninit(); have + 1];
    loop {
        stream.readable().await?;
        let peeked = stream.try_io(Interest::READABLE, || {
            let n = SockRef::from(stream).peek(&mut probe)?;
            if n > have || n == 0 {
                Ok(())
            } else {
                Err(io::ErrorKind::WouldBlock.into())
            }
        });
        match peeked {
            Ok(()) => return Ok(()),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            Err(e) => return Err(e),
        }
    }
}

/// What the bytes so far say; `None`: not yet known.
pub fn classify(bytes: &[u8]) -> Option<Protocol> {
    if bytes.len() >= PREFACE.len() {
        if bytes.starts_with(PREFACE) {
            return Some(Protocol::Http2);
        }
    } else if PREFACE.starts_with(bytes) {
        return None;
    }
    // HTTP/1: `METHOD SP target SP HTTP/1.x CRLF`.
    let method_len = bytes.iter().take_while(|b| b.is_ascii_uppercase()).count();
    if method_len == bytes.len() {
        return if method_len <= 20 {
            None
        } else {
            Some(Protocol::Opaque)
        };
    }
    if method_len == 0 || method_len > 20 || bytes[method_len] != b' ' {
        return Some(Protocol::Opaque);
    }
    let Some(end) = bytes.windows(2).position(|w| w == b"\r\n") else {
        // The request line is not complete: opaque only if it cannot be one.
        return if bytes[method_len + 1..]
            .iter()
            .any(|b| b.is_ascii_control() && *b != b'\r')
        {
            Some(Protocol::Opaque)
        } else {
            None
        };
    };
    let line = &bytes[..end];
    if line.ends_with(b" HTTP/1.1") || line.ends_with(b" HTTP/1.0") {
        Some(Protocol::Http1)
    } else {
        Some(Protocol::Opaque)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_lines_and_the_h2_preface_are_told_from_anything_else() {
        assert_eq!(
            classify(b"GET / HTTP/1.1\r\nhost: x\r\n"),
            Some(Protocol::Http1)
        );
        assert_eq!(classify(b"POST /a?b HTTP/1.0\r\n"), Some(Protocol::Http1));
        assert_eq!(classify(PREFACE), Some(Protocol::Http2));
        assert_eq!(classify(b"PRI * HTTP/2.0\r\n"), None, "a preface in parts");
        assert_eq!(classify(b"GE"), None);
        assert_eq!(classify(b"GET /long/path/no/end/yet"), None);
        assert_eq!(classify(b"hello\n"), Some(Protocol::Opaque));
        assert_eq!(
            classify(b"\x16\x03\x01\x02\x00"),
            Some(Protocol::Opaque),
            "TLS"
        );
        assert_eq!(classify(b"GET / SPDY/3\r\n"), Some(Protocol::Opaque));
        assert_eq!(classify(b"GET /\x01 HTTP/1.1"), Some(Protocol::Opaque));
    }
}
