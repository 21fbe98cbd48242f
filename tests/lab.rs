//! Lab tests: real network namespaces, veths, cgroups and processes.
//! They run as root (`cargo xtask test`) and fail, never skip, without it.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

mod support;

use support::{
    LabGuard, lab_netns, labs, process_alive, require_root, unique_lab_name, weft, weft_ok,
};
use weft_lab::app::Served;
use weft_lab::{DEFAULT_STATE_ROOT, LabName, in_netns, wait_until};

fn cgroup_dir(name: &LabName) -> PathBuf {
    Path::new("/sys/fs/cgroup/unified/weft-lab").join(name.as_str())
}

fn served(out: &str) -> Served {
    serde_json::from_str(out.trim())
        .unwrap_or_else(|e| panic!("not a served-by answer ({e}): {out:?}"))
}

/// Asserts that nothing of the lab is left: netns, cgroup, state, processes.
fn assert_gone(name: &LabName, pids: &[u32]) {
    assert!(
        lab_netns(name).is_empty(),
        "netns left: {:?}",
        lab_netns(name)
    );
    assert!(
        !cgroup_dir(name).exists(),
        "cgroup left: {}",
        cgroup_dir(name).display()
    );
    assert!(
        !Path::new(DEFAULT_STATE_ROOT).join(name.as_str()).exists(),
        "state left"
    );
    let alive: Vec<u32> = pids.iter().copied().filter(|&p| process_alive(p)).collect();
    assert!(alive.is_empty(), "processes left: {alive:?}");
}

fn pod_pids(name: &LabName) -> Vec<u32> {
    let path = Path::new(DEFAULT_STATE_ROOT)
        .join(name.as_str())
        .join("state.json");
    let Ok(text) = std::fs::read_to_string(path) else {
        return Vec::new();
    };
    let state: serde_json::Value = serde_json::from_str(&text).expect("state is JSON");
    state["processes"]
        .as_array()
        .map(|ps| {
            ps.iter()
                .filter_map(|p| p["pid"].as_u64())
                .map(|p| p as u32)
                .collect()
        })
        .unwrap_or_default()
}

fn write_topology(name: &LabName, yaml: &str) -> PathBuf {
    let path = std::env::temp_dir().join(format!("weft-test-{name}.yaml"));
    std::fs::write(&path, yaml).expect("writing a topology file");
    path
}

#[test]
fn exec_fetch_from_a_pod_prints_the_name_of_the_echo_pod_on_the_other_node() {
    require_root();
    let lab = LabGuard::new(unique_lab_name('a'));
    weft_ok(&["lab", "up", "--name", lab.arg()]);
    let status = labs().status(&lab.name).unwrap();
    let echo2 = status.pod("default/echo-2").unwrap();
    assert_ne!(status.pod("default/client").unwrap().node, echo2.node);

    let url = format!("http://{}:8080/", echo2.ip);
    let out = weft_ok(&[
        "lab",
        "exec",
        "--name",
        lab.arg(),
        "default/client",
        "--",
        "weft",
        "lab",
        "app",
        "client",
        &url,
    ]);
    let s = served(&out);
    assert_eq!(
        (s.namespace.as_str(), s.pod.as_str(), s.node.as_str()),
        ("default", "echo-2", "node-2")
    );

    let pids = pod_pids(&lab.name);
    assert_eq!(pids.len(), 2, "two echo pods run");
    weft_ok(&["lab", "down", "--name", lab.arg()]);
    assert_gone(&lab.name, &pids);
}

