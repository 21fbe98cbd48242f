//! Where a lab's proxies send trace spans: nowhere, a receiver the lab runs
//! (an independent OTLP receiver on the official `opentelemetry-proto`
//! Python package and grpcio, in the underlay netns next to the control
//! plane), or a user's endpoint. What the lab's receiver stored is read
//! back as spans and printed as waterfalls (`weft lab traces`).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::fs;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::control::CONTROL_IP;
use crate::error::LabError;

/// The receiver's OTLP/gRPC port.
pub const GRPC_PORT: u16 = 4317;
/// Its OTLP/HTTP port.
pub const HTTP_PORT: u16 = 4318;

/// The receiver, as shipped with the lab.
const RECEIVER: &str = include_str!("../otlp/receiver.py");

/// Where a lab's proxies send spans.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum Otlp {
    /// Nowhere: the proxies trace nothing (unless a Telemetry object
    /// names a receiver).
    #[default]
    Off,
    /// To a receiver the lab runs; `delay_ms` makes it answer slowly.
    Receiver {
        /// Milliseconds each export waits before it is answered.
        delay_ms: u64,
    },
    /// To this OTLP/gRPC endpoint (reachable from the nodes' netns).
    Endpoint(String),
}

/// What a lab records of its trace export.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct OtlpRecord {
    /// What the proxies' `OTEL_EXPORTER_OTLP_ENDPOINT` says.
    pub(crate) endpoint: String,
    /// The lab's receiver, if it runs one: its PID.
    pub(crate) receiver: Option<u32>,
}

/// The lab receiver's gRPC endpoint.
pub(crate) fn receiver_endpoint() -> String {
    format!("http://{CONTROL_IP}:{GRPC_PORT}")
}

/// The receiver's directory in a lab's state directory.
pub(crate) fn dir(state_dir: &Path) -> PathBuf {
    state_dir.join("otlp")
}

/// The file the receiver appends spans to.
pub fn spans_file(state_dir: &Path) -> PathBuf {
    dir(state_dir).join("spans.jsonl")
}

/// Writes the receiver script; returns the command line that runs it.
pub(crate) fn receiver_command(
    state_dir: &Path,
    delay_ms: u64,
) -> Result<std::process::Command, LabError> {
    let d = dir(state_dir);
    fs::create_dir_all(&d).map_err(LabError::io(format!("creating {}", d.display())))?;
    let script = d.join("receiver.py");
    fs::write(&script, RECEIVER).map_err(LabError::io(format!("writing {}", script.display())))?;
    let mut cmd = std::process::Command::new("python3");
    cmd.arg(&script)
        .arg("--grpc")
        .arg(format!("{CONTROL_IP}:{GRPC_PORT}"))
        .arg("--http")
        .arg(format!("{CONTROL_IP}:{HTTP_PORT}"))
        .arg("--out")
        .arg(spans_file(state_dir))
        .arg("--delay-ms")
        .arg(delay_ms.to_string());
    Ok(cmd)
}

/// Whether the receiver's Python packages are installed.
pub(crate) fn receiver_installed() -> bool {
    std::process::Command::new("python3")
        .args([
            "-c",
            "import grpc; from opentelemetry.proto.collector.trace.v1 import trace_service_pb2_grpc",
        ])
        .output()
        .is_ok_and(|o| o.status.success())
}

/// One span as the receiver stored it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StoredSpan {
    /// Hex.
    pub trace_id: String,
    /// Hex.
    pub span_id: String,
    /// Hex; empty for a root span.
    pub parent_span_id: String,
    /// W3C `tracestate`.
    #[serde(default)]
    pub trace_state: String,
    /// Its name.
    pub name: String,
    /// `SERVER`, `CLIENT`, ...
    pub kind: String,
    /// Unix nanoseconds.
    pub start_ns: u64,
    /// Unix nanoseconds.
    pub end_ns: u64,
    /// `{code, message}`.
    pub status: SpanStatus,
    /// Its attributes.
    pub attributes: BTreeMap<String, serde_json::Value>,
    /// Its resource's attributes.
    pub resource: BTreeMap<String, serde_json::Value>,
    /// `grpc` or `http/protobuf`: how it arrived.
    #[serde(default)]
    pub transport: String,
}

/// A span's status.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SpanStatus {
    /// `UNSET`, `OK` or `ERROR`.
    pub code: String,
    /// Why, for an error.
    #[serde(default)]
    pub message: String,
}

