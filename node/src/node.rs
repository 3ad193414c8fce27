//! A storage node: start-up, recovery, PD heartbeats and shutdown.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use openraft::async_runtime::watch::WatchReceiver;
use tessera_wire::quic::{ConnectionPool, ResetKeySeed, Server, SocketReleased, TransportConfig, WsServer};
use tessera_wire::{NodeId, PdRequest, PdResponse, RegionDescriptor, Role};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::config::NodeConfig;
use crate::error::NodeError;
use crate::pd_client::{led_region_stats, node_stats, LoadMeter, PdClient};
use crate::raft::network::{AddressBook, NetworkFactory};
use crate::raft::types::Raft;
use crate::region::{NodeContext, Region, RegionMap};
use crate::service::NodeService;
use crate::storage::engine::io_err;
use crate::storage::records::{decode, encode, RegionRecord};
use crate::storage::state_machine::{seeded_state, split_seed_log_id, RegionEvent};
use crate::storage::wal::{LogEngine, SEGMENT_BYTES};
use crate::storage::{Engine, RegionLogStore, RegionShared, RegionStateMachine};

/// A running storage node.
#[derive(Debug)]
pub struct Node {
    node_id: NodeId,
    local_addr: SocketAddr,
    ctx: NodeContext,
    shutdown: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
    released: SocketReleased,
}

struct Shared {
    cfg: NodeConfig,
    ctx: NodeContext,
    pool: ConnectionPool,
    raft_config: Arc<openraft::Config>,
    advertise: String,
    /// Woken when a hosted region gains a new leader on this node, so PD hears of it at
    /// once rather than at the next heartbeat tick.
    leadership: Arc<tokio::sync::Notify>,
    /// Where regions' state machines report splits.
    events: tokio::sync::mpsc::UnboundedSender<RegionEvent>,
    /// Serialises creating, splitting off and destroying replicas.
    lifecycle: tokio::sync::Mutex<()>,
    /// Replicas whose destruction is under way (see [`destroy_later`]).
    destroying: std::sync::Mutex<std::collections::BTreeSet<tessera_wire::RegionId>>,
    /// Revoked token ids, as PD's heartbeat answers list them.
    revocations: tessera_certs::Revocations,
    /// The browser certificate, when the node serves WebTransport.
    web: Option<tessera_certs::WebCert>,
}

/// The directory of the node's Raft log, inside its data directory.
pub const RAFT_LOG_DIR: &str = "raft-log";

impl Node {
    /// Opens the data directory, recovers every hosted region, starts serving and registers
    /// with PD.
    pub async fn start(cfg: NodeConfig) -> Result<Node, NodeError> {
        cfg.validate().map_err(NodeError::Config)?;
        std::fs::create_dir_all(&cfg.data_dir)
            .map_err(|e| NodeError::Config(format!("data dir {}: {e}", cfg.data_dir.display())))?;
        let engine = Engine::open_with(&cfg.data_dir.join("node.redb"), cfg.cache_bytes, cfg.durable_interval)?;
        let wal = LogEngine::open_with(&cfg.data_dir.join(RAFT_LOG_DIR), SEGMENT_BYTES, cfg.raft_log_group_commit)
            .map_err(|e| NodeError::Storage(e.into()))?;
        crate::storage::migrate::raft_log_out_of_redb(&engine, &wal).map_err(|e| NodeError::Storage(e.into()))?;
        let web_cert = match (&cfg.web_cert, cfg.webtransport) {
            (_, false) => None,
            (Some((cert, key)), true) => Some(tessera_certs::WebCert::from_files(cert, key).map_err(NodeError::Tls)?),
            (None, true) => Some(tessera_certs::WebCert::new(&web_hosts(&cfg)).map_err(NodeError::Tls)?),
        };
        let server_tls = match &web_cert {
            Some(web) => tessera_certs::server_tls_config_web(&cfg.tls, web),
            None => tessera_certs::server_tls_config(&cfg.tls),
        }
        .map_err(NodeError::Tls)?;
        let client_tls = tessera_certs::client_tls_config(&cfg.tls).map_err(NodeError::Tls)?;
        // The stateless-reset key follows the node's identity (its private key), so a
        // restarted node resets its previous incarnation's connections at once: peers and
        // clients fail over instead of waiting for an idle timeout.
        let key = std::fs::read(&cfg.tls.key)
            .map_err(|source| NodeError::Key { path: cfg.tls.key.display().to_string(), source })?;
        let transport = TransportConfig {
            reset_key_seed: Some(ResetKeySeed::derive(&key)),
            max_concurrent_uni_streams: if cfg.webtransport { TransportConfig::WEB_UNI_STREAMS } else { 0 },
            ..TransportConfig::default()
        };
        let server = Server::bind(cfg.listen, server_tls, Some(client_tls), Role::Node(cfg.node_id), transport)
            .map_err(NodeError::Transport)?;
        let local_addr = server.local_addr();
        let released = server.released();
        let advertise = cfg.advertise.clone().unwrap_or_else(|| local_addr.to_string());
        let pool = ConnectionPool::new(server.client());
        let ctx = NodeContext {
            engine: engine.clone(),
            wal: wal.clone(),
            book: AddressBook::default(),
            regions: Arc::new(RegionMap::default()),
            snapshots_installed: Default::default(),
            changes: crate::storage::state_machine::ChangeSignal::new(),
            peer_failures: Default::default(),
            idle_poll: crate::idle_poll::IdlePoller::start(cfg.idle_poll).map(Arc::new),
        };
        ctx.book.set(cfg.node_id, advertise.clone());
        let raft_config = Arc::new(raft_config(&cfg.raft)?);
        let (events, events_rx) = tokio::sync::mpsc::unbounded_channel();
        let shared = Arc::new(Shared {
            cfg: cfg.clone(),
            ctx: ctx.clone(),
            pool: pool.clone(),
            raft_config,
            advertise,
            leadership: Default::default(),
            events,
            lifecycle: Default::default(),
            destroying: Default::default(),
            revocations: Default::default(),
            web: web_cert.clone(),
        });

        // Rows of snapshot installs that a crash interrupted, or that were replaced, are
        // deleted in the background.
        crate::storage::snapshot::reclaim_abandoned_installs(&engine)
            .await
            .map_err(|e| NodeError::Storage(e.into()))?;
        crate::storage::snapshot::spawn_garbage_collection(engine.clone());

        // Recover every region this node hosts. A region merged away whose local target
        // absorbed it (durably) before the node stopped is retired instead: its rows here are
        // the target's, so it has no state of its own to serve or to send as a snapshot.
        let (records, merged) = load_region_records(&engine).map_err(|e| NodeError::Storage(e.into()))?;
        for (desc, target) in merged {
            let Some(peer) = desc.peer_on(cfg.node_id) else { continue };
            tracing::info!(
                region_id = desc.id.0,
                target,
                "retiring a region merged into its neighbour before a restart"
            );
            let (id, tombstone) = (
                desc.id.0,
                encode(&RegionRecord::tombstone(&desc, peer.id)).map_err(|e| NodeError::Storage(e.into()))?,
            );
            let work = Box::new(move |txn: &redb::WriteTransaction| {
                crate::storage::snapshot::retire_merged_region(txn, id, target, &tombstone)
            });
            retire(&ctx, id, work).await?;
        }
        for desc in records {
            match open_region(&shared, desc).await {
                Ok(_) => {}
                // A replica whose peer this node cannot find (its removal was applied here,
                // PD will have it destroyed) must not keep the node from starting.
                Err(NodeError::NotAPeer { region_id }) => {
                    tracing::warn!(region_id, "hosted region has no replica on this node; not started")
                }
                Err(e) => return Err(e),
            }
        }
        // A merge whose commit was applied (and made durable) here before a crash, but
        // whose source replica was not destroyed yet: destroy it now.
        reap_merged_regions(&shared);
        tracing::info!(node_id = cfg.node_id.0, addr = %local_addr, regions = ctx.regions.ids().len(), "node started");

        let (shutdown, shutdown_rx) = watch::channel(false);
        let mut service = NodeService::new(ctx.clone(), &cfg);
        service.revocations = shared.revocations.clone();
        let service = Arc::new(service);
        let tokens = cfg
            .tls
            .ca
            .parent()
            .map(|dir| tessera_certs::TokenVerifier::load(dir, shared.revocations.clone()))
            .transpose()
            .map_err(NodeError::Tls)?
            .flatten();
        let auth = Arc::new(tessera_certs::ClusterAuthenticator::new().with_tokens(tokens));
        let web = if cfg.websocket {
            let ws = WsServer::bind(local_addr, Role::Node(cfg.node_id), TransportConfig::default())
                .await
                .map_err(NodeError::Transport)?;
            // With an operator's certificate, WebSocket clients get TLS (wss://) too.
            Some(match &cfg.web_cert {
                Some((cert, key)) => ws.with_tls(tessera_certs::wss_tls_config(cert, key).map_err(NodeError::Tls)?),
                None => ws,
            })
        } else {
            None
        };
        let mut rx = shutdown_rx.clone();
        let mut web_rx = shutdown_rx.clone();
        let serve = tokio::spawn(async move {
            let web = async {
                if let Some(ws) = web {
                    ws.serve(service.clone(), auth.clone(), async move {
                        let _ = web_rx.wait_for(|s| *s).await;
                    })
                    .await;
                }
            };
            let quic = server.serve(service.clone(), auth.clone(), async move {
                let _ = rx.wait_for(|s| *s).await;
            });
            tokio::join!(quic, web);
        });
        let hb = tokio::spawn(heartbeat_loop(shared.clone(), shutdown_rx.clone()));
        let ev = tokio::spawn(region_events(shared.clone(), events_rx, shutdown_rx.clone()));
        if let Some(web) = web_cert {
            tokio::spawn(rotate_web_cert(web, shutdown_rx.clone()));
        }
        let snapshots = tokio::spawn(crate::snapshot_policy::snapshot_loop(
            ctx.clone(),
            cfg.raft.snapshot_every,
            cfg.raft.keep_after_snapshot,
            shutdown_rx.clone(),
        ));
        let stages = tokio::spawn(crate::metrics::report_loop(shutdown_rx));
        Ok(Node {
            node_id: cfg.node_id,
            local_addr,
            ctx,
            shutdown,
            tasks: vec![serve, hb, ev, snapshots, stages],
            released,
        })
    }

