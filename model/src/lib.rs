//! weft's domain model: what the mesh knows, in plain types shared by the
//! control plane (which computes it from Kubernetes objects or YAML files)
//! and the node proxy (which acts on it).
//!
//! ```text
//!  Kubernetes / YAML ──(control: source, index)──► model ──► proto (wire) ──► model ──► proxy
//! ```
//!
//! Neither Kubernetes nor protobuf types appear here: the control plane
//! converts CRDs and core objects into these types at its boundary, and
//! `weft-control-api` converts them to and from the wire. The serde form is
//! the one a proxy's offline config file uses (camelCase, unknown fields
//! refused).

mod identity;
mod policy;
mod route;
mod telemetry;

use std::net::Ipv4Addr;

use serde::{Deserialize, Serialize};

pub use identity::{IdentityError, SpiffeId};
pub use policy::{Policy, PolicyAction, PolicyOperation, PolicyRule, PolicySource};
pub use route::{
    Backend, Filter, HeaderMatch, HeaderModifier, HeaderValue, Mirror, ParentRef, PathMatch,
    PathModifier, Redirect, Retry, Rewrite, Route, RouteKind, RouteMatch, RouteRule, Timeouts,
    ValueMatch,
};
pub use telemetry::{
    AccessLogs, Endpoint, OtlpProtocol, Percent, Telemetry, Tracing,
    effective as effective_telemetry,
};

/// The label that meshes a namespace or a pod.
pub const MESH_LABEL: &str = "weft.io/mesh";
/// The label that opts a namespace's or pod's sockets in to the fast path.
pub const FAST_PATH_LABEL: &str = "weft.io/fast-path";

/// A pod with an address, on a node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Workload {
    /// Namespace.
    pub namespace: String,
    /// Pod name.
    pub name: String,
    /// The node it runs on.
    pub node: String,
    /// Its address.
    pub ip: Ipv4Addr,
    /// Its service account: its identity is that account's.
    #[serde(default = "default_service_account")]
    pub service_account: String,
    /// Whether its traffic is captured.
    #[serde(default)]
    pub meshed: bool,
    /// Whether its sockets may exchange bytes with the proxy socket to
    /// socket (the node's fast path; see its caveat).
    #[serde(default)]
    pub fast_path: bool,
}

fn default_service_account() -> String {
    "default".to_owned()
}

impl Workload {
    /// `namespace/name`.
    pub fn key(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }

    /// Its service account, `(namespace, name)`.
    pub fn account(&self) -> Account {
        (self.namespace.clone(), self.service_account.clone())
    }

    /// Its identity in `trust_domain`: that of its service account.
    pub fn identity(&self, trust_domain: &str) -> SpiffeId {
        SpiffeId::new(trust_domain, &self.account())
    }
}

/// A service account: `(namespace, name)`.
pub type Account = (String, String);

/// A service: a cluster IP, ports and the addresses of ready endpoints.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Service {
    /// Namespace.
    pub namespace: String,
    /// Service name.
    pub name: String,
    /// Its virtual address.
    #[serde(rename = "clusterIP")]
    pub cluster_ip: Ipv4Addr,
    /// Its ports.
    pub ports: Vec<ServicePort>,
    /// Its endpoints' addresses.
    #[serde(default)]
    pub endpoints: Vec<Ipv4Addr>,
}

impl Service {
    /// `namespace/name`.
    pub fn key(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }
}

/// One service port.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(from = "ServicePortSpec", rename_all = "camelCase")]
pub struct ServicePort {
    /// The service port.
    pub port: u16,
    /// The pods' port.
    pub target_port: u16,
    /// What it speaks, as the Service says (`appProtocol`): `http`,
    /// `kubernetes.io/h2c` and `grpc` make it an L7 port.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub app_protocol: Option<String>,
}

impl ServicePort {
    /// Whether its `appProtocol` says it speaks HTTP (so the proxy handles
    /// it at L7 even without a route).
    pub fn speaks_http(&self) -> bool {
        matches!(
            self.app_protocol.as_deref(),
            Some("http" | "kubernetes.io/h2c" | "grpc" | "kubernetes.io/http2")
        )
    }
}

/// A service port as written: the target port defaults to the port.
#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct ServicePortSpec {
    port: u16,
    #[serde(default)]
    target_port: Option<u16>,
    #[serde(default)]
    app_protocol: Option<String>,
}

impl From<ServicePortSpec> for ServicePort {
    fn from(s: ServicePortSpec) -> ServicePort {
        ServicePort {
            port: s.port,
            target_port: s.target_port.unwrap_or(s.port),
            app_protocol: s.app_protocol,
        }
    }
}

#[cfg(test)]
mod tests;
