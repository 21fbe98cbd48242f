use super::*;

/// A config with services `a/s` (port 80), `a/v1`, `a/v2` and the routes
/// given (YAML list items).
fn port(routes: &str) -> HttpPort {
    let yaml = format!(
        "node: n1\ncapture: {{pinDir: /x}}\nservices:\n  - {{namespace: a, name: s, clusterIP: 10.1.0.1, ports: [{{port: 80, targetPort: 8080}}], endpoints: [10.0.0.1]}}\n  - {{namespace: a, name: v1, clusterIP: 10.1.0.2, ports: [{{port: 80}}], endpoints: [10.0.0.2]}}\n  - {{namespace: a, name: v2, clusterIP: 10.1.0.3, ports: [{{port: 80}}], endpoints: [10.0.0.3]}}\nroutes:\n{routes}"
    );
    let config = ProxyConfig::parse("t", &yaml).unwrap();
    let services: HashMap<String, &Service> =
        config.services.iter().map(|s| (s.key(), s)).collect();
    let mut problems = Vec::new();
    let p = HttpPort::compile(
        &config,
        &services,
        &config.services[0],
        &config.services[0].ports[0],
        &mut problems,
    )
    .expect("routes attach");
    assert!(problems.is_empty(), "{problems:?}");
    p
}

fn req(method: &str, path: &str, headers: &[(&str, &str)]) -> Parts {
    let mut b = http::Request::builder().method(method).uri(path);
    for (n, v) in headers {
        b = b.header(*n, *v);
    }
    b.body(()).unwrap().into_parts().0
}

/// The backend service a request from namespace `ns` goes to.
fn to(p: &HttpPort, ns: &str, r: &Parts) -> Option<String> {
    p.pick(Some(ns), r).map(|picked| {
        picked.rule.backends[0]
            .target
            .as_ref()
            .map_or("invalid".into(), |t| t.service.clone())
    })
}

fn route(ns: &str, name: &str, rules: &str) -> String {
    format!(
        "  - {{kind: HTTPRoute, namespace: {ns}, name: {name}, parents: [{{service: a/s}}], rules: [{rules}]}}\n"
    )
}

#[test]
fn an_exact_path_beats_the_longest_prefix_which_beats_a_shorter_one() {
    let p = port(&route(
        "a",
        "r",
        "{matches: [{path: {type: PathPrefix, value: /}}], backends: [{service: a/s, port: 80, weight: 1}]},\
         {matches: [{path: {type: PathPrefix, value: /api}}], backends: [{service: a/v1, port: 80, weight: 1}]},\
         {matches: [{path: {type: Exact, value: /api/x}}], backends: [{service: a/v2, port: 80, weight: 1}]}",
    ));
    assert_eq!(
        to(&p, "a", &req("GET", "/api/x", &[])).as_deref(),
        Some("a/v2")
    );
    assert_eq!(
        to(&p, "a", &req("GET", "/api/x/y", &[])).as_deref(),
        Some("a/v1")
    );
    assert_eq!(
        to(&p, "a", &req("GET", "/api", &[])).as_deref(),
        Some("a/v1")
    );
    assert_eq!(
        to(&p, "a", &req("GET", "/apix", &[])).as_deref(),
        Some("a/s"),
        "prefixes match whole segments"
    );
}

#[test]
fn with_equal_paths_a_method_then_more_headers_win_and_a_request_matching_nothing_has_no_rule() {
    let p = port(&route(
        "a",
        "r",
        "{matches: [{path: {type: PathPrefix, value: /x}, headers: [{name: version, value: two}]}], backends: [{service: a/v1, port: 80, weight: 1}]},\
         {matches: [{path: {type: PathPrefix, value: /x}, headers: [{name: version, value: two}, {name: env, value: canary}]}], backends: [{service: a/v2, port: 80, weight: 1}]},\
         {matches: [{path: {type: PathPrefix, value: /x}, method: POST}], backends: [{service: a/s, port: 80, weight: 1}]}",
    ));
    let both = [("version", "two"), ("env", "canary")];
    assert_eq!(
        to(&p, "a", &req("GET", "/x", &both)).as_deref(),
        Some("a/v2")
    );
    assert_eq!(
        to(&p, "a", &req("POST", "/x", &both)).as_deref(),
        Some("a/s"),
        "a method match outranks header matches"
    );
    assert_eq!(
        to(&p, "a", &req("GET", "/x", &[("version", "two")])).as_deref(),
        Some("a/v1")
    );
    assert_eq!(to(&p, "a", &req("GET", "/x", &[])), None);
    assert_eq!(to(&p, "a", &req("GET", "/y", &[])), None);
}

#[test]
fn regular_expressions_match_the_whole_path() {
    let p = port(&route(
        "a",
        "r",
        "{matches: [{path: {type: RegularExpression, value: '/v[0-9]+/.*'}}], backends: [{service: a/v1, port: 80, weight: 1}]}",
    ));
    assert_eq!(
        to(&p, "a", &req("GET", "/v2/x", &[])).as_deref(),
        Some("a/v1")
    );
    assert_eq!(to(&p, "a", &req("GET", "/x/v2/x", &[])), None);
}

