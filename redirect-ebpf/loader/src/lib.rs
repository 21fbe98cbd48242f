//! weft's eBPF capture, from userspace: load, attach, pin, re-open, enroll.
//!
//! ```text
//!  <pin dir>/                    (e.g. /sys/fs/bpf/weft/<lab>/<node>)
//!    prog_tc_ingress             the tc program
//!    map_config map_ifaces       the maps (see weft-redirect-abi)
//!    map_meshed map_local map_counters
//!    links/tc-<ifname>           one TCX link per enrolled interface
//! ```
//!
//! [`Capture::open_or_load`] re-opens these pins when they exist (a proxy
//! restart keeps capture in place and loads nothing) and otherwise loads the
//! embedded object and pins it. Attachments are pinned links, so they outlive
//! the process; [`uninstall`] detaches and unpins everything.
//!
//! Everything here acts on the network namespace of the calling thread:
//! interface names are resolved there and the policy route is added there.

pub mod btf;
pub mod net;
mod route;

use std::collections::{BTreeMap, BTreeSet};
use std::ffi::CString;
use std::fs;
use std::io;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

use aya::Ebpf;
use aya::maps::SockHash;
use aya::maps::{Array, HashMap, Map, MapData, PerCpuArray};
use aya::programs::links::{FdLink, LinkOrder, PinnedLink};
use aya::programs::tc::{
    NlOptions, SchedClassifier, TcAttachOptions, TcAttachType, TcHandle, qdisc_add_clsact,
    qdisc_detach_program,
};
use aya::programs::{CgroupAttachMode, SkMsg, SockOps};
use aya::util::KernelVersion;
pub use route::{install_policy_route, remove_policy_route};
use weft_redirect_abi::{
    COUNTER_COUNT, Config, Counter, MAP_CONFIG, MAP_COUNTERS, MAP_IFACES, MAP_LOCAL, MAP_MESHED,
    MAP_SOCK_ADDRS, MAP_SOCKS, MAP_TCP_ONLY, PROG_SK_MSG, PROG_SOCKOPS, PROG_TC_INGRESS, SockKey,
    ip_key,
};
pub use weft_redirect_abi::{
    Config as CaptureConfig, Counter as Decision, FAIL_CLOSED, FAIL_OPEN, POD_FAST_PATH,
    POD_MESHED, Role,
};

/// The compiled eBPF object, built by build.rs from `redirect-ebpf/programs`.
static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/weft-redirect"));

const PIN_PROG: &str = "prog_tc_ingress";
const PIN_SOCKOPS: &str = "prog_sockops";
const PIN_SK_MSG: &str = "prog_sk_msg";
const PIN_SOCKOPS_LINK: &str = "sockops";
const PIN_MAPS: [(&str, &str); 8] = [
    (MAP_CONFIG, "map_config"),
    (MAP_IFACES, "map_ifaces"),
    (MAP_MESHED, "map_meshed"),
    (MAP_LOCAL, "map_local"),
    (MAP_COUNTERS, "map_counters"),
    (MAP_SOCKS, "map_socks"),
    (MAP_TCP_ONLY, "map_tcp_only"),
    (MAP_SOCK_ADDRS, "map_sock_addrs"),
];
const LINKS_DIR: &str = "links";

