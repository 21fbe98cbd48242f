//! Traces: a span per sampled HTTP request in each proxy it crosses, and
//! per sampled L4 connection, exported over OTLP.
//!
//! ```text
//!  request ─► Tracer::start (traceparent: continue, or start by ratio)
//!     ├─ sampled: a Span; the request goes on with traceparent = that span
//!     └─ unsampled: no span; a traceparent that was there passes unchanged
//!  Span ─► Pending (the attributes known) ─► ended with the response body
//!  ─► Tracer::finish ─► bounded queue (full: dropped, counted)
//!                          └─► export task: batches ─► OTLP (gRPC | HTTP)
//! ```
//!
//! The data path never waits for the exporter: finishing a span is a push
//! onto a queue under a short lock; a slow, refusing or absent receiver
//! only drops spans, counted in `weft_trace_spans_dropped_total`.
//! Sampling is parent-based: a request's own `traceparent` decides; a new
//! trace is sampled by its trace id against the configured ratio, so every
//! proxy of the mesh decides the same for it.

pub mod access;
pub mod context;
mod export;

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use http::HeaderMap;
use opentelemetry::KeyValue;
use opentelemetry::trace::{SpanKind, Status};
use tokio::sync::{Notify, watch};
use weft_model::OtlpProtocol;

pub use self::export::run;

/// The proxy's tracer: sampling settings, the queue of finished spans and
/// its counters.
#[derive(Debug)]
pub struct Tracer {
    node: String,
    on: AtomicBool,
    /// New traces whose id's low 63 bits fall below this are sampled.
    new_traces: AtomicU64,
    /// Likewise for L4 connections.
    connections: AtomicU64,
    queue: Mutex<Vec<Record>>,
    wake: Notify,
    limits: Limits,
    export: watch::Sender<Option<Export>>,
    env: Env,
    /// Spans dropped: the queue was full, or their export failed.
    pub dropped: AtomicU64,
    /// Spans the receiver accepted.
    pub exported: AtomicU64,
    /// Export calls that failed or timed out.
    pub export_failures: AtomicU64,
}

/// Queue and batch sizes (`OTEL_BSP_*`).
#[derive(Debug, Clone, Copy)]
struct Limits {
    max_queue: usize,
    batch: usize,
    delay: Duration,
    timeout: Duration,
}

/// Where spans go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Export {
    /// The receiver's URL (for HTTP, with `/v1/traces`).
    pub endpoint: String,
    /// Its transport.
    pub protocol: OtlpProtocol,
    /// Headers sent with every export.
    pub headers: BTreeMap<String, String>,
    /// How long one export may take.
    pub timeout: Duration,
}

/// What the proxy's environment says (`OTEL_*`), read once at start.
#[derive(Debug, Clone, Default)]
pub struct Env {
    /// `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` (used as is) or
    /// `OTEL_EXPORTER_OTLP_ENDPOINT` (a base URL).
    pub endpoint: Option<(String, bool)>,
    /// `OTEL_EXPORTER_OTLP_(TRACES_)PROTOCOL`.
    pub protocol: Option<OtlpProtocol>,
    /// `OTEL_EXPORTER_OTLP_(TRACES_)HEADERS`.
    pub headers: BTreeMap<String, String>,
    /// `OTEL_TRACES_SAMPLER_ARG` (a fraction) with a ratio sampler.
    pub ratio: Option<f64>,
    /// `OTEL_SDK_DISABLED=true`.
    pub disabled: bool,
    /// `OTEL_BSP_SCHEDULE_DELAY`, `_MAX_QUEUE_SIZE`,
    /// `_MAX_EXPORT_BATCH_SIZE`, `_EXPORT_TIMEOUT` (milliseconds, counts).
    pub bsp: [Option<u64>; 4],
}

