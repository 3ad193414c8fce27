//! The crash check: acknowledged puts must survive `kill -9` of every node.
//!
//! A short burst of puts of unique keys records every acknowledgement; then every node
//! (not PD) is killed with SIGKILL and restarted on the same data, and each acknowledged key
//! is read back linearizably.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt;
use tessera::Client;
use tessera_benches::keys::crash_key;
use tessera_benches::CrashReport;

use crate::tessera_cluster::TesseraCluster;

/// Attempts per key when reading back (each attempt has the SDK's own retries inside).
const READ_ATTEMPTS: usize = 5;
const EXAMPLES: usize = 5;

/// An acknowledged key and its value.
type Pair = (Vec<u8>, Vec<u8>);

/// Runs the check; returns the report and a client of the restarted cluster.
pub async fn check(
    cluster: &mut TesseraCluster,
    client: &Client,
    burst: Duration,
    concurrency: usize,
    nonce: u64,
) -> anyhow::Result<(CrashReport, Client)> {
    let acked: Arc<Mutex<Vec<Pair>>> = Arc::default();
    let report = Arc::new(Mutex::new(CrashReport::default()));
    let end = Instant::now() + burst;
    let mut writers = tokio::task::JoinSet::new();
    for w in 0..concurrency.max(1) {
        let (client, acked, report) = (client.clone(), acked.clone(), report.clone());
        writers.spawn(async move {
            let mut n = 0u64;
            while Instant::now() < end {
                n += 1;
                let key = crash_key(nonce, w, n);
                let value = format!("{w}:{n}:{nonce:x}").into_bytes();
                match client.put(&key, &value).await {
                    Ok(()) => acked.lock().unwrap_or_else(|p| p.into_inner()).push((key, value)),
                    Err(e) => {
                        let mut r = report.lock().unwrap_or_else(|p| p.into_inner());
                        if e.is_undetermined() {
                            r.undetermined += 1;
                        } else {
                            r.failed += 1;
                        }
                    }
                }
            }
        });
    }
    while writers.join_next().await.is_some() {}
    let acked = std::mem::take(&mut *acked.lock().unwrap_or_else(|p| p.into_inner()));
    let mut report = report.lock().unwrap_or_else(|p| p.into_inner()).clone();
    report.acknowledged = acked.len() as u64;

    cluster.kill9_nodes();
    let client = cluster.restart_nodes().await?;

    #[derive(PartialEq)]
    enum Found {
        Verified,
        Missing,
        Wrong,
        Unreadable,
    }
    let results: Vec<(Found, Vec<u8>)> = futures::stream::iter(acked)
        .map(|(key, value)| {
            let client = client.clone();
            async move {
                for _ in 0..READ_ATTEMPTS {
                    match client.get(&key).await {
                        Ok(Some(v)) if v == value => return (Found::Verified, key),
                        Ok(Some(_)) => return (Found::Wrong, key),
                        Ok(None) => return (Found::Missing, key),
                        Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
                    }
                }
                (Found::Unreadable, key)
            }
        })
        .buffer_unordered(concurrency.max(1))
        .collect()
        .await;
    for (found, key) in results {
        match found {
            Found::Verified => report.verified += 1,
            Found::Missing => report.missing += 1,
            Found::Wrong => report.wrong_value += 1,
            Found::Unreadable => report.unreadable += 1,
        }
        if found != Found::Verified && report.examples.len() < EXAMPLES {
            report.examples.push(String::from_utf8_lossy(&key[1..]).into_owned());
        }
    }
    Ok((report, client))
}
