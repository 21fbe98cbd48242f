//! The control plane's view of the domain model: the objects are
//! `weft-model`'s (shared with the proxy); here is what the control plane
//! adds: the whole mesh at one version ([`World`]), what one node holds
//! ([`NodeConfig`]) and the step between two versions ([`Delta`]).

use std::collections::BTreeMap;
use std::net::Ipv4Addr;

pub use weft_model::{
    Backend, FAST_PATH_LABEL, Filter, HeaderMatch, HeaderModifier, HeaderValue, MESH_LABEL, Mirror,
    ParentRef, PathMatch, PathModifier, Policy, PolicyAction, PolicyOperation, PolicyRule,
    PolicySource, Redirect, Retry, Rewrite, Route, RouteKind, RouteMatch, RouteRule, Service,
    ServicePort, SpiffeId, Telemetry, Timeouts, ValueMatch, Workload,
};

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
    /// Telemetry objects by `namespace/name` (the first applies).
    pub telemetry: BTreeMap<String, Telemetry>,
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
    /// Telemetry objects by `namespace/name`.
    pub telemetry: BTreeMap<String, Telemetry>,
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
            telemetry: self.telemetry.clone(),
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
            telemetry: BTreeMap::new(),
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
    /// Added or changed telemetry objects.
    pub telemetry: Vec<Telemetry>,
    /// Removed telemetry objects, by `namespace/name`.
    pub removed_telemetry: Vec<String>,
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
            telemetry: join(&self.telemetry, then.telemetry),
            removed_telemetry: join(&self.removed_telemetry, then.removed_telemetry),
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
            && self.telemetry.is_empty()
            && self.removed_telemetry.is_empty()
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
            telemetry: changed(&self.telemetry, &next.telemetry),
            removed_telemetry: removed(&self.telemetry, &next.telemetry),
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
        for key in &delta.removed_telemetry {
            self.telemetry.remove(key);
        }
        for t in &delta.telemetry {
            self.telemetry.insert(t.key(), t.clone());
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
        assert_eq!(id.to_string().parse::<SpiffeId>(), Ok(id));
        for bad in [
            "client",
            "spiffe://",
            "spiffe://cluster.local/ns/a",
            "spiffe://cluster.local/ns//sa/x",
            "spiffe://Cluster.Local/ns/a/sa/x",
            "spiffe://cluster.local/ns/a/sa/x/extra",
        ] {
            assert!(bad.parse::<SpiffeId>().is_err(), "{bad}");
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
