//! Capture tests: meshed pods' TCP reaches the node proxy through eBPF
//! alone (real programs, real namespaces), the proxy relays it, and nothing
//! of netfilter is involved. Run as root; they fail, never skip, without it.

mod support;

use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use support::{LabGuard, labs, up_with, weft_ok};
use weft_lab::app::Served;
use weft_lab::{LabName, in_netns};

/// Two nodes; meshed `default` with a client on node-1 and one echo pod per
/// node, each behind its own service so a test picks same node or other
/// node; an unmeshed client on node-2. `failmode` sets node-1's fail mode.
fn topology(fail_mode: &str) -> String {
    format!(
        r#"
nodes:
  - {{name: node-1, failMode: {fail_mode}}}
  - {{name: node-2}}
namespaces:
  - {{name: default, labels: {{weft.io/mesh: enabled}}}}
  - {{name: legacy}}
pods:
  - {{name: client, node: node-1}}
  - {{name: echo-1, node: node-1, labels: {{app: echo, at: one}}, command: [weft, lab, app, echo]}}
  - {{name: echo-2, node: node-2, labels: {{app: echo, at: two}}, command: [weft, lab, app, echo]}}
  - {{name: client, namespace: legacy, node: node-2}}
services:
  - {{name: same, selector: {{at: one}}, ports: [{{port: 80, targetPort: 8080}}, {{port: 7000}}], clusterIP: 198.19.0.11}}
  - {{name: other, selector: {{at: two}}, ports: [{{port: 80, targetPort: 8080}}, {{port: 7000}}], clusterIP: 198.19.0.12}}
"#
    )
}

fn up(tag: char, fail_mode: &str) -> LabGuard {
    up_with(tag, &topology(fail_mode))
}

fn served(out: &[u8]) -> Served {
    serde_json::from_slice(out)
        .unwrap_or_else(|e| panic!("{e}: {:?}", String::from_utf8_lossy(out)))
}

/// A counter's value from the proxy's metrics on `node` (summed over the
/// series with these labels), 0 when absent.
fn metric(lab: &LabName, node: &str, series: &str) -> u64 {
    support::proxy_metric(lab, node, series)
}

/// Connects from inside a pod's netns.
fn connect_from(lab: &LabName, pod: &str, to: SocketAddr) -> std::io::Result<TcpStream> {
    let netns = labs()
        .status(lab)
        .expect("the lab's status")
        .plan
        .find_pod(pod)
        .expect("the pod")
        .netns
        .clone();
    in_netns(&netns, move || {
        TcpStream::connect_timeout(&to, Duration::from_secs(5))
    })
    .expect("a thread in the pod netns")
}

#[test]
fn pod_to_cluster_ip_reaches_the_same_and_the_other_node_through_the_proxy_with_no_netfilter_rule()
{
    let lab = up('p', "closed");
    let labs = labs();
    for (service, vip, pod, node) in [
        ("default/same", "198.19.0.11", "echo-1", "node-1"),
        ("default/other", "198.19.0.12", "echo-2", "node-2"),
    ] {
        let series = format!(
            "weft_tcp_connections_opened_total{{direction=\"outbound\",source_workload=\"default/client\",destination_workload=\"default/{pod}\",destination_service=\"{service}\"}}"
        );
        let before = metric(&lab.name, "node-1", &series);
        let out = labs
            .client(&lab.name, "default/client", &format!("http://{vip}/"), &[])
            .unwrap();
        let s = served(&out);
        assert_eq!((s.pod.as_str(), s.node.as_str()), (pod, node), "{service}");
        assert_eq!(
            metric(&lab.name, "node-1", &series),
            before + 1,
            "node-1's proxy counted {service}"
        );
    }
    // The cross-node connection also went through node-2's inbound listener,
    // which knows the source workload: the client's address was preserved.
    // It crossed the nodes in an HBONE tunnel: node-2 authenticated the
    // client's identity from its certificate.
    let inbound = "weft_tcp_connections_opened_total{direction=\"inbound\",source_workload=\"default/client\",source_principal=\"spiffe://cluster.local/ns/default/sa/default\",destination_workload=\"default/echo-2\",security=\"mutual_tls\"}";
    assert!(metric(&lab.name, "node-2", inbound) >= 1);
    assert!(
        metric(
            &lab.name,
            "node-1",
            "weft_capture_decisions_total{decision=\"captured_outbound\"}"
        ) >= 2
    );
    assert!(
        metric(
            &lab.name,
            "node-2",
            "weft_capture_decisions_total{decision=\"captured_tunnel\"}"
        ) >= 1,
        "node-2's tunnel listener took the HBONE connection"
    );

    // No netfilter rule anywhere: not in any lab namespace, and none for lab
    // addresses on the host.
    let status = labs.status(&lab.name).unwrap();
    let mut namespaces: Vec<String> = vec![status.plan.underlay_netns.clone()];
    namespaces.extend(status.plan.nodes.iter().map(|n| n.netns.clone()));
    namespaces.extend(status.plan.pods.iter().map(|p| p.netns.clone()));
    for ns in namespaces {
        for (tool, args) in [
            ("iptables-save", &[][..]),
            ("ip6tables-save", &[][..]),
            ("nft", &["list", "ruleset"][..]),
        ] {
            let out = in_netns(&ns, move || Command::new(tool).args(args).output())
                .unwrap()
                .unwrap();
            assert!(
                out.status.success(),
                "{tool} in {ns}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            let text = String::from_utf8_lossy(&out.stdout);
            assert!(
                !text.lines().any(|l| l.starts_with("-A")),
                "{tool} in {ns}:\n{text}"
            );
            if tool == "nft" {
                assert!(text.trim().is_empty(), "nft ruleset in {ns}:\n{text}");
            }
        }
    }
    for (tool, args) in [
        ("iptables-save", &[][..]),
        ("ip6tables-save", &[][..]),
        ("nft", &["list", "ruleset"][..]),
    ] {
        let out = Command::new(tool).args(args).output().unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            !text.contains("198.18.") && !text.contains("198.19."),
            "host {tool}:\n{text}"
        );
    }
}

