//! `flotilla kvraft ...`, `flotilla cluster ...` and `flotilla demo`: the replicated store
//! over TCP.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::Subcommand;
use std::time::Duration;

use flotilla_kvraft::local::{self, LocalCluster};
use flotilla_kvraft::tcp;
use flotilla_runtime::{ClusterId, NodeConfig, RunError};

#[derive(Subcommand)]
pub enum KvraftCommand {
    /// Run node ID of a replicated KV cluster until interrupted (Ctrl-C or SIGTERM). One port
    /// (its address in --peers) serves the other nodes and clients; the Raft log and
    /// snapshots live in --data.
    Serve {
        #[command(flatten)]
        node: NodeArgs,
        #[command(flatten)]
        grpc: GrpcArgs,
    },
    /// Print each node's role, term, commit and applied index, log and snapshot size, and on
    /// the leader each follower's progress.
    Status {
        #[arg(long, value_delimiter = ',', required = true)]
        cluster: Vec<SocketAddr>,
    },
}

/// What every node of a replicated service is given: who it is, its cluster, its data.
#[derive(clap::Args)]
pub struct NodeArgs {
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
    /// Snapshot once the Raft log exceeds this many bytes (0: never). It bounds the log a
    /// restart replays and the memory the log takes.
    #[arg(long, default_value_t = 16 << 20)]
    max_raft_state: u64,
    /// Start a new log segment once the current one reaches this many bytes.
    #[arg(long, default_value_t = 64 << 20)]
    segment_bytes: u64,
    /// Serve Prometheus metrics at http://ADDR/metrics.
    #[arg(long)]
    metrics: Option<SocketAddr>,
    /// Threads that run the node. 1 (the default) runs it all on one thread, only log syncs
    /// going to a blocking thread: the fewest cross-thread wake-ups per request, the best
    /// when several nodes share a machine (as `cluster up`'s do). More threads help a node
    /// that has a machine of its own and many clients.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..=1024))]
    threads: u16,
}

/// Where a node serves etcd's v3 API.
#[derive(clap::Args)]
pub struct GrpcArgs {
    /// Serve etcd's v3 gRPC API (KV, Watch, Lease, Cluster, Maintenance) at ADDR, so that
    /// etcdctl and etcd's client libraries work against the cluster.
    #[arg(long)]
    grpc: Option<SocketAddr>,
    /// Every node's gRPC address, in --peers order (what `member list` reports as client
    /// URLs); this node's entry is its --grpc address if that is not given.
    #[arg(long, value_delimiter = ',')]
    grpc_members: Vec<SocketAddr>,
}

impl GrpcArgs {
    /// The node's gRPC configuration (none if it serves no gRPC), or why the arguments do
    /// not make one.
    pub fn config(self, id: u64, peers: usize) -> anyhow::Result<Option<tcp::GrpcConfig>> {
        let GrpcArgs { grpc, grpc_members } = self;
        if !grpc_members.is_empty() && grpc_members.len() != peers {
            anyhow::bail!(
                "--grpc-members has {} addresses but --peers has {peers}",
                grpc_members.len()
            );
        }
        let Some(addr) = grpc.or_else(|| grpc_members.get(id as usize).copied()) else {
            return Ok(None);
        };
        let mut members: Vec<Option<SocketAddr>> = if grpc_members.is_empty() {
            vec![None; peers]
        } else {
            grpc_members.into_iter().map(Some).collect()
        };
        if let Some(mine) = members.get_mut(id as usize) {
            *mine = Some(addr);
        }
        Ok(Some(tcp::GrpcConfig {
            addr,
            etcd: flotilla_kvraft::etcd::EtcdConfig {
                grpc_members: members,
            },
        }))
    }
}

impl NodeArgs {
    /// The runtime the node runs on (`--threads`).
    pub fn runtime(&self) -> anyhow::Result<tokio::runtime::Runtime> {
        let mut builder = match self.threads {
            1 => tokio::runtime::Builder::new_current_thread(),
            n => {
                let mut builder = tokio::runtime::Builder::new_multi_thread();
                builder.worker_threads(n as usize);
                builder
            }
        };
        Ok(builder.enable_all().build()?)
    }