/// Why a capture operation failed; each names the pin path or interface.
#[derive(Debug, thiserror::Error)]
pub enum CaptureError {
    /// The pin directory is not on a bpffs.
    #[error("{0} is not on a bpf filesystem: mount it with `mount -t bpf bpf /sys/fs/bpf`")]
    NotBpffs(PathBuf),
    /// Loading the object into the kernel failed (the verifier log is in the cause).
    #[error("loading the eBPF object: {0}")]
    Load(#[source] aya::EbpfError),
    /// A program operation failed.
    #[error("{what}: {source}")]
    Program {
        /// What was being done.
        what: String,
        /// The cause.
        #[source]
        source: aya::programs::ProgramError,
    },
    /// A map operation failed.
    #[error("{what}: {source}")]
    Map {
        /// What was being done.
        what: String,
        /// The cause.
        #[source]
        source: aya::maps::MapError,
    },
    /// Pinning or unpinning failed.
    #[error("{what}: {source}")]
    Pin {
        /// What was being done, with the path.
        what: String,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// An interface name that does not exist in this netns.
    #[error("no interface `{0}` in this network namespace")]
    NoInterface(String),
    /// Setting up the policy route failed.
    #[error("policy route: {0}")]
    Route(String),
    /// Reading interfaces, addresses or routes failed.
    #[error("network: {0}")]
    Net(String),
    /// The kernel's BTF could not be read or lacks what the programs need.
    #[error("kernel BTF: {0}")]
    Btf(String),
}

fn pin_err(what: impl Into<String>) -> impl FnOnce(io::Error) -> CaptureError {
    let what = what.into();
    move |source| CaptureError::Pin { what, source }
}

fn map_err(what: impl Into<String>) -> impl FnOnce(aya::maps::MapError) -> CaptureError {
    let what = what.into();
    move |source| CaptureError::Map { what, source }
}

fn prog_err(what: impl Into<String>) -> impl FnOnce(aya::programs::ProgramError) -> CaptureError {
    let what = what.into();
    move |source| CaptureError::Program { what, source }
}

/// How the tc program is attached to an interface.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AttachMode {
    /// TCX when the kernel has it (6.6 and later), netlink tc otherwise.
    Auto,
    /// A TCX link, pinned: it outlives the process.
    Tcx,
    /// A netlink `clsact` filter: it stays on the interface by itself.
    Netlink,
}

/// The netlink filter's priority and handle: fixed, so attaching twice is
/// detected (EEXIST) instead of stacking filters.
const NL_PRIORITY: u16 = 0x77;
const NL_HANDLE: TcHandle = TcHandle::new(0x7765, 1);

/// Whether [`Capture::open_or_load`] found pins or loaded the object.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    /// The programs and maps were already pinned and were re-opened.
    Reopened,
    /// The object was loaded and pinned now.
    Loaded,
}

/// The capture of one node: its program, maps and links.
pub struct Capture {
    pin_dir: PathBuf,
    origin: Origin,
    prog: SchedClassifier,
    sockops: SockOps,
    sk_msg: SkMsg,
    socks: SockHash<MapData, SockKey>,
    config: Array<MapData, Config>,
    ifaces: HashMap<MapData, u32, u32>,
    meshed: HashMap<MapData, u32, u32>,
    local: HashMap<MapData, u32, u32>,
    counters: PerCpuArray<MapData, u64>,
}

impl std::fmt::Debug for Capture {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Capture")
            .field("pin_dir", &self.pin_dir)
            .field("origin", &self.origin)
            .finish_non_exhaustive()
    }
}

impl Capture {
    /// Re-opens the pins in `pin_dir`, or loads the object and pins it there.
    pub fn open_or_load(pin_dir: &Path) -> Result<Capture, CaptureError> {
        ensure_bpffs(pin_dir)?;
        fs::create_dir_all(pin_dir.join(LINKS_DIR))
            .map_err(pin_err(format!("creating {}", pin_dir.display())))?;
        if pin_dir.join(PIN_PROG).exists() {
            Self::reopen(pin_dir)
        } else {
            Self::load(pin_dir)
        }
    }

    fn load(pin_dir: &Path) -> Result<Capture, CaptureError> {
        let mut ebpf = Ebpf::load(OBJECT).map_err(CaptureError::Load)?;
        for (name, file) in PIN_MAPS {
            let path = pin_dir.join(file);
            let map = ebpf.map_mut(name).ok_or_else(|| CaptureError::Map {
                what: format!("map {name} is missing from the object"),
                source: aya::maps::MapError::InvalidName { name: name.into() },
            })?;
            map.pin(&path).map_err(|e| CaptureError::Pin {
                what: format!("pinning map {name} at {}", path.display()),
                source: io::Error::other(e),
            })?;
        }
        let prog: &mut SchedClassifier = ebpf
            .program_mut(PROG_TC_INGRESS)
            .ok_or_else(|| CaptureError::Program {
                what: format!("program {PROG_TC_INGRESS} is missing from the object"),
                source: aya::programs::ProgramError::NotLoaded,
            })?
            .try_into()
            .map_err(prog_err("the tc program has the wrong type"))?;
        prog.load()
            .map_err(prog_err(format!("loading {PROG_TC_INGRESS}")))?;
        let path = pin_dir.join(PIN_PROG);
        prog.pin(&path).map_err(|e| CaptureError::Pin {
            what: format!("pinning {PROG_TC_INGRESS} at {}", path.display()),
            source: io::Error::other(e),
        })?;
        let sockops: &mut SockOps = program(&mut ebpf, PROG_SOCKOPS)?;
        sockops
            .load()
            .map_err(prog_err(format!("loading {PROG_SOCKOPS}")))?;
        pin_program(
            sockops.pin(pin_dir.join(PIN_SOCKOPS)),
            PROG_SOCKOPS,
            pin_dir,
        )?;
        let sk_msg: &mut SkMsg = program(&mut ebpf, PROG_SK_MSG)?;
        sk_msg
            .load()
            .map_err(prog_err(format!("loading {PROG_SK_MSG}")))?;
        pin_program(sk_msg.pin(pin_dir.join(PIN_SK_MSG)), PROG_SK_MSG, pin_dir)?;
        // Everything is pinned: open it the same way a restart will.
        drop(ebpf);
        let mut capture = Self::reopen(pin_dir)?;
        capture.origin = Origin::Loaded;
        Ok(capture)
    }

