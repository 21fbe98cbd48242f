//! weft's own custom resources, defined as Rust types. Their CRD YAML is
//! generated from these types into `charts/weft/crds/` (`cargo xtask crds`),
//! and a test fails when the committed YAML differs from the generated.

use std::collections::BTreeMap;

use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Which requests a workload accepts (`weft.io/v1alpha1`, namespaced).
///
/// As in Istio: a workload selected by an ALLOW policy denies what no ALLOW
/// rule matches; a matching DENY rule wins over any ALLOW.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[kube(
    group = "weft.io",
    version = "v1alpha1",
    kind = "AuthorizationPolicy",
    namespaced,
    shortname = "wap",
    derive = "PartialEq"
)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct AuthorizationPolicySpec {
    /// The pods of this namespace it applies to; every pod when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub selector: Option<WorkloadSelector>,
    /// `ALLOW` or `DENY`.
    pub action: Action,
    /// A request matches the policy when it matches any rule.
    #[serde(default)]
    pub rules: Vec<Rule>,
}

/// Pods by label.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct WorkloadSelector {
    /// Labels a pod must all have.
    pub match_labels: BTreeMap<String, String>,
}

/// What a matching rule does.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "UPPERCASE")]
pub enum Action {
    /// Let it through.
    Allow,
    /// Refuse it.
    Deny,
}

/// A rule matches when one of its sources and one of its operations match
/// (an empty list matches anything).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Rule {
    /// Who may (or may not) call.
    #[serde(default)]
    pub from: Vec<Source>,
    /// What they call.
    #[serde(default)]
    pub to: Vec<Operation>,
}

/// The caller, as authenticated by mTLS.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Source {
    /// SPIFFE IDs, e.g. `spiffe://cluster.local/ns/shop/sa/web`.
    #[serde(default)]
    pub principals: Vec<String>,
    /// Namespaces of the callers.
    #[serde(default)]
    pub namespaces: Vec<String>,
}

/// What is called.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Operation {
    /// Destination ports (the original destination port).
    #[serde(default)]
    pub ports: Vec<u16>,
    /// HTTP methods.
    #[serde(default)]
    pub methods: Vec<String>,
    /// HTTP paths (exact, or a prefix ending in `*`).
    #[serde(default)]
    pub paths: Vec<String>,
}

/// Every CRD weft defines, as YAML files: (file name, content).
pub fn generated() -> Result<Vec<(&'static str, String)>, serde_yaml::Error> {
    use kube::CustomResourceExt;
    let header = "# Generated from control/src/crd.rs by `cargo xtask crds`. Do not edit.\n";
    Ok(vec![(
        "authorizationpolicies.weft.io.yaml",
        format!(
            "{header}{}",
            serde_yaml::to_string(&AuthorizationPolicy::crd())?
        ),
    )])
}
