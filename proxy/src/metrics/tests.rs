use super::*;

fn request(source: &str, destination: &str, code: u16) -> RequestLabels {
    RequestLabels {
        reporter: "source",
        source_workload: source.to_owned(),
        source_namespace: "default".to_owned(),
        source_principal: "spiffe://cluster.local/ns/default/sa/client".to_owned(),
        destination_workload: destination.to_owned(),
        destination_namespace: "default".to_owned(),
        destination_principal: "spiffe://cluster.local/ns/default/sa/echo".to_owned(),
        destination_service: "echo.default.svc.cluster.local".to_owned(),
        destination_service_name: "echo".to_owned(),
        destination_service_namespace: "default".to_owned(),
        protocol: "http",
        code,
        flags: "-",
        security: "mutual_tls",
        route: String::new(),
    }
}

#[test]
fn requests_are_rendered_with_istios_names_and_labels() {
    let m = Metrics::default();
    m.request(
        request("client", "echo-2", 200),
        std::time::Duration::from_micros(700),
    );
    let text = m.render(None);
    let line = text
        .lines()
        .find(|l| l.starts_with("istio_requests_total{"))
        .expect("a request series");
    for label in [
        "reporter=\"source\"",
        "source_workload=\"client\"",
        "source_workload_namespace=\"default\"",
        "source_principal=\"spiffe://cluster.local/ns/default/sa/client\"",
        "destination_workload=\"echo-2\"",
        "destination_service=\"echo.default.svc.cluster.local\"",
        "destination_service_name=\"echo\"",
        "request_protocol=\"http\"",
        "response_code=\"200\"",
        "response_flags=\"-\"",
        "connection_security_policy=\"mutual_tls\"",
    ] {
        assert!(line.contains(label), "{label} in {line}");
    }
    assert!(line.ends_with(" 1"), "{line}");
    assert!(
        text.contains("istio_request_duration_milliseconds_bucket{"),
        "{text}"
    );
    assert!(
        text.contains("le=\"1\"} 1"),
        "0.7 ms falls in the 1 ms bucket: {text}"
    );
}

#[test]
fn tcp_series_appear_under_istio_names_with_the_reporter_of_their_direction() {
    let m = Metrics::default();
    let c = m.conn(ConnLabels {
        direction: Direction::Inbound,
        source: "default/client".into(),
        destination: "default/echo-2".into(),
        service: String::new(),
        source_principal: "spiffe://cluster.local/ns/default/sa/client".into(),
        mtls: true,
    });
    c.sent.fetch_add(3000, Ordering::Relaxed);
    let text = m.render(None);
    let line = text
        .lines()
        .find(|l| l.starts_with("istio_tcp_sent_bytes_total{"))
        .expect("a TCP series");
    assert!(line.contains("reporter=\"destination\""), "{line}");
    assert!(line.contains("source_workload=\"client\""), "{line}");
    assert!(line.contains("destination_service=\"unknown\""), "{line}");
    assert!(line.ends_with(" 3000"), "{line}");
}

#[test]
fn series_of_workloads_that_are_gone_are_dropped_and_the_rest_stay() {
    let m = Metrics::default();
    m.request(request("client", "echo-1", 200), std::time::Duration::ZERO);
    m.request(request("client", "echo-2", 200), std::time::Duration::ZERO);
    m.request(request("client", "unknown", 404), std::time::Duration::ZERO);
    m.conn(ConnLabels {
        direction: Direction::Outbound,
        source: "default/client".into(),
        destination: "default/echo-2".into(),
        service: "default/echo".into(),
        source_principal: String::new(),
        mtls: false,
    });
    m.forget(|_, name| name != "echo-2");
    let text = m.render(None);
    assert!(text.contains("destination_workload=\"echo-1\""), "{text}");
    assert!(
        text.contains("destination_workload=\"unknown\""),
        "the proxy's own answers stay"
    );
    assert!(!text.contains("echo-2"), "{text}");
}
