//! Sets up eBPF capture for this node: re-open or load the pinned programs,
//! configure them, add the policy route, and enroll interfaces.
//!
//! Runs at start (blocking system calls, before serving) in the node's
//! network namespace. Interfaces are classified by what is behind them: the
//! interface that routes to a local meshed pod is that pod's (outbound
//! capture); every other interface is an entry into the node (inbound
//! capture for meshed pods).

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;

use weft_redirect::net::{interface_names, local_addresses, route_dev};
use weft_redirect::{
    AttachMode, Capture, CaptureConfig, CaptureError, FAIL_CLOSED, FAIL_OPEN, Origin,
    POD_FAST_PATH, POD_MESHED, Role,
};

use crate::config::{Attach, FailMode, ProxyConfig};

/// What setup did, for the log.
#[derive(Debug, Clone)]
pub struct Enrolled {
    /// Whether the programs were re-opened from pins or loaded (`None`:
    /// no eBPF, `attach: external`).
    pub origin: Option<Origin>,
    /// Interfaces and their roles.
    pub interfaces: BTreeMap<String, Role>,
    /// Interfaces unenrolled because they are gone.
    pub removed: Vec<String>,
    /// The node's own addresses (never captured).
    pub local_addresses: BTreeSet<Ipv4Addr>,
}

/// Sets up capture as `config` says (no eBPF with `attach: external`).
pub fn setup(config: &ProxyConfig) -> Result<(Option<Capture>, Enrolled), CaptureError> {
    if config.capture.attach == Attach::External {
        weft_redirect::install_policy_route(config.capture.mark, config.capture.route_table)?;
        return Ok((
            None,
            Enrolled {
                origin: None,
                interfaces: BTreeMap::new(),
                removed: Vec::new(),
                local_addresses: local_addresses()?,
            },
        ));
    }
    let mut capture = Capture::open_or_load(&config.capture.pin_dir)?;
    // The fast path's flow control reads two fields of struct sock.
    let offsets = weft_redirect::btf::sock_offsets()?;
    capture.configure(&CaptureConfig {
        outbound_port: config.listeners.outbound,
        inbound_port: config.listeners.inbound,
        tunnel_port: config.listeners.tunnel,
        fail_mode: match config.capture.fail_mode {
            FailMode::Closed => FAIL_CLOSED,
            FailMode::Open => FAIL_OPEN,
        },
        mark: config.capture.mark,
        proxy_socket_mark: config.capture.proxy_socket_mark,
        fast_path: u32::from(config.capture.fast_path),
        sk_rmem_alloc_offset: offsets.rmem_alloc,
        sk_rcvbuf_offset: offsets.rcvbuf,
        fast_path_window: config.capture.fast_path_window,
    })?;
    if let Some(cgroup) = &config.capture.cgroup {
        capture.attach_fast_path(cgroup)?;
    }
    weft_redirect::install_policy_route(config.capture.mark, config.capture.route_table)?;
    let local = local_addresses()?;
    capture.set_local(&local)?;

    let meshed: BTreeMap<Ipv4Addr, u32> = config
        .local_workloads()
        .filter(|w| w.meshed)
        .map(|w| {
            let fast = if w.fast_path { POD_FAST_PATH } else { 0 };
            (w.ip, POD_MESHED | fast)
        })
        .collect();
    capture.set_meshed(&meshed)?;

    let mut pod_ifaces = BTreeSet::new();
    for ip in meshed.keys() {
        pod_ifaces.insert(route_dev(*ip)?);
    }
    let mut interfaces = BTreeMap::new();
    for name in interface_names()? {
        if name == "lo" {
            continue;
        }
        let role = if pod_ifaces.contains(&name) {
            Role::MeshedPod
        } else {
            Role::Entry
        };
        capture.enroll(&name, role, attach_mode(config.capture.attach))?;
        interfaces.insert(name, role);
    }
    let mut removed = Vec::new();
    for name in capture.enrolled() {
        if !interfaces.contains_key(&name) {
            capture.unenroll(&name)?;
            removed.push(name);
        }
    }
    let origin = capture.origin();
    Ok((
        Some(capture),
        Enrolled {
            origin: Some(origin),
            interfaces,
            removed,
            local_addresses: local,
        },
    ))
}

fn attach_mode(a: Attach) -> AttachMode {
    match a {
        Attach::Auto => AttachMode::Auto,
        Attach::Tcx => AttachMode::Tcx,
        Attach::Netlink => AttachMode::Netlink,
        // setup() returns before enrolling anything.
        Attach::External => AttachMode::Auto,
    }
}

/// Removes capture from this node: every attachment, every pin, and the
/// policy route. Meshed pods' traffic then flows unproxied.
pub fn uninstall(config: &ProxyConfig) -> Result<(), CaptureError> {
    weft_redirect::uninstall(&config.capture.pin_dir)?;
    weft_redirect::remove_policy_route(config.capture.mark, config.capture.route_table)
}
