//! Counters for connections and bytes by source and destination workload,
//! rendered in the Prometheus text format.
//!
//! A connection looks up its label set once (a short std lock, never held
//! across `.await`) and then counts with atomics.

use std::collections::HashMap;
use std::fmt::Write;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

/// Which listener took the connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Direction {
    /// From a local meshed pod.
    Outbound,
    /// To a local meshed pod.
    Inbound,
}

impl Direction {
    fn as_str(self) -> &'static str {
        match self {
            Direction::Outbound => "outbound",
            Direction::Inbound => "inbound",
        }
    }
}

/// The labels of a connection.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ConnLabels {
    /// Which listener.
    pub direction: Direction,
    /// `namespace/name` of the source workload, or `unknown`.
    pub source: String,
    /// `namespace/name` of the destination workload, or `unknown`.
    pub destination: String,
    /// `namespace/name` of the destination service, or empty.
    pub service: String,
}

/// Counters of one label set.
#[derive(Debug, Default)]
pub struct ConnCounters {
    /// Connections relayed (accepted and connected).
    pub opened: AtomicU64,
    /// Of those, ended.
    pub closed: AtomicU64,
    /// Bytes from source to destination.
    pub sent: AtomicU64,
    /// Bytes from destination to source.
    pub received: AtomicU64,
}

/// Why a connection was not relayed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Failure {
    /// The destination refused, timed out or was unreachable.
    Connect,
    /// A service with no endpoints.
    NoEndpoints,
    /// The relay ended with an error (reset, idle timeout).
    Relay,
    /// Inbound to an address that is not a meshed pod here.
    NotLocal,
}

impl Failure {
    fn as_str(self) -> &'static str {
        match self {
            Failure::Connect => "connect",
            Failure::NoEndpoints => "no_endpoints",
            Failure::Relay => "relay",
            Failure::NotLocal => "not_local",
        }
    }
}

/// Picks one counter of a label set.
type Field = fn(&ConnCounters) -> &AtomicU64;

/// The proxy's metrics.
#[derive(Debug, Default)]
pub struct Metrics {
    conns: Mutex<HashMap<ConnLabels, Arc<ConnCounters>>>,
    failures: Mutex<HashMap<(Direction, Failure), u64>>,
    active: [AtomicI64; 2],
}

/// Decrements the active gauge when the connection ends, however it ends.
#[derive(Debug)]
pub struct ActiveGuard<'a>(&'a AtomicI64);

impl Drop for ActiveGuard<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Metrics {
    /// The counters of a label set, created on first use.
    pub fn conn(&self, labels: ConnLabels) -> Arc<ConnCounters> {
        let mut map = self.conns.lock().unwrap_or_else(|p| p.into_inner());
        map.entry(labels).or_default().clone()
    }

    /// Counts a connection as active until the guard drops.
    pub fn active(&self, d: Direction) -> ActiveGuard<'_> {
        let gauge = &self.active[d as usize];
        gauge.fetch_add(1, Ordering::Relaxed);
        ActiveGuard(gauge)
    }

    /// Counts a connection that was not relayed.
    pub fn failed(&self, d: Direction, f: Failure) {
        let mut map = self.failures.lock().unwrap_or_else(|p| p.into_inner());
        *map.entry((d, f)).or_default() += 1;
    }

    /// The Prometheus text exposition; `capture` holds the eBPF decision
    /// counters when they could be read.
    pub fn render(&self, capture: Option<&[(&'static str, u64)]>) -> String {
        let mut out = String::new();
        let conns: Vec<(ConnLabels, Arc<ConnCounters>)> = {
            let map = self.conns.lock().unwrap_or_else(|p| p.into_inner());
            map.iter().map(|(k, v)| (k.clone(), v.clone())).collect()
        };
        let mut conns = conns;
        conns.sort_by(|a, b| a.0.cmp(&b.0));
        let families: [(&str, &str, Field); 4] = [
            (
                "weft_tcp_connections_opened_total",
                "TCP connections relayed",
                |c| &c.opened,
            ),
            (
                "weft_tcp_connections_closed_total",
                "TCP connections relayed and ended",
                |c| &c.closed,
            ),
            (
                "weft_tcp_sent_bytes_total",
                "Bytes from source to destination",
                |c| &c.sent,
            ),
            (
                "weft_tcp_received_bytes_total",
                "Bytes from destination to source",
                |c| &c.received,
            ),
        ];
        for (name, help, field) in families {
            let _ = writeln!(out, "# HELP {name} {help}.\n# TYPE {name} counter");
            for (l, c) in &conns {
                let _ = writeln!(
                    out,
                    "{name}{{direction=\"{}\",source_workload=\"{}\",destination_workload=\"{}\",destination_service=\"{}\"}} {}",
                    l.direction.as_str(),
                    l.source,
                    l.destination,
                    l.service,
                    field(c).load(Ordering::Relaxed)
                );
            }
        }
        let _ = writeln!(
            out,
            "# HELP weft_tcp_connections_active TCP connections being relayed.\n# TYPE weft_tcp_connections_active gauge"
        );
        for d in [Direction::Outbound, Direction::Inbound] {
            let _ = writeln!(
                out,
                "weft_tcp_connections_active{{direction=\"{}\"}} {}",
                d.as_str(),
                self.active[d as usize].load(Ordering::Relaxed)
            );
        }
        let _ = writeln!(
            out,
            "# HELP weft_tcp_connection_failures_total Connections not relayed, by reason.\n# TYPE weft_tcp_connection_failures_total counter"
        );
        let mut failures: Vec<((Direction, Failure), u64)> = {
            let map = self.failures.lock().unwrap_or_else(|p| p.into_inner());
            map.iter().map(|(k, v)| (*k, *v)).collect()
        };
        failures.sort();
        for ((d, f), n) in failures {
            let _ = writeln!(
                out,
                "weft_tcp_connection_failures_total{{direction=\"{}\",reason=\"{}\"}} {n}",
                d.as_str(),
                f.as_str()
            );
        }
        if let Some(decisions) = capture {
            let _ = writeln!(
                out,
                "# HELP weft_capture_decisions_total Decisions of the eBPF capture program.\n# TYPE weft_capture_decisions_total counter"
            );
            for (name, n) in decisions {
                let _ = writeln!(
                    out,
                    "weft_capture_decisions_total{{decision=\"{name}\"}} {n}"
                );
            }
        }
        out
    }
}
