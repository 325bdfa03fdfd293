//! Randomized fault sweep: many seeds, each a random schedule of faults against a Raft group.
//!
//! For one seed everything is drawn from the seed alone. First a [`Setup`]: 3 or 5 servers;
//! a snapshot interval (or none); network jitter from none to 50 ms; disk syncs of 50–500 µs,
//! of 1–50 ms (slow fsyncs) or anything up to 20 ms; message duplication, with the copy
//! arriving up to 300 ms late; receive batching (a server waits up to 50 ms after a message
//! before taking its next `Ready`, so several messages land between two `Ready`s); pre-vote
//! and check-quorum on or off; election and heartbeat timeouts; and, for 30% of seeds, the
//! real `WalStorage` on the simulated file system instead of memory, whose crashes stop
//! anywhere inside a batch and tear, zero-fill or flip the unsynced bytes; lease reads on
//! 30% of seeds, an in-flight window of 1–4 appends on 30%, and (drawn last) on half of the
//! WAL seeds I/O errors that kill servers: after a start, some file-system call (a write, a
//! sync, a rename, a removal) fails with `EIO` or `ENOSPC`, the WAL refuses all further
//! writes, the node loop stops and the server is down until the schedule starts it again.
//!
//! Then about 20 s of virtual time in which every 10–500 ms one fault is injected — crash,
//! crash of the leader right after it took a burst of commands (as in Figure 8, often followed
//! by a quick restart), restart, disconnect, reconnect, a random partition, healing
//! everything, switching the network between reliable and lossy, long reordering on or off,
//! clients falling quiet or resuming — while clients propose commands to whoever claims to
//! lead, sometimes in bursts. Throughout, the harness checks every property of
//! [`crate::invariants`] as events happen (election safety per role change and per message,
//! leader append-only, log matching, acks and votes backed by the synced disk, one vote per
//! term and no term going back across restarts, committed ⇒ durable on a majority, leader
//! completeness), the applier's checks of [`crate::cluster`] (no two servers apply different
//! commands at one index, in order, no gaps), that no server refuses a message from its
//! correct peers, and on WAL seeds that every restart recovers exactly the synced state.
//!
//! Then every fault is healed (and no more I/O errors armed) and the sweep demands liveness: a new command must be applied by
//! every server within the tester's `one()` bound (10 s of virtual time, or it fails), and
//! every index up to it must be applied everywhere.
//!
//! A failing seed is reported with the first violated property; `--seed S` replays it and
//! prints its setup.

use std::cell::Cell;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::rc::Rc;
use std::time::Duration;

use flotilla_sim::{now, sleep, spawn, with_rng};

use flotilla_sim::fs::CrashFaults;

use crate::cluster::{int_cmd, Cluster, ClusterConfig, IoErrors, StorageKind};

/// How long faults are injected, in virtual time.
const FAULT_PHASE: Duration = Duration::from_secs(20);

/// On [`Setup::io_errors`] seeds: half of the starts arm an error within the next 400 calls,
/// a few hundred milliseconds to a few seconds of a server's life.
const IO_ERRORS: IoErrors = IoErrors {
    per_start: 0.5,
    within_calls: 400,
};

/// What one seed's run looked like.
#[derive(Clone, Debug, Default)]
pub struct SeedReport {
    pub setup: Setup,
    pub servers: usize,
    pub faults: u64,
    pub leaders: usize,
    pub committed: u64,
    pub virtual_time: Duration,
    pub invariant_checks: u64,
    /// ReadIndex reads confirmed (each checked against what was applied when it was asked).
    pub reads_confirmed: u64,
    /// Servers an injected I/O error took down (on seeds with [`Setup::io_errors`]).
    pub storage_deaths: u64,
}

