//! Random reconfigurations under faults against the sharded store (`flotilla sim shardkv`).
//!
//! Each seed draws a setup — 3 or 4 groups of 3 or 5 servers, 3 to 8 clients, snapshots at
//! a drawn `maxraftstate` or none — and runs clients for [`CLIENT_PHASE`] while a fault task
//! joins, leaves and moves shards between groups, crashes and restarts servers and whole
//! groups, partitions groups, and makes every network lose and delay messages. Then
//! everything heals and the run checks:
//!
//! - the whole history of every client, with the linearizability checker;
//! - that no acknowledged write was lost: each client appends numbered elements to its own
//!   key, and after the heal the key holds every acknowledged append exactly once, in order
//!   (and each client's reads of its key see exactly its acknowledged appends);
//! - throughout the run (every 20 ms, on every live replica): the replica's configuration
//!   is the controller's of that number, and every shard it serves or awaits is its own in
//!   that configuration — so no shard is served by two groups in one configuration;
//! - liveness: after the heal every client's last operation and the final reads complete
//!   within the test budget.
//!
//! A seed's run is a pure function of the seed.

use std::cell::{Cell, RefCell};
use std::collections::BTreeMap;
use std::rc::Rc;
use std::time::Duration;

use flotilla_kv::history::OpLog;
use flotilla_shardctrler::{Config, Gid};
use flotilla_sim::{now, sleep, spawn, with_rng};

use crate::group::ShardState;
use crate::sim::{ShardKvConfig, ShardKvSim};

/// How long clients run while faults are injected, in virtual time.
pub const CLIENT_PHASE: Duration = Duration::from_secs(10);

/// What a seed fixes before the run.
#[derive(Clone, Copy, Debug, Default)]
pub struct Setup {
    pub groups: usize,
    pub servers: usize,
    pub clients: usize,
    pub max_raft_state: Option<u64>,
}

impl Setup {
    pub fn draw(plan: &mut flotilla_sim::Rng) -> Setup {
        Setup {
            groups: plan.range(3, 5) as usize,
            servers: *plan.pick(&[3, 3, 5]),
            clients: plan.range(3, 9) as usize,
            max_raft_state: match plan.below(3) {
                0 => None,
                1 => Some(plan.range(200, 1500)),
                _ => Some(plan.range(1500, 20_000)),
            },
        }
    }
}

/// What one seed's run looked like.
#[derive(Clone, Debug, Default)]
pub struct SeedReport {
    pub setup: Setup,
    pub operations: usize,
    pub acknowledged_appends: u64,
    pub faults: u64,
    pub reconfigurations: u64,
    pub configurations: u64,
    pub ownership_checks: u64,
    pub virtual_time: Duration,
    /// The checker could not decide within its budget (a pass, as in the lab).
    pub undecided: bool,
}

/// Runs the schedule of `seed`; panics with the first violated property.
pub fn run_seed(seed: u64) -> SeedReport {
    let mut plan = flotilla_sim::Rng::new(seed ^ 0x0053_4841_5244);
    let setup = Setup::draw(&mut plan);
    let report = Rc::new(RefCell::new(SeedReport {
        setup,
        ..SeedReport::default()
    }));
    let out = report.clone();
    let rt = flotilla_sim::Runtime::new(seed);
    rt.block_on(async move {
        let sim = ShardKvSim::new(ShardKvConfig {
            groups: setup.groups,
            servers: setup.servers,
            reliable: true,
            max_raft_state: setup.max_raft_state,
            first_gid: 100,
        });
        sim.join(&[0]).await;
        let stop = Rc::new(Cell::new(false));
        let checks = Rc::new(Cell::new(0u64));
        let watcher = spawn(watch_ownership(sim.clone(), checks.clone()));
        let workload = spawn(clients(sim.clone(), setup.clients, stop.clone()));
        let (faults, reconfigurations) = chaos(&sim).await;
        heal(&sim);
        stop.set(true);
        let acknowledged = workload.await;
        watcher.abort();
        let undecided = match sim.log().check(OpLog::CHECK_BUDGET) {
            flotilla_lincheck::CheckResult::Ok => false,
            flotilla_lincheck::CheckResult::Unknown => true,
            flotilla_lincheck::CheckResult::Illegal(explanation) => {
                panic!("history is not linearizable:\n{explanation}")
            }
        };
        let latest = sim.ctrl().clerk().query(None).await.expect("not cut off");
        let mut r = out.borrow_mut();
        r.operations = sim.log().len();
        r.acknowledged_appends = acknowledged;
        r.faults = faults;
        r.reconfigurations = reconfigurations;
        r.configurations = latest.num;
        r.ownership_checks = checks.get();
        r.undecided = undecided;
        drop(r);
        sim.end();
    });
    report.borrow_mut().virtual_time = rt.now();
    let report = report.borrow().clone();
    report
}

