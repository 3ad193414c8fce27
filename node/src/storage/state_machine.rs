//! openraft state machine for one region.
//!
//! `apply` runs inside the engine's group commit: the data changes, the exactly-once rows
//! (`storage::sessions`) and the `applied` log id are written in one transaction, and
//! responses are sent once it is committed (it becomes durable with the next durable
//! commit; the Raft log it replays from already is).
//!
//! A region's rows live under its *data id* (`SmState::data_id`): readers look it up in the
//! same read transaction as the rows, so a snapshot install (`storage::snapshot`), which
//! writes the new state under a fresh id and then switches, is never seen half done.

use std::io;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, RwLock};

use futures::{Stream, TryStreamExt};
use openraft::entry::RaftEntry;
use openraft::storage::{ApplyResponder, EntryResponder, RaftStateMachine};
use openraft::{EntryPayload, OptionalSend, RaftSnapshotBuilder};
use redb::ReadableTable;
use tessera_wire::{RegionDescriptor, RegionId};

use super::engine::{io_err, Engine, PlainWork, TxnRef};
use super::overlay::{self, ApproxSize, DataSource, Overlay};
use super::records::{encode, MergeState, RegionRecord, SmMetaRecord, SmState};
use super::sessions::{Admit, Sessions};
use super::snapshot::{self, GcItem, SnapshotFile};
use super::tables::{self, data_key, data_range};
use crate::raft::types::{
    ApplyResult, LogCommand, LogOp, SessionRef, Snapshot, SnapshotData, SnapshotMeta, TypeConfig,
};

/// Key-value pairs, in scan order.
pub type Pairs = Vec<(Vec<u8>, Vec<u8>)>;
/// The region's snapshots, shared by its state machine and snapshot builder.
type CurrentSnapshot = Arc<Mutex<Snapshots>>;

/// The last snapshot openraft was told of, and the last one written to a file.
///
/// Building a snapshot for openraft (which then purges the log up to it) writes nothing:
/// redb already holds the state, and copying a region into a file for every purge cost
/// the writes a second time (`RegionSnapshotBuilder`). A file is written only when a
/// snapshot is to be sent, by `get_current_snapshot`, or comes with one installed.
#[derive(Debug, Default)]
struct Snapshots {
    /// The metadata of the last snapshot built or installed.
    built: Option<SnapshotMeta>,
    /// The last snapshot written or installed, with its file.
    file: Option<(SnapshotMeta, SnapshotFile)>,
}

/// What one apply batch produced: results in entry order, the change in (keys, bytes), and
/// the state after it.
type ApplyOutput<A> = Arc<Mutex<Option<Applied<A>>>>;

/// Where an entry's result goes: its proposer, waiting in `client_write` (a channel in
/// tests).
trait Answer: Send + 'static {
    fn send(self, result: ApplyResult);
}

impl Answer for ApplyResponder<TypeConfig> {
    fn send(self, result: ApplyResult) {
        ApplyResponder::send(self, result);
    }
}

/// What one apply batch produced.
struct Applied<A> {
    /// Proposers not answered before the commit, with their results.
    late: Vec<(A, ApplyResult)>,
    /// Change in keys.
    dk: i64,
    /// Change in bytes.
    db: i64,
    /// The state after the batch.
    state: SmState,
    /// The region's new descriptor, if the batch changed it.
    new_desc: Option<RegionDescriptor>,
    /// Regions split off: their descriptor, and whether this replica seeded its state.
    splits: Vec<(RegionDescriptor, bool)>,
    /// Rows became garbage (a half split off that this node does not host).
    collect: bool,
    /// The merge state after the batch.
    merging: Option<MergeState>,
    /// Regions absorbed by this one, with the log index of the commit.
    merged: Vec<(RegionId, u64)>,
}

/// One entry to apply.
enum Work {
    Blank(crate::raft::types::LogId),
    Membership(crate::raft::types::LogId, crate::raft::types::Membership),
    Command(crate::raft::types::LogId, LogCommand),
}

/// A split command's fields.
struct SplitCmd {
    key: Vec<u8>,
    version: u64,
    new_region_id: u64,
    new_peers: Vec<(u64, u64)>,
}

/// Something that happened to a region that the node acts on.
#[derive(Debug, Clone)]
pub enum RegionEvent {
    /// `parent` split off `child`. If `seeded`, this replica wrote the child's state (rows,
    /// sessions, state-machine meta and region record) in the split's transaction and the
    /// node starts its group; otherwise the child already existed here.
    Split {
        /// The region that split.
        parent: RegionId,
        /// The new region.
        child: RegionDescriptor,
        /// The child's state was written by this split.
        seeded: bool,
    },
    /// `target` absorbed `source`: the node marks its replica of `source` (whose rows now
    /// belong to `target`) for destruction.
    Merged {
        /// The region that grew.
        target: RegionId,
        /// The region merged away.
        source: RegionId,
    },
    /// `region` installed a snapshot: it may have absorbed a neighbour prepared to merge
    /// into it here (the snapshot includes the merge's commit), whose replica the node
    /// then destroys.
    Installed {
        /// The region.
        region: RegionId,
    },
}

/// The log id a region created by a split starts at, the same on every replica: its state
/// machine has "applied" it and its log is purged up to it, so a replica without that
/// state (created empty) must receive a snapshot rather than replay a log that never
/// contained the seeded rows.
pub fn split_seed_log_id() -> crate::raft::types::LogId {
    use openraft::vote::RaftLeaderIdExt;
    let leader = <openraft::alias::LeaderIdOf<TypeConfig> as RaftLeaderIdExt>::new_committed(0, 0);
    crate::raft::types::LogId::new(leader, SPLIT_SEED_INDEX)
}

/// The state a region starts from on each replica that seeds it rather than receiving it
/// from the region's leader: applied up to [`split_seed_log_id`], with `desc`'s peers as
/// its (committed) voters. Regions split off and regions PD bootstraps both start so: the
/// same on every replica, and with a log that starts after the seed, so that a replica
/// created empty later always receives a snapshot (which carries the region's range as
/// of its log position) and never replays a log against a descriptor from elsewhere.
pub fn seeded_state(
    desc: &RegionDescriptor,
    clock: super::records::SessionClock,
    data_id: u64,
    session_id: u64,
) -> io::Result<SmState> {
    let seed = split_seed_log_id();
    let voters: std::collections::BTreeSet<u64> = desc.peers.iter().map(|p| p.id.0).collect();
    let nodes: std::collections::BTreeMap<u64, crate::raft::types::PeerNode> =
        desc.peers.iter().map(|p| (p.id.0, crate::raft::types::PeerNode { node_id: p.node_id.0 })).collect();
    let membership = crate::raft::types::Membership::new(vec![voters], nodes)
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, format!("seeded membership: {e}")))?;
    Ok(SmState {
        applied: Some(seed),
        membership: crate::raft::types::StoredMembership::new(Some(seed), membership),
        clock,
        data_id,
        session_id,
    })
}

/// Index of [`split_seed_log_id`].
pub const SPLIT_SEED_INDEX: u64 = 5;

/// The `conf_ver` of a region whose last membership entry has log index `index`.
///
/// Derived from the log rather than counted, so it is the same on every replica whatever
/// state the replica started from: one created empty and replaying the log from its start
/// (from a descriptor PD gave it) ends with the leader's `conf_ver`. A bootstrapped region's
/// first membership is entry 0, so it keeps the `conf_ver` 1 PD gave it; every later change
/// (each membership entry, both halves of a joint change) raises it.
pub fn conf_ver_at(index: u64) -> u64 {
    index + 1
}

/// Updates `desc` for the membership entry `m` at log index `index`: its voters become the
/// descriptor's peers and `conf_ver` follows [`conf_ver_at`]. Returns whether `desc`
/// changed.
fn apply_membership(desc: &mut RegionDescriptor, index: u64, m: &crate::raft::types::Membership) -> bool {
    use std::collections::BTreeSet;
    let voters: BTreeSet<u64> = m.voter_ids().collect();
    let mut changed = false;
    if desc.epoch.conf_ver != conf_ver_at(index) {
        desc.epoch.conf_ver = conf_ver_at(index);
        changed = true;
    }
    let current: BTreeSet<u64> = desc.peers.iter().map(|p| p.id.0).collect();
    if current != voters {
        desc.peers = voters
            .iter()
            .map(|id| tessera_wire::Peer {
                id: tessera_wire::PeerId(*id),
                node_id: tessera_wire::NodeId(m.get_node(id).map_or(0, |n| n.node_id)),
            })
            .collect();
        changed = true;
    }
    changed
}

/// What an applied split produced: the new region, whether this replica seeded it, and the
/// rows that became garbage here.
type SplitOutcome = (RegionDescriptor, bool, Vec<GcItem>);

/// Applies a split to `desc` and the tables, or refuses it (`None`): the range version
/// moved on, or the key is not strictly inside the range. The new region keeps the right
/// half's rows under the parent's data id, gets a copy of the session rows under its own
/// id, and its state-machine meta and record are written, unless the new region already
/// exists on this node (created from PD and filled by its own leader) or will not be
/// hosted here: then the half's rows are listed as garbage.
#[allow(clippy::too_many_arguments)]
fn apply_split(
    desc: &mut RegionDescriptor,
    split: &SplitCmd,
    state: &SmState,
    txn: &redb::WriteTransaction,
    sessions: &mut Sessions<'_>,
    regions: &mut redb::Table<'_, u64, &'static [u8]>,
    meta: &mut redb::Table<'_, u64, &'static [u8]>,
    local_node: u64,
) -> io::Result<Option<SplitOutcome>> {
    let key = &split.key;
    let inside = key.as_slice() > desc.start_key.as_slice() && (desc.end_key.is_empty() || *key < desc.end_key);
    if split.version != desc.epoch.version || !inside || split.new_peers.is_empty() {
        return Ok(None);
    }
    let old_end = std::mem::replace(&mut desc.end_key, key.clone());
    desc.epoch.version += 1;
    let child = RegionDescriptor {
        id: RegionId(split.new_region_id),
        start_key: key.clone(),
        end_key: old_end,
        // The child's membership is its seeded entry.
        epoch: tessera_wire::RegionEpoch { conf_ver: conf_ver_at(SPLIT_SEED_INDEX), version: desc.epoch.version },
        peers: split
            .new_peers
            .iter()
            .map(|(p, n)| tessera_wire::Peer { id: tessera_wire::PeerId(*p), node_id: tessera_wire::NodeId(*n) })
            .collect(),
    };
    // A replica whose node is not among the new region's (it is being removed from the
    // region and lags) only drops the rows; so does one where the new region already exists
    // (created empty from PD and filled by its own leader).
    let exists = regions.get(split.new_region_id).map_err(io_err)?.is_some()
        || (local_node != 0 && !split.new_peers.iter().any(|(_, n)| *n == local_node));
    // The rows stay where they are: a region split off keeps its parent's data id (their
    // ranges are disjoint from now on), so a split writes a few rows whatever its size.
    // (Both halves recount their approximate sizes afterwards, off the commit path.)
    let mut garbage = Vec::new();
    if exists {
        // Not seeded here: the half's rows under the parent's data id are garbage, deleted
        // in the background in bounded steps.
        garbage.push(GcItem::Rows {
            data_id: state.data_id,
            start: child.start_key.clone(),
            end: child.end_key.clone(),
        });
    } else {
        let to = split.new_region_id;
        txn.open_table(tables::DATA_IDS).map_err(io_err)?.insert(to, state.data_id).map_err(io_err)?;
        // Session rows are not split by key: the new region gets a copy under its own id.
        txn.open_table(tables::SESSION_IDS).map_err(io_err)?.insert(to, to).map_err(io_err)?;
        sessions.copy_to(to)?;
        let child_state = seeded_state(&child, state.clock, state.data_id, to)?;
        meta.insert(to, encode(&SmMetaRecord::from_state(&child_state))?.as_slice()).map_err(io_err)?;
        regions.insert(to, encode(&RegionRecord::from_descriptor(&child))?.as_slice()).map_err(io_err)?;
    }
    Ok(Some((child, !exists, garbage)))
}

