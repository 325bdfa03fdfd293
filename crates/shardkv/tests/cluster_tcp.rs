//! The sharded store over TCP in one process: a controller of 3 nodes and two shard groups
//! of 3 nodes each, every node on its own loopback port with its data in a temporary
//! directory. Clerks append under load while shards move between the groups (joins, a move,
//! a leave and a rejoin) and while a group's leader stops and restarts; then every
//! acknowledged append is read back exactly once, in order.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use flotilla_runtime::{free_loopback_addrs as free_addrs, ClusterId, NodeConfig, NodeTask};
use flotilla_shardctrler::tcp::TcpCtrlClerk;
use flotilla_shardkv::tcp::{self, ShardClerkOptions, TcpShardClerk, SHARDING};
use flotilla_shardkv::ShardState;
use tokio::task::JoinHandle;

/// The bound on the whole test; reaching it fails it.
const WHOLE_TEST: Duration = Duration::from_secs(150);

type Running = NodeTask;

async fn stop(node: Running) {
    node.stop().await.unwrap();
}

fn node_config(name: &str, members: &[SocketAddr], id: u64, dir: &Path) -> NodeConfig {
    let cluster = ClusterId {
        name: name.into(),
        members: members.to_vec(),
    };
    let mut config = NodeConfig::new(cluster, id, dir.join(format!("{name}-{id}")));
    // Small snapshots, so shards also travel inside Raft snapshots.
    config.rsm.max_raft_state = Some(64 << 10);
    config
}

fn start_controller(members: &[SocketAddr], id: u64, dir: &Path) -> Running {
    let config = node_config("ctrl", members, id, dir);
    NodeTask::spawn(|shutdown| {
        flotilla_shardctrler::tcp::serve(config, SHARDING.shards(), shutdown)
    })
}

fn start_group_node(
    gid: u64,
    members: &[SocketAddr],
    id: u64,
    controller: &[SocketAddr],
    dir: &Path,
) -> Running {
    let config = node_config(&format!("group-{gid}"), members, id, dir);
    let controller = controller.to_vec();
    NodeTask::spawn(move |shutdown| tcp::serve(config, gid, controller, shutdown))
}

fn names(members: &[SocketAddr]) -> Vec<String> {
    members.iter().map(|a| a.to_string()).collect()
}

