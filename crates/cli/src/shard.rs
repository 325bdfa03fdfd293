//! `flotilla shardctrler serve`, `flotilla shardkv serve`, `flotilla shard ...` and
//! `flotilla cluster up --groups G`: the sharded store over TCP.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::bail;
use clap::Subcommand;
use flotilla_kv::bench;
use flotilla_kv::tcp::{random_client_id, ClerkOptions};
use flotilla_shardctrler::tcp::TcpCtrlClerk;
use flotilla_shardctrler::Gid;
use flotilla_shardkv::local::{addresses_arg, LocalShardedStore};
use flotilla_shardkv::tcp::{self as shard_tcp, ShardClerkOptions, TcpShardClerk, SHARDING};

use crate::kvraft::{serve_node, shutdown_signal, shutdown_signals, NodeArgs};

#[derive(Subcommand)]
pub enum ShardctrlerCommand {
    /// Run node ID of the shard controller until interrupted. It keeps the configurations
    /// of a store sharded as the real store is (12 shards).
    Serve {
        #[command(flatten)]
        node: NodeArgs,
    },
}

#[derive(Subcommand)]
pub enum ShardkvCommand {
    /// Run node ID of shard group --gid until interrupted; the group follows the
    /// controller at --ctrl and serves the shards its configurations give it.
    Serve {
        /// The group's id (not 0). Join it with `flotilla shard join`.
        #[arg(long)]
        gid: Gid,
        /// The controller's nodes.
        #[arg(long, value_delimiter = ',', required = true)]
        ctrl: Vec<SocketAddr>,
        #[command(flatten)]
        node: NodeArgs,
    },
}

/// `--ctrl A1,A2,A3`: the controller's nodes, which tell where every shard is.
#[derive(clap::Args)]
pub struct CtrlArg {
    #[arg(long, value_delimiter = ',', required = true)]
    ctrl: Vec<SocketAddr>,
}

#[derive(Subcommand)]
pub enum ShardCommand {
    /// Add a group (its servers' addresses) to the store; shards rebalance onto it.
    Join {
        #[command(flatten)]
        ctrl: CtrlArg,
        #[arg(long)]
        gid: Gid,
        #[arg(long, value_delimiter = ',', required = true)]
        servers: Vec<SocketAddr>,
    },
    /// Remove groups; their shards move to the others.
    Leave {
        #[command(flatten)]
        ctrl: CtrlArg,
        #[arg(long, value_delimiter = ',', required = true)]
        gid: Vec<Gid>,
    },
    /// Put one shard at one group.
    Move {
        #[command(flatten)]
        ctrl: CtrlArg,
        #[arg(long)]
        shard: usize,
        #[arg(long)]
        gid: Gid,
    },
    /// The latest configuration, and each group node's configuration, shards and role.
    Status {
        #[command(flatten)]
        ctrl: CtrlArg,
    },
    /// Print a key's value (and version).
    Get {
        #[command(flatten)]
        ctrl: CtrlArg,
        key: String,
    },
    /// Set a key's value.
    Put {
        #[command(flatten)]
        ctrl: CtrlArg,
        key: String,
        value: String,
    },
    /// Append to a key's value; prints the value before.
    Append {
        #[command(flatten)]
        ctrl: CtrlArg,
        key: String,
        value: String,
    },
    /// Bounded load through the sharded clerk: prints ops/s and latency, optionally writes
    /// the history for `flotilla check`.
    Bench {
        #[command(flatten)]
        ctrl: CtrlArg,
        #[command(flatten)]
        load: crate::BenchLoad,
    },
}

pub fn ctrler(command: ShardctrlerCommand) -> anyhow::Result<ExitCode> {
    let ShardctrlerCommand::Serve { node } = command;
    let runtime = node.runtime()?;
    let config = node.config()?;
    serve_node(
        runtime,
        flotilla_shardctrler::tcp::serve(config, SHARDING.shards(), shutdown_signal()),
    )
}

pub fn group(command: ShardkvCommand) -> anyhow::Result<ExitCode> {
    let ShardkvCommand::Serve { gid, ctrl, node } = command;
    if gid == flotilla_shardctrler::NO_GROUP {
        bail!("--gid 0 is no group: pick another");
    }
    let runtime = node.runtime()?;
    let config = node.config()?;
    serve_node(
        runtime,
        shard_tcp::serve(config, gid, ctrl, shutdown_signal()),
    )
}

fn clerk(ctrl: &CtrlArg) -> anyhow::Result<TcpShardClerk> {
    Ok(TcpShardClerk::new(
        ctrl.ctrl.clone(),
        random_client_id(),
        ShardClerkOptions::default(),
    )?)
}

