//! Load balancing: power of two choices (P2C). Two endpoints are drawn at
//! random and the less loaded one is taken, which spreads load nearly as
//! well as asking every endpoint and costs two lookups.
//!
//! - L4 (new connections): the load is the endpoint's open connections.
//! - L7 (requests): the load is its peak-EWMA latency times its
//!   outstanding requests plus one (Finagle's and linkerd's cost): a slow
//!   endpoint is avoided at once (the peak is taken as it is) and forgiven
//!   gradually: the average decays towards new samples, and towards zero
//!   while no sample comes, with a 10 s time constant, so an endpoint
//!   avoided for one slow answer is tried again after a while instead of
//!   never; outstanding requests break ties.
//!
//! Passive outlier detection: an endpoint whose requests end in five 5xx
//! answers or connect failures in a row is ejected (not picked) for 30 s
//! times the number of its recent ejections (at most 300 s; an endpoint
//! forgiven one ejection for every 30 s it stays in). Never more than half
//! of the endpoints picked from are ejected at once: beyond that, those
//! ejected longest stay out and the rest are picked again.
//!
//! The state of an endpoint outlives config versions (it is keyed by
//! address), so a new snapshot does not forget what was learned.

use std::net::{Ipv4Addr, SocketAddrV4};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The decay time constant of the latency average.
const DECAY: Duration = Duration::from_secs(10);
/// The latency an endpoint starts with (it is tried, not avoided).
const START_LATENCY: Duration = Duration::from_millis(1);
/// Failures in a row that eject an endpoint.
const EJECT_AFTER: u32 = 5;
/// The first ejection's length; the n-th lasts n times as long.
const EJECTION: Duration = Duration::from_secs(30);
/// The longest ejection.
const MAX_EJECTION: Duration = Duration::from_secs(300);

/// Every endpoint's load.
#[derive(Debug)]
pub struct Balancer {
    endpoints: Mutex<foldhash::HashMap<SocketAddrV4, Arc<Load>>>,
    watch: Arc<Watch>,
}

/// When the last ejection ends, so picks skip the ejection check while
/// no endpoint is ejected.
#[derive(Debug)]
struct Watch {
    start: Instant,
    /// Nanoseconds from `start` to the end of the latest ejection.
    until: AtomicU64,
}

impl Watch {
    fn nanos(&self, at: Instant) -> u64 {
        at.saturating_duration_since(self.start).as_nanos() as u64
    }

    fn any_ejected(&self, now: Instant) -> bool {
        self.until.load(Ordering::Relaxed) > self.nanos(now)
    }
}

/// One endpoint's load and health.
#[derive(Debug)]
pub struct Load {
    /// Open connections or outstanding requests.
    active: AtomicU64,
    /// Peak-EWMA latency (ns) and when it was last updated.
    latency: Mutex<(f64, Instant)>,
    health: Mutex<Health>,
}

#[derive(Debug, Default)]
struct Health {
    /// Failures since the last success.
    failures: u32,
    /// Recent ejections (the back-off's multiplier).
    ejections: u32,
    /// The end of the current or last ejection.
    until: Option<Instant>,
}

/// An endpoint counted as in use until dropped.
#[derive(Debug)]
pub struct InUse {
    load: Arc<Load>,
    watch: Arc<Watch>,
    started: Instant,
    /// The address chosen.
    pub addr: SocketAddrV4,
}

impl Default for Balancer {
    fn default() -> Balancer {
        Balancer {
            endpoints: Mutex::default(),
            watch: Arc::new(Watch {
                start: Instant::now(),
                until: AtomicU64::new(0),
            }),
        }
    }
}

impl Balancer {
    fn load(&self, addr: SocketAddrV4) -> Arc<Load> {
        self.endpoints
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(addr)
            .or_insert_with(|| {
                Arc::new(Load {
                    active: AtomicU64::new(0),
                    latency: Mutex::new((START_LATENCY.as_nanos() as f64, Instant::now())),
                    health: Mutex::default(),
                })
            })
            .clone()
    }

    /// Picks one of the endpoints `ips` (on `port`) for a new connection
    /// (P2C on open connections); `None` when there is none. The
    /// connection counts until the result drops.
    pub fn connection(&self, ips: &[Ipv4Addr], port: u16) -> Option<InUse> {
        self.pick(ips, port, Instant::now(), |l| {
            l.active.load(Ordering::Relaxed) as f64
        })
    }

