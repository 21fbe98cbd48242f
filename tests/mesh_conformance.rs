//! The Gateway API Mesh-profile conformance tests, one test each (named
//! after its upstream ShortName), re-expressed for the lab with a Service
//! parent: the upstream base (`tests/conformance/mesh.yaml`: services echo,
//! echo-v1, echo-v2 with upstream's ports; echo-v1 on the clients' node,
//! echo-v2 on the other, so every test reaches a same-node and a
//! cross-node backend), the upstream routes, and the upstream request
//! cases with their expected backend, status and headers. Where upstream's
//! harness leaves a declared expectation unchecked (the path the backend
//! got, the redirect `Location`), these tests check it.
//!
//! Cluster IPs stand in for DNS names (`echo` is 198.19.1.10, `echo-v1`
//! .11, `echo-v2` .12); requests that upstream sends to `http://echo/…`
//! carry `Host: echo`.

mod support;

use std::time::Duration;

use serde_json::Value;
use support::{LabGuard, apply_ok, success_stdout, up_with, weft};

const TOPOLOGY: &str = include_str!("conformance/mesh.yaml");

const ECHO: &str = "198.19.1.10";
const ECHO_V1: &str = "198.19.1.11";
const ECHO_V2: &str = "198.19.1.12";
const V1: &str = "mesh/echo-v1";
const V2: &str = "mesh/echo-v2";
const GRPC_ECHO: &str = "gateway_api_conformance.echo_basic.grpcecho.GrpcEcho";

/// Runs `command` in pod `client` of the lab.
fn exec(lab: &LabGuard, client: &str, command: &[&str]) -> String {
    let mut all = vec!["lab", "exec", "--name", lab.arg(), client, "--"];
    all.extend_from_slice(command);
    success_stdout(&command.join(" "), &weft(&all))
}

/// One HTTP request from `client` to `url` (client flags `args`): the
/// client's JSON for it.
fn request(lab: &LabGuard, client: &str, url: &str, args: &[&str]) -> Value {
    let mut cmd = vec!["weft", "lab", "app", "client", url, "--json"];
    cmd.extend_from_slice(args);
    let out = exec(lab, client, &cmd);
    serde_json::from_str(out.lines().next().expect("an answer")).expect("JSON")
}

/// Sends the request until `ok` holds for its answer (a route takes a
/// moment to reach the proxies), at most 10 s; the answer.
fn until(
    lab: &LabGuard,
    client: &str,
    url: &str,
    args: &[&str],
    mut ok: impl FnMut(&Value) -> bool,
) -> Value {
    let mut last = Value::Null;
    let got = weft_lab::wait_until(Duration::from_secs(10), Duration::from_millis(100), || {
        let v = request(lab, client, url, args);
        let pass = ok(&v);
        last = v.clone();
        pass.then_some(v)
    });
    got.unwrap_or_else(|| panic!("{url} {args:?}: not as expected within 10 s; last: {last}"))
}

/// The pod that answered.
fn pod(v: &Value) -> &str {
    v["headers"]["x-weft-served-by"][0].as_str().unwrap_or("")
}

/// Every value of a request header as the backend saw it, joined with `,`
/// (as upstream compares them); `None` when absent.
fn seen(v: &Value, name: &str) -> Option<String> {
    let values = v["body"]["headers"][name.to_ascii_lowercase()].as_array()?;
    Some(
        values
            .iter()
            .filter_map(Value::as_str)
            .collect::<Vec<_>>()
            .join(","),
    )
}

/// The first value of a response header.
fn response_header<'a>(v: &'a Value, name: &str) -> Option<&'a str> {
    v["headers"][name.to_ascii_lowercase()][0].as_str()
}

/// Expects `GET url` from `client` (with `args`) to be answered 200 by
/// `backend` with the path `path` (when given) at the backend: the answer.
fn expect_backend(
    lab: &LabGuard,
    client: &str,
    url: &str,
    args: &[&str],
    backend: &str,
    path: Option<&str>,
) -> Value {
    until(lab, client, url, args, |v| {
        v["status"] == 200 && pod(v) == backend && path.is_none_or(|p| v["body"]["path"] == p)
    })
}

/// `count` requests on one connection: the answers per pod and per status.
fn batch(lab: &LabGuard, url: &str, count: usize) -> Value {
    let count = count.to_string();
    let out = exec(
        lab,
        "mesh/client",
        &[
            "weft",
            "lab",
            "app",
            "client",
            url,
            "--json",
            "--count",
            &count,
            "--timeout",
            "60",
        ],
    );
    let last = out.lines().last().expect("a summary");
    serde_json::from_str::<Value>(last).expect("JSON")["summary"].clone()
}

/// Checks a 70/30 split over 500 requests as upstream does: only the two
/// backends answer, each within 5 points of its share; up to 10 batches.
fn seventy_thirty(summary_of: impl Fn() -> Value) {
    let mut last = Value::Null;
    for _ in 0..10 {
        let s = summary_of();
        let v1 = s["pods"][V1].as_u64().unwrap_or(0);
        let v2 = s["pods"][V2].as_u64().unwrap_or(0);
        if v1 + v2 == 500 && (325..=375).contains(&v1) && (125..=175).contains(&v2) {
            return;
        }
        last = s;
    }
    panic!("no batch of 500 split 70/30 within 5 points; last: {last}");
}

