//! Multi-pass tests: apply every planned operator to a model cluster, schedule again, and
//! check that the cluster reaches the intended shape and then stays quiet. These exercise
//! the hand-offs between policies (a move is `AddLearner` by balancing, then
//! `PromoteLearner` and `RemovePeer` by repair) that a single-pass fixture cannot.

use std::collections::BTreeMap;

use tessera_wire::{NodeId, Peer, PeerId, RegionDescriptor, RegionEpoch, RegionId};

use super::{schedule, ClusterSnapshot, NodeView, Operator, OperatorKind, RegionView, SchedulerConfig};

const HOUR_MS: u64 = 3_600_000;

fn node(id: u64) -> NodeView {
    NodeView::up(NodeId(id))
}

/// `count` regions over the whole key space, voters placed round-robin on `nodes`, leaders
/// spread over the first voters. Sizes sit between the merge and split thresholds.
fn cluster(nodes: u64, count: u64) -> ClusterSnapshot {
    let mut next_peer = 1;
    let regions = (0..count)
        .map(|i| {
            let peers: Vec<Peer> = (0..3)
                .map(|k| {
                    next_peer += 1;
                    Peer { id: PeerId(next_peer), node_id: NodeId((i + k) % nodes + 1) }
                })
                .collect();
            let bound = |j: u64| if j == 0 || j == count { Vec::new() } else { vec![(256 * j / count) as u8] };
            RegionView {
                descriptor: RegionDescriptor {
                    id: RegionId(i + 1),
                    start_key: bound(i),
                    end_key: bound(i + 1),
                    epoch: RegionEpoch { conf_ver: 1, version: 1 },
                    peers: peers.clone(),
                },
                learners: Vec::new(),
                leader: Some(peers[0]),
                approximate_size: 50 << 20,
                approximate_keys: 100_000,
                write_qps: 0,
                read_qps: 0,
                since_split_ms: 10 * HOUR_MS,
            }
        })
        .collect();
    let mut snapshot = ClusterSnapshot { nodes: (1..=nodes).map(node).collect(), regions, in_flight: Vec::new() };
    recount(&mut snapshot);
    snapshot
}

/// Node statistics as heartbeats would report them.
fn recount(snapshot: &mut ClusterSnapshot) {
    for n in &mut snapshot.nodes {
        n.region_count = snapshot.regions.iter().filter(|r| r.is_on(n.id)).count() as u64;
        n.leader_count = snapshot.regions.iter().filter(|r| r.leader.is_some_and(|l| l.node_id == n.id)).count() as u64;
    }
}

/// Applies `op` as the operator controller would, after checking its epoch.
fn apply(snapshot: &mut ClusterSnapshot, op: &Operator, next_peer: &mut u64) {
    let region = snapshot.regions.iter_mut().find(|r| r.descriptor.id == op.region_id).expect("region exists");
    assert_eq!(region.descriptor.epoch, op.epoch, "operator planned against a stale epoch: {op}");
    let conf_change = |region: &mut RegionView| region.descriptor.epoch.conf_ver += 1;
    match &op.kind {
        OperatorKind::AddLearner { node } => {
            assert!(!region.is_on(*node), "{op}: node already hosts the region");
            *next_peer += 1;
            region.learners.push(Peer { id: PeerId(*next_peer), node_id: *node });
            conf_change(region);
        }
        OperatorKind::PromoteLearner { peer } => {
            region.learners.retain(|l| l != peer);
            region.descriptor.peers.push(*peer);
            conf_change(region);
        }
        OperatorKind::RemovePeer { peer } => {
            assert_ne!(region.leader, Some(*peer), "{op}: removes the leader");
            region.learners.retain(|l| l != peer);
            region.descriptor.peers.retain(|v| v != peer);
            conf_change(region);
        }
        OperatorKind::TransferLeader { to } => {
            assert!(region.descriptor.peers.contains(to), "{op}: target is not a voter");
            region.leader = Some(*to);
        }
        OperatorKind::Split { .. } | OperatorKind::Merge { .. } => panic!("unexpected {op}"),
    }
}

