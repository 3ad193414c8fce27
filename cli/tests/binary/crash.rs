//! Crashes of real processes: `tessera pd` and three `tessera node` processes, killed with
//! SIGKILL (no shutdown code runs) or frozen with SIGSTOP, under write load from clients
//! connected before the fault.
//!
//! Writes are appends of unique tokens (`<writer>:<n>;`), so the final values show whether
//! any acknowledged write was lost (its token is missing) or applied twice (its token
//! appears twice).

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tessera::{Client, ClientConfig, TlsFiles};

use crate::ports::restartable_port;
use crate::{ok, spawn_pd_logging_to, Proc};

pub(crate) const NODES: u64 = 3;
pub(crate) const REGIONS: u32 = 4;
const WRITERS: usize = 8;

/// PD and three nodes as separate processes, each on a port of its own for the cluster's
/// life ([`restartable_port`]), so that a restarted node comes back on its address.
pub(crate) struct ProcCluster {
    dir: tempfile::TempDir,
    pd_addr: String,
    _pd: Proc,
    pub(crate) nodes: BTreeMap<u64, Option<Proc>>,
    ports: BTreeMap<u64, u16>,
    extra: Vec<String>,
}

impl ProcCluster {
    pub(crate) fn start(extra_node_args: &[&str]) -> ProcCluster {
        Self::start_splitting(extra_node_args, crate::NO_SPLITS)
    }

    /// [`ProcCluster::start`], with PD splitting regions past `split_bytes`.
    pub(crate) fn start_splitting(extra_node_args: &[&str], split_bytes: &str) -> ProcCluster {
        let dir = tempfile::tempdir().unwrap();
        let certs = dir.path().join("certs");
        let certs_s = certs.to_str().unwrap();
        ok(&["certs", "init-ca", "--dir", certs_s]);
        ok(&["certs", "pd", "--dir", certs_s, "--host", "127.0.0.1"]);
        for i in 1..=NODES {
            ok(&["certs", "node", "--dir", certs_s, "--id", &i.to_string(), "--host", "127.0.0.1"]);
        }
        ok(&["certs", "client", "--dir", certs_s, "--name", "app"]);
        let pd_addr = format!("127.0.0.1:{}", restartable_port());
        std::fs::create_dir_all(dir.path().join("logs")).unwrap();
        let pd_log = dir.path().join("logs").join("pd.log");
        let pd = spawn_pd_logging_to(&certs, &pd_addr, &dir.path().join("pd"), REGIONS, split_bytes, Some(&pd_log));
        let mut c = ProcCluster {
            dir,
            pd_addr,
            _pd: pd,
            nodes: BTreeMap::new(),
            ports: (1..=NODES).map(|i| (i, restartable_port())).collect(),
            extra: extra_node_args.iter().map(|s| s.to_string()).collect(),
        };
        for i in 1..=NODES {
            c.spawn_node(i);
        }
        c
    }

    pub(crate) fn certs(&self) -> PathBuf {
        self.dir.path().join("certs")
    }

    pub(crate) fn db_path(&self, id: u64) -> PathBuf {
        self.dir.path().join(format!("node{id}")).join("node.redb")
    }

