//! End-to-end tests of the `tessera` binary: `tessera dev` with the client commands, and a
//! cluster of four processes (`tessera pd` + three `tessera node`).

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::time::Duration;

mod big_snapshot;
mod crash;
#[path = "../common/ports.rs"]
mod ports;

const BUILT_BIN: &str = env!("CARGO_BIN_EXE_tessera");

/// The `tessera` binary under test: the one built with these tests, or the one named by
/// `TESSERA_TEST_BIN` (to run these tests against another build, say while stress-testing
/// an older commit without a rebuild replacing it).
fn bin() -> std::ffi::OsString {
    std::env::var_os("TESSERA_TEST_BIN").unwrap_or_else(|| BUILT_BIN.into())
}

/// `line` without terminal colour codes.
fn strip_ansi(line: &str) -> String {
    let mut out = String::with_capacity(line.len());
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        if c == '\x1b' {
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// A child process killed (SIGTERM, then SIGKILL) when dropped.
struct Proc {
    child: Child,
    lines: mpsc::Receiver<String>,
}

impl Proc {
    fn spawn(args: &[&str]) -> Proc {
        Self::spawn_logging(args, "error")
    }

    /// Spawns with `RUST_LOG=filter`; log lines (stderr) arrive with the stdout lines. With
    /// `TESSERA_TEST_LOGS` set, every line is also echoed to the test's stderr.
    fn spawn_logging(args: &[&str], filter: &str) -> Proc {
        Self::spawn_logging_to(args, filter, None)
    }

    /// [`Proc::spawn_logging`], also appending every line to the file `log` if given (a
    /// test prints the files of its processes when it fails: see `ProcCluster`'s `Drop`).
    fn spawn_logging_to(args: &[&str], filter: &str, log: Option<&Path>) -> Proc {
        let echo = std::env::var_os("TESSERA_TEST_LOGS").is_some();
        let file = log.map(|path| {
            let f = std::fs::OpenOptions::new().create(true).append(true).open(path).expect("open the log file");
            std::sync::Arc::new(std::sync::Mutex::new(f))
        });
        let mut child = Command::new(bin())
            .args(args)
            .env("RUST_LOG", filter)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn tessera");
        let (tx, lines) = mpsc::channel();
        let out = child.stdout.take().unwrap();
        let err = child.stderr.take().unwrap();
        for stream in [Box::new(out) as Box<dyn std::io::Read + Send>, Box::new(err)] {
            let tx = tx.clone();
            let file = file.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(stream).lines().map_while(Result::ok) {
                    if echo {
                        eprintln!("{line}");
                    }
                    if let Some(f) = &file {
                        use std::io::Write;
                        let _ = writeln!(f.lock().unwrap_or_else(|p| p.into_inner()), "{}", strip_ansi(&line));
                    }
                    if tx.send(line).is_err() && !echo && file.is_none() {
                        break;
                    }
                }
            });
        }
        Proc { child, lines }
    }

    /// Waits for a stdout line containing `needle`; returns it.
    fn wait_for(&self, needle: &str, timeout: Duration) -> String {
        let deadline = std::time::Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) if line.contains(needle) => return line,
                Ok(_) => {}
                Err(e) => panic!("no line containing {needle:?}: {e}"),
            }
        }
    }

    /// Waits for the log line of a Raft log purge past the seed (every region's log starts
    /// purged up to index 5, logged at start-up): of `region` if given. Returns the line.
    fn wait_for_purge(&self, region: Option<u64>, timeout: Duration) -> String {
        let deadline = std::time::Instant::now() + timeout;
        loop {
            let line = strip_ansi(&self.wait_for("raft log purged", deadline - std::time::Instant::now()));
            if is_purge_past_seed(&line, region) {
                return line;
            }
        }
    }

    /// The lines that have arrived so far, without waiting.
    fn arrived(&self) -> Vec<String> {
        self.lines.try_iter().collect()
    }

    /// SIGTERM, and wait for a clean exit.
    fn stop(mut self) {
        terminate(&self.child);
        let status = self.child.wait().expect("wait");
        assert!(status.success(), "exit status {status}");
    }
}

/// Whether `line` logs a Raft log purge past the seed (index 5), of `region` if given.
fn is_purge_past_seed(line: &str, region: Option<u64>) -> bool {
    let line = strip_ansi(line);
    if !line.contains("raft log purged") {
        return false;
    }
    let field = |name: &str| -> Option<u64> {
        line.split_whitespace().find_map(|w| w.strip_prefix(name)).and_then(|n| n.parse().ok())
    };
    let index = field("index=").expect("the purge line gives the index");
    index > 5 && region.is_none_or(|r| field("region_id=") == Some(r))
}

