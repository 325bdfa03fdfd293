//! The 2025 sharded store on the simulator, shaped like 6.5840 2025's `shardkv1/test.go`:
//! group 0 is one KV server (`server-0-0`, not replicated) holding the controller's
//! configurations; shard groups of 3 replicas named `server-<gid>-<i>` get gids from a
//! counter starting at 2 ([`GID1`] is started by [`Kv1Sim::setup_kv_service`]).
//!
//! Every controller and every clerk has its own [`Clnt`]: its ends on the config store and
//! on every group, which the tests can cut and restore all at once (labrpc's
//! `DisconnectAll` / `ConnectAll`).

use std::cell::{Cell, RefCell};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::rc::Rc;
use std::time::Duration;

use flotilla_kv::clerk::{Answer, Call, ClerkCore};
use flotilla_kv::history::OpLog;
use flotilla_kv::sim::{ClerkTransport, KvSim, OneServer, SimClerk};
use flotilla_raft_sim::cluster::ClusterConfig;
use flotilla_rsm::sim::{RsmGroup, SimHandle};
use flotilla_rsm::{LeaderCursor, Replied, RsmConfig};
use flotilla_shardctrler::sim::{MESSAGE_LATENCY, SYNC_LATENCY};
use flotilla_shardctrler::{Config, Gid, Sharding};
use flotilla_sim::net::{Conditions, Payload};
use flotilla_sim::rpc::{ClientId as EndId, RpcNetwork};
use flotilla_sim::sleep;

use super::ctrler::{Controller, CtrlLinks};
use super::shardgrp::{serve, GrpAnswer, GrpCommand, GrpRequest, ShardGrp, Status, GID1};
use crate::sim::{parse_server_name, server_name};

impl Payload for GrpRequest {
    fn wire_size(&self) -> usize {
        postcard::experimental::serialized_size(self).unwrap_or(0)
    }
    fn is_request(&self) -> bool {
        true
    }
}

type GrpNet = RpcNetwork<GrpRequest, Replied<GrpAnswer>>;

/// Servers per group (2025's `NSRV`).
pub const NSRV: usize = 3;

/// How long a caller waits before another round over a group that did not answer, and a
/// clerk before asking the controller again.
const RETRY_PAUSE: Duration = Duration::from_millis(100);

/// One 2025 shard group on the simulator.
pub struct Grp1Sim {
    gid: Gid,
    /// Which making of the group under this gid (one more each time it is made again).
    incarnation: u64,
    group: RsmGroup<ShardGrp>,
    /// The highest log index any replica was seen to have applied.
    applied_high: Cell<u64>,
    rpc: GrpNet,
}

impl Grp1Sim {
    pub fn gid(&self) -> Gid {
        self.gid
    }

    pub fn group(&self) -> &RsmGroup<ShardGrp> {
        &self.group
    }

    pub fn names(&self) -> Vec<String> {
        (0..self.group.n())
            .map(|i| server_name(self.gid, i))
            .collect()
    }

    /// `ShutdownServer(i)`.
    pub fn crash(&self, i: usize) {
        self.rpc.detach(i);
        self.group.crash(i);
    }

    /// `StartServer(i)`: from its disk, connected.
    pub fn start(&self, i: usize) {
        self.crash(i);
        self.group.start(i);
        self.group.cluster().connect(i);
    }

    pub fn shutdown(&self) {
        (0..self.group.n()).for_each(|i| self.crash(i));
    }

    pub fn start_all(&self) {
        (0..self.group.n()).for_each(|i| self.start(i));
    }

    fn set_reliable(&self, reliable: bool) {
        self.group.cluster().set_reliable(reliable);
        self.rpc.set_reliable(reliable);
    }
}

type Registry = Rc<RefCell<BTreeMap<Gid, Rc<Grp1Sim>>>>;

/// One caller's connections (6.5840's `Clnt`): to the config store and to every group.
pub struct Clnt {
    store: SimClerk<OneServer>,
    groups: Registry,
    /// Ends by (gid, the group's incarnation).
    ends: RefCell<HashMap<(Gid, u64), (GrpNet, EndId)>>,
    connected: Cell<bool>,
    /// While set, calls to groups wait before they are sent (a paused process).
    paused: Cell<bool>,
}

impl Clnt {
    /// Holds every call to a group until [`Clnt::resume`], then sends it as it was: a
    /// process paused (GC, SIGSTOP) between deciding a request and sending it.
    pub fn pause(&self) {
        self.paused.set(true);
    }

    pub fn resume(&self) {
        self.paused.set(false);
    }

