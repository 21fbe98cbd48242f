//! L7: HTTP/1.1, HTTP/2 and gRPC requests from a local pod to a service
//! port that has routes (or says it speaks HTTP), handled in the source
//! node's proxy in one hop.
//!
//! ```text
//!  client pod ─► :15001 ─► detect (peek) ─► hyper server (h1 | h2c)
//!     per request (Router, a tower::Service):
//!       route::HttpPort::pick ─► a rule (consumer routes first, most specific match)
//!       weighted backend ─► balance::Balancer::request (P2C, peak-EWMA) ─► an endpoint
//!       upstream::Upstreams::send ─► reused connection per (source pod, endpoint):
//!           same node: the destination's checks, then TCP from the pod's address
//!           other node: an HBONE stream (the destination node applies its policy)
//! ```
//!
//! Failures are answered as the protocol expects: an HTTP status, or for
//! gRPC a trailers-only response with `grpc-status`.

pub mod answer;
pub mod filter;
pub mod h1;
pub mod mirror;
pub mod retry;
pub mod trace;
pub mod upgrade;
pub mod upstream;

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use http::header::{self, HeaderValue};
use http::{Request, Response, StatusCode};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpStream;

use self::answer::empty;
pub use self::answer::{Body, GrpcStatus, failure, is_grpc, strip_hop_by_hop};
use self::trace::RequestInfo;
use self::upgrade::Switch;
use self::upstream::{Outgoing, Reuse, UpstreamError, Upstreams, Version};
use crate::balance::Balancer;
use crate::config::Workload;
use crate::conn::Conn;
use crate::relay::Moved;
use crate::route::{Backend, HttpPort, WeightedBackend};
use crate::state::Destination;
use crate::telemetry::{Pending, Span, context};
use crate::transport::Drained;
use opentelemetry::KeyValue;
use opentelemetry::trace::SpanKind;

/// Serves one downstream connection that speaks `version`: every request
/// goes through `router`. HTTP/1.1 starts in the direct loop
/// ([`h1::server`]), which hands the connection to hyper's server at the
/// first request it does not serve itself (a streaming body, an upgrade).
pub async fn serve(mut conn: Conn, client: TcpStream, version: Version, router: Router) {
    conn.relaying();
    let router = Arc::new(router);
    // The client's socket may be in the fast path's socket map.
    let client = Drained(client);
    let result = match version {
        Version::Http1 => {
            let direct =
                h1::server::serve(client, REPLAY_LIMIT, |req| router.clone().answer(req)).await;
            match direct {
                Ok(h1::server::Served::Closed) => Ok(()),
                Ok(h1::server::Served::Handoff(io)) => hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(io), TowerToHyperService::new(Routing(router)))
                    .with_upgrades()
                    .await
                    .map_err(std::io::Error::other),
                Err(e) => Err(e),
            }
        }
        Version::Http2 => hyper::server::conn::http2::Builder::new(TokioExecutor::new())
            .serve_connection(
                TokioIo::new(client),
                TowerToHyperService::new(Routing(router)),
            )
            .await
            .map_err(std::io::Error::other),
    };
    conn.relayed(result.map(|()| Moved::default()));
}

/// Routes the requests of one downstream connection.
#[derive(Debug, Clone)]
pub struct Router {
    /// The service port's routes when the connection began; each request
    /// takes the current ones ([`Router::current_port`]).
    pub port: Arc<HttpPort>,
    /// The service address the client called.
    pub orig: std::net::SocketAddrV4,
    /// The client pod.
    pub source: Arc<Workload>,
    /// Upstream connections.
    pub upstreams: Arc<Upstreams>,
    /// Endpoint loads.
    pub balancer: Arc<Balancer>,
    /// What the downstream speaks (the upstream speaks the same).
    pub version: Version,
    /// Retries left to spend.
    pub budget: Arc<retry::Budget>,
    /// The client pod's SPIFFE ID (same-node requests are authorized as
    /// it), found once for the connection.
    pub principal: Option<crate::identity::SpiffeId>,
    /// The request counters this connection counted into lately, so that
    /// a request finds its series without building its labels.
    pub counted: Arc<std::sync::Mutex<Vec<Counted>>>,
}