/// A deterministic byte stream: word `i` is a mix of `i`.
fn pattern_word(i: u64) -> u64 {
    let mut z = i.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z ^ (z >> 27)
}

#[test]
fn one_gib_through_capture_and_both_proxies_arrives_byte_identical_after_a_half_close() {
    let lab = up('g', "closed");
    const TOTAL: u64 = 1 << 30;
    const CHUNK: usize = 256 * 1024;
    let stream = connect_from(
        &lab.name,
        "default/client",
        "198.19.0.12:7000".parse().unwrap(),
    )
    .unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(60)))
        .unwrap();
    let mut reader = stream.try_clone().unwrap();
    let started = Instant::now();
    let check = std::thread::spawn(move || -> Result<u64, String> {
        let mut buf = vec![0u8; CHUNK];
        let mut pending: Vec<u8> = Vec::with_capacity(8);
        let mut word = 0u64;
        let mut got = 0u64;
        loop {
            let n = reader
                .read(&mut buf)
                .map_err(|e| format!("read after {got} bytes: {e}"))?;
            if n == 0 {
                return Ok(got);
            }
            got += n as u64;
            for &b in &buf[..n] {
                pending.push(b);
                if pending.len() == 8 {
                    let w = u64::from_le_bytes(pending[..].try_into().unwrap());
                    if w != pattern_word(word) {
                        return Err(format!("byte stream differs at word {word}"));
                    }
                    word += 1;
                    pending.clear();
                }
            }
        }
    });
    let mut writer = stream;
    let mut buf = vec![0u8; CHUNK];
    let mut word = 0u64;
    let mut sent = 0u64;
    while sent < TOTAL {
        for w in buf.chunks_exact_mut(8) {
            w.copy_from_slice(&pattern_word(word).to_le_bytes());
            word += 1;
        }
        writer.write_all(&buf).unwrap();
        sent += CHUNK as u64;
    }
    // Half-close: the echo server sees the end, echoes the rest, and closes.
    writer.shutdown(Shutdown::Write).unwrap();
    let got = check.join().unwrap().unwrap();
    assert_eq!(got, TOTAL);
    eprintln!(
        "1 GiB echoed across nodes through two proxies in {:.1} s",
        started.elapsed().as_secs_f64()
    );
}

#[test]
fn a_thousand_concurrent_connections_through_the_proxy_all_complete() {
    let lab = up('c', "closed");
    let vip: SocketAddr = "198.19.0.11:7000".parse().unwrap();
    let mut streams = Vec::new();
    for _ in 0..1000 {
        streams.push(connect_from(&lab.name, "default/client", vip).unwrap());
    }
    // All 1,000 are open at once; now each sends, half-closes and reads.
    for (i, s) in streams.iter_mut().enumerate() {
        s.write_all(format!("connection {i}").as_bytes()).unwrap();
        s.shutdown(Shutdown::Write).unwrap();
    }
    for (i, s) in streams.iter_mut().enumerate() {
        s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        let mut got = String::new();
        s.read_to_string(&mut got).unwrap();
        assert_eq!(got, format!("connection {i}"));
    }
    let series = "weft_tcp_connections_opened_total{direction=\"outbound\",source_workload=\"default/client\",destination_workload=\"default/echo-1\",destination_service=\"default/same\"}";
    assert!(metric(&lab.name, "node-1", series) >= 1000);
}

