//! The weft lab: a faithful cluster on one machine, made of real kernel objects.
//!
//! ```text
//!        underlay netns (bridge br0, 198.18.0.0/24)
//!          │ n0                      │ n1
//!   ┌──────┴───────┐          ┌──────┴───────┐
//!   │ node netns   │ eth0     │ node netns   │ eth0 198.18.0.2
//!   │ 198.18.1.0/24│          │ 198.18.2.0/24│
//!   │ wp0    wp1   │          │ wp2    wp3   │   host side of pod veths,
//!   └─┬──────┬─────┘          └─┬──────┬─────┘   gateway 198.18.<n>.1
//!   pod     pod               pod     pod         pod netns, eth0 /32,
//!   netns   netns             netns   netns       one cgroup v2 each
//! ```
//!
//! A [`Topology`] (YAML) is turned into a [`Plan`] (names and addresses, pure
//! and deterministic), and [`Labs::up`] makes the plan real: namespaces,
//! veths, addresses, routes, a cgroup per pod and the pods' processes, each
//! inside its pod's netns and cgroup. Every resource is written to the lab's
//! state file *before* it is created, so [`Labs::down`] removes everything even
//! after `up` crashed or was killed; names carry the lab's name, so several
//! labs live side by side and `down` touches only its own.
//!
//! [`app`] is the built-in test workload (TCP echo, HTTP/1.1 and h2c server
//! that names the pod that served, and a client).

pub mod app;
mod cgroup;
mod control;
mod error;
mod lab;
mod netns;
pub mod otlp;
mod plan;
mod proxy;
mod state;
mod topology;
mod wait;

pub use control::{CONTROL_IP, CONTROL_PORT};
pub use error::LabError;
pub use lab::{DEFAULT_STATE_ROOT, DownReport, Labs, PodPhase, PodStatus, Status};
pub use netns::in_netns;
pub use otlp::{Otlp, StoredSpan, read_spans, waterfalls};
pub use plan::{
    Cidr, LabName, MAX_NODES, MAX_PODS_PER_NODE, NodePlan, PIN_ROOT, Plan, PodPlan, SERVICE_RANGE,
    ServicePlan, UNDERLAY,
};
pub use topology::{
    Attach, FAST_PATH_LABEL, FailMode, MESH_LABEL, MeshMode, NamespaceSpec, NodeSpec, PodSpec,
    PortSpec, Problem, ServiceSpec, Topology, TopologyError,
};
pub use wait::wait_until;

/// The topology that `weft lab up` uses when no file is given: two nodes, a
/// meshed namespace with a client and an echo service on both nodes, and an
/// unmeshed namespace with one client.
pub const DEFAULT_TOPOLOGY: &str = include_str!("../../examples/lab/default.yaml");

/// The file name shown in errors about [`DEFAULT_TOPOLOGY`].
pub const DEFAULT_TOPOLOGY_NAME: &str = "examples/lab/default.yaml (built in)";