    /// The address the node listens on.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// This node's id.
    pub fn node_id(&self) -> NodeId {
        self.node_id
    }

    /// Requests this node's idle poller has seen (client requests, replication messages
    /// with entries); `None` when idle polling is off.
    pub fn idle_poll_requests(&self) -> Option<u64> {
        self.ctx.idle_poll.as_ref().map(|p| p.requests())
    }

    /// Number of hosted regions.
    pub fn region_count(&self) -> usize {
        self.ctx.regions.ids().len()
    }

    /// Number of regions this node leads.
    pub fn leader_count(&self) -> usize {
        self.ctx.regions.all().iter().filter(|r| r.is_leader()).count()
    }

    /// Pipelined replication streams this node keeps open as a follower, over all regions
    /// (each is an openraft `stream_append` pipeline and a task). Leaders continue one
    /// stream per follower across replication sessions, so this stays near the number of
    /// (region, leader) pairs however many writes arrive.
    pub fn replication_streams(&self) -> usize {
        self.ctx.regions.all().iter().map(|r| r.append_streams.len()).sum()
    }

    /// Snapshots this node received from region leaders and installed since it started.
    pub fn snapshots_installed(&self) -> u64 {
        self.ctx.snapshots_installed.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// A receiver that changes whenever a hosted region's leader or applied log index
    /// changes, or a snapshot is installed. Subscribe, check the state you wait for, then
    /// await `changed()` and check again.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.ctx.changes.subscribe()
    }

    /// Why this node's storage fail-stopped (a failed commit or Raft log write, e.g. a full
    /// disk), if it did; it then answers every request with `StorageUnavailable`.
    pub fn storage_failure(&self) -> Option<String> {
        self.ctx.storage_failure()
    }

    /// Rows of each table of the node's database (data, sessions, region records, ...),
    /// for tests of replica destruction.
    pub fn row_counts(&self) -> std::io::Result<crate::storage::inspect::RowCounts> {
        crate::storage::inspect::row_counts(&self.ctx.engine)
    }

    /// Group-commit counters of the Raft log: (syncs, writes, raft log entries).
    pub fn commit_stats(&self) -> (u64, u64, u64) {
        use std::sync::atomic::Ordering::Relaxed;
        let s = self.ctx.wal.stats();
        (s.syncs.load(Relaxed), s.writes.load(Relaxed), s.entries.load(Relaxed))
    }

    /// Stops serving, shuts every Raft group down and waits for the tasks to end.
    pub async fn shutdown(self) {
        tracing::info!(node_id = self.node_id.0, "stopping node");
        let _ = self.shutdown.send(true);
        for region in self.ctx.regions.all() {
            let _ = region.raft.shutdown().await;
        }
        tracing::debug!(node_id = self.node_id.0, "raft groups stopped");
        for t in self.tasks {
            let _ = t.await;
        }
        // Every Raft group is stopped: finish the queued writes and release the database,
        // so that a restart (even in this process) opens it at once.
        let (engine, wal) = (self.ctx.engine.clone(), self.ctx.wal.clone());
        if tokio::task::spawn_blocking(move || {
            wal.close();
            engine.close()
        })
        .await
        .is_err()
        {
            tracing::error!(node_id = self.node_id.0, "closing storage failed");
        }
        // And the port: the endpoint's socket closes once its last handle is gone.
        let Node { node_id, ctx, released, .. } = self;
        drop(ctx);
        if !released.wait(std::time::Duration::from_secs(5)).await {
            tracing::warn!(node_id = node_id.0, "the node's socket was still open 5 s after shutdown");
        }
        tracing::info!(node_id = node_id.0, "node stopped");
    }
}

