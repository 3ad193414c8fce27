//! The retry decision: what to do after a failed attempt.
//!
//! [`RetryState::decide`] is the only place that decides whether to retry. It maps each
//! failure to cache updates (via [`tessera_wire::Error::retry_action`]) and to a
//! [`Decision`], given the attempt count, the current time and the request's deadline.
//!
//! Writes: every write the SDK sends carries a session sequence number, so resending the
//! *same* write (same seq) after an attempt that may have reached the server is safe: the
//! region applies it at most once. Such writes are retried until the deadline. Once an
//! attempt may have been delivered, any later non-definitive end (deadline, attempt budget,
//! a server error unrelated to the request's content) is [`Decision::Undetermined`], never a
//! plain failure. A write without a sequence number that may have been delivered is not
//! retried at all.

use std::fmt;
use std::time::Duration;

use tessera_wire::{Peer, RegionId, RetryAction};

use super::backoff::Backoff;
use super::rng::RandomSource;
use super::route::CacheUpdate;
use super::time::Timestamp;
use crate::Error;

/// What is being retried.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RequestKind {
    /// A read (or a PD query): retrying is always safe.
    Read,
    /// A write.
    Write {
        /// The write carries a session sequence number, so resending it is safe.
        exactly_once: bool,
    },
}

/// A transport failure, classified (the native layer converts its transport errors).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TransportFailure {
    /// Could not connect: the request was not sent.
    Unreachable(String),
    /// The connection broke with the request in flight: it may have been delivered.
    Lost(String),
    /// No answer in time: the request may have been delivered.
    Timeout,
    /// The server refused the handshake (authentication, version): nothing was sent.
    Refused(tessera_wire::Error),
    /// An undecodable frame or a wrongly typed answer.
    Protocol(String),
    /// The request could not be encoded (it exceeds the frame limit): nothing was sent.
    Unsendable(String),
}

/// Why an attempt failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Failure {
    /// The server answered with a typed error.
    Server(tessera_wire::Error),
    /// The transport failed.
    Transport(TransportFailure),
    /// No route: PD could not be reached or could not name the region.
    NoRoute(String),
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Failure::Server(e) => write!(f, "{e}"),
            Failure::Transport(TransportFailure::Unreachable(r)) => write!(f, "unreachable: {r}"),
            Failure::Transport(TransportFailure::Lost(r)) => write!(f, "connection lost: {r}"),
            Failure::Transport(TransportFailure::Timeout) => write!(f, "request timed out"),
            Failure::Transport(TransportFailure::Refused(e)) => write!(f, "handshake refused: {e}"),
            Failure::Transport(TransportFailure::Protocol(r)) => write!(f, "protocol: {r}"),
            Failure::Transport(TransportFailure::Unsendable(r)) => write!(f, "not sent: {r}"),
            Failure::NoRoute(r) => write!(f, "no route: {r}"),
        }
    }
}

/// Where the failed attempt was sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Target {
    /// The region addressed.
    pub region_id: RegionId,
    /// The replica addressed.
    pub peer: Option<Peer>,
}

/// What the retry loop does next.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Retry at once (the failure told us how to fix the route).
    RetryNow,
    /// Sleep, then retry.
    RetryAfter(Duration),
    /// Stop and return this error; a write was not applied.
    Surface(Error),
    /// Stop: the write may or may not have been applied ([`Error::Undetermined`]).
    Undetermined,
}

/// A decision together with the side effects to apply before acting on it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verdict {
    /// What to do next.
    pub decision: Decision,
    /// Routing-cache changes, in order. (Broken connections need no decision here: the
    /// transport's pool drops a connection that fails with a request in flight.)
    pub updates: Vec<CacheUpdate>,
}

/// The per-request retry state. Create one per logical request; call
/// [`RetryState::decide`] after every failed attempt.
#[derive(Debug, Clone)]
pub struct RetryState {
    kind: RequestKind,
    failures: u32,
    maybe_delivered: bool,
    last_failure: Option<Failure>,
    /// The last `StorageUnavailable` an attempt got: the reason to give if the request
    /// ends on a later, less telling failure (a timeout at a node without a leader).
    storage_failure: Option<tessera_wire::Error>,
    /// The last `RegionUnavailable` an attempt got: a leader saying why its region cannot
    /// serve (a quorum's full disks, an election). Given at the deadline if the request
    /// ends on such refusals, whichever replica refused last.
    region_refusal: Option<tessera_wire::Error>,
}