    /// Cuts every link of this caller; calls fail until [`Clnt::connect_all`].
    pub fn disconnect_all(&self) {
        self.set_connected(false);
    }

    pub fn connect_all(&self) {
        self.set_connected(true);
    }

    fn set_connected(&self, connected: bool) {
        self.connected.set(connected);
        self.store.set_connected(connected);
        for (net, end) in self.ends.borrow().values() {
            for i in 0..NSRV {
                net.set_client_link(*end, i, connected);
            }
        }
    }

    /// This caller's end on the network of group `gid` as it is now (a group that exited
    /// and was made again under the same gid is another network).
    fn end(&self, gid: Gid) -> Option<(GrpNet, EndId)> {
        let group = self.groups.borrow().get(&gid)?.clone();
        let incarnation = (gid, group.incarnation);
        if let Some(found) = self.ends.borrow().get(&incarnation) {
            return Some(found.clone());
        }
        let net = group.rpc.clone();
        let end = net.add_client();
        for i in 0..NSRV {
            net.set_client_link(end, i, self.connected.get());
        }
        self.ends
            .borrow_mut()
            .insert(incarnation, (net.clone(), end));
        Some((net, end))
    }

    /// One call to the server named `name`; `None` if it failed.
    async fn call(&self, name: &str, request: GrpRequest) -> Option<Replied<GrpAnswer>> {
        while self.paused.get() {
            sleep(Duration::from_millis(1)).await;
        }
        let (gid, i) = parse_server_name(name)?;
        let Some((net, end)) = self.end(gid) else {
            // A group that exited: nobody answers.
            sleep(RETRY_PAUSE).await;
            return None;
        };
        net.call(end, i, request).await
    }
}

/// A controller's links on the simulator: its own [`Clnt`].
pub struct SimCtrlLinks {
    clnt: Rc<Clnt>,
}

impl SimCtrlLinks {
    pub fn clnt(&self) -> &Rc<Clnt> {
        &self.clnt
    }
}

impl CtrlLinks for SimCtrlLinks {
    type Store = SimClerk<OneServer>;

    fn store(&self) -> &SimClerk<OneServer> {
        &self.clnt.store
    }

    async fn call_group(
        &self,
        _gid: Gid,
        servers: &[String],
        command: GrpCommand,
    ) -> Option<GrpAnswer> {
        let mut cursor = LeaderCursor::new(servers.len().max(1), 0);
        for _ in 0..servers.len() {
            let name = &servers[cursor.target() % servers.len()];
            match self
                .clnt
                .call(name, GrpRequest::Shard(command.clone()))
                .await
            {
                Some(Replied::Done(answer)) => return Some(answer),
                Some(Replied::NotApplied { hint }) => {
                    cursor.failed(hint);
                }
                Some(Replied::Unknown) | None => {
                    cursor.failed(None);
                }
            }
        }
        sleep(RETRY_PAUSE).await;
        None
    }
}

/// A controller on the simulator.
pub type SimController = Controller<SimCtrlLinks>;

/// The store's settings (2025's `MakeTestMaxRaft`).
#[derive(Clone, Copy, Debug)]
pub struct Kv1Config {
    pub reliable: bool,
    /// `maxraftstate` of every group (`None`: -1).
    pub max_raft_state: Option<u64>,
}

/// The store. Cloning shares it.
#[derive(Clone)]
pub struct Kv1Sim {
    cfg: Kv1Config,
    store: KvSim,
    groups: Registry,
    next_gid: Rc<Cell<Gid>>,
    made: Rc<Cell<u64>>,
    reliable: Rc<Cell<bool>>,
    log: OpLog,
    sck: Rc<SimController>,
}

impl Kv1Sim {
    /// The config store and the tester's controller; no group yet.
    pub fn new(cfg: Kv1Config) -> Self {
        let store = KvSim::new(cfg.reliable);
        let groups: Registry = Rc::new(RefCell::new(BTreeMap::new()));
        let sck = Rc::new(Controller::new(SimCtrlLinks {
            clnt: Rc::new(Self::make_clnt(&store, &groups)),
        }));
        Kv1Sim {
            cfg,
            store,
            groups,
            next_gid: Rc::new(Cell::new(GID1 + 1)),
            made: Rc::new(Cell::new(0)),
            reliable: Rc::new(Cell::new(cfg.reliable)),
            log: OpLog::new(),
            sck,
        }
    }

