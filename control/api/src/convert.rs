//! The one place where the domain model (`weft-model`) and the wire types
//! meet: `From<&model>` for what the control plane sends, `TryFrom<&wire>`
//! for what a proxy receives. A proxy refuses an update whose conversion
//! fails; the error names the object and the field.

use std::net::Ipv4Addr;

use weft_model::{
    Backend, Filter, HeaderMatch, HeaderModifier, HeaderValue, Mirror, ParentRef, PathMatch,
    PathModifier, Policy, PolicyAction, PolicyOperation, PolicyRule, PolicySource, Redirect, Retry,
    Rewrite, Route, RouteKind, RouteMatch, RouteRule, Service, ServicePort, Telemetry, Timeouts,
    ValueMatch, Workload,
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
                    app_protocol: p.app_protocol.clone().unwrap_or_default(),
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
                        app_protocol: (!p.app_protocol.is_empty()).then(|| p.app_protocol.clone()),
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
            created: r.created,
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
                    filters: rule.filters.iter().map(filter).collect(),
                    retry: rule.retry.as_ref().map(|r| pb::RouteRetry {
                        attempts: r.attempts,
                        codes: r.codes.iter().map(|&c| u32::from(c)).collect(),
                        backoff_ms: r.backoff_ms.unwrap_or(0),
                    }),
                    timeouts: (!rule.timeouts.is_empty()).then(|| pb::RouteTimeouts {
                        request_ms: rule.timeouts.request_ms.unwrap_or(0),
                        backend_request_ms: rule.timeouts.backend_request_ms.unwrap_or(0),
                    }),
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
                            headers: m.headers.iter().map(header).collect(),
                            query_params: m.query.iter().map(header).collect(),
                        })
                        .collect(),
                    backends: rule
                        .backends
                        .iter()
                        .map(|b| pb::Backend {
                            service: b.service.clone(),
                            port: u32::from(b.port),
                            weight: b.weight,
                            filters: b.filters.iter().map(filter).collect(),
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
                    headers: m.headers.iter().map(header_match).collect(),
                    query: m.query_params.iter().map(header_match).collect(),
                })
                .collect()
        };
        Ok(Route {
            kind,
            created: r.created,
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
                    let timeouts = rule.timeouts.unwrap_or_default();
                    Ok(RouteRule {
                        matches: matches(rule),
                        filters: rule
                            .filters
                            .iter()
                            .map(|f| filter_from(f, &key))
                            .collect::<Result<_, _>>()?,
                        timeouts: Timeouts {
                            request_ms: (timeouts.request_ms != 0).then_some(timeouts.request_ms),
                            backend_request_ms: (timeouts.backend_request_ms != 0)
                                .then_some(timeouts.backend_request_ms),
                        },
                        retry: match &rule.retry {
                            None => None,
                            Some(r) => Some(Retry {
                                attempts: r.attempts,
                                codes: r
                                    .codes
                                    .iter()
                                    .map(|&c| {
                                        u16::try_from(c)
                                            .ok()
                                            .filter(|c| (500..600).contains(c))
                                            .ok_or_else(|| WireError {
                                                what: "route",
                                                key: key.clone(),
                                                problem: format!(
                                                    "retry code {c} is not 500 to 599"
                                                ),
                                            })
                                    })
                                    .collect::<Result<_, _>>()?,
                                backoff_ms: (r.backoff_ms != 0).then_some(r.backoff_ms),
                            }),
                        },
                        backends: rule
                            .backends
                            .iter()
                            .map(|b| {
                                Ok(Backend {
                                    service: b.service.clone(),
                                    port: port("route", &key, "backend port", b.port)?,
                                    weight: b.weight,
                                    filters: b
                                        .filters
                                        .iter()
                                        .map(|f| filter_from(f, &key))
                                        .collect::<Result<_, _>>()?,
                                })
                            })
                            .collect::<Result<_, WireError>>()?,
                    })
                })
                .collect::<Result<_, WireError>>()?,
        })
    }
}