/// The live region records, and those of regions merged away whose local target has
/// absorbed them (with the target's id).
#[allow(clippy::type_complexity)]
fn load_region_records(engine: &Engine) -> std::io::Result<(Vec<RegionDescriptor>, Vec<(RegionDescriptor, u64)>)> {
    use redb::ReadableTable;
    let txn = engine.read()?;
    let t = txn.open_table(crate::storage::tables::REGIONS).map_err(io_err)?;
    let (mut live, mut merged) = (Vec::new(), Vec::new());
    for row in t.iter().map_err(io_err)? {
        let (_, v) = row.map_err(io_err)?;
        let record = decode::<RegionRecord>(v.value())?;
        // Tombstones of destroyed replicas are skipped.
        let Some(desc) = record.to_descriptor() else { continue };
        match record.merging() {
            Some(m) if crate::storage::snapshot::absorbed_here(&t, &record)? => merged.push((desc, m.target)),
            _ => live.push(desc),
        }
    }
    Ok((live, merged))
}

async fn open_region(shared: &Shared, desc: RegionDescriptor) -> Result<Arc<Region>, NodeError> {
    let region_id = desc.id.0;
    let region_err = |source: Box<dyn std::error::Error + Send + Sync>| NodeError::Region { region_id, source };
    let engine = &shared.ctx.engine;
    let mut log = RegionLogStore::open(engine, &shared.ctx.wal, region_id).map_err(|e| region_err(e.into()))?;
    if desc.epoch == BOOTSTRAP_EPOCH {
        seed_bootstrap_region(engine, &mut log, &desc).await.map_err(|e| region_err(e.into()))?;
    }
    let region_shared = RegionShared::new(desc.clone(), shared.cfg.node_id.0);
    let _ = region_shared.events.set(shared.events.clone());
    let _ = region_shared.node_changes.set(shared.ctx.changes.clone());
    let mut sm = RegionStateMachine::open(engine, region_shared.clone()).map_err(|e| region_err(e.into()))?;
    // A replica prepared to merge cuts the file of its frozen state again (a restart
    // forgot the last one); until it has, this node's target of the merge waits.
    sm.cut_frozen_state().await;
    // A voter is in the descriptor; a learner only in the applied membership (or, before
    // its first snapshot, in the descriptor PD created it from).
    let Some(peer) = desc.peer_on(shared.cfg.node_id).or_else(|| sm.member_on(shared.cfg.node_id)) else {
        return Err(NodeError::NotAPeer { region_id });
    };
    seed_split_log(&mut log, &mut sm).await.map_err(|e| region_err(e.into()))?;
    let network = NetworkFactory {
        region_id: desc.id,
        pool: shared.pool.clone(),
        book: shared.ctx.book.clone(),
        peer_failures: shared.ctx.peer_failures.clone(),
    };
    let raft =
        Raft::new(peer.id.0, shared.raft_config.clone(), network, log, sm).await.map_err(|e| region_err(e.into()))?;
    let region = Arc::new(Region {
        id: desc.id,
        peer,
        proposer: crate::raft::proposer::Proposer::new(raft.clone()),
        raft,
        shared: region_shared,
        incoming: Default::default(),
        append_streams: Default::default(),
        admin_busy: Default::default(),
    });
    shared.ctx.regions.insert(region.clone());
    shared.ctx.changed();
    if desc.epoch == BOOTSTRAP_EPOCH && initializer(&desc) == Some(peer.id) && !shared.cfg.faults.skip_region_campaign {
        // The rotating initializer asks for the first leadership at once, so first leaders
        // spread over the nodes and serve within round trips; if it fails (or crashed),
        // the others elect one after an election timeout.
        tokio::spawn(campaign(region.clone()));
    }
    // openraft's server metrics are the event source for leadership (apply progress is
    // signalled by the state machine). They are sent only when they change, where its full
    // metrics are sent at every turn of the group's loop: watching those woke this task
    // several times per write. The task ends when the Raft group shuts down (its metrics
    // channel closes).
    let mut metrics = region.raft.server_metrics();
    let notify = shared.leadership.clone();
    let ctx = shared.ctx.clone();
    let me = peer.id.0;
    tokio::spawn(async move {
        let mut seen = None;
        while metrics.changed().await.is_ok() {
            let leader = metrics.borrow_watched().current_leader;
            if leader == seen {
                continue;
            }
            // A region that gains a leader here reports it to PD at once.
            if leader == Some(me) && seen != Some(me) {
                notify.notify_one();
            }
            seen = leader;
            ctx.changed();
        }
    });
    Ok(region)
}

/// A seeded region (split off, or bootstrapped: see [`seeded_state`]) starts with its
/// state machine at the seed log id ([`split_seed_log_id`]) and no log: purge the log up
/// to the seed, so openraft sees the seeded membership as committed state and sends a
/// snapshot to any replica without it. Idempotent: does nothing once the log has the purge
/// point (or any entries).
async fn seed_split_log(log: &mut RegionLogStore, sm: &mut RegionStateMachine) -> std::io::Result<()> {
    use openraft::storage::{RaftLogStorage, RaftStateMachine};
    let state = log.get_log_state().await?;
    let (applied, _) = sm.applied_state().await?;
    let seed = split_seed_log_id();
    if state.last_log_id.is_none() && applied == Some(seed) {
        log.purge(seed).await?;
    }
    Ok(())
}

/// The openraft configuration of every region of a node.
fn raft_config(timing: &crate::config::RaftTiming) -> Result<openraft::Config, NodeError> {
    let config = openraft::Config {
        cluster_name: "tessera".into(),
        heartbeat_interval: timing.heartbeat_ms,
        election_timeout_min: timing.election_min_ms,
        election_timeout_max: timing.election_max_ms,
        // Snapshots are triggered by `snapshot_policy::snapshot_loop`, by region size.
        snapshot_policy: openraft::SnapshotPolicy::Never,
        max_in_snapshot_log_to_keep: timing.keep_after_snapshot,
        // A node back from a pause or a partition asks before campaigning, so it cannot
        // depose healthy leaders (of every region it follows) with a higher term.
        enable_pre_vote: Some(true),
        // A restarted leader must win an election: it may not resume at its old term.
        // A leader commits on its followers' acknowledgements without waiting for its
        // own sync, so a `kill -9` can take committed entries off the end of its log
        // (and their applies, which are lazily durable). Resuming at the same term, it
        // would propose new entries at those indexes under the same log ids, which the
        // followers take for the entries they hold: the group's replicas would diverge
        // (a merge's prepare applied on one replica, a client write on another).
        // An election at a higher term cannot be won with the shorter log.
        enable_leader_restore: Some(false),
        ..Default::default()
    };
    config.validate().map_err(|e| NodeError::Config(e.to_string()))
}

