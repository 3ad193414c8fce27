//! A Tessera cluster of separate processes: `tessera pd` and three `tessera node`, with
//! certificates issued by `tessera certs`, on loopback ports chosen by the OS. The flags are
//! those of the binary tests (`cli/tests/binary`).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use tessera::{Client, ClientConfig, TlsFiles};

use crate::procs::{free_udp_ports, run_ok, set_aside, ChildProc, START_ATTEMPTS};

pub const NODES: u64 = 3;
/// Client certificate name.
const CLIENT: &str = "bench";
/// Server log filter: errors, and the nodes' per-stage write-path timings (one line per
/// node every 10 s under load), so that the logs kept with `--keep` show where each run's
/// time went; logging costs nothing measurable.
const SERVER_LOG: &str = "error,tessera_node::metrics=info";

#[derive(Debug)]
pub struct TesseraCluster {
    bin: PathBuf,
    dir: PathBuf,
    pub pd_addr: String,
    pub regions: u32,
    pd: Option<ChildProc>,
    nodes: BTreeMap<u64, Option<ChildProc>>,
    node_args: BTreeMap<u64, Vec<String>>,
}

/// PD's arguments that turn load splits off: a region never serves this many operations
/// per second.
const NO_LOAD_SPLITS: [&str; 2] = ["--region-split-qps", "1000000000"];

impl TesseraCluster {
    /// Issues certificates and starts PD (bootstrapping `regions` regions) and three nodes
    /// in `dir`; returns once every region has a leader and a put succeeds. Without
    /// `load_splits`, PD never splits a region for its load (size splits stay on). With
    /// `threads`, every server runs that many worker threads (`--worker-threads`).
    pub async fn start(
        bin: &Path,
        dir: &Path,
        regions: u32,
        load_splits: bool,
        threads: Option<u16>,
    ) -> anyhow::Result<(TesseraCluster, Client)> {
        let mut failures = Vec::new();
        for attempt in 1..=START_ATTEMPTS {
            match Self::start_once(bin, dir, regions, load_splits, threads).await {
                Ok(started) => return Ok(started),
                Err(e) => failures.push(format!("{e:#} (logs moved to {})", set_aside(dir, attempt).display())),
            }
        }
        bail!("Tessera did not start in {START_ATTEMPTS} attempts: {}", failures.join("; "))
    }

    async fn start_once(
        bin: &Path,
        dir: &Path,
        regions: u32,
        load_splits: bool,
        threads: Option<u16>,
    ) -> anyhow::Result<(TesseraCluster, Client)> {
        let threads: Vec<String> = match threads {
            Some(n) => vec!["--worker-threads".into(), n.to_string()],
            None => Vec::new(),
        };
        std::fs::create_dir_all(dir.join("logs")).with_context(|| format!("creating {}", dir.display()))?;
        let certs = dir.join("certs");
        let c = certs.to_str().context("non-UTF-8 data directory")?;
        run_ok(bin, &["certs", "init-ca", "--dir", c])?;
        run_ok(bin, &["certs", "pd", "--dir", c, "--host", "127.0.0.1"])?;
        for i in 1..=NODES {
            run_ok(bin, &["certs", "node", "--dir", c, "--id", &i.to_string(), "--host", "127.0.0.1"])?;
        }
        run_ok(bin, &["certs", "client", "--dir", c, "--name", CLIENT])?;

        let ports = free_udp_ports(1 + NODES as usize)?;
        let pd_addr = format!("127.0.0.1:{}", ports[0]);
        let cert = |name: &str| certs.join(name).to_string_lossy().into_owned();
        let mut pd_args: Vec<String> = [
            "pd",
            "--listen",
            &pd_addr,
            "--dir",
            &dir.join("pd").to_string_lossy(),
            "--initial-regions",
            &regions.to_string(),
            "--tls-ca",
            &cert("ca.pem"),
            "--tls-cert",
            &cert("pd.pem"),
            "--tls-key",
            &cert("pd-key.pem"),
        ]
        .map(String::from)
        .into();
        if !load_splits {
            pd_args.extend(NO_LOAD_SPLITS.map(String::from));
        }
        pd_args.extend(threads.iter().cloned());
        let mut pd =
            ChildProc::spawn("tessera pd", bin, &pd_args, &[("RUST_LOG", SERVER_LOG)], &dir.join("logs/pd.log"))?;
        pd.wait_for("PD listening", Duration::from_secs(30)).await?;

        let mut node_args = BTreeMap::new();
        for i in 1..=NODES {
            let listen = format!("127.0.0.1:{}", ports[i as usize]);
            let args: Vec<String> = [
                "node",
                "--id",
                &i.to_string(),
                "--listen",
                &listen,
                "--dir",
                &dir.join(format!("node{i}")).to_string_lossy(),
                "--pd-endpoints",
                &pd_addr,
                "--tls-ca",
                &cert("ca.pem"),
                "--tls-cert",
                &cert(&format!("node-{i}.pem")),
                "--tls-key",
                &cert(&format!("node-{i}-key.pem")),
            ]
            .map(String::from)
            .into_iter()
            .chain(threads.iter().cloned())
            .collect();
            node_args.insert(i, args);
        }
        let mut cluster = TesseraCluster {
            bin: bin.into(),
            dir: dir.into(),
            pd_addr,
            regions,
            pd: Some(pd),
            nodes: BTreeMap::new(),
            node_args,
        };
        cluster.spawn_nodes().await?;
        let client = cluster.ready_client(Duration::from_secs(60)).await?;
        Ok((cluster, client))
    }

