//! 2024 kvraft (Lab 4A, snapshots 4B): Put/Append/Get with exactly-once writes on the
//! replicated service (`../shared/spec/kvraft.md` §6). Names as in the spec's table 1c.

use std::cell::Cell;
use std::rc::Rc;
use std::time::Duration;

use flotilla_kv::history::OpLog;
use flotilla_sim::{now, sleep, spawn};

use super::{partitioner, rand_below, set_within, Scenario, ELECTION_TIMEOUT};
use crate::sim::{KvRaftConfig, KvRaftSim};

macro_rules! scenarios {
    ($($name:ident)*) => {
        /// Every 2024 kvraft scenario, in the spec's order.
        pub const SCENARIOS: &[Scenario] = &[
            $(Scenario { name: stringify!($name), body: || Box::pin($name()) },)*
        ];
    };
}

scenarios! {
    basic_4a speed_4a concurrent_4a unreliable_4a unreliable_one_key_4a one_partition_4a
    many_partitions_one_client_4a many_partitions_many_clients_4a persist_one_client_4a
    persist_concurrent_4a persist_concurrent_unreliable_4a persist_partition_4a
    persist_partition_unreliable_4a persist_partition_unreliable_linearizable_4a
    snapshot_rpc_4b snapshot_size_4b speed_4b snapshot_recover_4b
    snapshot_recover_many_clients_4b snapshot_unreliable_4b snapshot_unreliable_recover_4b
    snapshot_unreliable_recover_concurrent_partition_4b
    snapshot_unreliable_recover_concurrent_partition_linearizable_4b
}

const MAXRAFTSTATE: u64 = 1000;
const CLIENT_PHASE: Duration = Duration::from_secs(5);

/// `checkClntAppends`: each `x cli k y` for `k < count` occurs in `value` exactly once, in
/// increasing order. (One pass over the elements, where the lab searches the value once per
/// element.)
pub fn check_appends(cli: usize, value: &str, count: usize) {
    let mut seen = vec![false; count];
    let mut next = 0;
    for element in value.split_terminator(" y").map(|e| e.trim_start()) {
        let mut parts = element.split(' ');
        let (x, c, k) = (parts.next(), parts.next(), parts.next());
        if x != Some("x") || c != Some(cli.to_string().as_str()) {
            continue;
        }
        let Some(k) = k.and_then(|k| k.parse::<usize>().ok()) else {
            continue;
        };
        if k >= count {
            continue;
        }
        assert!(
            !seen[k],
            "duplicate element \"x {cli} {k} y\" in Append result"
        );
        assert!(
            k == next,
            "wrong order for element \"x {cli} {k} y\" (expected {next})"
        );
        seen[k] = true;
        next += 1;
    }
    if let Some(k) = seen.iter().position(|s| !s) {
        panic!("{cli} missing element \"x {cli} {k} y\" in Append result");
    }
}

#[derive(Clone, Copy)]
struct Generic {
    clients: usize,
    servers: usize,
    unreliable: bool,
    crash: bool,
    partitions: bool,
    max_raft_state: Option<u64>,
    random_keys: bool,
}

const fn generic(clients: usize, servers: usize, unreliable: bool) -> Generic {
    Generic {
        clients,
        servers,
        unreliable,
        crash: false,
        partitions: false,
        max_raft_state: None,
        random_keys: false,
    }
}

