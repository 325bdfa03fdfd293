//! A Raft group on the simulator, with the 6.5840 tester's controls and checks.
//!
//! This is the Rust counterpart of the lab's `config.go`: it starts, crashes and restarts
//! servers, cuts and joins them, submits commands and watches what every server applies.
//! Each server is a task that owns a [`RawNode`], ticks it every [`ClusterConfig::tick`] of
//! virtual time, and handles each `Ready` the way a real driver must: write the `Persist`
//! batch to its [`Disk`], wait for the sync, then send, then apply. A crash aborts the task
//! and loses unsynced writes; a restart rebuilds the node from what the disk kept.
//!
//! The applier reproduces the tester's checks (no two servers apply different commands at one
//! index, no gaps, snapshot indexes that match), and the [`Invariants`] checker adds the Raft
//! safety properties: at most one leader per term, log matching, leader completeness. Any
//! violation panics, failing the test with its seed.

use std::cell::{Cell, RefCell};
use std::rc::Rc;
use std::time::Duration;

use flotilla_node::{App, Input};
use flotilla_raft::{Config, DurableState, Message, Persist, RawNode, Role, Snapshot};
use flotilla_sim::disk::Disk;
use flotilla_sim::fs::{CrashFaults, Fault, SimFs};
use flotilla_sim::net::{NetStats, Network, Payload};
use flotilla_sim::sync::{channel, Sender};
use flotilla_sim::{now, sleep, spawn, with_rng, JoinHandle};
use flotilla_storage::{MemStorage, Storage, StorageError, WalOptions, WalStorage};

use crate::invariants::Invariants;
use crate::server::SimHost;
use crate::tester::{Record, TesterApp};

/// 6.5840's `RaftElectionTimeout`: the allowance the tests give for an election.
pub const ELECTION_TIMEOUT: Duration = Duration::from_secs(1);
/// Servers snapshot after applying an index `i` with `(i + 1) % SNAPSHOT_INTERVAL == 0`.
pub const SNAPSHOT_INTERVAL: u64 = 10;

/// A wrapper so Raft messages can travel on the simulated network.
#[derive(Clone, Debug)]
pub struct Wire(pub Message);

impl Payload for Wire {
    fn wire_size(&self) -> usize {
        postcard::experimental::serialized_size(&self.0).unwrap_or(0)
    }
    fn is_request(&self) -> bool {
        self.0.body.is_request()
    }
}

/// Where the servers keep their Raft state.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum StorageKind {
    /// `MemStorage` behind the simulator's [`Disk`]: a crash loses the batches whose sync had
    /// not finished, each whole.
    Memory,
    /// The real [`WalStorage`] on a [`SimFs`]: a crash can stop anywhere inside a batch's
    /// writes and syncs, and damages the unsynced bytes as these faults say. A restart must
    /// recover exactly the synced state (or that plus the batch in flight, if its syncs
    /// happened to finish), never anything built from a damaged record.
    Wal(CrashFaults),
}

/// I/O errors that kill servers (with [`StorageKind::Wal`]): each time a server starts, with
/// probability `per_start` one of its next `within_calls` file-system calls (a write, a sync,
/// a rename, a removal: whichever comes) fails with `EIO` or `ENOSPC`. The WAL refuses every
/// write after it, the node loop stops, and the cluster takes the server down as a process
/// that exited: it stays down, its unsynced writes lost to the crash, until it is started
/// again. [`Cluster::disarm_io_errors`] ends them (before a liveness check).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct IoErrors {
    pub per_start: f64,
    pub within_calls: u64,
}