#[test]
fn with_the_proxy_down_connections_fail_fast_and_after_a_restart_they_work_again_with_the_pins_kept()
 {
    let lab = up('r', "closed");
    let labs = labs();
    let pins = Path::new("/sys/fs/bpf/weft").join(lab.arg()).join("node-1");
    let prog = std::fs::metadata(pins.join("prog_tc_ingress")).unwrap();
    let vip: SocketAddr = "198.19.0.12:80".parse().unwrap();

    labs.stop_proxy(&lab.name, "node-1").unwrap();
    assert!(
        pins.join("links/tc-wp0").exists(),
        "capture stays pinned while the proxy is down"
    );
    let started = Instant::now();
    let err = connect_from(&lab.name, "default/client", vip).unwrap_err();
    let took = started.elapsed();
    assert_eq!(err.kind(), ErrorKind::ConnectionRefused, "{err}");
    assert!(took < Duration::from_secs(1), "refused after {took:?}");
    // Inbound to a meshed pod of that node is refused too: the proxy is the
    // only way in.
    let err = connect_from(
        &lab.name,
        "legacy/client",
        "198.18.1.3:8080".parse().unwrap(),
    )
    .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::ConnectionRefused, "{err}");

    labs.start_proxy_again(&lab.name, "node-1").unwrap();
    let ready_at = Instant::now();
    let out = labs
        .client(&lab.name, "default/client", "http://198.19.0.12/", &[])
        .unwrap();
    assert_eq!(served(&out).pod, "echo-2");
    assert!(
        ready_at.elapsed() < Duration::from_secs(1),
        "first connection after restart took {:?}",
        ready_at.elapsed()
    );
    // The same pinned program: re-opened, not reloaded.
    let again = std::fs::metadata(pins.join("prog_tc_ingress")).unwrap();
    use std::os::unix::fs::MetadataExt;
    assert_eq!(prog.ino(), again.ino());
    let log = std::fs::read_to_string(
        Path::new(weft_lab::DEFAULT_STATE_ROOT)
            .join(lab.arg())
            .join("logs/proxy-node-1.log"),
    )
    .unwrap();
    assert!(log.contains("origin=Reopened"), "{log}");
}

#[test]
fn with_fail_open_and_the_proxy_down_connections_pass_unproxied() {
    let lab = up('o', "open");
    let labs = labs();
    labs.stop_proxy(&lab.name, "node-1").unwrap();
    let out = labs
        .client(&lab.name, "default/client", "http://198.18.2.2:8080/", &[])
        .unwrap();
    let s = served(&out);
    assert_eq!(s.pod, "echo-2");
    // Unproxied from node-1 (its proxy is down), then captured inbound by
    // node-2's proxy, which keeps the client's address.
    assert_eq!(s.peer.split(':').next(), Some("198.18.1.2"));
    let (_, body) = labs.proxy_admin(&lab.name, "node-2", "/metrics").unwrap();
    assert!(
        body.contains("source_workload=\"default/client\""),
        "node-2 saw the client's own address: {body}"
    );
}

#[test]
fn a_namespace_label_turns_capture_on_and_off_without_restarting_the_proxy() {
    let lab = up('n', "closed");
    let labs = labs();
    let pid_before = labs.status(&lab.name).expect("status").proxies;
    let series = "weft_tcp_connections_opened_total{direction=\"outbound\",source_workload=\"legacy/client\",destination_workload=\"default/echo-2\",destination_service=\"default/other\"}";
    let fetch = || {
        labs.client(&lab.name, "legacy/client", "http://198.18.2.2:8080/", &[])
            .expect("fetch")
    };
    fetch();
    assert_eq!(
        metric(&lab.name, "node-2", series),
        0,
        "legacy is not meshed yet"
    );

    weft_ok(&[
        "lab",
        "label",
        "--name",
        lab.arg(),
        "legacy",
        "weft.io/mesh=enabled",
    ]);
    // Now a cluster IP works from legacy/client too, through node-2's proxy.
    let out = labs
        .client(&lab.name, "legacy/client", "http://198.19.0.12/", &[])
        .expect("fetch through the proxy");
    assert_eq!(served(&out).pod, "echo-2");
    assert_eq!(metric(&lab.name, "node-2", series), 1);

    // A bad value is refused, naming the field, and changes nothing.
    let bad = support::weft(&[
        "lab",
        "label",
        "--name",
        lab.arg(),
        "legacy",
        "weft.io/mesh=yes",
    ]);
    assert!(!bad.status.success());
    let err = String::from_utf8_lossy(&bad.stderr);
    assert!(err.contains("namespaces[1].labels.weft.io/mesh"), "{err}");
    labs.client(&lab.name, "legacy/client", "http://198.19.0.12/", &[])
        .expect("still meshed after the refused label");

    weft_ok(&[
        "lab",
        "label",
        "--name",
        lab.arg(),
        "legacy",
        "weft.io/mesh-",
    ]);
    fetch();
    assert_eq!(metric(&lab.name, "node-2", series), 2);
    let direct = "weft_tcp_connections_opened_total{direction=\"outbound\",source_workload=\"legacy/client\",destination_workload=\"default/echo-2\",destination_service=\"\"}";
    assert_eq!(
        metric(&lab.name, "node-2", direct),
        0,
        "the pod-IP fetch was not captured once the label was gone"
    );
    assert_eq!(
        labs.status(&lab.name).expect("status").proxies,
        pid_before,
        "the proxies were never restarted"
    );
}

