//! Table definitions. The byte layout is documented in `docs/storage.md`.

use redb::TableDefinition;

/// Raft log entries: (region id, log index) -> postcard `Entry`.
pub const LOGS: TableDefinition<(u64, u64), &[u8]> = TableDefinition::new("raft_log");
/// Raft metadata: (region id, name) -> postcard value. Names: `vote`, `purged`, `committed`.
pub const RAFT_META: TableDefinition<(u64, &str), &[u8]> = TableDefinition::new("raft_meta");
/// User data: data id (8 bytes, big-endian; the region id until a snapshot is installed,
/// see `SmState::data_id`) ++ user key -> value.
pub const DATA: TableDefinition<&[u8], &[u8]> = TableDefinition::new("data");
/// State machine metadata: region id -> postcard `SmMetaRecord`.
pub const SM_META: TableDefinition<u64, &[u8]> = TableDefinition::new("sm_meta");
/// Exactly-once table: (data id, session, seq) -> postcard `DedupRecord`.
pub const DEDUP: TableDefinition<(u64, u64, u64), &[u8]> = TableDefinition::new("dedup");
/// Client sessions: (data id, session) -> postcard `SessionRecord`.
pub const SESSIONS: TableDefinition<(u64, u64), &[u8]> = TableDefinition::new("sessions");
/// The data id of each region whose rows are not under its region id (after a snapshot
/// install): region id -> data id. Readers look it up with the rows, in one read
/// transaction; it is a separate table so that a read costs one integer lookup.
pub const DATA_IDS: TableDefinition<u64, u64> = TableDefinition::new("data_ids");
/// The session id (key prefix in `dedup` and `sessions`) of each region whose session
/// rows are not under its data id (a region split off): region id -> session id.
pub const SESSION_IDS: TableDefinition<u64, u64> = TableDefinition::new("session_ids");
/// Node-level metadata: name -> postcard value. Names: `next_data_id` (u64), `gc_data_ids`
/// (ids all of whose rows are garbage: abandoned snapshot installs), `gc_items` (rows of a
/// key range under a data id, or the session rows of a session id, that are garbage:
/// replaced and destroyed replicas, halves split off to another node),
/// `staging_data_ids` (installs in progress).
pub const NODE_META: TableDefinition<&str, &[u8]> = TableDefinition::new("node_meta");
/// Regions hosted by this node: region id -> postcard `RegionRecord`.
pub const REGIONS: TableDefinition<u64, &[u8]> = TableDefinition::new("regions");

/// The DATA-table key of `key` in `region`.
pub fn data_key(region: u64, key: &[u8]) -> Vec<u8> {
    let mut k = Vec::with_capacity(8 + key.len());
    k.extend_from_slice(&region.to_be_bytes());
    k.extend_from_slice(key);
    k
}

/// The DATA-table key range `[start, end)` of `region` (empty `end`: to the region's end).
pub fn data_range(region: u64, start: &[u8], end: &[u8]) -> (Vec<u8>, Vec<u8>) {
    let lo = data_key(region, start);
    let hi = if end.is_empty() {
        match region.checked_add(1) {
            Some(next) => next.to_be_bytes().to_vec(),
            None => vec![0xff; 9],
        }
    } else {
        data_key(region, end)
    };
    (lo, hi)
}
