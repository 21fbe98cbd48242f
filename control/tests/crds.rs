//! The CRD YAML in charts/weft/crds/ is what the Rust types generate.

use std::path::Path;

#[test]
fn the_committed_crd_yaml_matches_the_rust_types() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../charts/weft/crds");
    for (name, generated) in weft_control::crd::generated().expect("generates") {
        let path = dir.join(name);
        let committed = std::fs::read_to_string(&path)
            .unwrap_or_else(|e| panic!("{}: {e}; run `cargo xtask crds`", path.display()));
        assert!(
            committed == generated,
            "{} differs from the Rust types in control/src/crd.rs: run `cargo xtask crds` and commit the result",
            path.display()
        );
    }
}