/// Region state shared between the state machine, the request path and heartbeats.
#[derive(Debug)]
pub struct RegionShared {
    /// Region id.
    pub region_id: RegionId,
    /// The node hosting this replica (0 in storage tests).
    pub local_node: u64,
    /// The region's current shape.
    pub descriptor: RwLock<RegionDescriptor>,
    /// The range version of the rows in the database, set *before* the commit that changes
    /// the range (a split, a snapshot install, the replica's destruction): a read that
    /// finds it unchanged after reading its rows read rows of the range it was admitted
    /// for (see [`read_get`]).
    pub range_version: Arc<std::sync::atomic::AtomicU64>,
    /// Approximate number of keys and bytes of keys and values.
    pub approx: Arc<ApproxSize>,
    /// Where the state machine reports splits (set by the node once the region runs).
    pub events: std::sync::OnceLock<tokio::sync::mpsc::UnboundedSender<RegionEvent>>,
    /// Writes this replica proposed as leader, and reads it served, since it started (for
    /// the load PD sees in region heartbeats).
    pub writes: std::sync::atomic::AtomicU64,
    /// See [`RegionShared::writes`].
    pub reads: std::sync::atomic::AtomicU64,
    /// Regions split off this one since this replica started, as of their split, so a
    /// client with a stale view is pointed at them even before their group runs here.
    pub split_off: Mutex<Vec<RegionDescriptor>>,
    /// A sample of the keys requests touched, for a split where the load halves.
    pub load: crate::load_sample::KeySampler,
    /// Set while the region is prepared to merge into its left neighbour: it serves no
    /// reads or writes (see [`MergeState`]).
    pub merging: Mutex<Option<MergeState>>,
    /// Log index of the last merge this region applied (0: none since it started): a
    /// replica added later must receive a snapshot that includes it, since it has no
    /// replica of the merged-away region to take the rows from.
    pub last_merge_index: std::sync::atomic::AtomicU64,
    /// The local replica of the region this one is prepared to merge into has absorbed
    /// it: the node reports it to PD and destroys it once every node hosting it did.
    pub reaping: std::sync::atomic::AtomicBool,
    /// The node is making the absorption durable before setting [`RegionShared::reaping`].
    pub reaping_pending: std::sync::atomic::AtomicBool,
    /// The node's change signal, bumped by every apply of any of its regions once it has
    /// committed: a target waiting for its local source to apply a merge's prepare waits on
    /// it (as do tests waiting for a replica to catch up).
    pub node_changes: std::sync::OnceLock<ChangeSignal>,
    /// Held by the state machine for each apply and snapshot install, and by the node while
    /// it marks the replica retired ([`RegionShared::retire`]).
    sm_busy: tokio::sync::Mutex<()>,
    /// The replica is being destroyed: the state machine applies and installs nothing more.
    retired: std::sync::atomic::AtomicBool,
}

/// A node's change signal: bumped whenever a hosted region's leader or applied log index
/// changes, or a snapshot is installed, so that callers wait for node state instead of
/// polling it. Clones share the signal.
#[derive(Debug, Clone)]
pub struct ChangeSignal(Arc<tokio::sync::watch::Sender<u64>>);

impl ChangeSignal {
    /// A new signal, at 0.
    pub fn new() -> ChangeSignal {
        ChangeSignal(Arc::new(tokio::sync::watch::channel(0).0))
    }

    /// Tells every subscriber that something changed.
    pub fn bump(&self) {
        self.0.send_modify(|n| *n = n.wrapping_add(1));
    }

    /// A receiver that sees every later bump.
    pub fn subscribe(&self) -> tokio::sync::watch::Receiver<u64> {
        self.0.subscribe()
    }
}

impl Default for ChangeSignal {
    fn default() -> Self {
        ChangeSignal::new()
    }
}

impl RegionShared {
    /// New shared state for `descriptor`, hosted on `local_node`.
    pub fn new(descriptor: RegionDescriptor, local_node: u64) -> Arc<Self> {
        Arc::new(RegionShared {
            region_id: descriptor.id,
            local_node,
            range_version: Arc::new(std::sync::atomic::AtomicU64::new(descriptor.epoch.version)),
            descriptor: RwLock::new(descriptor),
            approx: Default::default(),
            events: Default::default(),
            writes: Default::default(),
            reads: Default::default(),
            split_off: Default::default(),
            load: Default::default(),
            merging: Default::default(),
            last_merge_index: Default::default(),
            reaping: Default::default(),
            reaping_pending: Default::default(),
            node_changes: Default::default(),
            sm_busy: Default::default(),
            retired: Default::default(),
        })
    }

    /// Fences the state machine off before the replica's retirement is written: waits for
    /// an apply or snapshot install in progress to end, and makes every later one fail
    /// without writing. `Raft::shutdown` stops the Raft core but not its state-machine
    /// worker, which may still be installing a snapshot or hold queued applies; one that
    /// committed after the retirement would write a live record and state over the
    /// tombstone, and an install would list the rows of a whole data id as garbage (its
    /// "old range" read from the tombstone), rows that a split-off region may share.
    ///
    /// The flag is set before the wait, so an apply waiting for a merge's local source
    /// ([`RegionStateMachine::await_merge_source`], which may wait on work the node cannot
    /// do while it destroys this replica) gives up instead of holding the retirement back.
    pub async fn retire(&self) {
        self.mark_retired();
        drop(self.sm_busy.lock().await);
    }

    /// The first half of [`RegionShared::retire`], for before the group stops: from now
    /// on applies and installs fail, and one waiting (for a merge's source, or between
    /// install steps) gives up, so the Raft core is never stuck handing it more work.
    pub fn mark_retired(&self) {
        self.retired.store(true, Ordering::SeqCst);
    }

    /// Whether the replica is being retired ([`RegionShared::retire`]).
    pub fn is_retired(&self) -> bool {
        self.retired.load(Ordering::SeqCst)
    }

    /// The guard an apply or install holds, or the error if the replica was retired.
    async fn enter(&self) -> io::Result<tokio::sync::MutexGuard<'_, ()>> {
        let busy = self.sm_busy.lock().await;
        if self.is_retired() {
            return Err(io::Error::other(format!("region {} was retired on this node", self.region_id.0)));
        }
        Ok(busy)
    }

    /// The merge state: `Some` while prepared to merge.
    pub fn merging(&self) -> Option<MergeState> {
        *self.merging.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A copy of the current descriptor.
    pub fn descriptor(&self) -> RegionDescriptor {
        self.descriptor.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Counts the keys and bytes of the region's range in `engine` and stores them as its
    /// approximate size: on the blocking pool when called on a runtime (it reads the whole
    /// range), at once otherwise. Applies that land during the count may be missed by it;
    /// the figures are approximate.
    pub fn recount(self: &Arc<Self>, engine: &Engine) {
        let (shared, engine) = (self.clone(), engine.clone());
        let count = move || {
            if let Err(e) = shared.count_now(&engine) {
                tracing::warn!(region_id = shared.region_id.0, error = %e, "counting the region's rows failed");
            }
        };
        match tokio::runtime::Handle::try_current() {
            Ok(handle) => drop(handle.spawn_blocking(count)),
            Err(_) => count(),
        }
    }

    fn count_now(&self, engine: &Engine) -> io::Result<()> {
        // Only the region's range: regions split off share their parent's data id.
        let desc = self.descriptor();
        let (txn, ((lo, hi), fresh)) = engine.read_data(|txn, rows| {
            let (lo, hi) = data_range(data_id(txn, self.region_id.0)?, &desc.start_key, &desc.end_key);
            let fresh = overlay::range_rows(rows, &lo, &hi, false, usize::MAX);
            Ok(((lo, hi), fresh))
        })?;
        let data = txn.open_table(tables::DATA).map_err(io_err)?;
        let (mut keys, mut bytes) = (0i64, 0i64);
        for row in overlay::merged(overlay::table_rows(&data, &lo, &hi, false)?, fresh, false) {
            let (k, v) = row?;
            keys += 1;
            bytes += (k.len() - 8 + v.len()) as i64;
        }
        self.approx.set(keys, bytes);
        Ok(())
    }
}

/// The state machine of one region.
#[derive(Debug)]
pub struct RegionStateMachine {
    region: u64,
    engine: Engine,
    /// Applied log id, membership, session clock and data id, as of the last apply.
    state: SmState,
    current: CurrentSnapshot,
    shared: Arc<RegionShared>,
}

impl RegionStateMachine {
    /// Loads the region's applied state and counts its keys.
    pub fn open(engine: &Engine, shared: Arc<RegionShared>) -> io::Result<RegionStateMachine> {
        let region = shared.region_id.0;
        // Under the commit lock, with what staged applies left written: the state as the
        // last apply left it.
        let (txn, state) = engine.read_cut(|txn, _| snapshot::read_state(txn, region))?;
        let record = txn.open_table(tables::REGIONS).map_err(io_err)?.get(region).map_err(io_err)?;
        let merging = match record {
            Some(r) => super::records::decode::<RegionRecord>(r.value())?.merging(),
            None => None,
        };
        *shared.merging.lock().unwrap_or_else(|p| p.into_inner()) = merging;
        // Counting a large region reads all of it: in the background.
        shared.recount(engine);
        Ok(RegionStateMachine { region, engine: engine.clone(), state, current: Default::default(), shared })
    }
}

impl RegionStateMachine {
    /// This node's replica in the region's applied membership (voter or learner), if any.
    pub fn member_on(&self, node: tessera_wire::NodeId) -> Option<tessera_wire::Peer> {
        self.state
            .membership
            .membership()
            .nodes()
            .find(|(_, n)| n.node_id == node.0)
            .map(|(id, _)| tessera_wire::Peer { id: tessera_wire::PeerId(*id), node_id: node })
    }
}

/// The data id `region`'s rows are stored under, as of `txn`.
fn data_id(txn: &redb::ReadTransaction, region: u64) -> io::Result<u64> {
    snapshot::read_data_id(txn, region)
}

/// A read found that the region's range changed (a split or a snapshot applied) after the
/// request was checked against it: the rows it would read may have moved to another region.
#[derive(Debug, thiserror::Error)]
#[error("the region's range changed under the read")]
pub struct RangeChanged;

/// What a read checks after reading its rows: the region's range version, as it was when
/// the request was admitted.
pub type RangeCheck<'a> = Option<(&'a std::sync::atomic::AtomicU64, u64)>;

/// Fails with [`RangeChanged`] if the range version moved since the request was admitted.
///
/// Called after the rows were read: a split (or install) sets the version before its
/// commit, so a read transaction that saw the commit also sees the new version here. A
/// read from just before the commit may be refused too; the client just retries.
fn check_range(check: RangeCheck<'_>) -> io::Result<()> {
    match check {
        Some((current, expected)) if current.load(Ordering::SeqCst) != expected => Err(io::Error::other(RangeChanged)),
        _ => Ok(()),
    }
}

/// The key at which `region`'s rows in `[start, end)` reach half of `total` bytes: where a
/// split leaves two halves of about equal size. `None` if that key is the range's first
/// (a single huge key, or an empty region).
pub fn middle_key(engine: &Engine, region: u64, start: &[u8], end: &[u8], total: u64) -> io::Result<Option<Vec<u8>>> {
    let (txn, ((lo, hi), fresh)) = engine.read_data(|txn, rows| {
        let (lo, hi) = data_range(data_id(txn, region)?, start, end);
        let fresh = overlay::range_rows(rows, &lo, &hi, false, usize::MAX);
        Ok(((lo, hi), fresh))
    })?;
    let t = txn.open_table(tables::DATA).map_err(io_err)?;
    let mut seen = 0u64;
    for row in overlay::merged(overlay::table_rows(&t, &lo, &hi, false)?, fresh, false) {
        let (k, v) = row?;
        let key = &k[8..];
        if seen >= total / 2 && key > start {
            return Ok(Some(key.to_vec()));
        }
        seen += (key.len() + v.len()) as u64;
    }
    Ok(None)
}