impl Drop for Proc {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

fn terminate(child: &Child) {
    let status = Command::new("kill").args(["-TERM", &child.id().to_string()]).status().expect("kill");
    assert!(status.success());
}

fn tessera(args: &[&str]) -> Output {
    Command::new(bin()).args(args).env("RUST_LOG", "error").output().expect("run tessera")
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn ok(args: &[&str]) -> String {
    let o = tessera(args);
    assert!(o.status.success(), "tessera {args:?} failed: {}", String::from_utf8_lossy(&o.stderr));
    stdout(&o)
}

#[test]
fn dev_cluster_serves_client_commands_and_keeps_data_across_restarts() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().to_str().unwrap();
    let dev = Proc::spawn(&["dev", "--data", d]);
    dev.wait_for("ready", Duration::from_secs(60));

    ok(&["--data", d, "put", "a", "1"]);
    assert_eq!(ok(&["--data", d, "get", "a"]), "1\n");
    assert_eq!(ok(&["--data", d, "append", "a", "23"]), "3\n");
    assert!(ok(&["--data", d, "cas", "a", "--expect", "123", "x"]).contains("swapped"));
    let failed = tessera(&["--data", d, "cas", "a", "--expect", "123", "y"]);
    assert_eq!(failed.status.code(), Some(1), "a failed CAS exits 1");
    ok(&["--data", d, "put", "b", "2"]);
    assert_eq!(ok(&["--data", d, "scan"]), "a\tx\nb\t2\n");
    assert_eq!(ok(&["--data", d, "scan", "--reverse"]), "b\t2\na\tx\n");
    let absent = tessera(&["--data", d, "get", "nope"]);
    assert_eq!(absent.status.code(), Some(1), "get of an absent key exits 1");
    assert!(String::from_utf8_lossy(&absent.stderr).contains("not found"));
    ok(&["--data", d, "delete", "b"]);

    let status = ok(&["--data", d, "status"]);
    let nodes = status.lines().skip_while(|l| !l.starts_with("NODES")).skip(2).take_while(|l| !l.is_empty());
    assert_eq!(nodes.filter(|l| l.contains("Up")).count(), 3, "{status}");
    assert!(status.contains("4 regions, 4 with a leader"), "{status}");
    let listing = ok(&["--data", d, "status", "--regions"]);
    let regions: Vec<&str> = listing.lines().skip_while(|l| !l.starts_with("ID     RANGE")).skip(1).collect();
    assert_eq!(regions.len(), 4, "{listing}");
    let json = ok(&["--data", d, "status", "--regions", "--json"]);
    assert!(json.contains("\"region_count\": 4"), "{json}");
    // Each node reports how busy its host's CPUs are once two of its heartbeats are 2 s
    // apart (`node/src/host_cpu.rs`); status shows it last on the node's line.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let status = ok(&["--data", d, "status"]);
        let shares: Vec<Option<u8>> = status
            .lines()
            .skip_while(|l| !l.starts_with("NODES"))
            .skip(2)
            .take_while(|l| !l.is_empty())
            .map(|l| l.split_whitespace().last().and_then(|c| c.strip_suffix('%')).and_then(|p| p.parse().ok()))
            .collect();
        assert_eq!(shares.len(), 3, "{status}");
        if shares.iter().all(|s| s.is_some_and(|p| p <= 100)) {
            let json = ok(&["--data", d, "status", "--json"]);
            assert_eq!(json.matches("\"host_cpu_busy_pct\": ").count(), 3, "{json}");
            assert!(!json.contains("\"host_cpu_busy_pct\": null"), "{json}");
            break;
        }
        assert!(std::time::Instant::now() < deadline, "no host CPU share after 30 s: {status}");
        std::thread::sleep(Duration::from_millis(250));
    }