enum Next {
    Now,
    Wait(Option<Duration>),
    /// Stop; the failure says nothing about whether an earlier attempt was applied.
    Stop(Error),
    /// Stop; the failure proves the request (every attempt of it) was rejected as such.
    Reject(Error),
}

fn is_request_rejection(e: &tessera_wire::Error) -> bool {
    use tessera_wire::Error as W;
    matches!(
        e,
        W::KeyTooLarge { .. }
            | W::ValueTooLarge { .. }
            | W::BatchTooLarge { .. }
            | W::BatchBytesTooLarge { .. }
            | W::ResponseTooLarge { .. }
            | W::InvalidRequest { .. }
    )
}

impl RetryState {
    /// Fresh state for a request of `kind`.
    pub fn new(kind: RequestKind) -> Self {
        RetryState {
            kind,
            failures: 0,
            maybe_delivered: false,
            last_failure: None,
            storage_failure: None,
            region_refusal: None,
        }
    }

    /// Failed attempts so far.
    pub fn failures(&self) -> u32 {
        self.failures
    }

    /// True once a write attempt may have reached the server.
    pub fn maybe_delivered(&self) -> bool {
        self.maybe_delivered
    }

    /// The error to return for [`Decision::Undetermined`].
    pub fn undetermined_error(&self) -> Error {
        let mut reason = self.last_failure.as_ref().map_or_else(|| "deadline exceeded".to_string(), |f| f.to_string());
        if let Some(e) = self.region_refusal.as_ref().or(self.storage_failure.as_ref()) {
            if !matches!(&self.last_failure, Some(Failure::Server(last)) if last == e) {
                reason = format!("{reason} (an earlier attempt: {e})");
            }
        }
        Error::Undetermined { reason }
    }

    /// The decision when the deadline has passed (also for the loop's own check before an
    /// attempt).
    pub fn on_deadline(&self) -> Decision {
        if self.maybe_delivered {
            return Decision::Undetermined;
        }
        use tessera_wire::Error as W;
        let refused_last = matches!(
            &self.last_failure,
            Some(Failure::Server(W::RegionUnavailable { .. } | W::StorageUnavailable { .. }))
        );
        match (&self.last_failure, &self.region_refusal, &self.storage_failure) {
            (Some(Failure::NoRoute(reason)), _, _) => Decision::Surface(Error::Unavailable { reason: reason.clone() }),
            // Replicas refused to the end, and the region's leader said why (no quorum of
            // its replicas can write, an election under way): nothing was applied, and its
            // reason says more than the deadline or a full replica's refusal does.
            (_, Some(e), _) if refused_last => Decision::Surface(Error::Unavailable { reason: e.to_string() }),
            // Replicas failed their storage (a full disk on each): say so.
            (_, _, Some(e)) => Decision::Surface(Error::from_server(e.clone())),
            _ => Decision::Surface(Error::DeadlineExceeded),
        }
    }

    fn on_budget_exhausted(&self) -> Decision {
        if self.maybe_delivered {
            return Decision::Undetermined;
        }
        match &self.last_failure {
            Some(Failure::Server(e)) => Decision::Surface(Error::from_server(e.clone())),
            Some(f) => Decision::Surface(Error::Unavailable { reason: f.to_string() }),
            None => Decision::Surface(Error::DeadlineExceeded),
        }
    }

    /// Records that an earlier attempt, outside this state, may have delivered the write.
    pub fn assume_delivered(&mut self) {
        self.mark_delivered_if_write();
    }

    fn mark_delivered_if_write(&mut self) {
        if matches!(self.kind, RequestKind::Write { .. }) {
            self.maybe_delivered = true;
        }
    }

