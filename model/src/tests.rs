use super::*;

#[test]
fn a_service_port_without_a_target_port_targets_its_own_port_and_writes_both() {
    let s: Service = serde_yaml::from_str(
        "{namespace: a, name: s, clusterIP: 10.1.0.1, ports: [{port: 80}, {port: 81, targetPort: 8081, appProtocol: kubernetes.io/h2c}]}",
    )
    .unwrap();
    assert_eq!(
        s.ports[0],
        ServicePort {
            port: 80,
            target_port: 80,
            app_protocol: None
        }
    );
    assert_eq!(s.ports[1].target_port, 8081);
    assert!(s.ports[1].speaks_http() && !s.ports[0].speaks_http());
    let again: Service = serde_yaml::from_str(&serde_yaml::to_string(&s).unwrap()).unwrap();
    assert_eq!(again, s);
}

#[test]
fn a_workload_defaults_to_the_default_service_account_and_has_its_identity() {
    let w: Workload =
        serde_yaml::from_str("{namespace: a, name: p, node: n1, ip: 10.0.0.1}").unwrap();
    assert_eq!(w.service_account, "default");
    assert!(!w.meshed);
    assert_eq!(
        w.identity("cluster.local").to_string(),
        "spiffe://cluster.local/ns/a/sa/default"
    );
}

#[test]
fn spiffe_ids_parse_back_to_what_they_print_and_bad_ones_say_why() {
    let id = SpiffeId::parse("spiffe://cluster.local/ns/shop/sa/web").unwrap();
    assert_eq!(id.account(), ("shop".to_owned(), "web".to_owned()));
    assert_eq!(id.to_string().parse::<SpiffeId>().unwrap(), id);
    assert!(matches!(
        SpiffeId::parse("spiffe://Cluster/ns/a/sa/b"),
        Err(IdentityError::TrustDomain(td)) if td == "Cluster"
    ));
    for bad in [
        "http://x/ns/a/sa/b",
        "spiffe://td/ns/a",
        "spiffe://td/ns//sa/b",
    ] {
        assert!(
            matches!(SpiffeId::parse(bad), Err(IdentityError::Malformed(_))),
            "{bad}"
        );
    }
}

#[test]
fn routes_read_their_kind_and_path_matches_in_the_gateway_api_spelling() {
    let r: Route = serde_yaml::from_str(
        "kind: GRPCRoute\nnamespace: a\nname: r\nparents: [{service: a/s, port: 80}]\nrules:\n  - matches: [{path: {type: PathPrefix, value: /x}}]\n    backends: [{service: a/s, port: 80, weight: 1}]\n",
    )
    .unwrap();
    assert_eq!(r.kind, RouteKind::Grpc);
    assert_eq!(r.key(), "GRPCRoute/a/r");
    assert_eq!(
        r.rules[0].matches[0].path,
        Some(PathMatch::PathPrefix("/x".into()))
    );
    assert!(
        serde_yaml::from_str::<Route>(
            "kind: TCPRoute\nnamespace: a\nname: r\nparents: []\nrules: []\n"
        )
        .is_err()
    );
}
