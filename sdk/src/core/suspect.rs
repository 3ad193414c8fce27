//! Addresses that recently failed at the transport level.
//!
//! When a node dies, the cache (and the hints of followers that have not yet noticed)
//! keep pointing at it for a while. Each attempt against it costs a connect timeout, so
//! replica selection skips an address for a short quarantine after it failed to answer,
//! unless every candidate is suspect. A quarantine doubles on repeated failures, up to
//! [`MAX_QUARANTINE`], and ends at the first success.

use std::collections::HashMap;
use std::time::Duration;

use super::time::Timestamp;

/// First quarantine after a failure: longer than a client's dial timeout, so a dead or
/// frozen node is not dialled again (an attempt lost to a handshake that never comes)
/// before the survivors have elected new leaders.
pub const FIRST_QUARANTINE: Duration = Duration::from_secs(2);
/// Longest quarantine.
pub const MAX_QUARANTINE: Duration = Duration::from_secs(8);

#[derive(Debug, Clone, Copy)]
struct Entry {
    until: Timestamp,
    quarantine: Duration,
}

/// Suspect addresses with the time their quarantine ends.
#[derive(Debug, Default, Clone)]
pub struct Suspects {
    entries: HashMap<String, Entry>,
}

impl Suspects {
    /// Records that `addr` failed to answer at `now`.
    pub fn failed(&mut self, addr: &str, now: Timestamp) {
        let quarantine = match self.entries.get(addr) {
            Some(e) => (e.quarantine * 2).min(MAX_QUARANTINE),
            None => FIRST_QUARANTINE,
        };
        self.entries.insert(addr.to_string(), Entry { until: now.saturating_add(quarantine), quarantine });
    }

    /// Records that `addr` answered: it is no longer suspect.
    pub fn answered(&mut self, addr: &str) {
        self.entries.remove(addr);
    }

    /// Is `addr` in quarantine at `now`?
    pub fn is_suspect(&self, addr: &str, now: Timestamp) -> bool {
        self.entries.get(addr).is_some_and(|e| now < e.until)
    }

    /// Number of addresses tracked (suspect or recently released).
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// True when no address is tracked.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

/// A `NotLeader` hint naming an address in quarantine is no better than no hint (the
/// replica has not yet noticed its leader is gone): it becomes "leader unknown", so the
/// client backs off and asks PD instead of bouncing between a follower and a dead node.
pub fn discount_suspect_hint(error: tessera_wire::Error, suspects: &Suspects, now: Timestamp) -> tessera_wire::Error {
    match error {
        tessera_wire::Error::NotLeader { region_id, leader: Some(hint) } if suspects.is_suspect(&hint.addr, now) => {
            tessera_wire::Error::NotLeader { region_id, leader: None }
        }
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_hint_to_a_suspect_address_is_dropped() {
        use tessera_wire::{Error, LeaderHint, NodeId, Peer, PeerId, RegionId};
        let hint = |addr: &str| Error::NotLeader {
            region_id: RegionId(1),
            leader: Some(LeaderHint { peer: Peer { id: PeerId(1), node_id: NodeId(1) }, addr: addr.into() }),
        };
        let mut s = Suspects::default();
        s.failed("dead:1", Timestamp(0));
        assert_eq!(
            discount_suspect_hint(hint("dead:1"), &s, Timestamp(1)),
            Error::NotLeader { region_id: RegionId(1), leader: None }
        );
        assert_eq!(discount_suspect_hint(hint("live:1"), &s, Timestamp(1)), hint("live:1"));
        assert_eq!(discount_suspect_hint(Error::DeadlineExceeded, &s, Timestamp(1)), Error::DeadlineExceeded);
    }

    #[test]
    fn a_failed_address_is_suspect_until_its_quarantine_ends() {
        let mut s = Suspects::default();
        s.failed("a:1", Timestamp(1_000));
        assert!(s.is_suspect("a:1", Timestamp(1_000)));
        assert!(s.is_suspect("a:1", Timestamp(2_999)));
        assert!(!s.is_suspect("a:1", Timestamp(3_000)));
        assert!(!s.is_suspect("b:1", Timestamp(1_000)));
    }

    #[test]
    fn repeated_failures_double_the_quarantine_up_to_the_maximum() {
        let mut s = Suspects::default();
        let mut now = Timestamp(0);
        let mut last = Duration::ZERO;
        for _ in 0..10 {
            s.failed("a:1", now);
            let e = s.entries["a:1"];
            assert!(e.quarantine >= last && e.quarantine <= MAX_QUARANTINE);
            last = e.quarantine;
            now = e.until;
        }
        assert_eq!(last, MAX_QUARANTINE);
    }

    #[test]
    fn an_answer_clears_the_suspicion() {
        let mut s = Suspects::default();
        s.failed("a:1", Timestamp(0));
        s.answered("a:1");
        assert!(!s.is_suspect("a:1", Timestamp(0)));
        s.failed("a:1", Timestamp(0));
        assert_eq!(s.entries["a:1"].quarantine, FIRST_QUARANTINE, "quarantine restarts after an answer");
    }
}
