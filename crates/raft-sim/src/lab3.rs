//! The 28 scenarios of the 6.5840 Raft lab (3A–3D), ported as behaviour.
//!
//! Each function follows its Go test step by step (`../shared/spec/raft.md` describes them);
//! where the 2024 and 2025 versions differ, the stricter one is used: 2025's crashes where
//! 2024 only disconnects (Persist1/2), 2024's "restart reconnects only the restarted server"
//! in the churn tests, 2025's unreliable network for SnapshotAllCrash and SnapshotInit, and a
//! term that changes without failures in InitialElection fails instead of warning.
//! Times are virtual: a scenario that takes a minute of simulated time runs in milliseconds.

use std::future::Future;
use std::pin::Pin;
use std::rc::Rc;
use std::time::Duration;

use flotilla_sim::{sleep, spawn, with_rng};

use crate::cluster::{int_cmd, show, Cluster, ClusterConfig, ELECTION_TIMEOUT as ET};

type Body = fn(Cluster) -> Pin<Box<dyn Future<Output = ()>>>;

/// One lab test: its name (the `#[test]` function's), group size, network and applier.
pub struct Scenario {
    pub name: &'static str,
    pub servers: usize,
    pub reliable: bool,
    pub snapshots: bool,
    pub body: Body,
}

macro_rules! scenarios {
    ($($name:ident: $n:expr, $reliable:expr, $snap:expr;)*) => {
        /// Every scenario, in the lab's order.
        pub const SCENARIOS: &[Scenario] = &[
            $(Scenario {
                name: stringify!($name),
                servers: $n,
                reliable: $reliable,
                snapshots: $snap,
                body: |c| Box::pin($name(c)),
            },)*
        ];
    };
}

const REL: bool = true;
const UNREL: bool = false;

scenarios! {
    initial_election_3a: 3, REL, false;
    re_election_3a: 3, REL, false;
    many_elections_3a: 7, REL, false;
    basic_agree_3b: 3, REL, false;
    rpc_bytes_3b: 3, REL, false;
    follower_failure_3b: 3, REL, false;
    leader_failure_3b: 3, REL, false;
    fail_agree_3b: 3, REL, false;
    fail_no_agree_3b: 5, REL, false;
    concurrent_starts_3b: 3, REL, false;
    rejoin_3b: 3, REL, false;
    backup_3b: 5, REL, false;
    count_3b: 3, REL, false;
    persist1_3c: 3, REL, false;
    persist2_3c: 5, REL, false;
    persist3_3c: 3, REL, false;
    figure_8_3c: 5, REL, false;
    unreliable_agree_3c: 5, UNREL, false;
    figure_8_unreliable_3c: 5, UNREL, false;
    reliable_churn_3c: 5, REL, false;
    unreliable_churn_3c: 5, UNREL, false;
    snapshot_basic_3d: 3, REL, true;
    snapshot_install_3d: 3, REL, true;
    snapshot_install_unreliable_3d: 3, UNREL, true;
    snapshot_install_crash_3d: 3, REL, true;
    snapshot_install_uncrash_3d: 3, UNREL, true;
    snapshot_all_crash_3d: 3, UNREL, true;
    snapshot_init_3d: 3, UNREL, true;
}

pub fn find(name: &str) -> Option<&'static Scenario> {
    SCENARIOS.iter().find(|s| s.name == name)
}

/// Runs one scenario at `seed`; panics (with the scenario's message) if it fails. Returns the
/// run's trace hash and virtual duration.
pub fn run_scenario(scenario: &Scenario, seed: u64, verbose: bool) -> ((u64, u64), Duration) {
    let mut cfg = ClusterConfig::new(scenario.servers, scenario.reliable, scenario.snapshots);
    cfg.verbose = verbose;
    crate::run_cluster(seed, cfg, scenario.body)
}