/// Runs the schedule of `seed`. `Err` holds the first violated property.
pub fn run_seed(seed: u64) -> Result<SeedReport, String> {
    let report = Rc::new(std::cell::RefCell::new(SeedReport::default()));
    let out = report.clone();
    let result = catch_unwind(AssertUnwindSafe(|| {
        let mut plan = flotilla_sim::Rng::new(seed ^ 0x5EED_5EED);
        let setup = Setup::draw(&mut plan);
        let cfg = setup.cluster_config();
        report.borrow_mut().setup = setup;
        let (_, virtual_time) = crate::run_cluster(seed, cfg, move |c| async move {
            c.net()
                .set_latency(Duration::ZERO, Duration::from_millis(setup.latency_ms));
            c.net()
                .set_duplication(setup.duplicate_per_mille, setup.duplicate_max_lag);
            let faults = chaos(&c).await;
            let committed = heal_and_check_liveness(&c).await;
            let mut r = out.borrow_mut();
            r.servers = c.n();
            r.faults = faults;
            r.leaders = c.invariants().leaders().len();
            r.invariant_checks = c.invariants().checks;
            r.reads_confirmed = c.invariants().reads_confirmed;
            r.storage_deaths = c.storage_deaths();
            r.committed = committed;
        });
        report.borrow_mut().virtual_time = virtual_time;
    }));
    match result {
        Ok(()) => Ok(report.borrow().clone()),
        Err(panic) => Err(crate::panic_message(&*panic)),
    }
}

/// What a seed fixes before the run: the group, its Raft settings, its disks and network.
#[derive(Clone, Copy, Debug, Default)]
pub struct Setup {
    pub servers: usize,
    pub snapshot_interval: Option<u64>,
    pub latency_ms: u64,
    /// Range of one disk sync. Slow syncs (up to 50 ms) let several messages reach a server
    /// between two of its `Ready`s, the schedules that batching bugs need.
    pub sync_latency: (Duration, Duration),
    pub duplicate_per_mille: u64,
    /// How late a duplicate may arrive after the original.
    pub duplicate_max_lag: Duration,
    pub receive_batching: Option<(Duration, Duration)>,
    pub pre_vote: bool,
    pub check_quorum: bool,
    /// New leaders append a no-op (`Config::leader_noop`).
    pub leader_noop: bool,
    /// `Config::max_committed_bytes_per_ready`: small on some seeds, so committed entries
    /// reach the service over several `Ready`s.
    pub max_committed_bytes_per_ready: usize,
    pub election_ticks: u32,
    pub heartbeat_ticks: u32,
    /// `Some`: the servers run the real `WalStorage` on the simulated file system, whose
    /// crashes tear, zero or flip unsynced bytes as these faults say.
    pub wal: Option<CrashFaults>,
    /// `Config::lease_reads`: the reader's reads are answered from the lease while it holds.
    pub lease_reads: bool,
    /// `Config::max_inflight_messages`: a window of 1–4 appends on some seeds, so followers
    /// are paused and freed often (drawn after everything else).
    pub max_inflight_messages: usize,
    /// With the WAL, on half of those seeds: I/O errors (`EIO`, `ENOSPC`) on any file-system
    /// call kill servers, as [`IoErrors`] describes (drawn last of all).
    pub io_errors: bool,
}

