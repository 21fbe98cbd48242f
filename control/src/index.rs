//! The store of objects and the world it describes.
//!
//! [`Store::applied`] is all or nothing: the documents replace objects of the
//! same key, the result is validated as a whole (references, addresses,
//! labels), and only a valid result is returned. The caller swaps it in, so
//! a rejected apply changes nothing.

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;
use std::sync::Arc;

use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use crate::error::{Problem, ProblemKind, Rejected};
use crate::model::{
    Backend, FAST_PATH_LABEL, HeaderMatch, MESH_LABEL, ParentRef, PathMatch, Policy, PolicyAction,
    PolicyOperation, PolicyRule, PolicySource, Route, RouteKind, RouteMatch, RouteRule, Service,
    ServicePort, ValueMatch, Workload, World,
};
use crate::source::{Document, Object, ObjectKey};

/// The label that ties an EndpointSlice to its service.
pub const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";

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
        self.applied_with(docs, Check::Strict)
            .map(|(store, world, _)| (store, world))
    }

    /// Like [`Store::applied`], checked as `check` says: also the warnings.
    pub fn applied_with(
        &self,
        docs: Vec<Document>,
        check: Check,
    ) -> Result<(Store, World, Vec<Problem>), Rejected> {
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
        let (world, warnings) = next.checked(check)?;
        Ok((next, world, warnings))
    }

    /// Removes objects by key (all must exist), and returns the store, its
    /// world and its warnings (references left dangling); or the problems,
    /// and no change.
    pub fn removed(
        &self,
        keys: &[ObjectKey],
        check: Check,
    ) -> Result<(Store, World, Vec<Problem>), Rejected> {
        let mut next = self.clone();
        let problems: Vec<Problem> = keys
            .iter()
            .filter(|k| next.docs.remove(k).is_none())
            .map(|k| Problem {
                file: String::new(),
                document: 0,
                path: String::new(),
                message: format!("{k} does not exist"),
                kind: ProblemKind::Invalid,
            })
            .collect();
        Rejected::check(problems)?;
        let (world, warnings) = next.checked(check)?;
        Ok((next, world, warnings))
    }

    /// The object of `key`, if the store has it.
    pub fn get(&self, key: &ObjectKey) -> Option<&Document> {
        self.docs.get(key).map(|d| &**d)
    }

    /// The store without the objects `drop` picks.
    pub fn without(&self, drop: impl Fn(&Document) -> bool) -> Store {
        let mut next = self.clone();
        next.docs.retain(|_, d| !drop(d));
        next
    }

    /// Adds or replaces one object (a watch event).
    pub fn upsert(&mut self, doc: Document) {
        self.docs.insert(doc.key(), Arc::new(doc));
    }

    /// Removes one object; whether it was there.
    pub fn remove(&mut self, key: &ObjectKey) -> bool {
        self.docs.remove(key).is_some()
    }

    /// Replaces every object of `kind` with `docs` (a relist).
    pub fn replace_kind(&mut self, kind: &str, docs: Vec<Document>) {
        self.docs.retain(|k, _| k.kind != kind);
        for doc in docs {
            self.upsert(doc);
        }
    }

    /// The objects, in key order.
    pub fn documents(&self) -> impl Iterator<Item = &Document> {
        self.docs.values().map(|d| &**d)
    }

    /// Validates and converts every object into the domain model, all or
    /// nothing (file mode: a set with a problem is not applied).
    pub fn world(&self) -> Result<World, Rejected> {
        let (world, problems) = self.build(Mode::Strict);
        Rejected::check(problems)?;
        Ok(world)
    }

    /// Like [`Store::world`], except that references to services that do
    /// not exist and matches two routes claim are accepted and returned as
    /// warnings (a route's share for such a backend answers 500 until the
    /// service exists; precedence decides a shared match).
    pub fn world_accepting(&self) -> Result<(World, Vec<Problem>), Rejected> {
        let (world, problems) = self.build(Mode::Accepting);
        if problems
            .iter()
            .all(|p| is_dangling_ref(p) || p.kind == ProblemKind::Conflict)
        {
            Ok((world, problems))
        } else {
            Err(Rejected { problems })
        }
    }

    /// The world under `check`, and its warnings.
    fn checked(&self, check: Check) -> Result<(World, Vec<Problem>), Rejected> {
        match check {
            Check::Strict => self.world().map(|w| (w, Vec::new())),
            Check::Accepting => self.world_accepting(),
        }
    }

    /// The world of the valid objects, and the problems of the others,
    /// which are left out (Kubernetes mode: the API server already holds
    /// the objects; problems go to their status and the log). Pods not yet
    /// scheduled or started are not workloads yet, and headless or
    /// ExternalName services have no address to capture.
    pub fn world_tolerant(&self) -> (World, Vec<Problem>) {
        self.build(Mode::Tolerant)
    }

    fn build(&self, mode: Mode) -> (World, Vec<Problem>) {
        let tolerant = mode == Mode::Tolerant;
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
                problems.push(no_namespace(doc, &key));
                continue;
            };
            let spec = pod.spec.as_ref();
            // A pod on the host's network has the node's address, not its
            // own; a finished pod's address may already be another pod's.
            let phase = pod.status.as_ref().and_then(|s| s.phase.as_deref());
            if spec.and_then(|s| s.host_network) == Some(true)
                || matches!(phase, Some("Succeeded" | "Failed"))
            {
                continue;
            }
            let started = spec.is_some_and(|s| s.node_name.is_some())
                && pod.status.as_ref().is_some_and(|s| s.pod_ip.is_some());
            if tolerant && !started {
                continue;
            }
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

        // EndpointSlices by the (namespace, name) of their service.
        let mut slices: BTreeMap<(&str, &str), Vec<&EndpointSlice>> = BTreeMap::new();
        for doc in self.docs.values() {
            if let Object::EndpointSlice(slice) = &doc.object
                && let Some(service) = slice
                    .metadata
                    .labels
                    .as_ref()
                    .and_then(|l| l.get(SERVICE_NAME_LABEL))
            {
                let ns = slice.metadata.namespace.as_deref().unwrap_or("default");
                slices
                    .entry((ns, service.as_str()))
                    .or_default()
                    .push(slice);
            }
        }

        let mut cluster_ips: BTreeMap<Ipv4Addr, String> = BTreeMap::new();
        for doc in self.docs.values() {
            let Object::Service(svc) = &doc.object else {
                continue;
            };
            let key = doc.key();
            if !namespace_exists(doc, &key, &namespaces, &mut problems) {
                continue;
            }
            let Some(spec) = svc.spec.as_ref() else {
                problems.push(doc.problem("spec", "required"));
                continue;
            };
            let headless = spec.cluster_ip.as_deref() == Some("None")
                || spec.type_.as_deref() == Some("ExternalName");
            if headless || (tolerant && spec.cluster_ip.is_none()) {
                // No virtual address to capture: clients reach the pods by
                // their own addresses.
                continue;
            }
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
                        // The endpoint controller resolves a named port into
                        // the EndpointSlice's port of the service port's name.
                        let port_name = p.name.as_deref().unwrap_or_default();
                        let resolved = slices
                            .get(&(key.namespace.as_str(), key.name.as_str()))
                            .into_iter()
                            .flatten()
                            .flat_map(|s| s.ports.iter().flatten())
                            .find(|sp| sp.name.as_deref().unwrap_or_default() == port_name)
                            .and_then(|sp| sp.port)
                            .and_then(|n| u16::try_from(n).ok())
                            .filter(|n| *n != 0);
                        match resolved {
                            Some(t) => t,
                            None if tolerant => continue,
                            None => {
                                problems.push(doc.problem(
                                    &format!("{at}.targetPort"),
                                    format!(
                                        "named target port `{name}` is not in an EndpointSlice \
                                         of this service: use a number, or add the slice"
                                    ),
                                ));
                                continue;
                            }
                        }
                    }
                };
                if !seen_ports.insert(port) {
                    problems.push(doc.problem(
                        &format!("{at}.port"),
                        format!("port {port} is listed twice"),
                    ));
                    continue;
                }
                ports.push(ServicePort {
                    port,
                    target_port,
                    app_protocol: p.app_protocol.clone(),
                });
            }
            if ports.is_empty()
                && !problems
                    .iter()
                    .any(|p| p.file == doc.file && p.document == doc.document)
            {
                problems.push(doc.problem("spec.ports", "at least one port is required"));
            }
            let mut endpoints: Vec<Ipv4Addr> =
                match slices.get(&(key.namespace.as_str(), key.name.as_str())) {
                    // EndpointSlices are the truth where they exist: they
                    // know readiness.
                    Some(of_service) => of_service
                        .iter()
                        .filter(|s| s.address_type == "IPv4")
                        .flat_map(|s| s.endpoints.iter().flatten())
                        .filter(|e| e.conditions.as_ref().and_then(|c| c.ready) != Some(false))
                        .filter_map(|e| e.addresses.first()?.parse().ok())
                        .collect(),
                    // Standalone: no endpoint controller, so the selector.
                    None => selected(spec.selector.as_ref(), &key.namespace, &pods, &by_label),
                };
            endpoints.sort();
            endpoints.dedup();
            let service = Service {
                namespace: key.namespace.clone(),
                name: key.name.clone(),
                cluster_ip,
                ports,
                endpoints,
            };
            world.services.insert(service.key(), service);
        }

        let mut attached: BTreeMap<(String, Option<u16>, RouteMatch), String> = BTreeMap::new();
        for doc in self.docs.values() {
            if !matches!(doc.object, Object::HttpRoute(_) | Object::GrpcRoute(_)) {
                continue;
            }
            let key = doc.key();
            if !namespace_exists(doc, &key, &namespaces, &mut problems) {
                continue;
            }
            let route = match &doc.object {
                Object::HttpRoute(r) => http_route(doc, &key, r, &world, mode, &mut problems),
                Object::GrpcRoute(r) => grpc_route(doc, &key, r, &world, mode, &mut problems),
                _ => None,
            };
            if let Some(route) = route {
                // Two routes may not claim the same match on the same parent.
                for ParentRef {
                    service: parent,
                    port,
                } in &route.parents
                {
                    for rule in &route.rules {
                        let matches = if rule.matches.is_empty() {
                            vec![RouteMatch::default()]
                        } else {
                            rule.matches.clone()
                        };
                        for m in matches {
                            let claim = (parent.clone(), *port, m.clone());
                            if let Some(other) = attached.get(&claim)
                                && *other != route.key()
                            {
                                problems.push(Problem {
                                    kind: ProblemKind::Conflict,
                                    ..doc.problem(
                                        "spec.rules",
                                        format!(
                                            "the same match as {other} on service {parent}: the \
                                             older route takes it (then the one first by \
                                             namespace and name)"
                                        ),
                                    )
                                });
                            } else {
                                attached.insert(claim, route.key());
                            }
                        }
                    }
                }
                world.routes.insert(route.key(), route);
            }
        }
        for doc in self.docs.values() {
            let Object::AuthorizationPolicy(policy) = &doc.object else {
                continue;
            };
            let key = doc.key();
            if !namespace_exists(doc, &key, &namespaces, &mut problems) {
                continue;
            }
            let before = problems.len();
            check_policy(doc, &policy.spec, &mut problems);
            if problems.len() == before {
                world.policies.insert(
                    format!("{}/{}", key.namespace, key.name),
                    Policy {
                        namespace: key.namespace.clone(),
                        name: key.name.clone(),
                        selector: policy
                            .spec
                            .selector
                            .as_ref()
                            .map(|s| s.match_labels.clone())
                            .unwrap_or_default(),
                        action: match policy.spec.action {
                            crate::crd::Action::Allow => PolicyAction::Allow,
                            crate::crd::Action::Deny => PolicyAction::Deny,
                        },
                        rules: policy.spec.rules.iter().map(policy_rule).collect(),
                        workloads: policy_targets(
                            policy.spec.selector.as_ref(),
                            &key.namespace,
                            &pods,
                            &by_label,
                        ),
                    },
                );
            }
        }
        for doc in self.docs.values() {
            let Object::Telemetry(t) = &doc.object else {
                continue;
            };
            let key = doc.key();
            if !namespace_exists(doc, &key, &namespaces, &mut problems) {
                continue;
            }
            if let Some(t) = telemetry(doc, &key, &t.spec, &mut problems) {
                world.telemetry.insert(t.key(), t);
            }
        }
        if tolerant {
            // Routes that failed are left out; so is the later (by key) of
            // two conflicting routes.
            let failed: BTreeSet<(&str, usize)> = problems
                .iter()
                .filter(|p| !is_dangling_ref(p))
                .map(|p| (p.file.as_str(), p.document))
                .collect();
            if !failed.is_empty() {
                for doc in self.docs.values() {
                    if matches!(doc.object, Object::HttpRoute(_) | Object::GrpcRoute(_))
                        && failed.contains(&(doc.file.as_str(), doc.document))
                    {
                        let k = doc.key();
                        world
                            .routes
                            .remove(&format!("{}/{}/{}", k.kind, k.namespace, k.name));
                    }
                }
            }
        }
        (world, problems)
    }
}

