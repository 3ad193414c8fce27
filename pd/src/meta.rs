//! The placement driver's metadata: an I/O-free, clock-free state machine.
//!
//! [`ClusterMeta`] holds the registered nodes, the routing table (regions by start key and by
//! id), the id allocator and the bootstrapped flag. Every input carries `now`, a [`Duration`]
//! on the driver's monotonic clock; nothing here reads a clock, touches a disk or a socket.
//!
//! Each mutating method returns a [`MetaChanges`] naming the durable keys it touched. The
//! driver persists exactly those keys in one write transaction before answering the request
//! (see `store.rs`). A replicated PD will instead feed the same inputs through a Raft log;
//! that is why the state machine is deterministic: the same inputs in the same order give the
//! same state.
//!
//! # Durable and soft state
//!
//! Durable: node registrations (address, capacity), region descriptors with their last
//! accepted leader and term, the id allocator, the bootstrapped flag. Soft (rebuilt by
//! heartbeats after a restart): heartbeat times, node statistics (region and leader counts,
//! used bytes), approximate region sizes. Node statistics change with every heartbeat;
//! persisting them would cost a durable write per heartbeat for a value the next heartbeat
//! restores.
//! Heartbeat times are measured on the driver's monotonic clock, which does not survive a
//! restart, so a restored node counts as heard from at the moment of the restore.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::ops::Bound::{Excluded, Included, Unbounded};
use std::time::Duration;

use tessera_wire::{
    NodeId, NodeInfo, NodeState, NodeStats, Peer, PeerId, RegionDescriptor, RegionEpoch, RegionId, RegionRoute,
    RegionStats, SessionId,
};

/// How long a region's load must last before the scheduler acts on it (splits a hot
/// region, spreads hot regions): the minimum rate its leader reported over this window.
pub const HOT_WINDOW: Duration = Duration::from_secs(10);

/// The epoch of a region as PD bootstrapped it. Its replicas seed their state from it;
/// every membership change (adding a learner included) and every split leaves it.
pub const BOOTSTRAP_EPOCH: RegionEpoch = RegionEpoch { conf_ver: 1, version: 1 };

/// A node silent for longer than this gets no new replicas or leaders from the scheduler
/// (whatever `node_down_after` says for reporting it down).
pub const SCHEDULABLE_SILENCE: Duration = Duration::from_secs(5);

/// Policy knobs of the metadata state machine.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MetaConfig {
    /// Regions created at bootstrap (1..=256), split evenly by first key byte.
    pub initial_regions: u32,
    /// Replicas per region; bootstrap waits for this many registered, live nodes.
    pub replicas: usize,
    /// A node not heard from for longer than this is [`NodeState::Down`].
    pub node_down_after: Duration,
}

impl Default for MetaConfig {
    fn default() -> Self {
        MetaConfig { initial_regions: 1, replicas: 3, node_down_after: Duration::from_secs(30) }
    }
}

/// A metadata request that cannot be answered.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum MetaError {
    /// Fewer than `replicas` nodes have registered, so no region exists yet.
    #[error("cluster not bootstrapped")]
    NotBootstrapped,
    /// No region has this id.
    #[error("region {region_id} not found")]
    RegionNotFound {
        /// The id asked for.
        region_id: RegionId,
    },
    /// A heartbeat came from a node that never registered.
    #[error("node {node_id} is not registered")]
    NodeNotRegistered {
        /// The sender.
        node_id: NodeId,
    },
    /// No known region covers the key: a split is under way and the region now covering
    /// it has not reported yet. Transient.
    #[error("no region covers the key yet")]
    NoRegionForKey,
    /// A scan range with `start > end`.
    #[error("invalid key range: start is after end")]
    InvalidRange,
    /// The node still hosts replicas.
    #[error("node {node_id} still hosts {regions} replicas: drain it first (`tessera admin drain {node_id}`)")]
    NodeNotEmpty {
        /// The node.
        node_id: NodeId,
        /// Replicas it hosts.
        regions: u64,
    },
}

/// A node's durable registration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeRegistration {
    /// Node id.
    pub id: NodeId,
    /// Address to dial (`host:port`).
    pub addr: String,
    /// Capacity in bytes, as reported.
    pub capacity_bytes: u64,
    /// Being drained: its replicas move away and it receives none.
    pub draining: bool,
}

/// A region's durable placement: its descriptor and last accepted leader.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RegionPlacement {
    /// The descriptor with the newest accepted epoch.
    pub region: RegionDescriptor,
    /// The leader of the newest accepted term, if any was reported.
    pub leader: Option<Peer>,
    /// The Raft term of `leader` (0 before any report).
    pub term: u64,
}

/// Next ids to hand out. Ids start at 1 and are never reused, also across restarts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IdAllocatorState {
    /// Next region id.
    pub next_region: u64,
    /// Next peer id.
    pub next_peer: u64,
    /// Next session id.
    pub next_session: u64,
}

impl Default for IdAllocatorState {
    fn default() -> Self {
        IdAllocatorState { next_region: 1, next_peer: 1, next_session: 1 }
    }
}

/// Everything durable, as loaded from storage (or, later, a Raft snapshot).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PersistedMeta {
    /// Registered nodes.
    pub nodes: Vec<NodeRegistration>,
    /// Regions.
    pub regions: Vec<RegionPlacement>,
    /// Id allocator.
    pub allocator: IdAllocatorState,
    /// Whether bootstrap has happened.
    pub bootstrapped: bool,
}

/// Durable keys touched by a mutation. The driver writes the current value of each of them
/// (read back with [`ClusterMeta::node_registration`], [`ClusterMeta::region_placement`],
/// [`ClusterMeta::allocator`], [`ClusterMeta::is_bootstrapped`]) in one transaction.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[must_use = "changes must be persisted before the request is answered"]
pub struct MetaChanges {
    /// Node registrations written.
    pub nodes: BTreeSet<NodeId>,
    /// Region placements written.
    pub regions: BTreeSet<RegionId>,
    /// Regions removed (replaced by newer, overlapping regions).
    pub removed_regions: BTreeSet<RegionId>,
    /// The allocator changed.
    pub allocator: bool,
    /// The bootstrapped flag changed.
    pub cluster: bool,
}

impl MetaChanges {
    /// True when nothing durable changed: no write is needed.
    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
            && self.regions.is_empty()
            && self.removed_regions.is_empty()
            && !self.allocator
            && !self.cluster
    }

    pub(crate) fn merge(&mut self, other: MetaChanges) {
        self.nodes.extend(other.nodes);
        self.regions.extend(other.regions);
        for id in other.removed_regions {
            self.regions.remove(&id);
            self.removed_regions.insert(id);
        }
        self.allocator |= other.allocator;
        self.cluster |= other.cluster;
    }
}

/// What a node must create and destroy, from [`ClusterMeta::node_heartbeat`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NodeAssignments {
    /// Regions to create a replica of.
    pub create: Vec<RegionDescriptor>,
    /// Regions whose replica the node should destroy (PD's newest descriptor).
    pub destroy: Vec<RegionDescriptor>,
}

/// What [`ClusterMeta::region_heartbeat`] did with each report.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RegionReport {
    /// The report was current: statistics (and possibly descriptor or leader) updated.
    Accepted,
    /// Its epoch is older than (or incomparable to) what PD has, or an overlapping region
    /// has a newer range version: ignored.
    StaleEpoch,
    /// The named leader is not a peer of the region on the sending node: ignored.
    BadLeader,
}

#[derive(Debug, Clone)]
struct NodeEntry {
    addr: String,
    capacity_bytes: u64,
    draining: bool,
    last_heartbeat: Duration,
    stats: NodeStats,
    /// Soft: (when, host CPU busy share) of the heartbeats of the last [`HOT_WINDOW`] (and
    /// the one just before it).
    cpu_history: std::collections::VecDeque<(Duration, Option<u8>)>,
}

impl NodeEntry {
    fn new(addr: String, capacity_bytes: u64, draining: bool, now: Duration) -> NodeEntry {
        NodeEntry {
            addr,
            capacity_bytes,
            draining,
            last_heartbeat: now,
            stats: NodeStats::default(),
            cpu_history: Default::default(),
        }
    }

