//! The single retry loop, and the attempt that sends one KV request to one region.

use std::future::Future;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use futures::future::{BoxFuture, Shared};
use tessera_wire::TransportError;
use tessera_wire::{
    KvOp, KvRequest, KvResponse, ReadConsistency, RegionDescriptor, Request, RequestHeader, ResponseBody,
};

use super::clock::Timer;
use super::config::ClientConfig;
use super::transport::Transport;
use crate::core::lookup::PendingLookups;
use crate::core::retry::{Decision, Failure, RequestKind, RetryState, Target, TransportFailure};
use crate::core::rng::SplitMix64;
use crate::core::route::{CachedRegion, RegionCache};
use crate::core::session::SessionSeqs;
use crate::core::suspect::{discount_suspect_hint, Suspects};
use crate::core::time::Timestamp;
use crate::Error;

/// A PD lookup shared by every request that missed the cache for the same thing. Resolves
/// once the answer is in the cache (or failed, with the reason).
pub(crate) type SharedLookup = Shared<BoxFuture<'static, Result<(), String>>>;

/// Routing state: the cache and the lookups in flight, under one lock so that a lookup's
/// result is cached before the lookup is removed from the table.
#[derive(Debug, Default)]
pub(crate) struct Routing {
    pub(crate) cache: RegionCache,
    pub(crate) pending: PendingLookups<SharedLookup>,
    /// Node addresses that recently failed to answer.
    pub(crate) suspects: Suspects,
}

/// Everything a client's clones share.
#[derive(Debug)]
pub(crate) struct Inner {
    pub(crate) cfg: ClientConfig,
    /// Where requests go: the QUIC pool, or a scripted fake in simulation tests.
    pub(crate) transport: Arc<dyn Transport>,
    /// The session and its write sequence numbers in flight, for exactly-once and the
    /// acknowledgement.
    pub(crate) seqs: Mutex<SessionSeqs>,
    /// Held while a new session is being allocated, so concurrent writes renew once.
    pub(crate) renewing: futures::lock::Mutex<()>,
    pub(crate) routing: Mutex<Routing>,
    pub(crate) rng: Mutex<SplitMix64>,
    /// Every reading of the time and every backoff sleep goes through this clock.
    pub(crate) clock: Arc<dyn Timer>,
    /// The PD endpoint that answered last (usually the PD leader).
    pub(crate) pd_preferred: Mutex<Option<String>>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // The guarded state stays consistent across a panic (every update is one call), so a
    // poisoned lock is still usable.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Inner {
    pub(crate) fn routing(&self) -> MutexGuard<'_, Routing> {
        lock(&self.routing)
    }

    pub(crate) fn pd_preferred(&self) -> MutexGuard<'_, Option<String>> {
        lock(&self.pd_preferred)
    }

    pub(crate) fn seqs(&self) -> MutexGuard<'_, SessionSeqs> {
        lock(&self.seqs)
    }

    /// Time left before `deadline`, capped by the per-attempt timeout.
    pub(crate) fn attempt_timeout(&self, deadline: Timestamp) -> Duration {
        deadline.saturating_duration_since(self.clock.now()).min(self.cfg.attempt_timeout)
    }

    /// One call through the transport, dial included, bounded by `timeout`: a dead node
    /// must not hold an attempt for the transport's whole connect timeout.
    pub(crate) async fn call(
        &self,
        addr: &str,
        request: Request,
        timeout: Duration,
    ) -> Result<tessera_wire::Response, TransportError> {
        self.transport.call(addr, request, timeout).await
    }
}

/// One failed attempt: what failed, and where it was sent.
#[derive(Debug)]
pub(crate) struct Failed {
    pub(crate) failure: Failure,
    pub(crate) target: Option<Target>,
}

impl From<Failure> for Failed {
    fn from(failure: Failure) -> Self {
        Failed { failure, target: None }
    }
}

/// Classifies a transport error for the retry decision.
pub(crate) fn classify(e: TransportError) -> TransportFailure {
    match e {
        TransportError::Refused(e) => TransportFailure::Refused(e),
        TransportError::ConnectionLost(r) => TransportFailure::Lost(r),
        TransportError::Timeout => TransportFailure::Timeout,
        TransportError::Frame(f) => TransportFailure::Protocol(f.to_string()),
        TransportError::Encode(f) => TransportFailure::Unsendable(f.to_string()),
        e if e.may_have_been_delivered() => TransportFailure::Lost(e.to_string()),
        e => TransportFailure::Unreachable(e.to_string()),
    }
}

/// One try of a request. The retry loop calls [`Attempt::run`] until it succeeds or the
/// retry decision says stop.
pub(crate) trait Attempt: Send {
    type Output: Send;

    /// Read or write, for the retry decision.
    fn kind(&self) -> RequestKind;

    /// Performs one attempt. `failures` counts the failed attempts before this one.
    fn run<'a>(
        &'a mut self,
        inner: &'a Arc<Inner>,
        failures: u32,
        deadline: Timestamp,
    ) -> impl Future<Output = Result<Self::Output, Failed>> + Send + 'a;
}

impl Inner {
    /// The client's only retry loop: attempt, ask the core what to do, apply its cache
    /// updates, wait if told to, repeat.
    pub(crate) async fn retry<A: Attempt>(
        self: &Arc<Self>,
        attempt: A,
        deadline: Timestamp,
    ) -> Result<A::Output, Error> {
        self.retry_from(attempt, deadline, false).await.map(|(out, _)| out)
    }

