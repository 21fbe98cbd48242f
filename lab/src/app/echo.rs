//! The echo server.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use std::io::Write as _;

use futures_util::{SinkExt as _, StreamExt as _};
use http::{Method, Request, Response, StatusCode, header};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full};
use hyper::body::{Body as _, Incoming};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::io::{AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::Role;
use weft_proxy::transport::{Drained, read_drained};

use super::{PodIdentity, SERVED_BY_HEADER, Served};

/// Copy buffer of the TCP echo: large enough that a single stream is not
/// bounded by system calls.
const ECHO_BUFFER: usize = 256 * 1024;

/// Where the echo server listens.
#[derive(Debug, Clone)]
pub struct EchoConfig {
    /// Who we are.
    pub identity: PodIdentity,
    /// Raw TCP echo port.
    pub tcp: Option<SocketAddr>,
    /// TCP port that writes a [`Served`] line and closes.
    pub whoami: Option<SocketAddr>,
    /// HTTP/1.1 and h2c port.
    pub http: Option<SocketAddr>,
    /// TCP sink: reads until the peer half-closes, then writes the byte
    /// count as a decimal line and closes (for throughput).
    pub sink: Option<SocketAddr>,
    /// The gRPC echo (h2c).
    pub grpc: Option<SocketAddr>,
}

/// A bind failure, naming the address.
#[derive(Debug, thiserror::Error)]
#[error("echo: cannot listen on {addr} ({what}): {source}")]
pub struct BindError {
    /// The address.
    pub addr: SocketAddr,
    /// Which listener.
    pub what: &'static str,
    /// The cause.
    #[source]
    pub source: io::Error,
}

async fn bind(
    addr: Option<SocketAddr>,
    what: &'static str,
) -> Result<Option<TcpListener>, BindError> {
    match addr {
        None => Ok(None),
        Some(addr) => TcpListener::bind(addr)
            .await
            .map(Some)
            .map_err(|source| BindError { addr, what, source }),
    }
}

/// Binds every configured port, then serves until the task is dropped.
pub async fn serve(config: EchoConfig) -> Result<(), BindError> {
    let id = Arc::new(config.identity);
    let tcp = bind(config.tcp, "tcp echo").await?;
    let whoami = bind(config.whoami, "whoami").await?;
    let http = bind(config.http, "http").await?;
    let sink = bind(config.sink, "sink").await?;
    let grpc = bind(config.grpc, "grpc").await?;
    tracing::info!(
        pod = %format!("{}/{}", id.namespace, id.pod),
        tcp = ?config.tcp, whoami = ?config.whoami, http = ?config.http, grpc = ?config.grpc,
        "echo server listening"
    );
    let mut tasks = tokio::task::JoinSet::new();
    if let Some(l) = tcp {
        tasks.spawn(accept_loop(l, id.clone(), Kind::Echo));
    }
    if let Some(l) = whoami {
        tasks.spawn(accept_loop(l, id.clone(), Kind::Whoami));
    }
    if let Some(l) = http {
        tasks.spawn(accept_loop(l, id.clone(), Kind::Http(Arc::default())));
    }
    if let Some(l) = sink {
        tasks.spawn(accept_loop(l, id.clone(), Kind::Sink));
    }
    if let Some(l) = grpc {
        let svc = super::grpc::Service::new(id.clone());
        tasks.spawn(accept_loop(l, id.clone(), Kind::Grpc(svc)));
    }
    while tasks.join_next().await.is_some() {}
    Ok(())
}

#[derive(Debug, Clone)]
enum Kind {
    Echo,
    Whoami,
    /// With the pod's `x-echo-fail-first` counts.
    Http(Arc<FailFirst>),
    Sink,
    Grpc(super::grpc::Service),
}

async fn accept_loop(listener: TcpListener, id: Arc<PodIdentity>, kind: Kind) {
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(x) => x,
            Err(e) => {
                // Out of descriptors and the like: report, keep serving.
                tracing::warn!(error = %e, "accept failed");
                continue;
            }
        };
        let id = id.clone();
        let kind = kind.clone();
        tokio::spawn(async move {
            let result = match kind {
                Kind::Echo => echo(stream).await,
                Kind::Whoami => whoami(stream, peer, &id).await,
                Kind::Http(fails) => http(stream, peer, id, fails).await,
                Kind::Sink => sink(stream).await,
                Kind::Grpc(svc) => svc.serve(stream).await,
            };
            if let Err(e) = result {
                tracing::debug!(%peer, error = %e, "connection ended with an error");
            }
        });
    }
}

