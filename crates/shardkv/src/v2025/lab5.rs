//! The 2025 shardkv1 scenarios (Lab 5A, 5B, 5C; `../shared/spec/shardkv.md` §4.5), step by
//! step on the simulator, named as in the spec's table 1c: [`SCENARIOS`].
//!
//! Where a check of the lab is weaker than meant, ours is the meant one:
//! - the concurrent-clerk and partition-recovery clients use all 60 keys (the lab's harness
//!   has `randomkeys` off, so its clients only ever touch `"k0"`, one shard);
//! - `delete_basic_5a` rewrites every key (same sizes) before measuring the snapshots: our
//!   Gets are ReadIndex reads that add nothing to the log, so the lab's five rounds of Gets
//!   would make no group snapshot again and the check would see the old snapshot;
//! - `join_leave_5b` waits its full 2 s for the join that must not finish while Gid1 is
//!   down (the lab waits 2 ns).
//!
//! Every concurrent history is checked by the linearizability checker, and throughout
//! every scenario no shard is served by two groups. One scenario is ours, beyond the
//! lab's: `a_paused_controller_is_fenced` (a controller paused between deciding a request
//! and sending it, as a GC pause or SIGSTOP does, while another finishes its change and
//! moves the shards on).

use std::cell::{Cell, RefCell};
use std::collections::{BTreeMap, BTreeSet};
use std::rc::Rc;
use std::time::Duration;

use flotilla_kv::kvtest::{check_get, spawn_clients_and_wait};
use flotilla_rsm::scenarios::Scenario;
use flotilla_shardctrler::{Config, Gid, Sharding};
use flotilla_sim::{now, sleep, spawn, with_rng};

use super::ctrler::{ChangeError, Finishing};
use super::shardgrp::GID1;
use super::sim::{Kv1Clerk, Kv1Config, Kv1Sim, SimController};

macro_rules! scenarios {
    ($($name:ident)*) => {
        /// Every 2025 shardkv1 scenario, in the spec's order.
        pub const SCENARIOS: &[Scenario] = &[
            $(Scenario { name: stringify!($name), body: || Box::pin($name()) },)*
        ];
    };
}

scenarios! {
    init_query_5a static_one_shard_group_5a join_basic_5a delete_basic_5a
    join_leave_basic_5a many_join_leave_reliable_5a many_join_leave_unreliable_5a
    shutdown_5a progress_shutdown_5a progress_join_5a one_concurrent_clerk_reliable_5a
    many_concurrent_clerk_reliable_5a one_concurrent_clerk_unreliable_5a
    many_concurrent_clerk_unreliable_5a join_leave_5b recover_ctrler_5b
    concurrent_reliable_5c acquire_lock_concurrent_unreliable_5c
    partition_controller_join_5c partition_recovery_reliable_no_clerk_5c
    partition_recovery_unreliable_no_clerk_5c partition_recovery_reliable_clerks_5c
    partition_recovery_unreliable_clerks_5c a_paused_controller_is_fenced
}

/// 2025's `INTERGRPDELAY`.
const INTER_GROUP_DELAY: Duration = Duration::from_millis(200);
/// 2025's `NGRP`.
const NGRP: usize = 8;
/// 2025's `NKEYS` (5 × 12).
const NKEYS: usize = 60;

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

fn secs(n: u64) -> Duration {
    Duration::from_secs(n)
}

fn rand_below(n: u64) -> u64 {
    with_rng(|r| r.below(n))
}

/// `MakeTestMaxRaft` then `setupKVService`.
async fn make(reliable: bool, max_raft_state: Option<u64>) -> Kv1Sim {
    let sim = Kv1Sim::new(Kv1Config {
        reliable,
        max_raft_state,
    });
    sim.setup_kv_service().await;
    sim
}

fn make_keys(n: usize) -> Vec<String> {
    (0..n).map(|i| format!("k{i}")).collect()
}

