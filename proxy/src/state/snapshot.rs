//! One config version, indexed for the data path: which workload owns an
//! address, where a service address goes, and the compiled routes of every
//! L7 service port.

use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::sync::Arc;

use crate::config::{ProxyConfig, Service, Workload};
use crate::route::HttpPort;

/// An immutable, indexed view of one config version.
#[derive(Debug)]
pub struct Snapshot {
    config: ProxyConfig,
    // Looked up several times a request: a fast hash (the keys are the
    // config's own addresses, nothing a peer chooses).
    by_ip: foldhash::HashMap<Ipv4Addr, usize>,
    by_service_addr: foldhash::HashMap<SocketAddrV4, ServiceTarget>,
}

#[derive(Debug)]
struct ServiceTarget {
    service: usize,
    target_port: u16,
    /// Set when the port is handled at L7: routes attach to it, or its
    /// `appProtocol` says it speaks HTTP.
    http: Option<Arc<HttpPort>>,
}

/// Where a connection to an original destination goes.
#[derive(Debug, Clone, Copy)]
pub enum Destination<'a> {
    /// A service port: one of its endpoints, on its target port (or, at
    /// L7, what its routes say).
    Service {
        /// The service.
        service: &'a Service,
        /// The port on its pods.
        target_port: u16,
        /// Its routes, when the port is handled at L7.
        http: Option<&'a Arc<HttpPort>>,
    },
    /// Any other address is its own target.
    Address(SocketAddrV4),
}

impl Snapshot {
    /// Indexes a config and compiles its routes. A route match the proxy
    /// cannot compile is left out and logged (the control plane validates
    /// routes before they get here).
    pub fn new(config: ProxyConfig) -> Snapshot {
        let by_ip = config
            .workloads
            .iter()
            .enumerate()
            .map(|(i, w)| (w.ip, i))
            .collect();
        let services: HashMap<String, &Service> =
            config.services.iter().map(|s| (s.key(), s)).collect();
        let mut problems = Vec::new();
        let mut by_service_addr = foldhash::HashMap::default();
        for (i, s) in config.services.iter().enumerate() {
            for p in &s.ports {
                let http = HttpPort::compile(&config, &services, s, p, &mut problems);
                by_service_addr.insert(
                    SocketAddrV4::new(s.cluster_ip, p.port),
                    ServiceTarget {
                        service: i,
                        target_port: p.target_port,
                        http: http.map(Arc::new),
                    },
                );
            }
        }
        for p in problems {
            tracing::warn!(problem = %p, "a route match is left out");
        }
        Snapshot {
            config,
            by_ip,
            by_service_addr,
        }
    }

    /// The config this snapshot indexes.
    pub fn config(&self) -> &ProxyConfig {
        &self.config
    }

    /// The workload owning an address.
    pub fn workload(&self, ip: Ipv4Addr) -> Option<&Workload> {
        self.by_ip.get(&ip).map(|&i| &self.config.workloads[i])
    }

    /// Every service port handled at L7 and the routes it uses, for the
    /// config dump: `{service, port, producerRoutes, consumerRoutes}`.
    pub fn l7_ports(&self) -> Vec<serde_json::Value> {
        let mut ports: Vec<(&SocketAddrV4, &Arc<HttpPort>)> = self
            .by_service_addr
            .iter()
            .filter_map(|(addr, t)| t.http.as_ref().map(|h| (addr, h)))
            .collect();
        ports.sort_by_key(|(addr, _)| **addr);
        ports
            .into_iter()
            .map(|(addr, h)| {
                let (producer, consumers) = h.routes();
                serde_json::json!({
                    "service": h.service,
                    "address": addr.to_string(),
                    "port": h.port,
                    "producerRoutes": producer,
                    "consumerRoutes": consumers,
                })
            })
            .collect()
    }

    /// Where a connection to `orig` goes.
    pub fn destination(&self, orig: SocketAddrV4) -> Destination<'_> {
        match self.by_service_addr.get(&orig) {
            Some(t) => Destination::Service {
                service: &self.config.services[t.service],
                target_port: t.target_port,
                http: t.http.as_ref(),
            },
            None => Destination::Address(orig),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn snapshot() -> Snapshot {
        let yaml = "node: n1\ncapture: {pinDir: /x}\nworkloads:\n  - {namespace: a, name: p1, node: n1, ip: 10.0.0.1}\n  - {namespace: a, name: p2, node: n2, ip: 10.0.0.2}\nservices:\n  - {namespace: a, name: s, clusterIP: 10.1.0.1, ports: [{port: 80, targetPort: 8080}, {port: 81, appProtocol: http}], endpoints: [10.0.0.1, 10.0.0.2]}\n  - {namespace: a, name: t, clusterIP: 10.1.0.2, ports: [{port: 80}]}\nroutes:\n  - kind: HTTPRoute\n    namespace: a\n    name: r\n    parents: [{service: a/t}]\n    rules: [{backends: [{service: a/s, port: 80, weight: 1}]}]\n";
        Snapshot::new(ProxyConfig::parse("t", yaml).unwrap())
    }

    #[test]
    fn a_service_address_gives_its_endpoints_on_the_target_port_and_an_l4_port_has_no_routes() {
        let s = snapshot();
        let Destination::Service {
            service,
            target_port,
            http,
        } = s.destination("10.1.0.1:80".parse().unwrap())
        else {
            panic!("a service")
        };
        assert_eq!(service.key(), "a/s");
        assert_eq!(target_port, 8080);
        assert_eq!(service.endpoints.len(), 2);
        assert!(http.is_none(), "no route, no appProtocol: L4");
    }

    #[test]
    fn ports_with_routes_or_an_http_app_protocol_are_handled_at_l7() {
        let s = snapshot();
        for (vip, service) in [("10.1.0.1:81", "a/s"), ("10.1.0.2:80", "a/t")] {
            let Destination::Service { http, .. } = s.destination(vip.parse().unwrap()) else {
                panic!("a service")
            };
            assert_eq!(http.expect("L7").service, service, "{vip}");
        }
    }

    #[test]
    fn any_other_address_is_its_own_target() {
        let s = snapshot();
        assert!(matches!(
            s.destination("10.0.0.2:9".parse().unwrap()),
            Destination::Address(a) if a == "10.0.0.2:9".parse().unwrap()
        ));
        assert_eq!(s.workload("10.0.0.2".parse().unwrap()).unwrap().name, "p2");
    }
}
