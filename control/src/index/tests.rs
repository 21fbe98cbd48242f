use super::*;
use crate::model::{Filter, PathMatch, PathModifier, Retry, Timeouts};
use crate::source::file::parse;

const WORLD: &str = r#"
apiVersion: v1
kind: Namespace
metadata: {name: shop, labels: {weft.io/mesh: enabled}}
---
apiVersion: v1
kind: Pod
metadata: {name: web-1, namespace: shop, labels: {app: web}}
spec: {nodeName: node-1, serviceAccountName: web, containers: [{name: web}]}
status: {podIP: 198.18.1.2}
---
apiVersion: v1
kind: Pod
metadata: {name: web-2, namespace: shop, labels: {app: web, weft.io/fast-path: enabled}}
spec: {nodeName: node-2, containers: [{name: web}]}
status: {podIP: 198.18.2.2}
---
apiVersion: v1
kind: Service
metadata: {name: web, namespace: shop}
spec: {clusterIP: 198.19.0.10, selector: {app: web}, ports: [{port: 80, targetPort: 8080}]}
"#;

fn store(text: &str) -> Result<(Store, World), Rejected> {
    Store::default().applied(parse("w.yaml", text).expect("parses"))
}

fn paths(r: Rejected) -> Vec<(usize, String)> {
    r.problems
        .into_iter()
        .map(|p| (p.document, p.path))
        .collect()
}

#[test]
fn pods_become_workloads_and_services_find_their_endpoints_by_selector() {
    let (_, world) = store(WORLD).unwrap();
    let web1 = &world.workloads[&Ipv4Addr::new(198, 18, 1, 2)];
    assert!(web1.meshed && !web1.fast_path);
    assert_eq!(web1.service_account, "web");
    let web2 = &world.workloads[&Ipv4Addr::new(198, 18, 2, 2)];
    assert!(web2.fast_path);
    assert_eq!(web2.service_account, "default");
    let svc = &world.services["shop/web"];
    assert_eq!(
        svc.ports,
        [ServicePort {
            port: 80,
            target_port: 8080,
            app_protocol: None
        }]
    );
    assert_eq!(
        svc.endpoints,
        [Ipv4Addr::new(198, 18, 1, 2), Ipv4Addr::new(198, 18, 2, 2)]
    );
}

#[test]
fn dangling_references_and_clashing_addresses_are_all_reported_and_nothing_changes() {
    let (before, _) = store(WORLD).unwrap();
    let bad = r#"
apiVersion: v1
kind: Pod
metadata: {name: x, namespace: nowhere}
spec: {nodeName: node-1, containers: [{name: x}]}
status: {podIP: 198.18.1.9}
---
apiVersion: v1
kind: Pod
metadata: {name: y, namespace: shop}
spec: {nodeName: node-1, containers: [{name: y}]}
status: {podIP: 198.18.1.2}
---
apiVersion: v1
kind: Service
metadata: {name: z, namespace: shop}
spec: {clusterIP: 198.19.0.10, ports: [{port: 80, targetPort: http}]}
"#;
    let r = before.applied(parse("bad.yaml", bad).unwrap()).unwrap_err();
    let got = paths(r);
    for want in [
        (1, "metadata.namespace"),
        (2, "status.podIP"),
        (3, "spec.clusterIP"),
        (3, "spec.ports[0].targetPort"),
    ] {
        assert!(
            got.iter().any(|(d, p)| (*d, p.as_str()) == want),
            "missing {want:?} in {got:?}"
        );
    }
    // `applied` returns a new store; the old one is untouched.
    assert_eq!(before.len(), 4);
}

#[test]
fn the_same_object_twice_in_one_apply_is_refused() {
    let twice = format!("{WORLD}---\napiVersion: v1\nkind: Namespace\nmetadata: {{name: shop}}\n");
    let got = paths(store(&twice).unwrap_err());
    assert_eq!(got, [(5, "metadata.name".to_owned())]);
}

