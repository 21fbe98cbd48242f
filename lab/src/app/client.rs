//! The lab client: one request over TCP, HTTP/1.1 or h2c, and its response.

use std::io;
use std::time::Duration;

use bytes::Bytes;
use futures_util::StreamExt as _;
use http::{Method, Request, StatusCode, Uri};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::Frame;
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
    /// HTTP method (default: GET, or POST with `data`).
    pub method: Option<Method>,
    /// Extra request headers, in order.
    pub headers: Vec<(String, String)>,
    /// The Host header (default: the URL's host and port).
    pub host: Option<String>,
    /// A streamed request body of this many bytes of [`pattern`] (POST
    /// unless `method`), instead of `data`.
    pub data_size: Option<u64>,
}

impl ClientConfig {
    /// One request to `url` with no options.
    pub fn new(url: &str, timeout: Duration) -> ClientConfig {
        ClientConfig {
            url: url.to_owned(),
            http2: false,
            data: None,
            timeout,
            method: None,
            headers: Vec::new(),
            host: None,
            data_size: None,
        }
    }
}

/// One HTTP response, whole.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answer {
    /// The status code.
    pub status: u16,
    /// Headers, name to values in received order.
    pub headers: std::collections::BTreeMap<String, Vec<String>>,
    /// The body.
    pub body: Bytes,
    /// From sending the request to the end of the body.
    pub elapsed: Duration,
    /// For a streamed body (`data_size`): its length and SHA-256 (hex).
    pub sent: Option<(u64, String)>,
}

/// Bytes of the streamed body pattern made at a time.
const CHUNK: usize = 64 * 1024;

/// Chunk `index` of the streamed body pattern: a fixed 64 KiB that starts
/// with the chunk's index, so a lost, repeated or reordered chunk changes
/// the digest.
fn chunk(index: u64) -> Bytes {
    static BASE: std::sync::OnceLock<Vec<u8>> = std::sync::OnceLock::new();
    let base = BASE.get_or_init(|| (0..CHUNK).map(|i| (i * 31 + i / 251) as u8).collect());
    let mut c = base.clone();
    c[..8].copy_from_slice(&index.to_be_bytes());
    c.into()
}

/// The first `size` bytes of the pattern, as chunks.
pub fn pattern(size: u64) -> impl Iterator<Item = Bytes> + Send + 'static {
    let chunks = size.div_ceil(CHUNK as u64);
    (0..chunks).map(move |i| {
        let c = chunk(i);
        let left = size - i * CHUNK as u64;
        if left < CHUNK as u64 {
            c.slice(..left as usize)
        } else {
            c
        }
    })
}

/// The length and SHA-256 (hex) of the first `size` bytes of the pattern.
pub fn pattern_digest(size: u64) -> (u64, String) {
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
    for c in pattern(size) {
        ctx.update(&c);
    }
    (size, super::hex(ctx.finish().as_ref()))
}

