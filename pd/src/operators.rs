//! The operator controller: runs the scheduler's operators through region heartbeats.
//!
//! Every region heartbeat first checks the operators in flight against what the leaders
//! now report: an operator whose goal shows (the learner is there, the peer is gone, the
//! leader moved, the range version rose) succeeded; one whose region split or disappeared
//! under it is cancelled; one past its deadline timed out. Then, at most every
//! [`SCHEDULE_EVERY`], the scheduler plans new operators from the cluster snapshot with the
//! ones in flight. Finally the answer to the heartbeat carries the step of every reported
//! region with an operator in flight; it is resent with each heartbeat until the goal shows
//! (the leader ignores a step planned against an epoch that moved on, and one already being
//! proposed).
//!
//! Operators are soft state: a restarted PD forgets them, and the scheduler plans again
//! from what the leaders report. Ids a step needs (a learner's peer id, a split's region
//! and peer ids) are allocated, durably, when the operator starts.
//!
//! A merge runs in two steps, each a command in one region's log: `PrepareMerge` to the
//! source's leader (the source freezes), then, once the source's leader reports it
//! prepared, `CommitMerge` to the target's leader (the target absorbs the source; each of
//! its replicas first waits for its own source replica to apply the prepare). Both later steps are driven from what the
//! leaders report, not from the operator, so they survive a PD restart: a prepared source
//! whose target still has the epoch the prepare names gets the commit sent to the target;
//! one whose target moved past that epoch gets `RollbackMerge`. That rollback is safe:
//! while PD still routes the source, the target has not reported absorbing it, and a target
//! at a newer epoch than the prepare names refuses the commit forever (a target changes
//! its epoch only through steps PD plans against the epoch it last saw, and the report
//! of an absorbing target replaces the source in the routing table).

use std::collections::{BTreeMap, VecDeque};
use std::time::Duration;

use tessera_wire::{
    NodeId, OperatorInfo, OperatorState, Peer, RegionCommand, RegionCommandKind, RegionDescriptor, RegionId,
};

use crate::meta::{ClusterMeta, MetaChanges};
use crate::scheduler::{schedule, Operator, OperatorKind, Reason, SchedulerConfig};

/// Least time between two scheduler passes.
pub const SCHEDULE_EVERY: Duration = Duration::from_millis(200);
/// Finished operators kept for `tessera admin operators`.
const KEEP_FINISHED: usize = 256;
/// How long an operator may take: adding a learner includes sending it a snapshot.
const ADD_LEARNER_TIMEOUT: Duration = Duration::from_secs(600);
/// How long any other operator may take.
const STEP_TIMEOUT: Duration = Duration::from_secs(60);

#[derive(Debug, Clone)]
struct Running {
    id: u64,
    op: Operator,
    command: RegionCommand,
    started: Duration,
}

#[derive(Debug, Clone)]
struct Finished {
    id: u64,
    region_id: RegionId,
    text: String,
    state: OperatorState,
    started: Duration,
    ended: Duration,
}

/// Why a manual operator could not start.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ManualError {
    /// The cluster has no regions yet.
    #[error("cluster not bootstrapped")]
    NotBootstrapped,
    /// The key already starts a region.
    #[error("the key already starts region {0}")]
    AlreadyBoundary(RegionId),
    /// No region covers the key right now (a split is being reported).
    #[error("no region covers the key yet; retry")]
    NoRegion,
    /// The region has an operator in flight.
    #[error("region {0} is being changed by operator {1}; retry when it finishes")]
    Busy(RegionId, u64),
    /// The region has no known leader.
    #[error("region {0} has no leader yet; retry")]
    NoLeader(RegionId),
    /// The region is prepared to merge: it changes no more until the merge ends.
    #[error("region {0} is prepared to merge; retry when the merge ends")]
    Merging(RegionId),
    /// The region is the first one: nothing on its left to merge into.
    #[error("region {0} starts the key space: it has no left neighbour to merge into")]
    NoLeftNeighbour(RegionId),
    /// The two regions cannot merge as they are.
    #[error("region {0} cannot merge into region {1} now: {2}")]
    NotMergeable(RegionId, RegionId, String),
}

/// Runs operators; see the module docs.
#[derive(Debug)]
pub struct OperatorController {
    config: SchedulerConfig,
    next_id: u64,
    running: BTreeMap<RegionId, Running>,
    finished: VecDeque<Finished>,
    last_pass: Option<Duration>,
}

impl OperatorController {
    /// A controller planning with `config`.
    pub fn new(config: SchedulerConfig) -> OperatorController {
        OperatorController { config, next_id: 1, running: BTreeMap::new(), finished: VecDeque::new(), last_pass: None }
    }

