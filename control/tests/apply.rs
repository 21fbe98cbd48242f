//! `weft apply` and `weft delete` on a file-mode control plane: objects
//! get a creation time as the API server gives one, kept across re-applies
//! and restarts; what was accepted with a warning (a backend not there
//! yet, a match two routes claim) loads again after a restart.

use std::path::PathBuf;

use weft_control::index::{Check, Store};
use weft_control::server::ControlPlane;
use weft_control::source::file;

const BASE: &str = r#"
apiVersion: v1
kind: Namespace
metadata: {name: shop}
---
apiVersion: v1
kind: Service
metadata: {name: web, namespace: shop}
spec: {clusterIP: 10.96.0.10, ports: [{port: 80}]}
"#;

fn route(name: &str, backend: &str, created: Option<&str>) -> String {
    let created = created.map_or(String::new(), |c| format!(", creationTimestamp: \"{c}\""));
    format!(
        "apiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {{name: {name}, namespace: shop{created}}}\n\
         spec:\n  parentRefs: [{{kind: Service, group: \"\", name: web, port: 80}}]\n  rules: [{{backendRefs: [{{name: {backend}, port: 80}}]}}]\n"
    )
}

/// A directory removed when the test ends, passing or not.
struct Dir(PathBuf);

impl Drop for Dir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn created(cp: &ControlPlane, name: &str) -> i64 {
    cp.published().world.routes[&format!("HTTPRoute/shop/{name}")].created
}

/// A control plane started from what `dir` holds, as `weft control --dir`.
fn restart(dir: &Dir) -> std::sync::Arc<ControlPlane> {
    let docs = file::load(&dir.0).expect("the stored files load");
    let (store, _, warnings) = Store::default()
        .applied_with(docs, Check::Accepting)
        .expect("accepted again");
    assert_eq!(warnings.len(), 2, "still warned of: {warnings:?}");
    ControlPlane::new(store, Some(dir.0.clone())).expect("starts")
}

#[test]
fn creation_times_are_stamped_kept_across_reapplies_and_restarts_and_accepted_references_load_again()
 {
    let dir = Dir(std::env::temp_dir().join(format!("weft-apply-test-{}", std::process::id())));
    std::fs::create_dir_all(&dir.0).unwrap();
    std::fs::write(dir.0.join("base.yaml"), BASE).unwrap();
    let (store, _) = Store::default()
        .applied(file::load(&dir.0).unwrap())
        .unwrap();
    let cp = ControlPlane::new(store, Some(dir.0.clone())).unwrap();
    let apply = |name: &str, text: String| {
        cp.apply(&[(name.to_owned(), text)], false, Check::Accepting)
            .expect("applied")
    };
    // Given: kept. Not given: now. Re-applied without: the stored one.
    apply(
        "old.yaml",
        route("old", "web", Some("2020-01-01T00:00:00Z")),
    );
    assert_eq!(created(&cp, "old"), 1_577_836_800);
    apply("old.yaml", route("old", "web", None));
    assert_eq!(created(&cp, "old"), 1_577_836_800, "kept on re-apply");
    // A backend not there yet, and the same match as `old`: both accepted,
    // both warned of.
    let (_, warnings) = apply("new.yaml", route("new", "later", None));
    let messages: Vec<&str> = warnings.iter().map(|w| w.message.as_str()).collect();
    assert_eq!(messages.len(), 2, "{messages:?}");
    assert!(
        messages
            .iter()
            .any(|m| m.contains("service shop/later does not exist"))
    );
    assert!(
        messages
            .iter()
            .any(|m| m.contains("the same match as HTTPRoute/shop/"))
    );
    let now = created(&cp, "new");
    assert!(now > 1_700_000_000, "stamped now: {now}");
    let stored = std::fs::read_to_string(dir.0.join("applied-new.yaml")).unwrap();
    assert!(stored.contains("creationTimestamp"), "{stored}");
    // A restart: the same times, and the dangling route loads again.
    drop(cp);
    let cp = restart(&dir);
    assert_eq!(created(&cp, "old"), 1_577_836_800);
    assert_eq!(created(&cp, "new"), now);
}