    // A reader that goes away (`tessera status | head -0`) ends the command quietly.
    let mut child = Command::new(bin())
        .args(["--data", d, "status"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn tessera status");
    drop(child.stdout.take());
    let closed = child.wait_with_output().expect("wait");
    assert!(closed.status.success(), "closed stdout: {}", String::from_utf8_lossy(&closed.stderr));

    dev.stop();
    // Restarted with its own worker-thread count: one more than the default of one per core.
    let threads = std::thread::available_parallelism().unwrap().get() + 1;
    let dev = Proc::spawn(&["--worker-threads", &threads.to_string(), "dev", "--data", d]);
    let ready = dev.wait_for("ready", Duration::from_secs(60));
    assert!(ready.contains(&format!("({threads} worker threads)")), "{ready}");
    assert_eq!(ok(&["--data", d, "get", "a"]), "x\n");
    assert_eq!(tessera(&["--data", d, "get", "b"]).status.code(), Some(1));
    dev.stop();

    let zero = tessera(&["--worker-threads", "0", "--data", d, "status"]);
    assert_eq!(zero.status.code(), Some(2), "a runtime without workers is refused");
    assert!(String::from_utf8_lossy(&zero.stderr).contains("--worker-threads"), "{zero:?}");
}

/// Starts `tessera pd` on `addr` with the certificates in `certs`, and waits until it listens.
/// A split threshold no test region reaches: most tests keep their regions as bootstrapped
/// (the 200 MB region of the snapshot test must not split).
const NO_SPLITS: &str = "4GiB";

/// PD with `initial_regions`, splitting regions past `split_bytes`.
fn spawn_pd(certs: &Path, addr: &str, dir: &Path, initial_regions: u32, split_bytes: &str) -> Proc {
    spawn_pd_logging_to(certs, addr, dir, initial_regions, split_bytes, None)
}

/// [`spawn_pd`], with PD's info lines appended to `log` if given.
fn spawn_pd_logging_to(
    certs: &Path,
    addr: &str,
    dir: &Path,
    initial_regions: u32,
    split_bytes: &str,
    log: Option<&Path>,
) -> Proc {
    let cert = |name: &str| certs.join(name).to_str().unwrap().to_string();
    // With a log file (a crash test's cluster): what PD decided, and at debug the region
    // reports it ignored and the leaders it learned.
    let filter = if log.is_some() { "warn,tessera_pd=info,tessera_pd::meta=debug" } else { "error" };
    let pd = Proc::spawn_logging_to(
        &[
            "pd",
            "--listen",
            addr,
            "--dir",
            dir.to_str().unwrap(),
            "--initial-regions",
            &initial_regions.to_string(),
            "--region-split-bytes",
            split_bytes,
            "--region-split-keys",
            "100000000",
            "--tls-ca",
            &cert("ca.pem"),
            "--tls-cert",
            &cert("pd.pem"),
            "--tls-key",
            &cert("pd-key.pem"),
        ],
        filter,
        log,
    );
    pd.wait_for("PD listening", Duration::from_secs(30));
    pd
}

#[test]
fn four_processes_form_a_cluster_with_issued_certificates() {
    let dir = tempfile::tempdir().unwrap();
    let p = |rel: &str| dir.path().join(rel).to_str().unwrap().to_string();
    let certs = p("certs");
    ok(&["certs", "init-ca", "--dir", &certs]);
    ok(&["certs", "pd", "--dir", &certs, "--host", "127.0.0.1"]);
    for i in ["1", "2", "3"] {
        ok(&["certs", "node", "--dir", &certs, "--id", i, "--host", "127.0.0.1"]);
    }
    ok(&["certs", "client", "--dir", &certs, "--name", "app"]);
    assert!(!tessera(&["certs", "init-ca", "--dir", &certs]).status.success(), "init-ca refuses to overwrite");

    let pd_addr = format!("127.0.0.1:{}", ports::restartable_port());
    let cert = |name: &str| Path::new(&certs).join(name).to_str().unwrap().to_string();
    let pd = spawn_pd(Path::new(&certs), &pd_addr, Path::new(&p("pd")), 2, NO_SPLITS);
    let mut nodes = Vec::new();
    for i in ["1", "2", "3"] {
        let listen = format!("127.0.0.1:{}", ports::restartable_port());
        let node = Proc::spawn(&[
            "node",
            "--id",
            i,
            "--listen",
            &listen,
            "--dir",
            &p(&format!("node{i}")),
            "--pd-endpoints",
            &pd_addr,
            "--tls-ca",
            &cert("ca.pem"),
            "--tls-cert",
            &cert(&format!("node-{i}.pem")),
            "--tls-key",
            &cert(&format!("node-{i}-key.pem")),
        ]);
        node.wait_for("listening", Duration::from_secs(30));
        nodes.push(node);
    }
    let client = [
        "--pd",
        pd_addr.as_str(),
        "--ca",
        &cert("ca.pem"),
        "--cert",
        &cert("client-app.pem"),
        "--key",
        &cert("client-app-key.pem"),
    ];
    let with = |extra: &[&str]| -> Vec<String> { client.iter().chain(extra).map(|s| s.to_string()).collect() };
    let run = |extra: &[&str]| {
        let args = with(extra);
        ok(&args.iter().map(String::as_str).collect::<Vec<_>>())
    };
    run(&["put", "k", "v"]);
    assert_eq!(run(&["get", "k"]), "v\n");
    let status = run(&["status"]);
    assert_eq!(status.lines().filter(|l| l.contains("Up")).count(), 3, "{status}");
    for n in nodes {
        n.stop();
    }
    pd.stop();
}
