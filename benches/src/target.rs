//! The systems under test, behind one trait: Tessera (the Rust SDK) and etcd (gRPC).

use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use futures::StreamExt;

/// A failed operation, as text (the harness only counts and shows errors).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct OpError(pub String);

/// Which system a target is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum System {
    /// Tessera.
    Tessera,
    /// etcd.
    Etcd,
}

impl std::fmt::Display for System {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            System::Tessera => "Tessera",
            System::Etcd => "etcd",
        })
    }
}

/// Key-value operations as the workloads issue them. Reads are linearizable unless named
/// stale.
pub trait Target: Clone + Send + Sync + 'static {
    /// Which system this is.
    fn system(&self) -> System;
    /// Sets `key` to `value`.
    fn put(&self, key: Vec<u8>, value: Vec<u8>) -> impl Future<Output = Result<(), OpError>> + Send;
    /// Reads `key`, linearizably.
    fn get(&self, key: Vec<u8>) -> impl Future<Output = Result<Option<Vec<u8>>, OpError>> + Send;
    /// Reads `key` from any replica, possibly missing recent writes (Tessera: stale read;
    /// etcd: serializable read).
    fn get_stale(&self, key: Vec<u8>) -> impl Future<Output = Result<Option<Vec<u8>>, OpError>> + Send;
    /// Reads up to `limit` pairs from `start` (inclusive) to `end` (exclusive); returns how
    /// many.
    fn scan(&self, start: Vec<u8>, end: Vec<u8>, limit: usize) -> impl Future<Output = Result<usize, OpError>> + Send;
    /// Stores a new record. Both systems treat it as a put.
    fn insert(&self, key: Vec<u8>, value: Vec<u8>) -> impl Future<Output = Result<(), OpError>> + Send {
        self.put(key, value)
    }
}

/// Tessera through the Rust SDK. Clones share the client (its connections, routing cache
/// and session).
#[derive(Debug, Clone)]
pub struct TesseraTarget {
    client: tessera::Client,
}

impl TesseraTarget {
    /// Wraps a connected client.
    pub fn new(client: tessera::Client) -> Self {
        TesseraTarget { client }
    }

    /// The client.
    pub fn client(&self) -> &tessera::Client {
        &self.client
    }
}

fn tessera_err(e: tessera::Error) -> OpError {
    OpError(e.to_string())
}

impl Target for TesseraTarget {
    fn system(&self) -> System {
        System::Tessera
    }

    async fn put(&self, key: Vec<u8>, value: Vec<u8>) -> Result<(), OpError> {
        self.client.put(&key, &value).await.map_err(tessera_err)
    }

    async fn get(&self, key: Vec<u8>) -> Result<Option<Vec<u8>>, OpError> {
        self.client.get(&key).await.map_err(tessera_err)
    }

    async fn get_stale(&self, key: Vec<u8>) -> Result<Option<Vec<u8>>, OpError> {
        self.client.get_with(&key, tessera::ReadConsistency::Stale).await.map_err(tessera_err)
    }

    async fn scan(&self, start: Vec<u8>, end: Vec<u8>, limit: usize) -> Result<usize, OpError> {
        let opts = tessera::ScanOptions {
            limit: Some(limit as u64),
            page_size: u32::try_from(limit.max(1)).unwrap_or(u32::MAX),
            ..tessera::ScanOptions::default()
        };
        let mut rows = self.client.scan(&start, &end, opts);
        let mut n = 0;
        while let Some(row) = rows.next().await {
            row.map_err(tessera_err)?;
            n += 1;
        }
        Ok(n)
    }
}

/// etcd through `etcd-client`, over a pool of clients used round-robin. Each client holds
/// one HTTP/2 connection per endpoint, balanced across the endpoints (as etcd's own
/// `benchmark` tool spreads its `--conns` over `--endpoints`).
#[derive(Clone)]
pub struct EtcdTarget {
    pool: Arc<Vec<etcd_client::KvClient>>,
    next: Arc<AtomicUsize>,
}

impl std::fmt::Debug for EtcdTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EtcdTarget").field("connections", &self.pool.len()).finish()
    }
}

impl EtcdTarget {
    /// Connects `connections` (at least 1) clients to `endpoints` (`http://host:port`).
    pub async fn connect(endpoints: &[String], connections: usize) -> Result<EtcdTarget, OpError> {
        let mut pool = Vec::with_capacity(connections.max(1));
        for _ in 0..connections.max(1) {
            let opts = etcd_client::ConnectOptions::new()
                .with_connect_timeout(std::time::Duration::from_secs(5))
                .with_timeout(std::time::Duration::from_secs(10));
            let client = etcd_client::Client::connect(endpoints, Some(opts)).await.map_err(etcd_err)?;
            pool.push(client.kv_client());
        }
        Ok(EtcdTarget { pool: Arc::new(pool), next: Arc::new(AtomicUsize::new(0)) })
    }

    fn kv(&self) -> etcd_client::KvClient {
        let i = self.next.fetch_add(1, Ordering::Relaxed) % self.pool.len();
        self.pool[i].clone()
    }

    async fn get_with(&self, key: Vec<u8>, serializable: bool) -> Result<Option<Vec<u8>>, OpError> {
        let opts = serializable.then(|| etcd_client::GetOptions::new().with_serializable());
        let mut resp = self.kv().get(key, opts).await.map_err(etcd_err)?;
        Ok(resp.take_kvs().into_iter().next().map(|kv| kv.value().to_vec()))
    }
}

fn etcd_err(e: etcd_client::Error) -> OpError {
    OpError(e.to_string())
}

impl Target for EtcdTarget {
    fn system(&self) -> System {
        System::Etcd
    }

    async fn put(&self, key: Vec<u8>, value: Vec<u8>) -> Result<(), OpError> {
        self.kv().put(key, value, None).await.map(|_| ()).map_err(etcd_err)
    }

    async fn get(&self, key: Vec<u8>) -> Result<Option<Vec<u8>>, OpError> {
        self.get_with(key, false).await
    }

    async fn get_stale(&self, key: Vec<u8>) -> Result<Option<Vec<u8>>, OpError> {
        self.get_with(key, true).await
    }

    async fn scan(&self, start: Vec<u8>, end: Vec<u8>, limit: usize) -> Result<usize, OpError> {
        let opts = etcd_client::GetOptions::new().with_range(end).with_limit(limit as i64);
        let resp = self.kv().get(start, Some(opts)).await.map_err(etcd_err)?;
        Ok(resp.kvs().len())
    }
}
