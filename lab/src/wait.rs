//! Waiting on a condition with a deadline: the one place that polls.

use std::time::{Duration, Instant};

/// Calls `check` until it returns `Some`, or `timeout` passes (then `None`).
/// `check` runs at least once, and once more at the deadline.
pub fn wait_until<T>(
    timeout: Duration,
    interval: Duration,
    mut check: impl FnMut() -> Option<T>,
) -> Option<T> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = check() {
            return Some(v);
        }
        let now = Instant::now();
        if now >= deadline {
            return None;
        }
        #[expect(
            clippy::disallowed_methods,
            reason = "the poll interval of a deadline-bounded wait on a condition"
        )]
        std::thread::sleep(interval.min(deadline - now));
    }
}
