//! Benchmarks of the sharded store as real processes on loopback ([`crate::local`]):
//! throughput as groups are added ([`scaling`]), and how long one shard's migration takes
//! ([`shard_move`]). `flotilla bench shardkv-scaling` and `flotilla bench shard-move` print
//! them; BENCHMARKS.md records the figures.
//!
//! Every wait is bounded, and every run's data lives in a temporary directory removed
//! afterwards.

use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use flotilla_kv::bench::{self, BenchConfig, BenchReport};
use flotilla_kv::tcp::{random_client_id, ClerkOptions};
use flotilla_shardctrler::tcp::TcpCtrlClerk;
use flotilla_shardctrler::Gid;

use crate::local::{LocalShardedStore, FIRST_GID};
use crate::tcp::{self, ShardClerkOptions, TcpShardClerk, SHARDING};
use crate::ShardState;

/// How long the store may take to elect its leaders, join, or finish a migration.
const READY: Duration = Duration::from_secs(30);

/// The load of one scaling run.
#[derive(Clone, Copy, Debug)]
pub struct Load {
    pub clients: usize,
    pub duration: Duration,
    pub keys: usize,
    pub value_size: usize,
    pub get_share: f64,
}

fn clerks(ctrl: &[SocketAddr], n: usize) -> anyhow::Result<Vec<TcpShardClerk>> {
    (0..n)
        .map(|_| {
            TcpShardClerk::new(
                ctrl.to_vec(),
                random_client_id(),
                ShardClerkOptions::default(),
            )
            .map_err(anyhow::Error::from)
        })
        .collect()
}

async fn started(
    exe: &Path,
    dir: &Path,
    nodes: usize,
    groups: usize,
) -> anyhow::Result<LocalShardedStore> {
    let store = LocalShardedStore::start(exe, dir, "bench", nodes, groups, 0, &[])
        .context("starting the store's processes")?;
    store
        .wait_ready(READY)
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    store.join_all().await.map_err(|e| anyhow::anyhow!("{e}"))?;
    Ok(store)
}

/// For each count in `groups`: a fresh store of that many groups of `nodes` nodes (and a
/// controller), every group joined and settled, then `load` through the sharded clerk.
pub async fn scaling(
    exe: &Path,
    nodes: usize,
    groups: &[usize],
    load: Load,
) -> anyhow::Result<Vec<(usize, BenchReport)>> {
    let mut rows = Vec::new();
    for &g in groups {
        let dir = tempfile::tempdir()?;
        let mut store = started(exe, dir.path(), nodes, g).await?;
        let ctrl = store.controller_members().to_vec();
        settle(&store, 1).await?;
        let config = BenchConfig {
            server: ctrl[0],
            clients: load.clients,
            duration: load.duration,
            keys: load.keys,
            value_size: load.value_size,
            append_share: 0.0,
            get_share: load.get_share,
            history: None,
            clerk: ClerkOptions::default(),
        };
        let report = bench::run_clerks(&config, clerks(&ctrl, load.clients)?).await;
        store.stop(Duration::from_secs(5));
        rows.push((g, report?));
    }
    Ok(rows)
}

