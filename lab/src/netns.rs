//! Network namespaces, `ip` commands, and processes placed inside a netns
//! and a cgroup.
//!
//! Processes join their netns with `setns(2)` rather than `ip netns exec`:
//! the latter remounts `/sys`, which hides the cgroup tree and the bpffs pins
//! from everything it starts.

use std::fs::File;
use std::io::Write;
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Stdio};

use crate::error::LabError;

const NETNS_DIR: &str = "/run/netns";

/// Runs `ip` with `args`; the error carries the command line and stderr.
pub(crate) fn ip(args: &[&str]) -> Result<(), LabError> {
    let out = Command::new("ip")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .map_err(LabError::io("running `ip` (is iproute2 installed?)"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(LabError::Command {
            command: format!("ip {}", args.join(" ")),
            status: out.status,
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_owned(),
        })
    }
}

/// Creates a netns and brings its loopback up.
pub(crate) fn add(name: &str) -> Result<(), LabError> {
    ip(&["netns", "add", name])?;
    ip(&["-n", name, "link", "set", "lo", "up"])
}

/// Deletes a netns if it exists.
pub(crate) fn delete(name: &str) -> Result<(), LabError> {
    if !exists(name) {
        return Ok(());
    }
    ip(&["netns", "delete", name])
}

/// Whether a named netns exists.
pub(crate) fn exists(name: &str) -> bool {
    Path::new(NETNS_DIR).join(name).exists()
}

/// Every named netns.
pub(crate) fn list() -> Result<Vec<String>, LabError> {
    let dir = match std::fs::read_dir(NETNS_DIR) {
        Ok(d) => d,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(LabError::io(format!("listing {NETNS_DIR}"))(e)),
    };
    let mut names = Vec::new();
    for entry in dir {
        let entry = entry.map_err(LabError::io(format!("listing {NETNS_DIR}")))?;
        names.push(entry.file_name().to_string_lossy().into_owned());
    }
    names.sort();
    Ok(names)
}

/// Opens a named netns, for `setns`.
pub(crate) fn open(name: &str) -> Result<File, LabError> {
    File::open(Path::new(NETNS_DIR).join(name))
        .map_err(LabError::io(format!("opening netns {name}")))
}

fn setns(fd: RawFd) -> std::io::Result<()> {
    #[expect(unsafe_code, reason = "setns(2) has no safe wrapper in std")]
    // SAFETY: fd is an open netns file descriptor owned by the caller for
    // the duration of the call; setns only changes this thread's namespace.
    let rc = unsafe { libc::setns(fd, libc::CLONE_NEWNET) };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// Runs `f` on a new thread that has joined netns `name`. Sockets it opens
/// stay in that netns whichever thread uses them later.
pub fn in_netns<T: Send + 'static>(
    name: &str,
    f: impl FnOnce() -> T + Send + 'static,
) -> Result<T, LabError> {
    let ns = open(name)?;
    let name = name.to_owned();
    std::thread::spawn(move || -> Result<T, LabError> {
        setns(ns.as_raw_fd()).map_err(LabError::io(format!("joining netns {name}")))?;
        Ok(f())
    })
    .join()
    .map_err(|_| LabError::Host("a thread inside a lab netns panicked".into()))?
}

/// Writes a sysctl inside a netns (`key` like `net/ipv4/ip_forward`).
pub(crate) fn sysctl(netns: &str, key: &str, value: &str) -> Result<(), LabError> {
    let path = format!("/proc/sys/{key}");
    let value = value.to_owned();
    let path2 = path.clone();
    in_netns(netns, move || std::fs::write(&path2, value))?
        .map_err(LabError::io(format!("writing {path} in netns {netns}")))
}

/// Where a process is placed before it executes.
#[derive(Debug)]
pub(crate) struct Placement {
    /// The netns to join.
    pub(crate) netns: File,
    /// The target cgroup's `cgroup.procs`, opened for writing.
    pub(crate) cgroup_procs: File,
    /// Start a new session, so the process outlives the command that started it
    /// and ignores its terminal's signals.
    pub(crate) new_session: bool,
}

impl Placement {
    /// Makes `cmd` enter the cgroup, then the netns, between fork and exec.
    /// The files are moved into the hook and closed in the parent when `cmd`
    /// drops; in the child they close on exec (`O_CLOEXEC`).
    pub(crate) fn apply(self, cmd: &mut Command) {
        let Placement {
            netns,
            cgroup_procs,
            new_session,
        } = self;
        let hook = move || -> std::io::Result<()> {
            if new_session {
                #[expect(unsafe_code, reason = "setsid(2) between fork and exec")]
                // SAFETY: setsid is async-signal-safe and has no preconditions.
                if unsafe { libc::setsid() } < 0 {
                    return Err(std::io::Error::last_os_error());
                }
            }
            // "0" moves the writing process itself (cgroup v2). Enter the cgroup
            // first: the cgroup fs stays reachable whatever netns we are in.
            (&cgroup_procs).write_all(b"0")?;
            setns(netns.as_raw_fd())
        };
        #[expect(unsafe_code, reason = "pre_exec runs between fork and exec")]
        // SAFETY: the hook only calls async-signal-safe functions (setsid,
        // write, setns) on descriptors opened before the fork, and allocates
        // nothing.
        unsafe {
            cmd.pre_exec(hook);
        }
    }
}