#[test]
fn tcp_and_http_between_pods_reach_the_named_pod_on_the_same_and_the_other_node() {
    require_root();
    let lab = LabGuard::new(unique_lab_name('b'));
    weft_ok(&["lab", "up", "--name", lab.arg()]);
    let labs = labs();
    let status = labs.status(&lab.name).unwrap();
    // 2 nodes x 2 pods: a client and an echo pod on each node.
    for node in ["node-1", "node-2"] {
        assert_eq!(status.pods.iter().filter(|p| p.node == node).count(), 2);
    }
    let mut same_node = 0;
    let mut cross_node = 0;
    for client in ["default/client", "legacy/client"] {
        for server in ["default/echo-1", "default/echo-2"] {
            let (c, s) = (status.pod(client).unwrap(), status.pod(server).unwrap());
            if c.node == s.node {
                same_node += 1;
            } else {
                cross_node += 1;
            }
            let http = format!("http://{}:8080/path", s.ip);
            for (args, proto) in [(&[][..], "HTTP/1.1"), (&["--http2"][..], "HTTP/2.0")] {
                let out = labs.client(&lab.name, client, &http, args).unwrap();
                let got = served(&String::from_utf8_lossy(&out));
                assert_eq!(got.key(), server, "{client} -> {server} over {proto}");
                assert_eq!(got.protocol, proto);
                assert_eq!(got.path.as_deref(), Some("/path"));
                // Every one of these flows goes through a node proxy (each
                // involves a meshed pod), and the server still sees the
                // client's own address: the proxies preserve it.
                assert_eq!(
                    got.peer.split(':').next(),
                    Some(c.ip.to_string().as_str()),
                    "{client} -> {server}: the client's address reaches the server"
                );
            }
            let whoami = format!("tcp://{}:7001", s.ip);
            let got = served(&String::from_utf8_lossy(
                &labs.client(&lab.name, client, &whoami, &[]).unwrap(),
            ));
            assert_eq!(got.key(), server, "{client} -> {server} over TCP");

            let payload = format!("from {client} to {server}");
            let echo = format!("tcp://{}:7000", s.ip);
            let out = labs
                .client(&lab.name, client, &echo, &["--data", &payload])
                .unwrap();
            assert_eq!(String::from_utf8_lossy(&out), payload);
        }
    }
    assert_eq!((same_node, cross_node), (2, 2));
}

#[test]
fn four_mib_echo_across_nodes_arrives_intact_after_a_half_close() {
    require_root();
    let lab = LabGuard::new(unique_lab_name('c'));
    weft_ok(&["lab", "up", "--name", lab.arg()]);
    let status = labs().status(&lab.name).unwrap();
    let target = SocketAddr::from((status.pod("default/echo-2").unwrap().ip, 7000));
    let netns = status
        .plan
        .find_pod("default/client")
        .unwrap()
        .netns
        .clone();
    // A socket opened inside the client pod's netns, used from this thread.
    let stream = in_netns(&netns, move || {
        TcpStream::connect_timeout(&target, Duration::from_secs(5))
    })
    .unwrap()
    .unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    let payload: Vec<u8> = (0..4 * 1024 * 1024u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    let mut reader = stream.try_clone().unwrap();
    let expected = payload.len();
    let received = std::thread::spawn(move || {
        let mut got = Vec::with_capacity(expected);
        reader.read_to_end(&mut got).map(|_| got)
    });
    let mut writer = stream;
    writer.write_all(&payload).unwrap();
    writer.shutdown(std::net::Shutdown::Write).unwrap();
    let got = received.join().unwrap().unwrap();
    assert_eq!(got.len(), payload.len());
    assert!(got == payload, "echoed bytes differ");
}

#[test]
fn exec_runs_in_the_pod_netns_and_cgroup_and_returns_the_exit_code() {
    require_root();
    let lab = LabGuard::new(unique_lab_name('d'));
    weft_ok(&["lab", "up", "--name", lab.arg()]);
    let out = weft(&[
        "lab",
        "exec",
        "--name",
        lab.arg(),
        "legacy/client",
        "--",
        "sh",
        "-c",
        "cat /proc/self/cgroup; ip -o -4 addr show dev eth0; echo pod=$WEFT_POD_NAMESPACE/$WEFT_POD_NAME; exit 7",
    ]);
    assert_eq!(out.status.code(), Some(7));
    let text = String::from_utf8_lossy(&out.stdout);
    let cg = format!("0::/weft-lab/{}/node-2/legacy_client", lab.arg());
    assert!(
        text.lines().any(|l| l == cg),
        "not in the pod cgroup: {text}"
    );
    assert!(
        text.contains("198.18.2.3/32"),
        "not in the pod netns: {text}"
    );
    assert!(text.contains("pod=legacy/client"), "{text}");

    let out = weft(&["lab", "exec", "--name", lab.arg(), "client", "--", "true"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("ambiguous"));
}

#[test]
fn status_prints_every_pod_ip_and_the_service_cluster_ip_and_logs_show_pod_output() {
    require_root();
    let lab = LabGuard::new(unique_lab_name('e'));
    weft_ok(&["lab", "up", "--name", lab.arg()]);
    let text = weft_ok(&["lab", "status", "--name", lab.arg()]);
    for want in [
        "default/client",
        "198.18.1.2",
        "default/echo-1",
        "198.18.1.3",
        "default/echo-2",
        "198.18.2.2",
        "legacy/client",
        "198.18.2.3",
        "default/echo",
        "198.19.0.10",
    ] {
        assert!(text.contains(want), "status lacks {want}:\n{text}");
    }
    let log = weft_ok(&["lab", "logs", "--name", lab.arg(), "default/echo-2"]);
    assert!(log.contains("echo server listening"), "{log}");
}

#[test]
fn a_second_up_of_the_same_lab_is_refused_and_the_first_keeps_working() {
    require_root();
    let lab = LabGuard::new(unique_lab_name('f'));
    weft_ok(&["lab", "up", "--name", lab.arg()]);
    let before = pod_pids(&lab.name);
    let out = weft(&["lab", "up", "--name", lab.arg()]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("already exists"), "{err}");
    assert_eq!(pod_pids(&lab.name), before);
    assert!(before.iter().all(|&p| process_alive(p)));
    let out = labs()
        .client(&lab.name, "legacy/client", "http://198.18.1.3:8080/", &[])
        .unwrap();
    assert_eq!(served(&String::from_utf8_lossy(&out)).pod, "echo-1");
}

#[test]
fn a_bad_topology_is_rejected_naming_file_and_field_and_creates_nothing() {
    require_root();
    let lab = LabGuard::new(unique_lab_name('g'));
    let file = write_topology(
        &lab.name,
        "nodes: [{name: node-1}]\nnamespaces: [{name: default}]\npods:\n  - {name: p, node: node-9}\n",
    );
    let out = weft(&[
        "lab",
        "up",
        "--name",
        lab.arg(),
        "-f",
        file.to_str().unwrap(),
    ]);
    std::fs::remove_file(&file).unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(&format!(
            "{}: pods[0].node: unknown node `node-9`",
            file.display()
        )),
        "{err}"
    );
    assert_gone(&lab.name, &[]);
}

#[test]
fn a_pod_that_never_listens_fails_up_with_a_pointer_to_its_log_and_leaves_nothing() {
    require_root();
    let lab = LabGuard::new(unique_lab_name('h'));
    let file = write_topology(
        &lab.name,
        r#"
nodes: [{name: n1}]
namespaces: [{name: default}]
pods:
  - {name: mute, node: n1, labels: {app: mute}, command: [sh, -c, "echo about to not listen; exec sleep 600"]}
services:
  - {name: mute, selector: {app: mute}, ports: [{port: 9999}]}
"#,
    );
    let out = weft(&[
        "lab",
        "up",
        "--name",
        lab.arg(),
        "-f",
        file.to_str().unwrap(),
        "--ready-timeout",
        "1",
    ]);
    std::fs::remove_file(&file).unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("pod default/mute did not listen on port 9999"),
        "{err}"
    );
    assert!(err.contains("default_mute.log"), "{err}");
    assert_gone(&lab.name, &[]);
}

