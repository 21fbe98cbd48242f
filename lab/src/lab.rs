//! Making a plan real, reporting on it, and taking it apart.

use std::collections::BTreeSet;
use std::fmt;
use std::fs;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::cgroup;
use crate::control;
use crate::error::LabError;
use crate::netns::{self, Placement, ip};
use crate::otlp::{self, Otlp, OtlpRecord};
use crate::plan::{LabName, NETNS_PREFIX, NodePlan, Plan, PodPlan};
use crate::proxy;
use crate::state::{LabState, Phase, ProcessRecord, ProxyRecord};
use crate::topology::{MeshMode, PodSpec, Topology};
use crate::wait::wait_until;

/// The default directory for lab state files and pod logs.
pub const DEFAULT_STATE_ROOT: &str = "/run/weft/lab";

/// Where labs live on this host, and how to start their processes.
#[derive(Debug, Clone)]
pub struct Labs {
    state_root: PathBuf,
    cgroup_root: PathBuf,
    weft_bin: PathBuf,
    ready_timeout: Duration,
    otlp: Otlp,
}

impl Labs {
    /// Labs on this host, with state under [`DEFAULT_STATE_ROOT`] and cgroups
    /// under the detected cgroup v2 mount. A pod command starting with `weft`
    /// runs `weft_bin`.
    pub fn new(weft_bin: impl Into<PathBuf>) -> Result<Labs, LabError> {
        Ok(Labs {
            state_root: PathBuf::from(DEFAULT_STATE_ROOT),
            cgroup_root: cgroup::detect_root()?,
            weft_bin: weft_bin.into(),
            ready_timeout: Duration::from_secs(15),
            otlp: Otlp::Off,
        })
    }

    /// Where the proxies of labs brought up from now on send trace spans
    /// (off by default: the bench's rows compare proxies that trace
    /// nothing).
    pub fn with_otlp(mut self, otlp: Otlp) -> Labs {
        self.otlp = otlp;
        self
    }

    /// How long `up` waits for pods to listen on their service ports.
    pub fn with_ready_timeout(mut self, timeout: Duration) -> Labs {
        self.ready_timeout = timeout;
        self
    }

    /// The directory holding a lab's state file and logs.
    pub fn state_dir(&self, lab: &LabName) -> PathBuf {
        self.state_root.join(lab.as_str())
    }

    /// The directory holding every lab's cgroups.
    pub fn labs_cgroup_dir(&self) -> PathBuf {
        self.cgroup_root.join(cgroup::LABS_DIR)
    }

    fn cgroup_dir(&self, lab: &LabName) -> PathBuf {
        self.labs_cgroup_dir().join(lab.as_str())
    }

    /// Creates a lab and starts its pods; returns once every pod with a
    /// command listens on its services' ports. On failure, whatever was
    /// created is removed again and the first error is returned.
    pub fn up(
        &self,
        lab: &LabName,
        topology_file: &str,
        topology: &Topology,
    ) -> Result<Status, LabError> {
        require_root()?;
        cgroup::check_v2(&self.cgroup_root)?;
        proxy::ensure_bpffs()?;
        self.refuse_existing(lab)?;

        let dir = self.state_dir(lab);
        cgroup::create_dir_all_racing(&dir.join("logs"))
            .map_err(LabError::io(format!("creating {}", dir.display())))?;
        let mut state = LabState {
            name: lab.clone(),
            phase: Phase::Creating,
            topology_file: topology_file.to_owned(),
            plan: Plan::new(lab, topology),
            topology: topology.clone(),
            cgroup_dir: self.cgroup_dir(lab),
            netns: Vec::new(),
            processes: Vec::new(),
            proxies: Vec::new(),
            control: None,
            otlp: None,
        };
        state.save(&dir)?;

        if let Err(e) = self.build(&mut state, &dir) {
            if let Err(cleanup) = self.down(lab) {
                tracing::warn!(lab = %lab, error = %cleanup, "cleaning up after a failed `up`");
            }
            return Err(e);
        }
        state.phase = Phase::Ready;
        state.save(&dir)?;
        self.status(lab)
    }

    fn refuse_existing(&self, lab: &LabName) -> Result<(), LabError> {
        let dir = self.state_dir(lab);
        let exists = |evidence: String| LabError::AlreadyExists {
            name: lab.to_string(),
            evidence,
        };
        if dir.exists() {
            return Err(exists(format!("state at {}", dir.display())));
        }
        let prefix = lab.netns_prefix();
        if let Some(ns) = netns::list()?.into_iter().find(|n| n.starts_with(&prefix)) {
            return Err(exists(format!(
                "netns {ns} is left over, with no state file"
            )));
        }
        let cg = self.cgroup_dir(lab);
        if cg.exists() {
            return Err(exists(format!("cgroup {} is left over", cg.display())));
        }
        let pins = proxy::lab_pin_dir(lab.as_str());
        if pins.exists() {
            return Err(exists(format!(
                "bpffs pins {} are left over",
                pins.display()
            )));
        }
        Ok(())
    }

    fn build(&self, state: &mut LabState, dir: &Path) -> Result<(), LabError> {
        let plan = state.plan.clone();

        add_netns(state, dir, &plan.underlay_netns)?;
        let ul = plan.underlay_netns.as_str();
        ip(&["-n", ul, "link", "add", "br0", "type", "bridge"])?;
        ip(&["-n", ul, "link", "set", "br0", "up"])?;
        let control_addr = format!("{}/24", control::CONTROL_IP);
        ip(&["-n", ul, "addr", "add", &control_addr, "dev", "br0"])?;

        for node in &plan.nodes {
            self.build_node(state, dir, &plan, node)?;
        }
        for node in &plan.nodes {
            for other in plan.nodes.iter().filter(|o| o.name != node.name) {
                ip(&[
                    "-n",
                    &node.netns,
                    "route",
                    "add",
                    &other.pod_cidr.to_string(),
                    "via",
                    &other.underlay_ip.to_string(),
                    "dev",
                    "eth0",
                ])?;
            }
        }
        for pod in &plan.pods {
            let node = plan.node_of(pod).ok_or_else(|| {
                LabError::Host(format!("pod {} names unknown node {}", pod.key(), pod.node))
            })?;
            build_pod(state, dir, node, pod)?;
            cgroup::create(&state.cgroup_dir.join(&pod.cgroup))?;
        }
        for pod in plan.pods.iter().filter(|p| p.command.is_some()) {
            let pid = self.start_pod(state, dir, pod)?;
            state.processes.push(ProcessRecord {
                pod: pod.key(),
                pid,
            });
            state.save(dir)?;
        }
        for pod in &plan.pods {
            self.wait_ready(state, dir, pod)?;
        }
        self.start_control(state, dir)?;
        self.start_otlp(state, dir)?;
        for node in &plan.nodes {
            self.start_proxy(state, dir, node)?;
        }
        Ok(())
    }