/// Stops node-1's proxy, runs `weft proxy --uninstall` in node-1's netns,
/// and checks that nothing of capture is left there and traffic is no
/// longer captured.
fn uninstall_leaves_nothing(lab: &LabGuard) {
    let labs = labs();
    let status = labs.status(&lab.name).expect("status");
    let cg = status.cgroup_dir.join(&status.plan.nodes[0].cgroup);
    let sockops_attached = move || {
        let out = Command::new("bpftool")
            .args(["cgroup", "show", cg.to_str().expect("UTF-8 path")])
            .output()
            .expect("bpftool");
        String::from_utf8_lossy(&out.stdout).contains("sock_ops")
    };
    assert!(
        sockops_attached(),
        "sock_ops is attached before the uninstall"
    );
    labs.stop_proxy(&lab.name, "node-1").expect("stop");
    let config = labs.proxy_config_path(&lab.name, "node-1");
    let argv: Vec<String> = vec![
        "weft".into(),
        "proxy".into(),
        "--config".into(),
        config.display().to_string(),
        "--uninstall".into(),
    ];
    let out = labs
        .exec_on_node(&lab.name, "node-1", &argv)
        .expect("exec on node")
        .output()
        .expect("uninstall");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let status = labs.status(&lab.name).expect("status");
    let node = status
        .plan
        .nodes
        .iter()
        .find(|n| n.name == "node-1")
        .expect("node-1")
        .clone();
    assert!(
        !node.pin_dir.exists(),
        "pins left: {}",
        node.pin_dir.display()
    );
    let netns = node.netns;
    assert!(!sockops_attached(), "sock_ops left on the node's cgroup");
    let (filters, qdiscs, rules) = in_netns(&netns, move || {
        let run = |cmd: &str, args: &[&str]| {
            let out = Command::new(cmd).args(args).output().expect(cmd);
            String::from_utf8_lossy(&out.stdout).into_owned()
        };
        (
            run("tc", &["filter", "show", "dev", "wp0", "ingress"]),
            run("tc", &["qdisc", "show", "dev", "wp0"]),
            run("ip", &["rule", "show"]),
        )
    })
    .expect("thread in the node netns");
    assert!(filters.trim().is_empty(), "tc filters left: {filters}");
    assert!(!qdiscs.contains("clsact"), "clsact left: {qdiscs}");
    assert!(!rules.contains("fwmark"), "policy rule left: {rules}");

    // The proxy is still stopped: with capture in place (fail closed) this
    // connection would be refused. It goes straight to the server.
    let out = labs
        .client(&lab.name, "default/client", "http://198.18.1.3:8080/", &[])
        .expect("fetch without capture");
    assert_eq!(served(&out).pod, "echo-1");
}

#[test]
fn netlink_attachment_survives_a_restart_without_stacking_and_uninstall_removes_everything() {
    let lab = up_with(
        'u',
        &topology("closed").replace(
            "{name: node-1, failMode: closed}",
            "{name: node-1, failMode: closed, attach: netlink}",
        ),
    );
    let labs = labs();
    let netns = labs.status(&lab.name).expect("status").plan.nodes[0]
        .netns
        .clone();
    let filters = move || {
        let netns = netns.clone();
        in_netns(&netns, || {
            let out = Command::new("tc")
                .args(["filter", "show", "dev", "wp0", "ingress"])
                .output()
                .expect("tc");
            String::from_utf8_lossy(&out.stdout)
                .lines()
                .filter(|l| l.contains("weft_tc_ingress"))
                .count()
        })
        .expect("thread")
    };
    assert_eq!(filters(), 1);
    labs.stop_proxy(&lab.name, "node-1").expect("stop");
    labs.start_proxy_again(&lab.name, "node-1").expect("start");
    assert_eq!(
        filters(),
        1,
        "a restart finds its filter instead of adding another"
    );
    let out = labs
        .client(&lab.name, "default/client", "http://198.19.0.11/", &[])
        .expect("fetch");
    assert_eq!(served(&out).pod, "echo-1");
    uninstall_leaves_nothing(&lab);
}