/// Tunables of a simulated group.
#[derive(Clone, Debug)]
pub struct ClusterConfig {
    pub servers: usize,
    pub storage: StorageKind,
    /// With [`StorageKind::Wal`]: I/O errors that kill servers.
    pub io_errors: Option<IoErrors>,
    pub reliable: bool,
    /// Use the snapshot applier (3D): snapshot after each index `i` with
    /// `(i + 1) % interval == 0` (the lab uses [`SNAPSHOT_INTERVAL`]).
    pub snapshot_interval: Option<u64>,
    pub tick: Duration,
    /// Time a disk sync takes, drawn uniformly from this range.
    pub sync_latency: (Duration, Duration),
    /// When set, a server that wakes for a message first waits a time drawn from this range,
    /// then steps everything that arrived meanwhile before it takes its next `Ready` — a
    /// driver that batches its inputs, as TiKV's raftstore polls each mailbox in rounds. More
    /// messages land between two `Ready`s than slow syncs alone produce.
    pub receive_batching: Option<(Duration, Duration)>,
    /// The Raft settings every server starts with (its `id`, `peers` and `seed` are set per
    /// server): timing, pre-vote, check-quorum, message limits.
    pub raft: Config,
    /// Print begin/end lines like the Go tester.
    pub verbose: bool,
    /// Narrate role changes, crashes and restarts as they happen (for the demo).
    pub narrate: bool,
}

impl ClusterConfig {
    pub fn new(servers: usize, reliable: bool, snapshots: bool) -> Self {
        ClusterConfig {
            servers,
            storage: StorageKind::Memory,
            io_errors: None,
            reliable,
            snapshot_interval: snapshots.then_some(SNAPSHOT_INTERVAL),
            tick: Duration::from_millis(10),
            sync_latency: (Duration::from_micros(50), Duration::from_micros(500)),
            receive_batching: None,
            raft: Config::new(0, vec![0]),
            verbose: false,
            narrate: false,
        }
    }
}

/// Builds the application server `i` replicates each time it starts, from the snapshot its
/// disk kept, with its new node (to propose to). The default is the Lab 3 tester's applier.
pub type AppFactory = Rc<dyn Fn(&Cluster, usize, &Snapshot, &Rc<RefCell<RawNode>>) -> Box<dyn App>>;

struct Server {
    node: Rc<RefCell<RawNode>>,
    inbox: Sender<Input>,
    task: JoinHandle<()>,
}

/// A server's write-ahead log on its simulated file system (with [`StorageKind::Wal`]).
pub(crate) struct WalDisk {
    /// The server's file system; replaced by what survives at each crash.
    pub(crate) fs: SimFs,
    /// Open while the server runs.
    pub(crate) wal: Option<WalStorage<SimFs>>,
    /// The batch whose syncs have not completed yet.
    pub(crate) in_flight: Option<Persist>,
}

/// Where the WAL lives on each server's file system.
const WAL_DIR: &str = "/raft";
/// Small segments, so that the sweeps start segments and delete them after snapshots.
const WAL_SEGMENT_BYTES: u64 = 4 << 10;

pub(crate) struct Inner {
    cfg: ClusterConfig,
    app: Option<AppFactory>,
    pub(crate) net: Network<Wire>,
    servers: RefCell<Vec<Option<Server>>>,
    /// What each server has synced, as the invariants see it. With [`StorageKind::Memory`]
    /// this is the server's storage itself; with [`StorageKind::Wal`] it shadows the WAL, and
    /// each restart checks the WAL against it.
    pub(crate) disks: Vec<Rc<RefCell<Disk<MemStorage>>>>,
    pub(crate) wals: Vec<RefCell<WalDisk>>,
    records: RefCell<Vec<Record>>,
    connected: RefCell<Vec<bool>>,
    pub(crate) invariants: RefCell<Invariants>,
    finished: Cell<bool>,
    /// Whether [`ClusterConfig::io_errors`] are still being armed.
    io_errors_armed: Cell<bool>,
    /// Servers an I/O error took down.
    storage_deaths: Cell<u64>,
    max_index: Cell<u64>,
    /// Baselines of `begin`.
    begin: Cell<(Duration, u64, u64, u64)>,
    started_at: Duration,
}