impl Setup {
    /// Draws a setup from the seed's plan generator.
    pub fn draw(plan: &mut flotilla_sim::Rng) -> Setup {
        let servers = if plan.chance(0.5) { 3 } else { 5 };
        let snapshot_interval = match plan.below(10) {
            0..=3 => None,
            4..=6 => Some(plan.range(3, 12)),
            _ => Some(plan.range(12, 40)),
        };
        // Jitter reorders messages on a link: an append sent just before a snapshot can
        // arrive just after it.
        let latency_ms = match plan.below(10) {
            0..=3 => plan.below(3),
            4..=6 => plan.range(3, 10),
            _ => plan.range(10, 50),
        };
        let us = Duration::from_micros;
        let sync_latency = match plan.below(4) {
            0 | 1 => (us(50), us(500)),
            2 => (us(1_000), us(50_000)),
            _ => (us(0), us(20_000)),
        };
        let duplicate_per_mille = if plan.chance(0.4) {
            0
        } else {
            plan.range(10, 300)
        };
        let duplicate_max_lag = Duration::from_millis(plan.range(1, 300));
        let receive_batching = plan
            .chance(0.7)
            .then(|| (Duration::ZERO, Duration::from_millis(plan.range(1, 50))));
        let election_ticks = plan.range(10, 50) as u32;
        let heartbeat_ticks = plan.range(1, election_ticks as u64 / 3) as u32;
        let wal = plan.chance(0.3).then(|| match plan.below(4) {
            0 => CrashFaults::SYNCED_ONLY,
            1 => CrashFaults::PREFIX,
            _ => CrashFaults::ALL,
        });
        Setup {
            wal,
            servers,
            snapshot_interval,
            latency_ms,
            sync_latency,
            duplicate_per_mille,
            duplicate_max_lag,
            receive_batching,
            pre_vote: plan.chance(0.7),
            check_quorum: plan.chance(0.7),
            election_ticks,
            heartbeat_ticks,
            // Drawn last (fields are evaluated in order), so the draws before keep their values.
            leader_noop: plan.chance(0.3),
            max_committed_bytes_per_ready: if plan.chance(0.3) {
                plan.range(1, 64) as usize
            } else {
                flotilla_raft::Config::new(0, vec![0]).max_committed_bytes_per_ready
            },
            lease_reads: plan.chance(0.3),
            max_inflight_messages: if plan.chance(0.3) {
                plan.range(1, 5) as usize
            } else {
                flotilla_raft::Config::new(0, vec![0]).max_inflight_messages
            },
            io_errors: plan.chance(0.5) && wal.is_some(),
        }
    }

    fn cluster_config(&self) -> ClusterConfig {
        let mut cfg = ClusterConfig::new(self.servers, true, false);
        if let Some(faults) = self.wal {
            cfg.storage = StorageKind::Wal(faults);
            cfg.io_errors = self.io_errors.then_some(IO_ERRORS);
        }
        cfg.snapshot_interval = self.snapshot_interval;
        cfg.sync_latency = self.sync_latency;
        cfg.receive_batching = self.receive_batching;
        cfg.raft.pre_vote = self.pre_vote;
        cfg.raft.check_quorum = self.check_quorum;
        cfg.raft.leader_noop = self.leader_noop;
        cfg.raft.max_committed_bytes_per_ready = self.max_committed_bytes_per_ready;
        cfg.raft.lease_reads = self.lease_reads;
        cfg.raft.max_inflight_messages = self.max_inflight_messages;
        cfg.raft.election_ticks = self.election_ticks;
        cfg.raft.heartbeat_ticks = self.heartbeat_ticks;
        cfg
    }
}