    /// The busiest its host was in its heartbeats of the last [`HOT_WINDOW`]: a host has
    /// time to spare for a load split only if it had it throughout, as a region is hot
    /// only if it was throughout (each share is itself the node's average over about as
    /// long). `None` if no heartbeat of the window told.
    fn sustained_host_busy(&self, now: Duration) -> Option<u8> {
        self.cpu_history.iter().filter(|(t, _)| *t + HOT_WINDOW > now).filter_map(|(_, busy)| *busy).max()
    }
}

#[derive(Debug, Clone)]
struct RegionEntry {
    region: RegionDescriptor,
    leader: Option<Peer>,
    term: u64,
    approximate_size: u64,
    approximate_keys: u64,
    /// Soft: learners, as the leader last reported.
    learners: Vec<Peer>,
    write_qps: u64,
    read_qps: u64,
    /// Soft: (when, writes/s, reads/s) of the leader reports of the last [`HOT_WINDOW`]
    /// (and the one just before it), for the load the region *sustained* over it.
    load_history: std::collections::VecDeque<(Duration, u64, u64)>,
    /// Soft: when PD first saw this range (bootstrap, a split, a restore).
    born: Duration,
    /// Soft: a leader reported the region since PD started, so `learners` is known.
    reported: bool,
    /// Soft: the region is prepared to merge, as its leader last reported.
    merging: Option<tessera_wire::MergeReport>,
}

impl RegionEntry {
    /// The (writes/s, reads/s) the region sustained over the last [`HOT_WINDOW`]: the
    /// smallest rates its leader reported in it, or zero if its reports do not cover the
    /// whole window yet. A burst shorter than the window is not load to split or spread.
    fn sustained_load(&self, now: Duration) -> (u64, u64) {
        match self.load_history.front() {
            Some((first, ..)) if *first + HOT_WINDOW <= now => {
                let mut w = self.load_history.iter().filter(|(t, ..)| *t + HOT_WINDOW > now).peekable();
                if w.peek().is_none() {
                    // The last report is older than the window: its rates are all we know.
                    return self.load_history.back().map_or((0, 0), |(_, w, r)| (*w, *r));
                }
                w.fold((u64::MAX, u64::MAX), |(mw, mr), (_, w, r)| (mw.min(*w), mr.min(*r)))
            }
            _ => (0, 0),
        }
    }

    fn new(region: RegionDescriptor, leader: Option<Peer>, term: u64, born: Duration) -> RegionEntry {
        RegionEntry {
            region,
            leader,
            term,
            approximate_size: 0,
            approximate_keys: 0,
            learners: Vec::new(),
            write_qps: 0,
            read_qps: 0,
            load_history: Default::default(),
            born,
            reported: false,
            merging: None,
        }
    }

    /// Voters and learners.
    fn hosts(&self, node: NodeId) -> Option<Peer> {
        self.region.peer_on(node).or_else(|| self.learners.iter().copied().find(|p| p.node_id == node))
    }
}

/// The placement driver's cluster metadata: nodes, regions, id allocator and bootstrap
/// state, as a deterministic state machine. Mutations return the [`MetaChanges`] to persist.
#[derive(Debug, Clone)]
pub struct ClusterMeta {
    config: MetaConfig,
    nodes: BTreeMap<NodeId, NodeEntry>,
    regions: BTreeMap<RegionId, RegionEntry>,
    /// Start key → region id. Invariant: the ranges of the indexed regions do not overlap,
    /// and every region in `regions` is indexed under its own start key.
    by_start: BTreeMap<Vec<u8>, RegionId>,
    alloc: IdAllocatorState,
    bootstrapped: bool,
    /// Soft: regions whose whole range a newer region covers (merged away) since PD
    /// started. A late report of one, or of one as split off another, is ignored: it
    /// must not come back into the routing table (and be taken for a region whose merge
    /// never committed).
    replaced: std::collections::HashSet<RegionId>,
    /// Soft: regions merged away that nodes still host, with the nodes hosting them (the
    /// source's voters) and those of these that applied the merge's commit.
    merged_away: BTreeMap<RegionId, MergedAway>,
}

/// See [`ClusterMeta::merged_away`].
#[derive(Debug, Clone, Default)]
struct MergedAway {
    /// The source's voters' nodes.
    hosts: BTreeSet<NodeId>,
    /// Those whose target absorbed the source, or that no longer host it.
    absorbed: BTreeSet<NodeId>,
    /// Those that no longer host it.
    gone: BTreeSet<NodeId>,
}

impl ClusterMeta {
    /// An empty, unbootstrapped cluster.
    pub fn new(config: MetaConfig) -> ClusterMeta {
        ClusterMeta {
            config,
            nodes: BTreeMap::new(),
            regions: BTreeMap::new(),
            by_start: BTreeMap::new(),
            alloc: IdAllocatorState::default(),
            bootstrapped: false,
            replaced: Default::default(),
            merged_away: Default::default(),
        }
    }

    /// Rebuilds the metadata from its durable part. Restored nodes count as heard from at
    /// `now`. The allocator is raised above every id in use, so a lost allocator update can
    /// never lead to reuse.
    pub fn restore(config: MetaConfig, state: PersistedMeta, now: Duration) -> ClusterMeta {
        let mut meta = ClusterMeta::new(config);
        for n in state.nodes {
            meta.nodes.insert(n.id, NodeEntry::new(n.addr, n.capacity_bytes, n.draining, now));
        }
        let mut alloc = state.allocator;
        for p in state.regions {
            alloc.next_region = alloc.next_region.max(p.region.id.0 + 1);
            for peer in &p.region.peers {
                alloc.next_peer = alloc.next_peer.max(peer.id.0 + 1);
            }
            meta.insert_region(RegionEntry::new(p.region, p.leader, p.term, now));
        }
        meta.alloc = alloc;
        meta.bootstrapped = state.bootstrapped;
        meta
    }

    /// The whole durable state (for tests and, later, Raft snapshots).
    pub fn snapshot(&self) -> PersistedMeta {
        PersistedMeta {
            nodes: self.nodes.keys().filter_map(|id| self.node_registration(*id)).collect(),
            regions: self.regions.keys().filter_map(|id| self.region_placement(*id)).collect(),
            allocator: self.alloc,
            bootstrapped: self.bootstrapped,
        }
    }

    /// The policy this state machine runs with.
    pub fn config(&self) -> &MetaConfig {
        &self.config
    }

    /// Whether the initial regions have been created.
    pub fn is_bootstrapped(&self) -> bool {
        self.bootstrapped
    }

    /// The allocator's next ids.
    pub fn allocator(&self) -> IdAllocatorState {
        self.alloc
    }

    /// A node's durable registration.
    pub fn node_registration(&self, id: NodeId) -> Option<NodeRegistration> {
        self.nodes.get(&id).map(|n| NodeRegistration {
            id,
            addr: n.addr.clone(),
            capacity_bytes: n.capacity_bytes,
            draining: n.draining,
        })
    }

    /// A region's durable placement.
    pub fn region_placement(&self, id: RegionId) -> Option<RegionPlacement> {
        self.regions.get(&id).map(|r| RegionPlacement { region: r.region.clone(), leader: r.leader, term: r.term })
    }

    /// Registers (or re-registers, after a restart or an address change) a node, and
    /// bootstraps the cluster if this brings the live nodes to `replicas`.
    pub fn register_node(&mut self, node_id: NodeId, addr: String, capacity_bytes: u64, now: Duration) -> MetaChanges {
        let mut changes = MetaChanges::default();
        match self.nodes.get_mut(&node_id) {
            Some(n) => {
                if n.addr != addr || n.capacity_bytes != capacity_bytes {
                    n.addr = addr;
                    n.capacity_bytes = capacity_bytes;
                    changes.nodes.insert(node_id);
                }
                n.last_heartbeat = now;
                // A node registers when it starts: a storage failure it reported was
                // before its restart.
                n.stats.storage_failure = None;
            }
            None => {
                self.nodes.insert(node_id, NodeEntry::new(addr, capacity_bytes, false, now));
                changes.nodes.insert(node_id);
            }
        }
        changes.merge(self.maybe_bootstrap(now));
        changes
    }

