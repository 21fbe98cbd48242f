//! The admin port (`/ready`, `/metrics`, `/config_dump`) and the metrics
//! port (`/metrics`). Small HTTP/1.1 servers on their own tasks.

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode, header};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

use crate::state::Shared;

/// Which endpoints a server offers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Endpoints {
    /// `/ready`, `/metrics`, `/config_dump`.
    Admin,
    /// `/metrics` only.
    Metrics,
}

/// Serves until the task is dropped.
pub async fn serve(
    listener: TcpListener,
    shared: Arc<Shared>,
    ready: Arc<AtomicBool>,
    which: Endpoints,
) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let shared = shared.clone();
        let ready = ready.clone();
        tokio::spawn(async move {
            let svc = service_fn(move |req| {
                let resp = respond(&req, &shared, &ready, which);
                async move { Ok::<_, Infallible>(resp) }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), svc)
                .await;
        });
    }
}

fn respond(
    req: &Request<Incoming>,
    shared: &Shared,
    ready: &AtomicBool,
    which: Endpoints,
) -> Response<Full<Bytes>> {
    if req.method() != Method::GET {
        return text(StatusCode::METHOD_NOT_ALLOWED, "only GET\n".into());
    }
    match (which, req.uri().path()) {
        (_, "/metrics") => text(StatusCode::OK, shared.render_metrics()),
        (Endpoints::Admin, "/ready") => {
            if ready.load(Ordering::Acquire) {
                text(StatusCode::OK, "ready\n".into())
            } else {
                text(StatusCode::SERVICE_UNAVAILABLE, "starting\n".into())
            }
        }
        (Endpoints::Admin, "/config_dump") => {
            let dump = serde_json::json!({
                "generation": shared.generation(),
                "config": shared.snapshot().config(),
                "l7Ports": shared.snapshot().l7_ports(),
                "certificates": shared
                    .identities
                    .summary()
                    .into_iter()
                    .map(|(id, not_after)| serde_json::json!({"identity": id, "notAfter": not_after}))
                    .collect::<Vec<_>>(),
            });
            let body = serde_json::to_string_pretty(&dump)
                .unwrap_or_else(|e| format!("{{\"error\": \"{e}\"}}"));
            let mut resp = text(StatusCode::OK, body + "\n");
            resp.headers_mut().insert(
                header::CONTENT_TYPE,
                header::HeaderValue::from_static("application/json"),
            );
            resp
        }
        _ => text(StatusCode::NOT_FOUND, "not found\n".into()),
    }
}

fn text(status: StatusCode, body: String) -> Response<Full<Bytes>> {
    let mut resp = Response::new(Full::new(Bytes::from(body)));
    *resp.status_mut() = status;
    resp
}