/// Applies `yaml` (a route) to the lab.
fn routes(lab: &LabGuard, yaml: &str) {
    apply_ok(lab, "conformance.yaml", yaml);
}

/// An HTTPRoute in namespace `mesh` on Service `parent` (at `port`, or
/// every port) with `rules` (YAML).
fn http_route(name: &str, parent: &str, port: Option<u16>, rules: &str) -> String {
    let port = port.map_or(String::new(), |p| format!(", port: {p}"));
    format!(
        "apiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {{name: {name}, namespace: mesh}}\n\
         spec:\n  parentRefs: [{{group: \"\", kind: Service, name: {parent}{port}}}]\n  rules:\n{rules}---\n"
    )
}

#[test]
fn mesh_basic() {
    let lab = up_with('b', TOPOLOGY);
    let v = until(&lab, "mesh/client", &format!("http://{ECHO}/"), &[], |v| {
        v["status"] == 200
    });
    assert!([V1, V2].contains(&pod(&v)), "{v}");
}

#[test]
fn mesh_consumer_route() {
    let lab = up_with('c', TOPOLOGY);
    // A consumer route per echo-v1 (same node) and echo-v2 (cross node).
    let consumer = |svc: &str| {
        format!(
            "apiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {{name: add-header-{svc}, namespace: consumer}}\n\
             spec:\n  parentRefs: [{{group: \"\", kind: Service, name: {svc}, namespace: mesh}}]\n\
             \x20 rules:\n    - filters: [{{type: ResponseHeaderModifier, responseHeaderModifier: {{set: [{{name: X-Header-Set, value: set}}]}}}}]\n\
             \x20     backendRefs: [{{name: {svc}, namespace: mesh, port: 80}}]\n---\n"
        )
    };
    routes(&lab, &(consumer("echo-v1") + &consumer("echo-v2")));
    for (ip, backend) in [(ECHO_V1, V1), (ECHO_V2, V2)] {
        let url = format!("http://{ip}/");
        // A client in the route's namespace gets the header.
        until(&lab, "consumer/client", &url, &[], |v| {
            v["status"] == 200
                && pod(v) == backend
                && response_header(v, "x-header-set") == Some("set")
        });
        // One in the service's namespace does not.
        let v = request(&lab, "mesh/client", &url, &[]);
        assert_eq!(v["status"], 200, "{v}");
        assert_eq!(pod(&v), backend, "{v}");
        assert_eq!(response_header(&v, "x-header-set"), None, "{v}");
    }
}

/// Routes on echo-v1 and echo-v2 (every port) that set `X-Header-Set` to
/// `v1` and `v2` on the response.
fn frontend_routes() -> String {
    let one = |svc: &str, value: &str| {
        http_route(
            &format!("frontend-{svc}"),
            svc,
            None,
            &format!(
                "    - filters: [{{type: ResponseHeaderModifier, responseHeaderModifier: {{set: [{{name: X-Header-Set, value: {value}}}]}}}}]\n\
                 \x20     backendRefs: [{{name: {svc}, port: 80}}]\n"
            ),
        )
    };
    one("echo-v1", "v1") + &one("echo-v2", "v2")
}

/// A pod's address.
fn pod_ip(lab: &LabGuard, key: &str) -> String {
    let status = support::labs().status(&lab.name).expect("status");
    status.pod(key).expect("the pod").ip.to_string()
}

#[test]
fn mesh_frontend() {
    let lab = up_with('f', TOPOLOGY);
    routes(&lab, &frontend_routes());
    for (ip, backend, value) in [(ECHO_V1, V1, "v1"), (ECHO_V2, V2, "v2")] {
        // To the service: the route applies.
        until(&lab, "mesh/client", &format!("http://{ip}/"), &[], |v| {
            pod(v) == backend && response_header(v, "x-header-set") == Some(value)
        });
        // To the pod's own address: it does not.
        let v = request(
            &lab,
            "mesh/client",
            &format!("http://{}:8080/", pod_ip(&lab, backend)),
            &[],
        );
        assert_eq!(v["status"], 200, "{v}");
        assert_eq!(pod(&v), backend, "{v}");
        assert_eq!(response_header(&v, "x-header-set"), None, "{v}");
    }
}

#[test]
fn mesh_frontend_hostname() {
    let lab = up_with('h', TOPOLOGY);
    routes(&lab, &frontend_routes());
    // The destination address decides, never the Host header.
    for (ip, host, backend, value) in [
        (ECHO_V2, "echo-v1", V2, "v2"),
        (ECHO_V1, "echo-v2", V1, "v1"),
    ] {
        let v = until(
            &lab,
            "mesh/client",
            &format!("http://{ip}/"),
            &["--host", host],
            |v| {
                v["status"] == 200
                    && pod(v) == backend
                    && response_header(v, "x-header-set") == Some(value)
            },
        );
        assert_eq!(v["body"]["host"], host, "the Host header is kept: {v}");
    }
}