    /// Creates the initial regions once `replicas` live nodes are registered.
    ///
    /// Rule: `initial_regions` = N regions split at the single-byte keys `[(256*i/N) as u8]`
    /// for `i` in `1..N`; the first starts at `b""`, the last is unbounded. Peers are placed
    /// round-robin over the live nodes sorted by id, continuing from region to region, so
    /// the `replicas` peers of a region are on distinct nodes (with exactly `replicas` nodes,
    /// every node hosts a peer of every region). Epochs start at `{conf_ver: 1, version: 1}`.
    fn maybe_bootstrap(&mut self, now: Duration) -> MetaChanges {
        let mut changes = MetaChanges::default();
        if self.bootstrapped {
            return changes;
        }
        let live: Vec<NodeId> =
            self.nodes.iter().filter(|(_, n)| self.state_of(n, now) == NodeState::Up).map(|(id, _)| *id).collect();
        let replicas = self.config.replicas;
        if replicas == 0 || live.len() < replicas {
            return changes;
        }
        let splits = split_keys(self.config.initial_regions);
        let mut bounds: Vec<Vec<u8>> = vec![Vec::new()];
        bounds.extend(splits);
        bounds.push(Vec::new());
        let mut cursor = 0usize;
        for w in bounds.windows(2) {
            let id = RegionId(self.alloc.next_region);
            self.alloc.next_region += 1;
            let mut peers = Vec::with_capacity(replicas);
            for _ in 0..replicas {
                let node_id = live[cursor % live.len()];
                cursor += 1;
                peers.push(Peer { id: PeerId(self.alloc.next_peer), node_id });
                self.alloc.next_peer += 1;
            }
            let region =
                RegionDescriptor { id, start_key: w[0].clone(), end_key: w[1].clone(), epoch: BOOTSTRAP_EPOCH, peers };
            self.insert_region(RegionEntry::new(region, None, 0, now));
            changes.regions.insert(id);
        }
        self.bootstrapped = true;
        changes.allocator = true;
        changes.cluster = true;
        tracing::info!(regions = changes.regions.len(), replicas, "cluster bootstrapped");
        changes
    }

    /// Records a node heartbeat. Returns the regions the node must host (it has a voter or
    /// a learner in them) but did not list in `hosted`, and the regions it listed that no
    /// longer have a replica on it. A learner's region is sent with the learner among its
    /// `peers` (the node needs its own peer id; the replica adopts the real descriptor from
    /// the leader's snapshot). Regions whose learners PD does not know yet (no leader report
    /// since PD started) are never sent to be destroyed. Changes nothing durable.
    pub fn node_heartbeat(
        &mut self,
        node_id: NodeId,
        stats: NodeStats,
        hosted: &[RegionId],
        now: Duration,
    ) -> Result<NodeAssignments, MetaError> {
        let node = self.nodes.get_mut(&node_id).ok_or(MetaError::NodeNotRegistered { node_id })?;
        if stats.storage_failure.is_some() {
            // The node serves nothing until restarted: it is down from its last healthy
            // heartbeat on (so its replicas move after `max_down_time` from then), and it
            // is told to create or destroy nothing.
            if node.stats.storage_failure.is_none() {
                tracing::warn!(
                    node_id = node_id.0,
                    reason = stats.storage_failure.as_deref().unwrap_or_default(),
                    "node reports its storage failed; counting it down"
                );
            }
            node.stats = stats;
            return Ok(NodeAssignments::default());
        }
        node.last_heartbeat = now;
        node.cpu_history.push_back((now, stats.host_cpu_busy_pct));
        while node.cpu_history.len() > 1 && node.cpu_history[1].0 + HOT_WINDOW <= now {
            node.cpu_history.pop_front();
        }
        node.stats = stats;
        let hosted_set: HashSet<RegionId> = hosted.iter().copied().collect();
        let mut create = Vec::new();
        for r in self.regions.values() {
            if hosted_set.contains(&r.region.id) {
                continue;
            }
            if r.region.peer_on(node_id).is_some() {
                create.push(r.region.clone());
            } else if let Some(learner) = r.learners.iter().find(|p| p.node_id == node_id) {
                // A replica of a region at the bootstrap epoch seeds the region's initial
                // state itself, as one of its voters: a learner waits until the leader's
                // report of the membership change that added it (which raises `conf_ver`),
                // and then starts empty and receives a snapshot.
                if r.region.epoch == BOOTSTRAP_EPOCH {
                    continue;
                }
                let mut desc = r.region.clone();
                desc.peers.push(*learner);
                create.push(desc);
            }
        }
        let destroy = hosted
            .iter()
            .filter_map(|id| self.regions.get(id))
            .filter(|r| r.reported && r.hosts(node_id).is_none())
            .map(|r| r.region.clone())
            .collect();
        Ok(NodeAssignments { create, destroy })
    }

    /// Applies region heartbeats sent by `node_id` for the regions it leads (see
    /// [`ClusterMeta::region_heartbeat`]); `now` dates regions first seen here.
    ///
    /// A report is ignored when its epoch is older than (or incomparable to) the stored one,
    /// or when an overlapping region with a different id has a range version at least as
    /// new. Otherwise: a newer epoch replaces the stored descriptor (and removes overlapped
    /// older regions, e.g. the parent of a split); the leader is updated when the report's
    /// term is at least the known term; the size statistics are always updated. The leader
    /// must be a peer of the reported region on `node_id`.
    pub fn region_heartbeat(
        &mut self,
        node_id: NodeId,
        reports: &[RegionStats],
        now: Duration,
    ) -> Result<(Vec<RegionReport>, MetaChanges), MetaError> {
        let node = self.nodes.get_mut(&node_id).ok_or(MetaError::NodeNotRegistered { node_id })?;
        node.last_heartbeat = now;
        let mut changes = MetaChanges::default();
        let outcomes = reports.iter().map(|r| self.apply_region_report(node_id, r, now, &mut changes)).collect();
        Ok((outcomes, changes))
    }

