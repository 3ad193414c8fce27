//! Every limit at its maximum, end to end: values, appends, batches, scan pages and
//! replication of maximum-size entries all fit the frame, and one byte more is refused with
//! a typed error that leaves the data readable.

use futures::StreamExt;
use tessera::{Error, ScanOptions};
use tessera_wire::Limits;

use crate::harness::TestCluster;

const MAX_VALUE: usize = Limits::DEFAULT.max_value_len;

fn key(first: u8, name: &str) -> Vec<u8> {
    let mut k = vec![first];
    k.extend_from_slice(name.as_bytes());
    k
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_maximum_value_is_stored_and_one_byte_more_is_refused() {
    let cluster = TestCluster::start(3, 2).await;
    let client = cluster.client().await;
    let k = key(0x10, "max");
    let value = vec![7u8; MAX_VALUE];
    client.put(&k, &value).await.unwrap();
    assert_eq!(client.get(&k).await.unwrap(), Some(value.clone()));
    let too_big = vec![7u8; MAX_VALUE + 1];
    assert!(matches!(client.put(&k, &too_big).await, Err(Error::ValueTooLarge { .. })));
    let long_key = vec![1u8; Limits::DEFAULT.max_key_len + 1];
    assert!(matches!(client.put(&long_key, b"v").await, Err(Error::KeyTooLarge { .. })));
    cluster.shutdown().await;
}

/// Appends grow a value exactly to the maximum; the next append is refused and the key
/// stays readable (before, the value grew past what `get` could return).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn appends_stop_at_the_maximum_value_and_the_key_stays_readable() {
    let cluster = TestCluster::start(3, 2).await;
    let client = cluster.client().await;
    let k = key(0x10, "growing");
    let quarter = vec![b'a'; MAX_VALUE / 4];
    for i in 1..=4 {
        assert_eq!(client.append(&k, &quarter).await.unwrap(), (i * MAX_VALUE / 4) as u64);
    }
    match client.append(&k, b"x").await {
        Err(Error::ValueTooLarge { len, max }) => {
            assert_eq!((len, max), (MAX_VALUE as u64 + 1, MAX_VALUE as u64));
        }
        other => panic!("expected ValueTooLarge, got {other:?}"),
    }
    let value = client.get(&k).await.unwrap().unwrap();
    assert_eq!(value.len(), MAX_VALUE);
    // Concurrent appends that each fit but together would not: the state machine refuses
    // the ones that would cross the limit, whichever order they commit in.
    let k2 = key(0x10, "racing");
    client.put(&k2, &vec![b'b'; MAX_VALUE - 100]).await.unwrap();
    let appends = (0..4).map(|_| client.append(&k2, &[b'c'; 60]));
    let results = futures::future::join_all(appends).await;
    let ok = results.iter().filter(|r| r.is_ok()).count();
    assert_eq!(ok, 1, "exactly one 60-byte append fits in the last 100 bytes: {results:?}");
    assert!(results.iter().filter(|r| r.is_err()).all(|r| matches!(r, Err(Error::ValueTooLarge { .. }))));
    assert_eq!(client.get(&k2).await.unwrap().unwrap().len(), MAX_VALUE - 40);
    cluster.shutdown().await;
}

/// The largest batch by count and by bytes goes through; a batch far larger than one
/// request is split by the SDK; a batch-get whose answer exceeds a frame is answered in
/// parts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_largest_batches_are_written_and_read_back() {
    let cluster = TestCluster::start(3, 2).await;
    let client = cluster.client().await;
    let l = Limits::DEFAULT;
    // max_batch_keys pairs totalling max_batch_bytes, all in one region.
    let per_pair = l.max_batch_bytes / l.max_batch_keys;
    let pairs: Vec<(Vec<u8>, Vec<u8>)> = (0..l.max_batch_keys)
        .map(|i| {
            let k = key(0x10, &format!("b{i:05}"));
            let v = vec![(i % 251) as u8; per_pair - k.len()];
            (k, v)
        })
        .collect();
    client.batch_put(&pairs).await.unwrap();
    let keys: Vec<&[u8]> = pairs.iter().map(|(k, _)| k.as_slice()).collect();
    let values = client.batch_get(&keys).await.unwrap();
    assert!(values.iter().zip(&pairs).all(|(got, (_, want))| got.as_deref() == Some(want.as_slice())));

    // Six maximum values: 6 MiB, more than a frame; the SDK cuts it by bytes.
    let big: Vec<(Vec<u8>, Vec<u8>)> =
        (0..6).map(|i| (key(0x10 + i * 40, &format!("big{i}")), vec![i; MAX_VALUE])).collect();
    client.batch_put(&big).await.unwrap();
    let keys: Vec<&[u8]> = big.iter().map(|(k, _)| k.as_slice()).collect();
    let values = client.batch_get(&keys).await.unwrap();
    for ((_, want), got) in big.iter().zip(values) {
        assert_eq!(got.as_deref(), Some(want.as_slice()));
    }
    cluster.shutdown().await;
}

/// A scan over maximum-size values: pages are cut by bytes, every pair arrives once, in
/// order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_scan_of_maximum_size_values_pages_by_bytes() {
    let cluster = TestCluster::start(3, 1).await;
    let client = cluster.client().await;
    let n = 7u8;
    for i in 0..n {
        client.put(&key(0x20, &format!("s{i}")), &vec![i; MAX_VALUE]).await.unwrap();
    }
    let opts = ScanOptions { page_size: 1000, ..ScanOptions::default() };
    let rows: Vec<_> = client.scan(&[0x20], &[0x21], opts.clone()).collect().await;
    assert_eq!(rows.len(), n as usize);
    for (i, row) in rows.into_iter().enumerate() {
        let (k, v) = row.unwrap();
        assert_eq!(k, key(0x20, &format!("s{i}")));
        assert_eq!(v.len(), MAX_VALUE);
    }
    let page = client.scan_page(tessera::ScanCursor::new(&[0x20], &[0x21], &opts).unwrap().unwrap()).await.unwrap();
    assert!(page.0.len() < n as usize && page.1.is_some(), "a page stops at the byte limit");
    cluster.shutdown().await;
}

/// A follower that missed many maximum-size entries catches up over AppendEntries, which
/// must be cut by bytes to fit a frame (openraft batches up to 300 entries). With another
/// node stopped, writes need the follower, so they succeed only once it has caught up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lagging_follower_catches_up_on_maximum_size_entries() {
    let mut cluster = TestCluster::start(3, 1).await;
    let lagging = 3;
    cluster.stop_node(lagging).await;
    let client = cluster.client().await;
    // Twelve maximum entries: at least four AppendEntries messages of at most a frame.
    for i in 0..12u8 {
        client.put(&key(0x30, &format!("e{i:02}")), &vec![i; MAX_VALUE]).await.unwrap();
    }
    cluster.restart_node(lagging).await;
    let other = if cluster.leader_node_of(&[0x30]).await == 1 { 2 } else { 1 };
    cluster.stop_node(other).await;
    let client = cluster.client().await;
    client.put(&key(0x30, "after"), b"v").await.unwrap();
    for i in (0..12u8).step_by(5) {
        assert_eq!(client.get(&key(0x30, &format!("e{i:02}"))).await.unwrap(), Some(vec![i; MAX_VALUE]));
    }
    cluster.shutdown().await;
}
