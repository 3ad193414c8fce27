//! Client KV requests: validation, routing checks, reads and replicated writes.
//!
//! Every request is checked, in this order, for: a hosted region (`RegionNotFound`), the
//! region epoch (`EpochNotMatch`, carrying the current descriptor), key sizes and range
//! (`KeyTooLarge`, `KeyNotInRegion`, ...), then leadership (`NotLeader` with a hint) for
//! linearizable reads and all writes. Linearizable reads use openraft's read index; `Stale`
//! reads are served from this replica's applied state without any check of leadership.

use std::sync::Arc;

use openraft::async_runtime::watch::WatchReceiver;
use openraft::errors::{ClientWriteError, LinearizableReadError, RaftError};
use openraft::raft::ReadPolicy;
use tessera_wire::{
    key_in_range, validate_batch, validate_key, validate_value, Error, KvOp, KvRequest, KvResponse, LeaderHint,
    ReadConsistency, RegionDescriptor, RegionId, Response, ResponseBody, WriteCommand,
};

use super::NodeService;
use crate::raft::types::{LogCommand, TypeConfig};
use crate::region::Region;
use crate::storage::state_machine::{read_batch, read_get, read_scan};

impl NodeService {
    pub(crate) async fn kv(&self, req: KvRequest) -> Response {
        let header = req.header.clone();
        let region =
            self.ctx.regions.get(header.region_id).ok_or(Error::RegionNotFound { region_id: header.region_id })?;
        let desc = region.shared.descriptor();
        if header.epoch != desc.epoch {
            return Err(Error::EpochNotMatch { current: self.current_regions(&region, &op_keys(&req.op)) });
        }
        if region.shared.merging().is_some() {
            // Prepared to merge: the region serves nothing more, and its keys are served by
            // the region absorbing it once the merge commits. Point the client there if the
            // commit applied here already, else have it look the keys up again.
            let keys = op_keys(&req.op);
            let current = self
                .ctx
                .regions
                .all()
                .into_iter()
                .filter(|other| other.id != region.id)
                .map(|other| other.shared.descriptor())
                .filter(|d| keys.iter().any(|k| d.contains(k)))
                .collect();
            return Err(Error::EpochNotMatch { current });
        }
        self.validate(&req.op, &desc)?;
        let timeout = if header.timeout_ms == 0 {
            self.default_timeout
        } else {
            std::time::Duration::from_millis(header.timeout_ms as u64)
        };
        let timed_out = match &req.op {
            // The proposal may still commit: its fate is unknown. The client resends it with
            // the same session sequence number, or reports it undetermined.
            KvOp::Write { .. } => Error::WriteUndetermined { region_id: header.region_id },
            _ => Error::DeadlineExceeded,
        };
        // Only the keys are kept for a redirect after the fact, not the values.
        let keys: Vec<Vec<u8>> = op_keys(&req.op).into_iter().map(<[u8]>::to_vec).collect();
        // Where the load falls, for a split by load (a batch counts by its first key).
        if let Some(k) = keys.first() {
            region.shared.load.record(k);
        }
        let result =
            tokio::time::timeout(timeout, self.execute(region.clone(), desc, req)).await.unwrap_or(Err(timed_out));
        match result {
            // The range changed under the request (a split applied after it was checked):
            // answer with the regions that now hold its keys, so the client retries there
            // without asking PD.
            Err(Error::EpochNotMatch { current }) if current.is_empty() => {
                let keys: Vec<&[u8]> = keys.iter().map(Vec::as_slice).collect();
                Err(Error::EpochNotMatch { current: self.current_regions(&region, &keys) })
            }
            other => other,
        }
    }

    /// The descriptors a client with a stale view of `region` needs: the region's own, then
    /// those of the regions hosted here that hold `keys` (the halves of a split).
    fn current_regions(&self, region: &Region, keys: &[&[u8]]) -> Vec<RegionDescriptor> {
        let own = region.shared.descriptor();
        let mut out = vec![own];
        for other in self.ctx.regions.all() {
            let d = other.shared.descriptor();
            if d.id != region.id && keys.iter().any(|k| d.contains(k)) {
                out.push(d);
            }
        }
        // Halves split off here whose group has not started on this node yet.
        let split_off = region.shared.split_off.lock().unwrap_or_else(|p| p.into_inner()).clone();
        for d in split_off {
            if !out.iter().any(|o| o.id == d.id) && keys.iter().any(|k| d.contains(k)) {
                out.push(d);
            }
        }
        out
    }