/// Seeds a replica of a region as PD bootstrapped it ([`seeded_state`] with PD's peers
/// and an empty range), unless it has state already: an applied state machine or a log
/// (a region a previous version initialised through openraft, whose log starts at 0).
///
/// Every replica seeds the same state, so no replica ever replays a log from its start:
/// a replica added later either seeds this same state (while the region is unchanged, so
/// its epoch is still the bootstrap one) or receives a snapshot.
async fn seed_bootstrap_region(
    engine: &Engine,
    log: &mut RegionLogStore,
    desc: &RegionDescriptor,
) -> std::io::Result<()> {
    use openraft::storage::RaftLogStorage;
    let state = log.get_log_state().await?;
    if state.last_log_id.is_some() || state.last_purged_log_id.is_some() {
        return Ok(());
    }
    let region = desc.id.0;
    let desc = desc.clone();
    engine
        .write(Box::new(move |txn| {
            use redb::ReadableTable;
            let mut meta = txn.open_table(crate::storage::tables::SM_META).map_err(io_err)?;
            if meta.get(region).map_err(io_err)?.is_some() {
                return Ok(());
            }
            let data_id = crate::storage::snapshot::read_data_id_mut(txn, region)?;
            let state = seeded_state(&desc, Default::default(), data_id, data_id)?;
            meta.insert(region, encode(&crate::storage::records::SmMetaRecord::from_state(&state))?.as_slice())
                .map_err(io_err)?;
            Ok(())
        }))
        .await
}

/// The peer that campaigns first for a bootstrapped region (and so usually becomes its first
/// leader): rotated by region id over the peers in id order, so that the first leaders of
/// a cluster's initial regions are spread over the nodes rather than all on one.
fn initializer(desc: &RegionDescriptor) -> Option<tessera_wire::PeerId> {
    let mut ids: Vec<_> = desc.peers.iter().map(|p| p.id).collect();
    ids.sort();
    let n = ids.len() as u64;
    (n > 0).then(|| ids[(desc.id.0 % n) as usize])
}

/// The epoch PD gives the regions it bootstraps.
const BOOTSTRAP_EPOCH: tessera_wire::RegionEpoch = tessera_wire::RegionEpoch { conf_ver: 1, version: 1 };

/// Creates a replica PD assigned to this node: persists its record, then starts its Raft
/// group. A region as PD bootstrapped it (epoch 1/1) is seeded by each of its replicas
/// ([`seed_bootstrap_region`]); any other starts empty and receives a snapshot from the
/// region's leader.
///
/// Refused (silently) if the replica exists, or was destroyed here at an epoch at least as
/// new (a stale descriptor must not bring a removed replica back).
async fn create_region(shared: &Shared, desc: RegionDescriptor) -> Result<(), NodeError> {
    let _guard = shared.lifecycle.lock().await;
    if shared.ctx.regions.get(desc.id).is_some() {
        return Ok(());
    }
    let id = desc.id.0;
    let record = encode(&RegionRecord::from_descriptor(&desc)).map_err(|e| NodeError::Storage(e.into()))?;
    let created = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let done = created.clone();
    let epoch = desc.epoch;
    let peer = desc.peer_on(shared.cfg.node_id).map(|p| p.id);
    shared
        .ctx
        .engine
        .write(Box::new(move |txn| {
            use redb::ReadableTable;
            let mut t = txn.open_table(crate::storage::tables::REGIONS).map_err(io_err)?;
            let mut recreated = false;
            if let Some(old) = t.get(id).map_err(io_err)? {
                let old: RegionRecord = decode(old.value())?;
                match old.tombstone_of() {
                    Some((dead, _)) if epoch.conf_ver <= dead.conf_ver => return Ok(()),
                    // The same replica cannot come back: its leader would find its log gone.
                    Some((_, dead_peer)) if Some(dead_peer) == peer => return Ok(()),
                    Some(_) => recreated = true,
                    // A live record: a split seeded it after PD answered; it opens from there.
                    None => return Ok(()),
                }
            }
            t.insert(id, record.as_slice()).map_err(io_err)?;
            drop(t);
            if recreated {
                // The destroyed replica's rows, under the region's old data id, may still be
                // being collected: the new replica's rows go under a fresh one.
                let fresh = crate::storage::snapshot::alloc_data_id(txn)?;
                txn.open_table(crate::storage::tables::DATA_IDS).map_err(io_err)?.insert(id, fresh).map_err(io_err)?;
            }
            done.store(true, std::sync::atomic::Ordering::SeqCst);
            Ok(())
        }))
        .await
        .map_err(|e| NodeError::Storage(e.into()))?;
    if !created.load(std::sync::atomic::Ordering::SeqCst) {
        tracing::debug!(region_id = id, "region not created: a record or a newer tombstone exists");
        return Ok(());
    }
    let region = open_region(shared, desc).await?;
    tracing::info!(region_id = id, peer = region.peer.id.0, "region created");
    Ok(())
}

/// Destroys this node's replica of a region PD says it no longer has a replica of (`newer`
/// is PD's descriptor): only if the local descriptor is older than `newer` (so the change
/// that removed it is committed) and `newer` names no replica here. Stops the group,
/// replaces the region record with a tombstone, forgets the log, and hands the rows to the
/// background collector, which deletes them in bounded steps.
async fn destroy_region(shared: &Shared, newer: RegionDescriptor) -> Result<(), NodeError> {
    let _guard = shared.lifecycle.lock().await;
    let Some(region) = shared.ctx.regions.get(newer.id) else { return Ok(()) };
    let local = region.shared.descriptor();
    let removed = newer.peer_on(shared.cfg.node_id).is_none_or(|p| p.id != region.peer.id);
    if !removed || !local.epoch.is_stale_against(&newer.epoch) || newer.epoch.conf_ver <= local.epoch.conf_ver {
        return Ok(());
    }
    tracing::info!(region_id = newer.id.0, peer = region.peer.id.0, "destroying a replica that was moved away");
    region.shared.mark_retired();
    if let Err(e) = region.raft.shutdown().await {
        tracing::warn!(region_id = newer.id.0, error = %e, "stopping the region's group failed");
    }
    region.shared.retire().await;
    shared.ctx.regions.remove(newer.id);
    // Reads still in flight on the replica must not read what the retirement removes.
    region.shared.range_version.store(u64::MAX, std::sync::atomic::Ordering::SeqCst);
    let id = newer.id.0;
    let tombstone =
        encode(&RegionRecord::tombstone(&local, region.peer.id)).map_err(|e| NodeError::Storage(e.into()))?;
    retire(&shared.ctx, id, Box::new(move |txn| crate::storage::snapshot::retire_region(txn, id, &tombstone))).await
}

/// Writes a replica's retirement (`work`: its tombstone, and its rows listed as garbage)
/// in a durable commit, then has the log engine forget the region (only after that commit:
/// the log is never forgotten before the state that replaces it is durable), and starts
/// the collection of the garbage.
async fn retire(
    ctx: &crate::region::NodeContext,
    id: u64,
    work: crate::storage::engine::Work,
) -> Result<(), NodeError> {
    ctx.engine.write(work).await.map_err(|e| NodeError::Storage(e.into()))?;
    ctx.wal
        .write(vec![crate::storage::wal::Op::Forget { region: id }])
        .await
        .map_err(|e| NodeError::Storage(e.into()))?;
    crate::storage::snapshot::spawn_garbage_collection(ctx.engine.clone());
    ctx.changed();
    Ok(())
}