/// A handle to a simulated Raft group; cheap to clone into tasks.
#[derive(Clone)]
pub struct Cluster {
    inner: Rc<Inner>,
}

impl Cluster {
    /// Creates the group inside the running simulation, starts every server and connects
    /// them all, then sets the network's reliability (so servers start on a reliable net, as
    /// the Go tester does).
    pub fn new(cfg: ClusterConfig) -> Self {
        Self::build(cfg, None)
    }

    /// A group whose servers replicate the application `app` builds (instead of the Lab 3
    /// tester's applier: the tester's records stay empty).
    pub fn with_app(cfg: ClusterConfig, app: AppFactory) -> Self {
        Self::build(cfg, Some(app))
    }

    fn build(cfg: ClusterConfig, app: Option<AppFactory>) -> Self {
        let n = cfg.servers;
        let net = Network::new(n);
        let cluster = Cluster {
            inner: Rc::new(Inner {
                net,
                servers: RefCell::new((0..n).map(|_| None).collect()),
                disks: (0..n)
                    .map(|_| Rc::new(RefCell::new(Disk::new(MemStorage::new()))))
                    .collect(),
                wals: (0..n)
                    .map(|_| {
                        RefCell::new(WalDisk {
                            fs: SimFs::new(),
                            wal: None,
                            in_flight: None,
                        })
                    })
                    .collect(),
                records: RefCell::new(vec![Record::default(); n]),
                connected: RefCell::new(vec![false; n]),
                invariants: RefCell::new(Invariants::default()),
                finished: Cell::new(false),
                io_errors_armed: Cell::new(true),
                storage_deaths: Cell::new(0),
                max_index: Cell::new(0),
                begin: Cell::new((Duration::ZERO, 0, 0, 0)),
                started_at: now(),
                cfg,
                app,
            }),
        };
        for i in 0..n {
            cluster.start(i);
            cluster.connect(i);
        }
        cluster.inner.net.set_reliable(cluster.inner.cfg.reliable);
        cluster
    }

    pub fn n(&self) -> usize {
        self.inner.cfg.servers
    }

    pub fn net(&self) -> &Network<Wire> {
        &self.inner.net
    }

    // ---- lifecycle ------------------------------------------------------------------------

    /// Starts server `i` from what its disk kept (crashing it first if it is running). The
    /// new server is not connected: call [`Cluster::connect`].
    pub fn start(&self, i: usize) {
        self.crash(i);
        let durable = match self.inner.cfg.storage {
            StorageKind::Memory => self.inner.disks[i]
                .borrow()
                .durable()
                .durable_state()
                .clone(),
            StorageKind::Wal(_) => self.open_wal(i),
        };
        self.inner.invariants.borrow_mut().on_restart(i, &durable);
        let snapshot = durable.snapshot.clone();
        let n = self.n() as u64;
        let mut config = self.inner.cfg.raft.clone();
        config.id = i as u64;
        config.peers = (0..n).collect();
        config.seed = with_rng(|r| r.next_u64());
        let node = Rc::new(RefCell::new(RawNode::new(config, durable)));
        let app: Box<dyn App> = match &self.inner.app {
            Some(factory) => factory(self, i, &snapshot, &node),
            None => {
                // The tester ingests the persisted snapshot itself, like a restarting service.
                self.inner.records.borrow_mut()[i] = Record::restored(i, &snapshot);
                Box::new(TesterApp::new(
                    self.clone(),
                    i,
                    self.inner.cfg.snapshot_interval,
                ))
            }
        };
        let (tx, rx) = channel();
        let net_tx = tx.clone();
        self.inner.net.attach(i, move |_from, Wire(m)| {
            let _ = net_tx.send(Input::Message(m));
        });
        let host = SimHost::new(self.clone(), i, rx);
        let task = spawn(run_server(node.clone(), host, app));
        self.inner.servers.borrow_mut()[i] = Some(Server {
            node,
            inbox: tx,
            task,
        });
    }

