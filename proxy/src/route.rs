//! Routes compiled for one service port: which rule a request takes, with
//! Gateway API's semantics for a Service parent (GAMMA).
//!
//! - A route attaches to a service (and to one of its ports, or to all).
//! - A route in the service's namespace is a *producer* route and applies
//!   to every client; a route in another namespace is a *consumer* route
//!   and applies only to clients in its own namespace, for whom it replaces
//!   the producer routes.
//! - Among the matches of every rule of every route that applies, the most
//!   specific wins: an exact path, then the longest path prefix, then a
//!   method, then the most header matches, then the most query parameter
//!   matches; ties go to the route that sorts
//!   first by namespace/name (the model carries no creation time yet), then
//!   to the earlier rule and match.

use std::cmp::Reverse;
use std::collections::HashMap;
use std::net::Ipv4Addr;
use std::sync::Arc;

use http::request::Parts;

use crate::config::{
    Filter, HeaderMatch, PathMatch, ProxyConfig, Retry, Route, RouteKind, RouteMatch,
    RouteTimeouts, Service, ServicePort, ValueMatch,
};

/// A route's rules as they apply to one service port.
#[derive(Debug)]
pub struct HttpPort {
    /// The service, `namespace/name`.
    pub service: String,
    /// The service port.
    pub port: u16,
    /// Routes of the service's own namespace, most specific match first.
    producer: Vec<Candidate>,
    /// Routes of other namespaces, for clients of those namespaces.
    consumers: HashMap<String, Vec<Candidate>>,
}

/// One match of one rule.
#[derive(Debug)]
struct Candidate {
    rank: Rank,
    matcher: Matcher,
    rule: Arc<Rule>,
}

/// What a matched rule does.
#[derive(Debug)]
pub struct Rule {
    /// `Kind/namespace/name` of its route (empty: the service itself, no
    /// route applied).
    pub route: String,
    /// Its index in the route.
    pub index: usize,
    /// Whether it came from a GRPCRoute (failures are gRPC statuses).
    pub grpc: bool,
    /// Applied in order to every request it takes.
    pub filters: Vec<Filter>,
    /// Its deadlines.
    pub timeouts: RouteTimeouts,
    /// Its retries.
    pub retry: Option<Retry>,
    /// Where requests go, by weight.
    pub backends: Vec<WeightedBackend>,
    /// Where copies of its requests go.
    pub mirrors: Vec<MirrorTarget>,
}

/// Where copies of requests go (a `RequestMirror` filter, resolved).
#[derive(Debug)]
pub struct MirrorTarget {
    /// The service port, or `None` when it names nothing that exists yet:
    /// then no copies are made.
    pub target: Option<Arc<Backend>>,
    /// The share copied: `numerator / denominator`.
    pub numerator: u32,
    /// See `numerator`; never 0.
    pub denominator: u32,
}

impl MirrorTarget {
    /// Whether this request is copied (drawn at random, by the share).
    pub fn draw(&self) -> bool {
        self.numerator >= self.denominator || fastrand::u32(..self.denominator) < self.numerator
    }
}

/// The rule a request takes, and the path prefix it matched (for a
/// `ReplacePrefixMatch` filter).
#[derive(Debug, Clone, Copy)]
pub struct Picked<'a> {
    /// The rule.
    pub rule: &'a Arc<Rule>,
    /// The matched prefix (`""` for `/`), when the match was a prefix.
    pub prefix: Option<&'a str>,
}

/// A backend and its share.
#[derive(Debug)]
pub struct WeightedBackend {
    /// Relative weight (0: never).
    pub weight: u32,
    /// Applied to requests sent to it, after the rule's.
    pub filters: Vec<Filter>,
    /// The service port it names, or `None` when it names nothing that
    /// exists: its share of requests is answered 500.
    pub target: Option<Arc<Backend>>,
    /// Where copies of the requests sent to it go.
    pub mirrors: Vec<MirrorTarget>,
}