/// Schedules and applies until a pass plans nothing; returns the number of passes.
fn run_to_quiet(snapshot: &mut ClusterSnapshot, config: &SchedulerConfig) -> usize {
    let mut next_peer = 10_000;
    for pass in 1..=50 {
        let ops = schedule(snapshot, config);
        if ops.is_empty() {
            return pass;
        }
        let mut per_node: BTreeMap<NodeId, usize> = BTreeMap::new();
        for op in &ops {
            for n in op.touched_nodes() {
                *per_node.entry(n).or_default() += 1;
            }
        }
        assert!(per_node.values().all(|n| *n <= config.max_ops_per_node), "per-node limit exceeded: {per_node:?}");
        let mut regions: Vec<RegionId> = ops.iter().map(|op| op.region_id).collect();
        regions.sort();
        regions.dedup();
        assert_eq!(regions.len(), ops.len(), "two operators for one region in one pass");
        for op in &ops {
            apply(snapshot, op, &mut next_peer);
        }
        recount(snapshot);
    }
    panic!("the scheduler did not settle in 50 passes");
}

fn assert_settled_without(snapshot: &ClusterSnapshot, gone: NodeId) {
    for r in &snapshot.regions {
        assert_eq!(r.descriptor.peers.len(), 3, "region {} voters: {:?}", r.descriptor.id, r.descriptor.peers);
        assert!(r.learners.is_empty(), "region {} keeps learners", r.descriptor.id);
        assert!(!r.is_on(gone), "region {} still on {gone}", r.descriptor.id);
        assert!(r.leader.is_some_and(|l| l.node_id != gone), "region {} led from {gone}", r.descriptor.id);
    }
}

#[test]
fn long_down_node_is_fully_replaced() {
    let mut snapshot = cluster(5, 12);
    let n3 = &mut snapshot.nodes[2];
    (n3.up, n3.down_for_ms) = (false, 2 * HOUR_MS);
    // Leaders on the dead node are re-elected by Raft, not by PD.
    for r in &mut snapshot.regions {
        if r.leader.is_some_and(|l| l.node_id == NodeId(3)) {
            r.leader = r.descriptor.peers.iter().copied().find(|p| p.node_id != NodeId(3));
        }
    }
    let config = SchedulerConfig { max_ops_per_node: 2, ..SchedulerConfig::default() };
    run_to_quiet(&mut snapshot, &config);
    assert_settled_without(&snapshot, NodeId(3));
}

#[test]
fn draining_node_is_emptied_including_its_leaders() {
    let mut snapshot = cluster(4, 8);
    snapshot.nodes[2].draining = true;
    run_to_quiet(&mut snapshot, &SchedulerConfig::default());
    assert_settled_without(&snapshot, NodeId(3));
}

#[test]
fn new_node_is_filled_to_within_the_tolerance() {
    let mut snapshot = cluster(3, 9);
    snapshot.nodes.push(node(4));
    let config = SchedulerConfig { region_tolerance: 1, leader_tolerance: 1, ..SchedulerConfig::default() };
    run_to_quiet(&mut snapshot, &config);
    let regions: Vec<u64> = snapshot.nodes.iter().map(|n| n.region_count).collect();
    let leaders: Vec<u64> = snapshot.nodes.iter().map(|n| n.leader_count).collect();
    let spread = |v: &[u64]| v.iter().max().unwrap() - v.iter().min().unwrap();
    assert!(spread(&regions) <= 1, "region counts {regions:?}");
    assert!(spread(&leaders) <= 1, "leader counts {leaders:?}");
    assert!(regions[3] >= 6, "n4 got too little: {regions:?}");
    assert!(snapshot.regions.iter().all(|r| r.descriptor.peers.len() == 3 && r.learners.is_empty()));
}
