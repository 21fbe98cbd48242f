//! What changes a running proxy's config, and how the two sources combine.
//!
//! The proxy's own settings (node, listeners, capture, timeouts) come from
//! its file, again on SIGHUP; what the mesh holds (workloads, services,
//! routes, policies) comes from the control plane's stream when the file
//! names one. Each source replaces only its own part, so a reload does not
//! undo the stream and a stream update does not undo a reload.

use tokio::sync::oneshot;

use crate::config::{Policy, ProxyConfig, Route, Service, Telemetry, Workload};

/// What the control plane says this node needs.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Mesh {
    /// This node's workloads and the destinations it needs.
    pub workloads: Vec<Workload>,
    /// Services.
    pub services: Vec<Service>,
    /// Routes attached to services.
    pub routes: Vec<Route>,
    /// Policies selecting this node's pods.
    pub policies: Vec<Policy>,
    /// The mesh's telemetry settings.
    pub telemetry: Vec<Telemetry>,
}

/// One change.
#[derive(Debug)]
pub enum Change {
    /// The config file, read again.
    File(Box<ProxyConfig>),
    /// The control plane's view of the mesh.
    Mesh(Mesh),
}

/// A change to apply; `done` learns the outcome (the new generation, or
/// why it was refused).
#[derive(Debug)]
pub struct Update {
    /// The change.
    pub change: Change,
    /// Where to report the outcome.
    pub done: Option<oneshot::Sender<Result<u64, String>>>,
}

impl Update {
    /// The mesh this update carries, if it is one from the control plane.
    pub fn mesh(&self) -> Option<&Mesh> {
        match &self.change {
            Change::Mesh(m) => Some(m),
            Change::File(_) => None,
        }
    }
}

/// The config to run: the file's settings and, once the control plane has
/// sent one, its mesh in place of the file's.
pub fn compose(file: &ProxyConfig, mesh: Option<&Mesh>) -> ProxyConfig {
    let mut config = file.clone();
    if let Some(m) = mesh {
        config.workloads = m.workloads.clone();
        config.services = m.services.clone();
        config.routes = m.routes.clone();
        config.policies = m.policies.clone();
        config.telemetry = m.telemetry.clone();
    }
    config
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_file_keeps_its_settings_and_the_stream_keeps_the_mesh() {
        let file = ProxyConfig::parse(
            "p.yaml",
            "node: n1\ncapture: {pinDir: /x}\ntimeouts: {connect: 3}\ncontrolPlane: http://cp:15012\n\
             workloads: [{namespace: a, name: boot, node: n1, ip: 10.0.0.9}]\n",
        )
        .unwrap();
        assert_eq!(compose(&file, None).workloads[0].name, "boot");
        let mesh = Mesh {
            workloads: vec![Workload {
                name: "p".into(),
                ..file.workloads[0].clone()
            }],
            ..Mesh::default()
        };
        let reloaded = ProxyConfig::parse(
            "p.yaml",
            "node: n1\ncapture: {pinDir: /x}\ntimeouts: {connect: 7}\ncontrolPlane: http://cp:15012\n",
        )
        .unwrap();
        let config = compose(&reloaded, Some(&mesh));
        assert_eq!(config.timeouts.connect, std::time::Duration::from_secs(7));
        assert_eq!(
            config.workloads, mesh.workloads,
            "the reload does not drop the stream's mesh"
        );
    }
}