/// A backend service port, resolved.
#[derive(Debug)]
pub struct Backend {
    /// `namespace/name`.
    pub service: String,
    /// The service port named.
    pub port: u16,
    /// The port on its pods.
    pub target_port: u16,
    /// Its endpoints' addresses.
    pub endpoints: Vec<Ipv4Addr>,
}

/// Specificity, compared greatest first.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct Rank {
    exact: bool,
    prefix_len: usize,
    method: bool,
    headers: usize,
    query: usize,
    /// Ties: the older route (its creation time), then the route's key,
    /// then rule and match order (smaller first).
    order: Reverse<(i64, String, usize, usize)>,
}

#[derive(Debug)]
struct Matcher {
    path: PathMatcher,
    method: Option<String>,
    headers: Vec<(http::HeaderName, ValueMatcher)>,
    query: Vec<(String, ValueMatcher)>,
}

#[derive(Debug)]
enum ValueMatcher {
    Exact(String),
    Regex(regex::Regex),
}

impl ValueMatcher {
    fn new(m: &HeaderMatch) -> Result<ValueMatcher, String> {
        match m.kind {
            ValueMatch::Exact => Ok(ValueMatcher::Exact(m.value.clone())),
            ValueMatch::RegularExpression => regex::Regex::new(&format!("^(?:{})$", m.value))
                .map(ValueMatcher::Regex)
                .map_err(|e| format!("`{}` regex `{}`: {e}", m.name, m.value)),
        }
    }

    fn matches(&self, value: &[u8]) -> bool {
        match self {
            ValueMatcher::Exact(v) => value == v.as_bytes(),
            ValueMatcher::Regex(r) => std::str::from_utf8(value).is_ok_and(|v| r.is_match(v)),
        }
    }
}

#[derive(Debug)]
enum PathMatcher {
    Exact(String),
    /// By segments; stored without a trailing `/`.
    Prefix(String),
    Regex(regex::Regex),
}

/// Why a route could not be compiled (the control plane validates routes;
/// a proxy that gets one it cannot use leaves that match out and says so).
#[derive(Debug, thiserror::Error)]
#[error("route {route}, rule {rule}: {problem}")]
pub struct RouteError {
    route: String,
    rule: usize,
    problem: String,
}

impl Matcher {
    fn new(m: &RouteMatch) -> Result<Matcher, String> {
        let path = match &m.path {
            None => PathMatcher::Prefix(String::new()),
            Some(PathMatch::Exact(p)) => PathMatcher::Exact(p.clone()),
            Some(PathMatch::PathPrefix(p)) => {
                PathMatcher::Prefix(p.trim_end_matches('/').to_owned())
            }
            Some(PathMatch::RegularExpression(r)) => PathMatcher::Regex(
                regex::Regex::new(&format!("^(?:{r})$"))
                    .map_err(|e| format!("path regex `{r}`: {e}"))?,
            ),
        };
        let headers = m
            .headers
            .iter()
            .map(|h| {
                let name = http::HeaderName::from_bytes(h.name.as_bytes())
                    .map_err(|e| format!("header name `{}`: {e}", h.name))?;
                Ok((name, ValueMatcher::new(h)?))
            })
            .collect::<Result<_, String>>()?;
        let query = m
            .query
            .iter()
            .map(|q| Ok((q.name.clone(), ValueMatcher::new(q)?)))
            .collect::<Result<_, String>>()?;
        Ok(Matcher {
            path,
            method: m.method.clone(),
            headers,
            query,
        })
    }