    fn make_clnt(store: &KvSim, groups: &Registry) -> Clnt {
        Clnt {
            store: store.clerk(),
            groups: groups.clone(),
            ends: RefCell::new(HashMap::new()),
            connected: Cell::new(true),
            paused: Cell::new(false),
        }
    }

    /// `setupKVService`: group [`GID1`] started, the first configuration (every shard at
    /// it) stored by the tester's controller; from then on, every 20 ms, no shard is
    /// served by two groups ([`Kv1Sim::assert_one_server_per_shard`]).
    pub async fn setup_kv_service(&self) {
        let watched = self.clone();
        flotilla_sim::spawn(async move {
            loop {
                sleep(Duration::from_millis(20)).await;
                watched.assert_one_server_per_shard();
            }
        });
        self.start_group(GID1);
        let first = Config::empty(Sharding::Fnv12.shards())
            .join(&[(GID1, self.group(GID1).names())].into())
            .expect("the first join");
        self.sck.init_config(&first).await;
    }

    /// The tester's controller (`ts.sck`).
    pub fn sck(&self) -> &SimController {
        &self.sck
    }

    /// A new controller with its own [`Clnt`] (not yet `InitController`ed).
    pub fn controller(&self) -> SimController {
        Controller::new(SimCtrlLinks {
            clnt: Rc::new(Self::make_clnt(&self.store, &self.groups)),
        })
    }

    /// `ts.MakeClerk()`: a clerk with its own controller and connections.
    pub fn clerk(&self) -> Kv1Clerk {
        let transport = Kv1Transport {
            ctrl: self.controller(),
            config: RefCell::new(None),
            cursors: RefCell::new(HashMap::new()),
        };
        SimClerk::new(transport, self.log.clone())
    }

    pub fn log(&self) -> &OpLog {
        &self.log
    }

    /// `newGid`.
    pub fn new_gid(&self) -> Gid {
        let gid = self.next_gid.get();
        self.next_gid.set(gid + 1);
        gid
    }

    pub fn group(&self, gid: Gid) -> Rc<Grp1Sim> {
        self.groups.borrow()[&gid].clone()
    }

    /// `StartServers(gid)`: the group's replicas from their disks, made if new.
    pub fn start_group(&self, gid: Gid) {
        if !self.groups.borrow().contains_key(&gid) {
            self.add_group(gid);
        }
        self.group(gid).start_all();
    }

    /// `Shutdown(gid)`: every replica down, disks kept.
    pub fn shutdown_group(&self, gid: Gid) {
        self.group(gid).shutdown();
    }

    /// `ExitGroup(gid)`: shut down and forgotten.
    pub fn exit_group(&self, gid: Gid) {
        if let Some(g) = self.groups.borrow_mut().remove(&gid) {
            g.group.cluster().end();
            g.shutdown();
        }
    }

    fn add_group(&self, gid: Gid) {
        let mut cluster = ClusterConfig::new(NSRV, self.reliable.get(), false);
        cluster.raft.leader_noop = true;
        cluster.sync_latency = SYNC_LATENCY;
        let rpc: GrpNet = RpcNetwork::new(NSRV);
        rpc.set_conditions(Conditions {
            latency: MESSAGE_LATENCY,
            ..Conditions::default()
        });
        let config = RsmConfig {
            max_raft_state: self.cfg.max_raft_state,
            ..RsmConfig::default()
        };
        let attach = rpc.clone();
        let group = RsmGroup::new(
            cluster,
            config,
            move || ShardGrp::new(gid, Sharding::Fnv12),
            move |i, replica: SimHandle<ShardGrp>| {
                attach.attach_async(i, move |request| {
                    let replica = replica.clone();
                    async move { serve(&replica, request).await }
                });
            },
        );
        group
            .cluster()
            .net()
            .set_latency(MESSAGE_LATENCY.0, MESSAGE_LATENCY.1);
        rpc.set_reliable(self.reliable.get());
        self.made.set(self.made.get() + 1);
        let incarnation = self.made.get();
        let sim = Rc::new(Grp1Sim {
            gid,
            incarnation,
            group,
            applied_high: Cell::new(0),
            rpc,
        });
        self.groups.borrow_mut().insert(gid, sim);
    }

    /// Every network: the config store's and every group's.
    pub fn set_reliable(&self, reliable: bool) {
        self.reliable.set(reliable);
        self.store.set_reliable(reliable);
        for g in self.groups.borrow().values() {
            g.set_reliable(reliable);
        }
    }