    /// After region heartbeats for `reported` were applied to `meta` at `now`: settles
    /// finished operators, plans new ones if a pass is due, and returns the steps for the
    /// reported regions with the durable changes (id allocations) to persist.
    pub fn on_region_heartbeat(
        &mut self,
        meta: &mut ClusterMeta,
        reported: &[RegionId],
        now: Duration,
    ) -> (Vec<RegionCommand>, MetaChanges) {
        self.settle(meta, now);
        let mut changes = MetaChanges::default();
        if self.last_pass.is_none_or(|t| now.saturating_sub(t) >= SCHEDULE_EVERY) && meta.is_bootstrapped() {
            self.last_pass = Some(now);
            self.plan(meta, now, &mut changes);
        }
        let mut commands: Vec<RegionCommand> = reported
            .iter()
            .filter_map(|id| self.running.get(id))
            // A prepare is sent until the source reports it prepared; the rest of a merge
            // follows from the reports (`merge_steps`).
            .filter(|r| {
                !matches!(r.command.kind, RegionCommandKind::PrepareMerge { .. })
                    || meta.merging(r.op.region_id).is_none()
            })
            .map(|r| r.command.clone())
            .collect();
        commands.extend(self.merge_steps(meta, reported));
        (commands, changes)
    }

    /// The commit (to the target) or rollback (to the source) of every prepared merge whose
    /// region was just reported; see the module docs.
    fn merge_steps(&self, meta: &ClusterMeta, reported: &[RegionId]) -> Vec<RegionCommand> {
        let mut out = Vec::new();
        for (source, m) in meta.prepared_merges() {
            let op_id = self.running.get(&source.id).map_or(0, |r| r.id);
            match meta.region_roles(m.target) {
                Some((target, learners, leader))
                    if target.epoch == m.target_epoch
                        && learners.is_empty()
                        && leader.is_some()
                        && reported.contains(&target.id) =>
                {
                    out.push(RegionCommand {
                        op_id,
                        region_id: target.id,
                        epoch: target.epoch,
                        kind: RegionCommandKind::CommitMerge { source, prepare_index: m.prepare_index },
                    });
                }
                // The target is at the prepared epoch but not ready (or not reported now),
                // or PD knows it at an older epoch (its newer report has not come yet).
                Some((target, _, _)) if !m.target_epoch.is_stale_against(&target.epoch) => {}
                // The target absorbed the source (a report of its own has not replaced the
                // source yet): never roll back.
                Some((target, _, _)) if target.contains(&source.start_key) => {}
                // The target moved on (or was replaced) without absorbing the source.
                _ if reported.contains(&source.id) => {
                    tracing::info!(
                        region_id = source.id.0,
                        target = m.target.0,
                        "rolling back a merge whose target moved on"
                    );
                    out.push(RegionCommand {
                        op_id,
                        region_id: source.id,
                        epoch: source.epoch,
                        kind: RegionCommandKind::RollbackMerge { prepare_index: m.prepare_index },
                    });
                }
                _ => {}
            }
        }
        out
    }

    /// The operator in flight on `region` (as its region, or as a merge's target).
    fn busy(&self, region: RegionId) -> Option<u64> {
        self.running.values().find(|r| r.op.regions().contains(&region)).map(|r| r.id)
    }

    /// Starts a merge of the region holding `key` into its left neighbour (`tessera admin
    /// merge`).
    pub fn merge_at(
        &mut self,
        meta: &mut ClusterMeta,
        key: Vec<u8>,
        now: Duration,
    ) -> Result<(u64, MetaChanges), ManualError> {
        let source = region_at(meta, &key)?;
        let target = meta.left_neighbour(&source).ok_or(ManualError::NoLeftNeighbour(source.id))?;
        for id in [source.id, target] {
            if let Some(op) = self.busy(id) {
                return Err(ManualError::Busy(id, op));
            }
            if meta.region_roles(id).is_none_or(|(_, _, leader)| leader.is_none()) {
                return Err(ManualError::NoLeader(id));
            }
        }
        if let Some(why) = merge_blocker(meta, source.id, target) {
            return Err(ManualError::NotMergeable(source.id, target, why));
        }
        let op = Operator {
            region_id: source.id,
            epoch: source.epoch,
            kind: OperatorKind::Merge { source: source.id, target },
            reason: Reason::Manual,
        };
        let mut changes = MetaChanges::default();
        let id = self.start(meta, op, now, &mut changes).ok_or(ManualError::NoRegion)?;
        Ok((id, changes))
    }

    /// Starts a split of the region holding `key` at `key` (`tessera admin split`).
    pub fn split_at(
        &mut self,
        meta: &mut ClusterMeta,
        key: Vec<u8>,
        now: Duration,
    ) -> Result<(u64, MetaChanges), ManualError> {
        let region = region_at(meta, &key)?;
        if region.start_key == key {
            return Err(ManualError::AlreadyBoundary(region.id));
        }
        if let Some(op) = self.busy(region.id) {
            return Err(ManualError::Busy(region.id, op));
        }
        if meta.merging(region.id).is_some() {
            return Err(ManualError::Merging(region.id));
        }
        if meta.region_roles(region.id).is_none_or(|(_, _, leader)| leader.is_none()) {
            return Err(ManualError::NoLeader(region.id));
        }
        let op = Operator {
            region_id: region.id,
            epoch: region.epoch,
            kind: OperatorKind::Split { key: Some(key) },
            reason: Reason::Manual,
        };
        let mut changes = MetaChanges::default();
        let id = self.start(meta, op, now, &mut changes).ok_or(ManualError::NoRegion)?;
        Ok((id, changes))
    }