    /// The node's configuration, or why the arguments do not make one.
    pub fn config(self) -> anyhow::Result<NodeConfig> {
        let NodeArgs {
            id,
            peers,
            data,
            name,
            max_raft_state,
            segment_bytes,
            metrics,
            threads: _,
        } = self;
        if id as usize >= peers.len() {
            anyhow::bail!(
                "--id {id} is not an index of --peers ({} addresses: 0 to {})",
                peers.len(),
                peers.len() - 1
            );
        }
        let cluster = ClusterId {
            name,
            members: peers,
        };
        let mut config = NodeConfig::new(cluster, id, data);
        config.rsm.max_raft_state = (max_raft_state > 0).then_some(max_raft_state);
        config.wal.segment_bytes = segment_bytes;
        config.metrics = metrics;
        Ok(config)
    }
}

/// Runs a node on `runtime` to its end: exit code 0 after a shutdown, the storage-failure
/// exit (74) after its storage failed.
pub fn serve_node(
    runtime: tokio::runtime::Runtime,
    serve: impl std::future::Future<Output = Result<(), RunError>>,
) -> anyhow::Result<ExitCode> {
    match runtime.block_on(serve) {
        Ok(()) => Ok(ExitCode::SUCCESS),
        Err(RunError::Storage { id, source }) => {
            flotilla_node::exit_after_storage_failure(id, source)
        }
        Err(e) => Err(e.into()),
    }
}

#[derive(Subcommand)]
pub enum ClusterCommand {
    /// Start a local cluster on loopback as child processes, print the addresses, and stop
    /// it on Ctrl-C (or SIGTERM).
    Up {
        #[arg(long, default_value_t = 3)]
        nodes: usize,
        /// Where the nodes keep their data (DIR/node-I) and logs (DIR/node-I.log); a
        /// directory used before restarts its cluster.
        #[arg(long)]
        dir: PathBuf,
        /// Node I listens on 127.0.0.1:(PORT + I); 0 picks free ports.
        #[arg(long, default_value_t = 7100)]
        base_port: u16,
        #[arg(long, default_value = "flotilla")]
        name: String,
        /// Node I serves etcd's v3 API on 127.0.0.1:(PORT + I); 0 picks free ports. By
        /// default PORT is --base-port + 100 (free ports if --base-port is 0).
        #[arg(long)]
        grpc_base_port: Option<u16>,
        /// Start the sharded store instead: a controller of --nodes nodes and this many
        /// shard groups (1 to 12, the store's shards) of --nodes nodes each (gids 100, 101,
        /// ...), all joined. Ports from --base-port: the controller's first, then each
        /// group's.
        #[arg(long, value_parser = crate::shard::parse_groups)]
        groups: Option<usize>,
    },
}

