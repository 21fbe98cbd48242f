//! Traces from the node proxies, in the lab, read back from the lab's
//! independent OTLP receiver (the official opentelemetry-proto package and
//! grpcio): a request's `traceparent` is continued through both node
//! proxies and handed to the application with the destination proxy's
//! span as parent; a request without one starts a trace by the sampling
//! ratio of a Telemetry object applied with `weft apply`; an unsampled one
//! passes unchanged and makes no span; gRPC calls carry `rpc.*` and their
//! status; a sampled L4 connection gives a span with its byte counts; a
//! receiver that is down or slow costs requests nothing and its spans are
//! counted as dropped.

mod support;

use std::time::Duration;

use support::{LabGuard, apply_ok, in_pod, labs, proxy_metric, success_stdout, up_with_args, weft};
use weft_lab::StoredSpan;

/// echo-1 (node-1, the client's node) and echo-2 (node-2); `echo-v1` and
/// `echo-v2` front one each and say they speak HTTP and gRPC, so the
/// proxies handle them at L7 without a route.
const TOPOLOGY: &str = include_str!("../examples/lab/telemetry.yaml");

/// A lab whose proxies export to the lab's receiver.
fn up(tag: char) -> LabGuard {
    up_with_args(tag, TOPOLOGY, &[])
}

/// Applies a Telemetry object whose `spec.tracing` is `tracing` (YAML).
fn apply_tracing(lab: &LabGuard, tracing: &str) {
    apply_ok(
        lab,
        "telemetry.yaml",
        &format!(
            "apiVersion: weft.io/v1alpha1\nkind: Telemetry\n\
             metadata: {{name: mesh, namespace: default}}\nspec:\n  tracing: {tracing}\n"
        ),
    );
}

/// One HTTP request from default/client with `headers`: the echo's JSON
/// answer.
fn request(lab: &LabGuard, url: &str, headers: &[&str]) -> serde_json::Value {
    let answer = support::client_json(lab, url, 1, headers).remove(0);
    assert_eq!(answer["status"], 200, "{answer}");
    answer
}

/// The single `traceparent` the echo received.
fn seen_traceparent(answer: &serde_json::Value) -> String {
    let values = answer["body"]["headers"]["traceparent"]
        .as_array()
        .unwrap_or_else(|| panic!("the echo got no traceparent: {answer}"));
    assert_eq!(values.len(), 1, "{answer}");
    values[0].as_str().expect("a string").to_owned()
}

/// The spans of `trace_id` the receiver holds once there are `n`
/// (waiting up to 15 s for the proxies' batches).
fn spans_of(lab: &LabGuard, trace_id: &str, n: usize) -> Vec<StoredSpan> {
    let mut last = Vec::new();
    let found = weft_lab::wait_until(Duration::from_secs(15), Duration::from_millis(200), || {
        last = labs()
            .spans(&lab.name)
            .expect("reading the receiver's spans")
            .into_iter()
            .filter(|s| s.trace_id == trace_id)
            .collect();
        (last.len() >= n).then(|| last.clone())
    });
    let spans = found.unwrap_or_else(|| {
        panic!("expected {n} spans of trace {trace_id} within 15 s, the receiver holds {last:#?}")
    });
    assert_eq!(spans.len(), n, "exactly {n} spans: {spans:#?}");
    spans
}

fn one<'a>(spans: &'a [StoredSpan], kind: &str, node: &str) -> &'a StoredSpan {
    let found: Vec<&StoredSpan> = spans
        .iter()
        .filter(|s| s.kind == kind && s.resource["k8s.node.name"] == node)
        .collect();
    assert_eq!(found.len(), 1, "one {kind} span from {node}: {spans:#?}");
    found[0]
}