    fn matches(&self, req: &Parts) -> bool {
        let path = req.uri.path();
        let path_ok = match &self.path {
            PathMatcher::Exact(p) => path == p,
            PathMatcher::Prefix(p) => {
                path.starts_with(p.as_str())
                    && (path.len() == p.len() || path.as_bytes().get(p.len()) == Some(&b'/'))
            }
            PathMatcher::Regex(r) => r.is_match(path),
        };
        path_ok
            && self
                .method
                .as_deref()
                .is_none_or(|m| req.method.as_str() == m)
            && self.headers.iter().all(|(name, value)| {
                req.headers
                    .get(name)
                    .is_some_and(|v| value.matches(v.as_bytes()))
            })
            && self.query.iter().all(|(name, value)| {
                // The first value of a repeated parameter is the one matched.
                req.uri
                    .query()
                    .unwrap_or_default()
                    .split('&')
                    .filter_map(|pair| pair.split_once('=').or(Some((pair, ""))))
                    .find(|(n, _)| n == name)
                    .is_some_and(|(_, v)| value.matches(v.as_bytes()))
            })
    }

    fn rank(&self, order: (i64, String, usize, usize)) -> Rank {
        let (exact, prefix_len) = match &self.path {
            PathMatcher::Exact(p) => (true, p.len()),
            // `/` is the default match; a prefix `/x` is longer than it.
            PathMatcher::Prefix(p) => (false, p.len() + 1),
            PathMatcher::Regex(_) => (false, 0),
        };
        Rank {
            exact,
            prefix_len,
            method: self.method.is_some(),
            headers: self.headers.len(),
            query: self.query.len(),
            order: Reverse(order),
        }
    }
}

impl HttpPort {
    /// Compiles the routes of `config` that attach to `service`'s `port`.
    /// `None` when the port is not handled at L7: no route attaches and
    /// its `appProtocol` does not say HTTP. Clients that no route applies
    /// to (no producer route; no consumer route of their namespace) go to
    /// the service itself, as without routes. Matches that cannot be
    /// compiled are left out and reported.
    pub fn compile(
        config: &ProxyConfig,
        services: &HashMap<String, &Service>,
        service: &Service,
        port: &ServicePort,
        problems: &mut Vec<RouteError>,
    ) -> Option<HttpPort> {
        let key = service.key();
        let mut producer = Vec::new();
        let mut producer_attached = false;
        let mut consumers: HashMap<String, Vec<Candidate>> = HashMap::new();
        for route in &config.routes {
            let applies = route
                .parents
                .iter()
                .any(|p| p.service == key && p.port.is_none_or(|pp| pp == port.port));
            if !applies {
                continue;
            }
            let candidates = candidates(route, services, problems);
            if route.namespace == service.namespace {
                producer_attached = true;
                producer.extend(candidates);
            } else {
                consumers
                    .entry(route.namespace.clone())
                    .or_default()
                    .extend(candidates);
            }
        }
        if !producer_attached && consumers.is_empty() && !port.speaks_http() {
            return None;
        }
        if !producer_attached {
            producer.push(itself(service, port));
        }
        producer.sort_by(|a, b| b.rank.cmp(&a.rank));
        for c in consumers.values_mut() {
            c.sort_by(|a, b| b.rank.cmp(&a.rank));
        }
        Some(HttpPort {
            service: key,
            port: port.port,
            producer,
            consumers,
        })
    }

    /// A port without routes: every request goes to the service itself.
    pub fn plain(service: &Service, port: &ServicePort) -> HttpPort {
        HttpPort {
            service: service.key(),
            port: port.port,
            producer: vec![itself(service, port)],
            consumers: HashMap::new(),
        }
    }

    /// The keys of the routes in use: the producer routes (empty when the
    /// service itself takes every request), and the consumer routes by
    /// client namespace.
    pub fn routes(&self) -> (Vec<String>, std::collections::BTreeMap<String, Vec<String>>) {
        let keys = |cs: &[Candidate]| {
            let mut keys: Vec<String> = cs
                .iter()
                .map(|c| c.rule.route.clone())
                .filter(|k| !k.is_empty())
                .collect();
            keys.sort();
            keys.dedup();
            keys
        };
        (
            keys(&self.producer),
            self.consumers
                .iter()
                .map(|(ns, cs)| (ns.clone(), keys(cs)))
                .collect(),
        )
    }

