//! Child processes (servers) that are stopped when dropped, and how to find binaries.

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};

/// A server process. Its output goes to a log file and to a channel (to wait for a line).
/// Dropping it kills it (SIGKILL) and reaps it, so no exit path leaves it running.
#[derive(Debug)]
pub struct ChildProc {
    pub name: String,
    child: Child,
    lines: mpsc::Receiver<String>,
    pub log: PathBuf,
}

impl ChildProc {
    /// Starts `program args` with `env`, in its own process group (so a Ctrl-C at the
    /// terminal reaches only the harness, which then stops its servers in order).
    pub fn spawn(
        name: &str,
        program: &Path,
        args: &[String],
        env: &[(&str, &str)],
        log: &Path,
    ) -> anyhow::Result<ChildProc> {
        use std::os::unix::process::CommandExt;
        let mut cmd = Command::new(program);
        cmd.args(args).stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped()).process_group(0);
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().with_context(|| format!("starting {name} ({})", program.display()))?;
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .with_context(|| format!("opening {}", log.display()))?;
        let file = std::sync::Arc::new(std::sync::Mutex::new(file));
        let (tx, lines) = mpsc::channel();
        let out = child.stdout.take().expect("piped stdout");
        let err = child.stderr.take().expect("piped stderr");
        for stream in [Box::new(out) as Box<dyn std::io::Read + Send>, Box::new(err)] {
            let (tx, file) = (tx.clone(), file.clone());
            std::thread::spawn(move || {
                for line in BufReader::new(stream).lines().map_while(Result::ok) {
                    let _ = writeln!(file.lock().unwrap_or_else(|p| p.into_inner()), "{line}");
                    let _ = tx.send(line);
                }
            });
        }
        Ok(ChildProc { name: name.into(), child, lines, log: log.into() })
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Waits for an output line containing `needle`.
    pub async fn wait_for(&mut self, needle: &str, timeout: Duration) -> anyhow::Result<String> {
        let deadline = Instant::now() + timeout;
        loop {
            while let Ok(line) = self.lines.try_recv() {
                if line.contains(needle) {
                    return Ok(line);
                }
            }
            if let Some(status) = self.child.try_wait()? {
                bail!("{} exited ({status}) before printing {needle:?}; see {}", self.name, self.log.display());
            }
            if Instant::now() > deadline {
                bail!("{} did not print {needle:?} within {timeout:?}; see {}", self.name, self.log.display());
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Drops output lines nobody waits for (keeps the channel short).
    pub fn drain(&self) {
        while self.lines.try_recv().is_ok() {}
    }

    /// Fails if the process has exited.
    pub fn check_running(&mut self) -> anyhow::Result<()> {
        if let Some(status) = self.child.try_wait()? {
            bail!("{} exited unexpectedly ({status}); see {}", self.name, self.log.display());
        }
        Ok(())
    }

    /// SIGKILL and reap: the process gets no chance to flush anything.
    pub fn kill9(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// SIGTERM, then SIGKILL if it has not exited within `grace`.
    pub async fn stop(mut self, grace: Duration) {
        if let Ok(None) = self.child.try_wait() {
            let _ = Command::new("kill").args(["-TERM", &self.pid().to_string()]).stderr(Stdio::null()).status();
            let deadline = Instant::now() + grace;
            while Instant::now() < deadline {
                if let Ok(Some(_)) = self.child.try_wait() {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
        // Drop kills and reaps.
    }
}

impl Drop for ChildProc {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// `name` next to this executable, else on `PATH`.
pub fn find_binary(name: &str) -> Option<PathBuf> {
    let beside = std::env::current_exe().ok().and_then(|e| e.parent().map(|d| d.join(name)));
    beside.filter(|p| p.is_file()).or_else(|| find_on_path(name))
}

/// `name` on `PATH`.
pub fn find_on_path(name: &str) -> Option<PathBuf> {
    std::env::split_paths(&std::env::var_os("PATH")?).map(|d| d.join(name)).find(|p| p.is_file())
}

/// `n` distinct UDP ports on 127.0.0.1 that were free a moment ago (all held open until
/// all are chosen, so they differ from each other; another process may still take one
/// before the server binds it, which is why cluster starts are retried).
pub fn free_udp_ports(n: usize) -> anyhow::Result<Vec<u16>> {
    let held: Vec<std::net::UdpSocket> =
        (0..n).map(|_| std::net::UdpSocket::bind("127.0.0.1:0")).collect::<Result<_, _>>()?;
    Ok(held.iter().map(|s| s.local_addr().map(|a| a.port())).collect::<Result<_, _>>()?)
}

/// `n` distinct TCP ports on 127.0.0.1 that were free a moment ago (see [`free_udp_ports`]).
pub fn free_tcp_ports(n: usize) -> anyhow::Result<Vec<u16>> {
    let held: Vec<std::net::TcpListener> =
        (0..n).map(|_| std::net::TcpListener::bind("127.0.0.1:0")).collect::<Result<_, _>>()?;
    Ok(held.iter().map(|s| s.local_addr().map(|a| a.port())).collect::<Result<_, _>>()?)
}

/// Attempts at starting a cluster: a port taken by someone else between our choice and the
/// server's bind makes a server exit at start.
pub const START_ATTEMPTS: usize = 3;

/// Moves the directory of a failed start aside (keeping its logs) so the next attempt
/// starts afresh; returns where it went.
pub fn set_aside(dir: &Path, attempt: usize) -> PathBuf {
    let name = dir.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let aside = dir.with_file_name(format!("{name}-failed-{attempt}"));
    match std::fs::rename(dir, &aside) {
        Ok(()) => aside,
        Err(_) => dir.to_path_buf(),
    }
}

/// Runs `program args` to completion; fails with its stderr if it fails.
pub fn run_ok(program: &Path, args: &[&str]) -> anyhow::Result<String> {
    let out = Command::new(program)
        .args(args)
        .env("RUST_LOG", "error")
        .output()
        .with_context(|| format!("running {}", program.display()))?;
    if !out.status.success() {
        bail!("{} {} failed: {}", program.display(), args.join(" "), String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}