/// Campaigns for a region just seeded here (split off, or bootstrapped) until it has a
/// leader, for at most a second: the other replicas start the region's group only when
/// they apply the split (or create the region), a moment after this node, and a vote
/// request reaching a node before that fails. Retrying every
/// 50 ms gets the region a leader within a few round trips, where waiting for an election
/// timeout would leave its keys without a leader for most of a second.
async fn campaign(region: Arc<Region>) {
    const TRIES: u32 = 20;
    const EVERY: Duration = Duration::from_millis(50);
    let mut metrics = region.raft.metrics();
    for _ in 0..TRIES {
        if metrics.borrow_watched().current_leader.is_some() {
            return;
        }
        if let Err(e) = region.raft.trigger().elect(false).await {
            tracing::debug!(region_id = region.id.0, error = %e, "campaign for a new region failed");
            return;
        }
        let deadline = tokio::time::sleep(EVERY);
        tokio::pin!(deadline);
        loop {
            tokio::select! {
                _ = &mut deadline => break,
                changed = metrics.changed() => {
                    if changed.is_err() {
                        return;
                    }
                    if metrics.borrow_watched().current_leader.is_some() {
                        return;
                    }
                }
            }
        }
    }
}

/// Acts on region events: starts the group of a region a split seeded here.
async fn region_events(
    shared: Arc<Shared>,
    mut events: tokio::sync::mpsc::UnboundedReceiver<RegionEvent>,
    mut shutdown: watch::Receiver<bool>,
) {
    loop {
        let event = tokio::select! {
            e = events.recv() => match e { Some(e) => e, None => return },
            _ = shutdown.wait_for(|s| *s) => return,
        };
        match event {
            RegionEvent::Split { parent, child, seeded } => {
                // The parent's leader reports its new shape to PD at once.
                if shared.ctx.regions.get(parent).is_some_and(|p| p.is_leader()) {
                    shared.leadership.notify_one();
                }
                if !seeded || shared.ctx.regions.get(child.id).is_some() {
                    continue;
                }
                let _guard = shared.lifecycle.lock().await;
                let child_id = child.id;
                match open_region(&shared, child).await {
                    Ok(region) => {
                        // The parent's leader campaigns for the new region at once, so it
                        // serves within a round trip instead of an election timeout.
                        let parent_leader = shared.ctx.regions.get(parent).is_some_and(|p| p.is_leader());
                        if parent_leader {
                            tokio::spawn(campaign(region.clone()));
                        }
                        tracing::info!(region_id = child_id.0, parent = parent.0, "split-off region started");
                    }
                    Err(e) => tracing::error!(region_id = child_id.0, error = %e, "starting a split-off region failed"),
                }
            }
            RegionEvent::Merged { target, .. } => {
                // The target's leader reports its wider range to PD at once, so PD drops
                // the source and routes its keys to the target.
                if shared.ctx.regions.get(target).is_some_and(|t| t.is_leader()) {
                    shared.leadership.notify_one();
                }
                reap_merged_regions(&shared);
            }
            RegionEvent::Installed { .. } => reap_merged_regions(&shared),
        }
    }
}

/// Marks every local region prepared to merge whose local target has absorbed it (its
/// range covers the region's start at a newer version than the prepare names: the commit
/// applied here, arrived in a snapshot, or applied before a crash that left the source's
/// replica). The node reports them to PD in its heartbeats and destroys them once PD says
/// every node hosting them has done the same: until then their groups keep running, frozen,
/// so that a replica elsewhere that has the prepare in its log but not yet the news that it
/// committed learns it from them.
fn reap_merged_regions(shared: &Arc<Shared>) {
    let regions = shared.ctx.regions.all();
    for region in &regions {
        let Some(m) = region.shared.merging() else { continue };
        if region.shared.reaping.load(std::sync::atomic::Ordering::SeqCst) {
            continue;
        }
        // Absorbed by the target, or by what the target became since (a split of it).
        let desc = region.shared.descriptor();
        let absorbed = regions.iter().any(|other| {
            let d = other.shared.descriptor();
            other.id != region.id && d.contains(&desc.start_key) && d.epoch.version > desc.epoch.version
        });
        if !absorbed || region.shared.reaping_pending.swap(true, std::sync::atomic::Ordering::SeqCst) {
            continue;
        }
        let (shared, region) = (shared.clone(), region.clone());
        tokio::spawn(async move {
            // Reported only once the commit that absorbed it is durable here: a node that
            // reported it and then lost the commit in a crash would wait for a source whose
            // other replicas were destroyed meanwhile.
            match shared.ctx.engine.write(Box::new(|_| Ok(()))).await {
                Ok(()) => {
                    region.shared.reaping.store(true, std::sync::atomic::Ordering::SeqCst);
                    tracing::info!(region_id = region.id.0, target = m.target, "merged region absorbed here");
                }
                Err(e) => {
                    region.shared.reaping_pending.store(false, std::sync::atomic::Ordering::SeqCst);
                    tracing::warn!(region_id = region.id.0, error = %e, "making a merge durable failed");
                }
            }
        });
    }
}

/// The regions merged away here, for the node heartbeat (see [`reap_merged_regions`]).
fn merged_regions(ctx: &crate::region::NodeContext) -> Vec<RegionDescriptor> {
    ctx.regions
        .all()
        .into_iter()
        .filter(|r| r.shared.reaping.load(std::sync::atomic::Ordering::SeqCst))
        .map(|r| r.shared.descriptor())
        .collect()
}

/// Destroys this node's replica of `source`, a region merged into its left neighbour
/// here: stops its group, replaces its record with a tombstone and forgets its log and
/// session rows. Its data rows now belong to the target (the merge's commit copied them
/// or they were shared) and are not touched.
async fn destroy_merged_region(shared: &Shared, source: tessera_wire::RegionId) -> Result<(), NodeError> {
    let _guard = shared.lifecycle.lock().await;
    let Some(region) = shared.ctx.regions.get(source) else { return Ok(()) };
    let Some(merge) = region.shared.merging() else { return Ok(()) };
    if !region.shared.reaping.load(std::sync::atomic::Ordering::SeqCst) {
        return Ok(());
    }
    tracing::info!(region_id = source.0, peer = region.peer.id.0, "destroying a region merged into its neighbour");
    region.shared.mark_retired();
    if let Err(e) = region.raft.shutdown().await {
        tracing::warn!(region_id = source.0, error = %e, "stopping the region's group failed");
    }
    region.shared.retire().await;
    shared.ctx.regions.remove(source);
    region.shared.range_version.store(u64::MAX, std::sync::atomic::Ordering::SeqCst);
    let id = source.0;
    let local = region.shared.descriptor();
    let tombstone =
        encode(&RegionRecord::tombstone(&local, region.peer.id)).map_err(|e| NodeError::Storage(e.into()))?;
    // Durable, and after the merge's commit: the log is forgotten only once the commit
    // that took the source's rows over can no longer be lost.
    let target = merge.target;
    let work = Box::new(move |txn: &redb::WriteTransaction| {
        crate::storage::snapshot::retire_merged_region(txn, id, target, &tombstone)
    });
    retire(&shared.ctx, id, work).await
}

/// How long a replica's destruction, or a heartbeat round, may take before the node warns
/// about it.
const WARN_SLOWER_THAN: Duration = Duration::from_secs(10);

