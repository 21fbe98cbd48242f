//! Kubernetes mode against a scripted API server: kube's client talks to a
//! `tower-test` mock pair, and this file plays the API server: it answers
//! the watchers' LISTs and holds their WATCHes open to send events, answers
//! status PATCHes, and keeps every request so the tests can check exactly
//! what the controller asked for. See tests/README.md for what this cannot
//! prove.

use std::collections::{BTreeMap, HashMap};
use std::convert::Infallible;
use std::net::Ipv4Addr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Full, StreamBody};
use serde_json::{Value, json};
use tokio::sync::mpsc;
use weft_control::index::Check;
use weft_control::kube;
use weft_control::server::ControlPlane;
use weft_control::source::kubernetes::{CONTROLLER_NAME, run};

type Body = UnsyncBoxBody<Bytes, Infallible>;

const NAMESPACES: &str = "/api/v1/namespaces";
const PODS: &str = "/api/v1/pods";
const SERVICES: &str = "/api/v1/services";
const SLICES: &str = "/apis/discovery.k8s.io/v1/endpointslices";
const HTTPROUTES: &str = "/apis/gateway.networking.k8s.io/v1/httproutes";
const GRPCROUTES: &str = "/apis/gateway.networking.k8s.io/v1/grpcroutes";
const POLICIES: &str = "/apis/weft.io/v1alpha1/authorizationpolicies";

/// One request the controller made.
#[derive(Debug, Clone)]
struct Seen {
    method: Method,
    path: String,
    query: String,
    content_type: String,
    body: Value,
}

/// The scripted API server's state.
#[derive(Default)]
struct Api {
    /// What a LIST of each collection returns (absent: 404 Not Found).
    lists: HashMap<&'static str, Vec<Value>>,
    /// The open WATCH of each collection.
    watches: HashMap<String, mpsc::UnboundedSender<Value>>,
    seen: Vec<Seen>,
    /// The last resourceVersion given out.
    version: u64,
}

#[derive(Clone)]
struct Fake(Arc<Mutex<Api>>);

impl Fake {
    fn lock(&self) -> std::sync::MutexGuard<'_, Api> {
        self.0.lock().expect("the fake API server's lock")
    }

    fn set_list(&self, path: &'static str, items: Vec<Value>) {
        self.lock().lists.insert(path, items);
    }

    fn seen(&self) -> Vec<Seen> {
        self.lock().seen.clone()
    }

    fn patches(&self) -> Vec<Seen> {
        self.seen()
            .into_iter()
            .filter(|s| s.method == Method::PATCH)
            .collect()
    }

    /// Sends a watch event on the open WATCH of `path` (with a new
    /// resourceVersion, as the API server would).
    async fn event(&self, path: &str, kind: &str, mut object: Value) {
        let version = {
            let mut api = self.lock();
            api.version += 1;
            api.version
        };
        object["metadata"]["resourceVersion"] = json!(version.to_string());
        let tx = wait_for(&format!("an open watch of {path}"), || {
            self.lock().watches.get(path).cloned()
        })
        .await;
        tx.send(json!({ "type": kind, "object": object }))
            .expect("the watch is open");
    }

    /// Answers requests until the client goes away.
    async fn serve(
        self,
        mut handle: tower_test::mock::Handle<Request<kube::client::Body>, Response<Body>>,
    ) {
        while let Some((request, respond)) = handle.next_request().await {
            let method = request.method().clone();
            let path = request.uri().path().to_owned();
            let query = request.uri().query().unwrap_or_default().to_owned();
            let content_type = request
                .headers()
                .get(http::header::CONTENT_TYPE)
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default()
                .to_owned();
            let bytes = request
                .into_body()
                .collect_bytes()
                .await
                .expect("a request body");
            let body = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
            self.lock().seen.push(Seen {
                method: method.clone(),
                path: path.clone(),
                query: query.clone(),
                content_type,
                body: body.clone(),
            });
            let response = if method == Method::GET && query.contains("watch=true") {
                let (tx, rx) = mpsc::unbounded_channel::<Value>();
                self.lock().watches.insert(path.clone(), tx);
                let frames = futures::stream::unfold(rx, |mut rx| async move {
                    let event = rx.recv().await?;
                    let mut line = serde_json::to_vec(&event).expect("an event as JSON");
                    line.push(b'\n');
                    Some((
                        Ok::<_, Infallible>(http_body::Frame::data(Bytes::from(line))),
                        rx,
                    ))
                });
                Response::new(StreamBody::new(frames).boxed_unsync())
            } else if method == Method::GET {
                let items = self.lock().lists.get(path.as_str()).cloned();
                match items {
                    Some(items) => json_response(
                        StatusCode::OK,
                        &json!({
                            "apiVersion": "v1",
                            "kind": "List",
                            "metadata": { "resourceVersion": self.lock().version.to_string() },
                            "items": items,
                        }),
                    ),
                    None => json_response(
                        StatusCode::NOT_FOUND,
                        &json!({
                            "apiVersion": "v1", "kind": "Status", "metadata": {},
                            "status": "Failure", "reason": "NotFound", "code": 404,
                            "message": "the server could not find the requested resource",
                        }),
                    ),
                }
            } else if method == Method::PATCH && path.ends_with("/status") {
                json_response(StatusCode::OK, &self.patched(&path, &body))
            } else {
                json_response(StatusCode::METHOD_NOT_ALLOWED, &json!({}))
            };
            respond.send_response(response);
        }
    }

    /// Applies a status merge patch to the listed route it names and
    /// returns the route.
    fn patched(&self, path: &str, patch: &Value) -> Value {
        let name = path
            .trim_end_matches("/status")
            .rsplit('/')
            .next()
            .unwrap_or_default()
            .to_owned();
        let collection = if path.contains("/grpcroutes/") {
            GRPCROUTES
        } else {
            HTTPROUTES
        };
        let mut api = self.lock();
        let route = api
            .lists
            .get_mut(collection)
            .and_then(|items| items.iter_mut().find(|r| r["metadata"]["name"] == name))
            .expect("a PATCH names a listed route");
        route["status"] = patch["status"].clone();
        route.clone()
    }
}