#[test]
fn mesh_ports() {
    let lab = up_with('p', TOPOLOGY);
    let one = |svc: &str, port: Option<u16>, value: &str| {
        http_route(
            &format!("ports-{svc}"),
            svc,
            port,
            &format!(
                "    - filters: [{{type: ResponseHeaderModifier, responseHeaderModifier: {{set: [{{name: X-Header-Set, value: {value}}}]}}}}]\n\
                 \x20     backendRefs: [{{name: {svc}, port: 80}}]\n"
            ),
        )
    };
    routes(
        &lab,
        &(one("echo-v1", Some(80), "v1") + &one("echo-v2", None, "v2")),
    );
    for (url, backend, value) in [
        (format!("http://{ECHO_V1}/"), V1, Some("v1")),
        (format!("http://{ECHO_V1}:8080/"), V1, None),
        (format!("http://{ECHO_V2}/"), V2, Some("v2")),
        (format!("http://{ECHO_V2}:8080/"), V2, Some("v2")),
    ] {
        until(&lab, "mesh/client", &url, &[], |v| {
            v["status"] == 200 && pod(v) == backend && response_header(v, "x-header-set") == value
        });
    }
}

#[test]
fn mesh_traffic_split() {
    let lab = up_with('s', TOPOLOGY);
    routes(
        &lab,
        &http_route(
            "mesh-split",
            "echo",
            None,
            "    - matches: [{path: {type: Exact, value: /v1}}]\n      backendRefs: [{name: echo-v1, port: 80}]\n\
             \x20   - matches: [{path: {type: Exact, value: /v2}}]\n      backendRefs: [{name: echo-v2, port: 80}]\n",
        ),
    );
    for (path, backend) in [("/v1", V1), ("/v2", V2)] {
        let url = format!("http://{ECHO}{path}");
        // Three in a row, as upstream asks.
        for _ in 0..3 {
            expect_backend(&lab, "mesh/client", &url, &[], backend, Some(path));
        }
    }
}

#[test]
fn mesh_http_route_matching() {
    let lab = up_with('m', TOPOLOGY);
    routes(
        &lab,
        &http_route(
            "mesh-matching",
            "echo",
            Some(80),
            "    - matches: [{path: {type: PathPrefix, value: /}}, {headers: [{name: version, value: one}]}]\n\
             \x20     backendRefs: [{name: echo-v1, port: 8080}]\n\
             \x20   - matches: [{path: {type: PathPrefix, value: /v2}}, {headers: [{name: version, value: two}]}]\n\
             \x20     backendRefs: [{name: echo-v2, port: 8080}]\n",
        ),
    );
    for (path, header, backend) in [
        ("/", None, V1),
        ("/example", None, V1),
        ("/", Some("Version: one"), V1),
        ("/v2", None, V2),
        ("/v2/example", None, V2),
        ("/", Some("Version: two"), V2),
        ("/v2/", None, V2),
        ("/v2example", None, V1),
        ("/foo/v2/example", None, V1),
    ] {
        let args: Vec<&str> = header.map_or(vec![], |h| vec!["--header", h]);
        expect_backend(
            &lab,
            "mesh/client",
            &format!("http://{ECHO}{path}"),
            &args,
            backend,
            Some(path),
        );
    }
}

#[test]
fn mesh_http_route_query_param_matching() {
    let lab = up_with('q', TOPOLOGY);
    let rule = |matches: &str, svc: &str| {
        format!("    - matches: {matches}\n      backendRefs: [{{name: {svc}, port: 8080}}]\n")
    };
    let q = |value: &str| format!("queryParams: [{{name: animal, value: {value}}}]");
    let rules = [
        rule(&format!("[{{{}}}]", q("whale")), "echo-v1"),
        rule(&format!("[{{{}}}]", q("dolphin")), "echo-v2"),
        rule(&format!("[{{path: {{type: PathPrefix, value: /path1}}, {}}}]", q("whale")), "echo-v1"),
        rule(&format!("[{{headers: [{{name: version, value: one}}], {}}}]", q("whale")), "echo-v2"),
        rule(
            &format!(
                "[{{path: {{type: PathPrefix, value: /path3}}, {}}}, {{path: {{type: PathPrefix, value: /path4}}, headers: [{{name: version, value: three}}], {}}}]",
                q("shark"),
                q("kraken")
            ),
            "echo-v1",
        ),
        rule("[{path: {type: PathPrefix, value: /path5}}]", "echo-v1"),
        rule(&format!("[{{{}}}]", q("hydra")), "echo-v2"),
    ]
    .concat();
    routes(
        &lab,
        &http_route("mesh-query-param-matching", "echo", Some(80), &rules),
    );
    for (target, header, backend) in [
        ("/?animal=whale", None, Some(V1)),
        ("/?animal=dolphin", None, Some(V2)),
        ("/?animal=whale&otherparam=irrelevant", None, Some(V1)),
        ("/?animal=dolphin&color=yellow", None, Some(V2)),
        ("/?color=blue", None, None),
        ("/?animal=dog", None, None),
        ("/?animal=whaledolphin", None, None),
        ("/", None, None),
        ("/path1?animal=whale", None, Some(V1)),
        ("/?animal=whale", Some("version: one"), Some(V2)),
        ("/path3?animal=shark", None, Some(V1)),
        ("/path4?animal=kraken", Some("version: three"), Some(V1)),
        ("/?animal=shark", None, None),
        ("/path4?animal=kraken", None, None),
        ("/path5?animal=hydra", None, Some(V1)),
    ] {
        let args: Vec<&str> = header.map_or(vec![], |h| vec!["--header", h]);
        let url = format!("http://{ECHO}{target}");
        match backend {
            Some(b) => {
                expect_backend(&lab, "mesh/client", &url, &args, b, None);
            }
            // The mesh answers 404 itself: no fall-through to the pods.
            None => {
                until(&lab, "mesh/client", &url, &args, |v| {
                    v["status"] == 404 && response_header(v, "x-weft-proxy") == Some("local-reply")
                });
            }
        }
    }
}

