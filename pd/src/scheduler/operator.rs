//! The scheduler's output: operators, one step of a region's change each.

use std::fmt;

use tessera_wire::{NodeId, Peer, RegionEpoch, RegionId};

/// One step to apply to one region, planned against `epoch`.
///
/// The operator controller refuses an operator whose region's epoch moved on since it was
/// planned: the scheduler decided from a state that no longer holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Operator {
    /// The region changed. For [`OperatorKind::Merge`], the source.
    pub region_id: RegionId,
    /// The region's epoch when the operator was planned.
    pub epoch: RegionEpoch,
    /// What to do.
    pub kind: OperatorKind,
    /// Why.
    pub reason: Reason,
}

/// What an [`Operator`] does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OperatorKind {
    /// Add a learner on `node`. Its peer id is allocated by the operator controller.
    AddLearner {
        /// The node to host it.
        node: NodeId,
    },
    /// Make the learner `peer` a voter.
    PromoteLearner {
        /// The learner.
        peer: Peer,
    },
    /// Remove the voter or learner `peer`.
    RemovePeer {
        /// The replica removed.
        peer: Peer,
    },
    /// Hand leadership to the voter `to`.
    TransferLeader {
        /// The new leader.
        to: Peer,
    },
    /// Split the region at `key`, or (`None`) at the midpoint by size the leader picks.
    Split {
        /// The first key of the right half.
        key: Option<Vec<u8>>,
    },
    /// Merge `source` into `target`, its left neighbour with the same voters: `target`
    /// grows to cover both ranges and `source` disappears. The operator's `region_id` and
    /// `epoch` are the source's; the controller must check the target's current range and
    /// voters itself before proposing the merge.
    Merge {
        /// The region merged away.
        source: RegionId,
        /// The region that grows.
        target: RegionId,
    },
}

/// Why an [`Operator`] was planned. Node ids here name the nodes the operator relieves or
/// loads besides those in its [`OperatorKind`]; the per-node limit counts them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    /// A voter on `node`, down longer than the configured maximum, is being replaced.
    DownVoter {
        /// The down node.
        node: NodeId,
    },
    /// A voter on the draining `node` is being replaced.
    DrainingVoter {
        /// The draining node.
        node: NodeId,
    },
    /// The region has fewer voters than configured.
    MissingReplica,
    /// The region has more voters than configured; the one on `node` goes.
    ExcessReplica {
        /// The node losing its voter.
        node: NodeId,
    },
    /// A learner on `node` (down too long, or draining) is removed.
    BadLearner {
        /// Its node.
        node: NodeId,
    },
    /// A learner added earlier (by a move, or by a repair whose voter came back) is
    /// promoted; the then excess voter is removed on a later pass.
    CompleteMove,
    /// Larger than `split_bytes`.
    SplitSize,
    /// More keys than `split_keys`.
    SplitKeys,
    /// Busier than `hot_qps`.
    SplitHot,
    /// Both regions are small and old enough.
    MergeSmall,
    /// A replica moves from `from`, the node with the most regions, to `to`.
    BalanceRegion {
        /// The most loaded node.
        from: NodeId,
        /// The least loaded node.
        to: NodeId,
    },
    /// A leader moves from `from`, the node with the most leaders, to `to`.
    BalanceLeader {
        /// The node with the most leaders.
        from: NodeId,
        /// The node with the fewest.
        to: NodeId,
    },
    /// An operator asked for it (`tessera admin split`).
    Manual,
}

impl Reason {
    /// The node the operator relieves, if the reason names one.
    pub fn source(&self) -> Option<NodeId> {
        match *self {
            Reason::DownVoter { node }
            | Reason::DrainingVoter { node }
            | Reason::ExcessReplica { node }
            | Reason::BadLearner { node } => Some(node),
            Reason::BalanceRegion { from, .. } | Reason::BalanceLeader { from, .. } => Some(from),
            Reason::MissingReplica
            | Reason::CompleteMove
            | Reason::SplitSize
            | Reason::SplitKeys
            | Reason::SplitHot
            | Reason::MergeSmall
            | Reason::Manual => None,
        }
    }
}

impl Operator {
    /// The nodes the operator touches, as source or target, sorted and without
    /// duplicates: the nodes its kind names plus [`Reason::source`].
    ///
    /// Splits and merges touch none: they run in place on the replicas the region already
    /// has and move no data between nodes, so the per-node limit (which bounds snapshot
    /// traffic and membership churn) does not count them.
    pub fn touched_nodes(&self) -> Vec<NodeId> {
        let mut nodes = Vec::with_capacity(2);
        match &self.kind {
            OperatorKind::AddLearner { node } => nodes.push(*node),
            OperatorKind::PromoteLearner { peer } | OperatorKind::RemovePeer { peer } => nodes.push(peer.node_id),
            OperatorKind::TransferLeader { to } => nodes.push(to.node_id),
            OperatorKind::Split { .. } | OperatorKind::Merge { .. } => return nodes,
        }
        nodes.extend(self.reason.source());
        nodes.sort();
        nodes.dedup();
        nodes
    }