    fn reopen(pin_dir: &Path) -> Result<Capture, CaptureError> {
        let open = |file: &str| -> Result<Map, CaptureError> {
            let path = pin_dir.join(file);
            let data = MapData::from_pin(&path)
                .map_err(map_err(format!("opening pinned map {}", path.display())))?;
            Map::from_map_data(data)
                .map_err(map_err(format!("opening pinned map {}", path.display())))
        };
        let what = |file: &str| {
            format!(
                "pinned map {} has the wrong type",
                pin_dir.join(file).display()
            )
        };
        let path = pin_dir.join(PIN_PROG);
        let prog = SchedClassifier::from_pin(&path).map_err(prog_err(format!(
            "opening pinned program {}",
            path.display()
        )))?;
        let path = pin_dir.join(PIN_SOCKOPS);
        let sockops = SockOps::from_pin(&path).map_err(prog_err(format!(
            "opening pinned program {}",
            path.display()
        )))?;
        let path = pin_dir.join(PIN_SK_MSG);
        let sk_msg = SkMsg::from_pin(&path).map_err(prog_err(format!(
            "opening pinned program {}",
            path.display()
        )))?;
        Ok(Capture {
            pin_dir: pin_dir.to_owned(),
            origin: Origin::Reopened,
            prog,
            sockops,
            sk_msg,
            socks: SockHash::try_from(open("map_socks")?).map_err(map_err(what("map_socks")))?,
            config: Array::try_from(open("map_config")?).map_err(map_err(what("map_config")))?,
            ifaces: HashMap::try_from(open("map_ifaces")?).map_err(map_err(what("map_ifaces")))?,
            meshed: HashMap::try_from(open("map_meshed")?).map_err(map_err(what("map_meshed")))?,
            local: HashMap::try_from(open("map_local")?).map_err(map_err(what("map_local")))?,
            counters: PerCpuArray::try_from(open("map_counters")?)
                .map_err(map_err(what("map_counters")))?,
        })
    }

    /// Whether the pins were re-opened or the object was loaded.
    pub fn origin(&self) -> Origin {
        self.origin
    }

    /// The pin directory.
    pub fn pin_dir(&self) -> &Path {
        &self.pin_dir
    }

    /// Sets the listener ports, fail mode and mark the programs use.
    pub fn configure(&mut self, config: &Config) -> Result<(), CaptureError> {
        self.config
            .set(0, config, 0)
            .map_err(map_err("writing the capture config"))
    }

    /// Attaches the tc program to `ifname` (once) and records its role.
    /// Enrolling an enrolled interface only updates the role.
    pub fn enroll(
        &mut self,
        ifname: &str,
        role: Role,
        mode: AttachMode,
    ) -> Result<(), CaptureError> {
        let ifindex = ifindex(ifname)?;
        // The role first: a packet may hit the program as soon as it is attached.
        self.ifaces
            .insert(ifindex, role as u32, 0)
            .map_err(map_err(format!("enrolling {ifname}")))?;
        let tcx = match mode {
            AttachMode::Tcx => true,
            AttachMode::Netlink => false,
            AttachMode::Auto => {
                KernelVersion::current().is_ok_and(|v| v >= KernelVersion::new(6, 6, 0))
            }
        };
        if !tcx {
            return self.attach_netlink(ifname);
        }
        let link_pin = self.link_pin(ifname);
        if link_pin.exists() {
            return Ok(());
        }
        let id = self
            .prog
            .attach_with_options(
                ifname,
                TcAttachType::Ingress,
                TcAttachOptions::TcxOrder(LinkOrder::default()),
            )
            .map_err(prog_err(format!("attaching tc ingress to {ifname}")))?;
        let link = self
            .prog
            .take_link(id)
            .map_err(prog_err(format!("taking the link of {ifname}")))?;
        let fd_link: FdLink = link.try_into().map_err(|e| CaptureError::Pin {
            what: format!("the link on {ifname} is not a TCX link"),
            source: io::Error::other(e),
        })?;
        fd_link.pin(&link_pin).map_err(|e| CaptureError::Pin {
            what: format!("pinning the link of {ifname} at {}", link_pin.display()),
            source: io::Error::other(e),
        })?;
        Ok(())
    }

