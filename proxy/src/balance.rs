//! Load balancing: power of two choices (P2C). Two endpoints are drawn at
//! random and the less loaded one is taken, which spreads load nearly as
//! well as asking every endpoint and costs two lookups.
//!
//! - L4 (new connections): the load is the endpoint's open connections.
//! - L7 (requests): the load is its peak-EWMA latency times its
//!   outstanding requests plus one (Finagle's and linkerd's cost): a slow
//!   endpoint is avoided at once (the peak is taken as it is) and forgiven
//!   gradually (the average decays towards new samples with a 10 s time
//!   constant); outstanding requests break ties.
//!
//! The state of an endpoint outlives config versions (it is keyed by
//! address), so a new snapshot does not forget what was learned.

use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The decay time constant of the latency average.
const DECAY: Duration = Duration::from_secs(10);
/// The latency an endpoint starts with (it is tried, not avoided).
const START_LATENCY: Duration = Duration::from_millis(1);

/// Every endpoint's load.
#[derive(Debug, Default)]
pub struct Balancer {
    endpoints: Mutex<HashMap<SocketAddrV4, Arc<Load>>>,
}

/// One endpoint's load.
#[derive(Debug)]
pub struct Load {
    /// Open connections or outstanding requests.
    active: AtomicU64,
    /// Peak-EWMA latency (ns) and when it was last updated.
    latency: Mutex<(f64, Instant)>,
}

/// An endpoint counted as in use until dropped.
#[derive(Debug)]
pub struct InUse {
    load: Arc<Load>,
    started: Instant,
    /// The address chosen.
    pub addr: SocketAddrV4,
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
                })
            })
            .clone()
    }

    /// Picks one of the endpoints `ips` (on `port`) for a new connection
    /// (P2C on open connections); `None` when there is none. The
    /// connection counts until the result drops.
    pub fn connection(&self, ips: &[Ipv4Addr], port: u16) -> Option<InUse> {
        self.pick(ips, port, |l| l.active.load(Ordering::Relaxed) as f64)
    }

    /// Picks one of the endpoints `ips` (on `port`) for a request (P2C on
    /// peak-EWMA latency times outstanding requests); `None` when there is
    /// none. Dropping the result ends the request; [`InUse::done`] also
    /// records its latency.
    pub fn request(&self, ips: &[Ipv4Addr], port: u16) -> Option<InUse> {
        self.pick(ips, port, Load::cost)
    }

    fn pick(&self, ips: &[Ipv4Addr], port: u16, cost: impl Fn(&Load) -> f64) -> Option<InUse> {
        let at = |i: usize| SocketAddrV4::new(ips[i], port);
        let (addr, load) = match ips.len() {
            0 => return None,
            1 => (at(0), self.load(at(0))),
            n => {
                let a = fastrand::usize(..n);
                // A second, different one.
                let b = (a + 1 + fastrand::usize(..n - 1)) % n;
                let (la, lb) = (self.load(at(a)), self.load(at(b)));
                if cost(&lb) < cost(&la) {
                    (at(b), lb)
                } else {
                    (at(a), la)
                }
            }
        };
        load.active.fetch_add(1, Ordering::Relaxed);
        Some(InUse {
            load,
            started: Instant::now(),
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

impl Load {
    fn cost(&self) -> f64 {
        let (latency, _) = *self.latency.lock().unwrap_or_else(|p| p.into_inner());
        latency * (self.active.load(Ordering::Relaxed) + 1) as f64
    }
}

impl InUse {
    /// The request ended after the time since it was picked: that is a
    /// latency sample.
    pub fn done(self) {
        let rtt = self.started.elapsed().as_nanos() as f64;
        let now = Instant::now();
        let mut l = self.load.latency.lock().unwrap_or_else(|p| p.into_inner());
        let (ewma, at) = *l;
        let next = if rtt > ewma {
            rtt
        } else {
            let w = (-(now.duration_since(at).as_secs_f64()) / DECAY.as_secs_f64()).exp();
            ewma * w + rtt * (1.0 - w)
        };
        *l = (next, now);
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
        let mut counts = HashMap::new();
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

    #[test]
    fn no_endpoint_gives_none_and_one_is_always_that_one() {
        let b = Balancer::default();
        assert!(b.request(&[], 80).is_none());
        let one = ips(1);
        assert_eq!(b.connection(&one, 80).unwrap().addr, at(one[0]));
    }
}