/// `SpreadPutsSize`: keys `k0..k<n-1>` put at version 0 with random values of `size`
/// characters, each then checked at version 1.
async fn spread_puts(ck: &Kv1Clerk, n: usize, size: usize) -> (Vec<String>, Vec<String>) {
    let ka = make_keys(n);
    let va: Vec<String> = (0..n).map(|_| crate::lab5b::rand_string(size)).collect();
    for (k, v) in ka.iter().zip(&va) {
        let _ = ck.logged_vput(0, k, v, 0).await;
    }
    for (k, v) in ka.iter().zip(&va) {
        check_get(ck, k, v, 1).await;
    }
    (ka, va)
}

/// "Check all": every key at its value, version 1.
async fn check_all(ck: &Kv1Clerk, ka: &[String], va: &[String]) {
    for (k, v) in ka.iter().zip(va) {
        check_get(ck, k, v, 1).await;
    }
}

/// `join(sck, gid, srvs)`: the current configuration with `gid` joined, made current.
async fn join(sck: &SimController, gid: Gid, names: Vec<String>) -> Result<(), ChangeError> {
    let current = sck.query().await?;
    let next = current
        .join(&[(gid, names)].into())
        .unwrap_or_else(|e| panic!("join {gid}: {e}"));
    sck.change_to(&next).await
}

/// `leave(sck, gid)`.
async fn leave(sck: &SimController, gid: Gid) -> Result<(), ChangeError> {
    let current = sck.query().await?;
    match current.leave(&[gid]) {
        Ok(next) => sck.change_to(&next).await,
        // Gone already (another controller's leave).
        Err(_) => Err(ChangeError::Superseded(current.num)),
    }
}

async fn is_member(sck: &SimController, gid: Gid) -> bool {
    sck.query().await.is_ok_and(|c| c.owns_any(gid))
}

/// `joinGroups`: start each group, join it, check it got shards.
async fn join_groups(sim: &Kv1Sim, sck: &SimController, gids: &[Gid]) -> bool {
    for &gid in gids {
        sim.start_group(gid);
        let _ = join(sck, gid, sim.group(gid).names()).await;
        if !is_member(sck, gid).await {
            return false;
        }
        sleep(INTER_GROUP_DELAY).await;
    }
    true
}

/// `leaveGroups`: leave each group, check it has no shard left, retire it.
async fn leave_groups(sim: &Kv1Sim, sck: &SimController, gids: &[Gid]) -> bool {
    for &gid in gids {
        let _ = leave(sck, gid).await;
        if is_member(sck, gid).await {
            return false;
        }
        sim.exit_group(gid);
        sleep(INTER_GROUP_DELAY).await;
    }
    true
}

/// `CheckConfig`: the groups are `gids`, every shard at one of them, counts within one.
fn check_config(config: &Config, gids: &[Gid]) {
    let groups: BTreeSet<Gid> = config.groups.keys().copied().collect();
    assert_eq!(groups, gids.iter().copied().collect(), "wrong groups");
    if gids.is_empty() {
        return;
    }
    let mut counts: BTreeMap<Gid, usize> = gids.iter().map(|&g| (g, 0)).collect();
    for (shard, gid) in config.shards.iter().enumerate() {
        *counts
            .get_mut(gid)
            .unwrap_or_else(|| panic!("shard {shard} at {gid}, not a group")) += 1;
    }
    let (min, max) = (counts.values().min(), counts.values().max());
    assert!(max.unwrap() - min.unwrap() <= 1, "unbalanced: {counts:?}");
}