/// Entry point for the `#[test]` wrappers: runs `name` at the seed from `SIM_SEED` (or the
/// name's default seed) and prints how to replay it if it fails.
pub fn run_test(name: &str) {
    let scenario = find(name).unwrap_or_else(|| panic!("no scenario {name}"));
    let seed = flotilla_sim::seed_from_env(name);
    flotilla_sim::replay_on_panic(name, seed, || {
        run_scenario(scenario, seed, true);
    });
}

fn rand_u64() -> u64 {
    with_rng(|r| r.next_u64() >> 1)
}

fn rand_cmd() -> Vec<u8> {
    int_cmd(rand_u64())
}

fn rand_below(n: usize) -> usize {
    with_rng(|r| r.below(n as u64) as usize)
}

fn ms(x: u64) -> Duration {
    Duration::from_millis(x)
}

/// The Figure 8 tests' pause: usually short, sometimes up to half a second.
async fn figure8_pause() {
    let pause = with_rng(|r| {
        if r.below(1000) < 100 {
            r.below(500)
        } else {
            r.below(13)
        }
    });
    sleep(ms(pause)).await;
}

/// Crash every server, then start and connect them all.
fn crash_all_restart_all(c: &Cluster) {
    for i in 0..c.n() {
        c.crash(i);
    }
    for i in 0..c.n() {
        c.start(i);
    }
    for i in 0..c.n() {
        c.connect(i);
    }
}

// ---- 3A: leader election ------------------------------------------------------------------

pub async fn initial_election_3a(c: Cluster) {
    c.begin("Test (3A): initial election");
    c.check_one_leader().await;
    sleep(ms(50)).await;
    let term1 = c.check_terms().expect("connected servers");
    assert!(term1 >= 1, "term is {term1}, but should be at least 1");
    sleep(2 * ET).await;
    let term2 = c.check_terms().expect("connected servers");
    assert_eq!(
        term1, term2,
        "term changed even though there were no failures"
    );
    c.check_one_leader().await;
}

pub async fn re_election_3a(c: Cluster) {
    c.begin("Test (3A): election after network failure");
    let n = c.n();
    let leader1 = c.check_one_leader().await;
    c.disconnect(leader1);
    c.check_one_leader().await;
    c.connect(leader1);
    let leader2 = c.check_one_leader().await;
    c.disconnect(leader2);
    c.disconnect((leader2 + 1) % n);
    sleep(2 * ET).await;
    c.check_no_leader();
    c.connect((leader2 + 1) % n);
    c.check_one_leader().await;
    c.connect(leader2);
    c.check_one_leader().await;
}

pub async fn many_elections_3a(c: Cluster) {
    c.begin("Test (3A): multiple elections");
    let n = c.n();
    c.check_one_leader().await;
    for _ in 1..10 {
        let cut = [rand_below(n), rand_below(n), rand_below(n)];
        for &i in &cut {
            c.disconnect(i);
        }
        c.check_one_leader().await;
        for &i in &cut {
            c.connect(i);
        }
    }
    c.check_one_leader().await;
}

// ---- 3B: log replication --------------------------------------------------------------------

pub async fn basic_agree_3b(c: Cluster) {
    c.begin("Test (3B): basic agreement");
    for index in 1..=3u64 {
        let (count, _) = c.n_committed(index);
        assert_eq!(count, 0, "some have committed before Start()");
        let got = c.one(&int_cmd(index * 100), c.n(), false).await;
        assert_eq!(got, index, "got index {got} but expected {index}");
    }
}

pub async fn rpc_bytes_3b(c: Cluster) {
    c.begin("Test (3B): RPC byte count");
    c.one(&int_cmd(99), 3, false).await;
    let bytes0 = c.net_stats().bytes_total;
    let mut sent = 0u64;
    for index in 2..=11u64 {
        let cmd: Vec<u8> = (0..5000).map(|_| b'a' + rand_below(26) as u8).collect();
        let got = c.one(&cmd, 3, false).await;
        assert_eq!(got, index, "got index {got} but expected {index}");
        sent += cmd.len() as u64;
    }
    let got = c.net_stats().bytes_total - bytes0;
    let expected = 3 * sent;
    assert!(
        got <= expected + 50_000,
        "too many RPC bytes; got {got}, expected {expected}"
    );
}

