//! `tessera`: the Tessera command-line tool.
//!
//! Runs a local development cluster (`tessera dev`), the servers of a real deployment
//! (`tessera pd`, `tessera node`), certificate and token tooling (`tessera certs ...`,
//! `tessera token ...`), client
//! commands (`put`, `get`, `delete`, `append`, `cas`, `scan`, `status`, `load`), cluster
//! administration (`admin split|drain|remove-node|operators`) and `tessera bench`,
//! which hands over to the separate `tessera-bench` binary.

mod admin_cmd;
mod certs_cmd;
mod client_cmd;
mod servers;
mod token_cmd;

use tessera_cli::dev;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// Tessera: a range-sharded, Raft-replicated key-value database.
#[derive(Debug, Parser)]
#[command(name = "tessera", version, about, long_about = None, propagate_version = true)]
struct Cli {
    /// Data directory of `tessera dev`; client commands find the dev cluster here.
    #[arg(long, global = true, default_value = "./tessera-data", env = "TESSERA_DATA")]
    data: PathBuf,
    /// PD address for client commands (instead of finding the dev cluster in --data).
    #[arg(long, global = true, env = "TESSERA_PD")]
    pd: Option<String>,
    /// CA certificate (PEM) for client commands with --pd.
    #[arg(long, global = true)]
    ca: Option<PathBuf>,
    /// Client certificate (PEM) for client commands with --pd.
    #[arg(long, global = true)]
    cert: Option<PathBuf>,
    /// Client private key (PEM) for client commands with --pd.
    #[arg(long, global = true)]
    key: Option<PathBuf>,
    /// Worker threads of this process's async runtime (default: one per CPU core). Servers
    /// that share a machine may do better with a share of its cores each.
    #[arg(long, global = true, env = "TESSERA_WORKER_THREADS", value_name = "N",
          value_parser = clap::value_parser!(u16).range(1..=1024))]
    worker_threads: Option<u16>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run PD and N nodes in one process on loopback, with generated certificates.
    Dev(dev::DevArgs),
    /// Run a placement-driver server.
    Pd(servers::PdArgs),
    /// Run a storage node.
    Node(servers::NodeArgs),
    /// Certificate tooling: create the cluster CA, node and client certificates.
    #[command(subcommand)]
    Certs(certs_cmd::CertsCommand),
    /// Scoped tokens for web clients (browsers, Node.js): create, inspect, revoke.
    #[command(subcommand)]
    Token(token_cmd::TokenCommand),
    /// Set KEY to VALUE.
    Put {
        /// Key.
        #[arg(id = "KEY", value_name = "KEY")]
        key: String,
        /// Value.
        value: String,
    },
    /// Print the value of KEY (exit code 1 if absent).
    Get {
        /// Key.
        #[arg(id = "KEY", value_name = "KEY")]
        key: String,
        /// Serve from any replica; may miss recent writes.
        #[arg(long)]
        stale: bool,
    },
    /// Delete KEY.
    Delete {
        /// Key.
        #[arg(id = "KEY", value_name = "KEY")]
        key: String,
    },
    /// Append VALUE to KEY's value (an absent key acts as put).
    Append {
        /// Key.
        #[arg(id = "KEY", value_name = "KEY")]
        key: String,
        /// Bytes to append.
        value: String,
    },
    /// Compare-and-swap: set KEY to NEW if its value is --expect OLD (or absent, with --expect-absent).
    Cas {
        /// Key.
        #[arg(id = "KEY", value_name = "KEY")]
        key: String,
        /// New value; omit with --delete to delete instead.
        new: Option<String>,
        /// Expected current value.
        #[arg(long, conflicts_with = "expect_absent")]
        expect: Option<String>,
        /// Expect the key to be absent.
        #[arg(long)]
        expect_absent: bool,
        /// Delete the key on success instead of setting NEW.
        #[arg(long, conflicts_with = "new")]
        delete: bool,
    },
    /// List pairs in [START, END) as `key<TAB>value` lines.
    Scan {
        /// Inclusive start (default: the beginning).
        start: Option<String>,
        /// Exclusive end (default: the end).
        end: Option<String>,
        /// Most pairs to print.
        #[arg(long)]
        limit: Option<usize>,
        /// Newest key first.
        #[arg(long)]
        reverse: bool,
    },
    /// Show nodes (regions, leaders, approximate bytes and keys); with --regions every
    /// region (range, epoch, peers with roles, leader, size).
    Status {
        /// List every region.
        #[arg(long)]
        regions: bool,
        /// Print JSON instead of tables.
        #[arg(long)]
        json: bool,
    },
    /// Cluster administration: split a region, drain or remove a node, list operators.
    #[command(subcommand)]
    Admin(admin_cmd::AdminCommand),
    /// Write generated keys through the client with a progress bar, then print keys/s and
    /// latency percentiles.
    Load(admin_cmd::LoadArgs),
    /// Benchmark Tessera against etcd: runs `tessera-bench` with these arguments
    /// (`tessera bench --help`, `tessera bench compare --quick`).
    #[command(disable_help_flag = true, disable_version_flag = true)]
    Bench {
        /// Arguments passed to tessera-bench.
        #[arg(trailing_var_arg = true, allow_hyphen_values = true, num_args = 0..)]
        args: Vec<String>,
    },
}