/// The header-modifier rules of upstream's test, each sending to
/// `backend`; with `on_backend` the filters sit on the backendRef.
fn header_modifier_rules(backend: &str, on_backend: bool) -> String {
    let rule = |prefix: &str, modifier: &str| {
        let filters =
            format!("[{{type: RequestHeaderModifier, requestHeaderModifier: {modifier}}}]");
        if on_backend {
            format!(
                "    - matches: [{{path: {{type: PathPrefix, value: {prefix}}}}}]\n      backendRefs: [{{name: {backend}, port: 8080, filters: {filters}}}]\n"
            )
        } else {
            format!(
                "    - matches: [{{path: {{type: PathPrefix, value: {prefix}}}}}]\n      filters: {filters}\n      backendRefs: [{{name: {backend}, port: 8080}}]\n"
            )
        }
    };
    [
        rule("/set", "{set: [{name: X-Header-Set, value: set-overwrites-values}]}"),
        rule("/add", "{add: [{name: X-Header-Add, value: add-appends-values}]}"),
        rule("/remove", "{remove: [X-Header-Remove]}"),
        rule(
            "/multiple",
            "{set: [{name: X-Header-Set-1, value: header-set-1}, {name: X-Header-Set-2, value: header-set-2}], \
             add: [{name: X-Header-Add-1, value: header-add-1}, {name: X-Header-Add-2, value: header-add-2}, {name: X-Header-Add-3, value: header-add-3}], \
             remove: [X-Header-Remove-1, X-Header-Remove-2]}",
        ),
        rule(
            "/case-insensitivity",
            "{set: [{name: X-Header-Set, value: header-set}], add: [{name: X-Header-Add, value: header-add}], remove: [X-Header-Remove]}",
        ),
    ]
    .concat()
}

/// Upstream's header-modifier cases against `echo` port 80 (routed to
/// echo-v1, same node) and port 8080 (routed to echo-v2, cross node).
fn header_modifier_cases(lab: &LabGuard) {
    type Case<'a> = (
        &'a str,
        &'a [&'a str],
        &'a [(&'a str, &'a str)],
        &'a [&'a str],
    );
    let cases: [Case<'_>; 7] = [
        (
            "/set",
            &["Some-Other-Header: val"],
            &[
                ("Some-Other-Header", "val"),
                ("X-Header-Set", "set-overwrites-values"),
            ],
            &[],
        ),
        (
            "/set",
            &["Some-Other-Header: val", "X-Header-Set: some-other-value"],
            &[
                ("Some-Other-Header", "val"),
                ("X-Header-Set", "set-overwrites-values"),
            ],
            &[],
        ),
        (
            "/add",
            &["Some-Other-Header: val"],
            &[
                ("Some-Other-Header", "val"),
                ("X-Header-Add", "add-appends-values"),
            ],
            &[],
        ),
        (
            "/add",
            &["Some-Other-Header: val", "X-Header-Add: some-other-value"],
            &[
                ("Some-Other-Header", "val"),
                ("X-Header-Add", "some-other-value,add-appends-values"),
            ],
            &[],
        ),
        (
            "/remove",
            &["X-Header-Remove: val"],
            &[],
            &["X-Header-Remove"],
        ),
        (
            "/multiple",
            &[
                "X-Header-Set-2: set-val-2",
                "X-Header-Add-2: add-val-2",
                "X-Header-Remove-2: remove-val-2",
                "Another-Header: another-header-val",
            ],
            &[
                ("X-Header-Set-1", "header-set-1"),
                ("X-Header-Set-2", "header-set-2"),
                ("X-Header-Add-1", "header-add-1"),
                ("X-Header-Add-2", "add-val-2,header-add-2"),
                ("X-Header-Add-3", "header-add-3"),
                ("Another-Header", "another-header-val"),
            ],
            &["X-Header-Remove-1", "X-Header-Remove-2"],
        ),
        (
            "/case-insensitivity",
            &[
                "x-header-set: original-val-set",
                "x-header-add: original-val-add",
                "x-header-remove: original-val-remove",
                "Another-Header: another-header-val",
            ],
            &[
                ("X-Header-Set", "header-set"),
                ("X-Header-Add", "original-val-add,header-add"),
                ("Another-Header", "another-header-val"),
            ],
            &["X-Header-Remove"],
        ),
    ];
    for (port, backend) in [(80, V1), (8080, V2)] {
        for (path, sent, want, gone) in cases {
            let args: Vec<&str> = sent.iter().flat_map(|h| ["--header", h]).collect();
            let url = format!("http://{ECHO}:{port}{path}");
            let v = expect_backend(lab, "mesh/client", &url, &args, backend, Some(path));
            for (name, value) in want {
                assert_eq!(seen(&v, name).as_deref(), Some(*value), "{url} {name}: {v}");
            }
            for name in gone {
                assert_eq!(seen(&v, name), None, "{url} {name} is removed: {v}");
            }
        }
    }
}

/// Upstream's route on echo port 80 (to `v1`), and the same on port 8080
/// (to `v2`), with `rules` from `rules_for(backend)`.
fn both_ports(name: &str, rules_for: impl Fn(&str) -> String) -> String {
    http_route(name, "echo", Some(80), &rules_for("echo-v1"))
        + &http_route(
            &format!("{name}-alt"),
            "echo",
            Some(8080),
            &rules_for("echo-v2"),
        )
}

