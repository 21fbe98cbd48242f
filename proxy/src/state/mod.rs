//! The shared view: what every connection, the admin server and the config
//! updates read and swap. A connection takes the current [`Snapshot`] once
//! and keeps it to its end; [`apply`] swaps in the next one.

mod snapshot;

use std::collections::BTreeSet;
use std::net::Ipv4Addr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};

use tokio::sync::watch;

pub use self::snapshot::{Destination, Snapshot};
use crate::capture;
use crate::config::{CaptureSpec, ProxyConfig, Timeouts, Workload};
use crate::identity::{Account, Identities, SpiffeId};
use crate::metrics::Metrics;

/// State shared by every connection and the admin server.
#[derive(Debug)]
pub struct Shared {
    snapshot: RwLock<Arc<Snapshot>>,
    generation: AtomicU64,
    local_addresses: RwLock<BTreeSet<Ipv4Addr>>,
    /// Connection metrics.
    pub metrics: Metrics,
    capture: Mutex<Option<weft_redirect::Capture>>,
    /// This node's workload certificates.
    pub identities: Arc<Identities>,
    /// The service accounts of this node's meshed pods (what
    /// [`crate::identity::run`] keeps certificates for).
    accounts: watch::Sender<BTreeSet<Account>>,
    /// Whether pods on other nodes are reached over HBONE (mTLS): on when
    /// the proxy gets certificates from a CA.
    pub mtls: bool,
    /// Trace spans: sampling and export.
    pub tracer: Arc<crate::telemetry::Tracer>,
    /// Access log lines.
    pub access: crate::telemetry::access::AccessLog,
}

impl Shared {
    /// The view at start: `config` as generation 1, with the capture that
    /// was set up for it and this node's addresses. `mtls` is on when the
    /// proxy gets certificates from a CA; `otel` is the process's `OTEL_*`
    /// environment.
    pub fn new(
        config: ProxyConfig,
        capture: Option<weft_redirect::Capture>,
        local_addresses: BTreeSet<Ipv4Addr>,
        mtls: bool,
        otel: crate::telemetry::Env,
    ) -> Shared {
        let tracer = Arc::new(crate::telemetry::Tracer::new(&config.node, otel));
        let shared = Shared {
            snapshot: RwLock::new(Arc::new(Snapshot::new(config))),
            generation: AtomicU64::new(1),
            local_addresses: RwLock::new(local_addresses),
            metrics: Metrics::default(),
            capture: Mutex::new(capture),
            identities: Arc::default(),
            accounts: watch::channel(BTreeSet::new()).0,
            mtls,
            tracer,
            access: crate::telemetry::access::AccessLog::to_stdout(),
        };
        shared.configure_telemetry();
        shared.track_accounts(shared.snapshot().config());
        shared
    }

    /// The service accounts of this node's meshed pods, as they change:
    /// what the identity manager keeps certificates for.
    pub fn accounts(&self) -> watch::Receiver<BTreeSet<Account>> {
        self.accounts.subscribe()
    }

    /// The current config snapshot.
    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.snapshot
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// How many configs have been applied (1 at start).
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    /// Whether `ip` is an address of this node (the proxy's netns).
    pub fn is_local(&self, ip: Ipv4Addr) -> bool {
        self.local_addresses
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .contains(&ip)
    }

    /// The address the proxy connects onwards from: the client pod's own,
    /// so the server sees its real client; but the node's when the target
    /// is on the node's own addresses (their replies would not pass
    /// capture), or is the client itself (hairpin: a pod calling a service
    /// that picked it; from its own address it would answer itself).
    pub fn connect_from(&self, client: Option<Ipv4Addr>, target: Ipv4Addr) -> Option<Ipv4Addr> {
        client.filter(|c| *c != target && !self.is_local(target))
    }

    /// The identity of a workload, as this node can vouch for it: from the
    /// certificate its service account holds, or in the trust domain of the
    /// certificates held. `None` without a CA (no identities at all).
    pub fn identity_of(&self, w: &Workload) -> Option<SpiffeId> {
        let account = (w.namespace.clone(), w.service_account.clone());
        let trust_domain = match self.identities.get(&account) {
            Some(c) => return SpiffeId::parse(&c.spiffe_id).ok(),
            None => self.identities.trust_domain()?,
        };
        Some(SpiffeId::new(&trust_domain, &account))
    }

