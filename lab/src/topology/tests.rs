use super::*;

const GOOD: &str = r#"
nodes: [{name: node-1}, {name: node-2}]
namespaces:
  - name: default
    labels: {weft.io/mesh: enabled}
  - name: legacy
pods:
  - {name: client, namespace: default, node: node-1}
  - {name: echo-1, namespace: default, node: node-1, labels: {app: echo}, command: [weft, lab, app, echo]}
  - {name: echo-2, namespace: default, node: node-2, labels: {app: echo, weft.io/mesh: disabled}}
  - {name: client, namespace: legacy, node: node-2}
services:
  - name: echo
    namespace: default
    selector: {app: echo}
    ports: [{name: http, port: 80, targetPort: 8080}]
"#;

fn problems(yaml: &str) -> Vec<Problem> {
    Topology::parse("t.yaml", yaml)
        .expect_err("must be rejected")
        .problems
}

#[test]
fn a_valid_topology_parses_with_defaults_filled_in() {
    let t = Topology::parse("t.yaml", GOOD).unwrap();
    assert_eq!(t.nodes.len(), 2);
    assert_eq!(t.pods[0].service_account, "default");
    assert_eq!(t.services[0].ports[0].target(), 8080);
    assert_eq!(t.services[0].ports[0].protocol, "TCP");
    assert!(t.identity.mtls, "mTLS is on unless turned off");
    assert_eq!(t.identity.certificate_ttl_seconds, None);
}

#[test]
fn identity_settings_parse_and_a_zero_certificate_lifetime_is_named() {
    let t = Topology::parse(
        "t.yaml",
        &format!("{GOOD}identity: {{mtls: false, certificateTtlSeconds: 30}}\n"),
    )
    .unwrap();
    assert!(!t.identity.mtls);
    assert_eq!(t.identity.certificate_ttl_seconds, Some(30));
    let p = problems(&format!("{GOOD}identity: {{certificateTtlSeconds: 0}}\n"));
    assert_eq!(p.len(), 1, "{p:?}");
    assert_eq!(p[0].path, "identity.certificateTtlSeconds");
}

#[test]
fn mesh_mode_comes_from_the_namespace_and_a_pod_label_overrides_it() {
    let t = Topology::parse("t.yaml", GOOD).unwrap();
    assert_eq!(t.mesh_mode(&t.pods[0]), MeshMode::Enabled);
    assert_eq!(t.mesh_mode(&t.pods[2]), MeshMode::Disabled);
    assert_eq!(t.mesh_mode(&t.pods[3]), MeshMode::Disabled);
}

#[test]
fn endpoints_are_the_pods_in_the_service_namespace_matching_every_selector_label() {
    let t = Topology::parse("t.yaml", GOOD).unwrap();
    let eps: Vec<&str> = t
        .endpoints(&t.services[0])
        .map(|p| p.name.as_str())
        .collect();
    assert_eq!(eps, ["echo-1", "echo-2"]);
}

#[test]
fn an_unknown_field_is_named_with_its_path_and_line() {
    let yaml = "nodes: [{name: a}]\npods:\n  - name: p\n    node: a\n    nmespace: x\n";
    let p = problems(yaml);
    assert_eq!(p.len(), 1);
    assert_eq!(p[0].path, "pods[0].nmespace");
    assert!(
        p[0].message.contains("unknown field `nmespace`"),
        "{}",
        p[0].message
    );
    assert_eq!(p[0].location.map(|l| l.0), Some(5));
}

#[test]
fn a_wrong_type_is_named_with_its_path() {
    let p = problems(
        "nodes: [{name: a}]\nservices:\n  - name: s\n    selector: {a: b}\n    ports: [{port: 70000}]\n",
    );
    assert_eq!(p[0].path, "services[0].ports[0].port");
    assert!(p[0].message.contains("70000"), "{}", p[0].message);
}

#[test]
fn malformed_yaml_is_rejected_with_a_location() {
    let p = problems("nodes: [{name: a}\n");
    assert!(p[0].location.is_some(), "{p:?}");
}

#[test]
fn dangling_references_and_duplicates_are_all_reported_with_paths() {
    let yaml = r#"
nodes: [{name: a}, {name: a}]
namespaces: [{name: default}]
pods:
  - {name: p, node: b}
  - {name: p, node: a, namespace: nowhere}
  - {name: p, node: a}
services:
  - {name: s, selector: {}, ports: [], clusterIP: 10.0.0.1}
"#;
    let got: Vec<String> = problems(yaml).into_iter().map(|p| p.path).collect();
    for want in [
        "nodes[1].name",
        "pods[0].node",
        "pods[1].namespace",
        "pods[2].name",
        "services[0].selector",
        "services[0].ports",
        "services[0].clusterIP",
    ] {
        assert!(got.iter().any(|g| g == want), "missing {want} in {got:?}");
    }
}

#[test]
fn names_must_be_dns_labels() {
    let p = problems("nodes: [{name: Node_1}]\n");
    assert_eq!(p[0].path, "nodes[0].name");
    assert!(p[0].message.contains("lowercase"), "{}", p[0].message);
}

#[test]
fn the_mesh_label_takes_only_enabled_or_disabled() {
    let p = problems(
        "nodes: [{name: a}]\nnamespaces: [{name: default, labels: {weft.io/mesh: yes}}]\n",
    );
    assert_eq!(p[0].path, "namespaces[0].labels.weft.io/mesh");
}

#[test]
fn the_error_text_names_file_field_and_reason() {
    let e = Topology::parse(
        "lab.yaml",
        "nodes: [{name: a}]\npods: [{name: p, node: zz}]\n",
    )
    .unwrap_err();
    let text = e.to_string();
    assert!(
        text.contains("lab.yaml: pods[0].node: unknown node `zz` (nodes: a)"),
        "{text}"
    );
}

#[test]
fn the_built_in_default_topology_is_valid() {
    let t = Topology::parse("default", crate::DEFAULT_TOPOLOGY).unwrap();
    assert_eq!(t.nodes.len(), 2);
}