/// Asserts the attributes every request span of these tests has.
fn assert_http_attributes(s: &StoredSpan, path: &str) {
    assert_eq!(s.attr("http.request.method"), Some("GET"), "{s:#?}");
    assert_eq!(s.attr("url.path"), Some(path), "{s:#?}");
    assert_eq!(s.int("http.response.status_code"), Some(200), "{s:#?}");
    assert_eq!(s.attr("network.protocol.version"), Some("1.1"), "{s:#?}");
    assert_eq!(s.attr("weft.source.workload"), Some("client"), "{s:#?}");
    assert_eq!(s.attr("weft.source.namespace"), Some("default"), "{s:#?}");
    assert_eq!(
        s.attr("weft.source.principal"),
        Some("spiffe://cluster.local/ns/default/sa/client"),
        "{s:#?}"
    );
    assert!(s.int("server.port").is_some(), "{s:#?}");
    assert_eq!(s.resource["service.name"], "weft-proxy", "{s:#?}");
    assert!(s.resource.contains_key("service.version"), "{s:#?}");
    assert_eq!(s.status.code, "UNSET", "{s:#?}");
    assert!(s.end_ns >= s.start_ns, "{s:#?}");
}

#[test]
fn a_sampled_traceparent_is_continued_through_both_node_proxies_and_the_echo_sees_the_destination_span_as_parent()
 {
    let lab = up('t');
    for (url, dest_node, pod, trace) in [
        (
            "http://198.19.0.12/across",
            "node-2",
            "echo-2",
            "4bf92f3577b34da6a3ce929d0e0e4736",
        ),
        (
            "http://198.19.0.11/same",
            "node-1",
            "echo-1",
            "5bf92f3577b34da6a3ce929d0e0e4737",
        ),
    ] {
        let sent_parent = "00f067aa0ba902b7";
        let answer = request(
            &lab,
            url,
            &[
                &format!("traceparent: 00-{trace}-{sent_parent}-01"),
                "tracestate: vendor=x",
            ],
        );
        assert_eq!(answer["body"]["pod"], pod, "{answer}");
        let seen = seen_traceparent(&answer);
        let parts: Vec<&str> = seen.split('-').collect();
        assert_eq!(parts.len(), 4, "{seen}");
        assert_eq!(
            (parts[0], parts[1], parts[3]),
            ("00", trace, "01"),
            "{seen}"
        );
        assert_eq!(
            answer["body"]["headers"]["tracestate"][0], "vendor=x",
            "tracestate is passed on: {answer}"
        );

        let spans = spans_of(&lab, trace, 2);
        let client = one(&spans, "CLIENT", "node-1");
        let server = one(&spans, "SERVER", dest_node);
        // Parent and child: the application's span, the source proxy's
        // client span, the destination proxy's server span, the echo.
        assert_eq!(client.parent_span_id, sent_parent, "{client:#?}");
        assert_eq!(server.parent_span_id, client.span_id, "{spans:#?}");
        assert_eq!(
            parts[2], server.span_id,
            "the echo's parent is the destination proxy's span"
        );
        assert!(server.start_ns >= client.start_ns && server.end_ns <= client.end_ns);
        for s in [client, server] {
            let path = url.rsplit_once('/').map(|(_, p)| format!("/{p}")).unwrap();
            assert_http_attributes(s, &path);
            assert_eq!(s.trace_state, "vendor=x", "{s:#?}");
            assert_eq!(s.attr("weft.destination.workload"), Some(pod), "{s:#?}");
        }
        let service = if pod == "echo-2" {
            "default/echo-v2"
        } else {
            "default/echo-v1"
        };
        assert_eq!(client.attr("weft.destination.service"), Some(service));
        assert_eq!(client.attr("server.address"), url.split('/').nth(2));
        assert_eq!(
            server.attr("client.address"),
            Some("198.18.1.2"),
            "{server:#?}"
        );
        assert_eq!(client.attr("weft.node"), Some("node-1"));
        assert_eq!(server.attr("weft.node"), Some(dest_node));
    }
    // The waterfall shows both hops of the cross-node trace.
    let out = success_stdout(
        "weft lab traces",
        &weft(&["lab", "traces", "--name", lab.arg(), "--limit", "2"]),
    );
    assert!(
        out.contains("trace 4bf92f3577b34da6a3ce929d0e0e4736  2 spans"),
        "{out}"
    );
    assert!(out.contains("weft-proxy (node-2)"), "{out}");
}