    /// Opens server `i`'s WAL after a crash and checks what it recovered: exactly the synced
    /// state, or that plus the batch whose syncs were in flight (a crash after its last sync).
    fn open_wal(&self, i: usize) -> DurableState {
        let mut disk = self.inner.wals[i].borrow_mut();
        let options = WalOptions {
            segment_bytes: WAL_SEGMENT_BYTES,
        };
        let (wal, recovered) = WalStorage::open_on(disk.fs.clone(), WAL_DIR, options)
            .unwrap_or_else(|e| panic!("server {i}: the WAL does not open after a crash: {e}"));
        disk.fs.complete_syncs();
        let mut shadow = self.inner.disks[i].borrow_mut();
        let synced = shadow.durable().durable_state();
        if recovered != *synced {
            let mut with_batch = synced.clone();
            match disk.in_flight.take() {
                Some(batch) => with_batch.apply(&batch),
                None => panic!(
                    "server {i}: the WAL recovered a state other than the synced one, with no batch in flight (recovered last index {}, synced {})",
                    recovered.last_index(),
                    synced.last_index()
                ),
            }
            assert_eq!(
                recovered,
                with_batch,
                "server {i}: the WAL recovered neither the synced state nor it plus the batch in flight (recovered last index {}, synced {})",
                recovered.last_index(),
                synced.last_index()
            );
            // The batch in flight had reached the disk: it is synced now.
            *shadow = Disk::new(MemStorage::from_state(with_batch));
        }
        disk.in_flight = None;
        disk.wal = Some(wal);
        if let Some(errors) = self.inner.cfg.io_errors {
            if self.inner.io_errors_armed.get() && with_rng(|r| r.chance(errors.per_start)) {
                let (after, fault) = with_rng(|r| {
                    let fault = if r.chance(0.5) {
                        Fault::Eio
                    } else {
                        Fault::Enospc
                    };
                    (r.below(errors.within_calls), fault)
                });
                let failing = disk.fs.calls() + after;
                disk.fs
                    .inject(move |call| (call.number == failing).then_some(fault));
            }
        }
        recovered
    }

    /// Stops arming [`ClusterConfig::io_errors`] and clears the ones armed on running servers.
    pub fn disarm_io_errors(&self) {
        self.inner.io_errors_armed.set(false);
        for disk in &self.inner.wals {
            disk.borrow().fs.clear_faults();
        }
    }

    /// Servers an I/O error has taken down so far.
    pub fn storage_deaths(&self) -> u64 {
        self.inner.storage_deaths.get()
    }

    /// Server `i`'s node loop stopped on a storage error: the process exits (as
    /// `flotilla_node::exit_after_storage_failure` makes a real one), which the simulation
    /// models as a crash, so whatever was not synced may be lost too.
    fn die_of_storage_failure(&self, i: usize, error: &StorageError) {
        self.inner
            .storage_deaths
            .set(self.inner.storage_deaths.get() + 1);
        self.narrate(format!("node {i} exits: storage failed: {error}"));
        flotilla_sim::trace(0xD1ED_0000 | i as u64);
        self.crash(i);
    }

    /// Prints `what` with the virtual time, if narration is on.
    pub fn narrate(&self, what: String) {
        if self.inner.cfg.narrate && !self.inner.finished.get() {
            println!("[{:>8.3}s] {what}", now().as_secs_f64());
        }
    }

