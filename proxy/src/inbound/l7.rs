//! L7 authorization at the destination: a pod selected by a policy with
//! HTTP fields (methods, paths) has its inbound HTTP parsed, and every
//! request is decided on its own with the caller's authenticated identity.
//! A denied request is answered 403 (gRPC: `PERMISSION_DENIED`) and the
//! connection stays usable; an allowed one goes to the pod over one
//! upstream connection per inbound connection (HTTP/1.1 or HTTP/2, as the
//! caller speaks), from the caller's address.

use std::convert::Infallible;
use std::future::Future;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use http::{Request, Response, StatusCode};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::client::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::service::TowerToHyperService;
use tokio::io::{AsyncRead, AsyncWrite};

use super::{Accepted, Admitted, Caller};
use crate::admit::admit_request;
use crate::conn::Conn;
use crate::http::answer::{Body, GrpcStatus, denied, failure, is_grpc, strip_hop_by_hop};
use crate::http::trace::RequestInfo;
use crate::http::upgrade::Switch;
use crate::identity::SpiffeId;
use crate::metrics::{Direction, Failure};
use crate::relay::Moved;
use crate::state::Shared;
use crate::transport::{Drained, connect};
use opentelemetry::KeyValue;
use opentelemetry::trace::SpanKind;

/// Serves the caller's HTTP, deciding each request, until the connection
/// ends; `conn` records it.
pub(super) async fn serve(
    mut conn: Conn,
    caller: Caller,
    target: SocketAddrV4,
    from: Option<Ipv4Addr>,
    principal: Option<SpiffeId>,
    admitted: Admitted,
) {
    conn.labels.destination = admitted.destination.clone();
    let io = match caller.accept(&conn).await {
        Ok(io) => io,
        Err(e) => {
            tracing::debug!(peer = %conn.peer, %target, error = %e, "the caller left before it was answered");
            conn.refuse(Failure::Relay);
            return;
        }
    };
    conn.relaying();
    let authorizer = Authorizer(Arc::new(Inner {
        shared: conn.shared.clone(),
        target,
        from,
        principal,
        admitted,
        upstream: tokio::sync::Mutex::new(None),
    }));
    let result = match io {
        // The pod's socket may be in the fast path's socket map.
        Accepted::Tcp(tcp) => serve_io(Drained(tcp), authorizer).await,
        Accepted::Tunnel(stream) => serve_io(stream, authorizer).await,
    };
    conn.relayed(result.map(|()| Moved::default()));
}

async fn serve_io<I>(io: I, authorizer: Authorizer) -> std::io::Result<()>
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
        .serve_connection_with_upgrades(TokioIo::new(io), TowerToHyperService::new(authorizer))
        .await
        .map_err(std::io::Error::other)
}

/// Decides and forwards the requests of one inbound connection.
#[derive(Debug, Clone)]
struct Authorizer(Arc<Inner>);

#[derive(Debug)]
struct Inner {
    shared: Arc<Shared>,
    target: SocketAddrV4,
    from: Option<Ipv4Addr>,
    principal: Option<SpiffeId>,
    admitted: Admitted,
    /// The connection to the pod, made with the first allowed request.
    upstream: tokio::sync::Mutex<Option<Upstream>>,
}

#[derive(Debug)]
enum Upstream {
    Http1(http1::SendRequest<Body>),
    Http2(http2::SendRequest<Body>),
}

impl tower::Service<Request<Incoming>> for Authorizer {
    type Response = Response<Body>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Response<Body>, Infallible>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<Incoming>) -> Self::Future {
        let inner = self.0.clone();
        Box::pin(async move { Ok(inner.handle(req).await) })
    }
}

impl Inner {
    /// Decides, traces (the server span of this hop) and forwards one
    /// request.
    async fn handle(&self, mut req: Request<Incoming>) -> Response<Body> {
        let span = self.shared.tracer.start(req.headers_mut());
        let Some(span) = span else {
            return self.decide_and_forward(req).await;
        };
        let pending = RequestInfo::of_request(&req).pending(
            &self.shared.tracer,
            span,
            SpanKind::Server,
            None,
            self.span_attributes(),
        );
        pending.respond(self.decide_and_forward(req).await)
    }

