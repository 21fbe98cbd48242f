//! The lab's control plane: `weft apply` reaches every node proxy, a bad
//! file changes nothing, and proxies ride out a control-plane outage.

mod support;

use std::time::{Duration, Instant};

use support::{apply, apply_ok, labs, sighup_proxy, up_with, weft_ok};
use weft_lab::app::Served;
use weft_lab::{DEFAULT_TOPOLOGY, LabName};

const NEW_SERVICE: &str = r#"
apiVersion: v1
kind: Service
metadata: {name: echo-alt, namespace: default}
spec:
  clusterIP: 198.19.0.20
  selector: {app: echo}
  ports: [{port: 9000, targetPort: 8080}]
"#;

fn generation(lab: &LabName, node: &str) -> u64 {
    let (_, body) = labs()
        .proxy_admin(lab, node, "/config_dump")
        .expect("config dump");
    let v: serde_json::Value = serde_json::from_str(&body).expect("JSON");
    v["generation"].as_u64().expect("generation")
}

fn dump(lab: &LabName, node: &str) -> String {
    labs()
        .proxy_admin(lab, node, "/config_dump")
        .expect("config dump")
        .1
}

/// Waits until both node proxies' config dumps contain `needle`.
fn wait_for_both_dumps(lab: &LabName, needle: &str, timeout: Duration, poll: Duration) -> bool {
    weft_lab::wait_until(timeout, poll, || {
        (dump(lab, "node-1").contains(needle) && dump(lab, "node-2").contains(needle)).then_some(())
    })
    .is_some()
}

#[test]
fn an_applied_service_reaches_every_proxy_config_dump_and_routes_traffic() {
    let lab = up_with('v', DEFAULT_TOPOLOGY);
    let started = Instant::now();
    let out = apply_ok(&lab, "svc.yaml", NEW_SERVICE);
    assert!(out.starts_with("applied: version 2"), "{out}");
    // Every proxy acknowledges the new version.
    let acked = weft_lab::wait_until(Duration::from_secs(10), Duration::from_millis(5), || {
        let nodes = weft_ok(&["config", "nodes", "--lab", lab.arg()]);
        (nodes
            .lines()
            .filter(|l| l.starts_with("node-") && l.split_whitespace().nth(2) == Some("2"))
            .count()
            == 2)
            .then_some(())
    });
    acked.expect("both proxies acknowledged version 2");
    eprintln!(
        "apply to ACK by both proxies: {:.1} ms",
        started.elapsed().as_secs_f64() * 1e3
    );
    for node in ["node-1", "node-2"] {
        assert!(
            dump(&lab.name, node).contains("echo-alt"),
            "{node}'s config dump has the service"
        );
    }
    let out = labs()
        .client(&lab.name, "default/client", "http://198.19.0.20:9000/", &[])
        .expect("the new service routes");
    let served: Served = serde_json::from_slice(&out).expect("served-by");
    assert!(served.pod.starts_with("echo-"));
}

#[test]
fn a_bad_file_is_rejected_naming_file_document_and_field_and_no_proxy_changes() {
    let lab = up_with('x', DEFAULT_TOPOLOGY);
    let before = [
        generation(&lab.name, "node-1"),
        generation(&lab.name, "node-2"),
    ];
    let cases = [
        (
            "unknown.yaml",
            NEW_SERVICE.replace("targetPort: 8080", "targetPorts: 8080"),
            "document 1: spec.ports[0].targetPorts: unknown field",
        ),
        (
            "malformed.yaml",
            "apiVersion: v1\nkind: [\n".to_owned(),
            "document 1: not YAML",
        ),
        (
            "dangling.yaml",
            NEW_SERVICE.replace("namespace: default", "namespace: nowhere"),
            "metadata.namespace: namespace `nowhere` does not exist",
        ),
        (
            "clash.yaml",
            NEW_SERVICE.replace("198.19.0.20", "198.19.0.10"),
            "spec.clusterIP: 198.19.0.10 is also the address of Service default/echo",
        ),
    ];
    for (name, yaml, want) in cases {
        let (file, out) = apply(&lab, name, &yaml);
        assert_eq!(out.status.code(), Some(1), "{name}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains(&format!("{file} {want}")) || err.contains(want),
            "{name}: {err}"
        );
    }
    let nodes = weft_ok(&["config", "nodes", "--lab", lab.arg()]);
    assert!(nodes.starts_with("control plane version 1"), "{nodes}");
    assert_eq!(
        before,
        [
            generation(&lab.name, "node-1"),
            generation(&lab.name, "node-2")
        ]
    );
}

