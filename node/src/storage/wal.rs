//! The node's Raft log engine: one append-only write-ahead log shared by every region.
//!
//! Every region's log entries, votes, commit marks, truncations and purges are *records*
//! appended to one log of fixed-size *segments* (`raft-log/<seq>.wal`). One writer thread
//! takes every job queued at that moment, encodes their records into one reused buffer,
//! writes it with one `pwrite` and makes it durable with one `fdatasync`, then completes
//! them all (group commit across regions). A lazy job (a commit mark) does not wake the
//! writer: it waits in the queue for the next synced write. Writing into a preallocated
//! segment means the sync does not have to update file metadata on each append.
//!
//! Layout of a segment: a 16-byte header (`TWAL0001` and the segment's sequence number),
//! then records. A record is `len: u32, crc: u32` (CRC-32 of the body) and a body of `len`
//! bytes: `lsn: u64, kind: u8, region: u64`, then the kind's payload. `lsn` counts records
//! across segments, so a stale or misplaced record is never taken for a new one.
//!
//! Recovery reads the segments in order and rebuilds, per region, an index of where each
//! entry lives (spans of contiguous entries, one per record) and the region's vote, commit
//! mark and purge point. A record that is torn or fails its checksum ends the log if it is
//! in the last segment (the write that was in progress at the crash, never acknowledged):
//! the tail is zeroed and writing continues there. Anywhere else it is corruption, and the
//! log refuses to open.
//!
//! Space: every segment starts with a *checkpoint* record holding every region's vote,
//! commit mark and purge point. So once no region has a live entry in a segment, it and
//! every older segment can be deleted: their metadata is in the newer checkpoints.
//!
//! Fail-stop: a failed write or sync fails that batch and every later one; the engine never
//! retries (after a failed `fdatasync` the page cache can no longer be trusted). A restart
//! recovers to the last durable record.

use crate::lock;
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{mpsc, Arc, Condvar, Mutex, RwLock};

/// Size of a segment. A batch that does not fit in the rest of the current segment goes to
/// a new one (a single batch larger than a segment makes that segment larger).
pub const SEGMENT_BYTES: u64 = 64 * 1024 * 1024;
const MAGIC: &[u8; 8] = b"TWAL0001";
const SEGMENT_HEADER: u64 = 16;
const RECORD_HEADER: usize = 8;
/// lsn + kind + region.
const BODY_PREFIX: usize = 17;
/// Most jobs folded into one write.
const MAX_BATCH: usize = 4096;
/// How far ahead of the records a segment's space is written with zeros (see
/// `write_at_tail`). A segment is created sparse (`set_len`): the first write into a hole
/// allocates blocks, and on ext4 the `fdatasync` after it must then commit the journal too.
/// Measured here with 3 KiB appends, each followed by `fdatasync`: p50 0.15–0.21 ms into
/// holes, 0.11–0.13 ms with 256 KiB zeroed ahead (docs/storage.md).
const ZERO_AHEAD: u64 = 256 * 1024;

/// The span over which [`LingerGate`] averages what the writer found waiting.
const GATE_WINDOW: std::time::Duration = std::time::Duration::from_millis(100);

/// Group commit under load: when writes queue up faster than one sync at a time drains
/// them, the writer waits a moment after the first durable job so that the jobs of other
/// regions (and the next ones of the same region) share its `fdatasync`. Jobs that arrive
/// while it waits do not wake it.
///
/// Whether it waits follows what it found queued when it came back from its last syncs,
/// before any wait: the entries that arrived while it was writing. One writer in flight
/// leaves one entry per sync and never lingers, where a wait would only add latency; many
/// leave several, and a wait then gathers more of them. Counting what was queued before
/// the wait, rather than what a sync carried, keeps the wait from sustaining itself once
/// the load drops, and does not depend on how fast the machine is.
///
/// Measured figures are in docs/storage.md.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GroupCommit {
    /// How long the writer waits for more jobs before a sync, while lingering. Zero: never.
    pub linger: std::time::Duration,
    /// Linger only while the writer's syncs over the last 100 ms found at least this many
    /// log entries queued on average (before any wait). Zero: always.
    pub min_queued_entries: u32,
}

impl GroupCommit {
    /// Never linger: every sync starts as soon as a durable job is queued.
    pub const OFF: GroupCommit = GroupCommit { linger: std::time::Duration::ZERO, min_queued_entries: 0 };
}

impl Default for GroupCommit {
    fn default() -> Self {
        GroupCommit { linger: std::time::Duration::from_millis(1), min_queued_entries: 3 }
    }
}

/// Decides whether the writer lingers, from the entries it found queued at its syncs over
/// the last [`GATE_WINDOW`]. Time is passed in.
#[derive(Debug)]
struct LingerGate {
    cfg: GroupCommit,
    window_start: std::time::Instant,
    /// When the writer last finished a batch: the start of its idle time, if any.
    finished: std::time::Instant,
    queued: u64,
    syncs: u64,
    on: bool,
}

impl LingerGate {
    fn new(cfg: GroupCommit, now: std::time::Instant) -> LingerGate {
        LingerGate { cfg, window_start: now, finished: now, queued: 0, syncs: 0, on: cfg.min_queued_entries == 0 }
    }

    /// Whether the writer, woken at `woke`, had been idle for a whole window.
    fn paused(&self, woke: std::time::Instant) -> bool {
        woke.saturating_duration_since(self.finished) >= GATE_WINDOW
    }

    /// Counts one sync whose writer woke at `woke` and found `queued` entries waiting
    /// (before any linger); at the end of each window, turns lingering on or off by the
    /// window's average. A writer that had been idle for a window or more starts a new
    /// window with lingering off.
    fn observe(&mut self, queued: u64, woke: std::time::Instant) {
        if self.cfg.min_queued_entries == 0 {
            return;
        }
        if self.paused(woke) {
            self.on = false;
            self.window_start = woke;
            self.queued = 0;
            self.syncs = 0;
        }
        self.queued += queued;
        self.syncs += 1;
        if woke.saturating_duration_since(self.window_start) < GATE_WINDOW {
            return;
        }
        self.on = self.queued >= u64::from(self.cfg.min_queued_entries) * self.syncs;
        self.window_start = woke;
        self.queued = 0;
        self.syncs = 0;
    }

    /// Records that the writer finished a batch at `now` (its idle time, if any, starts).
    fn finish(&mut self, now: std::time::Instant) {
        self.finished = now;
    }

    /// How long to linger before the next sync, if at all.
    fn linger(&self) -> Option<std::time::Duration> {
        (self.on && !self.cfg.linger.is_zero()).then_some(self.cfg.linger)
    }

    /// [`LingerGate::linger`] for a writer woken at `woke`: none after an idle pause of a
    /// whole window, so the first write after a pause goes at once. (A slow sync is not a
    /// pause: idle time counts from the end of the last batch.)
    fn linger_at(&self, woke: std::time::Instant) -> Option<std::time::Duration> {
        if self.cfg.min_queued_entries != 0 && self.paused(woke) {
            None
        } else {
            self.linger()
        }
    }
}

const KIND_ENTRIES: u8 = 1;
const KIND_VOTE: u8 = 2;
const KIND_COMMITTED: u8 = 3;
const KIND_TRUNCATE: u8 = 4;
const KIND_PURGE: u8 = 5;
const KIND_CHECKPOINT: u8 = 6;
const KIND_RELOCATE: u8 = 7;
const KIND_FORGET: u8 = 8;

/// Segments kept before compaction copies the live entries of the oldest one forward, so
/// that a region whose log is not purged (an idle region) cannot pin every later segment.
pub const COMPACT_ABOVE_SEGMENTS: usize = 8;

/// One change to a region's log. Values (entries, vote, log ids) are opaque bytes: the log
/// engine does not know openraft's types.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    /// Entries `first, first + 1, …`; any entry of the region at or after `first` is
    /// replaced.
    Entries {
        /// Region.
        region: u64,
        /// Index of the first entry.
        first: u64,
        /// Encoded entries.
        entries: Vec<Vec<u8>>,
    },
    /// The region's vote.
    Vote {
        /// Region.
        region: u64,
        /// Encoded vote.
        vote: Vec<u8>,
    },
    /// The region's last known committed log id.
    Committed {
        /// Region.
        region: u64,
        /// Encoded log id.
        committed: Vec<u8>,
    },
    /// Deletes the region's entries at `from` and after.
    Truncate {
        /// Region.
        region: u64,
        /// First index deleted.
        from: u64,
    },
    /// Live entries `first, first + 1, …` of the region, copied forward by compaction: they
    /// replace the same entries where they were, and nothing before or after them.
    Relocate {
        /// Region.
        region: u64,
        /// Index of the first entry.
        first: u64,
        /// Encoded entries.
        entries: Vec<Vec<u8>>,
    },
    /// Deletes the region's entries up to `upto`, which becomes its purge point.
    Purge {
        /// Region.
        region: u64,
        /// Last index deleted.
        upto: u64,
        /// Encoded log id of entry `upto`.
        log_id: Vec<u8>,
    },
    /// Forgets the region: its entries, vote, commit and purge point (its replica was
    /// destroyed on this node).
    Forget {
        /// Region.
        region: u64,
    },
}

impl Op {
    fn region(&self) -> u64 {
        match self {
            Op::Entries { region, .. }
            | Op::Relocate { region, .. }
            | Op::Vote { region, .. }
            | Op::Committed { region, .. }
            | Op::Truncate { region, .. }
            | Op::Purge { region, .. }
            | Op::Forget { region } => *region,
        }
    }

    fn entry_count(&self) -> u64 {
        match self {
            Op::Entries { entries, .. } | Op::Relocate { entries, .. } => entries.len() as u64,
            _ => 0,
        }
    }

    /// Encoded size of the record, header included.
    fn record_len(&self) -> usize {
        RECORD_HEADER
            + BODY_PREFIX
            + match self {
                Op::Entries { entries, .. } | Op::Relocate { entries, .. } => {
                    12 + entries.iter().map(|e| 4 + e.len()).sum::<usize>()
                }
                Op::Vote { vote: b, .. } | Op::Committed { committed: b, .. } => b.len(),
                Op::Truncate { .. } => 8,
                Op::Purge { log_id, .. } => 8 + log_id.len(),
                Op::Forget { .. } => 0,
            }
    }