    /// The mesh's attributes of this connection's server spans.
    fn span_attributes(&self) -> Vec<KeyValue> {
        let mut a = Vec::with_capacity(8);
        if let Some(from) = self.from {
            a.push(KeyValue::new("client.address", from.to_string()));
            if let Some(w) = self.shared.snapshot().workload(from) {
                a.extend(crate::http::trace::workload("source", w));
            }
        }
        if let Some(p) = &self.principal {
            a.push(KeyValue::new("weft.source.principal", p.to_string()));
        }
        if let Some((namespace, name)) = self.admitted.destination.split_once('/') {
            a.push(KeyValue::new("weft.destination.workload", name.to_owned()));
            a.push(KeyValue::new(
                "weft.destination.namespace",
                namespace.to_owned(),
            ));
        }
        a.push(KeyValue::new("server.port", i64::from(self.target.port())));
        a
    }

    async fn decide_and_forward(&self, req: Request<Incoming>) -> Response<Body> {
        let grpc = is_grpc(req.headers());
        if self.admitted.decide_requests
            && let Err(policy) = admit_request(
                &self.shared,
                Direction::Inbound,
                self.principal.as_ref(),
                self.target,
                req.method().as_str(),
                req.uri().path(),
            )
        {
            tracing::info!(source_principal = ?self.principal.as_ref().map(ToString::to_string),
                destination = %self.admitted.destination, method = %req.method(), path = %req.uri().path(),
                %policy, "request denied by authorization policy");
            return denied(grpc);
        }
        let (mut parts, body) = req.into_parts();
        let switch = Switch::take(&mut parts);
        strip_hop_by_hop(&mut parts.headers);
        if let Some(s) = &switch {
            s.ask(&mut parts.headers);
        }
        let req = Request::from_parts(parts, body.map_err(Into::into).boxed());
        match self.forward(req).await {
            Ok(mut res) => {
                match switch {
                    Some(switch) => res = switch.splice(res, ()),
                    None => strip_hop_by_hop(res.headers_mut()),
                }
                res.map(|body| body.map_err(Into::into).boxed())
            }
            Err(e) => {
                tracing::info!(target = %self.target, error = %e, "forwarding to the pod failed");
                failure(
                    grpc,
                    StatusCode::SERVICE_UNAVAILABLE,
                    GrpcStatus::Unavailable,
                    "the pod did not answer",
                )
            }
        }
    }

    /// Sends `req` to the pod on this connection's upstream, made on first
    /// use in the request's HTTP version.
    async fn forward(&self, req: Request<Body>) -> Result<Response<Incoming>, String> {
        let mut upstream = self.upstream.lock().await;
        let usable = match upstream.as_ref() {
            Some(Upstream::Http1(s)) => !s.is_closed(),
            Some(Upstream::Http2(s)) => !s.is_closed(),
            None => false,
        };
        if !usable {
            let t = &self.admitted.timeouts;
            let tcp = connect(self.target, t.connect, self.admitted.mark, self.from)
                .await
                .map_err(|e| format!("connecting to {}: {e}", self.target))?;
            let io = TokioIo::new(Drained(tcp));
            *upstream = Some(if req.version() == http::Version::HTTP_2 {
                let (sender, conn) = http2::handshake(TokioExecutor::new(), io)
                    .await
                    .map_err(|e| e.to_string())?;
                tokio::spawn(conn);
                Upstream::Http2(sender)
            } else {
                let (sender, conn) = http1::handshake(io).await.map_err(|e| e.to_string())?;
                tokio::spawn(conn.with_upgrades());
                Upstream::Http1(sender)
            });
        }
        match upstream.as_mut() {
            Some(Upstream::Http1(s)) => {
                s.ready().await.map_err(|e| e.to_string())?;
                s.send_request(req).await.map_err(|e| e.to_string())
            }
            Some(Upstream::Http2(s)) => {
                let mut s = s.clone();
                drop(upstream);
                s.send_request(req).await.map_err(|e| e.to_string())
            }
            None => Err("no upstream connection".to_owned()),
        }
    }
}