pub async fn follower_failure_3b(c: Cluster) {
    c.begin("Test (3B): test progressive failure of followers");
    let n = c.n();
    c.one(&int_cmd(101), n, false).await;
    let leader1 = c.check_one_leader().await;
    c.disconnect((leader1 + 1) % n);
    c.one(&int_cmd(102), n - 1, false).await;
    sleep(ET).await;
    c.one(&int_cmd(103), n - 1, false).await;
    let leader2 = c.check_one_leader().await;
    c.disconnect((leader2 + 1) % n);
    c.disconnect((leader2 + 2) % n);
    let (index, _) = c
        .start_cmd(leader2, &int_cmd(104))
        .expect("leader rejected Start()");
    assert_eq!(index, 4, "expected index 4, got {index}");
    sleep(2 * ET).await;
    c.check_no_agreement(index);
}

pub async fn leader_failure_3b(c: Cluster) {
    c.begin("Test (3B): test failure of leaders");
    let n = c.n();
    c.one(&int_cmd(101), n, false).await;
    let leader1 = c.check_one_leader().await;
    c.disconnect(leader1);
    c.one(&int_cmd(102), n - 1, false).await;
    sleep(ET).await;
    c.one(&int_cmd(103), n - 1, false).await;
    let leader2 = c.check_one_leader().await;
    c.disconnect(leader2);
    for i in 0..n {
        c.start_cmd(i, &int_cmd(104));
    }
    sleep(2 * ET).await;
    c.check_no_agreement(4);
}

pub async fn fail_agree_3b(c: Cluster) {
    c.begin("Test (3B): agreement after follower reconnects");
    let n = c.n();
    c.one(&int_cmd(101), n, false).await;
    let leader = c.check_one_leader().await;
    c.disconnect((leader + 1) % n);
    c.one(&int_cmd(102), n - 1, false).await;
    c.one(&int_cmd(103), n - 1, false).await;
    sleep(ET).await;
    c.one(&int_cmd(104), n - 1, false).await;
    c.one(&int_cmd(105), n - 1, false).await;
    c.connect((leader + 1) % n);
    c.one(&int_cmd(106), n, true).await;
    sleep(ET).await;
    c.one(&int_cmd(107), n, true).await;
}

pub async fn fail_no_agree_3b(c: Cluster) {
    c.begin("Test (3B): no agreement if too many followers disconnect");
    let n = c.n();
    c.one(&int_cmd(10), n, false).await;
    let leader = c.check_one_leader().await;
    for k in 1..=3 {
        c.disconnect((leader + k) % n);
    }
    let (index, _) = c
        .start_cmd(leader, &int_cmd(20))
        .expect("leader rejected Start()");
    assert_eq!(index, 2, "expected index 2, got {index}");
    sleep(2 * ET).await;
    let (count, _) = c.n_committed(index);
    assert_eq!(count, 0, "{count} committed but no majority");
    for k in 1..=3 {
        c.connect((leader + k) % n);
    }
    let leader2 = c.check_one_leader().await;
    let (index2, _) = c
        .start_cmd(leader2, &int_cmd(30))
        .expect("leader2 rejected Start()");
    assert!((2..=3).contains(&index2), "unexpected index {index2}");
    c.one(&int_cmd(1000), n, true).await;
}