    pub(crate) fn spawn_node(&mut self, id: u64) {
        let cert = |name: &str| self.certs().join(name).to_str().unwrap().to_string();
        let listen = format!("127.0.0.1:{}", self.ports[&id]);
        let data = self.dir.path().join(format!("node{id}"));
        let mut args: Vec<String> = [
            "node",
            "--id",
            &id.to_string(),
            "--listen",
            &listen,
            "--dir",
            data.to_str().unwrap(),
            "--pd-endpoints",
            &self.pd_addr,
            "--tls-ca",
            &cert("ca.pem"),
            "--tls-cert",
            &cert(&format!("node-{id}.pem")),
            "--tls-key",
            &cert(&format!("node-{id}-key.pem")),
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        args.extend(self.extra.iter().cloned());
        // Node logs at info (and the region steps PD asks for at debug, refusals included),
        // so a test can wait for a log line (they are kept in memory);
        // `TESSERA_TEST_NODE_LOG` adds directives, e.g. `openraft=debug`, for debugging.
        let filter = match std::env::var("TESSERA_TEST_NODE_LOG") {
            Ok(extra) => format!("warn,tessera_node=info,tessera_node::admin=debug,{extra}"),
            Err(_) => "warn,tessera_node=info,tessera_node::admin=debug".to_owned(),
        };
        let log = self.dir.path().join("logs").join(format!("node{id}.log"));
        {
            use std::io::Write;
            let mut f = std::fs::OpenOptions::new().create(true).append(true).open(&log).unwrap();
            writeln!(f, "---- node {id} starts ----").unwrap();
        }
        let node = Proc::spawn_logging_to(&args.iter().map(String::as_str).collect::<Vec<_>>(), &filter, Some(&log));
        node.wait_for("listening", Duration::from_secs(30));
        self.mark(&format!("node {id} (re)started and listening"));
        self.nodes.insert(id, Some(node));
    }

    /// SIGKILL: the process gets no chance to flush or close anything.
    pub(crate) fn kill9(&mut self, id: u64) {
        let mut node = self.nodes.get_mut(&id).unwrap().take().expect("node running");
        node.child.kill().unwrap();
        node.child.wait().unwrap();
        self.mark(&format!("node {id} killed with SIGKILL"));
    }

    /// Appends a line to every node's log file, so the logs a failed test prints show
    /// where the test's own steps fell (a kill, a restart) among the nodes' lines.
    pub(crate) fn mark(&self, what: &str) {
        use std::io::Write;
        for id in 1..=NODES {
            let log = self.dir.path().join("logs").join(format!("node{id}.log"));
            if let Ok(mut f) = std::fs::OpenOptions::new().append(true).open(log) {
                let _ = writeln!(f, "---- test: {what} ----");
            }
        }
    }

    pub(crate) fn signal(&self, id: u64, signal: &str) {
        let pid = self.nodes[&id].as_ref().expect("node running").child.id().to_string();
        let status = std::process::Command::new("kill").args([signal, &pid]).status().unwrap();
        assert!(status.success());
        self.mark(&format!("node {id} sent {signal}"));
    }

    pub(crate) fn stop_all(&mut self) {
        for node in self.nodes.values_mut() {
            if let Some(node) = node.take() {
                node.stop();
            }
        }
    }

    pub(crate) async fn client(&self) -> Client {
        let tls = TlsFiles::client(&self.certs(), "app");
        Client::connect(ClientConfig::new(vec![self.pd_addr.clone()], Some(tls))).await.unwrap()
    }

    /// A client, once PD reports every region with a leader.
    pub(crate) async fn ready_client(&self) -> Client {
        let client = self.client().await;
        self.busiest_leader(&client).await;
        client
    }

    /// The node leading the most regions, as PD reports it.
    pub(crate) async fn busiest_leader(&self, client: &Client) -> u64 {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let routes = client.regions().await.unwrap();
            if routes.len() == REGIONS as usize && routes.iter().all(|r| r.leader.is_some()) {
                let mut count: BTreeMap<u64, usize> = BTreeMap::new();
                for r in &routes {
                    *count.entry(r.leader.unwrap().node_id.0).or_default() += 1;
                }
                return count.into_iter().max_by_key(|(_, n)| *n).unwrap().0;
            }
            assert!(Instant::now() < deadline, "regions without leaders: {routes:?}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

impl Drop for ProcCluster {
    /// A failed test prints every process's log (PD and nodes at info, each node's runs one
    /// after the other), so a failure in CI, where nothing else of the cluster is kept, can
    /// be read afterwards.
    fn drop(&mut self) {
        if !std::thread::panicking() {
            return;
        }
        let mut names: Vec<_> = std::fs::read_dir(self.dir.path().join("logs"))
            .map(|d| d.filter_map(Result::ok).map(|e| e.path()).collect())
            .unwrap_or_default();
        names.sort();
        let mut digest = Vec::new();
        for path in names {
            let text = std::fs::read_to_string(&path).unwrap_or_default();
            eprintln!("==== {} ({} lines) ====\n{text}", path.display(), text.lines().count());
            let name = path.file_stem().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
            digest.extend(digest_lines(&name, &text));
        }
        // Last, so that a CI report that keeps only the head and the tail of the output
        // still shows the story: every process's notable lines, in time order.
        digest.sort();
        let skip = digest.len().saturating_sub(DIGEST_LINES);
        eprintln!("==== digest: the last {} notable lines of every log, in time order ====", digest.len() - skip);
        for (_, name, line) in &digest[skip..] {
            eprintln!("{name:>5} | {line}");
        }
    }
}

/// Lines of the digest a failed test prints last.
const DIGEST_LINES: usize = 150;

/// The notable lines of one process's log (warnings, errors, region steps, merges,
/// operators and the test's own marks, those in node 1's log only), each with the
/// timestamp it sorts by: a mark takes the timestamp of the line before it.
fn digest_lines(name: &str, text: &str) -> Vec<(String, String, String)> {
    const NOTABLE: [&str; 10] =
        [" WARN ", " ERROR ", "step", "merge", "absorbed", "destroy", "operator", "descriptor", "registered", "---- "];
    // openraft's warnings about unreachable peers repeat many times a second while a node
    // is down or a region is being created; the full logs above have them.
    const NOISE: [&str; 4] = ["openraft::replication", "replication_handler", "HeartbeatWorker", "requesting"];
    let mut at = String::new();
    let mut out = Vec::new();
    // A notable line repeated with only its timestamp changed (a step PD retries every
    // 500 ms) is kept once, followed by one line saying how often and until when it
    // repeated: a minute of retries must not push the rest of the story out of the digest.
    let mut repeats: Option<(&str, usize, String)> = None;
    let flush = |repeats: &mut Option<(&str, usize, String)>, out: &mut Vec<(String, String, String)>| {
        if let Some((message, n, last)) = repeats.take().filter(|(_, n, _)| *n > 0) {
            out.push((last.clone(), name.to_owned(), format!("{last} (repeated {n} more times until here){message}")));
        }
    };
    for line in text.lines() {
        let stamp = line.split_whitespace().next().filter(|w| w.len() > 20 && w.ends_with('Z'));
        if let Some(ts) = stamp {
            at = ts.to_owned();
        }
        // Every node's log gets the test's marks: node 1's (the first started) are enough.
        let mark = line.starts_with("---- test:");
        if mark && name != "node1" {
            continue;
        }
        if NOTABLE.iter().any(|n| line.contains(n)) && !NOISE.iter().any(|n| line.contains(n)) {
            let message = stamp.map_or(line, |ts| &line[ts.len()..]);
            match &mut repeats {
                Some((last, n, until)) if *last == message => {
                    *n += 1;
                    *until = at.clone();
                    continue;
                }
                _ => flush(&mut repeats, &mut out),
            }
            repeats = Some((message, 0, at.clone()));
            out.push((at.clone(), name.to_owned(), line.to_owned()));
        }
    }
    flush(&mut repeats, &mut out);
    out
}

/// What happened to one write.
#[derive(Debug, Clone)]
enum Outcome {
    Acked,
    Undetermined,
    Failed(String),
}

/// Writes of every writer, and when each acknowledgement came, per region.
#[derive(Debug, Default)]
struct Record {
    /// (writer, n) -> outcome.
    writes: BTreeMap<(usize, u64), Outcome>,
    /// Region (first key byte range) -> acknowledgement times.
    acks: BTreeMap<u8, Vec<Instant>>,
}

fn writer_key(w: usize) -> Vec<u8> {
    // Regions are cut on the first byte into REGIONS equal ranges: two writers per region.
    let first = (w * 256 / WRITERS) as u8 + 1;
    let mut key = vec![first];
    key.extend_from_slice(format!("writer-{w}").as_bytes());
    key
}

fn region_of(w: usize) -> u8 {
    (writer_key(w)[0] as usize * REGIONS as usize / 256) as u8
}

/// Appends `w:n;` tokens in a loop until `stop` is set, recording every outcome. A call
/// in flight when `stop` is set runs to its end (the client's deadline bounds it), so that
/// no write that may have been applied goes unrecorded.
async fn writer(client: Client, w: usize, stop: Arc<AtomicBool>, record: Arc<Mutex<Record>>) {
    let key = writer_key(w);
    let mut n = 0u64;
    while !stop.load(Ordering::SeqCst) {
        n += 1;
        let token = format!("{w}:{n};");
        let result = client.append(&key, token.as_bytes()).await;
        let outcome = match result {
            Ok(_) => Outcome::Acked,
            Err(e) if e.is_undetermined() => Outcome::Undetermined,
            Err(e) => Outcome::Failed(e.to_string()),
        };
        let mut r = record.lock().unwrap();
        if matches!(outcome, Outcome::Acked) {
            r.acks.entry(region_of(w)).or_default().push(Instant::now());
        }
        r.writes.insert((w, n), outcome);
    }
}

struct Load {
    stop: Arc<AtomicBool>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    record: Arc<Mutex<Record>>,
}

impl Load {
    /// `WRITERS` writers, each on its own client connected now (before any fault).
    async fn start(cluster: &ProcCluster) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let record = Arc::new(Mutex::new(Record::default()));
        let mut tasks = Vec::new();
        for w in 0..WRITERS {
            let client = cluster.ready_client().await;
            tasks.push(tokio::spawn(writer(client, w, stop.clone(), record.clone())));
        }
        Load { stop, tasks, record }
    }

    async fn acks(&self) -> usize {
        self.record.lock().unwrap().writes.values().filter(|o| matches!(o, Outcome::Acked)).count()
    }

    /// Waits until `more` writes beyond those acknowledged so far are acknowledged.
    /// On a timeout, says how many acknowledgements each region had in the wait, and when
    /// its last one came, so a stall names its regions.
    async fn wait_for_acks(&self, more: usize, within: Duration) {
        let target = self.acks().await + more;
        let started = Instant::now();
        let deadline = started + within;
        while self.acks().await < target {
            if Instant::now() >= deadline {
                let per_region: Vec<String> = self
                    .record
                    .lock()
                    .unwrap()
                    .acks
                    .iter()
                    .map(|(region, acks)| {
                        let during = acks.iter().filter(|t| **t > started).count();
                        let last = match acks.last() {
                            Some(t) if *t > started => format!("{:?} into the wait", *t - started),
                            Some(_) => "before the wait".to_owned(),
                            None => "never".to_owned(),
                        };
                        format!("region {region}: {during}, the last {last}")
                    })
                    .collect();
                panic!("fewer than {more} writes acknowledged in {within:?}; per region in the wait: {per_region:?}");
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    async fn finish(self) -> Record {
        self.stop.store(true, Ordering::SeqCst);
        for t in self.tasks {
            // A writer in the middle of a call finishes it (recording the outcome) first;
            // the client's 10 s deadline bounds the call.
            tokio::time::timeout(Duration::from_secs(30), t)
                .await
                .expect("a writer did not stop within 30 s of being told")
                .expect("writer panicked");
        }
        Arc::try_unwrap(self.record).expect("every writer has stopped").into_inner().unwrap()
    }
}

/// Reads every writer's key and checks its tokens against the record: every acknowledged
/// write is there exactly once, a write that failed definitely is absent, an undetermined
/// one appears at most once, and nothing else appears (every call a writer made is
/// recorded: none is cancelled).
async fn verify(client: &Client, record: &Record) {
    for w in 0..WRITERS {
        let value = client.get(&writer_key(w)).await.unwrap().unwrap_or_default();
        let text = String::from_utf8(value).unwrap();
        let mut seen = BTreeSet::new();
        for token in text.split(';').filter(|t| !t.is_empty()) {
            let (tw, n) = token.split_once(':').unwrap();
            assert_eq!(tw.parse::<usize>().unwrap(), w, "a token of another writer in writer {w}'s key");
            let n: u64 = n.parse().unwrap();
            assert!(seen.insert(n), "write {w}:{n} was applied twice");
            match record.writes.get(&(w, n)) {
                Some(Outcome::Acked | Outcome::Undetermined) => {}
                Some(Outcome::Failed(e)) => panic!("write {w}:{n} failed definitely ({e}) but was applied"),
                // Every call the writers made is recorded (none is cancelled).
                None => panic!("write {w}:{n} was applied but never sent"),
            }
        }
        for ((rw, n), outcome) in &record.writes {
            if *rw == w && matches!(outcome, Outcome::Acked) {
                assert!(seen.contains(n), "acknowledged write {w}:{n} is lost");
            }
        }
    }
}

/// The longest time, from `from` to `to`, without an acknowledged write in any one region,
/// and a line per region saying where its longest gap was (relative to `from`).
fn longest_gap(record: &Record, from: Instant, to: Instant) -> (Duration, String) {
    let mut worst = Duration::ZERO;
    let mut report = String::new();
    for (region, acks) in &record.acks {
        let (mut last, mut longest, mut at) = (from, Duration::ZERO, Duration::ZERO);
        for t in acks.iter().copied().filter(|t| *t > from && *t <= to).chain([to]) {
            if t - last > longest {
                (longest, at) = (t - last, last - from);
            }
            last = t;
        }
        report.push_str(&format!("  region {region}: {longest:?} from {at:?}\n"));
        worst = worst.max(longest);
    }
    (worst, report)
}

pub(crate) fn runtime() -> tokio::runtime::Runtime {
    // The clients' logs, when asked for with RUST_LOG (e.g. RUST_LOG=tessera=debug).
    if std::env::var_os("RUST_LOG").is_some() {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .with_test_writer()
            .try_init();
    }
    tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap()
}

/// The durable votes of a stopped node (`path`: its database; the Raft log is beside it).
fn votes(path: &Path) -> BTreeMap<u64, tessera_node::raft::types::Vote> {
    let dir = path.parent().unwrap().join(tessera_node::RAFT_LOG_DIR);
    let wal = tessera_node::storage::wal::LogEngine::open(&dir).unwrap();
    let votes = tessera_node::storage::inspect::votes(&wal).unwrap();
    wal.close();
    votes
}

/// A fault of the node leading the most regions, under load from clients connected before
/// it: `fault` at time 0, `recover` after `down`. Checks that every region kept being served
/// (and reports its longest gap), that no acknowledged write was lost or applied twice and,
/// after a kill, that the killed node's votes never went back.
fn leader_fault_under_load(what: &str, down: Duration, kill: bool) {
    runtime().block_on(async {
        let mut cluster = ProcCluster::start(&[]);
        let client = cluster.ready_client().await;
        let victim = cluster.busiest_leader(&client).await;
        let load = Load::start(&cluster).await;
        load.wait_for_acks(200, Duration::from_secs(30)).await;

        let fault = Instant::now();
        let at_crash = if kill {
            cluster.kill9(victim);
            let votes = votes(&cluster.db_path(victim));
            assert!(!votes.is_empty(), "the killed node had durable votes");
            votes
        } else {
            cluster.signal(victim, "-STOP");
            BTreeMap::new()
        };
        // Clients connected before the fault are served while the node is down...
        load.wait_for_acks(200, Duration::from_secs(30)).await;
        tokio::time::sleep(down.saturating_sub(fault.elapsed())).await;
        if kill {
            cluster.spawn_node(victim);
        } else {
            cluster.signal(victim, "-CONT");
        }
        // ...and after it is back.
        load.wait_for_acks(200, Duration::from_secs(30)).await;
        let end = Instant::now();
        let record = load.finish().await;
        let (gap, report) = longest_gap(&record, fault, end);
        eprint!("{report}");
        eprintln!(
            "{what} of node {victim} for {down:?}: longest stretch without an acknowledged write in a region: {gap:?}"
        );
        // A regression bound (stalls used to run into 10 s deadlines), not the goal: the
        // measured figures are in the note of issue 5.
        assert!(gap < Duration::from_secs(5), "a region went {gap:?} without an acknowledged write");
        verify(&client, &record).await;

        cluster.stop_all();
        let after = votes(&cluster.db_path(victim));
        for (region, vote) in &at_crash {
            assert!(after.get(region).is_some_and(|v| v >= vote), "region {region}: vote went back from {vote:?}");
        }
    });
}

#[test]
fn kill9_of_the_busiest_leader_with_a_quick_restart_loses_nothing_and_clients_keep_going() {
    leader_fault_under_load("kill -9", Duration::from_millis(1500), true);
}

#[test]
fn kill9_of_the_busiest_leader_with_a_slow_restart_loses_nothing_and_clients_keep_going() {
    leader_fault_under_load("kill -9", Duration::from_secs(8), true);
}

/// A node frozen with SIGSTOP for a few seconds (so its connections stay open but silent)
/// must not stall the clients: they fail over, and the node catches up after SIGCONT.
#[test]
fn a_frozen_leader_does_not_stall_clients() {
    leader_fault_under_load("SIGSTOP", Duration::from_secs(4), false);
}

/// All three nodes killed at once: after they restart, every acknowledged write is there
/// (each was durable on a majority before it was acknowledged), none twice.
#[test]
fn kill9_of_every_node_at_once_loses_no_acknowledged_write() {
    runtime().block_on(async {
        let mut cluster = ProcCluster::start(&[]);
        let client = cluster.ready_client().await;
        let load = Load::start(&cluster).await;
        load.wait_for_acks(300, Duration::from_secs(30)).await;
        let mut at_crash = BTreeMap::new();
        for id in 1..=NODES {
            cluster.kill9(id);
        }
        for id in 1..=NODES {
            at_crash.insert(id, votes(&cluster.db_path(id)));
        }
        for id in 1..=NODES {
            cluster.spawn_node(id);
        }
        load.wait_for_acks(100, Duration::from_secs(60)).await;
        let record = load.finish().await;
        verify(&client, &record).await;
        cluster.stop_all();
        for id in 1..=NODES {
            let after = votes(&cluster.db_path(id));
            for (region, vote) in &at_crash[&id] {
                assert!(after.get(region).is_some_and(|v| v >= vote), "node {id} region {region}: vote went back");
            }
        }
    });
}

/// Two of the three nodes killed with `kill -9`: a region the third node leads, hearing from
/// no quorum, refuses linearizable reads and writes with `Unavailable` ("no quorum ...")
/// before proposing them, instead of holding each write until its deadline; once the
/// killed nodes restart, writes are accepted again and the refused write never applied.
#[test]
fn kill9_of_both_followers_makes_the_leader_refuse_writes_that_never_apply() {
    runtime().block_on(async {
        let mut cluster = ProcCluster::start(&[]);
        let client = cluster.ready_client().await;
        let starts: Vec<Vec<u8>> = client.regions().await.unwrap().into_iter().map(|r| r.region.start_key).collect();
        let key = |start: &[u8], suffix: &str| [start, suffix.as_bytes()].concat();
        for start in &starts {
            client.put(&key(start, "quorum-before"), b"v1").await.unwrap();
        }
        // PD's leader balancing may still move a leader, one at a time: the node leading the
        // most regions is the one still sure to lead one when the others are killed.
        let survivor = cluster.busiest_leader(&client).await;
        let killed: Vec<u64> = (1..=NODES).filter(|&id| id != survivor).collect();
        for &id in &killed {
            cluster.kill9(id);
        }
        let impatient = client.with_timeout(Duration::from_secs(3));
        // A region led by a killed node has no leader now (its reads end `DeadlineExceeded`);
        // one the survivor leads refuses them once its quorum is stale. Reads are safe to
        // repeat until one is refused.
        let refused = async {
            loop {
                for start in &starts {
                    if let Err(tessera::Error::Unavailable { reason }) =
                        impatient.get(&key(start, "quorum-before")).await
                    {
                        if reason.contains("no quorum") {
                            return start.clone();
                        }
                    }
                }
            }
        };
        let start = tokio::time::timeout(Duration::from_secs(60), refused).await.expect("a leader refuses within 60 s");
        match impatient.put(&key(&start, "quorum-refused"), b"v2").await {
            Err(tessera::Error::Unavailable { reason }) => {
                assert!(reason.contains("no quorum of its replicas has answered the leader"), "{reason}")
            }
            other => panic!("a write to a leader whose followers were killed ended {other:?}"),
        }

        for &id in &killed {
            cluster.spawn_node(id);
        }
        client.put(&key(&start, "quorum-after"), b"v3").await.expect("writes are accepted again");
        assert_eq!(client.get(&key(&start, "quorum-refused")).await.unwrap(), None, "a refused write applied");
        for start in &starts {
            assert_eq!(client.get(&key(start, "quorum-before")).await.unwrap().as_deref(), Some(&b"v1"[..]));
        }
        cluster.stop_all();
    });
}

/// A node killed while it installs a snapshot recovers: restarted, it catches up, and with
/// another node stopped it is part of every majority, so writes only go through once it
/// has; every acknowledged write is then read back exactly once.
#[test]
fn a_node_killed_during_a_snapshot_install_recovers() {
    runtime().block_on(async {
        // Snapshots every 200 entries, keeping none: a node that misses 200 writes must
        // install a snapshot to catch up.
        let mut cluster = ProcCluster::start(&["--snapshot-every", "200", "--keep-after-snapshot", "0"]);
        let client = cluster.ready_client().await;
        let lagging = 3;
        cluster.kill9(lagging);
        // Enough data that the install takes a moment: 8 KiB values.
        let value = vec![b'v'; 8 * 1024];
        let keys: Vec<Vec<u8>> =
            (0..1500u32).map(|i| [&[(i % 250) as u8 + 1][..], format!("bulk-{i:05}").as_bytes()].concat()).collect();
        for chunk in keys.chunks(50) {
            let pairs: Vec<(&[u8], &[u8])> = chunk.iter().map(|k| (k.as_slice(), value.as_slice())).collect();
            client.batch_put(&pairs).await.unwrap();
        }
        let load = Load::start(&cluster).await;
        load.wait_for_acks(100, Duration::from_secs(30)).await;
        // Only once the live replicas have purged their logs (a snapshot was taken, and the
        // load keeps writing until one is) does the lagging node need a snapshot.
        for live in [1, 2] {
            cluster.nodes[&live].as_ref().unwrap().wait_for_purge(None, Duration::from_secs(60));
        }
        // Restart the node and kill it as soon as it starts installing a snapshot.
        cluster.spawn_node(lagging);
        cluster.nodes[&lagging].as_ref().unwrap().wait_for("installing snapshot", Duration::from_secs(60));
        cluster.kill9(lagging);
        load.wait_for_acks(100, Duration::from_secs(30)).await;
        cluster.spawn_node(lagging);
        // With node 1 stopped, every commit needs the recovered node.
        cluster.nodes.get_mut(&1).unwrap().take().unwrap().stop();
        load.wait_for_acks(300, Duration::from_secs(60)).await;
        let record = load.finish().await;
        verify(&client, &record).await;
        let values = client.batch_get(&keys).await.unwrap();
        assert!(values.iter().all(|v| v.as_deref() == Some(value.as_slice())), "bulk data intact");
        cluster.stop_all();
    });
}

/// Key `i` of the bulk load of the split test, spread over the whole key space.
fn bulk_key(i: u32) -> Vec<u8> {
    [&[(i.wrapping_mul(37) % 250) as u8 + 1][..], format!("bulk-{i:06}").as_bytes()].concat()
}

fn bulk_value(i: u32) -> Vec<u8> {
    let mut v = format!("value-{i}-").into_bytes();
    v.resize(200, b'.');
    v
}

/// Each node in turn is killed with SIGKILL while regions split under a bulk load and
/// the appending writers, then restarted: a node dies with splits half applied across the
/// cluster (some replicas split, others not yet), and recovers them from its log and the
/// seeded state. No acknowledged write is lost or applied twice, and the regions still
/// tile the key space with every key in exactly one of them.
#[test]
fn kill9_of_nodes_while_regions_split_loses_no_acknowledged_write() {
    runtime().block_on(async {
        let mut cluster = ProcCluster::start_splitting(&[], "32KiB");
        let client = cluster.ready_client().await;
        let load = Load::start(&cluster).await;
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let acked = Arc::new(Mutex::new(BTreeSet::<u32>::new()));
        let bulk = {
            let (client, stop, acked) = (cluster.ready_client().await, stop.clone(), acked.clone());
            tokio::spawn(async move {
                let mut next = 0u32;
                while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                    let ids: Vec<u32> = (next..next + 50).collect();
                    next += 50;
                    let pairs: Vec<(Vec<u8>, Vec<u8>)> = ids.iter().map(|&i| (bulk_key(i), bulk_value(i))).collect();
                    // A failed or undetermined batch is not acknowledged: its keys may or
                    // may not be there, and are not checked.
                    if client.batch_put(&pairs).await.is_ok() {
                        acked.lock().unwrap().extend(ids);
                    }
                }
            })
        };
        let region_count = || async { client.regions().await.map(|r| r.len()).unwrap_or(0) };
        for victim in 1..=NODES {
            // Kill only while splits are going on: wait for two more regions.
            let before = region_count().await;
            let deadline = Instant::now() + Duration::from_secs(60);
            while region_count().await < before + 2 {
                assert!(Instant::now() < deadline, "regions stopped splitting at {before}");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            cluster.kill9(victim);
            load.wait_for_acks(50, Duration::from_secs(60)).await;
            cluster.spawn_node(victim);
        }
        load.wait_for_acks(100, Duration::from_secs(60)).await;
        stop.store(true, std::sync::atomic::Ordering::SeqCst);
        bulk.await.unwrap();
        let record = load.finish().await;
        verify(&client, &record).await;
        let acked: Vec<u32> = acked.lock().unwrap().iter().copied().collect();
        assert!(acked.len() >= 1000, "only {} bulk keys were acknowledged", acked.len());
        cluster.mark("reading back the acknowledged bulk keys");
        // Every key is read before any is judged, so a failure names all of the missing
        // keys and the regions holding them, not only the first.
        let mut wrong = Vec::new();
        for chunk in acked.chunks(200) {
            let keys: Vec<Vec<u8>> = chunk.iter().map(|&i| bulk_key(i)).collect();
            let values = client.batch_get(&keys).await.unwrap();
            for (i, v) in chunk.iter().zip(values) {
                if v != Some(bulk_value(*i)) {
                    wrong.push((*i, v.map(|v| String::from_utf8_lossy(&v[..v.len().min(24)]).into_owned())));
                }
            }
        }
        if !wrong.is_empty() {
            let routes = client.regions().await.unwrap_or_default();
            let region_of = |i: u32| {
                let k = bulk_key(i);
                routes.iter().find(|r| r.region.contains(&k)).map(|r| r.region.id.0)
            };
            let detail: Vec<_> = wrong.iter().take(40).map(|(i, v)| (*i, region_of(*i), v.clone())).collect();
            panic!(
                "{} of {} acknowledged bulk keys read back wrong ((key, region, value read), first 40): {detail:?}; \
                 regions: {routes:?}",
                wrong.len(),
                acked.len()
            );
        }
        let (routes, scanned) = regions_tile_the_key_space(&client).await;
        assert!(routes.len() >= REGIONS as usize + 2 * NODES as usize, "{} regions", routes.len());
        let bulk_seen = scanned.iter().filter(|k| k.windows(5).any(|w| w == b"bulk-")).count();
        assert!(bulk_seen >= acked.len(), "the scan sees {bulk_seen} bulk keys, {} were acknowledged", acked.len());
        eprintln!("{} regions at the end; {} bulk keys acknowledged", routes.len(), acked.len());
        cluster.stop_all();
    });
}

/// Each node in turn is killed with SIGKILL a moment after a merge of two regions starts
/// (before, during or after its prepare and commit, as timing falls), under the appending
/// writers, then restarted. A merge either completes or rolls back; no acknowledged write
/// is lost or applied twice, and the regions still tile the key space with every key in
/// exactly one of them.
#[test]
fn kill9_of_nodes_while_regions_merge_loses_no_acknowledged_write() {
    runtime().block_on(async {
        let mut cluster = ProcCluster::start(&[]);
        let client = cluster.ready_client().await;
        let load = Load::start(&cluster).await;
        load.wait_for_acks(50, Duration::from_secs(60)).await;
        let mut started = Vec::new();
        for (victim, delay_ms) in (1..=NODES).zip([0u64, 60, 250]) {
            // Merge the second region into the first, once PD takes the merge. It refuses
            // while a region has no leader (just after the previous restart) or runs
            // another operator: a leader transfer towards the node just restarted can be
            // refused (the node lags) until it times out after 60 s.
            let deadline = Instant::now() + Duration::from_secs(150);
            let op = loop {
                let routes = client.regions().await.unwrap();
                assert!(routes.len() >= 2, "regions merged away too early: {routes:?}");
                match client.merge_region(&routes[1].region.start_key).await {
                    Ok(op) => break op,
                    Err(e) => {
                        if Instant::now() >= deadline {
                            let ops = client.operators().await;
                            panic!("PD never took a merge: {e}; operators: {ops:?}");
                        }
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                }
            };
            started.push(op);
            tokio::time::sleep(Duration::from_millis(delay_ms)).await;
            cluster.kill9(victim);
            load.wait_for_acks(50, Duration::from_secs(60)).await;
            cluster.spawn_node(victim);
            // The merge ends, one way or the other, before the next one starts.
            let deadline = Instant::now() + Duration::from_secs(90);
            loop {
                let ops = client.operators().await.unwrap();
                if ops.iter().any(|o| o.id == op && o.state != tessera_wire::OperatorState::Running) {
                    break;
                }
                assert!(Instant::now() < deadline, "merge {op} never ended: {ops:?}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
        load.wait_for_acks(100, Duration::from_secs(60)).await;
        let record = load.finish().await;
        verify(&client, &record).await;
        let ops = client.operators().await.unwrap();
        let merged =
            ops.iter().filter(|o| started.contains(&o.id) && o.state == tessera_wire::OperatorState::Succeeded).count();
        assert!(merged >= 1, "no merge succeeded: {ops:?}");
        let (routes, _) = regions_tile_the_key_space(&client).await;
        assert_eq!(routes.len(), REGIONS as usize - merged, "{routes:?}");
        eprintln!("{merged} of {} merges succeeded; {} regions at the end", started.len(), routes.len());
        cluster.stop_all();
    });
}

/// Checks that the regions PD routes tile the key space (from the empty key to the
/// unbounded end, each ending where the next starts) and that a scan of everything sees
/// every key once, in order. Returns the routes and the scanned keys.
async fn regions_tile_the_key_space(client: &Client) -> (Vec<tessera_wire::RegionRoute>, Vec<Vec<u8>>) {
    use futures::StreamExt;
    let routes = client.regions().await.unwrap();
    assert!(routes[0].region.start_key.is_empty() && routes.last().unwrap().region.end_key.is_empty());
    for w in routes.windows(2) {
        assert_eq!(w[0].region.end_key, w[1].region.start_key, "regions are contiguous");
    }
    let scanned: Vec<Vec<u8>> =
        client.scan(b"", b"", tessera::ScanOptions::default()).map(|p| p.expect("scan").0).collect().await;
    assert!(scanned.windows(2).all(|w| w[0] < w[1]), "scan in order, each key once");
    (routes, scanned)
}

#[test]
fn the_digest_keeps_notable_lines_and_dates_the_marks() {
    let log = "2026-12-04T21:15:28.1Z  INFO tessera_node::node: node started\n\
               2026-12-04T21:15:28.2Z DEBUG tessera_node::admin: region step not taken\n\
               ---- test: node 1 killed with SIGKILL ----\n\
               2026-12-04T21:15:29.0Z  WARN openraft::replication: ReplicationCore recv RPCError\n\
               2026-12-04T21:15:29.5Z DEBUG tessera_node::admin: region step not taken\n\
               2026-12-04T21:15:30.0Z DEBUG tessera_node::admin: region step not taken\n\
               2026-12-04T21:15:30.5Z DEBUG tessera_node::admin: region step not taken\n\
               2026-12-04T21:15:31.0Z  INFO tessera_node::node: region absorbed\n";
    let lines = digest_lines("node1", log);
    let kept: Vec<(&str, &str)> = lines.iter().map(|(at, _, l)| (at.as_str(), l.as_str())).collect();
    assert_eq!(
        kept,
        [
            ("2026-12-04T21:15:28.2Z", "2026-12-04T21:15:28.2Z DEBUG tessera_node::admin: region step not taken"),
            ("2026-12-04T21:15:28.2Z", "---- test: node 1 killed with SIGKILL ----"),
            ("2026-12-04T21:15:29.5Z", "2026-12-04T21:15:29.5Z DEBUG tessera_node::admin: region step not taken"),
            (
                "2026-12-04T21:15:30.5Z",
                "2026-12-04T21:15:30.5Z (repeated 2 more times until here) DEBUG tessera_node::admin: region step not taken"
            ),
            ("2026-12-04T21:15:31.0Z", "2026-12-04T21:15:31.0Z  INFO tessera_node::node: region absorbed"),
        ]
    );
}