    /// Crashes server `i`: cut off, its task stopped, unsynced disk writes lost. Its tester
    /// record stays readable until it is started again.
    pub fn crash(&self, i: usize) {
        self.disconnect(i);
        let server = self.inner.servers.borrow_mut()[i].take();
        if let Some(server) = server {
            server.task.abort();
            self.inner.net.detach(i);
            let lost = self.inner.disks[i].borrow_mut().crash();
            if let StorageKind::Wal(faults) = self.inner.cfg.storage {
                let mut disk = self.inner.wals[i].borrow_mut();
                disk.wal = None;
                disk.fs = with_rng(|rng| disk.fs.crash(rng, &faults));
            }
            self.narrate(format!(
                "node {i} crashes ({lost} unsynced disk writes lost)"
            ));
            flotilla_sim::trace(0xC0A5_0000 | i as u64);
        }
    }

    /// Crash (if running), start and connect server `i`.
    pub fn restart(&self, i: usize) {
        self.start(i);
        self.connect(i);
    }

    pub fn is_alive(&self, i: usize) -> bool {
        self.inner.servers.borrow()[i].is_some()
    }

    pub fn is_connected(&self, i: usize) -> bool {
        self.inner.connected.borrow()[i]
    }

    /// Joins `i` to every other connected server (labrpc `connect`).
    pub fn connect(&self, i: usize) {
        let mut connected = self.inner.connected.borrow_mut();
        connected[i] = true;
        for j in 0..self.n() {
            if connected[j] {
                self.inner.net.set_link(i, j, true);
                self.inner.net.set_link(j, i, true);
            }
        }
    }

    /// Cuts `i` off from everyone (labrpc `disconnect`). It keeps running.
    pub fn disconnect(&self, i: usize) {
        self.inner.connected.borrow_mut()[i] = false;
        for j in 0..self.n() {
            self.inner.net.set_link(i, j, false);
            self.inner.net.set_link(j, i, false);
        }
    }

    /// Splits the group: links inside each side are up, links across are down. Every server
    /// is marked connected.
    pub fn partition(&self, sides: &[&[usize]]) {
        let side_of = |s: usize| sides.iter().position(|side| side.contains(&s));
        let mut connected = self.inner.connected.borrow_mut();
        for i in 0..self.n() {
            connected[i] = side_of(i).is_some();
            for j in 0..self.n() {
                let up = side_of(i).is_some() && side_of(i) == side_of(j);
                self.inner.net.set_link(i, j, up);
            }
        }
    }

    pub fn set_reliable(&self, reliable: bool) {
        self.inner.net.set_reliable(reliable);
    }

    pub fn set_long_reordering(&self, on: bool) {
        self.inner.net.set_long_reordering(on);
    }

    // ---- what the tests ask servers -------------------------------------------------------

    /// `Start(cmd)` on server `i`: `Some((index, term))` if it is alive and believes it leads.
    pub fn start_cmd(&self, i: usize, cmd: &[u8]) -> Option<(u64, u64)> {
        let servers = self.inner.servers.borrow();
        let server = servers[i].as_ref()?;
        let result = server.node.borrow_mut().propose(cmd.to_vec()).ok();
        if result.is_some() {
            let _ = server.inbox.send(Input::Poke);
        }
        result
    }

    /// A ReadIndex read `ctx` (unique) on server `i`: true if it is alive and believes it
    /// leads. Its confirmation is checked by the invariants.
    pub fn read_index(&self, i: usize, ctx: &[u8]) -> bool {
        let servers = self.inner.servers.borrow();
        let Some(server) = servers[i].as_ref() else {
            return false;
        };
        let asked = server.node.borrow_mut().read_index(ctx.to_vec()).is_ok();
        if asked {
            self.note_read_asked(i, ctx);
            let _ = server.inbox.send(Input::Poke);
        }
        asked
    }

    /// Asks server `i` to hand its leadership to `to`: true if it is alive, leads and
    /// started the transfer.
    pub fn transfer_leader(&self, i: usize, to: usize) -> bool {
        let servers = self.inner.servers.borrow();
        let Some(server) = servers[i].as_ref() else {
            return false;
        };
        let started = server.node.borrow_mut().transfer_leader(to as u64).is_ok();
        if started {
            let _ = server.inbox.send(Input::Poke);
        }
        started
    }