/// What the overlay says of one `data` table key: `Some(row)` if it has the key (the row
/// may be a deletion), `None` to read the table.
fn overlay_row(rows: overlay::View<'_>, key: &[u8]) -> Option<overlay::Row> {
    rows.get(key).cloned()
}

/// Reads one key of `region` from the applied state.
pub fn read_get(engine: &Engine, region: u64, check: RangeCheck<'_>, key: &[u8]) -> io::Result<Option<Vec<u8>>> {
    let (txn, (dk, fresh)) = engine.read_data(|txn, rows| {
        let dk = data_key(data_id(txn, region)?, key);
        let fresh = overlay_row(rows, &dk);
        Ok((dk, fresh))
    })?;
    let value = match fresh {
        Some(row) => row,
        None => {
            let t = txn.open_table(tables::DATA).map_err(io_err)?;
            let v = t.get(dk.as_slice()).map_err(io_err)?.map(|v| v.value().to_vec());
            v
        }
    };
    check_range(check)?;
    Ok(value)
}

/// Reads keys of `region` from one consistent snapshot, in order, for a prefix of `keys`:
/// it stops once the values read reach `max_bytes` (always answering at least one key).
pub fn read_batch(
    engine: &Engine,
    region: u64,
    check: RangeCheck<'_>,
    keys: &[Vec<u8>],
    max_bytes: usize,
) -> io::Result<Vec<Option<Vec<u8>>>> {
    let (txn, (id, fresh)) = engine.read_data(|txn, rows| {
        let id = data_id(txn, region)?;
        let fresh: Vec<Option<overlay::Row>> = if rows.is_empty() {
            Vec::new()
        } else {
            keys.iter().map(|k| overlay_row(rows, &data_key(id, k))).collect()
        };
        Ok((id, fresh))
    })?;
    let t = txn.open_table(tables::DATA).map_err(io_err)?;
    let mut out = Vec::with_capacity(keys.len());
    let mut bytes = 0;
    for (i, k) in keys.iter().enumerate() {
        if !out.is_empty() && bytes >= max_bytes {
            break;
        }
        let v = match fresh.get(i).cloned().flatten() {
            Some(row) => row,
            None => t.get(data_key(id, k).as_slice()).map_err(io_err)?.map(|v| v.value().to_vec()),
        };
        bytes += k.len() + v.as_ref().map_or(0, Vec::len);
        out.push(v);
    }
    check_range(check)?;
    Ok(out)
}

/// A page of the scan of `[start, end)` of `region`; returns the pairs and, if the page
/// was cut by `limit` pairs or by `max_bytes` of keys and values (a page always holds at
/// least one pair), where to resume (the next key for forward scans; the exclusive end for
/// reverse scans).
#[allow(clippy::too_many_arguments)]
pub fn read_scan(
    engine: &Engine,
    region: u64,
    check: RangeCheck<'_>,
    start: &[u8],
    end: &[u8],
    limit: usize,
    max_bytes: usize,
    reverse: bool,
) -> io::Result<(Pairs, Option<Vec<u8>>)> {
    let (txn, ((lo, hi), fresh)) = engine.read_data(|txn, rows| {
        let (lo, hi) = data_range(data_id(txn, region)?, start, end);
        // One row past the limit: the page's resume key.
        let fresh = overlay::range_rows(rows, &lo, &hi, reverse, limit.saturating_add(1));
        Ok(((lo, hi), fresh))
    })?;
    let t = txn.open_table(tables::DATA).map_err(io_err)?;
    let mut out = Vec::new();
    let mut bytes = 0;
    for row in overlay::merged(overlay::table_rows(&t, &lo, &hi, reverse)?, fresh, reverse) {
        let (k, v) = row?;
        let key = k[8..].to_vec();
        if out.len() >= limit || (!out.is_empty() && bytes >= max_bytes) {
            // Where the next page starts: this key for a forward scan; for a reverse scan
            // the exclusive end just past it.
            let resume = if reverse { [key.as_slice(), &[0]].concat() } else { key };
            check_range(check)?;
            return Ok((out, Some(resume)));
        }
        bytes += key.len() + v.len();
        out.push((key, v));
    }
    check_range(check)?;
    Ok((out, None))
}

/// Executes one operation against the data table, through the overlay (whose rows the
/// commit publishes). Returns the result and the change in (keys, bytes).
fn execute(
    table: &DataSource<'_>,
    overlay: &Overlay,
    size: &Arc<ApproxSize>,
    region: u64,
    op: &LogOp,
) -> io::Result<(ApplyResult, i64, i64)> {
    let get = |key: &[u8]| overlay.get(table, &data_key(region, key));
    let put = |key: &[u8], value: &[u8]| -> (i64, i64) {
        overlay.put(size, data_key(region, key), value).count_change(key.len(), value.len())
    };
    // Whether the key existed, and the change in (keys, bytes).
    let del = |key: &[u8]| -> io::Result<(bool, i64, i64)> {
        Ok(match overlay.remove(table, data_key(region, key))? {
            Some(len) => (true, -1, -((key.len() + len) as i64)),
            None => (false, 0, 0),
        })
    };
    Ok(match op {
        LogOp::Put(k, v) => {
            let (dk, db) = put(k, v);
            (ApplyResult::Done, dk, db)
        }
        LogOp::Delete(k) => {
            let (existed, dk, db) = del(k)?;
            (ApplyResult::Deleted(existed), dk, db)
        }
        LogOp::Append(k, v) => {
            let mut cur = get(k)?.unwrap_or_default();
            cur.extend_from_slice(v);
            let (dk, db) = put(k, &cur);
            (ApplyResult::Appended(cur.len() as u64), dk, db)
        }
        LogOp::AppendCapped { key, value, max_len } => {
            let mut cur = get(key)?.unwrap_or_default();
            let len = (cur.len() + value.len()) as u64;
            if len > *max_len {
                return Ok((ApplyResult::ValueTooLarge { len, max: *max_len }, 0, 0));
            }
            cur.extend_from_slice(value);
            let (dk, db) = put(key, &cur);
            (ApplyResult::Appended(len), dk, db)
        }
        LogOp::Cas { key, expected, new } => {
            let cur = get(key)?;
            if cur == *expected {
                let (dk, db) = match new {
                    Some(v) => put(key, v),
                    None => {
                        let (_, dk, db) = del(key)?;
                        (dk, db)
                    }
                };
                (ApplyResult::Cas(true, cur), dk, db)
            } else {
                (ApplyResult::Cas(false, cur), 0, 0)
            }
        }
        LogOp::BatchPut(pairs) => {
            let (mut tk, mut tb) = (0, 0);
            for (k, v) in pairs {
                let (dk, db) = put(k, v);
                tk += dk;
                tb += db;
            }
            (ApplyResult::Done, tk, tb)
        }
    })
}

/// Most entries an apply stages (see [`Engine::apply_plain`]): it runs on the caller's
/// async worker, holding the engine's commit lock. (Commits in place, before staging, took
/// at most 16; 64 was chosen, not measured, so that a region's batch under load, 8 to 16
/// entries at 64 in flight over 4 regions, is staged whole.) A larger batch is applied in
/// parts of this many (`apply`).
const APPLY_STAGED_MAX: usize = 64;

impl RaftStateMachine<TypeConfig> for RegionStateMachine {
    type SnapshotData = SnapshotData;
    type SnapshotBuilder = RegionSnapshotBuilder;

    async fn applied_state(
        &mut self,
    ) -> Result<(Option<crate::raft::types::LogId>, crate::raft::types::StoredMembership), io::Error> {
        Ok((self.state.applied, self.state.membership.clone()))
    }

    async fn apply<Strm>(&mut self, mut entries: Strm) -> Result<(), io::Error>
    where
        Strm: Stream<Item = Result<EntryResponder<TypeConfig>, io::Error>> + Unpin + OptionalSend,
    {
        let mut batch = Vec::new();
        while let Some(item) = entries.try_next().await? {
            batch.push(item);
        }
        let shared = self.shared.clone();
        let _busy = shared.enter().await?;
        // A merge's commit waits for the local source replica before it applies, so it
        // starts a batch of its own: the entries before it apply first.
        let mut segment: Vec<(Work, Option<ApplyResponder<TypeConfig>>)> = Vec::new();
        let mut prepares = false;
        for (entry, responder) in batch {
            let log_id = entry.log_id();
            let work = match entry.payload {
                EntryPayload::Blank => Work::Blank(log_id),
                EntryPayload::Normal(cmd) => Work::Command(log_id, cmd),
                EntryPayload::Membership(m) => Work::Membership(log_id, m),
            };
            if matches!(work, Work::Command(_, LogCommand::CommitMergeV1 { .. })) && !segment.is_empty() {
                self.apply_segment(std::mem::take(&mut segment)).await?;
            }
            prepares |= matches!(work, Work::Command(_, LogCommand::PrepareMergeV1 { .. }));
            segment.push((work, responder));
            // A region's batch under load holds up to hundreds of entries. Applied in parts
            // of at most `APPLY_STAGED_MAX`, each part of plain writes is staged; a larger
            // apply joins the writer's next transaction, behind its write-out and sync (up
            // to 100 ms at 256 writes in flight), and the region's later applies with it.
            if segment.len() >= APPLY_STAGED_MAX {
                self.apply_segment(std::mem::take(&mut segment)).await?;
            }
        }
        if !segment.is_empty() {
            self.apply_segment(segment).await?;
        }
        if prepares {
            // Frozen at the prepare, its state is final: written now, while its rows are
            // still its own, a file can still catch a lagging source replica up once the
            // target here has absorbed it (after which none can be written). This node's
            // target waits for the cut as well as for the prepare (`await_merge_source`).
            self.cut_frozen_state().await;
        }
        Ok(())
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        RegionSnapshotBuilder { region: self.region, engine: self.engine.clone(), current: self.current.clone() }
    }

    async fn install_snapshot(&mut self, meta: &SnapshotMeta, snapshot: SnapshotData) -> Result<(), io::Error> {
        let shared = self.shared.clone();
        let _busy = shared.enter().await?;
        let installed = snapshot::install(
            &self.engine,
            self.region,
            &snapshot,
            meta.last_log_id,
            meta.last_membership.clone(),
            Some(self.shared.range_version.clone()),
            Some(&self.shared.retired),
        )
        .await?;
        self.state = installed.state;
        if let Some(desc) = installed.descriptor {
            tracing::info!(region_id = self.region, epoch = ?desc.epoch, "region descriptor from a snapshot");
            *self.shared.descriptor.write().unwrap_or_else(|p| p.into_inner()) = desc;
        }
        *self.shared.merging.lock().unwrap_or_else(|p| p.into_inner()) = installed.merging;
        if let Some(tx) = self.shared.events.get() {
            let _ = tx.send(RegionEvent::Installed { region: self.shared.region_id });
        }
        self.shared.approx.set(installed.keys, installed.bytes);
        let mut current = self.current.lock().unwrap_or_else(|p| p.into_inner());
        current.built = Some(meta.clone());
        current.file = Some((meta.clone(), snapshot));
        drop(current);
        // The installed file is the region's state as of its index (frozen, if prepared).
        self.engine.settle_merge_cut(self.region, self.state.applied.map_or(0, |l| l.index));
        Ok(())
    }

    /// The snapshot to send to a follower: the last file if it is not older than the last
    /// snapshot built, or else a file written now, of the state as of the last apply (at or
    /// after the last snapshot built, so it covers every entry the log purged). None before
    /// any snapshot was built or installed, as openraft expects of a fresh state machine.
    ///
    /// openraft calls this on the region's state-machine worker, so the region's applies
    /// wait for the cut of a new file (a read transaction at a commit boundary), not for
    /// its rows: they are written in the background, and the sender waits for them.
    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot>, io::Error> {
        let (built, file) = {
            let current = self.current.lock().unwrap_or_else(|p| p.into_inner());
            (current.built.clone(), current.file.clone())
        };
        if let Some((meta, file)) = &file {
            if built.as_ref().is_none_or(|b| meta.last_log_id >= b.last_log_id) && !file.failed() {
                return Ok(Some(Snapshot { meta: meta.clone(), snapshot: file.clone() }));
            }
        }
        if built.is_none() {
            return Ok(None);
        }
        match self.write_snapshot().await {
            Ok((meta, file)) => Ok(Some(Snapshot { meta, snapshot: file })),
            // Absorbed by its target here: the last file is all there is (ARCHITECTURE.md,
            // merges).
            Err(e) if e.get_ref().is_some_and(|i| i.is::<snapshot::MergedAway>()) && file.is_some() => {
                Ok(file.map(|(meta, file)| Snapshot { meta, snapshot: file }))
            }
            Err(e) => Err(e),
        }
    }
}

