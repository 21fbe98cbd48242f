//! Writes weft's CRD YAML, generated from its Rust types, into a directory
//! (`cargo xtask crds` runs it for `charts/weft/crds/`).

use std::path::PathBuf;
use std::process::ExitCode;

fn main() -> ExitCode {
    let Some(dir) = std::env::args_os().nth(1).map(PathBuf::from) else {
        eprintln!("usage: weft-crdgen <directory>");
        return ExitCode::from(2);
    };
    let files = match weft_control::crd::generated() {
        Ok(f) => f,
        Err(e) => {
            eprintln!("generating the CRDs: {e}");
            return ExitCode::FAILURE;
        }
    };
    for (name, content) in files {
        let path = dir.join(name);
        if let Err(e) = std::fs::write(&path, content) {
            eprintln!("writing {}: {e}", path.display());
            return ExitCode::FAILURE;
        }
        println!("wrote {}", path.display());
    }
    ExitCode::SUCCESS
}
