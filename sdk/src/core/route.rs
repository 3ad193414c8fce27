//! The routing cache: which region holds a key, who leads it, where its peers live.
//!
//! Regions are kept in a `BTreeMap` keyed by start key; a lookup takes the last region
//! starting at or before the key and checks that its range contains the key.
//!
//! Invariants:
//! - Cached ranges never overlap, and `ids` indexes exactly the cached regions.
//! - A stale descriptor never evicts a newer one. Two descriptors of the same region are
//!   ordered by their whole epoch ([`tessera_wire::RegionEpoch::is_stale_against`]); descriptors of
//!   *different* regions whose ranges overlap are ordered by `epoch.version`, which every
//!   split and merge increases on the regions it produces, so of two overlapping ranges the
//!   later one in history has the larger version. Equal versions: the newcomer wins.
//! - `peer_addrs` is aligned with `descriptor.peers`.
//!
//! Invalidated ranges are remembered (bounded) as hints so that concurrent misses on the
//! keys of one invalidated region share a single PD lookup ([`RegionCache::lookup_key`]).

use std::collections::{BTreeMap, HashMap};
use std::ops::Bound::{Excluded, Included, Unbounded};

use tessera_wire::{LeaderHint, NodeId, Peer, RegionDescriptor, RegionId, RegionRoute};

use super::lookup::LookupKey;

/// Most invalidated ranges remembered for lookup merging.
const MAX_TOMBSTONES: usize = 1024;

/// A cached region: its descriptor, believed leader and its peers' node addresses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CachedRegion {
    /// The region as last learned.
    pub descriptor: RegionDescriptor,
    /// The leader, when known. `None`: try the peers in turn.
    pub leader: Option<Peer>,
    /// Address of the node hosting each peer, aligned with `descriptor.peers`.
    pub peer_addrs: Vec<String>,
}

impl CachedRegion {
    /// From a PD route.
    pub fn from_route(route: RegionRoute) -> Self {
        CachedRegion { descriptor: route.region, leader: route.leader, peer_addrs: route.peer_addrs }
    }

    /// The region id.
    pub fn id(&self) -> RegionId {
        self.descriptor.id
    }

    /// Address of the node hosting `peer`, if `peer` is one of the region's peers.
    pub fn addr_of(&self, peer: Peer) -> Option<&str> {
        let idx = self.descriptor.peers.iter().position(|p| *p == peer)?;
        self.peer_addrs.get(idx).map(String::as_str).filter(|a| !a.is_empty())
    }

    /// The leader and its address, when both are known.
    pub fn leader_target(&self) -> Option<(Peer, &str)> {
        let leader = self.leader?;
        Some((leader, self.addr_of(leader)?))
    }

    /// The replica to send to: the leader when known and not suspect, otherwise the peers
    /// in turn starting at `attempt`, skipping suspect addresses unless all are suspect.
    /// The flag is true when the choice is a guess rather than the known leader.
    pub fn choose_target(&self, attempt: u32, suspect: impl Fn(&str) -> bool) -> Option<(Peer, &str, bool)> {
        if let Some((peer, addr)) = self.leader_target() {
            if !suspect(addr) {
                return Some((peer, addr, false));
            }
        }
        let n = self.descriptor.peers.len();
        let candidates = (0..n).filter_map(|i| {
            let peer = self.descriptor.peers[(attempt as usize + i) % n];
            Some((peer, self.addr_of(peer)?))
        });
        let mut first = None;
        for (peer, addr) in candidates {
            if !suspect(addr) {
                return Some((peer, addr, Some(peer) != self.leader));
            }
            first.get_or_insert((peer, addr));
        }
        first.map(|(peer, addr)| (peer, addr, Some(peer) != self.leader))
    }
}

/// Cached regions covering a key range, in key order, up to the first gap.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct RangeCover {
    /// Regions covering `[start, gap)` (or the whole range when `gap` is `None`).
    pub regions: Vec<CachedRegion>,
    /// The first key of the range no cached region covers.
    pub gap: Option<Vec<u8>>,
}

