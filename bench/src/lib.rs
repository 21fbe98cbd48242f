//! weft's benchmark harness: an open-loop load generator ([`load`]), the
//! scenarios that compare no mesh, Envoy sidecars and weft on the lab
//! ([`run`], [`envoy`]), and the report ([`report`]).

pub mod envoy;
pub mod load;
pub mod report;
pub mod run;
