//! Talking to PD: endpoint failover, PD requests as retry-loop attempts, and cache misses
//! resolved through shared lookups.

use std::sync::Arc;

use futures::FutureExt;
use tessera_wire::{PdRequest, PdResponse, Request, ResponseBody};

use super::exec::{classify, Failed, Inner, RouteBy, SharedLookup};
use crate::core::lookup::LookupKey;
use crate::core::retry::{Failure, RequestKind, TransportFailure};
use crate::core::route::CachedRegion;
use crate::core::time::Timestamp;

/// Misses re-checked after a lookup before giving up for this attempt (a joined lookup may
/// have resolved a neighbouring region, or PD may have answered with a stale route).
const LOOKUP_ROUNDS: usize = 3;

impl Inner {
    /// One PD request, tried on the preferred endpoint first and then on the others until
    /// one answers; a `PdNotLeader` hint is followed once. Not a retry loop: the caller's
    /// retry loop decides what follows a failure.
    pub(crate) async fn pd_call(&self, request: PdRequest, deadline: Timestamp) -> Result<PdResponse, Failure> {
        let mut order: Vec<String> = Vec::new();
        order.extend(self.pd_preferred().clone());
        for e in &self.cfg.pd_endpoints {
            if !order.contains(e) {
                order.push(e.clone());
            }
        }
        let mut last = String::from("no PD endpoint configured");
        let mut followed_hint = false;
        let mut i = 0;
        while i < order.len() {
            let addr = order[i].clone();
            i += 1;
            let timeout = self.attempt_timeout(deadline);
            if timeout.is_zero() {
                break;
            }
            match self.call(&addr, Request::Pd(request.clone()), timeout).await {
                Ok(Ok(ResponseBody::Pd(resp))) => {
                    *self.pd_preferred() = Some(addr);
                    return Ok(resp);
                }
                Ok(Ok(_)) => {
                    return Err(Failure::Transport(TransportFailure::Protocol("non-PD answer to a PD request".into())))
                }
                Ok(Err(tessera_wire::Error::PdNotLeader { leader })) => {
                    last = format!("{addr} is not the PD leader");
                    if let Some(hint) = leader.filter(|h| !followed_hint && *h != addr) {
                        followed_hint = true;
                        order.retain(|e| *e != hint);
                        order.insert(i.min(order.len()), hint);
                    }
                }
                Ok(Err(e)) => return Err(Failure::Server(e)),
                Err(e) => match classify(e) {
                    TransportFailure::Refused(e) => return Err(Failure::Transport(TransportFailure::Refused(e))),
                    other => last = format!("{addr}: {}", Failure::Transport(other)),
                },
            }
        }
        Err(Failure::NoRoute(format!("no PD endpoint answered; last: {last}")))
    }

    /// The cached region for `route`, looking it up in PD on a miss. Concurrent misses for
    /// the same key or invalidated region share one PD request.
    pub(crate) async fn locate(self: &Arc<Self>, route: &RouteBy, deadline: Timestamp) -> Result<CachedRegion, Failed> {
        for _ in 0..LOOKUP_ROUNDS {
            let lookup = {
                let mut routing = self.routing();
                let cached = match route {
                    RouteBy::Key(k) => routing.cache.get(k),
                    RouteBy::Before { key, .. } => routing.cache.get_before(key),
                };
                if let Some(r) = cached {
                    return Ok(r.clone());
                }
                match route {
                    RouteBy::Key(k) => {
                        let key = routing.cache.lookup_key(k);
                        let start = || self.clone().lookup_future(key.clone(), PdRequest::GetRegion { key: k.clone() });
                        routing.pending.begin(key.clone(), start).into_handle()
                    }
                    // Reverse-scan lookups cover a range, not a key: not merged.
                    RouteBy::Before { key, lower } => {
                        let req = PdRequest::ScanRegions { start: lower.clone(), end: key.clone(), limit: 0 };
                        self.clone().lookup_future(LookupKey::Key(Vec::new()), req)
                    }
                }
            };
            // The lookup is bounded by the attempt timeouts `pd_call` gives the transport,
            // computed on the injected clock. This wait only keeps a request that joined
            // another's lookup from outliving its own deadline, so it races the lookup
            // against the clock's race timer (which a simulated clock never fires: its
            // sleeps complete at once). The lookup is polled first, so a ready answer wins.
            let remaining = deadline.saturating_duration_since(self.clock.now());
            let timer = self.clock.race_timer(remaining);
            match futures::future::select(lookup, timer).await {
                futures::future::Either::Left((Ok(()), _)) => {}
                futures::future::Either::Left((Err(reason), _)) => return Err(Failure::NoRoute(reason).into()),
                futures::future::Either::Right(_) => {
                    return Err(Failure::NoRoute("PD lookup did not finish before the deadline".into()).into())
                }
            }
        }
        Err(Failure::NoRoute("PD returned no usable route".into()).into())
    }

    /// A PD lookup whose answer goes into the cache; it then leaves the pending table
    /// (under the same lock, so no miss can slip between the two). The lookup runs on its
    /// own attempt timeout, not the deadline of whichever request started it, since others
    /// may share it.
    fn lookup_future(self: Arc<Self>, key: LookupKey, request: PdRequest) -> SharedLookup {
        let merged = matches!(&request, PdRequest::GetRegion { .. });
        async move {
            let deadline = self.clock.now().saturating_add(self.cfg.attempt_timeout);
            let result = self.pd_call(request, deadline).await;
            let mut routing = self.routing();
            let outcome = match result {
                Ok(PdResponse::Region(route)) => {
                    routing.cache.insert(CachedRegion::from_route(route));
                    Ok(())
                }
                Ok(PdResponse::Regions(routes)) => {
                    for route in routes {
                        routing.cache.insert(CachedRegion::from_route(route));
                    }
                    Ok(())
                }
                Ok(other) => Err(format!("unexpected PD answer to a region lookup: {other:?}")),
                Err(failure) => Err(failure.to_string()),
            };
            if merged {
                routing.pending.finish(&key);
            }
            outcome
        }
        .boxed()
        .shared()
    }
}

/// A PD request as a retry-loop attempt.
#[derive(Debug)]
pub(crate) struct PdCall {
    pub(crate) request: PdRequest,
}

impl super::exec::Attempt for PdCall {
    type Output = PdResponse;

    fn kind(&self) -> RequestKind {
        // PD requests of the client are reads, or (AllocSession) harmless to repeat.
        RequestKind::Read
    }

    async fn run<'a>(
        &'a mut self,
        inner: &'a Arc<Inner>,
        _failures: u32,
        deadline: Timestamp,
    ) -> Result<PdResponse, Failed> {
        inner.pd_call(self.request.clone(), deadline).await.map_err(Failed::from)
    }
}
