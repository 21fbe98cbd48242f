//! The gRPC echo (the Gateway API conformance `GrpcEcho` service, h2c) and
//! a gRPC client that calls any method with an empty `EchoRequest` and
//! prints what came back as JSON.

use std::collections::BTreeMap;
use std::io;
use std::sync::Arc;
use std::time::Duration;

use http::uri::PathAndQuery;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpStream;
use tonic::metadata::{MetadataKey, MetadataMap, MetadataValue};
use tonic::{Request, Response, Status};

use super::PodIdentity;

/// The messages and the service, generated from `proto/grpcecho.proto`.
pub mod pb {
    #![allow(
        missing_docs,
        missing_debug_implementations,
        unreachable_pub,
        unused_qualifications,
        clippy::all,
        clippy::pedantic,
        clippy::allow_attributes_without_reason,
        reason = "generated code"
    )]
    tonic::include_proto!("gateway_api_conformance.echo_basic.grpcecho");
}

use pb::grpc_echo_server::{GrpcEcho, GrpcEchoServer};
use pb::{Assertions, Context, EchoRequest, EchoResponse, Header};

/// The fully qualified name of the echo service.
pub const SERVICE: &str = "gateway_api_conformance.echo_basic.grpcecho.GrpcEcho";

/// The request's `:authority`, kept for the handler (tonic drops the URI).
#[derive(Debug, Clone)]
struct Authority(String);

#[derive(Debug)]
struct Echo {
    id: Arc<PodIdentity>,
}

impl Echo {
    fn answer(&self, req: &Request<EchoRequest>, method: &str) -> EchoResponse {
        let headers: Vec<Header> = req
            .metadata()
            .clone()
            .into_headers()
            .iter()
            .map(|(k, v)| Header {
                key: k.as_str().to_owned(),
                value: String::from_utf8_lossy(v.as_bytes()).into_owned(),
            })
            .collect();
        let authority = req
            .extensions()
            .get::<Authority>()
            .map(|a| a.0.clone())
            .unwrap_or_default();
        let fully_qualified_method = format!("/{SERVICE}/{method}");
        log_call(&fully_qualified_method, &headers, &self.id);
        EchoResponse {
            assertions: Some(Assertions {
                fully_qualified_method,
                headers,
                authority,
                context: Some(Context {
                    namespace: self.id.namespace.clone(),
                    ingress: String::new(),
                    service_name: String::new(),
                    pod: self.id.pod.clone(),
                }),
                tls_assertions: None,
            }),
            request: Some(EchoRequest {}),
        }
    }
}

/// One JSON line per call on the echo's output, like the HTTP echo's.
fn log_call(method: &str, headers: &[Header], id: &PodIdentity) {
    use std::io::Write as _;
    let mut map = BTreeMap::<&str, Vec<&str>>::new();
    for h in headers {
        map.entry(&h.key).or_default().push(&h.value);
    }
    let line = serde_json::json!({
        "request": {
            "method": "POST",
            "path": method,
            "headers": map,
            "pod": format!("{}/{}", id.namespace, id.pod),
        }
    });
    let mut out = io::stdout().lock();
    let _ = writeln!(out, "{line}").and_then(|()| out.flush());
}

#[tonic::async_trait]
impl GrpcEcho for Echo {
    async fn echo(&self, req: Request<EchoRequest>) -> Result<Response<EchoResponse>, Status> {
        Ok(Response::new(self.answer(&req, "Echo")))
    }

    async fn echo_two(&self, req: Request<EchoRequest>) -> Result<Response<EchoResponse>, Status> {
        Ok(Response::new(self.answer(&req, "EchoTwo")))
    }

    async fn echo_three(
        &self,
        req: Request<EchoRequest>,
    ) -> Result<Response<EchoResponse>, Status> {
        let _ = self.answer(&req, "EchoThree");
        Err(Status::unimplemented("EchoThree is not implemented"))
    }
}

/// The gRPC echo service of a pod.
#[derive(Debug, Clone)]
pub struct Service(GrpcEchoServer<Echo>);

impl Service {
    /// The service answering as `id`.
    pub fn new(id: Arc<PodIdentity>) -> Service {
        Service(GrpcEchoServer::new(Echo { id }))
    }

    /// Serves one connection (h2c) until it ends.
    pub async fn serve(&self, stream: TcpStream) -> io::Result<()> {
        let svc = self.0.clone();
        let with_authority = tower::service_fn(move |mut req: http::Request<_>| {
            let authority = req
                .uri()
                .authority()
                .map(|a| a.as_str().to_owned())
                .unwrap_or_default();
            req.extensions_mut().insert(Authority(authority));
            let mut svc = svc.clone();
            async move { tower::Service::call(&mut svc, req).await }
        });
        hyper::server::conn::http2::Builder::new(TokioExecutor::new())
            .serve_connection(
                TokioIo::new(stream),
                TowerToHyperService::new(with_authority),
            )
            .await
            .map_err(io::Error::other)
    }
}

/// What the gRPC client calls.
#[derive(Debug, Clone)]
pub struct GrpcCall {
    /// `host:port`.
    pub addr: String,
    /// `package.Service/Method` (a leading `/` is optional).
    pub method: String,
    /// Request metadata, in order.
    pub metadata: Vec<(String, String)>,
    /// The `:authority` (default: `addr`).
    pub authority: Option<String>,
    /// Calls, one after another on one connection.
    pub count: usize,
    /// Deadline for all of them.
    pub timeout: Duration,
}