    /// Running operators, then finished ones, newest first.
    pub fn infos(&self, now: Duration) -> Vec<OperatorInfo> {
        let ms = |d: Duration| u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
        let split = |text: &str| match text.split_once(" because ") {
            Some((kind, reason)) => (kind.to_owned(), reason.to_owned()),
            None => (text.to_owned(), String::new()),
        };
        let mut out: Vec<OperatorInfo> = self
            .running
            .values()
            .map(|r| {
                let (kind, reason) = split(&r.op.to_string());
                OperatorInfo {
                    id: r.id,
                    region_id: r.op.region_id,
                    kind,
                    reason,
                    state: OperatorState::Running,
                    started_ms_ago: ms(now.saturating_sub(r.started)),
                    took_ms: None,
                }
            })
            .collect();
        out.sort_by_key(|i| std::cmp::Reverse(i.id));
        out.extend(self.finished.iter().rev().map(|f| {
            let (kind, reason) = split(&f.text);
            OperatorInfo {
                id: f.id,
                region_id: f.region_id,
                kind,
                reason,
                state: f.state.clone(),
                started_ms_ago: ms(now.saturating_sub(f.started)),
                took_ms: Some(ms(f.ended.saturating_sub(f.started))),
            }
        }));
        out
    }

    /// Operators in flight.
    pub fn running(&self) -> usize {
        self.running.len()
    }

    fn plan(&mut self, meta: &mut ClusterMeta, now: Duration, changes: &mut MetaChanges) {
        let mut snapshot = meta.scheduler_snapshot(now);
        snapshot.in_flight = self.running.values().map(|r| r.op.clone()).collect();
        // A prepared merge pins both its regions until it commits or rolls back, also when
        // its operator is gone (timed out, or forgotten by a restart).
        let pinned: std::collections::HashSet<RegionId> =
            meta.prepared_merges().into_iter().flat_map(|(s, m)| [s.id, m.target]).collect();
        for op in schedule(&snapshot, &self.config) {
            if op.regions().iter().any(|id| pinned.contains(id)) {
                continue;
            }
            self.start(meta, op, now, changes);
        }
    }

    /// Allocates what `op` needs, builds its step and records it as running.
    fn start(&mut self, meta: &mut ClusterMeta, op: Operator, now: Duration, changes: &mut MetaChanges) -> Option<u64> {
        if op.regions().iter().any(|id| self.busy(*id).is_some()) {
            return None;
        }
        let (region, _, _) = meta.region_roles(op.region_id)?;
        let voters = region.peers.clone();
        let kind = match &op.kind {
            OperatorKind::AddLearner { node } => {
                let (id, c) = meta.alloc_peer();
                changes.merge(c);
                RegionCommandKind::AddLearner { peer: Peer { id, node_id: *node } }
            }
            OperatorKind::PromoteLearner { peer } => RegionCommandKind::PromoteLearner { peer: *peer },
            OperatorKind::RemovePeer { peer } => RegionCommandKind::RemovePeer { peer: *peer },
            OperatorKind::TransferLeader { to } => RegionCommandKind::TransferLeader { to: *to },
            OperatorKind::Split { key } => {
                let (new_region_id, c) = meta.alloc_region();
                changes.merge(c);
                let mut new_peers = Vec::with_capacity(voters.len());
                for v in &voters {
                    let (id, c) = meta.alloc_peer();
                    changes.merge(c);
                    new_peers.push(Peer { id, node_id: v.node_id });
                }
                match (key, op.reason) {
                    // A hot region splits where its load halves, unless a key was given.
                    (None, Reason::SplitHot) => RegionCommandKind::SplitByLoad { new_region_id, new_peers },
                    _ => RegionCommandKind::Split { key: key.clone(), new_region_id, new_peers },
                }
            }
            OperatorKind::Merge { source, target } => {
                if *source != op.region_id || merge_blocker(meta, *source, *target).is_some() {
                    return None;
                }
                let (t, _, _) = meta.region_roles(*target)?;
                RegionCommandKind::PrepareMerge { target: *target, target_epoch: t.epoch }
            }
        };
        let id = self.next_id;
        self.next_id += 1;
        let command = RegionCommand { op_id: id, region_id: op.region_id, epoch: op.epoch, kind };
        tracing::info!(op_id = id, region_id = op.region_id.0, operator = %op, "operator started");
        self.running.insert(op.region_id, Running { id, op, command, started: now });
        Some(id)
    }