    /// The rule a request from a client in `client_namespace` takes, if
    /// any matches.
    pub fn pick(&self, client_namespace: Option<&str>, req: &Parts) -> Option<Picked<'_>> {
        let candidates = client_namespace
            .and_then(|ns| self.consumers.get(ns))
            .unwrap_or(&self.producer);
        candidates
            .iter()
            .find(|c| c.matcher.matches(req))
            .map(|c| Picked {
                rule: &c.rule,
                prefix: match &c.matcher.path {
                    PathMatcher::Prefix(p) => Some(p.as_str()),
                    _ => None,
                },
            })
    }
}

/// The service port itself, for every request: where clients go when no
/// route applies to them.
fn itself(service: &Service, port: &ServicePort) -> Candidate {
    let matcher = Matcher {
        path: PathMatcher::Prefix(String::new()),
        method: None,
        headers: Vec::new(),
        query: Vec::new(),
    };
    Candidate {
        rank: matcher.rank((0, String::new(), 0, 0)),
        matcher,
        rule: Arc::new(Rule {
            route: String::new(),
            index: 0,
            grpc: false,
            filters: Vec::new(),
            timeouts: RouteTimeouts::default(),
            retry: None,
            mirrors: Vec::new(),
            backends: vec![WeightedBackend {
                weight: 1,
                filters: Vec::new(),
                target: Some(Arc::new(Backend {
                    service: service.key(),
                    port: port.port,
                    target_port: port.target_port,
                    endpoints: service.endpoints.clone(),
                })),
                mirrors: Vec::new(),
            }],
        }),
    }
}

/// Every match of every rule of `route`, ranked.
fn candidates(
    route: &Route,
    services: &HashMap<String, &Service>,
    problems: &mut Vec<RouteError>,
) -> Vec<Candidate> {
    let key = route.key();
    let mut out = Vec::new();
    let resolve = |service: &str, port: u16| {
        let s = services.get(service)?;
        let p = s.ports.iter().find(|p| p.port == port)?;
        Some(Arc::new(Backend {
            service: service.to_owned(),
            port,
            target_port: p.target_port,
            endpoints: s.endpoints.clone(),
        }))
    };
    let mirrors = |filters: &[Filter]| {
        filters
            .iter()
            .filter_map(|f| match f {
                Filter::RequestMirror(m) => Some(MirrorTarget {
                    target: resolve(&m.service, m.port),
                    numerator: m.numerator,
                    denominator: m.denominator.max(1),
                }),
                _ => None,
            })
            .collect::<Vec<_>>()
    };
    for (i, r) in route.rules.iter().enumerate() {
        let rule = Arc::new(Rule {
            route: key.clone(),
            index: i,
            grpc: route.kind == RouteKind::Grpc,
            filters: r.filters.clone(),
            timeouts: r.timeouts,
            retry: r.retry.clone(),
            mirrors: mirrors(&r.filters),
            backends: r
                .backends
                .iter()
                .map(|b| WeightedBackend {
                    weight: b.weight,
                    filters: b.filters.clone(),
                    target: resolve(&b.service, b.port),
                    mirrors: mirrors(&b.filters),
                })
                .collect(),
        });
        let default = [RouteMatch::default()];
        let matches = if r.matches.is_empty() {
            &default[..]
        } else {
            &r.matches[..]
        };
        for (j, m) in matches.iter().enumerate() {
            match Matcher::new(m) {
                Ok(matcher) => out.push(Candidate {
                    rank: matcher.rank((route.created, key.clone(), i, j)),
                    matcher,
                    rule: rule.clone(),
                }),
                Err(problem) => problems.push(RouteError {
                    route: key.clone(),
                    rule: i,
                    problem,
                }),
            }
        }
    }
    out
}

#[cfg(test)]
mod tests;
