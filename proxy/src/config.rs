//! The node proxy's configuration: parsed once, validated, typed.
//!
//! The proxy reads a YAML file: its own settings (node, listeners, capture,
//! timeouts) and, when it follows no control plane (offline mode), the
//! mesh's workloads, services, routes and policies too. Errors name the
//! file and the field path.

use std::collections::BTreeSet;
use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};
/// The mesh part of the config (workloads, services, routes, policies) is
/// the shared domain model, in the same serde form.
pub use weft_model::{
    Backend, Filter, HeaderMatch, HeaderModifier, HeaderValue, ParentRef, PathMatch, PathModifier,
    Policy, PolicyAction, PolicyOperation, PolicyRule, PolicySource, Redirect, Retry, Rewrite,
    Route, RouteKind, RouteMatch, RouteRule, Service, ServicePort, Telemetry,
    Timeouts as RouteTimeouts, ValueMatch, Workload,
};

/// The whole file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ProxyConfig {
    /// This node's name; workloads with this node are local.
    pub node: String,
    /// Listener ports.
    #[serde(default)]
    pub listeners: Listeners,
    /// eBPF capture.
    pub capture: CaptureSpec,
    /// Timeouts of relayed connections.
    #[serde(default)]
    pub timeouts: Timeouts,
    /// Every workload this node needs to know: its own, and destinations.
    #[serde(default)]
    pub workloads: Vec<Workload>,
    /// Services reachable from this node's workloads.
    #[serde(default)]
    pub services: Vec<Service>,
    /// HTTP routes attached to services (from the control plane; L7
    /// routing uses them with its issue).
    #[serde(default)]
    pub routes: Vec<Route>,
    /// Authorization policies selecting this node's pods (enforced with the
    /// mTLS issue).
    #[serde(default)]
    pub policies: Vec<Policy>,
    /// How the proxies trace and log (the first by `namespace/name`
    /// applies).
    #[serde(default)]
    pub telemetry: Vec<Telemetry>,
    /// The control plane to follow (`http://host:15012`). Once it has sent
    /// a config, its workloads, services, routes and policies replace this
    /// file's; listeners, capture and timeouts stay the file's (a SIGHUP
    /// reloads them). Without it, everything comes from this file.
    #[serde(default)]
    pub control_plane: Option<String>,
    /// A file holding this node's credential for the control plane (a
    /// token, sent as `authorization: Bearer`). With it, the proxy also
    /// gets workload certificates for its meshed pods.
    #[serde(default)]
    pub control_plane_token: Option<PathBuf>,
    /// With an `https://` control plane: a PEM file of the roots its
    /// serving certificate must chain to (read again at every connection;
    /// roots the control plane sends later are trusted too).
    #[serde(default)]
    pub control_plane_ca: Option<PathBuf>,
}

/// Listener ports (Istio-compatible defaults).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Listeners {
    /// Transparent outbound listener.
    #[serde(default = "d_outbound")]
    pub outbound: u16,
    /// Transparent inbound plaintext listener.
    #[serde(default = "d_inbound")]
    pub inbound: u16,
    /// HBONE tunnel port (the listener arrives with mTLS).
    #[serde(default = "d_tunnel")]
    pub tunnel: u16,
    /// Admin: `/ready`, `/metrics`, `/config_dump`.
    #[serde(default = "d_admin")]
    pub admin: u16,
    /// Prometheus `/metrics`.
    #[serde(default = "d_metrics")]
    pub metrics: u16,
}

fn d_outbound() -> u16 {
    15001
}
fn d_inbound() -> u16 {
    15006
}
fn d_tunnel() -> u16 {
    15008
}
fn d_admin() -> u16 {
    15000
}
fn d_metrics() -> u16 {
    15020
}

impl Default for Listeners {
    fn default() -> Listeners {
        Listeners {
            outbound: d_outbound(),
            inbound: d_inbound(),
            tunnel: d_tunnel(),
            admin: d_admin(),
            metrics: d_metrics(),
        }
    }
}

/// How the tc program is attached to interfaces.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Attach {
    /// TCX when the kernel has it (6.6+), netlink tc otherwise.
    #[default]
    Auto,
    /// TCX links, pinned.
    Tcx,
    /// Netlink `clsact` filters.
    Netlink,
    /// No eBPF at all: something else delivers connections to the
    /// transparent listeners (iptables TPROXY, to measure what eBPF capture
    /// saves; see bench/). The proxy only adds its policy route. Not for
    /// production: nothing fails closed, and there is no fast path.
    External,
}

/// What happens to a meshed pod's new connection when no proxy listens.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum FailMode {
    /// Refused at once with a reset.
    #[default]
    Closed,
    /// Let through unproxied.
    Open,
}

