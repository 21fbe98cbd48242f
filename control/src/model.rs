//! The control plane's domain model: what the mesh needs to know, free of
//! Kubernetes and protobuf types (those convert at the boundary).

use std::collections::BTreeMap;
use std::net::Ipv4Addr;

/// The label that meshes a namespace or a pod.
pub const MESH_LABEL: &str = "weft.io/mesh";
/// The label that opts a namespace's or pod's sockets in to the fast path.
pub const FAST_PATH_LABEL: &str = "weft.io/fast-path";

/// A pod with an address, on a node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Workload {
    /// Namespace.
    pub namespace: String,
    /// Pod name.
    pub name: String,
    /// The node it runs on.
    pub node: String,
    /// Its address.
    pub ip: Ipv4Addr,
    /// Its service account (its identity, later).
    pub service_account: String,
    /// Whether its traffic is captured.
    pub meshed: bool,
    /// Whether it opted in to the socket-to-socket fast path.
    pub fast_path: bool,
}

impl Workload {
    /// `namespace/name`.
    pub fn key(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }

    /// Its identity in `trust_domain`: that of its service account.
    pub fn identity(&self, trust_domain: &str) -> Identity {
        Identity {
            trust_domain: trust_domain.to_owned(),
            namespace: self.namespace.clone(),
            service_account: self.service_account.clone(),
        }
    }
}

/// A workload identity: a service account in a trust domain, written as
/// the SPIFFE ID `spiffe://<trust domain>/ns/<namespace>/sa/<account>`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Identity {
    /// The trust domain (`cluster.local` by default).
    pub trust_domain: String,
    /// The service account's namespace.
    pub namespace: String,
    /// The service account.
    pub service_account: String,
}

impl std::fmt::Display for Identity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "spiffe://{}/ns/{}/sa/{}",
            self.trust_domain, self.namespace, self.service_account
        )
    }
}

impl std::str::FromStr for Identity {
    type Err = String;

    /// Parses `spiffe://<trust domain>/ns/<namespace>/sa/<account>`; the
    /// error says what is wrong.
    fn from_str(s: &str) -> Result<Identity, String> {
        let rest = s
            .strip_prefix("spiffe://")
            .ok_or_else(|| format!("`{s}` does not start with spiffe://"))?;
        let parts: Vec<&str> = rest.split('/').collect();
        match parts.as_slice() {
            [td, "ns", ns, "sa", sa] if !td.is_empty() && !ns.is_empty() && !sa.is_empty() => {
                let td_ok = td.bytes().all(|b| {
                    b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'.' | b'-' | b'_')
                });
                if !td_ok {
                    return Err(format!(
                        "`{td}` is not a trust domain (lowercase letters, digits, `.`, `-`, `_`)"
                    ));
                }
                Ok(Identity {
                    trust_domain: (*td).to_owned(),
                    namespace: (*ns).to_owned(),
                    service_account: (*sa).to_owned(),
                })
            }
            _ => Err(format!(
                "`{s}` is not spiffe://<trust domain>/ns/<namespace>/sa/<service account>"
            )),
        }
    }
}

/// One service port.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ServicePort {
    /// The service port.
    pub port: u16,
    /// The pods' port.
    pub target_port: u16,
}

/// A service: a cluster IP, ports and the addresses of ready endpoints.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Service {
    /// Namespace.
    pub namespace: String,
    /// Service name.
    pub name: String,
    /// Its virtual address.
    pub cluster_ip: Ipv4Addr,
    /// Its ports.
    pub ports: Vec<ServicePort>,
    /// Its endpoints' addresses, sorted.
    pub endpoints: Vec<Ipv4Addr>,
}

impl Service {
    /// `namespace/name`.
    pub fn key(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }
}

/// How a route matches a request path.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum PathMatch {
    /// The whole path.
    Exact(String),
    /// A path prefix, by segments.
    Prefix(String),
    /// A regular expression (validated when applied).
    Regex(String),
}