/// Polls until every node of `members` is at configuration `num` with every shard it holds
/// served, and no shard is frozen anywhere (at most 30 s).
async fn settled(groups: &[&[SocketAddr]], num: u64) -> Result<(), String> {
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut last = String::new();
    while Instant::now() < deadline {
        let mut all = true;
        for members in groups {
            for &addr in *members {
                match tcp::status(addr, Duration::from_secs(1)).await {
                    Ok(s)
                        if s.config >= num
                            && s.shards.values().all(|st| *st == ShardState::Serving) => {}
                    Ok(s) => {
                        all = false;
                        last = format!("{addr}: at {} with {:?}", s.config, s.shards);
                    }
                    Err(e) => {
                        all = false;
                        last = e;
                    }
                }
            }
        }
        if all {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Err(format!(
        "not settled at configuration {num} in 30 s: {last}"
    ))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn appends_survive_shards_moving_between_groups_and_a_leader_restarting() {
    tokio::time::timeout(WHOLE_TEST, scenario())
        .await
        .expect("the test took too long");
}

async fn scenario() {
    let dir = tempfile::tempdir().unwrap();
    // One call for all nine: ports taken by separate calls are free again in between, so
    // two of them could hand out the same one (CI once gave a group member the port of a
    // controller node).
    let addrs = free_addrs(9);
    let (ctrl, g100, g101) = (
        addrs[0..3].to_vec(),
        addrs[3..6].to_vec(),
        addrs[6..9].to_vec(),
    );
    let mut controller: Vec<Running> = (0..3)
        .map(|i| start_controller(&ctrl, i, dir.path()))
        .collect();
    let mut group100: Vec<Option<Running>> = (0..3)
        .map(|i| Some(start_group_node(100, &g100, i, &ctrl, dir.path())))
        .collect();
    let group101: Vec<Running> = (0..3)
        .map(|i| start_group_node(101, &g101, i, &ctrl, dir.path()))
        .collect();

    let mut admin = TcpCtrlClerk::new(ctrl.clone(), 1).unwrap();
    let joined = admin
        .join(BTreeMap::from([(100, names(&g100))]))
        .await
        .expect("the controller answers");
    assert_eq!(joined, Ok(1));

    // Clients append their own numbered items to shared keys for the whole run.
    const CLIENTS: u64 = 4;
    const KEYS: u64 = 24;
    let (done_tx, done_rx) = tokio::sync::watch::channel(false);
    let clients: Vec<JoinHandle<Vec<(String, String)>>> = (0..CLIENTS)
        .map(|c| {
            let ctrl = ctrl.clone();
            let done = done_rx.clone();
            tokio::spawn(async move {
                let mut clerk =
                    TcpShardClerk::new(ctrl, 1000 + c, ShardClerkOptions::default()).unwrap();
                let mut acked = Vec::new();
                let mut n = 0u64;
                while !*done.borrow() {
                    let key = format!("key-{}", (n * 7 + c) % KEYS);
                    let item = format!("c{c}.{n};");
                    clerk
                        .append(&key, &item)
                        .await
                        .unwrap_or_else(|e| panic!("client {c}: append {n}: {e}"));
                    acked.push((key, item));
                    n += 1;
                }
                acked
            })
        })
        .collect();

    let pause = || tokio::time::sleep(Duration::from_millis(300));
    pause().await;
    assert_eq!(
        admin
            .join(BTreeMap::from([(101, names(&g101))]))
            .await
            .unwrap(),
        Ok(2)
    );
    settled(&[&g100, &g101], 2).await.unwrap();
    let config = admin.query(None).await.unwrap();
    assert!(
        config.shards_of(100).len() == 6 && config.shards_of(101).len() == 6,
        "{config:?}"
    );
    pause().await;
    // A shard of group 100 moves to 101 while 100's leader is stopped and comes back.
    let leader = loop {
        let mut found = None;
        for (i, &addr) in g100.iter().enumerate() {
            if let Ok(s) = tcp::status(addr, Duration::from_secs(1)).await {
                if s.node.role == "Leader" {
                    found = Some(i);
                }
            }
        }
        if let Some(i) = found {
            break i;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let shard = config.shards_of(100)[0];
    stop(group100[leader].take().unwrap()).await;
    assert_eq!(admin.move_shard(shard, 101).await.unwrap(), Ok(3));
    pause().await;
    group100[leader] = Some(start_group_node(
        100,
        &g100,
        leader as u64,
        &ctrl,
        dir.path(),
    ));
    settled(&[&g100, &g101], 3).await.unwrap();
    // Everything to 101, then 100 back.
    assert_eq!(admin.leave(vec![100]).await.unwrap(), Ok(4));
    settled(&[&g100, &g101], 4).await.unwrap();
    let at_4 = tcp::status(g100[0], Duration::from_secs(1)).await.unwrap();
    assert!(
        at_4.shards.is_empty(),
        "group 100 left but holds {:?}",
        at_4.shards
    );
    pause().await;
    assert_eq!(
        admin
            .join(BTreeMap::from([(100, names(&g100))]))
            .await
            .unwrap(),
        Ok(5)
    );
    settled(&[&g100, &g101], 5).await.unwrap();
    pause().await;
    // A controller node restarts; the store keeps going.
    stop(controller.remove(0)).await;
    controller.insert(0, start_controller(&ctrl, 0, dir.path()));
    pause().await;

    done_tx.send(true).unwrap();
    let mut expected: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let mut total = 0;
    for client in clients {
        for (key, item) in client.await.unwrap() {
            expected.entry(key).or_default().push(item);
            total += 1;
        }
    }
    assert!(total >= 50, "only {total} appends acknowledged");
    let mut reader = TcpShardClerk::new(ctrl.clone(), 9, ShardClerkOptions::default()).unwrap();
    for key in (0..KEYS).map(|k| format!("key-{k}")) {
        let value = match reader.get(&key).await.unwrap() {
            Ok((value, _)) => value,
            Err(_) => String::new(),
        };
        let items: Vec<&str> = value.split_inclusive(';').collect();
        let want = expected.remove(&key).unwrap_or_default();
        // Each acknowledged item exactly once, each client's in the order it appended.
        for item in &want {
            let found = items.iter().filter(|i| **i == item.as_str()).count();
            assert_eq!(found, 1, "{key}: {item} found {found} times in {value:?}");
        }
        for c in 0..CLIENTS {
            let prefix = format!("c{c}.");
            let mine: Vec<&str> = items
                .iter()
                .copied()
                .filter(|i| i.starts_with(&prefix))
                .collect();
            let acked: Vec<&str> = want
                .iter()
                .map(String::as_str)
                .filter(|i| i.starts_with(&prefix))
                .collect();
            assert_eq!(mine, acked, "{key}: client {c}'s appends");
        }
    }
    println!("{total} appends acknowledged and read back exactly once");
    for node in group100
        .into_iter()
        .flatten()
        .chain(group101)
        .chain(controller)
    {
        stop(node).await;
    }
}
