//! Sequence numbers of a client session, and the acknowledgement each request carries.
//!
//! Every write of a session gets the next sequence number and keeps it across retries, so
//! the servers apply it at most once. Each request also carries the session's *first
//! pending* number: the lowest sequence number whose call has not yet returned to the
//! caller. Every number below it is finished (answered, or given up as undetermined) and
//! will never be sent again, so the servers may forget its result (Raft thesis §6.3). This
//! replaces a time or log-length window, which a slow retry could outlive.

use std::collections::BTreeSet;

/// The session's sequence numbers in flight.
#[derive(Debug, Clone)]
pub struct SessionSeqs {
    next: u64,
    pending: BTreeSet<u64>,
}

impl Default for SessionSeqs {
    fn default() -> Self {
        SessionSeqs { next: 1, pending: BTreeSet::new() }
    }
}

impl SessionSeqs {
    /// Takes the next sequence number; it is pending until [`SessionSeqs::finish`].
    pub fn begin(&mut self) -> u64 {
        let seq = self.next;
        self.next += 1;
        self.pending.insert(seq);
        seq
    }

    /// Marks `seq` finished: it will never be sent again.
    pub fn finish(&mut self, seq: u64) {
        self.pending.remove(&seq);
    }

    /// The lowest sequence number still pending (the next one to be taken when none is).
    pub fn first_pending(&self) -> u64 {
        self.pending.first().copied().unwrap_or(self.next)
    }

    /// Number of sequence numbers in flight.
    pub fn in_flight(&self) -> usize {
        self.pending.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_pending_is_the_oldest_unfinished_write() {
        let mut s = SessionSeqs::default();
        assert_eq!(s.first_pending(), 1);
        let (a, b, c) = (s.begin(), s.begin(), s.begin());
        assert_eq!((a, b, c), (1, 2, 3));
        assert_eq!(s.first_pending(), 1);
        s.finish(b);
        assert_eq!(s.first_pending(), 1, "an older write is still pending");
        s.finish(a);
        assert_eq!(s.first_pending(), 3);
        s.finish(c);
        assert_eq!(s.first_pending(), 4, "nothing pending: everything below the next number is done");
        assert_eq!(s.in_flight(), 0);
    }

    #[test]
    fn first_pending_never_exceeds_a_pending_seq() {
        let mut s = SessionSeqs::default();
        let mut live = Vec::new();
        for i in 0..200u64 {
            if i % 3 == 2 {
                let done = live.remove((i as usize * 7) % live.len());
                s.finish(done);
            } else {
                live.push(s.begin());
            }
            assert!(live.iter().all(|&q| s.first_pending() <= q));
        }
    }
}
