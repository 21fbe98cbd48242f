//! The lab's error type: one variant per kind of failure, each naming what
//! failed and where.

use std::path::PathBuf;
use std::process::ExitStatus;

use crate::topology::TopologyError;

/// Why a lab operation failed.
#[derive(Debug, thiserror::Error)]
pub enum LabError {
    /// The topology file is invalid.
    #[error(transparent)]
    Topology(#[from] TopologyError),

    /// A lab of this name already exists.
    #[error(
        "lab `{name}` already exists ({evidence}); run `weft lab down --name {name}` first, \
         or pick another name with --name"
    )]
    AlreadyExists {
        /// The lab's name.
        name: String,
        /// What shows that it exists.
        evidence: String,
    },

    /// No lab of this name.
    #[error("no lab `{name}` (no state file at {state})")]
    NotFound {
        /// The lab's name.
        name: String,
        /// Where its state file would be.
        state: PathBuf,
    },

    /// A pod reference that does not resolve.
    #[error("{0}")]
    NoSuchPod(String),

    /// The lab needs something the host does not have.
    #[error("the host is not ready for a lab: {0}")]
    Host(String),

    /// An external command failed.
    #[error("`{command}` failed ({status}): {stderr}")]
    Command {
        /// The command line.
        command: String,
        /// How it ended.
        status: ExitStatus,
        /// What it printed on stderr.
        stderr: String,
    },

    /// A file-system or system call failed.
    #[error("{what}: {source}")]
    Io {
        /// What was being done, with the path.
        what: String,
        /// The cause.
        #[source]
        source: std::io::Error,
    },

    /// A pod did not start listening in time.
    #[error(
        "{pod} did not listen on port {port} within {secs:.1} s ({detail}); \
         its log {log} ended with:\n{tail}"
    )]
    NotReady {
        /// `namespace/name`.
        pod: String,
        /// The port it should listen on.
        port: u16,
        /// How long we waited.
        secs: f64,
        /// Whether the process is still there.
        detail: String,
        /// Its log file.
        log: PathBuf,
        /// The last lines of its log (the file goes with the lab).
        tail: String,
    },

    /// Teardown left something behind.
    #[error("lab `{name}` was not fully removed: {}", left.join("; "))]
    Leftovers {
        /// The lab's name.
        name: String,
        /// What is left and why.
        left: Vec<String>,
    },
}

impl LabError {
    pub(crate) fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> LabError {
        let what = what.into();
        move |source| LabError::Io { what, source }
    }
}
