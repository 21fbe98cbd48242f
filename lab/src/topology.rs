//! The lab topology: what a user writes in YAML, parsed and validated once.
//!
//! Parsing rejects unknown fields and wrong types with the path of the field
//! (`pods[2].labels`); validation then checks what types cannot: names are
//! DNS labels and unique, every reference (a pod's node and namespace) exists,
//! ports and cluster IPs are in range. All problems are reported together,
//! each with its file and field path.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::net::Ipv4Addr;

use serde::{Deserialize, Serialize};
pub use weft_proxy::config::{Attach, FailMode};

use crate::plan::{MAX_NODES, MAX_PODS_PER_NODE, SERVICE_RANGE};

/// The label that turns the mesh on for a namespace or a pod.
pub const MESH_LABEL: &str = "weft.io/mesh";
/// The label that opts a meshed namespace's or pod's sockets in to the
/// socket-to-socket fast path (see the fast path's caveat in the docs).
pub const FAST_PATH_LABEL: &str = "weft.io/fast-path";

/// A validated topology. Build it with [`Topology::parse`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Topology {
    /// Nodes in order; a node's index decides its addresses.
    pub nodes: Vec<NodeSpec>,
    /// Namespaces that pods and services may live in.
    #[serde(default)]
    pub namespaces: Vec<NamespaceSpec>,
    /// Pods in order; a pod's place among its node's pods decides its address.
    #[serde(default)]
    pub pods: Vec<PodSpec>,
    /// Services that select pods by label.
    #[serde(default)]
    pub services: Vec<ServiceSpec>,
    /// Workload identity and mTLS between nodes.
    #[serde(default)]
    pub identity: IdentitySpec,
}

/// How the lab's mesh authenticates.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct IdentitySpec {
    /// Proxies get workload certificates and carry cross-node traffic over
    /// HBONE (mTLS). Off: plain TCP between nodes (to measure what mTLS
    /// costs, say).
    #[serde(default = "default_true")]
    pub mtls: bool,
    /// Lifetime of workload certificates, in seconds (the control plane's
    /// default, 24 h, when absent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub certificate_ttl_seconds: Option<u64>,
}

impl Default for IdentitySpec {
    fn default() -> Self {
        IdentitySpec {
            mtls: true,
            certificate_ttl_seconds: None,
        }
    }
}

/// A node: one network namespace, later one proxy.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct NodeSpec {
    /// DNS label, unique among nodes.
    pub name: String,
    /// What a meshed pod's new connection meets when the node's proxy is
    /// down: `closed` (a reset at once, the default) or `open` (unproxied).
    #[serde(default)]
    pub fail_mode: FailMode,
    /// How its proxy attaches the tc program: `auto` (TCX on 6.6+, else
    /// netlink), `tcx` or `netlink`.
    #[serde(default)]
    pub attach: Attach,
    /// Whether the node offers the socket-to-socket fast path (sock_ops +
    /// sk_msg) to the pods that opt in with `weft.io/fast-path: enabled`.
    #[serde(default = "default_true")]
    pub fast_path: bool,
}

/// A namespace and its labels (`weft.io/mesh: enabled` meshes its pods).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct NamespaceSpec {
    /// DNS label, unique among namespaces.
    pub name: String,
    /// Labels, as on a Kubernetes Namespace.
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
}

/// A pod: a network namespace, a cgroup and optionally a command.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct PodSpec {
    /// DNS label, unique within the namespace.
    pub name: String,
    /// A namespace declared under `namespaces`.
    #[serde(default = "default_namespace")]
    pub namespace: String,
    /// The service account the pod runs as (its identity, later).
    #[serde(default = "default_service_account")]
    pub service_account: String,
    /// A node declared under `nodes`.
    pub node: String,
    /// Labels, matched by service selectors and by the mesh label.
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// The pod's process; a leading `weft` runs this weft binary. A pod with no
    /// command is an idle sandbox for `weft lab exec`.
    #[serde(default)]
    pub command: Option<Vec<String>>,
}

/// A service: a selector over pods, its ports and a cluster IP.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ServiceSpec {
    /// DNS label, unique within the namespace.
    pub name: String,
    /// A namespace declared under `namespaces`.
    #[serde(default = "default_namespace")]
    pub namespace: String,
    /// Pods in the same namespace whose labels include all of these.
    pub selector: BTreeMap<String, String>,
    /// At least one port.
    pub ports: Vec<PortSpec>,
    /// A fixed cluster IP inside the service range; allocated when absent.
    #[serde(default, rename = "clusterIP")]
    pub cluster_ip: Option<Ipv4Addr>,
}