/// The addresses of the pods of `namespace` that `selector` selects (none
/// without a selector).
fn selected(
    selector: Option<&BTreeMap<String, String>>,
    namespace: &str,
    pods: &[(&Workload, &BTreeMap<String, String>)],
    by_label: &BTreeMap<(&str, &str, &str), Vec<usize>>,
) -> Vec<Ipv4Addr> {
    let Some(selector) = selector.filter(|s| !s.is_empty()) else {
        return Vec::new();
    };
    // The pods with the rarest of the selector's labels, then the rest.
    let candidates = selector
        .iter()
        .map(|(k, v)| {
            by_label
                .get(&(namespace, k.as_str(), v.as_str()))
                .map_or(&[][..], Vec::as_slice)
        })
        .min_by_key(|c| c.len())
        .unwrap_or(&[]);
    candidates
        .iter()
        .map(|&i| pods[i])
        .filter(|(_, labels)| selector.iter().all(|(k, v)| labels.get(k) == Some(v)))
        .map(|(w, _)| w.ip)
        .collect()
}

/// The addresses of the pods a policy applies to: those of its namespace
/// that its selector selects, all of them without a selector; sorted.
fn policy_targets(
    selector: Option<&crate::crd::WorkloadSelector>,
    namespace: &str,
    pods: &[(&Workload, &BTreeMap<String, String>)],
    by_label: &BTreeMap<(&str, &str, &str), Vec<usize>>,
) -> Vec<Ipv4Addr> {
    let mut ips = match selector.filter(|s| !s.match_labels.is_empty()) {
        Some(s) => selected(Some(&s.match_labels), namespace, pods, by_label),
        None => pods
            .iter()
            .filter(|(w, _)| w.namespace == namespace)
            .map(|(w, _)| w.ip)
            .collect(),
    };
    ips.sort();
    ips
}

