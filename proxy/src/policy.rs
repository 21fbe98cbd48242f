//! Authorization on the destination side, with Istio's semantics:
//!
//! 1. a DENY policy of the destination pod with a matching rule refuses;
//! 2. a pod that no ALLOW policy selects accepts the rest;
//! 3. a pod that an ALLOW policy selects accepts only what an ALLOW rule
//!    matches.
//!
//! The source is who mTLS authenticated: a plaintext caller has no
//! principal and no namespace, so rules that name one never match it.
//!
//! A pod selected by a policy with HTTP fields (methods, paths) has its
//! inbound HTTP parsed ([`needs_http`]) and every request decided with
//! them ([`Request::http`]). Where HTTP cannot be seen (a connection
//! decided at L4), they fail closed: an ALLOW rule with any of them
//! matches nothing, and in a DENY rule an operation with them matches on
//! its ports alone.

use std::net::Ipv4Addr;

use crate::config::{Policy, PolicyAction, PolicyOperation, PolicyRule, PolicySource};
use crate::identity::SpiffeId;

/// What a connection is, as policy sees it.
#[derive(Debug, Clone, Copy)]
pub struct Request<'a> {
    /// The authenticated caller, if any.
    pub source: Option<&'a SpiffeId>,
    /// The destination pod.
    pub destination: Ipv4Addr,
    /// The port it was called on (the original destination port).
    pub port: u16,
    /// The HTTP request, when it is decided per request.
    pub http: Option<Http<'a>>,
}

/// What policy sees of an HTTP request.
#[derive(Debug, Clone, Copy)]
pub struct Http<'a> {
    /// The method.
    pub method: &'a str,
    /// The path, without the query.
    pub path: &'a str,
}

/// Whether a policy selecting `destination` has HTTP fields: then its
/// inbound HTTP is parsed and each request decided on its own.
pub fn needs_http(policies: &[Policy], destination: Ipv4Addr) -> bool {
    policies
        .iter()
        .filter(|p| p.workloads.contains(&destination))
        .flat_map(|p| &p.rules)
        .flat_map(|r| &r.to)
        .any(|o| !o.methods.is_empty() || !o.paths.is_empty())
}

/// The outcome, with the policy that decided it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Accepted: by an ALLOW policy (its `namespace/name`), or because the
    /// pod has no ALLOW policy (`None`).
    Allow(Option<String>),
    /// Refused by a matching DENY policy.
    Denied(String),
    /// Refused because the pod has ALLOW policies and none matched.
    NotAllowed,
}

impl Decision {
    /// Whether the connection may go on.
    pub fn allowed(&self) -> bool {
        matches!(self, Decision::Allow(_))
    }

    /// The `policy` label: the deciding policy, or what decided.
    pub fn policy(&self) -> &str {
        match self {
            Decision::Allow(Some(p)) | Decision::Denied(p) => p,
            Decision::Allow(None) => "none",
            Decision::NotAllowed => "no-allow-match",
        }
    }
}

/// Decides `request` against the policies of this node.
pub fn authorize(policies: &[Policy], request: &Request<'_>) -> Decision {
    let selecting = || {
        policies
            .iter()
            .filter(|p| p.workloads.contains(&request.destination))
    };
    if let Some(deny) = selecting()
        .filter(|p| p.action == PolicyAction::Deny)
        .find(|p| {
            p.rules
                .iter()
                .any(|r| rule_matches(r, request, PolicyAction::Deny))
        })
    {
        return Decision::Denied(deny.key());
    }
    let mut allows = selecting()
        .filter(|p| p.action == PolicyAction::Allow)
        .peekable();
    if allows.peek().is_none() {
        return Decision::Allow(None);
    }
    match allows.find(|p| {
        p.rules
            .iter()
            .any(|r| rule_matches(r, request, PolicyAction::Allow))
    }) {
        Some(p) => Decision::Allow(Some(p.key())),
        None => Decision::NotAllowed,
    }
}

fn rule_matches(rule: &PolicyRule, request: &Request<'_>, action: PolicyAction) -> bool {
    // As Istio's L4 enforcement does: an ALLOW rule with any HTTP field
    // cannot be decided at L4, so the whole rule matches nothing.
    if action == PolicyAction::Allow
        && request.http.is_none()
        && rule
            .to
            .iter()
            .any(|o| !o.methods.is_empty() || !o.paths.is_empty())
    {
        return false;
    }
    (rule.from.is_empty() || rule.from.iter().any(|s| source_matches(s, request.source)))
        && (rule.to.is_empty() || rule.to.iter().any(|o| operation_matches(o, request)))
}

fn source_matches(source: &PolicySource, caller: Option<&SpiffeId>) -> bool {
    let principals = source.principals.is_empty()
        || caller.is_some_and(|c| {
            let full = c.to_string();
            source.principals.iter().any(|p| {
                // Istio writes principals without the scheme; take both.
                pattern(p, &full) || pattern(p, full.trim_start_matches("spiffe://"))
            })
        });
    let namespaces = source.namespaces.is_empty()
        || caller.is_some_and(|c| source.namespaces.iter().any(|n| pattern(n, &c.namespace)));
    principals && namespaces
}