    /// Starts the lab's OTLP receiver when it runs one, and records where
    /// the proxies send spans.
    fn start_otlp(&self, state: &mut LabState, dir: &Path) -> Result<(), LabError> {
        state.otlp = match &self.otlp {
            Otlp::Off => None,
            Otlp::Endpoint(url) => Some(OtlpRecord {
                endpoint: url.clone(),
                receiver: None,
            }),
            Otlp::Receiver { delay_ms } => {
                if !otlp::receiver_installed() {
                    return Err(LabError::Host(
                        "the lab's OTLP receiver needs the Python packages grpcio and \
                         opentelemetry-proto: run `cargo xtask setup`"
                            .to_owned(),
                    ));
                }
                let cmd = otlp::receiver_command(dir, *delay_ms)?;
                let log = dir.join("logs").join("otlp.log");
                let what = "the OTLP receiver".to_owned();
                let cg = state.cgroup_dir.join("otlp");
                let pid = spawn_detached(cmd, &state.plan.underlay_netns, &cg, &log, &what)?;
                state.otlp = Some(OtlpRecord {
                    endpoint: otlp::receiver_endpoint(),
                    receiver: Some(pid),
                });
                state.save(dir)?;
                self.wait_listening(pid, otlp::GRPC_PORT, what, log)?;
                state.otlp.clone()
            }
        };
        state.save(dir)
    }

    /// Stops the lab's OTLP receiver (the proxies' exports then fail and
    /// their spans are dropped, counted).
    pub fn stop_otlp(&self, lab: &LabName) -> Result<(), LabError> {
        require_root()?;
        let state = self.loaded(lab)?;
        match state.otlp.and_then(|o| o.receiver) {
            Some(pid) => stop_process(pid, "the OTLP receiver"),
            None => Err(LabError::Host(format!("lab {lab} runs no OTLP receiver"))),
        }
    }

    /// The spans the lab's receiver has stored, in the order received.
    pub fn spans(&self, lab: &LabName) -> Result<Vec<otlp::StoredSpan>, LabError> {
        let state = self.loaded(lab)?;
        if state.otlp.as_ref().is_none_or(|o| o.receiver.is_none()) {
            return Err(LabError::Host(format!(
                "lab {lab} runs no OTLP receiver (its proxies send spans to {})",
                state
                    .otlp
                    .map_or_else(|| "nowhere".to_owned(), |o| o.endpoint)
            )));
        }
        otlp::read_spans(&otlp::spans_file(&self.state_dir(lab)))
    }

    /// Writes the topology for the control plane, starts `weft control` in
    /// the underlay netns, and waits until it listens.
    fn start_control(&self, state: &mut LabState, dir: &Path) -> Result<u32, LabError> {
        let cp_dir = control::dir(dir);
        fs::create_dir_all(&cp_dir)
            .map_err(LabError::io(format!("creating {}", cp_dir.display())))?;
        if !cp_dir.join("lab-topology.yaml").exists()
            && !cp_dir.join("applied-lab-topology.yaml").exists()
        {
            let path = cp_dir.join("lab-topology.yaml");
            fs::write(&path, control::manifests(&state.topology, &state.plan)?)
                .map_err(LabError::io(format!("writing {}", path.display())))?;
        }
        // Each node proxy has a token; the control plane knows their
        // digests, and issues certificates with a root kept in the lab.
        let mut credentials = String::new();
        for node in &state.plan.nodes {
            let token = proxy::node_token(dir, &node.name)?;
            credentials.push_str(&format!(
                "{}: {}\n",
                node.name,
                weft_control::auth::digest(&token)
            ));
        }
        let credentials_path = dir.join("node-credentials.yaml");
        fs::write(&credentials_path, credentials).map_err(LabError::io(format!(
            "writing {}",
            credentials_path.display()
        )))?;
        let log_path = dir.join("logs").join("control.log");
        let mut cmd = Command::new(&self.weft_bin);
        cmd.arg("control")
            .arg("--dir")
            .arg(&cp_dir)
            .arg("--ca-dir")
            .arg(dir.join("ca"))
            .arg("--node-credentials")
            .arg(&credentials_path)
            .arg("--listen")
            .arg(format!("{}:{}", control::CONTROL_IP, control::CONTROL_PORT))
            .arg("--unix")
            .arg(control::socket(dir))
            .env("WEFT_LAB", state.name.as_str());
        cmd.arg("--tls-name").arg(control::CONTROL_IP.to_string());
        if let Some(ttl) = state.topology.identity.certificate_ttl_seconds {
            cmd.arg("--cert-ttl").arg(ttl.to_string());
        }
        let cg = state.cgroup_dir.join("control");
        let what = "the control plane".to_owned();
        let pid = spawn_detached(cmd, &state.plan.underlay_netns, &cg, &log_path, &what)?;
        state.control = Some(pid);
        state.save(dir)?;
        self.wait_listening(pid, control::CONTROL_PORT, what, log_path.clone())?;
        // `weft apply` from the host uses the unix socket, bound just after
        // the TCP port: wait until it accepts too.
        let sock = control::socket(dir);
        wait_until(self.ready_timeout, Duration::from_millis(10), || {
            std::os::unix::net::UnixStream::connect(&sock).ok()
        })
        .ok_or_else(|| {
            LabError::Host(format!(
                "the control plane's socket {} does not accept; see {}",
                sock.display(),
                log_path.display()
            ))
        })?;
        Ok(pid)
    }

