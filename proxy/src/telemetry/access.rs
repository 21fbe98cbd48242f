//! Access logs: one JSON line per HTTP request and per TCP connection (each
//! switched by the mesh's Telemetry object), on the proxy's standard
//! output. The data path never writes: a line is formatted and handed to
//! a bounded queue that a thread of its own writes out; a rate limit (lines
//! a second) and the queue's bound drop the rest, counted, so a flood
//! cannot fill a disk or hold requests up.

use std::io::Write as _;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::mpsc;
use std::time::{SystemTime, UNIX_EPOCH};

/// Lines waiting for the writer, at most.
const QUEUE: usize = 4096;

/// The access log.
#[derive(Debug)]
pub struct AccessLog {
    requests: AtomicBool,
    connections: AtomicBool,
    per_second: AtomicU32,
    /// The second the count below is for, and lines taken in it.
    second: AtomicU64,
    taken: AtomicU32,
    tx: Option<mpsc::SyncSender<String>>,
    /// Lines written (handed to the writer).
    pub written: AtomicU64,
    /// Lines dropped by the rate limit.
    pub dropped_rate: AtomicU64,
    /// Lines dropped because the writer was behind.
    pub dropped_queue: AtomicU64,
}

impl AccessLog {
    /// An access log writing to standard output from a thread of its own
    /// (off until configured).
    pub fn to_stdout() -> AccessLog {
        let (tx, rx) = mpsc::sync_channel::<String>(QUEUE);
        let spawned = std::thread::Builder::new()
            .name("weft-access-log".into())
            .spawn(move || {
                let stdout = std::io::stdout();
                while let Ok(line) = rx.recv() {
                    let mut out = stdout.lock();
                    if out.write_all(line.as_bytes()).is_err() {
                        return;
                    }
                    // Write what is queued too before flushing.
                    while let Ok(more) = rx.try_recv() {
                        if out.write_all(more.as_bytes()).is_err() {
                            return;
                        }
                    }
                    let _ = out.flush();
                }
            });
        let tx = match spawned {
            Ok(_) => Some(tx),
            Err(e) => {
                tracing::error!(error = %e, "the access log writer could not start; access logs are off");
                None
            }
        };
        AccessLog::with_sender(tx)
    }

    fn with_sender(tx: Option<mpsc::SyncSender<String>>) -> AccessLog {
        AccessLog {
            requests: AtomicBool::new(false),
            connections: AtomicBool::new(false),
            per_second: AtomicU32::new(0),
            second: AtomicU64::new(0),
            taken: AtomicU32::new(0),
            tx,
            written: AtomicU64::new(0),
            dropped_rate: AtomicU64::new(0),
            dropped_queue: AtomicU64::new(0),
        }
    }

    /// Takes the mesh's settings (`None`: off).
    pub fn configure(&self, settings: Option<&weft_model::AccessLogs>) {
        let s = settings.copied().unwrap_or_default();
        self.requests.store(s.requests, Ordering::Relaxed);
        self.connections.store(s.connections, Ordering::Relaxed);
        self.per_second.store(s.lines_per_second, Ordering::Relaxed);
    }

    /// Whether request lines are on.
    pub fn requests(&self) -> bool {
        self.requests.load(Ordering::Relaxed)
    }

    /// Whether connection lines are on.
    pub fn connections(&self) -> bool {
        self.connections.load(Ordering::Relaxed)
    }

    /// Whether the rate limit lets one more line through now (counted
    /// either way). Asked before a line is formatted.
    pub fn admit(&self) -> bool {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        if self.second.swap(now, Ordering::Relaxed) != now {
            self.taken.store(0, Ordering::Relaxed);
        }
        let taken = self.taken.fetch_add(1, Ordering::Relaxed);
        if taken < self.per_second.load(Ordering::Relaxed) {
            true
        } else {
            self.dropped_rate.fetch_add(1, Ordering::Relaxed);
            false
        }
    }

    /// Hands a line (JSON, without its newline) to the writer.
    pub fn write(&self, mut line: String) {
        line.push('\n');
        let sent = self.tx.as_ref().is_some_and(|tx| tx.try_send(line).is_ok());
        if sent {
            self.written.fetch_add(1, Ordering::Relaxed);
        } else {
            self.dropped_queue.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// The counters, as Prometheus text.
    pub fn render(&self, out: &mut String) {
        out.push_str(&format!(
            "# HELP weft_access_log_lines_total Access log lines written.\n\
             # TYPE weft_access_log_lines_total counter\nweft_access_log_lines_total {}\n\
             # HELP weft_access_log_dropped_total Access log lines dropped, by reason.\n\
             # TYPE weft_access_log_dropped_total counter\n\
             weft_access_log_dropped_total{{reason=\"rate\"}} {}\n\
             weft_access_log_dropped_total{{reason=\"queue\"}} {}\n",
            self.written.load(Ordering::Relaxed),
            self.dropped_rate.load(Ordering::Relaxed),
            self.dropped_queue.load(Ordering::Relaxed),
        ));
    }
}

/// Now, as RFC 3339 in UTC with microseconds.
pub fn timestamp() -> String {
    let d = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    let secs = d.as_secs();
    let (days, rem) = (secs / 86_400, secs % 86_400);
    // Civil date from days since the epoch (Howard Hinnant's algorithm).
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:06}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        d.subsec_micros()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_rate_limit_lets_the_configured_lines_through_each_second_and_counts_the_rest() {
        let (tx, rx) = mpsc::sync_channel(QUEUE);
        let log = AccessLog::with_sender(Some(tx));
        log.configure(Some(&weft_model::AccessLogs {
            requests: true,
            connections: false,
            lines_per_second: 10,
        }));
        assert!(log.requests() && !log.connections());
        let through = (0..25).filter(|_| log.admit()).count();
        // The second may turn over once during the loop: at most twice
        // the limit.
        assert!((10..=20).contains(&through), "{through}");
        assert_eq!(
            log.dropped_rate.load(Ordering::Relaxed),
            25 - through as u64
        );
        log.write("{}".into());
        assert_eq!(rx.try_recv().unwrap(), "{}\n");
    }

    #[test]
    fn a_full_queue_drops_and_counts_instead_of_blocking() {
        let (tx, _rx) = mpsc::sync_channel(2);
        let log = AccessLog::with_sender(Some(tx));
        for _ in 0..5 {
            log.write("{}".into());
        }
        assert_eq!(log.written.load(Ordering::Relaxed), 2);
        assert_eq!(log.dropped_queue.load(Ordering::Relaxed), 3);
    }

    #[test]
    fn timestamps_are_rfc3339_utc() {
        let t = timestamp();
        assert_eq!(t.len(), 27, "{t}");
        assert!(
            t.starts_with("20") && t.ends_with('Z') && t.as_bytes()[10] == b'T',
            "{t}"
        );
    }
}