#[test]
fn a_request_without_a_traceparent_starts_a_trace_and_an_unsampled_one_passes_unchanged_with_no_span()
 {
    let lab = up('u');
    // Every new trace sampled: a Telemetry object applied live (the
    // receiver stays the one the proxies were started with).
    apply_tracing(&lab, "{samplingPercent: 100}");
    let started = weft_lab::wait_until(Duration::from_secs(10), Duration::from_millis(200), || {
        let seen = seen_traceparent(&request(&lab, "http://198.19.0.12/new", &[]));
        seen.ends_with("-01").then_some(seen)
    })
    .expect("with samplingPercent 100 a request without traceparent starts a sampled trace");
    let trace = started.split('-').nth(1).expect("a trace id").to_owned();
    let spans = spans_of(&lab, &trace, 2);
    let client = one(&spans, "CLIENT", "node-1");
    assert_eq!(
        client.parent_span_id, "",
        "a new trace's first span is its root"
    );
    assert_eq!(
        one(&spans, "SERVER", "node-2").parent_span_id,
        client.span_id
    );

    let unsampled = "00-6bf92f3577b34da6a3ce929d0e0e4738-00f067aa0ba902b7-00";
    let answer = request(
        &lab,
        "http://198.19.0.12/unsampled",
        &[&format!("traceparent: {unsampled}")],
    );
    assert_eq!(seen_traceparent(&answer), unsampled, "passed on unchanged");
    // A sampled request after it: once its spans are in, the proxies have
    // exported everything before it too.
    let after = "7bf92f3577b34da6a3ce929d0e0e4739";
    request(
        &lab,
        "http://198.19.0.12/after",
        &[&format!("traceparent: 00-{after}-00f067aa0ba902b7-01")],
    );
    spans_of(&lab, after, 2);
    let spans = labs().spans(&lab.name).expect("spans");
    assert!(
        !spans
            .iter()
            .any(|s| s.trace_id == "6bf92f3577b34da6a3ce929d0e0e4738"),
        "an unsampled traceparent yields no span"
    );

    // The receiver's OTLP/HTTP port instead, changed live.
    apply_tracing(
        &lab,
        "{samplingPercent: 100, endpoint: \"http://198.18.0.250:4318\", protocol: http/protobuf}",
    );
    // Each request's spans come within a second or two; a request sent
    // before the change reached the proxies goes over gRPC.
    let over_http = (0..10).find_map(|_| {
        let seen = seen_traceparent(&request(&lab, "http://198.19.0.12/http", &[]));
        let trace = seen.split('-').nth(1).expect("a trace id").to_owned();
        let spans = spans_of(&lab, &trace, 2);
        spans
            .iter()
            .all(|s| s.transport == "http/protobuf")
            .then_some(trace)
    });
    assert!(
        over_http.is_some(),
        "spans arrive over OTLP/HTTP once the Telemetry object says so"
    );
}

