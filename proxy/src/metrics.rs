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
    /// The label value.
    pub fn as_str(self) -> &'static str {
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
    /// The caller's SPIFFE ID as mTLS authenticated it, or empty.
    pub source_principal: String,
    /// Whether the connection crossed nodes in an mTLS tunnel (HBONE).
    pub mtls: bool,
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
    /// No certificate (yet) for the identity the connection needs.
    NoCertificate,
    /// The mTLS tunnel to the destination node could not be opened, or the
    /// destination refused the stream.
    Tunnel,
    /// A TLS handshake on the tunnel port failed (plaintext, an untrusted,
    /// expired or wrong certificate).
    Handshake,
    /// A tunnel request that is malformed, or whose certificate does not
    /// match the source it claims.
    BadRequest,
    /// Refused by authorization policy.
    Denied,
}

impl Failure {
    pub fn as_str(self) -> &'static str {
        match self {
            Failure::Connect => "connect",
            Failure::NoEndpoints => "no_endpoints",
            Failure::Relay => "relay",
            Failure::NotLocal => "not_local",
            Failure::NoCertificate => "no_certificate",
            Failure::Tunnel => "tunnel",
            Failure::Handshake => "handshake",
            Failure::BadRequest => "bad_request",
            Failure::Denied => "denied",
        }
    }
}

/// The labels of an HTTP request handled at L7: Istio's standard labels
/// (so Istio's dashboards and Kiali read weft's series unchanged) and the
/// route.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RequestLabels {
    /// `source` (the client's proxy) or `destination` (the server's).
    pub reporter: &'static str,
    /// The client pod's name, or `unknown`.
    pub source_workload: String,
    /// Its namespace, or `unknown`.
    pub source_namespace: String,
    /// Its SPIFFE ID, or `unknown`.
    pub source_principal: String,
    /// The pod that answered, or `unknown` (the proxy answered itself).
    pub destination_workload: String,
    /// Its namespace, or `unknown`.
    pub destination_namespace: String,
    /// Its SPIFFE ID, or `unknown`.
    pub destination_principal: String,
    /// The service called, as a host name
    /// (`name.namespace.svc.cluster.local`), or `unknown`.
    pub destination_service: String,
    /// Its name.
    pub destination_service_name: String,
    /// Its namespace.
    pub destination_service_namespace: String,
    /// `http` or `grpc`.
    pub protocol: &'static str,
    /// The response status.
    pub code: u16,
    /// Why the proxy answered itself (Envoy's flags: `NR` no route, `NC`
    /// no backend, `UH` no healthy upstream, `UF` upstream failure, `UT`
    /// timeout, `URX` retries exhausted, `RBAC` denied by policy), or `-`.
    pub flags: &'static str,
    /// `mutual_tls` (it crossed nodes in HBONE) or `none`.
    pub security: &'static str,
    /// `Kind/namespace/name` of the route that took it (empty: none).
    pub route: String,
}

/// Upper bounds of the request duration buckets, in milliseconds.
const DURATION_BUCKETS_MS: [f64; 14] = [
    0.5, 1.0, 2.5, 5.0, 10.0, 25.0, 50.0, 100.0, 250.0, 500.0, 1000.0, 2500.0, 5000.0, 10000.0,
];

/// Counts and durations of one request label set.
#[derive(Debug, Default)]
pub struct RequestCounters {
    count: AtomicU64,
    /// Per bucket (not cumulative), and one past the last bound.
    buckets: [AtomicU64; DURATION_BUCKETS_MS.len() + 1],
    /// Microseconds.
    sum_us: AtomicU64,
}

/// Picks one counter of a label set.
type Field = fn(&ConnCounters) -> &AtomicU64;

/// Writes a connection label set as one series' labels.
type ConnLabelsText = fn(&ConnLabels) -> String;

