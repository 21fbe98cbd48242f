//! The lab's state file: the record `down` trusts, written before each
//! resource is created so that a crash or a kill never leaks one.

use std::fs;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::LabError;
use crate::plan::{LabName, Plan};
use crate::topology::Topology;

/// How far `up` got.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum Phase {
    /// `up` is running, or died while running.
    Creating,
    /// `up` finished: every pod is running and listening.
    Ready,
}

/// A process the lab started.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct ProcessRecord {
    /// `namespace/name` of its pod.
    pub(crate) pod: String,
    pub(crate) pid: u32,
}

/// Everything a lab holds.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct LabState {
    pub(crate) name: LabName,
    pub(crate) phase: Phase,
    /// Where the topology came from.
    pub(crate) topology_file: String,
    pub(crate) plan: Plan,
    /// The topology the plan was made from (labels change it).
    pub(crate) topology: Topology,
    /// The lab's cgroup directory (absolute).
    pub(crate) cgroup_dir: PathBuf,
    /// Namespaces that exist or are about to.
    pub(crate) netns: Vec<String>,
    pub(crate) processes: Vec<ProcessRecord>,
    /// Node proxies that were started.
    #[serde(default)]
    pub(crate) proxies: Vec<ProxyRecord>,
    /// The control plane's PID, once started.
    #[serde(default)]
    pub(crate) control: Option<u32>,
    /// Where the proxies send trace spans, and the lab's receiver.
    #[serde(default)]
    pub(crate) otlp: Option<crate::otlp::OtlpRecord>,
}

/// A node proxy the lab started.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct ProxyRecord {
    pub(crate) node: String,
    pub(crate) pid: u32,
}

pub(crate) const STATE_FILE: &str = "state.json";

impl LabState {
    pub(crate) fn load(dir: &Path) -> Result<LabState, LabError> {
        let path = dir.join(STATE_FILE);
        let text = fs::read_to_string(&path)
            .map_err(LabError::io(format!("reading {}", path.display())))?;
        serde_json::from_str(&text).map_err(|e| {
            LabError::io(format!("parsing {}", path.display()))(std::io::Error::other(e))
        })
    }

    /// Writes atomically: a reader sees the old or the new state, never half.
    pub(crate) fn save(&self, dir: &Path) -> Result<(), LabError> {
        let path = dir.join(STATE_FILE);
        let tmp = dir.join(format!("{STATE_FILE}.tmp"));
        let text = serde_json::to_vec_pretty(self)
            .map_err(|e| LabError::io("encoding lab state")(std::io::Error::other(e)))?;
        fs::write(&tmp, text).map_err(LabError::io(format!("writing {}", tmp.display())))?;
        fs::rename(&tmp, &path).map_err(LabError::io(format!("writing {}", path.display())))
    }
}