impl Env {
    /// Reads the standard variables from `var` (the binary passes the
    /// process's); a value that does not parse is reported and ignored.
    pub fn from_vars(var: impl Fn(&str) -> Option<String>) -> Env {
        let first = |names: &[&'static str]| {
            names
                .iter()
                .find_map(|n: &&'static str| var(n).map(|v| (*n, v)))
        };
        let endpoint = match first(&["OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"]) {
            Some((_, v)) => Some((v, true)),
            None => var("OTEL_EXPORTER_OTLP_ENDPOINT").map(|v| (v, false)),
        };
        let protocol = first(&[
            "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL",
            "OTEL_EXPORTER_OTLP_PROTOCOL",
        ])
        .and_then(|(name, v)| {
            let p = OtlpProtocol::parse(&v);
            if p.is_none() {
                tracing::warn!(variable = name, value = %v, "unsupported OTLP protocol (grpc or http/protobuf); using grpc");
            }
            p
        });
        let headers = first(&[
            "OTEL_EXPORTER_OTLP_TRACES_HEADERS",
            "OTEL_EXPORTER_OTLP_HEADERS",
        ])
        .map(|(_, v)| {
            v.split(',')
                .filter_map(|kv| kv.split_once('='))
                .map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned()))
                .collect()
        })
        .unwrap_or_default();
        let sampler = var("OTEL_TRACES_SAMPLER").unwrap_or_default();
        let ratio = match sampler.as_str() {
            "traceidratio" | "parentbased_traceidratio" => var("OTEL_TRACES_SAMPLER_ARG")
                .and_then(|v| v.parse::<f64>().ok())
                .filter(|r| (0.0..=1.0).contains(r)),
            "always_on" | "parentbased_always_on" => Some(1.0),
            "always_off" | "parentbased_always_off" => Some(0.0),
            _ => None,
        };
        let number = |name: &str| {
            var(name).and_then(|v| match v.parse::<u64>() {
                Ok(n) => Some(n),
                Err(_) => {
                    tracing::warn!(variable = name, value = %v, "not a number; ignored");
                    None
                }
            })
        };
        Env {
            endpoint,
            protocol,
            headers,
            ratio,
            disabled: var("OTEL_SDK_DISABLED").is_some_and(|v| v.eq_ignore_ascii_case("true")),
            bsp: [
                number("OTEL_BSP_SCHEDULE_DELAY"),
                number("OTEL_BSP_MAX_QUEUE_SIZE"),
                number("OTEL_BSP_MAX_EXPORT_BATCH_SIZE"),
                number("OTEL_BSP_EXPORT_TIMEOUT"),
            ],
        }
    }
}

/// The fraction as a threshold for a trace id's low 63 bits.
fn threshold(fraction: f64) -> u64 {
    (fraction.clamp(0.0, 1.0) * (1u64 << 63) as f64) as u64
}

/// A non-zero random span id.
fn random_u64() -> u64 {
    fastrand::u64(1..)
}

/// Whether a new trace is sampled: its id's low 63 bits below `threshold`
/// (as the SDK's `TraceIdRatioBased`).
fn sampled(trace_id: u128, threshold: &AtomicU64) -> bool {
    (trace_id as u64 & (u64::MAX >> 1)) < threshold.load(Ordering::Relaxed)
}

impl Tracer {
    /// A tracer for `node`'s proxy, off until [`Tracer::configure`] gives
    /// it somewhere to export (or the environment does).
    pub fn new(node: &str, env: Env) -> Tracer {
        let [delay, queue, batch, timeout] = env.bsp;
        let max_queue = queue.map_or(2048, |n| n.clamp(1, 1 << 20) as usize);
        let limits = Limits {
            max_queue,
            batch: batch.map_or(512, |n| n.clamp(1, max_queue as u64) as usize),
            delay: Duration::from_millis(delay.map_or(1000, |n| n.clamp(10, 60_000))),
            timeout: Duration::from_millis(timeout.map_or(10_000, |n| n.clamp(100, 60_000))),
        };
        let tracer = Tracer {
            node: node.to_owned(),
            on: AtomicBool::new(false),
            new_traces: AtomicU64::new(0),
            connections: AtomicU64::new(0),
            queue: Mutex::new(Vec::new()),
            wake: Notify::new(),
            limits,
            export: watch::channel(None).0,
            env,
            dropped: AtomicU64::new(0),
            exported: AtomicU64::new(0),
            export_failures: AtomicU64::new(0),
        };
        tracer.configure(None);
        tracer
    }