    /// `SO_MARK` of the proxy's sockets.
    pub fn socket_mark(&self) -> u32 {
        self.snapshot().config().capture.proxy_socket_mark
    }

    /// The relay timeouts.
    pub fn timeouts(&self) -> Timeouts {
        self.snapshot().config().timeouts.clone()
    }

    /// Metrics text, with the eBPF counters when capture is up.
    pub fn render_metrics(&self) -> String {
        let decisions = {
            let capture = self.capture.lock().unwrap_or_else(|p| p.into_inner());
            capture.as_ref().and_then(|c| match c.counters() {
                Ok(cs) => Some(cs.map(|(d, n)| (d.name(), n))),
                Err(e) => {
                    tracing::warn!(error = %e, "reading capture counters");
                    None
                }
            })
        };
        let mut out = self.metrics.render(decisions.as_ref().map(|d| &d[..]));
        let ids = &self.identities;
        self.tracer.render(&mut out);
        self.access.render(&mut out);
        render_process(&mut out);
        crate::metrics::render_counters(
            &mut out,
            &[
                (
                    "weft_identity_certificates_issued_total",
                    "Workload certificates received from the CA",
                    ids.issued.load(Ordering::Relaxed),
                ),
                (
                    "weft_identity_certificate_failures_total",
                    "Certificate requests that failed (the valid certificate stays)",
                    ids.failures.load(Ordering::Relaxed),
                ),
            ],
        );
        out
    }

    /// Drops the metric series of workloads the current config no longer
    /// has.
    fn forget_gone_workloads(&self) {
        let snapshot = self.snapshot();
        let known: std::collections::HashSet<(&str, &str)> = snapshot
            .config()
            .workloads
            .iter()
            .map(|w| (w.namespace.as_str(), w.name.as_str()))
            .collect();
        self.metrics.forget(|ns, name| known.contains(&(ns, name)));
    }

    /// Gives the tracer and the access log the current config's telemetry
    /// settings.
    fn configure_telemetry(&self) {
        let snapshot = self.snapshot();
        let telemetry = weft_model::effective_telemetry(&snapshot.config().telemetry);
        self.tracer.configure(telemetry);
        self.access.configure(telemetry.map(|t| &t.access_logs));
    }

    /// Tells the identity manager which service accounts have meshed pods
    /// here now.
    fn track_accounts(&self, config: &ProxyConfig) {
        let accounts: BTreeSet<Account> = config
            .local_workloads()
            .filter(|w| w.meshed)
            .map(|w| (w.namespace.clone(), w.service_account.clone()))
            .collect();
        self.accounts.send_if_modified(|a| {
            let changed = *a != accounts;
            *a = accounts;
            changed
        });
    }
}

/// The proxy process's own figures, under the names Prometheus client
/// libraries use (`process_*`): CPU seconds, resident memory, open file
/// descriptors, start time. Read from `/proc/self` at each scrape.
fn render_process(out: &mut String) {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    // The fields after the command name (which may hold spaces).
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest.split_whitespace().collect())
        .unwrap_or_default();
    let field = |n: usize| fields.get(n).and_then(|v| v.parse::<u64>().ok());
    // Clock ticks in /proc are USER_HZ: 100 on x86-64 and arm64.
    let ticks = 100.0;
    let boot = std::fs::read_to_string("/proc/stat").ok().and_then(|s| {
        s.lines()
            .find_map(|l| l.strip_prefix("btime ")?.trim().parse::<u64>().ok())
    });
    // utime and stime are fields 14 and 15 of stat, starttime 22 (1-based,
    // counting the pid and the name): 11, 12 and 19 here.
    let cpu = match (field(11), field(12)) {
        (Some(u), Some(s)) => Some((u + s) as f64 / ticks),
        _ => None,
    };
    let rss = std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines().find_map(|l| {
                let kb = l.strip_prefix("VmRSS:")?.trim().strip_suffix("kB")?;
                kb.trim().parse::<u64>().ok()
            })
        })
        .map(|kb| kb as f64 * 1024.0);
    let start = match (boot, field(19)) {
        (Some(b), Some(t)) => Some(b as f64 + t as f64 / ticks),
        _ => None,
    };
    let fds = std::fs::read_dir("/proc/self/fd").map(Iterator::count).ok();
    for (name, kind, help, value) in [
        (
            "process_cpu_seconds_total",
            "counter",
            "User and system CPU time spent, in seconds",
            cpu,
        ),
        (
            "process_resident_memory_bytes",
            "gauge",
            "Resident memory, in bytes",
            rss,
        ),
        (
            "process_open_fds",
            "gauge",
            "Open file descriptors",
            fds.map(|n| n as f64),
        ),
        (
            "process_start_time_seconds",
            "gauge",
            "Start time since the Unix epoch, in seconds",
            start,
        ),
    ] {
        if let Some(v) = value {
            out.push_str(&format!(
                "# HELP {name} {help}.\n# TYPE {name} {kind}\n{name} {v}\n"
            ));
        }
    }
}