    fn apply_region_report(
        &mut self,
        node_id: NodeId,
        report: &RegionStats,
        now: Duration,
        changes: &mut MetaChanges,
    ) -> RegionReport {
        let region_id = report.region.id;
        if report.leader.node_id != node_id || report.region.peer(report.leader.id) != Some(report.leader) {
            tracing::warn!(node_id = node_id.0, region_id = region_id.0, "region heartbeat names a foreign leader");
            return RegionReport::BadLeader;
        }
        if self.replaced.contains(&region_id) {
            tracing::debug!(node_id = node_id.0, region_id = region_id.0, "report of a replaced region ignored");
            return RegionReport::StaleEpoch;
        }
        let stored_epoch = self.regions.get(&region_id).map(|e| e.region.epoch);
        if let Some(epoch) = stored_epoch {
            if report.region.epoch.is_stale_against(&epoch) {
                tracing::debug!(node_id = node_id.0, region_id = region_id.0, "stale region heartbeat ignored");
                return RegionReport::StaleEpoch;
            }
        }
        let descriptor_changed = stored_epoch != Some(report.region.epoch);
        if descriptor_changed {
            let overlapping = self.overlapping(&report.region.start_key, &report.region.end_key);
            let others: Vec<RegionId> = overlapping.into_iter().filter(|id| *id != region_id).collect();
            if others.iter().any(|id| self.regions[id].region.epoch.version >= report.region.epoch.version) {
                tracing::debug!(node_id = node_id.0, region_id = region_id.0, "region heartbeat overlaps newer region");
                return RegionReport::StaleEpoch;
            }
            for id in others {
                // Covered whole (not just overlapped, as a split's parent is by the half that
                // reports first): merged away, for good.
                let other = &self.regions[&id].region;
                let covers = report.region.start_key <= other.start_key
                    && (report.region.end_key.is_empty()
                        || (!other.end_key.is_empty() && other.end_key <= report.region.end_key));
                if covers {
                    self.replaced.insert(id);
                }
                self.remove_region(id);
                changes.regions.remove(&id);
                changes.removed_regions.insert(id);
                tracing::info!(region_id = id.0, "region replaced by a newer overlapping region");
            }
            let old = self.remove_region(region_id);
            let (leader, term) = old.as_ref().map_or((None, 0), |e| (e.leader, e.term));
            // A newer epoch may drop the old leader from the peers.
            let leader = leader.filter(|l| report.region.peer(l.id) == Some(*l));
            // A new range (a split's halves) is born now; a membership change keeps the age.
            let born = match &old {
                Some(e) if e.region.epoch.version == report.region.epoch.version => e.born,
                _ => now,
            };
            self.insert_region(RegionEntry::new(report.region.clone(), leader, term, born));
            changes.regions.insert(region_id);
            tracing::info!(region_id = region_id.0, "region descriptor updated");
        }
        let entry = self.regions.get_mut(&region_id).expect("inserted or present above");
        if report.term >= entry.term && (entry.leader != Some(report.leader) || entry.term != report.term) {
            entry.leader = Some(report.leader);
            entry.term = report.term;
            changes.regions.insert(region_id);
            tracing::debug!(
                region_id = region_id.0,
                term = report.term,
                peer = report.leader.id.0,
                "region leader updated"
            );
        }
        entry.approximate_size = report.approximate_size;
        entry.approximate_keys = report.approximate_keys;
        entry.learners = report.learners.clone();
        entry.write_qps = report.write_qps;
        entry.read_qps = report.read_qps;
        entry.load_history.push_back((now, report.write_qps, report.read_qps));
        // Keep the window, plus the newest report older than it (it shows the window is
        // covered).
        while entry.load_history.len() > 1 && entry.load_history[1].0 + HOT_WINDOW <= now {
            entry.load_history.pop_front();
        }
        entry.reported = true;
        entry.merging = report.merging.clone();
        // Halves split off this region, before their own leaders report: fill the gap
        // they leave in the routing table (without a leader yet).
        for child in &report.split_off {
            if self.regions.contains_key(&child.id)
                || self.replaced.contains(&child.id)
                || !self.overlapping(&child.start_key, &child.end_key).is_empty()
            {
                continue;
            }
            self.insert_region(RegionEntry::new(child.clone(), None, 0, now));
            changes.regions.insert(child.id);
            tracing::info!(region_id = child.id.0, parent = region_id.0, "split-off region learned from its parent");
        }
        RegionReport::Accepted
    }

    /// Records which regions merged away `node_id` still hosts (`hosted`) and which of
    /// those its targets absorbed (`merged`, as the node's source replicas describe them),
    /// and returns those the node may destroy now: the ones every node hosting them has
    /// reported absorbed. Until then a merged-away region's group keeps running (frozen),
    /// so that a replica of it that has the prepare in its log but not the news that it
    /// committed still learns it (its node's target waits for that before applying the
    /// commit). A node that no longer hosts such a region, or was removed, no longer
    /// counts. Soft state: the nodes report again after a PD restart.
    pub fn merged_reports(
        &mut self,
        node_id: NodeId,
        hosted: &[RegionId],
        merged: &[RegionDescriptor],
    ) -> Vec<RegionId> {
        for d in merged {
            let entry = self.merged_away.entry(d.id).or_insert_with(|| MergedAway {
                hosts: d.peers.iter().map(|p| p.node_id).collect(),
                ..MergedAway::default()
            });
            entry.absorbed.insert(node_id);
        }
        let nodes = &self.nodes;
        self.merged_away.retain(|id, m| {
            if !hosted.contains(id) {
                m.absorbed.insert(node_id);
                m.gone.insert(node_id);
            } else if !merged.iter().any(|d| d.id == *id) {
                // It hosts it and no longer reports it absorbed (it restarted and lost
                // the commit): it needs the others again.
                m.absorbed.remove(&node_id);
            }
            m.hosts.retain(|n| nodes.contains_key(n));
            !m.hosts.is_subset(&m.gone)
        });
        merged
            .iter()
            .map(|d| d.id)
            .filter(|id| self.merged_away.get(id).is_some_and(|m| m.hosts.is_subset(&m.absorbed)))
            .collect()
    }

    /// The merge state of `id` as its leader last reported it: `Some` while prepared.
    pub fn merging(&self, id: RegionId) -> Option<&tessera_wire::MergeReport> {
        self.regions.get(&id)?.merging.as_ref()
    }

    /// Regions prepared to merge, with their merge state.
    pub fn prepared_merges(&self) -> Vec<(RegionDescriptor, tessera_wire::MergeReport)> {
        self.regions.values().filter_map(|e| Some((e.region.clone(), e.merging.clone()?))).collect()
    }

    /// The region whose range ends where `region`'s starts (its left neighbour), if known.
    pub fn left_neighbour(&self, region: &RegionDescriptor) -> Option<RegionId> {
        if region.start_key.is_empty() {
            return None;
        }
        let (_, id) = self.by_start.range::<[u8], _>((Unbounded, Excluded(region.start_key.as_slice()))).next_back()?;
        (self.regions[id].region.end_key == region.start_key).then_some(*id)
    }

    /// The region containing `key`.
    pub fn get_region(&self, key: &[u8]) -> Result<RegionRoute, MetaError> {
        self.check_bootstrapped()?;
        // A miss is a gap: a region split and the half covering `key` has not reported yet.
        let (_, id) =
            self.by_start.range::<[u8], _>((Unbounded, Included(key))).next_back().ok_or(MetaError::NoRegionForKey)?;
        let entry = &self.regions[id];
        if !entry.region.contains(key) {
            return Err(MetaError::NoRegionForKey);
        }
        Ok(self.route(entry))
    }

    /// A region by id.
    pub fn get_region_by_id(&self, region_id: RegionId) -> Result<RegionRoute, MetaError> {
        self.check_bootstrapped()?;
        self.regions.get(&region_id).map(|e| self.route(e)).ok_or(MetaError::RegionNotFound { region_id })
    }

    /// Regions overlapping `[start, end)` (empty `end`: unbounded) in key order, at most
    /// `limit` of them (0: no limit).
    pub fn scan_regions(&self, start: &[u8], end: &[u8], limit: u32) -> Result<Vec<RegionRoute>, MetaError> {
        self.check_bootstrapped()?;
        if !end.is_empty() && start > end {
            return Err(MetaError::InvalidRange);
        }
        let limit = if limit == 0 { usize::MAX } else { limit as usize };
        Ok(self.overlapping(start, end).into_iter().take(limit).map(|id| self.route(&self.regions[&id])).collect())
    }

    /// All nodes with their liveness at `now`.
    pub fn nodes(&self, now: Duration) -> Vec<NodeInfo> {
        self.nodes
            .iter()
            .map(|(id, n)| NodeInfo {
                id: *id,
                addr: n.addr.clone(),
                capacity_bytes: n.capacity_bytes,
                state: self.state_of(n, now),
                last_heartbeat_ms_ago: millis(now.saturating_sub(n.last_heartbeat)),
                region_count: n.stats.region_count,
                leader_count: n.stats.leader_count,
                used_bytes: n.stats.used_bytes,
                write_path: n.stats.write_path,
                draining: n.draining,
                web_cert_hash: n.stats.web_cert_hash.clone(),
                host_cpu_busy_pct: n.stats.host_cpu_busy_pct,
                storage_failure: n.stats.storage_failure.clone(),
            })
            .collect()
    }

    /// Every region in key order with its roles and statistics.
    pub fn region_infos(&self) -> Vec<tessera_wire::RegionInfo> {
        self.by_start
            .values()
            .map(|id| {
                let e = &self.regions[id];
                tessera_wire::RegionInfo {
                    region: e.region.clone(),
                    learners: e.learners.clone(),
                    leader: e.leader,
                    approximate_size: e.approximate_size,
                    approximate_keys: e.approximate_keys,
                }
            })
            .collect()
    }