    /// Moves operators whose goal shows, whose region changed under them, or whose time ran
    /// out, to the finished list.
    fn settle(&mut self, meta: &ClusterMeta, now: Duration) {
        let snapshot = meta.scheduler_snapshot(now);
        let up = |node: NodeId| snapshot.nodes.iter().any(|n| n.id == node && n.up);
        let mut done = Vec::new();
        for (region_id, r) in self.running.iter_mut() {
            // A membership change moved the region's conf_ver since the step was sent (the
            // second half of a joint change, or the step itself under way): the step still
            // applies, so it is resent against the current epoch instead of being refused
            // as stale until it times out.
            if let Some((desc, _, _)) = meta.region_roles(*region_id) {
                if desc.epoch.version == r.op.epoch.version && desc.epoch.conf_ver > r.command.epoch.conf_ver {
                    r.command.epoch = desc.epoch;
                }
            }
            if let OperatorKind::Merge { .. } = r.op.kind {
                let state = merge_outcome(meta, &r.op, &r.command.kind);
                let state =
                    state.or_else(|| (now.saturating_sub(r.started) > STEP_TIMEOUT).then_some(OperatorState::TimedOut));
                if let Some(state) = state {
                    done.push((*region_id, state));
                }
                continue;
            }
            let state = match meta.region_roles(*region_id) {
                None => Some(OperatorState::Cancelled { reason: "the region is gone".into() }),
                Some((desc, learners, leader)) => {
                    if reached(&r.command.kind, &r.op, desc, learners, leader) {
                        Some(OperatorState::Succeeded)
                    } else if desc.epoch.version != r.op.epoch.version {
                        Some(OperatorState::Cancelled { reason: "the region's range changed".into() })
                    } else if let Some(node) = target_node(&r.command.kind).filter(|n| !up(*n)) {
                        Some(OperatorState::Cancelled {
                            reason: format!("its target node {node} stopped heartbeating"),
                        })
                    } else if now.saturating_sub(r.started) > timeout(&r.command.kind) {
                        Some(OperatorState::TimedOut)
                    } else {
                        None
                    }
                }
            };
            if let Some(state) = state {
                done.push((*region_id, state));
            }
        }
        for (region_id, state) in done {
            let r = self.running.remove(&region_id).expect("listed above");
            tracing::info!(op_id = r.id, region_id = region_id.0, state = ?state, "operator finished");
            self.finished.push_back(Finished {
                id: r.id,
                region_id,
                text: r.op.to_string(),
                state,
                started: r.started,
                ended: now,
            });
            while self.finished.len() > KEEP_FINISHED {
                self.finished.pop_front();
            }
        }
    }
}

/// The region holding `key`, for a manual operator.
fn region_at(meta: &ClusterMeta, key: &[u8]) -> Result<RegionDescriptor, ManualError> {
    if !meta.is_bootstrapped() {
        return Err(ManualError::NotBootstrapped);
    }
    Ok(meta.get_region(key).map_err(|_| ManualError::NoRegion)?.region)
}

/// Why `source` cannot merge into `target` now, if it cannot: they must be adjacent
/// (`target` on the left), have their voters on the same nodes, no learners, leaders,
/// and neither may be prepared to merge already.
fn merge_blocker(meta: &ClusterMeta, source: RegionId, target: RegionId) -> Option<String> {
    let Some((s, s_learners, s_leader)) = meta.region_roles(source) else { return Some("the source is gone".into()) };
    let Some((t, t_learners, t_leader)) = meta.region_roles(target) else { return Some("the target is gone".into()) };
    let nodes = |d: &RegionDescriptor| d.peers.iter().map(|p| p.node_id).collect::<std::collections::BTreeSet<_>>();
    if t.end_key != s.start_key || s.start_key.is_empty() {
        Some("they are not adjacent".into())
    } else if nodes(s) != nodes(t) || s.peers.len() != t.peers.len() {
        Some("their voters are not on the same nodes".into())
    } else if !s_learners.is_empty() || !t_learners.is_empty() {
        Some("a replica is being added".into())
    } else if s_leader.is_none() || t_leader.is_none() {
        Some("a region has no leader".into())
    } else if meta.merging(source).is_some() || meta.merging(target).is_some() {
        Some("a region is prepared to merge already".into())
    } else {
        None
    }
}