/// How `weft apply` checks references to services.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Check {
    /// Every reference must resolve (`--strict`).
    Strict,
    /// References to services that do not exist (yet) are accepted with a
    /// warning.
    Accepting,
}

/// How [`Store::build`] treats objects with problems.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// Any problem rejects the whole set (`weft apply --strict`).
    Strict,
    /// As strict, except that references to services that do not exist
    /// (yet) are kept as they are and reported, to be warned of (files,
    /// `weft apply`): objects arrive in any order.
    Accepting,
    /// Objects with problems are left out (Kubernetes).
    Tolerant,
}

/// Whether a problem is a backendRef to a service that does not exist: in
/// Kubernetes mode the route stays (Gateway API: `ResolvedRefs` false,
/// requests for that backend fail) while the rest of it works.
pub fn is_unresolved_backend(p: &Problem) -> bool {
    p.kind == ProblemKind::MissingService
        && (p.path.contains("backendRefs[") || p.path.contains("requestMirror.backendRef"))
}

/// Whether a problem is a route's reference to a service that does not
/// exist, backend or parent: in Kubernetes mode the route keeps the rest
/// (it attaches to the parents that exist).
fn is_dangling_ref(p: &Problem) -> bool {
    p.kind == ProblemKind::MissingService
}

/// Principals are SPIFFE IDs, namespaces DNS labels, ports non-zero,
/// methods upper case, paths absolute.
/// How a header or query value matches; `None` (a problem noted) when a
/// regular expression does not compile.
fn value_match(
    refs: &Refs<'_>,
    regex: bool,
    value: &str,
    at: &str,
    problems: &mut Vec<Problem>,
) -> Option<ValueMatch> {
    if !regex {
        return Some(ValueMatch::Exact);
    }
    refs.regex(value, at, problems)
        .then_some(ValueMatch::RegularExpression)
}