fn filter(f: &Filter) -> pb::Filter {
    use pb::filter::Kind;
    let modifier = |m: &HeaderModifier| pb::HeaderModifier {
        set: m.set.iter().map(header_value).collect(),
        add: m.add.iter().map(header_value).collect(),
        remove: m.remove.clone(),
    };
    let path = |p: &PathModifier| pb::PathModifier {
        kind: Some(match p {
            PathModifier::ReplaceFullPath(v) => pb::path_modifier::Kind::ReplaceFullPath(v.clone()),
            PathModifier::ReplacePrefixMatch(v) => {
                pb::path_modifier::Kind::ReplacePrefixMatch(v.clone())
            }
        }),
    };
    pb::Filter {
        kind: Some(match f {
            Filter::RequestHeaderModifier(m) => Kind::RequestHeaderModifier(modifier(m)),
            Filter::ResponseHeaderModifier(m) => Kind::ResponseHeaderModifier(modifier(m)),
            Filter::RequestRedirect(r) => Kind::RequestRedirect(pb::Redirect {
                scheme: r.scheme.clone().unwrap_or_default(),
                hostname: r.hostname.clone().unwrap_or_default(),
                path: r.path.as_ref().map(path),
                port: r.port.map_or(0, u32::from),
                status: u32::from(r.status),
            }),
            Filter::UrlRewrite(r) => Kind::UrlRewrite(pb::Rewrite {
                hostname: r.hostname.clone().unwrap_or_default(),
                path: r.path.as_ref().map(path),
            }),
            Filter::RequestMirror(m) => Kind::RequestMirror(pb::Mirror {
                service: m.service.clone(),
                port: u32::from(m.port),
                numerator: m.numerator,
                denominator: m.denominator,
            }),
        }),
    }
}

fn filter_from(f: &pb::Filter, key: &str) -> Result<Filter, WireError> {
    use pb::filter::Kind;
    let bad = |problem: String| WireError {
        what: "route",
        key: key.to_owned(),
        problem,
    };
    let modifier = |m: &pb::HeaderModifier| HeaderModifier {
        set: m.set.iter().map(header_value_from).collect(),
        add: m.add.iter().map(header_value_from).collect(),
        remove: m.remove.clone(),
    };
    let path = |p: &Option<pb::PathModifier>| -> Result<Option<PathModifier>, WireError> {
        match p.as_ref().map(|p| &p.kind) {
            None => Ok(None),
            Some(Some(pb::path_modifier::Kind::ReplaceFullPath(v))) => {
                Ok(Some(PathModifier::ReplaceFullPath(v.clone())))
            }
            Some(Some(pb::path_modifier::Kind::ReplacePrefixMatch(v))) => {
                Ok(Some(PathModifier::ReplacePrefixMatch(v.clone())))
            }
            Some(None) => Err(bad("a path modifier of no kind".into())),
        }
    };
    let text = |s: &str| (!s.is_empty()).then(|| s.to_owned());
    Ok(match &f.kind {
        Some(Kind::RequestHeaderModifier(m)) => Filter::RequestHeaderModifier(modifier(m)),
        Some(Kind::ResponseHeaderModifier(m)) => Filter::ResponseHeaderModifier(modifier(m)),
        Some(Kind::RequestRedirect(r)) => Filter::RequestRedirect(Redirect {
            scheme: text(&r.scheme),
            hostname: text(&r.hostname),
            path: path(&r.path)?,
            port: match r.port {
                0 => None,
                n => Some(port("route", key, "redirect port", n)?),
            },
            status: match r.status {
                s @ (301 | 302 | 303 | 307 | 308) => s as u16,
                s => {
                    return Err(bad(format!(
                        "redirect status {s} is not 301, 302, 303, 307 or 308"
                    )));
                }
            },
        }),
        Some(Kind::UrlRewrite(r)) => Filter::UrlRewrite(Rewrite {
            hostname: text(&r.hostname),
            path: path(&r.path)?,
        }),
        Some(Kind::RequestMirror(m)) => {
            if m.denominator == 0 || m.numerator > m.denominator {
                return Err(bad(format!(
                    "mirror share {}/{} is not a fraction of at most 1",
                    m.numerator, m.denominator
                )));
            }
            Filter::RequestMirror(Mirror {
                service: m.service.clone(),
                port: port("route", key, "mirror port", m.port)?,
                numerator: m.numerator,
                denominator: m.denominator,
            })
        }
        None => return Err(bad("a filter of a kind this proxy does not know".into())),
    })
}