#[test]
fn applying_again_replaces_objects_of_the_same_key() {
    let (s, _) = store(WORLD).unwrap();
    let relabel = "apiVersion: v1\nkind: Namespace\nmetadata: {name: shop}\n";
    let (s2, world) = s.applied(parse("r.yaml", relabel).unwrap()).unwrap();
    assert_eq!(s2.len(), 4);
    assert!(
        world.workloads.values().all(|w| !w.meshed),
        "the namespace lost its mesh label"
    );
}

#[test]
fn a_bad_mesh_label_value_is_named() {
    let got =
        paths(store(&WORLD.replace("weft.io/mesh: enabled", "weft.io/mesh: on")).unwrap_err());
    assert_eq!(got, [(1, "metadata.labels.weft.io/mesh".to_owned())]);
}

const ROUTE: &str = r#"
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: web-canary, namespace: shop}
spec:
  parentRefs: [{kind: Service, group: "", name: web, port: 80}]
  rules:
    - matches: [{path: {type: PathPrefix, value: /api}, method: GET}]
      backendRefs: [{name: web, port: 80, weight: 90}, {name: web, port: 80, weight: 10}]
"#;

fn with_route(route: &str) -> Result<(Store, World), Rejected> {
    store(&format!("{WORLD}---{route}"))
}

#[test]
fn an_http_route_attached_to_a_service_becomes_a_route_with_its_matches_and_backends() {
    let (_, world) = with_route(ROUTE).unwrap();
    let r = &world.routes["HTTPRoute/shop/web-canary"];
    assert_eq!(
        r.parents,
        [ParentRef {
            service: "shop/web".to_owned(),
            port: Some(80)
        }]
    );
    assert_eq!(
        r.rules[0].matches[0].path,
        Some(PathMatch::PathPrefix("/api".into()))
    );
    assert_eq!(r.rules[0].matches[0].method.as_deref(), Some("GET"));
    assert_eq!(
        r.rules[0]
            .backends
            .iter()
            .map(|b| b.weight)
            .collect::<Vec<_>>(),
        [90, 10]
    );
}

#[test]
fn a_dangling_backend_a_bad_regex_and_zero_weights_are_named() {
    let bad = ROUTE
        .replace(
            "{name: web, port: 80, weight: 90}",
            "{name: nope, port: 80, weight: 0}",
        )
        .replace("weight: 10}", "weight: 0}")
        .replace(
            "{type: PathPrefix, value: /api}",
            "{type: RegularExpression, value: \"/api/(\"}",
        );
    let got = paths(with_route(&bad).unwrap_err());
    for want in [
        (5, "spec.rules[0].backendRefs[0].name"),
        (5, "spec.rules[0].matches[0].path.value"),
        (5, "spec.rules[0].backendRefs"),
    ] {
        assert!(
            got.iter().any(|(d, p)| (*d, p.as_str()) == want),
            "missing {want:?} in {got:?}"
        );
    }
}

#[test]
fn two_routes_claiming_the_same_match_on_the_same_service_conflict() {
    let second = ROUTE.replace("web-canary", "web-other");
    let got = paths(store(&format!("{WORLD}---{ROUTE}---{second}")).unwrap_err());
    assert_eq!(got, [(6, "spec.rules".to_owned())]);
}

#[test]
fn a_gateway_parent_is_not_supported_and_says_so() {
    let got = paths(
        with_route(&ROUTE.replace(
            "kind: Service, group: \"\"",
            "kind: Gateway, group: gateway.networking.k8s.io",
        ))
        .unwrap_err(),
    );
    assert_eq!(got, [(5, "spec.parentRefs[0]".to_owned())]);
}

const POLICY: &str = r#"
apiVersion: weft.io/v1alpha1
kind: AuthorizationPolicy
metadata: {name: web-allow, namespace: shop}
spec:
  selector: {matchLabels: {app: web}}
  action: ALLOW
  rules:
    - from: [{principals: ["spiffe://cluster.local/ns/shop/sa/client"], namespaces: [shop]}]
      to: [{ports: [8080], methods: [GET], paths: ["/api/*"]}]
"#;