fn json_response(status: StatusCode, body: &Value) -> Response<Body> {
    let mut response = Response::new(
        Full::new(Bytes::from(serde_json::to_vec(body).expect("JSON"))).boxed_unsync(),
    );
    *response.status_mut() = status;
    response
}

/// Polls `f` until it gives something (10 s at most).
async fn wait_for<T>(what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let mut tick = tokio::time::interval(Duration::from_millis(10));
    for _ in 0..1000 {
        tick.tick().await;
        if let Some(v) = f() {
            return v;
        }
    }
    panic!("gave up waiting for {what}");
}

fn namespace(name: &str) -> Value {
    json!({
        "apiVersion": "v1", "kind": "Namespace",
        "metadata": { "name": name, "labels": { "weft.io/mesh": "enabled" } },
    })
}

fn pod(name: &str, node: Option<&str>, ip: Option<&str>) -> Value {
    let mut p = json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {
            "name": name, "namespace": "default", "labels": { "app": "web" },
            "managedFields": [{ "manager": "kubelet", "operation": "Update" }],
        },
        "spec": { "containers": [{ "name": "app", "image": "web" }] },
        "status": { "phase": "Running" },
    });
    if let Some(node) = node {
        p["spec"]["nodeName"] = json!(node);
    }
    if let Some(ip) = ip {
        p["status"]["podIP"] = json!(ip);
    } else {
        p["status"]["phase"] = json!("Pending");
    }
    p
}

fn route(name: &str, rules: &Value) -> Value {
    json!({
        "apiVersion": "gateway.networking.k8s.io/v1", "kind": "HTTPRoute",
        "metadata": { "name": name, "namespace": "default", "generation": 3 },
        "spec": {
            "parentRefs": [
                { "group": "", "kind": "Service", "name": "web", "port": 80 },
                { "name": "some-gateway" },
            ],
            "rules": rules,
        },
    })
}

fn backend(service: &str) -> Value {
    json!([{ "kind": "Service", "name": service, "port": 80 }])
}

/// A cluster: namespace `default` (meshed), pods web-1 (n1), web-2 (n2) and
/// a pending one; service `web` (named target port `http`) whose slice has
/// web-1 ready and web-2 not; three routes (good, one with a backend that
/// does not exist, one with a bad regex); no GRPCRoutes; AuthorizationPolicy
/// not served (its CRD is not installed).
fn cluster(fake: &Fake) {
    fake.set_list(NAMESPACES, vec![namespace("default")]);
    fake.set_list(
        PODS,
        vec![
            pod("web-1", Some("n1"), Some("10.0.0.1")),
            pod("web-2", Some("n2"), Some("10.0.0.2")),
            pod("starting", None, None),
        ],
    );
    fake.set_list(
        SERVICES,
        vec![json!({
            "apiVersion": "v1", "kind": "Service",
            "metadata": { "name": "web", "namespace": "default" },
            "spec": {
                "clusterIP": "10.96.0.10",
                "selector": { "app": "web" },
                "ports": [{ "name": "http", "port": 80, "targetPort": "http" }],
            },
        })],
    );
    fake.set_list(
        SLICES,
        vec![json!({
            "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
            "metadata": {
                "name": "web-x7k2p", "namespace": "default",
                "labels": { "kubernetes.io/service-name": "web" },
            },
            "addressType": "IPv4",
            "ports": [{ "name": "http", "port": 8080, "protocol": "TCP" }],
            "endpoints": [
                { "addresses": ["10.0.0.1"], "conditions": { "ready": true } },
                { "addresses": ["10.0.0.2"], "conditions": { "ready": false } },
            ],
        })],
    );
    fake.set_list(
        HTTPROUTES,
        vec![
            route("good", &json!([{ "backendRefs": backend("web") }])),
            route(
                "dangling",
                &json!([{
                    "matches": [{ "path": { "type": "PathPrefix", "value": "/v2" } }],
                    "backendRefs": backend("web-v2"),
                }]),
            ),
            route(
                "badregex",
                &json!([{
                    "matches": [{ "path": { "type": "RegularExpression", "value": "/(" } }],
                    "backendRefs": backend("web"),
                }]),
            ),
        ],
    );
    fake.set_list(GRPCROUTES, vec![]);
}