/// One service port.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct PortSpec {
    /// Optional name, unique within the service.
    #[serde(default)]
    pub name: Option<String>,
    /// The service port.
    pub port: u16,
    /// The pods' port; defaults to `port`.
    #[serde(default)]
    pub target_port: Option<u16>,
    /// Only `TCP` for now.
    #[serde(default = "default_protocol")]
    pub protocol: String,
    /// What it speaks (Kubernetes' `appProtocol`): `http`,
    /// `kubernetes.io/h2c` or `grpc` make the mesh handle it at L7.
    #[serde(default)]
    pub app_protocol: Option<String>,
}

impl PortSpec {
    /// The port on the pods.
    pub fn target(&self) -> u16 {
        self.target_port.unwrap_or(self.port)
    }
}

fn default_true() -> bool {
    true
}

fn default_namespace() -> String {
    "default".to_owned()
}
fn default_service_account() -> String {
    "default".to_owned()
}
fn default_protocol() -> String {
    "TCP".to_owned()
}

/// Whether a pod's traffic goes through the mesh.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MeshMode {
    /// Captured by the node proxy.
    Enabled,
    /// Left alone.
    Disabled,
}

impl fmt::Display for MeshMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            MeshMode::Enabled => "enabled",
            MeshMode::Disabled => "disabled",
        })
    }
}

/// One problem in a topology file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// Field path, e.g. `pods[2].node`; empty for the document itself.
    pub path: String,
    /// Line and column, where the YAML parser knows them.
    pub location: Option<(usize, usize)>,
    /// What is wrong.
    pub message: String,
}

/// A topology that could not be parsed or validated: every problem found, each
/// naming the file and the field.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct TopologyError {
    /// The file (or a description of the source).
    pub file: String,
    /// At least one problem.
    pub problems: Vec<Problem>,
}

impl fmt::Display for TopologyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let n = self.problems.len();
        write!(
            f,
            "invalid topology {}: {n} problem{}",
            self.file,
            if n == 1 { "" } else { "s" }
        )?;
        for p in &self.problems {
            write!(f, "\n  {}", self.file)?;
            if let Some((line, col)) = p.location {
                write!(f, ":{line}:{col}")?;
            }
            if p.path.is_empty() {
                write!(f, ": {}", p.message)?;
            } else {
                write!(f, ": {}: {}", p.path, p.message)?;
            }
        }
        Ok(())
    }
}

impl Topology {
    /// Parses and validates a topology; `file` names the source in errors.
    pub fn parse(file: &str, text: &str) -> Result<Topology, TopologyError> {
        from_yaml::<Topology>(file, text)?.validated(file)
    }

    /// Validates a topology built or changed in code; `file` names it in errors.
    pub fn validated(self, file: &str) -> Result<Topology, TopologyError> {
        let problems = self.problems();
        if problems.is_empty() {
            Ok(self)
        } else {
            Err(TopologyError {
                file: file.to_owned(),
                problems,
            })
        }
    }

    /// Whether a pod is meshed: its own `weft.io/mesh` label wins, else its
    /// namespace's.
    pub fn mesh_mode(&self, pod: &PodSpec) -> MeshMode {
        let ns_label = self
            .namespaces
            .iter()
            .find(|n| n.name == pod.namespace)
            .and_then(|n| n.labels.get(MESH_LABEL));
        match pod.labels.get(MESH_LABEL).or(ns_label).map(String::as_str) {
            Some("enabled") => MeshMode::Enabled,
            _ => MeshMode::Disabled,
        }
    }

    /// Whether a meshed pod opted in to the fast path: its own
    /// `weft.io/fast-path` label wins, else its namespace's.
    pub fn fast_path(&self, pod: &PodSpec) -> bool {
        let ns_label = self
            .namespaces
            .iter()
            .find(|n| n.name == pod.namespace)
            .and_then(|n| n.labels.get(FAST_PATH_LABEL));
        self.mesh_mode(pod) == MeshMode::Enabled
            && pod
                .labels
                .get(FAST_PATH_LABEL)
                .or(ns_label)
                .map(String::as_str)
                == Some("enabled")
    }

    /// The pods a service selects, in topology order.
    pub fn endpoints<'a>(&'a self, svc: &'a ServiceSpec) -> impl Iterator<Item = &'a PodSpec> {
        self.pods.iter().filter(move |p| {
            p.namespace == svc.namespace
                && svc.selector.iter().all(|(k, v)| p.labels.get(k) == Some(v))
        })
    }

