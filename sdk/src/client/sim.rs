//! Simulation harness: the real [`Client`] and retry loop over a scripted transport and the
//! core's [`ManualClock`], with no network and no real timer.
//!
//! [`ScriptedTransport`] answers PD requests from a region table (sessions, `GetRegion`,
//! `ScanRegions`) and KV requests from a script: one [`Step`] per call, in order, each a
//! response or a transport error, optionally taking simulated time (the clock moves while
//! the call is in flight, as a slow or timed-out call would). Every request is recorded
//! with the time it was sent, so tests check what was resent, where and when.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use futures::future::BoxFuture;
use futures::FutureExt;
use tessera_wire::quic::TransportError;
use tessera_wire::{
    KvRequest, KvResponse, NodeId, PdRequest, PdResponse, Peer, PeerId, RegionDescriptor, RegionEpoch, RegionId,
    RegionRoute, Request, Response, ResponseBody, SessionId, SessionSeq, WriteResult,
};

use super::api::Client;
use super::config::ClientConfig;
use super::transport::Transport;
use crate::core::time::{Clock, ManualClock, Timestamp};

/// The PD endpoint the simulated client is configured with.
pub(crate) const PD_ADDR: &str = "pd:2379";
/// The simulated clock's reading when a simulation starts.
pub(crate) const START: Timestamp = Timestamp(1_000);
/// The session PD hands out.
pub(crate) const SESSION: SessionId = SessionId(77);
/// Calls after which a simulation is taken to be stuck (a retry loop that never lets
/// simulated time pass would otherwise spin forever instead of failing).
const MAX_CALLS: usize = 10_000;

/// The address of node `n`.
pub(crate) fn addr(n: u64) -> String {
    format!("n{n}:7000")
}

/// The replica of region `region` on node `node`.
pub(crate) fn peer(region: u64, node: u64) -> Peer {
    Peer { id: PeerId(region * 10 + node), node_id: NodeId(node) }
}

/// Region `id` over `[start, end)` at epoch version `version`, with a replica on nodes 1-3.
pub(crate) fn region(id: u64, start: &[u8], end: &[u8], version: u64) -> RegionDescriptor {
    RegionDescriptor {
        id: RegionId(id),
        start_key: start.to_vec(),
        end_key: end.to_vec(),
        epoch: RegionEpoch { conf_ver: 1, version },
        peers: (1..=3).map(|n| peer(id, n)).collect(),
    }
}

/// PD's route to `region`, led by its replica on node `leader`.
pub(crate) fn route(region: RegionDescriptor, leader: u64) -> RegionRoute {
    let peer_addrs = region.peers.iter().map(|p| addr(p.node_id.0)).collect();
    let leader = Some(peer(region.id.0, leader));
    RegionRoute { region, leader, peer_addrs }
}

/// How much simulated time a call takes.
#[derive(Debug, Clone, Copy)]
enum Takes {
    /// This long, whatever the timeout (longer than it: a deadline passing mid-call).
    For(Duration),
    /// The whole timeout the caller granted (the transport's timer fired).
    WholeTimeout,
}

/// What one scripted KV call does.
#[derive(Debug, Clone)]
pub(crate) struct Step {
    takes: Takes,
    reply: Result<Response, TransportError>,
}

impl Step {
    /// The region answers `response`, at once.
    pub(crate) fn answer(response: KvResponse) -> Step {
        Step { takes: Takes::For(Duration::ZERO), reply: Ok(Ok(ResponseBody::Kv(response))) }
    }

    /// A write succeeds.
    pub(crate) fn done() -> Step {
        Step::answer(KvResponse::Write(WriteResult::Done))
    }

    /// The server answers with a typed error.
    pub(crate) fn server(e: tessera_wire::Error) -> Step {
        Step { takes: Takes::For(Duration::ZERO), reply: Ok(Err(e)) }
    }

    /// The transport fails with `e`.
    pub(crate) fn fail(e: TransportError) -> Step {
        Step { takes: Takes::For(Duration::ZERO), reply: Err(e) }
    }

    /// No answer: the call uses up its whole timeout and fails with `Timeout`.
    pub(crate) fn time_out() -> Step {
        Step { takes: Takes::WholeTimeout, reply: Err(TransportError::Timeout) }
    }

    /// The same step, with the call in flight for `d` of simulated time.
    pub(crate) fn taking(self, d: Duration) -> Step {
        Step { takes: Takes::For(d), ..self }
    }
}

/// A request as the transport received it.
#[derive(Debug, Clone)]
pub(crate) struct Sent {
    /// When it was sent.
    pub(crate) at: Timestamp,
    /// Where to.
    pub(crate) addr: String,
    /// The timeout the caller granted.
    pub(crate) timeout: Duration,
    /// The request.
    pub(crate) request: Request,
}

/// A KV request as the transport received it.
#[derive(Debug, Clone)]
pub(crate) struct SentKv {
    /// When it was sent.
    pub(crate) at: Timestamp,
    /// Where to.
    pub(crate) addr: String,
    /// The request.
    pub(crate) request: KvRequest,
}

impl SentKv {
    /// The session field of a write; `None` for a read.
    pub(crate) fn session(&self) -> Option<SessionSeq> {
        match &self.request.op {
            tessera_wire::KvOp::Write { session, .. } => *session,
            _ => None,
        }
    }
}

#[derive(Debug, Default)]
struct State {
    /// PD's region table.
    routes: Vec<RegionRoute>,
    /// Replies to the next KV calls, in order.
    script: VecDeque<Step>,
    /// The reply to every KV call once the script is used up (`None`: such a call fails
    /// the test).
    otherwise: Option<Step>,
    sent: Vec<Sent>,
}

