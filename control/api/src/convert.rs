//! The one place where the domain model (`weft-model`) and the wire types
//! meet: `From<&model>` for what the control plane sends, `TryFrom<&wire>`
//! for what a proxy receives. A proxy refuses an update whose conversion
//! fails; the error names the object and the field.

use std::net::Ipv4Addr;

use weft_model::{
    Backend, HeaderMatch, ParentRef, PathMatch, Policy, PolicyAction, PolicyOperation, PolicyRule,
    PolicySource, Route, RouteKind, RouteMatch, RouteRule, Service, ServicePort, Workload,
};

use crate::discovery as pb;

/// A wire message that does not make a model object: what and where.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{what} {key}: {problem}")]
pub struct WireError {
    /// `workload`, `service`, `route` or `policy`.
    pub what: &'static str,
    /// The object's key.
    pub key: String,
    /// What is wrong with it.
    pub problem: String,
}

fn ip(what: &'static str, key: &str, field: &str, text: &str) -> Result<Ipv4Addr, WireError> {
    text.parse().map_err(|_| WireError {
        what,
        key: key.to_owned(),
        problem: format!("{field} `{text}` is not an IPv4 address"),
    })
}

fn port(what: &'static str, key: &str, field: &str, p: u32) -> Result<u16, WireError> {
    u16::try_from(p)
        .ok()
        .filter(|p| *p != 0)
        .ok_or_else(|| WireError {
            what,
            key: key.to_owned(),
            problem: format!("{field} {p} is not a port"),
        })
}

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

impl TryFrom<&pb::Workload> for Workload {
    type Error = WireError;

