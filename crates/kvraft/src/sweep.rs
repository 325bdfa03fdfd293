//! Random fault schedules against the replicated KV service (`flotilla sim kvraft`).
//!
//! Each seed draws a setup — 3, 5 or 7 servers; 3 to 15 clients; the 2024 or the 2025 API;
//! snapshots at a drawn `maxraftstate` or none; the real WAL on the simulated file system
//! (whose crashes tear, zero or flip unsynced bytes) or the in-memory disk; fast or slow
//! disks; Raft timing, pre-vote and check-quorum, lease reads, small batches of committed
//! entries per `Ready` — and runs clients for [`CLIENT_PHASE`]
//! while a fault task partitions, crashes and restarts servers, makes the network lose and
//! delay messages (also for seconds), and hands leadership over. Then everything heals and
//! the run checks:
//!
//! - the Raft invariants, on every event of every server (as in `flotilla sim raft`);
//! - the whole history of every client, with the linearizability checker;
//! - that no acknowledged write was lost: with the 2024 API each client appends numbered
//!   elements to its own key, and after the heal its key must hold every acknowledged append
//!   exactly once, in order; with the 2025 API each key's final version must be at least
//!   the number of puts acknowledged OK on it (and at most OK plus `ErrMaybe`);
//! - liveness: after the heal every client's last operation completes, and a fresh clerk
//!   reads every key, within the test budget.
//!
//! A seed's run is a pure function of the seed.

use std::cell::{Cell, RefCell};
use std::rc::Rc;
use std::time::Duration;

use flotilla_kv::history::OpLog;
use flotilla_kv::KvError;
use flotilla_raft_sim::cluster::{ClusterConfig, StorageKind};
use flotilla_sim::fs::CrashFaults;
use flotilla_sim::net::Conditions;
use flotilla_sim::{now, sleep, spawn, with_rng};

use crate::lab4::kvraft2024::check_appends;
use crate::sim::{KvRaftSim, RaftClerk, MESSAGE_LATENCY};

/// How long clients run while faults are injected, in virtual time.
pub const CLIENT_PHASE: Duration = Duration::from_secs(8);

/// Shared keys the clients contend on.
const SHARED_KEYS: u64 = 5;

/// What a seed fixes before the run.
#[derive(Clone, Copy, Debug, Default)]
pub struct Setup {
    pub servers: usize,
    pub clients: usize,
    /// The 2025 versioned API (else 2024 Put/Append/Get).
    pub versioned: bool,
    pub max_raft_state: Option<u64>,
    pub wal: Option<CrashFaults>,
    pub sync_latency: (Duration, Duration),
    pub election_ticks: u32,
    pub heartbeat_ticks: u32,
    pub pre_vote: bool,
    pub check_quorum: bool,
    /// `Config::max_committed_bytes_per_ready`, small on some seeds: committed entries reach
    /// the rsm over several `Ready`s, so reads wait for their index to be applied.
    pub max_committed_bytes_per_ready: Option<usize>,
    /// `Config::lease_reads`.
    pub lease_reads: bool,
}

impl Setup {
    pub fn draw(plan: &mut flotilla_sim::Rng) -> Setup {
        let servers = *plan.pick(&[3, 5, 7]);
        let clients = plan.range(3, 16) as usize;
        let versioned = plan.chance(0.5);
        let max_raft_state = match plan.below(3) {
            0 => None,
            1 => Some(plan.range(300, 1500)),
            _ => Some(plan.range(1500, 20_000)),
        };
        let wal = plan.chance(0.3).then(|| match plan.below(3) {
            0 => CrashFaults::SYNCED_ONLY,
            1 => CrashFaults::PREFIX,
            _ => CrashFaults::ALL,
        });
        let ms = Duration::from_millis;
        let sync_latency = match plan.below(4) {
            0 | 1 => (ms(1), ms(2)),
            2 => (Duration::from_micros(100), ms(1)),
            _ => (ms(2), ms(30)),
        };
        let election_ticks = plan.range(15, 50) as u32;
        let heartbeat_ticks = plan.range(2, election_ticks as u64 / 3) as u32;
        Setup {
            servers,
            clients,
            versioned,
            max_raft_state,
            wal,
            sync_latency,
            election_ticks,
            heartbeat_ticks,
            pre_vote: plan.chance(0.7),
            check_quorum: plan.chance(0.8),
            // Drawn last, so the draws before keep their values.
            max_committed_bytes_per_ready: plan.chance(0.3).then(|| plan.range(1, 200) as usize),
            lease_reads: plan.chance(0.3),
        }
    }

    fn cluster_config(&self) -> ClusterConfig {
        let mut cfg = ClusterConfig::new(self.servers, true, false);
        if let Some(faults) = self.wal {
            cfg.storage = StorageKind::Wal(faults);
        }
        cfg.sync_latency = self.sync_latency;
        cfg.raft.leader_noop = true;
        cfg.raft.pre_vote = self.pre_vote;
        cfg.raft.check_quorum = self.check_quorum;
        cfg.raft.election_ticks = self.election_ticks;
        cfg.raft.heartbeat_ticks = self.heartbeat_ticks;
        if let Some(bytes) = self.max_committed_bytes_per_ready {
            cfg.raft.max_committed_bytes_per_ready = bytes;
        }
        cfg.raft.lease_reads = self.lease_reads;
        cfg
    }
}