/// `checkShutdownSharding`: with group `down` shut down, a Get of every key from its own
/// clerk: none answers a wrong value, and not all of them answer (the keys really are
/// spread over several groups). Then the group is started again.
async fn check_shutdown_sharding(sim: &Kv1Sim, down: Gid, ka: &[String], va: &[String]) {
    sim.shutdown_group(down);
    let done = Rc::new(Cell::new(0usize));
    let mut tasks = Vec::new();
    for (k, v) in ka.iter().zip(va) {
        let (ck, k, v, done) = (sim.clerk(), k.clone(), v.clone(), done.clone());
        tasks.push(spawn(async move {
            let got = ck.vget(&k).await;
            assert_eq!(got, Ok((v, 1)), "Get({k}) with group {down} down");
            done.set(done.get() + 1);
        }));
    }
    loop {
        let before = done.get();
        sleep(secs(2)).await;
        if done.get() == before {
            break;
        }
    }
    assert!(
        done.get() < ka.len(),
        "expected less than {} completions with group {down} down",
        ka.len()
    );
    for task in tasks {
        task.abort();
    }
    sim.start_group(down);
}

async fn init_query_5a() {
    let sim = Kv1Sim::new(Kv1Config {
        reliable: true,
        max_raft_state: None,
    });
    let sck = sim.controller();
    let first = Config::empty(Sharding::Fnv12.shards())
        .join(&[(GID1, vec!["xxx".to_string()])].into())
        .unwrap();
    sck.init_config(&first).await;
    let cfg = sck.query().await.unwrap();
    assert_eq!(cfg.num, 1, "wrong num");
    assert_eq!(cfg.shards[0], GID1, "wrong shard 0");
    check_config(&cfg, &[GID1]);
}

async fn static_one_shard_group_5a() {
    let sim = make(true, None).await;
    let ck = sim.clerk();
    let (ka, va) = spread_puts(&ck, NKEYS, 20).await;
    check_all(&ck, &ka, &va).await;
    sim.shutdown_leader(GID1).await;
    check_all(&ck, &ka, &va).await;
    sim.end();
}

async fn join_basic_5a() {
    let sim = make(true, None).await;
    let ck = sim.clerk();
    let (ka, va) = spread_puts(&ck, NKEYS, 20).await;
    let cfg = sim.sck().query().await.unwrap();
    let gid2 = sim.new_gid();
    assert!(join_groups(&sim, sim.sck(), &[gid2]).await, "join failed");
    let now_cfg = sim.sck().query().await.unwrap();
    assert_eq!(now_cfg.num, cfg.num + 1, "one configuration per join");
    assert!(now_cfg.owns_any(gid2), "{gid2} not a member");
    check_shutdown_sharding(&sim, GID1, &ka, &va).await;
    check_all(&ck, &ka, &va).await;
    check_shutdown_sharding(&sim, gid2, &ka, &va).await;
    check_all(&ck, &ka, &va).await;
    sim.end();
}

async fn delete_basic_5a() {
    const VALUE_SIZE: usize = 1000;
    const MAX_RAFT_STATE: u64 = 10_000;
    let sim = make(true, Some(MAX_RAFT_STATE)).await;
    let ck = sim.clerk();
    let (ka, mut va) = spread_puts(&ck, NKEYS, VALUE_SIZE).await;
    let before = sim.snapshot_size(GID1);
    let gid2 = sim.new_gid();
    assert!(join_groups(&sim, sim.sck(), &[gid2]).await, "join failed");
    for _ in 0..5 {
        check_all(&ck, &ka, &va).await;
    }
    // Rewrite every key (same sizes) so both groups' logs grow past maxraftstate and they
    // snapshot again (our Gets add nothing to the log).
    for (k, v) in ka.iter().zip(va.iter_mut()) {
        let fresh = crate::lab5b::rand_string(VALUE_SIZE);
        assert_eq!(ck.logged_vput(0, k, &fresh, 1).await, Ok(()));
        *v = fresh;
    }
    for (k, v) in ka.iter().zip(&va) {
        check_get(&ck, k, v, 2).await;
    }
    let after = sim.snapshot_size(GID1) + sim.snapshot_size(gid2);
    assert!(
        after <= before + 10_000,
        "snapshots {after} bytes > {before} + 10000: gid1 did not delete what it handed over"
    );
    sim.end();
}