impl RegionStateMachine {
    /// If the region is prepared to merge, starts writing the snapshot file of its frozen
    /// state (see [`Self::write_snapshot`]); then records on the engine that its applies so
    /// far are settled, so that this node's target of the merge may absorb it
    /// ([`Engine::settle_merge_cut`]). After the apply of a prepare, and when a prepared
    /// replica starts: a restart forgets the last file, and once the target here has
    /// absorbed the source none can be cut.
    pub async fn cut_frozen_state(&mut self) {
        if self.shared.merging().is_some() {
            if let Err(error) = self.write_snapshot().await {
                tracing::warn!(region_id = self.region, %error, "snapshot of the region prepared to merge not written");
            }
        }
        self.engine.settle_merge_cut(self.region, self.state.applied.map_or(0, |l| l.index));
    }

    /// Starts writing a snapshot file of the region's state as of its last apply and keeps
    /// it as the current file. Returns once the state is cut (a read transaction at a
    /// commit boundary), so the region's applies wait for that only; the rows are written
    /// on the blocking pool, and a sender waits for them ([`SnapshotFile::written`]).
    async fn write_snapshot(&self) -> io::Result<(SnapshotMeta, SnapshotFile)> {
        let (engine, region) = (self.engine.clone(), self.region);
        let (state, cut) =
            tokio::task::spawn_blocking(move || snapshot::cut(&engine, region)).await.map_err(io::Error::other)??;
        let index = state.applied.map_or(0, |l| l.index);
        let (file, done) = SnapshotFile::pending(snapshot::new_path(&self.engine, "built", region));
        let path = file.path().to_path_buf();
        tokio::task::spawn_blocking(move || {
            let started = std::time::Instant::now();
            let result = snapshot::write(cut, &path);
            match &result {
                Ok(()) => tracing::info!(
                    region_id = region,
                    index,
                    bytes = std::fs::metadata(&path).map_or(0, |m| m.len()),
                    elapsed_ms = started.elapsed().as_millis() as u64,
                    "snapshot written"
                ),
                Err(error) => tracing::warn!(region_id = region, index, %error, "snapshot file not written"),
            }
            done.finish(&result);
        });
        let meta = SnapshotMeta { last_log_id: state.applied, last_membership: state.membership };
        self.current.lock().unwrap_or_else(|p| p.into_inner()).file = Some((meta.clone(), file.clone()));
        Ok((meta, file))
    }

    /// Waits until this node's replica of `source` has applied its log up to
    /// `prepare_index` (the prepare of a merge into this region), so its rows are final.
    /// The source's group runs on this node (a merge needs both regions' voters on the
    /// same nodes), and on the others until every node hosting it absorbed it, so it gets
    /// there (from its own leader, or a snapshot).
    async fn await_merge_source(&self, source: u64, prepare_index: u64) -> io::Result<()> {
        let mut changes = self.shared.node_changes.get().map(ChangeSignal::subscribe);
        let started = std::time::Instant::now();
        let mut warned = false;
        loop {
            let (applied, hosted) = {
                // The source's applied index as its last apply left it (staged or not).
                let (txn, ()) = self.engine.read_cut(|_, _| Ok(()))?;
                let hosted = txn
                    .open_table(tables::REGIONS)
                    .map_err(io_err)?
                    .get(source)
                    .map_err(io_err)?
                    .map(|r| super::records::decode::<RegionRecord>(r.value()))
                    .transpose()?
                    .is_some_and(|r| r.to_descriptor().is_some());
                (snapshot::read_state(&txn, source)?.applied.map_or(0, |l| l.index()), hosted)
            };
            if !hosted {
                // Only a replica that started from a snapshot older than the merge, without a
                // source replica here, gets here; the leader refuses to add a replica before
                // its snapshot includes the last merge. Waiting would wedge the group.
                return Err(io::Error::other(format!(
                    "region {} cannot apply the merge of region {source}: no replica of it here",
                    self.region
                )));
            }
            // Once the prepare's snapshot file is cut too: absorbed first, the source could
            // not cut it any more (ARCHITECTURE.md, merges). After a restart, that waits
            // for the source replica to start and cut it again.
            if applied >= prepare_index && self.engine.merge_cut_settled(source, prepare_index) {
                return Ok(());
            }
            if self.shared.is_retired() {
                return Err(io::Error::other(format!(
                    "region {} was retired while its merge of region {source} waited for it",
                    self.region
                )));
            }
            if !warned && started.elapsed() > std::time::Duration::from_secs(10) {
                warned = true;
                tracing::warn!(
                    region_id = self.region,
                    source,
                    applied,
                    prepare_index,
                    "a merge waits for the local source replica to apply its prepare"
                );
            }
            let wait = std::time::Duration::from_millis(500);
            match changes.as_mut() {
                Some(rx) => {
                    let _ = tokio::time::timeout(wait, rx.changed()).await;
                }
                None => tokio::time::sleep(std::time::Duration::from_millis(10)).await,
            }
        }
    }