pub fn run(command: ShardCommand) -> anyhow::Result<ExitCode> {
    crate::tokio_runtime()?.block_on(shard(command))
}

async fn change(
    ctrl: &CtrlArg,
    what: &str,
    change: impl AsyncFnOnce(
        &mut TcpCtrlClerk,
    ) -> Result<
        flotilla_shardctrler::ctrler::ChangeResult,
        flotilla_shardctrler::tcp::CtrlUnreachable,
    >,
) -> anyhow::Result<ExitCode> {
    let mut admin = TcpCtrlClerk::new(ctrl.ctrl.clone(), random_client_id())?;
    match change(&mut admin).await? {
        Ok(num) => {
            println!("{what}: configuration {num}");
            Ok(ExitCode::SUCCESS)
        }
        Err(e) => {
            eprintln!("{what} refused: {e}");
            Ok(ExitCode::FAILURE)
        }
    }
}

async fn shard(command: ShardCommand) -> anyhow::Result<ExitCode> {
    match command {
        ShardCommand::Join { ctrl, gid, servers } => {
            let names = servers.iter().map(|a| a.to_string()).collect();
            change(&ctrl, &format!("join of group {gid}"), async |admin| {
                admin.join(BTreeMap::from([(gid, names)])).await
            })
            .await
        }
        ShardCommand::Leave { ctrl, gid } => {
            change(&ctrl, &format!("leave of {gid:?}"), async |admin| {
                admin.leave(gid.clone()).await
            })
            .await
        }
        ShardCommand::Move { ctrl, shard, gid } => {
            if shard >= SHARDING.shards() {
                bail!(
                    "--shard {shard}: the store has shards 0 to {}",
                    SHARDING.shards() - 1
                );
            }
            change(
                &ctrl,
                &format!("move of shard {shard} to {gid}"),
                async |admin| admin.move_shard(shard, gid).await,
            )
            .await
        }
        ShardCommand::Status { ctrl } => status(&ctrl).await,
        ShardCommand::Get { ctrl, key } => match clerk(&ctrl)?.get(&key).await? {
            Ok((value, version)) => {
                println!("{value}");
                eprintln!("(version {version})");
                Ok(ExitCode::SUCCESS)
            }
            Err(e) => {
                eprintln!("{key}: {e}");
                Ok(ExitCode::FAILURE)
            }
        },
        ShardCommand::Put { ctrl, key, value } => {
            clerk(&ctrl)?.put(&key, &value).await?;
            Ok(ExitCode::SUCCESS)
        }
        ShardCommand::Append { ctrl, key, value } => {
            println!("{}", clerk(&ctrl)?.append(&key, &value).await?);
            Ok(ExitCode::SUCCESS)
        }
        ShardCommand::Bench { ctrl, load } => {
            let config = load.config(ctrl.ctrl[0], ClerkOptions::default())?;
            let clerks = (0..load.clients)
                .map(|_| clerk(&ctrl))
                .collect::<anyhow::Result<_>>()?;
            let report = bench::run_clerks(&config, clerks).await?;
            load.print(&report);
            Ok(ExitCode::SUCCESS)
        }
    }
}

