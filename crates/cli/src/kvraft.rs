//! `flotilla kvraft ...`: a node of the replicated store over TCP.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::Subcommand;
use flotilla_kvraft::tcp;
use flotilla_runtime::{ClusterId, NodeConfig, RunError};

#[derive(Subcommand)]
pub enum KvraftCommand {
    /// Run node ID of a replicated KV cluster until interrupted (Ctrl-C or SIGTERM). One port
    /// (its address in --peers) serves the other nodes and clients; the Raft log and
    /// snapshots live in --data.
    Serve {
        /// This node's index in --peers, from 0.
        #[arg(long)]
        id: u64,
        /// Every node's address, the same list in the same order on every node.
        #[arg(long, value_delimiter = ',', required = true)]
        peers: Vec<SocketAddr>,
        /// The data directory (created if missing; one process at a time).
        #[arg(long)]
        data: PathBuf,
        /// The cluster's name: nodes with another name (or another --peers) refuse each
        /// other.
        #[arg(long, default_value = "flotilla")]
        name: String,
        /// Snapshot once the Raft log exceeds this many bytes (0: never).
        #[arg(long, default_value_t = 64 << 20)]
        max_raft_state: u64,
    },
}

pub fn run(command: KvraftCommand) -> anyhow::Result<ExitCode> {
    match command {
        KvraftCommand::Serve {
            id,
            peers,
            data,
            name,
            max_raft_state,
        } => {
            let cluster = ClusterId {
                name,
                members: peers,
            };
            let mut config = NodeConfig::new(cluster, id, data);
            config.rsm.max_raft_state = (max_raft_state > 0).then_some(max_raft_state);
            let runtime = crate::tokio_runtime()?;
            match runtime.block_on(tcp::serve(config, shutdown_signal())) {
                Ok(()) => Ok(ExitCode::SUCCESS),
                Err(RunError::Storage { id, source }) => {
                    flotilla_node::exit_after_storage_failure(id, source)
                }
                Err(e) => Err(e.into()),
            }
        }
    }
}

/// Resolves at Ctrl-C or SIGTERM.
async fn shutdown_signal() {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .expect("a SIGTERM handler can be installed");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}
