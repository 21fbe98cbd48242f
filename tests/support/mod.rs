//! Shared helpers of weft's end-to-end tests (`mod support;` in each test file): the real `weft` binary, labs that are
//! removed when the test ends (passing or panicking), and unique lab names so
//! tests run in parallel.
//!
//! These tests need root. Without it they fail with a message saying so:
//! they never skip.

#![allow(
    dead_code,
    reason = "each test binary uses its own subset of these helpers"
)]

use std::path::PathBuf;
use std::process::{Command, Output};
use std::sync::atomic::{AtomicU32, Ordering};

use weft_lab::{LabName, Labs};

/// Fails the test unless it runs as root.
pub(crate) fn require_root() {
    #[expect(unsafe_code, reason = "geteuid has no preconditions and cannot fail")]
    // SAFETY: geteuid only reads the caller's credentials.
    let euid = unsafe { libc::geteuid() };
    assert_eq!(
        euid, 0,
        "lab tests create network namespaces and cgroups and must run as root \
         (run `cargo xtask test` as root); they never skip"
    );
}

/// The `weft` binary under test. The tests are targets of the `weft`
/// package, so cargo builds this binary before it runs them and tells them
/// where it is.
pub(crate) fn weft_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_weft"))
}

/// A lab name unique to this process and call: `t<pid><n>`, short enough for
/// the 12-character limit.
pub(crate) fn unique_lab_name(tag: char) -> LabName {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    format!("{tag}{}x{n}", std::process::id() % 1_000_000)
        .parse()
        .expect("a valid lab name")
}

/// Runs `weft <args>` and returns its output.
pub(crate) fn weft(args: &[&str]) -> Output {
    Command::new(weft_bin())
        .args(args)
        .output()
        .expect("running the weft binary")
}

/// Runs `weft <args>`, asserts success, and returns stdout.
pub(crate) fn weft_ok(args: &[&str]) -> String {
    success_stdout(&format!("weft {args:?}"), &weft(args))
}

/// Runs `command` in `pod` of the lab (`weft lab exec`).
pub(crate) fn in_pod(lab: &LabGuard, pod: &str, command: &[&str]) -> Output {
    let mut all = vec!["lab", "exec", "--name", lab.arg(), pod, "--"];
    all.extend_from_slice(command);
    weft(&all)
}

/// `n` requests from default/client to `url` on one connection, with
/// `headers`: the client's JSON lines (one per response, then a summary
/// when `n` is not 1).
pub(crate) fn client_json(
    lab: &LabGuard,
    url: &str,
    n: usize,
    headers: &[&str],
) -> Vec<serde_json::Value> {
    let count = n.to_string();
    let mut cmd = vec![
        "weft",
        "lab",
        "app",
        "client",
        url,
        "--json",
        "--count",
        &count,
        "--timeout",
        "30",
    ];
    for h in headers {
        cmd.extend(["--header", h]);
    }
    success_stdout("weft lab app client", &in_pod(lab, "default/client", &cmd))
        .lines()
        .map(|l| serde_json::from_str(l).expect("JSON"))
        .collect()
}

/// [`client_json`]'s summary: the responses per status.
pub(crate) fn client_statuses(
    lab: &LabGuard,
    url: &str,
    n: usize,
    headers: &[&str],
) -> serde_json::Value {
    let lines = client_json(lab, url, n, headers);
    lines.last().expect("a summary")["summary"]["statuses"].clone()
}

/// Asserts that the command described by `what` succeeded and returns its
/// stdout; a failure shows both of its outputs.
pub(crate) fn success_stdout(what: &str, out: &Output) -> String {
    assert!(
        out.status.success(),
        "{what} failed ({}):\nstdout:\n{}\nstderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The lab library pointed at this build's `weft` binary.
pub(crate) fn labs() -> Labs {
    Labs::new(weft_bin()).expect("a cgroup v2 mount")
}

/// Removes its lab when dropped, also when the test panics.
#[derive(Debug)]
pub(crate) struct LabGuard {
    /// The lab's name.
    pub(crate) name: LabName,
    labs: Labs,
}

impl LabGuard {
    /// Guards `name` (which need not exist yet).
    pub(crate) fn new(name: LabName) -> LabGuard {
        LabGuard { name, labs: labs() }
    }
    /// The lab's name as text, for CLI arguments.
    pub(crate) fn arg(&self) -> &str {
        self.name.as_str()
    }
}

impl Drop for LabGuard {
    fn drop(&mut self) {
        if let Err(e) = self.labs.down(&self.name) {
            eprintln!("cleaning up lab {}: {e}", self.name);
        }
    }
}

/// Names of this lab's network namespaces that exist now.
pub(crate) fn lab_netns(name: &LabName) -> Vec<String> {
    let prefix = name.netns_prefix();
    std::fs::read_dir("/run/netns")
        .map(|rd| {
            rd.filter_map(Result::ok)
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.starts_with(&prefix))
                .collect()
        })
        .unwrap_or_default()
}

/// Whether a process exists (and is not a zombie).
pub(crate) fn process_alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|s| {
            s.rsplit_once(')')
                .is_some_and(|(_, rest)| !rest.trim_start().starts_with(['Z', 'X']))
        })
        .unwrap_or(false)
}

/// Sends SIGHUP to `node`'s proxy (it reads its config file again).
pub(crate) fn sighup_proxy(lab: &LabName, node: &str) {
    let pid = proxy_pid(lab, node);
    let hup = Command::new("kill")
        .args(["-HUP", &pid.to_string()])
        .status()
        .expect("kill");
    assert!(hup.success(), "kill -HUP {pid}");
}

