//! Conversions between the domain model and the wire types (the boundary).

use weft_control_api::discovery as pb;

use crate::error::Problem;
use crate::model::{Delta, NodeConfig, Service, Workload};

impl From<&Workload> for pb::Workload {
    fn from(w: &Workload) -> pb::Workload {
        pb::Workload {
            namespace: w.namespace.clone(),
            name: w.name.clone(),
            node: w.node.clone(),
            ip: w.ip.to_string(),
            service_account: w.service_account.clone(),
            meshed: w.meshed,
            fast_path: w.fast_path,
        }
    }
}

impl From<&Service> for pb::Service {
    fn from(s: &Service) -> pb::Service {
        pb::Service {
            namespace: s.namespace.clone(),
            name: s.name.clone(),
            cluster_ip: s.cluster_ip.to_string(),
            ports: s
                .ports
                .iter()
                .map(|p| pb::ServicePort {
                    port: u32::from(p.port),
                    target_port: u32::from(p.target_port),
                })
                .collect(),
            endpoints: s.endpoints.iter().map(ToString::to_string).collect(),
        }
    }
}

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

/// A full snapshot.
pub(crate) fn full(version: u64, config: &NodeConfig) -> pb::ConfigUpdate {
    pb::ConfigUpdate {
        version,
        full: true,
        base_version: 0,
        workloads: config.workloads.values().map(Into::into).collect(),
        services: config.services.values().map(Into::into).collect(),
        removed_workloads: Vec::new(),
        removed_services: Vec::new(),
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
    }
}
