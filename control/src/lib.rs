//! weft's control plane.
//!
//! ```text
//!  YAML files / Kubernetes API ──► source ──► Store (typed objects)
//!                                              │ world(): validate, convert
//!                                              ▼
//!                                     World (domain model) ──► per-node NodeConfig
//! ```
//!
//! Wire (protobuf) and Kubernetes types stop at the boundary: the core works
//! on [`model`].

pub mod auth;
pub mod ca;
pub mod client;
pub mod crd;
pub mod error;
pub mod index;
pub mod model;
pub mod server;
pub mod source;
pub mod token_review;
mod wire;

pub use error::{Problem, ProblemKind, Rejected};
/// The Kubernetes client weft uses (for `weft control --kubernetes`).
pub use kube;