/// A request series a connection counted into.
#[derive(Debug)]
pub struct Counted {
    /// `(namespace, name)` of the pod that answered; `None`: the proxy.
    destination: Option<(String, String)>,
    route: Option<Arc<crate::route::Rule>>,
    code: u16,
    flags: &'static str,
    counters: Arc<crate::metrics::RequestCounters>,
}

/// Series remembered per connection.
const COUNTED_PER_CONNECTION: usize = 8;

/// The largest request body kept to be sent again by a retry.
const REPLAY_LIMIT: u64 = 64 * 1024;

/// The [`Router`] of a connection as its requests' service: a request
/// takes a reference to it, not a copy.
#[derive(Debug, Clone)]
struct Routing(Arc<Router>);

impl tower::Service<Request<Incoming>> for Routing {
    type Response = Response<Body>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Response<Body>, Infallible>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<Incoming>) -> Self::Future {
        let router = self.0.clone();
        Box::pin(async move { Ok(router.answer(req).await) })
    }
}

/// What a request took, for its metrics and its span.
#[derive(Debug, Default)]
struct Taken {
    /// The rule that took it (none: no rule matched).
    route: Option<Arc<crate::route::Rule>>,
    /// The endpoint it went to, if any.
    endpoint: Option<std::net::SocketAddrV4>,
    /// Attempts after the first.
    retries: u32,
    /// Whether it is gRPC.
    grpc: bool,
    /// Why the proxy answered itself (Envoy's response flags), or `-`.
    flags: &'static str,
    /// A failed attempt was not retried: the retry budget was spent.
    budget_spent: bool,
    /// The request's span in this proxy, when sampled: the parent of the
    /// destination's.
    span: Option<Span>,
}

impl Router {
    /// Routes one request, counts it, and traces it when sampled (the
    /// client span of this hop; the answer's body ends it).
    async fn answer<B>(self: Arc<Self>, mut req: Request<B>) -> Response<Body>
    where
        B: hyper::body::Body<Data = bytes::Bytes> + Send + Sync + 'static,
        B::Error: Into<answer::BoxError> + std::fmt::Display,
    {
        let started = std::time::Instant::now();
        let mut took = Taken {
            flags: "-",
            ..Taken::default()
        };
        let shared = self.upstreams.shared();
        let tracer = &shared.tracer;
        took.span = tracer.start(req.headers_mut());
        let logged = shared.access.requests() && shared.access.admit();
        let info = (took.span.is_some() || logged).then(|| RequestInfo::of_request(&req));
        let res = self.route(req, &mut took).await;
        let elapsed = started.elapsed();
        self.record(&took, res.status(), elapsed);
        if logged && let Some(info) = &info {
            self.log_request(&took, info, res.status(), elapsed);
        }
        match (info.filter(|_| took.span.is_some()), took.span.take()) {
            (Some(info), Some(span)) => {
                let attributes = self.client_attributes(&took);
                info.pending(
                    tracer,
                    span,
                    SpanKind::Client,
                    Some(&self.port.service),
                    attributes,
                )
                .respond(res)
            }
            _ => res,
        }
    }