    /// Applies `items` (a batch, or the part of one up to a merge's commit) in one
    /// transaction of the group commit, then answers their proposers.
    async fn apply_segment<A: Answer>(&mut self, items: Vec<(Work, Option<A>)>) -> io::Result<()> {
        if items.is_empty() {
            return Ok(());
        }
        let started = std::time::Instant::now();
        let region = self.region;
        let (work_items, responders): (Vec<Work>, Vec<_>) = items.into_iter().unzip();
        // Client writes are answered inside the transaction, before it commits (see
        // `answer`); admin commands and membership changes after it, with their effects.
        let early: Vec<bool> = work_items
            .iter()
            .map(|w| matches!(w, Work::Command(_, LogCommand::WriteV1 { .. } | LogCommand::WriteV2 { .. })))
            .collect();
        if let Some(Work::Command(_, cmd @ LogCommand::CommitMergeV1 { .. })) = work_items.first() {
            let desc = self.shared.descriptor();
            if let Some(merge) = CommitMerge::from_command(cmd) {
                if merge.acceptable(&desc, self.shared.merging()) {
                    self.await_merge_source(merge.source, merge.prepare_index).await?;
                }
            }
        }
        // A few plain writes (the common case on a lightly loaded node) commit on this task
        // when the writer holds no transaction; anything else, or a larger batch, joins the
        // group commit.
        let may_stage = work_items.len() <= APPLY_STAGED_MAX
            && work_items.iter().all(|w| {
                matches!(w, Work::Blank(_) | Work::Command(_, LogCommand::WriteV1 { .. } | LogCommand::WriteV2 { .. }))
            });
        // A split commits durably, before the new region is started or reported. If a
        // replica that seeded the new region lost the seed in a crash, PD (told of the new
        // region by the parent's leader) could have it created empty here before the
        // parent re-applies the split, which then finds the region present and drops the
        // half's rows; with every seeding replica lost that way, no replica holds the new
        // region's rows or membership (docs/storage.md).
        let splits_here = work_items.iter().any(|w| matches!(w, Work::Command(_, LogCommand::SplitV1 { .. })));
        // Plain writes stage their rows in the engine's data overlay; anything else (a
        // split, a merge step) runs against the table alone, which the engine first brings
        // up to date (`overlay.rs`).
        let plain = work_items.iter().all(|w| {
            matches!(
                w,
                Work::Blank(_)
                    | Work::Membership(..)
                    | Work::Command(_, LogCommand::WriteV1 { .. } | LogCommand::WriteV2 { .. })
            )
        });
        let overlay = self.engine.overlay().clone();
        let size = self.shared.approx.clone();
        let results: ApplyOutput<A> = Default::default();
        let out = results.clone();
        let mut state = self.state.clone();
        let mut desc = self.shared.descriptor();
        let mut merging = self.shared.merging();
        let local_node = self.shared.local_node;
        let range_version = self.shared.range_version.clone();
        let work: PlainWork = Box::new(move |txn| {
            let id = state.data_id;
            // A staged apply (`Engine::apply_plain`) reads through a read transaction and
            // writes only to the overlay; the entries that write tables directly (splits,
            // merges, membership changes) are never staged.
            let staged = || super::engine::staged_cannot_write("a split, merge or region record");
            let mut data = match txn {
                TxnRef::Write(t) => DataSource::Write(t.open_table(tables::DATA).map_err(io_err)?),
                TxnRef::Read(t) => DataSource::Read(t.open_table(tables::DATA).map_err(io_err)?),
            };
            let mut sessions = Sessions::open(txn, state.session_id, &overlay)?;
            let mut garbage = Vec::new();
            let (mut regions, mut meta) = match txn {
                TxnRef::Write(t) => (
                    Some(t.open_table(tables::REGIONS).map_err(io_err)?),
                    Some(t.open_table(tables::SM_META).map_err(io_err)?),
                ),
                TxnRef::Read(_) => (None, None),
            };
            let mut res = Vec::with_capacity(work_items.len());
            let mut splits = Vec::new();
            let mut merged = Vec::new();
            let (mut dk, mut db) = (0, 0);
            let mut desc_changed = false;
            for item in work_items {
                let (log_id, cmd) = match item {
                    Work::Blank(log_id) => {
                        state.applied = Some(log_id);
                        res.push(ApplyResult::None);
                        continue;
                    }
                    Work::Membership(log_id, m) => {
                        state.applied = Some(log_id);
                        desc_changed |= apply_membership(&mut desc, log_id.index(), &m);
                        state.membership = crate::raft::types::StoredMembership::new(Some(log_id), m);
                        res.push(ApplyResult::None);
                        continue;
                    }
                    Work::Command(log_id, cmd) => (log_id, cmd),
                };
                state.applied = Some(log_id);
                let index = log_id.index();
                let (session, op) = match cmd {
                    // A region prepared to merge changes nothing more: its state is
                    // final until it is absorbed or rolled back.
                    LogCommand::WriteV1 { .. } | LogCommand::WriteV2 { .. } if merging.is_some() => {
                        res.push(ApplyResult::KeyNotInRange);
                        continue;
                    }
                    LogCommand::WriteV1 { session, op } => {
                        // Version 1 carried no acknowledgement and no clock.
                        (session.map(|(id, seq)| SessionRef { id, seq, first_pending: 0 }), op)
                    }
                    LogCommand::WriteV2 { session, op, at_ms, session_ttl_ms } => {
                        state.clock.clock_ms = state.clock.clock_ms.max(at_ms);
                        sessions.sweep(&mut state.clock, session_ttl_ms)?;
                        (session, op)
                    }
                    LogCommand::SplitV1 { .. } if merging.is_some() => {
                        res.push(ApplyResult::SplitRefused);
                        continue;
                    }
                    LogCommand::SplitV1 { key, version, new_region_id, new_peers } => {
                        let split = SplitCmd { key, version, new_region_id, new_peers };
                        let TxnRef::Write(wtxn) = txn else { return Err(staged()) };
                        match apply_split(
                            &mut desc,
                            &split,
                            &state,
                            wtxn,
                            &mut sessions,
                            regions.as_mut().ok_or_else(staged)?,
                            meta.as_mut().ok_or_else(staged)?,
                            local_node,
                        )? {
                            Some((child, seeded, g)) => {
                                garbage.extend(g);
                                // Before the commit: see `RegionShared::range_version`.
                                range_version.store(desc.epoch.version, Ordering::SeqCst);
                                desc_changed = true;
                                splits.push((child, seeded));
                                res.push(ApplyResult::Split);
                            }
                            None => res.push(ApplyResult::SplitRefused),
                        }
                        continue;
                    }
                    LogCommand::PrepareMergeV1 { conf_ver, version, target, target_epoch } => {
                        let current = (desc.epoch.conf_ver, desc.epoch.version) == (conf_ver, version);
                        if merging.is_some() || !current {
                            res.push(ApplyResult::MergeRefused);
                            continue;
                        }
                        merging = Some(MergeState { target, target_epoch, prepare_index: index });
                        // Clients holding the region's old epoch are refused and look
                        // it up again; reads admitted before are refused too.
                        desc.epoch.version += 1;
                        range_version.store(desc.epoch.version, Ordering::SeqCst);
                        desc_changed = true;
                        res.push(ApplyResult::MergePrepared);
                        continue;
                    }
                    LogCommand::RollbackMergeV1 { prepare_index } => {
                        if merging.map(|m| m.prepare_index) != Some(prepare_index) {
                            res.push(ApplyResult::MergeRefused);
                            continue;
                        }
                        merging = None;
                        desc.epoch.version += 1;
                        range_version.store(desc.epoch.version, Ordering::SeqCst);
                        desc_changed = true;
                        res.push(ApplyResult::MergeRolledBack);
                        continue;
                    }
                    cmd @ LogCommand::CommitMergeV1 { .. } => {
                        let merge = CommitMerge::from_command(&cmd).expect("a commit merge");
                        if !merge.acceptable(&desc, merging) {
                            res.push(ApplyResult::MergeRefused);
                            continue;
                        }
                        // Before the commit: see `RegionShared::range_version`.
                        let version = desc.epoch.version.max(merge.source_epoch.1) + 1;
                        range_version.store(version, Ordering::SeqCst);
                        // The source's record must say it is prepared into this
                        // region at this prepare: anything else means the protocol
                        // broke (a rollback alongside a commit); stop rather than take
                        // rows that are not the source's final state.
                        let TxnRef::Write(wtxn) = txn else { return Err(staged()) };
                        let source_merge =
                            match regions.as_ref().ok_or_else(staged)?.get(merge.source).map_err(io_err)? {
                                Some(r) => super::records::decode::<RegionRecord>(r.value())?.merging(),
                                None => None,
                            };
                        if source_merge.is_none_or(|m| m.target != region || m.prepare_index != merge.prepare_index) {
                            return Err(io::Error::other(format!(
                                "region {region} cannot absorb region {}: its record here is not prepared to merge \
                                     into it at index {} ({source_merge:?})",
                                merge.source, merge.prepare_index
                            )));
                        }
                        let source = snapshot::state_from(
                            meta.as_ref().ok_or_else(staged)?,
                            &wtxn.open_table(tables::DATA_IDS).map_err(io_err)?,
                            &wtxn.open_table(tables::SESSION_IDS).map_err(io_err)?,
                            merge.source,
                        )?;
                        absorb(&state, &source, &mut sessions, data.write()?, &merge)?;
                        desc.end_key = merge.source_end.clone();
                        desc.epoch.version = version;
                        desc_changed = true;
                        merged.push((RegionId(merge.source), index));
                        res.push(ApplyResult::Merged);
                        continue;
                    }
                };
                // A split between the proposal and this entry moved a key away: refuse
                // (the client retries on the region now holding it).
                if !op.keys().iter().all(|k| desc.contains(k)) {
                    res.push(ApplyResult::KeyNotInRange);
                    continue;
                }
                let mut op = op;
                if let Some(s) = session {
                    match sessions.admit(s, &op)? {
                        Admit::Apply => {}
                        // Other parts of this batch were applied under its seq: only the
                        // keys not applied yet are written (and recorded).
                        Admit::ApplyPart(part) => op = part,
                        Admit::Replay(r) | Admit::Refuse(r) => {
                            res.push(r);
                            continue;
                        }
                    }
                }
                let (r, k, b) = execute(&data, &overlay, &size, id, &op)?;
                dk += k;
                db += b;
                if let Some(s) = session {
                    sessions.record(s, &op, &r, index, state.clock.clock_ms)?;
                }
                res.push(r);
            }
            sessions.flush()?;
            if desc_changed {
                regions
                    .as_mut()
                    .ok_or_else(staged)?
                    .insert(region, encode(&RegionRecord::with_merge(&desc, merging))?.as_slice())
                    .map_err(io_err)?;
            }
            let meta_row = encode(&SmMetaRecord::from_state(&state))?;
            match meta.as_mut() {
                Some(meta) => drop(meta.insert(region, meta_row.as_slice()).map_err(io_err)?),
                None => overlay.meta_put(region, meta_row),
            }
            let collect = !garbage.is_empty();
            if collect {
                drop((data, sessions, regions, meta));
                let TxnRef::Write(wtxn) = txn else { return Err(staged()) };
                snapshot::queue_garbage(wtxn, garbage)?;
            }
            let new_desc = desc_changed.then_some(desc);
            let late = answer(responders, res, &early);
            *out.lock().unwrap_or_else(|p| p.into_inner()) =
                Some(Applied { late, dk, db, state, new_desc, splits, collect, merging, merged });
            Ok(())
        });
        if splits_here {
            self.engine.write(Box::new(move |txn| work(TxnRef::Write(txn)))).await?;
        } else if plain {
            self.engine.apply_plain(work, may_stage).await?;
        } else {
            self.engine.write_lazy(Box::new(move |txn| work(TxnRef::Write(txn)))).await?;
        }
        crate::metrics::STAGES.apply.record(started.elapsed());
        let Applied { late, dk, db, state, new_desc, splits, collect, merging, merged } = results
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take()
            .ok_or_else(|| io::Error::other("apply produced no output"))?;
        self.state = state;
        if collect {
            snapshot::spawn_garbage_collection(self.engine.clone());
        }
        if let Some(desc) = new_desc {
            tracing::info!(region_id = region, epoch = ?desc.epoch, end_key_len = desc.end_key.len(), "region descriptor changed");
            *self.shared.descriptor.write().unwrap_or_else(|p| p.into_inner()) = desc;
        }
        *self.shared.merging.lock().unwrap_or_else(|p| p.into_inner()) = merging;
        self.shared.approx.add(dk, db);
        if !splits.is_empty() || !merged.is_empty() {
            // A half left, or a neighbour's range joined: count the range again.
            self.shared.recount(&self.engine);
        }
        for (child, seeded) in splits {
            tracing::info!(region_id = region, new_region_id = child.id.0, seeded, "region split");
            {
                let mut off = self.shared.split_off.lock().unwrap_or_else(|p| p.into_inner());
                off.push(child.clone());
                // Only the recent ones matter; keep the list short.
                if off.len() > 16 {
                    off.remove(0);
                }
            }
            if let Some(tx) = self.shared.events.get() {
                let _ = tx.send(RegionEvent::Split { parent: self.shared.region_id, child, seeded });
            }
        }
        for (source, index) in merged {
            self.shared.last_merge_index.fetch_max(index, Ordering::SeqCst);
            // The source is gone: never point a client (or PD) at it again.
            self.shared.split_off.lock().unwrap_or_else(|p| p.into_inner()).retain(|d| d.id != source);
            tracing::info!(region_id = region, source = source.0, "region absorbed its right neighbour");
            if let Some(tx) = self.shared.events.get() {
                let _ = tx.send(RegionEvent::Merged { target: self.shared.region_id, source });
            }
        }
        for (responder, r) in late {
            responder.send(r);
        }
        if let Some(changes) = self.shared.node_changes.get() {
            changes.bump();
        }
        Ok(())
    }
}

/// Answers the proposers of the entries marked `early` now, and returns the others' with
/// their results (answered once the batch's effects are published).
///
/// A client write is answered as soon as its result is computed, inside the apply's
/// transaction, before that commits: its entry is committed (durable on a majority), and
/// the result is a function of the log up to it, so every replica, and this one applying
/// the log again after a crash, computes the same. Nothing can observe the write's absence
/// after the answer: a linearizable read waits until openraft's applied index reaches its
/// read index, and that moves only when `apply` returns, after the commit; a later write
/// applies after this one. A commit that fails fail-stops the node's storage, and the
/// other replicas apply the entry. What this saves is the wait for the commit and for the
/// group commit's other jobs (docs/life-of-a-write.md, "Answered before the commit").
fn answer<A: Answer>(responders: Vec<Option<A>>, res: Vec<ApplyResult>, early: &[bool]) -> Vec<(A, ApplyResult)> {
    let mut late = Vec::new();
    for ((responder, r), &early) in responders.into_iter().zip(res).zip(early) {
        match responder {
            Some(responder) if early => responder.send(r),
            Some(responder) => late.push((responder, r)),
            None => {}
        }
    }
    late
}

/// A merge commit's fields.
struct CommitMerge {
    target_epoch: (u64, u64),
    source: u64,
    source_start: Vec<u8>,
    source_end: Vec<u8>,
    source_epoch: (u64, u64),
    source_peers: Vec<(u64, u64)>,
    prepare_index: u64,
}

impl CommitMerge {
    fn from_command(cmd: &LogCommand) -> Option<CommitMerge> {
        match cmd {
            LogCommand::CommitMergeV1 {
                target_epoch,
                source,
                source_start,
                source_end,
                source_epoch,
                source_peers,
                prepare_index,
            } => Some(CommitMerge {
                target_epoch: *target_epoch,
                source: *source,
                source_start: source_start.clone(),
                source_end: source_end.clone(),
                source_epoch: *source_epoch,
                source_peers: source_peers.clone(),
                prepare_index: *prepare_index,
            }),
            _ => None,
        }
    }

    /// Whether the target `desc` (not itself prepared to merge: `merging`) absorbs the
    /// source: it is still at the epoch the merge was prepared against, the source is its
    /// right neighbour, and both have their voters on the same nodes. Depends only on the
    /// target's log, so every replica decides the same.
    fn acceptable(&self, desc: &RegionDescriptor, merging: Option<MergeState>) -> bool {
        use std::collections::BTreeSet;
        let nodes: BTreeSet<u64> = desc.peers.iter().map(|p| p.node_id.0).collect();
        let source_nodes: BTreeSet<u64> = self.source_peers.iter().map(|(_, n)| *n).collect();
        merging.is_none()
            && (desc.epoch.conf_ver, desc.epoch.version) == self.target_epoch
            && !self.source_start.is_empty()
            && desc.end_key == self.source_start
            && nodes == source_nodes
            && nodes.len() == self.source_peers.len()
    }
}

/// Takes over the rows of a merge's source, whose state is `source` (prepared, so final:
/// its replica here has applied the prepare): rows under another data id are copied to the
/// target's (the originals are collected when the source's replica is destroyed, once no
/// replica anywhere needs the source any more), rows under the same data id (a source split
/// off the target, or off a region sharing its id) stay where they are; the source's
/// session rows are merged into the target's ([`Sessions::absorb`]).
fn absorb(
    state: &SmState,
    source: &SmState,
    sessions: &mut Sessions<'_>,
    data: &mut redb::Table<'_, &'static [u8], &'static [u8]>,
    merge: &CommitMerge,
) -> io::Result<()> {
    if source.data_id != state.data_id {
        let (lo, hi) = data_range(source.data_id, &merge.source_start, &merge.source_end);
        let rows: Vec<(Vec<u8>, Vec<u8>)> = data
            .range(lo.as_slice()..hi.as_slice())
            .map_err(io_err)?
            .map(|r| r.map(|(k, v)| (k.value()[8..].to_vec(), v.value().to_vec())))
            .collect::<Result<_, _>>()
            .map_err(io_err)?;
        for (k, v) in rows {
            data.insert(data_key(state.data_id, &k).as_slice(), v.as_slice()).map_err(io_err)?;
        }
    }
    if source.session_id != state.session_id {
        sessions.absorb(source.session_id)?;
    }
    Ok(())
}