    fn validate(&self, op: &KvOp, desc: &RegionDescriptor) -> Result<(), Error> {
        let limits = &self.limits;
        let in_region = |key: &[u8]| -> Result<(), Error> {
            validate_key(key, limits)?;
            if !desc.contains(key) {
                return Err(Error::KeyNotInRegion {
                    key: key.to_vec(),
                    region_id: desc.id,
                    start_key: desc.start_key.clone(),
                    end_key: desc.end_key.clone(),
                });
            }
            Ok(())
        };
        match op {
            KvOp::Get { key } => in_region(key),
            KvOp::BatchGet { keys } => {
                if keys.len() > limits.max_batch_keys {
                    return Err(Error::BatchTooLarge { len: keys.len() as u64, max: limits.max_batch_keys as u64 });
                }
                keys.iter().try_for_each(|k| in_region(k))
            }
            KvOp::Scan { start, end, limit, .. } => {
                if !end.is_empty() && start >= end {
                    return Err(Error::InvalidRequest { reason: "scan start must be below its end".into() });
                }
                if *limit == 0 {
                    return Err(Error::InvalidRequest { reason: "scan limit must be positive".into() });
                }
                // A reverse page resumes at the exclusive end `last_key ++ [0]`, one byte
                // longer than the longest key.
                if start.len() > limits.max_key_len || end.len() > limits.max_key_len + 1 {
                    return Err(Error::KeyTooLarge {
                        len: start.len().max(end.len()) as u64,
                        max: limits.max_key_len as u64,
                    });
                }
                // The scanned range must overlap the region.
                let starts_before_end = desc.end_key.is_empty() || start.as_slice() < desc.end_key.as_slice();
                let ends_after_start = end.is_empty() || end.as_slice() > desc.start_key.as_slice();
                if !(starts_before_end && ends_after_start) {
                    return Err(Error::KeyNotInRegion {
                        key: start.clone(),
                        region_id: desc.id,
                        start_key: desc.start_key.clone(),
                        end_key: desc.end_key.clone(),
                    });
                }
                Ok(())
            }
            KvOp::Write { command, .. } => {
                match command {
                    WriteCommand::Put { value, .. } | WriteCommand::Append { value, .. } => {
                        validate_value(value, limits)?
                    }
                    WriteCommand::CompareAndSwap { expected, new, .. } => {
                        if let Some(v) = expected {
                            validate_value(v, limits)?;
                        }
                        if let Some(v) = new {
                            validate_value(v, limits)?;
                        }
                    }
                    WriteCommand::BatchPut { pairs } => {
                        validate_batch(pairs, limits)?;
                        pairs.iter().try_for_each(|(_, v)| validate_value(v, limits))?;
                    }
                    WriteCommand::Delete { .. } => {}
                }
                command.keys().into_iter().try_for_each(in_region)
            }
        }
    }