#[test]
fn mesh_http_route_request_header_modifier() {
    let lab = up_with('r', TOPOLOGY);
    routes(
        &lab,
        &both_ports("mesh-request-header-modifier", |b| {
            header_modifier_rules(b, false)
        }),
    );
    header_modifier_cases(&lab);
}

#[test]
fn mesh_http_route_backend_request_header_modifier() {
    let lab = up_with('k', TOPOLOGY);
    routes(
        &lab,
        &both_ports("mesh-request-header-modifier", |b| {
            header_modifier_rules(b, true)
        }),
    );
    header_modifier_cases(&lab);
}

#[test]
fn mesh_http_route_simple_same_namespace() {
    let lab = up_with('n', TOPOLOGY);
    routes(
        &lab,
        &both_ports("gateway-conformance-mesh-test", |b| {
            format!("    - backendRefs: [{{name: {b}, port: 8080}}]\n")
        }),
    );
    for (port, backend) in [(80, V1), (8080, V2)] {
        let url = format!("http://{ECHO}:{port}/");
        for _ in 0..3 {
            expect_backend(&lab, "mesh/client", &url, &[], backend, Some("/"));
        }
    }
}

#[test]
fn mesh_http_route_rewrite_path() {
    let lab = up_with('w', TOPOLOGY);
    let modify = "{type: RequestHeaderModifier, requestHeaderModifier: {set: [{name: X-Header-Set, value: set-overwrites-values}], \
                  add: [{name: X-Header-Add, value: header-val-1}, {name: X-Header-Add-Append, value: header-val-2}], remove: [X-Header-Remove]}}";
    routes(
        &lab,
        &both_ports("mesh-rewrite-path", |b| {
            let rule = |prefix: &str, filters: &str| {
                format!(
                    "    - matches: [{{path: {{type: PathPrefix, value: {prefix}}}}}]\n      filters: [{filters}]\n      backendRefs: [{{name: {b}, port: 80}}]\n"
                )
            };
            let prefix = |to: &str| {
                format!(
                    "{{type: URLRewrite, urlRewrite: {{path: {{type: ReplacePrefixMatch, replacePrefixMatch: {to}}}}}}}"
                )
            };
            let full = |to: &str| {
                format!(
                    "{{type: URLRewrite, urlRewrite: {{path: {{type: ReplaceFullPath, replaceFullPath: {to}}}}}}}"
                )
            };
            [
                rule("/prefix/one", &prefix("/one")),
                rule("/strip-prefix", &prefix("/")),
                rule("/full/one", &full("/one")),
                rule(
                    "/full/rewrite-path-and-modify-headers",
                    &format!("{}, {modify}", full("/test")),
                ),
                rule(
                    "/prefix/rewrite-path-and-modify-headers",
                    &format!("{}, {modify}", prefix("/prefix")),
                ),
            ]
            .concat()
        }),
    );
    let with_headers = [
        "--header",
        "X-Header-Remove: remove-val",
        "--header",
        "X-Header-Add-Append: append-val-1",
        "--header",
        "X-Header-Set: set-val",
    ];
    for (port, backend) in [(80, V1), (8080, V2)] {
        for (path, args, got) in [
            ("/prefix/one/two", &[][..], "/one/two"),
            ("/strip-prefix/three", &[], "/three"),
            ("/strip-prefix", &[], "/"),
            ("/full/one/two", &[], "/one"),
            (
                "/full/rewrite-path-and-modify-headers/test",
                &with_headers[..],
                "/test",
            ),
            (
                "/prefix/rewrite-path-and-modify-headers/one",
                &with_headers[..],
                "/prefix/one",
            ),
        ] {
            let url = format!("http://{ECHO}:{port}{path}");
            let v = expect_backend(&lab, "mesh/client", &url, args, backend, Some(got));
            if !args.is_empty() {
                assert_eq!(
                    seen(&v, "X-Header-Add").as_deref(),
                    Some("header-val-1"),
                    "{v}"
                );
                assert_eq!(
                    seen(&v, "X-Header-Add-Append").as_deref(),
                    Some("append-val-1,header-val-2"),
                    "{v}"
                );
                assert_eq!(
                    seen(&v, "X-Header-Set").as_deref(),
                    Some("set-overwrites-values"),
                    "{v}"
                );
                assert_eq!(seen(&v, "X-Header-Remove"), None, "{v}");
            }
        }
    }
}

/// Applies a route of redirect rules on echo port 80 and checks each case:
/// (request path, `requestRedirect` YAML, status, `Location`), requests
/// sent with `Host: echo` as upstream's are.
fn redirects(tag: char, name: &str, cases: &[(&str, &str, u16, &str)]) {
    let lab = up_with(tag, TOPOLOGY);
    let rules: String = cases
        .iter()
        .map(|(path, redirect, _, _)| {
            format!(
                "    - matches: [{{path: {{type: PathPrefix, value: {path}}}}}]\n      filters: [{{type: RequestRedirect, requestRedirect: {redirect}}}]\n"
            )
        })
        .collect();
    routes(&lab, &http_route(name, "echo", Some(80), &rules));
    for (path, _, status, location) in cases {
        until(
            &lab,
            "mesh/client",
            &format!("http://{ECHO}{path}"),
            &["--host", "echo"],
            |v| v["status"] == *status && response_header(v, "location") == Some(location),
        );
    }
}