/// A policy rule as the mesh enforces it (the CRD's stops here).
fn policy_rule(r: &crate::crd::Rule) -> PolicyRule {
    PolicyRule {
        from: r
            .from
            .iter()
            .map(|f| PolicySource {
                principals: f.principals.clone(),
                namespaces: f.namespaces.clone(),
            })
            .collect(),
        to: r
            .to
            .iter()
            .map(|t| PolicyOperation {
                ports: t.ports.clone(),
                methods: t.methods.clone(),
                paths: t.paths.clone(),
            })
            .collect(),
    }
}

fn check_policy(
    doc: &Document,
    spec: &crate::crd::AuthorizationPolicySpec,
    problems: &mut Vec<Problem>,
) {
    for (i, rule) in spec.rules.iter().enumerate() {
        for (j, from) in rule.from.iter().enumerate() {
            for (k, p) in from.principals.iter().enumerate() {
                if let Err(e) = p.parse::<crate::model::SpiffeId>() {
                    problems.push(doc.problem(
                        &format!("spec.rules[{i}].from[{j}].principals[{k}]"),
                        format!("not a SPIFFE ID: {e}"),
                    ));
                }
            }
            for (k, ns) in from.namespaces.iter().enumerate() {
                let ok = !ns.is_empty()
                    && ns.len() <= 63
                    && ns
                        .bytes()
                        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
                if !ok {
                    problems.push(doc.problem(
                        &format!("spec.rules[{i}].from[{j}].namespaces[{k}]"),
                        format!("`{ns}` is not a namespace name"),
                    ));
                }
            }
        }
        for (j, to) in rule.to.iter().enumerate() {
            for (k, port) in to.ports.iter().enumerate() {
                if *port == 0 {
                    problems.push(doc.problem(
                        &format!("spec.rules[{i}].to[{j}].ports[{k}]"),
                        "port 0 is not a port",
                    ));
                }
            }
            for (k, m) in to.methods.iter().enumerate() {
                if m.is_empty() || !m.bytes().all(|b| b.is_ascii_uppercase()) {
                    problems.push(doc.problem(
                        &format!("spec.rules[{i}].to[{j}].methods[{k}]"),
                        format!("`{m}` is not an HTTP method (upper case, e.g. GET)"),
                    ));
                }
            }
            for (k, p) in to.paths.iter().enumerate() {
                if !p.starts_with('/') {
                    problems.push(doc.problem(
                        &format!("spec.rules[{i}].to[{j}].paths[{k}]"),
                        format!("`{p}` is not an absolute path"),
                    ));
                }
            }
        }
    }
}