/// A replica PD's node-heartbeat answer says to destroy.
enum Destroy {
    /// Moved to other nodes ([`destroy_region`], with PD's newer descriptor).
    MovedAway(RegionDescriptor),
    /// Merged into its left neighbour everywhere ([`destroy_merged_region`]).
    MergedAway(tessera_wire::RegionId),
}

/// Destroys a replica on a task of its own, so that the heartbeat loop goes on reporting
/// the regions this node leads meanwhile: PD drives every region's steps (a merge's commit
/// among them) from those reports, and stopping a replica's group waits for its Raft core.
/// Destructions stay serialised with creations by the lifecycle lock; one already under
/// way for the region is not started twice, and one that takes longer than
/// [`WARN_SLOWER_THAN`] is logged.
fn destroy_later(shared: &Arc<Shared>, what: Destroy) {
    let region_id = match &what {
        Destroy::MovedAway(desc) => desc.id,
        Destroy::MergedAway(id) => *id,
    };
    if !shared.destroying.lock().unwrap_or_else(|p| p.into_inner()).insert(region_id) {
        return;
    }
    let shared = shared.clone();
    tokio::spawn(async move {
        let started = std::time::Instant::now();
        let work = async {
            match what {
                Destroy::MovedAway(desc) => destroy_region(&shared, desc).await,
                Destroy::MergedAway(id) => destroy_merged_region(&shared, id).await,
            }
        };
        tokio::pin!(work);
        let result = tokio::select! {
            r = &mut work => r,
            _ = tokio::time::sleep(WARN_SLOWER_THAN) => {
                tracing::warn!(
                    region_id = region_id.0,
                    after_s = WARN_SLOWER_THAN.as_secs(),
                    "destroying a replica is taking long"
                );
                work.await
            }
        };
        match result {
            Ok(()) => tracing::debug!(
                region_id = region_id.0,
                elapsed_ms = started.elapsed().as_millis() as u64,
                "replica destruction ended"
            ),
            Err(e) => tracing::error!(region_id = region_id.0, error = %e, "destroying a replica failed"),
        }
        shared.destroying.lock().unwrap_or_else(|p| p.into_inner()).remove(&region_id);
    });
}