    fn encode(&self, lsn: u64, out: &mut Vec<u8>) {
        let start = begin_record(out, lsn, self.kind(), self.region());
        match self {
            Op::Entries { first, entries, .. } | Op::Relocate { first, entries, .. } => {
                out.extend_from_slice(&first.to_le_bytes());
                out.extend_from_slice(&(entries.len() as u32).to_le_bytes());
                for e in entries {
                    out.extend_from_slice(&(e.len() as u32).to_le_bytes());
                    out.extend_from_slice(e);
                }
            }
            Op::Vote { vote: b, .. } | Op::Committed { committed: b, .. } => out.extend_from_slice(b),
            Op::Truncate { from, .. } => out.extend_from_slice(&from.to_le_bytes()),
            Op::Purge { upto, log_id, .. } => {
                out.extend_from_slice(&upto.to_le_bytes());
                out.extend_from_slice(log_id);
            }
            Op::Forget { .. } => {}
        }
        finish_record(out, start);
    }

    fn kind(&self) -> u8 {
        match self {
            Op::Entries { .. } => KIND_ENTRIES,
            Op::Relocate { .. } => KIND_RELOCATE,
            Op::Vote { .. } => KIND_VOTE,
            Op::Committed { .. } => KIND_COMMITTED,
            Op::Truncate { .. } => KIND_TRUNCATE,
            Op::Purge { .. } => KIND_PURGE,
            Op::Forget { .. } => KIND_FORGET,
        }
    }
}

/// Starts a record in `out`: a header to fill in by [`finish_record`], then the body prefix.
fn begin_record(out: &mut Vec<u8>, lsn: u64, kind: u8, region: u64) -> usize {
    let start = out.len();
    out.extend_from_slice(&[0u8; RECORD_HEADER]);
    out.extend_from_slice(&lsn.to_le_bytes());
    out.push(kind);
    out.extend_from_slice(&region.to_le_bytes());
    start
}

fn finish_record(out: &mut [u8], start: usize) {
    let body = &out[start + RECORD_HEADER..];
    let len = body.len() as u32;
    let crc = crc32fast::hash(body);
    out[start..start + 4].copy_from_slice(&len.to_le_bytes());
    out[start + 4..start + 8].copy_from_slice(&crc.to_le_bytes());
}

/// Where a run of a region's entries lives: one `Entries` record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Span {
    /// First live index in the record.
    first: u64,
    /// Last live index in the record (inclusive).
    last: u64,
    /// Index of the record's first entry (may be below `first` after a purge).
    record_first: u64,
    segment: u64,
    /// Offset of the record (its header) in the segment.
    offset: u64,
    /// Length of the record, header included.
    len: u32,
}

/// A region's state in the log.
#[derive(Debug, Clone, Default)]
struct RegionIndex {
    spans: VecDeque<Span>,
    vote: Option<Vec<u8>>,
    committed: Option<Vec<u8>>,
    purged: Option<(u64, Vec<u8>)>,
}

impl RegionIndex {
    fn drop_from(&mut self, from: u64) {
        while let Some(back) = self.spans.back_mut() {
            if back.first >= from {
                self.spans.pop_back();
            } else {
                back.last = back.last.min(from - 1);
                break;
            }
        }
    }

    /// Puts `span` in place of whatever spans hold its entries (a relocation): the entries
    /// before and after it stay where they are. (Relocations written before 2026-12-03
    /// always replaced a prefix of the log, which this reads the same way.)
    fn replace_range(&mut self, span: Span) {
        let (first, last) = (span.first, span.last);
        let mut out = VecDeque::with_capacity(self.spans.len() + 2);
        let mut placed = false;
        for s in self.spans.drain(..) {
            if s.last < first {
                out.push_back(s);
                continue;
            }
            if s.first > last {
                if !std::mem::replace(&mut placed, true) {
                    out.push_back(span);
                }
                out.push_back(s);
                continue;
            }
            // Overlapping: keep the parts outside the relocated range.
            if s.first < first {
                out.push_back(Span { last: first - 1, ..s });
            }
            if !std::mem::replace(&mut placed, true) {
                out.push_back(span);
            }
            if s.last > last {
                out.push_back(Span { first: last + 1, ..s });
            }
        }
        if !placed {
            out.push_back(span);
        }
        self.spans = out;
    }

    fn drop_upto(&mut self, upto: u64) {
        while let Some(front) = self.spans.front_mut() {
            if front.last <= upto {
                self.spans.pop_front();
            } else {
                front.first = front.first.max(upto + 1);
                break;
            }
        }
    }

    fn apply(&mut self, op: &Op, segment: u64, offset: u64, len: u32) {
        match op {
            Op::Entries { first, entries, .. } => {
                self.drop_from(*first);
                if !entries.is_empty() {
                    let last = first + entries.len() as u64 - 1;
                    self.spans.push_back(Span { first: *first, last, record_first: *first, segment, offset, len });
                }
            }
            Op::Relocate { first, entries, .. } => {
                if let Some(last) = (first + entries.len() as u64).checked_sub(1).filter(|_| !entries.is_empty()) {
                    self.replace_range(Span { first: *first, last, record_first: *first, segment, offset, len });
                }
            }
            Op::Vote { vote, .. } => self.vote = Some(vote.clone()),
            Op::Committed { committed, .. } => self.committed = Some(committed.clone()),
            Op::Truncate { from, .. } => self.drop_from(*from),
            Op::Purge { upto, log_id, .. } => {
                self.drop_upto(*upto);
                self.purged = Some((*upto, log_id.clone()));
            }
            Op::Forget { .. } => *self = RegionIndex::default(),
        }
    }

    fn is_empty(&self) -> bool {
        self.spans.is_empty() && self.vote.is_none() && self.committed.is_none() && self.purged.is_none()
    }
}

/// Applies one op to the index; a forgotten region leaves it.
fn apply_op(index: &mut HashMap<u64, RegionIndex>, op: &Op, segment: u64, offset: u64, len: u32) {
    if let Op::Forget { region } = op {
        index.remove(region);
        return;
    }
    index.entry(op.region()).or_default().apply(op, segment, offset, len);
}

/// What the log holds for a region, as recovered or last written.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RegionLogState {
    /// Encoded vote.
    pub vote: Option<Vec<u8>>,
    /// Encoded committed log id.
    pub committed: Option<Vec<u8>>,
    /// Purge point: last purged index and its encoded log id.
    pub purged: Option<(u64, Vec<u8>)>,
    /// First and last index of the live entries.
    pub entries: Option<(u64, u64)>,
}

/// Counters of the log engine.
#[derive(Debug, Default)]
pub struct WalStats {
    /// `fdatasync` calls.
    pub syncs: AtomicU64,
    /// Writes (group commits), synced or not.
    pub writes: AtomicU64,
    /// Log entries written.
    pub entries: AtomicU64,
    /// Bytes written.
    pub bytes: AtomicU64,
    /// Segments deleted.
    pub segments_deleted: AtomicU64,
    /// Entries copied forward by compaction.
    pub relocated: AtomicU64,
    /// Writes that lingered for more jobs first (see [`GroupCommit`]).
    pub lingered: AtomicU64,
    /// Log entries the writer found queued when it woke for each write, before any linger:
    /// per write of Raft log jobs, the batch that group commit alone gives (see
    /// [`GroupCommit`]; `writes` also counts the log's own compaction writes).
    pub queued_entries: AtomicU64,
}

/// Completion of a job, called with its outcome once written (and synced, if asked).
pub type Done = Box<dyn FnOnce(io::Result<()>) + Send>;

struct Job {
    ops: Vec<Op>,
    done: Done,
    durable: bool,
    queued_at: std::time::Instant,
}

/// Jobs waiting for the writer. The writer sleeps until a durable job arrives (or the queue
/// is full, or the engine closes): a lazy job (a commit mark) waits in the queue for the
/// next synced write without waking the writer, which on a lightly loaded node would
/// otherwise cost a thread wake-up per commit for nothing.
#[derive(Default)]
struct Intake {
    jobs: Vec<Job>,
    /// Some job in `jobs` is durable.
    durable: bool,
    /// `close` was called: the writer finishes what is queued and exits; later jobs fail.
    stop: bool,
    /// The writer is blocked on [`Shared::work`] (only then is a notify worth its syscall).
    waiting: bool,
    /// The writer is gathering a batch: only a full queue or a stop wakes it.
    lingering: bool,
}

struct Segments {
    /// Open segment files by sequence number (readers `pread` them).
    files: BTreeMap<u64, Arc<File>>,
}

struct Shared {
    dir: PathBuf,
    segment_bytes: u64,
    index: Mutex<HashMap<u64, RegionIndex>>,
    segments: RwLock<Segments>,
    intake: Mutex<Intake>,
    /// Signalled when the writer has work: a durable job, a full queue, or a stop.
    work: Condvar,
    writer: Mutex<Option<std::thread::JoinHandle<()>>>,
    failed: Mutex<Option<(io::ErrorKind, String)>>,
    stats: WalStats,
    queued: AtomicUsize,
    /// Tests: the next write fails with this kind, as a full or failing disk would.
    #[cfg(test)]
    inject_failure: Mutex<Option<io::ErrorKind>>,
}

/// The node's Raft log engine. Cheap to clone; clones share everything.
#[derive(Clone)]
pub struct LogEngine {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for LogEngine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LogEngine").field("dir", &self.shared.dir).finish()
    }
}

fn corrupt(msg: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg)
}

fn segment_path(dir: &Path, seq: u64) -> PathBuf {
    dir.join(format!("{seq:016x}.wal"))
}

/// The writer's position.
struct Tail {
    segment: u64,
    file: Arc<File>,
    offset: u64,
    next_lsn: u64,
    /// Bytes of the segment known to be written (records or zeros), not holes: see
    /// [`ZERO_AHEAD`].
    zeroed_to: u64,
}

/// Outcome of recovery, handed to the writer.
struct Recovered {
    index: HashMap<u64, RegionIndex>,
    files: BTreeMap<u64, Arc<File>>,
    tail: Tail,
}