    /// Picks one of the endpoints `ips` (on `port`) for a request (P2C on
    /// peak-EWMA latency times outstanding requests); `None` when there is
    /// none. Dropping the result ends the request; [`InUse::done`] also
    /// records its latency.
    pub fn request(&self, ips: &[Ipv4Addr], port: u16) -> Option<InUse> {
        let now = Instant::now();
        self.pick(ips, port, now, |l| l.cost(now))
    }

    fn pick(
        &self,
        ips: &[Ipv4Addr],
        port: u16,
        now: Instant,
        cost: impl Fn(&Load) -> f64,
    ) -> Option<InUse> {
        let (addr, load) = if self.watch.any_ejected(now) {
            let all: Vec<(SocketAddrV4, Arc<Load>)> = ips
                .iter()
                .map(|ip| {
                    let a = SocketAddrV4::new(*ip, port);
                    (a, self.load(a))
                })
                .collect();
            let out = ejected(&all, now);
            let left: Vec<&(SocketAddrV4, Arc<Load>)> = all
                .iter()
                .enumerate()
                .filter(|(i, _)| !out.contains(i))
                .map(|(_, e)| e)
                .collect();
            let (a, l) = p2c(left.len(), |i| left[i].clone(), &cost)?;
            (a, l)
        } else {
            p2c(
                ips.len(),
                |i| {
                    let a = SocketAddrV4::new(ips[i], port);
                    (a, self.load(a))
                },
                &cost,
            )?
        };
        load.active.fetch_add(1, Ordering::Relaxed);
        Some(InUse {
            load,
            watch: self.watch.clone(),
            started: now,
            addr,
        })
    }

    /// Forgets endpoints that nothing uses and that are not in `keep`.
    pub fn retain(&self, keep: impl Fn(&SocketAddrV4) -> bool) {
        self.endpoints
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .retain(|a, l| keep(a) || l.active.load(Ordering::Relaxed) > 0);
    }
}

/// The power of two choices over `n` endpoints, `at(i)` being the i-th.
fn p2c(
    n: usize,
    at: impl Fn(usize) -> (SocketAddrV4, Arc<Load>),
    cost: impl Fn(&Load) -> f64,
) -> Option<(SocketAddrV4, Arc<Load>)> {
    match n {
        0 => None,
        1 => Some(at(0)),
        n => {
            let a = fastrand::usize(..n);
            // A second, different one.
            let b = (a + 1 + fastrand::usize(..n - 1)) % n;
            let (ea, eb) = (at(a), at(b));
            Some(if cost(&eb.1) < cost(&ea.1) { eb } else { ea })
        }
    }
}

/// The indices of the endpoints that sit out now: the ejected ones, at
/// most half of them all (those whose ejection ends last).
fn ejected(all: &[(SocketAddrV4, Arc<Load>)], now: Instant) -> Vec<usize> {
    let mut out: Vec<(Instant, usize)> = all
        .iter()
        .enumerate()
        .filter_map(|(i, (_, l))| {
            let h = l.health.lock().unwrap_or_else(|p| p.into_inner());
            h.until.filter(|u| *u > now).map(|u| (u, i))
        })
        .collect();
    out.sort_by_key(|e| std::cmp::Reverse(e.0));
    out.truncate(all.len() / 2);
    out.into_iter().map(|(_, i)| i).collect()
}

/// How much of a latency average is left after `elapsed` without a
/// sample (the decay towards new samples uses the same weight).
fn kept(elapsed: Duration) -> f64 {
    (-elapsed.as_secs_f64() / DECAY.as_secs_f64()).exp()
}

impl Load {
    /// The cost at `now`: the latency average, decayed for the time since
    /// its last sample (as tower's and linkerd's peak-EWMA do on read),
    /// times the outstanding requests plus one.
    fn cost(&self, now: Instant) -> f64 {
        let (latency, at) = *self.latency.lock().unwrap_or_else(|p| p.into_inner());
        let decayed = latency * kept(now.saturating_duration_since(at));
        decayed * (self.active.load(Ordering::Relaxed) + 1) as f64
    }
}

impl InUse {
    /// The request ended after the time since it was picked: that is a
    /// latency sample.
    pub fn done(self) {
        let now = Instant::now();
        let rtt = now.saturating_duration_since(self.started).as_nanos() as f64;
        let mut l = self.load.latency.lock().unwrap_or_else(|p| p.into_inner());
        let (ewma, at) = *l;
        let next = if rtt > ewma {
            rtt
        } else {
            let w = kept(now.saturating_duration_since(at));
            ewma * w + rtt * (1.0 - w)
        };
        *l = (next, now);
        drop(l);
        self.succeeded();
    }