/// eBPF capture settings.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct CaptureSpec {
    /// Where programs, maps and links are pinned (on a bpffs).
    pub pin_dir: PathBuf,
    /// Closed (default) or open.
    #[serde(default)]
    pub fail_mode: FailMode,
    /// `auto` (default), `tcx` or `netlink`.
    #[serde(default)]
    pub attach: Attach,
    /// The packet mark of captured packets.
    #[serde(default = "d_mark")]
    pub mark: u32,
    /// The routing table that delivers marked packets locally.
    #[serde(default = "d_table")]
    pub route_table: u32,
    /// `SO_MARK` of the proxy's own sockets (the fast path pairs pods only
    /// with sockets carrying it).
    #[serde(default = "d_socket_mark")]
    pub proxy_socket_mark: u32,
    /// The node's cgroup v2 directory, holding its pods and this proxy:
    /// where the fast path's sock_ops program attaches.
    #[serde(default)]
    pub cgroup: Option<PathBuf>,
    /// Pod ↔ proxy bytes go socket to socket (sk_msg), skipping TCP/IP, for
    /// the workloads that opt in (`workloads[].fastPath`).
    #[serde(default)]
    pub fast_path: bool,
    /// Bytes a fast-path receiver may have queued before the direction
    /// falls back to TCP and its flow control (at least its `SO_RCVBUF`).
    #[serde(default = "d_window")]
    pub fast_path_window: u32,
}

fn d_window() -> u32 {
    4 << 20
}

fn d_socket_mark() -> u32 {
    0x7766
}

fn d_mark() -> u32 {
    0x7765
}
fn d_table() -> u32 {
    7765
}

/// Relay timeouts, in seconds in the file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Timeouts {
    /// Connecting to the destination.
    #[serde(default = "d_connect", with = "secs")]
    pub connect: Duration,
    /// No byte in either direction for this long closes the connection.
    #[serde(default = "d_idle", with = "secs")]
    pub idle: Duration,
    /// How long a connection to an L7 port may stay silent before it is
    /// taken for a server-first protocol and relayed as bytes.
    #[serde(default = "d_detect", with = "secs")]
    pub detect: Duration,
}

fn d_connect() -> Duration {
    Duration::from_secs(5)
}
fn d_idle() -> Duration {
    Duration::from_secs(3600)
}
fn d_detect() -> Duration {
    Duration::from_secs(10)
}

impl Default for Timeouts {
    fn default() -> Timeouts {
        Timeouts {
            connect: d_connect(),
            idle: d_idle(),
            detect: d_detect(),
        }
    }
}

mod secs {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    pub(super) fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_f64(d.as_secs_f64())
    }
    pub(super) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let secs = f64::deserialize(d)?;
        Duration::try_from_secs_f64(secs)
            .map_err(|_| serde::de::Error::custom(format!("{secs} is not a duration in seconds")))
    }
}

/// A config file that cannot be used, naming the file and the field.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct ConfigError {
    /// The file.
    pub file: String,
    /// Field path, e.g. `services[1].ports[0].port`.
    pub path: String,
    /// Line, where known.
    pub line: Option<usize>,
    /// What is wrong.
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "invalid proxy config {}", self.file)?;
        if let Some(line) = self.line {
            write!(f, ":{line}")?;
        }
        if !self.path.is_empty() {
            write!(f, ": {}", self.path)?;
        }
        write!(f, ": {}", self.message)
    }
}

impl ProxyConfig {
    /// Parses and validates; `file` names the source in errors.
    pub fn parse(file: &str, text: &str) -> Result<ProxyConfig, ConfigError> {
        let de = serde_yaml::Deserializer::from_str(text);
        let config: ProxyConfig = serde_path_to_error::deserialize(de).map_err(|e| {
            let path = e.path().to_string();
            let inner = e.into_inner();
            let message = inner.to_string();
            ConfigError {
                file: file.to_owned(),
                path: if path == "." { String::new() } else { path },
                line: inner.location().map(|l| l.line()),
                message: message
                    .rsplit_once(" at line ")
                    .map_or(message.clone(), |(m, _)| m.to_owned()),
            }
        })?;
        config.validate().map_err(|(path, message)| ConfigError {
            file: file.to_owned(),
            path,
            line: None,
            message,
        })?;
        Ok(config)
    }