async fn join_leave_basic_5a() {
    let sim = make(true, None).await;
    let ck = sim.clerk();
    let (ka, va) = spread_puts(&ck, NKEYS, 20).await;
    let gid2 = sim.new_gid();
    assert!(join_groups(&sim, sim.sck(), &[gid2]).await, "join failed");
    check_shutdown_sharding(&sim, GID1, &ka, &va).await;
    check_all(&ck, &ka, &va).await;
    leave(sim.sck(), GID1).await.expect("leave of Gid1");
    assert!(!is_member(sim.sck(), GID1).await, "Gid1 still a member");
    sim.shutdown_group(GID1);
    check_all(&ck, &ka, &va).await;
    sim.start_group(GID1);
    join(sim.sck(), GID1, sim.group(GID1).names())
        .await
        .expect("rejoin of Gid1");
    check_all(&ck, &ka, &va).await;
    check_shutdown_sharding(&sim, gid2, &ka, &va).await;
    sim.end();
}

async fn join_leave_5a(reliable: bool) {
    let sim = make(reliable, None).await;
    let ck = sim.clerk();
    let (ka, va) = spread_puts(&ck, NKEYS, 20).await;
    let grps: Vec<Gid> = (0..NGRP).map(|_| sim.new_gid()).collect();
    join_groups(&sim, sim.sck(), &grps).await;
    check_shutdown_sharding(&sim, grps[0], &ka, &va).await;
    check_all(&ck, &ka, &va).await;
    leave_groups(&sim, sim.sck(), &grps).await;
    check_all(&ck, &ka, &va).await;
    sim.end();
}

async fn many_join_leave_reliable_5a() {
    join_leave_5a(true).await
}

async fn many_join_leave_unreliable_5a() {
    join_leave_5a(false).await
}

async fn shutdown_5a() {
    let sim = make(true, None).await;
    let ck = sim.clerk();
    let (ka, va) = spread_puts(&ck, NKEYS, 20).await;
    let grps: Vec<Gid> = (0..2).map(|_| sim.new_gid()).collect();
    assert!(join_groups(&sim, sim.sck(), &grps).await, "join failed");
    check_shutdown_sharding(&sim, grps[0], &ka, &va).await;
    check_all(&ck, &ka, &va).await;
    let all = [GID1, grps[0], grps[1]];
    all.iter().for_each(|&g| sim.shutdown_group(g));
    all.iter().for_each(|&g| sim.start_group(g));
    check_all(&ck, &ka, &va).await;
    sim.end();
}

async fn progress_shutdown_5a() {
    let sim = make(true, None).await;
    let ck = sim.clerk();
    let (ka, va) = spread_puts(&ck, NKEYS, 20).await;
    let grps: Vec<Gid> = (0..4).map(|_| sim.new_gid()).collect();
    assert!(join_groups(&sim, sim.sck(), &grps).await, "join failed");
    sim.shutdown_group(grps[0]);
    sim.shutdown_group(grps[1]);
    let cfg = sim.sck().query().await.unwrap();
    let live: BTreeSet<Gid> = grps[2..].iter().copied().collect();
    let finished = Rc::new(Cell::new(false));
    let (keys, values, flag) = (ka.clone(), va.clone(), finished.clone());
    let task = spawn(async move {
        for (k, v) in keys.iter().zip(&values) {
            if live.contains(&cfg.owner(Sharding::Fnv12.shard_of(k))) {
                check_get(&ck, k, v, 1).await;
            }
        }
        flag.set(true);
    });
    let t0 = now();
    while !finished.get() && now() - t0 < secs(2) {
        sleep(ms(10)).await;
    }
    assert!(finished.get(), "Gets didn't finish");
    task.await;
    sim.end();
}