/// `GenericTest` (§6.3).
async fn generic_test(p: Generic) {
    let sim = KvRaftSim::new(KvRaftConfig {
        servers: p.servers,
        reliable: !p.unreliable,
        max_raft_state: p.max_raft_state,
    });
    let ck = sim.clerk();
    for _ in 0..3 {
        let done = Rc::new(Cell::new(false));
        let clients: Vec<_> = (0..p.clients)
            .map(|cli| {
                let (sim, done) = (sim.clone(), done.clone());
                spawn(async move {
                    let ck = sim.clerk();
                    let me = cli as i64;
                    let (mut j, mut last) = (0usize, String::new());
                    let own = cli.to_string();
                    if !p.random_keys {
                        ck.logged_put(me, &own, "").await;
                    }
                    while !done.get() {
                        let key = if p.random_keys {
                            rand_below(p.clients).to_string()
                        } else {
                            own.clone()
                        };
                        let nv = format!("x {cli} {j} y");
                        if rand_below(1000) < 500 {
                            ck.logged_append(me, &key, &nv).await;
                            if !p.random_keys {
                                last.push_str(&nv);
                            }
                            j += 1;
                        } else if p.random_keys && rand_below(1000) < 100 {
                            ck.logged_put(me, &key, &nv).await;
                            j += 1;
                        } else {
                            let v = ck.logged_get(me, &key).await;
                            if !p.random_keys {
                                assert_eq!(v, last, "get wrong value, key {key}");
                            }
                        }
                    }
                    j
                })
            })
            .collect();
        let stop = Rc::new(Cell::new(false));
        let parts = if p.partitions {
            sleep(Duration::from_secs(1)).await;
            Some(spawn(partitioner(sim.clone(), stop.clone())))
        } else {
            None
        };
        sleep(CLIENT_PHASE).await;
        done.set(true);
        stop.set(true);
        if let Some(parts) = parts {
            parts.await;
            sim.connect_all();
            sleep(ELECTION_TIMEOUT).await;
        }
        if p.crash {
            sim.shutdown_all();
            sleep(Duration::from_secs(1)).await;
            sim.start_all();
        }
        for (cli, client) in clients.into_iter().enumerate() {
            let j = client.await;
            let v = ck.logged_get(-1, &cli.to_string()).await;
            if !p.random_keys {
                check_appends(cli, &v, j);
            }
        }
        match p.max_raft_state {
            Some(max) => {
                let size = sim.log_size();
                assert!(
                    size <= 8 * max,
                    "logs were not trimmed ({size} > 8 × {max})"
                );
            }
            None => assert_eq!(sim.snapshot_size(), 0, "snapshot with maxraftstate -1"),
        }
    }
    sim.log().check_linearizable(OpLog::CHECK_BUDGET);
    sim.end();
}

/// `GenericTestSpeed` (§6.4): 1000 sequential appends within 1000 × 33.3 ms.
async fn speed_test(max_raft_state: Option<u64>) {
    let sim = KvRaftSim::new(KvRaftConfig {
        servers: 3,
        reliable: true,
        max_raft_state,
    });
    let ck = sim.clerk();
    ck.get("x").await;
    let t0 = now();
    for i in 0..1000 {
        ck.append("x", &format!("x 0 {i} y")).await;
    }
    let took = now() - t0;
    check_appends(0, &ck.get("x").await, 1000);
    let limit = Duration::from_micros(33_333) * 1000;
    assert!(
        took <= limit,
        "Operations completed too slowly: {took:?} for 1000 appends"
    );
    sim.end();
}