    /// The connection or request went well: the failure streak ends.
    pub fn succeeded(&self) {
        self.load
            .health
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .failures = 0;
    }

    /// The endpoint failed it (a 5xx answer, a failed connect, a reset):
    /// one more in the streak. True when this failure ejected it.
    pub fn failed(self) -> bool {
        let now = Instant::now();
        let mut h = self.load.health.lock().unwrap_or_else(|p| p.into_inner());
        if h.until.is_some_and(|u| u > now) {
            // Already out: what was in flight when it went out.
            return false;
        }
        h.failures += 1;
        if h.failures < EJECT_AFTER {
            return false;
        }
        // Forgive one ejection for every EJECTION spent back in.
        if let Some(u) = h.until {
            let back = now.saturating_duration_since(u).as_secs() / EJECTION.as_secs();
            h.ejections = h
                .ejections
                .saturating_sub(u32::try_from(back).unwrap_or(u32::MAX));
        }
        h.ejections += 1;
        h.failures = 0;
        let length = (EJECTION * h.ejections).min(MAX_EJECTION);
        let until = now + length;
        h.until = Some(until);
        self.watch
            .until
            .fetch_max(self.watch.nanos(until), Ordering::Relaxed);
        tracing::warn!(endpoint = %self.addr, failures = EJECT_AFTER, seconds = length.as_secs(),
            ejections = h.ejections, "endpoint ejected after failures in a row");
        true
    }
}