async fn progress_join_5a() {
    let sim = make(true, None).await;
    let ck = sim.clerk();
    let (ka, va) = spread_puts(&ck, NKEYS, 20).await;
    let grps: Vec<Gid> = (0..4).map(|_| sim.new_gid()).collect();
    assert!(join_groups(&sim, sim.sck(), &grps).await, "join failed");
    let cfg = sim.sck().query().await.unwrap();
    let extra: Gid = 4 + 3;
    let newcfg = cfg.join(&[(extra, vec!["xxx".into()])].into()).unwrap();
    let newcfg1 = newcfg.leave(&[extra]).unwrap();
    let participating: BTreeSet<Gid> = (0..newcfg.shards.len())
        .filter(|&s| newcfg.owner(s) != newcfg1.owner(s))
        .map(|s| newcfg1.owner(s))
        .collect();
    let stable = |s: usize| newcfg.owner(s) == newcfg1.owner(s);

    // The extra group joins and leaves, over and over. Its gid is the one the spec's
    // configurations used; the counter must not have handed it out.
    assert!(sim.new_gid() < extra, "gid {extra} already in use");
    let stop = Rc::new(Cell::new(false));
    let churn = {
        let (sim, stop) = (sim.clone(), stop.clone());
        spawn(async move {
            while !stop.get() {
                assert!(join_groups(&sim, sim.sck(), &[extra]).await, "join {extra}");
                assert!(
                    leave_groups(&sim, sim.sck(), &[extra]).await,
                    "leave {extra}"
                );
            }
        })
    };
    let count = Rc::new(Cell::new(0u64));
    let counter = {
        let (count, ka, va) = (count.clone(), ka.clone(), va.clone());
        let targets: Vec<(String, String)> = ka
            .iter()
            .zip(&va)
            .filter(|(k, _)| {
                let s = Sharding::Fnv12.shard_of(k);
                stable(s) && participating.contains(&newcfg1.owner(s))
            })
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        assert!(
            !targets.is_empty(),
            "no stable key on a participating group"
        );
        spawn(async move {
            let t0 = now();
            while now() - t0 < secs(4) {
                for (k, v) in &targets {
                    check_get(&ck, k, v, 1).await;
                    count.set(count.get() + 1);
                }
            }
        })
    };
    let t0 = now();
    counter.await;
    assert!(now() - t0 < secs(8), "the Gets took too long");
    assert!(
        count.get() >= 100,
        "Too few gets finished: {} (want 100)",
        count.get()
    );
    stop.set(true);
    churn.await;
    sim.end();
}

/// `concurrentClerk`: clients put for 20 s while 8 groups join and then leave.
async fn concurrent_clerk(clients: usize, reliable: bool) {
    let sim = make(reliable, None).await;
    let keys = Rc::new(make_keys(NKEYS));
    let clerks = {
        let sim = sim.clone();
        spawn(async move {
            let make_clerk = {
                let sim = sim.clone();
                move || sim.clerk()
            };
            spawn_clients_and_wait(make_clerk, clients, keys, secs(20)).await
        })
    };
    let grps: Vec<Gid> = (0..NGRP).map(|_| sim.new_gid()).collect();
    assert!(join_groups(&sim, sim.sck(), &grps).await, "join failed");
    assert!(leave_groups(&sim, sim.sck(), &grps).await, "leave failed");
    let result = clerks.await;
    assert!(result.ok > 0, "no put succeeded");
    sim.log()
        .check_linearizable(flotilla_kv::history::OpLog::CHECK_BUDGET);
    sim.end();
}

async fn one_concurrent_clerk_reliable_5a() {
    concurrent_clerk(1, true).await
}

async fn many_concurrent_clerk_reliable_5a() {
    concurrent_clerk(10, true).await
}

async fn one_concurrent_clerk_unreliable_5a() {
    concurrent_clerk(1, false).await
}

async fn many_concurrent_clerk_unreliable_5a() {
    concurrent_clerk(10, false).await
}