async fn status(ctrl: &CtrlArg) -> anyhow::Result<ExitCode> {
    let mut admin = TcpCtrlClerk::new(ctrl.ctrl.clone(), random_client_id())?;
    admin.deadline = Duration::from_secs(5);
    let config = admin.query(None).await?;
    println!("configuration {}", config.num);
    for (gid, servers) in &config.groups {
        println!(
            "  group {gid}: shards {:?} servers {}",
            config.shards_of(*gid),
            servers.join(",")
        );
    }
    let mut all_answered = true;
    for (gid, servers) in &config.groups {
        for name in servers {
            let Ok(addr) = name.parse::<SocketAddr>() else {
                println!("  {name}: not an address");
                all_answered = false;
                continue;
            };
            match shard_tcp::status(addr, Duration::from_secs(2)).await {
                Ok(s) => println!(
                    "  group {gid} node {} {addr}: {} term {} commit {} applied {} at configuration {} shards {:?} keys {}",
                    s.node.id, s.node.role, s.node.term, s.node.commit, s.node.applied, s.config, s.shards, s.keys
                ),
                Err(e) => {
                    all_answered = false;
                    println!("  group {gid} {addr}: no answer ({e})")
                }
            }
        }
    }
    Ok(if all_answered {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// `--groups G` of `cluster up`: 1 to the store's number of shards (a group beyond that
/// would hold no shard).
pub fn parse_groups(text: &str) -> Result<usize, String> {
    let shards = SHARDING.shards();
    match text.parse::<usize>() {
        Ok(groups) if (1..=shards).contains(&groups) => Ok(groups),
        _ => Err(format!(
            "{text:?} is no number of groups from 1 to {shards} (the store has {shards} shards)"
        )),
    }
}

/// `flotilla cluster up --groups G`.
pub fn cluster_up(
    nodes: usize,
    groups: usize,
    dir: &Path,
    base_port: u16,
    name: &str,
) -> anyhow::Result<ExitCode> {
    let exe = std::env::current_exe()?;
    let runtime = crate::tokio_runtime()?;
    let stop = shutdown_signals(runtime.handle())?;
    let mut store = LocalShardedStore::start(&exe, dir, name, nodes, groups, base_port, &[])?;
    println!(
        "flotilla cluster: the sharded store, a controller and {groups} group(s) of {nodes} node(s), data and logs in {}",
        dir.display()
    );
    println!(
        "  controller: {}",
        addresses_arg(store.controller_members())
    );
    for (gid, cluster) in &store.groups {
        println!("  group {gid}: {}", addresses_arg(cluster.members()));
    }
    let ctrl = addresses_arg(store.controller_members());
    let outcome = runtime.block_on(async {
        store.wait_ready(Duration::from_secs(20)).await?;
        let num = store.join_all().await?;
        Ok::<u64, String>(num)
    });
    match outcome {
        Ok(num) => println!("every group joined (configuration {num}); clients: --ctrl {ctrl}"),
        Err(e) => println!("not ready: {e} (see the logs); clients: --ctrl {ctrl}"),
    }
    println!("Ctrl-C stops the store");
    runtime.block_on(stop);
    store.stop(Duration::from_secs(5));
    println!("flotilla cluster: stopped");
    Ok(ExitCode::SUCCESS)
}

/// `flotilla bench shardkv-scaling`.
pub fn bench_scaling(
    groups: &[usize],
    nodes: usize,
    clients: usize,
    duration: Duration,
    keys: usize,
    value_size: usize,
    get_share: f64,
) -> anyhow::Result<ExitCode> {
    if groups.contains(&0) || nodes == 0 || clients == 0 {
        bail!("--groups, --nodes and --clients must be at least 1");
    }
    if let Some(g) = groups.iter().find(|&&g| g > SHARDING.shards()) {
        bail!(
            "--groups {g}: at most {} (the store's shards)",
            SHARDING.shards()
        );
    }
    if !(0.0..=1.0).contains(&get_share) {
        bail!("--get-share must be in [0, 1]");
    }
    let exe = std::env::current_exe()?;
    let load = flotilla_shardkv::bench::Load {
        clients,
        duration,
        keys,
        value_size,
        get_share,
    };
    let rows = crate::tokio_runtime()?
        .block_on(flotilla_shardkv::bench::scaling(&exe, nodes, groups, load))?;
    println!("| groups | ops/s | p50 | p99 | resends | failed |");
    println!("|---|---|---|---|---|---|");
    for (g, r) in rows {
        println!(
            "| {g} | {:.0} | {:.1} ms | {:.1} ms | {} | {} |",
            r.ops_per_sec(),
            r.p50.as_secs_f64() * 1e3,
            r.p99.as_secs_f64() * 1e3,
            r.resends,
            r.failed
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// `flotilla bench shard-move`.
pub fn bench_move(
    keys: usize,
    value_size: usize,
    nodes: usize,
    runs: usize,
) -> anyhow::Result<ExitCode> {
    if keys == 0 || nodes == 0 || runs == 0 {
        bail!("--keys, --nodes and --runs must be at least 1");
    }
    let exe = std::env::current_exe()?;
    let runtime = crate::tokio_runtime()?;
    println!("| run | shard | keys | bytes | load | served after | dropped after |");
    println!("|---|---|---|---|---|---|---|");
    for run in 1..=runs {
        let r = runtime.block_on(flotilla_shardkv::bench::shard_move(
            &exe, nodes, keys, value_size,
        ))?;
        println!(
            "| {run} | {} | {} | {} | {:.2} s | {:.0} ms | {:.0} ms |",
            r.shard,
            r.keys,
            r.bytes,
            r.load.as_secs_f64(),
            r.served.as_secs_f64() * 1e3,
            r.dropped.as_secs_f64() * 1e3
        );
    }
    Ok(ExitCode::SUCCESS)
}