/// A [`ServiceRef`] from any Gateway API reference (parent or backend, of
/// any route kind): they share these fields but not a type.
macro_rules! service_ref {
    ($r:expr) => {
        ServiceRef {
            kind: $r.kind.as_deref(),
            group: $r.group.as_deref(),
            namespace: $r.namespace.as_deref(),
            name: &$r.name,
        }
    };
}

/// A rule's backendRefs with their filters, for `Refs::backends` (the
/// generated HTTPRoute and GRPCRoute types differ; their fields do not).
macro_rules! backend_refs {
    ($resolver:expr, $rule:expr, $refs:expr, $problems:expr) => {
        $refs
            .enumerate()
            .map(|(j, b)| {
                let filters = filter::filters(
                    $resolver,
                    &format!("spec.rules[{}].backendRefs[{j}].filters", $rule),
                    b.filters.as_deref().unwrap_or_default(),
                    $problems,
                );
                (service_ref!(b), b.port, b.weight, filters)
            })
            .collect::<Vec<_>>()
    };
}

/// Header or query parameter matches (`name`, `type`, `value`), exact or
/// regex; a regex that does not compile is a problem at `<at>[i].value`.
macro_rules! value_matches {
    ($refs:expr, $list:expr, $regex:expr, $at:expr, $name:expr, $problems:expr) => {{
        let at = $at;
        let name = $name;
        let mut out = Vec::new();
        for (i, v) in $list.enumerate() {
            let regex = v.r#type == Some($regex);
            if let Some(kind) = value_match(
                &$refs,
                regex,
                &v.value,
                &format!("{at}[{i}].value"),
                $problems,
            ) {
                out.push(HeaderMatch {
                    name: name(&v.name),
                    value: v.value.clone(),
                    kind,
                });
            }
        }
        out
    }};
}

/// Resolves the references of one route document.
struct Refs<'a> {
    doc: &'a Document,
    namespace: &'a str,
    world: &'a World,
    mode: Mode,
}

/// A backendRef: the service, its port and weight, and its filters.
type BackendRef<'a> = (
    ServiceRef<'a>,
    Option<i32>,
    Option<i32>,
    Vec<crate::model::Filter>,
);

/// The fields of a Gateway API reference to a service.
struct ServiceRef<'a> {
    kind: Option<&'a str>,
    group: Option<&'a str>,
    namespace: Option<&'a str>,
    name: &'a str,
}