    async fn spawn_nodes(&mut self) -> anyhow::Result<()> {
        for (&i, args) in &self.node_args {
            let log = self.dir.join(format!("logs/node{i}.log"));
            let mut node =
                ChildProc::spawn(&format!("tessera node {i}"), &self.bin, args, &[("RUST_LOG", SERVER_LOG)], &log)?;
            node.wait_for("listening", Duration::from_secs(30)).await?;
            self.nodes.insert(i, Some(node));
        }
        Ok(())
    }

    pub fn certs(&self) -> PathBuf {
        self.dir.join("certs")
    }

    pub async fn client(&self) -> anyhow::Result<Client> {
        let tls = TlsFiles::client(&self.certs(), CLIENT);
        Client::connect(ClientConfig::new(vec![self.pd_addr.clone()], Some(tls))).await.context("connecting to Tessera")
    }

    /// A client, once PD reports every region with a leader and a put succeeds.
    pub async fn ready_client(&mut self, timeout: Duration) -> anyhow::Result<Client> {
        let deadline = Instant::now() + timeout;
        let mut last_error = String::new();
        while Instant::now() < deadline {
            self.check_running()?;
            match self.try_ready().await {
                Ok(client) => return Ok(client),
                Err(e) => last_error = format!("{e:#}"),
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        bail!(
            "the Tessera cluster did not become ready within {timeout:?}: {last_error}; logs in {}",
            self.dir.join("logs").display()
        )
    }

    async fn try_ready(&self) -> anyhow::Result<Client> {
        let client = self.client().await?;
        let routes = client.regions().await?;
        let led = routes.iter().filter(|r| r.leader.is_some()).count();
        if let Some(why) = not_ready(routes.len(), led, self.regions) {
            bail!(why);
        }
        client.put(b"\x00tessera-bench-ready", b"1").await?;
        Ok(client)
    }

    /// Fails if a server has exited.
    pub fn check_running(&mut self) -> anyhow::Result<()> {
        for p in self.pd.iter_mut().chain(self.nodes.values_mut().flatten()) {
            p.check_running()?;
            p.drain();
        }
        Ok(())
    }

    /// PD and node process ids.
    pub fn server_pids(&self) -> Vec<u32> {
        self.pd.iter().chain(self.nodes.values().flatten()).map(ChildProc::pid).collect()
    }

    /// SIGKILL every node (not PD).
    pub fn kill9_nodes(&mut self) {
        for node in self.nodes.values_mut() {
            if let Some(n) = node.take() {
                n.kill9();
            }
        }
    }

    /// Restarts every node with its original arguments (and so its address and data).
    pub async fn restart_nodes(&mut self) -> anyhow::Result<Client> {
        self.spawn_nodes().await?;
        self.ready_client(Duration::from_secs(60)).await
    }

    /// SIGTERM to nodes, then PD; SIGKILL whatever does not exit in time.
    pub async fn stop(mut self) {
        let nodes: Vec<ChildProc> = self.nodes.values_mut().filter_map(Option::take).collect();
        futures::future::join_all(nodes.into_iter().map(|n| n.stop(Duration::from_secs(10)))).await;
        if let Some(pd) = self.pd.take() {
            pd.stop(Duration::from_secs(10)).await;
        }
    }
}

/// Why a cluster of `regions` initial regions is not ready, with `known` regions in PD's
/// table of which `led` have a leader: fewer regions than it started with (still
/// bootstrapping), or one without a leader. A cluster that has split since (a restart after
/// a long run: the crash check of `--full`) has more regions than it started with.
fn not_ready(known: usize, led: usize, regions: u32) -> Option<String> {
    if known < regions as usize || led < known {
        return Some(format!("{led} of {known} regions have a leader ({regions} or more expected)"));
    }
    None
}

#[cfg(test)]
mod tests {
    use super::not_ready;

    #[test]
    fn a_cluster_is_ready_when_every_region_it_has_has_a_leader_even_after_splits() {
        assert!(not_ready(2, 2, 4).is_some(), "still bootstrapping");
        assert!(not_ready(4, 3, 4).is_some(), "a region without a leader");
        assert_eq!(not_ready(4, 4, 4), None);
        assert_eq!(not_ready(17, 17, 4), None, "split since it started");
        assert!(not_ready(17, 16, 4).is_some());
    }
}