/// Why the gRPC client failed (a call answered with a non-OK status is
/// not a failure: it is printed).
#[derive(Debug, thiserror::Error)]
pub enum GrpcError {
    /// An argument cannot be used.
    #[error("{0}")]
    Bad(String),
    /// The connection failed.
    #[error("connecting to {addr}: {source}")]
    Connect {
        /// The address.
        addr: String,
        /// The cause.
        #[source]
        source: tonic::transport::Error,
    },
    /// No answer in time.
    #[error("{addr}: no complete answer within {secs:.1} s")]
    Timeout {
        /// The address.
        addr: String,
        /// The deadline.
        secs: f64,
    },
}

/// Makes the calls; one JSON object per answer: `grpcStatus` (0 is OK),
/// `grpcMessage`, `metadata` (name to values), and `response` (the
/// `EchoResponse`) when OK.
pub async fn call(c: &GrpcCall) -> Result<Vec<serde_json::Value>, GrpcError> {
    tokio::time::timeout(c.timeout, calls(c))
        .await
        .map_err(|_| GrpcError::Timeout {
            addr: c.addr.clone(),
            secs: c.timeout.as_secs_f64(),
        })?
}

async fn calls(c: &GrpcCall) -> Result<Vec<serde_json::Value>, GrpcError> {
    let bad = |what: String| GrpcError::Bad(what);
    let path: PathAndQuery = format!("/{}", c.method.trim_start_matches('/'))
        .parse()
        .map_err(|e| bad(format!("method `{}`: {e}", c.method)))?;
    let mut endpoint = tonic::transport::Endpoint::from_shared(format!("http://{}", c.addr))
        .map_err(|e| bad(format!("address `{}`: {e}", c.addr)))?;
    if let Some(a) = &c.authority {
        let origin = format!("http://{a}")
            .parse()
            .map_err(|e| bad(format!("--authority `{a}`: {e}")))?;
        endpoint = endpoint.origin(origin);
    }
    let channel = endpoint
        .connect()
        .await
        .map_err(|source| GrpcError::Connect {
            addr: c.addr.clone(),
            source,
        })?;
    let mut grpc = tonic::client::Grpc::new(channel);
    let mut out = Vec::with_capacity(c.count);
    for _ in 0..c.count {
        let mut req = Request::new(EchoRequest {});
        for (k, v) in &c.metadata {
            let key = MetadataKey::from_bytes(k.as_bytes())
                .map_err(|e| bad(format!("--metadata `{k}`: {e}")))?;
            let value: MetadataValue<_> = v
                .parse()
                .map_err(|e| bad(format!("--metadata `{k}: {v}`: {e}")))?;
            req.metadata_mut().append(key, value);
        }
        grpc.ready().await.map_err(|source| GrpcError::Connect {
            addr: c.addr.clone(),
            source,
        })?;
        let codec = tonic_prost::ProstCodec::<EchoRequest, EchoResponse>::default();
        out.push(match grpc.unary(req, path.clone(), codec).await {
            Ok(res) => serde_json::json!({
                "grpcStatus": 0,
                "metadata": metadata_json(res.metadata()),
                "response": response_json(res.get_ref()),
            }),
            Err(status) => serde_json::json!({
                "grpcStatus": status.code() as i32,
                "grpcMessage": status.message(),
                "metadata": metadata_json(status.metadata()),
            }),
        });
    }
    Ok(out)
}

fn metadata_json(m: &MetadataMap) -> BTreeMap<String, Vec<String>> {
    let mut map = BTreeMap::<String, Vec<String>>::new();
    for (k, v) in m.clone().into_headers().iter() {
        map.entry(k.as_str().to_owned())
            .or_default()
            .push(String::from_utf8_lossy(v.as_bytes()).into_owned());
    }
    map
}

/// The response in the proto's JSON mapping (camelCase names).
fn response_json(r: &EchoResponse) -> serde_json::Value {
    let Some(a) = &r.assertions else {
        return serde_json::json!({});
    };
    let context = a.context.as_ref().map(|c| {
        serde_json::json!({
            "namespace": c.namespace,
            "ingress": c.ingress,
            "serviceName": c.service_name,
            "pod": c.pod,
        })
    });
    serde_json::json!({
        "assertions": {
            "fullyQualifiedMethod": a.fully_qualified_method,
            "headers": a.headers.iter().map(|h| serde_json::json!({"key": h.key, "value": h.value})).collect::<Vec<_>>(),
            "authority": a.authority,
            "context": context,
        }
    })
}

/// How many answers each pod gave and each gRPC status had.
pub fn summary(answers: &[serde_json::Value]) -> serde_json::Value {
    let mut pods = BTreeMap::<String, u64>::new();
    let mut statuses = BTreeMap::<String, u64>::new();
    for a in answers {
        *statuses.entry(a["grpcStatus"].to_string()).or_default() += 1;
        let c = &a["response"]["assertions"]["context"];
        if let (Some(ns), Some(pod)) = (c["namespace"].as_str(), c["pod"].as_str()) {
            *pods.entry(format!("{ns}/{pod}")).or_default() += 1;
        }
    }
    serde_json::json!({"summary": {"count": answers.len(), "pods": pods, "statuses": statuses}})
}