#[test]
fn a_consumer_route_applies_to_its_namespace_only_and_replaces_the_producer_routes_there() {
    let routes = route(
        "a",
        "producer",
        "{matches: [{path: {type: PathPrefix, value: /}}], backends: [{service: a/v1, port: 80, weight: 1}]}",
    ) + &route(
        "web",
        "consumer",
        "{matches: [{path: {type: Exact, value: /only}}], backends: [{service: a/v2, port: 80, weight: 1}]}",
    );
    let p = port(&routes);
    assert_eq!(
        to(&p, "web", &req("GET", "/only", &[])).as_deref(),
        Some("a/v2")
    );
    assert_eq!(
        to(&p, "web", &req("GET", "/other", &[])),
        None,
        "the producer route does not apply to web's clients"
    );
    assert_eq!(
        to(&p, "a", &req("GET", "/only", &[])).as_deref(),
        Some("a/v1")
    );
    assert_eq!(
        to(&p, "b", &req("GET", "/only", &[])).as_deref(),
        Some("a/v1")
    );
}

#[test]
fn clients_no_route_applies_to_go_to_the_service_itself() {
    let p = port(&route(
        "web",
        "consumer",
        "{backends: [{service: a/v2, port: 80, weight: 1}]}",
    ));
    assert_eq!(
        to(&p, "web", &req("GET", "/", &[])).as_deref(),
        Some("a/v2")
    );
    let rule = p.pick(Some("other"), &req("GET", "/", &[])).unwrap().rule;
    let itself = rule.backends[0].target.as_ref().unwrap();
    assert_eq!((itself.service.as_str(), itself.target_port), ("a/s", 8080));
}

#[test]
fn a_backend_that_does_not_exist_is_kept_as_an_invalid_share() {
    let p = port(&route(
        "a",
        "r",
        "{backends: [{service: a/gone, port: 80, weight: 3}, {service: a/v1, port: 81, weight: 1}]}",
    ));
    let rule = p.pick(Some("a"), &req("GET", "/", &[])).unwrap().rule;
    assert_eq!(rule.backends.len(), 2);
    assert!(
        rule.backends.iter().all(|b| b.target.is_none()),
        "unknown service, unknown port"
    );
    assert_eq!(rule.backends[0].weight, 3);
}

#[test]
fn equal_matches_go_to_the_route_that_sorts_first_then_the_earlier_rule() {
    let routes = route(
        "a",
        "zeta",
        "{matches: [{path: {type: PathPrefix, value: /x}}], backends: [{service: a/v2, port: 80, weight: 1}]}",
    ) + &route(
        "a",
        "alpha",
        "{matches: [{path: {type: PathPrefix, value: /x}}], backends: [{service: a/v1, port: 80, weight: 1}]},\
         {matches: [{path: {type: PathPrefix, value: /x}}], backends: [{service: a/s, port: 80, weight: 1}]}",
    );
    let p = port(&routes);
    assert_eq!(to(&p, "a", &req("GET", "/x", &[])).as_deref(), Some("a/v1"));
}

#[test]
fn equal_matches_go_to_the_older_route_before_the_name_decides() {
    let older = |name: &str, created: i64, to: &str| {
        format!(
            "  - {{kind: HTTPRoute, namespace: a, name: {name}, created: {created}, parents: [{{service: a/s}}], \
             rules: [{{matches: [{{path: {{type: PathPrefix, value: /x}}}}], backends: [{{service: {to}, port: 80, weight: 1}}]}}]}}\n"
        )
    };
    // zeta is older than alpha: it wins though its name sorts last.
    let p = port(&(older("zeta", 1_700_000_000, "a/v2") + &older("alpha", 1_700_000_100, "a/v1")));
    assert_eq!(to(&p, "a", &req("GET", "/x", &[])).as_deref(), Some("a/v2"));
    // Created in the same second: the name decides.
    let p = port(&(older("zeta", 1_700_000_000, "a/v2") + &older("alpha", 1_700_000_000, "a/v1")));
    assert_eq!(to(&p, "a", &req("GET", "/x", &[])).as_deref(), Some("a/v1"));
}

#[test]
fn header_and_query_matches_take_exact_values_or_whole_value_regexes() {
    let p = port(&route(
        "a",
        "r",
        "{matches: [{headers: [{name: x-v, value: 'v[0-9]', type: RegularExpression}]}], backends: [{service: a/v1, port: 80, weight: 1}]},\
         {matches: [{queryParams: [{name: env, value: canary}]}], backends: [{service: a/v2, port: 80, weight: 1}]}",
    ));
    assert_eq!(
        to(&p, "a", &req("GET", "/", &[("x-v", "v2")])).as_deref(),
        Some("a/v1")
    );
    assert_eq!(
        to(&p, "a", &req("GET", "/", &[("x-v", "v22")])),
        None,
        "the whole value"
    );
    assert_eq!(
        to(&p, "a", &req("GET", "/?a=1&env=canary", &[])).as_deref(),
        Some("a/v2")
    );
    assert_eq!(
        to(&p, "a", &req("GET", "/?env=canary&env=x", &[])).as_deref(),
        Some("a/v2")
    );
    assert_eq!(
        to(&p, "a", &req("GET", "/?env=x&env=canary", &[])),
        None,
        "the first value"
    );
}