    /// Writes the request's access log line.
    fn log_request(&self, took: &Taken, info: &RequestInfo, status: StatusCode, elapsed: Duration) {
        let shared = self.upstreams.shared();
        let answered = took
            .endpoint
            .and_then(|e| shared.snapshot().workload(*e.ip()).map(Workload::key));
        let reason = match took.flags {
            "NR" => Some("no route rule matched"),
            "NC" => Some("the route's backend does not exist"),
            "UH" => Some("no endpoint of the backend is available"),
            "UF" => Some("the upstream request failed"),
            "URX" => Some("the upstream request failed after retries"),
            "UT" => Some("timeout"),
            "RBAC" => Some("denied by authorization policy"),
            _ if took.budget_spent => Some("not retried: the retry budget is spent"),
            _ => None,
        };
        let span = took.span.as_ref();
        let line = serde_json::json!({
            "time": crate::telemetry::access::timestamp(),
            "kind": "request",
            "reporter": "source",
            "node": shared.tracer.node(),
            "method": info.method.as_str(),
            "path": info.path,
            "authority": info.authority,
            "protocol": format!("{:?}", info.version),
            "grpc": info.grpc,
            "status": status.as_u16(),
            "duration_ms": elapsed.as_secs_f64() * 1e3,
            "response_flags": took.flags,
            "reason": reason,
            "upstream": took.endpoint.map(|e| e.to_string()),
            "source_workload": self.source.key(),
            "source_principal": self.principal.as_ref().map(ToString::to_string),
            "destination_service": self.port.service,
            "destination_workload": answered,
            "route": took.route.as_ref().map(|r| r.route.as_str()),
            "retries": took.retries,
            "trace_id": span.map(|s| format!("{:032x}", s.trace_id)),
            "span_id": span.map(|s| format!("{:016x}", s.span_id)),
        });
        shared.access.write(line.to_string());
    }

    /// The mesh's attributes of the client pod, for its request spans.
    fn source_attributes(&self, capacity: usize) -> Vec<KeyValue> {
        let mut a = Vec::with_capacity(capacity);
        a.extend(trace::workload("source", &self.source));
        if let Some(p) = &self.principal {
            a.push(KeyValue::new("weft.source.principal", p.to_string()));
        }
        a
    }

    /// The mesh's attributes of a request's client span.
    fn client_attributes(&self, took: &Taken) -> Vec<KeyValue> {
        let mut a = self.source_attributes(12);
        a.push(KeyValue::new(
            "weft.destination.service",
            self.port.service.clone(),
        ));
        a.push(KeyValue::new("server.port", i64::from(self.port.port)));
        if let Some(rule) = &took.route {
            a.push(KeyValue::new("weft.route", rule.route.clone()));
        }
        if let Some(endpoint) = took.endpoint {
            a.push(KeyValue::new(
                "network.peer.address",
                endpoint.ip().to_string(),
            ));
            a.push(KeyValue::new(
                "network.peer.port",
                i64::from(endpoint.port()),
            ));
            if let Some(w) = self.upstreams.shared().snapshot().workload(*endpoint.ip()) {
                a.extend(trace::workload("destination", w));
            }
        }
        if took.retries > 0 {
            a.push(KeyValue::new(
                "http.request.resend_count",
                i64::from(took.retries),
            ));
        }
        a
    }

    /// The server span of a request to a pod on this node: this proxy is
    /// its destination's too.
    fn server_span(
        &self,
        span: Span,
        info: &RequestInfo,
        endpoint: std::net::SocketAddrV4,
    ) -> Pending {
        let shared = self.upstreams.shared();
        let mut a = self.source_attributes(8);
        a.push(KeyValue::new("client.address", self.source.ip.to_string()));
        a.push(KeyValue::new("server.port", i64::from(endpoint.port())));
        if let Some(w) = shared.snapshot().workload(*endpoint.ip()) {
            a.extend(trace::workload("destination", w));
        }
        info.pending(&shared.tracer, span, SpanKind::Server, None, a)
    }