    /// Stops the lab's control plane. Proxies keep serving their last config.
    pub fn stop_control(&self, lab: &LabName) -> Result<(), LabError> {
        require_root()?;
        let state = self.loaded(lab)?;
        let Some(pid) = state.control else {
            return Err(LabError::Host(format!("lab {lab} has no control plane")));
        };
        stop_process(pid, "the control plane")
    }

    /// Starts the lab's control plane again (after [`Labs::stop_control`]);
    /// it reads what it stored and proxies reconnect to it.
    pub fn start_control_again(&self, lab: &LabName) -> Result<u32, LabError> {
        require_root()?;
        let dir = self.state_dir(lab);
        let mut state = self.loaded(lab)?;
        if let Some(pid) = state.control
            && alive(pid)
        {
            return Err(LabError::Host(format!(
                "the control plane runs (pid {pid})"
            )));
        }
        self.start_control(&mut state, &dir)
    }

    /// Starts `node`'s proxy, records it, and waits until its admin port
    /// listens (it binds that after capture is in place and its listeners
    /// are bound).
    fn start_proxy(
        &self,
        state: &mut LabState,
        dir: &Path,
        node: &NodePlan,
    ) -> Result<u32, LabError> {
        let config = proxy::write_config(dir, state, node)?;
        let log_path = proxy::log_file(dir, &node.name);
        let mut cmd = Command::new(&self.weft_bin);
        cmd.arg("proxy")
            .arg("--config")
            .arg(&config)
            .args(["--workers", "1"])
            .env("WEFT_LAB", state.name.as_str())
            .env("WEFT_NODE_NAME", &node.name);
        if let Some(o) = &state.otlp {
            cmd.env("OTEL_EXPORTER_OTLP_ENDPOINT", &o.endpoint)
                .env("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc");
        }
        let what = format!("the proxy of node {}", node.name);
        let cg = state.cgroup_dir.join(&node.proxy_cgroup);
        let pid = spawn_detached(cmd, &node.netns, &cg, &log_path, &what)?;
        state.proxies.retain(|p| p.node != node.name);
        state.proxies.push(ProxyRecord {
            node: node.name.clone(),
            pid,
        });
        state.save(dir)?;

        let admin = weft_proxy::config::Listeners::default().admin;
        self.wait_listening(pid, admin, what, log_path)?;
        Ok(pid)
    }

    /// Waits until `pid` listens on `port`; fails early if it exits.
    fn wait_listening(
        &self,
        pid: u32,
        port: u16,
        what: String,
        log: PathBuf,
    ) -> Result<(), LabError> {
        let outcome = wait_until(self.ready_timeout, Duration::from_millis(10), || {
            if !alive(pid) {
                Some(Err("its process exited"))
            } else if listening(pid, port) {
                Some(Ok(()))
            } else {
                None
            }
        });
        match outcome {
            Some(Ok(())) => Ok(()),
            other => Err(LabError::NotReady {
                pod: what,
                port,
                secs: self.ready_timeout.as_secs_f64(),
                detail: match other {
                    Some(Err(why)) => why.to_owned(),
                    _ => "its process is running".to_owned(),
                },
                tail: tail(&log),
                log,
            }),
        }
    }

    /// Stops `node`'s proxy (SIGTERM, then SIGKILL after 10 s) and waits for
    /// it to be gone. Capture stays: its pins outlive the process.
    pub fn stop_proxy(&self, lab: &LabName, node: &str) -> Result<(), LabError> {
        require_root()?;
        let state = self.loaded(lab)?;
        let Some(record) = state.proxies.iter().find(|p| p.node == node) else {
            return Err(LabError::Host(format!(
                "lab {lab} has no proxy on node {node}"
            )));
        };
        stop_process(record.pid, &format!("the proxy of node {node}"))
    }

    /// Starts `node`'s proxy again (after [`Labs::stop_proxy`]) and waits
    /// until it is ready. Returns its PID.
    pub fn start_proxy_again(&self, lab: &LabName, node: &str) -> Result<u32, LabError> {
        require_root()?;
        let dir = self.state_dir(lab);
        let mut state = self.loaded(lab)?;
        let node = state
            .plan
            .find_node(node)
            .map_err(LabError::NoSuchPod)?
            .clone();
        if let Some(p) = state.proxies.iter().find(|p| p.node == node.name)
            && alive(p.pid)
        {
            return Err(LabError::Host(format!(
                "the proxy of node {} is running (pid {})",
                node.name, p.pid
            )));
        }
        self.start_proxy(&mut state, &dir, &node)
    }

    /// Sets (`Some`) or removes (`None`) a label of a namespace (`target` =
    /// `ns`) or a pod (`ns/pod`), then has every proxy apply the new config
    /// without a restart: a `weft.io/mesh` label turns capture on or off for
    /// the pods it covers. Returns once every running proxy applied it.
    pub fn label(
        &self,
        lab: &LabName,
        target: &str,
        key: &str,
        value: Option<&str>,
    ) -> Result<(), LabError> {
        require_root()?;
        let dir = self.state_dir(lab);
        let mut state = self.loaded(lab)?;
        let mut topology = state.topology.clone();
        let labels = match target.split_once('/') {
            Some((ns, name)) => topology
                .pods
                .iter_mut()
                .find(|p| p.namespace == ns && p.name == name)
                .map(|p| &mut p.labels)
                .ok_or_else(|| LabError::NoSuchPod(format!("no pod `{target}` in lab {lab}")))?,
            None => topology
                .namespaces
                .iter_mut()
                .find(|n| n.name == target)
                .map(|n| &mut n.labels)
                .ok_or_else(|| {
                    LabError::NoSuchPod(format!("no namespace `{target}` in lab {lab}"))
                })?,
        };
        match value {
            Some(v) => labels.insert(key.to_owned(), v.to_owned()),
            None => labels.remove(key),
        };
        let topology = topology.validated(&format!("lab {lab} after labelling {target}"))?;
        state.plan = Plan::keeping(lab, &topology, Some(&state.plan));
        state.topology = topology;
        state.save(&dir)?;
        self.reconfigure_proxies(&state, &dir)
    }