#[test]
fn tcx_uninstall_removes_every_link_pin_and_route() {
    let lab = up('t', "closed");
    uninstall_leaves_nothing(&lab);
}

#[test]
fn pods_that_come_and_go_are_enrolled_and_unenrolled_and_services_follow() {
    let lab = up('a', "closed");
    let labs = labs();
    let spec = weft_lab::PodSpec::parse(
        "test",
        "{name: echo-3, node: node-1, labels: {at: one}, command: [weft, lab, app, echo]}",
    )
    .expect("pod YAML");
    let ip = labs.add_pod(&lab.name, spec).expect("add pod");
    let status = labs.status(&lab.name).expect("status");
    let veth = status
        .plan
        .find_pod("default/echo-3")
        .expect("pod")
        .host_veth
        .clone();
    let pin = Path::new("/sys/fs/bpf/weft")
        .join(lab.arg())
        .join("node-1/links")
        .join(format!("tc-{veth}"));
    assert!(
        pin.exists(),
        "the new pod's veth is enrolled: {}",
        pin.display()
    );

    // The service now has two endpoints. New connections pick one of two
    // idle endpoints at random (P2C on open connections): within 40
    // requests both answer (a miss has odds of 2 in 2^40).
    let mut seen = std::collections::BTreeSet::new();
    for _ in 0..40 {
        let out = labs
            .client(&lab.name, "default/client", "http://198.19.0.11/", &[])
            .expect("fetch");
        seen.insert(served(&out).pod);
        if seen.len() == 2 {
            break;
        }
    }
    assert_eq!(seen.into_iter().collect::<Vec<_>>(), ["echo-1", "echo-3"]);
    // The new meshed pod is reached through node-1's inbound listener.
    let url = format!("http://{ip}:8080/");
    labs.client(&lab.name, "legacy/client", &url, &[])
        .expect("fetch from node-2");
    // legacy/client is not meshed and no service fronts it: node-1 is not
    // told about it (see World::for_node), so the source is `unknown`.
    let series = "weft_tcp_connections_opened_total{direction=\"inbound\",source_workload=\"unknown\",destination_workload=\"default/echo-3\",destination_service=\"\"}";
    assert_eq!(metric(&lab.name, "node-1", series), 1);

    labs.delete_pod(&lab.name, "default/echo-3")
        .expect("delete pod");
    assert!(!pin.exists(), "the deleted pod's veth is unenrolled");
    for _ in 0..3 {
        let out = labs
            .client(&lab.name, "default/client", "http://198.19.0.11/", &[])
            .expect("fetch");
        assert_eq!(served(&out).pod, "echo-1");
    }
}

#[test]
fn a_proxy_refuses_a_broken_config_file_on_reload_and_keeps_serving_the_last_good_one() {
    let lab = up('h', "closed");
    let labs = labs();
    let generation = || -> u64 {
        let (_, body) = labs
            .proxy_admin(&lab.name, "node-1", "/config_dump")
            .expect("dump");
        let v: serde_json::Value = serde_json::from_str(&body).expect("JSON");
        v["generation"].as_u64().expect("generation")
    };
    let before = generation();
    let path = labs.proxy_config_path(&lab.name, "node-1");
    let good = std::fs::read_to_string(&path).expect("config");
    std::fs::write(&path, good.replace("outbound: 15001", "outbound: 99999")).expect("write");
    support::sighup_proxy(&lab.name, "node-1");
    let log = Path::new(weft_lab::DEFAULT_STATE_ROOT)
        .join(lab.arg())
        .join("logs/proxy-node-1.log");
    let refused = weft_lab::wait_until(Duration::from_secs(10), Duration::from_millis(20), || {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        text.lines()
            .find(|l| l.contains("config reload refused"))
            .map(str::to_owned)
    })
    .expect("the proxy reports the refusal");
    assert!(refused.contains("listeners.outbound"), "{refused}");
    assert_eq!(generation(), before, "the last good config stays");
    let out = labs
        .client(&lab.name, "default/client", "http://198.19.0.12/", &[])
        .expect("still serving");
    assert_eq!(served(&out).pod, "echo-2");
}