    /// Attaches with netlink: a `clsact` qdisc and a filter at a fixed
    /// priority and handle. The filter belongs to the interface, not to this
    /// process, so it stays after exit; a second attach finds it (EEXIST).
    fn attach_netlink(&mut self, ifname: &str) -> Result<(), CaptureError> {
        match qdisc_add_clsact(ifname) {
            Ok(()) => {}
            Err(e) if already_exists(&e) => {}
            Err(e) => {
                return Err(CaptureError::Pin {
                    what: format!("adding the clsact qdisc to {ifname}"),
                    source: io::Error::other(e),
                });
            }
        }
        let options = TcAttachOptions::Netlink(NlOptions {
            priority: NL_PRIORITY,
            handle: NL_HANDLE,
            ..NlOptions::default()
        });
        match self
            .prog
            .attach_with_options(ifname, TcAttachType::Ingress, options)
        {
            Ok(id) => {
                let link = self
                    .prog
                    .take_link(id)
                    .map_err(prog_err(format!("taking the netlink filter of {ifname}")))?;
                // Dropping the link would remove the filter; it must outlive
                // this process, like a pinned TCX link.
                std::mem::forget(link);
                Ok(())
            }
            Err(e) if already_exists(&e) => Ok(()),
            Err(e) => Err(prog_err(format!(
                "attaching tc ingress to {ifname} with netlink"
            ))(e)),
        }
    }

    /// Detaches the program from `ifname` and forgets its role. An interface
    /// that is gone (its pod was deleted) is fine.
    pub fn unenroll(&mut self, ifname: &str) -> Result<(), CaptureError> {
        if let Ok(ifindex) = ifindex(ifname) {
            match self.ifaces.remove(&ifindex) {
                Ok(()) | Err(aya::maps::MapError::KeyNotFound) => {}
                Err(e) => return Err(map_err(format!("unenrolling {ifname}"))(e)),
            }
        }
        detach_pinned(&self.link_pin(ifname))?;
        detach_netlink(ifname);
        Ok(())
    }

    /// Attaches the fast path: sock_ops to `cgroup` (the node's cgroup, which
    /// holds its pods and its proxy; once: the link is pinned), and sk_msg
    /// to the socket map. Whether sockets join is [`Config::fast_path`].
    pub fn attach_fast_path(&mut self, cgroup: &Path) -> Result<(), CaptureError> {
        let link_pin = self.pin_dir.join(LINKS_DIR).join(PIN_SOCKOPS_LINK);
        if !link_pin.exists() {
            let dir = fs::File::open(cgroup)
                .map_err(pin_err(format!("opening cgroup {}", cgroup.display())))?;
            // A bpf_link on a cgroup coexists with other programs; the
            // attach flags of a link must be 0 ("single").
            let id = self
                .sockops
                .attach(&dir, CgroupAttachMode::Single)
                .map_err(prog_err(format!(
                    "attaching sock_ops to {}",
                    cgroup.display()
                )))?;
            let link = self
                .sockops
                .take_link(id)
                .map_err(prog_err("taking the sock_ops link"))?;
            let fd_link: FdLink = link.try_into().map_err(|e| CaptureError::Pin {
                what: "the sock_ops link is not a bpf link".into(),
                source: io::Error::other(e),
            })?;
            fd_link.pin(&link_pin).map_err(|e| CaptureError::Pin {
                what: format!("pinning the sock_ops link at {}", link_pin.display()),
                source: io::Error::other(e),
            })?;
        }
        let id = self
            .sk_msg
            .attach(self.socks.fd())
            .map_err(prog_err("attaching sk_msg to the socket map"))?;
        let link = self
            .sk_msg
            .take_link(id)
            .map_err(prog_err("taking the sk_msg attachment"))?;
        // An sk_msg attachment has no link to pin: it lives as long as the
        // pinned socket map, unless detached. Dropping it would detach it, and
        // capture must outlive this process (a restart attaches it again).
        std::mem::forget(link);
        Ok(())
    }