pub async fn concurrent_starts_3b(c: Cluster) {
    c.begin("Test (3B): concurrent Start()s");
    let n = c.n();
    let mut success = false;
    'tries: for attempt in 0..5 {
        if attempt > 0 {
            sleep(Duration::from_secs(3)).await;
        }
        let leader = c.check_one_leader().await;
        let Some((_, term)) = c.start_cmd(leader, &int_cmd(1)) else {
            continue;
        };
        let handles: Vec<_> = (0..5u64)
            .map(|i| {
                let c = c.clone();
                spawn(async move {
                    match c.start_cmd(leader, &int_cmd(100 + i)) {
                        Some((index, t)) if t == term => Some(index),
                        _ => None,
                    }
                })
            })
            .collect();
        let mut indexes = Vec::new();
        for h in handles {
            if let Some(index) = h.await {
                indexes.push(index);
            }
        }
        if (0..n).any(|j| c.get_state(j).is_some_and(|(t, _)| t != term)) {
            continue; // term changed: try again
        }
        let mut cmds = Vec::new();
        for index in indexes {
            match c.wait(index, n, Some(term)).await {
                Some(cmd) => cmds.push(cmd),
                None => continue 'tries,
            }
        }
        for i in 0..5u64 {
            assert!(
                cmds.contains(&int_cmd(100 + i)),
                "cmd {} missing in {:?}",
                100 + i,
                cmds.iter().map(|c| show(c)).collect::<Vec<_>>()
            );
        }
        success = true;
        break;
    }
    assert!(success, "term changed too often");
}

pub async fn rejoin_3b(c: Cluster) {
    c.begin("Test (3B): rejoin of partitioned leader");
    let n = c.n();
    c.one(&int_cmd(101), n, true).await;
    let leader1 = c.check_one_leader().await;
    c.disconnect(leader1);
    for cmd in [102, 103, 104] {
        c.start_cmd(leader1, &int_cmd(cmd));
    }
    c.one(&int_cmd(103), 2, true).await;
    let leader2 = c.check_one_leader().await;
    c.disconnect(leader2);
    c.connect(leader1);
    c.one(&int_cmd(104), 2, true).await;
    c.connect(leader2);
    c.one(&int_cmd(105), n, true).await;
}

pub async fn backup_3b(c: Cluster) {
    c.begin("Test (3B): leader backs up quickly over incorrect follower logs");
    let n = c.n();
    c.one(&rand_cmd(), n, true).await;
    let leader1 = c.check_one_leader().await;
    for k in 2..=4 {
        c.disconnect((leader1 + k) % n);
    }
    for _ in 0..50 {
        c.start_cmd(leader1, &rand_cmd());
    }
    sleep(ET / 2).await;
    c.disconnect(leader1);
    c.disconnect((leader1 + 1) % n);
    for k in 2..=4 {
        c.connect((leader1 + k) % n);
    }
    for _ in 0..50 {
        c.one(&rand_cmd(), 3, true).await;
    }
    let leader2 = c.check_one_leader().await;
    let mut other = (leader1 + 2) % n;
    if leader2 == other {
        other = (leader2 + 1) % n;
    }
    c.disconnect(other);
    for _ in 0..50 {
        c.start_cmd(leader2, &rand_cmd());
    }
    sleep(ET / 2).await;
    for i in 0..n {
        c.disconnect(i);
    }
    c.connect(leader1);
    c.connect((leader1 + 1) % n);
    c.connect(other);
    for _ in 0..50 {
        c.one(&rand_cmd(), 3, true).await;
    }
    for i in 0..n {
        c.connect(i);
    }
    c.one(&rand_cmd(), n, true).await;
}

pub async fn count_3b(c: Cluster) {
    c.begin("Test (3B): RPC counts aren't too high");
    let n = c.n();
    let rpcs = |c: &Cluster| (0..n).map(|j| c.rpc_count(j)).sum::<u64>();
    c.check_one_leader().await;
    let total1 = rpcs(&c);
    assert!(
        (1..=30).contains(&total1),
        "too many or few RPCs ({total1}) to elect initial leader"
    );

    let mut success = false;
    let mut total2 = 0;
    'tries: for attempt in 0..5 {
        if attempt > 0 {
            sleep(Duration::from_secs(3)).await;
        }
        let leader = c.check_one_leader().await;
        let total1 = rpcs(&c);
        let iters = 10u64;
        let Some((starti, term)) = c.start_cmd(leader, &int_cmd(1)) else {
            continue;
        };
        let mut cmds = Vec::new();
        for i in 1..=iters + 1 {
            let x = rand_cmd();
            cmds.push(x.clone());
            match c.start_cmd(leader, &x) {
                Some((index, t)) if t == term => assert_eq!(index, starti + i, "Start() failed"),
                _ => continue 'tries,
            }
        }
        for i in 1..=iters {
            match c.wait(starti + i, n, Some(term)).await {
                None => continue 'tries,
                Some(cmd) => assert_eq!(
                    cmd,
                    cmds[i as usize - 1],
                    "wrong value committed for index {}",
                    starti + i
                ),
            }
        }
        if (0..n).any(|j| c.get_state(j).is_some_and(|(t, _)| t != term)) {
            continue;
        }
        total2 = rpcs(&c);
        let used = total2 - total1;
        assert!(
            used <= (iters + 1 + 3) * 3,
            "too many RPCs ({used}) for {iters} entries"
        );
        success = true;
        break;
    }
    assert!(success, "term changed too often");
    sleep(ET).await;
    let total3 = rpcs(&c);
    let idle = total3 - total2;
    assert!(
        idle <= 3 * 20,
        "too many RPCs ({idle}) for 1 second of idleness"
    );
}