#[test]
fn grpc_calls_give_rpc_attributes_and_their_status_and_a_sampled_tcp_connection_its_byte_counts() {
    let lab = up('g');
    apply_tracing(&lab, "{samplingPercent: 0, connectionSamplingPercent: 100}");
    let service = "gateway_api_conformance.echo_basic.grpcecho.GrpcEcho";
    for (method, status, trace) in [
        ("Echo", 0, "8bf92f3577b34da6a3ce929d0e0e473a"),
        ("EchoThree", 12, "9bf92f3577b34da6a3ce929d0e0e473b"),
    ] {
        let metadata = format!("traceparent: 00-{trace}-00f067aa0ba902b7-01");
        let cmd = [
            "weft",
            "lab",
            "app",
            "grpc",
            "198.19.0.12:7070",
            &format!("{service}/{method}"),
            "--json",
            "--timeout",
            "20",
            "--metadata",
            &metadata,
        ];
        // The call's own outcome is the echo's; the spans are checked.
        let _ = in_pod(&lab, "default/client", &cmd);
        let spans = spans_of(&lab, trace, 2);
        for s in [
            one(&spans, "CLIENT", "node-1"),
            one(&spans, "SERVER", "node-2"),
        ] {
            assert_eq!(s.attr("rpc.system"), Some("grpc"), "{s:#?}");
            assert_eq!(s.attr("rpc.service"), Some(service), "{s:#?}");
            assert_eq!(s.attr("rpc.method"), Some(method), "{s:#?}");
            assert_eq!(s.int("rpc.grpc.status_code"), Some(status), "{s:#?}");
            assert_eq!(s.attr("network.protocol.version"), Some("2"), "{s:#?}");
            assert_eq!(s.name, format!("{service}/{method}"), "{s:#?}");
            let code = if status == 0 { "UNSET" } else { "ERROR" };
            assert_eq!(s.status.code, code, "{s:#?}");
        }
    }

    // An L4 connection (sampling on): one span per proxy, with the bytes.
    let payload = "x".repeat(3000);
    tcp_echo(&lab, &payload);
    let found = weft_lab::wait_until(Duration::from_secs(15), Duration::from_millis(200), || {
        let spans = labs().spans(&lab.name).expect("spans");
        let tcp: Vec<StoredSpan> = spans
            .into_iter()
            .filter(|s| {
                s.attr("server.address") == Some("198.19.0.12")
                    && s.int("server.port") == Some(7000)
                    || s.attr("weft.direction") == Some("inbound")
                        && s.int("server.port") == Some(7000)
            })
            .collect();
        (tcp.len() >= 2).then_some(tcp)
    })
    .expect("a span of the TCP connection from each proxy");
    let out_span = found
        .iter()
        .find(|s| s.attr("weft.direction") == Some("outbound"))
        .expect("the source proxy's connection span");
    assert_eq!(out_span.kind, "CLIENT");
    assert_eq!(
        out_span.int("weft.tcp.sent_bytes"),
        Some(3000),
        "{out_span:#?}"
    );
    assert_eq!(
        out_span.int("weft.tcp.received_bytes"),
        Some(3000),
        "{out_span:#?}"
    );
    assert_eq!(
        out_span.attr("weft.close_reason"),
        Some("closed"),
        "{out_span:#?}"
    );
    let in_span = found
        .iter()
        .find(|s| s.attr("weft.direction") == Some("inbound"))
        .expect("the destination proxy's connection span");
    assert_eq!(in_span.kind, "SERVER");
    assert_eq!(in_span.resource["k8s.node.name"], "node-2");
    assert_eq!(
        in_span.attr("weft.source.principal"),
        Some("spiffe://cluster.local/ns/default/sa/client"),
        "the HBONE peer's identity: {in_span:#?}"
    );
    assert_eq!(
        in_span.int("weft.tcp.sent_bytes"),
        Some(3000),
        "{in_span:#?}"
    );
}

/// `n` requests with sampled traceparents: how many got 200.
fn sampled_requests(lab: &LabGuard, n: usize) -> u64 {
    plain_requests(
        lab,
        "http://198.19.0.12/",
        n,
        &["traceparent: 00-abf92f3577b34da6a3ce929d0e0e473c-00f067aa0ba902b7-01"],
    )
}

#[test]
fn with_the_receiver_stopped_or_slow_every_request_succeeds_and_the_spans_are_counted_as_dropped() {
    // Down: exports are refused at once.
    let lab = up('d');
    labs().stop_otlp(&lab.name).expect("stopping the receiver");
    assert_eq!(sampled_requests(&lab, 200), 200);
    let dropped = weft_lab::wait_until(Duration::from_secs(15), Duration::from_millis(200), || {
        let n = proxy_metric(&lab.name, "node-1", "weft_trace_spans_dropped_total");
        (n >= 200).then_some(n)
    });
    assert!(
        dropped.is_some(),
        "node-1 counts its 200 client spans as dropped"
    );
    assert!(proxy_metric(&lab.name, "node-1", "weft_trace_export_failures_total") >= 1);
    drop(lab);

    // Slow: every export waits 30 s, past the export timeout (10 s).
    let lab = up_with_args('s', TOPOLOGY, &["--otlp-receiver-delay-ms", "30000"]);
    assert_eq!(sampled_requests(&lab, 200), 200);
    let dropped = weft_lab::wait_until(Duration::from_secs(20), Duration::from_millis(500), || {
        let n = proxy_metric(&lab.name, "node-2", "weft_trace_spans_dropped_total");
        (n >= 1).then_some(n)
    });
    assert!(
        dropped.is_some(),
        "the timed-out export's spans are counted as dropped"
    );
    assert_eq!(
        proxy_metric(&lab.name, "node-2", "weft_trace_spans_exported_total"),
        0
    );
}