/// Waits until every node of every group is at configuration `num` or later with every
/// shard it holds served.
async fn settle(store: &LocalShardedStore, num: u64) -> anyhow::Result<()> {
    let deadline = Instant::now() + READY;
    loop {
        let mut settled = true;
        for (_, cluster) in &store.groups {
            for &addr in cluster.members() {
                match tcp::status(addr, Duration::from_millis(500)).await {
                    Ok(s)
                        if s.config >= num
                            && s.shards.values().all(|st| *st == ShardState::Serving) => {}
                    _ => settled = false,
                }
            }
        }
        if settled {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("the groups did not settle at configuration {num} within {READY:?}");
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// What one shard's migration took.
#[derive(Clone, Debug)]
pub struct MoveReport {
    pub shard: usize,
    pub keys: usize,
    /// Bytes of keys and values in the shard.
    pub bytes: usize,
    /// Writing the keys (through the clerk, 32 at a time).
    pub load: Duration,
    /// From the `Move` until the new owner's leader serves the shard.
    pub served: Duration,
    /// From the `Move` until no node of the old owner holds the shard any more.
    pub dropped: Duration,
}

/// Two groups of `nodes` nodes; `keys` keys of `value_size`-byte values written into one
/// shard of the first group; the shard moved to the second. Every key is read back from its
/// new owner afterwards.
pub async fn shard_move(
    exe: &Path,
    nodes: usize,
    keys: usize,
    value_size: usize,
) -> anyhow::Result<MoveReport> {
    let dir = tempfile::tempdir()?;
    let mut store = started(exe, dir.path(), nodes, 2).await?;
    let outcome = measure_move(&store, keys, value_size).await;
    store.stop(Duration::from_secs(5));
    outcome
}

async fn measure_move(
    store: &LocalShardedStore,
    keys: usize,
    value_size: usize,
) -> anyhow::Result<MoveReport> {
    let (from, to): (Gid, Gid) = (FIRST_GID, FIRST_GID + 1);
    let ctrl = store.controller_members().to_vec();
    let mut admin = TcpCtrlClerk::new(ctrl.clone(), random_client_id())?;
    let config = admin.query(None).await?;
    let shard = *config
        .shards_of(from)
        .first()
        .context("the first group holds no shard")?;
    settle(store, config.num).await?;
    let names: Vec<String> = (0u64..)
        .map(|i| format!("m{i}"))
        .filter(|k| SHARDING.shard_of(k) == shard)
        .take(keys)
        .collect();
    let value = move |key: &str| {
        let mut v = format!("{key}=");
        while v.len() < value_size {
            v.push('x');
        }
        v
    };
    let bytes = names.iter().map(|k| k.len() + value(k).len()).sum();
    let loaded = Instant::now();
    let writers = 32.min(keys.max(1));
    let mut tasks = Vec::new();
    for (w, mut clerk) in clerks(&ctrl, writers)?.into_iter().enumerate() {
        let mine: Vec<String> = names.iter().skip(w).step_by(writers).cloned().collect();
        tasks.push(tokio::spawn(async move {
            for key in mine {
                let v = value(&key);
                clerk.put(&key, &v).await?;
            }
            Ok::<(), flotilla_kv::tcp::ClerkError>(())
        }));
    }
    for task in tasks {
        task.await??;
    }
    let load = loaded.elapsed();

    let moved = Instant::now();
    match admin.move_shard(shard, to).await? {
        Ok(_) => {}
        Err(e) => bail!("move refused: {e}"),
    }
    let (mut served, mut dropped) = (None, None);
    let deadline = moved + READY;
    while served.is_none() || dropped.is_none() {
        if Instant::now() > deadline {
            bail!("shard {shard} did not finish moving within {READY:?}");
        }
        if served.is_none() {
            for &addr in store.group(to).expect("group").members() {
                if let Ok(s) = tcp::status(addr, Duration::from_millis(500)).await {
                    if s.node.role == "Leader" && s.shards.get(&shard) == Some(&ShardState::Serving)
                    {
                        served = Some(moved.elapsed());
                    }
                }
            }
        }
        if dropped.is_none() {
            let mut held = false;
            for &addr in store.group(from).expect("group").members() {
                match tcp::status(addr, Duration::from_millis(500)).await {
                    Ok(s) if !s.shards.contains_key(&shard) => {}
                    _ => held = true,
                }
            }
            if !held {
                dropped = Some(moved.elapsed());
            }
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let mut reader = clerks(&ctrl, 1)?.pop().expect("one clerk");
    for key in &names {
        match reader.get(key).await? {
            Ok((v, _)) if v == value(key) => {}
            other => bail!("after the move, {key} reads {other:?}"),
        }
    }
    Ok(MoveReport {
        shard,
        keys: names.len(),
        bytes,
        load,
        served: served.expect("set above"),
        dropped: dropped.expect("set above"),
    })
}
