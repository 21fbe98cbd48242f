//! cgroup v2 directories for labs: create, kill everything inside, remove.
//!
//! `cgroup.kill` ends every process of a subtree at once, including ones a
//! pod forked, so teardown does not depend on knowing PIDs.

use std::fs;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::error::LabError;
use crate::wait::wait_until;

/// Name of the directory under the cgroup v2 root that holds every lab.
pub(crate) const LABS_DIR: &str = "weft-lab";

/// Checks that `root` is a cgroup v2 mount.
pub(crate) fn check_v2(root: &Path) -> Result<(), LabError> {
    if root.join("cgroup.controllers").exists() {
        Ok(())
    } else {
        Err(LabError::Host(format!(
            "{} is not a cgroup v2 mount (no cgroup.controllers)",
            root.display()
        )))
    }
}

/// Finds the cgroup v2 mount: `/sys/fs/cgroup/unified` in the hybrid layout,
/// else `/sys/fs/cgroup` in the unified one.
pub(crate) fn detect_root() -> Result<PathBuf, LabError> {
    ["/sys/fs/cgroup/unified", "/sys/fs/cgroup"]
        .iter()
        .map(PathBuf::from)
        .find(|p| p.join("cgroup.controllers").exists())
        .ok_or_else(|| {
            LabError::Host("no cgroup v2 mount at /sys/fs/cgroup/unified or /sys/fs/cgroup".into())
        })
}

pub(crate) fn create(dir: &Path) -> Result<(), LabError> {
    create_dir_all_racing(dir).map_err(LabError::io(format!("creating cgroup {}", dir.display())))
}

/// `create_dir_all` that survives another lab's `down` removing a shared
/// parent (`/run/weft/lab`, the `weft-lab` cgroup) once it is empty,
/// between the creation of the parent and of the child: it tries again.
pub(crate) fn create_dir_all_racing(dir: &Path) -> std::io::Result<()> {
    let mut tries = 0;
    loop {
        match fs::create_dir_all(dir) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && tries < 10 => tries += 1,
            other => return other,
        }
    }
}

/// Opens `cgroup.procs` of `dir` for writing.
pub(crate) fn open_procs(dir: &Path) -> Result<fs::File, LabError> {
    let path = dir.join("cgroup.procs");
    fs::OpenOptions::new()
        .write(true)
        .open(&path)
        .map_err(LabError::io(format!("opening {}", path.display())))
}

/// PIDs in `dir` and every cgroup below it.
pub(crate) fn pids(dir: &Path) -> Vec<u32> {
    let mut out = Vec::new();
    if let Ok(text) = fs::read_to_string(dir.join("cgroup.procs")) {
        out.extend(text.lines().filter_map(|l| l.trim().parse::<u32>().ok()));
    }
    for sub in subdirs(dir) {
        out.extend(pids(&sub));
    }
    out
}

fn subdirs(dir: &Path) -> Vec<PathBuf> {
    fs::read_dir(dir)
        .map(|rd| {
            rd.filter_map(Result::ok)
                .filter(|e| e.file_type().map(|t| t.is_dir()).unwrap_or(false))
                .map(|e| e.path())
                .collect()
        })
        .unwrap_or_default()
}

fn populated(dir: &Path) -> bool {
    fs::read_to_string(dir.join("cgroup.events"))
        .map(|t| t.lines().any(|l| l == "populated 1"))
        .unwrap_or(false)
}

/// Kills every process in `dir`'s subtree, waits for them to go, and removes
/// the directories bottom-up. A missing `dir` is fine.
pub(crate) fn kill_and_remove(dir: &Path) -> Result<(), LabError> {
    if !dir.exists() {
        return Ok(());
    }
    if populated(dir) {
        let kill = dir.join("cgroup.kill");
        fs::write(&kill, "1").map_err(LabError::io(format!("writing {}", kill.display())))?;
        let gone = wait_until(Duration::from_secs(10), Duration::from_millis(10), || {
            (!populated(dir)).then_some(())
        });
        if gone.is_none() {
            return Err(LabError::Host(format!(
                "processes {:?} in {} survived cgroup.kill for 10 s",
                pids(dir),
                dir.display()
            )));
        }
    }
    remove_tree(dir)
}

fn remove_tree(dir: &Path) -> Result<(), LabError> {
    for sub in subdirs(dir) {
        remove_tree(&sub)?;
    }
    match fs::remove_dir(dir) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(LabError::io(format!("removing cgroup {}", dir.display()))(
            e,
        )),
    }
}
