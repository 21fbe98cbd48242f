//! The address and name plan: a pure function of the lab's name and topology.
//!
//! Address plan (all inside 198.18.0.0/15, which exists only in lab namespaces):
//!
//! | range            | use                                               |
//! |------------------|---------------------------------------------------|
//! | 198.18.0.0/24    | underlay: node *i* (0-based) is 198.18.0.(i+1)     |
//! | 198.18.(i+1).0/24| pods of node *i*; .1 is the gateway on the node,   |
//! |                  | the node's k-th pod (0-based) is .(k+2)            |
//! | 198.19.0.0/16    | service cluster IPs, allocated from 198.19.0.10    |
//!
//! Names: netns `weft-<lab>-underlay`, `weft-<lab>-node-<node>`,
//! `weft-<lab>-pod-<namespace>_<pod>`; cgroups
//! `<cgroup root>/weft-lab/<lab>/<node>/<namespace>_<pod>`. Veths are created
//! directly inside the lab's namespaces (never in the host's), so their short
//! names (`eth0`, `wp<k>`, `n<i>`) cannot collide between labs and vanish with
//! the namespaces: interface names are limited to 15 bytes, too few to carry
//! a lab name.

use std::collections::BTreeSet;
use std::fmt;
use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::topology::{Attach, FailMode, MeshMode, PortSpec, Topology};

/// The most nodes the address plan holds.
pub const MAX_NODES: usize = 200;
/// The most pods one node's /24 holds (.2 to .251).
pub const MAX_PODS_PER_NODE: usize = 250;
/// The underlay network joining the nodes.
pub const UNDERLAY: Cidr = Cidr::new(Ipv4Addr::new(198, 18, 0, 0), 24);
/// Where service cluster IPs live.
pub const SERVICE_RANGE: Cidr = Cidr::new(Ipv4Addr::new(198, 19, 0, 0), 16);
/// The first automatically allocated cluster IP.
const FIRST_AUTO_CLUSTER_IP: u32 = 10;
/// Prefix of every lab netns and of the lab cgroup directory.
pub(crate) const NETNS_PREFIX: &str = "weft-";

/// An IPv4 network in CIDR notation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Cidr {
    addr: Ipv4Addr,
    len: u8,
}

impl Cidr {
    /// A network; `addr` is masked to `len` bits.
    pub const fn new(addr: Ipv4Addr, len: u8) -> Cidr {
        let mask = if len == 0 { 0 } else { u32::MAX << (32 - len) };
        Cidr {
            addr: Ipv4Addr::from_bits(addr.to_bits() & mask),
            len,
        }
    }
    /// The network address.
    pub fn network(&self) -> Ipv4Addr {
        self.addr
    }
    /// Whether `ip` is inside.
    pub fn contains(&self, ip: Ipv4Addr) -> bool {
        Cidr::new(ip, self.len).addr == self.addr
    }
    /// The `n`-th address from the network address.
    pub fn nth(&self, n: u32) -> Ipv4Addr {
        Ipv4Addr::from_bits(self.addr.to_bits() + n)
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.len)
    }
}

/// A lab's name: 1 to 12 of `a-z` and `0-9`. No `-`, so the prefix
/// `weft-<lab>-` of one lab is never a prefix of another lab's names.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct LabName(String);

impl LabName {
    /// The name as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
    /// The prefix shared by every netns of this lab.
    pub fn netns_prefix(&self) -> String {
        format!("{NETNS_PREFIX}{}-", self.0)
    }
}

impl FromStr for LabName {
    type Err = String;
    fn from_str(s: &str) -> Result<LabName, String> {
        if s.is_empty() || s.len() > 12 {
            return Err(format!("lab name `{s}` must be 1 to 12 characters long"));
        }
        if !s
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
        {
            return Err(format!(
                "lab name `{s}` may hold only lowercase letters and digits (no '-': \
                 it separates the parts of the lab's namespace names)"
            ));
        }
        Ok(LabName(s.to_owned()))
    }
}

impl TryFrom<String> for LabName {
    type Error = String;
    fn try_from(s: String) -> Result<LabName, String> {
        s.parse()
    }
}

impl From<LabName> for String {
    fn from(n: LabName) -> String {
        n.0
    }
}

impl fmt::Display for LabName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Everything a lab is made of, named and addressed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Plan {
    /// The lab's name.
    pub lab: LabName,
    /// The netns holding the underlay bridge.
    pub underlay_netns: String,
    /// Nodes in topology order.
    pub nodes: Vec<NodePlan>,
    /// Pods in topology order.
    pub pods: Vec<PodPlan>,
    /// Services in topology order.
    pub services: Vec<ServicePlan>,
}