    /// Applies the mesh's telemetry settings (`None`: only the
    /// environment's): the sampling ratios at once, the receiver for the
    /// next export.
    pub fn configure(&self, telemetry: Option<&weft_model::Telemetry>) {
        let tracing = telemetry.and_then(|t| t.tracing.as_ref());
        let protocol = tracing
            .and_then(|t| t.protocol)
            .or(self.env.protocol)
            .unwrap_or(OtlpProtocol::Grpc);
        let endpoint = match (
            tracing.and_then(|t| t.endpoint.as_ref()),
            &self.env.endpoint,
        ) {
            (Some(e), _) => Some(signal_url(e.as_str(), protocol, false)),
            (None, Some((e, whole))) => Some(signal_url(e, protocol, *whole)),
            (None, None) => None,
        };
        let export = endpoint.filter(|_| !self.env.disabled).map(|endpoint| {
            let mut headers = self.env.headers.clone();
            if let Some(t) = tracing {
                headers.extend(t.headers.clone());
            }
            Export {
                endpoint,
                protocol,
                headers,
                timeout: self.limits.timeout,
            }
        });
        let ratio = match tracing {
            Some(t) => t.sampling_percent.fraction(),
            None => self.env.ratio.unwrap_or(0.01),
        };
        let connections = tracing.map_or(0.0, |t| t.connection_sampling_percent.fraction());
        self.new_traces.store(threshold(ratio), Ordering::Relaxed);
        self.connections
            .store(threshold(connections), Ordering::Relaxed);
        self.on.store(export.is_some(), Ordering::Release);
        self.export.send_if_modified(|current| {
            let changed = *current != export;
            if changed {
                tracing::info!(endpoint = ?export.as_ref().map(|e| &e.endpoint),
                    protocol = ?export.as_ref().map(|e| e.protocol.as_str()),
                    sampling = ratio, connection_sampling = connections, "trace export settings");
                *current = export;
            }
            changed
        });
    }

    /// Whether spans are made at all (a receiver is configured).
    pub fn is_on(&self) -> bool {
        self.on.load(Ordering::Relaxed)
    }

    /// The trace decision for a request arriving with `headers`, which are
    /// rewritten for the request sent on:
    /// - a sampled `traceparent`: a span, child of the caller's, and the
    ///   request goes on with this span as its parent;
    /// - an unsampled one: no span, headers unchanged;
    /// - none (or an invalid one): a new trace, sampled by the ratio; the
    ///   request goes on with its `traceparent` either way, so the proxies
    ///   after this one follow the decision.
    pub fn start(&self, headers: &mut HeaderMap) -> Option<Span> {
        if !self.is_on() {
            return None;
        }
        let parent = headers
            .get(context::TRACEPARENT)
            .and_then(|v| context::parse(v.as_bytes()));
        let span = match parent {
            Some(p) if !p.sampled => return None,
            Some(p) => Span {
                trace_id: p.trace_id,
                span_id: random_u64(),
                parent: p.span_id,
                remote_parent: true,
                start: SystemTime::now(),
                trace_state: headers.get(context::TRACESTATE).cloned(),
            },
            None => {
                let trace_id = fastrand::u128(1..);
                headers.remove(context::TRACESTATE);
                let sampled = sampled(trace_id, &self.new_traces);
                if !sampled {
                    headers.insert(
                        context::TRACEPARENT,
                        context::format(trace_id, random_u64(), false),
                    );
                    return None;
                }
                Span {
                    trace_id,
                    span_id: random_u64(),
                    parent: 0,
                    remote_parent: false,
                    start: SystemTime::now(),
                    trace_state: None,
                }
            }
        };
        headers.insert(context::TRACEPARENT, span.traceparent());
        Some(span)
    }

    /// A span for a new L4 connection, when connections are sampled.
    pub fn connection(&self) -> Option<Span> {
        if !self.is_on() {
            return None;
        }
        let trace_id = fastrand::u128(1..);
        let sampled = sampled(trace_id, &self.connections);
        sampled.then(|| Span {
            trace_id,
            span_id: random_u64(),
            parent: 0,
            remote_parent: false,
            start: SystemTime::now(),
            trace_state: None,
        })
    }

    /// Queues a finished span for export; dropped (and counted) when the
    /// queue is full.
    pub fn finish(&self, record: Record) {
        let mut queue = self.queue.lock().unwrap_or_else(|p| p.into_inner());
        if queue.len() >= self.limits.max_queue {
            drop(queue);
            self.dropped.fetch_add(1, Ordering::Relaxed);
            return;
        }
        queue.push(record);
        let full = queue.len() == self.limits.batch;
        drop(queue);
        if full {
            self.wake.notify_one();
        }
    }

    /// The node this proxy serves.
    pub fn node(&self) -> &str {
        &self.node
    }

    /// The counters, as Prometheus text.
    pub fn render(&self, out: &mut String) {
        crate::metrics::render_counters(
            out,
            &[
                (
                    "weft_trace_spans_exported_total",
                    "Spans the OTLP receiver accepted",
                    self.exported.load(Ordering::Relaxed),
                ),
                (
                    "weft_trace_spans_dropped_total",
                    "Spans dropped: the export queue was full or their export failed",
                    self.dropped.load(Ordering::Relaxed),
                ),
                (
                    "weft_trace_export_failures_total",
                    "OTLP exports that failed or timed out",
                    self.export_failures.load(Ordering::Relaxed),
                ),
            ],
        );
    }
}