fn heal(sim: &ShardKvSim) {
    for g in sim.groups() {
        for i in 0..g.group().n() {
            if !g.group().cluster().is_alive(i) {
                g.start(i);
            }
            g.group().cluster().connect(i);
        }
    }
    sim.set_reliable(true);
}

fn pick<T: Copy>(items: &[T]) -> Option<T> {
    (!items.is_empty()).then(|| items[with_rng(|r| r.below(items.len() as u64)) as usize])
}

/// Injects faults and reconfigurations until [`CLIENT_PHASE`] is over. Returns how many
/// faults, and how many reconfigurations the controller accepted.
async fn chaos(sim: &ShardKvSim) -> (u64, u64) {
    let t0 = now();
    let (mut faults, mut reconfigurations) = (0, 0);
    let ctrl = sim.ctrl().clerk();
    let groups = sim.groups();
    while now() - t0 < CLIENT_PHASE {
        sleep(Duration::from_millis(with_rng(|r| r.range(100, 700)))).await;
        faults += 1;
        let config = ctrl.query(None).await.expect("not cut off");
        let members: Vec<usize> = (0..groups.len())
            .filter(|&gi| config.groups.contains_key(&sim.gid(gi)))
            .collect();
        let others: Vec<usize> = (0..groups.len())
            .filter(|gi| !members.contains(gi))
            .collect();
        let group = &groups[with_rng(|r| r.below(groups.len() as u64)) as usize];
        let n = group.group().n();
        match with_rng(|r| r.below(15)) {
            0 | 1 | 12 => {
                if let Some(gi) = pick(&others) {
                    reconfigurations += u64::from(join(sim, &ctrl, gi).await);
                }
            }
            2 | 13 => {
                if members.len() > 1 {
                    let gi = pick(&members).expect("members");
                    let left = ctrl.leave(vec![sim.gid(gi)]).await.expect("not cut off");
                    reconfigurations += u64::from(left.is_ok());
                }
            }
            3 | 14 => {
                let shard = with_rng(|r| r.below(config.shards.len() as u64)) as usize;
                if let Some(gi) = pick(&members) {
                    let moved = ctrl
                        .move_shard(shard, sim.gid(gi))
                        .await
                        .expect("not cut off");
                    reconfigurations += u64::from(moved.is_ok());
                }
            }
            4 | 5 => {
                // Crash one server of a group (a minority at most), restart it later.
                let down = (0..n)
                    .filter(|&i| !group.group().cluster().is_alive(i))
                    .count();
                let i = with_rng(|r| r.below(n as u64)) as usize;
                if group.group().cluster().is_alive(i) && down < n / 2 {
                    group.crash(i);
                }
            }
            6 | 7 => {
                for i in 0..n {
                    if !group.group().cluster().is_alive(i) {
                        group.start(i);
                    }
                }
            }
            8 => {
                // A whole group down for a while.
                group.shutdown();
                sleep(Duration::from_millis(with_rng(|r| r.range(10, 1500)))).await;
                group.start_all();
            }
            9 => {
                let (mut a, mut b) = (Vec::new(), Vec::new());
                for i in 0..n {
                    if with_rng(|r| r.chance(0.5)) {
                        a.push(i)
                    } else {
                        b.push(i)
                    }
                }
                group.group().cluster().partition(&[&a, &b]);
            }
            10 => (0..n).for_each(|i| group.group().cluster().connect(i)),
            _ => sim.set_reliable(with_rng(|r| r.chance(0.5))),
        }
    }
    (faults, reconfigurations)
}

async fn join(sim: &ShardKvSim, ctrl: &flotilla_shardctrler::sim::CtrlClerk, gi: usize) -> bool {
    let groups: BTreeMap<Gid, Vec<String>> = [(sim.gid(gi), sim.group(gi).names())].into();
    ctrl.join(groups).await.expect("not cut off").is_ok()
}