    fn problems(&self) -> Vec<Problem> {
        let mut out = Vec::new();
        let mut bad = |path: String, message: String| {
            out.push(Problem {
                path,
                location: None,
                message,
            });
        };

        if self.nodes.is_empty() {
            bad("nodes".into(), "at least one node is required".into());
        }
        if self.identity.certificate_ttl_seconds == Some(0) {
            bad(
                "identity.certificateTtlSeconds".into(),
                "a certificate must live at least 1 second".into(),
            );
        }
        if self.nodes.len() > MAX_NODES {
            bad(
                "nodes".into(),
                format!(
                    "{} nodes, at most {MAX_NODES} fit the address plan",
                    self.nodes.len()
                ),
            );
        }
        let node_names = unique_names(
            &mut bad,
            "nodes",
            "node",
            self.nodes.iter().map(|n| &n.name),
        );
        let ns_names = unique_names(
            &mut bad,
            "namespaces",
            "namespace",
            self.namespaces.iter().map(|n| &n.name),
        );
        for (i, ns) in self.namespaces.iter().enumerate() {
            check_labels(&mut bad, &format!("namespaces[{i}].labels"), &ns.labels);
        }
        let known = |set: &BTreeSet<&str>| set.iter().copied().collect::<Vec<_>>().join(", ");

        let mut pod_keys = BTreeSet::new();
        let mut per_node: BTreeMap<&str, usize> = BTreeMap::new();
        for (i, p) in self.pods.iter().enumerate() {
            check_name(&mut bad, format!("pods[{i}].name"), &p.name);
            check_name(
                &mut bad,
                format!("pods[{i}].serviceAccount"),
                &p.service_account,
            );
            if !ns_names.contains(p.namespace.as_str()) {
                bad(
                    format!("pods[{i}].namespace"),
                    format!(
                        "namespace `{}` is not declared under `namespaces` (declared: {})",
                        p.namespace,
                        known(&ns_names)
                    ),
                );
            }
            if !node_names.contains(p.node.as_str()) {
                bad(
                    format!("pods[{i}].node"),
                    format!("unknown node `{}` (nodes: {})", p.node, known(&node_names)),
                );
            }
            if !pod_keys.insert((p.namespace.as_str(), p.name.as_str())) {
                bad(
                    format!("pods[{i}].name"),
                    format!("duplicate pod `{}/{}`", p.namespace, p.name),
                );
            }
            let count = per_node.entry(p.node.as_str()).or_default();
            *count += 1;
            if *count == MAX_PODS_PER_NODE + 1 {
                bad(
                    format!("pods[{i}].node"),
                    format!("more than {MAX_PODS_PER_NODE} pods on node `{}`", p.node),
                );
            }
            check_labels(&mut bad, &format!("pods[{i}].labels"), &p.labels);
            match &p.command {
                Some(cmd) if cmd.is_empty() || cmd[0].is_empty() => bad(
                    format!("pods[{i}].command"),
                    "an empty command; leave `command` out for an idle pod".into(),
                ),
                _ => {}
            }
        }

        let mut svc_keys = BTreeSet::new();
        let mut cluster_ips = BTreeMap::new();
        for (i, s) in self.services.iter().enumerate() {
            check_name(&mut bad, format!("services[{i}].name"), &s.name);
            if !ns_names.contains(s.namespace.as_str()) {
                bad(
                    format!("services[{i}].namespace"),
                    format!(
                        "namespace `{}` is not declared under `namespaces` (declared: {})",
                        s.namespace,
                        known(&ns_names)
                    ),
                );
            }
            if !svc_keys.insert((s.namespace.as_str(), s.name.as_str())) {
                bad(
                    format!("services[{i}].name"),
                    format!("duplicate service `{}/{}`", s.namespace, s.name),
                );
            }
            if s.selector.is_empty() {
                bad(
                    format!("services[{i}].selector"),
                    "an empty selector; name at least one label".into(),
                );
            }
            check_labels(&mut bad, &format!("services[{i}].selector"), &s.selector);
            if s.ports.is_empty() {
                bad(
                    format!("services[{i}].ports"),
                    "at least one port is required".into(),
                );
            }
            let mut port_names = BTreeSet::new();
            let mut port_numbers = BTreeSet::new();
            for (j, port) in s.ports.iter().enumerate() {
                let at = format!("services[{i}].ports[{j}]");
                if port.port == 0 {
                    bad(format!("{at}.port"), "port 0 is not a port".into());
                }
                if port.target_port == Some(0) {
                    bad(format!("{at}.targetPort"), "port 0 is not a port".into());
                }
                if !port_numbers.insert(port.port) {
                    bad(
                        format!("{at}.port"),
                        format!("duplicate port {}", port.port),
                    );
                }
                if port.protocol != "TCP" {
                    bad(
                        format!("{at}.protocol"),
                        format!("`{}` is not supported (only TCP)", port.protocol),
                    );
                }
                if let Some(name) = &port.name {
                    check_name(&mut bad, format!("{at}.name"), name);
                    if !port_names.insert(name.as_str()) {
                        bad(
                            format!("{at}.name"),
                            format!("duplicate port name `{name}`"),
                        );
                    }
                }
            }
            if let Some(ip) = s.cluster_ip {
                let at = format!("services[{i}].clusterIP");
                if !SERVICE_RANGE.contains(ip) || ip == SERVICE_RANGE.network() {
                    bad(
                        at,
                        format!("{ip} is outside the service range {SERVICE_RANGE}"),
                    );
                } else if let Some(other) = cluster_ips.insert(ip, i) {
                    bad(at, format!("{ip} is already taken by services[{other}]"));
                }
            }
        }
        out
    }
}