// ---- 3C: persistence ------------------------------------------------------------------------

pub async fn persist1_3c(c: Cluster) {
    c.begin("Test (3C): basic persistence");
    let n = c.n();
    c.one(&int_cmd(11), n, true).await;
    crash_all_restart_all(&c);
    c.one(&int_cmd(12), n, true).await;
    let leader1 = c.check_one_leader().await;
    c.crash(leader1);
    c.restart(leader1);
    c.one(&int_cmd(13), n, true).await;
    let leader2 = c.check_one_leader().await;
    c.crash(leader2);
    c.one(&int_cmd(14), n - 1, true).await;
    c.restart(leader2);
    c.wait(4, n, None).await;
    let i3 = (c.check_one_leader().await + 1) % n;
    c.crash(i3);
    c.one(&int_cmd(15), n - 1, true).await;
    c.restart(i3);
    c.one(&int_cmd(16), n, true).await;
}

pub async fn persist2_3c(c: Cluster) {
    c.begin("Test (3C): more persistence");
    let n = c.n();
    let mut index = 1;
    for _ in 0..5 {
        c.one(&int_cmd(10 + index), n, true).await;
        index += 1;
        let leader1 = c.check_one_leader().await;
        c.crash((leader1 + 1) % n);
        c.crash((leader1 + 2) % n);
        c.one(&int_cmd(10 + index), n - 2, true).await;
        index += 1;
        c.crash(leader1);
        c.crash((leader1 + 3) % n);
        c.crash((leader1 + 4) % n);
        c.restart((leader1 + 1) % n);
        c.restart((leader1 + 2) % n);
        sleep(ET).await;
        c.restart((leader1 + 3) % n);
        c.one(&int_cmd(10 + index), n - 2, true).await;
        index += 1;
        c.restart((leader1 + 4) % n);
        c.restart(leader1);
    }
    c.one(&int_cmd(1000), n, true).await;
}

pub async fn persist3_3c(c: Cluster) {
    c.begin("Test (3C): partitioned leader and one follower crash, leader restarts");
    let n = c.n();
    c.one(&int_cmd(101), 3, true).await;
    let leader = c.check_one_leader().await;
    c.disconnect((leader + 2) % n);
    c.one(&int_cmd(102), 2, true).await;
    c.crash(leader % n);
    c.crash((leader + 1) % n);
    c.connect((leader + 2) % n);
    c.restart(leader % n);
    c.one(&int_cmd(103), 2, true).await;
    c.restart((leader + 1) % n);
    c.one(&int_cmd(104), 3, true).await;
}

pub async fn figure_8_3c(c: Cluster) {
    c.begin("Test (3C): Figure 8");
    let n = c.n();
    c.one(&rand_cmd(), 1, true).await;
    let mut nup = n;
    for _ in 0..1000 {
        let mut leader = None;
        for i in 0..n {
            if c.is_alive(i) && c.start_cmd(i, &rand_cmd()).is_some() {
                leader = Some(i);
            }
        }
        figure8_pause().await;
        if let Some(leader) = leader {
            c.crash(leader);
            nup -= 1;
        }
        if nup < 3 {
            let s = rand_below(n);
            if !c.is_alive(s) {
                c.restart(s);
                nup += 1;
            }
        }
    }
    for i in 0..n {
        if !c.is_alive(i) {
            c.restart(i);
        }
    }
    c.one(&rand_cmd(), n, true).await;
}

