//! Where `tessera dev` keeps things inside its data directory.
//!
//! ```text
//! DIR/certs/        CA, PD, node and client certificates
//! DIR/pd/           PD metadata
//! DIR/node-<N>/     node N's database
//! DIR/cluster.addrs the addresses the dev cluster listens on (reused on restart)
//! DIR/web.json      how web clients connect: WebSocket URLs and a dev token
//! ```

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::Context;

/// Paths of a dev data directory.
#[derive(Debug, Clone)]
pub struct DevLayout {
    pub root: PathBuf,
}

impl DevLayout {
    pub fn new(root: &Path) -> Self {
        DevLayout { root: root.to_path_buf() }
    }
    pub fn certs(&self) -> PathBuf {
        self.root.join("certs")
    }
    pub fn pd(&self) -> PathBuf {
        self.root.join("pd")
    }
    pub fn node(&self, id: u64) -> PathBuf {
        self.root.join(format!("node-{id}"))
    }
    pub fn web_config(&self) -> PathBuf {
        self.root.join("web.json")
    }
    pub fn addrs_file(&self) -> PathBuf {
        self.root.join("cluster.addrs")
    }

    /// Reads `name=addr` lines written by a previous run.
    pub fn read_addrs(&self) -> anyhow::Result<BTreeMap<String, String>> {
        let path = self.addrs_file();
        let text = match std::fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(BTreeMap::new()),
            Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
        };
        Ok(text
            .lines()
            .filter_map(|l| l.split_once('='))
            .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
            .collect())
    }

    pub fn write_addrs(&self, addrs: &BTreeMap<String, String>) -> anyhow::Result<()> {
        let text: String = addrs.iter().map(|(k, v)| format!("{k}={v}\n")).collect();
        std::fs::write(self.addrs_file(), text).with_context(|| format!("writing {}", self.addrs_file().display()))
    }
}