async fn join_leave_5b() {
    let sim = make(true, None).await;
    let ck = sim.clerk();
    let (ka, va) = spread_puts(&ck, NKEYS, 20).await;
    let cfg = sim.sck().query().await.unwrap();
    sim.shutdown_group(GID1);
    let gid2 = sim.new_gid();
    let joined = Rc::new(Cell::new(None));
    let task = {
        let (sim, joined) = (sim.clone(), joined.clone());
        spawn(async move { joined.set(Some(join_groups(&sim, sim.sck(), &[gid2]).await)) })
    };
    sleep(secs(2)).await;
    assert_eq!(joined.get(), None, "the join finished while Gid1 was down");
    sim.start_group(GID1);
    let t0 = now();
    while joined.get().is_none() && now() - t0 < secs(2) {
        sleep(ms(10)).await;
    }
    assert_eq!(
        joined.get(),
        Some(true),
        "the join did not finish after Gid1 came back"
    );
    task.await;
    assert_eq!(sim.sck().query().await.unwrap().num, cfg.num + 1);

    sim.shutdown_group(gid2);
    let left = Rc::new(Cell::new(None));
    let task = {
        let (sim, left) = (sim.clone(), left.clone());
        spawn(async move { left.set(Some(leave_groups(&sim, sim.sck(), &[GID1]).await)) })
    };
    sleep(secs(2)).await;
    assert_eq!(left.get(), None, "the leave finished while gid2 was down");
    sim.start_group(gid2);
    let t0 = now();
    while left.get().is_none() && now() - t0 < secs(2) {
        sleep(ms(10)).await;
    }
    assert_eq!(
        left.get(),
        Some(true),
        "the leave did not finish after gid2 came back"
    );
    task.await;
    check_all(&ck, &ka, &va).await;
    sim.end();
}

/// What the partitioned controller was doing when it was cut off.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Doing {
    Join,
    Leave,
}

/// `partitionCtrler`: a controller joins and leaves a group over and over; Gid1 is shut
/// down (every change involves it, so the controller gets stuck mid-change) and the
/// controller cut off; a new controller must finish the interrupted change.
async fn partition_ctrler(
    sim: &Kv1Sim,
    ck: &Kv1Clerk,
    partition: bool,
    ka: &[String],
    va: &[String],
) {
    let sck = Rc::new(sim.controller());
    sck.init().await.expect("init");
    let num = sim.sck().query().await.unwrap().num;
    let state = Rc::new(Cell::new(Doing::Join));
    let ngid = Rc::new(Cell::new(0));
    {
        let (sim, sck, state, ngid) = (sim.clone(), sck.clone(), state.clone(), ngid.clone());
        spawn(async move {
            loop {
                ngid.set(sim.new_gid());
                state.set(Doing::Join);
                if !join_groups(&sim, &sck, &[ngid.get()]).await {
                    break;
                }
                state.set(Doing::Leave);
                leave_groups(&sim, &sck, &[ngid.get()]).await;
            }
        });
    }
    sleep(ms(1000 + rand_below(400))).await;
    sim.shutdown_group(GID1);
    sleep(ms(1000)).await;
    let clnt = sck.links().clnt().clone();
    clnt.disconnect_all();
    if partition {
        sleep(secs(1)).await;
    }
    sim.start_group(GID1);

    let sck0 = sim.controller();
    sck0.init().await.expect("init");
    let cfg = sck0.query().await.unwrap();
    assert!(
        cfg.num > num,
        "didn't recover: configuration {} not past {num}",
        cfg.num
    );
    let (doing, gid) = (state.get(), ngid.get());
    let present = cfg.owns_any(gid);
    match sck.finishing() {
        // Cut off in its own change: the lab's check.
        Some(Finishing { own: true, next }) => {
            assert!(
                cfg.num >= next.num,
                "the interrupted change {} was not finished",
                next.num
            );
            assert_eq!(
                present,
                doing == Doing::Join,
                "the interrupted {doing:?} of {gid} was not finished"
            );
        }
        // Cut off while finishing another controller's change (an earlier round's
        // controller, reconnected and still at work): that change is finished, and this
        // controller's own never happened.
        Some(Finishing { own: false, next }) => {
            assert!(
                cfg.num >= next.num,
                "the interrupted change {} was not finished",
                next.num
            );
            assert_eq!(
                present,
                doing == Doing::Leave,
                "{doing:?} of {gid} half done"
            );
        }
        None => {}
    }
    if present {
        leave_groups(sim, &sck0, &[gid]).await;
    }
    if partition {
        clnt.connect_all();
        sleep(ms(100)).await;
    }
    check_all(ck, ka, va).await;
}