    async fn execute(&self, region: Arc<Region>, desc: RegionDescriptor, req: KvRequest) -> Response {
        let region_id = desc.id;
        let r = region_id.0;
        // Writes and linearizable reads need a quorum; stale reads are served from this
        // replica alone.
        let is_write = matches!(req.op, KvOp::Write { .. });
        if is_write || req.header.consistency == ReadConsistency::Linearizable {
            if let Some(lost) = self.quorum_lost(&region) {
                return Err(lost);
            }
        }
        if let KvOp::Write { session, command } = req.op {
            // An append that would grow its value past the limit is refused by the state
            // machine, where appends are ordered. (No refusal here from a read of the local
            // state: that state is not linearized, and a write answered before its commit
            // (docs/life-of-a-write.md) may not be visible in it yet.)
            if let Some(busy) = self.overload(&region) {
                return Err(busy);
            }
            // The leader's wall clock drives session expiry; each replica keeps the largest
            // seen, so a clock stepping back on a new leader only delays expiry.
            let now_ms = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
            let cmd = LogCommand::from_wire(session, command, self.limits.max_value_len, now_ms, self.session_ttl_ms);
            let started = std::time::Instant::now();
            region.shared.writes.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let result = region.proposer.write(cmd).await;
            crate::metrics::STAGES.kv_write.record(started.elapsed());
            return match result {
                Ok(applied) => applied.to_wire().map(|w| ResponseBody::Kv(KvResponse::Write(w))),
                Err(e) => Err(write_error(e, region_id, || region.leader_hint(&self.ctx.book))),
            };
        }
        if req.header.consistency == ReadConsistency::Linearizable {
            let started = std::time::Instant::now();
            let on_lease = if self.lease_reads {
                Some(region.raft.ensure_linearizable(ReadPolicy::LeaseRead).await)
            } else {
                None
            };
            let read_index = match on_lease {
                // No lease reads, or the lease is not fresh (no quorum acknowledgement within
                // it): confirm leadership with a round to the followers.
                None | Some(Err(RaftError::APIError(LinearizableReadError::QuorumNotEnough(_)))) => {
                    region.raft.ensure_linearizable(ReadPolicy::ReadIndex).await
                }
                Some(r) => r,
            };
            crate::metrics::STAGES.read_index.record(started.elapsed());
            match read_index {
                Ok(_) => {}
                Err(RaftError::APIError(LinearizableReadError::ForwardToLeader(_))) => {
                    return Err(Error::NotLeader { region_id, leader: region.leader_hint(&self.ctx.book) })
                }
                Err(e) => return Err(Error::RegionUnavailable { region_id, reason: e.to_string() }),
            }
        }
        let max_bytes = self.limits.max_response_bytes;
        let (shared, version) = (region.shared.clone(), desc.epoch.version);
        region.shared.reads.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        match req.op {
            // A point read is one B-tree lookup, mostly in redb's page cache: cheaper than
            // the hand-off to the blocking pool and back, so it runs here.
            KvOp::Get { key } => Ok(ResponseBody::Kv(KvResponse::Value(
                self.read_now(|engine| read_get(engine, r, Some((&shared.range_version, version)), &key))?,
            ))),
            KvOp::BatchGet { keys } => {
                let values = self
                    .read(move |engine| read_batch(engine, r, Some((&shared.range_version, version)), &keys, max_bytes))
                    .await?;
                Ok(ResponseBody::Kv(KvResponse::Values(values)))
            }
            KvOp::Scan { start, end, limit, reverse } => {
                // Clamp the range to the region.
                let lo = if start.as_slice() < desc.start_key.as_slice() { desc.start_key.clone() } else { start };
                let hi = if end.is_empty() || (!desc.end_key.is_empty() && desc.end_key < end) {
                    desc.end_key.clone()
                } else {
                    end
                };
                let limit = limit.min(self.limits.max_scan_limit) as usize;
                let (pairs, resume_key) = self
                    .read(move |engine| {
                        read_scan(
                            engine,
                            r,
                            Some((&shared.range_version, version)),
                            &lo,
                            &hi,
                            limit,
                            max_bytes,
                            reverse,
                        )
                    })
                    .await?;
                debug_assert!(pairs.iter().all(|(k, _)| key_in_range(k, &desc.start_key, &desc.end_key)));
                Ok(ResponseBody::Kv(KvResponse::Scan { pairs, resume_key }))
            }
            KvOp::Write { .. } => Err(Error::InvalidRequest { reason: "write reached the read path".into() }),
        }
    }

    /// `ServerBusy` when the node cannot take another write in time: its group-commit queue
    /// is deeper than `max_write_queue` jobs, or the region's state machine lags its log by
    /// more than `max_apply_lag` entries. Refused before proposing, so the write was not
    /// applied and the client backs off and retries, instead of the write timing out into
    /// an undetermined outcome.
    fn overload(&self, region: &Region) -> Option<Error> {
        let retry_after_ms = 20;
        if self.ctx.engine.queue_depth() > self.admission.max_write_queue {
            return Some(Error::ServerBusy { retry_after_ms });
        }
        let (last_log, applied) = {
            let m = region.raft.metrics();
            let m = m.borrow_watched();
            (m.last_log_index.unwrap_or(0), m.last_applied.map_or(0, |l| l.index))
        };
        if last_log.saturating_sub(applied) > self.admission.max_apply_lag {
            return Some(Error::ServerBusy { retry_after_ms });
        }
        None
    }

    /// `RegionUnavailable` when this node leads `region` but no quorum of its voters can
    /// answer: the peers' own answers said their storage fail-stopped (a full disk), or no
    /// quorum has acknowledged the leader for [`NodeService::quorum_silence`] (the peers are
    /// down or cut off). Such a write would wait in the leader's log until the request's
    /// deadline, end `WriteUndetermined`, and apply whenever the peers came back; refused
    /// before proposing, it was not applied, the client backs off and retries, and at its
    /// deadline reports why. A linearizable read could not confirm the leadership either.
    fn quorum_lost(&self, region: &Region) -> Option<Error> {
        let metrics = region.raft.metrics();
        let m = metrics.borrow_watched();
        if m.current_leader != Some(m.id) {
            return None;
        }
        let silent_for = m.last_quorum_acked.as_ref().map(|acked| openraft::Instant::elapsed(&**acked));
        // The common case, with nothing to look at more closely (and nothing allocated).
        if self.ctx.peer_failures.is_empty() && silent_for.is_none_or(|s| s <= self.quorum_silence) {
            return None;
        }
        let membership = m.membership_config.membership();
        let configs: Vec<Vec<Voter>> = membership
            .get_joint_config()
            .iter()
            .map(|config| {
                config
                    .iter()
                    .map(|id| {
                        if *id == m.id {
                            return Voter::Leader;
                        }
                        let node = membership.get_node(id).map(|n| tessera_wire::NodeId(n.node_id));
                        match node.and_then(|n| self.ctx.peer_failures.get(n).map(|reason| (n, reason))) {
                            Some((node, reason)) => Voter::Failed { node, reason },
                            None => Voter::Peer,
                        }
                    })
                    .collect()
            })
            .collect();
        let reason = quorum_refusal(&configs, silent_for, self.quorum_silence)?;
        Some(Error::RegionUnavailable { region_id: region.id, reason })
    }