    /// Writes every proxy's config from the plan (their bootstrap on a
    /// restart), then has the running proxies take the change: through the
    /// control plane when it runs (waiting for every proxy's ACK), else by
    /// SIGHUP (waiting for each to report a new generation).
    fn reconfigure_proxies(&self, state: &LabState, dir: &Path) -> Result<(), LabError> {
        if let Some(pid) = state.control
            && alive(pid)
        {
            for node in &state.plan.nodes {
                proxy::write_config(dir, state, node)?;
            }
            let running: Vec<String> = state
                .proxies
                .iter()
                .filter(|p| alive(p.pid))
                .map(|p| p.node.clone())
                .collect();
            let yaml = control::manifests(&state.topology, &state.plan)?;
            control::apply(dir, yaml, &running, self.ready_timeout)?;
            return Ok(());
        }
        let admin = weft_proxy::config::Listeners::default().admin;
        for node in &state.plan.nodes {
            let Some(record) = state.proxies.iter().find(|p| p.node == node.name) else {
                continue;
            };
            if !alive(record.pid) {
                proxy::write_config(dir, state, node)?;
                continue;
            }
            let before = generation(&node.netns, admin)?;
            proxy::write_config(dir, state, node)?;
            signal(record.pid, libc::SIGHUP);
            wait_until(self.ready_timeout, Duration::from_millis(10), || {
                generation(&node.netns, admin).ok().filter(|g| *g > before)
            })
            .ok_or_else(|| {
                LabError::Host(format!(
                    "the proxy of node {} did not apply the new config; see {}",
                    node.name,
                    proxy::log_file(dir, &node.name).display()
                ))
            })?;
        }
        Ok(())
    }

    /// Adds a pod to a running lab: its netns, veth, cgroup and command;
    /// then every proxy applies the new config (the pod's node enrolls its
    /// veth; services that select it gain an endpoint). Other pods keep
    /// their addresses. Returns the pod's address.
    pub fn add_pod(&self, lab: &LabName, pod: PodSpec) -> Result<Ipv4Addr, LabError> {
        require_root()?;
        let dir = self.state_dir(lab);
        let mut state = self.loaded(lab)?;
        let key = format!("{}/{}", pod.namespace, pod.name);
        let mut topology = state.topology.clone();
        topology.pods.push(pod);
        let topology = topology.validated(&format!("lab {lab} after adding pod {key}"))?;
        let plan = Plan::keeping(lab, &topology, Some(&state.plan));
        let new = plan.find_pod(&key).map_err(LabError::NoSuchPod)?.clone();
        let node = plan
            .node_of(&new)
            .cloned()
            .ok_or_else(|| LabError::Host(format!("pod {key} names unknown node {}", new.node)))?;
        state.plan = plan;
        state.topology = topology;
        state.save(&dir)?;
        build_pod(&mut state, &dir, &node, &new)?;
        cgroup::create(&state.cgroup_dir.join(&new.cgroup))?;
        if new.command.is_some() {
            let pid = self.start_pod(&state, &dir, &new)?;
            state.processes.push(ProcessRecord {
                pod: new.key(),
                pid,
            });
            state.save(&dir)?;
            self.wait_ready(&state, &dir, &new)?;
        }
        self.reconfigure_proxies(&state, &dir)?;
        Ok(new.ip)
    }

    /// Deletes a pod from a running lab: kills its processes, removes its
    /// netns (and so its veth) and cgroup; then every proxy applies the new
    /// config (its node unenrolls the veth; services lose the endpoint).
    pub fn delete_pod(&self, lab: &LabName, key: &str) -> Result<(), LabError> {
        require_root()?;
        let dir = self.state_dir(lab);
        let mut state = self.loaded(lab)?;
        let pod = state
            .plan
            .find_pod(key)
            .map_err(LabError::NoSuchPod)?
            .clone();
        cgroup::kill_and_remove(&state.cgroup_dir.join(&pod.cgroup))?;
        netns::delete(&pod.netns)?;
        state.netns.retain(|n| *n != pod.netns);
        state.processes.retain(|p| p.pod != pod.key());
        let mut topology = state.topology.clone();
        topology
            .pods
            .retain(|p| !(p.namespace == pod.namespace && p.name == pod.name));
        let topology =
            topology.validated(&format!("lab {lab} after deleting pod {}", pod.key()))?;
        state.plan = Plan::keeping(lab, &topology, Some(&state.plan));
        state.topology = topology;
        state.save(&dir)?;
        self.reconfigure_proxies(&state, &dir)
    }

    /// `GET path` on the admin port of `node`'s proxy: status and body.
    pub fn proxy_admin(
        &self,
        lab: &LabName,
        node: &str,
        path: &str,
    ) -> Result<(u16, String), LabError> {
        let state = self.loaded(lab)?;
        let node = state.plan.find_node(node).map_err(LabError::NoSuchPod)?;
        proxy::admin_get(
            &node.netns,
            weft_proxy::config::Listeners::default().admin,
            path,
        )
    }

    fn build_node(
        &self,
        state: &mut LabState,
        dir: &Path,
        plan: &Plan,
        node: &NodePlan,
    ) -> Result<(), LabError> {
        let ns = node.netns.as_str();
        add_netns(state, dir, ns)?;
        let ul = plan.underlay_netns.as_str();
        let port = node.underlay_port.as_str();
        ip(&[
            "link", "add", "eth0", "netns", ns, "type", "veth", "peer", "name", port, "netns", ul,
        ])?;
        ip(&["-n", ul, "link", "set", port, "master", "br0", "up"])?;
        let addr = format!("{}/24", node.underlay_ip);
        ip(&["-n", ns, "addr", "add", &addr, "dev", "eth0"])?;
        ip(&["-n", ns, "link", "set", "eth0", "up"])?;
        netns::sysctl(ns, "net/ipv4/ip_forward", "1")?;
        cgroup::create(&state.cgroup_dir.join(&node.cgroup))
    }

    fn start_pod(&self, state: &LabState, dir: &Path, pod: &PodPlan) -> Result<u32, LabError> {
        let Some(argv) = &pod.command else {
            return Err(LabError::Host(format!("pod {} has no command", pod.key())));
        };
        let (log, log2) = open_log(&log_file(dir, pod))?;
        let mut cmd = self.pod_command(state, pod, argv)?;
        cmd.stdin(Stdio::null()).stdout(log).stderr(log2);
        placement(state, pod, true)?.apply(&mut cmd);
        let mut child = cmd.spawn().map_err(LabError::io(format!(
            "starting pod {} command {argv:?}",
            pod.key()
        )))?;
        let pid = child.id();
        // Reap it when it ends, so no zombie outlives it in a long-lived caller.
        std::thread::spawn(move || child.wait());
        Ok(pid)
    }

