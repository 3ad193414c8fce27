//! How fast the disk syncs right now: 4 KiB writes each followed by `fdatasync`.
//!
//! Run before every measured run: a slow probe means something else is using the disk (or
//! the CPU), and the run is marked contended.

use std::io::{self, Seek, SeekFrom, Write};
use std::path::Path;
use std::time::Instant;

/// Probe result, in milliseconds.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
pub struct FsyncProbe {
    /// Median write + fdatasync.
    pub p50_ms: f64,
    /// 99th percentile.
    pub p99_ms: f64,
    /// Syncs timed.
    pub samples: usize,
}

/// Writes 4 KiB at offset 0 of a temporary file in `dir` and `fdatasync`s it, `samples`
/// times (blocking).
pub fn probe(dir: &Path, samples: usize) -> io::Result<FsyncProbe> {
    let mut file = tempfile::tempfile_in(dir)?;
    let block = [0x5au8; 4096];
    let mut ms = Vec::with_capacity(samples);
    for _ in 0..samples.max(1) {
        let t = Instant::now();
        file.seek(SeekFrom::Start(0))?;
        file.write_all(&block)?;
        file.sync_data()?;
        ms.push(t.elapsed().as_secs_f64() * 1e3);
    }
    Ok(summarize(ms))
}

fn summarize(mut ms: Vec<f64>) -> FsyncProbe {
    ms.sort_by(f64::total_cmp);
    let at = |q: f64| ms[((ms.len() - 1) as f64 * q).round() as usize];
    FsyncProbe { p50_ms: at(0.5), p99_ms: at(0.99), samples: ms.len() }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_come_from_the_sorted_samples() {
        let p = summarize((1..=100).rev().map(f64::from).collect());
        assert_eq!((p.p50_ms, p.p99_ms, p.samples), (51.0, 99.0, 100));
    }

    #[test]
    fn probing_a_directory_times_every_sync() {
        let dir = tempfile::tempdir().unwrap();
        let p = probe(dir.path(), 5).unwrap();
        assert_eq!(p.samples, 5);
        assert!(p.p50_ms > 0.0 && p.p99_ms >= p.p50_ms);
    }
}
