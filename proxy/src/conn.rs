//! The connection context: one per proxied connection (a captured TCP
//! connection, or an HBONE stream at its destination), created when it is
//! accepted and carried through every step of the pipeline. Steps fill in
//! what they learn (labels, the principal) and say how it ended; dropping
//! the context records it once, however the connection ended: the active
//! gauge, the failure counter or the open/close counters, and the access
//! log line. A step that returns early cannot forget to count.

use std::io;
use std::net::{SocketAddr, SocketAddrV4};
use std::sync::Arc;
use std::sync::atomic::Ordering;

use tokio::sync::mpsc;
use tokio::time::Instant;

use crate::balance::InUse;
use crate::metrics::{ConnCounters, ConnLabels, Direction, Failure};
use crate::relay::Moved;
use crate::state::Shared;
use opentelemetry::KeyValue;
use opentelemetry::trace::{SpanKind, Status};

/// How a connection ended, as far as the steps told.
#[derive(Debug)]
enum Outcome {
    /// No step finished it (a task that was cancelled, or a connection
    /// without a usable destination).
    Unfinished,
    /// Refused before any byte was relayed.
    Refused(Failure),
    /// Relayed; an error ended it early.
    Relayed { moved: Moved, error: Option<String> },
}

/// One proxied connection's context.
#[derive(Debug)]
pub struct Conn {
    /// The proxy's shared view.
    pub shared: Arc<Shared>,
    /// The TCP peer that opened it (the pod, or the source node for HBONE).
    pub peer: SocketAddr,
    /// The destination it asked for (the original destination, or the
    /// CONNECT target).
    pub orig: SocketAddrV4,
    /// What the metrics and the access log say of it.
    pub labels: ConnLabels,
    /// The service endpoint it was balanced to: counted as open while the
    /// context lives; a failed connect counts against its health.
    pub endpoint: Option<InUse>,
    started: Instant,
    /// Its span, when connections are sampled.
    span: Option<crate::telemetry::Span>,
    counters: Option<Arc<ConnCounters>>,
    outcome: Outcome,
    /// Shutdown waits while any connection holds one.
    _alive: mpsc::Sender<()>,
}

impl Conn {
    /// A connection accepted in `direction`, counted as active from now.
    pub fn new(
        shared: Arc<Shared>,
        direction: Direction,
        peer: SocketAddr,
        orig: SocketAddrV4,
        alive: mpsc::Sender<()>,
    ) -> Conn {
        shared.metrics.open(direction);
        let span = shared.tracer.connection();
        Conn {
            shared,
            peer,
            orig,
            labels: ConnLabels {
                direction,
                source: "unknown".into(),
                destination: "unknown".into(),
                service: String::new(),
                source_principal: String::new(),
                mtls: false,
            },
            endpoint: None,
            started: Instant::now(),
            span,
            counters: None,
            outcome: Outcome::Unfinished,
            _alive: alive,
        }
    }

    /// Which listener took it.
    pub fn direction(&self) -> Direction {
        self.labels.direction
    }

    /// The endpoint failed it (a tunnel the destination could not
    /// complete): counted against the endpoint's health.
    pub fn endpoint_failed(&mut self) {
        if let Some(ep) = self.endpoint.take()
            && ep.failed()
        {
            self.shared.metrics.ejected();
        }
    }

    /// It was refused for `why` (counted when the context drops).
    pub fn refuse(&mut self, why: Failure) {
        self.outcome = Outcome::Refused(why);
    }

    /// It is connected and starts relaying: counted as opened under its
    /// labels, whose counters the relay adds bytes to.
    pub fn relaying(&mut self) -> Arc<ConnCounters> {
        let counters = self.shared.metrics.conn(self.labels.clone());
        counters.opened.fetch_add(1, Ordering::Relaxed);
        self.counters = Some(counters.clone());
        counters
    }

    /// The relay ended.
    pub fn relayed(&mut self, result: io::Result<Moved>) {
        self.outcome = match result {
            Ok(moved) => Outcome::Relayed { moved, error: None },
            Err(e) => {
                tracing::debug!(peer = %self.peer, orig = %self.orig, error = %e,
                    "relay ended with an error");
                Outcome::Relayed {
                    moved: Moved::default(),
                    error: Some(e.to_string()),
                }
            }
        };
    }
}

