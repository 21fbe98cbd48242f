//! The store of objects and the world it describes.
//!
//! [`Store::applied`] is all or nothing: the documents replace objects of the
//! same key, the result is validated as a whole (references, addresses,
//! labels), and only a valid result is returned. The caller swaps it in, so
//! a rejected apply changes nothing.

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;
use std::sync::Arc;

use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use crate::error::{Problem, Rejected};
use crate::model::{FAST_PATH_LABEL, MESH_LABEL, Service, ServicePort, Workload, World};
use crate::source::{Document, Object, ObjectKey};

/// Objects by key.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Store {
    // Shared, so that an apply's copy of the store costs pointers, not
    // objects.
    docs: BTreeMap<ObjectKey, Arc<Document>>,
}

impl Store {
    /// How many objects there are.
    pub fn len(&self) -> usize {
        self.docs.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.docs.is_empty()
    }

    /// The store with `docs` added (an object of the same key is replaced),
    /// and its world; or every problem, and no change.
    pub fn applied(&self, docs: Vec<Document>) -> Result<(Store, World), Rejected> {
        let mut problems = Vec::new();
        let mut seen: BTreeMap<ObjectKey, (String, usize)> = BTreeMap::new();
        let mut next = self.clone();
        for doc in docs {
            let key = doc.key();
            if let Some((file, n)) = seen.get(&key) {
                problems.push(doc.problem(
                    "metadata.name",
                    format!("{key} is also in {file} document {n}"),
                ));
                continue;
            }
            seen.insert(key.clone(), (doc.file.clone(), doc.document));
            next.docs.insert(key, Arc::new(doc));
        }
        Rejected::check(problems)?;
        let world = next.world()?;
        Ok((next, world))
    }

    /// Removes objects by key (all must exist), and returns the store and
    /// its world; or the problems, and no change.
    pub fn removed(&self, keys: &[ObjectKey]) -> Result<(Store, World), Rejected> {
        let mut next = self.clone();
        let problems: Vec<Problem> = keys
            .iter()
            .filter(|k| next.docs.remove(k).is_none())
            .map(|k| Problem {
                file: String::new(),
                document: 0,
                path: String::new(),
                message: format!("{k} does not exist"),
            })
            .collect();
        Rejected::check(problems)?;
        let world = next.world()?;
        Ok((next, world))
    }