/// A change to the cache decided by the retry logic ([`crate::core::retry`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CacheUpdate {
    /// The region's leader is the hinted peer, at the hinted address.
    SetLeader {
        /// Region.
        region_id: RegionId,
        /// Leader hint from the server.
        hint: LeaderHint,
    },
    /// The leader is unknown (unreachable or deposed): try the peers in turn.
    ClearLeader(RegionId),
    /// Forget the region; the next request looks it up in PD.
    Invalidate(RegionId),
    /// Replace cached regions with these current descriptors.
    Replace(Vec<RegionDescriptor>),
}

/// The routing cache.
#[derive(Debug, Clone, Default)]
pub struct RegionCache {
    regions: BTreeMap<Vec<u8>, CachedRegion>,
    ids: HashMap<RegionId, Vec<u8>>,
    node_addrs: HashMap<NodeId, String>,
    tombstones: BTreeMap<Vec<u8>, (RegionId, Vec<u8>)>,
}

fn ranges_overlap(s1: &[u8], e1: &[u8], s2: &[u8], e2: &[u8]) -> bool {
    (e2.is_empty() || s1 < e2) && (e1.is_empty() || s2 < e1)
}

impl RegionCache {
    /// An empty cache.
    pub fn new() -> Self {
        Self::default()
    }

    /// Number of cached regions.
    pub fn len(&self) -> usize {
        self.regions.len()
    }

    /// True when nothing is cached.
    pub fn is_empty(&self) -> bool {
        self.regions.is_empty()
    }

    /// All cached regions in key order.
    pub fn iter(&self) -> impl Iterator<Item = &CachedRegion> {
        self.regions.values()
    }

    /// The cached region containing `key`.
    pub fn get(&self, key: &[u8]) -> Option<&CachedRegion> {
        let (_, r) = self.regions.range::<[u8], _>((Unbounded, Included(key))).next_back()?;
        r.descriptor.contains(key).then_some(r)
    }

    /// The cached region containing the keys just below `key`, for reverse scans: the one
    /// with `start_key < key <= end_key`. An empty `key` means "the top of the key space".
    pub fn get_before(&self, key: &[u8]) -> Option<&CachedRegion> {
        if key.is_empty() {
            let (_, r) = self.regions.iter().next_back()?;
            return r.descriptor.end_key.is_empty().then_some(r);
        }
        let (_, r) = self.regions.range::<[u8], _>((Unbounded, Excluded(key))).next_back()?;
        let end = &r.descriptor.end_key;
        (end.is_empty() || key <= end.as_slice()).then_some(r)
    }

    /// The cached region with this id.
    pub fn by_id(&self, id: RegionId) -> Option<&CachedRegion> {
        self.regions.get(self.ids.get(&id)?)
    }

    /// The address of `node`, as learned from routes and hints.
    pub fn node_addr(&self, node: NodeId) -> Option<&str> {
        self.node_addrs.get(&node).map(String::as_str)
    }

    /// What concurrent misses for `key` should share: the invalidated region the key was
    /// last known to be in, or else the key itself.
    pub fn lookup_key(&self, key: &[u8]) -> LookupKey {
        if let Some((start, (id, end))) = self.tombstones.range::<[u8], _>((Unbounded, Included(key))).next_back() {
            if tessera_wire::key_in_range(key, start, end) {
                return LookupKey::Region(*id);
            }
        }
        LookupKey::Key(key.to_vec())
    }

    /// Start keys of cached regions overlapping `[start, end)` (empty `end`: unbounded).
    fn overlapping(&self, start: &[u8], end: &[u8]) -> Vec<Vec<u8>> {
        let mut out = Vec::new();
        if let Some((s, r)) = self.regions.range::<[u8], _>((Unbounded, Excluded(start))).next_back() {
            if ranges_overlap(start, end, &r.descriptor.start_key, &r.descriptor.end_key) {
                out.push(s.clone());
            }
        }
        for (s, _) in self.regions.range::<[u8], _>((Included(start), Unbounded)) {
            if !end.is_empty() && s.as_slice() >= end {
                break;
            }
            out.push(s.clone());
        }
        out
    }

