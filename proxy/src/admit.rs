//! The destination's checks, before anything reaches a meshed pod on this
//! node: the target is a meshed pod here (of the identity the caller was
//! promised), and its authorization policies admit the caller. Every way
//! into a local pod asks them: `inbound::deliver` (plaintext, HBONE
//! streams, same-node connections) and the L7 upstream connections to
//! same-node endpoints.

use std::net::{Ipv4Addr, SocketAddrV4};

use crate::identity::{Account, SpiffeId};
use crate::metrics::{Direction, Failure};
use crate::policy;
use crate::state::Shared;

/// Who is delivered where.
#[derive(Debug)]
pub struct Delivery<'a> {
    /// The pod and port.
    pub target: SocketAddrV4,
    /// The caller's identity as mTLS or this node's certificates vouch for
    /// it; `None`: a plaintext caller, whom only rules without principals
    /// or namespaces can admit.
    pub principal: Option<&'a SpiffeId>,
    /// The identity the target must run as (an HBONE connection
    /// authenticated the destination as that identity).
    pub runs_as: Option<&'a Account>,
    /// The pod is reached from this address (the caller's own), or from
    /// the node's when `None`.
    pub from: Option<Ipv4Addr>,
    /// The caller's proxy routed HTTP and says the stream carries it: the
    /// destination reads it per request when it traces.
    pub http: bool,
}

/// A delivery the destination's checks let through.
#[derive(Debug)]
pub struct Admitted {
    /// The destination pod, `namespace/name`.
    pub destination: String,
    /// The connect and idle timeouts, and the proxy's socket mark.
    pub timeouts: crate::config::Timeouts,
    /// `SO_MARK` of the proxy's sockets.
    pub mark: u32,
    /// The connection is served per request ([`l7::serve`]): the pod's
    /// policies look at HTTP, or it carries HTTP and this proxy traces.
    pub per_request: bool,
    /// The pod's policies look at HTTP: no decision was made here; each
    /// request is decided on its own.
    pub decide_requests: bool,
}

/// Why the destination's checks refused a delivery.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// The target is not a meshed pod on this node (of the identity
    /// expected).
    NotLocal,
    /// An authorization policy refused it (the deciding policy).
    Denied(String),
}

impl Refusal {
    /// The failure it counts as.
    pub fn failure(&self) -> Failure {
        match self {
            Refusal::NotLocal => Failure::NotLocal,
            Refusal::Denied(_) => Failure::Denied,
        }
    }
}

/// The destination's checks for `d`, with the current config: the target
/// is a meshed pod here (of the identity expected), and its authorization
/// policies admit the caller. Every way into a local pod asks this (L7
/// upstream connections too).
pub fn admit(shared: &Shared, direction: Direction, d: &Delivery<'_>) -> Result<Admitted, Refusal> {
    let snapshot = shared.snapshot();
    let config = snapshot.config();
    let local = snapshot.workload(*d.target.ip()).filter(|w| {
        w.node == config.node
            && w.meshed
            && d.runs_as
                .is_none_or(|(ns, sa)| (&w.namespace, &w.service_account) == (ns, sa))
    });
    let Some(dest) = local else {
        return Err(Refusal::NotLocal);
    };
    if policy::needs_http(&config.policies, *d.target.ip()) {
        return Ok(Admitted {
            destination: dest.key(),
            timeouts: config.timeouts.clone(),
            mark: config.capture.proxy_socket_mark,
            per_request: true,
            decide_requests: true,
        });
    }
    let decision = policy::authorize(
        &config.policies,
        &policy::Request {
            source: d.principal,
            destination: *d.target.ip(),
            port: d.target.port(),
            http: None,
        },
    );
    shared
        .metrics
        .authorized(direction, decision.allowed(), decision.policy());
    if !decision.allowed() {
        return Err(Refusal::Denied(decision.policy().to_owned()));
    }
    Ok(Admitted {
        destination: dest.key(),
        timeouts: config.timeouts.clone(),
        mark: config.capture.proxy_socket_mark,
        per_request: d.http && shared.tracer.is_on(),
        decide_requests: false,
    })
}

/// Decides one HTTP request to the meshed pod at `target` with its
/// policies (HTTP fields included), as `principal`; counted. `Err` names
/// the policy (or what) refused it.
pub fn admit_request(
    shared: &Shared,
    direction: Direction,
    principal: Option<&SpiffeId>,
    target: SocketAddrV4,
    method: &str,
    path: &str,
) -> Result<(), String> {
    let decision = policy::authorize(
        &shared.snapshot().config().policies,
        &policy::Request {
            source: principal,
            destination: *target.ip(),
            port: target.port(),
            http: Some(policy::Http { method, path }),
        },
    );
    shared
        .metrics
        .authorized(direction, decision.allowed(), decision.policy());
    if decision.allowed() {
        Ok(())
    } else {
        Err(decision.policy().to_owned())
    }
}