    /// Interfaces with a pinned link.
    pub fn enrolled(&self) -> Vec<String> {
        let mut names: Vec<String> = fs::read_dir(self.pin_dir.join(LINKS_DIR))
            .map(|rd| {
                rd.filter_map(Result::ok)
                    .filter_map(|e| {
                        e.file_name()
                            .to_str()?
                            .strip_prefix("tc-")
                            .map(str::to_owned)
                    })
                    .collect()
            })
            .unwrap_or_default();
        names.sort();
        names
    }

    /// Makes the meshed pods of this node exactly `pods`, with their flags
    /// ([`POD_MESHED`], [`POD_FAST_PATH`]).
    pub fn set_meshed(&mut self, pods: &BTreeMap<Ipv4Addr, u32>) -> Result<(), CaptureError> {
        sync_map(&mut self.meshed, pods, "meshed pods")
    }

    /// Makes the set of node-local addresses (never captured) exactly `ips`.
    pub fn set_local(&mut self, ips: &BTreeSet<Ipv4Addr>) -> Result<(), CaptureError> {
        let entries = ips.iter().map(|ip| (*ip, 1)).collect();
        sync_map(&mut self.local, &entries, "node-local addresses")
    }

    /// Every decision counter, summed over CPUs.
    pub fn counters(&self) -> Result<[(Counter, u64); COUNTER_COUNT as usize], CaptureError> {
        let mut out = Counter::ALL.map(|c| (c, 0));
        for (c, total) in &mut out {
            let per_cpu = self
                .counters
                .get(&(*c as u32), 0)
                .map_err(map_err("reading the capture counters"))?;
            *total = per_cpu.iter().sum();
        }
        Ok(out)
    }

    fn link_pin(&self, ifname: &str) -> PathBuf {
        self.pin_dir.join(LINKS_DIR).join(format!("tc-{ifname}"))
    }
}

/// Makes an address-keyed map hold exactly `entries`.
fn sync_map(
    map: &mut HashMap<MapData, u32, u32>,
    entries: &BTreeMap<Ipv4Addr, u32>,
    what: &str,
) -> Result<(), CaptureError> {
    let want: BTreeMap<u32, u32> = entries
        .iter()
        .map(|(ip, v)| (ip_key(ip.octets()), *v))
        .collect();
    let have: Vec<u32> = map.keys().filter_map(Result::ok).collect();
    for key in have.iter().filter(|k| !want.contains_key(k)) {
        match map.remove(key) {
            Ok(()) | Err(aya::maps::MapError::KeyNotFound) => {}
            Err(e) => return Err(map_err(format!("updating {what}"))(e)),
        }
    }
    for (key, value) in &want {
        map.insert(key, value, 0)
            .map_err(map_err(format!("updating {what}")))?;
    }
    Ok(())
}

fn detach_pinned(path: &Path) -> Result<(), CaptureError> {
    if !path.exists() {
        return Ok(());
    }
    let link = PinnedLink::from_pin(path).map_err(|e| CaptureError::Pin {
        what: format!("opening pinned link {}", path.display()),
        source: io::Error::other(e),
    })?;
    let link = link
        .unpin()
        .map_err(pin_err(format!("unpinning {}", path.display())))?;
    // Dropping the last reference to a TCX link detaches it.
    drop(link);
    Ok(())
}

/// Removes capture from this netns completely: detaches every pinned link
/// (tc, sock_ops) and every netlink filter of ours (with the `clsact` qdisc
/// when nothing else uses it), detaches sk_msg from the socket map, and
/// removes all pins. A missing directory is fine.
pub fn uninstall(pin_dir: &Path) -> Result<(), CaptureError> {
    for name in net::interface_names().unwrap_or_default() {
        detach_netlink(&name);
    }
    if !pin_dir.exists() {
        return Ok(());
    }
    if let Ok(rd) = fs::read_dir(pin_dir.join(LINKS_DIR)) {
        for entry in rd.filter_map(Result::ok) {
            detach_pinned(&entry.path())?;
        }
    }
    let (prog, map) = (pin_dir.join(PIN_SK_MSG), pin_dir.join("map_socks"));
    if prog.exists() && map.exists() {
        let sk_msg = SkMsg::from_pin(&prog).map_err(prog_err(format!(
            "opening pinned program {}",
            prog.display()
        )))?;
        let data =
            MapData::from_pin(&map).map_err(map_err(format!("opening {}", map.display())))?;
        let socks: SockHash<MapData, SockKey> = SockHash::try_from(
            Map::from_map_data(data).map_err(map_err(format!("opening {}", map.display())))?,
        )
        .map_err(map_err(format!("{} has the wrong type", map.display())))?;
        // Attach (replacing ours) to get a handle, then detach through it.
        let mut sk_msg = sk_msg;
        let id = sk_msg
            .attach(socks.fd())
            .map_err(prog_err("taking over the sk_msg attachment"))?;
        sk_msg
            .detach(id)
            .map_err(prog_err("detaching sk_msg from the socket map"))?;
    }
    fs::remove_dir_all(pin_dir).map_err(pin_err(format!("removing {}", pin_dir.display())))
}