    /// Counts the request under its source, destination pod, service,
    /// route and status: into a series this connection counted into
    /// before when there is one, else into one found by its labels.
    fn record(&self, took: &Taken, status: StatusCode, elapsed: Duration) {
        let shared = self.upstreams.shared();
        let snapshot = shared.snapshot();
        let answered = took.endpoint.and_then(|e| snapshot.workload(*e.ip()));
        let code = status.as_u16();
        let same_rule = |a: &Option<Arc<crate::route::Rule>>| match (a, &took.route) {
            (Some(a), Some(b)) => Arc::ptr_eq(a, b),
            (None, None) => true,
            _ => false,
        };
        let mut counted = self.counted.lock().unwrap_or_else(|p| p.into_inner());
        let known = counted.iter().find(|c| {
            c.code == code
                && c.flags == took.flags
                && same_rule(&c.route)
                && match (&c.destination, answered) {
                    (Some((ns, name)), Some(w)) => w.namespace == *ns && w.name == *name,
                    (None, None) => true,
                    _ => false,
                }
        });
        if let Some(c) = known {
            c.counters.record(elapsed);
            return;
        }
        let unknown = || "unknown".to_owned();
        let (service_namespace, service_name) = self
            .port
            .service
            .split_once('/')
            .unwrap_or(("unknown", &self.port.service));
        let node = &snapshot.config().node;
        let counters = shared.metrics.requests(crate::metrics::RequestLabels {
            reporter: "source",
            source_workload: self.source.name.clone(),
            source_namespace: self.source.namespace.clone(),
            source_principal: self
                .principal
                .as_ref()
                .map_or_else(unknown, ToString::to_string),
            destination_workload: answered.map_or_else(unknown, |w| w.name.clone()),
            destination_namespace: answered.map_or_else(unknown, |w| w.namespace.clone()),
            destination_principal: answered
                .and_then(|w| shared.identity_of(w))
                .map_or_else(unknown, |id| id.to_string()),
            destination_service: format!("{service_name}.{service_namespace}.svc.cluster.local"),
            destination_service_name: service_name.to_owned(),
            destination_service_namespace: service_namespace.to_owned(),
            protocol: if took.grpc { "grpc" } else { "http" },
            code,
            flags: took.flags,
            security: if shared.mtls && answered.is_some_and(|w| w.node != *node) {
                "mutual_tls"
            } else {
                "none"
            },
            route: took
                .route
                .as_ref()
                .map(|r| r.route.clone())
                .unwrap_or_default(),
        });
        counters.record(elapsed);
        if counted.len() >= COUNTED_PER_CONNECTION {
            counted.remove(0);
        }
        counted.push(Counted {
            destination: answered.map(|w| (w.namespace.clone(), w.name.clone())),
            route: took.route.clone(),
            code,
            flags: took.flags,
            counters,
        });
    }