/// Where the merge `op` (whose prepare is `kind`) stands, if it ended.
fn merge_outcome(meta: &ClusterMeta, op: &Operator, kind: &RegionCommandKind) -> Option<OperatorState> {
    let OperatorKind::Merge { source, target } = op.kind else { return None };
    let RegionCommandKind::PrepareMerge { target_epoch, .. } = kind else { return None };
    match (meta.region_roles(source), meta.region_roles(target)) {
        // The target's report of its wider range replaced the source.
        (None, Some((t, _, _))) if t.epoch.version > target_epoch.version => Some(OperatorState::Succeeded),
        (None, _) => Some(OperatorState::Cancelled { reason: "the region is gone".into() }),
        // The prepare raised the source's version once, a rollback once more.
        (Some((s, _, _)), _) if meta.merging(source).is_none() && s.epoch.version >= op.epoch.version + 2 => {
            Some(OperatorState::Cancelled { reason: "the merge was rolled back".into() })
        }
        (Some((s, _, _)), _) if meta.merging(source).is_none() && s.epoch.version > op.epoch.version => {
            Some(OperatorState::Cancelled { reason: "the region changed".into() })
        }
        _ => None,
    }
}

/// The node a step hands something to (a replica, a vote, the leadership), if any.
fn target_node(kind: &RegionCommandKind) -> Option<NodeId> {
    match kind {
        RegionCommandKind::AddLearner { peer } | RegionCommandKind::PromoteLearner { peer } => Some(peer.node_id),
        RegionCommandKind::TransferLeader { to } => Some(to.node_id),
        RegionCommandKind::RemovePeer { .. }
        | RegionCommandKind::Split { .. }
        | RegionCommandKind::SplitByLoad { .. }
        | RegionCommandKind::PrepareMerge { .. }
        | RegionCommandKind::CommitMerge { .. }
        | RegionCommandKind::RollbackMerge { .. } => None,
    }
}

fn timeout(kind: &RegionCommandKind) -> Duration {
    match kind {
        RegionCommandKind::AddLearner { .. } => ADD_LEARNER_TIMEOUT,
        _ => STEP_TIMEOUT,
    }
}

/// Whether the region as reported shows the step's goal.
fn reached(
    kind: &RegionCommandKind,
    op: &Operator,
    desc: &RegionDescriptor,
    learners: &[Peer],
    leader: Option<Peer>,
) -> bool {
    let hosts = |p: &Peer| desc.peer(p.id).is_some() || learners.iter().any(|l| l.id == p.id);
    match kind {
        RegionCommandKind::AddLearner { peer } => hosts(peer),
        RegionCommandKind::PromoteLearner { peer } => desc.peer(peer.id).is_some(),
        RegionCommandKind::RemovePeer { peer } => !hosts(peer),
        RegionCommandKind::TransferLeader { to } => leader == Some(*to),
        RegionCommandKind::Split { .. } | RegionCommandKind::SplitByLoad { .. } => {
            desc.epoch.version > op.epoch.version
        }
        // Settled by `merge_outcome`.
        RegionCommandKind::PrepareMerge { .. }
        | RegionCommandKind::CommitMerge { .. }
        | RegionCommandKind::RollbackMerge { .. } => false,
    }
}

#[cfg(test)]
mod tests {
    use tessera_wire::{NodeStats, PeerId, RegionStats};

    use super::*;
    use crate::meta::MetaConfig;

    fn cluster(nodes: u64) -> ClusterMeta {
        let mut meta = ClusterMeta::new(MetaConfig::default());
        for i in 1..=nodes {
            let _ = meta.register_node(NodeId(i), format!("127.0.0.1:{}", 7000 + i), 0, Duration::ZERO);
        }
        meta
    }

    fn report(
        meta: &mut ClusterMeta,
        desc: &RegionDescriptor,
        leader: Peer,
        learners: Vec<Peer>,
        size: u64,
        at: Duration,
    ) {
        let stats = RegionStats {
            approximate_size: size,
            approximate_keys: 100,
            learners,
            ..RegionStats::new(desc.clone(), leader, 1)
        };
        let _ = meta.region_heartbeat(leader.node_id, &[stats], at).unwrap();
    }

    fn only_region(meta: &ClusterMeta) -> RegionDescriptor {
        meta.scan_regions(b"", b"", 0).unwrap().remove(0).region
    }

    #[test]
    fn a_hot_region_is_split_where_its_load_halves_and_a_large_one_by_size() {
        let config = SchedulerConfig { split_bytes: 1000, hot_qps: 100, ..SchedulerConfig::default() };
        let hot = |size: u64, qps_at: &[(u64, u64)]| {
            let mut meta = cluster(3);
            let mut ctl = OperatorController::new(config.clone());
            let desc = only_region(&meta);
            let leader = desc.peers[0];
            let mut cmds = Vec::new();
            for &(at, qps) in qps_at {
                let stats = RegionStats {
                    approximate_size: size,
                    approximate_keys: 100,
                    write_qps: qps,
                    ..RegionStats::new(desc.clone(), leader, 1)
                };
                let at = Duration::from_secs(at);
                // Every node heartbeats, so all three count for the load's fair share.
                for i in 1..=3 {
                    meta.node_heartbeat(NodeId(i), NodeStats::default(), &[desc.id], at).unwrap();
                }
                let _ = meta.region_heartbeat(leader.node_id, &[stats], at).unwrap();
                cmds = ctl.on_region_heartbeat(&mut meta, &[desc.id], at).0;
            }
            cmds
        };
        // Hot for a moment only: not split.
        assert!(hot(10, &[(0, 500)]).is_empty());
        // Hot, then cooled within the window: not split.
        assert!(hot(10, &[(0, 500), (5, 20), (10, 500)]).is_empty());
        // Hot over the whole window: split where the load halves.
        let cmds = hot(10, &[(0, 500), (5, 400), (10, 500)]);
        assert!(matches!(cmds[0].kind, RegionCommandKind::SplitByLoad { .. }), "{cmds:?}");
        // Large and hot: the size decides, at once.
        let cmds = hot(5000, &[(0, 500)]);
        assert!(matches!(cmds[0].kind, RegionCommandKind::Split { key: None, .. }), "{cmds:?}");
    }

