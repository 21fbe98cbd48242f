//! Node authentication with TokenReview against a scripted API server: kube's
//! real client sends the TokenReview to a `tower-test` mock, and this file
//! answers as the API server would. (What a real API server decides about a
//! token is its business; these tests check what weft asks and how it reads
//! the answers.)

use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body_util::Full;
use serde_json::{Value, json};
use weft_control::kube;
use weft_control::token_review::{ReviewError, TokenReviewer};

type Handle = tower_test::mock::Handle<Request<kube::client::Body>, Response<Full<Bytes>>>;

const PROXIES: (&str, &str) = ("weft-system", "weft-proxy");
const PROXY_USER: &str = "system:serviceaccount:weft-system:weft-proxy";

fn reviewer() -> (TokenReviewer, Handle) {
    let (service, handle) =
        tower_test::mock::pair::<Request<kube::client::Body>, Response<Full<Bytes>>>();
    let client = kube::Client::new(service, "default");
    (TokenReviewer::new(client, "weft", PROXIES), handle)
}

/// Answers the next request, which must be a TokenReview, with `code` and
/// `status`; returns the review that was sent.
async fn answer(handle: &mut Handle, code: StatusCode, status: Value) -> Value {
    let (request, respond) = tokio::time::timeout(Duration::from_secs(10), handle.next_request())
        .await
        .expect("a request within 10 s")
        .expect("a request");
    assert_eq!(request.method(), Method::POST);
    assert_eq!(
        request.uri().path(),
        "/apis/authentication.k8s.io/v1/tokenreviews"
    );
    let bytes = request
        .into_body()
        .collect_bytes()
        .await
        .expect("a request body");
    let sent: Value = serde_json::from_slice(&bytes).expect("JSON");
    let body = if code.is_success() {
        json!({
            "apiVersion": "authentication.k8s.io/v1",
            "kind": "TokenReview",
            "metadata": {},
            "spec": sent["spec"],
            "status": status,
        })
    } else {
        json!({
            "apiVersion": "v1", "kind": "Status", "status": "Failure",
            "message": "etcdserver: request timed out", "reason": "InternalError", "code": code.as_u16(),
        })
    };
    respond.send_response(
        Response::builder()
            .status(code)
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from(body.to_string())))
            .expect("a response"),
    );
    sent
}

fn authenticated(user: &str, node: Option<&str>, audiences: &[&str]) -> Value {
    let mut extra = json!({ "authentication.kubernetes.io/pod-name": ["weft-proxy-abcde"] });
    if let Some(node) = node {
        extra["authentication.kubernetes.io/node-name"] = json!([node]);
    }
    json!({
        "authenticated": true,
        "audiences": audiences,
        "user": { "username": user, "uid": "1", "groups": ["system:serviceaccounts"], "extra": extra },
    })
}

#[tokio::test]
async fn a_pod_bound_proxy_token_names_its_node_and_the_answer_is_reused() {
    let (reviewer, mut handle) = reviewer();
    let (node, sent) = tokio::join!(
        reviewer.node_of("token-of-node-7"),
        answer(
            &mut handle,
            StatusCode::CREATED,
            authenticated(PROXY_USER, Some("node-7"), &["weft"])
        ),
    );
    assert_eq!(node, Ok("node-7".to_owned()));
    assert_eq!(sent["spec"]["token"], "token-of-node-7");
    assert_eq!(sent["spec"]["audiences"], json!(["weft"]));
    // Asked again within a minute: answered from the cache, no request (an
    // unanswered request would never complete).
    let again = tokio::time::timeout(Duration::from_secs(10), reviewer.node_of("token-of-node-7"))
        .await
        .expect("answered without asking the API server");
    assert_eq!(again, Ok("node-7".to_owned()));
}

#[tokio::test]
async fn tokens_that_are_not_a_node_proxys_pod_bound_token_for_weft_are_refused_naming_why() {
    let cases = [
        (
            json!({ "authenticated": false, "error": "token has expired" }),
            ReviewError::NotAuthenticated(Some("token has expired".into())),
        ),
        (
            authenticated("system:serviceaccount:shop:web", Some("node-1"), &["weft"]),
            ReviewError::WrongAccount {
                got: "system:serviceaccount:shop:web".into(),
                want: PROXY_USER.into(),
            },
        ),
        (
            authenticated(PROXY_USER, None, &["weft"]),
            ReviewError::NoNode,
        ),
        (
            authenticated(
                PROXY_USER,
                Some("node-1"),
                &["https://kubernetes.default.svc"],
            ),
            ReviewError::Audience("weft".into()),
        ),
    ];
    for (i, (status, want)) in cases.into_iter().enumerate() {
        let (reviewer, mut handle) = reviewer();
        let token = format!("token-{i}");
        let (got, _) = tokio::join!(
            reviewer.node_of(&token),
            answer(&mut handle, StatusCode::CREATED, status)
        );
        assert_eq!(got, Err(want.clone()), "case {i}");
        let text = want.to_string();
        assert!(!text.is_empty());
    }
    let no_node = ReviewError::NoNode.to_string();
    assert!(
        no_node.contains("authentication.kubernetes.io/node-name"),
        "{no_node}"
    );
}

#[tokio::test]
async fn an_api_server_failure_refuses_the_call_and_is_not_remembered() {
    let (reviewer, mut handle) = reviewer();
    let (got, _) = tokio::join!(
        reviewer.node_of("token"),
        answer(&mut handle, StatusCode::INTERNAL_SERVER_ERROR, Value::Null)
    );
    match got {
        Err(ReviewError::Api(e)) => assert!(e.contains("request timed out"), "{e}"),
        other => panic!("expected an API error, got {other:?}"),
    }
    // The next call asks again, and succeeds.
    let (got, _) = tokio::join!(
        reviewer.node_of("token"),
        answer(
            &mut handle,
            StatusCode::CREATED,
            authenticated(PROXY_USER, Some("node-2"), &["weft"])
        )
    );
    assert_eq!(got, Ok("node-2".to_owned()));
}