/// Ports, then (for an HTTP request) methods and paths; at L4 only the
/// ports count (ALLOW rules with HTTP fields never get here).
fn operation_matches(op: &PolicyOperation, request: &Request<'_>) -> bool {
    let port = op.ports.is_empty() || op.ports.contains(&request.port);
    match request.http {
        None => port,
        Some(http) => {
            port && (op.methods.is_empty() || op.methods.iter().any(|m| pattern(m, http.method)))
                && (op.paths.is_empty() || op.paths.iter().any(|p| pattern(p, http.path)))
        }
    }
}

/// Istio's string match: exact, `*` (anything), `prefix*` or `*suffix`.
fn pattern(pattern: &str, value: &str) -> bool {
    if pattern == "*" {
        return true;
    }
    if let Some(prefix) = pattern.strip_suffix('*') {
        return value.starts_with(prefix);
    }
    if let Some(suffix) = pattern.strip_prefix('*') {
        return value.ends_with(suffix);
    }
    pattern == value
}

#[cfg(test)]
mod tests {
    use super::*;

    const POD: Ipv4Addr = Ipv4Addr::new(10, 1, 0, 5);
    const OTHER_POD: Ipv4Addr = Ipv4Addr::new(10, 1, 0, 6);

    fn id(ns: &str, sa: &str) -> SpiffeId {
        SpiffeId {
            trust_domain: "cluster.local".into(),
            namespace: ns.into(),
            service_account: sa.into(),
        }
    }

    fn policy(name: &str, action: PolicyAction, rules: Vec<PolicyRule>) -> Policy {
        Policy {
            namespace: "shop".into(),
            name: name.into(),
            selector: Default::default(),
            action,
            rules,
            workloads: vec![POD],
        }
    }

    fn from_principal(p: &str) -> PolicyRule {
        PolicyRule {
            from: vec![PolicySource {
                principals: vec![p.into()],
                namespaces: vec![],
            }],
            to: vec![],
        }
    }

    fn to_port(port: u16) -> PolicyRule {
        PolicyRule {
            from: vec![],
            to: vec![PolicyOperation {
                ports: vec![port],
                ..Default::default()
            }],
        }
    }

    fn ask(policies: &[Policy], source: Option<&SpiffeId>, port: u16) -> Decision {
        authorize(
            policies,
            &Request {
                source,
                destination: POD,
                port,
                http: None,
            },
        )
    }

    fn ask_http(policies: &[Policy], method: &str, path: &str) -> Decision {
        authorize(
            policies,
            &Request {
                source: None,
                destination: POD,
                port: 80,
                http: Some(Http { method, path }),
            },
        )
    }

    fn http_rule(methods: &[&str], paths: &[&str]) -> PolicyRule {
        PolicyRule {
            from: vec![],
            to: vec![PolicyOperation {
                ports: vec![],
                methods: methods.iter().map(|m| (*m).to_owned()).collect(),
                paths: paths.iter().map(|p| (*p).to_owned()).collect(),
            }],
        }
    }

    #[test]
    fn per_request_an_allow_on_methods_and_paths_admits_only_those_and_a_deny_on_a_path_wins() {
        let allow = policy(
            "allow",
            PolicyAction::Allow,
            vec![http_rule(&["GET"], &["/public", "/static/*"])],
        );
        let policies = [allow.clone()];
        assert!(needs_http(&policies, POD));
        assert!(!needs_http(&policies, OTHER_POD));
        assert!(ask_http(&policies, "GET", "/public").allowed());
        assert!(ask_http(&policies, "GET", "/static/app.js").allowed());
        assert!(!ask_http(&policies, "POST", "/public").allowed());
        assert!(!ask_http(&policies, "GET", "/admin").allowed());
        // Decided at L4, the same policy admits nothing (fail closed).
        assert!(!ask(&policies, None, 80).allowed());
        let deny = policy(
            "deny",
            PolicyAction::Deny,
            vec![http_rule(&[], &["/public"])],
        );
        let both = [allow, deny];
        assert_eq!(
            ask_http(&both, "GET", "/public"),
            Decision::Denied("shop/deny".into())
        );
        assert!(ask_http(&both, "GET", "/static/x").allowed());
    }

    #[test]
    fn a_pod_without_policies_accepts_everyone_even_plaintext() {
        assert_eq!(ask(&[], None, 80), Decision::Allow(None));
        assert_eq!(ask(&[], Some(&id("a", "b")), 80), Decision::Allow(None));
    }

    #[test]
    fn an_allow_policy_admits_only_what_its_rules_match() {
        let p = [policy(
            "web-only",
            PolicyAction::Allow,
            vec![from_principal("spiffe://cluster.local/ns/shop/sa/web")],
        )];
        let web = id("shop", "web");
        assert_eq!(
            ask(&p, Some(&web), 80),
            Decision::Allow(Some("shop/web-only".into()))
        );
        assert_eq!(ask(&p, Some(&id("shop", "db")), 80), Decision::NotAllowed);
        assert_eq!(
            ask(&p, None, 80),
            Decision::NotAllowed,
            "plaintext has no principal"
        );
    }