impl LogEngine {
    /// Opens (or creates) the log in `dir`, recovering every region's state, and starts
    /// the writer thread.
    pub fn open(dir: &Path) -> io::Result<LogEngine> {
        Self::open_with_segment_bytes(dir, SEGMENT_BYTES)
    }

    /// [`LogEngine::open`] with segments of `segment_bytes` (tests use small ones).
    pub fn open_with_segment_bytes(dir: &Path, segment_bytes: u64) -> io::Result<LogEngine> {
        Self::open_with(dir, segment_bytes, GroupCommit::default())
    }

    /// [`LogEngine::open`] with segments of `segment_bytes` and the group commit's linger.
    pub fn open_with(dir: &Path, segment_bytes: u64, group_commit: GroupCommit) -> io::Result<LogEngine> {
        std::fs::create_dir_all(dir)?;
        let recovered = recover(dir, segment_bytes)?;
        let shared = Arc::new(Shared {
            dir: dir.to_path_buf(),
            segment_bytes,
            index: Mutex::new(recovered.index),
            segments: RwLock::new(Segments { files: recovered.files }),
            intake: Mutex::new(Intake::default()),
            work: Condvar::new(),
            writer: Mutex::new(None),
            failed: Mutex::new(None),
            stats: WalStats::default(),
            queued: AtomicUsize::new(0),
            #[cfg(test)]
            inject_failure: Mutex::new(None),
        });
        let writer = {
            let shared = shared.clone();
            let tail = recovered.tail;
            std::thread::Builder::new()
                .name("tessera-wal".into())
                .spawn(move || writer_loop(tail, &shared, group_commit))?
        };
        *lock(&shared.writer) = Some(writer);
        let engine = LogEngine { shared };
        engine.delete_unused_segments();
        Ok(engine)
    }

    /// Queues `ops`; `done` is called once they are durable (or failed).
    pub fn submit(&self, ops: Vec<Op>, done: Done) {
        self.send(Job { ops, done, durable: true, queued_at: std::time::Instant::now() });
    }

    /// Queues `ops` without waiting and without asking for a sync of their own: they become
    /// durable with the next synced write.
    pub fn submit_lazy(&self, ops: Vec<Op>) {
        self.send(Job { ops, done: Box::new(|_| {}), durable: false, queued_at: std::time::Instant::now() });
    }

    /// Writes `ops` and waits until they are durable.
    pub async fn write(&self, ops: Vec<Op>) -> io::Result<()> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.submit(
            ops,
            Box::new(move |r| {
                let _ = tx.send(r);
            }),
        );
        rx.await.map_err(|_| io::Error::other("log writer dropped a job"))?
    }

    /// Blocking [`LogEngine::write`], for threads outside the async runtime.
    pub fn write_blocking(&self, ops: Vec<Op>) -> io::Result<()> {
        let (tx, rx) = mpsc::channel();
        self.submit(
            ops,
            Box::new(move |r| {
                let _ = tx.send(r);
            }),
        );
        rx.recv().map_err(|_| io::Error::other("log writer dropped a job"))?
    }

    fn send(&self, job: Job) {
        let mut intake = lock(&self.shared.intake);
        if intake.stop {
            drop(intake);
            (job.done)(Err(io::Error::other("log writer has stopped")));
            return;
        }
        if job.durable {
            self.shared.queued.fetch_add(1, Ordering::Relaxed);
        }
        let full = intake.jobs.len() + 1 >= MAX_BATCH;
        let wake = intake.waiting && (full || (job.durable && !intake.lingering));
        intake.durable |= job.durable;
        intake.jobs.push(job);
        drop(intake);
        if wake {
            self.shared.work.notify_one();
        }
    }

    /// `Err` once the engine has fail-stopped.
    pub fn check(&self) -> io::Result<()> {
        match &*lock(&self.shared.failed) {
            Some((kind, msg)) => Err(io::Error::new(*kind, format!("raft log failed earlier: {msg}"))),
            None => Ok(()),
        }
    }

    /// The region's state in the log.
    pub fn region_state(&self, region: u64) -> RegionLogState {
        let index = lock(&self.shared.index);
        let Some(r) = index.get(&region) else { return RegionLogState::default() };
        RegionLogState {
            vote: r.vote.clone(),
            committed: r.committed.clone(),
            purged: r.purged.clone(),
            entries: match (r.spans.front(), r.spans.back()) {
                (Some(f), Some(b)) => Some((f.first, b.last)),
                _ => None,
            },
        }
    }

    /// Ids of the regions with anything in the log.
    pub fn regions(&self) -> Vec<u64> {
        let mut ids: Vec<u64> = lock(&self.shared.index).keys().copied().collect();
        ids.sort_unstable();
        ids
    }

    /// The region's entries from `start` towards `end` (exclusive) while their bytes fit in
    /// `budget` (at least one), as `(index, encoded entry)`.
    pub fn read(&self, region: u64, start: u64, end: u64, budget: usize) -> io::Result<Vec<(u64, Vec<u8>)>> {
        self.retrying(|| self.read_once(region, start, end, budget))
    }

    /// The newest entries of the region whose bytes fit in `budget` (at least one), in
    /// index order.
    pub fn read_tail(&self, region: u64, budget: usize) -> io::Result<Vec<(u64, Vec<u8>)>> {
        self.retrying(|| self.read_tail_once(region, budget))
    }

    /// Runs a read again if a segment it meant to read was deleted meanwhile (compaction
    /// copied its live entries forward and deleted it between the index lookup and the
    /// read): the second attempt looks the spans up afresh.
    fn retrying<T>(&self, read: impl Fn() -> io::Result<T>) -> io::Result<T> {
        match read() {
            Err(e) if e.kind() == io::ErrorKind::NotFound => read(),
            other => other,
        }
    }

    fn read_once(&self, region: u64, start: u64, end: u64, budget: usize) -> io::Result<Vec<(u64, Vec<u8>)>> {
        let spans: Vec<Span> = {
            let index = lock(&self.shared.index);
            let Some(r) = index.get(&region) else { return Ok(Vec::new()) };
            let from = r.spans.partition_point(|s| s.last < start);
            r.spans.iter().skip(from).take_while(|s| s.first < end).copied().collect()
        };
        let (mut out, mut used) = (Vec::new(), 0usize);
        for span in spans {
            for (index, bytes) in self.read_span(region, &span)? {
                if index < start.max(span.first) || index > span.last || index >= end {
                    continue;
                }
                if !out.is_empty() && used + bytes.len() > budget {
                    return Ok(out);
                }
                used += bytes.len();
                out.push((index, bytes));
            }
        }
        Ok(out)
    }

    fn read_tail_once(&self, region: u64, budget: usize) -> io::Result<Vec<(u64, Vec<u8>)>> {
        let spans: Vec<Span> = {
            let index = lock(&self.shared.index);
            let Some(r) = index.get(&region) else { return Ok(Vec::new()) };
            r.spans.iter().rev().copied().collect()
        };
        let (mut out, mut used) = (Vec::new(), 0usize);
        'spans: for span in spans {
            let entries = self.read_span(region, &span)?;
            for (index, bytes) in entries.into_iter().rev() {
                if index < span.first || index > span.last {
                    continue;
                }
                if !out.is_empty() && used + bytes.len() > budget {
                    break 'spans;
                }
                used += bytes.len();
                out.push((index, bytes));
            }
        }
        out.reverse();
        Ok(out)
    }

    fn read_span(&self, region: u64, span: &Span) -> io::Result<Vec<(u64, Vec<u8>)>> {
        let file = {
            let segments = self.shared.segments.read().unwrap_or_else(|p| p.into_inner());
            segments.files.get(&span.segment).cloned()
        };
        let Some(file) = file else {
            return Err(io::Error::new(
                io::ErrorKind::NotFound,
                format!("raft log segment {} of region {region} is gone", span.segment),
            ));
        };
        let mut buf = vec![0u8; span.len as usize];
        file.read_exact_at(&mut buf, span.offset)?;
        let (body, _) = check_record(&buf).ok_or_else(|| {
            corrupt(format!("raft log record at {}:{} fails its checksum", span.segment, span.offset))
        })?;
        let (_, kind, r, payload) = split_body(body);
        if !(kind == KIND_ENTRIES || kind == KIND_RELOCATE) || r != region {
            return Err(corrupt(format!(
                "raft log record at {}:{} is not region {region}'s entries",
                span.segment, span.offset
            )));
        }
        let (first, entries) = decode_entries(payload)?;
        if first != span.record_first {
            return Err(corrupt(format!("raft log record at {}:{} starts at {first}", span.segment, span.offset)));
        }
        Ok((first..).zip(entries).collect())
    }

    /// Counters.
    pub fn stats(&self) -> &WalStats {
        &self.shared.stats
    }

    /// Durable jobs waiting for the writer (lazy commit marks waiting for one are not counted).
    pub fn queue_depth(&self) -> usize {
        self.shared.queued.load(Ordering::Relaxed)
    }

    /// Number of segment files.
    pub fn segment_count(&self) -> usize {
        self.shared.segments.read().unwrap_or_else(|p| p.into_inner()).files.len()
    }

    /// Deletes segments that hold no live entry of any region. Their metadata (votes,
    /// commit marks, purge points) is in the checkpoint of every newer segment.
    ///
    /// Every span counts, not only each region's first: a compaction copies entries into
    /// the newest segment wherever they are in a region's log, so a region's spans are not
    /// in segment order.
    fn delete_unused_segments(&self) {
        let min_live = {
            let index = lock(&self.shared.index);
            index.values().flat_map(|r| r.spans.iter().map(|s| s.segment)).min()
        };
        let doomed: Vec<(u64, Arc<File>)> = {
            let mut segments = self.shared.segments.write().unwrap_or_else(|p| p.into_inner());
            let Some((&current, _)) = segments.files.last_key_value() else { return };
            let keep_from = min_live.unwrap_or(current).min(current);
            let old: Vec<u64> = segments.files.range(..keep_from).map(|(s, _)| *s).collect();
            old.into_iter().filter_map(|s| segments.files.remove(&s).map(|f| (s, f))).collect()
        };
        for (seq, _) in doomed {
            match std::fs::remove_file(segment_path(&self.shared.dir, seq)) {
                Ok(()) => {
                    self.shared.stats.segments_deleted.fetch_add(1, Ordering::Relaxed);
                    tracing::debug!(segment = seq, "raft log segment deleted");
                }
                Err(e) => tracing::warn!(segment = seq, error = %e, "could not delete a raft log segment"),
            }
        }
    }

    /// Stops the writer after the jobs already queued and waits for it. Idempotent.
    pub fn close(&self) {
        lock(&self.shared.intake).stop = true;
        self.shared.work.notify_all();
        if let Some(writer) = lock(&self.shared.writer).take() {
            if writer.join().is_err() {
                tracing::error!("raft log writer thread panicked");
            }
        }
    }
}

