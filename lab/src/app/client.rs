//! The lab client: one request over TCP, HTTP/1.1 or h2c, and its response.

use std::io;
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, Uri};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// What to fetch.
#[derive(Debug, Clone)]
pub struct ClientConfig {
    /// `tcp://host:port` or `http://host[:port]/path`.
    pub url: String,
    /// Use HTTP/2 with prior knowledge (h2c) instead of HTTP/1.1.
    pub http2: bool,
    /// Bytes to send: the TCP payload, or an HTTP request body (POST).
    pub data: Option<Bytes>,
    /// Deadline for the whole exchange.
    pub timeout: Duration,
}

/// Why a fetch failed; each names the URL.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The URL cannot be used.
    #[error("bad url `{url}`: {why}")]
    BadUrl {
        /// The URL.
        url: String,
        /// Why.
        why: String,
    },
    /// Connecting, sending or receiving failed.
    #[error("{url}: {what}: {source}")]
    Io {
        /// The URL.
        url: String,
        /// The step.
        what: &'static str,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// The HTTP exchange failed.
    #[error("{url}: {source}")]
    Http {
        /// The URL.
        url: String,
        /// The cause.
        #[source]
        source: hyper::Error,
    },
    /// No complete answer in time.
    #[error("{url}: no complete response within {secs:.1} s")]
    Timeout {
        /// The URL.
        url: String,
        /// The deadline.
        secs: f64,
    },
    /// The server answered with an error status.
    #[error("{url}: HTTP {status}: {body}")]
    Status {
        /// The URL.
        url: String,
        /// The status.
        status: http::StatusCode,
        /// The body, as text.
        body: String,
    },
}

/// Performs one exchange and returns the response body (or, for TCP,
/// everything received until the server closed).
pub async fn fetch(config: &ClientConfig) -> Result<Bytes, ClientError> {
    let url = config.url.clone();
    tokio::time::timeout(config.timeout, exchange(config))
        .await
        .map_err(|_| ClientError::Timeout {
            url,
            secs: config.timeout.as_secs_f64(),
        })?
}

async fn exchange(config: &ClientConfig) -> Result<Bytes, ClientError> {
    let url = config.url.as_str();
    let bad = |why: &str| ClientError::BadUrl {
        url: url.to_owned(),
        why: why.to_owned(),
    };
    let uri: Uri = url
        .parse()
        .map_err(|e: http::uri::InvalidUri| bad(&e.to_string()))?;
    let host = uri.host().ok_or_else(|| bad("no host"))?;
    let io_err = |what: &'static str| {
        move |source| ClientError::Io {
            url: url.to_owned(),
            what,
            source,
        }
    };
    match uri.scheme_str() {
        Some("tcp") => {
            let port = uri.port_u16().ok_or_else(|| bad("tcp:// needs a port"))?;
            let mut stream = TcpStream::connect((host, port))
                .await
                .map_err(io_err("connect"))?;
            let data = config
                .data
                .clone()
                .unwrap_or_else(|| Bytes::from_static(b"hello\n"));
            stream.write_all(&data).await.map_err(io_err("send"))?;
            stream.shutdown().await.map_err(io_err("half-close"))?;
            let mut got = Vec::new();
            stream
                .read_to_end(&mut got)
                .await
                .map_err(io_err("receive"))?;
            Ok(got.into())
        }
        Some("http") => {
            let port = uri.port_u16().unwrap_or(80);
            let stream = TcpStream::connect((host, port))
                .await
                .map_err(io_err("connect"))?;
            stream.set_nodelay(true).map_err(io_err("connect"))?;
            let (method, body) = match &config.data {
                Some(d) => (Method::POST, d.clone()),
                None => (Method::GET, Bytes::new()),
            };
            let req = Request::builder()
                .method(method)
                .uri(uri.clone())
                .header(http::header::HOST, format!("{host}:{port}"))
                .body(Full::new(body))
                .map_err(|e| bad(&e.to_string()))?;
            let http_err = |source| ClientError::Http {
                url: url.to_owned(),
                source,
            };
            let resp = if config.http2 {
                let (mut send, conn) = hyper::client::conn::http2::handshake(
                    TokioExecutor::new(),
                    TokioIo::new(stream),
                )
                .await
                .map_err(http_err)?;
                tokio::spawn(conn);
                send.send_request(req).await.map_err(http_err)?
            } else {
                let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
                    .await
                    .map_err(http_err)?;
                tokio::spawn(conn);
                send.send_request(req).await.map_err(http_err)?
            };
            let status = resp.status();
            let body = resp
                .into_body()
                .collect()
                .await
                .map_err(http_err)?
                .to_bytes();
            if !status.is_success() {
                return Err(ClientError::Status {
                    url: url.to_owned(),
                    status,
                    body: String::from_utf8_lossy(&body).into_owned(),
                });
            }
            Ok(body)
        }
        _ => Err(bad("use tcp://host:port or http://host[:port]/path")),
    }
}