#[test]
fn an_authorization_policy_is_read_and_validated() {
    let (_, world) = with_route(POLICY).unwrap();
    let p = &world.policies["shop/web-allow"];
    assert_eq!(p.selector.get("app").map(String::as_str), Some("web"));
    assert_eq!(p.action, PolicyAction::Allow);
}

#[test]
fn a_policy_with_a_bad_principal_port_method_and_path_names_each_field() {
    let bad = POLICY
        .replace("spiffe://cluster.local/ns/shop/sa/client", "client")
        .replace("ports: [8080]", "ports: [0]")
        .replace("methods: [GET]", "methods: [get]")
        .replace("\"/api/*\"", "api");
    let got = paths(with_route(&bad).unwrap_err());
    for want in [
        "spec.rules[0].from[0].principals[0]",
        "spec.rules[0].to[0].ports[0]",
        "spec.rules[0].to[0].methods[0]",
        "spec.rules[0].to[0].paths[0]",
    ] {
        assert!(
            got.iter().any(|(d, p)| *d == 5 && p == want),
            "missing {want} in {got:?}"
        );
    }
}

#[test]
fn a_policy_action_other_than_allow_or_deny_is_refused_when_parsed() {
    let r = parse("p.yaml", &POLICY.replace("action: ALLOW", "action: AUDIT")).unwrap_err();
    assert_eq!(r.problems[0].path, "spec.action");
}

const GRPC_ROUTE: &str = r#"
apiVersion: gateway.networking.k8s.io/v1
kind: GRPCRoute
metadata: {name: web-grpc, namespace: shop}
spec:
  parentRefs: [{kind: Service, group: "", name: web, port: 80}]
  rules:
    - matches: [{method: {service: shop.Cart, method: Add}}, {method: {service: shop.Cart}}]
      backendRefs: [{name: web, port: 80}]
"#;

#[test]
fn a_grpc_route_matches_become_path_matches_on_post() {
    let (_, world) = with_route(GRPC_ROUTE).unwrap();
    let r = &world.routes["GRPCRoute/shop/web-grpc"];
    assert_eq!(
        r.rules[0].matches[0].path,
        Some(PathMatch::Exact("/shop.Cart/Add".into()))
    );
    assert_eq!(
        r.rules[0].matches[1].path,
        Some(PathMatch::PathPrefix("/shop.Cart/".into()))
    );
    assert_eq!(r.rules[0].matches[0].method.as_deref(), Some("POST"));
}

#[test]
fn a_grpc_route_with_a_bad_regex_or_a_dangling_backend_is_named() {
    let bad = GRPC_ROUTE
        .replace(
            "{method: {service: shop.Cart, method: Add}}",
            "{method: {type: RegularExpression, service: \"shop.(\", method: Add}}",
        )
        .replace("backendRefs: [{name: web,", "backendRefs: [{name: gone,");
    let got = paths(with_route(&bad).unwrap_err());
    for want in [
        "spec.rules[0].matches[0].method.service",
        "spec.rules[0].backendRefs[0].name",
    ] {
        assert!(
            got.iter().any(|(d, p)| *d == 5 && p == want),
            "missing {want} in {got:?}"
        );
    }
}

#[test]
fn an_endpoint_slice_in_a_file_gives_the_ready_endpoints_and_names_the_target_port() {
    let text = format!(
        "{}---{}",
        WORLD.replace("targetPort: 8080", "name: http, targetPort: http"),
        r#"
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: web-abc, namespace: shop, labels: {kubernetes.io/service-name: web}}
addressType: IPv4
ports: [{name: http, port: 9090}]
endpoints:
  - {addresses: [198.18.2.2]}
  - {addresses: [198.18.1.2], conditions: {ready: false}}
"#
    );
    let (_, world) = store(&text).unwrap();
    let svc = &world.services["shop/web"];
    assert_eq!(svc.endpoints, [Ipv4Addr::new(198, 18, 2, 2)]);
    assert_eq!(svc.ports[0].target_port, 9090);
    // Without the slice a named port cannot be resolved in a file.
    let got = paths(
        store(&WORLD.replace("targetPort: 8080", "name: http, targetPort: http")).unwrap_err(),
    );
    assert_eq!(got, [(4, "spec.ports[0].targetPort".to_owned())]);
}