    /// A command for `argv` with the pod's environment; `weft` as argv[0]
    /// means this weft binary.
    fn pod_command(
        &self,
        state: &LabState,
        pod: &PodPlan,
        argv: &[String],
    ) -> Result<Command, LabError> {
        let mut cmd = self.command(argv)?;
        cmd.env("WEFT_LAB", state.name.as_str())
            .env("WEFT_NODE_NAME", &pod.node)
            .env("WEFT_POD_NAME", &pod.name)
            .env("WEFT_POD_NAMESPACE", &pod.namespace)
            .env("WEFT_POD_IP", pod.ip.to_string())
            .env("WEFT_SERVICE_ACCOUNT", &pod.service_account);
        Ok(cmd)
    }

    fn wait_ready(&self, state: &LabState, dir: &Path, pod: &PodPlan) -> Result<(), LabError> {
        let Some(record) = state.processes.iter().find(|p| p.pod == pod.key()) else {
            return Ok(());
        };
        let started = Instant::now();
        for &port in &pod.ready_ports {
            let left = self.ready_timeout.saturating_sub(started.elapsed());
            let outcome = wait_until(left, Duration::from_millis(10), || {
                if !alive(record.pid) {
                    Some(Err("its process exited"))
                } else if listening(record.pid, port) {
                    Some(Ok(()))
                } else {
                    None
                }
            });
            let detail = match outcome {
                Some(Ok(())) => continue,
                Some(Err(why)) => why,
                None => "its process is running",
            };
            let log = log_file(dir, pod);
            return Err(LabError::NotReady {
                pod: format!("pod {}", pod.key()),
                port,
                secs: started.elapsed().as_secs_f64(),
                detail: detail.to_owned(),
                tail: tail(&log),
                log,
            });
        }
        Ok(())
    }

    /// What a lab holds and whether its pods run.
    pub fn status(&self, lab: &LabName) -> Result<Status, LabError> {
        let dir = self.state_dir(lab);
        if !dir.join(crate::state::STATE_FILE).exists() {
            return Err(LabError::NotFound {
                name: lab.to_string(),
                state: dir.join(crate::state::STATE_FILE),
            });
        }
        let state = LabState::load(&dir)?;
        let pods = state
            .plan
            .pods
            .iter()
            .map(|p| {
                let record = state.processes.iter().find(|r| r.pod == p.key());
                let phase = match (record, &p.command) {
                    (Some(r), _) if alive(r.pid) => PodPhase::Running { pid: r.pid },
                    (Some(r), _) => PodPhase::Exited { pid: r.pid },
                    (None, Some(_)) => PodPhase::NotStarted,
                    (None, None) => PodPhase::Idle,
                };
                PodStatus {
                    key: p.key(),
                    node: p.node.clone(),
                    ip: p.ip,
                    mesh: p.mesh,
                    phase,
                    log: log_file(&dir, p),
                }
            })
            .collect();
        let proxies = state
            .plan
            .nodes
            .iter()
            .map(|n| {
                let phase = match state.proxies.iter().find(|p| p.node == n.name) {
                    Some(p) if alive(p.pid) => PodPhase::Running { pid: p.pid },
                    Some(p) => PodPhase::Exited { pid: p.pid },
                    None => PodPhase::NotStarted,
                };
                (n.name.clone(), phase)
            })
            .collect();
        let control = match state.control {
            Some(pid) if alive(pid) => PodPhase::Running { pid },
            Some(pid) => PodPhase::Exited { pid },
            None => PodPhase::NotStarted,
        };
        Ok(Status {
            name: state.name.clone(),
            proxies,
            control,
            ready: state.phase == Phase::Ready,
            topology_file: state.topology_file.clone(),
            state_dir: dir,
            cgroup_dir: state.cgroup_dir.clone(),
            plan: state.plan,
            pods,
        })
    }

    /// Names of every lab that has a state file, a netns or a cgroup here.
    pub fn list(&self) -> Result<Vec<LabName>, LabError> {
        let mut names = BTreeSet::new();
        let mut add = |s: &str| {
            if let Ok(n) = s.parse::<LabName>() {
                names.insert(n);
            }
        };
        for dir in [
            self.state_root.clone(),
            self.labs_cgroup_dir(),
            PathBuf::from(crate::plan::PIN_ROOT),
        ] {
            if let Ok(rd) = fs::read_dir(&dir) {
                for e in rd.filter_map(Result::ok) {
                    if e.file_type().map(|t| t.is_dir()).unwrap_or(false) {
                        add(&e.file_name().to_string_lossy());
                    }
                }
            }
        }
        for ns in netns::list()? {
            if let Some((lab, _)) = ns
                .strip_prefix(NETNS_PREFIX)
                .and_then(|r| r.split_once('-'))
            {
                add(lab);
            }
        }
        Ok(names.into_iter().collect())
    }