    #[test]
    fn a_large_region_gets_a_split_step_with_fresh_ids_until_its_version_rises() {
        let mut meta = cluster(3);
        let config = SchedulerConfig { split_bytes: 1000, merge_bytes: 100, ..SchedulerConfig::default() };
        let mut ctl = OperatorController::new(config);
        let desc = only_region(&meta);
        let leader = desc.peers[0];
        report(&mut meta, &desc, leader, vec![], 5000, Duration::ZERO);
        let (cmds, changes) = ctl.on_region_heartbeat(&mut meta, &[desc.id], Duration::from_secs(1));
        assert!(changes.allocator, "the split's ids are allocated durably");
        assert_eq!(cmds.len(), 1);
        let RegionCommandKind::Split { key: None, new_region_id, new_peers } = &cmds[0].kind else {
            panic!("expected a split, got {:?}", cmds[0].kind);
        };
        assert_ne!(*new_region_id, desc.id);
        let nodes: Vec<NodeId> = new_peers.iter().map(|p| p.node_id).collect();
        let voters: Vec<NodeId> = desc.peers.iter().map(|p| p.node_id).collect();
        assert_eq!(nodes, voters, "one new peer on each voter's node");
        assert!(new_peers.iter().all(|p| desc.peer(p.id).is_none()), "new peer ids");
        // Resent until the leader reports the split.
        let (again, _) = ctl.on_region_heartbeat(&mut meta, &[desc.id], Duration::from_secs(2));
        assert_eq!(again, cmds);
        let mut left = desc.clone();
        left.end_key = b"m".to_vec();
        left.epoch.version += 1;
        report(&mut meta, &left, leader, vec![], 2500, Duration::ZERO);
        let (_, _) = ctl.on_region_heartbeat(&mut meta, &[], Duration::from_secs(3));
        let infos = ctl.infos(Duration::from_secs(3));
        assert_eq!(
            infos.iter().find(|i| i.id == cmds[0].op_id).map(|i| i.state.clone()),
            Some(OperatorState::Succeeded)
        );
    }

    #[test]
    fn a_step_that_never_shows_times_out_and_is_planned_again() {
        let mut meta = cluster(3);
        let config = SchedulerConfig { max_down_time_ms: 1000, ..SchedulerConfig::default() };
        let mut ctl = OperatorController::new(config);
        let desc = only_region(&meta);
        let _ = meta.register_node(NodeId(4), "127.0.0.1:7004".into(), 0, Duration::ZERO);
        // Node 3 falls silent; the others keep heartbeating.
        let alive = |meta: &mut ClusterMeta, at: Duration| {
            for i in [1, 2, 4] {
                meta.node_heartbeat(NodeId(i), NodeStats::default(), &[], at).unwrap();
            }
        };
        let t = Duration::from_secs(100);
        alive(&mut meta, t);
        let leader = *desc.peers.iter().find(|p| p.node_id != NodeId(3)).unwrap();
        report(&mut meta, &desc, leader, vec![], 10, t);
        // Node 3's voter is replaced, starting with a learner on node 4.
        let (cmds, _) = ctl.on_region_heartbeat(&mut meta, &[desc.id], t);
        let Some(RegionCommandKind::AddLearner { peer }) = cmds.first().map(|c| c.kind.clone()) else {
            panic!("expected a learner on node 4, got {cmds:?}");
        };
        assert_eq!(peer.node_id, NodeId(4));
        let later = t + ADD_LEARNER_TIMEOUT + Duration::from_secs(1);
        alive(&mut meta, later);
        let (cmds2, _) = ctl.on_region_heartbeat(&mut meta, &[desc.id], later);
        let infos = ctl.infos(later);
        assert!(infos.iter().any(|i| i.state == OperatorState::TimedOut), "{infos:?}");
        let Some(RegionCommandKind::AddLearner { peer: again }) = cmds2.first().map(|c| c.kind.clone()) else {
            panic!("expected the move to be planned again, got {cmds2:?}");
        };
        assert_ne!(again.id, peer.id, "a new attempt gets a new peer id");
    }