#[test]
fn headless_services_and_host_network_or_finished_pods_are_left_out_without_error() {
    let text = format!(
        "{WORLD}---{}",
        r#"
apiVersion: v1
kind: Service
metadata: {name: db, namespace: shop}
spec: {clusterIP: None, selector: {app: db}, ports: [{port: 5432}]}
---
apiVersion: v1
kind: Pod
metadata: {name: agent, namespace: shop}
spec: {nodeName: node-1, hostNetwork: true, containers: [{name: a}]}
status: {podIP: 198.18.1.1}
---
apiVersion: v1
kind: Pod
metadata: {name: job, namespace: shop}
spec: {nodeName: node-1, containers: [{name: j}]}
status: {podIP: 198.18.1.2, phase: Succeeded}
"#
    );
    let (_, world) = store(&text).unwrap();
    assert!(!world.services.contains_key("shop/db"));
    assert_eq!(world.workloads.len(), 2, "web-1 and web-2 only");
    assert_eq!(world.workloads[&Ipv4Addr::new(198, 18, 1, 2)].name, "web-1");
}

#[test]
fn tolerant_mode_leaves_out_what_is_wrong_and_keeps_the_rest() {
    let pending = r#"
apiVersion: v1
kind: Pod
metadata: {name: starting, namespace: shop}
spec: {containers: [{name: s}]}
"#;
    let route = ROUTE
        .replace(
            "{name: web, port: 80, weight: 10}",
            "{name: web-missing, port: 80, weight: 10}",
        )
        .replace("[{kind: Service", "[{name: gw}, {kind: Service");
    let mut s = Store::default();
    for doc in parse("w.yaml", &format!("{WORLD}---{pending}---{route}")).unwrap() {
        s.upsert(doc);
    }
    let (world, problems) = s.world_tolerant();
    assert_eq!(
        world.workloads.len(),
        2,
        "the pending pod is not a workload"
    );
    let kept = world.routes.values().next().expect("the route stays");
    assert_eq!(
        kept.parents,
        [ParentRef {
            service: "shop/web".to_owned(),
            port: Some(80)
        }],
        "the Gateway parent is not ours"
    );
    assert!(
        kept.rules[0]
            .backends
            .iter()
            .any(|b| b.service == "shop/web-missing"),
        "the unresolved backend stays, so its share of requests fails"
    );
    assert!(problems.iter().all(is_unresolved_backend), "{problems:?}");
    assert!(s.world().is_err(), "strict mode rejects the same objects");
}

#[test]
fn a_node_gets_its_pods_every_meshed_pod_and_endpoint_and_only_the_policies_of_its_pods() {
    let extra = r#"
apiVersion: v1
kind: Namespace
metadata: {name: legacy}
---
apiVersion: v1
kind: Pod
metadata: {name: batch, namespace: legacy}
spec: {nodeName: node-2, containers: [{name: b}]}
status: {podIP: 198.18.2.9}
---
apiVersion: v1
kind: Pod
metadata: {name: tool, namespace: legacy}
spec: {nodeName: node-1, containers: [{name: t}]}
status: {podIP: 198.18.1.9}
"#;
    let (_, world) = store(&format!("{WORLD}---{extra}---{POLICY}")).unwrap();
    assert_eq!(
        world.policies["shop/web-allow"].workloads,
        [Ipv4Addr::new(198, 18, 1, 2), Ipv4Addr::new(198, 18, 2, 2)]
    );

    let node1 = world.for_node("node-1");
    let ips: Vec<Ipv4Addr> = node1.workloads.keys().copied().collect();
    assert_eq!(
        ips,
        [
            Ipv4Addr::new(198, 18, 1, 2),
            Ipv4Addr::new(198, 18, 1, 9),
            Ipv4Addr::new(198, 18, 2, 2)
        ],
        "its own pods (meshed or not) and the remote meshed one; not legacy/batch"
    );
    assert_eq!(node1.services.len(), 1);
    assert_eq!(
        node1.policies["shop/web-allow"].workloads,
        [Ipv4Addr::new(198, 18, 1, 2)],
        "a policy lists only this node's pods"
    );

    let node3 = world.for_node("node-3");
    assert!(node3.policies.is_empty(), "no pod of node-3 is selected");
    assert!(!node3.workloads.contains_key(&Ipv4Addr::new(198, 18, 1, 9)));

    // A delta carries a policy's change to the node that holds it.
    let (_, fewer) = store(&format!(
        "{WORLD}---{extra}---{}",
        POLICY.replace("app: web", "app: none")
    ))
    .unwrap();
    let delta = node1.delta_to(&fewer.for_node("node-1"));
    assert_eq!(delta.removed_policies, ["shop/web-allow"]);
    let mut patched = node1;
    patched.apply(&delta);
    assert_eq!(patched, fewer.for_node("node-1"));
}