async fn recover_ctrler_5b() {
    let sim = make(true, None).await;
    let ck = sim.clerk();
    let (ka, va) = spread_puts(&ck, NKEYS, 20).await;
    for _ in 0..5 {
        partition_ctrler(&sim, &ck, false, &ka, &va).await;
    }
    sim.end();
}

/// `concurCtrler`: 4 controllers join and leave groups at once for 2 s.
async fn concur_ctrler(sim: &Kv1Sim, ck: &Kv1Clerk, ka: &[String], va: &[String]) {
    let stop = Rc::new(Cell::new(false));
    let tasks: Vec<_> = (0..4)
        .map(|_| {
            let (sim, stop) = (sim.clone(), stop.clone());
            spawn(async move {
                while !stop.get() {
                    let gid = sim.new_gid();
                    let sck = sim.controller();
                    sck.init().await.expect("init");
                    if join_groups(&sim, &sck, &[gid]).await {
                        leave_groups(&sim, &sck, &[gid]).await;
                    }
                }
            })
        })
        .collect();
    sleep(secs(2)).await;
    stop.set(true);
    for task in tasks {
        task.await;
    }
    check_all(ck, ka, va).await;
}

async fn concurrent_5c(reliable: bool) {
    let sim = make(reliable, None).await;
    let ck = sim.clerk();
    let (ka, va) = spread_puts(&ck, NKEYS, 20).await;
    concur_ctrler(&sim, &ck, &ka, &va).await;
    sim.end();
}

async fn concurrent_reliable_5c() {
    concurrent_5c(true).await
}

async fn acquire_lock_concurrent_unreliable_5c() {
    concurrent_5c(false).await
}

async fn partition_controller_join_5c() {
    let sim = make(true, None).await;
    let ck = sim.clerk();
    let (ka, va) = spread_puts(&ck, NKEYS, 20).await;
    let sck = Rc::new(sim.controller());
    sck.init().await.expect("init");
    let ngid = sim.new_gid();
    let finished = Rc::new(RefCell::new(None));
    let old = {
        let (sim, sck, finished) = (sim.clone(), sck.clone(), finished.clone());
        spawn(async move {
            sim.start_group(ngid);
            sim.shutdown_group(ngid);
            let result = join(&sck, ngid, sim.group(ngid).names()).await;
            *finished.borrow_mut() = Some(result);
        })
    };
    sleep(secs(1)).await;
    let clnt = sck.links().clnt().clone();
    clnt.disconnect_all();
    sleep(secs(1)).await;
    sim.start_group(ngid);
    let sck0 = sim.controller();
    sck0.init().await.expect("init");
    assert!(
        sck0.query().await.unwrap().owns_any(ngid),
        "Didn't recover gid {ngid}"
    );
    let recovered = sck0.query().await.unwrap();
    clnt.connect_all();
    old.await;
    assert!(finished.borrow().is_some());
    sleep(secs(1)).await;
    assert_eq!(
        sim.sck().query().await.unwrap(),
        recovered,
        "the old controller changed the configuration after the recovery"
    );
    check_all(&ck, &ka, &va).await;
    sim.end();
}