    #[test]
    fn manual_split_refuses_a_boundary_and_a_busy_region() {
        let mut meta = cluster(3);
        let mut ctl = OperatorController::new(SchedulerConfig::default());
        let desc = only_region(&meta);
        assert_eq!(ctl.split_at(&mut meta, b"k".to_vec(), Duration::ZERO), Err(ManualError::NoLeader(desc.id)));
        report(&mut meta, &desc, desc.peers[1], vec![], 10, Duration::ZERO);
        assert_eq!(ctl.split_at(&mut meta, vec![], Duration::ZERO), Err(ManualError::AlreadyBoundary(desc.id)));
        let (id, _) = ctl.split_at(&mut meta, b"k".to_vec(), Duration::ZERO).unwrap();
        assert_eq!(ctl.split_at(&mut meta, b"q".to_vec(), Duration::ZERO), Err(ManualError::Busy(desc.id, id)));
        let (cmds, _) = ctl.on_region_heartbeat(&mut meta, &[desc.id], Duration::from_millis(1));
        assert!(matches!(&cmds[0].kind, RegionCommandKind::Split { key: Some(k), .. } if k == b"k"));
        assert_eq!(cmds[0].epoch, desc.epoch);
        let _ = PeerId(0);
    }

    #[test]
    fn a_step_follows_membership_changes_and_is_cancelled_when_its_target_falls_silent() {
        let mut meta = cluster(3);
        let mut ctl = OperatorController::new(SchedulerConfig { max_down_time_ms: 1000, ..SchedulerConfig::default() });
        let desc = only_region(&meta);
        let _ = meta.register_node(NodeId(4), "127.0.0.1:7004".into(), 0, Duration::ZERO);
        let t = Duration::from_secs(100);
        for i in [1, 2, 4] {
            meta.node_heartbeat(NodeId(i), NodeStats::default(), &[], t).unwrap();
        }
        let leader = *desc.peers.iter().find(|p| p.node_id != NodeId(3)).unwrap();
        report(&mut meta, &desc, leader, vec![], 10, t);
        let (cmds, _) = ctl.on_region_heartbeat(&mut meta, &[desc.id], t);
        assert!(matches!(cmds[0].kind, RegionCommandKind::AddLearner { .. }));
        // The region's conf_ver moves (another membership entry) without the goal showing:
        // the step is resent against the new epoch.
        let mut moved = desc.clone();
        moved.epoch.conf_ver += 1;
        report(&mut meta, &moved, leader, vec![], 10, t);
        let (again, _) = ctl.on_region_heartbeat(&mut meta, &[desc.id], t);
        assert_eq!(again[0].op_id, cmds[0].op_id, "the same operator");
        assert_eq!(again[0].epoch, moved.epoch, "resent against the current epoch");
        // Node 4, the learner's node, falls silent: the step is cancelled.
        let later = t + Duration::from_secs(10);
        for i in [1, 2] {
            meta.node_heartbeat(NodeId(i), NodeStats::default(), &[], later).unwrap();
        }
        let (_, _) = ctl.on_region_heartbeat(&mut meta, &[], later);
        let info = ctl.infos(later).into_iter().find(|i| i.id == cmds[0].op_id).unwrap();
        assert!(matches!(info.state, OperatorState::Cancelled { .. }), "{info:?}");
    }

    /// Two adjacent regions with voters on the same three nodes, both led.
    fn two_regions(at: Duration) -> (ClusterMeta, RegionDescriptor, RegionDescriptor) {
        let mut meta = ClusterMeta::new(MetaConfig { initial_regions: 2, ..MetaConfig::default() });
        for i in 1..=3 {
            let _ = meta.register_node(NodeId(i), format!("127.0.0.1:{}", 7000 + i), 0, Duration::ZERO);
        }
        let regions: Vec<RegionDescriptor> =
            meta.scan_regions(b"", b"", 0).unwrap().into_iter().map(|r| r.region).collect();
        let (left, right) = (regions[0].clone(), regions[1].clone());
        assert_eq!(left.end_key, right.start_key);
        report(&mut meta, &left, left.peers[0], vec![], 10, at);
        report(&mut meta, &right, right.peers[0], vec![], 10, at);
        (meta, left, right)
    }

    fn report_prepared(meta: &mut ClusterMeta, desc: &RegionDescriptor, merging: tessera_wire::MergeReport) {
        let stats = RegionStats { merging: Some(merging), ..RegionStats::new(desc.clone(), desc.peers[0], 1) };
        let _ = meta.region_heartbeat(desc.peers[0].node_id, &[stats], Duration::ZERO).unwrap();
    }