    /// Decides what follows `failure` of an attempt sent to `target`, at time `now`, for a
    /// request that must finish by `deadline`.
    pub fn decide(
        &mut self,
        failure: Failure,
        target: Option<Target>,
        now: Timestamp,
        deadline: Timestamp,
        backoff: &Backoff,
        rng: &mut impl RandomSource,
    ) -> Verdict {
        self.failures += 1;
        let mut updates = Vec::new();
        let clear_leader = |updates: &mut Vec<CacheUpdate>| {
            if let Some(t) = target {
                updates.push(CacheUpdate::ClearLeader(t.region_id));
            }
        };

        let next = match &failure {
            Failure::Server(e) => {
                match e {
                    tessera_wire::Error::StorageUnavailable { .. } => self.storage_failure = Some(e.clone()),
                    tessera_wire::Error::RegionUnavailable { .. } => self.region_refusal = Some(e.clone()),
                    _ => {}
                }
                if matches!(self.kind, RequestKind::Write { .. }) && e.write_may_have_applied() {
                    self.maybe_delivered = true;
                }
                self.server_next(e, target, now, deadline, &mut updates)
            }
            Failure::Transport(t) => match t {
                TransportFailure::Unreachable(_) => {
                    clear_leader(&mut updates);
                    Next::Wait(None)
                }
                TransportFailure::Lost(_) => {
                    self.mark_delivered_if_write();
                    clear_leader(&mut updates);
                    Next::Wait(None)
                }
                TransportFailure::Timeout => {
                    self.mark_delivered_if_write();
                    clear_leader(&mut updates);
                    Next::Wait(None)
                }
                TransportFailure::Refused(e) => Next::Stop(Error::Server(e.clone())),
                TransportFailure::Protocol(r) => {
                    self.mark_delivered_if_write();
                    Next::Stop(Error::Protocol { reason: r.clone() })
                }
                TransportFailure::Unsendable(r) => {
                    Next::Stop(Error::InvalidArgument { reason: format!("request cannot be sent: {r}") })
                }
            },
            Failure::NoRoute(_) => Next::Wait(None),
        };
        self.last_failure = Some(failure);

        let unsafe_to_resend = self.maybe_delivered && self.kind == (RequestKind::Write { exactly_once: false });
        let decision = match next {
            Next::Reject(e) => Decision::Surface(e),
            _ if unsafe_to_resend => Decision::Undetermined,
            Next::Stop(e) => {
                if self.maybe_delivered {
                    Decision::Undetermined
                } else {
                    Decision::Surface(e)
                }
            }
            _ if backoff.exhausted(self.failures) => self.on_budget_exhausted(),
            Next::Now => {
                if now >= deadline {
                    self.on_deadline()
                } else {
                    Decision::RetryNow
                }
            }
            Next::Wait(hint) => {
                let delay = backoff.next_delay_with_hint(self.failures, hint, rng);
                if now.saturating_add(delay) >= deadline {
                    self.on_deadline()
                } else {
                    Decision::RetryAfter(delay)
                }
            }
        };
        Verdict { decision, updates }
    }