/// A request body on the client.
type ClientBody = BoxBody<Bytes, std::convert::Infallible>;

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
    /// The WebSocket conversation failed.
    #[error("{url}: WebSocket: {source}")]
    WebSocket {
        /// The URL.
        url: String,
        /// The cause.
        #[source]
        source: Box<tokio_tungstenite::tungstenite::Error>,
    },
    /// The server answered with an error status.
    #[error("{url}: HTTP {status}: {body}")]
    Status {
        /// The URL.
        url: String,
        /// The status.
        status: StatusCode,
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

/// Sends `count` HTTP requests one after another on one connection
/// (kept alive) and returns every answer, whatever its status; the
/// deadline covers them all.
pub async fn fetch_all(config: &ClientConfig, count: usize) -> Result<Vec<Answer>, ClientError> {
    let url = config.url.clone();
    tokio::time::timeout(config.timeout, http_requests(config, count))
        .await
        .map_err(|_| ClientError::Timeout {
            url,
            secs: config.timeout.as_secs_f64(),
        })?
}

fn bad_url(url: &str, why: &str) -> ClientError {
    ClientError::BadUrl {
        url: url.to_owned(),
        why: why.to_owned(),
    }
}

async fn exchange(config: &ClientConfig) -> Result<Bytes, ClientError> {
    let url = config.url.as_str();
    let uri: Uri = url
        .parse()
        .map_err(|e: http::uri::InvalidUri| bad_url(url, &e.to_string()))?;
    let host = uri.host().ok_or_else(|| bad_url(url, "no host"))?;
    let io_err = |what: &'static str| {
        move |source| ClientError::Io {
            url: url.to_owned(),
            what,
            source,
        }
    };
    match uri.scheme_str() {
        Some("tcp") => {
            let port = uri
                .port_u16()
                .ok_or_else(|| bad_url(url, "tcp:// needs a port"))?;
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
            let mut answers = http_requests(config, 1).await?;
            let answer = answers.pop().ok_or_else(|| bad_url(url, "no answer"))?;
            let status = StatusCode::from_u16(answer.status).unwrap_or(StatusCode::BAD_GATEWAY);
            if !status.is_success() {
                return Err(ClientError::Status {
                    url: url.to_owned(),
                    status,
                    body: String::from_utf8_lossy(&answer.body).into_owned(),
                });
            }
            Ok(answer.body)
        }
        _ => Err(bad_url(
            url,
            "use tcp://host:port or http://host[:port]/path",
        )),
    }
}

/// A connection for `url`'s requests (no Nagle delay).
async fn connect(url: &str, addr: (&str, u16)) -> Result<TcpStream, ClientError> {
    let stream = TcpStream::connect(addr)
        .await
        .map_err(|source| ClientError::Io {
            url: url.to_owned(),
            what: "connect",
            source,
        })?;
    let _ = stream.set_nodelay(true);
    Ok(stream)
}

/// `count` requests on one HTTP connection.
async fn http_requests(config: &ClientConfig, count: usize) -> Result<Vec<Answer>, ClientError> {
    let url = config.url.as_str();
    let uri: Uri = url
        .parse()
        .map_err(|e: http::uri::InvalidUri| bad_url(url, &e.to_string()))?;
    if uri.scheme_str() != Some("http") {
        return Err(bad_url(url, "use http://host[:port]/path"));
    }
    let host = uri.host().ok_or_else(|| bad_url(url, "no host"))?;
    let port = uri.port_u16().unwrap_or(80);
    let stream = connect(url, (host, port)).await?;
    let http_err = |source| ClientError::Http {
        url: url.to_owned(),
        source,
    };
    let io = TokioIo::new(stream);
    let mut sender = if config.http2 {
        let (send, conn) = hyper::client::conn::http2::handshake(TokioExecutor::new(), io)
            .await
            .map_err(http_err)?;
        tokio::spawn(conn);
        Sender::Http2(send)
    } else {
        let (send, conn) = hyper::client::conn::http1::handshake(io)
            .await
            .map_err(http_err)?;
        tokio::spawn(conn);
        Sender::Http1(send)
    };
    let body = config.data.clone().unwrap_or_default();
    let sent = config.data_size.map(pattern_digest);
    let method = config
        .method
        .clone()
        .unwrap_or(if config.data.is_some() || sent.is_some() {
            Method::POST
        } else {
            Method::GET
        });
    let authority = config
        .host
        .clone()
        .unwrap_or_else(|| format!("{host}:{port}"));
    let mut answers = Vec::with_capacity(count);
    for _ in 0..count {
        let target = if config.http2 {
            // `:authority` comes from the URI.
            let path = uri.path_and_query().map_or("/", |p| p.as_str());
            format!("http://{authority}{path}")
                .parse::<Uri>()
                .map_err(|e| bad_url(url, &e.to_string()))?
        } else {
            uri.path_and_query()
                .map_or("/", |p| p.as_str())
                .parse::<Uri>()
                .map_err(|e| bad_url(url, &e.to_string()))?
        };
        let mut req = Request::builder().method(method.clone()).uri(target);
        if !config.http2 {
            req = req.header(http::header::HOST, authority.as_str());
        }
        for (name, value) in &config.headers {
            req = req.header(name.as_str(), value.as_str());
        }
        let req_body: ClientBody = match config.data_size {
            Some(size) => {
                let frames = futures_util::stream::iter(pattern(size))
                    .map(|c| Ok::<_, std::convert::Infallible>(Frame::data(c)));
                BodyExt::boxed(StreamBody::new(frames))
            }
            None => Full::new(body.clone()).boxed(),
        };
        let req = req
            .body(req_body)
            .map_err(|e| bad_url(url, &e.to_string()))?;
        let started = std::time::Instant::now();
        let resp = match &mut sender {
            Sender::Http1(s) => s.send_request(req).await.map_err(http_err)?,
            Sender::Http2(s) => s.send_request(req).await.map_err(http_err)?,
        };
        let status = resp.status().as_u16();
        let mut headers: std::collections::BTreeMap<String, Vec<String>> = Default::default();
        for (name, value) in resp.headers() {
            headers
                .entry(name.as_str().to_owned())
                .or_default()
                .push(String::from_utf8_lossy(value.as_bytes()).into_owned());
        }
        let body = resp
            .into_body()
            .collect()
            .await
            .map_err(http_err)?
            .to_bytes();
        answers.push(Answer {
            status,
            headers,
            body,
            elapsed: started.elapsed(),
            sent: sent.clone(),
        });
    }
    Ok(answers)
}