/// One match of a route rule; every given part must match.
#[derive(Debug, Clone, Default, PartialEq, Eq, PartialOrd, Ord)]
pub struct RouteMatch {
    /// The path, if matched.
    pub path: Option<PathMatch>,
    /// The method, if matched.
    pub method: Option<String>,
    /// Headers that must be equal (name, value).
    pub headers: Vec<(String, String)>,
}

/// Where a rule sends requests.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Backend {
    /// The service, `namespace/name`.
    pub service: String,
    /// Its port.
    pub port: u16,
    /// Relative weight.
    pub weight: u32,
}

/// One rule: matches (any of them) and backends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteRule {
    /// The rule matches when any of these does; none means everything.
    pub matches: Vec<RouteMatch>,
    /// Where matching requests go.
    pub backends: Vec<Backend>,
}

/// Which Gateway API kind a route came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum RouteKind {
    /// HTTPRoute.
    Http,
    /// GRPCRoute (its method matches are path matches).
    Grpc,
}

impl RouteKind {
    /// The Gateway API kind.
    pub fn as_str(self) -> &'static str {
        match self {
            RouteKind::Http => "HTTPRoute",
            RouteKind::Grpc => "GRPCRoute",
        }
    }
}

/// A route attached to services (Gateway API HTTPRoute or GRPCRoute, GAMMA).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    /// HTTPRoute or GRPCRoute.
    pub kind: RouteKind,
    /// Namespace.
    pub namespace: String,
    /// Route name.
    pub name: String,
    /// The services it attaches to, `namespace/name`, with a port when the
    /// parent reference names one.
    pub parents: Vec<(String, Option<u16>)>,
    /// Its rules, in order.
    pub rules: Vec<RouteRule>,
}

impl Route {
    /// `Kind/namespace/name` (an HTTPRoute and a GRPCRoute may share a name).
    pub fn key(&self) -> String {
        format!("{}/{}/{}", self.kind.as_str(), self.namespace, self.name)
    }
}

/// Everything the mesh knows at one version.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct World {
    /// Workloads by address.
    pub workloads: BTreeMap<Ipv4Addr, Workload>,
    /// Services by `namespace/name`.
    pub services: BTreeMap<String, Service>,
    /// HTTP routes by `namespace/name`.
    pub routes: BTreeMap<String, Route>,
    /// Authorization policies by `namespace/name` (validated; enforced by
    /// the proxies with the mTLS issue).
    pub policies: BTreeMap<String, Policy>,
}

/// An authorization policy (weft's `AuthorizationPolicy`), validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Policy {
    /// Namespace.
    pub namespace: String,
    /// Name.
    pub name: String,
    /// Labels the selected pods have (all pods of the namespace if empty).
    pub selector: BTreeMap<String, String>,
    /// ALLOW or DENY, and the rules.
    pub spec: crate::crd::AuthorizationPolicySpec,
    /// The addresses of the pods it selects, sorted.
    pub workloads: Vec<Ipv4Addr>,
}

impl Policy {
    /// `namespace/name`.
    pub fn key(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }
}

/// What one node's proxy holds.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NodeConfig {
    /// Workloads by address.
    pub workloads: BTreeMap<Ipv4Addr, Workload>,
    /// Services by `namespace/name`.
    pub services: BTreeMap<String, Service>,
    /// HTTP routes by `namespace/name`.
    pub routes: BTreeMap<String, Route>,
    /// Policies that select pods of this node, by `namespace/name`; each
    /// lists only this node's pods.
    pub policies: BTreeMap<String, Policy>,
}

impl World {
    /// What `node` needs:
    /// - its own workloads (to capture them and to apply their policies);
    /// - as destinations, every meshed workload (its node and identity
    ///   decide how a connection to it travels) and every endpoint of a
    ///   service; an unmeshed pod elsewhere that no service fronts is left
    ///   out: a connection to it passes through as plain TCP, and a
    ///   connection from it has an `unknown` source;
    /// - every service and route (no per-namespace reachability scoping
    ///   yet: any pod may call any service);
    /// - the policies that select at least one of its pods, listing only
    ///   those.
    ///
    /// It is [`World::common`] (the same for every node, computed once per
    /// version) plus [`World::local`].
    pub fn for_node(&self, node: &str) -> NodeConfig {
        let mut config = self.common();
        let local = self.local(node, &config);
        config.workloads.extend(local.workloads);
        config.policies = local.policies;
        config
    }