    /// Runs a read of the database on the bounded read pool, off the async runtime.
    async fn read<T: Send + 'static>(
        &self,
        read: impl FnOnce(&crate::storage::Engine) -> std::io::Result<T> + Send + 'static,
    ) -> Result<T, Error> {
        let engine = self.ctx.engine.clone();
        self.reads.run(move || read(&engine)).await.map_err(read_error)
    }

    /// Runs a short read of the database (one key) on the calling task.
    fn read_now<T>(&self, read: impl FnOnce(&crate::storage::Engine) -> std::io::Result<T>) -> Result<T, Error> {
        read(&self.ctx.engine).map_err(read_error)
    }
}

/// A voter of a region, as its leader sees it ([`quorum_refusal`]).
#[derive(Debug, Clone, PartialEq, Eq)]
enum Voter {
    /// This node.
    Leader,
    /// A peer with no known failure.
    Peer,
    /// A peer that answered `StorageUnavailable`.
    Failed { node: tessera_wire::NodeId, reason: String },
}

/// Why a leader whose voters are `configs` (one set, or two during a joint membership
/// change, each needing a majority) cannot make a write durable, if it cannot: a majority of
/// some set's voters failed their storage, or no quorum acknowledged the leader within
/// `limit` (`silent_for`: since the last acknowledgement, if there was one). A leader that
/// is alone in every set needs no acknowledgement.
fn quorum_refusal(
    configs: &[Vec<Voter>],
    silent_for: Option<std::time::Duration>,
    limit: std::time::Duration,
) -> Option<String> {
    let failed: Vec<(tessera_wire::NodeId, &str)> = {
        let mut failed: Vec<_> = configs
            .iter()
            .flatten()
            .filter_map(|v| match v {
                Voter::Failed { node, reason } => Some((*node, reason.as_str())),
                _ => None,
            })
            .collect();
        failed.sort_by_key(|(node, _)| *node);
        failed.dedup_by_key(|(node, _)| *node);
        failed
    };
    let named =
        || failed.iter().map(|(node, reason)| format!("node {}: {reason}", node.0)).collect::<Vec<_>>().join("; ");
    let no_majority = configs.iter().any(|config| {
        let up = config.iter().filter(|v| !matches!(v, Voter::Failed { .. })).count();
        up <= config.len() / 2
    });
    if no_majority {
        return Some(format!("a majority of its replicas cannot write: their storage failed ({})", named()));
    }
    let alone = configs.iter().all(|config| config.iter().all(|v| *v == Voter::Leader));
    match silent_for {
        Some(silent) if !alone && silent > limit => {
            let mut reason = format!("no quorum of its replicas has answered the leader for {} ms", silent.as_millis());
            if !failed.is_empty() {
                reason = format!("{reason} ({})", named());
            }
            Some(reason)
        }
        _ => None,
    }
}

/// The typed error of a failed database read.
fn read_error(e: std::io::Error) -> Error {
    if e.get_ref().is_some_and(|inner| inner.is::<crate::storage::state_machine::RangeChanged>()) {
        // Filled with the current descriptors by `kv`.
        Error::EpochNotMatch { current: vec![] }
    } else {
        Error::StorageUnavailable { reason: e.to_string() }
    }
}

/// The keys a request names (a scan: its start).
fn op_keys(op: &KvOp) -> Vec<&[u8]> {
    match op {
        KvOp::Get { key } => vec![key],
        KvOp::BatchGet { keys } => keys.iter().map(Vec::as_slice).collect(),
        KvOp::Scan { start, .. } => vec![start],
        KvOp::Write { command, .. } => command.keys(),
    }
}