    fn server_next(
        &self,
        e: &tessera_wire::Error,
        target: Option<Target>,
        now: Timestamp,
        deadline: Timestamp,
        updates: &mut Vec<CacheUpdate>,
    ) -> Next {
        use tessera_wire::Error as W;
        match (e.retry_action(), e) {
            (RetryAction::UpdateLeader, W::NotLeader { region_id, leader: Some(hint) }) => {
                let same_peer = target.and_then(|t| t.peer) == Some(hint.peer);
                updates.push(CacheUpdate::SetLeader { region_id: *region_id, hint: hint.clone() });
                // A replica naming itself as leader while refusing is mid-transition: wait.
                if same_peer {
                    Next::Wait(None)
                } else {
                    Next::Now
                }
            }
            (RetryAction::UpdateLeader, W::NotLeader { region_id, leader: None }) => {
                // No one knows the leader (an election is under way): ask PD after a pause.
                updates.push(CacheUpdate::Invalidate(*region_id));
                Next::Wait(None)
            }
            (RetryAction::ReplaceRegions, W::EpochNotMatch { current }) => {
                updates.push(CacheUpdate::Replace(current.clone()));
                // The first redirect carries what the client needs; repeated ones mean the
                // shape is still settling (a split half not yet reported to PD), so pace
                // them instead of burning the attempt budget in a tight loop.
                if self.failures <= 1 {
                    Next::Now
                } else {
                    Next::Wait(None)
                }
            }
            (RetryAction::InvalidateRegion, _) => {
                let region = match e {
                    W::KeyNotInRegion { region_id, .. } | W::RegionNotFound { region_id } => Some(*region_id),
                    _ => target.map(|t| t.region_id),
                };
                if let Some(id) = region {
                    updates.push(CacheUpdate::Invalidate(id));
                }
                // The first invalidation is informative; repeated ones mean PD lags the
                // nodes (e.g. a region not yet created), so pace them.
                if self.failures <= 1 {
                    Next::Now
                } else {
                    Next::Wait(None)
                }
            }
            (RetryAction::OtherReplica, _) => {
                if let Some(t) = target {
                    updates.push(CacheUpdate::ClearLeader(t.region_id));
                }
                Next::Wait(None)
            }
            (RetryAction::Backoff, W::ServerBusy { retry_after_ms }) => {
                Next::Wait(Some(Duration::from_millis(u64::from(*retry_after_ms))))
            }
            (RetryAction::Backoff, _) => Next::Wait(None),
            (_, W::DeadlineExceeded) => {
                // The server gave up within the time we granted it; retry only if time is
                // left (a write is resent with the same seq).
                if now < deadline {
                    Next::Wait(None)
                } else {
                    Next::Stop(Error::DeadlineExceeded)
                }
            }
            (_, e) if is_request_rejection(e) => Next::Reject(Error::from_server(e.clone())),
            (_, e) => Next::Stop(Error::from_server(e.clone())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::backoff::Jitter;
    use crate::core::rng::SplitMix64;
    use tessera_wire::{Error as W, LeaderHint, NodeId, PeerId, RegionDescriptor, RegionEpoch};

    const WRITE: RequestKind = RequestKind::Write { exactly_once: true };
    const R: RegionId = RegionId(1);

    fn peer(n: u64) -> Peer {
        Peer { id: PeerId(n), node_id: NodeId(n) }
    }

    fn target(n: u64) -> Option<Target> {
        Some(Target { region_id: R, peer: Some(peer(n)) })
    }

    fn policy() -> Backoff {
        Backoff {
            base: Duration::from_millis(10),
            max: Duration::from_millis(100),
            max_attempts: 0,
            jitter: Jitter::Full,
        }
    }

    struct Run {
        state: RetryState,
        rng: SplitMix64,
        backoff: Backoff,
    }

    impl Run {
        fn new(kind: RequestKind) -> Self {
            Run { state: RetryState::new(kind), rng: SplitMix64::new(3), backoff: policy() }
        }

        fn decide(&mut self, f: Failure, now: u64, deadline: u64) -> Verdict {
            self.state.decide(f, target(1), Timestamp(now), Timestamp(deadline), &self.backoff, &mut self.rng)
        }
    }

    fn server(e: W) -> Failure {
        Failure::Server(e)
    }

    #[test]
    fn not_leader_with_hint_updates_leader_and_retries_now() {
        let hint = LeaderHint { peer: peer(2), addr: "n2:1".into() };
        let v = Run::new(RequestKind::Read).decide(
            server(W::NotLeader { region_id: R, leader: Some(hint.clone()) }),
            0,
            1000,
        );
        assert_eq!(v.decision, Decision::RetryNow);
        assert_eq!(v.updates, vec![CacheUpdate::SetLeader { region_id: R, hint }]);
    }

    #[test]
    fn not_leader_naming_the_addressed_peer_backs_off() {
        let hint = LeaderHint { peer: peer(1), addr: "n1:1".into() };
        let v = Run::new(RequestKind::Read).decide(server(W::NotLeader { region_id: R, leader: Some(hint) }), 0, 1000);
        assert!(matches!(v.decision, Decision::RetryAfter(_)));
    }

    #[test]
    fn not_leader_without_hint_invalidates_and_backs_off() {
        let v = Run::new(RequestKind::Read).decide(server(W::NotLeader { region_id: R, leader: None }), 0, 1000);
        assert!(matches!(v.decision, Decision::RetryAfter(_)));
        assert_eq!(v.updates, vec![CacheUpdate::Invalidate(R)]);
    }

    #[test]
    fn epoch_not_match_replaces_regions_and_retries_now() {
        let current = vec![RegionDescriptor {
            id: R,
            start_key: vec![],
            end_key: b"m".to_vec(),
            epoch: RegionEpoch { conf_ver: 1, version: 2 },
            peers: vec![peer(1)],
        }];
        let mut run = Run::new(WRITE);
        let v = run.decide(server(W::EpochNotMatch { current: current.clone() }), 0, 1000);
        assert_eq!(v.decision, Decision::RetryNow);
        assert_eq!(v.updates, vec![CacheUpdate::Replace(current.clone())]);
        // A second redirect in a row (PD still serves the old shape) waits before retrying,
        // so a settling split cannot use up the attempt budget in a tight loop.
        let v = run.decide(server(W::EpochNotMatch { current: current.clone() }), 1, 1000);
        assert!(matches!(v.decision, Decision::RetryAfter(_)), "{:?}", v.decision);
        assert_eq!(v.updates, vec![CacheUpdate::Replace(current)]);
    }

    #[test]
    fn epoch_not_match_without_regions_invalidates_target() {
        let v = Run::new(RequestKind::Read).decide(server(W::EpochNotMatch { current: vec![] }), 0, 1000);
        assert_eq!(v.decision, Decision::RetryNow);
        assert_eq!(v.updates, vec![CacheUpdate::Invalidate(R)]);
    }

    #[test]
    fn repeated_region_not_found_is_paced() {
        let mut run = Run::new(RequestKind::Read);
        let v = run.decide(server(W::RegionNotFound { region_id: RegionId(5) }), 0, 1000);
        assert_eq!(v.decision, Decision::RetryNow);
        assert_eq!(v.updates, vec![CacheUpdate::Invalidate(RegionId(5))]);
        let v = run.decide(
            server(W::KeyNotInRegion { key: b"k".to_vec(), region_id: R, start_key: vec![], end_key: vec![] }),
            0,
            1000,
        );
        assert!(matches!(v.decision, Decision::RetryAfter(_)));
        assert_eq!(v.updates, vec![CacheUpdate::Invalidate(R)]);
    }

    #[test]
    fn a_replica_whose_storage_failed_is_forgotten_and_retried_after_a_backoff_until_the_deadline() {
        let failed = || server(W::StorageUnavailable { reason: "No space left on device".into() });
        let mut run = Run::new(WRITE);
        let v = run.decide(failed(), 0, 1000);
        assert!(matches!(v.decision, Decision::RetryAfter(_)), "{:?}", v.decision);
        assert_eq!(v.updates, vec![CacheUpdate::ClearLeader(R)]);
        // Nothing was applied: at the deadline the caller learns why, not "undetermined",
        // even when the last attempt only timed out (a node left without a leader).
        let v = run.decide(Failure::Transport(TransportFailure::Unreachable("n2".into())), 1000, 1000);
        assert_eq!(
            v.decision,
            Decision::Surface(Error::Server(W::StorageUnavailable { reason: "No space left on device".into() }))
        );
        // A write that may have been delivered is undetermined, and says why.
        undetermined_after_a_timeout_names(failed(), "No space left on device");
    }

    /// A write refused with `refusal`, then timed out at its deadline (so it may have been
    /// delivered), is undetermined, and its reason names the refusal.
    fn undetermined_after_a_timeout_names(refusal: Failure, names: &str) {
        let mut run = Run::new(WRITE);
        run.decide(refusal, 0, 1000);
        let v = run.decide(Failure::Transport(TransportFailure::Timeout), 1000, 1000);
        assert_eq!(v.decision, Decision::Undetermined);
        let Error::Undetermined { reason } = run.state.undetermined_error() else { unreachable!() };
        assert!(reason.contains(names), "{reason}");
    }

    #[test]
    fn server_busy_waits_at_least_retry_after() {
        for seed in 0..50 {
            let mut run = Run::new(RequestKind::Read);
            run.rng = SplitMix64::new(seed);
            match run.decide(server(W::ServerBusy { retry_after_ms: 70 }), 0, 10_000).decision {
                Decision::RetryAfter(d) => assert!(d >= Duration::from_millis(70)),
                other => panic!("{other:?}"),
            }
        }
    }

    #[test]
    fn server_busy_hint_past_deadline_gives_up() {
        let v = Run::new(RequestKind::Read).decide(server(W::ServerBusy { retry_after_ms: 5_000 }), 0, 1000);
        assert_eq!(v.decision, Decision::Surface(Error::DeadlineExceeded));
    }

    #[test]
    fn region_unavailable_backs_off() {
        let v =
            Run::new(WRITE).decide(server(W::RegionUnavailable { region_id: R, reason: "election".into() }), 0, 1000);
        assert!(matches!(v.decision, Decision::RetryAfter(_)));
    }

    #[test]
    fn a_region_unavailable_until_the_deadline_is_reported_with_the_leaders_reason() {
        let lost = || server(W::RegionUnavailable { region_id: R, reason: "node 2: No space left on device".into() });
        let mut run = Run::new(WRITE);
        assert!(matches!(run.decide(lost(), 0, 1000).decision, Decision::RetryAfter(_)));
        let v = run.decide(lost(), 1000, 1000);
        let Decision::Surface(Error::Unavailable { reason }) = v.decision else { panic!("{:?}", v.decision) };
        assert!(reason.contains("No space left on device") && reason.contains("region"), "{reason}");
        // Also when another replica's refusal came after it: the leader's reason says more.
        let mut run = Run::new(WRITE);
        run.decide(lost(), 0, 1000);
        let full = server(W::StorageUnavailable { reason: "No space left on device".into() });
        let v = run.decide(full, 1000, 1000);
        let Decision::Surface(Error::Unavailable { reason }) = v.decision else { panic!("{:?}", v.decision) };
        assert!(reason.contains("node 2"), "{reason}");
        // A write that may have been delivered stays undetermined, and says why.
        undetermined_after_a_timeout_names(lost(), "node 2");
    }

    #[test]
    fn write_undetermined_with_session_retries_same_write_until_deadline() {
        let mut run = Run::new(WRITE);
        let v = run.decide(server(W::WriteUndetermined { region_id: R }), 0, 1000);
        assert!(matches!(v.decision, Decision::RetryAfter(_)));
        assert!(run.state.maybe_delivered());
        // A later, definite-looking failure cannot make the outcome definite.
        let v = run.decide(server(W::NotLeader { region_id: R, leader: None }), 500, 1000);
        assert!(matches!(v.decision, Decision::RetryAfter(_)));
    }

    #[test]
    fn write_undetermined_at_deadline_is_undetermined() {
        let mut run = Run::new(WRITE);
        let v = run.decide(server(W::WriteUndetermined { region_id: R }), 1000, 1000);
        assert_eq!(v.decision, Decision::Undetermined);
        assert!(run.state.undetermined_error().is_undetermined());
    }

    #[test]
    fn write_without_session_that_may_have_applied_is_not_resent() {
        let v = Run::new(RequestKind::Write { exactly_once: false }).decide(
            Failure::Transport(TransportFailure::Timeout),
            0,
            1000,
        );
        assert_eq!(v.decision, Decision::Undetermined);
    }

    #[test]
    fn timeout_on_read_retries_then_deadline_exceeded() {
        let mut run = Run::new(RequestKind::Read);
        let v = run.decide(Failure::Transport(TransportFailure::Timeout), 0, 1000);
        assert!(matches!(v.decision, Decision::RetryAfter(_)));
        assert_eq!(v.updates, vec![CacheUpdate::ClearLeader(R)]);
        let v = run.decide(Failure::Transport(TransportFailure::Timeout), 1000, 1000);
        assert_eq!(v.decision, Decision::Surface(Error::DeadlineExceeded));
    }

    #[test]
    fn connection_lost_on_write_at_deadline_is_undetermined() {
        let mut run = Run::new(WRITE);
        let v = run.decide(Failure::Transport(TransportFailure::Lost("reset".into())), 0, 1000);
        assert!(matches!(v.decision, Decision::RetryAfter(_)));
        let v = run.decide(Failure::Transport(TransportFailure::Unreachable("refused".into())), 999, 1000);
        assert_eq!(v.decision, Decision::Undetermined);
    }

    #[test]
    fn unreachable_write_is_definitely_not_applied_at_deadline() {
        let mut run = Run::new(WRITE);
        let v = run.decide(Failure::Transport(TransportFailure::Unreachable("refused".into())), 0, 1000);
        assert_eq!(v.updates, vec![CacheUpdate::ClearLeader(R)]);
        let v = run.decide(Failure::Transport(TransportFailure::Unreachable("refused".into())), 1000, 1000);
        assert_eq!(v.decision, Decision::Surface(Error::DeadlineExceeded));
    }

    #[test]
    fn request_rejection_surfaces_even_after_possible_delivery() {
        let mut run = Run::new(WRITE);
        run.decide(Failure::Transport(TransportFailure::Timeout), 0, 1000);
        let v = run.decide(server(W::ValueTooLarge { len: 10, max: 5 }), 10, 1000);
        assert_eq!(v.decision, Decision::Surface(Error::ValueTooLarge { len: 10, max: 5 }));
    }

    #[test]
    fn permission_denied_surfaces_but_is_undetermined_after_possible_delivery() {
        let denied = || server(W::PermissionDenied { reason: "no".into() });
        let v = Run::new(WRITE).decide(denied(), 0, 1000);
        assert_eq!(v.decision, Decision::Surface(Error::Server(W::PermissionDenied { reason: "no".into() })));
        let mut run = Run::new(WRITE);
        run.decide(Failure::Transport(TransportFailure::Timeout), 0, 1000);
        assert_eq!(run.decide(denied(), 10, 1000).decision, Decision::Undetermined);
    }

    #[test]
    fn refused_handshake_surfaces() {
        let e = W::Unauthenticated { reason: "no cert".into() };
        let v = Run::new(RequestKind::Read).decide(Failure::Transport(TransportFailure::Refused(e.clone())), 0, 1000);
        assert_eq!(v.decision, Decision::Surface(Error::Server(e)));
    }

    #[test]
    fn no_route_until_deadline_is_unavailable() {
        let mut run = Run::new(RequestKind::Read);
        assert!(matches!(run.decide(Failure::NoRoute("pd down".into()), 0, 1000).decision, Decision::RetryAfter(_)));
        let v = run.decide(Failure::NoRoute("pd down".into()), 1000, 1000);
        assert_eq!(v.decision, Decision::Surface(Error::Unavailable { reason: "pd down".into() }));
    }

    #[test]
    fn attempt_budget_exhausted_surfaces_last_error() {
        let mut run = Run::new(RequestKind::Read);
        run.backoff.max_attempts = 2;
        let busy = || server(W::NotBootstrapped);
        assert!(matches!(run.decide(busy(), 0, 100_000).decision, Decision::RetryAfter(_)));
        assert_eq!(run.decide(busy(), 0, 100_000).decision, Decision::Surface(Error::Server(W::NotBootstrapped)));
    }

    #[test]
    fn server_deadline_exceeded_on_read_retries_while_time_is_left() {
        let mut run = Run::new(RequestKind::Read);
        assert!(matches!(run.decide(server(W::DeadlineExceeded), 0, 1000).decision, Decision::RetryAfter(_)));
        assert_eq!(
            run.decide(server(W::DeadlineExceeded), 1000, 1000).decision,
            Decision::Surface(Error::DeadlineExceeded)
        );
    }

    #[test]
    fn server_deadline_exceeded_on_write_at_deadline_is_undetermined() {
        let v = Run::new(WRITE).decide(server(W::DeadlineExceeded), 1000, 1000);
        assert_eq!(v.decision, Decision::Undetermined);
    }
}