    /// The cluster as the scheduler sees it at `now` (without operators in flight).
    ///
    /// Replica and leader counts per node come from the routing table, which every leader
    /// report updates at once, rather than from the nodes' own heartbeats, which lag a
    /// membership change by up to a heartbeat: a balancer counting from those would move
    /// replicas it already moved.
    pub fn scheduler_snapshot(&self, now: Duration) -> crate::scheduler::ClusterSnapshot {
        use crate::scheduler::{ClusterSnapshot, NodeView, RegionView};
        let mut replicas: BTreeMap<NodeId, u64> = BTreeMap::new();
        let mut leaders: BTreeMap<NodeId, u64> = BTreeMap::new();
        for e in self.regions.values() {
            for p in e.region.peers.iter().chain(&e.learners) {
                *replicas.entry(p.node_id).or_default() += 1;
            }
            if let Some(l) = e.leader {
                *leaders.entry(l.node_id).or_default() += 1;
            }
        }
        let nodes = self
            .nodes
            .iter()
            .map(|(id, n)| {
                // The scheduler counts a node as up only while it heartbeats: a node silent
                // for a few heartbeats gets no new replica or leader, long before it is
                // reported down.
                let silence = now.saturating_sub(n.last_heartbeat);
                let up = self.state_of(n, now) == NodeState::Up && silence <= SCHEDULABLE_SILENCE;
                NodeView {
                    id: *id,
                    up,
                    down_for_ms: if up { 0 } else { millis(silence) },
                    draining: n.draining,
                    region_count: replicas.get(id).copied().unwrap_or(0),
                    leader_count: leaders.get(id).copied().unwrap_or(0),
                    used_bytes: n.stats.used_bytes,
                    capacity_bytes: n.capacity_bytes,
                    host_cpu_busy_pct: n.sustained_host_busy(now),
                }
            })
            .collect();
        let regions = self
            .regions
            .values()
            .map(|e| RegionView {
                descriptor: e.region.clone(),
                learners: e.learners.clone(),
                leader: e.leader,
                approximate_size: e.approximate_size,
                approximate_keys: e.approximate_keys,
                write_qps: e.sustained_load(now).0,
                read_qps: e.sustained_load(now).1,
                since_split_ms: millis(now.saturating_sub(e.born)),
            })
            .collect();
        ClusterSnapshot { nodes, regions, in_flight: Vec::new() }
    }

    /// The region's learners and leader, as last reported.
    pub fn region_roles(&self, id: RegionId) -> Option<(&RegionDescriptor, &[Peer], Option<Peer>)> {
        self.regions.get(&id).map(|e| (&e.region, e.learners.as_slice(), e.leader))
    }

    /// A fresh peer id.
    pub fn alloc_peer(&mut self) -> (PeerId, MetaChanges) {
        let id = PeerId(self.alloc.next_peer);
        self.alloc.next_peer += 1;
        (id, MetaChanges { allocator: true, ..MetaChanges::default() })
    }

    /// A fresh region id.
    pub fn alloc_region(&mut self) -> (RegionId, MetaChanges) {
        let id = RegionId(self.alloc.next_region);
        self.alloc.next_region += 1;
        (id, MetaChanges { allocator: true, ..MetaChanges::default() })
    }

    /// Marks `node_id` as draining (or not).
    pub fn set_draining(&mut self, node_id: NodeId, draining: bool) -> Result<MetaChanges, MetaError> {
        let node = self.nodes.get_mut(&node_id).ok_or(MetaError::NodeNotRegistered { node_id })?;
        let mut changes = MetaChanges::default();
        if node.draining != draining {
            node.draining = draining;
            changes.nodes.insert(node_id);
        }
        Ok(changes)
    }

    /// Forgets `node_id`. Refused while a region has a replica on it or the node last
    /// reported hosting any.
    pub fn remove_node(&mut self, node_id: NodeId) -> Result<MetaChanges, MetaError> {
        let node = self.nodes.get(&node_id).ok_or(MetaError::NodeNotRegistered { node_id })?;
        let hosting = self.regions.values().filter(|r| r.hosts(node_id).is_some()).count() as u64;
        if hosting > 0 || node.stats.region_count > 0 {
            return Err(MetaError::NodeNotEmpty { node_id, regions: hosting.max(node.stats.region_count) });
        }
        self.nodes.remove(&node_id);
        let mut changes = MetaChanges::default();
        changes.nodes.insert(node_id);
        Ok(changes)
    }

    /// A fresh session id, never handed out before.
    pub fn alloc_session(&mut self) -> (SessionId, MetaChanges) {
        let id = SessionId(self.alloc.next_session);
        self.alloc.next_session += 1;
        (id, MetaChanges { allocator: true, ..MetaChanges::default() })
    }

    /// Approximate size and key count last reported for a region.
    pub fn region_size(&self, region_id: RegionId) -> Option<(u64, u64)> {
        self.regions.get(&region_id).map(|e| (e.approximate_size, e.approximate_keys))
    }

    fn check_bootstrapped(&self) -> Result<(), MetaError> {
        if self.bootstrapped {
            Ok(())
        } else {
            Err(MetaError::NotBootstrapped)
        }
    }

    fn state_of(&self, n: &NodeEntry, now: Duration) -> NodeState {
        if n.stats.storage_failure.is_some() || now.saturating_sub(n.last_heartbeat) > self.config.node_down_after {
            NodeState::Down
        } else {
            NodeState::Up
        }
    }

    fn route(&self, e: &RegionEntry) -> RegionRoute {
        RegionRoute {
            region: e.region.clone(),
            leader: e.leader,
            peer_addrs: e
                .region
                .peers
                .iter()
                .map(|p| self.nodes.get(&p.node_id).map(|n| n.addr.clone()).unwrap_or_default())
                .collect(),
        }
    }

    /// Ids of the regions overlapping `[start, end)`, in key order.
    fn overlapping(&self, start: &[u8], end: &[u8]) -> Vec<RegionId> {
        let mut out = Vec::new();
        if let Some((_, id)) = self.by_start.range::<[u8], _>((Unbounded, Excluded(start))).next_back() {
            let r = &self.regions[id].region;
            if r.end_key.is_empty() || r.end_key.as_slice() > start {
                out.push(*id);
            }
        }
        for (k, id) in self.by_start.range::<[u8], _>((Included(start), Unbounded)) {
            if !end.is_empty() && k.as_slice() >= end {
                break;
            }
            out.push(*id);
        }
        out
    }

    fn insert_region(&mut self, e: RegionEntry) {
        self.by_start.insert(e.region.start_key.clone(), e.region.id);
        self.regions.insert(e.region.id, e);
    }

    fn remove_region(&mut self, id: RegionId) -> Option<RegionEntry> {
        let e = self.regions.remove(&id)?;
        if self.by_start.get(&e.region.start_key) == Some(&id) {
            self.by_start.remove(&e.region.start_key);
        }
        Some(e)
    }
}

