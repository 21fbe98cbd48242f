//! The proxy's own answers and the header hygiene every HTTP hop needs:
//! failures as an HTTP status or, for gRPC, a trailers-only response;
//! hop-by-hop headers removed. Shared by the source side (the router) and
//! the destination side (L7 authorization), and importing neither.

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Response, StatusCode};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full};

/// The error type of bodies on the L7 path.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;
/// A request or response body on the L7 path.
pub type Body = BoxBody<Bytes, BoxError>;

/// gRPC status codes the proxy answers with.
#[derive(Debug, Clone, Copy)]
pub enum GrpcStatus {
    /// The deadline passed.
    DeadlineExceeded = 4,
    /// Refused by policy.
    PermissionDenied = 7,
    /// No route matches.
    Unimplemented = 12,
    /// The route cannot be served.
    Internal = 13,
    /// No upstream answered.
    Unavailable = 14,
}

/// Whether a request is gRPC (its failures are answered as gRPC statuses).
pub fn is_grpc(headers: &HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/grpc"))
}

/// The proxy's own answer: an HTTP status with a short text, or a gRPC
/// trailers-only response.
pub fn failure(grpc: bool, status: StatusCode, code: GrpcStatus, why: &str) -> Response<Body> {
    let mut res = if grpc {
        let mut r = Response::new(empty());
        let h = r.headers_mut();
        h.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/grpc"),
        );
        h.insert("grpc-status", HeaderValue::from(code as u16));
        if let Ok(v) = HeaderValue::from_str(why) {
            h.insert("grpc-message", v);
        }
        r
    } else {
        let mut r = Response::new(
            Full::new(Bytes::from(format!("{why}\n")))
                .map_err(|never| match never {})
                .boxed(),
        );
        *r.status_mut() = status;
        r.headers_mut()
            .insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain"));
        r
    };
    res.headers_mut()
        .insert("x-weft-proxy", HeaderValue::from_static("local-reply"));
    res
}

/// The answer to a request an authorization policy refused: 403, or
/// gRPC `PERMISSION_DENIED`.
pub fn denied(grpc: bool) -> Response<Body> {
    failure(
        grpc,
        StatusCode::FORBIDDEN,
        GrpcStatus::PermissionDenied,
        "denied by authorization policy",
    )
}

/// An empty body.
pub fn empty() -> Body {
    Full::new(Bytes::new())
        .map_err(|never| match never {})
        .boxed()
}

/// Removes the headers that concern one connection (RFC 9110 §7.6.1):
/// those `Connection` names, and the well-known ones. `TE: trailers`
/// passes (gRPC needs it).
pub fn strip_hop_by_hop(headers: &mut HeaderMap) {
    // Most messages carry none of them: one pass over the names tells,
    // without a lookup per name.
    let keep_alive = HeaderName::from_static("keep-alive");
    let proxy_connection = HeaderName::from_static("proxy-connection");
    let any = headers.keys().any(|n| {
        *n == header::CONNECTION
            || *n == header::TRANSFER_ENCODING
            || *n == header::UPGRADE
            || *n == header::TE
            || *n == keep_alive
            || *n == proxy_connection
    });
    if !any {
        return;
    }
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|n| HeaderName::from_bytes(n.trim().as_bytes()).ok())
        .collect();
    for name in named {
        headers.remove(name);
    }
    for name in [
        header::CONNECTION,
        keep_alive,
        proxy_connection,
        header::TRANSFER_ENCODING,
        header::UPGRADE,
    ] {
        headers.remove(name);
    }
    if headers
        .get(header::TE)
        .is_some_and(|v| !v.as_bytes().eq_ignore_ascii_case(b"trailers"))
    {
        headers.remove(header::TE);
    }
}