    /// Would `new` be refused because a cached descriptor is newer?
    fn is_outdated(&self, new: &RegionDescriptor, overlapping: &[Vec<u8>]) -> bool {
        let newer_same_id = self.by_id(new.id).is_some_and(|c| new.epoch.is_stale_against(&c.descriptor.epoch));
        newer_same_id
            || overlapping.iter().any(|s| {
                let c = &self.regions[s].descriptor;
                if c.id == new.id {
                    new.epoch.is_stale_against(&c.epoch)
                } else {
                    c.epoch.version > new.epoch.version
                }
            })
    }

    fn remove_start(&mut self, start: &[u8]) -> Option<CachedRegion> {
        let r = self.regions.remove(start)?;
        self.ids.remove(&r.descriptor.id);
        Some(r)
    }

    fn learn_addrs(&mut self, r: &CachedRegion) {
        for (peer, addr) in r.descriptor.peers.iter().zip(&r.peer_addrs) {
            if !addr.is_empty() {
                self.node_addrs.insert(peer.node_id, addr.clone());
            }
        }
    }

    fn clear_tombstones(&mut self, start: &[u8], end: &[u8]) {
        let dead: Vec<Vec<u8>> = self
            .tombstones
            .iter()
            .filter(|(s, (_, e))| ranges_overlap(start, end, s, e))
            .map(|(s, _)| s.clone())
            .collect();
        for s in dead {
            self.tombstones.remove(&s);
        }
    }

    fn add_tombstone(&mut self, r: &RegionDescriptor) {
        if self.tombstones.len() >= MAX_TOMBSTONES {
            self.tombstones.pop_first();
        }
        self.clear_tombstones(&r.start_key, &r.end_key);
        self.tombstones.insert(r.start_key.clone(), (r.id, r.end_key.clone()));
    }

    /// Inserts `region`, evicting the cached regions it overlaps, unless one of them (or a
    /// cached descriptor of the same id) is newer: then nothing changes and `false` is
    /// returned. Re-inserting the same epoch refreshes it, keeping a known leader when the
    /// newcomer has none.
    pub fn insert(&mut self, mut region: CachedRegion) -> bool {
        let (start, end) = (region.descriptor.start_key.clone(), region.descriptor.end_key.clone());
        if !end.is_empty() && start >= end {
            return false;
        }
        let overlapping = self.overlapping(&start, &end);
        if self.is_outdated(&region.descriptor, &overlapping) {
            return false;
        }
        if let Some(old_start) = self.ids.get(&region.descriptor.id).cloned() {
            let old = self.remove_start(&old_start);
            if let Some(old) = old {
                let keep_leader = region.leader.is_none() && old.descriptor.epoch == region.descriptor.epoch;
                if keep_leader {
                    region.leader = old.leader.filter(|l| region.descriptor.peers.contains(l));
                }
            }
        }
        for s in overlapping {
            self.remove_start(&s);
        }
        self.learn_addrs(&region);
        self.clear_tombstones(&start, &end);
        self.ids.insert(region.descriptor.id, start.clone());
        self.regions.insert(start, region);
        true
    }

    /// Inserts `region` without the epoch check, evicting whatever it overlaps. For tests
    /// that need a deliberately stale route; never used by the client itself.
    #[doc(hidden)]
    pub fn force_insert(&mut self, region: CachedRegion) {
        let d = &region.descriptor;
        let mut doomed = self.overlapping(&d.start_key, &d.end_key);
        doomed.extend(self.ids.get(&d.id).cloned());
        for s in doomed {
            self.remove_start(&s);
        }
        self.learn_addrs(&region);
        self.clear_tombstones(&region.descriptor.start_key.clone(), &region.descriptor.end_key.clone());
        self.ids.insert(region.descriptor.id, region.descriptor.start_key.clone());
        self.regions.insert(region.descriptor.start_key.clone(), region);
    }

    /// Records `peer` as the region's leader. If `peer` is not one of the cached peers the
    /// descriptor is outdated: the region is invalidated and `false` returned.
    pub fn update_leader(&mut self, region_id: RegionId, peer: Peer) -> bool {
        let Some(start) = self.ids.get(&region_id).cloned() else {
            return false;
        };
        let r = self.regions.get_mut(&start).expect("ids indexes cached regions");
        if r.descriptor.peers.contains(&peer) {
            r.leader = Some(peer);
            true
        } else {
            self.invalidate(region_id);
            false
        }
    }