    /// Removes a lab: kills its processes (by cgroup), deletes its netns and
    /// cgroups and its state. Works from the state file and, as a safety net,
    /// from the lab's naming convention, so it also clears a lab whose `up`
    /// was killed. Removing a lab that does not exist does nothing.
    pub fn down(&self, lab: &LabName) -> Result<DownReport, LabError> {
        require_root()?;
        let dir = self.state_dir(lab);
        let state = LabState::load(&dir).ok();
        let mut report = DownReport {
            lab: lab.clone(),
            processes: 0,
            netns: 0,
            cgroup: false,
            pins: false,
            state: false,
        };

        let cg = state
            .as_ref()
            .map(|s| s.cgroup_dir.clone())
            .unwrap_or_else(|| self.cgroup_dir(lab));
        if cg.exists() {
            report.processes = cgroup::pids(&cg).len();
            cgroup::kill_and_remove(&cg)?;
            report.cgroup = true;
        }

        let prefix = lab.netns_prefix();
        let mut names: BTreeSet<String> = netns::list()?
            .into_iter()
            .filter(|n| n.starts_with(&prefix))
            .collect();
        if let Some(s) = &state {
            names.extend(s.netns.iter().filter(|n| netns::exists(n)).cloned());
        }
        for name in &names {
            netns::delete(name)?;
            report.netns += 1;
        }
        let pins = proxy::lab_pin_dir(lab.as_str());
        if pins.exists() {
            // Unlinking the pins drops the last references to the programs,
            // maps and TCX links (the proxies are gone): the kernel detaches
            // and frees them.
            fs::remove_dir_all(&pins)
                .map_err(LabError::io(format!("removing {}", pins.display())))?;
            report.pins = true;
        }
        if dir.exists() {
            fs::remove_dir_all(&dir)
                .map_err(LabError::io(format!("removing {}", dir.display())))?;
            report.state = true;
        }
        // Leave no empty `weft-lab` cgroup behind; another lab's `up` may
        // hold it, in which case it is not empty and stays.
        let _ = fs::remove_dir(self.labs_cgroup_dir());
        let _ = fs::remove_dir(crate::plan::PIN_ROOT);
        let _ = fs::remove_dir(&self.state_root);

        let mut left = Vec::new();
        left.extend(
            netns::list()?
                .into_iter()
                .filter(|n| n.starts_with(&prefix))
                .map(|n| format!("netns {n}")),
        );
        if cg.exists() {
            left.push(format!("cgroup {}", cg.display()));
        }
        if pins.exists() {
            left.push(format!("pins {}", pins.display()));
        }
        if left.is_empty() {
            Ok(report)
        } else {
            Err(LabError::Leftovers {
                name: lab.to_string(),
                left,
            })
        }
    }

    /// Removes every lab on this host ([`Labs::list`]).
    pub fn down_all(&self) -> Result<Vec<DownReport>, LabError> {
        self.list()?.iter().map(|lab| self.down(lab)).collect()
    }

    /// A command that runs `argv` inside a pod's netns and cgroup, with the
    /// pod's environment; `weft` as argv[0] means this weft binary.
    pub fn exec(&self, lab: &LabName, pod: &str, argv: &[String]) -> Result<Command, LabError> {
        require_root()?;
        let state = self.loaded(lab)?;
        let pod = state.plan.find_pod(pod).map_err(LabError::NoSuchPod)?;
        let mut cmd = self.pod_command(&state, pod, argv)?;
        placement(&state, pod, false)?.apply(&mut cmd);
        Ok(cmd)
    }

    /// A command that runs `argv` in a node's netns (and its cgroup), as the
    /// node's own tools would; `weft` as argv[0] means this weft binary.
    pub fn exec_on_node(
        &self,
        lab: &LabName,
        node: &str,
        argv: &[String],
    ) -> Result<Command, LabError> {
        require_root()?;
        let state = self.loaded(lab)?;
        let node = state.plan.find_node(node).map_err(LabError::NoSuchPod)?;
        let mut cmd = self.command(argv)?;
        cmd.env("WEFT_LAB", state.name.as_str())
            .env("WEFT_NODE_NAME", &node.name);
        Placement {
            netns: netns::open(&node.netns)?,
            cgroup_procs: cgroup::open_procs(&state.cgroup_dir.join(&node.cgroup))?,
            new_session: false,
        }
        .apply(&mut cmd);
        Ok(cmd)
    }

    /// A command for `argv`; `weft` as argv[0] means this weft binary.
    fn command(&self, argv: &[String]) -> Result<Command, LabError> {
        let (program, args) = argv
            .split_first()
            .ok_or_else(|| LabError::Host("an empty command".into()))?;
        let mut cmd = if program == "weft" {
            Command::new(&self.weft_bin)
        } else {
            Command::new(program)
        };
        cmd.args(args);
        Ok(cmd)
    }

    /// The path of a node proxy's config file.
    pub fn proxy_config_path(&self, lab: &LabName, node: &str) -> PathBuf {
        self.state_dir(lab).join(format!("proxy-{node}.yaml"))
    }

    /// The log file of a pod's command.
    pub fn log_path(&self, lab: &LabName, pod: &str) -> Result<PathBuf, LabError> {
        let state = self.loaded(lab)?;
        let pod = state.plan.find_pod(pod).map_err(LabError::NoSuchPod)?;
        Ok(log_file(&self.state_dir(lab), pod))
    }

    fn loaded(&self, lab: &LabName) -> Result<LabState, LabError> {
        let dir = self.state_dir(lab);
        if !dir.join(crate::state::STATE_FILE).exists() {
            return Err(LabError::NotFound {
                name: lab.to_string(),
                state: dir.join(crate::state::STATE_FILE),
            });
        }
        LabState::load(&dir)
    }
}

fn require_root() -> Result<(), LabError> {
    #[expect(unsafe_code, reason = "geteuid has no preconditions and cannot fail")]
    // SAFETY: geteuid only reads the caller's credentials.
    let euid = unsafe { libc::geteuid() };
    if euid == 0 {
        Ok(())
    } else {
        Err(LabError::Host(format!(
            "the lab creates network namespaces and cgroups and needs root (euid is {euid})"
        )))
    }
}

/// Puts a process in `pod`'s cgroup and netns.
fn placement(state: &LabState, pod: &PodPlan, new_session: bool) -> Result<Placement, LabError> {
    Ok(Placement {
        netns: netns::open(&pod.netns)?,
        cgroup_procs: cgroup::open_procs(&state.cgroup_dir.join(&pod.cgroup))?,
        new_session,
    })
}

/// Records a netns in the state, then creates it.
fn add_netns(state: &mut LabState, dir: &Path, name: &str) -> Result<(), LabError> {
    state.netns.push(name.to_owned());
    state.save(dir)?;
    netns::add(name)
}

