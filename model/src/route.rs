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
    /// When it was created, in seconds since the epoch (0: unknown): of
    /// equally specific matches in different routes, the older route's
    /// wins, then the one first by namespace and name.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub created: i64,
}

fn is_zero(n: &i64) -> bool {
    *n == 0
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

/// One rule: matches (any of them), what is done to a matching request,
/// and where it goes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RouteRule {
    /// The rule matches when any of these does; none means every request.
    #[serde(default)]
    pub matches: Vec<RouteMatch>,
    /// Applied in order to every matching request.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub filters: Vec<Filter>,
    /// Where matching requests go.
    #[serde(default)]
    pub backends: Vec<Backend>,
    /// Deadlines (GEP-1742).
    #[serde(default, skip_serializing_if = "Timeouts::is_empty")]
    pub timeouts: Timeouts,
    /// Retries (GEP-1731); none when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry: Option<Retry>,
}

/// When and how often a request is tried again (GEP-1731), within the
/// proxy's retry budget.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Retry {
    /// Retries after the first attempt.
    pub attempts: u32,
    /// Response codes (500 to 599) that are retried; connect failures and
    /// resets always are.
    #[serde(default)]
    pub codes: Vec<u16>,
    /// The least time between attempts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backoff_ms: Option<u64>,
}

/// A rule's deadlines, in milliseconds; none means no deadline.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Timeouts {
    /// From the request's start to the response's headers, retries
    /// included: 504 when it passes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_ms: Option<u64>,
    /// For each attempt to a backend.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backend_request_ms: Option<u64>,
}

impl Timeouts {
    /// Whether no deadline is set.
    pub fn is_empty(&self) -> bool {
        self.request_ms.is_none() && self.backend_request_ms.is_none()
    }
}

/// What a rule (or a backend) does to a request on its way.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", deny_unknown_fields, rename_all = "camelCase")]
pub enum Filter {
    /// Sets, adds and removes request headers.
    RequestHeaderModifier(HeaderModifier),
    /// Sets, adds and removes response headers.
    ResponseHeaderModifier(HeaderModifier),
    /// Answers with a redirect instead of forwarding.
    RequestRedirect(Redirect),
    /// Rewrites the host and path before forwarding.
    #[serde(rename = "URLRewrite")]
    UrlRewrite(Rewrite),
    /// Sends a copy of (a share of) the requests to another backend; the
    /// copy's answer is dropped.
    RequestMirror(Mirror),
}

/// Where request copies go, and which share of requests is copied.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Mirror {
    /// The service, `namespace/name`.
    pub service: String,
    /// Its port.
    pub port: u16,
    /// The share copied is `numerator / denominator` (every request when
    /// they are equal).
    pub numerator: u32,
    /// See `numerator`; never 0.
    pub denominator: u32,
}

/// Header edits, applied as remove, then set, then add.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct HeaderModifier {
    /// Replaces every value of the header.
    #[serde(default)]
    pub set: Vec<HeaderValue>,
    /// Adds a value (after any there are).
    #[serde(default)]
    pub add: Vec<HeaderValue>,
    /// Header names to remove.
    #[serde(default)]
    pub remove: Vec<String>,
}

/// A header name and value.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct HeaderValue {
    /// Name.
    pub name: String,
    /// Value.
    pub value: String,
}

/// An HTTP redirect: the request's URL with the given parts replaced.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Redirect {
    /// `http` or `https`.
    #[serde(default)]
    pub scheme: Option<String>,
    /// The host.
    #[serde(default)]
    pub hostname: Option<String>,
    /// The path.
    #[serde(default)]
    pub path: Option<PathModifier>,
    /// The port.
    #[serde(default)]
    pub port: Option<u16>,
    /// 301, 302, 303, 307 or 308.
    pub status: u16,
}

/// A rewrite before forwarding.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Rewrite {
    /// The Host header (`:authority`).
    #[serde(default)]
    pub hostname: Option<String>,
    /// The path.
    #[serde(default)]
    pub path: Option<PathModifier>,
}

/// How a path is replaced.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", content = "value")]
pub enum PathModifier {
    /// The whole path.
    ReplaceFullPath(String),
    /// The part the rule's path prefix matched.
    ReplacePrefixMatch(String),
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
    /// Headers that must match.
    #[serde(default)]
    pub headers: Vec<HeaderMatch>,
    /// Query parameters that must match.
    #[serde(default, rename = "queryParams")]
    pub query: Vec<HeaderMatch>,
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

/// A header (or query parameter) that must match.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct HeaderMatch {
    /// Name (lowercase for a header; as written for a query parameter).
    pub name: String,
    /// The value, or the regular expression its whole value must match.
    pub value: String,
    /// How the value matches.
    #[serde(default, rename = "type")]
    pub kind: ValueMatch,
}

/// How a header or query parameter value matches.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub enum ValueMatch {
    /// Equal.
    #[default]
    Exact,
    /// The whole value matches the regular expression.
    RegularExpression,
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
    /// Applied to requests sent to this backend, after the rule's.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub filters: Vec<Filter>,
}
