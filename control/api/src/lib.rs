//! weft's control-plane API, generated from `proto/` (protox, tonic).
//!
//! The wire types stop at the boundary: the control plane and the proxy
//! convert them to and from their own models.

/// `weft.discovery.v1`: the config stream between the control plane and
/// node proxies.
pub mod discovery {
    #![allow(
        missing_docs,
        missing_debug_implementations,
        unreachable_pub,
        unused_qualifications,
        clippy::all,
        clippy::pedantic,
        clippy::allow_attributes_without_reason,
        reason = "generated code"
    )]
    tonic::include_proto!("weft.discovery.v1");
}

pub mod convert;