    /// [`Inner::retry`] for a request an earlier retry loop may already have delivered
    /// (`maybe_delivered`: a batch part replanned after a split). Also returns whether any
    /// attempt may have been delivered before the output was produced.
    pub(crate) async fn retry_from<A: Attempt>(
        self: &Arc<Self>,
        mut attempt: A,
        deadline: Timestamp,
        maybe_delivered: bool,
    ) -> Result<(A::Output, bool), Error> {
        let mut state = RetryState::new(attempt.kind());
        if maybe_delivered {
            state.assume_delivered();
        }
        loop {
            let decision = if self.clock.now() >= deadline {
                state.on_deadline()
            } else {
                let failed = match attempt.run(self, state.failures(), deadline).await {
                    Ok(out) => return Ok((out, state.maybe_delivered())),
                    Err(failed) => failed,
                };
                let failure_text = tracing::enabled!(tracing::Level::DEBUG).then(|| failed.failure.to_string());
                let verdict = {
                    let mut rng = lock(&self.rng);
                    state.decide(
                        failed.failure,
                        failed.target,
                        self.clock.now(),
                        deadline,
                        &self.cfg.backoff,
                        &mut *rng,
                    )
                };
                if let Some(failure) = failure_text {
                    let region_id = failed.target.map(|t| t.region_id.0);
                    tracing::debug!(region_id, %failure, decision = ?verdict.decision, "attempt failed");
                }
                let mut routing = self.routing();
                for update in verdict.updates {
                    routing.cache.apply(update);
                }
                verdict.decision
            };
            match decision {
                Decision::RetryNow => {}
                Decision::RetryAfter(delay) => self.clock.sleep(delay).await,
                Decision::Surface(e) => return Err(e),
                Decision::Undetermined => return Err(state.undetermined_error()),
            }
        }
    }
}

/// How a KV request finds its region.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum RouteBy {
    /// The region containing the key.
    Key(Vec<u8>),
    /// The region holding the keys just below `key` (empty: the last region), for reverse
    /// scans that stop at `lower`.
    Before { key: Vec<u8>, lower: Vec<u8> },
}

/// Result of a KV attempt.
#[derive(Debug)]
pub(crate) enum KvOutcome {
    /// The region answered.
    Done { region: RegionDescriptor, response: KvResponse },
    /// The request no longer fits one region (a batch straddling a split): plan it again.
    Replan,
}

/// A KV request to the region found by `route`. `build` makes the operation for the region
/// as currently cached, or returns `None` when the request no longer fits it. A write's
/// `build` returns the same session sequence number every time.
pub(crate) struct KvCall<F> {
    pub(crate) route: RouteBy,
    pub(crate) kind: RequestKind,
    pub(crate) consistency: ReadConsistency,
    pub(crate) build: F,
}

impl<F> KvCall<F> {
    /// Picks the replica to send to: the leader when known; otherwise (and for stale reads
    /// without a known leader) the peers in turn. The flag says the choice was a guess.
    fn choose(
        region: &CachedRegion,
        failures: u32,
        suspects: &Suspects,
        now: Timestamp,
    ) -> Option<(tessera_wire::Peer, String, bool)> {
        region
            .choose_target(failures, |addr| suspects.is_suspect(addr, now))
            .map(|(p, a, guessed)| (p, a.to_string(), guessed))
    }
}

impl<F> Attempt for KvCall<F>
where
    F: Fn(&RegionDescriptor) -> Option<KvOp> + Send,
{
    type Output = KvOutcome;

    fn kind(&self) -> RequestKind {
        self.kind
    }

    async fn run<'a>(
        &'a mut self,
        inner: &'a Arc<Inner>,
        failures: u32,
        deadline: Timestamp,
    ) -> Result<KvOutcome, Failed> {
        let region = inner.locate(&self.route, deadline).await?;
        let Some(op) = (self.build)(&region.descriptor) else {
            return Ok(KvOutcome::Replan);
        };
        let region_id = region.id();
        let chosen = {
            let now = inner.clock.now();
            Self::choose(&region, failures, &inner.routing().suspects, now)
        };
        let Some((peer, addr, guessed)) = chosen else {
            inner.routing().cache.invalidate(region_id);
            return Err(Failure::NoRoute(format!("no address known for any peer of region {region_id}")).into());
        };
        let target = Some(Target { region_id, peer: Some(peer) });
        let remaining = deadline.saturating_duration_since(inner.clock.now());
        let header = RequestHeader {
            region_id,
            epoch: region.descriptor.epoch,
            timeout_ms: u32::try_from(remaining.as_millis()).unwrap_or(u32::MAX).max(1),
            consistency: self.consistency,
        };
        let request = Request::Kv(KvRequest { header, op });
        let failed = |failure| Err(Failed { failure, target });
        match inner.call(&addr, request, inner.attempt_timeout(deadline)).await {
            Ok(Ok(ResponseBody::Kv(response))) => {
                inner.routing().suspects.answered(&addr);
                // Only the leader serves writes and linearizable reads, so a guessed peer
                // that answered one is the leader.
                let leader_only = self.kind != RequestKind::Read || self.consistency == ReadConsistency::Linearizable;
                if guessed && leader_only {
                    inner.routing().cache.update_leader(region_id, peer);
                }
                Ok(KvOutcome::Done { region: region.descriptor, response })
            }
            Ok(Ok(_)) => failed(Failure::Transport(TransportFailure::Protocol("non-KV answer to a KV request".into()))),
            Ok(Err(e)) => {
                let now = inner.clock.now();
                let mut routing = inner.routing();
                routing.suspects.answered(&addr);
                let e = discount_suspect_hint(e, &routing.suspects, now);
                drop(routing);
                failed(Failure::Server(e))
            }
            Err(e) => {
                tracing::debug!(region_id = region_id.0, peer = peer.id.0, addr = %addr, error = %e, "request failed in transport");
                let now = inner.clock.now();
                inner.routing().suspects.failed(&addr, now);
                failed(Failure::Transport(classify(e)))
            }
        }
    }
}
