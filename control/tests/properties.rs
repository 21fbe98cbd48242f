//! Property tests of the YAML-to-model path: no input makes it panic, and
//! every problem points into the input it came from.

use proptest::prelude::*;
use weft_control::index::Store;
use weft_control::source::file::parse;

/// Field values that are sometimes right and often wrong.
fn value() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("198.18.1.2".to_owned()),
        Just("198.19.0.10".to_owned()),
        Just("not-an-ip".to_owned()),
        Just("80".to_owned()),
        Just("-1".to_owned()),
        Just("70000".to_owned()),
        Just("http".to_owned()),
        Just("enabled".to_owned()),
        Just("[]".to_owned()),
        Just("{}".to_owned()),
        Just("~".to_owned()),
        "[a-z0-9.-]{0,12}",
    ]
}

/// Documents shaped like the objects weft reads, with random values,
/// missing parts and strays.
fn document() -> impl Strategy<Value = String> {
    let ns = (value(), value()).prop_map(|(name, mesh)| {
        format!("apiVersion: v1\nkind: Namespace\nmetadata: {{name: {name}, labels: {{weft.io/mesh: {mesh}}}}}\n")
    });
    let pod = (value(), value(), value(), value(), value()).prop_map(|(name, ns, node, ip, label)| {
        format!(
            "apiVersion: v1\nkind: Pod\nmetadata: {{name: {name}, namespace: {ns}, labels: {{app: {label}}}}}\n\
             spec: {{nodeName: {node}, containers: [{{name: c}}]}}\nstatus: {{podIP: {ip}}}\n"
        )
    });
    let svc = (value(), value(), value(), value(), value()).prop_map(|(name, ip, port, target, sel)| {
        format!(
            "apiVersion: v1\nkind: Service\nmetadata: {{name: {name}}}\n\
             spec: {{clusterIP: {ip}, selector: {{app: {sel}}}, ports: [{{port: {port}, targetPort: {target}}}]}}\n"
        )
    });
    let slice = (value(), value(), value(), value()).prop_map(|(name, svc, port, ip)| {
        format!(
            "apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\n\
             metadata: {{name: {name}, labels: {{kubernetes.io/service-name: {svc}}}}}\n\
             addressType: IPv4\nports: [{{name: {svc}, port: {port}}}]\nendpoints: [{{addresses: [{ip}]}}]\n"
        )
    });
    let route = (value(), value(), value(), value()).prop_map(|(name, parent, backend, path)| {
        format!(
            "apiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {{name: {name}}}\n\
             spec: {{parentRefs: [{{kind: Service, group: \"\", name: {parent}}}], \
             rules: [{{matches: [{{path: {{type: RegularExpression, value: \"{path}\"}}}}], \
             backendRefs: [{{name: {backend}, port: 80}}]}}]}}\n"
        )
    });
    let policy = (value(), value(), value()).prop_map(|(name, app, port)| {
        format!(
            "apiVersion: weft.io/v1alpha1\nkind: AuthorizationPolicy\nmetadata: {{name: {name}}}\n\
             spec: {{selector: {{matchLabels: {{app: {app}}}}}, action: DENY, rules: [{{to: [{{ports: [{port}]}}]}}]}}\n"
        )
    });
    let stray = (value(), value())
        .prop_map(|(k, v)| format!("apiVersion: v1\nkind: {k}\nmetadata: {{name: {v}}}\nx: 1\n"));
    prop_oneof![ns, pod, svc, slice, route, policy, stray]
}

/// An endpoint is a known workload, or an address an EndpointSlice of the
/// input names (a slice may point outside the cluster's pods).
fn known(world: &weft_control::model::World, text: &str, ip: std::net::Ipv4Addr) -> bool {
    world.workloads.contains_key(&ip) || text.contains(&format!("addresses: [{ip}]"))
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

    #[test]
    fn arbitrary_text_never_panics(text in ".{0,400}") {
        let _ = parse("fuzz.yaml", &text);
    }

    #[test]
    fn arbitrary_object_sets_never_panic_and_problems_point_into_the_input(docs in prop::collection::vec(document(), 0..12)) {
        let text = docs.join("---\n");
        match parse("gen.yaml", &text) {
            Err(rejected) => {
                prop_assert!(!rejected.problems.is_empty());
                for p in &rejected.problems {
                    prop_assert!(p.document >= 1 && p.document <= docs.len().max(1), "{p:?}");
                }
            }
            Ok(parsed) => {
                // Kubernetes mode takes the same objects one by one and
                // never fails: what it publishes is a valid world.
                let mut cluster = Store::default();
                for doc in parsed.clone() {
                    cluster.upsert(doc);
                }
                let (tolerated, _) = cluster.world_tolerant();
                for svc in tolerated.services.values() {
                    for ip in &svc.endpoints {
                        prop_assert!(known(&tolerated, &text, *ip));
                    }
                }
                let nodes: std::collections::BTreeSet<&str> =
                    tolerated.workloads.values().map(|w| w.node.as_str()).collect();
                for node in nodes {
                    let mine = tolerated.for_node(node);
                    for p in mine.policies.values() {
                        for ip in &p.workloads {
                            prop_assert_eq!(tolerated.workloads[ip].node.as_str(), node);
                        }
                    }
                }
                match Store::default().applied(parsed) {
                Ok((_, world)) => {
                    for svc in world.services.values() {
                        for ip in &svc.endpoints {
                            prop_assert!(known(&world, &text, *ip));
                        }
                    }
                }
                Err(rejected) => {
                    prop_assert!(!rejected.problems.is_empty());
                    for p in &rejected.problems {
                        prop_assert!(p.document >= 1 && p.document <= docs.len(), "{p:?}");
                        prop_assert_eq!(&p.file, "gen.yaml");
                    }
                }
                }
            }
        }
    }
}