/// Brings up a lab from topology YAML under a unique name, its proxies
/// tracing nothing (`--no-otlp`); it goes away with the guard.
pub(crate) fn up_with(tag: char, topology: &str) -> LabGuard {
    up_with_args(tag, topology, &["--no-otlp"])
}

/// Brings up a lab from topology YAML under a unique name with more
/// `weft lab up` arguments; it goes away with the guard.
pub(crate) fn up_with_args(tag: char, topology: &str, args: &[&str]) -> LabGuard {
    require_root();
    let lab = LabGuard::new(unique_lab_name(tag));
    let file = std::env::temp_dir().join(format!("weft-test-{}.yaml", lab.arg()));
    std::fs::write(&file, topology).expect("writing the topology");
    let mut argv = vec![
        "lab",
        "up",
        "--name",
        lab.arg(),
        "-f",
        file.to_str().expect("a UTF-8 temp path"),
    ];
    argv.extend_from_slice(args);
    weft_ok(&argv);
    std::fs::remove_file(&file).expect("removing the topology");
    lab
}

/// The sum of a metric over every series whose labels include the given
/// ones, in Prometheus text: `series` is `name` or `name{k="v",...}` with
/// any subset of the labels (so adding a label to a metric breaks no test).
pub(crate) fn metric_sum(body: &str, series: &str) -> u64 {
    let (name, wanted) = match series.split_once('{') {
        Some((n, rest)) => (n, rest.trim_end_matches('}')),
        None => (series, ""),
    };
    let wanted: Vec<&str> = wanted.split(',').filter(|s| !s.is_empty()).collect();
    body.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let (head, value) = l.rsplit_once(' ')?;
            let (n, labels) = match head.split_once('{') {
                Some((n, rest)) => (n, rest.trim_end_matches('}')),
                None => (head, ""),
            };
            let have: Vec<&str> = labels.split(',').collect();
            (n == name && wanted.iter().all(|w| have.contains(w)))
                .then(|| value.parse::<u64>().ok())
                .flatten()
        })
        .sum()
}

/// [`metric_sum`] of a lab proxy's `/metrics`.
pub(crate) fn proxy_metric(lab: &LabName, node: &str, series: &str) -> u64 {
    let (status, body) = labs()
        .proxy_admin(lab, node, "/metrics")
        .expect("scraping the proxy");
    assert_eq!(status, 200, "{body}");
    metric_sum(&body, series)
}

/// Writes `yaml` to a file called `name`, runs `weft apply -f` on it against
/// the lab, removes the file, and returns the file's path (as `weft apply`
/// names it in errors) with the command's output.
pub(crate) fn apply(lab: &LabGuard, name: &str, yaml: &str) -> (String, Output) {
    with_file(lab, name, yaml, &["apply"])
}

/// Writes `yaml` to a file named after `name` and runs `weft <command>
/// --lab <lab> -f <file>` (the file is removed after); the file's path
/// and the output.
pub(crate) fn with_file(
    lab: &LabGuard,
    name: &str,
    yaml: &str,
    command: &[&str],
) -> (String, Output) {
    let path = std::env::temp_dir().join(format!("weft-test-{}-{name}", lab.arg()));
    std::fs::write(&path, yaml).expect("writing YAML");
    let file = path.to_str().expect("UTF-8").to_owned();
    let mut args = command.to_vec();
    args.extend(["--lab", lab.arg(), "-f", &file]);
    let out = weft(&args);
    std::fs::remove_file(&path).expect("cleanup");
    (file, out)
}

/// Like [`apply`], but asserts success and returns stdout.
pub(crate) fn apply_ok(lab: &LabGuard, name: &str, yaml: &str) -> String {
    let (file, out) = apply(lab, name, yaml);
    success_stdout(&format!("weft apply -f {file}"), &out)
}

/// The PID of `node`'s running proxy.
pub(crate) fn proxy_pid(lab: &LabName, node: &str) -> u32 {
    labs()
        .status(lab)
        .expect("the lab's status")
        .proxies
        .iter()
        .find_map(|(n, phase)| match phase {
            weft_lab::PodPhase::Running { pid } if n == node => Some(*pid),
            _ => None,
        })
        .unwrap_or_else(|| panic!("{node}'s proxy runs"))
}

/// `count` gRPC calls (`weft lab app grpc`) of `method` from pod `client`
/// to `addr`, with `metadata` (`name: value`): every answer's JSON and,
/// with `count` > 1, the summary last.
pub(crate) fn grpc_calls(
    lab: &LabGuard,
    client: &str,
    addr: &str,
    method: &str,
    count: usize,
    metadata: &[&str],
) -> Vec<serde_json::Value> {
    let count = count.to_string();
    let mut cmd = vec![
        "lab",
        "exec",
        "--name",
        lab.arg(),
        client,
        "--",
        "weft",
        "lab",
        "app",
        "grpc",
        addr,
        method,
        "--json",
        "--count",
        &count,
        "--timeout",
        "60",
    ];
    for m in metadata {
        cmd.extend(["--metadata", m]);
    }
    success_stdout("weft lab app grpc", &weft(&cmd))
        .lines()
        .map(|l| serde_json::from_str(l).expect("JSON"))
        .collect()
}

/// The `namespace/pod` that answered a gRPC call (the echo's context).
pub(crate) fn grpc_pod(answer: &serde_json::Value) -> String {
    let c = &answer["response"]["assertions"]["context"];
    format!(
        "{}/{}",
        c["namespace"].as_str().unwrap_or("?"),
        c["pod"].as_str().unwrap_or("?")
    )
}