    /// `GetState()` of server `i`: `(term, believes it is leader)`, if alive.
    pub fn get_state(&self, i: usize) -> Option<(u64, bool)> {
        let servers = self.inner.servers.borrow();
        let node = servers[i].as_ref()?.node.borrow();
        let status = node.status();
        Some((status.hard.term, status.soft.role == Role::Leader))
    }

    /// Requests delivered to server `i` since it (re)started.
    pub fn rpc_count(&self, i: usize) -> u64 {
        self.inner.net.rpc_count(i)
    }

    pub fn net_stats(&self) -> NetStats {
        self.inner.net.stats()
    }

    /// Largest persisted Raft state (log + hard state, without the snapshot) over all servers.
    pub fn log_size(&self) -> u64 {
        self.inner
            .disks
            .iter()
            .map(|d| d.borrow().durable().raft_state_size())
            .max()
            .unwrap_or(0)
    }

    // ---- the tester's helpers ---------------------------------------------------------------

    fn live_connected(&self) -> Vec<usize> {
        (0..self.n())
            .filter(|&i| self.is_connected(i) && self.is_alive(i))
            .collect()
    }

    /// Waits for exactly one leader among connected servers (of the highest term) and returns
    /// it; fails if a term has two leaders or if none appears within ~5 s.
    pub async fn check_one_leader(&self) -> usize {
        for _ in 0..10 {
            let ms = 450 + with_rng(|r| r.below(100));
            sleep(Duration::from_millis(ms)).await;
            let mut leaders: std::collections::BTreeMap<u64, Vec<usize>> = Default::default();
            for i in self.live_connected() {
                if let Some((term, true)) = self.get_state(i) {
                    leaders.entry(term).or_default().push(i);
                }
            }
            for (term, ids) in &leaders {
                assert!(
                    ids.len() <= 1,
                    "term {term} has {} (>1) leaders: {ids:?}",
                    ids.len()
                );
            }
            if let Some((_, ids)) = leaders.last_key_value() {
                return ids[0];
            }
        }
        panic!("expected one leader, got none");
    }

    /// All connected servers agree on the term; returns it.
    pub fn check_terms(&self) -> Option<u64> {
        let mut term = None;
        for i in self.live_connected() {
            let (t, _) = self.get_state(i).expect("alive");
            match term {
                None => term = Some(t),
                Some(x) => assert_eq!(x, t, "servers disagree on term"),
            }
        }
        term
    }

    /// No connected server believes it is leader.
    pub fn check_no_leader(&self) {
        for i in self.live_connected() {
            if let Some((_, true)) = self.get_state(i) {
                panic!("expected no leader among connected servers, but {i} claims to be leader");
            }
        }
    }

    /// How many servers' records hold `index`, and the command there. Fails if two differ.
    pub fn n_committed(&self, index: u64) -> (usize, Option<Vec<u8>>) {
        let records = self.inner.records.borrow();
        let mut count = 0;
        let mut value: Option<&Vec<u8>> = None;
        for record in records.iter() {
            if let Some(cmd) = record.get(index) {
                if let Some(v) = value {
                    assert_eq!(v, cmd, "committed values do not match: index {index}");
                }
                value = Some(cmd);
                count += 1;
            }
        }
        (count, value.cloned())
    }

    /// Fails if anything is committed at `index`.
    pub fn check_no_agreement(&self, index: u64) {
        let (count, _) = self.n_committed(index);
        assert_eq!(count, 0, "{count} committed but no majority");
    }

