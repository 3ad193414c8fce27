//! Steps PD asks a region's leader to take (answers to region heartbeats): add a learner,
//! promote it, remove a replica, hand leadership over, split, and the three steps of a
//! merge (prepare on the source, commit on the target, or roll the prepare back).
//!
//! Each step is checked against the region's current epoch first: PD planned it against
//! `command.epoch`, and a region that changed since is left alone (PD plans again from
//! what the next heartbeat reports). A region runs one step at a time; a step PD resends
//! while the previous is still being proposed is dropped.

use std::collections::BTreeSet;
use std::sync::atomic::Ordering;

use openraft::ChangeMembers;
use tessera_wire::{RegionCommand, RegionCommandKind};

use crate::raft::types::{ApplyResult, LogCommand, PeerNode};
use crate::region::{NodeContext, Region};

/// Why a step was not taken.
#[derive(Debug, thiserror::Error)]
pub(crate) enum StepError {
    /// This replica no longer leads the region, or the region is gone.
    #[error("not the leader")]
    NotLeader,
    /// The region's epoch moved on since PD planned the step.
    #[error("stale epoch")]
    StaleEpoch,
    /// Another step of the region is still being proposed.
    #[error("another step is in progress")]
    Busy,
    /// The step does not fit the region (a split key outside its range, peers on other
    /// nodes than its voters, a learner present).
    #[error("refused: {0}")]
    Refused(String),
    /// openraft refused or failed the change.
    #[error("raft: {0}")]
    Raft(String),
}

/// Takes one step PD asked for, logging the outcome.
pub(crate) async fn execute(ctx: &NodeContext, command: RegionCommand) {
    let (region_id, op_id) = (command.region_id.0, command.op_id);
    match step(ctx, command).await {
        Ok(what) => tracing::info!(region_id, op_id, what, "region step done"),
        Err(StepError::Busy) => tracing::debug!(region_id, op_id, "region step already in progress"),
        // PD resends a step with every heartbeat until its goal shows: a refusal repeats.
        Err(e @ (StepError::Refused(_) | StepError::StaleEpoch | StepError::NotLeader)) => {
            tracing::debug!(region_id, op_id, error = %e, "region step not taken")
        }
        Err(e) => tracing::info!(region_id, op_id, error = %e, "region step failed"),
    }
}

/// Clears the region's busy flag when the step ends.
struct BusyGuard<'a>(&'a Region);

impl Drop for BusyGuard<'_> {
    fn drop(&mut self) {
        self.0.admin_busy.store(false, Ordering::SeqCst);
    }
}

/// Entries a leader-transfer target may lag behind.
const TRANSFER_MAX_LAG: u64 = 64;
/// How recently a leader-transfer target must have answered a heartbeat.
const TRANSFER_MAX_SILENCE: std::time::Duration = std::time::Duration::from_secs(1);

/// Why `to` should not take over the leadership now, if it should not.
fn unfit_successor(region: &Region, to: u64) -> Option<String> {
    use openraft::async_runtime::watch::WatchReceiver;
    use openraft::Instant as _;
    let metrics = region.raft.metrics();
    let m = metrics.borrow_watched();
    let last = m.last_log_index.unwrap_or(0);
    let matched = m.replication.as_ref().and_then(|r| r.get(&to).cloned().flatten()).map(|l| l.index);
    let acked = m.heartbeat.as_ref().and_then(|h| h.get(&to).cloned().flatten());
    match (matched, acked) {
        (None, _) => Some(format!("peer {to} has not replicated anything yet")),
        (Some(i), _) if last.saturating_sub(i) > TRANSFER_MAX_LAG => {
            Some(format!("peer {to} lags {} entries", last - i))
        }
        (_, None) => Some(format!("peer {to} has not answered a heartbeat")),
        (_, Some(at)) if at.into_inner().elapsed() > TRANSFER_MAX_SILENCE => {
            Some(format!("peer {to} has not answered for {:?}", at.into_inner().elapsed()))
        }
        _ => None,
    }
}