#[test]
fn with_the_control_plane_down_traffic_flows_and_after_its_restart_proxies_resync_without_restarting()
 {
    let lab = up_with('y', DEFAULT_TOPOLOGY);
    let labs = labs();
    let proxies = labs.status(&lab.name).expect("status").proxies;
    labs.stop_control(&lab.name)
        .expect("stop the control plane");
    for _ in 0..4 {
        labs.client(&lab.name, "default/client", "http://198.19.0.10/", &[])
            .expect("traffic on the last config");
    }
    labs.start_control_again(&lab.name)
        .expect("start the control plane");
    apply_ok(&lab, "svc.yaml", NEW_SERVICE);
    assert!(
        wait_for_both_dumps(
            &lab.name,
            "echo-alt",
            Duration::from_secs(15),
            Duration::from_millis(20)
        ),
        "both proxies follow the restarted control plane"
    );
    assert_eq!(
        labs.status(&lab.name).expect("status").proxies,
        proxies,
        "no proxy restarted"
    );
}

const ROUTE: &str = r#"
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: echo-api, namespace: default}
spec:
  parentRefs: [{kind: Service, group: "", name: echo, port: 80}]
  rules:
    - matches: [{path: {type: PathPrefix, value: /api}}]
      backendRefs: [{name: echo, port: 80}]
"#;

#[test]
fn an_applied_http_route_appears_in_every_proxy_config_dump_and_a_dangling_one_under_strict_changes_nothing()
 {
    let lab = up_with('r', DEFAULT_TOPOLOGY);
    let (_, out) = support::with_file(
        &lab,
        "bad-route.yaml",
        &ROUTE.replace(
            "backendRefs: [{name: echo,",
            "backendRefs: [{name: nothing,",
        ),
        &["apply", "--strict"],
    );
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(
            "document 1: spec.rules[0].backendRefs[0].name: service default/nothing does not exist"
        ),
        "{err}"
    );
    assert!(!dump(&lab.name, "node-1").contains("echo-api"));

    let started = Instant::now();
    apply_ok(&lab, "route.yaml", ROUTE);
    assert!(
        wait_for_both_dumps(
            &lab.name,
            "echo-api",
            Duration::from_secs(10),
            Duration::from_millis(2)
        ),
        "the route reaches both proxies"
    );
    eprintln!(
        "HTTPRoute apply to both config dumps: {:.1} ms",
        started.elapsed().as_secs_f64() * 1e3
    );
    let d = dump(&lab.name, "node-2");
    assert!(d.contains("\"PathPrefix\"") && d.contains("/api"), "{d}");
    // A lab change (a label) replaces the lab's own objects only: the
    // applied route stays.
    weft_ok(&["lab", "label", "--name", lab.arg(), "default", "team=a"]);
    let d = dump(&lab.name, "node-1");
    assert!(d.contains("echo-api"), "{d}");
}