    async fn route<B>(self: &Arc<Self>, req: Request<B>, took: &mut Taken) -> Response<Body>
    where
        B: hyper::body::Body<Data = bytes::Bytes> + Send + Sync + 'static,
        B::Error: Into<answer::BoxError> + std::fmt::Display,
    {
        let (mut parts, body) = req.into_parts();
        let grpc = is_grpc(&parts.headers);
        // WebSocket and the like, or CONNECT: a byte relay once accepted.
        let mut switch = Switch::take(&mut parts);
        let port = self.current_port();
        took.grpc = grpc;
        let Some(picked) = port.pick(Some(&self.source.namespace), &parts) else {
            took.flags = "NR";
            return failure(
                grpc,
                StatusCode::NOT_FOUND,
                GrpcStatus::Unimplemented,
                "no route rule matches",
            );
        };
        let rule = picked.rule;
        took.route = Some(rule.clone());
        let grpc = grpc || rule.grpc;
        took.grpc = grpc;
        let mut on_response = Vec::new();
        let service_port = port.port;
        if let filter::Outcome::Redirect { status, location } = filter::request(
            &rule.filters,
            &mut parts,
            picked.prefix,
            service_port,
            &mut on_response,
        ) {
            return redirect(status, &location);
        }
        let Some(backend) = pick(&rule.backends) else {
            took.flags = "NC";
            return failure(
                grpc,
                StatusCode::INTERNAL_SERVER_ERROR,
                GrpcStatus::Internal,
                "the rule has no backend with a weight",
            );
        };
        let Some(target) = &backend.target else {
            took.flags = "NC";
            return failure(
                grpc,
                StatusCode::INTERNAL_SERVER_ERROR,
                GrpcStatus::Internal,
                "the backend does not exist",
            );
        };
        if let filter::Outcome::Redirect { status, location } = filter::request(
            &backend.filters,
            &mut parts,
            picked.prefix,
            service_port,
            &mut on_response,
        ) {
            return redirect(status, &location);
        }
        strip_hop_by_hop(&mut parts.headers);
        if let Some(s) = &switch {
            s.ask(&mut parts.headers);
        }
        let authority = filter::authority(&parts);
        let origin_form = parts.uri.scheme().is_none() && parts.uri.authority().is_none();
        match self.version {
            // CONNECT keeps its authority form; a request in origin form
            // (as clients send them) stays as it is.
            Version::Http1 if parts.method == http::Method::CONNECT || origin_form => {}
            // Origin form; the Host header stays as the client sent it.
            Version::Http1 => {
                let mut origin = http::uri::Parts::default();
                origin.path_and_query = parts.uri.path_and_query().cloned();
                parts.uri = http::Uri::from_parts(origin).unwrap_or_default();
            }
            // `:authority` is the client's, not the endpoint's.
            Version::Http2 => {
                let path = parts
                    .uri
                    .path_and_query()
                    .map_or("/", http::uri::PathAndQuery::as_str);
                let authority = authority.unwrap_or_else(|| port.service.clone());
                parts.uri = format!("http://{authority}{path}")
                    .parse()
                    .unwrap_or_default();
            }
        }
        parts.version = match self.version {
            Version::Http1 => http::Version::HTTP_11,
            Version::Http2 => http::Version::HTTP_2,
        };
        // A body known to fit the replay buffer is taken whole first when
        // retries may send it again, and on HTTP/1.1 (not switching), where
        // a request in hand goes out through the direct client in one
        // write. Others stream.
        self.budget.earn();
        let retry = rule.retry.as_ref().filter(|r| r.attempts > 0);
        let whole = (retry.is_some() || (self.version == Version::Http1 && switch.is_none()))
            && body.size_hint().upper().is_some_and(|n| n <= REPLAY_LIMIT);
        let (replay, mut body) = if whole {
            match body.collect().await {
                Ok(b) => (Some(b.to_bytes()), None),
                Err(e) => {
                    tracing::debug!(error = %e, "the request body ended early");
                    return failure(
                        grpc,
                        StatusCode::BAD_REQUEST,
                        GrpcStatus::Internal,
                        "the request body ended early",
                    );
                }
            }
        } else {
            (None, Some(body.map_err(Into::into).boxed()))
        };
        // Copies to the rule's and the backend's mirrors, once the request
        // is final (a relay is never copied).
        let mirrors: Vec<&Arc<Backend>> = rule
            .mirrors
            .iter()
            .chain(&backend.mirrors)
            .filter(|_| switch.is_none())
            .filter(|m| m.draw())
            .filter_map(|m| m.target.as_ref())
            .collect();
        if !mirrors.is_empty() {
            let mut copies: Vec<Outgoing> = match (&replay, body.take()) {
                (Some(bytes), _) => mirrors
                    .iter()
                    .map(|_| Outgoing::Buffered(bytes.clone()))
                    .collect(),
                (None, Some(b)) => {
                    let (primary, copies) = mirror::tee(b, mirrors.len());
                    body = Some(primary);
                    copies.into_iter().map(Outgoing::Streaming).collect()
                }
                (None, None) => Vec::new(),
            };
            for target in mirrors {
                let Some(copy) = copies.pop() else { break };
                let mut req = Request::new(copy);
                *req.method_mut() = parts.method.clone();
                *req.uri_mut() = parts.uri.clone();
                *req.version_mut() = parts.version;
                *req.headers_mut() = parts.headers.clone();
                tokio::spawn(self.clone().mirror(target.clone(), rule.route.clone(), req));
            }
        }
        let attempts = async {
            let mut attempt = 0;
            loop {
                let Some(in_use) = self.balancer.request(&target.endpoints, target.target_port)
                else {
                    took.flags = "UH";
                    return failure(
                        grpc,
                        StatusCode::SERVICE_UNAVAILABLE,
                        GrpcStatus::Unavailable,
                        "the backend has no endpoints",
                    );
                };
                let endpoint = in_use.addr;
                took.endpoint = Some(endpoint);
                took.retries = attempt;
                // A pod on this node: this proxy is its destination's too,
                // and the request's server span is here.
                let server = match &took.span {
                    Some(span) if self.is_local_pod(endpoint) => {
                        let server =
                            self.server_span(span.child(), &RequestInfo::of(&parts), endpoint);
                        Some(server)
                    }
                    _ => None,
                };
                if let Some(denied) = self.same_node_decision(&parts, endpoint, grpc) {
                    took.flags = "RBAC";
                    return match server {
                        Some(s) => s.respond(denied),
                        None => denied,
                    };
                }
                let req_body = match (&replay, body.take()) {
                    (Some(bytes), _) => Outgoing::Buffered(bytes.clone()),
                    (None, Some(b)) => Outgoing::Streaming(b),
                    (None, None) => return unavailable(grpc),
                };
                let mut req = Request::new(req_body);
                *req.method_mut() = parts.method.clone();
                *req.uri_mut() = parts.uri.clone();
                *req.version_mut() = parts.version;
                // Without retries there is one attempt: it takes the
                // headers instead of a copy.
                *req.headers_mut() = match retry {
                    Some(_) => parts.headers.clone(),
                    None => std::mem::take(&mut parts.headers),
                };
                if let Some(s) = &server {
                    req.headers_mut()
                        .insert(context::TRACEPARENT, s.span.traceparent());
                }
                // A switching connection is the relay's own: never reused.
                let reuse = if switch.is_some() {
                    Reuse::Never
                } else {
                    Reuse::Pooled
                };
                let sent = self
                    .upstreams
                    .send(&self.source, endpoint, self.version, reuse, req);
                let result = match rule.timeouts.backend_request_ms.map(Duration::from_millis) {
                    Some(d) => tokio::time::timeout(d, sent)
                        .await
                        .unwrap_or_else(|_| Err(UpstreamError::Timeout(endpoint, d))),
                    None => sent.await,
                };
                // The endpoint's health: a 5xx, a failed connect, a reset
                // or a timeout counts against it; a refusal by policy not.
                let healthy = match &result {
                    Ok(res) => !res.status().is_server_error(),
                    Err(UpstreamError::Refused(_)) => true,
                    Err(_) => false,
                };
                let in_use = if healthy {
                    Some(in_use)
                } else {
                    self.endpoint_failed(in_use);
                    None
                };
                let failed = match &result {
                    Ok(res) => retry.is_some_and(|r| r.codes.contains(&res.status().as_u16())),
                    Err(_) => true,
                };
                let again = failed
                    && retry.is_some_and(|r| attempt < r.attempts)
                    && self.may_retry(rule, replay.is_some(), took);
                if again {
                    if let Some(s) = server {
                        match &result {
                            Ok(res) => s.answered(res.status().as_u16()),
                            Err(e) => s.failed(e.to_string()),
                        }
                    }
                    attempt += 1;
                    tracing::debug!(service = %self.port.service, route = %rule.route, %endpoint,
                        attempt, "retrying");
                    drop(result);
                    if let Some(ms) = retry.and_then(|r| r.backoff_ms) {
                        tokio::time::sleep_until(
                            tokio::time::Instant::now() + Duration::from_millis(ms),
                        )
                        .await;
                    }
                    continue;
                }
                return match result {
                    Ok(res) => {
                        let res = match switch.take() {
                            // The endpoint counts as in use while the relay lasts.
                            Some(switch) => switch.splice(res, in_use),
                            None => {
                                if let Some(u) = in_use {
                                    u.done();
                                }
                                let mut res = res;
                                strip_hop_by_hop(res.headers_mut());
                                res
                            }
                        };
                        let (mut parts, body) = res.into_parts();
                        for m in &on_response {
                            filter::modify(m, &mut parts.headers);
                        }
                        let res = Response::from_parts(parts, body.boxed());
                        match server {
                            Some(s) => s.respond(res),
                            None => res,
                        }
                    }
                    Err(UpstreamError::Timeout(..)) => {
                        took.flags = "UT";
                        if let Some(s) = server {
                            s.failed("the backend request timeout passed");
                        }
                        failure(
                            grpc,
                            StatusCode::GATEWAY_TIMEOUT,
                            GrpcStatus::DeadlineExceeded,
                            "the backend request timeout passed",
                        )
                    }
                    Err(e) => {
                        tracing::info!(source = %self.source.key(), service = %self.port.service,
                            route = %rule.route, %endpoint, error = %e, "upstream request failed");
                        if let Some(s) = server {
                            s.failed(e.to_string());
                        }
                        took.flags = if attempt > 0 { "URX" } else { "UF" };
                        unavailable(grpc)
                    }
                };
            }
        };
        match rule.timeouts.request_ms.map(Duration::from_millis) {
            Some(d) => match tokio::time::timeout(d, attempts).await {
                Ok(res) => res,
                Err(_) => {
                    took.flags = "UT";
                    tracing::info!(source = %self.source.key(), service = %self.port.service,
                        route = %rule.route, timeout_ms = d.as_millis() as u64, "request timed out");
                    failure(
                        grpc,
                        StatusCode::GATEWAY_TIMEOUT,
                        GrpcStatus::DeadlineExceeded,
                        "the route's timeout passed",
                    )
                }
            },
            None => attempts.await,
        }
    }
}