fn build_pod(
    state: &mut LabState,
    dir: &Path,
    node: &NodePlan,
    pod: &PodPlan,
) -> Result<(), LabError> {
    let ns = pod.netns.as_str();
    add_netns(state, dir, ns)?;
    let veth = pod.host_veth.as_str();
    ip(&[
        "link",
        "add",
        "eth0",
        "netns",
        ns,
        "type",
        "veth",
        "peer",
        "name",
        veth,
        "netns",
        &node.netns,
    ])?;
    let gw = node.gateway.to_string();
    ip(&[
        "-n",
        ns,
        "addr",
        "add",
        &format!("{}/32", pod.ip),
        "dev",
        "eth0",
    ])?;
    ip(&["-n", ns, "link", "set", "eth0", "up"])?;
    ip(&[
        "-n", ns, "route", "add", &gw, "dev", "eth0", "scope", "link",
    ])?;
    ip(&[
        "-n", ns, "route", "add", "default", "via", &gw, "dev", "eth0",
    ])?;
    ip(&[
        "-n",
        &node.netns,
        "addr",
        "add",
        &format!("{gw}/32"),
        "dev",
        veth,
    ])?;
    ip(&["-n", &node.netns, "link", "set", veth, "up"])?;
    ip(&[
        "-n",
        &node.netns,
        "route",
        "add",
        &format!("{}/32", pod.ip),
        "dev",
        veth,
    ])
}

fn log_file(dir: &Path, pod: &PodPlan) -> PathBuf {
    dir.join("logs")
        .join(format!("{}_{}.log", pod.namespace, pod.name))
}

/// Whether a process exists and is not a zombie.
fn alive(pid: u32) -> bool {
    match fs::read_to_string(format!("/proc/{pid}/stat")) {
        // The state follows the parenthesised command name.
        Ok(stat) => stat
            .rsplit_once(')')
            .map(|(_, rest)| !rest.trim_start().starts_with(['Z', 'X']))
            .unwrap_or(false),
        Err(_) => false,
    }
}

/// Whether any socket in `pid`'s netns listens on TCP `port`.
fn listening(pid: u32, port: u16) -> bool {
    ["tcp", "tcp6"].iter().any(|f| {
        fs::read_to_string(format!("/proc/{pid}/net/{f}"))
            .map(|t| {
                t.lines().skip(1).any(|l| {
                    let mut cols = l.split_whitespace();
                    let local = cols.nth(1).unwrap_or("");
                    let st = cols.nth(1).unwrap_or("");
                    st == "0A"
                        && local
                            .rsplit_once(':')
                            .and_then(|(_, p)| u16::from_str_radix(p, 16).ok())
                            == Some(port)
                })
            })
            .unwrap_or(false)
    })
}

/// How a pod's process is doing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PodPhase {
    /// No command: an idle sandbox for `exec`.
    Idle,
    /// Has a command that was not started (yet).
    NotStarted,
    /// Its process runs.
    Running {
        /// Its PID.
        pid: u32,
    },
    /// Its process ended.
    Exited {
        /// Its PID.
        pid: u32,
    },
}

/// One pod's status.
#[derive(Debug, Clone)]
pub struct PodStatus {
    /// `namespace/name`.
    pub key: String,
    /// Its node.
    pub node: String,
    /// Its address.
    pub ip: Ipv4Addr,
    /// Whether it is meshed.
    pub mesh: MeshMode,
    /// Its process.
    pub phase: PodPhase,
    /// Its log file.
    pub log: PathBuf,
}

/// A lab's status, printed by `weft lab status`.
#[derive(Debug, Clone)]
pub struct Status {
    /// The lab's name.
    pub name: LabName,
    /// Whether `up` finished.
    pub ready: bool,
    /// Where the topology came from.
    pub topology_file: String,
    /// State file and logs.
    pub state_dir: PathBuf,
    /// The lab's cgroup directory.
    pub cgroup_dir: PathBuf,
    /// Names and addresses.
    pub plan: Plan,
    /// Every pod.
    pub pods: Vec<PodStatus>,
    /// Every node's proxy.
    pub proxies: Vec<(String, PodPhase)>,
    /// The control plane.
    pub control: PodPhase,
}

impl Status {
    /// A pod's status by `namespace/name`.
    pub fn pod(&self, key: &str) -> Option<&PodStatus> {
        self.pods.iter().find(|p| p.key == key)
    }
}

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "lab {} ({}): {} nodes, {} pods, {} services",
            self.name,
            if self.ready {
                "ready"
            } else {
                "incomplete: run `weft lab down`"
            },
            self.plan.nodes.len(),
            self.pods.len(),
            self.plan.services.len()
        )?;
        writeln!(f, "  topology: {}", self.topology_file)?;
        writeln!(f, "  state:    {}", self.state_dir.display())?;
        writeln!(f, "  cgroups:  {}", self.cgroup_dir.display())?;
        let control = match self.control {
            PodPhase::Running { pid } => format!("running, pid {pid}"),
            PodPhase::Exited { pid } => format!("STOPPED, pid {pid}"),
            _ => "not started".to_owned(),
        };
        writeln!(
            f,
            "  control:  {}:{} ({control}); weft apply --lab {} -f FILE",
            control::CONTROL_IP,
            control::CONTROL_PORT,
            self.name
        )?;
        writeln!(
            f,
            "\n{:<16} {:<16} {:<18} {:<28} NETNS",
            "NODE", "UNDERLAY IP", "POD CIDR", "PROXY"
        )?;
        for n in &self.plan.nodes {
            let proxy = match self.proxies.iter().find(|(node, _)| *node == n.name) {
                Some((_, PodPhase::Running { pid })) => format!("running, pid {pid}"),
                Some((_, PodPhase::Exited { pid })) => format!("STOPPED, pid {pid}"),
                _ => "not started".to_owned(),
            };
            writeln!(
                f,
                "{:<16} {:<16} {:<18} {:<28} {}",
                n.name,
                n.underlay_ip,
                n.pod_cidr.to_string(),
                proxy,
                n.netns
            )?;
        }
        writeln!(
            f,
            "\n{:<24} {:<10} {:<14} {:<9} PROCESS",
            "POD", "NODE", "IP", "MESH"
        )?;
        for p in &self.pods {
            let phase = match p.phase {
                PodPhase::Idle => "idle (no command)".to_owned(),
                PodPhase::NotStarted => "not started".to_owned(),
                PodPhase::Running { pid } => format!("running, pid {pid}"),
                PodPhase::Exited { pid } => format!("EXITED, pid {pid}: see {}", p.log.display()),
            };
            writeln!(
                f,
                "{:<24} {:<10} {:<14} {:<9} {phase}",
                p.key,
                p.node,
                p.ip.to_string(),
                p.mesh.to_string()
            )?;
        }
        writeln!(
            f,
            "\n{:<24} {:<14} {:<22} ENDPOINTS",
            "SERVICE", "CLUSTER IP", "PORTS"
        )?;
        for s in &self.plan.services {
            let ports = s
                .ports
                .iter()
                .map(|p| match p.target_port {
                    Some(t) if t != p.port => format!("{}->{t}", p.port),
                    _ => p.port.to_string(),
                })
                .collect::<Vec<_>>()
                .join(",");
            let eps = s
                .endpoints
                .iter()
                .map(|(_, ip)| ip.to_string())
                .collect::<Vec<_>>()
                .join(", ");
            writeln!(
                f,
                "{:<24} {:<14} {:<22} {}",
                s.key(),
                s.cluster_ip.to_string(),
                ports,
                if eps.is_empty() {
                    "(none)".to_owned()
                } else {
                    eps
                }
            )?;
        }
        write!(
            f,
            "\nMeshed pods' TCP goes through their node's proxy (eBPF capture); \
             cluster IPs work from meshed pods."
        )
    }
}