async fn basic_4a() {
    generic_test(generic(1, 5, false)).await
}
async fn speed_4a() {
    speed_test(None).await
}
async fn concurrent_4a() {
    generic_test(generic(5, 5, false)).await
}
async fn unreliable_4a() {
    generic_test(generic(5, 5, true)).await
}
async fn many_partitions_one_client_4a() {
    generic_test(Generic {
        partitions: true,
        ..generic(1, 5, false)
    })
    .await
}
async fn many_partitions_many_clients_4a() {
    generic_test(Generic {
        partitions: true,
        ..generic(5, 5, false)
    })
    .await
}
async fn persist_one_client_4a() {
    generic_test(Generic {
        crash: true,
        ..generic(1, 5, false)
    })
    .await
}
async fn persist_concurrent_4a() {
    generic_test(Generic {
        crash: true,
        ..generic(5, 5, false)
    })
    .await
}
async fn persist_concurrent_unreliable_4a() {
    generic_test(Generic {
        crash: true,
        ..generic(5, 5, true)
    })
    .await
}
async fn persist_partition_4a() {
    generic_test(Generic {
        crash: true,
        partitions: true,
        ..generic(5, 5, false)
    })
    .await
}
async fn persist_partition_unreliable_4a() {
    generic_test(Generic {
        crash: true,
        partitions: true,
        ..generic(5, 5, true)
    })
    .await
}
async fn persist_partition_unreliable_linearizable_4a() {
    generic_test(Generic {
        crash: true,
        partitions: true,
        random_keys: true,
        ..generic(15, 7, true)
    })
    .await
}
async fn speed_4b() {
    speed_test(Some(MAXRAFTSTATE)).await
}
async fn snapshot_recover_4b() {
    generic_test(Generic {
        crash: true,
        max_raft_state: Some(MAXRAFTSTATE),
        ..generic(1, 5, false)
    })
    .await
}
async fn snapshot_recover_many_clients_4b() {
    generic_test(Generic {
        crash: true,
        max_raft_state: Some(MAXRAFTSTATE),
        ..generic(20, 5, false)
    })
    .await
}
async fn snapshot_unreliable_4b() {
    generic_test(Generic {
        max_raft_state: Some(MAXRAFTSTATE),
        ..generic(5, 5, true)
    })
    .await
}
async fn snapshot_unreliable_recover_4b() {
    generic_test(Generic {
        crash: true,
        max_raft_state: Some(MAXRAFTSTATE),
        ..generic(5, 5, true)
    })
    .await
}
async fn snapshot_unreliable_recover_concurrent_partition_4b() {
    generic_test(Generic {
        crash: true,
        partitions: true,
        max_raft_state: Some(MAXRAFTSTATE),
        ..generic(5, 5, true)
    })
    .await
}
async fn snapshot_unreliable_recover_concurrent_partition_linearizable_4b() {
    generic_test(Generic {
        crash: true,
        partitions: true,
        max_raft_state: Some(MAXRAFTSTATE),
        random_keys: true,
        ..generic(15, 7, true)
    })
    .await
}

/// TestUnreliableOneKey4A: 5 clients × 10 appends to one key on an unreliable network;
/// every element exactly once, each client's in order, and the history linearizable.
async fn unreliable_one_key_4a() {
    let sim = KvRaftSim::new(KvRaftConfig {
        servers: 3,
        reliable: false,
        max_raft_state: None,
    });
    let ck = sim.clerk();
    ck.logged_put(-1, "k", "").await;
    let clients: Vec<_> = (0..5)
        .map(|cli| {
            let sim = sim.clone();
            spawn(async move {
                let ck = sim.clerk();
                for n in 0..10 {
                    ck.logged_append(cli as i64, "k", &format!("x {cli} {n} y"))
                        .await;
                }
            })
        })
        .collect();
    for client in clients {
        client.await;
    }
    let v = ck.logged_get(-1, "k").await;
    for cli in 0..5 {
        check_appends(cli, &v, 10);
    }
    // The lab does not log these appends; here the concurrent history is checked too.
    sim.log().check_linearizable(OpLog::CHECK_BUDGET);
    sim.end();
}

/// TestOnePartition4A (§6.6).
async fn one_partition_4a() {
    let sim = KvRaftSim::new(KvRaftConfig {
        servers: 5,
        reliable: true,
        max_raft_state: None,
    });
    let ck = sim.clerk();
    ck.logged_put(0, "1", "13").await;
    let l = sim.leader().expect("a leader after a put");
    let (p1, p2) = sim.make_partition(l);
    sim.partition(&p1, &p2);
    let ckp1 = sim.clerk_to(&p1);
    let ckp2a = Rc::new(sim.clerk_to(&p2));
    let ckp2b = Rc::new(sim.clerk_to(&p2));
    ckp1.logged_put(1, "1", "14").await;
    assert_eq!(ckp1.logged_get(1, "1").await, "14");
    let put_done = Rc::new(Cell::new(false));
    let get_done = Rc::new(Cell::new(false));
    {
        let (ck, done) = (ckp2a.clone(), put_done.clone());
        spawn(async move {
            ck.logged_put(2, "1", "15").await;
            done.set(true);
        });
        let (ck, done) = (ckp2b.clone(), get_done.clone());
        spawn(async move {
            ck.logged_get(3, "1").await;
            done.set(true);
        });
    }
    let progressed = set_within(&put_done, Duration::from_secs(1)).await || get_done.get();
    assert!(
        !progressed,
        "no progress in minority: an operation completed"
    );
    assert_eq!(ckp1.logged_get(1, "1").await, "14");
    ckp1.logged_put(1, "1", "16").await;
    assert_eq!(ckp1.logged_get(1, "1").await, "16");
    sim.connect_all();
    sim.connect_clerk(&ckp2a);
    sim.connect_clerk(&ckp2b);
    sleep(ELECTION_TIMEOUT).await;
    assert!(
        set_within(&put_done, Duration::from_secs(3)).await,
        "Put did not complete after the partition healed"
    );
    // The lab's check of the Get has a default branch: it is not waited for.
    assert_eq!(ck.logged_get(0, "1").await, "15");
    sim.log().check_linearizable(OpLog::CHECK_BUDGET);
    sim.end();
}