async fn step(ctx: &NodeContext, command: RegionCommand) -> Result<&'static str, StepError> {
    let region = ctx.regions.get(command.region_id).ok_or(StepError::NotLeader)?;
    if !region.is_leader() {
        return Err(StepError::NotLeader);
    }
    let desc = region.shared.descriptor();
    if desc.epoch != command.epoch {
        return Err(StepError::StaleEpoch);
    }
    if region.admin_busy.swap(true, Ordering::SeqCst) {
        return Err(StepError::Busy);
    }
    let _busy = BusyGuard(&region);
    // A region prepared to merge changes no further, except to be rolled back.
    if region.shared.merging().is_some() && !matches!(command.kind, RegionCommandKind::RollbackMerge { .. }) {
        return Err(StepError::Refused("the region is prepared to merge".into()));
    }
    let raft_err = |e: &dyn std::fmt::Display| StepError::Raft(e.to_string());
    let ids = |p: tessera_wire::Peer| BTreeSet::from([p.id.0]);
    match command.kind {
        RegionCommandKind::AddLearner { peer } => {
            if desc.peer_on(peer.node_id).is_some() {
                return Err(StepError::Refused(format!("node {} already hosts a voter", peer.node_id)));
            }
            // A new replica must start from a snapshot that includes the region's last
            // merge: it has no replica of the merged-away region to apply the merge from.
            let merge = region.shared.last_merge_index.load(Ordering::SeqCst);
            let snapshot = {
                use openraft::async_runtime::watch::WatchReceiver;
                region.raft.metrics().borrow_watched().snapshot.map_or(0, |l| l.index)
            };
            if merge > snapshot {
                region.raft.trigger().snapshot().await.map_err(|e| raft_err(&e))?;
                return Err(StepError::Refused("building a snapshot that includes the last merge".into()));
            }
            region
                .raft
                .add_learner(peer.id.0, PeerNode { node_id: peer.node_id.0 }, false)
                .await
                .map_err(|e| raft_err(&e))?;
            Ok("add learner")
        }
        RegionCommandKind::PromoteLearner { peer } => {
            region
                .raft
                .change_membership(ChangeMembers::AddVoterIds(ids(peer)), false)
                .await
                .map_err(|e| raft_err(&e))?;
            Ok("promote learner")
        }
        RegionCommandKind::RemovePeer { peer } => {
            if peer.id == region.peer.id {
                // A leader does not remove itself: it hands leadership to another voter,
                // and PD asks the new leader to remove this replica.
                let to =
                    desc.peers.iter().find(|p| p.id != peer.id).ok_or(StepError::Refused("no other voter".into()))?;
                region.raft.trigger().transfer_leader(to.id.0).await.map_err(|e| raft_err(&e))?;
                return Ok("transfer leader before removing self");
            }
            let change = if desc.peer(peer.id).is_some() {
                ChangeMembers::RemoveVoters(ids(peer))
            } else {
                ChangeMembers::RemoveNodes(ids(peer))
            };
            region.raft.change_membership(change, false).await.map_err(|e| raft_err(&e))?;
            Ok("remove peer")
        }
        RegionCommandKind::TransferLeader { to } => {
            if desc.peer(to.id).is_none() {
                return Err(StepError::Refused(format!("peer {} is not a voter", to.id)));
            }
            // Hand over only to a voter that answers and is caught up: a leader that steps
            // down towards a dead or lagging peer leaves the region leaderless until an
            // election timeout.
            if let Some(why) = unfit_successor(&region, to.id.0) {
                return Err(StepError::Refused(why));
            }
            region.raft.trigger().transfer_leader(to.id.0).await.map_err(|e| raft_err(&e))?;
            Ok("transfer leader")
        }
        kind @ (RegionCommandKind::Split { .. } | RegionCommandKind::SplitByLoad { .. }) => {
            let (key, by_load, new_region_id, new_peers) = match kind {
                RegionCommandKind::Split { key, new_region_id, new_peers } => (key, false, new_region_id, new_peers),
                RegionCommandKind::SplitByLoad { new_region_id, new_peers } => (None, true, new_region_id, new_peers),
                _ => unreachable!("matched above"),
            };
            let voters: BTreeSet<_> = desc.peers.iter().map(|p| p.node_id).collect();
            let nodes: BTreeSet<_> = new_peers.iter().map(|p| p.node_id).collect();
            if voters != nodes || new_peers.len() != desc.peers.len() {
                return Err(StepError::Refused("the new region's replicas are not on the region's voters".into()));
            }
            if has_learners(&region) {
                return Err(StepError::Refused("the region has a learner".into()));
            }
            // A hot region splits where its recent requests halve, and only there: if no key
            // leaves a fair share of them on each side (one key carries most), a split
            // anywhere would not spread the load, and the step is refused. PD asks again
            // while the region stays hot.
            let key = match (key, by_load) {
                (None, true) => {
                    Some(region.shared.load.balancing_key(&desc.start_key, &desc.end_key).ok_or_else(|| {
                        StepError::Refused("no key splits the region's recent requests evenly".into())
                    })?)
                }
                (key, _) => key,
            };
            let key = match key {
                Some(k) => k,
                None => {
                    let engine = ctx.engine.clone();
                    let (r, total) = (region.id.0, region.shared.approx.bytes().max(0) as u64);
                    let (start, end) = (desc.start_key.clone(), desc.end_key.clone());
                    tokio::task::spawn_blocking(move || {
                        crate::storage::state_machine::middle_key(&engine, r, &start, &end, total)
                    })
                    .await
                    .map_err(|e| StepError::Raft(e.to_string()))?
                    .map_err(|e| StepError::Raft(e.to_string()))?
                    .ok_or(StepError::Refused("no key splits the region".into()))?
                }
            };
            let cmd = LogCommand::SplitV1 {
                key,
                version: desc.epoch.version,
                new_region_id: new_region_id.0,
                new_peers: new_peers.iter().map(|p| (p.id.0, p.node_id.0)).collect(),
            };
            let resp = region.raft.client_write(cmd).await.map_err(|e| raft_err(&e))?;
            match resp.data {
                crate::raft::types::ApplyResult::Split => Ok("split"),
                other => Err(StepError::Refused(format!("split not applied: {other:?}"))),
            }
        }
        RegionCommandKind::PrepareMerge { target, target_epoch } => {
            if has_learners(&region) {
                return Err(StepError::Refused("the region has a learner".into()));
            }
            let cmd = LogCommand::PrepareMergeV1 {
                conf_ver: desc.epoch.conf_ver,
                version: desc.epoch.version,
                target: target.0,
                target_epoch: (target_epoch.conf_ver, target_epoch.version),
            };
            expect(region.raft.client_write(cmd).await.map_err(|e| raft_err(&e))?.data, ApplyResult::MergePrepared)
                .map(|_| "prepare merge")
        }
        RegionCommandKind::CommitMerge { source, prepare_index } => {
            if desc.end_key != source.start_key || source.start_key.is_empty() {
                return Err(StepError::Refused(format!("region {} is not the right neighbour", source.id)));
            }
            if has_learners(&region) {
                return Err(StepError::Refused("the region has a learner".into()));
            }
            // Every replica waits for its own source replica before applying the commit;
            // the leader's has it already, so the commit does not stall the region here.
            let local = ctx
                .regions
                .get(source.id)
                .ok_or(StepError::Refused(format!("region {} has no replica on this node", source.id)))?;
            let (applied, last_log, leader, state) = {
                use openraft::async_runtime::watch::WatchReceiver;
                let metrics = local.raft.metrics();
                let m = metrics.borrow_watched();
                (m.last_applied.map_or(0, |l| l.index), m.last_log_index.unwrap_or(0), m.current_leader, m.state)
            };
            let merging = local.shared.merging().is_some();
            if applied < prepare_index || !merging {
                // PD retries this every heartbeat; what the local source replica has is what
                // explains a merge that does not commit (did the prepare reach its log, is it
                // applied, who leads it).
                return Err(StepError::Refused(format!(
                    "region {} has not applied its prepare here yet: prepare at {prepare_index}, applied \
                     {applied}, log up to {last_log}, prepared {merging}, leader {leader:?}, {state:?}",
                    source.id
                )));
            }
            let cmd = LogCommand::commit_merge(desc.epoch, &source, prepare_index);
            expect(region.raft.client_write(cmd).await.map_err(|e| raft_err(&e))?.data, ApplyResult::Merged)
                .map(|_| "commit merge")
        }
        RegionCommandKind::RollbackMerge { prepare_index } => {
            // PD rolls a merge back only once the target moved past the prepared epoch
            // without absorbing the source. This node hosts a replica of the target too:
            // if that one absorbed the source, the merge committed, whatever PD believes.
            if let Some(m) = region.shared.merging() {
                let absorbed = ctx.regions.get(tessera_wire::RegionId(m.target)).is_some_and(|t| {
                    let t = t.shared.descriptor();
                    t.contains(&desc.start_key) && t.epoch.version > m.target_epoch.1
                });
                if absorbed {
                    return Err(StepError::Refused("the target absorbed this region already".into()));
                }
            }
            let cmd = LogCommand::RollbackMergeV1 { prepare_index };
            expect(region.raft.client_write(cmd).await.map_err(|e| raft_err(&e))?.data, ApplyResult::MergeRolledBack)
                .map(|_| "roll back merge")
        }
    }
}

/// Whether the region's newest membership has a learner.
fn has_learners(region: &Region) -> bool {
    use openraft::async_runtime::watch::WatchReceiver;
    let metrics = region.raft.metrics();
    let m = metrics.borrow_watched();
    let any = m.membership_config.membership().learner_ids().next().is_some();
    any
}

/// `Ok` if the command applied as `wanted`, else why not.
fn expect(got: ApplyResult, wanted: ApplyResult) -> Result<(), StepError> {
    if got == wanted {
        Ok(())
    } else {
        Err(StepError::Refused(format!("not applied: {got:?}")))
    }
}