    /// [`RegionCache::update_leader`] from a server hint, also recording the address.
    pub fn update_leader_hint(&mut self, region_id: RegionId, hint: &LeaderHint) -> bool {
        if !self.update_leader(region_id, hint.peer) {
            return false;
        }
        if !hint.addr.is_empty() {
            self.node_addrs.insert(hint.peer.node_id, hint.addr.clone());
            let start = &self.ids[&region_id];
            let r = self.regions.get_mut(start).expect("ids indexes cached regions");
            if let Some(idx) = r.descriptor.peers.iter().position(|p| *p == hint.peer) {
                if let Some(slot) = r.peer_addrs.get_mut(idx) {
                    *slot = hint.addr.clone();
                }
            }
        }
        true
    }

    /// Forgets the region's leader (keeps the region).
    pub fn clear_leader(&mut self, region_id: RegionId) {
        if let Some(start) = self.ids.get(&region_id) {
            if let Some(r) = self.regions.get_mut(start) {
                r.leader = None;
            }
        }
    }

    /// Forgets the region. Its range is remembered as a lookup-merging hint.
    pub fn invalidate(&mut self, region_id: RegionId) {
        if let Some(start) = self.ids.get(&region_id).cloned() {
            if let Some(r) = self.remove_start(&start) {
                self.add_tombstone(&r.descriptor);
            }
        }
    }

    /// Applies the regions an `EpochNotMatch` carried. Each descriptor is inserted under the
    /// usual epoch rule, with addresses from the node address book and, as the leader, the
    /// peer on the node that led an overlapping cached region (after a split the leader
    /// usually stays put). A descriptor with a peer of unknown address is not cached; the
    /// stale regions it overlaps are invalidated instead so the next request asks PD.
    pub fn replace_from(&mut self, current: Vec<RegionDescriptor>) {
        // Guess leaders from the cache as it was, before any descriptor replaces anything.
        let leader_nodes: Vec<Option<NodeId>> = current
            .iter()
            .map(|d| {
                self.overlapping(&d.start_key, &d.end_key)
                    .iter()
                    .chain(self.ids.get(&d.id))
                    .filter_map(|s| self.regions.get(s))
                    .find_map(|r| r.leader.map(|l| l.node_id))
            })
            .collect();
        for (d, leader_node) in current.into_iter().zip(leader_nodes) {
            let overlapping = self.overlapping(&d.start_key, &d.end_key);
            if self.is_outdated(&d, &overlapping) {
                continue;
            }
            let leader = leader_node.and_then(|n| d.peer_on(n));
            let addrs: Option<Vec<String>> = d.peers.iter().map(|p| self.node_addrs.get(&p.node_id).cloned()).collect();
            match addrs {
                Some(peer_addrs) => {
                    self.insert(CachedRegion { descriptor: d, leader, peer_addrs });
                }
                None => {
                    let mut stale: Vec<RegionId> = overlapping.iter().map(|s| self.regions[s].descriptor.id).collect();
                    stale.push(d.id);
                    for id in stale {
                        self.invalidate(id);
                    }
                }
            }
        }
    }

    /// Applies one update decided by the retry logic.
    pub fn apply(&mut self, update: CacheUpdate) {
        match update {
            CacheUpdate::SetLeader { region_id, hint } => {
                self.update_leader_hint(region_id, &hint);
            }
            CacheUpdate::ClearLeader(id) => self.clear_leader(id),
            CacheUpdate::Invalidate(id) => self.invalidate(id),
            CacheUpdate::Replace(current) => self.replace_from(current),
        }
    }

