//! The lab client: one request over TCP, HTTP/1.1 or h2c, and its response.

use std::io;
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, StatusCode, Uri};
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
    /// HTTP method (default: GET, or POST with `data`).
    pub method: Option<Method>,
    /// Extra request headers, in order.
    pub headers: Vec<(String, String)>,
    /// The Host header (default: the URL's host and port).
    pub host: Option<String>,
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
    let stream = TcpStream::connect((host, port))
        .await
        .map_err(|source| ClientError::Io {
            url: url.to_owned(),
            what: "connect",
            source,
        })?;
    let _ = stream.set_nodelay(true);
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
    let method = config.method.clone().unwrap_or(if config.data.is_some() {
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
        let req = req
            .body(Full::new(body.clone()))
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
        });
    }
    Ok(answers)
}

enum Sender {
    Http1(hyper::client::conn::http1::SendRequest<Full<Bytes>>),
    Http2(hyper::client::conn::http2::SendRequest<Full<Bytes>>),
}
