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
    let stray = (value(), value())
        .prop_map(|(k, v)| format!("apiVersion: v1\nkind: {k}\nmetadata: {{name: {v}}}\nx: 1\n"));
    prop_oneof![ns, pod, svc, stray]
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
            Ok(parsed) => match Store::default().applied(parsed) {
                Ok((_, world)) => {
                    // Every endpoint is a known workload.
                    for svc in world.services.values() {
                        for ip in &svc.endpoints {
                            prop_assert!(world.workloads.contains_key(ip));
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
            },
        }
    }
}