    /// The cached regions covering `[start, end)` (empty `end`: unbounded) in key order, up
    /// to the first key no cached region covers.
    pub fn regions_for_range(&self, start: &[u8], end: &[u8]) -> RangeCover {
        let mut cover = RangeCover::default();
        let mut key = start.to_vec();
        loop {
            let Some(r) = self.get(&key) else {
                cover.gap = Some(key);
                return cover;
            };
            let next = r.descriptor.end_key.clone();
            cover.regions.push(r.clone());
            if next.is_empty() || (!end.is_empty() && next.as_slice() >= end) {
                return cover;
            }
            key = next;
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use proptest::prelude::*;
    use tessera_wire::{PeerId, RegionEpoch};

    pub(crate) fn desc(id: u64, start: &[u8], end: &[u8], conf_ver: u64, version: u64) -> RegionDescriptor {
        RegionDescriptor {
            id: RegionId(id),
            start_key: start.to_vec(),
            end_key: end.to_vec(),
            epoch: RegionEpoch { conf_ver, version },
            peers: (1..=3).map(|n| Peer { id: PeerId(id * 10 + n), node_id: NodeId(n) }).collect(),
        }
    }

    pub(crate) fn cached(d: RegionDescriptor) -> CachedRegion {
        let peer_addrs = d.peers.iter().map(|p| format!("node{}:1", p.node_id.0)).collect();
        CachedRegion { leader: Some(d.peers[0]), descriptor: d, peer_addrs }
    }

    #[test]
    fn lookup_respects_range_ends() {
        let mut c = RegionCache::new();
        assert!(c.insert(cached(desc(1, b"", b"m", 1, 1))));
        assert!(c.insert(cached(desc(2, b"m", b"t", 1, 1))));
        assert_eq!(c.get(b"a").unwrap().id(), RegionId(1));
        assert_eq!(c.get(b"m").unwrap().id(), RegionId(2));
        assert!(c.get(b"t").is_none(), "gap after t");
        assert_eq!(c.get_before(b"m").unwrap().id(), RegionId(1));
        assert_eq!(c.get_before(b"t").unwrap().id(), RegionId(2));
        assert!(c.get_before(b"").is_none(), "no region reaches the top");
    }

    #[test]
    fn stale_descriptor_does_not_evict_newer_split() {
        let mut c = RegionCache::new();
        assert!(c.insert(cached(desc(1, b"", b"m", 1, 2))));
        assert!(c.insert(cached(desc(2, b"m", b"", 1, 2))));
        // The pre-split descriptor arrives late (e.g. from a slow PD answer).
        assert!(!c.insert(cached(desc(1, b"", b"", 1, 1))));
        assert_eq!(c.len(), 2);
        assert_eq!(c.get(b"z").unwrap().id(), RegionId(2));
    }

    #[test]
    fn newer_descriptor_replaces_overlapping_older_ones() {
        let mut c = RegionCache::new();
        assert!(c.insert(cached(desc(1, b"", b"m", 1, 2))));
        assert!(c.insert(cached(desc(2, b"m", b"", 1, 2))));
        assert!(c.insert(cached(desc(1, b"", b"", 1, 3)))); // merge
        assert_eq!(c.len(), 1);
        assert!(c.by_id(RegionId(2)).is_none());
    }

    #[test]
    fn same_epoch_refresh_keeps_known_leader() {
        let mut c = RegionCache::new();
        let d = desc(1, b"", b"", 1, 1);
        let mut r = cached(d.clone());
        r.leader = Some(d.peers[2]);
        c.insert(r);
        let mut fresh = cached(d.clone());
        fresh.leader = None;
        assert!(c.insert(fresh));
        assert_eq!(c.get(b"k").unwrap().leader, Some(d.peers[2]));
    }

    #[test]
    fn leader_hint_for_unknown_peer_invalidates() {
        let mut c = RegionCache::new();
        let d = desc(1, b"", b"", 1, 1);
        c.insert(cached(d.clone()));
        let hint = LeaderHint { peer: Peer { id: PeerId(99), node_id: NodeId(9) }, addr: "n9:1".into() };
        assert!(!c.update_leader_hint(RegionId(1), &hint));
        assert!(c.get(b"k").is_none());
        assert_eq!(c.lookup_key(b"k"), LookupKey::Region(RegionId(1)));
    }

    #[test]
    fn leader_hint_updates_leader_and_address() {
        let mut c = RegionCache::new();
        let d = desc(1, b"", b"", 1, 1);
        c.insert(cached(d.clone()));
        let hint = LeaderHint { peer: d.peers[1], addr: "moved:7".into() };
        assert!(c.update_leader_hint(RegionId(1), &hint));
        let r = c.get(b"k").unwrap();
        assert_eq!(r.leader_target(), Some((d.peers[1], "moved:7")));
        assert_eq!(c.node_addr(d.peers[1].node_id), Some("moved:7"));
    }

    #[test]
    fn replace_from_installs_split_halves_with_leader_guess() {
        let mut c = RegionCache::new();
        let old = desc(1, b"", b"", 1, 1);
        let mut r = cached(old.clone());
        r.leader = Some(old.peers[1]);
        c.insert(r);
        let left = desc(1, b"", b"m", 1, 2);
        let right = desc(2, b"m", b"", 1, 2);
        c.replace_from(vec![left.clone(), right.clone()]);
        assert_eq!(c.get(b"a").unwrap().descriptor, left);
        assert_eq!(c.get(b"x").unwrap().descriptor, right);
        assert_eq!(c.get(b"x").unwrap().leader.unwrap().node_id, old.peers[1].node_id);
        assert_eq!(c.get(b"x").unwrap().peer_addrs, vec!["node1:1", "node2:1", "node3:1"]);
    }

    #[test]
    fn replace_from_with_unknown_address_invalidates_stale_range() {
        let mut c = RegionCache::new();
        c.insert(cached(desc(1, b"", b"", 1, 1)));
        let mut moved = desc(1, b"", b"m", 2, 2);
        moved.peers[0].node_id = NodeId(42);
        c.replace_from(vec![moved]);
        assert!(c.get(b"a").is_none());
        assert_eq!(c.lookup_key(b"a"), LookupKey::Region(RegionId(1)));
    }

    #[test]
    fn regions_for_range_stops_at_first_gap() {
        let mut c = RegionCache::new();
        c.insert(cached(desc(1, b"", b"c", 1, 1)));
        c.insert(cached(desc(2, b"c", b"f", 1, 1)));
        c.insert(cached(desc(3, b"h", b"", 1, 1)));
        let cover = c.regions_for_range(b"a", b"e");
        assert_eq!(cover.regions.iter().map(|r| r.id().0).collect::<Vec<_>>(), vec![1, 2]);
        assert_eq!(cover.gap, None);
        let cover = c.regions_for_range(b"a", b"");
        assert_eq!(cover.regions.len(), 2);
        assert_eq!(cover.gap, Some(b"f".to_vec()));
    }

    #[test]
    fn suspect_leader_is_skipped_for_a_live_peer_unless_all_are_suspect() {
        let region = CachedRegion {
            descriptor: RegionDescriptor {
                id: RegionId(1),
                start_key: vec![],
                end_key: vec![],
                epoch: RegionEpoch { conf_ver: 1, version: 1 },
                peers: (1..=3).map(|i| Peer { id: PeerId(i), node_id: NodeId(i) }).collect(),
            },
            leader: Some(Peer { id: PeerId(1), node_id: NodeId(1) }),
            peer_addrs: vec!["n1".into(), "n2".into(), "n3".into()],
        };
        let (p, a, guessed) = region.choose_target(0, |_| false).unwrap();
        assert_eq!((p.id, a, guessed), (PeerId(1), "n1", false));
        let (p, a, guessed) = region.choose_target(0, |a| a == "n1").unwrap();
        assert_eq!((p.id, a, guessed), (PeerId(2), "n2", true));
        let (p, _, _) = region.choose_target(2, |a| a == "n1").unwrap();
        assert_eq!(p.id, PeerId(3));
        let (p, a, _) = region.choose_target(0, |_| true).unwrap();
        assert_eq!((p.id, a), (PeerId(1), "n1"), "with every peer suspect, try anyway");
    }

    #[test]
    fn peers_tried_round_robin_when_leader_unknown() {
        let d = desc(1, b"", b"", 1, 1);
        let mut r = cached(d.clone());
        r.leader = None;
        assert_eq!(r.leader_target(), None);
        let tried: Vec<(Peer, bool)> = (0..4)
            .map(|a| {
                let (peer, _, guessed) = r.choose_target(a, |_| false).unwrap();
                (peer, guessed)
            })
            .collect();
        let expected: Vec<(Peer, bool)> = [0, 1, 2, 0].iter().map(|&i| (d.peers[i], true)).collect();
        assert_eq!(tried, expected);
    }

    // ---- model-based property test ----

    /// The reference: a plain list, scanned linearly, with the same epoch rule.
    #[derive(Default)]
    struct Model {
        regions: Vec<CachedRegion>,
    }

    impl Model {
        fn insert(&mut self, r: CachedRegion) {
            let d = &r.descriptor;
            if !d.end_key.is_empty() && d.start_key >= d.end_key {
                return;
            }
            let overlaps = |c: &CachedRegion| {
                ranges_overlap(&d.start_key, &d.end_key, &c.descriptor.start_key, &c.descriptor.end_key)
            };
            let refused = self.regions.iter().any(|c| {
                if c.descriptor.id == d.id {
                    d.epoch.is_stale_against(&c.descriptor.epoch)
                } else {
                    overlaps(c) && c.descriptor.epoch.version > d.epoch.version
                }
            });
            if refused {
                return;
            }
            self.regions.retain(|c| c.descriptor.id != d.id && !overlaps(c));
            self.regions.push(r);
        }

        fn invalidate(&mut self, id: RegionId) {
            self.regions.retain(|c| c.descriptor.id != id);
        }

        fn get(&self, key: &[u8]) -> Option<RegionId> {
            self.regions.iter().find(|c| c.descriptor.contains(key)).map(|c| c.descriptor.id)
        }
    }

    #[derive(Debug, Clone)]
    enum Op {
        Insert(RegionDescriptor),
        Invalidate(u64),
    }

    const BOUNDS: &[&[u8]] = &[b"", b"b", b"d", b"f", b"h", b"j"];

    fn op() -> impl Strategy<Value = Op> {
        let insert = (1u64..6, 0usize..BOUNDS.len(), 0usize..BOUNDS.len(), 0u64..3, 0u64..6).prop_map(
            |(id, s, e, conf_ver, version)| {
                let (s, e) = if e == 0 { (s, 0) } else { (s.min(e), s.max(e)) };
                Op::Insert(desc(id, BOUNDS[s], BOUNDS[e], conf_ver, version))
            },
        );
        prop_oneof![4 => insert, 1 => (1u64..6).prop_map(Op::Invalidate)]
    }

    fn check_invariants(c: &RegionCache) {
        let regions: Vec<&CachedRegion> = c.regions.values().collect();
        for w in regions.windows(2) {
            let (a, b) = (&w[0].descriptor, &w[1].descriptor);
            assert!(!a.end_key.is_empty() && a.end_key <= b.start_key, "overlap: {a:?} {b:?}");
        }
        assert_eq!(c.ids.len(), c.regions.len());
        for (id, start) in &c.ids {
            assert_eq!(c.regions[start].descriptor.id, *id);
        }
    }

    proptest! {
        #[test]
        fn cache_agrees_with_linear_model(ops in proptest::collection::vec(op(), 1..40)) {
            let mut cache = RegionCache::new();
            let mut model = Model::default();
            for op in ops {
                match op {
                    Op::Insert(d) => {
                        cache.insert(cached(d.clone()));
                        model.insert(cached(d));
                    }
                    Op::Invalidate(id) => {
                        cache.invalidate(RegionId(id));
                        model.invalidate(RegionId(id));
                    }
                }
                check_invariants(&cache);
                for key in [&b""[..], b"a", b"b", b"c", b"d", b"e", b"f", b"g", b"h", b"i", b"j", b"zz"] {
                    prop_assert_eq!(cache.get(key).map(|r| r.id()), model.get(key), "key {:?}", key);
                }
            }
        }

        #[test]
        fn regions_for_range_matches_pointwise_lookup(ops in proptest::collection::vec(op(), 1..30)) {
            let mut cache = RegionCache::new();
            for op in ops {
                if let Op::Insert(d) = op { cache.insert(cached(d)); }
            }
            let cover = cache.regions_for_range(b"", b"");
            let mut key = Vec::new();
            for r in &cover.regions {
                prop_assert_eq!(cache.get(&key).map(|c| c.id()), Some(r.id()));
                key = r.descriptor.end_key.clone();
            }
            if let Some(gap) = cover.gap {
                prop_assert!(cache.get(&gap).is_none());
            }
        }
    }
}
