//! Authorization policies (weft's `AuthorizationPolicy`), as the mesh
//! enforces them: Istio's semantics, resolved to the pods they select.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;

use serde::{Deserialize, Serialize};

/// An authorization policy, for the pods it lists.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Policy {
    /// Namespace.
    pub namespace: String,
    /// Name.
    pub name: String,
    /// Labels the selected pods have (every pod of the namespace if empty):
    /// the control plane resolves it into `workloads`.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub selector: BTreeMap<String, String>,
    /// What a match does.
    pub action: PolicyAction,
    /// A request matches when it matches any rule.
    #[serde(default)]
    pub rules: Vec<PolicyRule>,
    /// The addresses of the pods it applies to, sorted.
    pub workloads: Vec<Ipv4Addr>,
}

impl Policy {
    /// `namespace/name`.
    pub fn key(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }
}

/// `ALLOW` or `DENY`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum PolicyAction {
    /// A matching request is allowed (and, once a pod has an ALLOW policy,
    /// only matching requests are).
    Allow,
    /// A matching request is refused.
    Deny,
}

/// Matches when one source and one operation match (an empty list matches
/// anything).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct PolicyRule {
    /// Callers.
    #[serde(default)]
    pub from: Vec<PolicySource>,
    /// What they call.
    #[serde(default)]
    pub to: Vec<PolicyOperation>,
}

/// A caller, as mTLS authenticated it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct PolicySource {
    /// SPIFFE IDs (exact, `*`, `prefix*`, `*suffix`).
    #[serde(default)]
    pub principals: Vec<String>,
    /// Namespaces.
    #[serde(default)]
    pub namespaces: Vec<String>,
}

/// What is called.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct PolicyOperation {
    /// Destination ports (the original destination's).
    #[serde(default)]
    pub ports: Vec<u16>,
    /// HTTP methods.
    #[serde(default)]
    pub methods: Vec<String>,
    /// HTTP paths.
    #[serde(default)]
    pub paths: Vec<String>,
}