    /// Validates and converts every object into the domain model.
    pub fn world(&self) -> Result<World, Rejected> {
        let mut problems = Vec::new();
        let mut namespaces: BTreeMap<&str, &BTreeMap<String, String>> = BTreeMap::new();
        let empty = BTreeMap::new();
        for doc in self.docs.values() {
            if let Object::Namespace(ns) = &doc.object {
                let name = ns.metadata.name.as_deref().unwrap_or_default();
                let labels = ns.metadata.labels.as_ref().unwrap_or(&empty);
                check_labels(doc, labels, &mut problems);
                namespaces.insert(name, labels);
            }
        }

        let mut world = World::default();
        // Pods with their labels, for service selectors.
        let mut pods: Vec<(&Workload, &BTreeMap<String, String>)> = Vec::new();
        let mut workloads = Vec::new();
        for doc in self.docs.values() {
            let Object::Pod(pod) = &doc.object else {
                continue;
            };
            let key = doc.key();
            let labels = pod.metadata.labels.as_ref().unwrap_or(&empty);
            check_labels(doc, labels, &mut problems);
            let Some(ns_labels) = namespaces.get(key.namespace.as_str()) else {
                problems.push(doc.problem(
                    "metadata.namespace",
                    format!("namespace `{}` does not exist", key.namespace),
                ));
                continue;
            };
            let spec = pod.spec.as_ref();
            let Some(node) = spec.and_then(|s| s.node_name.clone()) else {
                problems.push(doc.problem(
                    "spec.nodeName",
                    "required: standalone mode has no scheduler",
                ));
                continue;
            };
            let ip = match pod.status.as_ref().and_then(|s| s.pod_ip.as_deref()) {
                None => {
                    problems.push(
                        doc.problem("status.podIP", "required: standalone mode has no kubelet"),
                    );
                    continue;
                }
                Some(text) => match text.parse::<Ipv4Addr>() {
                    Ok(ip) => ip,
                    Err(_) => {
                        problems.push(
                            doc.problem("status.podIP", format!("`{text}` is not an IPv4 address")),
                        );
                        continue;
                    }
                },
            };
            let label = |k: &str| {
                labels
                    .get(k)
                    .or_else(|| ns_labels.get(k))
                    .map(String::as_str)
            };
            let meshed = label(MESH_LABEL) == Some("enabled");
            workloads.push((
                doc,
                labels,
                Workload {
                    namespace: key.namespace.clone(),
                    name: key.name.clone(),
                    node,
                    ip,
                    service_account: spec
                        .and_then(|s| s.service_account_name.clone())
                        .unwrap_or_else(|| "default".to_owned()),
                    meshed,
                    fast_path: meshed && label(FAST_PATH_LABEL) == Some("enabled"),
                },
            ));
        }
        for (doc, _, w) in &workloads {
            if let Some(other) = world.workloads.get(&w.ip) {
                problems.push(doc.problem(
                    "status.podIP",
                    format!("{} is also the address of pod {}", w.ip, other.key()),
                ));
            } else {
                world.workloads.insert(w.ip, w.clone());
            }
        }
        for (_, labels, w) in &workloads {
            pods.push((w, labels));
        }
        // Pods by (namespace, label key, label value), for selectors.
        let mut by_label: BTreeMap<(&str, &str, &str), Vec<usize>> = BTreeMap::new();
        for (i, (w, labels)) in pods.iter().enumerate() {
            for (k, v) in labels.iter() {
                by_label
                    .entry((w.namespace.as_str(), k.as_str(), v.as_str()))
                    .or_default()
                    .push(i);
            }
        }

        let mut cluster_ips: BTreeMap<Ipv4Addr, String> = BTreeMap::new();
        for doc in self.docs.values() {
            let Object::Service(svc) = &doc.object else {
                continue;
            };
            let key = doc.key();
            if !namespaces.contains_key(key.namespace.as_str()) {
                problems.push(doc.problem(
                    "metadata.namespace",
                    format!("namespace `{}` does not exist", key.namespace),
                ));
                continue;
            }
            let Some(spec) = svc.spec.as_ref() else {
                problems.push(doc.problem("spec", "required"));
                continue;
            };
            let cluster_ip = match spec.cluster_ip.as_deref().map(str::parse::<Ipv4Addr>) {
                Some(Ok(ip)) => ip,
                Some(Err(_)) => {
                    problems.push(doc.problem("spec.clusterIP", "not an IPv4 address"));
                    continue;
                }
                None => {
                    problems.push(doc.problem(
                        "spec.clusterIP",
                        "required: standalone mode allocates no addresses",
                    ));
                    continue;
                }
            };
            if let Some(other) = cluster_ips.insert(cluster_ip, key.to_string()) {
                problems.push(doc.problem(
                    "spec.clusterIP",
                    format!("{cluster_ip} is also the address of {other}"),
                ));
            }
            let mut ports = Vec::new();
            let mut seen_ports = BTreeSet::new();
            for (i, p) in spec.ports.iter().flatten().enumerate() {
                let at = format!("spec.ports[{i}]");
                if p.protocol.as_deref().is_some_and(|proto| proto != "TCP") {
                    problems.push(doc.problem(&format!("{at}.protocol"), "only TCP is supported"));
                    continue;
                }
                let Ok(port) = u16::try_from(p.port)
                    .map_err(drop)
                    .and_then(|v| if v == 0 { Err(()) } else { Ok(v) })
                else {
                    problems.push(
                        doc.problem(&format!("{at}.port"), format!("{} is not a port", p.port)),
                    );
                    continue;
                };
                let target_port = match &p.target_port {
                    None => port,
                    Some(IntOrString::Int(t)) => match u16::try_from(*t) {
                        Ok(t) if t != 0 => t,
                        _ => {
                            problems.push(doc.problem(
                                &format!("{at}.targetPort"),
                                format!("{t} is not a port"),
                            ));
                            continue;
                        }
                    },
                    Some(IntOrString::String(name)) => {
                        problems.push(doc.problem(
                            &format!("{at}.targetPort"),
                            format!(
                                "named target port `{name}` is not supported yet: use a number"
                            ),
                        ));
                        continue;
                    }
                };
                if !seen_ports.insert(port) {
                    problems.push(doc.problem(
                        &format!("{at}.port"),
                        format!("port {port} is listed twice"),
                    ));
                    continue;
                }
                ports.push(ServicePort { port, target_port });
            }
            if ports.is_empty()
                && !problems
                    .iter()
                    .any(|p| p.file == doc.file && p.document == doc.document)
            {
                problems.push(doc.problem("spec.ports", "at least one port is required"));
            }
            let selector = spec.selector.clone().unwrap_or_default();
            // The pods with the rarest of the selector's labels, then the rest.
            let candidates = selector
                .iter()
                .map(|(k, v)| {
                    by_label
                        .get(&(key.namespace.as_str(), k.as_str(), v.as_str()))
                        .map_or(&[][..], Vec::as_slice)
                })
                .min_by_key(|c| c.len())
                .unwrap_or(&[]);
            let mut endpoints: Vec<Ipv4Addr> = candidates
                .iter()
                .map(|&i| pods[i])
                .filter(|(_, labels)| selector.iter().all(|(k, v)| labels.get(k) == Some(v)))
                .map(|(w, _)| w.ip)
                .collect();
            endpoints.sort();
            let service = Service {
                namespace: key.namespace.clone(),
                name: key.name.clone(),
                cluster_ip,
                ports,
                endpoints,
            };
            world.services.insert(service.key(), service);
        }
        Rejected::check(problems)?;
        Ok(world)
    }
}

fn check_labels(doc: &Document, labels: &BTreeMap<String, String>, problems: &mut Vec<Problem>) {
    for key in [MESH_LABEL, FAST_PATH_LABEL] {
        if let Some(v) = labels.get(key)
            && v != "enabled"
            && v != "disabled"
        {
            problems.push(doc.problem(
                &format!("metadata.labels.{key}"),
                format!("`{v}`: {key} takes `enabled` or `disabled`"),
            ));
        }
    }
}

#[cfg(test)]
mod tests;