impl Drop for InUse {
    fn drop(&mut self) {
        self.load.active.fetch_sub(1, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ips(n: u8) -> Vec<Ipv4Addr> {
        (1..=n).map(|i| Ipv4Addr::new(10, 0, 0, i)).collect()
    }

    fn at(ip: Ipv4Addr) -> SocketAddrV4 {
        SocketAddrV4::new(ip, 80)
    }

    #[test]
    fn new_connections_go_to_the_endpoint_with_fewer_open_ones() {
        let b = Balancer::default();
        let eps = ips(2);
        let held: Vec<InUse> = (0..10)
            .map(|_| b.connection(&eps[..1], 80).unwrap())
            .collect();
        for _ in 0..50 {
            assert_eq!(b.connection(&eps, 80).unwrap().addr, at(eps[1]));
        }
        drop(held);
        let spread: Vec<InUse> = (0..20).map(|_| b.connection(&eps, 80).unwrap()).collect();
        let to_second = spread.iter().filter(|u| u.addr == at(eps[1])).count();
        assert_eq!(to_second, 10, "once level, they alternate");
    }

    #[test]
    fn a_slow_endpoint_is_avoided_at_once_and_load_spreads_over_the_others() {
        let b = Balancer::default();
        let eps = ips(3);
        // One slow sample makes endpoint 0 expensive (its peak is kept).
        let mut slow = b.request(&eps[..1], 80).unwrap();
        slow.started -= Duration::from_millis(20);
        slow.done();
        let mut counts = std::collections::HashMap::new();
        for _ in 0..300 {
            let r = b.request(&eps, 80).unwrap();
            *counts.entry(r.addr).or_insert(0) += 1;
            r.done();
        }
        assert_eq!(counts.get(&at(eps[0])), None, "{counts:?}");
        assert!(
            counts[&at(eps[1])] > 50 && counts[&at(eps[2])] > 50,
            "{counts:?}"
        );
    }

    #[test]
    fn an_endpoint_avoided_for_one_slow_answer_is_tried_again_once_it_decays() {
        let b = Balancer::default();
        let eps = ips(2);
        let mut slow = b.request(&eps[..1], 80).unwrap();
        slow.started -= Duration::from_millis(20);
        slow.done();
        // The other one answers fast and often.
        let tally = |b: &Balancer| {
            (0..200)
                .filter(|_| {
                    let r = b.request(&eps, 80).unwrap();
                    let first = r.addr == at(eps[0]);
                    r.done();
                    first
                })
                .count()
        };
        assert_eq!(tally(&b), 0, "avoided right after the slow answer");
        // A minute without a sample: 20 ms decays to ~50 µs, below the
        // other's average (its start value, 1 ms, blended with fast
        // answers), so it gets picked again.
        {
            let l = b.load(at(eps[0]));
            let mut lat = l.latency.lock().unwrap();
            lat.1 -= Duration::from_secs(60);
        }
        {
            let l = b.load(at(eps[1]));
            let mut lat = l.latency.lock().unwrap();
            lat.0 = Duration::from_millis(1).as_nanos() as f64;
            lat.1 = Instant::now();
        }
        assert!(tally(&b) > 0, "tried again after decaying");
    }

    #[test]
    fn endpoints_gone_from_the_config_are_forgotten_unless_in_use() {
        let b = Balancer::default();
        let eps = ips(3);
        let held = b.connection(&eps[..1], 80).unwrap();
        for ip in &eps {
            drop(b.connection(std::slice::from_ref(ip), 80));
        }
        b.retain(|a| *a.ip() == eps[2]);
        let kept: std::collections::BTreeSet<SocketAddrV4> =
            b.endpoints.lock().unwrap().keys().copied().collect();
        assert_eq!(kept, [at(eps[0]), at(eps[2])].into(), "in use, and kept");
        drop(held);
        b.retain(|a| *a.ip() == eps[2]);
        assert_eq!(b.endpoints.lock().unwrap().len(), 1);
    }

    /// Fails `n` requests to `ip`; whether the last one ejected it.
    fn fail(b: &Balancer, ip: Ipv4Addr, n: u32) -> bool {
        (0..n)
            .map(|_| b.request(&[ip], 80).unwrap().failed())
            .last()
            .unwrap()
    }

    fn until(b: &Balancer, ip: Ipv4Addr) -> Option<Instant> {
        b.load(at(ip)).health.lock().unwrap().until
    }

    #[test]
    fn five_failures_in_a_row_eject_an_endpoint_and_a_success_ends_the_streak() {
        let b = Balancer::default();
        let eps = ips(3);
        assert!(!fail(&b, eps[0], 4));
        b.request(&eps[..1], 80).unwrap().done();
        assert!(!fail(&b, eps[0], 4), "the success ended the streak");
        assert!(fail(&b, eps[0], 1), "the fifth in a row ejects");
        for _ in 0..200 {
            assert_ne!(b.request(&eps, 80).unwrap().addr, at(eps[0]));
            assert_ne!(b.connection(&eps, 80).unwrap().addr, at(eps[0]));
        }
        let left = until(&b, eps[0]).unwrap() - Instant::now();
        assert!(
            left > Duration::from_secs(29) && left <= EJECTION,
            "{left:?}"
        );
        // Requests in flight when it went out do not extend it.
        assert!(!fail(&b, eps[0], 10));
    }

    #[test]
    fn never_more_than_half_of_the_endpoints_are_ejected_at_once() {
        let b = Balancer::default();
        let eps = ips(2);
        assert!(fail(&b, eps[0], 5));
        assert!(fail(&b, eps[1], 5));
        // Both ejected, at most one sits out: the one ejected last.
        let picked: std::collections::BTreeSet<SocketAddrV4> = (0..100)
            .map(|_| b.request(&eps, 80).unwrap().addr)
            .collect();
        assert_eq!(picked, [at(eps[0])].into());
        // One endpoint alone is never ejected out of picking.
        assert_eq!(b.request(&eps[1..], 80).unwrap().addr, at(eps[1]));
    }

    #[test]
    fn each_ejection_lasts_longer_and_time_back_in_forgives_them() {
        let b = Balancer::default();
        let ip = ips(1)[0];
        let end_now = |back: Duration| {
            b.load(at(ip)).health.lock().unwrap().until = Some(Instant::now() - back);
        };
        assert!(fail(&b, ip, 5));
        end_now(Duration::from_secs(1));
        assert!(fail(&b, ip, 5));
        let left = until(&b, ip).unwrap() - Instant::now();
        assert!(
            left > Duration::from_secs(59),
            "the second lasts 60 s: {left:?}"
        );
        for _ in 0..20 {
            end_now(Duration::from_secs(1));
            assert!(fail(&b, ip, 5));
        }
        let left = until(&b, ip).unwrap() - Instant::now();
        assert!(left <= MAX_EJECTION && left > MAX_EJECTION - Duration::from_secs(1));
        // 22 ejections; 21 × 30 s back in forgives 21 of them.
        end_now(EJECTION * 21);
        assert!(fail(&b, ip, 5));
        let left = until(&b, ip).unwrap() - Instant::now();
        assert!(
            left <= Duration::from_secs(60) && left > Duration::from_secs(59),
            "{left:?}"
        );
    }

    #[test]
    fn no_endpoint_gives_none_and_one_is_always_that_one() {
        let b = Balancer::default();
        assert!(b.request(&[], 80).is_none());
        let one = ips(1);
        assert_eq!(b.connection(&one, 80).unwrap().addr, at(one[0]));
    }
}
