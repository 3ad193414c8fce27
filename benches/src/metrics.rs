//! etcd's Prometheus `/metrics`: fetching (plain HTTP/1.0 over TCP) and parsing.

use std::io;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// WAL fsyncs (each append batch) of an etcd member.
pub const ETCD_WAL_FSYNCS: &str = "etcd_disk_wal_fsync_duration_seconds_count";
/// Backend (bbolt) commits of an etcd member.
pub const ETCD_BACKEND_COMMITS: &str = "etcd_disk_backend_commit_duration_seconds_count";

/// The sum over every series of metric `name` in a Prometheus text exposition (a metric
/// without labels is one series). `None` if the metric is absent.
pub fn parse_metric(text: &str, name: &str) -> Option<f64> {
    let mut found = None;
    for line in text.lines() {
        let line = line.trim();
        if line.starts_with('#') {
            continue;
        }
        let Some(rest) = line.strip_prefix(name) else { continue };
        // `name value`, `name{labels} value` or `name value timestamp`; not `name_more ...`.
        let rest = if let Some(labelled) = rest.strip_prefix('{') {
            match labelled.rfind('}') {
                Some(end) => &labelled[end + 1..],
                None => continue,
            }
        } else if rest.starts_with(char::is_whitespace) {
            rest
        } else {
            continue;
        };
        if let Some(v) = rest.split_whitespace().next().and_then(|v| v.parse::<f64>().ok()) {
            *found.get_or_insert(0.0) += v;
        }
    }
    found
}

/// Disk counters of one etcd member.
#[derive(Debug, Clone, Copy, PartialEq, Default, serde::Serialize)]
pub struct EtcdDisk {
    /// WAL fsyncs so far.
    pub wal_fsyncs: f64,
    /// Backend commits so far.
    pub backend_commits: f64,
}

/// The disk counters in an etcd `/metrics` page.
pub fn parse_etcd_disk(text: &str) -> Option<EtcdDisk> {
    Some(EtcdDisk {
        wal_fsyncs: parse_metric(text, ETCD_WAL_FSYNCS)?,
        backend_commits: parse_metric(text, ETCD_BACKEND_COMMITS).unwrap_or(0.0),
    })
}

/// `GET path` from `host:port` over HTTP/1.0; the body of a 200 answer.
pub async fn http_get(addr: &str, path: &str, timeout: Duration) -> io::Result<String> {
    let fetch = async {
        let mut s = tokio::net::TcpStream::connect(addr).await?;
        s.write_all(format!("GET {path} HTTP/1.0\r\nHost: {addr}\r\nAccept: text/plain\r\n\r\n").as_bytes()).await?;
        let mut buf = Vec::new();
        s.read_to_end(&mut buf).await?;
        Ok::<_, io::Error>(buf)
    };
    let buf = tokio::time::timeout(timeout, fetch)
        .await
        .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, format!("GET {addr}{path} timed out")))??;
    split_http_response(&buf)
}

/// The body of a raw HTTP response, if its status is 200.
fn split_http_response(raw: &[u8]) -> io::Result<String> {
    let text = String::from_utf8_lossy(raw);
    let (head, body) =
        text.split_once("\r\n\r\n").ok_or_else(|| io::Error::other("HTTP response without a header end"))?;
    let status = head.lines().next().unwrap_or("");
    if status.split_whitespace().nth(1) != Some("200") {
        return Err(io::Error::other(format!("HTTP status {status:?}")));
    }
    Ok(body.to_string())
}

/// Fetches the disk counters of the etcd member serving clients at `url`
/// (`http://host:port`).
pub async fn scrape_etcd(url: &str) -> io::Result<EtcdDisk> {
    let addr = url.trim_start_matches("http://").trim_end_matches('/');
    let body = http_get(addr, "/metrics", Duration::from_secs(5)).await?;
    parse_etcd_disk(&body).ok_or_else(|| io::Error::other(format!("{url}/metrics has no {ETCD_WAL_FSYNCS}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLE: &str = "\
# HELP etcd_disk_wal_fsync_duration_seconds The latency distributions of fsync called by WAL.
# TYPE etcd_disk_wal_fsync_duration_seconds histogram
etcd_disk_wal_fsync_duration_seconds_bucket{le=\"0.001\"} 0
etcd_disk_wal_fsync_duration_seconds_bucket{le=\"+Inf\"} 15234
etcd_disk_wal_fsync_duration_seconds_sum 82.41
etcd_disk_wal_fsync_duration_seconds_count 15234
# HELP etcd_disk_backend_commit_duration_seconds The latency distributions of commit called by backend.
etcd_disk_backend_commit_duration_seconds_count 1.2e+03
etcd_disk_wal_fsync_duration_seconds_count_total 99
grpc_server_handled_total{grpc_code=\"OK\",grpc_method=\"Put\"} 10
grpc_server_handled_total{grpc_code=\"OK\",grpc_method=\"Range\"} 32
";

    #[test]
    fn etcd_disk_counters_are_read_from_a_metrics_page() {
        let d = parse_etcd_disk(SAMPLE).unwrap();
        assert_eq!(d.wal_fsyncs, 15234.0, "the _count series, not _bucket, _sum or a longer name");
        assert_eq!(d.backend_commits, 1200.0);
    }

    #[test]
    fn labelled_series_are_summed_and_absent_metrics_are_none() {
        assert_eq!(parse_metric(SAMPLE, "grpc_server_handled_total"), Some(42.0));
        assert_eq!(parse_metric(SAMPLE, "etcd_no_such_metric"), None);
        assert!(parse_etcd_disk("# nothing here\n").is_none());
    }

    #[test]
    fn http_bodies_are_returned_only_for_status_200() {
        let ok = b"HTTP/1.0 200 OK\r\nContent-Type: text/plain\r\n\r\nx_count 3\n";
        assert_eq!(split_http_response(ok).unwrap(), "x_count 3\n");
        assert!(split_http_response(b"HTTP/1.0 404 Not Found\r\n\r\nno").is_err());
        assert!(split_http_response(b"garbage").is_err());
    }

    #[tokio::test]
    async fn a_metrics_page_is_fetched_over_tcp() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            let (mut s, _) = listener.accept().await.unwrap();
            let mut req = [0u8; 1024];
            let n = s.read(&mut req).await.unwrap();
            assert!(req[..n].starts_with(b"GET /metrics HTTP/1.0\r\n"));
            s.write_all(format!("HTTP/1.0 200 OK\r\n\r\n{SAMPLE}").as_bytes()).await.unwrap();
        });
        let d = scrape_etcd(&format!("http://{addr}")).await.unwrap();
        assert_eq!(d.wal_fsyncs, 15234.0);
    }
}