impl Refs<'_> {
    /// A reference to a service that exists: `namespace/name`.
    fn service(&self, r: &ServiceRef<'_>, at: &str, problems: &mut Vec<Problem>) -> Option<String> {
        if r.kind.is_some_and(|k| k != "Service")
            || r.group.is_some_and(|g| !g.is_empty() && g != "core")
        {
            problems.push(Problem {
                kind: ProblemKind::UnsupportedKind,
                ..self.doc.problem(
                    at,
                    "only Service references are supported (GAMMA); Gateways are not",
                )
            });
            return None;
        }
        let svc = format!("{}/{}", r.namespace.unwrap_or(self.namespace), r.name);
        if self.world.services.contains_key(&svc) {
            Some(svc)
        } else {
            problems.push(Problem {
                kind: ProblemKind::MissingService,
                ..self.doc.problem(
                    &format!("{at}.name"),
                    format!("service {svc} does not exist"),
                )
            });
            None
        }
    }

    fn port(&self, p: Option<i32>, at: &str, problems: &mut Vec<Problem>) -> Option<u16> {
        match p.map(u16::try_from) {
            None => None,
            Some(Ok(p)) if p != 0 => Some(p),
            Some(_) => {
                problems.push(self.doc.problem(at, "not a port"));
                None
            }
        }
    }

    /// A weighted Service backend.
    fn backend(
        &self,
        r: &ServiceRef<'_>,
        port: Option<i32>,
        weight: Option<i32>,
        filters: Vec<crate::model::Filter>,
        at: &str,
        problems: &mut Vec<Problem>,
    ) -> Option<Backend> {
        let service = match self.service(r, at, problems) {
            Some(s) => s,
            // Kept, unresolved: its share of requests fails.
            None if self.mode != Mode::Strict
                && problems.last().is_some_and(is_unresolved_backend) =>
            {
                format!("{}/{}", r.namespace.unwrap_or(self.namespace), r.name)
            }
            None => return None,
        };
        let Some(p) = self.port(port, &format!("{at}.port"), problems) else {
            if port.is_none() {
                problems.push(
                    self.doc
                        .problem(&format!("{at}.port"), "required for a Service backend"),
                );
            }
            return None;
        };
        let weight = match weight.map(u32::try_from) {
            None => 1,
            Some(Ok(w)) => w,
            Some(Err(_)) => {
                problems.push(
                    self.doc
                        .problem(&format!("{at}.weight"), "must not be negative"),
                );
                return None;
            }
        };
        Some(Backend {
            service,
            port: p,
            weight,
            filters,
        })
    }

    fn parents(
        &self,
        refs: &[(ServiceRef<'_>, Option<i32>)],
        problems: &mut Vec<Problem>,
    ) -> Vec<ParentRef> {
        let before = problems.len();
        let mut parents = Vec::new();
        for (i, (r, port)) in refs.iter().enumerate() {
            let at = format!("spec.parentRefs[{i}]");
            // A parentRef's kind defaults to Gateway, its group to Gateway
            // API's (a backendRef's to Service in the core group).
            let service = r.kind.unwrap_or("Gateway") == "Service"
                && matches!(r.group.unwrap_or("gateway.networking.k8s.io"), "" | "core");
            if !service {
                if self.mode != Mode::Tolerant {
                    problems.push(self.doc.problem(
                        &at,
                        format!(
                            "a {} parent: weft attaches routes to services (GAMMA: \
                             `kind: Service, group: \"\"`); Gateways are not supported",
                            r.kind.unwrap_or("Gateway")
                        ),
                    ));
                }
                // Tolerant: another controller's parent.
                continue;
            }
            if let Some(svc) = self.service(r, &at, problems) {
                parents.push(ParentRef {
                    service: svc,
                    port: self.port(*port, &format!("{at}.port"), problems),
                });
            }
        }
        if parents.is_empty() && problems.len() == before {
            problems.push(
                self.doc
                    .problem("spec.parentRefs", "at least one parent service is required"),
            );
        }
        parents
    }

    fn backends(
        &self,
        rule: usize,
        refs: Vec<BackendRef<'_>>,
        problems: &mut Vec<Problem>,
    ) -> Vec<Backend> {
        let backends: Vec<Backend> = refs
            .into_iter()
            .enumerate()
            .filter_map(|(j, (r, port, weight, filters))| {
                self.backend(
                    &r,
                    port,
                    weight,
                    filters,
                    &format!("spec.rules[{rule}].backendRefs[{j}]"),
                    problems,
                )
            })
            .collect();
        if !backends.is_empty() && backends.iter().all(|b| b.weight == 0) {
            problems.push(self.doc.problem(
                &format!("spec.rules[{rule}].backendRefs"),
                "the weights sum to zero",
            ));
        }
        backends
    }

    fn regex(&self, value: &str, at: &str, problems: &mut Vec<Problem>) -> bool {
        match regex::Regex::new(value) {
            Ok(_) => true,
            Err(e) => {
                problems.push(
                    self.doc
                        .problem(at, format!("invalid regular expression: {e}")),
                );
                false
            }
        }
    }

    /// Whether a route with these problems is kept.
    fn ok(&self, problems: &[Problem]) -> bool {
        problems
            .iter()
            .all(|p| self.mode != Mode::Strict && is_dangling_ref(p))
    }

    fn route(
        &self,
        kind: RouteKind,
        key: &ObjectKey,
        parents: Vec<ParentRef>,
        rules: Vec<RouteRule>,
    ) -> Route {
        Route {
            kind,
            namespace: key.namespace.clone(),
            name: key.name.clone(),
            parents,
            rules,
            created: self.doc.created().unwrap_or(0),
        }
    }
}

/// Converts an HTTPRoute attached to services (GAMMA); its parents and
/// backends must be services that exist, regexes must compile, a rule's
/// weights may not all be zero.
fn http_route(
    doc: &Document,
    key: &ObjectKey,
    route: &gateway_api::experimental::httproutes::HttpRoute,
    world: &World,
    mode: Mode,
    problems: &mut Vec<Problem>,
) -> Option<Route> {
    use gateway_api::experimental::httproutes::{
        HttpRouteRulesMatchesHeadersType, HttpRouteRulesMatchesPathType,
        HttpRouteRulesMatchesQueryParamsType,
    };
    let refs = Refs {
        doc,
        namespace: &key.namespace,
        world,
        mode,
    };
    let before = problems.len();
    let parents = refs.parents(
        &route
            .spec
            .parent_refs
            .iter()
            .flatten()
            .map(|p| {
                let r = service_ref!(p);
                (r, p.port)
            })
            .collect::<Vec<_>>(),
        problems,
    );
    let mut rules = Vec::new();
    for (i, r) in route.spec.rules.iter().flatten().enumerate() {
        let mut matches = Vec::new();
        for (j, m) in r.matches.iter().flatten().enumerate() {
            let at = format!("spec.rules[{i}].matches[{j}]");
            let path = m.path.as_ref().and_then(|p| {
                let value = p.value.clone().unwrap_or_else(|| "/".to_owned());
                match p
                    .r#type
                    .clone()
                    .unwrap_or(HttpRouteRulesMatchesPathType::PathPrefix)
                {
                    HttpRouteRulesMatchesPathType::Exact => Some(PathMatch::Exact(value)),
                    HttpRouteRulesMatchesPathType::PathPrefix => Some(PathMatch::PathPrefix(value)),
                    HttpRouteRulesMatchesPathType::RegularExpression => refs
                        .regex(&value, &format!("{at}.path.value"), problems)
                        .then_some(PathMatch::RegularExpression(value)),
                }
            });
            let headers = value_matches!(
                refs,
                m.headers.iter().flatten(),
                HttpRouteRulesMatchesHeadersType::RegularExpression,
                format!("{at}.headers"),
                |n: &str| n.to_ascii_lowercase(),
                problems
            );
            let query = value_matches!(
                refs,
                m.query_params.iter().flatten(),
                HttpRouteRulesMatchesQueryParamsType::RegularExpression,
                format!("{at}.queryParams"),
                str::to_owned,
                problems
            );
            let method = m.method.as_ref().and_then(|me| {
                serde_json::to_value(me)
                    .ok()
                    .and_then(|v| v.as_str().map(str::to_owned))
            });
            matches.push(RouteMatch {
                path,
                method,
                headers,
                query,
            });
        }
        let backends = refs.backends(
            i,
            backend_refs!(&refs, i, r.backend_refs.iter().flatten(), problems),
            problems,
        );
        let filters = filter::filters(
            &refs,
            &format!("spec.rules[{i}].filters"),
            r.filters.as_deref().unwrap_or_default(),
            problems,
        );
        let timeouts = r.timeouts.as_ref().map_or_else(Default::default, |t| {
            filter::timeouts(
                doc,
                &format!("spec.rules[{i}].timeouts"),
                t.request.as_deref(),
                t.backend_request.as_deref(),
                problems,
            )
        });
        if r.session_persistence.is_some() {
            problems.push(doc.problem(
                &format!("spec.rules[{i}].sessionPersistence"),
                "session persistence is not supported by weft",
            ));
        }
        let retry = r.retry.as_ref().map(|retry| {
            filter::retry(
                doc,
                &format!("spec.rules[{i}].retry"),
                retry.attempts,
                retry.codes.as_deref().unwrap_or_default(),
                retry.backoff.as_deref(),
                problems,
            )
        });
        rules.push(RouteRule {
            matches,
            filters,
            backends,
            timeouts,
            retry,
        });
    }
    refs.ok(&problems[before..])
        .then(|| refs.route(RouteKind::Http, key, parents, rules))
}

/// Converts a GRPCRoute attached to services (GAMMA). A method match
/// becomes a match on the request path, `/<service>/<method>`, with POST.
fn grpc_route(
    doc: &Document,
    key: &ObjectKey,
    route: &gateway_api::grpcroutes::GrpcRoute,
    world: &World,
    mode: Mode,
    problems: &mut Vec<Problem>,
) -> Option<Route> {
    use gateway_api::grpcroutes::{
        GrpcRouteRulesMatchesHeadersType, GrpcRouteRulesMatchesMethodType,
    };
    let refs = Refs {
        doc,
        namespace: &key.namespace,
        world,
        mode,
    };
    let before = problems.len();
    let parents = refs.parents(
        &route
            .spec
            .parent_refs
            .iter()
            .flatten()
            .map(|p| {
                let r = service_ref!(p);
                (r, p.port)
            })
            .collect::<Vec<_>>(),
        problems,
    );
    let mut rules = Vec::new();
    for (i, r) in route.spec.rules.iter().flatten().enumerate() {
        let mut matches = Vec::new();
        for (j, m) in r.matches.iter().flatten().enumerate() {
            let at = format!("spec.rules[{i}].matches[{j}]");
            let path = match &m.method {
                None => None,
                Some(me) => {
                    let (svc, method) = (me.service.clone(), me.method.clone());
                    match me
                        .r#type
                        .clone()
                        .unwrap_or(GrpcRouteRulesMatchesMethodType::Exact)
                    {
                        GrpcRouteRulesMatchesMethodType::Exact => match (svc, method) {
                            (Some(s), Some(m)) => Some(PathMatch::Exact(format!("/{s}/{m}"))),
                            (Some(s), None) => Some(PathMatch::PathPrefix(format!("/{s}/"))),
                            (None, Some(m)) => Some(PathMatch::RegularExpression(format!(
                                "/[^/]+/{}",
                                regex::escape(&m)
                            ))),
                            (None, None) => {
                                problems.push(doc.problem(
                                    &format!("{at}.method"),
                                    "name a service, a method or both",
                                ));
                                None
                            }
                        },
                        GrpcRouteRulesMatchesMethodType::RegularExpression => {
                            let s = svc.unwrap_or_else(|| "[^/]+".to_owned());
                            let m = method.unwrap_or_else(|| "[^/]+".to_owned());
                            let ok = refs.regex(&s, &format!("{at}.method.service"), problems)
                                & refs.regex(&m, &format!("{at}.method.method"), problems);
                            ok.then(|| PathMatch::RegularExpression(format!("/{s}/{m}")))
                        }
                    }
                }
            };
            let headers = value_matches!(
                refs,
                m.headers.iter().flatten(),
                GrpcRouteRulesMatchesHeadersType::RegularExpression,
                format!("{at}.headers"),
                |n: &str| n.to_ascii_lowercase(),
                problems
            );
            matches.push(RouteMatch {
                path,
                method: Some("POST".to_owned()),
                headers,
                query: Vec::new(),
            });
        }
        let backends = refs.backends(
            i,
            backend_refs!(&refs, i, r.backend_refs.iter().flatten(), problems),
            problems,
        );
        let filters = filter::filters(
            &refs,
            &format!("spec.rules[{i}].filters"),
            r.filters.as_deref().unwrap_or_default(),
            problems,
        );
        rules.push(RouteRule {
            matches,
            filters,
            backends,
            timeouts: Default::default(),
            retry: None,
        });
    }
    refs.ok(&problems[before..])
        .then(|| refs.route(RouteKind::Grpc, key, parents, rules))
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

mod filter;
#[cfg(test)]
mod tests;

/// The problem of an object whose namespace does not exist.
fn no_namespace(doc: &Document, key: &ObjectKey) -> Problem {
    doc.problem(
        "metadata.namespace",
        format!("namespace `{}` does not exist", key.namespace),
    )
}

/// Whether `key`'s namespace exists; a problem when it does not.
fn namespace_exists<V>(
    doc: &Document,
    key: &ObjectKey,
    namespaces: &BTreeMap<&str, V>,
    problems: &mut Vec<Problem>,
) -> bool {
    let exists = namespaces.contains_key(key.namespace.as_str());
    if !exists {
        problems.push(no_namespace(doc, key));
    }
    exists
}

/// A Telemetry object as the proxies take it; `None` (and problems that
/// name the field) when a value is out of range.
fn telemetry(
    doc: &Document,
    key: &ObjectKey,
    spec: &crate::crd::TelemetrySpec,
    problems: &mut Vec<Problem>,
) -> Option<weft_model::Telemetry> {
    let before = problems.len();
    let mut check = |at: &str, r: Result<(), String>| {
        if let Err(m) = r {
            problems.push(doc.problem(at, m));
        }
    };
    let tracing = spec.tracing.as_ref().map(|t| {
        let mut out = weft_model::Tracing::default();
        if let Some(e) = &t.endpoint {
            check(
                "spec.tracing.endpoint",
                weft_model::Endpoint::new(e).map(|e| out.endpoint = Some(e)),
            );
        }
        if let Some(p) = &t.protocol {
            check(
                "spec.tracing.protocol",
                weft_model::OtlpProtocol::parse(p)
                    .map(|p| out.protocol = Some(p))
                    .ok_or_else(|| format!("`{p}` is not grpc or http/protobuf")),
            );
        }
        if let Some(p) = t.sampling_percent {
            check(
                "spec.tracing.samplingPercent",
                weft_model::Percent::new(p).map(|p| out.sampling_percent = p),
            );
        }
        if let Some(p) = t.connection_sampling_percent {
            check(
                "spec.tracing.connectionSamplingPercent",
                weft_model::Percent::new(p).map(|p| out.connection_sampling_percent = p),
            );
        }
        for (name, value) in &t.headers {
            let valid = !name.is_empty()
                && name
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
                && value
                    .bytes()
                    .all(|b| b == b'\t' || (b' '..=b'~').contains(&b));
            if !valid {
                check(
                    &format!("spec.tracing.headers.{name}"),
                    Err("not a valid header name and value".to_owned()),
                );
            }
        }
        out.headers = t.headers.clone();
        out
    });
    let mut access_logs = weft_model::AccessLogs::default();
    if let Some(a) = &spec.access_logs {
        access_logs.requests = a.requests;
        access_logs.connections = a.connections;
        if let Some(n) = a.lines_per_second {
            check(
                "spec.accessLogs.linesPerSecond",
                if (1..=1_000_000).contains(&n) {
                    access_logs.lines_per_second = n;
                    Ok(())
                } else {
                    Err(format!("{n} is not from 1 to 1000000"))
                },
            );
        }
    }
    (problems.len() == before).then(|| weft_model::Telemetry {
        namespace: key.namespace.clone(),
        name: key.name.clone(),
        tracing,
        access_logs,
    })
}