    /// Panics if two groups serve one shard. A group's view is that of its live replicas
    /// that have applied as far as any replica of the group ever did (a lagging replica, or
    /// one replaying its log after a restart, shows an older state that serves no one).
    pub fn assert_one_server_per_shard(&self) {
        let mut servers: BTreeMap<usize, Vec<Gid>> = BTreeMap::new();
        for g in self.groups.borrow().values() {
            let replicas: Vec<_> = (0..g.group.n()).filter_map(|i| g.group.handle(i)).collect();
            let newest = replicas
                .iter()
                .map(|r| r.with_applied_state(|applied, _| applied))
                .max()
                .unwrap_or(0);
            g.applied_high.set(g.applied_high.get().max(newest));
            let mut serving = BTreeSet::new();
            for replica in &replicas {
                replica.with_applied_state(|applied, state| {
                    if applied == g.applied_high.get() {
                        for (shard, (_, status)) in state.shard_states() {
                            if status == Status::Serving {
                                serving.insert(shard);
                            }
                        }
                    }
                });
            }
            for shard in serving {
                servers.entry(shard).or_default().push(g.gid);
            }
        }
        for (shard, groups) in servers {
            assert!(
                groups.len() <= 1,
                "shard {shard} served by several groups: {groups:?}"
            );
        }
    }

    /// `SnapshotSize(gid)`: the largest snapshot a replica of the group persisted.
    pub fn snapshot_size(&self, gid: Gid) -> u64 {
        self.group(gid).group.cluster().snapshot_size()
    }

    /// `disconnectClntFromLeader(gid)`: the group's leader is shut down.
    pub async fn shutdown_leader(&self, gid: Gid) {
        let g = self.group(gid);
        let t0 = flotilla_sim::now();
        loop {
            if let Some(leader) = g.group.leader() {
                g.crash(leader);
                return;
            }
            assert!(
                flotilla_sim::now() - t0 < Duration::from_secs(10),
                "group {gid} has no leader"
            );
            sleep(Duration::from_millis(10)).await;
        }
    }

    /// The test's end: every group stopped.
    pub fn end(&self) {
        for g in self.groups.borrow().values() {
            g.group.cluster().end();
            g.shutdown();
        }
    }
}

/// A 2025 clerk's way to the store: the configuration it routes by, read through its own
/// controller, refreshed whenever the group it picked turns it away or does not answer.
pub struct Kv1Transport {
    ctrl: SimController,
    config: RefCell<Option<Config>>,
    cursors: RefCell<HashMap<Gid, LeaderCursor>>,
}

impl Kv1Transport {
    pub fn clnt(&self) -> &Rc<Clnt> {
        self.ctrl.links().clnt()
    }

    async fn refresh(&self) {
        if let Ok(latest) = self.ctrl.query().await {
            *self.config.borrow_mut() = Some(latest);
        }
    }
}

impl ClerkTransport for Kv1Transport {
    async fn run(&self, core: &RefCell<ClerkCore>, mut call: Call) -> Answer {
        if self.config.borrow().is_none() {
            self.refresh().await;
        }
        loop {
            let (gid, servers) = {
                let config = self.config.borrow();
                let config = config.as_ref().expect("refreshed");
                let gid = config.owner(Sharding::Fnv12.shard_of(call.peek().key()));
                (gid, config.groups.get(&gid).cloned().unwrap_or_default())
            };
            if !servers.is_empty() {
                let known = self.cursors.borrow().get(&gid).cloned();
                let mut cursor = known.unwrap_or_else(|| LeaderCursor::new(servers.len(), 0));
                for _ in 0..servers.len() {
                    let name = &servers[cursor.target() % servers.len()];
                    let request = GrpRequest::Client(call.request().clone());
                    match self.clnt().call(name, request).await {
                        Some(Replied::Done(GrpAnswer::Kv(reply))) => {
                            cursor.answered();
                            self.cursors.borrow_mut().insert(gid, cursor.clone());
                            if let Some(answer) = core.borrow_mut().finish(&call, reply) {
                                return answer;
                            }
                            break;
                        }
                        Some(Replied::Done(_)) => {
                            // ErrWrongGroup: turned away at apply, nothing done.
                            call.refused();
                            break;
                        }
                        Some(Replied::NotApplied { hint }) => {
                            call.refused();
                            cursor.failed(hint);
                        }
                        Some(Replied::Unknown) | None => {
                            cursor.failed(None);
                        }
                    }
                }
                self.cursors.borrow_mut().insert(gid, cursor);
            }
            sleep(RETRY_PAUSE).await;
            self.refresh().await;
        }
    }
}

/// A clerk of the 2025 sharded store.
pub type Kv1Clerk = SimClerk<Kv1Transport>;