/// Checks a record at the start of `buf`: returns its body and its total length, or `None`
/// if it is incomplete, empty (zeros) or fails its checksum.
fn check_record(buf: &[u8]) -> Option<(&[u8], usize)> {
    if buf.len() < RECORD_HEADER {
        return None;
    }
    let len = u32::from_le_bytes(buf[0..4].try_into().ok()?) as usize;
    let crc = u32::from_le_bytes(buf[4..8].try_into().ok()?);
    if len < BODY_PREFIX || buf.len() - RECORD_HEADER < len {
        return None;
    }
    let body = &buf[RECORD_HEADER..RECORD_HEADER + len];
    (crc32fast::hash(body) == crc).then_some((body, RECORD_HEADER + len))
}

/// (lsn, kind, region, payload) of a checked body.
fn split_body(body: &[u8]) -> (u64, u8, u64, &[u8]) {
    let mut lsn = [0u8; 8];
    lsn.copy_from_slice(&body[0..8]);
    let mut region = [0u8; 8];
    region.copy_from_slice(&body[9..17]);
    (u64::from_le_bytes(lsn), body[8], u64::from_le_bytes(region), &body[BODY_PREFIX..])
}

/// A cursor over a payload; every read is bounds-checked.
struct Reader<'a> {
    buf: &'a [u8],
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> io::Result<&'a [u8]> {
        if self.buf.len() < n {
            return Err(corrupt("raft log record is shorter than its contents".into()));
        }
        let (head, rest) = self.buf.split_at(n);
        self.buf = rest;
        Ok(head)
    }

    fn u64(&mut self) -> io::Result<u64> {
        let mut b = [0u8; 8];
        b.copy_from_slice(self.take(8)?);
        Ok(u64::from_le_bytes(b))
    }

    fn u32(&mut self) -> io::Result<u32> {
        let mut b = [0u8; 4];
        b.copy_from_slice(self.take(4)?);
        Ok(u32::from_le_bytes(b))
    }

    fn u8(&mut self) -> io::Result<u8> {
        Ok(self.take(1)?[0])
    }

    fn bytes(&mut self) -> io::Result<Vec<u8>> {
        let n = self.u32()? as usize;
        Ok(self.take(n)?.to_vec())
    }
}

fn decode_entries(payload: &[u8]) -> io::Result<(u64, Vec<Vec<u8>>)> {
    let mut r = Reader { buf: payload };
    let first = r.u64()?;
    let count = r.u32()? as usize;
    let mut entries = Vec::with_capacity(count.min(payload.len() / 4));
    for _ in 0..count {
        entries.push(r.bytes()?);
    }
    Ok((first, entries))
}

/// Decodes a checked record body into the op it holds (`None` for a checkpoint).
fn decode_op(kind: u8, region: u64, payload: &[u8]) -> io::Result<Option<Op>> {
    let mut r = Reader { buf: payload };
    Ok(Some(match kind {
        KIND_ENTRIES => {
            let (first, entries) = decode_entries(payload)?;
            Op::Entries { region, first, entries }
        }
        KIND_RELOCATE => {
            let (first, entries) = decode_entries(payload)?;
            Op::Relocate { region, first, entries }
        }
        KIND_VOTE => Op::Vote { region, vote: payload.to_vec() },
        KIND_COMMITTED => Op::Committed { region, committed: payload.to_vec() },
        KIND_TRUNCATE => Op::Truncate { region, from: r.u64()? },
        KIND_PURGE => Op::Purge { region, upto: r.u64()?, log_id: r.buf.to_vec() },
        KIND_FORGET => Op::Forget { region },
        KIND_CHECKPOINT => return Ok(None),
        other => return Err(corrupt(format!("unknown raft log record kind {other}"))),
    }))
}

/// Encodes a checkpoint of every region's metadata.
fn encode_checkpoint(index: &HashMap<u64, RegionIndex>, lsn: u64, out: &mut Vec<u8>) {
    let start = begin_record(out, lsn, KIND_CHECKPOINT, 0);
    let regions: Vec<(&u64, &RegionIndex)> =
        index.iter().filter(|(_, r)| r.vote.is_some() || r.committed.is_some() || r.purged.is_some()).collect();
    out.extend_from_slice(&(regions.len() as u32).to_le_bytes());
    let put = |out: &mut Vec<u8>, b: &[u8]| {
        out.extend_from_slice(&(b.len() as u32).to_le_bytes());
        out.extend_from_slice(b);
    };
    for (id, r) in regions {
        out.extend_from_slice(&id.to_le_bytes());
        let flags =
            u8::from(r.vote.is_some()) | (u8::from(r.committed.is_some()) << 1) | (u8::from(r.purged.is_some()) << 2);
        out.push(flags);
        if let Some(v) = &r.vote {
            put(out, v);
        }
        if let Some(c) = &r.committed {
            put(out, c);
        }
        if let Some((upto, log_id)) = &r.purged {
            out.extend_from_slice(&upto.to_le_bytes());
            put(out, log_id);
        }
    }
    finish_record(out, start);
}

fn apply_checkpoint(index: &mut HashMap<u64, RegionIndex>, payload: &[u8]) -> io::Result<()> {
    let mut r = Reader { buf: payload };
    let count = r.u32()?;
    for _ in 0..count {
        let id = r.u64()?;
        let flags = r.u8()?;
        let region = index.entry(id).or_default();
        if flags & 1 != 0 {
            region.vote = Some(r.bytes()?);
        }
        if flags & 2 != 0 {
            region.committed = Some(r.bytes()?);
        }
        if flags & 4 != 0 {
            let upto = r.u64()?;
            region.purged = Some((upto, r.bytes()?));
            region.drop_upto(upto);
        }
    }
    Ok(())
}

/// Creates segment `seq`: written under a temporary name with its header, preallocated,
/// synced, then renamed into place (and the directory synced), so a segment file with a bad
/// header is always corruption, never a crash artefact.
fn create_segment(dir: &Path, seq: u64, segment_bytes: u64) -> io::Result<File> {
    let tmp = dir.join(format!("{seq:016x}.tmp"));
    let file = OpenOptions::new().read(true).write(true).create(true).truncate(true).open(&tmp)?;
    let mut header = [0u8; SEGMENT_HEADER as usize];
    header[..8].copy_from_slice(MAGIC);
    header[8..].copy_from_slice(&seq.to_le_bytes());
    file.write_all_at(&header, 0)?;
    // Allocating the size up front means an append does not change it, so `fdatasync` need
    // not write file metadata. (Measured on ext4 here: p50 0.16 ms into a preallocated file,
    // 0.24 ms when each write extends the file; see docs/storage.md.)
    file.set_len(segment_bytes)?;
    file.sync_all()?;
    std::fs::rename(&tmp, segment_path(dir, seq))?;
    File::open(dir)?.sync_all()?;
    Ok(file)
}

/// Reads every segment in `dir`, rebuilding the index, and positions the writer.
fn recover(dir: &Path, segment_bytes: u64) -> io::Result<Recovered> {
    let mut seqs = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if let Some(stem) = name.strip_suffix(".tmp") {
            // A segment whose creation a crash interrupted.
            let _ = stem;
            std::fs::remove_file(entry.path())?;
        } else if let Some(stem) = name.strip_suffix(".wal") {
            let seq = u64::from_str_radix(stem, 16)
                .map_err(|_| corrupt(format!("unexpected file {name} in the raft log")))?;
            seqs.push(seq);
        }
    }
    seqs.sort_unstable();
    let mut index: HashMap<u64, RegionIndex> = HashMap::new();
    let mut files = BTreeMap::new();
    let mut next_lsn: Option<u64> = None;
    let mut tail: Option<(u64, Arc<File>, u64)> = None;
    for (i, &seq) in seqs.iter().enumerate() {
        let last_segment = i + 1 == seqs.len();
        if let Some(&prev) = seqs.get(i.wrapping_sub(1)) {
            if i > 0 && prev + 1 != seq {
                return Err(corrupt(format!("raft log segment {prev:x} is followed by {seq:x}: one is missing")));
            }
        }
        let path = segment_path(dir, seq);
        let file = OpenOptions::new().read(true).write(true).open(&path)?;
        let data = std::fs::read(&path)?;
        if data.len() < SEGMENT_HEADER as usize || &data[..8] != MAGIC || data[8..16] != seq.to_le_bytes() {
            return Err(corrupt(format!("raft log segment {} has a bad header", path.display())));
        }
        let mut offset = SEGMENT_HEADER as usize;
        let mut end_of_log = false;
        loop {
            let rest = &data[offset..];
            if rest.len() < RECORD_HEADER || rest[..RECORD_HEADER].iter().all(|&b| b == 0) {
                break; // Preallocated space: the end of this segment's records.
            }
            let checked = check_record(rest).filter(|(body, _)| {
                let (lsn, ..) = split_body(body);
                next_lsn.is_none_or(|n| n == lsn)
            });
            let Some((body, len)) = checked else {
                if last_segment {
                    tracing::warn!(
                        segment = seq,
                        offset,
                        "raft log ends in a torn record (a write a crash interrupted); dropping it"
                    );
                    end_of_log = true;
                    break;
                }
                return Err(corrupt(format!("raft log segment {} is corrupt at offset {offset}", path.display())));
            };
            let (lsn, kind, region, payload) = split_body(body);
            next_lsn = Some(lsn + 1);
            if kind == KIND_CHECKPOINT {
                apply_checkpoint(&mut index, payload)?;
            } else if let Some(op) = decode_op(kind, region, payload)? {
                apply_op(&mut index, &op, seq, offset as u64, len as u32);
            }
            offset += len;
        }
        if end_of_log {
            // Zero what the interrupted write left, so no fragment of it can be read back.
            file.set_len(offset as u64)?;
            file.set_len(segment_bytes.max(offset as u64))?;
            file.sync_all()?;
        }
        let file = Arc::new(file);
        files.insert(seq, file.clone());
        if last_segment {
            tail = Some((seq, file, offset as u64));
        }
    }
    index.retain(|_, r| !r.is_empty());
    let tail = match tail {
        Some((segment, file, offset)) => {
            Tail { segment, file, offset, next_lsn: next_lsn.unwrap_or(1), zeroed_to: offset }
        }
        None => {
            let file = Arc::new(create_segment(dir, 1, segment_bytes)?);
            files.insert(1, file.clone());
            Tail { segment: 1, file, offset: SEGMENT_HEADER, next_lsn: 1, zeroed_to: SEGMENT_HEADER }
        }
    };
    Ok(Recovered { index, files, tail })
}

