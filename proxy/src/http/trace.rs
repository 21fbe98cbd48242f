//! Request spans: their attributes (OpenTelemetry semantic conventions for
//! HTTP and gRPC, and the mesh's own `weft.*`), and a response body that
//! ends its span when it ends, so a span lasts to the last byte and sees
//! the gRPC status in the trailers.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::{HeaderMap, Response};
use hyper::body::{Body as _, Frame, SizeHint};
use opentelemetry::KeyValue;
use opentelemetry::trace::SpanKind;

use super::answer::{Body, BoxError};
use crate::telemetry::{Pending, Span, Tracer};

/// What a request span says of its request, taken before the request goes
/// on.
#[derive(Debug)]
pub struct RequestInfo {
    /// Its method.
    pub method: http::Method,
    /// Its path.
    pub path: String,
    /// The host it asked for (`:authority` or `Host`, without the port).
    pub authority: Option<String>,
    /// Its HTTP version.
    pub version: http::Version,
    /// Whether it is gRPC.
    pub grpc: bool,
}

impl RequestInfo {
    /// From the request's head.
    pub fn of(parts: &http::request::Parts) -> RequestInfo {
        RequestInfo::new(&parts.method, &parts.uri, parts.version, &parts.headers)
    }

    /// From a request.
    pub fn of_request<B>(req: &http::Request<B>) -> RequestInfo {
        RequestInfo::new(req.method(), req.uri(), req.version(), req.headers())
    }

    fn new(
        method: &http::Method,
        uri: &http::Uri,
        version: http::Version,
        headers: &HeaderMap,
    ) -> RequestInfo {
        let authority = uri.authority().map(|a| a.host().to_owned()).or_else(|| {
            headers
                .get(http::header::HOST)
                .and_then(|h| h.to_str().ok())
                .map(|h| h.rsplit_once(':').map_or(h, |(host, _)| host).to_owned())
        });
        RequestInfo {
            method: method.clone(),
            path: uri.path().to_owned(),
            authority,
            version,
            grpc: super::is_grpc(headers),
        }
    }

    /// The span's name: `{method} {target}` (semantic conventions), the
    /// target being the service called (client) or the authority asked
    /// for (server); for gRPC `{service}/{method}`.
    fn name(&self, target: Option<&str>) -> String {
        if self.grpc {
            return self.path.trim_start_matches('/').to_owned();
        }
        match target {
            Some(t) => format!("{} {t}", self.method),
            None => self.method.to_string(),
        }
    }

    /// The attributes every request span has.
    fn attributes(&self, node: &str) -> Vec<KeyValue> {
        let mut a = Vec::with_capacity(24);
        a.push(KeyValue::new(
            "http.request.method",
            self.method.as_str().to_owned(),
        ));
        a.push(KeyValue::new("url.path", self.path.clone()));
        a.push(KeyValue::new("url.scheme", "http"));
        a.push(KeyValue::new(
            "network.protocol.version",
            match self.version {
                http::Version::HTTP_2 => "2",
                http::Version::HTTP_10 => "1.0",
                _ => "1.1",
            },
        ));
        if let Some(host) = &self.authority {
            a.push(KeyValue::new("server.address", host.clone()));
        }
        if self.grpc {
            a.push(KeyValue::new("rpc.system", "grpc"));
            let mut parts = self.path.trim_start_matches('/').splitn(2, '/');
            if let (Some(service), Some(method)) = (parts.next(), parts.next()) {
                a.push(KeyValue::new("rpc.service", service.to_owned()));
                a.push(KeyValue::new("rpc.method", method.to_owned()));
            }
        }
        a.push(KeyValue::new("weft.node", node.to_owned()));
        a
    }

    /// A span of `kind` for this request, its attributes so far plus
    /// `more`; finished by [`Pending::end`] or [`traced`].
    pub fn pending(
        &self,
        tracer: &Arc<Tracer>,
        span: Span,
        kind: SpanKind,
        target: Option<&str>,
        more: impl IntoIterator<Item = KeyValue>,
    ) -> Pending {
        let mut attributes = self.attributes(tracer.node());
        attributes.extend(more);
        Pending {
            tracer: tracer.clone(),
            span,
            kind,
            name: self.name(target),
            attributes,
            status: 0,
            grpc_status: None,
            grpc: self.grpc,
            error: None,
        }
    }
}

/// The mesh's attributes of a workload at one end.
pub fn workload(end: &'static str, w: &weft_model::Workload) -> [KeyValue; 2] {
    let (name, namespace) = match end {
        "source" => ("weft.source.workload", "weft.source.namespace"),
        _ => ("weft.destination.workload", "weft.destination.namespace"),
    };
    [
        KeyValue::new(name, w.name.clone()),
        KeyValue::new(namespace, w.namespace.clone()),
    ]
}

impl Pending {
    /// Takes the response's status (and a gRPC status in its head) and
    /// returns it with a body that ends the span when it ends.
    pub fn respond(mut self, res: Response<Body>) -> Response<Body> {
        let code = res.status().as_u16();
        self.status = code;
        self.attributes
            .push(KeyValue::new("http.response.status_code", i64::from(code)));
        self.grpc_status = grpc_status(res.headers());
        let (parts, body) = res.into_parts();
        // A body already at its end (an answer without one) ends the span
        // now.
        if body.is_end_stream() {
            self.end(None);
            return Response::from_parts(parts, body);
        }
        Response::from_parts(
            parts,
            Body::new(Traced {
                inner: body,
                pending: Some(self),
            }),
        )
    }

    /// Ends the span of a request answered `code`, whose body is not
    /// followed (an attempt that is retried).
    pub fn answered(mut self, code: u16) {
        self.status = code;
        self.attributes
            .push(KeyValue::new("http.response.status_code", i64::from(code)));
        self.end(None);
    }

    /// Ends the span of a request that got no response.
    pub fn failed(mut self, why: impl Into<String>) {
        self.error = Some(why.into());
        self.end(None);
    }
}

/// `grpc-status` in `headers`, if any.
fn grpc_status(headers: &HeaderMap) -> Option<i64> {
    headers
        .get("grpc-status")?
        .to_str()
        .ok()?
        .parse::<i64>()
        .ok()
}

/// A response body that ends its span at its end (or when dropped early,
/// marked as cancelled).
#[derive(Debug)]
struct Traced {
    inner: Body,
    pending: Option<Pending>,
}

impl hyper::body::Body for Traced {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        let ended = match &polled {
            Poll::Ready(Some(Ok(frame))) => match frame.trailers_ref() {
                Some(trailers) => Some((grpc_status(trailers), None)),
                // A reader may stop at a known length without asking for
                // the end.
                None if self.inner.is_end_stream() => Some((None, None)),
                None => None,
            },
            Poll::Ready(Some(Err(e))) => Some((None, Some(format!("response body: {e}")))),
            Poll::Ready(None) => Some((None, None)),
            Poll::Pending => None,
        };
        if let Some((status, error)) = ended
            && let Some(mut p) = self.pending.take()
        {
            p.error = error;
            p.end(status);
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for Traced {
    fn drop(&mut self) {
        if let Some(mut p) = self.pending.take() {
            if !self.inner.is_end_stream() {
                p.error = Some("cancelled: the response was not read to its end".to_owned());
            }
            p.end(None);
        }
    }
}
