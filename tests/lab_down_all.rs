//! `weft lab down --all`. In a test binary of its own: cargo runs test
//! binaries one after another, so no other test's lab is up meanwhile.
//! It removes every lab on the host, a developer's own included.

use std::path::Path;

mod support;

use support::{LabGuard, lab_netns, require_root, unique_lab_name, weft_ok};
use weft_lab::DEFAULT_STATE_ROOT;

#[test]
fn down_all_removes_every_lab_even_one_whose_state_file_is_lost() {
    require_root();
    let one = LabGuard::new(unique_lab_name('m'));
    let two = LabGuard::new(unique_lab_name('n'));
    weft_ok(&["lab", "up", "--name", one.arg()]);
    weft_ok(&["lab", "up", "--name", two.arg()]);
    // A lab whose state is gone is still found by its names. Each lab has
    // two pods, two node proxies, a control plane and an OTLP receiver.
    std::fs::remove_dir_all(Path::new(DEFAULT_STATE_ROOT).join(two.arg())).unwrap();

    let out = weft_ok(&["lab", "down", "--all"]);
    assert!(
        out.contains(&format!("lab {}: killed 6 processes", one.arg())),
        "{out}"
    );
    assert!(
        out.contains(&format!("lab {}: killed 6 processes", two.arg())),
        "{out}"
    );
    assert!(lab_netns(&one.name).is_empty());
    assert!(lab_netns(&two.name).is_empty());
    assert!(
        !Path::new("/sys/fs/cgroup/unified/weft-lab").exists(),
        "no weft-lab cgroup is left"
    );
    let netns = std::fs::read_dir("/run/netns")
        .map(|rd| {
            rd.filter_map(Result::ok)
                .filter(|e| e.file_name().to_string_lossy().starts_with("weft-"))
                .count()
        })
        .unwrap_or(0);
    assert_eq!(netns, 0, "no lab netns at all is left");
}