    fn try_from(w: &pb::Workload) -> Result<Workload, WireError> {
        let key = format!("{}/{}", w.namespace, w.name);
        Ok(Workload {
            namespace: w.namespace.clone(),
            name: w.name.clone(),
            node: w.node.clone(),
            ip: ip("workload", &key, "ip", &w.ip)?,
            service_account: w.service_account.clone(),
            meshed: w.meshed,
            fast_path: w.fast_path,
        })
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

impl TryFrom<&pb::Service> for Service {
    type Error = WireError;

    fn try_from(s: &pb::Service) -> Result<Service, WireError> {
        let key = format!("{}/{}", s.namespace, s.name);
        Ok(Service {
            namespace: s.namespace.clone(),
            name: s.name.clone(),
            cluster_ip: ip("service", &key, "clusterIP", &s.cluster_ip)?,
            ports: s
                .ports
                .iter()
                .map(|p| {
                    Ok(ServicePort {
                        port: port("service", &key, "port", p.port)?,
                        target_port: port("service", &key, "target port", p.target_port)?,
                    })
                })
                .collect::<Result<_, WireError>>()?,
            endpoints: s
                .endpoints
                .iter()
                .map(|e| ip("service", &key, "endpoint", e))
                .collect::<Result<_, _>>()?,
        })
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
                .map(|p| pb::ParentRef {
                    service: p.service.clone(),
                    port: p.port.map_or(0, u32::from),
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
                                PathMatch::PathPrefix(v) => {
                                    pb::route_match::Path::Prefix(v.clone())
                                }
                                PathMatch::RegularExpression(v) => {
                                    pb::route_match::Path::Regex(v.clone())
                                }
                            }),
                            method: m.method.clone().unwrap_or_default(),
                            headers: m
                                .headers
                                .iter()
                                .map(|h| pb::Header {
                                    name: h.name.clone(),
                                    value: h.value.clone(),
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

impl TryFrom<&pb::Route> for Route {
    type Error = WireError;

    fn try_from(r: &pb::Route) -> Result<Route, WireError> {
        let key = format!("{}/{}", r.namespace, r.name);
        let kind = RouteKind::parse(&r.kind).ok_or_else(|| WireError {
            what: "route",
            key: key.clone(),
            problem: format!("kind `{}` is neither HTTPRoute nor GRPCRoute", r.kind),
        })?;
        let matches = |rule: &pb::RouteRule| {
            rule.matches
                .iter()
                .map(|m| RouteMatch {
                    path: m.path.as_ref().map(|p| match p {
                        pb::route_match::Path::Exact(v) => PathMatch::Exact(v.clone()),
                        pb::route_match::Path::Prefix(v) => PathMatch::PathPrefix(v.clone()),
                        pb::route_match::Path::Regex(v) => PathMatch::RegularExpression(v.clone()),
                    }),
                    method: (!m.method.is_empty()).then(|| m.method.clone()),
                    headers: m
                        .headers
                        .iter()
                        .map(|h| HeaderMatch {
                            name: h.name.clone(),
                            value: h.value.clone(),
                        })
                        .collect(),
                })
                .collect()
        };
        Ok(Route {
            kind,
            namespace: r.namespace.clone(),
            name: r.name.clone(),
            parents: r
                .parents
                .iter()
                .map(|p| {
                    Ok(ParentRef {
                        service: p.service.clone(),
                        port: match p.port {
                            0 => None,
                            n => Some(port("route", &key, "parent port", n)?),
                        },
                    })
                })
                .collect::<Result<_, WireError>>()?,
            rules: r
                .rules
                .iter()
                .map(|rule| {
                    Ok(RouteRule {
                        matches: matches(rule),
                        backends: rule
                            .backends
                            .iter()
                            .map(|b| {
                                Ok(Backend {
                                    service: b.service.clone(),
                                    port: port("route", &key, "backend port", b.port)?,
                                    weight: b.weight,
                                })
                            })
                            .collect::<Result<_, WireError>>()?,
                    })
                })
                .collect::<Result<_, WireError>>()?,
        })
    }
}

impl From<&Policy> for pb::Policy {
    fn from(p: &Policy) -> pb::Policy {
        pb::Policy {
            namespace: p.namespace.clone(),
            name: p.name.clone(),
            action: match p.action {
                PolicyAction::Allow => pb::policy::Action::Allow,
                PolicyAction::Deny => pb::policy::Action::Deny,
            }
            .into(),
            rules: p
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

impl TryFrom<&pb::Policy> for Policy {
    type Error = WireError;

    fn try_from(p: &pb::Policy) -> Result<Policy, WireError> {
        let key = format!("{}/{}", p.namespace, p.name);
        let action = match pb::policy::Action::try_from(p.action) {
            Ok(pb::policy::Action::Allow) => PolicyAction::Allow,
            Ok(pb::policy::Action::Deny) => PolicyAction::Deny,
            Err(_) => {
                return Err(WireError {
                    what: "policy",
                    key,
                    problem: format!("unknown action {}", p.action),
                });
            }
        };
        let rules = p
            .rules
            .iter()
            .map(|r| {
                let to =
                    r.to.iter()
                        .map(|t| {
                            Ok(PolicyOperation {
                                ports: t
                                    .ports
                                    .iter()
                                    .map(|&n| port("policy", &key, "port", n))
                                    .collect::<Result<_, _>>()?,
                                methods: t.methods.clone(),
                                paths: t.paths.clone(),
                            })
                        })
                        .collect::<Result<_, WireError>>()?;
                Ok(PolicyRule {
                    from: r
                        .from
                        .iter()
                        .map(|f| PolicySource {
                            principals: f.principals.clone(),
                            namespaces: f.namespaces.clone(),
                        })
                        .collect(),
                    to,
                })
            })
            .collect::<Result<_, WireError>>()?;
        Ok(Policy {
            namespace: p.namespace.clone(),
            name: p.name.clone(),
            selector: Default::default(),
            action,
            rules,
            workloads: p
                .workloads
                .iter()
                .map(|w| ip("policy", &key, "workload", w))
                .collect::<Result<_, _>>()?,
        })
    }
}

#[cfg(test)]
mod tests;
