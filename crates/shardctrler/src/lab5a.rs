//! The 2024 shard controller scenarios (Lab 5A, `../shared/spec/shardkv.md` §2), step by step
//! on the simulator, named as in the spec's table 1a: [`SCENARIOS`].
//!
//! Where the lab's check is vacuous (the `MinimalTransfer` subtests look at gids 1..10,
//! none of which exist by then), ours checks what was meant: the shards of the groups that
//! were there before stay where they were.

use std::collections::BTreeMap;
use std::rc::Rc;

use flotilla_rsm::scenarios::Scenario;
use flotilla_sim::spawn;

use crate::config::{Config, Gid};
use crate::sim::{CtrlClerk, CtrlSim};

/// 2024's `NShards`.
pub const SHARDS: usize = 10;

macro_rules! scenarios {
    ($($name:ident)*) => {
        /// Every 2024 controller scenario, in the spec's order.
        pub const SCENARIOS: &[Scenario] = &[
            $(Scenario { name: stringify!($name), body: || Box::pin($name()) },)*
        ];
    };
}

scenarios! { basic minimal_again multi }

fn names(list: &[&str]) -> Vec<String> {
    list.iter().map(|s| s.to_string()).collect()
}

fn groups(list: &[(Gid, Vec<String>)]) -> BTreeMap<Gid, Vec<String>> {
    list.iter().cloned().collect()
}

async fn latest(ck: &CtrlClerk) -> Config {
    ck.query(None).await.expect("not cut off")
}

async fn join(ck: &CtrlClerk, list: &[(Gid, Vec<String>)]) {
    ck.join(groups(list))
        .await
        .expect("not cut off")
        .unwrap_or_else(|e| panic!("join {list:?}: {e}"));
}

async fn leave(ck: &CtrlClerk, gids: &[Gid]) {
    ck.leave(gids.to_vec())
        .await
        .expect("not cut off")
        .unwrap_or_else(|e| panic!("leave {gids:?}: {e}"));
}

/// The lab's `check(groups, ck)`: exactly these groups, every shard at one of them, counts
/// within one of each other.
async fn check(gids: &[Gid], ck: &CtrlClerk) {
    let c = latest(ck).await;
    assert_eq!(
        c.groups.len(),
        gids.len(),
        "wanted {gids:?} groups in {c:?}"
    );
    for g in gids {
        assert!(c.groups.contains_key(g), "missing group {g} in {c:?}");
    }
    if !gids.is_empty() {
        for (shard, g) in c.shards.iter().enumerate() {
            assert!(
                c.groups.contains_key(g),
                "shard {shard} at {g}, not a group: {c:?}"
            );
        }
    }
    let counts: Vec<usize> = c.groups.keys().map(|&g| c.shards_of(g).len()).collect();
    if let (Some(min), Some(max)) = (counts.iter().min(), counts.iter().max()) {
        assert!(max - min <= 1, "max {max} > min {min} + 1 in {c:?}");
    }
}

/// What `MinimalTransfer` meant: every shard of a group of `before` that is still at that
/// group in `after` was there in `before`, and no shard of a group present in both moved
/// to another group that was also there (only new groups take shards on a join; only the
/// leaving groups give shards up on a leave).
fn assert_minimal(before: &Config, after: &Config) {
    for shard in 0..before.shards.len() {
        let (from, to) = (before.shards[shard], after.shards[shard]);
        if from != to {
            let both = |g: Gid| before.groups.contains_key(&g) && after.groups.contains_key(&g);
            assert!(
                !(both(from) && both(to)),
                "shard {shard} moved from {from} to {to}, both there before and after"
            );
        }
    }
}

fn zero_config() -> Config {
    Config::empty(SHARDS)
}

