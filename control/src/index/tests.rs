use super::*;
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
            target_port: 8080
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