#[test]
fn a_workload_moving_between_the_common_and_the_local_part_survives_the_combined_delta() {
    let tool = r#"
apiVersion: v1
kind: Namespace
metadata: {name: legacy}
---
apiVersion: v1
kind: Pod
metadata: {name: tool, namespace: legacy, labels: {app: tool}}
spec: {nodeName: node-1, containers: [{name: t}]}
status: {podIP: 198.18.1.9}
"#;
    let fronted = r#"
apiVersion: v1
kind: Service
metadata: {name: tool, namespace: legacy}
spec: {clusterIP: 198.19.0.99, selector: {app: tool}, ports: [{port: 80}]}
"#;
    let (_, a) = store(&format!("{WORLD}---{tool}")).unwrap();
    let (_, b) = store(&format!("{WORLD}---{tool}---{fronted}")).unwrap();
    let tool_ip = Ipv4Addr::new(198, 18, 1, 9);
    assert!(
        !a.common().workloads.contains_key(&tool_ip),
        "local only while unfronted"
    );
    assert!(
        b.common().workloads.contains_key(&tool_ip),
        "common once a service fronts it"
    );
    for (from, to) in [(&a, &b), (&b, &a)] {
        let (c1, c2) = (from.common(), to.common());
        let delta = c1
            .delta_to(&c2)
            .and(from.local("node-1", &c1).delta_to(&to.local("node-1", &c2)));
        let mut held = from.for_node("node-1");
        held.apply(&delta);
        assert_eq!(held, to.for_node("node-1"));
        assert!(held.workloads.contains_key(&tool_ip));
    }
}

#[test]
fn filters_timeouts_and_header_and_query_matches_become_the_rules_parts() {
    let route = r#"
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: web-filters, namespace: shop}
spec:
  parentRefs: [{kind: Service, group: "", name: web, port: 80}]
  rules:
    - matches:
        - headers: [{name: X-Version, type: RegularExpression, value: "v[0-9]+"}]
          queryParams: [{name: env, value: canary}]
      filters:
        - type: RequestHeaderModifier
          requestHeaderModifier: {set: [{name: X-A, value: "1"}], remove: [x-b]}
        - type: URLRewrite
          urlRewrite: {path: {type: ReplacePrefixMatch, replacePrefixMatch: /v2}}
      timeouts: {request: 1s, backendRequest: 500ms}
      retry: {attempts: 2, codes: [502, 503], backoff: 20ms}
      backendRefs:
        - name: web
          port: 80
          filters:
            - type: ResponseHeaderModifier
              responseHeaderModifier: {add: [{name: x-c, value: "2"}]}
