//! Where objects come from: a directory of YAML files ([`file`]) or the
//! Kubernetes API ([`kubernetes`], watchers). Both produce [`Document`]s for
//! one [`crate::index::Store`].

pub mod file;
pub mod kubernetes;

pub use file::{Document, Object, ObjectKey};