/// What `down` removed.
#[derive(Debug, Clone)]
pub struct DownReport {
    /// The lab.
    pub lab: LabName,
    /// Processes killed.
    pub processes: usize,
    /// Namespaces deleted.
    pub netns: usize,
    /// Whether a cgroup tree was removed.
    pub cgroup: bool,
    /// Whether bpffs pins were removed.
    pub pins: bool,
    /// Whether a state directory was removed.
    pub state: bool,
}

impl DownReport {
    /// Whether there was anything to remove.
    pub fn removed_anything(&self) -> bool {
        self.processes > 0 || self.netns > 0 || self.cgroup || self.pins || self.state
    }
}

impl fmt::Display for DownReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if !self.removed_anything() {
            return write!(f, "lab {}: nothing to remove", self.lab);
        }
        write!(
            f,
            "lab {}: killed {} processes, deleted {} network namespaces{}{}{}",
            self.lab,
            self.processes,
            self.netns,
            if self.cgroup {
                ", removed its cgroups"
            } else {
                ""
            },
            if self.pins {
                ", removed its bpffs pins"
            } else {
                ""
            },
            if self.state {
                ", removed its state"
            } else {
                ""
            },
        )
    }
}

impl Labs {
    /// Runs `weft lab app client <url> <args…>` inside `pod` (its netns and
    /// cgroup, a real process) and returns what it printed.
    pub fn client(
        &self,
        lab: &LabName,
        pod: &str,
        url: &str,
        args: &[&str],
    ) -> Result<Vec<u8>, LabError> {
        let mut argv: Vec<String> = ["weft", "lab", "app", "client", url]
            .iter()
            .map(|s| (*s).to_owned())
            .collect();
        argv.extend(args.iter().map(|s| (*s).to_owned()));
        let out = self
            .exec(lab, pod, &argv)?
            .stdin(Stdio::null())
            .output()
            .map_err(LabError::io(format!("running the lab client in pod {pod}")))?;
        if out.status.success() {
            Ok(out.stdout)
        } else {
            Err(LabError::Command {
                command: format!("weft lab exec {pod} -- {}", argv.join(" ")),
                status: out.status,
                stderr: String::from_utf8_lossy(&out.stderr).trim().to_owned(),
            })
        }
    }
}

/// Sends a signal to a process this lab started.
fn signal(pid: u32, sig: libc::c_int) {
    let Ok(pid) = libc::pid_t::try_from(pid) else {
        return;
    };
    #[expect(unsafe_code, reason = "kill(2) has no safe wrapper in std")]
    // SAFETY: kill only sends a signal; pid is a process the lab recorded.
    unsafe {
        libc::kill(pid, sig);
    }
}

/// The last lines of a log file, for an error that outlives the file.
fn tail(path: &Path) -> String {
    let text = fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(15)..].join("\n")
}

/// A log file opened for appending, twice: for stdout and stderr.
fn open_log(path: &Path) -> Result<(fs::File, fs::File), LabError> {
    let log = fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .map_err(LabError::io(format!("opening {}", path.display())))?;
    let log2 = log
        .try_clone()
        .map_err(LabError::io(format!("opening {}", path.display())))?;
    Ok((log, log2))
}

/// The config generation a proxy reports on `/config_dump`.
fn generation(netns: &str, admin: u16) -> Result<u64, LabError> {
    let (_, body) = proxy::admin_get(netns, admin, "/config_dump")?;
    serde_json::from_str::<serde_json::Value>(&body)
        .ok()
        .and_then(|v| v["generation"].as_u64())
        .ok_or_else(|| LabError::Host(format!("no config generation from the proxy in {netns}")))
}

/// Stops a process this lab started: SIGTERM, then SIGKILL after 10 s.
fn stop_process(pid: u32, what: &str) -> Result<(), LabError> {
    if !alive(pid) {
        return Ok(());
    }
    signal(pid, libc::SIGTERM);
    let gone = wait_until(Duration::from_secs(10), Duration::from_millis(5), || {
        (!alive(pid)).then_some(())
    });
    if gone.is_none() {
        signal(pid, libc::SIGKILL);
        wait_until(Duration::from_secs(5), Duration::from_millis(5), || {
            (!alive(pid)).then_some(())
        })
        .ok_or_else(|| LabError::Host(format!("{what} (pid {pid}) survived SIGKILL")))?;
    }
    Ok(())
}

/// Starts `cmd` in netns `netns` and cgroup `cg` (created if needed), in a
/// new session, output appended to `log`; a thread reaps it when it ends.
fn spawn_detached(
    mut cmd: Command,
    netns: &str,
    cg: &Path,
    log: &Path,
    what: &str,
) -> Result<u32, LabError> {
    let (out, err) = open_log(log)?;
    cgroup::create(cg)?;
    cmd.stdin(Stdio::null()).stdout(out).stderr(err);
    Placement {
        netns: netns::open(netns)?,
        cgroup_procs: cgroup::open_procs(cg)?,
        new_session: true,
    }
    .apply(&mut cmd);
    let mut child = cmd
        .spawn()
        .map_err(LabError::io(format!("starting {what}")))?;
    let pid = child.id();
    // Reap it when it ends, so no zombie outlives it in a long-lived caller.
    std::thread::spawn(move || child.wait());
    Ok(pid)
}