"#;
    let (_, world) = with_route(route).unwrap();
    let rule = &world.routes["HTTPRoute/shop/web-filters"].rules[0];
    let m = &rule.matches[0];
    assert_eq!(m.headers[0].name, "x-version");
    assert_eq!(m.headers[0].kind, ValueMatch::RegularExpression);
    assert_eq!(
        (m.query[0].name.as_str(), m.query[0].value.as_str()),
        ("env", "canary")
    );
    assert_eq!(
        rule.timeouts,
        Timeouts {
            request_ms: Some(1000),
            backend_request_ms: Some(500)
        }
    );
    assert_eq!(
        rule.retry,
        Some(Retry {
            attempts: 2,
            codes: vec![502, 503],
            backoff_ms: Some(20)
        })
    );
    assert!(matches!(&rule.filters[0], Filter::RequestHeaderModifier(h) if h.set[0].name == "x-a"));
    assert!(matches!(
        &rule.filters[1],
        Filter::UrlRewrite(r) if r.path == Some(PathModifier::ReplacePrefixMatch("/v2".into()))
    ));
    assert!(matches!(
        &rule.backends[0].filters[0],
        Filter::ResponseHeaderModifier(h) if h.add[0].value == "2"
    ));
}

#[test]
fn request_mirrors_resolve_to_a_service_port_and_a_share() {
    let route = r#"
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: web-mirror, namespace: shop}
spec:
  parentRefs: [{kind: Service, group: "", name: web, port: 80}]
  rules:
    - filters:
        - type: RequestMirror
          requestMirror: {backendRef: {name: web, port: 80}, percent: 25}
        - type: RequestMirror
          requestMirror: {backendRef: {name: web, namespace: shop, port: 80}, fraction: {numerator: 1, denominator: 3}}
        - type: RequestMirror
          requestMirror: {backendRef: {name: web, port: 80}}
      backendRefs: [{name: web, port: 80}]
"#;
    let (_, world) = with_route(route).unwrap();
    let rule = &world.routes["HTTPRoute/shop/web-mirror"].rules[0];
    let shares: Vec<(String, u16, u32, u32)> = rule
        .filters
        .iter()
        .map(|f| match f {
            Filter::RequestMirror(m) => (m.service.clone(), m.port, m.numerator, m.denominator),
            other => panic!("not a mirror: {other:?}"),
        })
        .collect();
    assert_eq!(
        shares,
        [
            ("shop/web".to_owned(), 80, 25, 100),
            ("shop/web".to_owned(), 80, 1, 3),
            ("shop/web".to_owned(), 80, 1, 1),
        ]
    );
}

#[test]
fn a_bad_regex_a_bad_redirect_status_an_unsupported_filter_and_a_bad_timeout_are_named() {
    let route = r#"
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: web-bad, namespace: shop}
spec:
  parentRefs: [{kind: Service, group: "", name: web, port: 80}]
  rules:
    - matches: [{headers: [{name: x, type: RegularExpression, value: "("}], queryParams: [{name: q, type: RegularExpression, value: "["}]}]
      filters:
        - type: RequestRedirect
          requestRedirect: {statusCode: 305}
        - type: ExtensionRef
          extensionRef: {group: example.com, kind: Thing, name: t}
        - type: RequestMirror
          requestMirror: {backendRef: {name: web, port: 80}, percent: 50, fraction: {numerator: 1}}
        - type: RequestMirror
          requestMirror: {backendRef: {name: nowhere, port: 80}, percent: 150}
      timeouts: {request: 1s, backendRequest: 2s}
      backendRefs: [{name: web, port: 80}]
    - timeouts: {request: soon}
      retry: {attempts: 11, codes: [404]}
      sessionPersistence: {sessionName: s}
      backendRefs: [{name: web, port: 80}]
"#;
    let got = paths(with_route(route).unwrap_err());
    for want in [
        "spec.rules[0].matches[0].headers[0].value",
        "spec.rules[0].matches[0].queryParams[0].value",
        "spec.rules[0].filters[0].requestRedirect.statusCode",
        "spec.rules[0].filters[1].type",
        "spec.rules[0].filters[2].requestMirror",
        "spec.rules[0].filters[3].requestMirror.backendRef.name",
        "spec.rules[0].filters[3].requestMirror.percent",
        "spec.rules[0].timeouts.backendRequest",
        "spec.rules[1].timeouts.request",
        "spec.rules[1].retry.attempts",
        "spec.rules[1].retry.codes[0]",
        "spec.rules[1].sessionPersistence",
    ] {
        assert!(
            got.iter().any(|(d, p)| (*d, p.as_str()) == (5, want)),
            "missing {want} in {got:?}"
        );
    }
}