/// What one seed's run looked like.
#[derive(Clone, Debug, Default)]
pub struct SeedReport {
    pub setup: Setup,
    pub operations: usize,
    pub faults: u64,
    pub acknowledged_writes: u64,
    pub virtual_time: Duration,
    pub invariant_checks: u64,
    pub reads_confirmed: u64,
    /// The checker could not decide the history within its budget (counted as a pass, as
    /// in the lab; the seed replays it).
    pub undecided: bool,
}

/// Runs the schedule of `seed`; panics with the first violated property.
pub fn run_seed(seed: u64) -> SeedReport {
    let mut plan = flotilla_sim::Rng::new(seed ^ 0x4B56_5EED);
    let setup = Setup::draw(&mut plan);
    let report = Rc::new(RefCell::new(SeedReport {
        setup,
        ..SeedReport::default()
    }));
    let out = report.clone();
    let rt = flotilla_sim::Runtime::new(seed);
    rt.block_on(async move {
        let sim = KvRaftSim::with_cluster(setup.cluster_config(), setup.max_raft_state);
        sim.cluster()
            .net()
            .set_latency(MESSAGE_LATENCY.0, MESSAGE_LATENCY.1);
        let stop = Rc::new(Cell::new(false));
        let workload = if setup.versioned {
            spawn(versioned_clients(sim.clone(), setup.clients, stop.clone()))
        } else {
            spawn(plain_clients(sim.clone(), setup.clients, stop.clone()))
        };
        let faults = chaos(&sim).await;
        stop.set(true);
        heal(&sim);
        let acknowledged = workload.await;
        let result = sim.log().check(OpLog::CHECK_BUDGET);
        let undecided = match result {
            flotilla_lincheck::CheckResult::Ok => false,
            flotilla_lincheck::CheckResult::Unknown => true,
            flotilla_lincheck::CheckResult::Illegal(explanation) => {
                panic!("history is not linearizable:\n{explanation}")
            }
        };
        let mut r = out.borrow_mut();
        r.operations = sim.log().len();
        r.faults = faults;
        r.acknowledged_writes = acknowledged;
        r.undecided = undecided;
        r.invariant_checks = sim.cluster().invariants().checks;
        r.reads_confirmed = sim.cluster().invariants().reads_confirmed;
        drop(r);
        sim.end();
    });
    report.borrow_mut().virtual_time = rt.now();
    let report = report.borrow().clone();
    report
}

/// Heals everything: every server running and connected, the networks reliable.
fn heal(sim: &KvRaftSim) {
    for i in 0..sim.n() {
        if !sim.cluster().is_alive(i) {
            sim.start(i);
        }
    }
    sim.connect_all();
    sim.set_reliable(true);
    sim.set_long_delays(false);
}

/// Injects faults until [`CLIENT_PHASE`] is over. Returns how many.
async fn chaos(sim: &KvRaftSim) -> u64 {
    let n = sim.n();
    let t0 = now();
    let mut faults = 0;
    while now() - t0 < CLIENT_PHASE {
        sleep(Duration::from_millis(with_rng(|r| r.range(100, 900)))).await;
        faults += 1;
        match with_rng(|r| r.below(12)) {
            0 | 1 => {
                let (mut a, mut b) = (Vec::new(), Vec::new());
                for i in 0..n {
                    if with_rng(|r| r.chance(0.5)) {
                        a.push(i)
                    } else {
                        b.push(i)
                    }
                }
                sim.partition(&a, &b);
            }
            2 => sim.connect_all(),
            3 | 4 => {
                // Crash a server (at most a minority down at once), restart it later.
                let down = (0..n).filter(|&i| !sim.cluster().is_alive(i)).count();
                let i = with_rng(|r| r.below(n as u64)) as usize;
                if sim.cluster().is_alive(i) && down < n / 2 {
                    sim.crash(i);
                }
            }
            5 | 6 => {
                for i in 0..n {
                    if !sim.cluster().is_alive(i) {
                        sim.start(i);
                        sim.cluster().connect(i);
                    }
                }
            }
            7 => {
                // Crash every server at once and bring them back.
                sim.shutdown_all();
                sleep(Duration::from_millis(with_rng(|r| r.range(10, 500)))).await;
                sim.start_all();
            }
            8 => sim.set_reliable(with_rng(|r| r.chance(0.5))),
            9 => sim.set_long_delays(with_rng(|r| r.chance(0.3))),
            10 => {
                if let Some(l) = sim.leader() {
                    let to = with_rng(|r| r.below(n as u64)) as usize;
                    sim.cluster().transfer_leader(l, to);
                }
            }
            _ => {
                // Cut the leader off alone: its clients' requests wait for the heal.
                if let Some(l) = sim.leader() {
                    sim.cluster().disconnect(l);
                }
            }
        }
    }
    faults
}

