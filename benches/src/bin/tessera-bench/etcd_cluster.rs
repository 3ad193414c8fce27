//! A three-member etcd cluster on loopback, with etcd's defaults (fsync on) except for the
//! backend quota and revision-based auto-compaction.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};

use crate::procs::{free_tcp_ports, set_aside, ChildProc, START_ATTEMPTS};

pub const MEMBERS: usize = 3;

#[derive(Debug)]
pub struct EtcdCluster {
    dir: PathBuf,
    members: Vec<ChildProc>,
    /// `http://127.0.0.1:port` of each member, in member order.
    pub client_urls: Vec<String>,
    pub names: Vec<String>,
}

/// The etcd binary: `--etcd-bin`, else `etcd` on PATH.
pub fn find_etcd(explicit: Option<&Path>) -> anyhow::Result<PathBuf> {
    if let Some(p) = explicit {
        if p.is_file() {
            return Ok(p.into());
        }
        bail!("--etcd-bin {} does not exist", p.display());
    }
    crate::procs::find_on_path("etcd").context(
        "etcd is not installed (no `etcd` on PATH): install it with `apt-get install etcd-server etcd-client`, or pass --etcd-bin",
    )
}

impl EtcdCluster {
    /// Starts the members in `dir` and waits until a put succeeds.
    pub async fn start(bin: &Path, dir: &Path) -> anyhow::Result<EtcdCluster> {
        let mut failures = Vec::new();
        for attempt in 1..=START_ATTEMPTS {
            match Self::start_once(bin, dir).await {
                Ok(started) => return Ok(started),
                Err(e) => failures.push(format!("{e:#} (logs moved to {})", set_aside(dir, attempt).display())),
            }
        }
        bail!("etcd did not start in {START_ATTEMPTS} attempts: {}", failures.join("; "))
    }

    async fn start_once(bin: &Path, dir: &Path) -> anyhow::Result<EtcdCluster> {
        std::fs::create_dir_all(dir.join("logs")).with_context(|| format!("creating {}", dir.display()))?;
        let names: Vec<String> = (1..=MEMBERS).map(|i| format!("e{i}")).collect();
        let ports = free_tcp_ports(2 * MEMBERS)?;
        let (client_ports, peer_ports) = ports.split_at(MEMBERS);
        let client_urls: Vec<String> = client_ports.iter().map(|p| format!("http://127.0.0.1:{p}")).collect();
        let peer_urls: Vec<String> = peer_ports.iter().map(|p| format!("http://127.0.0.1:{p}")).collect();
        let initial: Vec<String> = names.iter().zip(&peer_urls).map(|(n, u)| format!("{n}={u}")).collect();
        let mut members = Vec::new();
        for i in 0..MEMBERS {
            let args: Vec<String> = [
                "--name",
                &names[i],
                "--data-dir",
                &dir.join(&names[i]).to_string_lossy(),
                "--listen-client-urls",
                &client_urls[i],
                "--advertise-client-urls",
                &client_urls[i],
                "--listen-peer-urls",
                &peer_urls[i],
                "--initial-advertise-peer-urls",
                &peer_urls[i],
                "--initial-cluster",
                &initial.join(","),
                "--initial-cluster-state",
                "new",
                "--initial-cluster-token",
                "tessera-bench",
                "--quota-backend-bytes",
                "8589934592",
                "--auto-compaction-mode",
                "revision",
                "--auto-compaction-retention",
                "10000",
            ]
            .map(String::from)
            .into();
            let log = dir.join(format!("logs/{}.log", names[i]));
            members.push(ChildProc::spawn(&format!("etcd {}", names[i]), bin, &args, &[], &log)?);
        }
        let mut cluster = EtcdCluster { dir: dir.into(), members, client_urls, names };
        cluster.wait_ready(Duration::from_secs(60)).await?;
        Ok(cluster)
    }

    async fn wait_ready(&mut self, timeout: Duration) -> anyhow::Result<()> {
        let deadline = Instant::now() + timeout;
        let mut last_error = String::new();
        while Instant::now() < deadline {
            self.check_running()?;
            let attempt = async {
                let opts = etcd_client::ConnectOptions::new()
                    .with_connect_timeout(Duration::from_secs(2))
                    .with_timeout(Duration::from_secs(3));
                let mut c = etcd_client::Client::connect(&self.client_urls, Some(opts)).await?;
                c.put("\x00tessera-bench-ready", "1", None).await?;
                Ok::<_, etcd_client::Error>(())
            };
            match attempt.await {
                Ok(()) => return Ok(()),
                Err(e) => last_error = e.to_string(),
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        bail!("etcd did not become ready within {timeout:?}: {last_error}; logs in {}", self.dir.join("logs").display())
    }

    /// Fails if a member has exited.
    pub fn check_running(&mut self) -> anyhow::Result<()> {
        for m in &mut self.members {
            m.check_running()?;
            m.drain();
        }
        Ok(())
    }

    pub fn server_pids(&self) -> Vec<u32> {
        self.members.iter().map(ChildProc::pid).collect()
    }

    pub async fn stop(self) {
        futures::future::join_all(self.members.into_iter().map(|m| m.stop(Duration::from_secs(10)))).await;
    }
}
