//! The retry budget: retries may add at most a share of the live request
//! load (20%), plus a small reserve so a quiet service can still retry, so
//! retries never turn a failing backend's outage into a storm (the budget
//! Finagle and linkerd use, without the time window: the reserve refills
//! only from requests).

use std::sync::atomic::{AtomicI64, Ordering};

/// Each request earns this much of a retry, in thousandths.
const EARNED_PER_REQUEST: i64 = 200;
/// A retry costs one, in thousandths.
const COST: i64 = 1000;
/// Retries in reserve at start.
const RESERVE: i64 = 10 * COST;
/// At most this many retries are banked.
const CAP: i64 = 100 * COST;

/// Retries earned and not yet spent (thousandths).
#[derive(Debug)]
pub struct Budget {
    tokens: AtomicI64,
}

impl Default for Budget {
    fn default() -> Budget {
        Budget {
            tokens: AtomicI64::new(RESERVE),
        }
    }
}

impl Budget {
    /// A request arrived: it earns a share of a retry.
    pub fn earn(&self) {
        let _ = self
            .tokens
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |t| {
                Some((t + EARNED_PER_REQUEST).min(CAP))
            });
    }

    /// Takes one retry; false when the budget is spent.
    pub fn spend(&self) -> bool {
        self.tokens
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |t| {
                (t >= COST).then_some(t - COST)
            })
            .is_ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retries_are_at_most_the_reserve_plus_a_fifth_of_the_requests() {
        let b = Budget::default();
        let mut retries = 0;
        for _ in 0..1000 {
            b.earn();
            // Every request fails and would retry.
            if b.spend() {
                retries += 1;
            }
        }
        assert_eq!(retries, 10 + 200);
        assert!(!b.spend(), "spent");
    }
}