/// Removes our netlink filter from `ifname` (if any), and the `clsact`
/// qdisc when no other filter is left on it.
fn detach_netlink(ifname: &str) {
    if qdisc_detach_program(ifname, TcAttachType::Ingress, PROG_TC_INGRESS).is_ok() {
        let filters = std::process::Command::new("tc")
            .args(["filter", "show", "dev", ifname, "ingress"])
            .output();
        if filters.is_ok_and(|o| o.status.success() && o.stdout.is_empty()) {
            let _ = std::process::Command::new("tc")
                .args(["qdisc", "del", "dev", ifname, "clsact"])
                .output();
        }
    }
}

/// Whether `path` is on a bpf filesystem.
pub fn is_bpffs(path: &Path) -> bool {
    const BPF_FS_MAGIC: i64 = 0xcafe_4a11;
    let Ok(c) = CString::new(path.as_os_str().as_encoded_bytes()) else {
        return false;
    };
    #[expect(unsafe_code, reason = "statfs(2) has no safe wrapper in std")]
    // SAFETY: c is a valid NUL-terminated path and st a properly sized,
    // zeroed out-parameter.
    let (rc, st) = unsafe {
        let mut st: libc::statfs = std::mem::zeroed();
        (libc::statfs(c.as_ptr(), &mut st), st)
    };
    rc == 0 && st.f_type == BPF_FS_MAGIC
}

/// Whether `dir` (or its nearest existing ancestor) is on a bpffs.
fn ensure_bpffs(dir: &Path) -> Result<(), CaptureError> {
    let mut probe = dir;
    while !probe.exists() {
        probe = probe.parent().unwrap_or(Path::new("/"));
    }
    if is_bpffs(probe) {
        Ok(())
    } else {
        Err(CaptureError::NotBpffs(dir.to_owned()))
    }
}

fn ifindex(ifname: &str) -> Result<u32, CaptureError> {
    let c = CString::new(ifname).map_err(|_| CaptureError::NoInterface(ifname.to_owned()))?;
    #[expect(unsafe_code, reason = "if_nametoindex(3) has no safe wrapper in std")]
    // SAFETY: c is a valid NUL-terminated string.
    let idx = unsafe { libc::if_nametoindex(c.as_ptr()) };
    if idx == 0 {
        Err(CaptureError::NoInterface(ifname.to_owned()))
    } else {
        Ok(idx)
    }
}

fn program<'a, P>(ebpf: &'a mut Ebpf, name: &str) -> Result<&'a mut P, CaptureError>
where
    &'a mut P: TryFrom<&'a mut aya::programs::Program, Error = aya::programs::ProgramError>,
{
    ebpf.program_mut(name)
        .ok_or_else(|| CaptureError::Program {
            what: format!("program {name} is missing from the object"),
            source: aya::programs::ProgramError::NotLoaded,
        })?
        .try_into()
        .map_err(prog_err(format!("program {name} has the wrong type")))
}

fn pin_program(
    result: Result<(), aya::pin::PinError>,
    name: &str,
    pin_dir: &Path,
) -> Result<(), CaptureError> {
    result.map_err(|e| CaptureError::Pin {
        what: format!("pinning {name} in {}", pin_dir.display()),
        source: io::Error::other(e),
    })
}

/// Whether an error (or one of its causes) is `EEXIST`: the qdisc or the
/// filter is there already.
fn already_exists(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut cause: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(c) = cause {
        if let Some(io) = c.downcast_ref::<io::Error>()
            && io.kind() == io::ErrorKind::AlreadyExists
        {
            return true;
        }
        cause = c.source();
    }
    false
}