impl Router {
    /// Sends a copy of a request to an endpoint of `target` and drops its
    /// answer (read to the end, so its connection can be reused).
    async fn mirror(self: Arc<Self>, target: Arc<Backend>, route: String, req: Request<Outgoing>) {
        let Some(in_use) = self.balancer.request(&target.endpoints, target.target_port) else {
            tracing::debug!(mirror = %target.service, "the mirror has no endpoints");
            return;
        };
        let endpoint = in_use.addr;
        let (parts, body) = req.into_parts();
        let outcome = if self.same_node_decision(&parts, endpoint, false).is_some() {
            "denied"
        } else {
            let req = Request::from_parts(parts, body);
            match self
                .upstreams
                .send(&self.source, endpoint, self.version, Reuse::Pooled, req)
                .await
            {
                Ok(res) if res.status().is_server_error() => {
                    self.endpoint_failed(in_use);
                    "sent"
                }
                Ok(res) => {
                    let read = res.into_body().collect().await;
                    in_use.done();
                    if read.is_ok() { "sent" } else { "failed" }
                }
                Err(e) => {
                    tracing::debug!(mirror = %target.service, %endpoint, error = %e, "mirror request failed");
                    if !matches!(e, UpstreamError::Refused(_)) {
                        self.endpoint_failed(in_use);
                    }
                    "failed"
                }
            }
        };
        self.upstreams
            .shared()
            .metrics
            .mirror(&self.port.service, &route, outcome);
    }