impl Conn {
    /// Writes its access log line, when connection lines are on.
    fn log(&self) {
        let access = &self.shared.access;
        if !access.connections() || matches!(self.outcome, Outcome::Unfinished) || !access.admit() {
            return;
        }
        let l = &self.labels;
        let (moved, reason, error) = match &self.outcome {
            Outcome::Refused(why) => (Moved::default(), Some(why.as_str()), None),
            Outcome::Relayed { moved, error } => (*moved, None, error.as_deref()),
            Outcome::Unfinished => (Moved::default(), None, None),
        };
        let line = serde_json::json!({
            "time": crate::telemetry::access::timestamp(),
            "kind": "connection",
            "node": self.shared.tracer.node(),
            "direction": l.direction.as_str(),
            "peer": self.peer.to_string(),
            "target": self.orig.to_string(),
            "source_workload": l.source,
            "source_principal": (!l.source_principal.is_empty()).then_some(&l.source_principal),
            "destination_workload": l.destination,
            "destination_service": (!l.service.is_empty()).then_some(&l.service),
            "security": if l.mtls { "mutual_tls" } else { "none" },
            "sent_bytes": moved.sent,
            "received_bytes": moved.received,
            "duration_ms": self.started.elapsed().as_secs_f64() * 1e3,
            "refused": reason,
            "error": error,
            "trace_id": self.span.as_ref().map(|s| format!("{:032x}", s.trace_id)),
            "span_id": self.span.as_ref().map(|s| format!("{:016x}", s.span_id)),
        });
        access.write(line.to_string());
    }

    /// Ends its span, if sampled: from accept to close, with the bytes
    /// each way and how it ended.
    fn end_span(&mut self) {
        let Some(span) = self.span.take() else {
            return;
        };
        let l = &self.labels;
        let (moved, reason) = match &self.outcome {
            Outcome::Unfinished => (Moved::default(), "unfinished".to_owned()),
            Outcome::Refused(why) => (Moved::default(), format!("refused: {}", why.as_str())),
            Outcome::Relayed { moved, error } => (
                *moved,
                error
                    .as_ref()
                    .map_or_else(|| "closed".to_owned(), |e| format!("error: {e}")),
            ),
        };
        let mut a = vec![
            KeyValue::new("network.transport", "tcp"),
            KeyValue::new("network.peer.address", self.peer.ip().to_string()),
            KeyValue::new("network.peer.port", i64::from(self.peer.port())),
            KeyValue::new("server.address", self.orig.ip().to_string()),
            KeyValue::new("server.port", i64::from(self.orig.port())),
            KeyValue::new("weft.direction", l.direction.as_str()),
            KeyValue::new("weft.source", l.source.clone()),
            KeyValue::new("weft.destination", l.destination.clone()),
            KeyValue::new(
                "weft.connection.security",
                if l.mtls { "mutual_tls" } else { "none" },
            ),
            KeyValue::new("weft.tcp.sent_bytes", moved.sent as i64),
            KeyValue::new("weft.tcp.received_bytes", moved.received as i64),
            KeyValue::new("weft.close_reason", reason.clone()),
            KeyValue::new("weft.node", self.shared.tracer.node().to_owned()),
        ];
        if !l.service.is_empty() {
            a.push(KeyValue::new("weft.destination.service", l.service.clone()));
        }
        if !l.source_principal.is_empty() {
            a.push(KeyValue::new(
                "weft.source.principal",
                l.source_principal.clone(),
            ));
        }
        let (kind, name) = match l.direction {
            Direction::Outbound => (SpanKind::Client, format!("TCP {}", self.orig)),
            Direction::Inbound => (SpanKind::Server, format!("TCP {}", self.orig)),
        };
        let status = match &self.outcome {
            Outcome::Relayed { error: None, .. } => Status::Unset,
            _ => Status::error(reason),
        };
        self.shared.tracer.finish(span.end(kind, name, a, status));
    }
}

impl Drop for Conn {
    fn drop(&mut self) {
        self.log();
        self.end_span();
        let metrics = &self.shared.metrics;
        let direction = self.labels.direction;
        metrics.close(direction);
        if let Some(c) = &self.counters {
            c.closed.fetch_add(1, Ordering::Relaxed);
        }
        if let Some(ep) = self.endpoint.take() {
            let ejected = match &self.outcome {
                Outcome::Refused(Failure::Connect) => ep.failed(),
                Outcome::Relayed { .. } => {
                    ep.succeeded();
                    false
                }
                _ => false,
            };
            if ejected {
                metrics.ejected();
            }
        }
        match &self.outcome {
            Outcome::Unfinished => {}
            Outcome::Refused(why) => metrics.failed(direction, *why),
            Outcome::Relayed { moved, error } => {
                if error.is_some() {
                    metrics.failed(direction, Failure::Relay);
                }
                // Tunnelled connections at their destination are logged at
                // info (the caller's identity was authenticated here); the
                // rest at debug, so a busy node's log stays readable.
                let l = &self.labels;
                let duration_ms = self.started.elapsed().as_millis() as u64;
                let error = error.as_deref().unwrap_or("");
                macro_rules! access {
                    ($level:expr) => {
                        tracing::event!(
                            target: "weft::access",
                            $level,
                            direction = direction.as_str(),
                            security = if l.mtls { "mutual_tls" } else { "none" },
                            source_principal = %l.source_principal,
                            source = %l.source,
                            destination = %l.destination,
                            service = %l.service,
                            target = %self.orig,
                            sent = moved.sent,
                            received = moved.received,
                            duration_ms,
                            error,
                            "connection closed"
                        )
                    };
                }
                if l.mtls && direction == Direction::Inbound {
                    access!(tracing::Level::INFO);
                } else {
                    access!(tracing::Level::DEBUG);
                }
            }
        }
    }
}