/// Builds the snapshots openraft asks for to purge the log: their metadata only, the
/// region's applied state as of its last commit (see [`Snapshots`]). openraft then purges
/// the log up to it, less `keep_after_snapshot` entries, and the log engine records that
/// purge only once a durable redb commit covers it (docs/storage.md, "The purge rule").
#[derive(Debug)]
pub struct RegionSnapshotBuilder {
    region: u64,
    engine: Engine,
    current: CurrentSnapshot,
}

impl RaftSnapshotBuilder<TypeConfig> for RegionSnapshotBuilder {
    type SnapshotData = SnapshotData;

    async fn build_snapshot(&mut self) -> Result<Snapshot, io::Error> {
        let state = snapshot::applied_state(&self.engine, self.region)?;
        tracing::debug!(region_id = self.region, index = state.applied.map_or(0, |l| l.index), "snapshot built");
        let meta = SnapshotMeta { last_log_id: state.applied, last_membership: state.membership };
        self.current.lock().unwrap_or_else(|p| p.into_inner()).built = Some(meta.clone());
        Ok(Snapshot { meta, snapshot: SnapshotFile::unwritten() })
    }
}

#[cfg(test)]
mod range_check_tests {
    use std::sync::atomic::AtomicU64;

    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_read_whose_range_version_moved_is_refused_and_never_answers() {
        let dir = tempfile::tempdir().unwrap();
        let engine = Engine::open(&dir.path().join("db.redb")).unwrap();
        engine
            .write(Box::new(|txn| {
                let mut data = txn.open_table(tables::DATA).map_err(io_err)?;
                data.insert(data_key(3, b"k").as_slice(), b"v".as_slice()).map_err(io_err)?;
                Ok(())
            }))
            .await
            .unwrap();
        let version = AtomicU64::new(2);
        assert_eq!(read_get(&engine, 3, Some((&version, 2)), b"k").unwrap(), Some(b"v".to_vec()));
        // A split set the version before its commit: a read admitted at version 2 is refused
        // whatever it read.
        version.store(3, Ordering::SeqCst);
        for e in [
            read_get(&engine, 3, Some((&version, 2)), b"k").map(|_| ()).unwrap_err(),
            read_batch(&engine, 3, Some((&version, 2)), &[b"k".to_vec()], 1 << 20).map(|_| ()).unwrap_err(),
            read_scan(&engine, 3, Some((&version, 2)), b"", b"", 10, 1 << 20, false).map(|_| ()).unwrap_err(),
        ] {
            assert!(e.get_ref().is_some_and(|i| i.is::<RangeChanged>()), "{e}");
        }
        assert!(read_get(&engine, 3, None, b"k").is_ok(), "unchecked reads (inspection) still work");
    }
}

#[cfg(test)]
mod merge_tests {
    use openraft::entry::RaftEntry;
    use openraft::vote::RaftLeaderIdExt;
    use std::time::Duration;

    use tessera_wire::{NodeId, Peer, PeerId, RegionEpoch};

    use super::*;
    use crate::raft::types::{Entry, LogId};

    fn log_id(index: u64) -> LogId {
        LogId::new(<openraft::alias::LeaderIdOf<TypeConfig> as RaftLeaderIdExt>::new_committed(1, 1), index)
    }

    fn put(key: &[u8]) -> LogCommand {
        LogCommand::WriteV2 {
            session: None,
            op: LogOp::Put(key.to_vec(), b"v".to_vec()),
            at_ms: 1,
            session_ttl_ms: 1 << 40,
        }
    }

    fn region(id: u64, start: &[u8], end: &[u8]) -> RegionDescriptor {
        RegionDescriptor {
            id: RegionId(id),
            start_key: start.to_vec(),
            end_key: end.to_vec(),
            epoch: RegionEpoch { conf_ver: 6, version: 3 },
            peers: (1..=3).map(|n| Peer { id: PeerId(id * 10 + n), node_id: NodeId(n) }).collect(),
        }
    }

    /// A state machine of `desc` over `engine`, its record written first (as a node does).
    async fn machine(engine: &Engine, desc: &RegionDescriptor) -> RegionStateMachine {
        let (id, record) = (desc.id.0, encode(&RegionRecord::from_descriptor(desc)).unwrap());
        engine
            .write(Box::new(move |txn| {
                let mut t = txn.open_table(tables::REGIONS).map_err(io_err)?;
                if t.get(id).map_err(io_err)?.is_none() {
                    t.insert(id, record.as_slice()).map_err(io_err)?;
                }
                Ok(())
            }))
            .await
            .unwrap();
        RegionStateMachine::open(engine, RegionShared::new(desc.clone(), 0)).unwrap()
    }

    async fn apply(sm: &mut RegionStateMachine, index: u64, cmd: LogCommand) {
        let entry = Entry::new_normal(log_id(index), cmd);
        sm.apply(futures::stream::iter(vec![Ok((entry, None))])).await.unwrap();
    }

    /// Splits `whole` at `m` into a new region 2.
    fn split_at_m(whole: &RegionDescriptor) -> LogCommand {
        LogCommand::SplitV1 {
            key: b"m".to_vec(),
            version: whole.epoch.version,
            new_region_id: 2,
            new_peers: vec![(21, 1), (22, 2), (23, 3)],
        }
    }

    fn get(engine: &Engine, region: u64, key: &[u8]) -> Option<Vec<u8>> {
        read_get(engine, region, None, key).unwrap()
    }

    fn prepare(desc: &RegionDescriptor, target: &RegionDescriptor) -> LogCommand {
        LogCommand::PrepareMergeV1 {
            conf_ver: desc.epoch.conf_ver,
            version: desc.epoch.version,
            target: target.id.0,
            target_epoch: (target.epoch.conf_ver, target.epoch.version),
        }
    }

    fn write(op: LogOp) -> LogCommand {
        LogCommand::WriteV2 { session: None, op, at_ms: 1, session_ttl_ms: 1 << 40 }
    }

    /// The pairs of the snapshot file at `path`, in order.
    fn snapshot_pairs(path: &std::path::Path) -> Pairs {
        let mut reader = snapshot::SnapshotReader::open(path).unwrap();
        let mut pairs = Vec::new();
        while let Some(item) = reader.next_item().unwrap() {
            if let crate::storage::records::SnapshotItem::Pair(k, v) = item {
                pairs.push((k, v));
            }
        }
        pairs
    }

