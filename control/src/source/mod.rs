//! Where objects come from: a directory of YAML files ([`file`]); the
//! Kubernetes API (watchers) comes next. Both produce [`Document`]s for one
//! index.

pub mod file;

pub use file::{Document, Object, ObjectKey};