/// `n` requests from default/client to `url` on one connection, with
/// `headers`: how many got 200.
fn plain_requests(lab: &LabGuard, url: &str, n: usize, headers: &[&str]) -> u64 {
    support::client_statuses(lab, url, n, headers)["200"]
        .as_u64()
        .unwrap_or(0)
}

#[test]
fn istio_requests_total_counts_every_request_sent_under_istios_labels() {
    let lab = support::up_with('i', TOPOLOGY);
    assert_eq!(
        plain_requests(&lab, "http://198.19.0.12/across", 37, &[]),
        37
    );
    assert_eq!(plain_requests(&lab, "http://198.19.0.11/same", 23, &[]), 23);
    let across = "istio_requests_total{reporter=\"source\",source_workload=\"client\",\
                  source_workload_namespace=\"default\",destination_workload=\"echo-2\",\
                  destination_service=\"echo-v2.default.svc.cluster.local\",\
                  destination_principal=\"spiffe://cluster.local/ns/default/sa/echo\",\
                  request_protocol=\"http\",response_code=\"200\",response_flags=\"-\",\
                  connection_security_policy=\"mutual_tls\"}";
    assert_eq!(proxy_metric(&lab.name, "node-1", across), 37);
    let same = "istio_requests_total{reporter=\"source\",destination_workload=\"echo-1\",\
                destination_service_name=\"echo-v1\",response_code=\"200\",\
                connection_security_policy=\"none\"}";
    assert_eq!(proxy_metric(&lab.name, "node-1", same), 23);
    assert_eq!(
        proxy_metric(
            &lab.name,
            "node-1",
            "istio_request_duration_milliseconds_count{destination_workload=\"echo-2\"}"
        ),
        37
    );
    // The tunnel that carried them, at the destination.
    let tcp = "istio_tcp_connections_opened_total{reporter=\"destination\",source_workload=\"client\",\
               destination_workload=\"echo-2\",connection_security_policy=\"mutual_tls\"}";
    assert!(proxy_metric(&lab.name, "node-2", tcp) >= 1);
}

/// Sends `data` over TCP from default/client to echo-v2's TCP echo.
fn tcp_echo(lab: &LabGuard, data: &str) {
    let args = [
        "weft",
        "lab",
        "app",
        "client",
        "tcp://198.19.0.12:7000",
        "--data",
        data,
    ];
    success_stdout("tcp echo", &in_pod(lab, "default/client", &args));
}

/// The JSON access log lines of `kind` in `node`'s proxy log.
fn access_lines(lab: &LabGuard, node: &str, kind: &str) -> Vec<serde_json::Value> {
    let status = labs().status(&lab.name).expect("status");
    let log = status
        .state_dir
        .join("logs")
        .join(format!("proxy-{node}.log"));
    std::fs::read_to_string(&log)
        .expect("the proxy's log")
        .lines()
        .filter(|l| l.starts_with('{'))
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| v["kind"] == kind)
        .collect()
}

