//! `tessera-bench`: Tessera against etcd, side by side.
//!
//! ```text
//! cargo build --release -p tessera-cli -p tessera-benches
//! target/release/tessera-bench compare --quick        # or: tessera bench compare --quick
//! target/release/tessera-bench run --target etcd --workload a --concurrency 64 --load
//! ```
//!
//! `compare` starts a Tessera cluster (PD + 3 nodes, separate processes) and a 3-member etcd
//! cluster, runs the matrix interleaved, writes results.json, results.md and two SVG charts,
//! and checks that acknowledged puts survive `kill -9` of every Tessera node. Every server
//! it starts is stopped when it ends, fails or is interrupted.

mod compare;
mod counters;
mod crash;
mod etcd_cluster;
mod procs;
mod run_cmd;
mod tessera_cluster;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// Benchmarks Tessera against etcd with YCSB-style closed-loop workloads.
#[derive(Debug, Parser)]
#[command(name = "tessera-bench", version)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Start a Tessera and an etcd cluster and compare them on a matrix of workloads.
    Compare(compare::CompareArgs),
    /// Run one workload against an already running Tessera or etcd cluster.
    Run(run_cmd::RunArgs),
}

/// Resolves on Ctrl-C (SIGINT) or SIGTERM.
async fn interrupted() -> std::io::Result<&'static str> {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        r = tokio::signal::ctrl_c() => r.map(|_| "interrupted"),
        _ = term.recv() => Ok("terminated"),
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let rt = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::from(2);
        }
    };
    let outcome = rt.block_on(async {
        let work = async {
            match cli.command {
                Command::Compare(args) => compare::compare(args).await,
                Command::Run(args) => run_cmd::run(args).await.map(|()| true),
            }
        };
        // Losing the race drops `work`, and with it every cluster: their guards kill and
        // reap the server processes.
        tokio::select! {
            r = work => r.map_err(Some),
            signal = interrupted() => Err(signal.ok().map(|s| anyhow::anyhow!("{s}: stopped every server this run started"))),
        }
    });
    rt.shutdown_timeout(std::time::Duration::from_secs(2));
    match outcome {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => {
            eprintln!("error: the crash check failed: acknowledged puts were lost");
            ExitCode::from(1)
        }
        Err(Some(e)) if e.to_string().starts_with("interrupted") || e.to_string().starts_with("terminated") => {
            eprintln!("{e}");
            ExitCode::from(130)
        }
        Err(Some(e)) => {
            eprintln!("error: {e:#}");
            ExitCode::from(2)
        }
        Err(None) => {
            eprintln!("error: cannot listen for signals");
            ExitCode::from(2)
        }
    }
}