/// The proxy's metrics.
#[derive(Debug, Default)]
pub struct Metrics {
    conns: Mutex<HashMap<ConnLabels, Arc<ConnCounters>>>,
    failures: Mutex<HashMap<(Direction, Failure), u64>>,
    active: [AtomicI64; 2],
    /// Decisions by (direction, decision), then by deciding policy (a
    /// lookup by `&str` allocates nothing once the policy is known).
    authz: Mutex<HashMap<(Direction, &'static str), ByPolicy>>,
    tunnels_opened: [AtomicU64; 2],
    tunnels_active: [AtomicI64; 2],
    tunnel_streams: [AtomicU64; 2],
    /// Connections to L7 ports by what they turned out to speak.
    detected: [AtomicU64; 3],
    requests: Mutex<HashMap<RequestLabels, Arc<RequestCounters>>>,
    /// Retry decisions by (service, route, outcome).
    retries: RouteOutcomes,
    /// Mirrored copies by (service, route, outcome).
    mirrors: RouteOutcomes,
    /// Endpoints ejected by outlier detection.
    ejections: AtomicU64,
}

/// Decisions by deciding policy.
type ByPolicy = HashMap<String, u64>;

/// A counter by (service, route, outcome).
type RouteOutcomes = Mutex<HashMap<(String, String, &'static str), u64>>;

fn count_outcome(map: &RouteOutcomes, service: &str, route: &str, outcome: &'static str) {
    let mut map = map.lock().unwrap_or_else(|p| p.into_inner());
    *map.entry((service.to_owned(), route.to_owned(), outcome))
        .or_default() += 1;
}

fn render_outcomes(out: &mut String, name: &str, help: &str, map: &RouteOutcomes) {
    let mut rows: Vec<((String, String, &'static str), u64)> = {
        let map = map.lock().unwrap_or_else(|p| p.into_inner());
        map.iter().map(|(k, v)| (k.clone(), *v)).collect()
    };
    rows.sort();
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} counter");
    for ((service, route, outcome), n) in rows {
        let _ = writeln!(
            out,
            "{name}{{destination_service=\"{service}\",route=\"{route}\",outcome=\"{outcome}\"}} {n}"
        );
    }
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
    fn render_requests(&self, out: &mut String) {
        let mut requests: Vec<(RequestLabels, Arc<RequestCounters>)> = {
            let map = self.requests.lock().unwrap_or_else(|p| p.into_inner());
            map.iter().map(|(k, v)| (k.clone(), v.clone())).collect()
        };
        requests.sort_by(|a, b| a.0.cmp(&b.0));
        // The canonical service is Istio's fallback for a pod without an
        // `app` label: its workload's name (pod labels do not reach the
        // proxies yet).
        let labels = |l: &RequestLabels| {
            format!(
                "reporter=\"{}\",source_workload=\"{}\",source_workload_namespace=\"{}\",source_principal=\"{}\",\
                 source_canonical_service=\"{}\",\
                 destination_workload=\"{}\",destination_workload_namespace=\"{}\",destination_principal=\"{}\",\
                 destination_canonical_service=\"{}\",\
                 destination_service=\"{}\",destination_service_name=\"{}\",destination_service_namespace=\"{}\",\
                 request_protocol=\"{}\",response_code=\"{}\",response_flags=\"{}\",connection_security_policy=\"{}\",route=\"{}\"",
                l.reporter,
                l.source_workload,
                l.source_namespace,
                l.source_principal,
                l.source_workload,
                l.destination_workload,
                l.destination_namespace,
                l.destination_principal,
                l.destination_workload,
                l.destination_service,
                l.destination_service_name,
                l.destination_service_namespace,
                l.protocol,
                l.code,
                l.flags,
                l.security,
                l.route,
            )
        };
        let _ = writeln!(
            out,
            "# HELP istio_requests_total HTTP and gRPC requests handled at L7.\n# TYPE istio_requests_total counter"
        );
        for (l, c) in &requests {
            let _ = writeln!(
                out,
                "istio_requests_total{{{}}} {}",
                labels(l),
                c.count.load(Ordering::Relaxed)
            );
        }
        let _ = writeln!(
            out,
            "# HELP istio_request_duration_milliseconds Time to the response's headers.\n# TYPE istio_request_duration_milliseconds histogram"
        );
        for (l, c) in &requests {
            let l = labels(l);
            let mut cumulative = 0;
            for (i, bound) in DURATION_BUCKETS_MS.iter().enumerate() {
                cumulative += c.buckets[i].load(Ordering::Relaxed);
                let _ = writeln!(
                    out,
                    "istio_request_duration_milliseconds_bucket{{{l},le=\"{bound}\"}} {cumulative}"
                );
            }
            let count = c.count.load(Ordering::Relaxed);
            let _ = writeln!(
                out,
                "istio_request_duration_milliseconds_bucket{{{l},le=\"+Inf\"}} {count}"
            );
            let _ = writeln!(
                out,
                "istio_request_duration_milliseconds_sum{{{l}}} {}",
                c.sum_us.load(Ordering::Relaxed) as f64 / 1e3
            );
            let _ = writeln!(
                out,
                "istio_request_duration_milliseconds_count{{{l}}} {count}"
            );
        }
    }

    /// Drops the connection and request series of workloads `known` says
    /// are gone (`namespace`, `name`), so label sets of pods that come and
    /// go do not pile up. A connection still open keeps counting into the
    /// counters it holds; they are just not shown any more.
    pub fn forget(&self, known: impl Fn(&str, &str) -> bool) {
        let keep = |key: &str| match key.split_once('/') {
            Some((ns, name)) => known(ns, name),
            None => true,
        };
        self.conns
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .retain(|l, _| keep(&l.source) && keep(&l.destination));
        let keep_workload =
            |ns: &str, name: &str| name == "unknown" || ns == "unknown" || known(ns, name);
        self.requests
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .retain(|l, _| {
                keep_workload(&l.source_namespace, &l.source_workload)
                    && keep_workload(&l.destination_namespace, &l.destination_workload)
            });
    }

    /// The counters of a label set, created on first use.
    pub fn conn(&self, labels: ConnLabels) -> Arc<ConnCounters> {
        let mut map = self.conns.lock().unwrap_or_else(|p| p.into_inner());
        map.entry(labels).or_default().clone()
    }

    /// Counts a connection as active, until [`Metrics::close`].
    pub fn open(&self, d: Direction) {
        self.active[d as usize].fetch_add(1, Ordering::Relaxed);
    }

    /// A connection counted by [`Metrics::open`] ended.
    pub fn close(&self, d: Direction) {
        self.active[d as usize].fetch_sub(1, Ordering::Relaxed);
    }

    /// Counts an authorization decision of `policy` (the deciding
    /// policy, or what decided).
    pub fn authorized(&self, d: Direction, allowed: bool, policy: &str) {
        let decision = if allowed { "allow" } else { "deny" };
        let mut map = self.authz.lock().unwrap_or_else(|p| p.into_inner());
        let by_policy = map.entry((d, decision)).or_default();
        match by_policy.get_mut(policy) {
            Some(n) => *n += 1,
            None => {
                by_policy.insert(policy.to_owned(), 1);
            }
        }
    }

    /// Counts an HBONE connection (TLS + HTTP/2) as open until the guard
    /// drops.
    pub fn tunnel(&self, d: Direction) -> ActiveGuard<'_> {
        self.tunnels_opened[d as usize].fetch_add(1, Ordering::Relaxed);
        let gauge = &self.tunnels_active[d as usize];
        gauge.fetch_add(1, Ordering::Relaxed);
        ActiveGuard(gauge)
    }

    /// Counts a stream (one proxied TCP connection) inside a tunnel.
    pub fn tunnel_stream(&self, d: Direction) {
        self.tunnel_streams[d as usize].fetch_add(1, Ordering::Relaxed);
    }

    /// Counts an HTTP request handled at L7 that took `elapsed` to its
    /// response's headers.
    pub fn request(&self, labels: RequestLabels, elapsed: std::time::Duration) {
        self.requests(labels).record(elapsed);
    }

    /// The counters of a label set, to count into without a lookup (a
    /// connection keeps the ones it uses).
    pub fn requests(&self, labels: RequestLabels) -> Arc<RequestCounters> {
        let mut map = self.requests.lock().unwrap_or_else(|p| p.into_inner());
        map.entry(labels).or_default().clone()
    }
}

impl RequestCounters {
    /// Counts one request that took `elapsed` to its response's headers.
    pub fn record(&self, elapsed: std::time::Duration) {
        let ms = elapsed.as_secs_f64() * 1e3;
        let bucket = DURATION_BUCKETS_MS
            .iter()
            .position(|b| ms <= *b)
            .unwrap_or(DURATION_BUCKETS_MS.len());
        self.count.fetch_add(1, Ordering::Relaxed);
        self.buckets[bucket].fetch_add(1, Ordering::Relaxed);
        self.sum_us
            .fetch_add(elapsed.as_micros() as u64, Ordering::Relaxed);
    }
}

impl Metrics {
    /// Counts a retry decision: `retried`, `budget_exhausted` or
    /// `not_replayable`.
    pub fn retry(&self, service: &str, route: &str, outcome: &'static str) {
        count_outcome(&self.retries, service, route, outcome);
    }