    /// What every node gets: meshed workloads, service endpoints, services
    /// and routes.
    pub fn common(&self) -> NodeConfig {
        let endpoints: std::collections::BTreeSet<Ipv4Addr> = self
            .services
            .values()
            .flat_map(|s| s.endpoints.iter().copied())
            .collect();
        NodeConfig {
            workloads: self
                .workloads
                .iter()
                .filter(|(ip, w)| w.meshed || endpoints.contains(ip))
                .map(|(ip, w)| (*ip, w.clone()))
                .collect(),
            services: self.services.clone(),
            routes: self.routes.clone(),
            policies: BTreeMap::new(),
        }
    }

    /// What only `node` gets on top of `common`: its workloads that are
    /// not there already, and the policies selecting its pods (listing only
    /// those).
    pub fn local(&self, node: &str, common: &NodeConfig) -> NodeConfig {
        let on_node = |ip: &Ipv4Addr| self.workloads.get(ip).is_some_and(|w| w.node == node);
        let policies = self
            .policies
            .iter()
            .filter_map(|(key, p)| {
                let local: Vec<Ipv4Addr> = p.workloads.iter().copied().filter(on_node).collect();
                (!local.is_empty()).then(|| {
                    (
                        key.clone(),
                        Policy {
                            workloads: local,
                            ..p.clone()
                        },
                    )
                })
            })
            .collect();
        NodeConfig {
            workloads: self
                .workloads
                .iter()
                .filter(|(ip, w)| w.node == node && !common.workloads.contains_key(ip))
                .map(|(ip, w)| (*ip, w.clone()))
                .collect(),
            services: BTreeMap::new(),
            routes: BTreeMap::new(),
            policies,
        }
    }
}

/// The difference between what a node holds and what it should hold.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Delta {
    /// Added or changed workloads.
    pub workloads: Vec<Workload>,
    /// Added or changed services.
    pub services: Vec<Service>,
    /// Removed workloads, by address.
    pub removed_workloads: Vec<Ipv4Addr>,
    /// Removed services, by `namespace/name`.
    pub removed_services: Vec<String>,
    /// Added or changed routes.
    pub routes: Vec<Route>,
    /// Removed routes, by `namespace/name`.
    pub removed_routes: Vec<String>,
    /// Added or changed policies.
    pub policies: Vec<Policy>,
    /// Removed policies, by `namespace/name`.
    pub removed_policies: Vec<String>,
}

impl Delta {
    /// `self`, then `then`: what turns a config into the next when `self`
    /// and `then` change disjoint parts of it (a node's common and local
    /// parts). An object may move from one part to the other: it is
    /// removed by one and added by the other, and applying removals before
    /// additions keeps it.
    pub fn and(&self, then: Delta) -> Delta {
        Delta {
            workloads: join(&self.workloads, then.workloads),
            services: join(&self.services, then.services),
            removed_workloads: join(&self.removed_workloads, then.removed_workloads),
            removed_services: join(&self.removed_services, then.removed_services),
            routes: join(&self.routes, then.routes),
            removed_routes: join(&self.removed_routes, then.removed_routes),
            policies: join(&self.policies, then.policies),
            removed_policies: join(&self.removed_policies, then.removed_policies),
        }
    }

    /// Whether nothing changed.
    pub fn is_empty(&self) -> bool {
        self.workloads.is_empty()
            && self.services.is_empty()
            && self.removed_workloads.is_empty()
            && self.removed_services.is_empty()
            && self.routes.is_empty()
            && self.removed_routes.is_empty()
            && self.policies.is_empty()
            && self.removed_policies.is_empty()
    }
}