    /// The routes of the port as the current config has them, so a route
    /// change reaches the next request of an open connection: a port that
    /// lost its routes sends requests to the service itself; a service that
    /// is gone keeps what the connection began with.
    fn current_port(&self) -> Arc<HttpPort> {
        let snapshot = self.upstreams.shared().snapshot();
        match snapshot.destination(self.orig) {
            Destination::Service {
                http: Some(port), ..
            } => port.clone(),
            Destination::Service {
                service,
                http: None,
                ..
            } => match service.ports.iter().find(|p| p.port == self.orig.port()) {
                Some(p) => Arc::new(HttpPort::plain(service, p)),
                None => self.port.clone(),
            },
            Destination::Address(_) => self.port.clone(),
        }
    }

    /// Counts a failure against an endpoint's health (and its ejection,
    /// when this failure ejected it).
    fn endpoint_failed(&self, in_use: crate::balance::InUse) {
        if in_use.failed() {
            self.upstreams.shared().metrics.ejected();
        }
    }

    /// Whether a failed attempt may be tried again: its body can be sent
    /// again and the budget has a retry left. Counted either way; a spent
    /// budget is noted in `took`.
    fn may_retry(&self, rule: &crate::route::Rule, replayable: bool, took: &mut Taken) -> bool {
        let outcome = if !replayable {
            "not_replayable"
        } else if self.budget.spend() {
            "retried"
        } else {
            "budget_exhausted"
        };
        self.upstreams
            .shared()
            .metrics
            .retry(&self.port.service, &rule.route, outcome);
        took.budget_spent |= outcome == "budget_exhausted";
        outcome == "retried"
    }