async fn basic() {
    let sim = CtrlSim::new(3, SHARDS, true);
    let ck = sim.clerk();

    // LeaveJoin
    let mut cfa = vec![zero_config(); 6];
    cfa[0] = latest(&ck).await;
    check(&[], &ck).await;
    join(&ck, &[(1, names(&["x", "y", "z"]))]).await;
    check(&[1], &ck).await;
    cfa[1] = latest(&ck).await;
    join(&ck, &[(2, names(&["a", "b", "c"]))]).await;
    check(&[1, 2], &ck).await;
    cfa[2] = latest(&ck).await;
    let c = latest(&ck).await;
    assert_eq!(
        c.groups[&1],
        names(&["x", "y", "z"]),
        "wrong servers for gid 1"
    );
    assert_eq!(
        c.groups[&2],
        names(&["a", "b", "c"]),
        "wrong servers for gid 2"
    );
    leave(&ck, &[1]).await;
    check(&[2], &ck).await;
    cfa[4] = latest(&ck).await;
    leave(&ck, &[2]).await;
    cfa[5] = latest(&ck).await;

    // HistoricalQueries: every configuration survives any one server's restart.
    for s in 0..sim.n() {
        sim.crash(s);
        for c in &cfa {
            let got = ck.query(Some(c.num)).await.expect("not cut off");
            assert_eq!(&got, c, "historical query {} after crashing {s}", c.num);
        }
        sim.restart(s);
    }

    // Move
    join(&ck, &[(503, names(&["3a", "3b", "3c"]))]).await;
    join(&ck, &[(504, names(&["4a", "4b", "4c"]))]).await;
    for i in 0..SHARDS {
        let cf = latest(&ck).await;
        let target = if i < SHARDS / 2 { 503 } else { 504 };
        ck.move_shard(i, target)
            .await
            .expect("not cut off")
            .unwrap();
        if cf.shards[i] != target {
            assert!(
                latest(&ck).await.num > cf.num,
                "Move should increase Config.Num"
            );
        }
    }
    let c = latest(&ck).await;
    for i in 0..SHARDS {
        let target = if i < SHARDS / 2 { 503 } else { 504 };
        assert_eq!(c.shards[i], target, "shard {i} wrong after the moves");
    }
    leave(&ck, &[503]).await;
    leave(&ck, &[504]).await;

    // ConcurrentLeaveJoin
    let mut joins = Vec::new();
    for i in 0..10u64 {
        let ck = Rc::new(sim.clerk());
        joins.push(spawn(async move {
            let gid = 100 + 10 * i;
            join(&ck, &[(gid + 1000, vec![format!("s{gid}a")])]).await;
            join(&ck, &[(gid, vec![format!("s{gid}b")])]).await;
            leave(&ck, &[gid + 1000]).await;
        }));
    }
    for j in joins {
        j.await;
    }
    let gids: Vec<Gid> = (0..10).map(|i| 100 + 10 * i).collect();
    check(&gids, &ck).await;

    // MinimalTransfer
    let c1 = latest(&ck).await;
    for gid in 11..=15u64 {
        let servers = vec![format!("{gid}a"), format!("{gid}b"), format!("{gid}b")];
        join(&ck, &[(gid, servers)]).await;
    }
    let c2 = latest(&ck).await;
    assert_minimal(&c1, &c2);
    // The lab's own check (over gids 1..10, which are absent: it holds trivially).
    for gid in 1..=10 {
        for s in c2.shards_of(gid) {
            assert_eq!(c1.shards[s], gid, "shard {s} moved to {gid} on a join");
        }
    }

    // MinimalTransferAfterLeave
    for gid in 11..=15u64 {
        leave(&ck, &[gid]).await;
    }
    let c3 = latest(&ck).await;
    assert_minimal(&c2, &c3);
    for gid in 1..=10 {
        for s in c2.shards_of(gid) {
            assert_eq!(c3.shards[s], gid, "shard {s} of {gid} moved on a leave");
        }
    }
    sim.cluster().end();
    sim.shutdown();
}