    /// Submits `cmd` until at least `expected` servers have applied it, within 10 s; returns
    /// its index. Without `retry`, one submission must succeed within 2 s. Returns 0 if the
    /// test has finished meanwhile (a background submitter).
    pub async fn one(&self, cmd: &[u8], expected: usize, retry: bool) -> u64 {
        let t0 = now();
        let mut cursor = 0;
        while now() - t0 < Duration::from_secs(10) && !self.inner.finished.get() {
            let mut index = None;
            for _ in 0..self.n() {
                cursor = (cursor + 1) % self.n();
                if self.is_connected(cursor) {
                    if let Some((i, _)) = self.start_cmd(cursor, cmd) {
                        index = Some(i);
                        break;
                    }
                }
            }
            if let Some(index) = index {
                let t1 = now();
                while now() - t1 < Duration::from_secs(2) {
                    let (count, value) = self.n_committed(index);
                    if count > 0 && count >= expected && value.as_deref() == Some(cmd) {
                        return index;
                    }
                    sleep(Duration::from_millis(20)).await;
                }
                assert!(retry, "one({}) failed to reach agreement", show(cmd));
            } else {
                sleep(Duration::from_millis(50)).await;
            }
        }
        assert!(
            self.inner.finished.get(),
            "one({}) failed to reach agreement",
            show(cmd)
        );
        0
    }

    /// Waits (backing off to ~30 s) until `n` servers applied `index`; returns the command, or
    /// `None` if some server's term moved past `start_term` meanwhile.
    pub async fn wait(&self, index: u64, n: usize, start_term: Option<u64>) -> Option<Vec<u8>> {
        let mut to = Duration::from_millis(10);
        for _ in 0..30 {
            let (count, _) = self.n_committed(index);
            if count >= n {
                break;
            }
            sleep(to).await;
            if to < Duration::from_secs(1) {
                to *= 2;
            }
            if let Some(start_term) = start_term {
                let moved = (0..self.n())
                    .filter_map(|i| self.get_state(i))
                    .any(|(t, _)| t > start_term);
                if moved {
                    return None;
                }
            }
        }
        let (count, value) = self.n_committed(index);
        assert!(
            count >= n,
            "only {count} decided for index {index}; wanted {n}"
        );
        value
    }

    /// Prints the test title and records baselines for [`Cluster::end`].
    pub fn begin(&self, desc: &str) {
        let stats = self.net_stats();
        self.inner.begin.set((
            now(),
            stats.rpc_total,
            stats.bytes_total,
            self.inner.max_index.get(),
        ));
        if self.inner.cfg.verbose {
            println!("{desc} ...");
        }
    }

    /// Marks the test finished, checks the 120 s (virtual) budget and prints statistics.
    pub fn end(&self) {
        self.inner.finished.set(true);
        let elapsed = now() - self.inner.started_at;
        assert!(
            elapsed <= flotilla_sim::TEST_TIME_LIMIT,
            "test took longer than 120 seconds (virtual: {elapsed:?})"
        );
        let (t0, rpcs0, bytes0, index0) = self.inner.begin.get();
        let stats = self.net_stats();
        if self.inner.cfg.verbose {
            println!(
                "  ... Passed --  {:.1}s (virtual)  {} peers  {} RPCs  {} bytes  {} agreements",
                (now() - t0).as_secs_f64(),
                self.n(),
                stats.rpc_total - rpcs0,
                stats.bytes_total - bytes0,
                self.inner.max_index.get() - index0
            );
        }
    }

    /// Stops every server (test cleanup).
    pub fn shutdown(&self) {
        self.inner.finished.set(true);
        for i in 0..self.n() {
            self.crash(i);
        }
    }

    /// Whether the test has ended (background tasks should stop acting on the group).
    pub fn finished(&self) -> bool {
        self.inner.finished.get()
    }

    /// Highest index any server applied.
    pub fn max_index(&self) -> u64 {
        self.inner.max_index.get()
    }

    /// Term of the current leader with the highest term, if any, and its id (no waiting).
    pub fn current_leader(&self) -> Option<(usize, u64)> {
        (0..self.n())
            .filter_map(|i| self.get_state(i).map(|(t, l)| (i, t, l)))
            .filter(|&(_, _, leads)| leads)
            .max_by_key(|&(_, t, _)| t)
            .map(|(i, t, _)| (i, t))
    }