async fn heartbeat_loop(shared: Arc<Shared>, mut shutdown: watch::Receiver<bool>) {
    let pd = PdClient::new(shared.cfg.pd_endpoints.clone(), shared.pool.clone());
    let node_id = shared.cfg.node_id;
    let mut registered = false;
    let mut load = LoadMeter::default();
    let mut host_cpu = crate::host_cpu::HostCpu::default();
    let mut ticker = tokio::time::interval(shared.cfg.heartbeat_interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut failure_logged = false;
    loop {
        let leadership_changed = tokio::select! {
            _ = ticker.tick() => false,
            _ = shared.leadership.notified(), if registered => true,
            _ = shutdown.wait_for(|s| *s) => return,
        };
        // A node whose storage fail-stopped serves nothing until restarted: it goes on
        // heartbeating only to tell PD why (`NodeStats::storage_failure`), which counts it
        // down from its last healthy heartbeat and recreates its replicas on the other
        // nodes once it has been down `max_down_time`. It reports no regions and takes no
        // assignment.
        let failure = shared.ctx.storage_failure();
        if let Some(reason) = &failure {
            if !failure_logged {
                failure_logged = true;
                tracing::error!(
                    node_id = node_id.0,
                    reason = %reason,
                    "storage failed: PD counts this node down and will move its replicas elsewhere; \
                     free the disk and restart the node"
                );
            }
        }
        if leadership_changed {
            if failure.is_none() {
                report_regions(&shared, &pd, &mut load).await;
            }
            continue;
        }
        if failure.is_none() {
            reap_merged_regions(&shared);
        }
        if !registered {
            let req = PdRequest::RegisterNode {
                node_id,
                addr: shared.advertise.clone(),
                capacity_bytes: shared.cfg.capacity_bytes,
            };
            match pd.call(req).await {
                Ok(_) => {
                    registered = true;
                    tracing::info!(node_id = node_id.0, "registered with PD");
                }
                Err(e) => {
                    tracing::warn!(node_id = node_id.0, error = %e, "registering with PD failed; retrying");
                    continue;
                }
            }
        }
        if let Some(reason) = failure {
            let mut stats = node_stats(&shared.ctx, shared.web.as_ref(), None);
            stats.storage_failure = Some(failure_reason(reason));
            let hb = PdRequest::NodeHeartbeat { node_id, stats, hosted: shared.ctx.regions.ids(), merged: Vec::new() };
            if let Err(e) = pd.call(hb).await {
                tracing::debug!(node_id = node_id.0, error = %e, "storage failure report to PD failed");
                if matches!(e, crate::pd_client::PdCallError::Refused(_)) {
                    registered = false;
                }
            }
            continue;
        }
        let round = std::time::Instant::now();
        let hb = PdRequest::NodeHeartbeat {
            node_id,
            stats: node_stats(&shared.ctx, shared.web.as_ref(), host_cpu.sample(std::time::Instant::now())),
            hosted: shared.ctx.regions.ids(),
            merged: merged_regions(&shared.ctx),
        };
        match pd.call(hb).await {
            Ok(PdResponse::NodeHeartbeat { create, nodes, destroy, destroy_merged, revoked_tokens }) => {
                shared.revocations.replace(revoked_tokens);
                for n in nodes {
                    shared.ctx.book.set(n.id, n.addr);
                }
                for desc in create {
                    if let Err(e) = create_region(&shared, desc).await {
                        tracing::error!(node_id = node_id.0, error = %e, "creating region failed");
                    }
                }
                for desc in destroy {
                    destroy_later(&shared, Destroy::MovedAway(desc));
                }
                for id in destroy_merged {
                    destroy_later(&shared, Destroy::MergedAway(id));
                }
            }
            Ok(other) => tracing::warn!(node_id = node_id.0, answer = ?other, "unexpected heartbeat answer"),
            Err(e) => {
                tracing::warn!(node_id = node_id.0, error = %e, "store heartbeat failed");
                // PD answered but refused (for instance it does not know this node): register
                // again, which is idempotent, before the next heartbeat.
                if matches!(e, crate::pd_client::PdCallError::Refused(_)) {
                    registered = false;
                }
                continue;
            }
        }
        report_regions(&shared, &pd, &mut load).await;
        // Creating a replica holds up the next reports: say so when a round is long.
        if round.elapsed() > WARN_SLOWER_THAN {
            tracing::warn!(
                node_id = node_id.0,
                elapsed_ms = round.elapsed().as_millis() as u64,
                "a heartbeat round took long; region reports were late"
            );
        }
    }
}

/// `reason` cut to [`tessera_wire::MAX_FAILURE_REASON`] bytes, at a character boundary.
fn failure_reason(mut reason: String) -> String {
    if reason.len() > tessera_wire::MAX_FAILURE_REASON {
        let mut end = tessera_wire::MAX_FAILURE_REASON - '…'.len_utf8();
        while !reason.is_char_boundary(end) {
            end -= 1;
        }
        reason.truncate(end);
        reason.push('…');
    }
    reason
}

/// Sends the region heartbeats of the regions this node leads and starts the steps PD
/// answers with.
async fn report_regions(shared: &Arc<Shared>, pd: &PdClient, load: &mut LoadMeter) {
    let node_id = shared.cfg.node_id;
    let regions = led_region_stats(&shared.ctx, load);
    if regions.is_empty() {
        return;
    }
    match pd.call(PdRequest::RegionHeartbeat { node_id, regions }).await {
        Ok(PdResponse::RegionCommands(commands)) => {
            for command in commands {
                let shared = shared.clone();
                tokio::spawn(async move { crate::admin::execute(&shared.ctx, command).await });
            }
        }
        Ok(_) => {}
        Err(e) => tracing::debug!(node_id = node_id.0, error = %e, "region heartbeat failed"),
    }
}

/// Names a browser certificate of this node is valid for: its listen IP, its advertised
/// host, and `localhost`.
fn web_hosts(cfg: &NodeConfig) -> Vec<String> {
    let mut hosts = vec![cfg.listen.ip().to_string(), "localhost".to_string()];
    if let Some(host) =
        cfg.advertise.as_deref().and_then(|a| a.rsplit_once(':')).map(|(h, _)| h.trim_matches(['[', ']']))
    {
        hosts.push(host.to_string());
    }
    hosts.sort();
    hosts.dedup();
    hosts
}

/// Replaces the browser certificate before it expires (checked hourly); the next heartbeat
/// publishes the new hash through PD.
pub(crate) async fn rotate_web_cert(web: tessera_certs::WebCert, mut shutdown: watch::Receiver<bool>) {
    let mut tick = tokio::time::interval(std::time::Duration::from_secs(3600));
    loop {
        tokio::select! {
            _ = shutdown.wait_for(|s| *s) => return,
            _ = tick.tick() => {
                if let Err(error) = web.rotate_if_due() {
                    tracing::error!(%error, "rotating the browser certificate failed");
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use tessera_wire::{NodeId, Peer, PeerId, RegionEpoch, RegionId};

    use crate::raft::types::TypeConfig;

    use super::*;

    #[test]
    fn a_long_failure_reason_is_cut_at_a_character_boundary() {
        assert_eq!(failure_reason("No space left on device".into()), "No space left on device");
        let exact = "x".repeat(tessera_wire::MAX_FAILURE_REASON);
        assert_eq!(failure_reason(exact.clone()), exact);
        // Two- and three-byte characters: the limit falls inside one.
        let long = format!("a{}", "é€".repeat(400));
        let cut = failure_reason(long.clone());
        assert!(cut.len() <= tessera_wire::MAX_FAILURE_REASON && cut.len() > tessera_wire::MAX_FAILURE_REASON - 8);
        assert!(cut.ends_with('…'));
        assert!(long.starts_with(cut.trim_end_matches('…')));
    }

    /// A network to peers that are all down.
    struct AllDown;

    fn down() -> openraft::error::Unreachable<TypeConfig> {
        openraft::error::Unreachable::from_string("the peer is down")
    }

    impl openraft::network::RaftNetworkFactory<TypeConfig> for AllDown {
        type Network = AllDown;

        async fn new_client(&mut self, _target: u64, _node: &crate::raft::types::PeerNode) -> AllDown {
            AllDown
        }
    }

    impl openraft::network::v2::RaftNetworkV2<TypeConfig> for AllDown {
        type SnapshotData = crate::raft::types::SnapshotData;

        async fn append_entries(
            &mut self,
            _rpc: openraft::raft::AppendEntriesRequest<TypeConfig>,
            _option: openraft::network::RPCOption,
        ) -> Result<openraft::raft::AppendEntriesResponse<TypeConfig>, openraft::error::RPCError<TypeConfig>> {
            Err(openraft::error::RPCError::Unreachable(down()))
        }

        async fn vote(
            &mut self,
            _rpc: openraft::raft::VoteRequest<TypeConfig>,
            _option: openraft::network::RPCOption,
        ) -> Result<openraft::raft::VoteResponse<TypeConfig>, openraft::error::RPCError<TypeConfig>> {
            Err(openraft::error::RPCError::Unreachable(down()))
        }

        // Overridden: the default grants every pre-vote.
        async fn pre_vote(
            &mut self,
            _rpc: openraft::raft::VoteRequest<TypeConfig>,
            _option: openraft::network::RPCOption,
        ) -> Result<openraft::raft::VoteResponse<TypeConfig>, openraft::error::RPCError<TypeConfig>> {
            Err(openraft::error::RPCError::Unreachable(down()))
        }

        async fn full_snapshot(
            &mut self,
            _vote: crate::raft::types::Vote,
            _snapshot: crate::raft::types::Snapshot,
            _cancel: impl std::future::Future<Output = openraft::error::ReplicationClosed> + Send + 'static,
            _option: openraft::network::RPCOption,
        ) -> Result<openraft::raft::SnapshotResponse<TypeConfig>, openraft::error::StreamingError<TypeConfig>> {
            Err(openraft::error::StreamingError::Unreachable(down()))
        }
    }

    /// Peer 1's replica of a bootstrapped region 5 of peers 1-3, in `dir`: its seeded log
    /// and its state machine.
    async fn seeded_replica(dir: &std::path::Path) -> (RegionLogStore, RegionStateMachine) {
        let engine = Engine::open(&dir.join("node.redb")).unwrap();
        let wal = LogEngine::open(&dir.join("raft-log")).unwrap();
        let desc = RegionDescriptor {
            id: RegionId(5),
            start_key: vec![],
            end_key: vec![],
            epoch: BOOTSTRAP_EPOCH,
            peers: (1..=3).map(|i| Peer { id: PeerId(i), node_id: NodeId(i) }).collect(),
        };
        let mut log = RegionLogStore::open(&engine, &wal, 5).unwrap();
        seed_bootstrap_region(&engine, &mut log, &desc).await.unwrap();
        let sm = RegionStateMachine::open(&engine, RegionShared::new(desc, 1)).unwrap();
        (log, sm)
    }

    /// A leader killed and restarted does not resume leading at its old term: a `kill -9`
    /// can have taken committed entries off the end of its log, and at the old term it
    /// would reuse their log ids for new entries (see `raft_config`). Here the replica
    /// restarts with its own committed vote, as a leader's is, and its two peers down: with
    /// openraft's leader restore it is leader at once; without, it can only campaign, and
    /// no peer answers.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_leader_restarted_with_its_peers_down_does_not_resume_leading() {
        use openraft::storage::RaftLogStorage;
        let dir = tempfile::tempdir().unwrap();
        let (mut log, sm) = seeded_replica(dir.path()).await;
        log.save_vote(&crate::raft::types::Vote::new_committed(1, 1)).await.unwrap();
        let config = Arc::new(raft_config(&crate::config::RaftTiming::default()).unwrap());
        let raft = Raft::new(1, config, AllDown, log, sm).await.unwrap();
        // Leader restore acts at start-up; an election would need a peer's vote.
        let led = raft.wait(Some(Duration::from_secs(2))).state(openraft::ServerState::Leader, "leading").await;
        assert!(led.is_err(), "the restarted replica leads at its old term without an election");
        let metrics = raft.metrics().borrow_watched().clone();
        assert!(metrics.running_state.is_ok(), "the group is running: {metrics:?}");
        assert_ne!(metrics.state, openraft::ServerState::Leader);
        assert_eq!(metrics.current_term, 1, "no election was won: {metrics:?}");
        raft.shutdown().await.unwrap();
    }

    /// A network where peer 2 grants votes and takes every append until `higher` is set,
    /// then answers appends with that vote and refuses votes; peer 3 never answers an
    /// append, so a replication to it stays in flight for good.
    #[derive(Clone)]
    struct OneHangs {
        higher: Arc<std::sync::Mutex<Option<crate::raft::types::Vote>>>,
    }

    struct OneHangsClient {
        target: u64,
        higher: Arc<std::sync::Mutex<Option<crate::raft::types::Vote>>>,
    }

    impl openraft::network::RaftNetworkFactory<TypeConfig> for OneHangs {
        type Network = OneHangsClient;

        async fn new_client(&mut self, target: u64, _node: &crate::raft::types::PeerNode) -> OneHangsClient {
            OneHangsClient { target, higher: self.higher.clone() }
        }
    }

    impl openraft::network::v2::RaftNetworkV2<TypeConfig> for OneHangsClient {
        type SnapshotData = crate::raft::types::SnapshotData;

        async fn append_entries(
            &mut self,
            _rpc: openraft::raft::AppendEntriesRequest<TypeConfig>,
            _option: openraft::network::RPCOption,
        ) -> Result<openraft::raft::AppendEntriesResponse<TypeConfig>, openraft::error::RPCError<TypeConfig>> {
            if self.target != 2 {
                return std::future::pending().await;
            }
            Ok(match *crate::lock(&self.higher) {
                Some(vote) => openraft::raft::AppendEntriesResponse::HigherVote(vote),
                None => openraft::raft::AppendEntriesResponse::Success,
            })
        }

        // `pre_vote` is openraft's default, which grants every pre-vote: only the vote decides.
        async fn vote(
            &mut self,
            rpc: openraft::raft::VoteRequest<TypeConfig>,
            _option: openraft::network::RPCOption,
        ) -> Result<openraft::raft::VoteResponse<TypeConfig>, openraft::error::RPCError<TypeConfig>> {
            if self.target != 2 || crate::lock(&self.higher).is_some() {
                return Err(openraft::error::RPCError::Unreachable(down()));
            }
            Ok(openraft::raft::VoteResponse::new(rpc.vote, None, true))
        }

        async fn full_snapshot(
            &mut self,
            vote: crate::raft::types::Vote,
            snapshot: crate::raft::types::Snapshot,
            cancel: impl std::future::Future<Output = openraft::error::ReplicationClosed> + Send + 'static,
            option: openraft::network::RPCOption,
        ) -> Result<openraft::raft::SnapshotResponse<TypeConfig>, openraft::error::StreamingError<TypeConfig>> {
            openraft::network::v2::RaftNetworkV2::full_snapshot(&mut AllDown, vote, snapshot, cancel, option).await
        }
    }

    /// A leader whose purge is postponed (its replication to peer 3 never comes back) and
    /// which then steps down purges once the snapshot loop's check asks it to; openraft
    /// alone would keep the log until the replica's next snapshot.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_purge_postponed_while_leading_runs_once_the_leader_steps_down() {
        use crate::raft::types::{LogCommand, LogOp};
        let dir = tempfile::tempdir().unwrap();
        let (log, sm) = seeded_replica(dir.path()).await;
        let keep = 5;
        let timing = crate::config::RaftTiming { keep_after_snapshot: keep, ..Default::default() };
        let config = Arc::new(raft_config(&timing).unwrap());
        let higher = Arc::new(std::sync::Mutex::new(None));
        let raft = Raft::new(1, config, OneHangs { higher: higher.clone() }, log, sm).await.unwrap();
        let wait = || raft.wait(Some(Duration::from_secs(20)));
        // Leading, with peer 2's acknowledgement of its first entry: from then on its lease
        // holds (peer 2 answers every heartbeat), and writes are taken.
        let peer_2_caught_up = |m: &openraft::RaftMetrics<TypeConfig>| {
            let matched = m.replication.as_ref().and_then(|r| r.get(&2).cloned().flatten());
            m.state == openraft::ServerState::Leader && matched.map(|l| l.index) == m.last_log_index
        };
        wait().metrics(peer_2_caught_up, "leading, with peer 2 caught up").await.unwrap();
        for i in 0..30u32 {
            let op = LogOp::Put(format!("k{i}").into_bytes(), b"v".to_vec());
            raft.client_write(LogCommand::WriteV1 { session: None, op }).await.unwrap();
        }
        let applied = raft.metrics().borrow_watched().last_applied.unwrap().index;
        raft.trigger().snapshot().await.unwrap();
        let m = wait().metrics(|m| m.snapshot.is_some_and(|s| s.index >= applied), "the snapshot").await.unwrap();
        let snapshot = m.snapshot.unwrap().index;
        let policy = snapshot - keep;
        assert!(
            m.purged.is_none_or(|p| p.index < policy),
            "the purge to {policy} was postponed (peer 3's replication is in flight): {m:?}"
        );
        // Peer 2 answers the next heartbeat with a vote of a higher term: the leader steps
        // down, and (votes refused from now on) cannot lead again.
        *crate::lock(&higher) = Some(crate::raft::types::Vote::new(m.current_term + 1, 2));
        let m = wait().metrics(|m| m.state != openraft::ServerState::Leader, "stepping down").await.unwrap();
        assert!(m.purged.is_none_or(|p| p.index < policy), "stepping down alone does not purge: {m:?}");
        assert!(crate::snapshot_policy::purge_if_postponed(&raft, 5, keep).await);
        let m = wait().metrics(|m| m.purged.is_some_and(|p| p.index > policy), "the postponed purge").await.unwrap();
        assert!(m.purged.unwrap().index <= snapshot, "never past the snapshot: {m:?}");
        assert!(!crate::snapshot_policy::purge_if_postponed(&raft, 5, keep).await, "nothing left to ask");
        raft.shutdown().await.unwrap();
    }

    #[test]
    fn initial_leaders_rotate_over_the_peers() {
        let desc = |id: u64| RegionDescriptor {
            id: RegionId(id),
            start_key: vec![],
            end_key: vec![],
            epoch: RegionEpoch::default(),
            peers: (0..3).map(|i| Peer { id: PeerId(id * 3 + i), node_id: NodeId(i + 1) }).collect(),
        };
        let nodes: std::collections::BTreeSet<_> = (1..=3)
            .map(|r| {
                let d = desc(r);
                let p = initializer(&d).unwrap();
                d.peer(p).unwrap().node_id
            })
            .collect();
        assert_eq!(nodes.len(), 3, "three regions start with leaders on three nodes");
        assert_eq!(initializer(&RegionDescriptor { peers: vec![], ..desc(1) }), None);
    }
}
