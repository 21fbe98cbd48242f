//! The proxy's side of the control plane: the gRPC client that follows the
//! per-node config stream and asks the CA for certificates ([`client`]),
//! over TLS checked against the mesh's roots (`secure`).

pub mod client;
mod secure;
