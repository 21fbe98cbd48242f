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

/// How the mesh's proxies trace and log (`weft.io/v1alpha1`, namespaced).
/// The mesh uses one: when several exist, the first by `namespace/name`.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[kube(
    group = "weft.io",
    version = "v1alpha1",
    kind = "Telemetry",
    plural = "telemetries",
    namespaced,
    shortname = "wtel",
    derive = "PartialEq"
)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct TelemetrySpec {
    /// Trace export (OpenTelemetry, OTLP); absent: the proxies follow the
    /// `OTEL_EXPORTER_OTLP_*` variables they were started with.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tracing: Option<TracingSpec>,
    /// Access logs (JSON lines on the proxies' standard output).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub access_logs: Option<AccessLogsSpec>,
}

/// Where spans go and how many are made.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct TracingSpec {
    /// The OTLP receiver: `http://host:4317` for gRPC, the base URL for
    /// HTTP (`/v1/traces` is added).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoint: Option<String>,
    /// `grpc` (default) or `http/protobuf`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub protocol: Option<String>,
    /// Percent of new traces sampled, 0 to 100 (default 1); a request
    /// with a `traceparent` follows its sampled flag.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sampling_percent: Option<f64>,
    /// Percent of L4 connections that get a span, 0 to 100 (default 0).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub connection_sampling_percent: Option<f64>,
    /// Headers sent with every export.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub headers: BTreeMap<String, String>,
}

/// Which access log lines the proxies write.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct AccessLogsSpec {
    /// One line per HTTP request.
    #[serde(default)]
    pub requests: bool,
    /// One line per TCP connection.
    #[serde(default)]
    pub connections: bool,
    /// At most this many lines a second per proxy (default 1000, at most
    /// 1000000); the rest are counted and dropped.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lines_per_second: Option<u32>,
}

/// Every CRD weft defines, as YAML files: (file name, content).
pub fn generated() -> Result<Vec<(&'static str, String)>, serde_yaml::Error> {
    use kube::CustomResourceExt;
    let header = "# Generated from control/src/crd.rs by `cargo xtask crds`. Do not edit.\n";
    Ok(vec![
        (
            "authorizationpolicies.weft.io.yaml",
            format!(
                "{header}{}",
                serde_yaml::to_string(&AuthorizationPolicy::crd())?
            ),
        ),
        (
            "telemetries.weft.io.yaml",
            format!("{header}{}", serde_yaml::to_string(&Telemetry::crd())?),
        ),
    ])
}
