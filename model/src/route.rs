//! Routes: Gateway API HTTPRoute and GRPCRoute attached to services (GAMMA).

use serde::{Deserialize, Serialize};

/// Which Gateway API kind a route came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum RouteKind {
    /// HTTPRoute.
    #[serde(rename = "HTTPRoute")]
    Http,
    /// GRPCRoute (its method matches are path matches).
    #[serde(rename = "GRPCRoute")]
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

    /// The kind named `kind`, if it is one.
    pub fn parse(kind: &str) -> Option<RouteKind> {
        match kind {
            "HTTPRoute" => Some(RouteKind::Http),
            "GRPCRoute" => Some(RouteKind::Grpc),
            _ => None,
        }
    }
}

/// A route attached to services.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Route {
    /// HTTPRoute or GRPCRoute.
    pub kind: RouteKind,
    /// Namespace.
    pub namespace: String,
    /// Route name.
    pub name: String,
    /// The services it attaches to.
    pub parents: Vec<ParentRef>,
    /// Its rules, in order.
    pub rules: Vec<RouteRule>,
}

impl Route {
    /// `Kind/namespace/name` (an HTTPRoute and a GRPCRoute may share a name).
    pub fn key(&self) -> String {
        format!("{}/{}/{}", self.kind.as_str(), self.namespace, self.name)
    }
}

/// A service a route attaches to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ParentRef {
    /// `namespace/name`.
    pub service: String,
    /// A port of it; every port when absent.
    #[serde(default)]
    pub port: Option<u16>,
}

/// One rule: matches (any of them) and backends.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RouteRule {
    /// The rule matches when any of these does; none means every request.
    #[serde(default)]
    pub matches: Vec<RouteMatch>,
    /// Where matching requests go.
    #[serde(default)]
    pub backends: Vec<Backend>,
}

/// One match of a rule; every given part must match.
#[derive(Debug, Clone, Default, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RouteMatch {
    /// The path, if matched.
    #[serde(default)]
    pub path: Option<PathMatch>,
    /// The method, if matched.
    #[serde(default)]
    pub method: Option<String>,
    /// Headers that must be equal.
    #[serde(default)]
    pub headers: Vec<HeaderMatch>,
}

/// How a route matches a request path.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(tag = "type", content = "value")]
pub enum PathMatch {
    /// The whole path.
    Exact(String),
    /// A path prefix, by segments.
    PathPrefix(String),
    /// A regular expression (validated when applied).
    RegularExpression(String),
}

/// A header that must be equal.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct HeaderMatch {
    /// Name (lowercase).
    pub name: String,
    /// Value.
    pub value: String,
}

/// Where a rule sends requests.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Backend {
    /// The service, `namespace/name`.
    pub service: String,
    /// Its port.
    pub port: u16,
    /// Relative weight.
    pub weight: u32,
}
