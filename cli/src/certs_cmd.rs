//! `tessera certs ...`.

use std::path::PathBuf;

use anyhow::Context;
use tessera_wire::NodeId;

/// Certificate commands.
#[derive(Debug, clap::Subcommand)]
pub enum CertsCommand {
    /// Create the cluster CA (ca.pem, ca-key.pem) in DIR.
    InitCa {
        /// Certificate directory.
        #[arg(long = "dir", default_value = "./tessera-certs")]
        dir: PathBuf,
    },
    /// Issue a node certificate (node-ID.pem, node-ID-key.pem).
    Node {
        /// Certificate directory holding the CA.
        #[arg(long = "dir", default_value = "./tessera-certs")]
        dir: PathBuf,
        /// Node id.
        #[arg(long)]
        id: u64,
        /// Host names or IP addresses the node is reached at (repeatable).
        #[arg(long = "host", required = true)]
        hosts: Vec<String>,
    },
    /// Issue the PD certificate (pd.pem, pd-key.pem).
    Pd {
        /// Certificate directory holding the CA.
        #[arg(long = "dir", default_value = "./tessera-certs")]
        dir: PathBuf,
        /// Host names or IP addresses PD is reached at (repeatable).
        #[arg(long = "host", required = true)]
        hosts: Vec<String>,
    },
    /// Issue a client certificate (client-NAME.pem, client-NAME-key.pem).
    Client {
        /// Certificate directory holding the CA.
        #[arg(long = "dir", default_value = "./tessera-certs")]
        dir: PathBuf,
        /// Client name.
        #[arg(long)]
        name: String,
    },
}

/// Runs a certificate command.
pub fn run(cmd: CertsCommand) -> anyhow::Result<()> {
    match cmd {
        CertsCommand::InitCa { dir } => {
            tessera_certs::init_ca(&dir).context("creating the CA")?;
            println!("created {}", dir.join("ca.pem").display());
        }
        CertsCommand::Node { dir, id, hosts } => {
            let f = tessera_certs::issue_node(&dir, NodeId(id), &hosts).context("issuing the node certificate")?;
            println!("created {} and {}", f.cert.display(), f.key.display());
        }
        CertsCommand::Pd { dir, hosts } => {
            let f = tessera_certs::issue_pd(&dir, &hosts).context("issuing the PD certificate")?;
            println!("created {} and {}", f.cert.display(), f.key.display());
        }
        CertsCommand::Client { dir, name } => {
            let f = tessera_certs::issue_client(&dir, &name).context("issuing the client certificate")?;
            println!("created {} and {}", f.cert.display(), f.key.display());
        }
    }
    Ok(())
}
