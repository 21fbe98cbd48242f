//! Conversions between the domain model and the wire types (the boundary).

use weft_control_api::discovery as pb;

use crate::crd::Action;
use crate::error::Problem;
use crate::model::{Delta, NodeConfig, PathMatch, Policy, Route, Service, Workload};

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

impl From<&Route> for pb::Route {
    fn from(r: &Route) -> pb::Route {
        pb::Route {
            kind: r.kind.as_str().to_owned(),
            namespace: r.namespace.clone(),
            name: r.name.clone(),
            parents: r
                .parents
                .iter()
                .map(|(service, port)| pb::ParentRef {
                    service: service.clone(),
                    port: port.map_or(0, u32::from),
                })
                .collect(),
            rules: r
                .rules
                .iter()
                .map(|rule| pb::RouteRule {
                    matches: rule
                        .matches
                        .iter()
                        .map(|m| pb::RouteMatch {
                            path: m.path.as_ref().map(|p| match p {
                                PathMatch::Exact(v) => pb::route_match::Path::Exact(v.clone()),
                                PathMatch::Prefix(v) => pb::route_match::Path::Prefix(v.clone()),
                                PathMatch::Regex(v) => pb::route_match::Path::Regex(v.clone()),
                            }),
                            method: m.method.clone().unwrap_or_default(),
                            headers: m
                                .headers
                                .iter()
                                .map(|(name, value)| pb::Header {
                                    name: name.clone(),
                                    value: value.clone(),
                                })
                                .collect(),
                        })
                        .collect(),
                    backends: rule
                        .backends
                        .iter()
                        .map(|b| pb::Backend {
                            service: b.service.clone(),
                            port: u32::from(b.port),
                            weight: b.weight,
                        })
                        .collect(),
                })
                .collect(),
        }
    }
}

impl From<&Policy> for pb::Policy {
    fn from(p: &Policy) -> pb::Policy {
        pb::Policy {
            namespace: p.namespace.clone(),
            name: p.name.clone(),
            action: match p.spec.action {
                Action::Allow => pb::policy::Action::Allow,
                Action::Deny => pb::policy::Action::Deny,
            }
            .into(),
            rules: p
                .spec
                .rules
                .iter()
                .map(|r| pb::PolicyRule {
                    from: r
                        .from
                        .iter()
                        .map(|f| pb::PolicySource {
                            principals: f.principals.clone(),
                            namespaces: f.namespaces.clone(),
                        })
                        .collect(),
                    to: r
                        .to
                        .iter()
                        .map(|t| pb::PolicyOperation {
                            ports: t.ports.iter().map(|&p| u32::from(p)).collect(),
                            methods: t.methods.clone(),
                            paths: t.paths.clone(),
                        })
                        .collect(),
                })
                .collect(),
            workloads: p.workloads.iter().map(ToString::to_string).collect(),
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
    }
}