fn header_value(h: &HeaderValue) -> pb::Header {
    pb::Header {
        name: h.name.clone(),
        value: h.value.clone(),
        regex: false,
    }
}

fn header_value_from(h: &pb::Header) -> HeaderValue {
    HeaderValue {
        name: h.name.clone(),
        value: h.value.clone(),
    }
}

fn header(h: &HeaderMatch) -> pb::Header {
    pb::Header {
        name: h.name.clone(),
        value: h.value.clone(),
        regex: h.kind == ValueMatch::RegularExpression,
    }
}

fn header_match(h: &pb::Header) -> HeaderMatch {
    HeaderMatch {
        name: h.name.clone(),
        value: h.value.clone(),
        kind: if h.regex {
            ValueMatch::RegularExpression
        } else {
            ValueMatch::Exact
        },
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

impl From<&Telemetry> for pb::Telemetry {
    fn from(t: &Telemetry) -> pb::Telemetry {
        pb::Telemetry {
            namespace: t.namespace.clone(),
            name: t.name.clone(),
            tracing: t.tracing.as_ref().map(|tr| pb::TelemetryTracing {
                endpoint: tr
                    .endpoint
                    .as_ref()
                    .map(|e| e.as_str().to_owned())
                    .unwrap_or_default(),
                protocol: tr
                    .protocol
                    .map(|p| p.as_str().to_owned())
                    .unwrap_or_default(),
                sampling_percent: tr.sampling_percent.get(),
                connection_sampling_percent: tr.connection_sampling_percent.get(),
                headers: tr.headers.clone().into_iter().collect(),
            }),
            access_logs: Some(pb::TelemetryAccessLogs {
                requests: t.access_logs.requests,
                connections: t.access_logs.connections,
                lines_per_second: t.access_logs.lines_per_second,
            }),
        }
    }
}

impl TryFrom<&pb::Telemetry> for Telemetry {
    type Error = WireError;

    fn try_from(t: &pb::Telemetry) -> Result<Telemetry, WireError> {
        let key = format!("{}/{}", t.namespace, t.name);
        let bad = |problem: String| WireError {
            what: "telemetry",
            key: key.clone(),
            problem,
        };
        let tracing = match &t.tracing {
            None => None,
            Some(tr) => Some(weft_model::Tracing {
                endpoint: match tr.endpoint.as_str() {
                    "" => None,
                    e => Some(
                        weft_model::Endpoint::new(e)
                            .map_err(|p| bad(format!("tracing.endpoint: {p}")))?,
                    ),
                },
                protocol: match tr.protocol.as_str() {
                    "" => None,
                    p => Some(weft_model::OtlpProtocol::parse(p).ok_or_else(|| {
                        bad(format!(
                            "tracing.protocol `{p}` is not grpc or http/protobuf"
                        ))
                    })?),
                },
                sampling_percent: weft_model::Percent::new(tr.sampling_percent)
                    .map_err(|p| bad(format!("tracing.samplingPercent: {p}")))?,
                connection_sampling_percent: weft_model::Percent::new(
                    tr.connection_sampling_percent,
                )
                .map_err(|p| bad(format!("tracing.connectionSamplingPercent: {p}")))?,
                headers: tr.headers.clone().into_iter().collect(),
            }),
        };
        let access_logs = t
            .access_logs
            .as_ref()
            .map(|a| weft_model::AccessLogs {
                requests: a.requests,
                connections: a.connections,
                lines_per_second: a.lines_per_second,
            })
            .unwrap_or_default();
        Ok(Telemetry {
            namespace: t.namespace.clone(),
            name: t.name.clone(),
            tracing,
            access_logs,
        })
    }
}