/// Checks that each name of a list is a DNS label and unique; returns the set.
fn unique_names<'a>(
    bad: &mut impl FnMut(String, String),
    list: &str,
    what: &str,
    names: impl Iterator<Item = &'a String>,
) -> BTreeSet<&'a str> {
    let mut seen = BTreeSet::new();
    for (i, name) in names.enumerate() {
        check_name(bad, format!("{list}[{i}].name"), name);
        if !seen.insert(name.as_str()) {
            bad(
                format!("{list}[{i}].name"),
                format!("duplicate {what} `{name}`"),
            );
        }
    }
    seen
}

impl PodSpec {
    /// Parses one pod (as under `pods:` in a topology); it is validated
    /// when added to a lab.
    pub fn parse(file: &str, text: &str) -> Result<PodSpec, TopologyError> {
        from_yaml(file, text)
    }
}

/// Deserializes YAML, naming the file, the field path and the line on error.
fn from_yaml<T: serde::de::DeserializeOwned>(file: &str, text: &str) -> Result<T, TopologyError> {
    let de = serde_yaml::Deserializer::from_str(text);
    serde_path_to_error::deserialize(de).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        let location = inner.location().map(|l| (l.line(), l.column()));
        TopologyError {
            file: file.to_owned(),
            problems: vec![Problem {
                path: if path == "." { String::new() } else { path },
                location,
                message: strip_location(&inner.to_string()),
            }],
        }
    })
}

fn check_name(bad: &mut impl FnMut(String, String), path: String, name: &str) {
    if let Err(why) = dns_label(name) {
        bad(path, format!("`{name}` is not a valid name: {why}"));
    }
}

fn check_labels(
    bad: &mut impl FnMut(String, String),
    path: &str,
    labels: &BTreeMap<String, String>,
) {
    for (k, v) in labels {
        if k.is_empty() || k.len() > 317 || k.chars().any(|c| c.is_whitespace()) {
            bad(
                format!("{path}.{k}"),
                format!("`{k}` is not a valid label key"),
            );
        }
        if v.len() > 63
            || v.chars()
                .any(|c| !(c.is_ascii_alphanumeric() || "-_.".contains(c)))
        {
            bad(
                format!("{path}.{k}"),
                format!("`{v}` is not a valid label value"),
            );
        }
        if (k == MESH_LABEL || k == FAST_PATH_LABEL) && v != "enabled" && v != "disabled" {
            bad(
                format!("{path}.{k}"),
                format!("`{v}`: {k} takes `enabled` or `disabled`"),
            );
        }
    }
}

/// Checks an RFC 1123 label: 1 to 63 of `a-z`, `0-9`, `-`, starting and
/// ending with a letter or digit.
pub(crate) fn dns_label(name: &str) -> Result<(), &'static str> {
    if name.is_empty() {
        return Err("it is empty");
    }
    if name.len() > 63 {
        return Err("it is longer than 63 characters");
    }
    if !name
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
    {
        return Err("use only lowercase letters, digits and '-'");
    }
    if name.starts_with('-') || name.ends_with('-') {
        return Err("it must start and end with a letter or digit");
    }
    Ok(())
}

/// serde_yaml appends " at line L column C"; the location is reported apart.
fn strip_location(msg: &str) -> String {
    match msg.rfind(" at line ") {
        Some(i) => msg[..i].to_owned(),
        None => msg.to_owned(),
    }
}

#[cfg(test)]
mod tests;