impl NodeConfig {
    /// What turns `self` into `next`.
    pub fn delta_to(&self, next: &NodeConfig) -> Delta {
        Delta {
            workloads: changed(&self.workloads, &next.workloads),
            services: changed(&self.services, &next.services),
            removed_workloads: removed(&self.workloads, &next.workloads),
            removed_services: removed(&self.services, &next.services),
            routes: changed(&self.routes, &next.routes),
            removed_routes: removed(&self.routes, &next.routes),
            policies: changed(&self.policies, &next.policies),
            removed_policies: removed(&self.policies, &next.policies),
        }
    }

    /// Applies a delta.
    pub fn apply(&mut self, delta: &Delta) {
        for ip in &delta.removed_workloads {
            self.workloads.remove(ip);
        }
        for key in &delta.removed_services {
            self.services.remove(key);
        }
        for w in &delta.workloads {
            self.workloads.insert(w.ip, w.clone());
        }
        for s in &delta.services {
            self.services.insert(s.key(), s.clone());
        }
        for key in &delta.removed_routes {
            self.routes.remove(key);
        }
        for r in &delta.routes {
            self.routes.insert(r.key(), r.clone());
        }
        for key in &delta.removed_policies {
            self.policies.remove(key);
        }
        for p in &delta.policies {
            self.policies.insert(p.key(), p.clone());
        }
    }
}

/// `a`, then `b`.
fn join<T: Clone>(a: &[T], mut b: Vec<T>) -> Vec<T> {
    let mut v = a.to_vec();
    v.append(&mut b);
    v
}

/// The values of `next` that `old` lacks or holds differently.
fn changed<K: Ord, V: Clone + PartialEq>(old: &BTreeMap<K, V>, next: &BTreeMap<K, V>) -> Vec<V> {
    next.iter()
        .filter(|(k, v)| old.get(k) != Some(v))
        .map(|(_, v)| v.clone())
        .collect()
}

/// The keys of `old` that `next` lacks.
fn removed<K: Ord + Clone, V>(old: &BTreeMap<K, V>, next: &BTreeMap<K, V>) -> Vec<K> {
    old.keys()
        .filter(|k| !next.contains_key(*k))
        .cloned()
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn w(ip: [u8; 4], name: &str) -> Workload {
        Workload {
            namespace: "a".into(),
            name: name.into(),
            node: "n1".into(),
            ip: Ipv4Addr::from(ip),
            service_account: "default".into(),
            meshed: true,
            fast_path: false,
        }
    }

    #[test]
    fn an_identity_is_written_and_read_as_a_spiffe_id() {
        let id = w([10, 0, 0, 1], "p").identity("cluster.local");
        assert_eq!(id.to_string(), "spiffe://cluster.local/ns/a/sa/default");
        assert_eq!(id.to_string().parse::<Identity>(), Ok(id));
        for bad in [
            "client",
            "spiffe://",
            "spiffe://cluster.local/ns/a",
            "spiffe://cluster.local/ns//sa/x",
            "spiffe://Cluster.Local/ns/a/sa/x",
            "spiffe://cluster.local/ns/a/sa/x/extra",
        ] {
            assert!(bad.parse::<Identity>().is_err(), "{bad}");
        }
    }

    #[test]
    fn a_delta_applied_to_the_old_config_gives_the_new_one() {
        let mut old = NodeConfig::default();
        old.workloads
            .insert(Ipv4Addr::new(10, 0, 0, 1), w([10, 0, 0, 1], "p1"));
        old.workloads
            .insert(Ipv4Addr::new(10, 0, 0, 2), w([10, 0, 0, 2], "p2"));
        let mut new = NodeConfig::default();
        new.workloads
            .insert(Ipv4Addr::new(10, 0, 0, 2), w([10, 0, 0, 2], "renamed"));
        new.workloads
            .insert(Ipv4Addr::new(10, 0, 0, 3), w([10, 0, 0, 3], "p3"));
        let delta = old.delta_to(&new);
        assert_eq!(delta.removed_workloads, [Ipv4Addr::new(10, 0, 0, 1)]);
        assert_eq!(delta.workloads.len(), 2);
        let mut patched = old.clone();
        patched.apply(&delta);
        assert_eq!(patched, new);
        assert!(new.delta_to(&new).is_empty());
    }
}