/// One node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodePlan {
    /// Node name.
    pub name: String,
    /// Its netns.
    pub netns: String,
    /// Its address on the underlay (its `eth0`).
    pub underlay_ip: Ipv4Addr,
    /// The interface in the underlay netns that leads to it.
    pub underlay_port: String,
    /// Its pods' network.
    pub pod_cidr: Cidr,
    /// The pods' default gateway, held by the node.
    pub gateway: Ipv4Addr,
    /// Its cgroup directory, relative to the lab's cgroup directory.
    pub cgroup: PathBuf,
    /// Its proxy's cgroup, relative to the lab's cgroup directory.
    pub proxy_cgroup: PathBuf,
    /// Where its proxy pins the capture programs.
    pub pin_dir: PathBuf,
    /// Its proxy's fail mode.
    pub fail_mode: FailMode,
    /// Whether its proxy turns on the socket-to-socket fast path.
    pub fast_path: bool,
    /// How its proxy attaches the tc program.
    pub attach: Attach,
}

/// The bpffs directory holding every lab's pins.
pub const PIN_ROOT: &str = "/sys/fs/bpf/weft";

/// One pod.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PodPlan {
    /// Namespace.
    pub namespace: String,
    /// Pod name.
    pub name: String,
    /// Service account.
    pub service_account: String,
    /// Node name.
    pub node: String,
    /// Its address (a /32 on its `eth0`).
    pub ip: Ipv4Addr,
    /// Its netns.
    pub netns: String,
    /// The host side of its veth, in the node netns.
    pub host_veth: String,
    /// Its cgroup directory, relative to the lab's cgroup directory.
    pub cgroup: PathBuf,
    /// Whether it is meshed.
    pub mesh: MeshMode,
    /// Whether it opted in to the fast path.
    pub fast_path: bool,
    /// Its command, if any.
    pub command: Option<Vec<String>>,
    /// Ports it must listen on before the lab is ready (the target ports of
    /// the services that select it), only when it has a command.
    pub ready_ports: Vec<u16>,
}

impl PodPlan {
    /// `namespace/name`.
    pub fn key(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }
}

/// One service.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServicePlan {
    /// Namespace.
    pub namespace: String,
    /// Service name.
    pub name: String,
    /// Its cluster IP.
    pub cluster_ip: Ipv4Addr,
    /// Its ports.
    pub ports: Vec<PortSpec>,
    /// The selected pods as `namespace/name`, with their addresses.
    pub endpoints: Vec<(String, Ipv4Addr)>,
}

impl ServicePlan {
    /// `namespace/name`.
    pub fn key(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }
}

impl Plan {
    /// Names and addresses everything in a validated topology.
    pub fn new(lab: &LabName, topo: &Topology) -> Plan {
        Plan::keeping(lab, topo, None)
    }