#[test]
fn mesh_http_route_redirect_host_and_status() {
    redirects(
        'a',
        "mesh-redirect-host-and-status",
        &[
            (
                "/hostname-redirect",
                "{hostname: example.org}",
                302,
                "http://example.org/hostname-redirect",
            ),
            (
                "/host-and-status",
                "{statusCode: 301, hostname: example.org}",
                301,
                "http://example.org/host-and-status",
            ),
        ],
    );
}

#[test]
fn mesh_http_route_303_redirect() {
    redirects(
        '3',
        "mesh-303-redirect",
        &[(
            "/redirect",
            "{statusCode: 303}",
            303,
            "http://echo/redirect",
        )],
    );
}

#[test]
fn mesh_http_route_307_redirect() {
    redirects(
        '7',
        "mesh-307-redirect",
        &[(
            "/temporary",
            "{statusCode: 307}",
            307,
            "http://echo/temporary",
        )],
    );
}

#[test]
fn mesh_http_route_308_redirect() {
    redirects(
        '8',
        "mesh-308-redirect",
        &[(
            "/permanent",
            "{statusCode: 308}",
            308,
            "http://echo/permanent",
        )],
    );
}

#[test]
fn mesh_http_route_redirect_path() {
    redirects(
        'd',
        "mesh-redirect-path",
        &[
            (
                "/original-prefix",
                "{path: {type: ReplacePrefixMatch, replacePrefixMatch: /replacement-prefix}}",
                302,
                "http://echo/replacement-prefix",
            ),
            (
                "/full",
                "{path: {type: ReplaceFullPath, replaceFullPath: /full-path-replacement}}",
                302,
                "http://echo/full-path-replacement",
            ),
            (
                "/path-and-host",
                "{hostname: example.org, path: {type: ReplacePrefixMatch, replacePrefixMatch: /replacement-prefix}}",
                302,
                "http://example.org/replacement-prefix",
            ),
            (
                "/path-and-status",
                "{path: {type: ReplacePrefixMatch, replacePrefixMatch: /replacement-prefix}, statusCode: 301}",
                301,
                "http://echo/replacement-prefix",
            ),
            (
                "/full-path-and-host",
                "{hostname: example.org, path: {type: ReplaceFullPath, replaceFullPath: /replacement-full}}",
                302,
                "http://example.org/replacement-full",
            ),
            (
                "/full-path-and-status",
                "{path: {type: ReplaceFullPath, replaceFullPath: /replacement-full}, statusCode: 301}",
                301,
                "http://echo/replacement-full",
            ),
        ],
    );
    // Upstream also sends a longer path under a replaced prefix.
    let lab = up_with('e', TOPOLOGY);
    routes(
        &lab,
        &http_route(
            "mesh-redirect-path",
            "echo",
            Some(80),
            "    - matches: [{path: {type: PathPrefix, value: /original-prefix}}]\n      filters: [{type: RequestRedirect, requestRedirect: {path: {type: ReplacePrefixMatch, replacePrefixMatch: /replacement-prefix}}}]\n\
             \x20   - matches: [{path: {type: PathPrefix, value: /full}}]\n      filters: [{type: RequestRedirect, requestRedirect: {path: {type: ReplaceFullPath, replaceFullPath: /full-path-replacement}}}]\n",
        ),
    );
    for (path, location) in [
        (
            "/original-prefix/lemon",
            "http://echo/replacement-prefix/lemon",
        ),
        ("/full/path/original", "http://echo/full-path-replacement"),
    ] {
        until(
            &lab,
            "mesh/client",
            &format!("http://{ECHO}{path}"),
            &["--host", "echo"],
            |v| v["status"] == 302 && response_header(v, "location") == Some(location),
        );
    }
}

#[test]
fn mesh_http_route_redirect_port() {
    redirects(
        'o',
        "mesh-redirect-port",
        &[
            ("/port", "{port: 8083}", 302, "http://echo:8083/port"),
            (
                "/port-and-host",
                "{hostname: example.org, port: 8083}",
                302,
                "http://example.org:8083/port-and-host",
            ),
            (
                "/port-and-status",
                "{port: 8083, statusCode: 301}",
                301,
                "http://echo:8083/port-and-status",
            ),
            (
                "/port-and-host-and-status",
                "{port: 8083, hostname: example.org, statusCode: 302}",
                302,
                "http://example.org:8083/port-and-host-and-status",
            ),
        ],
    );
}

#[test]
fn mesh_http_route_scheme_redirect() {
    redirects(
        'x',
        "mesh-redirect-scheme",
        &[
            ("/scheme", "{scheme: https}", 302, "https://echo/scheme"),
            (
                "/scheme-and-host",
                "{hostname: example.org, scheme: https}",
                302,
                "https://example.org/scheme-and-host",
            ),
            (
                "/scheme-and-status",
                "{scheme: https, statusCode: 301}",
                301,
                "https://echo/scheme-and-status",
            ),
            (
                "/scheme-and-host-and-status",
                "{scheme: https, statusCode: 302, hostname: example.org}",
                302,
                "https://example.org/scheme-and-host-and-status",
            ),
        ],
    );
}