/// What [`next_batch`] took.
struct Batch {
    jobs: Vec<Job>,
    /// Log entries of the jobs taken that were queued when the writer woke, before any
    /// linger.
    queued: u64,
    /// When the writer woke for it.
    woke: std::time::Instant,
    lingered: bool,
    /// The engine is closing with nothing left after this batch.
    last: bool,
}

/// The writer's next batch: blocks until a durable job is queued (lazy jobs wait for one),
/// the queue holds [`MAX_BATCH`] jobs, or the engine is closing; then takes up to
/// `MAX_BATCH` jobs in order. If `gate` says to linger at that moment, it first waits that
/// long for more (cut short by a full queue or a close).
fn next_batch(shared: &Shared, gate: &LingerGate) -> Batch {
    // `waiting` stays set while the writer is blocked; senders see it only then (the
    // condition is checked with the lock held).
    let mut intake = lock(&shared.intake);
    let blocks = |i: &mut Intake| !i.durable && !i.stop && i.jobs.len() < MAX_BATCH;
    intake.waiting = true;
    intake = shared.work.wait_while(intake, blocks).unwrap_or_else(|p| p.into_inner());
    let woke = std::time::Instant::now();
    let queued: u64 = intake.jobs.iter().take(MAX_BATCH).flat_map(|j| j.ops.iter()).map(Op::entry_count).sum();
    let linger = gate.linger_at(woke);
    if let Some(linger) = linger {
        intake.lingering = true;
        intake = shared
            .work
            .wait_timeout_while(intake, linger, |i| !i.stop && i.jobs.len() < MAX_BATCH)
            .unwrap_or_else(|p| p.into_inner())
            .0;
        intake.lingering = false;
    }
    intake.waiting = false;
    let n = intake.jobs.len().min(MAX_BATCH);
    let jobs: Vec<Job> = intake.jobs.drain(..n).collect();
    intake.durable = intake.jobs.iter().any(|j| j.durable);
    let last = intake.stop && intake.jobs.is_empty();
    Batch { jobs, queued, woke, lingered: linger.is_some(), last }
}

fn writer_loop(mut tail: Tail, shared: &Arc<Shared>, group_commit: GroupCommit) {
    let engine = LogEngine { shared: shared.clone() };
    let mut buf: Vec<u8> = Vec::with_capacity(1024 * 1024);
    // A segment must start with a checkpoint (older segments are deleted on that basis). A
    // crash can leave the newest segment without one: created, but the write carrying its
    // checkpoint torn. Write it before anything else.
    if tail.offset == SEGMENT_HEADER {
        if let Err(e) = write_checkpoint(shared, &mut tail, &mut buf) {
            tracing::error!(error = %e, kind = ?e.kind(), "raft log checkpoint failed; fail-stopping the node's storage");
            *lock(&shared.failed) = Some((e.kind(), e.to_string()));
        }
    }
    let mut positions: Vec<(u64, u32)> = Vec::new();
    let mut gate = LingerGate::new(group_commit, std::time::Instant::now());
    loop {
        // Lazy jobs (commit marks) ride along with the next synced write instead of costing
        // a write of their own: they need no durability, only their place in the order. At
        // close, what is left is written without a sync.
        let Batch { jobs: batch, queued, woke, lingered, last } = next_batch(shared, &gate);
        shared.queued.fetch_sub(batch.iter().filter(|j| j.durable).count(), Ordering::Relaxed);
        if lingered && !batch.is_empty() {
            shared.stats.lingered.fetch_add(1, Ordering::Relaxed);
        }
        if batch.is_empty() {
            if last {
                break;
            }
            continue;
        }
        gate.observe(queued, woke);
        let started = std::time::Instant::now();
        shared.stats.queued_entries.fetch_add(queued, Ordering::Relaxed);
        for job in batch.iter().filter(|j| j.durable) {
            crate::metrics::STAGES.raft_log_queue.record(started.saturating_duration_since(job.queued_at));
        }
        let result = match engine.check() {
            Err(e) => Err(e),
            Ok(()) => write_batch(shared, &mut tail, &batch, &mut buf, &mut positions),
        };
        if let Err(e) = &result {
            if lock(&shared.failed).is_none() {
                tracing::error!(error = %e, kind = ?e.kind(), "raft log write failed; fail-stopping the node's storage");
                *lock(&shared.failed) = Some((e.kind(), e.to_string()));
            }
        }
        crate::metrics::STAGES.raft_log_sync.record(started.elapsed());
        let rotated = matches!(result, Ok(true));
        for job in batch {
            (job.done)(match &result {
                Ok(_) => Ok(()),
                Err(e) => Err(io::Error::new(e.kind(), e.to_string())),
            });
        }
        if rotated {
            if engine.segment_count() > COMPACT_ABOVE_SEGMENTS {
                if let Err(e) = compact_oldest(&engine, &mut tail, &mut buf, &mut positions) {
                    tracing::error!(error = %e, kind = ?e.kind(), "raft log compaction failed; fail-stopping the node's storage");
                    *lock(&shared.failed) = Some((e.kind(), e.to_string()));
                }
            }
            engine.delete_unused_segments();
        }
        // Keep the buffer for the next batch, unless one huge batch grew it.
        if buf.capacity() > 16 * 1024 * 1024 {
            buf = Vec::with_capacity(1024 * 1024);
        }
        gate.finish(std::time::Instant::now());
        if last {
            break;
        }
    }
}

/// Writes a checkpoint record at the tail and syncs it.
fn write_checkpoint(shared: &Shared, tail: &mut Tail, buf: &mut Vec<u8>) -> io::Result<()> {
    buf.clear();
    encode_checkpoint(&lock(&shared.index), tail.next_lsn, buf);
    write_at_tail(tail, buf, shared.segment_bytes)?;
    tail.file.sync_data()?;
    tail.next_lsn += 1;
    tail.offset += buf.len() as u64;
    Ok(())
}

/// Most entry bytes in one `Relocate` record: a read of one entry reads its whole record.
const RELOCATE_BYTES: usize = 4 * 1024 * 1024;

/// Copies the live entries held in the oldest segment forward (as `Relocate` records), so
/// the segment can be deleted. Runs on the writer thread, between batches.
///
/// Only the entries in that segment are copied, each run of consecutive ones as records of
/// at most [`RELOCATE_BYTES`]: a relocation replaces exactly the entries it holds, so a
/// region's spans may be in any order of segments afterwards (which is why
/// `delete_unused_segments` looks at every span). Each rotation past the limit therefore
/// copies at most one segment's worth, however long a region's log has grown.
fn compact_oldest(
    engine: &LogEngine,
    tail: &mut Tail,
    buf: &mut Vec<u8>,
    positions: &mut Vec<(u64, u32)>,
) -> io::Result<()> {
    let shared = &engine.shared;
    let Some(oldest) = shared.segments.read().unwrap_or_else(|p| p.into_inner()).files.keys().next().copied() else {
        return Ok(());
    };
    let pinned: Vec<(u64, Vec<Span>)> = lock(&shared.index)
        .iter()
        .filter_map(|(&region, r)| {
            let spans: Vec<Span> = r.spans.iter().filter(|s| s.segment == oldest).copied().collect();
            (!spans.is_empty()).then_some((region, spans))
        })
        .collect();
    let mut ops = Vec::new();
    let mut moved = 0usize;
    for (region, spans) in pinned {
        let (mut run, mut run_first, mut run_bytes, mut next) = (Vec::new(), 0u64, 0usize, None::<u64>);
        for span in &spans {
            for (index, bytes) in engine.read_span(region, span)? {
                if index < span.first || index > span.last {
                    continue;
                }
                if next != Some(index) || (run_bytes + bytes.len() > RELOCATE_BYTES && !run.is_empty()) {
                    if !run.is_empty() {
                        ops.push(Op::Relocate { region, first: run_first, entries: std::mem::take(&mut run) });
                    }
                    (run_first, run_bytes) = (index, 0);
                }
                run_bytes += bytes.len();
                run.push(bytes);
                next = Some(index + 1);
                moved += 1;
            }
        }
        if !run.is_empty() {
            ops.push(Op::Relocate { region, first: run_first, entries: run });
        }
    }
    if ops.is_empty() {
        return Ok(());
    }
    shared.stats.relocated.fetch_add(moved as u64, Ordering::Relaxed);
    let job = Job { ops, done: Box::new(|_| {}), durable: true, queued_at: std::time::Instant::now() };
    write_batch(shared, tail, std::slice::from_ref(&job), buf, positions)?;
    tracing::info!(
        segment = oldest,
        entries = moved,
        "raft log compaction copied live entries out of the oldest segment"
    );
    Ok(())
}

/// Writes `buf` at the tail (without moving it), and first fills the next [`ZERO_AHEAD`]
/// bytes past the write with zeros when the write reaches space not yet written, so that
/// the `fdatasync` after it also makes that space allocated: the appends that follow
/// overwrite written blocks and their syncs flush data only.
fn write_at_tail(tail: &mut Tail, buf: &[u8], segment_bytes: u64) -> io::Result<()> {
    let end = tail.offset + buf.len() as u64;
    if end > tail.zeroed_to {
        let to = (end + ZERO_AHEAD).min(segment_bytes.max(end));
        if to > end {
            static ZEROS: [u8; ZERO_AHEAD as usize] = [0; ZERO_AHEAD as usize];
            tail.file.write_all_at(&ZEROS[..(to - end) as usize], end)?;
        }
        tail.zeroed_to = to;
    }
    tail.file.write_all_at(buf, tail.offset)
}