async fn echo(stream: TcpStream) -> io::Result<()> {
    stream.set_nodelay(true)?;
    let (r, mut w) = stream.into_split();
    // Read until EAGAIN: an opted-in pod's socket can return its bytes one
    // queue at a time (weft_proxy::transport::read_drained).
    let mut r = BufReader::with_capacity(ECHO_BUFFER, Drained(r));
    tokio::io::copy_buf(&mut r, &mut w).await?;
    w.shutdown().await
}

fn served(id: &PodIdentity, protocol: &str, peer: SocketAddr, local: String) -> Served {
    Served {
        pod: id.pod.clone(),
        namespace: id.namespace.clone(),
        node: id.node.clone(),
        protocol: protocol.to_owned(),
        method: None,
        path: None,
        query: None,
        host: None,
        headers: None,
        body_bytes: None,
        body_sha256: None,
        peer: peer.to_string(),
        local,
    }
}

async fn sink(mut stream: TcpStream) -> io::Result<()> {
    let mut buf = vec![0u8; ECHO_BUFFER];
    let mut total = 0u64;
    loop {
        let n = read_drained(&stream, &mut buf).await?;
        if n == 0 {
            break;
        }
        total += n as u64;
    }
    stream.write_all(format!("{total}\n").as_bytes()).await?;
    stream.shutdown().await
}

async fn whoami(mut stream: TcpStream, peer: SocketAddr, id: &PodIdentity) -> io::Result<()> {
    let local = stream.local_addr()?.to_string();
    let mut line = serde_json::to_vec(&served(id, "TCP", peer, local)).map_err(io::Error::other)?;
    line.push(b'\n');
    stream.write_all(&line).await?;
    stream.shutdown().await
}

/// How many requests with each `x-echo-fail-first` key reached this pod.
#[derive(Debug, Default)]
struct FailFirst(std::sync::Mutex<std::collections::HashMap<String, u32>>);

impl FailFirst {
    /// Counts a request with `key`; true while it is among the first `n`.
    fn fails(&self, key: &str, n: u32) -> bool {
        let mut seen = self.0.lock().unwrap_or_else(|p| p.into_inner());
        let count = seen.entry(key.to_owned()).or_default();
        *count += 1;
        *count <= n
    }
}

async fn http(
    stream: TcpStream,
    peer: SocketAddr,
    id: Arc<PodIdentity>,
    fails: Arc<FailFirst>,
) -> io::Result<()> {
    stream.set_nodelay(true)?;
    let local = stream.local_addr()?.to_string();
    let svc = service_fn(move |req| respond(req, peer, local.clone(), id.clone(), fails.clone()));
    auto::Builder::new(TokioExecutor::new())
        .serve_connection_with_upgrades(TokioIo::new(stream), svc)
        .await
        .map_err(io::Error::other)
}

/// A response body of the echo.
type EchoBody = BoxBody<Bytes, hyper::Error>;