/// The URL spans are sent to: for gRPC the endpoint as given; for HTTP a
/// base URL gets `/v1/traces` (a signal-specific one is used as is).
fn signal_url(endpoint: &str, protocol: OtlpProtocol, whole: bool) -> String {
    match protocol {
        OtlpProtocol::HttpProtobuf if !whole => {
            format!("{}/v1/traces", endpoint.trim_end_matches('/'))
        }
        _ => endpoint.to_owned(),
    }
}

/// An open span.
#[derive(Debug, Clone)]
pub struct Span {
    /// Its trace.
    pub trace_id: u128,
    /// Its id.
    pub span_id: u64,
    /// Its parent's id (0: a root span).
    pub parent: u64,
    /// Whether the parent is in another process.
    pub remote_parent: bool,
    /// When it began.
    pub start: SystemTime,
    /// The caller's `tracestate`, kept with the trace.
    pub trace_state: Option<http::HeaderValue>,
}

impl Span {
    /// A child span in this process, beginning now.
    pub fn child(&self) -> Span {
        Span {
            trace_id: self.trace_id,
            span_id: random_u64(),
            parent: self.span_id,
            remote_parent: false,
            start: SystemTime::now(),
            trace_state: self.trace_state.clone(),
        }
    }

    /// The `traceparent` that makes this span the parent.
    pub fn traceparent(&self) -> http::HeaderValue {
        context::format(self.trace_id, self.span_id, true)
    }

    /// The finished span.
    pub fn end(
        self,
        kind: SpanKind,
        name: impl Into<Cow<'static, str>>,
        attributes: Vec<KeyValue>,
        status: Status,
    ) -> Record {
        Record {
            span: self,
            kind,
            name: name.into(),
            end: SystemTime::now(),
            attributes,
            status,
        }
    }
}

/// A finished span, waiting for export.
#[derive(Debug)]
pub struct Record {
    span: Span,
    kind: SpanKind,
    name: Cow<'static, str>,
    end: SystemTime,
    attributes: Vec<KeyValue>,
    status: Status,
}

/// A request span whose attributes are known except what the end of the
/// response tells (the gRPC status): finished when the response body
/// ends or is dropped.
#[derive(Debug)]
pub struct Pending {
    /// The tracer it is finished into.
    pub tracer: Arc<Tracer>,
    /// The span.
    pub span: Span,
    /// Its kind.
    pub kind: SpanKind,
    /// Its name.
    pub name: String,
    /// Its attributes so far.
    pub attributes: Vec<KeyValue>,
    /// The response status (`0`: none came).
    pub status: u16,
    /// The gRPC status from the response head (trailers-only), if any.
    pub grpc_status: Option<i64>,
    /// Whether the request is gRPC (its status decides the span's).
    pub grpc: bool,
    /// Why it failed before any response, if it did.
    pub error: Option<String>,
}

impl Pending {
    /// Ends the span now, with `grpc_status` from the trailers if they
    /// came.
    pub fn end(mut self, trailers_grpc_status: Option<i64>) {
        let grpc_status = trailers_grpc_status.or(self.grpc_status);
        if let Some(code) = grpc_status {
            self.attributes
                .push(KeyValue::new("rpc.grpc.status_code", code));
        }
        // Client spans fail on 4xx and 5xx, server spans on 5xx (semantic
        // conventions); gRPC by its status.
        let failed_at = if self.kind == SpanKind::Client {
            400
        } else {
            500
        };
        let status = if let Some(e) = self.error.take() {
            Status::error(e)
        } else if self.grpc {
            match grpc_status {
                Some(0) => Status::Unset,
                Some(code) => Status::error(format!("gRPC status {code}")),
                None if self.status >= 400 => Status::error(format!("HTTP {}", self.status)),
                None => Status::error("no gRPC status"),
            }
        } else if self.status >= failed_at {
            Status::error(format!("HTTP {}", self.status))
        } else {
            Status::Unset
        };
        let record = self.span.end(
            self.kind.clone(),
            std::mem::take(&mut self.name),
            std::mem::take(&mut self.attributes),
            status,
        );
        self.tracer.finish(record);
    }
}

#[cfg(test)]
mod tests;