/// The bootstrap split keys for `n` regions: `[(256*i/n) as u8]` for `i` in `1..n`.
pub fn split_keys(n: u32) -> Vec<Vec<u8>> {
    let n = u64::from(n.max(1));
    (1..n).map(|i| vec![(256 * i / n) as u8]).collect()
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: Duration = Duration::from_secs(1);

    fn config(regions: u32) -> MetaConfig {
        MetaConfig { initial_regions: regions, replicas: 3, node_down_after: Duration::from_secs(30) }
    }

    fn register(meta: &mut ClusterMeta, ids: &[u64], now: Duration) -> MetaChanges {
        let mut all = MetaChanges::default();
        for id in ids {
            all.merge(meta.register_node(NodeId(*id), format!("127.0.0.1:{}", 7000 + id), 1 << 30, now));
        }
        all
    }

    fn bootstrapped(regions: u32) -> ClusterMeta {
        let mut meta = ClusterMeta::new(config(regions));
        let _ = register(&mut meta, &[1, 2, 3], S);
        meta
    }

    fn stats(region: &RegionDescriptor, leader_node: u64, term: u64) -> RegionStats {
        let leader = region.peer_on(NodeId(leader_node)).unwrap();
        RegionStats { approximate_size: 10, approximate_keys: 1, ..RegionStats::new(region.clone(), leader, term) }
    }

    #[test]
    fn bootstrap_waits_for_replicas_nodes() {
        let mut meta = ClusterMeta::new(config(4));
        let c = register(&mut meta, &[1, 2], S);
        assert!(!meta.is_bootstrapped());
        assert!(c.regions.is_empty() && !c.cluster);
        assert_eq!(meta.get_region(b"a"), Err(MetaError::NotBootstrapped));
        assert_eq!(meta.scan_regions(b"", b"", 0), Err(MetaError::NotBootstrapped));

        let c = register(&mut meta, &[3], S);
        assert!(meta.is_bootstrapped());
        assert!(c.cluster && c.allocator);
        assert_eq!(c.regions.len(), 4);
        assert_eq!(meta.scan_regions(b"", b"", 0).unwrap().len(), 4);
    }

    #[test]
    fn bootstrap_happens_once() {
        let mut meta = bootstrapped(2);
        let c = register(&mut meta, &[4, 5, 6], S);
        assert!(c.regions.is_empty() && !c.cluster);
        assert_eq!(meta.scan_regions(b"", b"", 0).unwrap().len(), 2);
    }

    #[test]
    fn bootstrap_ignores_down_nodes() {
        let mut meta = ClusterMeta::new(config(1));
        let _ = register(&mut meta, &[1, 2], S);
        // Node 1 and 2 are down by the time node 3 registers.
        let _ = register(&mut meta, &[3], S + Duration::from_secs(60));
        assert!(!meta.is_bootstrapped());
        let _ = register(&mut meta, &[1, 2], S + Duration::from_secs(61));
        assert!(meta.is_bootstrapped());
    }

    #[test]
    fn split_points_spread_by_first_byte() {
        assert!(split_keys(1).is_empty());
        assert_eq!(split_keys(2), vec![vec![128u8]]);
        assert_eq!(split_keys(4), vec![vec![64u8], vec![128], vec![192]]);
        let all = split_keys(256);
        assert_eq!(all.len(), 255);
        assert!(all.windows(2).all(|w| w[0] < w[1]));

        let meta = bootstrapped(4);
        let routes = meta.scan_regions(b"", b"", 0).unwrap();
        let ranges: Vec<(Vec<u8>, Vec<u8>)> =
            routes.iter().map(|r| (r.region.start_key.clone(), r.region.end_key.clone())).collect();
        assert_eq!(
            ranges,
            vec![(vec![], vec![64]), (vec![64], vec![128]), (vec![128], vec![192]), (vec![192], vec![]),]
        );
        for r in &routes {
            assert_eq!(r.region.epoch, RegionEpoch { conf_ver: 1, version: 1 });
        }
        assert_eq!(meta.get_region(b"").unwrap().region.start_key, Vec::<u8>::new());
        assert_eq!(meta.get_region(&[63, 255]).unwrap().region.end_key, vec![64]);
        assert_eq!(meta.get_region(&[64]).unwrap().region.start_key, vec![64]);
        assert_eq!(meta.get_region(&[255, 255, 255]).unwrap().region.start_key, vec![192]);
    }

    #[test]
    fn peers_are_on_distinct_nodes_with_fresh_ids() {
        let meta = bootstrapped(8);
        let routes = meta.scan_regions(b"", b"", 0).unwrap();
        let mut peer_ids = BTreeSet::new();
        let mut region_ids = BTreeSet::new();
        for r in &routes {
            assert!(region_ids.insert(r.region.id));
            let nodes: BTreeSet<NodeId> = r.region.peers.iter().map(|p| p.node_id).collect();
            assert_eq!(nodes, [NodeId(1), NodeId(2), NodeId(3)].into_iter().collect());
            for p in &r.region.peers {
                assert!(peer_ids.insert(p.id), "peer id reused");
            }
            let addrs: Vec<String> =
                r.region.peers.iter().map(|p| format!("127.0.0.1:{}", 7000 + p.node_id.0)).collect();
            assert_eq!(r.peer_addrs, addrs);
        }
    }

    #[test]
    fn peers_distinct_with_more_nodes_than_replicas() {
        // Four registered nodes, not yet bootstrapped (as after a restart), replicas = 3.
        let nodes = (1..=4)
            .map(|i| NodeRegistration { id: NodeId(i), addr: format!("h{i}:1"), capacity_bytes: 1, draining: false })
            .collect();
        let state = PersistedMeta { nodes, ..PersistedMeta::default() };
        let mut meta = ClusterMeta::restore(config(5), state, S);
        assert!(!meta.is_bootstrapped());
        let _ = meta.register_node(NodeId(4), "h4:1".into(), 1, S);
        assert!(meta.is_bootstrapped());
        let mut per_node = BTreeMap::<NodeId, usize>::new();
        for r in meta.scan_regions(b"", b"", 0).unwrap() {
            let nodes: BTreeSet<NodeId> = r.region.peers.iter().map(|p| p.node_id).collect();
            assert_eq!(nodes.len(), 3, "peers of {} share a node", r.region.id);
            for n in nodes {
                *per_node.entry(n).or_default() += 1;
            }
        }
        // 5 regions x 3 peers round-robin over 4 nodes: 4, 4, 4, 3.
        assert_eq!(per_node.values().copied().collect::<Vec<_>>(), vec![4, 4, 4, 3]);
    }

    #[test]
    fn node_heartbeat_returns_unhosted_regions() {
        let mut meta = bootstrapped(3);
        let all: Vec<RegionId> = meta.scan_regions(b"", b"", 0).unwrap().iter().map(|r| r.region.id).collect();
        let assigned = meta.node_heartbeat(NodeId(2), NodeStats::default(), &all[..1], 2 * S).unwrap();
        let ids: Vec<RegionId> = assigned.create.iter().map(|r| r.id).collect();
        assert_eq!(ids, all[1..].to_vec());
        assert!(assigned.destroy.is_empty());
        assert_eq!(
            meta.node_heartbeat(NodeId(2), NodeStats::default(), &all, 2 * S).unwrap(),
            NodeAssignments::default()
        );
        assert_eq!(
            meta.node_heartbeat(NodeId(9), NodeStats::default(), &[], 2 * S),
            Err(MetaError::NodeNotRegistered { node_id: NodeId(9) })
        );
    }

    #[test]
    fn a_learner_is_sent_its_region_only_once_the_region_left_the_bootstrap_epoch() {
        // Replicas of a region at the bootstrap epoch seed its initial state as voters: a
        // learner that did so would seed a membership it is not a voter of, and replay.
        let mut meta = bootstrapped(1);
        let _ = meta.register_node(NodeId(4), "h4:1".into(), 1, S);
        let region = meta.get_region(b"k").unwrap().region;
        assert_eq!(region.epoch, BOOTSTRAP_EPOCH);
        let learner = Peer { id: PeerId(100), node_id: NodeId(4) };
        let report = |desc: &RegionDescriptor| RegionStats { learners: vec![learner], ..stats(desc, 1, 2) };
        let _ = meta.region_heartbeat(NodeId(1), &[report(&region)], 2 * S).unwrap();
        let assigned = meta.node_heartbeat(NodeId(4), NodeStats::default(), &[], 2 * S).unwrap();
        assert!(assigned.create.is_empty(), "not while the epoch is the bootstrap one: {assigned:?}");
        // The leader applied the membership entry that added the learner.
        let mut changed = region.clone();
        changed.epoch.conf_ver = 8;
        let _ = meta.region_heartbeat(NodeId(1), &[report(&changed)], 3 * S).unwrap();
        let assigned = meta.node_heartbeat(NodeId(4), NodeStats::default(), &[], 3 * S).unwrap();
        assert_eq!(assigned.create.len(), 1);
        assert_eq!(assigned.create[0].epoch, changed.epoch);
        assert!(assigned.create[0].peers.contains(&learner), "the learner finds its peer id");
    }

    #[test]
    fn stale_epoch_heartbeat_is_ignored() {
        let mut meta = bootstrapped(1);
        let region = meta.get_region(b"k").unwrap().region;
        let mut newer = region.clone();
        newer.epoch.conf_ver = 2;
        let (out, changes) = meta.region_heartbeat(NodeId(1), &[stats(&newer, 1, 5)], 2 * S).unwrap();
        assert_eq!(out, vec![RegionReport::Accepted]);
        assert!(changes.regions.contains(&region.id));

        // The old epoch, even with a higher term, changes nothing.
        let (out, changes) = meta.region_heartbeat(NodeId(2), &[stats(&region, 2, 9)], 2 * S).unwrap();
        assert_eq!(out, vec![RegionReport::StaleEpoch]);
        assert!(changes.is_empty());
        let route = meta.get_region(b"k").unwrap();
        assert_eq!(route.region.epoch.conf_ver, 2);
        assert_eq!(route.leader.unwrap().node_id, NodeId(1));
        assert_eq!(meta.region_placement(region.id).unwrap().term, 5);
    }

    #[test]
    fn leader_updates_only_on_newer_or_equal_term() {
        let mut meta = bootstrapped(1);
        let region = meta.get_region(b"k").unwrap().region;
        let _ = meta.region_heartbeat(NodeId(1), &[stats(&region, 1, 3)], 2 * S).unwrap();
        assert_eq!(meta.get_region(b"k").unwrap().leader.unwrap().node_id, NodeId(1));

        // Older term: ignored for the leader, but still accepted (epoch is current).
        let (out, changes) = meta.region_heartbeat(NodeId(2), &[stats(&region, 2, 2)], 2 * S).unwrap();
        assert_eq!(out, vec![RegionReport::Accepted]);
        assert!(changes.is_empty());
        assert_eq!(meta.get_region(b"k").unwrap().leader.unwrap().node_id, NodeId(1));

        // Newer term: new leader, persisted.
        let (_, changes) = meta.region_heartbeat(NodeId(2), &[stats(&region, 2, 4)], 2 * S).unwrap();
        assert!(changes.regions.contains(&region.id));
        assert_eq!(meta.get_region(b"k").unwrap().leader.unwrap().node_id, NodeId(2));
        assert_eq!(meta.region_placement(region.id).unwrap().term, 4);

        // Same leader, same term: nothing durable changes, statistics do.
        let mut s = stats(&region, 2, 4);
        s.approximate_size = 99;
        let (_, changes) = meta.region_heartbeat(NodeId(2), &[s], 2 * S).unwrap();
        assert!(changes.is_empty());
        assert_eq!(meta.region_size(region.id), Some((99, 1)));
    }

    #[test]
    fn foreign_leader_is_rejected() {
        let mut meta = bootstrapped(1);
        let region = meta.get_region(b"k").unwrap().region;
        // Node 1 claims node 2's peer leads.
        let (out, changes) = meta.region_heartbeat(NodeId(1), &[stats(&region, 2, 3)], 2 * S).unwrap();
        assert_eq!(out, vec![RegionReport::BadLeader]);
        assert!(changes.is_empty());
        assert_eq!(meta.get_region(b"k").unwrap().leader, None);
    }

    #[test]
    fn split_report_replaces_parent() {
        let mut meta = bootstrapped(1);
        let parent = meta.get_region(b"k").unwrap().region;
        let mut right = parent.clone();
        right.id = RegionId(100);
        right.start_key = b"m".to_vec();
        right.epoch.version = 2;
        let mut left = parent.clone();
        left.end_key = b"m".to_vec();
        left.epoch.version = 2;

        let (out, changes) = meta.region_heartbeat(NodeId(1), &[stats(&right, 1, 1)], 2 * S).unwrap();
        assert_eq!(out, vec![RegionReport::Accepted]);
        assert!(changes.removed_regions.contains(&parent.id));
        assert!(changes.regions.contains(&RegionId(100)));
        assert_eq!(meta.get_region(b"z").unwrap().region.id, RegionId(100));
        // Until the left half reports, its range is a gap.
        assert_eq!(meta.get_region(b"a"), Err(MetaError::NoRegionForKey));

        let (out, _) = meta.region_heartbeat(NodeId(1), &[stats(&left, 1, 1)], 2 * S).unwrap();
        assert_eq!(out, vec![RegionReport::Accepted]);
        assert_eq!(meta.get_region(b"a").unwrap().region.id, parent.id);
        assert_eq!(meta.scan_regions(b"", b"", 0).unwrap().len(), 2);

        // The parent's old descriptor can no longer come back.
        let (out, _) = meta.region_heartbeat(NodeId(1), &[stats(&parent, 1, 9)], 2 * S).unwrap();
        assert_eq!(out, vec![RegionReport::StaleEpoch]);
    }

    #[test]
    fn a_parent_report_fills_the_gap_of_its_split_off_half_until_that_half_reports() {
        let mut meta = bootstrapped(1);
        let parent = meta.get_region(b"k").unwrap().region;
        let mut left = parent.clone();
        left.end_key = b"m".to_vec();
        left.epoch.version = 2;
        let mut right = parent.clone();
        right.id = RegionId(100);
        right.start_key = b"m".to_vec();
        right.epoch.version = 2;
        let mut report = stats(&left, 1, 1);
        report.split_off = vec![right.clone()];
        let (out, changes) = meta.region_heartbeat(NodeId(1), &[report.clone()], 2 * S).unwrap();
        assert_eq!(out, vec![RegionReport::Accepted]);
        assert!(changes.regions.contains(&RegionId(100)), "the half is persisted");
        let route = meta.get_region(b"z").unwrap();
        assert_eq!((route.region.id, route.leader), (RegionId(100), None), "routed, leader unknown");
        // The half's own report (a later membership change) wins; the parent's stale copy
        // of it changes nothing.
        let mut moved = right.clone();
        moved.epoch.conf_ver += 1;
        let _ = meta.region_heartbeat(NodeId(1), &[stats(&moved, 1, 1)], 2 * S).unwrap();
        let _ = meta.region_heartbeat(NodeId(1), &[report], 2 * S).unwrap();
        assert_eq!(meta.get_region(b"z").unwrap().region.epoch, moved.epoch);
    }

    #[test]
    fn scan_regions_respects_range_and_limit() {
        let meta = bootstrapped(4);
        let ids = |v: Vec<RegionRoute>| v.into_iter().map(|r| r.region.start_key).collect::<Vec<_>>();
        assert_eq!(ids(meta.scan_regions(&[70], &[130], 0).unwrap()), vec![vec![64], vec![128]]);
        assert_eq!(ids(meta.scan_regions(&[64], &[128], 0).unwrap()), vec![vec![64]]);
        assert_eq!(ids(meta.scan_regions(b"", b"", 2).unwrap()), vec![vec![], vec![64]]);
        assert_eq!(ids(meta.scan_regions(&[200], b"", 0).unwrap()), vec![vec![192]]);
        assert_eq!(meta.scan_regions(&[9], &[1], 0), Err(MetaError::InvalidRange));
    }

    #[test]
    fn get_region_by_id_unknown_is_not_found() {
        let meta = bootstrapped(1);
        assert_eq!(meta.get_region_by_id(RegionId(77)), Err(MetaError::RegionNotFound { region_id: RegionId(77) }));
        let id = meta.get_region(b"").unwrap().region.id;
        assert_eq!(meta.get_region_by_id(id).unwrap().region.id, id);
    }

    #[test]
    fn node_goes_down_after_threshold() {
        let mut meta = bootstrapped(1);
        let state = |meta: &ClusterMeta, id: u64, now: Duration| {
            meta.nodes(now).into_iter().find(|n| n.id == NodeId(id)).unwrap().state
        };
        assert_eq!(state(&meta, 1, S + Duration::from_secs(30)), NodeState::Up);
        assert_eq!(state(&meta, 1, S + Duration::from_secs(31)), NodeState::Down);
        meta.node_heartbeat(NodeId(1), NodeStats::default(), &[], S + Duration::from_secs(40)).unwrap();
        assert_eq!(state(&meta, 1, S + Duration::from_secs(41)), NodeState::Up);
        assert_eq!(state(&meta, 2, S + Duration::from_secs(41)), NodeState::Down);
        let info = meta.nodes(S + Duration::from_secs(41));
        assert_eq!(info[0].last_heartbeat_ms_ago, 1000);
    }

    #[test]
    fn a_node_reporting_a_storage_failure_is_down_at_once_and_assigned_nothing() {
        let mut meta = bootstrapped(2);
        let secs = |n: u64| S + Duration::from_secs(n);
        let node = |meta: &ClusterMeta, now: Duration| meta.nodes(now).into_iter().find(|n| n.id == NodeId(2)).unwrap();
        let view = |meta: &ClusterMeta, now: Duration| {
            meta.scheduler_snapshot(now).nodes.into_iter().find(|n| n.id == NodeId(2)).unwrap()
        };
        // Healthy, hosting nothing yet: told to create both regions.
        let healthy = meta.node_heartbeat(NodeId(2), NodeStats::default(), &[], secs(5)).unwrap();
        assert_eq!(healthy.create.len(), 2);
        assert_eq!(node(&meta, secs(6)).state, NodeState::Up);

        let failed = NodeStats { storage_failure: Some("No space left on device".into()), ..NodeStats::default() };
        let answer = meta.node_heartbeat(NodeId(2), failed.clone(), &[], secs(7)).unwrap();
        assert_eq!(answer, NodeAssignments::default(), "a failed node is told to create or destroy nothing");
        let info = node(&meta, secs(8));
        assert_eq!(info.state, NodeState::Down, "down at once, long before the silence threshold");
        assert_eq!(info.storage_failure.as_deref(), Some("No space left on device"));
        // Its reports keep coming, but its down time runs from its last healthy heartbeat.
        let _ = meta.node_heartbeat(NodeId(2), failed, &[], secs(20)).unwrap();
        assert_eq!(node(&meta, secs(21)).last_heartbeat_ms_ago, 16_000);
        let v = view(&meta, secs(21));
        assert!(!v.up);
        assert_eq!(v.down_for_ms, 16_000);

        // Restarted with space: it registers, which clears the failure, and is up again.
        let _ = meta.register_node(NodeId(2), "127.0.0.1:7002".into(), 1 << 30, secs(30));
        let info = node(&meta, secs(30));
        assert_eq!((info.state, info.storage_failure), (NodeState::Up, None));
        assert!(view(&meta, secs(30)).up);
    }

    #[test]
    fn heartbeat_host_cpu_reaches_the_scheduler() {
        let mut meta = bootstrapped(1);
        let busy = |meta: &ClusterMeta, id: u64, at: Duration| {
            let snapshot = meta.scheduler_snapshot(at);
            snapshot.nodes.iter().find(|n| n.id == NodeId(id)).unwrap().host_cpu_busy_pct
        };
        let report = |meta: &mut ClusterMeta, busy: Option<u8>, at: Duration| {
            let stats = NodeStats { host_cpu_busy_pct: busy, ..NodeStats::default() };
            meta.node_heartbeat(NodeId(2), stats, &[], at).unwrap();
        };
        let t = 2 * S;
        assert_eq!(busy(&meta, 2, t), None, "nothing reported yet");
        report(&mut meta, Some(93), t);
        assert_eq!(busy(&meta, 2, t), Some(93));
        assert_eq!(busy(&meta, 1, t), None, "another node's report stays its own");
        // The busiest share of the last 10 s counts: a dip does not make the host spare.
        let s = Duration::from_secs(1);
        report(&mut meta, Some(50), t + s);
        report(&mut meta, None, t + 2 * s);
        assert_eq!(busy(&meta, 2, t + 2 * s), Some(93));
        // 10 s after it, the busy report has left the window.
        report(&mut meta, Some(60), t + 10 * s);
        assert_eq!(busy(&meta, 2, t + 10 * s), Some(60));
        // A node that stopped telling (its host's counters went backwards, say) for the
        // whole window is unknown again.
        report(&mut meta, None, t + 21 * s);
        assert_eq!(busy(&meta, 2, t + 21 * s), None);
        // Soft state: a restart forgets it.
        report(&mut meta, Some(99), t + 22 * s);
        let restored = ClusterMeta::restore(config(1), meta.snapshot(), t + 22 * s);
        assert_eq!(busy(&restored, 2, t + 22 * s), None);
    }

    #[test]
    fn heartbeat_used_bytes_shows_in_node_list() {
        let mut meta = bootstrapped(1);
        let used = |meta: &ClusterMeta, id: u64| {
            meta.nodes(2 * S).into_iter().find(|n| n.id == NodeId(id)).unwrap().used_bytes
        };
        assert_eq!(used(&meta, 2), 0, "nothing reported yet");
        let stats = NodeStats { region_count: 1, leader_count: 1, used_bytes: 12_345, ..NodeStats::default() };
        meta.node_heartbeat(NodeId(2), stats, &[], 2 * S).unwrap();
        assert_eq!(used(&meta, 2), 12_345);
        assert_eq!(used(&meta, 1), 0, "another node's report stays its own");

        // The next heartbeat replaces the value, also with a smaller one.
        let stats = NodeStats { used_bytes: 7, ..NodeStats::default() };
        meta.node_heartbeat(NodeId(2), stats, &[], 2 * S).unwrap();
        assert_eq!(used(&meta, 2), 7);

        // Soft state: a restart forgets it until the node's next heartbeat.
        let restored = ClusterMeta::restore(config(1), meta.snapshot(), 2 * S);
        assert_eq!(used(&restored, 2), 0);
    }

    #[test]
    fn id_allocator_never_reuses_after_restart() {
        let mut meta = bootstrapped(2);
        let (s1, c) = meta.alloc_session();
        assert!(c.allocator);
        let (s2, _) = meta.alloc_session();
        assert!(s2 > s1);
        let before = meta.snapshot();
        let max_region = before.regions.iter().map(|r| r.region.id).max().unwrap();
        let max_peer = before.regions.iter().flat_map(|r| r.region.peers.iter().map(|p| p.id)).max().unwrap();

        let mut restored = ClusterMeta::restore(config(2), before.clone(), Duration::ZERO);
        assert_eq!(restored.snapshot(), before);
        let (s3, _) = restored.alloc_session();
        assert!(s3 > s2);
        assert!(restored.allocator().next_region > max_region.0);
        assert!(restored.allocator().next_peer > max_peer.0);

        // Even an allocator that lags behind the regions (lost update) is raised.
        let mut lagging = before;
        lagging.allocator = IdAllocatorState::default();
        let restored = ClusterMeta::restore(config(2), lagging, Duration::ZERO);
        assert!(restored.allocator().next_region > max_region.0);
        assert!(restored.allocator().next_peer > max_peer.0);
    }

    #[test]
    fn restored_nodes_count_as_heard_from_at_restore() {
        let meta = bootstrapped(1);
        let restored = ClusterMeta::restore(config(1), meta.snapshot(), Duration::from_secs(5));
        assert!(restored.is_bootstrapped());
        assert!(restored.nodes(Duration::from_secs(6)).iter().all(|n| n.state == NodeState::Up));
    }

    #[test]
    fn a_merged_region_is_destroyed_only_once_every_node_hosting_it_absorbed_it() {
        let mut meta = bootstrapped(1);
        let source = meta.get_region(b"k").unwrap().region;
        let (s, none) = (source.id, Vec::<RegionDescriptor>::new());
        let merged = vec![source.clone()];
        // Node 1 absorbed it; nodes 2 and 3 still host it without having absorbed it.
        assert!(meta.merged_reports(NodeId(1), &[s], &merged).is_empty());
        assert!(meta.merged_reports(NodeId(2), &[s], &none).is_empty());
        assert!(meta.merged_reports(NodeId(2), &[s], &merged).is_empty());
        assert_eq!(meta.merged_reports(NodeId(3), &[s], &merged), vec![s], "the last to absorb it may destroy it");
        assert_eq!(meta.merged_reports(NodeId(1), &[s], &merged), vec![s]);
        // A node that destroyed it no longer counts; the others are still told.
        assert!(meta.merged_reports(NodeId(3), &[], &none).is_empty());
        assert_eq!(meta.merged_reports(NodeId(2), &[s], &merged), vec![s]);
        // A PD that learns of it late (a restart) counts the nodes that no longer host it.
        let mut meta = bootstrapped(1);
        assert!(meta.merged_reports(NodeId(2), &[s], &merged).is_empty());
        assert!(meta.merged_reports(NodeId(1), &[], &none).is_empty());
        assert!(meta.merged_reports(NodeId(3), &[], &none).is_empty());
        assert_eq!(meta.merged_reports(NodeId(2), &[s], &merged), vec![s]);
    }
}