    fn validate(&self) -> Result<(), (String, String)> {
        let c = &self.capture;
        if c.proxy_socket_mark == c.mark {
            return Err((
                "capture.proxySocketMark".into(),
                "must differ from capture.mark (marked packets are delivered locally)".into(),
            ));
        }
        if c.fast_path && c.attach == Attach::External {
            return Err((
                "capture.fastPath".into(),
                "needs eBPF (sock_ops, sk_msg): not with attach: external".into(),
            ));
        }
        if c.fast_path && c.cgroup.is_none() {
            return Err((
                "capture.fastPath".into(),
                "needs capture.cgroup (where sock_ops attaches)".into(),
            ));
        }
        match (&self.control_plane, &self.control_plane_ca) {
            (Some(url), None) if url.starts_with("https://") => {
                return Err((
                    "controlPlaneCa".into(),
                    "an https:// control plane needs the roots its certificate chains to".into(),
                ));
            }
            (Some(url), Some(_)) if !url.starts_with("https://") => {
                return Err((
                    "controlPlaneCa".into(),
                    format!("set, but the control plane `{url}` is not https://"),
                ));
            }
            (None, Some(_)) => {
                return Err(("controlPlaneCa".into(), "set without a controlPlane".into()));
            }
            _ => {}
        }
        let l = &self.listeners;
        let ports = [
            ("listeners.outbound", l.outbound),
            ("listeners.inbound", l.inbound),
            ("listeners.tunnel", l.tunnel),
            ("listeners.admin", l.admin),
            ("listeners.metrics", l.metrics),
        ];
        let mut seen = BTreeSet::new();
        for (path, port) in ports {
            if port == 0 {
                return Err((path.into(), "port 0 is not a port".into()));
            }
            if !seen.insert(port) {
                return Err((
                    path.into(),
                    format!("port {port} is used by another listener"),
                ));
            }
        }
        let mut ips = BTreeSet::new();
        for (i, w) in self.workloads.iter().enumerate() {
            if !ips.insert(w.ip) {
                return Err((
                    format!("workloads[{i}].ip"),
                    format!("{} is used twice", w.ip),
                ));
            }
        }
        for (i, s) in self.services.iter().enumerate() {
            if s.ports.is_empty() {
                return Err((format!("services[{i}].ports"), "at least one port".into()));
            }
            for (j, p) in s.ports.iter().enumerate() {
                if p.port == 0 || p.target_port == 0 {
                    return Err((
                        format!("services[{i}].ports[{j}]"),
                        "port 0 is not a port".into(),
                    ));
                }
            }
        }
        Ok(())
    }

    /// The workloads on this node.
    pub fn local_workloads(&self) -> impl Iterator<Item = &Workload> {
        self.workloads.iter().filter(move |w| w.node == self.node)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = "node: n1\ncapture: {pinDir: /sys/fs/bpf/x}\nworkloads:\n  - {namespace: a, name: p, node: n1, ip: 10.0.0.1, meshed: true}\nservices:\n  - {namespace: a, name: s, clusterIP: 10.1.0.1, ports: [{port: 80, targetPort: 8080}], endpoints: [10.0.0.1]}\n";

    #[test]
    fn a_valid_file_gets_istio_compatible_default_ports_and_fail_closed() {
        let c = ProxyConfig::parse("p.yaml", GOOD).unwrap();
        assert_eq!(c.listeners.outbound, 15001);
        assert_eq!(c.listeners.inbound, 15006);
        assert_eq!(c.listeners.tunnel, 15008);
        assert_eq!(c.capture.fail_mode, FailMode::Closed);
        assert_eq!(c.local_workloads().count(), 1);
        assert_eq!(c.services[0].ports[0].target_port, 8080);
    }

    #[test]
    fn errors_name_file_field_and_line() {
        let bad = GOOD.replace("port: 80,", "port: 99999,");
        let e = ProxyConfig::parse("p.yaml", &bad).unwrap_err();
        assert_eq!(e.path, "services[0].ports[0].port");
        assert!(
            e.to_string()
                .starts_with("invalid proxy config p.yaml:6: services[0].ports[0].port"),
            "{e}"
        );
    }

    #[test]
    fn listeners_must_not_share_a_port() {
        let bad = GOOD.replace("node: n1\n", "node: n1\nlisteners: {admin: 15001}\n");
        let e = ProxyConfig::parse("p.yaml", &bad).unwrap_err();
        assert_eq!(e.path, "listeners.admin");
    }

    #[test]
    fn external_capture_has_no_fast_path_and_an_https_control_plane_needs_its_roots() {
        let external = GOOD.replace(
            "capture: {pinDir: /sys/fs/bpf/x}",
            "capture: {pinDir: /sys/fs/bpf/x, attach: external, fastPath: true, cgroup: /sys/fs/cgroup/x}",
        );
        let e = ProxyConfig::parse("p.yaml", &external).unwrap_err();
        assert_eq!(e.path, "capture.fastPath");
        assert!(e.message.contains("attach: external"), "{e}");
        let ok = external.replace("fastPath: true", "fastPath: false");
        assert_eq!(
            ProxyConfig::parse("p.yaml", &ok).unwrap().capture.attach,
            Attach::External
        );

        let https = format!("{GOOD}controlPlane: https://cp:15012\n");
        let e = ProxyConfig::parse("p.yaml", &https).unwrap_err();
        assert_eq!(e.path, "controlPlaneCa");
        let http_with_ca =
            format!("{GOOD}controlPlane: http://cp:15012\ncontrolPlaneCa: /ca.pem\n");
        let e = ProxyConfig::parse("p.yaml", &http_with_ca).unwrap_err();
        assert!(e.message.contains("not https://"), "{e}");
        let good = format!("{GOOD}controlPlane: https://cp:15012\ncontrolPlaneCa: /ca.pem\n");
        assert!(ProxyConfig::parse("p.yaml", &good).is_ok());
    }
}