    #[test]
    fn istio_style_principals_without_the_scheme_and_wildcards_match() {
        let web = id("shop", "web");
        for principal in [
            "cluster.local/ns/shop/sa/web",
            "*",
            "cluster.local/ns/shop/*",
            "*/sa/web",
        ] {
            let p = [policy(
                "p",
                PolicyAction::Allow,
                vec![from_principal(principal)],
            )];
            assert!(ask(&p, Some(&web), 80).allowed(), "{principal}");
        }
        let p = [policy("p", PolicyAction::Allow, vec![from_principal("*")])];
        assert!(
            !ask(&p, None, 80).allowed(),
            "`*` needs an authenticated caller"
        );
    }

    #[test]
    fn deny_wins_over_a_matching_allow() {
        let web = id("shop", "web");
        let p = [
            policy(
                "allow-all",
                PolicyAction::Allow,
                vec![PolicyRule::default()],
            ),
            policy(
                "deny-web",
                PolicyAction::Deny,
                vec![from_principal("cluster.local/ns/shop/sa/web")],
            ),
        ];
        assert_eq!(
            ask(&p, Some(&web), 80),
            Decision::Denied("shop/deny-web".into())
        );
        assert_eq!(
            ask(&p, Some(&id("shop", "db")), 80),
            Decision::Allow(Some("shop/allow-all".into()))
        );
    }

    #[test]
    fn namespaces_and_ports_must_both_match_within_a_rule() {
        let rule = PolicyRule {
            from: vec![PolicySource {
                principals: vec![],
                namespaces: vec!["shop".into()],
            }],
            to: vec![PolicyOperation {
                ports: vec![8080],
                ..Default::default()
            }],
        };
        let p = [policy("p", PolicyAction::Allow, vec![rule])];
        assert!(ask(&p, Some(&id("shop", "web")), 8080).allowed());
        assert!(!ask(&p, Some(&id("shop", "web")), 9090).allowed());
        assert!(!ask(&p, Some(&id("other", "web")), 8080).allowed());
    }

    #[test]
    fn http_fields_fail_closed_at_l4() {
        let l7 = PolicyRule {
            from: vec![],
            to: vec![PolicyOperation {
                ports: vec![80],
                methods: vec!["GET".into()],
                paths: vec![],
            }],
        };
        let allow = [policy("get-only", PolicyAction::Allow, vec![l7.clone()])];
        assert_eq!(ask(&allow, Some(&id("a", "b")), 80), Decision::NotAllowed);
        let deny = [policy("no-get", PolicyAction::Deny, vec![l7])];
        assert_eq!(
            ask(&deny, Some(&id("a", "b")), 80),
            Decision::Denied("shop/no-get".into())
        );
        assert!(
            ask(&deny, Some(&id("a", "b")), 81).allowed(),
            "ports still narrow it"
        );
    }

    #[test]
    fn an_allow_rule_with_any_http_field_matches_nothing_even_on_its_other_operations() {
        let rule = PolicyRule {
            from: vec![],
            to: vec![
                PolicyOperation {
                    ports: vec![80],
                    methods: vec!["GET".into()],
                    paths: vec![],
                },
                PolicyOperation {
                    ports: vec![9000],
                    ..Default::default()
                },
            ],
        };
        let p = [policy(
            "mixed",
            PolicyAction::Allow,
            vec![rule, to_port(7000)],
        )];
        assert_eq!(ask(&p, Some(&id("a", "b")), 9000), Decision::NotAllowed);
        assert!(
            ask(&p, Some(&id("a", "b")), 7000).allowed(),
            "other rules still count"
        );
    }

    #[test]
    fn an_allow_policy_without_rules_allows_nothing_and_a_deny_without_rules_denies_nothing() {
        let p = [policy("allow-nothing", PolicyAction::Allow, vec![])];
        assert_eq!(ask(&p, Some(&id("a", "b")), 80), Decision::NotAllowed);
        let p = [policy("deny-nothing", PolicyAction::Deny, vec![])];
        assert_eq!(ask(&p, Some(&id("a", "b")), 80), Decision::Allow(None));
    }

    #[test]
    fn policies_apply_only_to_the_pods_they_list() {
        let p = [policy(
            "deny-all",
            PolicyAction::Deny,
            vec![PolicyRule::default()],
        )];
        let other = authorize(
            &p,
            &Request {
                source: None,
                destination: OTHER_POD,
                port: 80,
                http: None,
            },
        );
        assert_eq!(other, Decision::Allow(None));
        assert_eq!(ask(&p, None, 80), Decision::Denied("shop/deny-all".into()));
        assert!(
            ask(
                &[to_port(1)].map(|r| policy("x", PolicyAction::Allow, vec![r])),
                None,
                1
            )
            .allowed()
        );
    }
}
