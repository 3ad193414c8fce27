//! Sequence numbers of a client session, and the acknowledgement each request carries.
//!
//! Every write of a session gets the next sequence number and keeps it across retries, so
//! the servers apply it at most once. Each request also carries the session's *first
//! pending* number: the lowest sequence number whose call has not yet returned to the
//! caller. Every number below it is finished (answered, or given up as undetermined) and
//! will never be sent again, so the servers may forget its result (Raft thesis §6.3). This
//! replaces a time or log-length window, which a slow retry could outlive.
//!
//! A session that stays idle is renewed before its next write: regions expire a session
//! they have not heard from for a while (30 minutes by default), after which they refuse
//! its writes with `SessionExpired`. The client renews after a shorter idle time, and at
//! once after a `SessionExpired`, but only when none of its writes is in flight (they must
//! keep their session and sequence numbers).

use std::collections::BTreeSet;
use std::time::Duration;

use tessera_wire::SessionId;

use super::time::Timestamp;

/// The session's id and its sequence numbers in flight.
#[derive(Debug, Clone)]
pub struct SessionSeqs {
    id: SessionId,
    next: u64,
    pending: BTreeSet<u64>,
    /// When the last write began.
    last_active: Timestamp,
    /// A server said the session expired.
    expired: bool,
}

impl Default for SessionSeqs {
    fn default() -> Self {
        SessionSeqs::new(SessionId(0), Timestamp(0))
    }
}

impl SessionSeqs {
    /// A fresh session `id`, created at `now`.
    pub fn new(id: SessionId, now: Timestamp) -> Self {
        SessionSeqs { id, next: 1, pending: BTreeSet::new(), last_active: now, expired: false }
    }

    /// The session id.
    pub fn id(&self) -> SessionId {
        self.id
    }

    /// Takes the next sequence number at `now`; it is pending until
    /// [`SessionSeqs::finish`].
    pub fn begin_at(&mut self, now: Timestamp) -> u64 {
        self.last_active = self.last_active.max(now);
        self.begin()
    }

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

    /// Records that a server refused a write of session `id` as expired.
    pub fn mark_expired(&mut self, id: SessionId) {
        if id == self.id {
            self.expired = true;
        }
    }

    /// True when the session should be replaced before the next write at `now`: it expired,
    /// or it has been idle for `renew_after`, and no write of it is in flight.
    pub fn needs_renewal(&self, now: Timestamp, renew_after: Duration) -> bool {
        self.pending.is_empty() && (self.expired || now.saturating_duration_since(self.last_active) >= renew_after)
    }

    /// Switches to the fresh session `id` if [`SessionSeqs::needs_renewal`] still holds
    /// (a write may have begun while `id` was being allocated); returns whether it did.
    pub fn renew(&mut self, id: SessionId, now: Timestamp, renew_after: Duration) -> bool {
        if !self.needs_renewal(now, renew_after) {
            return false;
        }
        *self = SessionSeqs::new(id, now);
        true
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
    fn an_idle_or_expired_session_is_renewed_only_with_nothing_in_flight() {
        let renew_after = Duration::from_secs(600);
        let mut s = SessionSeqs::new(SessionId(1), Timestamp(0));
        let seq = s.begin_at(Timestamp(1_000));
        assert!(!s.needs_renewal(Timestamp(10_000_000), renew_after), "a write is in flight");
        s.finish(seq);
        assert!(!s.needs_renewal(Timestamp(1_000 + 599_999), renew_after));
        assert!(s.needs_renewal(Timestamp(1_000 + 600_000), renew_after));
        assert!(s.renew(SessionId(2), Timestamp(700_000), renew_after));
        assert_eq!((s.id(), s.first_pending()), (SessionId(2), 1), "a new session starts at seq 1");
        // A refusal for an old session does not mark the new one.
        s.mark_expired(SessionId(1));
        assert!(!s.needs_renewal(Timestamp(700_001), renew_after));
        s.mark_expired(SessionId(2));
        assert!(s.needs_renewal(Timestamp(700_001), renew_after), "an expired session is renewed at once");
        let seq = s.begin_at(Timestamp(700_002));
        assert!(!s.renew(SessionId(3), Timestamp(700_003), renew_after), "not while a write is in flight");
        assert_eq!(s.id(), SessionId(2));
        s.finish(seq);
        assert!(s.renew(SessionId(3), Timestamp(700_003), renew_after));
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