#[test]
fn access_logs_write_a_json_line_per_request_and_connection_with_why_the_proxy_answered_and_a_flood_is_rate_limited()
 {
    let lab = support::up_with('a', TOPOLOGY);
    apply_ok(
        &lab,
        "telemetry.yaml",
        "apiVersion: weft.io/v1alpha1\nkind: Telemetry\nmetadata: {name: mesh, namespace: default}\n\
         spec:\n  accessLogs: {requests: true, connections: true, linesPerSecond: 100}\n\
         ---\napiVersion: weft.io/v1alpha1\nkind: AuthorizationPolicy\n\
         metadata: {name: deny-path, namespace: default}\n\
         spec: {selector: {matchLabels: {version: v1}}, action: DENY, rules: [{to: [{paths: [/denied]}]}]}\n",
    );
    let logged = weft_lab::wait_until(Duration::from_secs(10), Duration::from_millis(200), || {
        plain_requests(&lab, "http://198.19.0.12/logged", 5, &[]);
        let lines: Vec<serde_json::Value> = access_lines(&lab, "node-1", "request")
            .into_iter()
            .filter(|l| l["path"] == "/logged")
            .collect();
        (lines.len() >= 5).then_some(lines)
    })
    .expect("request lines once the Telemetry object is in");
    let line = &logged[0];
    assert_eq!(line["status"], 200, "{line}");
    assert_eq!(line["source_workload"], "default/client", "{line}");
    assert_eq!(line["destination_workload"], "default/echo-2", "{line}");
    assert_eq!(line["destination_service"], "default/echo-v2", "{line}");
    assert_eq!(line["upstream"], "198.18.2.2:8080", "{line}");
    assert_eq!(line["response_flags"], "-", "{line}");
    assert!(line["reason"].is_null(), "{line}");
    assert!(line["duration_ms"].as_f64().is_some(), "{line}");
    assert!(
        line["time"].as_str().is_some_and(|t| t.ends_with('Z')),
        "{line}"
    );

    // A request the destination's policy denies: the proxy's own 403.
    let out = success_stdout(
        "weft lab app client",
        &in_pod(
            &lab,
            "default/client",
            &[
                "weft",
                "lab",
                "app",
                "client",
                "http://198.19.0.11/denied",
                "--json",
            ],
        ),
    );
    assert!(out.contains("\"status\":403"), "{out}");
    let denied = weft_lab::wait_until(Duration::from_secs(5), Duration::from_millis(100), || {
        access_lines(&lab, "node-1", "request")
            .into_iter()
            .find(|l| l["path"] == "/denied")
    })
    .expect("a line for the denied request");
    assert_eq!(denied["status"], 403, "{denied}");
    assert_eq!(denied["response_flags"], "RBAC", "{denied}");
    assert_eq!(
        denied["reason"], "denied by authorization policy",
        "{denied}"
    );

    // The tunnel's connection at the destination.
    let tunnel = weft_lab::wait_until(Duration::from_secs(10), Duration::from_millis(200), || {
        access_lines(&lab, "node-2", "connection")
            .into_iter()
            .find(|l| l["direction"] == "inbound" && l["security"] == "mutual_tls")
    });
    // The pooled tunnel stays open; a TCP connection closes at once.
    tcp_echo(&lab, "hello");
    let tunnel = tunnel.or_else(|| {
        weft_lab::wait_until(Duration::from_secs(10), Duration::from_millis(200), || {
            access_lines(&lab, "node-2", "connection")
                .into_iter()
                .find(|l| l["direction"] == "inbound" && l["security"] == "mutual_tls")
        })
    });
    let tunnel = tunnel.expect("a connection line at the destination");
    assert_eq!(
        tunnel["source_principal"], "spiffe://cluster.local/ns/default/sa/client",
        "{tunnel}"
    );

    // A flood: 600 requests in a burst; at most 100 lines a second.
    assert_eq!(
        plain_requests(&lab, "http://198.19.0.12/flood", 600, &[]),
        600
    );
    let dropped = proxy_metric(
        &lab.name,
        "node-1",
        "weft_access_log_dropped_total{reason=\"rate\"}",
    );
    let flood = access_lines(&lab, "node-1", "request")
        .into_iter()
        .filter(|l| l["path"] == "/flood")
        .count() as u64;
    assert!(dropped > 0, "the rate limit dropped lines");
    assert!(flood < 600, "{flood} lines for 600 requests");
}
