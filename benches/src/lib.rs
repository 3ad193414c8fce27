//! Tessera's benchmark harness: closed-loop YCSB-style workloads against Tessera and etcd,
//! and the measurements that make the two comparable.
//!
//! The `tessera-bench` binary (also reachable as `tessera bench`) is built on this library:
//! `tessera-bench compare` starts a three-node Tessera cluster and a three-member etcd
//! cluster side by side and runs a matrix of workloads on them in turn; `tessera-bench run`
//! runs one workload against clusters that are already running.
//!
//! - [`target`]: the [`Target`] trait (put, get, stale get, scan, insert) with
//!   [`TesseraTarget`] (the Rust SDK) and [`EtcdTarget`] (gRPC, a pool of connections).
//! - [`workload`], [`zipf`], [`keys`]: what to issue (YCSB's mixes L, W, A, B, C, E and a
//!   sequential one), which keys (uniform or scrambled Zipfian 0.99), and the key bytes,
//!   identical for both systems.
//! - [`runner`]: the closed loop, with HDR latency histograms and CPU per operation.
//! - [`procstat`], [`metrics`], [`fsync_probe`]: CPU from `/proc`, etcd's fsync counters
//!   from its `/metrics`, and the disk probe run before every measured run.
//! - [`matrix`], [`report`], [`plot`]: the rows of the comparison, their tables and charts.
//!
//! # Example
//!
//! ```no_run
//! # async fn example() -> Result<(), tessera_benches::OpError> {
//! use std::time::Duration;
//! use tessera_benches::runner::{self, InsertCounter, RunSpec};
//! use tessera_benches::{Distribution, EtcdTarget, Workload};
//!
//! let etcd = EtcdTarget::connect(&["http://127.0.0.1:2379".to_string()], 8).await?;
//! runner::load(&etcd, 10_000, 100, 64, &[], None).await;
//! let spec = RunSpec {
//!     workload: Workload::A,
//!     concurrency: 64,
//!     warmup: Duration::from_secs(2),
//!     duration: Duration::from_secs(10),
//!     records: 10_000,
//!     value_size: 100,
//!     distribution: Distribution::Zipfian,
//!     stale_reads: false,
//!     seed: 1,
//! };
//! let out = runner::run(&etcd, &spec, &InsertCounter::new(10_000), &[], None).await;
//! println!("{:.0} ops/s, p99 {} µs", out.ops_per_sec, out.latency.p99_us);
//! # Ok(()) }
//! ```

pub mod fsync_probe;
pub mod keys;
pub mod matrix;
pub mod metrics;
pub mod plot;
pub mod procstat;
pub mod report;
pub mod runner;
pub mod stats;
pub mod target;
pub mod workload;
pub mod zipf;

pub use fsync_probe::FsyncProbe;
pub use matrix::{RowKind, RowSpec, RunParams, RunRecord};
pub use report::{CrashReport, Machine, TableLine};
pub use runner::{InsertCounter, RunOutput, RunSpec};
pub use stats::{LatencySummary, Spread};
pub use target::{EtcdTarget, OpError, System, Target, TesseraTarget};
pub use workload::{OpKind, Workload};
pub use zipf::{Distribution, KeyChooser};
