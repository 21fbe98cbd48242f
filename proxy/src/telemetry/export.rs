//! The export task: takes finished spans off the queue in batches and
//! sends them with the OpenTelemetry SDK's OTLP exporter, rebuilt when
//! the receiver's settings change. An export that fails or times out
//! drops its batch (counted), and so does every batch until a backoff
//! (1 s, doubling to 30 s) has passed: a receiver that is down costs the
//! proxy no encoding, only the count.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use opentelemetry::trace::{SpanContext, SpanId, TraceFlags, TraceId, TraceState};
use opentelemetry::{InstrumentationScope, KeyValue};
use opentelemetry_otlp::{WithExportConfig, WithHttpConfig, WithTonicConfig};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::trace::{SpanData, SpanEvents, SpanExporter, SpanLinks};
use weft_model::OtlpProtocol;

use super::{Export, Record, Tracer};

/// Runs the export until the process ends.
pub async fn run(tracer: Arc<Tracer>) {
    let mut settings = tracer.export.subscribe();
    let resource = Resource::builder_empty()
        .with_service_name("weft-proxy")
        .with_attributes([
            KeyValue::new("service.version", env!("CARGO_PKG_VERSION")),
            KeyValue::new("service.instance.id", tracer.node.clone()),
            KeyValue::new("k8s.node.name", tracer.node.clone()),
        ])
        .build();
    let scope = InstrumentationScope::builder("weft-proxy")
        .with_version(env!("CARGO_PKG_VERSION"))
        .build();
    let mut exporter = None;
    let mut current: Option<Export> = None;
    let mut backoff = Backoff::default();
    let mut every = tokio::time::interval(tracer.limits.delay);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let wanted = settings.borrow_and_update().clone();
        if wanted != current {
            exporter = wanted.as_ref().and_then(|e| match build(e, &resource) {
                Ok(x) => Some(x),
                Err(why) => {
                    tracing::error!(endpoint = %e.endpoint, error = %why, "trace exporter could not be built; spans are dropped");
                    None
                }
            });
            current = wanted;
            backoff = Backoff::default();
        }
        tokio::select! {
            changed = settings.changed() => {
                if changed.is_err() {
                    return;
                }
                continue;
            }
            () = tracer.wake.notified() => {}
            _ = every.tick() => {}
        }
        let (batch, more): (Vec<Record>, bool) = {
            let mut queue = tracer.queue.lock().unwrap_or_else(|p| p.into_inner());
            let n = queue.len().min(tracer.limits.batch);
            let batch = queue.drain(..n).collect();
            (batch, queue.len() >= tracer.limits.batch)
        };
        // A full batch is still waiting: take it next, without waiting.
        if more {
            tracer.wake.notify_one();
        }
        if batch.is_empty() {
            continue;
        }
        let n = batch.len() as u64;
        let Some(exporter) = exporter.as_ref().filter(|_| backoff.passed()) else {
            tracer.dropped.fetch_add(n, Ordering::Relaxed);
            continue;
        };
        let spans = batch.into_iter().map(|r| span_data(r, &scope)).collect();
        let outcome = tokio::time::timeout(
            tracer.limits.timeout + Duration::from_secs(1),
            exporter.export(spans),
        )
        .await;
        match outcome {
            Ok(Ok(())) => {
                tracer.exported.fetch_add(n, Ordering::Relaxed);
                backoff = Backoff::default();
            }
            failed => {
                backoff.failed();
                let failures = tracer.export_failures.fetch_add(1, Ordering::Relaxed);
                tracer.dropped.fetch_add(n, Ordering::Relaxed);
                // Every failure counts; the log says the first and then
                // one in a hundred.
                if failures.is_multiple_of(100) {
                    let why = match failed {
                        Ok(Err(e)) => e.to_string(),
                        _ => "timed out".to_owned(),
                    };
                    tracing::warn!(endpoint = ?current.as_ref().map(|e| &e.endpoint), error = %why,
                        dropped = n, failures = failures + 1, "trace export failed; its spans are dropped");
                }
            }
        }
    }
}

/// When the next export may be tried after failures.
#[derive(Debug, Default)]
struct Backoff {
    until: Option<tokio::time::Instant>,
    wait: Duration,
}

impl Backoff {
    /// Whether an export may be tried now.
    fn passed(&self) -> bool {
        self.until
            .is_none_or(|until| tokio::time::Instant::now() >= until)
    }

    /// An export failed: wait 1 s, then twice as long each time, up to
    /// 30 s.
    fn failed(&mut self) {
        self.wait = (self.wait * 2).clamp(Duration::from_secs(1), Duration::from_secs(30));
        self.until = Some(tokio::time::Instant::now() + self.wait);
    }
}

/// The SDK's OTLP exporter for `e`.
fn build(e: &Export, resource: &Resource) -> Result<opentelemetry_otlp::SpanExporter, String> {
    let mut exporter = match e.protocol {
        OtlpProtocol::Grpc => {
            let mut metadata = tonic::metadata::MetadataMap::new();
            for (k, v) in &e.headers {
                let key =
                    tonic::metadata::MetadataKey::from_bytes(k.to_ascii_lowercase().as_bytes())
                        .map_err(|_| format!("header name `{k}` is not valid"))?;
                let value = v
                    .parse()
                    .map_err(|_| format!("header `{k}` has a value that is not valid"))?;
                metadata.insert(key, value);
            }
            opentelemetry_otlp::SpanExporter::builder()
                .with_tonic()
                .with_protocol(opentelemetry_otlp::Protocol::Grpc)
                .with_endpoint(e.endpoint.clone())
                .with_timeout(e.timeout)
                .with_metadata(metadata)
                .build()
        }
        OtlpProtocol::HttpProtobuf => opentelemetry_otlp::SpanExporter::builder()
            .with_http()
            .with_protocol(opentelemetry_otlp::Protocol::HttpBinary)
            .with_endpoint(e.endpoint.clone())
            .with_timeout(e.timeout)
            .with_headers(e.headers.clone().into_iter().collect::<HashMap<_, _>>())
            .build(),
    }
    .map_err(|err| err.to_string())?;
    exporter.set_resource(resource);
    Ok(exporter)
}

/// A finished span as the SDK exports it.
fn span_data(r: Record, scope: &InstrumentationScope) -> SpanData {
    let trace_state = r
        .span
        .trace_state
        .as_ref()
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<TraceState>().ok())
        .unwrap_or_default();
    SpanData {
        span_context: SpanContext::new(
            TraceId::from(r.span.trace_id),
            SpanId::from(r.span.span_id),
            TraceFlags::SAMPLED,
            false,
            trace_state,
        ),
        parent_span_id: SpanId::from(r.span.parent),
        parent_span_is_remote: r.span.remote_parent,
        span_kind: r.kind,
        name: r.name,
        start_time: r.span.start,
        end_time: r.end,
        attributes: r.attributes,
        dropped_attributes_count: 0,
        events: SpanEvents::default(),
        links: SpanLinks::default(),
        status: r.status,
        instrumentation_scope: scope.clone(),
    }
}