/// TestSnapshotRPC4B (§6.6).
async fn snapshot_rpc_4b() {
    let sim = KvRaftSim::new(KvRaftConfig {
        servers: 3,
        reliable: true,
        max_raft_state: Some(MAXRAFTSTATE),
    });
    let ck = sim.clerk();
    ck.put("a", "A").await;
    assert_eq!(ck.get("a").await, "A");
    sim.partition(&[0, 1], &[2]);
    let ck1 = sim.clerk_to(&[0, 1]);
    for i in 0..50 {
        ck1.put(&i.to_string(), &i.to_string()).await;
    }
    sleep(ELECTION_TIMEOUT).await;
    ck1.put("b", "B").await;
    let size = sim.log_size();
    assert!(size <= 8 * MAXRAFTSTATE, "logs were not trimmed ({size})");
    sim.partition(&[0, 2], &[1]);
    let ck2 = sim.clerk_to(&[0, 2]);
    ck2.put("c", "C").await;
    ck2.put("d", "D").await;
    assert_eq!(ck2.get("a").await, "A");
    assert_eq!(ck2.get("b").await, "B");
    assert_eq!(ck2.get("1").await, "1");
    assert_eq!(ck2.get("49").await, "49");
    sim.partition(&[0, 1, 2], &[]);
    ck.put("e", "E").await;
    assert_eq!(ck.get("c").await, "C");
    assert_eq!(ck.get("e").await, "E");
    assert_eq!(ck.get("1").await, "1");
    sim.end();
}

/// TestSnapshotSize4B (§6.6).
async fn snapshot_size_4b() {
    let sim = KvRaftSim::new(KvRaftConfig {
        servers: 3,
        reliable: true,
        max_raft_state: Some(MAXRAFTSTATE),
    });
    let ck = sim.clerk();
    for _ in 0..200 {
        ck.put("x", "0").await;
        assert_eq!(ck.get("x").await, "0");
        ck.put("x", "1").await;
        assert_eq!(ck.get("x").await, "1");
    }
    let (log, snapshot) = (sim.log_size(), sim.snapshot_size());
    assert!(
        log <= 8 * MAXRAFTSTATE,
        "logs were not trimmed ({log} bytes)"
    );
    assert!(snapshot <= 500, "snapshot too large ({snapshot} bytes)");
    sim.end();
}

#[cfg(test)]
mod tests {
    use super::check_appends;

    fn catches(value: &str, count: usize) -> bool {
        std::panic::catch_unwind(|| check_appends(1, value, count)).is_err()
    }

    #[test]
    fn the_append_check_catches_missing_duplicate_and_reordered_elements() {
        assert!(!catches("x 1 0 yx 2 0 yx 1 1 yx 1 2 y", 3));
        assert!(
            !catches("x 1 0 yx 1 1 yx 1 2 y", 2),
            "later elements are allowed"
        );
        assert!(catches("x 1 0 yx 1 2 y", 3), "missing");
        assert!(catches("x 1 0 yx 1 1 y", 3), "missing at the end");
        assert!(catches("x 1 0 yx 1 0 yx 1 1 y", 2), "duplicate");
        assert!(catches("x 1 1 yx 1 0 y", 2), "wrong order");
    }
}