/// Writes one batch: rotates to a new segment first if it does not fit, encodes every
/// record, writes them with one `pwrite`, syncs if any job asked, then updates the index.
/// Returns whether it rotated.
fn write_batch(
    shared: &Shared,
    tail: &mut Tail,
    batch: &[Job],
    buf: &mut Vec<u8>,
    positions: &mut Vec<(u64, u32)>,
) -> io::Result<bool> {
    #[cfg(test)]
    if let Some(kind) = *lock(&shared.inject_failure) {
        return Err(io::Error::new(kind, "injected failure"));
    }
    buf.clear();
    positions.clear();
    let size: usize = batch.iter().flat_map(|j| &j.ops).map(Op::record_len).sum();
    let mut rotated = false;
    if tail.offset + size as u64 > shared.segment_bytes && tail.offset > SEGMENT_HEADER {
        let segment = tail.segment + 1;
        let file = Arc::new(create_segment(&shared.dir, segment, shared.segment_bytes)?);
        shared.segments.write().unwrap_or_else(|p| p.into_inner()).files.insert(segment, file.clone());
        *tail = Tail { segment, file, offset: SEGMENT_HEADER, next_lsn: tail.next_lsn, zeroed_to: SEGMENT_HEADER };
        encode_checkpoint(&lock(&shared.index), tail.next_lsn, buf);
        tail.next_lsn += 1;
        rotated = true;
    }
    let mut entries = 0;
    for op in batch.iter().flat_map(|j| &j.ops) {
        let start = buf.len();
        op.encode(tail.next_lsn, buf);
        tail.next_lsn += 1;
        positions.push((tail.offset + start as u64, (buf.len() - start) as u32));
        entries += op.entry_count();
    }
    write_at_tail(tail, buf, shared.segment_bytes)?;
    let durable = batch.iter().any(|j| j.durable);
    if durable {
        tail.file.sync_data()?;
        shared.stats.syncs.fetch_add(1, Ordering::Relaxed);
    }
    tail.offset += buf.len() as u64;
    {
        let mut index = lock(&shared.index);
        for (op, &(offset, len)) in batch.iter().flat_map(|j| &j.ops).zip(positions.iter()) {
            apply_op(&mut index, op, tail.segment, offset, len);
        }
    }
    let stats = &shared.stats;
    stats.writes.fetch_add(1, Ordering::Relaxed);
    stats.entries.fetch_add(entries, Ordering::Relaxed);
    stats.bytes.fetch_add(buf.len() as u64, Ordering::Relaxed);
    Ok(rotated)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entries(region: u64, first: u64, n: u64) -> Op {
        Op::Entries {
            region,
            first,
            entries: (first..first + n).map(|i| format!("{region}:{i}").into_bytes()).collect(),
        }
    }

    fn indexes(got: &[(u64, Vec<u8>)]) -> Vec<u64> {
        got.iter().map(|(i, _)| *i).collect()
    }

    #[test]
    fn a_forgotten_region_stays_forgotten_after_a_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let log = LogEngine::open(dir.path()).unwrap();
        log.write_blocking(vec![entries(1, 1, 10), entries(2, 1, 5), Op::Vote { region: 1, vote: b"v1".to_vec() }])
            .unwrap();
        log.write_blocking(vec![Op::Purge { region: 1, upto: 3, log_id: b"p3".to_vec() }]).unwrap();
        log.write_blocking(vec![Op::Forget { region: 1 }]).unwrap();
        let check = |log: &LogEngine| {
            assert_eq!(log.region_state(1), RegionLogState::default());
            assert_eq!(log.regions(), vec![2]);
            assert_eq!(log.region_state(2).entries, Some((1, 5)), "other regions are untouched");
        };
        check(&log);
        log.close();
        drop(log);
        let log = LogEngine::open(dir.path()).unwrap();
        check(&log);
        // The region id may be written again (a fresh start), independent of what was forgotten.
        log.write_blocking(vec![entries(1, 20, 1)]).unwrap();
        assert_eq!(log.region_state(1).entries, Some((20, 20)));
        assert_eq!(log.region_state(1).vote, None);
    }

    #[test]
    fn entries_votes_truncations_and_purges_survive_a_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let log = LogEngine::open(dir.path()).unwrap();
        log.write_blocking(vec![entries(1, 1, 10), entries(2, 1, 5), Op::Vote { region: 1, vote: b"v1".to_vec() }])
            .unwrap();
        log.write_blocking(vec![Op::Truncate { region: 1, from: 8 }, entries(1, 8, 2)]).unwrap();
        log.write_blocking(vec![Op::Purge { region: 2, upto: 3, log_id: b"p3".to_vec() }]).unwrap();
        log.submit_lazy(vec![Op::Committed { region: 1, committed: b"c5".to_vec() }]);
        log.write_blocking(vec![Op::Vote { region: 2, vote: b"v2".to_vec() }]).unwrap();
        let check = |log: &LogEngine| {
            let r1 = log.region_state(1);
            assert_eq!(r1.entries, Some((1, 9)));
            assert_eq!(r1.vote.as_deref(), Some(&b"v1"[..]));
            assert_eq!(r1.committed.as_deref(), Some(&b"c5"[..]));
            let got = log.read(1, 1, 100, usize::MAX).unwrap();
            assert_eq!(indexes(&got), (1..=9).collect::<Vec<_>>());
            assert_eq!(got[8].1, b"1:9", "the rewritten entry 9 replaced the truncated one");
            let r2 = log.region_state(2);
            assert_eq!(r2.entries, Some((4, 5)));
            assert_eq!(r2.purged, Some((3, b"p3".to_vec())));
            assert_eq!(indexes(&log.read(2, 1, 100, usize::MAX).unwrap()), vec![4, 5]);
            assert_eq!(log.region_state(3), RegionLogState::default());
        };
        check(&log);
        log.close();
        let reopened = LogEngine::open(dir.path()).unwrap();
        check(&reopened);
    }

    #[test]
    fn the_linger_gate_follows_what_each_window_found_queued() {
        let t0 = std::time::Instant::now();
        let ms = |n: u64| t0 + std::time::Duration::from_millis(n);
        // One sync: the writer wakes at `woke` ms, finds `queued` entries, is done 2 ms later.
        let sync = |gate: &mut LingerGate, queued: u64, woke: u64| {
            gate.observe(queued, ms(woke));
            gate.finish(ms(woke + 2));
        };
        let cfg = GroupCommit { linger: std::time::Duration::from_millis(1), min_queued_entries: 3 };
        let mut gate = LingerGate::new(cfg, t0);
        assert_eq!(gate.linger(), None, "off until a window has been measured");
        // Ten syncs over 100 ms, each finding 3 entries queued: the threshold exactly.
        for i in 1..=10 {
            sync(&mut gate, 3, i * 10);
        }
        assert_eq!(gate.linger(), Some(cfg.linger));
        // Within a window nothing changes, however little the syncs find so far.
        sync(&mut gate, 1, 110);
        assert_eq!(gate.linger(), Some(cfg.linger));
        // The window ends at 29 entries over 10 syncs: below 3 a sync, off.
        for i in 2..=10 {
            sync(&mut gate, if i == 10 { 4 } else { 3 }, 100 + i * 10);
        }
        assert_eq!(gate.linger(), None, "29 entries over 10 syncs");
        // Back on (the last sync is done at 302 ms).
        for i in 1..=10 {
            sync(&mut gate, 8, 200 + i * 10);
        }
        assert_eq!(gate.linger(), Some(cfg.linger));
        // Idle time counts from the end of the last batch.
        assert_eq!(gate.linger_at(ms(401)), Some(cfg.linger), "idle for 99 ms");
        assert_eq!(gate.linger_at(ms(402)), None, "idle for a whole window: the first sync after it goes at once");
        // A slow sync is not a pause: woken at 310, done at 500, woken again at 501.
        gate.observe(8, ms(310));
        gate.finish(ms(500));
        assert_eq!(gate.linger_at(ms(501)), Some(cfg.linger), "a 190 ms sync, then 1 ms idle");
        sync(&mut gate, 8, 501);
        assert_eq!(gate.linger(), Some(cfg.linger));
        // A pause starts a new window, off, however much the first sync after it finds.
        sync(&mut gate, 1_000, 700);
        assert_eq!(gate.linger(), None);
        // Zero threshold: always on, pauses included; zero linger: never.
        let always = LingerGate::new(GroupCommit { min_queued_entries: 0, ..cfg }, t0);
        assert_eq!(always.linger_at(ms(10_000)), Some(cfg.linger));
        let mut off = LingerGate::new(GroupCommit::OFF, t0);
        off.observe(1_000_000, ms(100));
        assert_eq!(off.linger(), None);
    }

    /// Waits (bounded) until the writer's intake satisfies `ready`.
    fn wait_for_intake(log: &LogEngine, what: &str, ready: impl Fn(&Intake) -> bool) {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        while !ready(&lock(&log.shared.intake)) {
            assert!(std::time::Instant::now() < deadline, "timed out waiting for the writer: {what}");
            std::thread::yield_now();
        }
    }

    /// A log whose writer always lingers, for longer than any test: only a full queue or
    /// the close ends a linger.
    fn always_lingering(dir: &Path) -> LogEngine {
        let cfg = GroupCommit { linger: std::time::Duration::from_secs(3600), min_queued_entries: 0 };
        LogEngine::open_with(dir, SEGMENT_BYTES, cfg).unwrap()
    }

    #[test]
    fn a_lingering_writer_is_not_woken_by_new_jobs_and_syncs_them_together() {
        let dir = tempfile::tempdir().unwrap();
        let log = always_lingering(dir.path());
        let (tx, rx) = mpsc::channel();
        let submit = |region: u64| {
            let tx = tx.clone();
            log.submit(vec![entries(region, 1, 2)], Box::new(move |r| tx.send((region, r.is_ok())).unwrap()));
        };
        submit(1);
        wait_for_intake(&log, "lingering after the first durable job", |i| i.lingering && i.waiting);
        submit(2);
        submit(3);
        {
            let intake = lock(&log.shared.intake);
            assert!(intake.lingering, "still lingering");
            assert_eq!(intake.jobs.len(), 3, "the later jobs joined the batch being gathered");
        }
        assert!(rx.try_recv().is_err(), "nothing is synced while the writer lingers");
        log.close();
        let mut done: Vec<_> = rx.try_iter().collect();
        done.sort();
        assert_eq!(done, vec![(1, true), (2, true), (3, true)]);
        assert_eq!(log.stats().syncs.load(Ordering::Relaxed), 1, "one sync for the three jobs");
        assert_eq!(log.stats().lingered.load(Ordering::Relaxed), 1);
        assert_eq!(
            log.stats().queued_entries.load(Ordering::Relaxed),
            2,
            "only the first job's entries were queued before the linger: what arrives during it does not count"
        );
        let log = LogEngine::open(dir.path()).unwrap();
        for region in 1..=3 {
            assert_eq!(log.region_state(region).entries, Some((1, 2)));
        }
    }

    #[test]
    fn a_full_queue_ends_the_linger() {
        let dir = tempfile::tempdir().unwrap();
        let log = always_lingering(dir.path());
        let (tx, rx) = mpsc::channel();
        let submit = |region: u64| {
            let tx = tx.clone();
            log.submit(vec![entries(region, 1, 1)], Box::new(move |r| tx.send(r.is_ok()).unwrap()));
        };
        submit(1);
        wait_for_intake(&log, "lingering after the first durable job", |i| i.lingering && i.waiting);
        // The queue reaches its limit: the writer wakes, with no close, and syncs them all.
        for region in 2..=MAX_BATCH as u64 {
            submit(region);
        }
        for _ in 0..MAX_BATCH {
            assert!(rx.recv_timeout(std::time::Duration::from_secs(60)).expect("synced without the close"));
        }
        assert_eq!(log.stats().syncs.load(Ordering::Relaxed), 1, "one sync for the full batch");
        log.close();
    }

    #[test]
    fn below_the_queue_threshold_a_write_is_synced_without_lingering() {
        let dir = tempfile::tempdir().unwrap();
        // A linger longer than the test, behind a threshold no test reaches.
        let cfg = GroupCommit { linger: std::time::Duration::from_secs(3600), min_queued_entries: u32::MAX };
        let log = Arc::new(LogEngine::open_with(dir.path(), SEGMENT_BYTES, cfg).unwrap());
        let (tx, rx) = mpsc::channel();
        let writer = log.clone();
        std::thread::spawn(move || {
            for region in 1..=20 {
                writer.write_blocking(vec![entries(region, 1, 100)]).unwrap();
            }
            tx.send(()).unwrap();
        });
        rx.recv_timeout(std::time::Duration::from_secs(60)).expect("writes completed without lingering");
        assert_eq!(log.stats().lingered.load(Ordering::Relaxed), 0);
        log.close();
    }

    #[test]
    fn commit_marks_wait_for_the_next_synced_write_or_the_close() {
        let dir = tempfile::tempdir().unwrap();
        let log = LogEngine::open(dir.path()).unwrap();
        log.write_blocking(vec![entries(1, 1, 3)]).unwrap();
        let writes = || log.stats().writes.load(Ordering::Relaxed);
        let before = writes();
        for c in 1..=3u8 {
            log.submit_lazy(vec![Op::Committed { region: 1, committed: vec![c] }]);
        }
        assert_eq!(log.queue_depth(), 0, "commit marks are not counted as waiting work");
        log.write_blocking(vec![entries(2, 1, 1)]).unwrap();
        assert_eq!(writes(), before + 1, "the marks rode along with the next synced write");
        assert_eq!(log.region_state(1).committed.as_deref(), Some(&[3u8][..]));
        // A mark with no synced write after it is written at close.
        log.submit_lazy(vec![Op::Committed { region: 1, committed: vec![4] }]);
        log.close();
        let log = LogEngine::open(dir.path()).unwrap();
        assert_eq!(log.region_state(1).committed.as_deref(), Some(&[4u8][..]));
        assert_eq!(log.region_state(2).entries, Some((1, 1)));
    }

    #[test]
    fn reads_respect_the_range_and_the_byte_budget() {
        let dir = tempfile::tempdir().unwrap();
        let log = LogEngine::open(dir.path()).unwrap();
        for first in (1..=100).step_by(10) {
            log.write_blocking(vec![entries(5, first, 10)]).unwrap();
        }
        assert_eq!(indexes(&log.read(5, 15, 27, usize::MAX).unwrap()), (15..27).collect::<Vec<_>>());
        // "5:NN" is 4 bytes: a budget of 10 bytes holds two entries.
        assert_eq!(indexes(&log.read(5, 15, 27, 10).unwrap()), vec![15, 16]);
        assert_eq!(indexes(&log.read(5, 15, 27, 0).unwrap()), vec![15], "at least one entry");
        assert_eq!(indexes(&log.read_tail(5, 10).unwrap()), vec![99, 100]);
        assert!(log.read(5, 101, 200, usize::MAX).unwrap().is_empty());
        assert!(log.read(6, 1, 200, usize::MAX).unwrap().is_empty());
    }

    /// Appends `extra` bytes of garbage (or a torn copy of a real record) at the log's end,
    /// as a crash in the middle of a write leaves it.
    fn damage_tail(dir: &Path, bytes: &[u8]) {
        let mut seqs: Vec<_> = std::fs::read_dir(dir).unwrap().map(|e| e.unwrap().path()).collect();
        seqs.sort();
        let last = seqs.last().unwrap();
        let data = std::fs::read(last).unwrap();
        let end = {
            // Find the end of the records: the first all-zero header.
            let mut off = SEGMENT_HEADER as usize;
            while let Some((_, len)) = check_record(&data[off..]) {
                off += len;
            }
            off
        };
        let f = OpenOptions::new().write(true).open(last).unwrap();
        f.write_all_at(bytes, end as u64).unwrap();
    }

    #[test]
    fn a_torn_tail_is_dropped_and_writing_continues_after_the_last_good_record() {
        let dir = tempfile::tempdir().unwrap();
        let log = LogEngine::open(dir.path()).unwrap();
        log.write_blocking(vec![entries(1, 1, 3)]).unwrap();
        log.close();
        // A record that was being written: a valid header whose body was cut short.
        let mut torn = Vec::new();
        entries(1, 4, 3).encode(2, &mut torn);
        torn.truncate(torn.len() - 5);
        damage_tail(dir.path(), &torn);
        let log = LogEngine::open(dir.path()).unwrap();
        assert_eq!(log.region_state(1).entries, Some((1, 3)), "the torn record is not part of the log");
        log.write_blocking(vec![entries(1, 4, 1)]).unwrap();
        log.close();
        let log = LogEngine::open(dir.path()).unwrap();
        assert_eq!(log.region_state(1).entries, Some((1, 4)));
        assert_eq!(log.read(1, 4, 5, usize::MAX).unwrap()[0].1, b"1:4");
    }

    #[test]
    fn space_ahead_of_the_records_is_written_with_zeros_before_it_is_appended_to() {
        use std::os::unix::fs::MetadataExt;
        let dir = tempfile::tempdir().unwrap();
        let allocated = || std::fs::metadata(segment_path(dir.path(), 1)).unwrap().blocks() * 512;
        let log = LogEngine::open(dir.path()).unwrap();
        log.write_blocking(vec![entries(1, 1, 1)]).unwrap();
        assert!(allocated() >= ZERO_AHEAD, "{} bytes allocated after the first write", allocated());
        assert!(allocated() < SEGMENT_BYTES / 2, "the segment is not written in full up front");
        // Appends that reach past the zeroed space (here 5 × 64 KiB) zero ZERO_AHEAD more.
        let big = vec![7u8; 64 * 1024];
        for i in 2..=6u64 {
            log.write_blocking(vec![Op::Entries { region: 1, first: i, entries: vec![big.clone()] }]).unwrap();
        }
        assert!(allocated() >= 2 * ZERO_AHEAD, "{} bytes allocated", allocated());
        log.close();
        drop(log);
        // The zeros read as the end of the records.
        let log = LogEngine::open(dir.path()).unwrap();
        assert_eq!(log.region_state(1).entries, Some((1, 6)));
        log.write_blocking(vec![entries(1, 7, 1)]).unwrap();
        assert_eq!(indexes(&log.read(1, 1, 8, usize::MAX).unwrap()), (1..=7).collect::<Vec<_>>());
    }

    #[test]
    fn a_record_with_a_bad_checksum_before_the_tail_refuses_to_open() {
        let dir = tempfile::tempdir().unwrap();
        let log = LogEngine::open(dir.path()).unwrap();
        log.write_blocking(vec![entries(1, 1, 3)]).unwrap();
        log.close();
        // Flip a byte inside the first record of segment 1, then make segment 1 not the last.
        let path = segment_path(dir.path(), 1);
        let f = OpenOptions::new().write(true).open(&path).unwrap();
        f.write_all_at(&[0xAB], SEGMENT_HEADER + 30).unwrap();
        create_segment(dir.path(), 2, SEGMENT_BYTES).unwrap();
        let err = LogEngine::open(dir.path()).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidData, "{err}");
    }

    #[test]
    fn segments_rotate_and_the_unused_ones_are_deleted_keeping_votes() {
        let dir = tempfile::tempdir().unwrap();
        let segment = 4 * 1024 * 1024;
        let log = LogEngine::open_with_segment_bytes(dir.path(), segment).unwrap();
        log.write_blocking(vec![Op::Vote { region: 9, vote: b"nine".to_vec() }]).unwrap();
        // Region 1 writes 3 segments' worth of 64 KiB entries, purging as it goes.
        let big = vec![7u8; 64 * 1024];
        for i in 1..=200u64 {
            log.write_blocking(vec![Op::Entries { region: 1, first: i, entries: vec![big.clone()] }]).unwrap();
            if i % 20 == 0 {
                log.write_blocking(vec![Op::Purge { region: 1, upto: i - 5, log_id: i.to_le_bytes().to_vec() }])
                    .unwrap();
            }
        }
        assert!(log.stats().segments_deleted.load(Ordering::Relaxed) >= 1, "old segments were deleted");
        assert!(log.segment_count() <= 2, "{} segments kept", log.segment_count());
        log.close();
        let log = LogEngine::open_with_segment_bytes(dir.path(), segment).unwrap();
        assert_eq!(log.region_state(9).vote.as_deref(), Some(&b"nine"[..]), "the vote survived in a checkpoint");
        assert_eq!(log.region_state(1).entries, Some((196, 200)));
        assert_eq!(log.region_state(1).purged.map(|p| p.0), Some(195));
        assert_eq!(log.read(1, 196, 201, usize::MAX).unwrap().len(), 5);
    }

    #[test]
    fn a_write_failure_fail_stops_the_log_and_a_reopen_recovers_what_was_durable() {
        let dir = tempfile::tempdir().unwrap();
        let log = LogEngine::open(dir.path()).unwrap();
        log.write_blocking(vec![entries(1, 1, 1)]).unwrap();
        *lock(&log.shared.inject_failure) = Some(io::ErrorKind::StorageFull);
        let err = log.write_blocking(vec![entries(1, 2, 1)]).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::StorageFull);
        // Later writes are refused even though the disk would take them now.
        *lock(&log.shared.inject_failure) = None;
        let err = log.write_blocking(vec![entries(1, 2, 1)]).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::StorageFull);
        assert_eq!(log.check().unwrap_err().kind(), io::ErrorKind::StorageFull);
        log.close();
        let log = LogEngine::open(dir.path()).unwrap();
        assert_eq!(log.region_state(1).entries, Some((1, 1)));
    }

    #[test]
    fn an_idle_region_does_not_pin_old_segments_its_entries_are_copied_forward() {
        let dir = tempfile::tempdir().unwrap();
        let segment = 1024 * 1024;
        let log = LogEngine::open_with_segment_bytes(dir.path(), segment).unwrap();
        // Region 2 writes three entries and goes idle: never purged.
        log.write_blocking(vec![entries(2, 1, 3), Op::Vote { region: 2, vote: b"two".to_vec() }]).unwrap();
        // Region 1 writes twelve segments' worth, purging as it goes.
        let big = vec![7u8; 64 * 1024];
        for i in 1..=12 * 16u64 {
            log.write_blocking(vec![Op::Entries { region: 1, first: i, entries: vec![big.clone()] }]).unwrap();
            if i % 20 == 0 {
                log.write_blocking(vec![Op::Purge { region: 1, upto: i - 5, log_id: vec![1] }]).unwrap();
            }
        }
        assert!(
            log.segment_count() <= COMPACT_ABOVE_SEGMENTS + 1,
            "{} segments kept: the idle region pinned them",
            log.segment_count()
        );
        let check = |log: &LogEngine| {
            assert_eq!(log.region_state(2).entries, Some((1, 3)));
            let got = log.read(2, 1, 4, usize::MAX).unwrap();
            assert_eq!(
                got.iter().map(|(_, b)| b.clone()).collect::<Vec<_>>(),
                vec![b"2:1".to_vec(), b"2:2".to_vec(), b"2:3".to_vec()]
            );
            assert_eq!(log.region_state(2).vote.as_deref(), Some(&b"two"[..]));
        };
        check(&log);
        log.close();
        let log = LogEngine::open_with_segment_bytes(dir.path(), segment).unwrap();
        check(&log);
        assert_eq!(log.region_state(1).entries.map(|e| e.1), Some(12 * 16));
    }

    #[test]
    fn compaction_keeps_every_segment_an_idle_region_still_has_entries_in() {
        // Region 2's log spans two segments and then goes idle: once the first is compacted,
        // the second still holds entries 4-6 and must be kept until it is compacted too.
        let dir = tempfile::tempdir().unwrap();
        let segment = 1024 * 1024;
        let log = LogEngine::open_with_segment_bytes(dir.path(), segment).unwrap();
        let big = vec![7u8; 64 * 1024];
        let mut next = 1u64;
        let mut busy = |log: &LogEngine, segments: u64| {
            for _ in 0..segments * 16 {
                log.write_blocking(vec![Op::Entries { region: 1, first: next, entries: vec![big.clone()] }]).unwrap();
                if next.is_multiple_of(20) {
                    log.write_blocking(vec![Op::Purge { region: 1, upto: next - 5, log_id: vec![1] }]).unwrap();
                }
                next += 1;
            }
        };
        log.write_blocking(vec![entries(2, 1, 3)]).unwrap();
        busy(&log, 1);
        log.write_blocking(vec![Op::Entries { region: 2, first: 4, entries: vec![big.clone(); 3] }]).unwrap();
        busy(&log, 12);
        let check = |log: &LogEngine| {
            assert_eq!(log.region_state(2).entries, Some((1, 6)));
            let got = log.read(2, 1, 7, usize::MAX).expect("every entry of region 2 is readable");
            assert_eq!(got.iter().map(|(i, _)| *i).collect::<Vec<_>>(), (1..=6).collect::<Vec<_>>());
            assert_eq!(got[0].1, b"2:1".to_vec());
            assert_eq!(got[5].1, big);
        };
        check(&log);
        assert!(
            log.segment_count() <= COMPACT_ABOVE_SEGMENTS + 1,
            "{} segments kept: the idle region pinned them",
            log.segment_count()
        );
        log.close();
        let log = LogEngine::open_with_segment_bytes(dir.path(), segment).unwrap();
        check(&log);
        // And again once the copies themselves are old.
        busy(&log, 12);
        check(&log);
        log.close();
        let log = LogEngine::open_with_segment_bytes(dir.path(), segment).unwrap();
        check(&log);
    }

    #[test]
    fn compaction_copies_one_segment_at_a_time_however_long_a_region_log_grows() {
        // Region 3 writes 24 segments' worth and never purges (its log outgrows the
        // compaction limit). Each rotation past the limit copies the oldest segment's
        // entries, not the region's whole log up to them: each entry is copied a few times
        // at most, where copying the prefix would copy the log again on every rotation.
        let dir = tempfile::tempdir().unwrap();
        let segment = 1024 * 1024;
        let log = LogEngine::open_with_segment_bytes(dir.path(), segment).unwrap();
        let n = 24 * 16u64;
        for i in 1..=n {
            let value = [i.to_le_bytes().to_vec(), vec![7u8; 64 * 1024]].concat();
            log.write_blocking(vec![Op::Entries { region: 3, first: i, entries: vec![value] }]).unwrap();
        }
        let relocated = log.stats().relocated.load(Ordering::Relaxed);
        assert!(relocated > 0, "the log outgrew the limit, so compaction ran");
        assert!(relocated <= 2 * n, "{relocated} entries copied for {n} written");
        let check = |log: &LogEngine| {
            assert_eq!(log.region_state(3).entries, Some((1, n)));
            let got = log.read(3, 1, n + 1, usize::MAX).expect("every entry is readable");
            assert_eq!(got.len() as u64, n);
            for (k, (i, bytes)) in got.iter().enumerate() {
                assert_eq!(*i, k as u64 + 1);
                assert_eq!(bytes[..8], i.to_le_bytes(), "entry {i} holds its own bytes");
            }
        };
        check(&log);
        log.close();
        let log = LogEngine::open_with_segment_bytes(dir.path(), segment).unwrap();
        check(&log);
    }

    #[test]
    fn commit_marks_ride_on_the_next_synced_write_instead_of_writing_alone() {
        let dir = tempfile::tempdir().unwrap();
        let log = LogEngine::open(dir.path()).unwrap();
        log.write_blocking(vec![entries(1, 1, 2)]).unwrap();
        let writes = log.stats().writes.load(Ordering::Relaxed);
        log.submit_lazy(vec![Op::Committed { region: 1, committed: b"c2".to_vec() }]);
        // Wait until the writer has taken the lazy job off the queue (it holds it back).
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while log.queue_depth() > 0 && std::time::Instant::now() < deadline {
            std::thread::yield_now();
        }
        assert_eq!(log.queue_depth(), 0);
        assert_eq!(log.stats().writes.load(Ordering::Relaxed), writes, "a lazy job alone writes nothing");
        log.write_blocking(vec![Op::Vote { region: 1, vote: b"v".to_vec() }]).unwrap();
        assert_eq!(log.stats().writes.load(Ordering::Relaxed), writes + 1, "it went out with the synced write");
        assert_eq!(log.region_state(1).committed.as_deref(), Some(&b"c2"[..]));
        // A lazy job still held at close is written then.
        log.submit_lazy(vec![Op::Committed { region: 1, committed: b"c9".to_vec() }]);
        log.close();
        let log = LogEngine::open(dir.path()).unwrap();
        assert_eq!(log.region_state(1).committed.as_deref(), Some(&b"c9"[..]));
    }

    #[test]
    fn a_newest_segment_left_without_its_checkpoint_by_a_crash_gets_one_at_open() {
        let dir = tempfile::tempdir().unwrap();
        let segment = 1024 * 1024;
        let log = LogEngine::open_with_segment_bytes(dir.path(), segment).unwrap();
        log.write_blocking(vec![Op::Vote { region: 4, vote: b"four".to_vec() }, entries(1, 1, 1)]).unwrap();
        log.write_blocking(vec![Op::Purge { region: 1, upto: 1, log_id: vec![1] }]).unwrap();
        log.close();
        // A crash right after segment 2 was created: its first write (checkpoint + batch)
        // never reached the disk.
        create_segment(dir.path(), 2, segment).unwrap();
        let log = LogEngine::open_with_segment_bytes(dir.path(), segment).unwrap();
        // Segment 1 holds no live entry, so it may go; the vote must survive that.
        log.write_blocking(vec![entries(1, 2, 1)]).unwrap();
        log.delete_unused_segments();
        assert_eq!(log.segment_count(), 1, "segment 1 was deleted");
        log.close();
        let log = LogEngine::open_with_segment_bytes(dir.path(), segment).unwrap();
        assert_eq!(log.region_state(4).vote.as_deref(), Some(&b"four"[..]));
        assert_eq!(log.region_state(1).entries, Some((2, 2)));
    }
}