    /// Whether `endpoint` is a meshed pod on this node (whose proxy this
    /// one is too).
    fn is_local_pod(&self, endpoint: std::net::SocketAddrV4) -> bool {
        let snapshot = self.upstreams.shared().snapshot();
        let node = &snapshot.config().node;
        snapshot
            .workload(*endpoint.ip())
            .is_some_and(|w| w.meshed && w.node == *node)
    }

    /// For an endpoint on this node, this proxy is also the destination's:
    /// its authorization policies decide the request here (with HTTP
    /// fields, per request); a refusal is the 403 to answer.
    fn same_node_decision(
        &self,
        parts: &http::request::Parts,
        endpoint: std::net::SocketAddrV4,
        grpc: bool,
    ) -> Option<Response<Body>> {
        if !self.is_local_pod(endpoint) {
            return None;
        }
        let shared = self.upstreams.shared();
        let refused = crate::admit::admit_request(
            shared,
            crate::metrics::Direction::Outbound,
            self.principal.as_ref(),
            endpoint,
            parts.method.as_str(),
            parts.uri.path(),
        )
        .err()?;
        tracing::info!(source = %self.source.key(), %endpoint, method = %parts.method,
            path = %parts.uri.path(), policy = %refused, "request denied by authorization policy");
        Some(answer::denied(grpc))
    }
}

/// The proxy's redirect answer.
fn redirect(status: StatusCode, location: &str) -> Response<Body> {
    let mut res = Response::new(empty());
    *res.status_mut() = status;
    if let Ok(v) = HeaderValue::from_str(location) {
        res.headers_mut().insert(header::LOCATION, v);
    }
    res
}

/// The answer when no upstream answered.
fn unavailable(grpc: bool) -> Response<Body> {
    failure(
        grpc,
        StatusCode::SERVICE_UNAVAILABLE,
        GrpcStatus::Unavailable,
        "upstream connect error or disconnect before the response",
    )
}

/// A backend by weight; `None` when every weight is 0.
fn pick(backends: &[WeightedBackend]) -> Option<&WeightedBackend> {
    let total: u64 = backends.iter().map(|b| u64::from(b.weight)).sum();
    if total == 0 {
        return None;
    }
    let mut at = fastrand::u64(..total);
    backends.iter().find(|b| {
        let w = u64::from(b.weight);
        if at < w {
            true
        } else {
            at -= w;
            false
        }
    })
}

#[cfg(test)]
mod tests;
