//! The config stream's messages from the per-node views. The model objects
//! themselves convert in `weft_control_api::convert`, shared with the proxy.

use weft_control_api::discovery as pb;

use crate::error::Problem;
use crate::model::{Delta, NodeConfig};

impl From<&Problem> for pb::Problem {
    fn from(p: &Problem) -> pb::Problem {
        pb::Problem {
            file: p.file.clone(),
            document: u32::try_from(p.document).unwrap_or(u32::MAX),
            path: p.path.clone(),
            message: p.message.clone(),
        }
    }
}

/// A full snapshot: a node's common and local parts.
pub(crate) fn full(version: u64, common: &NodeConfig, local: &NodeConfig) -> pb::ConfigUpdate {
    let both = || [common, local].into_iter();
    pb::ConfigUpdate {
        version,
        full: true,
        base_version: 0,
        workloads: both()
            .flat_map(|c| c.workloads.values())
            .map(Into::into)
            .collect(),
        services: both()
            .flat_map(|c| c.services.values())
            .map(Into::into)
            .collect(),
        removed_workloads: Vec::new(),
        removed_services: Vec::new(),
        routes: both()
            .flat_map(|c| c.routes.values())
            .map(Into::into)
            .collect(),
        removed_routes: Vec::new(),
        policies: both()
            .flat_map(|c| c.policies.values())
            .map(Into::into)
            .collect(),
        removed_policies: Vec::new(),
        telemetry: both()
            .flat_map(|c| c.telemetry.values())
            .map(Into::into)
            .collect(),
        removed_telemetry: Vec::new(),
    }
}

/// An incremental update on top of `base_version`.
pub(crate) fn incremental(version: u64, base_version: u64, delta: &Delta) -> pb::ConfigUpdate {
    pb::ConfigUpdate {
        version,
        full: false,
        base_version,
        workloads: delta.workloads.iter().map(Into::into).collect(),
        services: delta.services.iter().map(Into::into).collect(),
        removed_workloads: delta
            .removed_workloads
            .iter()
            .map(ToString::to_string)
            .collect(),
        removed_services: delta.removed_services.clone(),
        routes: delta.routes.iter().map(Into::into).collect(),
        removed_routes: delta.removed_routes.clone(),
        policies: delta.policies.iter().map(Into::into).collect(),
        removed_policies: delta.removed_policies.clone(),
        telemetry: delta.telemetry.iter().map(Into::into).collect(),
        removed_telemetry: delta.removed_telemetry.clone(),
    }
}