#[test]
fn mesh_http_route_weight() {
    let lab = up_with('t', TOPOLOGY);
    routes(
        &lab,
        &http_route(
            "mesh-weighted-backends",
            "echo",
            Some(80),
            "    - backendRefs: [{name: echo-v1, port: 8080, weight: 70}, {name: echo-v2, port: 8080, weight: 30}]\n",
        ),
    );
    let url = format!("http://{ECHO}/");
    // Routed once both backends have answered.
    let mut both = std::collections::BTreeSet::new();
    until(&lab, "mesh/client", &url, &[], |v| {
        both.insert(pod(v).to_owned());
        both.len() == 2
    });
    seventy_thirty(|| batch(&lab, &url, 500));
}

#[test]
fn mesh_http_route_named_rule() {
    let lab = up_with('u', TOPOLOGY);
    routes(
        &lab,
        &http_route(
            "mesh-http-named-rules",
            "echo",
            Some(80),
            "    - name: named-rule\n      matches: [{path: {type: PathPrefix, value: /named}}]\n      backendRefs: [{name: echo-v1, port: 8080}]\n\
             \x20   - matches: [{path: {type: PathPrefix, value: /unnamed}}]\n      backendRefs: [{name: echo-v2, port: 8080}]\n",
        ),
    );
    for (path, backend) in [("/named", V1), ("/unnamed", V2)] {
        expect_backend(
            &lab,
            "mesh/client",
            &format!("http://{ECHO}{path}"),
            &[],
            backend,
            Some(path),
        );
    }
}

/// `count` gRPC calls of `method` from mesh/client to `echo:7070` with
/// `metadata`: each answer, then (count > 1) the summary.
fn grpc(lab: &LabGuard, method: &str, count: usize, metadata: &[&str]) -> Vec<Value> {
    let method = format!("{GRPC_ECHO}/{method}");
    support::grpc_calls(
        lab,
        "mesh/client",
        &format!("{ECHO}:7070"),
        &method,
        count,
        metadata,
    )
}

use support::grpc_pod;

/// Every value of a metadata key the gRPC echo saw, joined with `,`.
fn grpc_seen(v: &Value, key: &str) -> Option<String> {
    let values: Vec<&str> = v["response"]["assertions"]["headers"]
        .as_array()?
        .iter()
        .filter(|h| h["key"] == key)
        .filter_map(|h| h["value"].as_str())
        .collect();
    (!values.is_empty()).then(|| values.join(","))
}

/// A GRPCRoute on echo port 7070 with `rules`.
fn grpc_route(name: &str, rules: &str) -> String {
    format!(
        "apiVersion: gateway.networking.k8s.io/v1\nkind: GRPCRoute\nmetadata: {{name: {name}, namespace: mesh}}\n\
         spec:\n  parentRefs: [{{group: \"\", kind: Service, name: echo, port: 7070}}]\n  rules:\n{rules}"
    )
}

#[test]
fn mesh_grpc_route_weight() {
    let lab = up_with('g', TOPOLOGY);
    // The weight-0 backend does not exist; the route works regardless.
    let yaml = grpc_route(
        "mesh-grpc-weighted-backends",
        "    - backendRefs: [{name: echo-v1, port: 7070, weight: 70}, {name: echo-v2, port: 7070, weight: 30}, {name: echo-v3, port: 7070, weight: 0}]\n",
    );
    let (_, out) = support::apply(&lab, "grpc-weight.yaml", &yaml);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("service mesh/echo-v3 does not exist"),
        "warned of the missing weight-0 backend"
    );
    let seen_both =
        weft_lab::wait_until(Duration::from_secs(10), Duration::from_millis(100), || {
            let answers = grpc(&lab, "Echo", 20, &[]);
            let s = &answers[20]["summary"];
            (s["statuses"]["0"] == 20 && s["pods"][V1].is_u64() && s["pods"][V2].is_u64())
                .then_some(())
        });
    assert!(
        seen_both.is_some(),
        "both backends answer through the route"
    );
    seventy_thirty(|| grpc(&lab, "Echo", 500, &[])[500]["summary"].clone());
}

