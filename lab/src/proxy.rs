//! The lab's node proxies: one `weft proxy` per node, in the node's netns
//! and in a cgroup beside its pods, with a config made from the plan.

use std::fs;
use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use weft_proxy::config::{
    CaptureSpec, Listeners, ProxyConfig, Service, ServicePort, Timeouts, Workload,
};

use crate::error::LabError;
use crate::netns::in_netns;
use crate::plan::{NodePlan, PIN_ROOT, Plan};
use crate::state::LabState;
use crate::topology::MeshMode;

/// The proxy's config for `node`, from the plan.
pub(crate) fn config_for(plan: &Plan, node: &NodePlan, lab_cgroup: &Path) -> ProxyConfig {
    ProxyConfig {
        node: node.name.clone(),
        listeners: Listeners::default(),
        capture: CaptureSpec {
            pin_dir: node.pin_dir.clone(),
            fail_mode: node.fail_mode,
            attach: node.attach,
            mark: 0x7765,
            route_table: 7765,
            proxy_socket_mark: 0x7766,
            cgroup: Some(lab_cgroup.join(&node.cgroup)),
            // Without eBPF (attach: external) there is no fast path.
            fast_path: node.fast_path && node.attach != weft_proxy::config::Attach::External,
            fast_path_window: 4 << 20,
        },
        timeouts: Timeouts::default(),
        // The workloads and services below are the bootstrap: the proxy
        // serves them until the control plane's stream replaces them.
        control_plane: Some(crate::control::url()),
        routes: Vec::new(),
        policies: Vec::new(),
        telemetry: Vec::new(),
        control_plane_token: None,
        control_plane_ca: None,
        workloads: plan
            .pods
            .iter()
            .map(|p| Workload {
                namespace: p.namespace.clone(),
                name: p.name.clone(),
                node: p.node.clone(),
                ip: p.ip,
                service_account: p.service_account.clone(),
                meshed: p.mesh == MeshMode::Enabled,
                fast_path: p.fast_path,
            })
            .collect(),
        services: plan
            .services
            .iter()
            .map(|s| Service {
                namespace: s.namespace.clone(),
                name: s.name.clone(),
                cluster_ip: s.cluster_ip,
                ports: s
                    .ports
                    .iter()
                    .map(|p| ServicePort {
                        port: p.port,
                        target_port: p.target_port.unwrap_or(p.port),
                        app_protocol: p.app_protocol.clone(),
                    })
                    .collect(),
                endpoints: s.endpoints.iter().map(|(_, ip)| *ip).collect(),
            })
            .collect(),
    }
}

/// Writes the config file of `node`'s proxy into the lab's state directory.
pub(crate) fn write_config(
    dir: &Path,
    state: &LabState,
    node: &NodePlan,
) -> Result<PathBuf, LabError> {
    let path = dir.join(format!("proxy-{}.yaml", node.name));
    let mut config = config_for(&state.plan, node, &state.cgroup_dir);
    // The control plane's certificate chains to the lab's root.
    config.control_plane_ca = Some(dir.join("ca").join("ca.pem"));
    // The token gets the proxy its certificates, and with them HBONE.
    node_token(dir, &node.name)?;
    if state.topology.identity.mtls {
        config.control_plane_token = Some(token_file(dir, &node.name));
    }
    let yaml = serde_yaml::to_string(&config).map_err(|e| {
        LabError::io(format!("encoding {}", path.display()))(std::io::Error::other(e))
    })?;
    fs::write(&path, yaml).map_err(LabError::io(format!("writing {}", path.display())))?;
    Ok(path)
}

/// Where `node`'s credential for the control plane is kept.
pub(crate) fn token_file(dir: &Path, node: &str) -> PathBuf {
    dir.join(format!("proxy-{node}.token"))
}

/// `node`'s credential: read, or made and written (owner-only) the first
/// time.
pub(crate) fn node_token(dir: &Path, node: &str) -> Result<String, LabError> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let path = token_file(dir, node);
    match fs::read_to_string(&path) {
        Ok(t) => return Ok(t.trim().to_owned()),
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            return Err(LabError::io(format!("reading {}", path.display()))(e));
        }
        Err(_) => {}
    }
    let token = weft_control::auth::new_token()
        .map_err(|_| LabError::Host("no randomness for a node token".into()))?;
    fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&path)
        .and_then(|mut f| f.write_all(token.as_bytes()))
        .map_err(LabError::io(format!("writing {}", path.display())))?;
    Ok(token)
}

/// The log file of `node`'s proxy.
pub(crate) fn log_file(dir: &Path, node: &str) -> PathBuf {
    dir.join("logs").join(format!("proxy-{node}.log"))
}

/// The lab's pin directory (all nodes).
pub(crate) fn lab_pin_dir(lab: &str) -> PathBuf {
    Path::new(PIN_ROOT).join(lab)
}

/// Mounts a bpffs on `/sys/fs/bpf` unless one is there.
pub(crate) fn ensure_bpffs() -> Result<(), LabError> {
    if weft_redirect::is_bpffs(Path::new("/sys/fs/bpf")) {
        return Ok(());
    }
    let out = Command::new("mount")
        .args(["-t", "bpf", "bpf", "/sys/fs/bpf"])
        .stdin(Stdio::null())
        .output()
        .map_err(LabError::io("running mount"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(LabError::Command {
            command: "mount -t bpf bpf /sys/fs/bpf".into(),
            status: out.status,
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_owned(),
        })
    }
}

/// `GET path` on the admin port of the proxy in `netns`; returns status and body.
pub(crate) fn admin_get(netns: &str, port: u16, path: &str) -> Result<(u16, String), LabError> {
    let request = format!("GET {path} HTTP/1.0\r\nHost: localhost\r\n\r\n");
    let what = format!("GET {path} on the proxy admin port in {netns}");
    let response = in_netns(netns, move || -> std::io::Result<Vec<u8>> {
        let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
        let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
        stream.set_read_timeout(Some(Duration::from_secs(5)))?;
        stream.write_all(request.as_bytes())?;
        let mut out = Vec::new();
        stream.read_to_end(&mut out)?;
        Ok(out)
    })?
    .map_err(LabError::io(what.clone()))?;
    let text = String::from_utf8_lossy(&response).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| LabError::Host(format!("{what}: not an HTTP response: {head:?}")))?;
    Ok((status, body.to_owned()))
}
