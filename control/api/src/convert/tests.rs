use super::*;

fn route() -> Route {
    Route {
        kind: RouteKind::Grpc,
        created: 1_765_000_000,
        namespace: "a".into(),
        name: "r".into(),
        parents: vec![
            ParentRef {
                service: "a/s".into(),
                port: Some(80),
            },
            ParentRef {
                service: "a/t".into(),
                port: None,
            },
        ],
        rules: vec![RouteRule {
            matches: vec![
                RouteMatch {
                    path: Some(PathMatch::RegularExpression("/x/.*".into())),
                    method: Some("POST".into()),
                    headers: vec![HeaderMatch {
                        name: "x-v".into(),
                        value: "2".into(),
                        kind: ValueMatch::Exact,
                    }],
                    query: vec![HeaderMatch {
                        name: "q".into(),
                        value: "[0-9]+".into(),
                        kind: ValueMatch::RegularExpression,
                    }],
                },
                RouteMatch::default(),
            ],
            filters: vec![
                Filter::RequestHeaderModifier(HeaderModifier {
                    set: vec![HeaderValue {
                        name: "x-a".into(),
                        value: "1".into(),
                    }],
                    add: Vec::new(),
                    remove: vec!["x-b".into()],
                }),
                Filter::RequestRedirect(Redirect {
                    scheme: Some("https".into()),
                    hostname: None,
                    path: Some(PathModifier::ReplacePrefixMatch("/new".into())),
                    port: Some(8443),
                    status: 301,
                }),
                Filter::UrlRewrite(Rewrite {
                    hostname: Some("h".into()),
                    path: Some(PathModifier::ReplaceFullPath("/x".into())),
                }),
                Filter::RequestMirror(Mirror {
                    service: "a/m".into(),
                    port: 8080,
                    numerator: 1,
                    denominator: 3,
                }),
            ],
            backends: vec![Backend {
                service: "a/s".into(),
                port: 80,
                weight: 0,
                filters: vec![Filter::ResponseHeaderModifier(HeaderModifier::default())],
            }],
            timeouts: Timeouts {
                request_ms: Some(500),
                backend_request_ms: None,
            },
            retry: Some(Retry {
                attempts: 2,
                codes: vec![503],
                backoff_ms: Some(50),
            }),
        }],
    }
}

#[test]
fn every_model_object_survives_the_wire_unchanged() {
    let w = Workload {
        namespace: "a".into(),
        name: "p".into(),
        node: "n1".into(),
        ip: Ipv4Addr::new(10, 0, 0, 1),
        service_account: "web".into(),
        meshed: true,
        fast_path: true,
    };
    assert_eq!(Workload::try_from(&pb::Workload::from(&w)), Ok(w));
    let s = Service {
        namespace: "a".into(),
        name: "s".into(),
        cluster_ip: Ipv4Addr::new(10, 1, 0, 1),
        ports: vec![
            ServicePort {
                port: 80,
                target_port: 8080,
                app_protocol: None,
            },
            ServicePort {
                port: 81,
                target_port: 81,
                app_protocol: Some("kubernetes.io/h2c".into()),
            },
        ],
        endpoints: vec![Ipv4Addr::new(10, 0, 0, 1)],
    };
    assert_eq!(Service::try_from(&pb::Service::from(&s)), Ok(s));
    let r = route();
    assert_eq!(Route::try_from(&pb::Route::from(&r)), Ok(r));
    let p = Policy {
        namespace: "a".into(),
        name: "p".into(),
        selector: Default::default(),
        action: PolicyAction::Deny,
        rules: vec![PolicyRule {
            from: vec![PolicySource {
                principals: vec!["spiffe://td/ns/a/sa/b".into()],
                namespaces: vec!["a".into()],
            }],
            to: vec![PolicyOperation {
                ports: vec![80],
                methods: vec!["GET".into()],
                paths: vec!["/x/*".into()],
            }],
        }],
        workloads: vec![Ipv4Addr::new(10, 0, 0, 1)],
    };
    assert_eq!(Policy::try_from(&pb::Policy::from(&p)), Ok(p));
}

#[test]
fn a_bad_wire_object_is_refused_naming_the_object_and_the_field() {
    let mut w = pb::Workload::from(&Workload {
        namespace: "a".into(),
        name: "p".into(),
        node: "n1".into(),
        ip: Ipv4Addr::new(10, 0, 0, 1),
        service_account: "default".into(),
        meshed: false,
        fast_path: false,
    });
    w.ip = "10.0.0".into();
    assert_eq!(
        Workload::try_from(&w).unwrap_err().to_string(),
        "workload a/p: ip `10.0.0` is not an IPv4 address"
    );
    let mut r = pb::Route::from(&route());
    r.rules[0].backends[0].port = 70_000;
    assert_eq!(
        Route::try_from(&r).unwrap_err().to_string(),
        "route a/r: backend port 70000 is not a port"
    );
    r.kind = "TCPRoute".into();
    assert!(
        Route::try_from(&r)
            .unwrap_err()
            .to_string()
            .contains("`TCPRoute`")
    );
}
