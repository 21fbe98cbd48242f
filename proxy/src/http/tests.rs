use super::*;
use ::http::header::{HeaderMap, HeaderName};

fn backend(weight: u32, name: &str) -> WeightedBackend {
    WeightedBackend {
        weight,
        filters: Vec::new(),
        target: Some(Arc::new(Backend {
            service: name.into(),
            port: 80,
            target_port: 80,
            endpoints: Vec::new(),
        })),
        mirrors: Vec::new(),
    }
}

#[test]
fn weights_split_requests_in_proportion_and_weight_zero_gets_none() {
    let backends = [backend(70, "a"), backend(30, "b"), backend(0, "never")];
    let mut counts = std::collections::HashMap::new();
    for _ in 0..10_000 {
        let b = pick(&backends).unwrap();
        *counts
            .entry(b.target.as_ref().unwrap().service.clone())
            .or_insert(0u32) += 1;
    }
    assert!((6_700..7_300).contains(&counts["a"]), "{counts:?}");
    assert!(!counts.contains_key("never"), "{counts:?}");
    assert!(pick(&[backend(0, "x")]).is_none());
}

#[test]
fn hop_by_hop_headers_and_those_connection_names_go_and_te_trailers_stays() {
    let mut h = HeaderMap::new();
    h.insert(
        header::CONNECTION,
        HeaderValue::from_static("close, x-private"),
    );
    h.insert("x-private", HeaderValue::from_static("1"));
    h.insert("keep-alive", HeaderValue::from_static("timeout=5"));
    h.insert(header::TE, HeaderValue::from_static("trailers"));
    h.insert("x-kept", HeaderValue::from_static("1"));
    strip_hop_by_hop(&mut h);
    let left: Vec<&str> = h.keys().map(HeaderName::as_str).collect();
    assert_eq!(left, ["te", "x-kept"]);
    let mut gzip = HeaderMap::new();
    gzip.insert(header::TE, HeaderValue::from_static("gzip"));
    strip_hop_by_hop(&mut gzip);
    assert!(gzip.is_empty());
}

#[test]
fn grpc_failures_are_trailers_only_with_a_status_and_http_ones_carry_a_status_code() {
    let g = failure(
        true,
        StatusCode::NOT_FOUND,
        GrpcStatus::Unimplemented,
        "no route",
    );
    assert_eq!(g.status(), StatusCode::OK);
    assert_eq!(g.headers()["grpc-status"], "12");
    assert_eq!(g.headers()["content-type"], "application/grpc");
    let h = failure(
        false,
        StatusCode::NOT_FOUND,
        GrpcStatus::Unimplemented,
        "no route",
    );
    assert_eq!(h.status(), StatusCode::NOT_FOUND);
}
