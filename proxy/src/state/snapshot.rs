//! One config version, indexed for the data path: which workload owns an
//! address, and where a service address goes.

use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::sync::atomic::{AtomicUsize, Ordering};

use crate::config::{ProxyConfig, Workload};

/// An immutable, indexed view of one config version.
#[derive(Debug)]
pub struct Snapshot {
    config: ProxyConfig,
    by_ip: HashMap<Ipv4Addr, usize>,
    by_service_addr: HashMap<SocketAddrV4, ServiceTarget>,
}

#[derive(Debug)]
struct ServiceTarget {
    service: usize,
    target_port: u16,
    /// Round-robin position (P2C with peak-EWMA comes with L7 balancing).
    next: AtomicUsize,
}

/// Where a connection to an original destination goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route<'a> {
    /// The address to connect to.
    pub target: SocketAddrV4,
    /// The service the original destination named, if any (`namespace/name`).
    pub service: Option<String>,
    /// The workload at `target`, if known.
    pub workload: Option<&'a Workload>,
}

/// Why there is no route.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NoRoute {
    /// A service port with no endpoints.
    #[error("service {service} has no endpoints for {addr}")]
    NoEndpoints {
        /// `namespace/name`.
        service: String,
        /// The cluster IP and port.
        addr: SocketAddrV4,
    },
}

impl Snapshot {
    /// Indexes a config.
    pub fn new(config: ProxyConfig) -> Snapshot {
        let by_ip = config
            .workloads
            .iter()
            .enumerate()
            .map(|(i, w)| (w.ip, i))
            .collect();
        let by_service_addr = config
            .services
            .iter()
            .enumerate()
            .flat_map(|(i, s)| {
                s.ports.iter().map(move |p| {
                    (
                        SocketAddrV4::new(s.cluster_ip, p.port),
                        ServiceTarget {
                            service: i,
                            target_port: p.target_port,
                            next: AtomicUsize::new(0),
                        },
                    )
                })
            })
            .collect();
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

    /// Resolves an original destination: a service address picks one of its
    /// endpoints; any other address is its own target.
    pub fn route(&self, orig: SocketAddrV4) -> Result<Route<'_>, NoRoute> {
        let Some(t) = self.by_service_addr.get(&orig) else {
            return Ok(Route {
                target: orig,
                service: None,
                workload: self.workload(*orig.ip()),
            });
        };
        let svc = &self.config.services[t.service];
        if svc.endpoints.is_empty() {
            return Err(NoRoute::NoEndpoints {
                service: svc.key(),
                addr: orig,
            });
        }
        let n = t.next.fetch_add(1, Ordering::Relaxed) % svc.endpoints.len();
        let ip = svc.endpoints[n];
        Ok(Route {
            target: SocketAddrV4::new(ip, t.target_port),
            service: Some(svc.key()),
            workload: self.workload(ip),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn snapshot() -> Snapshot {
        let yaml = "node: n1\ncapture: {pinDir: /x}\nworkloads:\n  - {namespace: a, name: p1, node: n1, ip: 10.0.0.1}\n  - {namespace: a, name: p2, node: n2, ip: 10.0.0.2}\nservices:\n  - {namespace: a, name: s, clusterIP: 10.1.0.1, ports: [{port: 80, targetPort: 8080}], endpoints: [10.0.0.1, 10.0.0.2]}\n  - {namespace: a, name: empty, clusterIP: 10.1.0.2, ports: [{port: 80}]}\n";
        Snapshot::new(ProxyConfig::parse("t", yaml).unwrap())
    }

    #[test]
    fn a_service_address_alternates_between_its_endpoints_on_the_target_port() {
        let s = snapshot();
        let vip = "10.1.0.1:80".parse().unwrap();
        let a = s.route(vip).unwrap();
        let b = s.route(vip).unwrap();
        assert_eq!(a.service.as_deref(), Some("a/s"));
        assert_eq!(a.target, "10.0.0.1:8080".parse().unwrap());
        assert_eq!(b.target, "10.0.0.2:8080".parse().unwrap());
        assert_eq!(b.workload.unwrap().name, "p2");
    }

    #[test]
    fn any_other_address_is_its_own_target() {
        let s = snapshot();
        let r = s.route("10.0.0.2:9".parse().unwrap()).unwrap();
        assert_eq!(r.target, "10.0.0.2:9".parse().unwrap());
        assert_eq!(r.service, None);
        assert_eq!(r.workload.unwrap().name, "p2");
    }

    #[test]
    fn a_service_without_endpoints_has_no_route() {
        let s = snapshot();
        let e = s.route("10.1.0.2:80".parse().unwrap()).unwrap_err();
        assert!(e.to_string().contains("a/empty has no endpoints"));
    }
}