impl StoredSpan {
    /// A string attribute.
    pub fn attr(&self, key: &str) -> Option<&str> {
        self.attributes.get(key).and_then(|v| v.as_str())
    }

    /// An integer attribute.
    pub fn int(&self, key: &str) -> Option<i64> {
        self.attributes.get(key).and_then(serde_json::Value::as_i64)
    }

    /// Where it was made: the resource's `k8s.node.name`, or its service.
    pub fn hop(&self) -> String {
        let get = |k: &str| self.resource.get(k).and_then(|v| v.as_str());
        match (get("service.name"), get("k8s.node.name")) {
            (Some(s), Some(n)) => format!("{s} ({n})"),
            (Some(s), None) => s.to_owned(),
            _ => "?".to_owned(),
        }
    }
}

/// Every span in `file`, in the order received; a line that does not
/// parse is an error naming it.
pub fn read_spans(file: &Path) -> Result<Vec<StoredSpan>, LabError> {
    let text = match fs::read_to_string(file) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(LabError::io(format!("reading {}", file.display()))(e)),
    };
    text.lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
        .map(|(i, l)| {
            serde_json::from_str(l)
                .map_err(|e| LabError::Host(format!("{} line {}: {e}", file.display(), i + 1)))
        })
        .collect()
}

/// The most recent `limit` traces, each as a waterfall: one line per span,
/// indented under its parent, with where it was made, its offset from the
/// trace's start, duration and status.
pub fn waterfalls(spans: &[StoredSpan], limit: usize) -> String {
    let mut traces: BTreeMap<&str, Vec<&StoredSpan>> = BTreeMap::new();
    for s in spans {
        traces.entry(s.trace_id.as_str()).or_default().push(s);
    }
    let mut order: Vec<(&str, u64)> = traces
        .iter()
        .map(|(id, ss)| (*id, ss.iter().map(|s| s.start_ns).min().unwrap_or(0)))
        .collect();
    order.sort_by_key(|(_, start)| std::cmp::Reverse(*start));
    let mut out = String::new();
    for (id, _) in order.into_iter().take(limit).rev() {
        let ss = &traces[id];
        let start = ss.iter().map(|s| s.start_ns).min().unwrap_or(0);
        let end = ss.iter().map(|s| s.end_ns).max().unwrap_or(0);
        let _ = writeln!(
            out,
            "trace {id}  {} spans  {:.3} ms",
            ss.len(),
            end.saturating_sub(start) as f64 / 1e6
        );
        let ids: std::collections::BTreeSet<&str> = ss.iter().map(|s| s.span_id.as_str()).collect();
        let mut roots: Vec<&StoredSpan> = ss
            .iter()
            .copied()
            .filter(|s| !ids.contains(s.parent_span_id.as_str()))
            .collect();
        roots.sort_by_key(|s| s.start_ns);
        for r in roots {
            if !r.parent_span_id.is_empty() {
                let _ = writeln!(out, "  (parent {} outside the proxies)", r.parent_span_id);
            }
            tree(&mut out, ss, r, start, 1);
        }
    }
    if out.is_empty() {
        out.push_str("no traces received yet\n");
    }
    out
}

fn tree(out: &mut String, all: &[&StoredSpan], s: &StoredSpan, start: u64, depth: usize) {
    let status = match s.status.code.as_str() {
        "ERROR" => format!("ERROR {}", s.status.message),
        _ => match s.int("http.response.status_code") {
            Some(code) => code.to_string(),
            None => "ok".to_owned(),
        },
    };
    let service = s
        .attr("weft.destination.service")
        .or_else(|| s.attr("weft.destination.workload"))
        .unwrap_or("-");
    let _ = writeln!(
        out,
        "{:indent$}{:<7} {:<28} {:<22} {:<18} +{:>8.3} ms {:>8.3} ms  {status}",
        "",
        s.kind,
        s.name,
        s.hop(),
        service,
        s.start_ns.saturating_sub(start) as f64 / 1e6,
        s.end_ns.saturating_sub(s.start_ns) as f64 / 1e6,
        indent = depth * 2
    );
    let mut children: Vec<&StoredSpan> = all
        .iter()
        .copied()
        .filter(|c| c.parent_span_id == s.span_id)
        .collect();
    children.sort_by_key(|c| c.start_ns);
    for c in children {
        tree(out, all, c, start, depth + 1);
    }
}
