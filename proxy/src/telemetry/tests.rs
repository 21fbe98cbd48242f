use super::*;

fn on(percent: f64) -> Tracer {
    let t = Tracer::new("n1", Env::default());
    t.configure(Some(&weft_model::Telemetry {
        namespace: "weft-system".into(),
        name: "mesh".into(),
        tracing: Some(weft_model::Tracing {
            endpoint: Some(weft_model::Endpoint::new("http://127.0.0.1:4317").unwrap()),
            sampling_percent: weft_model::Percent::new(percent).unwrap(),
            ..Default::default()
        }),
        access_logs: Default::default(),
    }));
    t
}

fn headers(traceparent: &str) -> HeaderMap {
    let mut h = HeaderMap::new();
    h.insert(context::TRACEPARENT, traceparent.parse().unwrap());
    h.insert(context::TRACESTATE, "vendor=x".parse().unwrap());
    h
}

#[test]
fn a_sampled_traceparent_is_continued_and_handed_on_with_the_new_span_as_parent() {
    let t = on(0.0);
    let mut h = headers("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01");
    let span = t
        .start(&mut h)
        .expect("a sampled parent is followed at any ratio");
    assert_eq!(span.trace_id, 0x4bf92f3577b34da6a3ce929d0e0e4736);
    assert_eq!(span.parent, 0x00f067aa0ba902b7);
    assert!(span.remote_parent);
    let sent = context::parse(h[context::TRACEPARENT].as_bytes()).unwrap();
    assert_eq!(
        (sent.trace_id, sent.span_id, sent.sampled),
        (span.trace_id, span.span_id, true)
    );
    assert_eq!(h[context::TRACESTATE], "vendor=x");
    let child = span.child();
    assert_eq!(
        (child.trace_id, child.parent),
        (span.trace_id, span.span_id)
    );
    assert_ne!(child.span_id, span.span_id);
}

#[test]
fn an_unsampled_traceparent_makes_no_span_and_passes_unchanged() {
    let t = on(100.0);
    let value = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00";
    let mut h = headers(value);
    assert!(t.start(&mut h).is_none());
    assert_eq!(h[context::TRACEPARENT], value);
    assert_eq!(h[context::TRACESTATE], "vendor=x");
}

#[test]
fn a_request_without_a_traceparent_starts_a_trace_by_the_ratio_and_says_so_downstream() {
    let all = on(100.0);
    let mut h = HeaderMap::new();
    let span = all.start(&mut h).expect("100% samples every new trace");
    assert_eq!(span.parent, 0);
    assert!(
        context::parse(h[context::TRACEPARENT].as_bytes())
            .unwrap()
            .sampled
    );
    let none = on(0.0);
    let mut h = headers("garbage");
    assert!(none.start(&mut h).is_none());
    let sent =
        context::parse(h[context::TRACEPARENT].as_bytes()).expect("the decision is handed on");
    assert!(!sent.sampled);
    assert!(
        h.get(context::TRACESTATE).is_none(),
        "an invalid traceparent's tracestate is dropped"
    );
    let some = on(30.0);
    let sampled = (0..10_000)
        .filter(|_| some.start(&mut HeaderMap::new()).is_some())
        .count();
    assert!(
        (2_500..3_500).contains(&sampled),
        "30% of 10,000 new traces: {sampled}"
    );
}

#[test]
fn without_a_receiver_nothing_is_traced_and_headers_are_untouched() {
    let t = Tracer::new("n1", Env::default());
    assert!(!t.is_on());
    let mut h = HeaderMap::new();
    assert!(t.start(&mut h).is_none());
    assert!(h.is_empty());
    assert!(t.connection().is_none());
}

#[test]
fn the_environment_gives_the_receiver_protocol_headers_and_ratio_when_the_mesh_gives_none() {
    let vars: std::collections::HashMap<&str, &str> = [
        ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://collector:4318/"),
        ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf"),
        (
            "OTEL_EXPORTER_OTLP_HEADERS",
            "x-tenant=a, authorization=Bearer t",
        ),
        ("OTEL_TRACES_SAMPLER", "parentbased_traceidratio"),
        ("OTEL_TRACES_SAMPLER_ARG", "1.0"),
    ]
    .into();
    let env = Env::from_vars(|k| vars.get(k).map(|v| (*v).to_owned()));
    let t = Tracer::new("n1", env);
    let export = t
        .export
        .borrow()
        .clone()
        .expect("the environment names a receiver");
    assert_eq!(export.endpoint, "http://collector:4318/v1/traces");
    assert_eq!(export.protocol, OtlpProtocol::HttpProtobuf);
    assert_eq!(export.headers["authorization"], "Bearer t");
    assert!(
        t.start(&mut HeaderMap::new()).is_some(),
        "ratio 1.0 from OTEL_TRACES_SAMPLER_ARG"
    );
}

#[test]
fn a_full_queue_drops_and_counts_instead_of_growing() {
    let vars: std::collections::HashMap<&str, &str> = [
        ("OTEL_BSP_MAX_QUEUE_SIZE", "4"),
        ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4317"),
    ]
    .into();
    let t = Tracer::new(
        "n1",
        Env::from_vars(|k| vars.get(k).map(|v| (*v).to_owned())),
    );
    for _ in 0..10 {
        let span = t.start(&mut headers(
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        ));
        t.finish(
            span.unwrap()
                .end(SpanKind::Client, "GET", Vec::new(), Status::Unset),
        );
    }
    assert_eq!(t.queue.lock().unwrap().len(), 4);
    assert_eq!(t.dropped.load(Ordering::Relaxed), 6);
}