/// Applies a new config: reconciles capture with it (enrolls new pods'
/// interfaces, unenrolls gone ones, updates the meshed set), then swaps the
/// snapshot that new connections use. Open connections keep going. A config
/// that changes what only a restart can change, or whose capture cannot be
/// reconciled, is refused: the last good config stays.
pub async fn apply(shared: &Shared, next: ProxyConfig) -> Result<u64, String> {
    let current = shared.snapshot();
    let now = current.config();
    let generation = shared.generation();
    if next.listeners != now.listeners
        || next.capture.pin_dir != now.capture.pin_dir
        || next.node != now.node
        || next.control_plane != now.control_plane
    {
        let reason = "node, listeners, capture.pinDir and controlPlane change only with a restart"
            .to_owned();
        tracing::error!(generation, %reason, "config refused; keeping the current config");
        return Err(reason);
    }
    // Capture depends only on this node's own workloads and the capture
    // settings: when those did not change, swap the snapshot alone.
    if capture_inputs(now) == capture_inputs(&next) {
        *shared.snapshot.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(Snapshot::new(next));
        shared.track_accounts(shared.snapshot().config());
        shared.configure_telemetry();
        shared.forget_gone_workloads();
        let generation = shared.generation.fetch_add(1, Ordering::AcqRel) + 1;
        tracing::info!(generation, "config applied (capture unchanged)");
        return Ok(generation);
    }
    let capture_config = next.clone();
    let outcome = tokio::task::spawn_blocking(move || capture::setup(&capture_config)).await;
    match outcome {
        Ok(Ok((capture, enrolled))) => {
            *shared.capture.lock().unwrap_or_else(|p| p.into_inner()) = capture;
            *shared
                .local_addresses
                .write()
                .unwrap_or_else(|p| p.into_inner()) = enrolled.local_addresses.clone();
            *shared.snapshot.write().unwrap_or_else(|p| p.into_inner()) =
                Arc::new(Snapshot::new(next));
            shared.track_accounts(shared.snapshot().config());
            shared.configure_telemetry();
            shared.forget_gone_workloads();
            shared.forget_gone_workloads();
            let generation = shared.generation.fetch_add(1, Ordering::AcqRel) + 1;
            tracing::info!(
                generation,
                interfaces = ?enrolled.interfaces,
                removed = ?enrolled.removed,
                "config applied"
            );
            Ok(generation)
        }
        Ok(Err(e)) => {
            tracing::error!(
                generation,
                error = %e,
                "config refused: capture could not be reconciled; keeping the current config"
            );
            Err(format!("capture could not be reconciled: {e}"))
        }
        Err(e) => {
            tracing::error!(
                generation,
                error = %e,
                "config refused: the capture task failed; keeping the current config"
            );
            Err(format!("the capture task failed: {e}"))
        }
    }
}

/// What capture set-up reads from a config.
fn capture_inputs(c: &ProxyConfig) -> (&CaptureSpec, Vec<(Ipv4Addr, bool, bool)>) {
    let mut local: Vec<_> = c
        .local_workloads()
        .map(|w| (w.ip, w.meshed, w.fast_path))
        .collect();
    local.sort();
    (&c.capture, local)
}