#[test]
fn a_sighup_reload_changes_the_proxys_own_settings_without_losing_the_streamed_config_and_the_next_update_keeps_it()
 {
    let lab = up_with('h', DEFAULT_TOPOLOGY);
    let labs = labs();
    apply_ok(&lab, "svc.yaml", NEW_SERVICE);
    assert!(wait_for_both_dumps(
        &lab.name,
        "echo-alt",
        Duration::from_secs(10),
        Duration::from_millis(10)
    ));

    // The proxy's own file gets a new idle timeout; the streamed service
    // is not in that file.
    let path = labs.proxy_config_path(&lab.name, "node-1");
    let file = std::fs::read_to_string(&path).expect("config");
    assert!(!file.contains("echo-alt"));
    let edited = file.replace("idle: 3600.0", "idle: 1234.0");
    assert_ne!(edited, file, "the lab writes `idle: 3600.0`: {file}");
    std::fs::write(&path, edited).expect("write");
    let before = generation(&lab.name, "node-1");
    sighup_proxy(&lab.name, "node-1");
    weft_lab::wait_until(Duration::from_secs(10), Duration::from_millis(10), || {
        (generation(&lab.name, "node-1") > before).then_some(())
    })
    .expect("the reload is applied");
    let idle = || -> f64 {
        let v: serde_json::Value = serde_json::from_str(&dump(&lab.name, "node-1")).expect("JSON");
        v["config"]["timeouts"]["idle"]
            .as_f64()
            .expect("timeouts.idle")
    };
    assert_eq!(idle(), 1234.0, "the reloaded setting");
    assert!(
        dump(&lab.name, "node-1").contains("echo-alt"),
        "the streamed service stays"
    );

    // The next update from the control plane keeps the reloaded setting.
    apply_ok(
        &lab,
        "svc2.yaml",
        &NEW_SERVICE
            .replace("echo-alt", "echo-alt2")
            .replace("198.19.0.20", "198.19.0.21"),
    );
    assert!(wait_for_both_dumps(
        &lab.name,
        "echo-alt2",
        Duration::from_secs(10),
        Duration::from_millis(10)
    ));
    assert_eq!(idle(), 1234.0, "the stream does not undo the reload");
}

#[test]
fn each_lab_proxy_gets_certificates_for_exactly_the_service_accounts_of_its_meshed_pods() {
    let lab = up_with('i', DEFAULT_TOPOLOGY);
    let identities = |node: &str| -> Vec<String> {
        let v: serde_json::Value = serde_json::from_str(&dump(&lab.name, node)).expect("JSON");
        let mut ids: Vec<String> = v["certificates"]
            .as_array()
            .expect("certificates")
            .iter()
            .map(|c| c["identity"].as_str().expect("identity").to_owned())
            .collect();
        ids.sort();
        ids
    };
    let want1 = [
        "spiffe://cluster.local/ns/default/sa/client",
        "spiffe://cluster.local/ns/default/sa/echo",
    ];
    let got = weft_lab::wait_until(Duration::from_secs(10), Duration::from_millis(20), || {
        let (a, b) = (identities("node-1"), identities("node-2"));
        (a == want1 && b == ["spiffe://cluster.local/ns/default/sa/echo"]).then_some(())
    });
    assert!(
        got.is_some(),
        "node-1: {:?}, node-2: {:?} (legacy/client is not meshed: no certificate)",
        identities("node-1"),
        identities("node-2")
    );
    // The lab keeps the tokens and the root owner-only.
    let state = std::path::Path::new(weft_lab::DEFAULT_STATE_ROOT).join(lab.arg());
    for file in ["proxy-node-1.token", "ca/ca-key.pem"] {
        let mode = std::fs::metadata(state.join(file))
            .expect(file)
            .permissions();
        assert_eq!(
            std::os::unix::fs::PermissionsExt::mode(&mode) & 0o077,
            0,
            "{file}"
        );
    }
}

#[test]
fn peers_that_hang_up_at_once_do_not_kill_the_control_plane() {
    let lab = up_with('p', DEFAULT_TOPOLOGY);
    let sock = std::path::Path::new(weft_lab::DEFAULT_STATE_ROOT)
        .join(lab.arg())
        .join("control.sock");
    // The server writes its HTTP/2 settings to each: EPIPE, not SIGPIPE.
    for _ in 0..20 {
        drop(std::os::unix::net::UnixStream::connect(&sock).expect("connect"));
    }
    let nodes = weft_ok(&["config", "nodes", "--lab", lab.arg()]);
    assert!(nodes.contains("node-1"), "{nodes}");
}
