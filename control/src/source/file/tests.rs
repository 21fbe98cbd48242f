use super::*;

const GOOD: &str = r#"
apiVersion: v1
kind: Namespace
metadata: {name: shop, labels: {weft.io/mesh: enabled}}
---
apiVersion: v1
kind: Pod
metadata: {name: web-1, namespace: shop, labels: {app: web}}
spec:
  nodeName: node-1
  serviceAccountName: web
  containers: [{name: web, image: web}]
status: {podIP: 198.18.1.2}
---
apiVersion: v1
kind: Service
metadata: {name: web, namespace: shop}
spec:
  clusterIP: 198.19.0.10
  selector: {app: web}
  ports: [{port: 80, targetPort: 8080}]
"#;

fn problems(text: &str) -> Vec<Problem> {
    parse("f.yaml", text).expect_err("rejected").problems
}

#[test]
fn every_document_of_a_file_is_read_with_its_number() {
    let docs = parse("f.yaml", GOOD).unwrap();
    let keys: Vec<String> = docs.iter().map(|d| d.key().to_string()).collect();
    assert_eq!(
        keys,
        ["Namespace shop", "Pod shop/web-1", "Service shop/web"]
    );
    assert_eq!(docs[2].document, 3);
}

#[test]
fn an_unknown_field_is_named_with_file_document_and_path() {
    let p = problems(&GOOD.replace("serviceAccountName: web", "serviceAcountName: web"));
    assert_eq!(
        (p[0].document, p[0].path.as_str()),
        (2, "spec.serviceAcountName")
    );
    assert_eq!(
        p[0].to_string(),
        "f.yaml document 2: spec.serviceAcountName: unknown field"
    );
}

#[test]
fn a_wrong_type_is_named_with_its_path() {
    let p = problems(&GOOD.replace("port: 80,", "port: eighty,"));
    assert_eq!(
        (p[0].document, p[0].path.as_str()),
        (3, "spec.ports[0].port")
    );
}

#[test]
fn an_unsupported_kind_and_a_missing_name_are_problems_and_all_are_reported() {
    let text = "apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: x}\n---\napiVersion: v1\nkind: Service\nmetadata: {}\n";
    let p = problems(text);
    assert_eq!(p.len(), 2);
    assert_eq!((p[0].document, p[0].path.as_str()), (1, "kind"));
    assert!(p[0].message.contains("apps/v1 Deployment is not supported"));
    assert_eq!((p[1].document, p[1].path.as_str()), (2, "metadata.name"));
}

#[test]
fn malformed_yaml_is_rejected() {
    let p = problems("apiVersion: v1\nkind: [\n");
    assert!(p[0].message.starts_with("not YAML"), "{p:?}");
}

#[test]
fn unknown_fields_in_lists_get_the_same_path_style_as_type_errors() {
    let p = problems(&GOOD.replace(
        "containers: [{name: web, image: web}]",
        "containers: [{name: web, image: web, imagePolicy: x}]",
    ));
    assert_eq!(p[0].path, "spec.containers[0].imagePolicy");
}
