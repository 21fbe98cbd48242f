//! weft's benchmark harness: an open-loop load generator ([`load`]) and the
//! scenarios that compare no mesh, Envoy sidecars and weft on the lab.

pub mod load;
