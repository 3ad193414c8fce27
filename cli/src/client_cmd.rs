//! Client commands: put, get, delete, append, cas, scan.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use futures::StreamExt;
use tessera::{Client, ClientConfig, ReadConsistency, ScanOptions, TlsFiles};

use tessera_cli::layout::DevLayout;

/// How to reach the cluster.
#[derive(Debug, Clone)]
pub struct Target {
    pub data: PathBuf,
    pub pd: Option<String>,
    pub ca: Option<PathBuf>,
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
}

impl Target {
    /// The client configuration: explicit `--pd/--ca/--cert/--key`, or the dev cluster in
    /// `--data`.
    pub fn config(&self) -> anyhow::Result<ClientConfig> {
        if let Some(pd) = &self.pd {
            let (Some(ca), Some(cert), Some(key)) = (&self.ca, &self.cert, &self.key) else {
                anyhow::bail!("--pd needs --ca, --cert and --key");
            };
            let tls = TlsFiles { ca: ca.clone(), cert: cert.clone(), key: key.clone() };
            return Ok(ClientConfig::new(pd.split(',').map(str::to_string).collect(), Some(tls)));
        }
        let layout = DevLayout::new(&self.data);
        let addrs = layout.read_addrs()?;
        let pd = addrs.get("pd").with_context(|| {
            format!("no dev cluster found in {} (start one with `tessera dev`, or pass --pd)", self.data.display())
        })?;
        Ok(ClientConfig::new(vec![pd.clone()], Some(TlsFiles::client(&layout.certs(), "dev"))))
    }

    pub async fn connect(&self) -> anyhow::Result<Client> {
        Client::connect(self.config()?).await.context("connecting to the cluster")
    }
}

/// Standard output. Commands write with `writeln!` so that a closed pipe (`tessera scan |
/// head`) is an error the binary treats as a normal end, not a panic.
fn stdout() -> std::io::StdoutLock<'static> {
    std::io::stdout().lock()
}

/// Bytes for display: UTF-8 when printable, escaped otherwise.
pub fn show(b: &[u8]) -> String {
    match std::str::from_utf8(b) {
        Ok(s) if !s.chars().any(|c| c.is_control()) => s.to_string(),
        _ => b.escape_ascii().to_string(),
    }
}

/// A byte count in binary units with one decimal (`512 B`, `12.3 MiB`), for tables.
pub fn human_bytes(bytes: u64) -> String {
    const UNITS: [&str; 6] = ["KiB", "MiB", "GiB", "TiB", "PiB", "EiB"];
    if bytes < 1024 {
        return format!("{bytes} B");
    }
    let mut value = bytes as f64 / 1024.0;
    let mut unit = 0;
    // Move up a unit also when rounding to one decimal would print 1024.0.
    while value >= 1023.95 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    format!("{value:.1} {}", UNITS[unit])
}

pub async fn put(t: &Target, key: String, value: String) -> anyhow::Result<ExitCode> {
    t.connect().await?.put(key.as_bytes(), value.as_bytes()).await?;
    Ok(ExitCode::SUCCESS)
}

pub async fn get(t: &Target, key: String, stale: bool) -> anyhow::Result<ExitCode> {
    let c = t.connect().await?;
    let consistency = if stale { ReadConsistency::Stale } else { ReadConsistency::Linearizable };
    match c.get_with(key.as_bytes(), consistency).await? {
        Some(v) => {
            writeln!(stdout(), "{}", show(&v))?;
            Ok(ExitCode::SUCCESS)
        }
        None => {
            eprintln!("key not found: {key}");
            Ok(ExitCode::from(1))
        }
    }
}

pub async fn delete(t: &Target, key: String) -> anyhow::Result<ExitCode> {
    let existed = t.connect().await?.delete(key.as_bytes()).await?;
    if !existed {
        eprintln!("note: {key} did not exist");
    }
    Ok(ExitCode::SUCCESS)
}

pub async fn append(t: &Target, key: String, value: String) -> anyhow::Result<ExitCode> {
    let len = t.connect().await?.append(key.as_bytes(), value.as_bytes()).await?;
    writeln!(stdout(), "{len}")?;
    Ok(ExitCode::SUCCESS)
}

pub async fn cas(t: &Target, key: String, expect: Option<String>, new: Option<String>) -> anyhow::Result<ExitCode> {
    let c = t.connect().await?;
    let out = c
        .compare_and_swap(key.as_bytes(), expect.as_deref().map(str::as_bytes), new.as_deref().map(str::as_bytes))
        .await?;
    if out.succeeded {
        writeln!(stdout(), "swapped")?;
        Ok(ExitCode::SUCCESS)
    } else {
        match out.previous {
            Some(v) => eprintln!("not swapped: current value is {}", show(&v)),
            None => eprintln!("not swapped: key is absent"),
        }
        Ok(ExitCode::from(1))
    }
}

pub async fn scan(
    t: &Target,
    start: Option<String>,
    end: Option<String>,
    limit: Option<usize>,
    reverse: bool,
) -> anyhow::Result<ExitCode> {
    let c = t.connect().await?;
    let opts = ScanOptions { limit: limit.map(|l| l as u64), reverse, ..ScanOptions::default() };
    let start = start.unwrap_or_default();
    let end = end.unwrap_or_default();
    let mut rows = c.scan(start.as_bytes(), end.as_bytes(), opts);
    while let Some(row) = rows.next().await {
        let (k, v) = row?;
        writeln!(stdout(), "{}\t{}", show(&k), show(&v))?;
    }
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::human_bytes;

    #[test]
    fn human_bytes_picks_the_largest_unit_below_1024() {
        assert_eq!(human_bytes(0), "0 B");
        assert_eq!(human_bytes(1023), "1023 B");
        assert_eq!(human_bytes(1024), "1.0 KiB");
        assert_eq!(human_bytes(1536), "1.5 KiB");
        assert_eq!(human_bytes(12_897_485), "12.3 MiB");
        assert_eq!(human_bytes((1 << 20) - 1), "1.0 MiB", "never 1024.0 KiB");
        assert_eq!(human_bytes(5 << 30), "5.0 GiB");
        assert_eq!(human_bytes(u64::MAX), "16.0 EiB");
    }
}