/// A transport that answers from a script, on a manual clock.
#[derive(Debug)]
pub(crate) struct ScriptedTransport {
    clock: Arc<ManualClock>,
    state: Mutex<State>,
}

impl ScriptedTransport {
    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Queues replies to the next KV calls.
    pub(crate) fn script(&self, steps: impl IntoIterator<Item = Step>) {
        self.state().script.extend(steps);
    }

    /// The reply to every KV call once the script is used up.
    pub(crate) fn otherwise(&self, step: Step) {
        self.state().otherwise = Some(step);
    }

    /// Scripted replies not yet used.
    pub(crate) fn unused_steps(&self) -> usize {
        self.state().script.len()
    }

    /// Every request received, in order.
    pub(crate) fn sent(&self) -> Vec<Sent> {
        self.state().sent.clone()
    }

    /// The KV requests received, in order.
    pub(crate) fn kv_sent(&self) -> Vec<SentKv> {
        self.sent()
            .into_iter()
            .filter_map(|s| match s.request {
                Request::Kv(request) => Some(SentKv { at: s.at, addr: s.addr, request }),
                _ => None,
            })
            .collect()
    }

    /// The PD requests received, in order.
    pub(crate) fn pd_sent(&self) -> Vec<PdRequest> {
        self.sent()
            .into_iter()
            .filter_map(|s| match s.request {
                Request::Pd(request) => Some(request),
                _ => None,
            })
            .collect()
    }

    /// PD's answer; `sessions` counts the sessions allocated before (the first is
    /// [`SESSION`], then the following ids).
    fn pd_answer(routes: &[RegionRoute], request: &PdRequest, sessions: u64) -> Response {
        let overlaps = |r: &RegionDescriptor, start: &[u8], end: &[u8]| {
            (end.is_empty() || r.start_key.as_slice() < end) && (r.end_key.is_empty() || r.end_key.as_slice() > start)
        };
        let answer = match request {
            PdRequest::AllocSession => PdResponse::Session(SessionId(SESSION.0 + sessions)),
            PdRequest::GetRegion { key } => {
                let found = routes.iter().find(|r| r.region.contains(key));
                PdResponse::Region(found.unwrap_or_else(|| panic!("simulated PD has no region for {key:?}")).clone())
            }
            PdRequest::ScanRegions { start, end, .. } => {
                PdResponse::Regions(routes.iter().filter(|r| overlaps(&r.region, start, end)).cloned().collect())
            }
            other => panic!("simulated PD does not serve {other:?}"),
        };
        Ok(ResponseBody::Pd(answer))
    }
}

impl Transport for ScriptedTransport {
    fn call<'a>(
        &'a self,
        addr: &'a str,
        request: Request,
        timeout: Duration,
    ) -> BoxFuture<'a, Result<Response, TransportError>> {
        let mut state = self.state();
        if state.sent.len() >= MAX_CALLS {
            drop(state);
            panic!("livelock: {MAX_CALLS} calls without finishing");
        }
        state.sent.push(Sent { at: self.clock.now(), addr: addr.to_string(), timeout, request: request.clone() });
        let step = match &request {
            Request::Pd(pd) => {
                let sessions =
                    state.sent.iter().filter(|s| matches!(s.request, Request::Pd(PdRequest::AllocSession))).count();
                let reply = Self::pd_answer(&state.routes, pd, sessions as u64 - 1);
                Step { takes: Takes::For(Duration::ZERO), reply: Ok(reply) }
            }
            Request::Kv(_) => match state.script.pop_front().or_else(|| state.otherwise.clone()) {
                Some(step) => step,
                None => {
                    drop(state);
                    panic!("unscripted KV call to {addr}: {request:?}");
                }
            },
            Request::Raft(_) => panic!("a client never sends Raft messages"),
        };
        drop(state);
        self.clock.advance(match step.takes {
            Takes::For(d) => d,
            Takes::WholeTimeout => timeout,
        });
        futures::future::ready(step.reply).boxed()
    }
}

/// A client connected to a simulated cluster.
#[derive(Debug)]
pub(crate) struct Sim {
    pub(crate) clock: Arc<ManualClock>,
    pub(crate) net: Arc<ScriptedTransport>,
    pub(crate) client: Client,
    pub(crate) cfg: ClientConfig,
}

impl Sim {
    /// A client with the default configuration (seeded RNG) over PD's `routes`.
    pub(crate) async fn start(routes: Vec<RegionRoute>) -> Sim {
        Sim::with_config(routes, |_| {}).await
    }

    /// [`Sim::start`], with the configuration adjusted by `tweak`.
    pub(crate) async fn with_config(routes: Vec<RegionRoute>, tweak: impl FnOnce(&mut ClientConfig)) -> Sim {
        let clock = Arc::new(ManualClock::new(START));
        let net = Arc::new(ScriptedTransport {
            clock: clock.clone(),
            state: Mutex::new(State { routes, ..State::default() }),
        });
        let mut cfg = ClientConfig::new(vec![PD_ADDR.to_string()], None);
        cfg.rng_seed = Some(7);
        tweak(&mut cfg);
        let client = Client::with_platform(cfg.clone(), net.clone(), clock.clone(), 0)
            .await
            .expect("simulated PD gives a session");
        Sim { clock, net, client, cfg }
    }

    /// The current simulated time.
    pub(crate) fn now(&self) -> Timestamp {
        self.clock.now()
    }

    /// The deadline of a request starting now.
    pub(crate) fn deadline_from_now(&self) -> Timestamp {
        self.now().saturating_add(self.cfg.request_timeout)
    }
}