#[test]
fn down_after_a_killed_up_removes_netns_cgroups_and_processes() {
    require_root();
    let lab = LabGuard::new(unique_lab_name('k'));
    // `up` starts both pods, then waits for `mute` to listen, which it never
    // does: it is killed there, with everything created and nothing cleaned.
    let file = write_topology(
        &lab.name,
        r#"
nodes: [{name: n1}, {name: n2}]
namespaces: [{name: default}]
pods:
  - {name: echo, node: n1, labels: {app: echo}, command: [weft, lab, app, echo]}
  - {name: mute, node: n2, labels: {app: mute}, command: [sleep, "600"]}
services:
  - {name: mute, selector: {app: mute}, ports: [{port: 9999}]}
"#,
    );
    let mut up = Command::new(support::weft_bin())
        .args([
            "lab",
            "up",
            "--name",
            lab.arg(),
            "-f",
            file.to_str().unwrap(),
            "--ready-timeout",
            "120",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let pids = wait_until(Duration::from_secs(20), Duration::from_millis(10), || {
        let pids = pod_pids(&lab.name);
        (pids.len() == 2).then_some(pids)
    })
    .expect("up started both pods");
    up.kill().unwrap();
    up.wait().unwrap();
    std::fs::remove_file(&file).unwrap();

    assert_eq!(
        lab_netns(&lab.name).len(),
        5,
        "underlay, 2 nodes, 2 pods left by the killed up"
    );
    assert!(pids.iter().all(|&p| process_alive(p)));
    assert!(cgroup_dir(&lab.name).exists());

    let out = weft_ok(&["lab", "down", "--name", lab.arg()]);
    assert!(
        out.contains("killed 2 processes, deleted 5 network namespaces"),
        "{out}"
    );
    assert_gone(&lab.name, &pids);
}