/// The typed error for a failed proposal, by whether its entry can still commit.
///
/// * `ForwardToLeader`: refused before anything was appended, so it can never commit:
///   `NotLeader`, and the client resends to the leader.
/// * `LogEntryDiscarded`: appended, then lost the leadership; the entry may have been
///   replicated and may still commit under the next leader: `WriteUndetermined`.
/// * `ChangeMembershipError`, `PreconditionFailed`: refused before appending (a client write
///   changes no membership and carries no precondition): `RegionUnavailable`.
/// * `Fatal` (storage failure, panic, shutdown): openraft stopped at some point after
///   accepting the proposal, perhaps after appending and replicating it:
///   `WriteUndetermined`.
pub(crate) fn write_error(
    e: RaftError<TypeConfig, ClientWriteError<TypeConfig>>,
    region_id: RegionId,
    leader: impl FnOnce() -> Option<LeaderHint>,
) -> Error {
    match e {
        RaftError::APIError(ClientWriteError::ForwardToLeader(_)) => Error::NotLeader { region_id, leader: leader() },
        RaftError::APIError(ClientWriteError::LogEntryDiscarded(_)) => Error::WriteUndetermined { region_id },
        RaftError::APIError(ClientWriteError::ChangeMembershipError(e)) => {
            Error::RegionUnavailable { region_id, reason: e.to_string() }
        }
        // Checked before appending; Tessera attaches no preconditions.
        RaftError::APIError(ClientWriteError::PreconditionFailed(e)) => {
            Error::RegionUnavailable { region_id, reason: e.to_string() }
        }
        RaftError::Fatal(_) => Error::WriteUndetermined { region_id },
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use tessera_wire::NodeId;

    use super::{quorum_refusal, Voter};

    const LIMIT: Duration = Duration::from_millis(1600);

    fn failed(node: u64) -> Voter {
        Voter::Failed { node: NodeId(node), reason: "No space left on device".into() }
    }

    #[test]
    fn a_leader_refuses_once_a_majority_of_its_voters_failed_their_storage() {
        let one_failed = [vec![Voter::Leader, Voter::Peer, failed(3)]];
        assert_eq!(quorum_refusal(&one_failed, Some(Duration::ZERO), LIMIT), None);
        let two_failed = [vec![Voter::Leader, failed(2), failed(3)]];
        let reason = quorum_refusal(&two_failed, Some(Duration::ZERO), LIMIT).unwrap();
        assert!(reason.contains("node 2: No space") && reason.contains("node 3: No space"), "{reason}");
        // Even before the acknowledgements stop (or if there never was one).
        assert!(quorum_refusal(&two_failed, None, LIMIT).is_some());
        // Five voters: two failed still leave a majority.
        let five = [vec![Voter::Leader, Voter::Peer, Voter::Peer, failed(4), failed(5)]];
        assert_eq!(quorum_refusal(&five, Some(Duration::ZERO), LIMIT), None);
    }

    #[test]
    fn during_a_joint_change_each_set_needs_its_majority() {
        let joint = [vec![Voter::Leader, Voter::Peer, Voter::Peer], vec![Voter::Leader, failed(4), failed(5)]];
        assert!(quorum_refusal(&joint, Some(Duration::ZERO), LIMIT).is_some());
        let joint = [vec![Voter::Leader, Voter::Peer, failed(3)], vec![Voter::Leader, Voter::Peer, failed(5)]];
        assert_eq!(quorum_refusal(&joint, Some(Duration::ZERO), LIMIT), None);
    }

    #[test]
    fn a_leader_refuses_once_no_quorum_answered_it_for_longer_than_the_limit() {
        let healthy = [vec![Voter::Leader, Voter::Peer, Voter::Peer]];
        assert_eq!(quorum_refusal(&healthy, Some(LIMIT), LIMIT), None);
        let reason = quorum_refusal(&healthy, Some(LIMIT + Duration::from_millis(1)), LIMIT).unwrap();
        assert!(reason.contains("1601 ms"), "{reason}");
        // No acknowledgement yet (a leader just elected): no refusal on time alone.
        assert_eq!(quorum_refusal(&healthy, None, LIMIT), None);
        // A known failure is named beside the silence.
        let one_failed = [vec![Voter::Leader, Voter::Peer, failed(3)]];
        let reason = quorum_refusal(&one_failed, Some(Duration::from_secs(5)), LIMIT).unwrap();
        assert!(reason.contains("node 3: No space"), "{reason}");
        // A leader alone needs no one's acknowledgement.
        assert_eq!(quorum_refusal(&[vec![Voter::Leader]], Some(Duration::from_secs(60)), LIMIT), None);
    }
}