/// Runs `tessera-bench` (next to this executable, else on PATH) in place of this process,
/// so that its exit code and the signals sent to us (Ctrl-C) are its own. It is a separate
/// binary to keep the etcd client and the charting code out of the server binary.
fn bench(args: &[String]) -> ExitCode {
    const NAME: &str = "tessera-bench";
    let beside = std::env::current_exe().ok().and_then(|e| e.parent().map(|d| d.join(NAME)));
    let on_path = || std::env::split_paths(&std::env::var_os("PATH")?).map(|d| d.join(NAME)).find(|p| p.is_file());
    let Some(exe) = beside.filter(|p| p.is_file()).or_else(on_path) else {
        eprintln!(
            "error: tessera-bench not found next to tessera; build it with `cargo build --release -p tessera-benches`"
        );
        return ExitCode::from(2);
    };
    let mut cmd = std::process::Command::new(&exe);
    cmd.args(args);
    #[cfg(unix)]
    let outcome = {
        use std::os::unix::process::CommandExt;
        // Only returns on failure.
        Err::<std::process::ExitStatus, _>(cmd.exec())
    };
    #[cfg(not(unix))]
    let outcome = cmd.status();
    match outcome {
        Ok(status) => ExitCode::from(status.code().and_then(|c| u8::try_from(c).ok()).unwrap_or(2)),
        Err(e) => {
            eprintln!("error: cannot run {}: {e}", exe.display());
            ExitCode::from(2)
        }
    }
}

/// mimalloc instead of the system allocator: a node allocates and frees per message and per
/// request on several threads, where glibc's malloc spent 13% of the CPU (issue 6 profile).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Command::Bench { args } = &cli.command {
        return bench(args);
    }
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| {
            let default = if matches!(cli.command, Command::Dev(_) | Command::Pd(_) | Command::Node(_)) {
                "warn,openraft=error,tessera_cli=info"
            } else {
                "error"
            };
            tracing_subscriber::EnvFilter::new(default)
        }))
        .with_writer(std::io::stderr)
        .init();
    let mut runtime = tokio::runtime::Builder::new_multi_thread();
    if let Some(n) = cli.worker_threads {
        runtime.worker_threads(usize::from(n));
    }
    let rt = match runtime.enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::from(2);
        }
    };
    match rt.block_on(run(cli)) {
        Ok(code) => code,
        // The reader of our output went away (`tessera scan | head`): a normal end.
        Err(e) if e.downcast_ref::<std::io::Error>().is_some_and(|e| e.kind() == std::io::ErrorKind::BrokenPipe) => {
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(2)
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    let target = client_cmd::Target { data: cli.data.clone(), pd: cli.pd, ca: cli.ca, cert: cli.cert, key: cli.key };
    match cli.command {
        Command::Dev(args) => dev::run(&cli.data, args).await.map(|_| ExitCode::SUCCESS),
        Command::Pd(args) => servers::run_pd(args).await.map(|_| ExitCode::SUCCESS),
        Command::Node(args) => servers::run_node(args).await.map(|_| ExitCode::SUCCESS),
        Command::Certs(c) => certs_cmd::run(c).map(|_| ExitCode::SUCCESS),
        Command::Token(c) => token_cmd::run(&target, c).await,
        Command::Put { key, value } => client_cmd::put(&target, key, value).await,
        Command::Get { key, stale } => client_cmd::get(&target, key, stale).await,
        Command::Delete { key } => client_cmd::delete(&target, key).await,
        Command::Append { key, value } => client_cmd::append(&target, key, value).await,
        Command::Cas { key, new, expect, expect_absent, delete } => {
            if expect.is_none() && !expect_absent {
                anyhow::bail!("cas needs --expect OLD or --expect-absent");
            }
            if new.is_none() && !delete {
                anyhow::bail!("cas needs NEW (or --delete)");
            }
            client_cmd::cas(&target, key, expect, new).await
        }
        Command::Scan { start, end, limit, reverse } => client_cmd::scan(&target, start, end, limit, reverse).await,
        Command::Status { regions, json } => admin_cmd::status(&target, regions, json).await,
        Command::Admin(cmd) => admin_cmd::admin(&target, cmd).await,
        Command::Load(args) => admin_cmd::load(&target, args).await,
        Command::Bench { args } => Ok(bench(&args)),
    }
}