/// 2024 API: each client appends numbered elements to its own key and reads it back, and
/// mixes in puts, appends and gets of shared keys. Returns the acknowledged writes after
/// checking that none was lost.
async fn plain_clients(sim: KvRaftSim, clients: usize, stop: Rc<Cell<bool>>) -> u64 {
    let tasks: Vec<_> = (0..clients)
        .map(|cli| {
            let (sim, stop) = (sim.clone(), stop.clone());
            spawn(async move {
                let ck = sim.clerk();
                let me = cli as i64;
                let own = format!("own{cli}");
                let (mut j, mut last) = (0usize, String::new());
                let mut writes = 0u64;
                while !stop.get() {
                    let shared = format!("s{}", with_rng(|r| r.below(SHARED_KEYS)));
                    match with_rng(|r| r.below(10)) {
                        0..=3 => {
                            let nv = format!("x {cli} {j} y");
                            let old = ck.logged_append(me, &own, &nv).await;
                            assert_eq!(old, last, "{own} held {old:?} before my append");
                            last.push_str(&nv);
                            j += 1;
                            writes += 1;
                        }
                        4 => {
                            let v = ck.logged_get(me, &own).await;
                            assert_eq!(v, last, "{own} lost acknowledged appends");
                        }
                        5 | 6 => {
                            ck.logged_put(me, &shared, &format!("p{cli}.{j}")).await;
                            writes += 1;
                        }
                        7 => {
                            ck.logged_append(me, &shared, &format!("a{cli}.{j}")).await;
                            writes += 1;
                        }
                        _ => {
                            ck.logged_get(me, &shared).await;
                        }
                    }
                }
                (j, writes)
            })
        })
        .collect();
    let mut total = 0;
    let reader = sim.clerk();
    for (cli, task) in tasks.into_iter().enumerate() {
        let (j, writes) = task.await;
        total += writes;
        let v = reader.logged_get(-1, &format!("own{cli}")).await;
        check_appends(cli, &v, j);
    }
    for k in 0..SHARED_KEYS {
        reader.logged_get(-1, &format!("s{k}")).await;
    }
    total
}

/// 2025 API: clients put at the version they believe current (learning it from the reply
/// on a mismatch) and get; each key's final version must account for the acknowledged puts.
async fn versioned_clients(sim: KvRaftSim, clients: usize, stop: Rc<Cell<bool>>) -> u64 {
    let ok = Rc::new(RefCell::new(vec![0u64; SHARED_KEYS as usize]));
    let maybe = Rc::new(RefCell::new(vec![0u64; SHARED_KEYS as usize]));
    let tasks: Vec<_> = (0..clients)
        .map(|cli| {
            let (sim, stop, ok, maybe) = (sim.clone(), stop.clone(), ok.clone(), maybe.clone());
            spawn(async move {
                let ck: RaftClerk = sim.clerk();
                let me = cli as i64;
                let mut versions = vec![0u64; SHARED_KEYS as usize];
                let mut n = 0u64;
                while !stop.get() {
                    let k = with_rng(|r| r.below(SHARED_KEYS)) as usize;
                    let key = format!("k{k}");
                    if with_rng(|r| r.chance(0.6)) {
                        n += 1;
                        match ck
                            .logged_vput(me, &key, &format!("{cli}.{n}"), versions[k])
                            .await
                        {
                            Ok(()) => {
                                ok.borrow_mut()[k] += 1;
                                versions[k] += 1;
                            }
                            Err(KvError::Maybe) => maybe.borrow_mut()[k] += 1,
                            Err(KvError::Version) | Err(KvError::NoKey) => {}
                        }
                        if let Ok((_, v)) = ck.logged_vget(me, &key).await {
                            versions[k] = v;
                        }
                    } else if let Ok((_, v)) = ck.logged_vget(me, &key).await {
                        versions[k] = v;
                    }
                }
            })
        })
        .collect();
    for task in tasks {
        task.await;
    }
    let reader = sim.clerk();
    for k in 0..SHARED_KEYS as usize {
        let (ok, maybe) = (ok.borrow()[k], maybe.borrow()[k]);
        let version = match reader.logged_vget(-1, &format!("k{k}")).await {
            Ok((_, v)) => v,
            Err(_) => 0,
        };
        assert!(
            version >= ok,
            "k{k}: version {version} but {ok} puts were acknowledged: a write was lost"
        );
        assert!(
            version <= ok + maybe,
            "k{k}: version {version} but only {ok} OK and {maybe} maybe puts"
        );
    }
    let total: u64 = ok.borrow().iter().sum();
    total
}

impl KvRaftSim {
    /// Turns the long delays of labrpc on or off on both networks (a call to a cut-off
    /// server fails only after up to 7 s).
    pub fn set_long_delays(&self, on: bool) {
        let net = self.rpc_net();
        net.set_conditions(Conditions {
            long_delays: on,
            ..net.conditions()
        });
        self.cluster().set_long_reordering(on);
    }
}
