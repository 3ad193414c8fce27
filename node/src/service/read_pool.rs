//! Database reads off the async runtime.
//!
//! redb reads block on disk I/O and page decoding. Running long ones (scans, batch gets)
//! on tokio's worker threads would stall every connection and Raft task sharing those
//! threads, so each runs on tokio's blocking pool, and at most `limit` at once: a flood of
//! scans queues here (bounded by the per-stream in-flight limit of the transport) instead
//! of spawning hundreds of blocking threads. A single-key get is one B-tree lookup, mostly
//! in redb's page cache, and the hand-off to the pool and back cost more than the lookup
//! (measured: 54-70 against 21-24 CPU-us per get at 64 in flight), so it runs on its
//! request's task instead.

use std::io;
use std::sync::Arc;

use tokio::sync::Semaphore;

/// Runs blocking reads, at most `limit` at a time.
#[derive(Debug, Clone)]
pub(crate) struct ReadPool {
    slots: Arc<Semaphore>,
}

impl ReadPool {
    /// A pool running at most `limit` reads at once.
    pub(crate) fn new(limit: usize) -> ReadPool {
        ReadPool { slots: Arc::new(Semaphore::new(limit.max(1))) }
    }

    /// Runs `read` on the blocking pool once a slot is free.
    pub(crate) async fn run<T: Send + 'static>(
        &self,
        read: impl FnOnce() -> io::Result<T> + Send + 'static,
    ) -> io::Result<T> {
        let permit = self.slots.clone().acquire_owned().await.map_err(|_| io::Error::other("read pool closed"))?;
        tokio::task::spawn_blocking(move || {
            let _permit = permit;
            read()
        })
        .await
        .map_err(|e| io::Error::other(format!("read task failed: {e}")))?
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn no_more_than_limit_reads_run_at_once() {
        let pool = ReadPool::new(3);
        let running = Arc::new(AtomicUsize::new(0));
        let peak = Arc::new(AtomicUsize::new(0));
        let (release_tx, release_rx) = std::sync::mpsc::channel::<()>();
        let release_rx = Arc::new(std::sync::Mutex::new(release_rx));
        let reads: Vec<_> = (0..10)
            .map(|_| {
                let (pool, running, peak, release_rx) =
                    (pool.clone(), running.clone(), peak.clone(), release_rx.clone());
                tokio::spawn(async move {
                    pool.run(move || {
                        let now = running.fetch_add(1, Ordering::SeqCst) + 1;
                        peak.fetch_max(now, Ordering::SeqCst);
                        release_rx.lock().unwrap().recv().unwrap();
                        running.fetch_sub(1, Ordering::SeqCst);
                        Ok(())
                    })
                    .await
                })
            })
            .collect();
        for _ in 0..10 {
            release_tx.send(()).unwrap();
        }
        for r in reads {
            r.await.unwrap().unwrap();
        }
        assert!(peak.load(Ordering::SeqCst) <= 3, "peak {}", peak.load(Ordering::SeqCst));
    }
}
