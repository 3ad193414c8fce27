//! Every operation across several regions; scans crossing region boundaries.

use futures::StreamExt;
use tessera::ScanOptions;

use crate::harness::{spread_key, TestCluster};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operations_work_across_four_regions_on_three_nodes() {
    let cluster = TestCluster::start(3, 4).await;
    let routes = cluster.routes().await;
    assert_eq!(routes.len(), 4, "PD created four regions");
    for r in &routes {
        assert_eq!(r.region.peers.len(), 3);
        let mut nodes: Vec<_> = r.region.peers.iter().map(|p| p.node_id).collect();
        nodes.sort();
        nodes.dedup();
        assert_eq!(nodes.len(), 3, "replicas on distinct nodes");
    }
    let client = cluster.client().await;

    // put / get / delete on keys in every region
    let n = 200;
    let keys: Vec<Vec<u8>> = (0..n).map(|i| spread_key(i, n)).collect();
    for (i, k) in keys.iter().enumerate() {
        client.put(k, format!("v{i}").as_bytes()).await.unwrap();
    }
    let mut hit_regions = std::collections::BTreeSet::new();
    for (i, k) in keys.iter().enumerate() {
        assert_eq!(client.get(k).await.unwrap(), Some(format!("v{i}").into_bytes()));
        hit_regions.insert(routes.iter().find(|r| r.region.contains(k)).unwrap().region.id);
    }
    assert_eq!(hit_regions.len(), 4, "keys landed in every region");
    assert!(client.delete(&keys[0]).await.unwrap());
    assert!(!client.delete(&keys[0]).await.unwrap());
    assert_eq!(client.get(&keys[0]).await.unwrap(), None);

    // append: absent key acts as put
    assert_eq!(client.append(b"\x05append", b"ab").await.unwrap(), 2);
    assert_eq!(client.append(b"\x05append", b"cd").await.unwrap(), 4);
    assert_eq!(client.get(b"\x05append").await.unwrap(), Some(b"abcd".to_vec()));

    // compare-and-swap
    let cas = client.compare_and_swap(b"\xf0cas", None, Some(b"one")).await.unwrap();
    assert!(cas.succeeded);
    let cas = client.compare_and_swap(b"\xf0cas", None, Some(b"two")).await.unwrap();
    assert!(!cas.succeeded);
    assert_eq!(cas.previous, Some(b"one".to_vec()));
    let cas = client.compare_and_swap(b"\xf0cas", Some(b"one"), Some(b"two")).await.unwrap();
    assert!(cas.succeeded);
    let cas = client.compare_and_swap(b"\xf0cas", Some(b"two"), None).await.unwrap();
    assert!(cas.succeeded);
    assert_eq!(client.get(b"\xf0cas").await.unwrap(), None);

    // batch put / batch get across regions
    let pairs: Vec<(Vec<u8>, Vec<u8>)> = (0..40).map(|i| (spread_key(i, 40), format!("b{i}").into_bytes())).collect();
    client.batch_put(&pairs).await.unwrap();
    let ks: Vec<Vec<u8>> = pairs.iter().map(|(k, _)| k.clone()).collect();
    let got = client.batch_get(&ks).await.unwrap();
    assert_eq!(got, pairs.iter().map(|(_, v)| Some(v.clone())).collect::<Vec<_>>());

    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scans_cross_region_boundaries_in_order_forward_and_reverse() {
    let cluster = TestCluster::start(3, 4).await;
    let client = cluster.client().await;
    let n = 300;
    let keys: Vec<Vec<u8>> = (0..n).map(|i| spread_key(i, n)).collect();
    let pairs: Vec<(Vec<u8>, Vec<u8>)> = keys.iter().map(|k| (k.clone(), k.clone())).collect();
    client.batch_put(&pairs).await.unwrap();

    // Small pages force resumption inside regions as well as across them.
    let opts = ScanOptions { page_size: 7, ..ScanOptions::default() };
    let rows: Vec<_> = client.scan(b"", b"", opts.clone()).collect::<Vec<_>>().await;
    let got: Vec<Vec<u8>> = rows.into_iter().map(|r| r.unwrap().0).collect();
    assert_eq!(got, keys, "forward scan returns every key once, in order");

    let opts = ScanOptions { page_size: 7, reverse: true, ..ScanOptions::default() };
    let rows: Vec<_> = client.scan(b"", b"", opts).collect::<Vec<_>>().await;
    let got: Vec<Vec<u8>> = rows.into_iter().map(|r| r.unwrap().0).collect();
    let mut rev = keys.clone();
    rev.reverse();
    assert_eq!(got, rev, "reverse scan returns every key once, in reverse order");

    // A bounded range spanning two regions, with a limit.
    let (lo, hi) = (&keys[50], &keys[250]);
    let opts = ScanOptions { limit: Some(120), page_size: 16, ..ScanOptions::default() };
    let got: Vec<Vec<u8>> = client.scan(lo, hi, opts).map(|r| r.unwrap().0).collect().await;
    assert_eq!(got, keys[50..170].to_vec());

    cluster.shutdown().await;
}