/// A control plane following the scripted API server.
fn start() -> (Fake, Arc<ControlPlane>, tokio::task::JoinHandle<()>) {
    // RUST_LOG=debug shows what the watchers did when a test fails.
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
    let (service, handle) = tower_test::mock::pair::<Request<kube::client::Body>, Response<Body>>();
    let fake = Fake(Arc::new(Mutex::new(Api {
        version: 100,
        ..Api::default()
    })));
    cluster(&fake);
    tokio::spawn(fake.clone().serve(handle));
    let cp = ControlPlane::for_kubernetes();
    let follower = tokio::spawn(run(kube::Client::new(service, "default"), cp.clone()));
    (fake, cp, follower)
}

async fn published_version(cp: &ControlPlane, at_least: u64) -> u64 {
    wait_for(&format!("version {at_least}"), || {
        let v = cp.published().version;
        (v >= at_least).then_some(v)
    })
    .await
}

/// weft's entry of a route's status for the parent service, as patched.
fn conditions(patch: &Value) -> BTreeMap<String, (String, String)> {
    let parents = patch["status"]["parents"].as_array().expect("parents");
    assert_eq!(
        parents.len(),
        1,
        "one entry, for the Service parent only: {patch}"
    );
    assert_eq!(parents[0]["controllerName"], CONTROLLER_NAME);
    assert_eq!(parents[0]["parentRef"]["name"], "web");
    parents[0]["conditions"]
        .as_array()
        .expect("conditions")
        .iter()
        .map(|c| {
            assert_eq!(c["observedGeneration"], 3, "{c}");
            assert!(
                c["lastTransitionTime"]
                    .as_str()
                    .is_some_and(|t| t.ends_with('Z'))
            );
            (
                c["type"].as_str().unwrap_or_default().to_owned(),
                (
                    c["status"].as_str().unwrap_or_default().to_owned(),
                    c["reason"].as_str().unwrap_or_default().to_owned(),
                ),
            )
        })
        .collect()
}

#[tokio::test]
async fn the_world_is_published_after_every_kind_is_listed_with_endpoints_from_ready_slices() {
    let (fake, cp, follower) = start();
    assert_eq!(cp.published().version, 0, "nothing before the lists");
    published_version(&cp, 1).await;
    let world = cp.published().world;

    let lists: Vec<String> = fake
        .seen()
        .iter()
        .filter(|s| s.method == Method::GET && !s.query.contains("watch=true"))
        .map(|s| s.path.clone())
        .collect();
    for path in [
        NAMESPACES, PODS, SERVICES, SLICES, HTTPROUTES, GRPCROUTES, POLICIES,
    ] {
        assert!(
            lists.iter().any(|p| p == path),
            "a LIST of {path}: {lists:?}"
        );
    }

    let ips: Vec<Ipv4Addr> = world.workloads.keys().copied().collect();
    assert_eq!(
        ips,
        [Ipv4Addr::new(10, 0, 0, 1), Ipv4Addr::new(10, 0, 0, 2)],
        "the pending pod is not a workload"
    );
    let web = &world.services["default/web"];
    assert_eq!(
        web.endpoints,
        [Ipv4Addr::new(10, 0, 0, 1)],
        "only the ready endpoint"
    );
    assert_eq!(
        web.ports[0].target_port, 8080,
        "the named port, from the slice"
    );
    let routes: Vec<&str> = world.routes.keys().map(String::as_str).collect();
    assert_eq!(
        routes,
        ["HTTPRoute/default/dangling", "HTTPRoute/default/good"],
        "the route with a bad regex is left out; the one with a missing backend stays"
    );
    assert!(
        cp.apply(&[("x.yaml".into(), String::new())], false, Check::Strict)
            .expect_err("apply is refused")
            .to_string()
            .contains("follows the Kubernetes API")
    );
    follower.abort();
}