pub async fn unreliable_agree_3c(c: Cluster) {
    c.begin("Test (3C): unreliable agreement");
    let mut handles = Vec::new();
    for iters in 1..50u64 {
        for j in 0..4u64 {
            let c = c.clone();
            handles.push(spawn(async move {
                c.one(&int_cmd(100 * iters + j), 1, true).await;
            }));
        }
        c.one(&int_cmd(iters), 1, true).await;
    }
    c.set_reliable(true);
    for h in handles {
        h.await;
    }
    c.one(&int_cmd(100), c.n(), true).await;
}

pub async fn figure_8_unreliable_3c(c: Cluster) {
    c.begin("Test (3C): Figure 8 (unreliable)");
    let n = c.n();
    c.one(&int_cmd(rand_u64() % 10_000), 1, true).await;
    let mut nup = n;
    for iters in 0..1000 {
        if iters == 200 {
            c.set_long_reordering(true);
        }
        let mut leader = None;
        for i in 0..n {
            if c.start_cmd(i, &int_cmd(rand_u64() % 10_000)).is_some() && c.is_connected(i) {
                leader = Some(i);
            }
        }
        figure8_pause().await;
        if let Some(leader) = leader {
            if with_rng(|r| r.below(1000) < 500) {
                c.disconnect(leader);
                nup -= 1;
            }
        }
        if nup < 3 {
            let s = rand_below(n);
            if !c.is_connected(s) {
                c.connect(s);
                nup += 1;
            }
        }
    }
    for i in 0..n {
        if !c.is_connected(i) {
            c.connect(i);
        }
    }
    c.one(&int_cmd(rand_u64() % 10_000), n, true).await;
}

async fn churn(c: Cluster) {
    let n = c.n();
    let stop = Rc::new(std::cell::Cell::new(false));
    let clients: Vec<_> = (0..3u64)
        .map(|me| {
            let c = c.clone();
            let stop = stop.clone();
            spawn(async move {
                let mut seen = Vec::new();
                while !stop.get() {
                    let x = rand_cmd();
                    let mut index = None;
                    for i in 0..n {
                        if let Some((idx, _)) = c.start_cmd(i, &x) {
                            index = Some(idx);
                        }
                    }
                    match index {
                        Some(index) => {
                            for pause in [10, 20, 50, 100, 200] {
                                let (count, cmd) = c.n_committed(index);
                                if count > 0 {
                                    if cmd.as_deref() == Some(&x[..]) {
                                        seen.push(x.clone());
                                    }
                                    break;
                                }
                                sleep(ms(pause)).await;
                            }
                        }
                        None => sleep(ms(79 + 17 * me)).await,
                    }
                }
                seen
            })
        })
        .collect();
    for _ in 0..20 {
        if with_rng(|r| r.below(1000) < 200) {
            c.disconnect(rand_below(n));
        }
        if with_rng(|r| r.below(1000) < 500) {
            let i = rand_below(n);
            if !c.is_alive(i) {
                c.start(i);
            }
            c.connect(i);
        }
        if with_rng(|r| r.below(1000) < 200) {
            let i = rand_below(n);
            if c.is_alive(i) {
                c.crash(i);
            }
        }
        sleep(ET * 7 / 10).await;
    }
    sleep(ET).await;
    c.set_reliable(true);
    for i in 0..n {
        if !c.is_alive(i) {
            c.start(i);
        }
        c.connect(i);
    }
    stop.set(true);
    let mut seen = Vec::new();
    for h in clients {
        seen.extend(h.await);
    }
    sleep(ET).await;
    let last_index = c.one(&rand_cmd(), n, true).await;
    let mut really = Vec::new();
    for index in 1..=last_index {
        really.push(c.wait(index, n, None).await.expect("no term limit"));
    }
    for v in &seen {
        assert!(really.contains(v), "didn't find a value {}", show(v));
    }
}