    pub fn invariants(&self) -> std::cell::Ref<'_, Invariants> {
        self.inner.invariants.borrow()
    }

    pub(crate) fn inner(&self) -> &Inner {
        &self.inner
    }

    pub fn config(&self) -> &ClusterConfig {
        &self.inner.cfg
    }

    /// Runs `f` on the tester's records (one per server).
    pub(crate) fn with_records<R>(&self, f: impl FnOnce(&mut Vec<Record>) -> R) -> R {
        f(&mut self.inner.records.borrow_mut())
    }

    /// Server `i` asked its node for the ReadIndex read `ctx` (unique per incarnation): the
    /// read-safety invariant checks its confirmation against what was applied by now.
    pub fn note_read_asked(&self, i: usize, ctx: &[u8]) {
        self.inner
            .invariants
            .borrow_mut()
            .on_read_asked(i, ctx, self.inner.max_index.get());
    }

    /// Server `i` applied `index` (for [`Cluster::max_index`] and the trace).
    pub(crate) fn note_applied(&self, i: usize, index: u64) {
        self.inner
            .max_index
            .set(self.inner.max_index.get().max(index));
        flotilla_sim::trace(((i as u64) << 48) | index);
    }

    /// Server `i`'s Raft node, if it is running (for applications that propose to it).
    pub fn node(&self, i: usize) -> Option<Rc<RefCell<RawNode>>> {
        self.inner.servers.borrow()[i]
            .as_ref()
            .map(|s| s.node.clone())
    }

    /// Wakes server `i`'s loop after something was proposed or asked directly on its node.
    pub fn poke(&self, i: usize) {
        if let Some(server) = self.inner.servers.borrow()[i].as_ref() {
            let _ = server.inbox.send(Input::Poke);
        }
    }

    /// Persisted bytes (Raft state plus snapshot) summed over every server (2024's
    /// `TestChallenge1Delete` budget).
    pub fn total_persisted_bytes(&self) -> u64 {
        self.inner
            .disks
            .iter()
            .map(|d| {
                let disk = d.borrow();
                let durable = disk.durable();
                durable.raft_state_size() + durable.durable_state().snapshot.data.len() as u64
            })
            .sum()
    }

    /// Largest snapshot any server has persisted, in bytes (6.5840's `SnapshotSize`).
    pub fn snapshot_size(&self) -> u64 {
        self.inner
            .disks
            .iter()
            .map(|d| d.borrow().durable().durable_state().snapshot.data.len() as u64)
            .max()
            .unwrap_or(0)
    }
}

/// A server's task: the node loop on the simulator's host, until the server crashes (the
/// task is aborted) or the group shuts down.
async fn run_server(node: Rc<RefCell<RawNode>>, mut host: SimHost, mut app: Box<dyn App>) {
    if let Err(error) = flotilla_node::run(node, &mut host, &mut app).await {
        host.cluster.die_of_storage_failure(host.i, &error);
    }
}

/// A duration drawn uniformly from `[lo, hi]` with the simulation's RNG.
pub(crate) fn draw((lo, hi): (Duration, Duration)) -> Duration {
    lo + Duration::from_nanos(with_rng(|r| r.below((hi - lo).as_nanos() as u64 + 1)))
}

/// A command as the tests print it: integers for 8-byte commands, else a length.
pub fn show(cmd: &[u8]) -> String {
    match <[u8; 8]>::try_from(cmd) {
        Ok(bytes) => u64::from_le_bytes(bytes).to_string(),
        Err(_) => format!("<{} bytes>", cmd.len()),
    }
}

/// The 8-byte encoding tests use for integer commands.
pub fn int_cmd(x: u64) -> Vec<u8> {
    x.to_le_bytes().to_vec()
}