enum Sender {
    Http1(hyper::client::conn::http1::SendRequest<ClientBody>),
    Http2(hyper::client::conn::http2::SendRequest<ClientBody>),
}

/// A WebSocket conversation with `url` (`ws://host[:port]/path`): the
/// upgrade (with `host` as the Host header if given), then each message
/// sent and its echo read back, then a close. Returns `{"status",
/// "servedBy", "echoed"}`.
pub async fn websocket(
    url: &str,
    host: Option<&str>,
    messages: &[String],
) -> Result<serde_json::Value, ClientError> {
    use futures_util::SinkExt as _;
    use tokio_tungstenite::tungstenite::Message;
    use tokio_tungstenite::tungstenite::client::IntoClientRequest as _;

    let uri: Uri = url
        .parse()
        .map_err(|e: http::uri::InvalidUri| bad_url(url, &e.to_string()))?;
    if uri.scheme_str() != Some("ws") {
        return Err(bad_url(url, "use ws://host[:port]/path"));
    }
    let addr = (
        uri.host().ok_or_else(|| bad_url(url, "no host"))?,
        uri.port_u16().unwrap_or(80),
    );
    let ws_err = |source| ClientError::WebSocket {
        url: url.to_owned(),
        source: Box::new(source),
    };
    let mut request = url.into_client_request().map_err(ws_err)?;
    if let Some(h) = host {
        let v = http::HeaderValue::from_str(h).map_err(|e| bad_url(url, &e.to_string()))?;
        request.headers_mut().insert(http::header::HOST, v);
    }
    let stream = connect(url, addr).await?;
    let (mut ws, response) = tokio_tungstenite::client_async(request, stream)
        .await
        .map_err(ws_err)?;
    let mut echoed = Vec::with_capacity(messages.len());
    for m in messages {
        ws.send(Message::text(m.as_str())).await.map_err(ws_err)?;
        loop {
            match ws.next().await {
                Some(Ok(Message::Text(t))) => {
                    echoed.push(t.as_str().to_owned());
                    break;
                }
                Some(Ok(Message::Close(_))) | None => {
                    return Err(bad_url(url, "the server closed before echoing"));
                }
                Some(Ok(_)) => {}
                Some(Err(e)) => return Err(ws_err(e)),
            }
        }
    }
    ws.close(None).await.map_err(ws_err)?;
    let served_by = response
        .headers()
        .get(super::SERVED_BY_HEADER)
        .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned());
    Ok(serde_json::json!({
        "status": response.status().as_u16(),
        "servedBy": served_by,
        "echoed": echoed,
    }))
}