async fn partition_recovery_5c(reliable: bool, npart: usize, nclnt: usize) {
    let sim = make(reliable, None).await;
    let ck = sim.clerk();
    let (ka, va) = if nclnt == 0 {
        spread_puts(&ck, NKEYS, 20).await
    } else {
        (Vec::new(), Vec::new())
    };
    let clients = (nclnt > 0).then(|| {
        let sim = sim.clone();
        spawn(async move {
            let make_clerk = {
                let sim = sim.clone();
                move || sim.clerk()
            };
            let keys = Rc::new(make_keys(NKEYS));
            spawn_clients_and_wait(make_clerk, nclnt, keys, secs(60)).await
        })
    });
    for _ in 0..npart {
        partition_ctrler(&sim, &ck, true, &ka, &va).await;
    }
    if let Some(clients) = clients {
        let result = clients.await;
        assert!(result.ok > 0, "no put succeeded");
        sim.log()
            .check_linearizable(flotilla_kv::history::OpLog::CHECK_BUDGET);
    }
    sim.end();
}

async fn partition_recovery_reliable_no_clerk_5c() {
    partition_recovery_5c(true, 5, 0).await
}

async fn partition_recovery_unreliable_no_clerk_5c() {
    partition_recovery_5c(false, 3, 0).await
}

async fn partition_recovery_reliable_clerks_5c() {
    partition_recovery_5c(true, 5, 5).await
}

async fn partition_recovery_unreliable_clerks_5c() {
    partition_recovery_5c(false, 3, 5).await
}

/// Ours: a controller stuck mid-join (the new group down) is paused with a request in
/// hand; another controller finishes that join and then moves the shards back (a leave);
/// clients overwrite the moved keys. Resumed, the paused controller's old install must be
/// refused by the group (per-shard numbers), so the left group serves nothing again and
/// the new values stand.
async fn a_paused_controller_is_fenced() {
    let sim = make(true, None).await;
    let ck = sim.clerk();
    let (ka, mut va) = spread_puts(&ck, NKEYS, 20).await;
    let paused = Rc::new(sim.controller());
    paused.init().await.expect("init");
    let ngid = sim.new_gid();
    sim.start_group(ngid);
    sim.shutdown_group(ngid);
    let result = Rc::new(RefCell::new(None));
    let old = {
        let (sim, paused, result) = (sim.clone(), paused.clone(), result.clone());
        spawn(async move {
            let r = join(&paused, ngid, sim.group(ngid).names()).await;
            *result.borrow_mut() = Some(r);
        })
    };
    sleep(secs(1)).await;
    let finishing = paused.finishing().expect("stuck in its join");
    assert!(finishing.own);
    paused.links().clnt().pause();
    sleep(ms(200)).await;

    sim.start_group(ngid);
    let other = sim.controller();
    other.init().await.expect("init");
    assert!(
        other.query().await.unwrap().owns_any(ngid),
        "the join was not finished"
    );
    leave(&other, ngid).await.expect("leave");
    assert!(!other.query().await.unwrap().owns_any(ngid));
    for (k, v) in ka.iter().zip(va.iter_mut()) {
        let fresh = crate::lab5b::rand_string(20);
        assert_eq!(ck.logged_vput(0, k, &fresh, 1).await, Ok(()));
        *v = fresh;
    }

    paused.links().clnt().resume();
    old.await;
    assert!(
        matches!(*result.borrow(), Some(Err(ChangeError::Superseded(_)))),
        "the paused controller's join: {:?}",
        result.borrow()
    );
    sleep(secs(1)).await;
    let g = sim.group(ngid);
    for i in 0..g.group().n() {
        if let Some(replica) = g.group().handle(i) {
            let serving: Vec<usize> = replica.with_state(|s| {
                s.shard_states()
                    .into_iter()
                    .filter(|(_, (_, st))| *st == super::shardgrp::Status::Serving)
                    .map(|(shard, _)| shard)
                    .collect()
            });
            assert!(
                serving.is_empty(),
                "group {ngid} serves {serving:?} after it left"
            );
        }
    }
    for (k, v) in ka.iter().zip(&va) {
        check_get(&ck, k, v, 2).await;
    }
    sim.end();
}