    #[test]
    fn a_merge_prepares_the_source_then_commits_on_the_target_once_every_voter_holds_the_prepare() {
        let t = Duration::from_secs(1);
        let (mut meta, left, right) = two_regions(t);
        let mut ctl = OperatorController::new(SchedulerConfig::default());
        assert_eq!(ctl.merge_at(&mut meta, vec![], t), Err(ManualError::NoLeftNeighbour(left.id)));
        let (id, _) = ctl.merge_at(&mut meta, right.start_key.clone(), t).unwrap();
        // The merge occupies both regions.
        assert_eq!(ctl.split_at(&mut meta, vec![1], t), Err(ManualError::Busy(left.id, id)));
        let (cmds, _) = ctl.on_region_heartbeat(&mut meta, &[left.id, right.id], t);
        assert_eq!(cmds.len(), 1, "{cmds:?}");
        assert_eq!(cmds[0].region_id, right.id);
        assert_eq!(cmds[0].kind, RegionCommandKind::PrepareMerge { target: left.id, target_epoch: left.epoch });
        // Once the source reports it prepared, the target is asked to absorb it; not before.
        let (cmds, _) = ctl.on_region_heartbeat(&mut meta, &[left.id], t);
        assert!(cmds.is_empty(), "{cmds:?}");
        let mut prepared = right.clone();
        prepared.epoch.version += 1;
        let merging = tessera_wire::MergeReport { target: left.id, target_epoch: left.epoch, prepare_index: 9 };
        report_prepared(&mut meta, &prepared, merging.clone());
        let (cmds, _) = ctl.on_region_heartbeat(&mut meta, &[left.id, right.id], t);
        assert_eq!(
            cmds,
            vec![RegionCommand {
                op_id: id,
                region_id: left.id,
                epoch: left.epoch,
                kind: RegionCommandKind::CommitMerge { source: prepared.clone(), prepare_index: 9 },
            }]
        );
        // The target reports its wider range: the source is gone and the merge succeeded.
        let mut merged = left.clone();
        merged.end_key = right.end_key.clone();
        merged.epoch.version = left.epoch.version.max(prepared.epoch.version) + 1;
        report(&mut meta, &merged, merged.peers[0], vec![], 20, t);
        let (cmds, _) = ctl.on_region_heartbeat(&mut meta, &[left.id], t);
        assert!(cmds.is_empty(), "{cmds:?}");
        assert!(meta.region_roles(right.id).is_none());
        let infos = ctl.infos(t);
        assert_eq!(infos.iter().find(|i| i.id == id).map(|i| i.state.clone()), Some(OperatorState::Succeeded));
        // A late report of the source, alone or as split off the target, does not bring it
        // back (where it would look like a merge to roll back).
        let mut target_report = RegionStats::new(merged.clone(), merged.peers[0], 1);
        target_report.split_off = vec![right.clone()];
        let _ = meta.region_heartbeat(merged.peers[0].node_id, &[target_report], t).unwrap();
        report_prepared(&mut meta, &prepared, merging);
        assert!(meta.region_roles(right.id).is_none());
        let (cmds, _) = ctl.on_region_heartbeat(&mut meta, &[left.id, right.id], t);
        assert!(cmds.is_empty(), "no rollback: {cmds:?}");
    }

    #[test]
    fn a_prepared_merge_whose_target_moved_on_is_rolled_back() {
        let t = Duration::from_secs(1);
        let (mut meta, left, right) = two_regions(t);
        let mut ctl = OperatorController::new(SchedulerConfig::default());
        let (id, _) = ctl.merge_at(&mut meta, right.start_key.clone(), t).unwrap();
        let mut prepared = right.clone();
        prepared.epoch.version += 1;
        let merging = tessera_wire::MergeReport { target: left.id, target_epoch: left.epoch, prepare_index: 9 };
        report_prepared(&mut meta, &prepared, merging.clone());
        // The target's membership changed since the prepare: it refuses the commit forever.
        let mut moved = left.clone();
        moved.epoch.conf_ver += 2;
        report(&mut meta, &moved, moved.peers[0], vec![], 10, t);
        let (cmds, _) = ctl.on_region_heartbeat(&mut meta, &[left.id, right.id], t);
        assert_eq!(
            cmds,
            vec![RegionCommand {
                op_id: id,
                region_id: right.id,
                epoch: prepared.epoch,
                kind: RegionCommandKind::RollbackMerge { prepare_index: 9 },
            }]
        );
        // The source serves again (its version rose once more): the operator ends.
        let mut rolled_back = prepared.clone();
        rolled_back.epoch.version += 1;
        report(&mut meta, &rolled_back, rolled_back.peers[0], vec![], 10, t);
        let (cmds, _) = ctl.on_region_heartbeat(&mut meta, &[left.id, right.id], t);
        assert!(cmds.is_empty(), "{cmds:?}");
        let state = ctl.infos(t).into_iter().find(|i| i.id == id).map(|i| i.state);
        assert!(matches!(state, Some(OperatorState::Cancelled { .. })), "{state:?}");
    }
}