pub fn cluster(command: ClusterCommand) -> anyhow::Result<ExitCode> {
    let ClusterCommand::Up {
        nodes,
        dir,
        base_port,
        name,
        grpc_base_port,
        groups,
    } = command;
    if nodes == 0 {
        anyhow::bail!("--nodes must be at least 1");
    }
    if let Some(groups) = groups {
        return crate::shard::cluster_up(nodes, groups, &dir, base_port, &name);
    }
    let exe = std::env::current_exe()?;
    let grpc_base = grpc_base_port.unwrap_or(if base_port == 0 {
        0
    } else {
        base_port.checked_add(100).ok_or_else(|| {
            anyhow::anyhow!("--base-port {base_port} + 100 is past 65535: give --grpc-base-port")
        })?
    });
    let (members, grpc) = if base_port == 0 && grpc_base == 0 {
        // Free ports for both, asked for at once so that none is handed out twice.
        let mut free = local::loopback_addresses(2 * nodes, 0)?;
        let grpc = free.split_off(nodes);
        (free, grpc)
    } else {
        (
            local::loopback_addresses(nodes, base_port)?,
            local::loopback_addresses(nodes, grpc_base)?,
        )
    };
    let grpc_arg = grpc
        .iter()
        .map(|a| a.to_string())
        .collect::<Vec<_>>()
        .join(",");
    let runtime = crate::tokio_runtime()?;
    let stop = shutdown_signals(runtime.handle())?;
    let mut cluster =
        LocalCluster::start(&exe, &dir, &name, members, &["--grpc-members", &grpc_arg])?;
    println!(
        "flotilla cluster: {nodes} nodes, data and logs in {}",
        dir.display()
    );
    for (i, addr) in cluster.members().iter().enumerate() {
        println!(
            "  node {i}: {addr} (pid {}), etcd API {}",
            cluster.pid(i).unwrap_or(0),
            grpc[i]
        );
    }
    println!("clients: --cluster {}", cluster.members_arg());
    println!("etcd clients: --endpoints {grpc_arg}");
    runtime.block_on(async {
        match local::wait_for_leader(cluster.members(), Duration::from_secs(10)).await {
            Some(leader) => println!(
                "node {} leads term {}; Ctrl-C stops the cluster",
                leader.id, leader.term
            ),
            None => println!("no leader yet after 10 s (see the logs); Ctrl-C stops the cluster"),
        }
        stop.await;
    });
    cluster.stop(Duration::from_secs(5));
    println!("flotilla cluster: stopped");
    Ok(ExitCode::SUCCESS)
}

pub fn demo() -> anyhow::Result<ExitCode> {
    let exe = std::env::current_exe()?;
    crate::tokio_runtime()?
        .block_on(flotilla_kvraft::demo::run(&exe))
        .map_err(|e| anyhow::anyhow!("demo failed: {e}"))?;
    Ok(ExitCode::SUCCESS)
}

pub fn run(command: KvraftCommand) -> anyhow::Result<ExitCode> {
    match command {
        KvraftCommand::Serve { node, grpc } => {
            let runtime = node.runtime()?;
            let config = node.config()?;
            let grpc = grpc.config(config.id, config.cluster.members.len())?;
            serve_node(runtime, tcp::serve(config, grpc, shutdown_signal()))
        }
        KvraftCommand::Status { cluster } => {
            let reports = crate::tokio_runtime()?.block_on(local::reports(&cluster));
            let mut answered = 0;
            for (addr, report) in cluster.iter().zip(reports) {
                match report {
                    None => println!("{addr}: no answer"),
                    Some(r) => {
                        answered += 1;
                        println!(
                            "node {} {}: {} term {} leader {} commit {} applied {} log {}..={} ({} B in {} segment(s)) snapshot {} ({} B) syncs {}",
                            r.id, r.addr, r.role, r.term,
                            r.leader.map_or("?".to_string(), |l| l.to_string()),
                            r.commit, r.applied, r.first_index, r.last_index,
                            r.log_bytes, r.segments, r.snapshot_index, r.snapshot_bytes, r.syncs
                        );
                        for f in &r.followers {
                            println!(
                                "  follower {}: match {} next {} {}",
                                f.id, f.matched, f.next, f.state
                            );
                        }
                    }
                }
            }
            Ok(if answered == cluster.len() {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            })
        }
    }
}

/// Resolves at Ctrl-C or SIGTERM (the handlers installed when first polled).
pub async fn shutdown_signal() {
    shutdown_signals(&tokio::runtime::Handle::current())
        .expect("SIGINT and SIGTERM handlers can be installed")
        .await
}

/// Installs the Ctrl-C (SIGINT) and SIGTERM handlers now, on `runtime`; the future resolves
/// at either. A program installs them before it says "Ctrl-C stops ...", so that a signal
/// right after that line is handled, not fatal.
pub fn shutdown_signals(
    runtime: &tokio::runtime::Handle,
) -> std::io::Result<impl std::future::Future<Output = ()> + Send + 'static> {
    use tokio::signal::unix::{signal, SignalKind};
    let _context = runtime.enter();
    let mut term = signal(SignalKind::terminate())?;
    let mut interrupt = signal(SignalKind::interrupt())?;
    Ok(async move {
        tokio::select! {
            _ = interrupt.recv() => {}
            _ = term.recv() => {}
        }
    })
}