pub async fn reliable_churn_3c(c: Cluster) {
    c.begin("Test (3C): churn");
    churn(c).await;
}

pub async fn unreliable_churn_3c(c: Cluster) {
    c.begin("Test (3C): unreliable churn");
    churn(c).await;
}

// ---- 3D: snapshots --------------------------------------------------------------------------

/// Raft state (log + hard state) must stay below this with snapshots every 10 entries.
const MAX_LOG_SIZE: u64 = 2000;

async fn snapcommon(c: Cluster, disconnect: bool, crash: bool) {
    let n = c.n();
    c.one(&rand_cmd(), n, true).await;
    let mut leader1 = c.check_one_leader().await;
    for i in 0..30 {
        let (mut victim, mut sender) = ((leader1 + 1) % n, leader1);
        if i % 3 == 1 {
            sender = (leader1 + 1) % n;
            victim = leader1;
        }
        if disconnect {
            c.disconnect(victim);
            c.one(&rand_cmd(), n - 1, true).await;
        }
        if crash {
            c.crash(victim);
            c.one(&rand_cmd(), n - 1, true).await;
        }
        let nn = 5 + rand_below(10);
        for _ in 0..nn {
            c.start_cmd(sender, &rand_cmd());
        }
        if !disconnect && !crash {
            c.one(&rand_cmd(), n, true).await;
        } else {
            c.one(&rand_cmd(), n - 1, true).await;
        }
        let size = c.log_size();
        assert!(size < MAX_LOG_SIZE, "Log size too large: {size}");
        if disconnect {
            c.connect(victim);
            c.one(&rand_cmd(), n, true).await;
            leader1 = c.check_one_leader().await;
        }
        if crash {
            c.restart(victim);
            c.one(&rand_cmd(), n, true).await;
            leader1 = c.check_one_leader().await;
        }
    }
}

pub async fn snapshot_basic_3d(c: Cluster) {
    c.begin("Test (3D): snapshots basic");
    snapcommon(c, false, false).await;
}

pub async fn snapshot_install_3d(c: Cluster) {
    c.begin("Test (3D): install snapshots (disconnect)");
    snapcommon(c, true, false).await;
}

pub async fn snapshot_install_unreliable_3d(c: Cluster) {
    c.begin("Test (3D): install snapshots (disconnect+unreliable)");
    snapcommon(c, true, false).await;
}

pub async fn snapshot_install_crash_3d(c: Cluster) {
    c.begin("Test (3D): install snapshots (crash)");
    snapcommon(c, false, true).await;
}

pub async fn snapshot_install_uncrash_3d(c: Cluster) {
    c.begin("Test (3D): install snapshots (unreliable+crash)");
    snapcommon(c, false, true).await;
}

pub async fn snapshot_all_crash_3d(c: Cluster) {
    c.begin("Test (3D): crash and restart all servers");
    let n = c.n();
    c.one(&rand_cmd(), n, true).await;
    for _ in 0..5 {
        let nn = 5 + rand_below(10);
        for _ in 0..nn {
            c.one(&rand_cmd(), n, true).await;
        }
        let index1 = c.one(&rand_cmd(), n, true).await;
        crash_all_restart_all(&c);
        let index2 = c.one(&rand_cmd(), n, true).await;
        assert!(index2 > index1, "index decreased from {index1} to {index2}");
    }
}

pub async fn snapshot_init_3d(c: Cluster) {
    c.begin("Test (3D): snapshot initialization after crash");
    let n = c.n();
    c.one(&rand_cmd(), n, true).await;
    for _ in 0..11 {
        c.one(&rand_cmd(), n, true).await;
    }
    crash_all_restart_all(&c);
    c.one(&rand_cmd(), n, true).await;
    crash_all_restart_all(&c);
    c.one(&rand_cmd(), n, true).await;
}