#[test]
fn mesh_grpc_route_request_header_modifier() {
    let lab = up_with('i', TOPOLOGY);
    let rule = |case: &str, modifier: &str, backend: &str| {
        format!(
            "    - matches: [{{headers: [{{name: x-test-case, value: {case}}}]}}]\n      filters: [{{type: RequestHeaderModifier, requestHeaderModifier: {modifier}}}]\n      backendRefs: [{{name: {backend}, port: 7070}}]\n"
        )
    };
    routes(
        &lab,
        &grpc_route(
            "grpc-request-header-modifier",
            &[
                rule("set", "{set: [{name: x-header-set, value: set-overwrites-values}]}", "echo-v1"),
                rule("add", "{add: [{name: x-header-add, value: add-appends-values}]}", "echo-v1"),
                rule("remove", "{remove: [x-header-remove]}", "echo-v1"),
                rule(
                    "multi",
                    "{set: [{name: x-header-set-1, value: header-set-1}, {name: x-header-set-2, value: header-set-2}], \
                     add: [{name: x-header-add-1, value: header-add-1}, {name: x-header-add-2, value: header-add-2}], \
                     remove: [x-header-remove-1, x-header-remove-2]}",
                    "echo-v2",
                ),
            ]
            .concat(),
        ),
    );
    type Case<'a> = (
        &'a [&'a str],
        &'a str,
        &'a [(&'a str, &'a str)],
        &'a [&'a str],
    );
    let cases: [Case<'_>; 4] = [
        (
            &[
                "x-test-case: set",
                "some-other-header: this-header-should-be-set",
                "x-header-set: this-value-should-be-overwritten",
            ],
            V1,
            &[
                ("x-test-case", "set"),
                ("some-other-header", "this-header-should-be-set"),
                ("x-header-set", "set-overwrites-values"),
            ],
            &[],
        ),
        (
            &[
                "x-test-case: add",
                "x-header-add: this-value-should-be-appended",
            ],
            V1,
            &[
                ("x-test-case", "add"),
                (
                    "x-header-add",
                    "this-value-should-be-appended,add-appends-values",
                ),
            ],
            &[],
        ),
        (
            &[
                "x-test-case: remove",
                "x-header-remove: this-should-be-removed",
            ],
            V1,
            &[("x-test-case", "remove")],
            &["x-header-remove"],
        ),
        (
            &[
                "x-test-case: multi",
                "x-header-set-2: set-header-2",
                "x-header-add-2: add-header-2",
                "x-header-remove-2: should-be-removed-2",
            ],
            V2,
            &[
                ("x-test-case", "multi"),
                ("x-header-set-1", "header-set-1"),
                ("x-header-set-2", "header-set-2"),
                ("x-header-add-1", "header-add-1"),
                ("x-header-add-2", "add-header-2,header-add-2"),
            ],
            &["x-header-remove-1", "x-header-remove-2"],
        ),
    ];
    for (metadata, backend, want, gone) in cases {
        let v = weft_lab::wait_until(Duration::from_secs(10), Duration::from_millis(100), || {
            let v = grpc(&lab, "Echo", 1, metadata).remove(0);
            (v["grpcStatus"] == 0 && grpc_pod(&v) == backend).then_some(v)
        })
        .unwrap_or_else(|| panic!("{metadata:?}: not answered OK by {backend}"));
        for (key, value) in want {
            assert_eq!(grpc_seen(&v, key).as_deref(), Some(*value), "{key}: {v}");
        }
        for key in gone {
            assert_eq!(grpc_seen(&v, key), None, "{key} is removed: {v}");
        }
    }
}

/// Upstream's provisional GRPCRoute mirror test (from its pull request;
/// not on upstream's main yet): the primary answers, the mirror's pod
/// logs the copy.
#[test]
fn mesh_grpc_route_request_mirror() {
    let lab = up_with('y', TOPOLOGY);
    let modify = "{type: RequestHeaderModifier, requestHeaderModifier: {set: [{name: X-Header-Set, value: set-overwrites-values}], \
                  add: [{name: X-Header-Add, value: header-val-1}, {name: X-Header-Add-Append, value: header-val-2}], remove: [X-Header-Remove]}}";
    let mirror = "{type: RequestMirror, requestMirror: {backendRef: {name: echo-v2, port: 7070}}}";
    routes(
        &lab,
        &grpc_route(
            "mesh-grpc-request-mirror",
            &format!(
                "    - matches: [{{headers: [{{name: x-mirror-only, value: \"true\"}}]}}]\n      filters: [{mirror}]\n      backendRefs: [{{name: echo-v1, port: 7070}}]\n\
                 \x20   - matches: [{{headers: [{{name: x-mirror-and-modify, value: \"true\"}}]}}]\n      filters: [{modify}, {mirror}]\n      backendRefs: [{{name: echo-v1, port: 7070}}]\n"
            ),
        ),
    );
    for (tag, metadata) in [
        ("mirror-only", vec!["x-mirror-only: true"]),
        (
            "mirror-and-modify",
            vec![
                "x-mirror-and-modify: true",
                "x-header-remove: remove-val",
                "x-header-add-append: append-val-1",
            ],
        ),
    ] {
        let mut metadata = metadata;
        let tag_header = format!("x-test: {tag}");
        metadata.push(&tag_header);
        let v = weft_lab::wait_until(Duration::from_secs(10), Duration::from_millis(100), || {
            let v = grpc(&lab, "Echo", 1, &metadata).remove(0);
            (v["grpcStatus"] == 0 && grpc_pod(&v) == V1).then_some(v)
        })
        .unwrap_or_else(|| panic!("{tag}: the primary (echo-v1) answers"));
        if tag == "mirror-and-modify" {
            assert_eq!(
                grpc_seen(&v, "x-header-set").as_deref(),
                Some("set-overwrites-values"),
                "{v}"
            );
            assert_eq!(
                grpc_seen(&v, "x-header-add").as_deref(),
                Some("header-val-1"),
                "{v}"
            );
            assert_eq!(
                grpc_seen(&v, "x-header-add-append").as_deref(),
                Some("append-val-1,header-val-2"),
                "{v}"
            );
            assert_eq!(grpc_seen(&v, "x-header-remove"), None, "{v}");
        }
        // The copy reached echo-v2 (its log has the call) within 10 s.
        let mirrored =
            weft_lab::wait_until(Duration::from_secs(10), Duration::from_millis(200), || {
                let log = success_stdout(
                    "weft lab logs",
                    &weft(&["lab", "logs", "--name", lab.arg(), V2]),
                );
                log.lines()
                    .filter_map(|l| serde_json::from_str::<Value>(l).ok())
                    .any(|l| {
                        l["request"]["path"] == format!("/{GRPC_ECHO}/Echo")
                            && l["request"]["headers"]["x-test"][0] == tag
                    })
                    .then_some(())
            });
        assert!(
            mirrored.is_some(),
            "{tag}: echo-v2 logged the mirrored call"
        );
    }
}