/// Injects faults for [`FAULT_PHASE`] while clients propose. Returns how many faults.
async fn chaos(c: &Cluster) -> u64 {
    let n = c.n();
    let stop = Rc::new(Cell::new(false));
    // While quiet, clients propose nothing: leaders elected then replicate only entries of
    // earlier terms, the situation of the paper's Figure 8.
    let quiet = Rc::new(Cell::new(false));
    let clients: Vec<_> = (0..2)
        .map(|_| {
            let c = c.clone();
            let stop = stop.clone();
            let quiet = quiet.clone();
            spawn(async move {
                while !stop.get() {
                    if quiet.get() {
                        sleep(Duration::from_millis(20)).await;
                        continue;
                    }
                    let burst = if with_rng(|r| r.chance(0.05)) { 20 } else { 1 };
                    for _ in 0..burst {
                        let cmd = int_cmd(with_rng(|r| r.next_u64()));
                        for i in 0..n {
                            c.start_cmd(i, &cmd);
                        }
                    }
                    sleep(Duration::from_millis(with_rng(|r| r.range(5, 120)))).await;
                }
            })
        })
        .collect();
    // A reader asks every server that believes it leads for a ReadIndex read, every 37 ms
    // (no random draws of its own); the invariants check each confirmed read.
    let reader = {
        let c = c.clone();
        let stop = stop.clone();
        spawn(async move {
            let mut reads = 0u64;
            while !stop.get() {
                for i in 0..n {
                    if c.read_index(i, &reads.to_le_bytes()) {
                        reads += 1;
                    }
                }
                sleep(Duration::from_millis(37)).await;
            }
        })
    };
    let start = now();
    let mut faults = 0;
    while now() - start < FAULT_PHASE {
        sleep(Duration::from_millis(with_rng(|r| r.range(10, 500)))).await;
        faults += 1;
        let target = with_rng(|r| r.below(n as u64) as usize);
        if faults % 8 == 0 {
            // Every eighth fault also moves leadership to the fault's target (no draw of its
            // own, so the rest of the schedule is as it was).
            if let Some((leader, _)) = c.current_leader() {
                c.transfer_leader(leader, target);
            }
        }
        match with_rng(|r| r.below(100)) {
            0..=7 => c.crash(target),
            8..=14 => {
                // Figure 8's move: the leader takes commands and dies at once, leaving a
                // tail that the next leader overwrites.
                if let Some((leader, _)) = c.current_leader() {
                    for _ in 0..with_rng(|r| r.range(1, 30)) {
                        c.start_cmd(leader, &int_cmd(with_rng(|r| r.next_u64())));
                    }
                    sleep(Duration::from_millis(with_rng(|r| r.below(3)))).await;
                    c.crash(leader);
                    // Often it comes back soon, its tail diverging from a log that has only
                    // just moved on (and may just have been compacted past the divergence).
                    if with_rng(|r| r.chance(0.5)) {
                        let c = c.clone();
                        let back_after = Duration::from_millis(with_rng(|r| r.range(50, 1500)));
                        spawn(async move {
                            sleep(back_after).await;
                            if !c.is_alive(leader) && !c.finished() {
                                c.restart(leader);
                            }
                        });
                    }
                }
            }
            15..=34 => {
                if !c.is_alive(target) {
                    c.start(target);
                }
                c.connect(target);
            }
            35..=49 => c.disconnect(target),
            50..=59 => {
                let mut order: Vec<usize> = (0..n).collect();
                with_rng(|r| {
                    for k in (1..n).rev() {
                        order.swap(k, r.below(k as u64 + 1) as usize);
                    }
                });
                let cut = with_rng(|r| r.range(1, n as u64 - 1) as usize);
                c.partition(&[&order[..cut], &order[cut..]]);
            }
            60..=69 => heal(c),
            70..=79 => c.set_reliable(!c.net().is_reliable()),
            80..=84 => c.set_long_reordering(with_rng(|r| r.chance(0.5))),
            85..=89 => quiet.set(!quiet.get()),
            _ => {
                // Crash and immediately restart: loses whatever was not synced.
                c.start(target);
                c.connect(target);
            }
        }
    }
    stop.set(true);
    quiet.set(false);
    for client in clients {
        client.await;
    }
    reader.await;
    faults
}

fn heal(c: &Cluster) {
    for i in 0..c.n() {
        if !c.is_alive(i) {
            c.start(i);
        }
    }
    for i in 0..c.n() {
        c.connect(i);
    }
}

/// After the faults: everything heals, and a new command must reach every server.
async fn heal_and_check_liveness(c: &Cluster) -> u64 {
    c.disarm_io_errors();
    heal(c);
    c.set_reliable(true);
    c.set_long_reordering(false);
    // Replies delayed by long reordering may still be in flight; they are harmless.
    let index = c.one(&int_cmd(u64::MAX), c.n(), true).await;
    for i in 1..=index {
        c.wait(i, c.n(), None).await;
    }
    index
}

pub use flotilla_sim::SweepSummary;

/// Runs `count` seeds starting at `first` (consecutive), calling `on_seed` after each; with
/// `fail_fast`, stops after the first failing seed.
pub fn sweep(
    first: u64,
    count: u64,
    fail_fast: bool,
    on_seed: impl FnMut(u64, &Result<SeedReport, String>),
) -> SweepSummary {
    flotilla_sim::sweep_seeds(first, count, fail_fast, run_seed, on_seed)
}