async fn respond(
    mut req: Request<Incoming>,
    peer: SocketAddr,
    local: String,
    id: Arc<PodIdentity>,
    fails: Arc<FailFirst>,
) -> Result<Response<EchoBody>, io::Error> {
    let control = EchoControl::read(req.headers());
    let served_by = format!("{}/{}", id.namespace, id.pod);
    let mut s = served(&id, &format!("{:?}", req.version()), peer, local.clone());
    s.method = Some(req.method().to_string());
    s.path = Some(req.uri().path().to_owned());
    s.query = req.uri().query().map(str::to_owned);
    s.host = req
        .uri()
        .authority()
        .map(|a| a.as_str().to_owned())
        .or_else(|| {
            req.headers()
                .get(header::HOST)
                .map(|h| String::from_utf8_lossy(h.as_bytes()).into_owned())
        });
    let mut headers = std::collections::BTreeMap::<String, Vec<String>>::new();
    for (name, value) in req.headers() {
        headers
            .entry(name.as_str().to_owned())
            .or_default()
            .push(String::from_utf8_lossy(value.as_bytes()).into_owned());
    }
    s.headers = Some(headers);
    log_request(&s);
    if let Some(d) = control.delay {
        tokio::time::sleep_until(tokio::time::Instant::now() + d).await;
    }
    if let Some(f) = &control.fail_first
        && fails.fails(&f.key, f.n)
    {
        if let Some(d) = f.delay {
            tokio::time::sleep_until(tokio::time::Instant::now() + d).await;
        }
        return match f.status {
            // The connection is closed without an answer.
            None => Err(io::Error::other("x-echo-fail-first: reset")),
            Some(status) => Ok(plain(status, &served_by, full(Bytes::new()))),
        };
    }
    if let Some(switched) = switch(&mut req, &served_by, peer, local, &id, &fails) {
        return Ok(switched);
    }
    let digest = req
        .headers()
        .get("x-echo-body")
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"digest"));
    if digest {
        let (bytes, sha256) = match digest_body(req.into_body()).await {
            Ok(d) => d,
            Err(e) => {
                let msg = format!("reading the request body: {e}\n");
                return Ok(plain(StatusCode::BAD_REQUEST, &served_by, full(msg.into())));
            }
        };
        s.body_bytes = Some(bytes);
        s.body_sha256 = Some(sha256);
    } else if !req.body().is_end_stream() {
        // The body streams back as it arrives.
        return Ok(plain(control.status, &served_by, req.into_body().boxed()));
    }
    let mut json = serde_json::to_vec(&s).unwrap_or_default();
    json.push(b'\n');
    let mut resp = plain(control.status, &served_by, full(json.into()));
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("application/json"),
    );
    for (name, value) in control.set_headers {
        resp.headers_mut().append(name, value);
    }
    Ok(resp)
}

/// Writes the request as one JSON line to the echo's output (its pod's
/// log), so a test sees what reached each pod.
fn log_request(s: &Served) {
    let line = serde_json::json!({
        "request": {
            "method": s.method,
            "path": s.path,
            "query": s.query,
            "headers": s.headers,
            "pod": s.key(),
        }
    });
    let mut out = io::stdout().lock();
    // A lost log line must not fail the request.
    let _ = writeln!(out, "{line}").and_then(|()| out.flush());
}

/// Reads a body to its end: its length and SHA-256 (hex).
async fn digest_body(mut body: Incoming) -> Result<(u64, String), hyper::Error> {
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
    let mut bytes = 0u64;
    while let Some(frame) = body.frame().await {
        if let Ok(data) = frame?.into_data() {
            bytes += data.len() as u64;
            ctx.update(&data);
        }
    }
    Ok((bytes, super::hex(ctx.finish().as_ref())))
}

/// Answers a WebSocket upgrade (then echoes every message back) or a
/// `CONNECT` (then serves HTTP again inside the tunnel); `None` for any
/// other request.
fn switch(
    req: &mut Request<Incoming>,
    served_by: &str,
    peer: SocketAddr,
    local: String,
    id: &Arc<PodIdentity>,
    fails: &Arc<FailFirst>,
) -> Option<Response<EchoBody>> {
    if req.method() == Method::CONNECT {
        let on = hyper::upgrade::on(req);
        let (id, fails) = (id.clone(), fails.clone());
        tokio::spawn(async move {
            match on.await {
                Ok(tunnel) => {
                    let svc = service_fn(move |req| {
                        respond(req, peer, local.clone(), id.clone(), fails.clone())
                    });
                    let served = auto::Builder::new(TokioExecutor::new())
                        .serve_connection(tunnel, svc)
                        .await;
                    if let Err(e) = served {
                        tracing::debug!(error = %e, "HTTP inside CONNECT ended");
                    }
                }
                Err(e) => tracing::debug!(error = %e, "CONNECT never switched"),
            }
        });
        return Some(plain(StatusCode::OK, served_by, full(Bytes::new())));
    }
    let websocket = req
        .headers()
        .get(header::UPGRADE)
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"websocket"));
    if !websocket {
        return None;
    }
    let Some(key) = req.headers().get("sec-websocket-key") else {
        let msg = Bytes::from_static(b"a WebSocket upgrade needs sec-websocket-key\n");
        return Some(plain(StatusCode::BAD_REQUEST, served_by, full(msg)));
    };
    let accept = derive_accept_key(key.as_bytes());
    let on = hyper::upgrade::on(req);
    tokio::spawn(async move {
        let upgraded = match on.await {
            Ok(u) => u,
            Err(e) => {
                tracing::debug!(error = %e, "WebSocket upgrade never happened");
                return;
            }
        };
        let mut ws =
            WebSocketStream::from_raw_socket(TokioIo::new(upgraded), Role::Server, None).await;
        while let Some(Ok(msg)) = ws.next().await {
            let reply = match msg {
                Message::Text(_) | Message::Binary(_) => msg,
                Message::Close(_) => break,
                _ => continue,
            };
            if ws.send(reply).await.is_err() {
                break;
            }
        }
        let _ = ws.close(None).await;
    });
    let mut resp = plain(
        StatusCode::SWITCHING_PROTOCOLS,
        served_by,
        full(Bytes::new()),
    );
    let h = resp.headers_mut();
    h.insert(
        header::CONNECTION,
        header::HeaderValue::from_static("upgrade"),
    );
    h.insert(
        header::UPGRADE,
        header::HeaderValue::from_static("websocket"),
    );
    if let Ok(v) = header::HeaderValue::from_str(&accept) {
        h.insert("sec-websocket-accept", v);
    }
    Some(resp)
}