    /// Counts an endpoint ejected by outlier detection.
    pub fn ejected(&self) {
        self.ejections.fetch_add(1, Ordering::Relaxed);
    }

    /// Counts a mirrored copy: `sent` (answered), `failed` or `denied`.
    pub fn mirror(&self, service: &str, route: &str, outcome: &'static str) {
        count_outcome(&self.mirrors, service, route, outcome);
    }

    /// Counts a connection to an L7 port by what it speaks.
    pub fn detected(&self, p: crate::detect::Protocol) {
        self.detected[p as usize].fetch_add(1, Ordering::Relaxed);
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
        // weft's own series (with the direction), then the same counters
        // under Istio's names and labels, for the dashboards users have.
        let families: [(&str, &str, Field, ConnLabelsText); 8] = [
            (
                "weft_tcp_connections_opened_total",
                "TCP connections relayed",
                |c| &c.opened,
                weft_tcp_labels,
            ),
            (
                "weft_tcp_connections_closed_total",
                "TCP connections relayed and ended",
                |c| &c.closed,
                weft_tcp_labels,
            ),
            (
                "weft_tcp_sent_bytes_total",
                "Bytes from source to destination",
                |c| &c.sent,
                weft_tcp_labels,
            ),
            (
                "weft_tcp_received_bytes_total",
                "Bytes from destination to source",
                |c| &c.received,
                weft_tcp_labels,
            ),
            (
                "istio_tcp_connections_opened_total",
                "TCP connections opened",
                |c| &c.opened,
                istio_tcp_labels,
            ),
            (
                "istio_tcp_connections_closed_total",
                "TCP connections closed",
                |c| &c.closed,
                istio_tcp_labels,
            ),
            (
                "istio_tcp_sent_bytes_total",
                "Bytes sent by the source (request direction)",
                |c| &c.sent,
                istio_tcp_labels,
            ),
            (
                "istio_tcp_received_bytes_total",
                "Bytes sent by the destination (response direction)",
                |c| &c.received,
                istio_tcp_labels,
            ),
        ];
        for (name, help, field, labels) in families {
            let _ = writeln!(out, "# HELP {name} {help}.\n# TYPE {name} counter");
            for (l, c) in &conns {
                let _ = writeln!(
                    out,
                    "{name}{{{}}} {}",
                    labels(l),
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
        let _ = writeln!(
            out,
            "# HELP weft_authz_decisions_total Authorization decisions, by deciding policy.\n# TYPE weft_authz_decisions_total counter"
        );
        let mut authz: Vec<((Direction, &str, String), u64)> = {
            let map = self.authz.lock().unwrap_or_else(|p| p.into_inner());
            map.iter()
                .flat_map(|(&(d, decision), by_policy)| {
                    by_policy
                        .iter()
                        .map(move |(policy, n)| ((d, decision, policy.clone()), *n))
                })
                .collect()
        };
        authz.sort();
        for ((d, decision, policy), n) in authz {
            let _ = writeln!(
                out,
                "weft_authz_decisions_total{{direction=\"{}\",decision=\"{decision}\",policy=\"{policy}\"}} {n}",
                d.as_str()
            );
        }
        for (name, kind, help, values) in [
            (
                "weft_hbone_connections_opened_total",
                "counter",
                "HBONE connections (TLS 1.3 + HTTP/2) opened; outbound: dialled, inbound: accepted",
                self.tunnels_opened.each(),
            ),
            (
                "weft_hbone_connections_active",
                "gauge",
                "HBONE connections open now",
                self.tunnels_active.each(),
            ),
            (
                "weft_hbone_streams_total",
                "counter",
                "TCP connections carried as HBONE streams",
                self.tunnel_streams.each(),
            ),
        ] {
            let _ = writeln!(out, "# HELP {name} {help}.\n# TYPE {name} {kind}");
            for (d, v) in [Direction::Outbound, Direction::Inbound]
                .into_iter()
                .zip(values)
            {
                let _ = writeln!(out, "{name}{{direction=\"{}\"}} {v}", d.as_str());
            }
        }
        self.render_requests(&mut out);
        render_outcomes(
            &mut out,
            "weft_http_retries_total",
            "Failed attempts that were retried, or not (budget_exhausted, not_replayable).",
            &self.retries,
        );
        let _ = writeln!(
            out,
            "# HELP weft_outlier_ejections_total Endpoints ejected after failures in a row (5xx, failed connects, resets).\n# TYPE weft_outlier_ejections_total counter\nweft_outlier_ejections_total {}",
            self.ejections.load(Ordering::Relaxed)
        );
        render_outcomes(
            &mut out,
            "weft_http_mirrors_total",
            "Request copies sent to mirrors, by outcome (sent: answered; failed; denied by policy).",
            &self.mirrors,
        );
        let _ = writeln!(
            out,
            "# HELP weft_l7_detected_total Connections to L7 ports by protocol (opaque: relayed at L4).\n# TYPE weft_l7_detected_total counter"
        );
        for (name, n) in ["http1", "http2", "opaque"].iter().zip(&self.detected) {
            let _ = writeln!(
                out,
                "weft_l7_detected_total{{protocol=\"{name}\"}} {}",
                n.load(Ordering::Relaxed)
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

/// Counters without labels, as Prometheus text: `(name, help, value)`.
pub fn render_counters(out: &mut String, counters: &[(&str, &str, u64)]) {
    for (name, help, value) in counters {
        let _ = writeln!(
            out,
            "# HELP {name} {help}.\n# TYPE {name} counter\n{name} {value}"
        );
    }
}

/// `(namespace, name)` of a `namespace/name` key; `unknown` for both
/// when it is not one.
fn split_key(key: &str) -> (&str, &str) {
    key.split_once('/').unwrap_or(("unknown", "unknown"))
}

/// weft's own labels of a TCP series (with the direction).
fn weft_tcp_labels(l: &ConnLabels) -> String {
    format!(
        "direction=\"{}\",source_workload=\"{}\",source_principal=\"{}\",destination_workload=\"{}\",destination_service=\"{}\",security=\"{}\"",
        l.direction.as_str(),
        l.source,
        l.source_principal,
        l.destination,
        l.service,
        if l.mtls { "mutual_tls" } else { "none" },
    )
}

/// Istio's labels of a TCP series.
fn istio_tcp_labels(l: &ConnLabels) -> String {
    let (source_namespace, source) = split_key(&l.source);
    let (destination_namespace, destination) = split_key(&l.destination);
    let (service_namespace, service) = split_key(&l.service);
    let service_host = if l.service.is_empty() {
        "unknown".to_owned()
    } else {
        format!("{service}.{service_namespace}.svc.cluster.local")
    };
    let principal = if l.source_principal.is_empty() {
        "unknown"
    } else {
        &l.source_principal
    };
    format!(
        "reporter=\"{}\",source_workload=\"{source}\",source_workload_namespace=\"{source_namespace}\",\
         source_canonical_service=\"{source}\",source_principal=\"{principal}\",\
         destination_workload=\"{destination}\",destination_workload_namespace=\"{destination_namespace}\",\
         destination_canonical_service=\"{destination}\",destination_service=\"{service_host}\",\
         destination_service_name=\"{service}\",destination_service_namespace=\"{service_namespace}\",\
         request_protocol=\"tcp\",response_flags=\"-\",connection_security_policy=\"{}\"",
        match l.direction {
            Direction::Outbound => "source",
            Direction::Inbound => "destination",
        },
        if l.mtls { "mutual_tls" } else { "none" },
    )
}

/// Reads a pair of per-direction atomics.
trait Each {
    fn each(&self) -> [i64; 2];
}

impl Each for [AtomicU64; 2] {
    fn each(&self) -> [i64; 2] {
        self.each_ref()
            .map(|a| i64::try_from(a.load(Ordering::Relaxed)).unwrap_or(i64::MAX))
    }
}

impl Each for [AtomicI64; 2] {
    fn each(&self) -> [i64; 2] {
        self.each_ref().map(|a| a.load(Ordering::Relaxed))
    }
}

#[cfg(test)]
mod tests;