async fn minimal_again() {
    let sim = CtrlSim::new(3, SHARDS, true);
    let ck = sim.clerk();
    join(&ck, &[(1, names(&["x", "y", "z"]))]).await;
    join(&ck, &[(2, names(&["a", "b", "c"]))]).await;
    let c1 = latest(&ck).await;
    join(&ck, &[(3, names(&["d", "e", "f"]))]).await;
    let c2 = latest(&ck).await;
    let mut changed = 0;
    for s in 0..SHARDS {
        if c2.shards[s] != 3 {
            assert_eq!(
                c2.shards[s], c1.shards[s],
                "shard {s} moved to an old group on join"
            );
        }
        changed += usize::from(c2.shards[s] != c1.shards[s]);
    }
    assert!(changed <= SHARDS / 3 + 1, "{changed} shards moved on join");
    leave(&ck, &[1]).await;
    let c3 = latest(&ck).await;
    let mut changed = 0;
    for s in 0..SHARDS {
        if c2.shards[s] != 1 {
            assert_eq!(
                c3.shards[s], c2.shards[s],
                "shard {s} of a staying group moved"
            );
        }
        changed += usize::from(c3.shards[s] != c2.shards[s]);
    }
    assert!(changed <= SHARDS / 3 + 1, "{changed} shards moved on leave");
    sim.cluster().end();
    sim.shutdown();
}

async fn multi() {
    let sim = CtrlSim::new(3, SHARDS, true);
    let ck = sim.clerk();

    // LeaveJoin with several groups per change
    check(&[], &ck).await;
    join(
        &ck,
        &[(1, names(&["x", "y", "z"])), (2, names(&["a", "b", "c"]))],
    )
    .await;
    check(&[1, 2], &ck).await;
    join(&ck, &[(3, names(&["j", "k", "l"]))]).await;
    check(&[1, 2, 3], &ck).await;
    let c = latest(&ck).await;
    assert_eq!(c.groups[&1], names(&["x", "y", "z"]));
    assert_eq!(c.groups[&2], names(&["a", "b", "c"]));
    assert_eq!(c.groups[&3], names(&["j", "k", "l"]));
    leave(&ck, &[1, 3]).await;
    check(&[2], &ck).await;
    assert_eq!(latest(&ck).await.groups[&2], names(&["a", "b", "c"]));
    leave(&ck, &[2]).await;

    // ConcurrentLeaveJoin
    let mut joins = Vec::new();
    for i in 0..10u64 {
        let ck = Rc::new(sim.clerk());
        joins.push(spawn(async move {
            let gid = 1000 + i;
            let list = [
                (
                    gid,
                    vec![format!("{gid}a"), format!("{gid}b"), format!("{gid}c")],
                ),
                (gid + 1000, vec![format!("{}a", gid + 1000)]),
                (gid + 2000, vec![format!("{}a", gid + 2000)]),
            ];
            join(&ck, &list).await;
            leave(&ck, &[gid + 1000, gid + 2000]).await;
        }));
    }
    for j in joins {
        j.await;
    }
    let gids: Vec<Gid> = (1000..1010).collect();
    check(&gids, &ck).await;

    // MinimalTransfer, one join of five groups
    let c1 = latest(&ck).await;
    let list: Vec<(Gid, Vec<String>)> = (11..=15u64)
        .map(|g| (g, vec![format!("{g}a"), format!("{g}b")]))
        .collect();
    join(&ck, &list).await;
    let c2 = latest(&ck).await;
    assert_minimal(&c1, &c2);

    // MinimalTransferAfterLeave, one leave of five groups
    leave(&ck, &(11..=15).collect::<Vec<_>>()).await;
    let c3 = latest(&ck).await;
    assert_minimal(&c2, &c3);

    // AgreeConfig: a new leader computed the same configurations.
    let leader = sim.leader().expect("a leader");
    let c = latest(&ck).await;
    sim.crash(leader);
    let c1 = latest(&ck).await;
    assert_eq!(c1, c, "the new leader's configuration differs");
    sim.cluster().end();
    sim.shutdown();
}