    /// Like [`Plan::new`], but pods that are in `previous` (same namespace,
    /// name and node) keep their address and veth name; new pods get the
    /// lowest free ones. For changing a running lab.
    pub fn keeping(lab: &LabName, topo: &Topology, previous: Option<&Plan>) -> Plan {
        let prefix = lab.netns_prefix();
        let nodes: Vec<NodePlan> = topo
            .nodes
            .iter()
            .enumerate()
            .map(|(i, n)| {
                // Validation caps nodes at MAX_NODES, so i + 1 fits an octet.
                let octet = u8::try_from(i + 1).unwrap_or(u8::MAX);
                let pod_cidr = Cidr::new(Ipv4Addr::new(198, 18, octet, 0), 24);
                NodePlan {
                    name: n.name.clone(),
                    netns: format!("{prefix}node-{}", n.name),
                    underlay_ip: UNDERLAY.nth(u32::from(octet)),
                    underlay_port: format!("n{i}"),
                    pod_cidr,
                    gateway: pod_cidr.nth(1),
                    cgroup: PathBuf::from(&n.name),
                    proxy_cgroup: PathBuf::from(&n.name).join("proxy"),
                    pin_dir: PathBuf::from(PIN_ROOT).join(lab.as_str()).join(&n.name),
                    fail_mode: n.fail_mode,
                    fast_path: n.fast_path,
                    attach: n.attach,
                }
            })
            .collect();

        // Pods that existed keep their address and veth (a running lab's pods
        // must not move); new ones take the lowest free ones.
        let kept = |p: &crate::topology::PodSpec| {
            previous.and_then(|prev| {
                prev.pods
                    .iter()
                    .find(|q| q.namespace == p.namespace && q.name == p.name && q.node == p.node)
            })
        };
        let mut used_ips: BTreeSet<Ipv4Addr> = BTreeSet::new();
        let mut used_veths: BTreeSet<String> = BTreeSet::new();
        for p in &topo.pods {
            if let Some(q) = kept(p) {
                used_ips.insert(q.ip);
                used_veths.insert(q.host_veth.clone());
            }
        }
        let pods: Vec<PodPlan> = topo
            .pods
            .iter()
            .map(|p| {
                let n = topo
                    .nodes
                    .iter()
                    .position(|n| n.name == p.node)
                    .unwrap_or(0);
                let (ip, host_veth) = match kept(p) {
                    Some(q) => (q.ip, q.host_veth.clone()),
                    None => {
                        let ip = (2..)
                            .map(|s| nodes[n].pod_cidr.nth(s))
                            .find(|ip| !used_ips.contains(ip))
                            .unwrap_or(nodes[n].gateway);
                        let veth = (0..)
                            .map(|k| format!("wp{k}"))
                            .find(|v| !used_veths.contains(v))
                            .unwrap_or_default();
                        used_ips.insert(ip);
                        used_veths.insert(veth.clone());
                        (ip, veth)
                    }
                };
                let ready_ports: BTreeSet<u16> = if p.command.is_some() {
                    topo.services
                        .iter()
                        .filter(|s| topo.endpoints(s).any(|e| std::ptr::eq(e, p)))
                        .flat_map(|s| s.ports.iter().map(PortSpec::target))
                        .collect()
                } else {
                    BTreeSet::new()
                };
                PodPlan {
                    namespace: p.namespace.clone(),
                    name: p.name.clone(),
                    service_account: p.service_account.clone(),
                    node: p.node.clone(),
                    ip,
                    netns: format!("{prefix}pod-{}_{}", p.namespace, p.name),
                    host_veth,
                    cgroup: nodes[n].cgroup.join(format!("{}_{}", p.namespace, p.name)),
                    mesh: topo.mesh_mode(p),
                    fast_path: topo.fast_path(p),
                    command: p.command.clone(),
                    ready_ports: ready_ports.into_iter().collect(),
                }
            })
            .collect();

        let taken: BTreeSet<Ipv4Addr> = topo.services.iter().filter_map(|s| s.cluster_ip).collect();
        let mut auto = (FIRST_AUTO_CLUSTER_IP..)
            .map(|n| SERVICE_RANGE.nth(n))
            .filter(|ip| !taken.contains(ip));
        let services = topo
            .services
            .iter()
            .map(|s| ServicePlan {
                namespace: s.namespace.clone(),
                name: s.name.clone(),
                cluster_ip: s
                    .cluster_ip
                    .or_else(|| auto.next())
                    .unwrap_or(SERVICE_RANGE.network()),
                ports: s.ports.clone(),
                endpoints: topo
                    .endpoints(s)
                    .filter_map(|e| {
                        pods.iter()
                            .find(|p| p.namespace == e.namespace && p.name == e.name)
                            .map(|p| (p.key(), p.ip))
                    })
                    .collect(),
            })
            .collect();

        Plan {
            lab: lab.clone(),
            underlay_netns: format!("{prefix}underlay"),
            nodes,
            pods,
            services,
        }
    }

    /// The node a pod runs on.
    pub fn node_of(&self, pod: &PodPlan) -> Option<&NodePlan> {
        self.nodes.iter().find(|n| n.name == pod.node)
    }

    /// Finds a node by name.
    pub fn find_node(&self, name: &str) -> Result<&NodePlan, String> {
        self.nodes.iter().find(|n| n.name == name).ok_or_else(|| {
            format!(
                "no node `{name}` in lab {} (nodes: {})",
                self.lab,
                self.nodes
                    .iter()
                    .map(|n| n.name.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            )
        })
    }

    /// Finds a pod by `namespace/name`, or by a bare name that is unique.
    pub fn find_pod(&self, key: &str) -> Result<&PodPlan, String> {
        let matches: Vec<&PodPlan> = match key.split_once('/') {
            Some((ns, name)) => self
                .pods
                .iter()
                .filter(|p| p.namespace == ns && p.name == name)
                .collect(),
            None => self.pods.iter().filter(|p| p.name == key).collect(),
        };
        match matches.as_slice() {
            [one] => Ok(one),
            [] => Err(format!(
                "no pod `{key}` in lab {} (pods: {})",
                self.lab,
                self.pods
                    .iter()
                    .map(PodPlan::key)
                    .collect::<Vec<_>>()
                    .join(", ")
            )),
            many => Err(format!(
                "`{key}` is ambiguous in lab {}: {}; say namespace/name",
                self.lab,
                many.iter().map(|p| p.key()).collect::<Vec<_>>().join(", ")
            )),
        }
    }
}

#[cfg(test)]
mod tests;
