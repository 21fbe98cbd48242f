//! The lab's control plane: `weft control` in file mode, in the underlay
//! netns at 198.18.0.250:15012 (reachable from every node) and on a unix
//! socket in the lab's state directory (reachable from the host). The lab
//! writes its topology as Kubernetes YAML for it, and applies changes to it.

use std::future::Future;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::{Value, json};
use weft_control::client::{Target, connect};
use weft_control_api::discovery as pb;

use crate::error::LabError;
use crate::plan::Plan;
use crate::topology::Topology;
use crate::wait::wait_until;

/// The control plane's address on the underlay.
pub const CONTROL_IP: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 250);
/// Its port (Istio-compatible).
pub const CONTROL_PORT: u16 = 15012;

/// The URL node proxies follow: TLS, with a serving certificate from the
/// lab's CA for [`CONTROL_IP`].
pub(crate) fn url() -> String {
    format!("https://{CONTROL_IP}:{CONTROL_PORT}")
}

/// The control plane's directory in a lab's state directory.
pub(crate) fn dir(state_dir: &Path) -> PathBuf {
    state_dir.join("control")
}

/// Its unix socket.
pub(crate) fn socket(state_dir: &Path) -> PathBuf {
    state_dir.join("control.sock")
}

/// The topology as Kubernetes YAML: Namespaces, Pods (with the node and
/// address the lab gave them), Services (with their cluster IPs).
pub(crate) fn manifests(topology: &Topology, plan: &Plan) -> Result<String, LabError> {
    let mut docs: Vec<Value> = Vec::new();
    for ns in &topology.namespaces {
        docs.push(json!({
            "apiVersion": "v1", "kind": "Namespace",
            "metadata": {"name": ns.name, "labels": ns.labels},
        }));
    }
    for (spec, pod) in topology.pods.iter().zip(&plan.pods) {
        docs.push(json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": spec.name, "namespace": spec.namespace, "labels": spec.labels},
            "spec": {
                "nodeName": spec.node,
                "serviceAccountName": spec.service_account,
                "containers": [{"name": "app"}],
            },
            "status": {"podIP": pod.ip.to_string()},
        }));
    }
    for (spec, svc) in topology.services.iter().zip(&plan.services) {
        let ports: Vec<Value> = spec
            .ports
            .iter()
            .map(|p| {
                let mut port = json!({"port": p.port, "targetPort": p.target(), "protocol": "TCP"});
                if let Some(app) = &p.app_protocol {
                    port["appProtocol"] = json!(app);
                }
                port
            })
            .collect();
        docs.push(json!({
            "apiVersion": "v1", "kind": "Service",
            "metadata": {"name": spec.name, "namespace": spec.namespace},
            "spec": {"clusterIP": svc.cluster_ip.to_string(), "selector": spec.selector, "ports": ports},
        }));
    }
    let mut out = String::from("# Written by weft lab from its topology.\n");
    for d in docs {
        out.push_str("---\n");
        out.push_str(
            &serde_yaml::to_string(&d).map_err(|e| {
                LabError::io("encoding the lab's manifests")(std::io::Error::other(e))
            })?,
        );
    }
    Ok(out)
}

fn block_on<T>(f: impl Future<Output = T>) -> Result<T, LabError> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(LabError::io(
            "starting a runtime for the control plane client",
        ))?;
    Ok(rt.block_on(f))
}

/// Applies the topology to the control plane as the whole desired state and
/// waits until every node in `nodes` has acknowledged it.
pub(crate) fn apply(
    state_dir: &Path,
    yaml: String,
    nodes: &[String],
    timeout: Duration,
) -> Result<u64, LabError> {
    let target = Target::Unix(socket(state_dir));
    let fail = |what: String| LabError::Host(format!("control plane: {what}"));
    let version = block_on(async {
        let mut client = connect(&target)
            .await
            .map_err(|e| fail(format!("connecting: {e}")))?;
        let response = client
            .apply(pb::ApplyRequest {
                files: vec![pb::File {
                    name: "lab-topology.yaml".into(),
                    content: yaml,
                }],
                replace_all: true,
                // Checked with what users applied, which may refer to
                // services that come later.
                strict: false,
            })
            .await
            .map_err(|e| fail(format!("apply: {e}")))?
            .into_inner();
        if response.problems.is_empty() {
            Ok(response.version)
        } else {
            let problems: Vec<String> = response
                .problems
                .iter()
                .map(|p| {
                    format!(
                        "{} document {}: {}: {}",
                        p.file, p.document, p.path, p.message
                    )
                })
                .collect();
            Err(fail(format!(
                "rejected the lab's topology: {}",
                problems.join("; ")
            )))
        }
    })??;
    let acked = wait_until(timeout, Duration::from_millis(20), || {
        let statuses = block_on(async {
            let mut client = connect(&target).await.ok()?;
            client
                .nodes(pb::NodesRequest {})
                .await
                .ok()
                .map(tonic::Response::into_inner)
        })
        .ok()??;
        nodes
            .iter()
            .all(|n| {
                statuses
                    .nodes
                    .iter()
                    .any(|s| s.node == *n && s.acked_version >= version)
            })
            .then_some(())
    });
    acked.ok_or_else(|| {
        fail(format!(
            "not every proxy acknowledged version {version} within {timeout:?}"
        ))
    })?;
    Ok(version)
}