fn full(b: Bytes) -> EchoBody {
    Full::new(b).map_err(|never| match never {}).boxed()
}

/// What a request asks of the echo with `x-echo-*` headers.
struct EchoControl {
    /// `x-echo-delay: <ms>`: wait before answering.
    delay: Option<std::time::Duration>,
    /// `x-echo-status: <code>`: answer with it.
    status: StatusCode,
    /// `x-echo-set-header: Name: value` (repeatable): add to the response.
    set_headers: Vec<(header::HeaderName, header::HeaderValue)>,
    /// `x-echo-fail-first: <n>,<status|reset>,<key>[,<delay ms>]`.
    fail_first: Option<FailFirstSpec>,
}

/// The first `n` requests with `key` that reach this pod fail: with
/// `status`, or (`None`) by closing the connection without an answer.
struct FailFirstSpec {
    n: u32,
    status: Option<StatusCode>,
    key: String,
    delay: Option<std::time::Duration>,
}

impl FailFirstSpec {
    fn parse(v: &str) -> Option<FailFirstSpec> {
        let mut parts = v.split(',').map(str::trim);
        let n = parts.next()?.parse().ok()?;
        let status = match parts.next()? {
            "reset" => None,
            code => Some(StatusCode::from_u16(code.parse().ok()?).ok()?),
        };
        let key = parts.next()?.to_owned();
        let delay = match parts.next() {
            Some(ms) => Some(std::time::Duration::from_millis(ms.parse().ok()?)),
            None => None,
        };
        Some(FailFirstSpec {
            n,
            status,
            key,
            delay,
        })
    }
}

impl EchoControl {
    fn read(headers: &header::HeaderMap) -> EchoControl {
        let text = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
        EchoControl {
            delay: text("x-echo-delay")
                .and_then(|v| v.trim().parse().ok())
                .map(std::time::Duration::from_millis),
            status: text("x-echo-status")
                .and_then(|v| v.trim().parse::<u16>().ok())
                .and_then(|c| StatusCode::from_u16(c).ok())
                .unwrap_or(StatusCode::OK),
            fail_first: text("x-echo-fail-first").and_then(FailFirstSpec::parse),
            set_headers: headers
                .get_all("x-echo-set-header")
                .iter()
                .filter_map(|v| {
                    let (n, v) = v.to_str().ok()?.split_once(':')?;
                    Some((
                        header::HeaderName::from_bytes(n.trim().as_bytes()).ok()?,
                        header::HeaderValue::from_str(v.trim()).ok()?,
                    ))
                })
                .collect(),
        }
    }
}

fn plain(status: StatusCode, served_by: &str, body: EchoBody) -> Response<EchoBody> {
    let mut resp = Response::new(body);
    *resp.status_mut() = status;
    if let Ok(v) = header::HeaderValue::from_str(served_by) {
        resp.headers_mut().insert(SERVED_BY_HEADER, v);
    }
    resp
}