    /// The keys of the snapshot file at `path`, in order.
    fn snapshot_keys(path: &std::path::Path) -> Vec<Vec<u8>> {
        snapshot_pairs(path).into_iter().map(|(k, _)| k).collect()
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn applied_writes_wait_in_the_overlay_and_reads_scans_and_snapshots_see_them() {
        let dir = tempfile::tempdir().unwrap();
        let engine = Engine::open(&dir.path().join("db.redb")).unwrap();
        let desc = region(1, b"", b"");
        let mut sm = machine(&engine, &desc).await;
        for (i, k) in [b"a", b"b", b"c"].iter().enumerate() {
            apply(&mut sm, i as u64 + 1, put(*k)).await;
        }
        // A durable commit writes them to the table.
        engine.write(Box::new(|_| Ok(()))).await.unwrap();
        assert!(engine.overlay().is_empty());
        // A deletion, a new key and an append stay in the overlay.
        apply(&mut sm, 4, write(LogOp::Delete(b"b".to_vec()))).await;
        apply(&mut sm, 5, put(b"d")).await;
        apply(&mut sm, 6, write(LogOp::Append(b"a".to_vec(), b"+".to_vec()))).await;
        assert_eq!(engine.overlay().len(), 3);
        let in_table = |key: &[u8]| {
            let txn = engine.read().unwrap();
            let t = txn.open_table(tables::DATA).unwrap();
            let v = t.get(data_key(1, key).as_slice()).unwrap().map(|v| v.value().to_vec());
            v
        };
        assert_eq!(in_table(b"b"), Some(b"v".to_vec()), "the deletion has not reached the table");
        assert_eq!(in_table(b"d"), None);

        assert_eq!(get(&engine, 1, b"a"), Some(b"v+".to_vec()), "the append read the table's row");
        assert_eq!(get(&engine, 1, b"b"), None);
        assert_eq!(get(&engine, 1, b"d"), Some(b"v".to_vec()));
        let keys = |pairs: &Pairs| pairs.iter().map(|(k, _)| k.clone()).collect::<Vec<_>>();
        let (pairs, resume) = read_scan(&engine, 1, None, b"", b"", 10, usize::MAX, false).unwrap();
        assert_eq!(keys(&pairs), vec![b"a".to_vec(), b"c".to_vec(), b"d".to_vec()]);
        assert_eq!(pairs[0].1, b"v+".to_vec());
        assert_eq!(resume, None);
        let (pairs, _) = read_scan(&engine, 1, None, b"", b"", 10, usize::MAX, true).unwrap();
        assert_eq!(keys(&pairs), vec![b"d".to_vec(), b"c".to_vec(), b"a".to_vec()]);
        let (pairs, resume) = read_scan(&engine, 1, None, b"", b"", 2, usize::MAX, false).unwrap();
        assert_eq!(keys(&pairs), vec![b"a".to_vec(), b"c".to_vec()]);
        assert_eq!(resume, Some(b"d".to_vec()));
        let batch = read_batch(&engine, 1, None, &[b"b".to_vec(), b"c".to_vec(), b"d".to_vec()], usize::MAX).unwrap();
        assert_eq!(batch, vec![None, Some(b"v".to_vec()), Some(b"v".to_vec())]);

        // A snapshot holds the state of index 6: the overlay's rows over the table's.
        let (state, file) = snapshot::build(&engine, 1).unwrap();
        assert_eq!(state.applied.map(|l| l.index), Some(6));
        assert_eq!(
            snapshot_pairs(file.path()),
            vec![(b"a".to_vec(), b"v+".to_vec()), (b"c".to_vec(), b"v".to_vec()), (b"d".to_vec(), b"v".to_vec())]
        );
        // The region's key count followed the overlay.
        sm.shared.count_now(&engine).unwrap();
        assert_eq!(sm.shared.approx.keys(), 3);
    }

    /// A session sweep needs no write transaction: the apply that makes one is staged like
    /// any other plain write (it used to wait for the writer, and its region with it).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_apply_that_sweeps_sessions_for_expiry_is_staged() {
        let dir = tempfile::tempdir().unwrap();
        let engine = Engine::open(&dir.path().join("db.redb")).unwrap();
        let mut sm = machine(&engine, &region(1, b"", b"")).await;
        let append = |id: u64, seq: u64, at_ms: u64| LogCommand::WriteV2 {
            session: Some(SessionRef { id, seq, first_pending: seq }),
            op: LogOp::Append(b"k".to_vec(), vec![b'0' + id as u8]),
            at_ms,
            session_ttl_ms: 5_000,
        };
        apply(&mut sm, 1, append(7, 1, 1_000)).await;
        engine.write(Box::new(|_| Ok(()))).await.unwrap();
        let staged = || engine.stats().staged.load(std::sync::atomic::Ordering::SeqCst);
        let before = staged();
        engine.wait_until_writer_idle().await;
        // Past the sweep interval of the region's clock: session 7 (idle since 1 s) expires.
        apply(&mut sm, 2, append(8, 1, 1_000 + crate::storage::sessions::SWEEP_INTERVAL_MS)).await;
        assert_eq!(staged(), before + 1, "the sweeping apply was staged");
        assert_eq!(sm.state.clock.last_sweep_ms, 1_000 + crate::storage::sessions::SWEEP_INTERVAL_MS);
        // Session 7's next write is refused (expired), not applied.
        apply(&mut sm, 3, append(7, 2, 12_000)).await;
        assert_eq!(get(&engine, 1, b"k"), Some(b"78".to_vec()));
        // And so it stays once the stages reach the tables.
        engine.write(Box::new(|_| Ok(()))).await.unwrap();
        apply(&mut sm, 4, append(7, 3, 12_000)).await;
        assert_eq!(get(&engine, 1, b"k"), Some(b"78".to_vec()));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_batch_larger_than_a_staged_apply_is_staged_in_parts() {
        let dir = tempfile::tempdir().unwrap();
        let engine = Engine::open(&dir.path().join("db.redb")).unwrap();
        let mut sm = machine(&engine, &region(1, b"", b"")).await;
        engine.wait_until_writer_idle().await;
        let stats = engine.stats();
        let (staged, jobs) = (stats.staged.load(Ordering::SeqCst), stats.jobs.load(Ordering::SeqCst));
        // Two full parts and a partial one, as one batch from openraft (a region's batch at
        // 256 writes in flight).
        let n = 2 * APPLY_STAGED_MAX as u64 + 22;
        let batch: Vec<_> =
            (1..=n).map(|i| Ok((Entry::new_normal(log_id(i), put(format!("k{i:03}").as_bytes())), None))).collect();
        sm.apply(futures::stream::iter(batch)).await.unwrap();
        assert_eq!(stats.staged.load(Ordering::SeqCst), staged + 3, "staged in three parts");
        assert_eq!(stats.jobs.load(Ordering::SeqCst), jobs + 3, "no part went to the writer");
        assert_eq!(sm.state.applied.map(|l| l.index), Some(n));
        for i in 1..=n {
            assert_eq!(get(&engine, 1, format!("k{i:03}").as_bytes()), Some(b"v".to_vec()), "k{i:03}");
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn exactly_once_results_wait_in_the_dedup_stage_and_retries_snapshots_and_durable_commits_see_them() {
        let dir = tempfile::tempdir().unwrap();
        let engine = Engine::open(&dir.path().join("db.redb")).unwrap();
        let mut sm = machine(&engine, &region(1, b"", b"")).await;
        let append = |seq: u64, first_pending: u64| LogCommand::WriteV2 {
            session: Some(SessionRef { id: 7, seq, first_pending }),
            op: LogOp::Append(b"k".to_vec(), vec![b'0' + seq as u8]),
            at_ms: 1,
            session_ttl_ms: 1 << 40,
        };
        let in_table = || {
            let txn = engine.read().unwrap();
            redb::ReadableTableMetadata::len(&txn.open_table(tables::DEDUP).unwrap()).unwrap()
        };
        let dedup_in_snapshot = || {
            let (_, file) = snapshot::build(&engine, 1).unwrap();
            let mut reader = snapshot::SnapshotReader::open(file.path()).unwrap();
            let mut seqs = Vec::new();
            while let Some(item) = reader.next_item().unwrap() {
                if let crate::storage::records::SnapshotItem::Dedup(7, seq, _) = item {
                    seqs.push(seq);
                }
            }
            seqs
        };
        apply(&mut sm, 1, append(1, 1)).await;
        apply(&mut sm, 2, append(2, 1)).await;
        assert_eq!((engine.overlay().dedup_len(), in_table()), (2, 0), "both results are staged");
        // A retry of seq 2 (its answer was lost) is answered from the stage, not applied again.
        apply(&mut sm, 3, append(2, 1)).await;
        assert_eq!(get(&engine, 1, b"k"), Some(b"12".to_vec()));
        assert_eq!(dedup_in_snapshot(), vec![1, 2], "a snapshot carries the staged results");

        // The client has its answers below 3: those results go without reaching the table.
        apply(&mut sm, 4, append(3, 3)).await;
        assert_eq!((engine.overlay().dedup_len(), in_table()), (1, 0));
        assert_eq!(dedup_in_snapshot(), vec![3]);
        // A durable commit writes the live one to the table, with the applied index.
        engine.write(Box::new(|_| Ok(()))).await.unwrap();
        assert_eq!((engine.overlay().dedup_len(), in_table()), (0, 1));
        apply(&mut sm, 5, append(3, 3)).await;
        assert_eq!(get(&engine, 1, b"k"), Some(b"123".to_vec()), "a retry found the table's result");
        assert_eq!(dedup_in_snapshot(), vec![3]);
        // Once acknowledged, the table's row goes too.
        apply(&mut sm, 6, append(4, 4)).await;
        engine.write(Box::new(|_| Ok(()))).await.unwrap();
        assert_eq!((engine.overlay().dedup_len(), in_table()), (0, 1));
        assert_eq!(dedup_in_snapshot(), vec![4]);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn building_a_snapshot_commits_nothing_and_does_not_wait_for_the_overlays_write_out() {
        use crate::storage::engine::tests::{hold_write_out, open_test, until_held};
        let dir = tempfile::tempdir().unwrap();
        let engine = open_test(&dir.path().join("db.redb")).unwrap();
        let mut sm = machine(&engine, &region(1, b"", b"")).await;
        let (held, release) = hold_write_out(&engine);
        apply(&mut sm, 1, put(b"a")).await;
        apply(&mut sm, 2, put(b"b")).await;
        assert!(engine.overlay().has_settle(), "the applies were staged");
        let built = sm.get_snapshot_builder().await.build_snapshot().await.unwrap();
        assert_eq!(built.meta.last_log_id.map(|l| l.index), Some(2), "the staged applied state");
        assert_eq!(built.meta.last_membership, sm.state.membership);
        assert!(engine.overlay().has_settle(), "nothing was committed for it");
        // The writer's write-out of the overlay, held: a build still takes the latest
        // applied state at once (a commit of its own would wait for the write-out's).
        assert!(until_held(held).await, "the writer made no write-out");
        apply(&mut sm, 3, put(b"c")).await;
        let during =
            tokio::time::timeout(std::time::Duration::from_secs(10), sm.get_snapshot_builder().await.build_snapshot())
                .await;
        release.send(()).unwrap();
        let built = during.expect("the build waited for the write-out").unwrap();
        assert_eq!(built.meta.last_log_id.map(|l| l.index), Some(3));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_built_snapshot_writes_no_file_and_one_is_written_only_when_asked_for() {
        let dir = tempfile::tempdir().unwrap();
        let engine = Engine::open(&dir.path().join("db.redb")).unwrap();
        let mut sm = machine(&engine, &region(1, b"", b"")).await;
        let files = || std::fs::read_dir(engine.snapshot_dir()).unwrap().count();
        let keys_in = |snap: &Snapshot| snapshot_keys(snap.snapshot.path());
        assert!(sm.get_current_snapshot().await.unwrap().is_none(), "nothing built yet");
        apply(&mut sm, 1, put(b"a")).await;
        apply(&mut sm, 2, put(b"b")).await;

        let built = sm.get_snapshot_builder().await.build_snapshot().await.unwrap();
        assert_eq!(built.meta.last_log_id.map(|l| l.index), Some(2));
        assert_eq!(built.meta.last_membership, sm.state.membership);
        assert_eq!(files(), 0, "building writes no file");
        assert!(std::fs::metadata(built.snapshot.path()).is_err(), "the built snapshot has no data to send");

        // Asked for one to send after more applies: a file of the state as of the last one.
        apply(&mut sm, 3, put(b"c")).await;
        let sent = sm.get_current_snapshot().await.unwrap().unwrap();
        sent.snapshot.written().await.unwrap();
        assert_eq!(sent.meta.last_log_id.map(|l| l.index), Some(3), "at or after the built one");
        assert_eq!(keys_in(&sent), vec![b"a".to_vec(), b"b".to_vec(), b"c".to_vec()]);
        assert_eq!(files(), 1);
        // Asked again with no newer build: the same file.
        apply(&mut sm, 4, put(b"d")).await;
        let again = sm.get_current_snapshot().await.unwrap().unwrap();
        assert_eq!((again.meta.clone(), again.snapshot.path()), (sent.meta.clone(), sent.snapshot.path()));
        // After a newer build: a new file, and the old one goes with its last handle.
        let built = sm.get_snapshot_builder().await.build_snapshot().await.unwrap();
        assert_eq!(built.meta.last_log_id.map(|l| l.index), Some(4));
        let newer = sm.get_current_snapshot().await.unwrap().unwrap();
        newer.snapshot.written().await.unwrap();
        assert_eq!(newer.meta.last_log_id.map(|l| l.index), Some(4));
        assert_eq!(keys_in(&newer).len(), 4);
        drop((sent, again));
        assert_eq!(files(), 1, "only the newest file is left");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_retired_replica_applies_and_installs_nothing_more() {
        let dir = tempfile::tempdir().unwrap();
        let engine = Engine::open(&dir.path().join("db.redb")).unwrap();
        let mut sm = machine(&engine, &region(1, b"", b"")).await;
        apply(&mut sm, 6, put(b"a")).await;
        sm.shared.retire().await;
        let entry = Entry::new_normal(log_id(7), put(b"b"));
        let err = sm.apply(futures::stream::iter(vec![Ok((entry, None))])).await.unwrap_err();
        assert!(err.to_string().contains("retired"), "{err}");
        assert_eq!(get(&engine, 1, b"b"), None);
        assert_eq!(sm.state.applied.map(|l| l.index()), Some(6));
        // An install queued before the group stopped is refused too, before it writes.
        let (_, file) = snapshot::build(&engine, 1).unwrap();
        let meta = SnapshotMeta { last_log_id: Some(log_id(6)), last_membership: sm.state.membership.clone() };
        let err = sm.install_snapshot(&meta, file.clone()).await.unwrap_err();
        assert!(err.to_string().contains("retired"), "{err}");
        // An install already past its lock when the replica is marked stops at its next
        // step, its staging rows listed as garbage.
        let flag = std::sync::atomic::AtomicBool::new(true);
        let err = snapshot::install(&engine, 1, &file, Some(log_id(6)), sm.state.membership.clone(), None, Some(&flag))
            .await
            .unwrap_err();
        assert!(err.to_string().contains("abandoned"), "{err}");
        assert_eq!(snapshot::read_state(&engine.read().unwrap(), 1).unwrap().data_id, 1, "no switch");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_split_commits_durably() {
        let dir = tempfile::tempdir().unwrap();
        let engine = Engine::open(&dir.path().join("db.redb")).unwrap();
        let whole = region(1, b"", b"");
        let mut sm = machine(&engine, &whole).await;
        apply(&mut sm, 6, put(b"p")).await;
        // A durable commit now, so that no lazy commit is due to be made durable (one is
        // after 500 ms) when the split applies: only the split itself can count.
        engine.write(Box::new(|_| Ok(()))).await.unwrap();
        let durable_commits = || engine.stats().commits.load(Ordering::SeqCst);
        let before = durable_commits();
        let split = split_at_m(&whole);
        apply(&mut sm, 7, split).await;
        assert_eq!(sm.shared.descriptor().end_key, b"m".to_vec(), "the split applied");
        assert_eq!(durable_commits(), before + 1, "its commit was durable");
        assert_eq!(get(&engine, 2, b"p"), Some(b"v".to_vec()), "the new region was seeded with its half");
    }

    /// A proposer waiting for its entry's result.
    struct Waiter(tokio::sync::oneshot::Sender<ApplyResult>);

    impl Answer for Waiter {
        fn send(self, result: ApplyResult) {
            let _ = self.0.send(result);
        }
    }

    fn waiter() -> (Option<Waiter>, tokio::sync::oneshot::Receiver<ApplyResult>) {
        let (tx, rx) = tokio::sync::oneshot::channel();
        (Some(Waiter(tx)), rx)
    }

    /// A client write's proposer hears its result from inside the apply's transaction,
    /// while the group commit it joined has not committed (another job of it is still
    /// running); a split's proposer only once the split is committed.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_client_write_is_answered_before_its_commit_and_a_split_after_it() {
        let dir = tempfile::tempdir().unwrap();
        let engine = Engine::open(&dir.path().join("db.redb")).unwrap();
        let whole = region(1, b"", b"");
        let mut sm = machine(&engine, &whole).await;
        // The writer is held inside a transaction, so what follows queues up behind it ...
        let (held, release_writer) = crate::storage::engine::tests::hold_writer(&engine).await;
        // ... a segment of a put and a split (its job is queued on the first poll) ...
        let (put_waiter, put_answer) = waiter();
        let (split_waiter, mut split_answer) = waiter();
        let split = split_at_m(&whole);
        let items =
            vec![(Work::Command(log_id(6), put(b"a")), put_waiter), (Work::Command(log_id(7), split), split_waiter)];
        let mut applying = Box::pin(sm.apply_segment(items));
        assert!(futures::poll!(&mut applying).is_pending());
        // ... and a job that keeps the batch from committing until released.
        let (release_commit, commit_released) = std::sync::mpsc::channel::<()>();
        let (blocker_tx, blocker_done) = tokio::sync::oneshot::channel();
        engine.submit(
            Box::new(move |_| {
                commit_released.recv().unwrap();
                Ok(())
            }),
            Box::new(move |r| {
                let _ = blocker_tx.send(r);
            }),
            0,
        );
        release_writer.send(()).unwrap();
        held.await.unwrap().unwrap();

        let answer = tokio::time::timeout(Duration::from_secs(30), put_answer).await;
        assert_eq!(answer.expect("the put was answered before its commit").unwrap(), ApplyResult::Done);
        assert_eq!(get(&engine, 1, b"a"), None, "the put is not committed yet");
        assert!(split_answer.try_recv().is_err(), "the split is answered after its commit");

        release_commit.send(()).unwrap();
        applying.await.unwrap();
        blocker_done.await.unwrap().unwrap();
        assert_eq!(split_answer.await.unwrap(), ApplyResult::Split);
        assert_eq!(get(&engine, 1, b"a"), Some(b"v".to_vec()), "committed");
    }

    /// A part of a batch whose seq already applied some of its keys (its parts were planned
    /// again after a split, and the halves merged back) writes only the others: the applied
    /// key keeps the newer value written since.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_batch_part_writes_only_the_keys_its_seq_has_not_applied() {
        let dir = tempfile::tempdir().unwrap();
        let engine = Engine::open(&dir.path().join("db.redb")).unwrap();
        let mut sm = machine(&engine, &region(1, b"", b"")).await;
        let part = |keys: &[&[u8]]| LogCommand::WriteV2 {
            session: Some(SessionRef { id: 7, seq: 5, first_pending: 5 }),
            op: LogOp::BatchPut(keys.iter().map(|k| (k.to_vec(), b"batch".to_vec())).collect()),
            at_ms: 1,
            session_ttl_ms: 1 << 40,
        };
        apply(&mut sm, 6, part(&[b"a"])).await;
        apply(&mut sm, 7, put(b"a")).await;
        apply(&mut sm, 8, part(&[b"a", b"c"])).await;
        assert_eq!(get(&engine, 1, b"a"), Some(b"v".to_vec()), "not written again");
        assert_eq!(get(&engine, 1, b"c"), Some(b"batch".to_vec()), "written once");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_prepared_region_refuses_writes_until_its_prepare_is_rolled_back() {
        let dir = tempfile::tempdir().unwrap();
        let engine = Engine::open(&dir.path().join("db.redb")).unwrap();
        let (left, right) = (region(1, b"", b"m"), region(2, b"m", b""));
        let mut sm = machine(&engine, &right).await;
        apply(&mut sm, 6, put(b"p")).await;
        assert!(get(&engine, 2, b"p").is_some());
        // A prepare against a stale epoch is refused.
        let mut stale = right.clone();
        stale.epoch.version -= 1;
        apply(&mut sm, 7, prepare(&stale, &left)).await;
        assert_eq!(sm.shared.merging(), None);
        apply(&mut sm, 8, prepare(&right, &left)).await;
        let merging = sm.shared.merging().expect("prepared");
        assert_eq!((merging.target, merging.prepare_index), (1, 8));
        assert_eq!(sm.shared.descriptor().epoch.version, 4, "the prepare raises the version");
        apply(&mut sm, 9, put(b"q")).await;
        assert_eq!(get(&engine, 2, b"q"), None, "a prepared region applies no write");
        // The prepare survives a restart (it is in the region record).
        assert_eq!(machine(&engine, &right).await.shared.merging(), Some(merging));
        // Only the current prepare can be rolled back.
        apply(&mut sm, 10, LogCommand::RollbackMergeV1 { prepare_index: 3 }).await;
        assert!(sm.shared.merging().is_some());
        apply(&mut sm, 11, LogCommand::RollbackMergeV1 { prepare_index: 8 }).await;
        assert_eq!(sm.shared.merging(), None);
        assert_eq!(sm.shared.descriptor().epoch.version, 5);
        apply(&mut sm, 12, put(b"q")).await;
        assert!(get(&engine, 2, b"q").is_some(), "writes apply again");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn retiring_a_target_whose_commit_waits_for_its_source_ends_the_wait() {
        // The node destroys the target while its merge commit waits for a local source that
        // will not apply its prepare (it may need the node's lifecycle lock, which the
        // destruction holds): the retirement must not wait for that, and nothing applies.
        let dir = tempfile::tempdir().unwrap();
        let engine = Engine::open(&dir.path().join("db.redb")).unwrap();
        let (left, right) = (region(1, b"", b"m"), region(2, b"m", b""));
        let mut target = machine(&engine, &left).await;
        let mut source = machine(&engine, &right).await;
        apply(&mut source, 6, put(b"p")).await;
        let mut prepared = right.clone();
        prepared.epoch.version += 1;
        let commit = LogCommand::commit_merge(left.epoch, &prepared, 7);
        let shared = target.shared.clone();
        let waiting = tokio::spawn(async move {
            let entry = Entry::new_normal(log_id(6), commit);
            target.apply(futures::stream::iter(vec![Ok((entry, None))])).await
        });
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert!(!waiting.is_finished(), "the commit did not wait for its source");
        tokio::time::timeout(Duration::from_secs(5), shared.retire()).await.expect("the retirement does not wait");
        let err = tokio::time::timeout(Duration::from_secs(5), waiting).await.unwrap().unwrap().unwrap_err();
        assert!(err.to_string().contains("retired"), "{err}");
        assert_eq!(shared.descriptor(), left, "the merge did not apply");
        assert_eq!(get(&engine, 1, b"p"), None);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_commit_waits_for_the_local_source_then_takes_its_rows_over() {
        let dir = tempfile::tempdir().unwrap();
        let engine = Engine::open(&dir.path().join("db.redb")).unwrap();
        let (left, right) = (region(1, b"", b"m"), region(2, b"m", b""));
        let mut target = machine(&engine, &left).await;
        let mut source = machine(&engine, &right).await;
        apply(&mut target, 6, put(b"a")).await;
        apply(&mut source, 6, put(b"p")).await;
        apply(&mut source, 7, put(b"q")).await;
        // The source's last snapshot before its prepare: metadata only.
        source.get_snapshot_builder().await.build_snapshot().await.unwrap();
        let mut prepared = right.clone();
        prepared.epoch.version += 1;
        let commit = |target_epoch: RegionEpoch| LogCommand::commit_merge(target_epoch, &prepared, 8);
        // A commit against another epoch of the target is refused at once.
        let mut other = left.epoch;
        other.conf_ver += 1;
        apply(&mut target, 7, commit(other)).await;
        assert_eq!(target.shared.descriptor(), left);
        // The commit waits for the local source to apply its prepare.
        let cmd = commit(left.epoch);
        let waiting = tokio::spawn(async move {
            apply(&mut target, 8, cmd).await;
            target
        });
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert!(!waiting.is_finished(), "the commit applied before the source's prepare");
        apply(&mut source, 8, prepare(&right, &region(1, b"", b"m"))).await;
        let target = tokio::time::timeout(Duration::from_secs(10), waiting).await.unwrap().unwrap();
        let merged = target.shared.descriptor();
        assert_eq!((merged.start_key.as_slice(), merged.end_key.as_slice()), (&b""[..], &b""[..]));
        assert_eq!(merged.epoch.version, 5, "above both regions' versions");
        // The source's rows (under another data id) are the target's now; the originals
        // stay until the source's replica is destroyed, and are collected then.
        for k in [&b"a"[..], b"p", b"q"] {
            assert!(get(&engine, 1, k).is_some(), "{k:?}");
        }
        snapshot::collect_garbage(&engine).await.unwrap();
        assert_eq!(crate::storage::inspect::row_counts(&engine).unwrap().data, 5);
        // Its snapshot would not be its final state any more: refused.
        let e = snapshot::build(&engine, 2).map(|_| ()).unwrap_err();
        assert!(e.get_ref().is_some_and(|i| i.is::<snapshot::MergedAway>()), "{e}");
        let e = source.get_snapshot_builder().await.build_snapshot().await.map(|_| ()).unwrap_err();
        assert!(e.get_ref().is_some_and(|i| i.is::<snapshot::MergedAway>()), "{e}");
        // The file written when it applied its prepare still serves a lagging replica: its
        // final state, as of the prepare.
        let frozen = source.get_current_snapshot().await.unwrap().expect("the prepare's snapshot");
        assert_eq!(frozen.meta.last_log_id.map(|l| l.index), Some(8));
        frozen.snapshot.written().await.unwrap();
        assert_eq!(snapshot_keys(frozen.snapshot.path()), vec![b"p".to_vec(), b"q".to_vec()]);
        let tombstone = encode(&RegionRecord::tombstone(&prepared, PeerId(21))).unwrap();
        engine.write(Box::new(move |txn| snapshot::retire_merged_region(txn, 2, 1, &tombstone))).await.unwrap();
        snapshot::collect_garbage(&engine).await.unwrap();
        let rows = crate::storage::inspect::row_counts(&engine).unwrap();
        assert_eq!((rows.data, rows.sm_meta, rows.regions, rows.tombstones), (3, 1, 1, 1), "{rows:?}");
        for k in [&b"a"[..], b"p", b"q"] {
            assert!(get(&engine, 1, k).is_some(), "{k:?} survives the source's destruction");
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_source_restarted_after_its_prepare_cuts_its_file_again_before_the_target_here_absorbs_it() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("db.redb");
        let (left, right) = (region(1, b"", b"m"), region(2, b"m", b""));
        {
            let engine = Engine::open(&path).unwrap();
            let mut target = machine(&engine, &left).await;
            let mut source = machine(&engine, &right).await;
            apply(&mut target, 6, put(b"a")).await;
            apply(&mut source, 6, put(b"p")).await;
            apply(&mut source, 7, put(b"q")).await;
            apply(&mut source, 8, prepare(&right, &left)).await;
            assert!(source.shared.merging().is_some());
            engine.close();
        }
        // The node restarts after the prepare applied, before its target absorbed it: the
        // file cut then is forgotten, and its target here opens first.
        let engine = Engine::open(&path).unwrap();
        let mut target = machine(&engine, &left).await;
        target.cut_frozen_state().await;
        let mut prepared = right.clone();
        prepared.epoch.version += 1;
        let cmd = LogCommand::commit_merge(left.epoch, &prepared, 8);
        let waiting = tokio::spawn(async move {
            apply(&mut target, 7, cmd).await;
            target
        });
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert!(!waiting.is_finished(), "the target absorbed the source before it started again");
        // The source starts as a node starts it (`open_region`): it cuts its file again.
        let mut source = RegionStateMachine::open(&engine, RegionShared::new(right.clone(), 0)).unwrap();
        assert_eq!(source.state.applied.map(|l| l.index), Some(8), "the prepare was durable");
        source.cut_frozen_state().await;
        let target = tokio::time::timeout(Duration::from_secs(10), waiting).await.unwrap().unwrap();
        let merged = target.shared.descriptor();
        assert_eq!((merged.start_key.as_slice(), merged.end_key.as_slice()), (&b""[..], &b""[..]));
        // Absorbed, the source can cut no file any more; the one cut at its start serves a
        // lagging replica its final state.
        let e = snapshot::build(&engine, 2).map(|_| ()).unwrap_err();
        assert!(e.get_ref().is_some_and(|i| i.is::<snapshot::MergedAway>()), "{e}");
        let frozen = source.get_current_snapshot().await.unwrap().expect("the file cut at the start");
        assert_eq!(frozen.meta.last_log_id.map(|l| l.index), Some(8));
        frozen.snapshot.written().await.unwrap();
        assert_eq!(snapshot_keys(frozen.snapshot.path()), vec![b"p".to_vec(), b"q".to_vec()]);
    }
}