#[tokio::test]
async fn routes_get_accepted_and_resolved_refs_for_their_service_parent_written_once() {
    let (fake, cp, follower) = start();
    published_version(&cp, 1).await;
    let patches = wait_for("three status patches", || {
        let p = fake.patches();
        (p.len() >= 3).then_some(p)
    })
    .await;
    let by_route: BTreeMap<String, Seen> =
        patches.into_iter().map(|p| (p.path.clone(), p)).collect();
    let at = |name: &str| {
        let path = format!(
            "/apis/gateway.networking.k8s.io/v1/namespaces/default/httproutes/{name}/status"
        );
        let seen = by_route
            .get(&path)
            .unwrap_or_else(|| panic!("a PATCH of {path}: {:?}", by_route.keys()));
        assert_eq!(seen.content_type, "application/merge-patch+json");
        conditions(&seen.body)
    };
    let pair = |s: &str, r: &str| (s.to_owned(), r.to_owned());
    let good = at("good");
    assert_eq!(good["Accepted"], pair("True", "Accepted"));
    assert_eq!(good["ResolvedRefs"], pair("True", "ResolvedRefs"));
    let dangling = at("dangling");
    assert_eq!(dangling["Accepted"], pair("True", "Accepted"));
    assert_eq!(dangling["ResolvedRefs"], pair("False", "BackendNotFound"));
    let bad = at("badregex");
    assert_eq!(bad["Accepted"], pair("False", "UnsupportedValue"));

    // The API server sends the routes back with their new status; weft
    // does not write them again.
    let written = fake.lock().lists[HTTPROUTES].clone();
    for r in written {
        fake.event(HTTPROUTES, "MODIFIED", r).await;
    }
    // A new route after them on the same watch, sorting after them too:
    // once its status is written, a second write of theirs would be seen.
    let last = route("zz-last", &json!([{ "backendRefs": backend("web") }]));
    fake.lock()
        .lists
        .get_mut(HTTPROUTES)
        .expect("routes")
        .push(last.clone());
    fake.event(HTTPROUTES, "ADDED", last).await;
    let patches = wait_for("the new route's status", || {
        let p = fake.patches();
        (p.len() >= 4).then_some(p)
    })
    .await;
    let paths: Vec<&str> = patches.iter().map(|p| p.path.as_str()).collect();
    assert_eq!(paths.len(), 4, "no status written twice: {paths:?}");
    assert!(paths[3].ends_with("/zz-last/status"), "{paths:?}");
    follower.abort();
}

#[tokio::test]
async fn watch_events_add_and_delete_workloads_and_fix_a_route() {
    let (fake, cp, follower) = start();
    let v1 = published_version(&cp, 1).await;
    fake.event(PODS, "DELETED", pod("web-1", Some("n1"), Some("10.0.0.1")))
        .await;
    published_version(&cp, v1 + 1).await;
    let world = cp.published().world;
    assert!(!world.workloads.contains_key(&Ipv4Addr::new(10, 0, 0, 1)));

    // The bad route is fixed with kubectl: it joins the world.
    let mut fixed = route(
        "badregex",
        &json!([{
            "matches": [{ "path": { "type": "RegularExpression", "value": "/v[0-9]+" } }],
            "backendRefs": [{ "kind": "Service", "name": "web", "port": 80 }],
        }]),
    );
    fixed["metadata"]["generation"] = json!(4);
    fake.event(HTTPROUTES, "MODIFIED", fixed).await;
    wait_for("the fixed route in the world", || {
        cp.published()
            .world
            .routes
            .contains_key("HTTPRoute/default/badregex")
            .then_some(())
    })
    .await;
    follower.abort();
}

#[tokio::test]
async fn a_410_gone_on_a_watch_relists_and_forgets_objects_deleted_meanwhile() {
    let (fake, cp, follower) = start();
    published_version(&cp, 1).await;
    let pod_lists = || {
        fake.seen()
            .iter()
            .filter(|s| s.path == PODS && !s.query.contains("watch=true"))
            .count()
    };
    assert_eq!(pod_lists(), 1);
    // web-2 is deleted while the watch is away; the watch then expires.
    fake.set_list(PODS, vec![pod("web-1", Some("n1"), Some("10.0.0.1"))]);
    fake.event(
        PODS,
        "ERROR",
        json!({
            "apiVersion": "v1", "kind": "Status", "metadata": {},
            "status": "Failure", "reason": "Expired", "code": 410,
            "message": "too old resource version: 100 (200)",
        }),
    )
    .await;
    wait_for("web-2 gone after the relist", || {
        (!cp.published()
            .world
            .workloads
            .contains_key(&Ipv4Addr::new(10, 0, 0, 2)))
        .then_some(())
    })
    .await;
    assert_eq!(pod_lists(), 2, "one more LIST of pods");
    assert!(
        cp.published()
            .world
            .workloads
            .contains_key(&Ipv4Addr::new(10, 0, 0, 1))
    );
    follower.abort();
}
