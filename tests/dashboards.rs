//! The Grafana dashboards in `charts/weft/dashboards/`, checked against a
//! real Prometheus (Debian's `prometheus` 2.42, installed by `cargo xtask
//! setup`) that scrapes both node proxies of a lab under traffic: every
//! PromQL expression of every dashboard parses and returns data, and
//! `istio_requests_total` counts exactly the requests sent.

mod support;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use support::{LabGuard, client_statuses, in_pod, labs, success_stdout, up_with};

/// Two nodes; echo-v1 on the client's node, echo-v2 on the other, both
/// HTTP and gRPC at L7, echo-v2 with a TCP echo; `empty` has no endpoints
/// (the proxy answers 503 itself).
const TOPOLOGY: &str = include_str!("../examples/lab/telemetry.yaml");

/// Where Prometheus listens, inside node-1's netns.
const PROMETHEUS: &str = "127.0.0.1:19090";

/// A Prometheus server this test started; stopped (by its PID) on drop.
struct Prometheus {
    child: Child,
    netns: String,
    dir: PathBuf,
}

impl Prometheus {
    /// Starts Prometheus in `netns`, scraping `targets` every second as job
    /// `weft-proxy` (the job the dashboards name).
    fn start(netns: &str, targets: &[String]) -> Prometheus {
        let dir = std::env::temp_dir().join(format!("weft-prometheus-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("a temp dir");
        let config = dir.join("prometheus.yml");
        let targets: Vec<String> = targets.iter().map(|t| format!("'{t}'")).collect();
        std::fs::write(
            &config,
            format!(
                "global: {{scrape_interval: 1s, evaluation_interval: 1s}}\n\
                 scrape_configs:\n  - job_name: weft-proxy\n    static_configs:\n      - targets: [{}]\n",
                targets.join(", ")
            ),
        )
        .expect("writing prometheus.yml");
        let check = Command::new("promtool")
            .args(["check", "config"])
            .arg(&config)
            .output()
            .expect("promtool (cargo xtask setup installs Debian's prometheus)");
        success_stdout("promtool check config", &check);
        let child = Command::new("ip")
            .args(["netns", "exec", netns, "prometheus"])
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.join("data").display()
            ))
            .arg(format!("--web.listen-address={PROMETHEUS}"))
            .arg("--log.level=warn")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.join("prometheus.log")).expect("a log file"))
            .spawn()
            .expect("starting prometheus");
        Prometheus {
            child,
            netns: netns.to_owned(),
            dir,
        }
    }

    /// Evaluates `expr` now with promtool: the result as JSON, or why not.
    fn query(&self, expr: &str) -> Result<serde_json::Value, String> {
        let out = Command::new("ip")
            .args([
                "netns",
                "exec",
                &self.netns,
                "promtool",
                "query",
                "instant",
                "-o",
                "json",
            ])
            .arg(format!("http://{PROMETHEUS}"))
            .arg(expr)
            .output()
            .map_err(|e| format!("running promtool: {e}"))?;
        if !out.status.success() {
            return Err(format!(
                "promtool: {}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ));
        }
        serde_json::from_slice(&out.stdout).map_err(|e| format!("promtool's JSON: {e}"))
    }

    /// The single number `expr` gives, if it gives one.
    fn number(&self, expr: &str) -> Option<f64> {
        let v = self.query(expr).ok()?;
        v.as_array()?.first()?["value"][1].as_str()?.parse().ok()
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Every PromQL expression in `dashboard` (Prometheus targets only), with
/// where it is: `(panel title, expr)`.
fn expressions(dashboard: &Path) -> Vec<(String, String)> {
    let text = std::fs::read_to_string(dashboard).expect("a dashboard");
    let d: serde_json::Value = serde_json::from_str(&text)
        .unwrap_or_else(|e| panic!("{} is not JSON: {e}", dashboard.display()));
    assert!(
        d["uid"].as_str().is_some_and(|u| !u.is_empty()),
        "{} has no uid",
        dashboard.display()
    );
    assert!(
        d["title"].as_str().is_some(),
        "{} has no title",
        dashboard.display()
    );
    let mut out = Vec::new();
    for p in d["panels"].as_array().expect("panels") {
        let title = p["title"].as_str().unwrap_or("?").to_owned();
        for t in p["targets"].as_array().into_iter().flatten() {
            if t["datasource"]["type"] != "prometheus" {
                continue;
            }
            let expr = t["expr"].as_str().unwrap_or_else(|| {
                panic!(
                    "{}: panel {title} has a target without expr",
                    dashboard.display()
                )
            });
            out.push((title.clone(), expr.to_owned()));
        }
    }
    out
}

/// One round of traffic: HTTP across nodes and on one node, 5xx answers
/// from a pod and from the proxy (no endpoint), a gRPC call, a TCP echo and a connection that is refused.
fn traffic(lab: &LabGuard) {
    assert_eq!(
        client_statuses(lab, "http://198.19.0.12/across", 200, &[])["200"],
        200
    );
    assert_eq!(
        client_statuses(lab, "http://198.19.0.11/same", 50, &[])["200"],
        50
    );
    assert_eq!(
        client_statuses(lab, "http://198.19.0.12/fail", 10, &["x-echo-status: 503"])["503"],
        10
    );
    assert_eq!(
        client_statuses(lab, "http://198.19.0.13/", 3, &[])["503"],
        3
    );
    let grpc = [
        "weft",
        "lab",
        "app",
        "grpc",
        "198.19.0.12:7070",
        "gateway_api_conformance.echo_basic.grpcecho.GrpcEcho/Echo",
    ];
    success_stdout("a gRPC call", &in_pod(lab, "default/client", &grpc));
    let tcp = [
        "weft",
        "lab",
        "app",
        "client",
        "tcp://198.19.0.12:7000",
        "--data",
        "hello",
    ];
    success_stdout("a TCP echo", &in_pod(lab, "default/client", &tcp));
    // A connection to a port nothing listens on: a failure to count.
    let refused = [
        "weft",
        "lab",
        "app",
        "client",
        "tcp://198.18.2.2:9",
        "--data",
        "x",
    ];
    let _ = in_pod(lab, "default/client", &refused);
}

#[test]
fn every_dashboard_expression_returns_data_from_a_real_prometheus_scraping_a_lab_under_traffic() {
    let lab = up_with('p', TOPOLOGY);
    let status = labs().status(&lab.name).expect("status");
    let targets: Vec<String> = status
        .plan
        .nodes
        .iter()
        .map(|n| format!("{}:15020", n.underlay_ip))
        .collect();
    let node1 = status
        .plan
        .nodes
        .iter()
        .find(|n| n.name == "node-1")
        .expect("node-1");
    let prometheus = Prometheus::start(&node1.netns, &targets);
    let up = weft_lab::wait_until(Duration::from_secs(30), Duration::from_millis(250), || {
        (prometheus.number("sum(up{job=\"weft-proxy\"})")? == 2.0).then_some(())
    });
    assert!(up.is_some(), "Prometheus scrapes both proxies");

    // Traffic of every kind the dashboards show, in two rounds that
    // Prometheus scrapes apart, so that every counter has grown between
    // two samples (what `rate` needs).
    let per_round = 200 + 50 + 10 + 3 + 1;
    for round in 1..=2 {
        traffic(&lab);
        let sent = f64::from(per_round * round);
        let counted =
            weft_lab::wait_until(Duration::from_secs(30), Duration::from_millis(250), || {
                let n = prometheus.number("sum(istio_requests_total{reporter=\"source\"})")?;
                (n == sent).then_some(n)
            });
        assert!(
            counted.is_some(),
            "istio_requests_total counts the {sent} requests sent; Prometheus has {:?}",
            prometheus.number("sum(istio_requests_total{reporter=\"source\"})")
        );
    }
    assert_eq!(
        prometheus.number(
            "sum(istio_requests_total{reporter=\"source\",destination_workload=\"echo-2\",response_code=\"200\"})"
        ),
        Some(402.0),
        "200 HTTP requests and the gRPC call to echo-2, twice"
    );
    let rated = weft_lab::wait_until(Duration::from_secs(15), Duration::from_millis(250), || {
        prometheus
            .number("sum(rate(istio_requests_total{reporter=\"source\"}[30s])) > 0")
            .map(|_| ())
    });
    assert!(rated.is_some(), "a rate over the traffic");

    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../charts/weft/dashboards");
    let mut dashboards: Vec<PathBuf> = std::fs::read_dir(&dir)
        .expect("charts/weft/dashboards")
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "json"))
        .collect();
    dashboards.sort();
    assert!(dashboards.len() >= 6, "{dashboards:?}");
    let mut checked = 0;
    let mut failures = Vec::new();
    for d in &dashboards {
        for (panel, expr) in expressions(d) {
            let expr = expr
                .replace("$__rate_interval", "30s")
                .replace("$__interval", "5s")
                .replace("$service", "echo-v2.default.svc.cluster.local");
            checked += 1;
            match prometheus.query(&expr) {
                Ok(v) if v.as_array().is_some_and(|a| !a.is_empty()) => {}
                Ok(v) => failures.push(format!(
                    "{} / {panel}: no data for {expr} ({v})",
                    d.display()
                )),
                Err(e) => failures.push(format!("{} / {panel}: {expr}: {e}", d.display())),
            }
        }
    }
    assert!(checked >= 30, "{checked} expressions");
    assert!(
        failures.is_empty(),
        "{} of {checked} expressions failed:\n{}",
        failures.len(),
        failures.join("\n")
    );
}