    /// The regions the operator occupies: its own, and for a merge both regions.
    pub fn regions(&self) -> Vec<RegionId> {
        match self.kind {
            OperatorKind::Merge { source, target } => vec![self.region_id, source, target],
            _ => vec![self.region_id],
        }
    }
}

/// `r7 2/3 add-learner n4 because down-voter n3`: region, `conf_ver/version`, kind, reason.
/// The fixtures use the same form.
impl fmt::Display for Operator {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}/{} ", self.region_id, self.epoch.conf_ver, self.epoch.version)?;
        match &self.kind {
            OperatorKind::AddLearner { node } => write!(f, "add-learner {node}")?,
            OperatorKind::PromoteLearner { peer } => write!(f, "promote-learner {}@{}", peer.id, peer.node_id)?,
            OperatorKind::RemovePeer { peer } => write!(f, "remove-peer {}@{}", peer.id, peer.node_id)?,
            OperatorKind::TransferLeader { to } => write!(f, "transfer-leader {}@{}", to.id, to.node_id)?,
            OperatorKind::Split { key: None } => f.write_str("split")?,
            OperatorKind::Split { key: Some(key) } => {
                f.write_str("split key=")?;
                for b in key {
                    write!(f, "{b:02x}")?;
                }
            }
            OperatorKind::Merge { source, target } => write!(f, "merge {source} into {target}")?,
        }
        f.write_str(" because ")?;
        match self.reason {
            Reason::DownVoter { node } => write!(f, "down-voter {node}"),
            Reason::DrainingVoter { node } => write!(f, "draining-voter {node}"),
            Reason::MissingReplica => f.write_str("missing-replica"),
            Reason::ExcessReplica { node } => write!(f, "excess-replica {node}"),
            Reason::BadLearner { node } => write!(f, "bad-learner {node}"),
            Reason::CompleteMove => f.write_str("complete-move"),
            Reason::SplitSize => f.write_str("split-size"),
            Reason::SplitKeys => f.write_str("split-keys"),
            Reason::SplitHot => f.write_str("split-hot"),
            Reason::MergeSmall => f.write_str("merge-small"),
            Reason::BalanceRegion { from, to } => write!(f, "balance-region {from} {to}"),
            Reason::BalanceLeader { from, to } => write!(f, "balance-leader {from} {to}"),
            Reason::Manual => f.write_str("manual"),
        }
    }
}

#[cfg(test)]
mod tests {
    use tessera_wire::PeerId;

    use super::*;

    fn op(kind: OperatorKind, reason: Reason) -> Operator {
        Operator { region_id: RegionId(1), epoch: RegionEpoch { conf_ver: 2, version: 3 }, kind, reason }
    }

    #[test]
    fn touched_nodes_include_the_reason_source() {
        let add = op(OperatorKind::AddLearner { node: NodeId(4) }, Reason::DownVoter { node: NodeId(3) });
        assert_eq!(add.touched_nodes(), vec![NodeId(3), NodeId(4)]);
        let peer = Peer { id: PeerId(9), node_id: NodeId(2) };
        let transfer =
            op(OperatorKind::TransferLeader { to: peer }, Reason::BalanceLeader { from: NodeId(1), to: NodeId(2) });
        assert_eq!(transfer.touched_nodes(), vec![NodeId(1), NodeId(2)]);
        let remove = op(OperatorKind::RemovePeer { peer }, Reason::ExcessReplica { node: NodeId(2) });
        assert_eq!(remove.touched_nodes(), vec![NodeId(2)]);
        assert!(op(OperatorKind::Split { key: None }, Reason::SplitHot).touched_nodes().is_empty());
    }

    #[test]
    fn merge_occupies_both_regions() {
        let merge = Operator {
            region_id: RegionId(2),
            epoch: RegionEpoch::default(),
            kind: OperatorKind::Merge { source: RegionId(2), target: RegionId(1) },
            reason: Reason::MergeSmall,
        };
        assert_eq!(merge.regions(), vec![RegionId(2), RegionId(2), RegionId(1)]);
    }

    #[test]
    fn display_is_one_readable_line() {
        let add = op(OperatorKind::AddLearner { node: NodeId(4) }, Reason::DownVoter { node: NodeId(3) });
        assert_eq!(add.to_string(), "r1 2/3 add-learner n4 because down-voter n3");
        let split = op(OperatorKind::Split { key: Some(vec![0x6d, 0x01]) }, Reason::SplitSize);
        assert_eq!(split.to_string(), "r1 2/3 split key=6d01 because split-size");
    }
}