/// Every 20 ms: each live replica's configuration is the controller's of that number, and
/// each shard it serves or awaits is its group's there.
async fn watch_ownership(sim: ShardKvSim, checks: Rc<Cell<u64>>) {
    let mut history: BTreeMap<u64, Config> = BTreeMap::new();
    loop {
        sleep(Duration::from_millis(20)).await;
        // The controller's configurations, from its most advanced live replica.
        let ctrl = sim.ctrl().group();
        let best = (0..ctrl.n())
            .filter_map(|i| ctrl.handle(i))
            .max_by_key(|h| h.with_state(|c| c.latest().num));
        if let Some(h) = best {
            h.with_state(|c| {
                for num in 0..=c.latest().num {
                    history
                        .entry(num)
                        .or_insert_with(|| c.config(Some(num)).clone());
                }
            });
        }
        for g in sim.groups() {
            for i in 0..g.group().n() {
                let Some(replica) = g.group().handle(i) else {
                    continue;
                };
                replica.with_state(|state| {
                    let config = state.config();
                    if config.num == 0 {
                        return;
                    }
                    let Some(known) = history.get(&config.num) else {
                        panic!(
                            "group {} replica {i} is at configuration {} the controller never made",
                            g.gid(),
                            config.num
                        );
                    };
                    assert_eq!(
                        config.shards, known.shards,
                        "group {} replica {i}: configuration {} differs from the controller's",
                        g.gid(),
                        config.num
                    );
                    for (shard, s) in state.shard_states() {
                        if s != ShardState::Frozen {
                            assert_eq!(
                                known.owner(shard),
                                g.gid(),
                                "group {} replica {i} holds shard {shard} as {s:?} in configuration {}, which gives it to {}",
                                g.gid(),
                                config.num,
                                known.owner(shard)
                            );
                        }
                    }
                });
                checks.set(checks.get() + 1);
            }
        }
    }
}

/// Each client appends numbered elements to its own key and reads it back, and mixes in
/// puts, appends and gets of shared keys. Returns the acknowledged appends to own keys,
/// after checking that none was lost.
async fn clients(sim: ShardKvSim, clients: usize, stop: Rc<Cell<bool>>) -> u64 {
    let tasks: Vec<_> = (0..clients)
        .map(|cli| {
            let (sim, stop) = (sim.clone(), stop.clone());
            spawn(async move {
                let ck = sim.clerk();
                let me = cli as i64;
                // Keys start with a digit so they spread over the shards (first byte mod 10).
                let own = format!("{cli}own");
                let (mut j, mut last) = (0usize, String::new());
                while !stop.get() {
                    let shared = format!("{}s", with_rng(|r| r.below(10)));
                    match with_rng(|r| r.below(10)) {
                        0..=3 => {
                            let element = format!("x {cli} {j} y");
                            let old = ck.logged_append(me, &own, &element).await;
                            assert_same_appends(&own, "before my append", &old, &last);
                            last.push_str(&element);
                            j += 1;
                        }
                        4 => {
                            let v = ck.logged_get(me, &own).await;
                            assert_same_appends(&own, "read by its client", &v, &last);
                        }
                        5 => ck.logged_put(me, &shared, &format!("p{cli}.{j}")).await,
                        6 | 7 => {
                            ck.logged_append(me, &shared, &format!("a{cli}.{j}")).await;
                        }
                        _ => {
                            ck.logged_get(me, &shared).await;
                        }
                    }
                }
                (j, last)
            })
        })
        .collect();
    let mut total = 0;
    let reader = sim.clerk();
    for (cli, task) in tasks.into_iter().enumerate() {
        let (j, last) = task.await;
        total += j as u64;
        let v = reader.logged_get(-1, &format!("{cli}own")).await;
        assert_same_appends(&format!("{cli}own"), "after the heal", &v, &last);
    }
    total
}

/// Panics unless `found` (a client's own key, read at `when`) holds exactly the appends
/// `acknowledged`; the message says how many each holds and where they first differ,
/// not the whole values.
fn assert_same_appends(key: &str, when: &str, found: &str, acknowledged: &str) {
    if found == acknowledged {
        return;
    }
    let found: Vec<&str> = found.split_inclusive(" y").collect();
    let acknowledged: Vec<&str> = acknowledged.split_inclusive(" y").collect();
    let at = found
        .iter()
        .zip(&acknowledged)
        .take_while(|(f, a)| f == a)
        .count();
    panic!(
        "key {key} {when}: holds {} appends where {} were acknowledged; \
         first difference at append {at}: found {:?}, acknowledged {:?}",
        found.len(),
        acknowledged.len(),
        found.get(at),
        acknowledged.get(at),
    );
}
