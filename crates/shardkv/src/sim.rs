//! The sharded store on the simulator, shaped like 6.5840 2024's `shardkv/config.go`: one
//! controller group, shard groups of `n` replicas named `server-<gid>-<i>` (all started at
//! once, before any join), clerks whose operations feed one [`OpLog`] for the
//! linearizability checker.
//!
//! Each replica runs the group's [`driver`](crate::driver) as a task of its incarnation:
//! crashing the replica stops it, so a crashed server neither polls nor calls anyone.

use std::cell::RefCell;
use std::collections::{BTreeMap, HashMap};
use std::rc::Rc;
use std::time::Duration;

use flotilla_kv::clerk::{Answer, Call, ClerkCore};
use flotilla_kv::history::OpLog;
use flotilla_kv::sim::{ClerkTransport, SimClerk};
use flotilla_raft_sim::cluster::ClusterConfig;
use flotilla_rsm::sim::{RsmGroup, SimHandle};
use flotilla_rsm::{LeaderCursor, Replied, RsmConfig};
use flotilla_shardctrler::sim::{CtrlClerk, CtrlSim, MESSAGE_LATENCY, SYNC_LATENCY};
use flotilla_shardctrler::{Config, Gid, Sharding};
use flotilla_sim::net::{Conditions, Payload};
use flotilla_sim::rpc::{ClientId as EndId, RpcNetwork};
use flotilla_sim::{sleep, spawn, JoinHandle};

use crate::driver::{self, Links};
use crate::group::{serve, GroupAnswer, GroupCommand, GroupRequest, ShardGroup, Work};

impl Payload for GroupRequest {
    fn wire_size(&self) -> usize {
        postcard::experimental::serialized_size(self).unwrap_or(0)
    }
    fn is_request(&self) -> bool {
        true
    }
}

type GroupNet = RpcNetwork<GroupRequest, Replied<GroupAnswer>>;

/// How long a clerk waits before asking the controller again (the lab's 100 ms).
const CLERK_PAUSE: Duration = Duration::from_millis(100);

/// A server's name, as configurations list it.
pub fn server_name(gid: Gid, i: usize) -> String {
    format!("server-{gid}-{i}")
}

/// The (gid, index) a [`server_name`] names.
pub fn parse_server_name(name: &str) -> Option<(Gid, usize)> {
    let rest = name.strip_prefix("server-")?;
    let (gid, i) = rest.split_once('-')?;
    Some((gid.parse().ok()?, i.parse().ok()?))
}

/// One shard group on the simulator.
pub struct GroupSim {
    gid: Gid,
    group: RsmGroup<ShardGroup>,
    rpc: GroupNet,
    drivers: Rc<RefCell<Vec<Option<JoinHandle<()>>>>>,
}

impl GroupSim {
    pub fn gid(&self) -> Gid {
        self.gid
    }

    pub fn group(&self) -> &RsmGroup<ShardGroup> {
        &self.group
    }

    pub fn names(&self) -> Vec<String> {
        (0..self.group.n())
            .map(|i| server_name(self.gid, i))
            .collect()
    }

    /// Crashes replica `i` (6.5840's `ShutdownServer`): cut off, its driver stopped.
    pub fn crash(&self, i: usize) {
        self.rpc.detach(i);
        if let Some(driver) = self.drivers.borrow_mut()[i].take() {
            driver.abort();
        }
        self.group.crash(i);
    }

    /// Starts replica `i` from its disk (6.5840's `StartServer`) and connects it.
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
}

type Registry = Rc<RefCell<BTreeMap<Gid, Rc<GroupSim>>>>;

/// The store's settings.
#[derive(Clone, Copy, Debug)]
pub struct ShardKvConfig {
    pub groups: usize,
    pub servers: usize,
    pub reliable: bool,
    /// `maxraftstate` of every group (`None`: -1).
    pub max_raft_state: Option<u64>,
    /// The first group's gid (2024: 100).
    pub first_gid: Gid,
}

/// The store. Cloning shares it.
#[derive(Clone)]
pub struct ShardKvSim {
    cfg: ShardKvConfig,
    ctrl: CtrlSim,
    groups: Registry,
    log: OpLog,
}

/// Resolves server names to their group's network, with this caller's ends on them.
struct Directory {
    groups: Registry,
    ends: RefCell<HashMap<Gid, EndId>>,
}

impl Directory {
    fn new(groups: Registry) -> Self {
        Directory {
            groups,
            ends: RefCell::new(HashMap::new()),
        }
    }

    /// The group network of `gid` and this caller's end on it.
    fn reach(&self, gid: Gid) -> Option<(GroupNet, EndId)> {
        let net = self.groups.borrow().get(&gid)?.rpc.clone();
        let end = *self
            .ends
            .borrow_mut()
            .entry(gid)
            .or_insert_with(|| net.add_client());
        Some((net, end))
    }

    /// One call to the server named `name`.
    async fn call(&self, name: &str, request: GroupRequest) -> Option<Replied<GroupAnswer>> {
        let (gid, i) = parse_server_name(name)?;
        let (net, end) = self.reach(gid)?;
        net.call(end, i, request).await
    }
}

/// A replica's [`Links`] on the simulator.
struct SimLinks {
    replica: SimHandle<ShardGroup>,
    ctrl: CtrlClerk,
    directory: Directory,
}

impl Links for SimLinks {
    fn leads(&self) -> bool {
        self.replica.state().1
    }

    fn work(&self) -> Work {
        self.replica.with_state(|g| g.work())
    }

    async fn propose(&self, command: GroupCommand) -> Option<GroupAnswer> {
        self.replica.submit(command).await.ok()
    }

    async fn query(&self, num: u64) -> Option<Config> {
        self.ctrl.query(Some(num)).await
    }

    async fn call_group(
        &self,
        servers: &[String],
        request: GroupRequest,
    ) -> Option<Replied<GroupAnswer>> {
        driver::call_each(servers, |name| {
            let request = request.clone();
            async move { self.directory.call(&name, request).await }
        })
        .await
    }
}

impl ShardKvSim {
    /// Starts the controller (3 replicas) and every group inside the running simulation.
    pub fn new(cfg: ShardKvConfig) -> Self {
        let ctrl = CtrlSim::new(3, Sharding::FirstByte10.shards(), cfg.reliable);
        let sim = ShardKvSim {
            cfg,
            ctrl,
            groups: Rc::new(RefCell::new(BTreeMap::new())),
            log: OpLog::new(),
        };
        for gi in 0..cfg.groups {
            sim.add_group(cfg.first_gid + gi as Gid);
        }
        sim
    }

    fn add_group(&self, gid: Gid) {
        let mut cluster = ClusterConfig::new(self.cfg.servers, self.cfg.reliable, false);
        cluster.raft.leader_noop = true;
        cluster.sync_latency = SYNC_LATENCY;
        let rpc: GroupNet = RpcNetwork::new(self.cfg.servers);
        rpc.set_conditions(Conditions {
            latency: MESSAGE_LATENCY,
            ..Conditions::default()
        });
        let drivers: Rc<RefCell<Vec<Option<JoinHandle<()>>>>> =
            Rc::new(RefCell::new((0..self.cfg.servers).map(|_| None).collect()));
        let config = RsmConfig {
            max_raft_state: self.cfg.max_raft_state,
            ..RsmConfig::default()
        };
        let (attach, slots, registry, ctrl) = (
            rpc.clone(),
            drivers.clone(),
            self.groups.clone(),
            self.ctrl.clone(),
        );
        let group = RsmGroup::new(
            cluster,
            config,
            move || ShardGroup::new(gid, Sharding::FirstByte10),
            move |i, replica: SimHandle<ShardGroup>| {
                let server = replica.clone();
                attach.attach_async(i, move |request| {
                    let server = server.clone();
                    async move { serve(&server, request).await }
                });
                let links = SimLinks {
                    replica,
                    ctrl: ctrl.clerk(),
                    directory: Directory::new(registry.clone()),
                };
                let task = spawn(async move {
                    loop {
                        if !driver::round(&links).await {
                            sleep(driver::ROUND).await;
                        } else {
                            sleep(Duration::from_millis(1)).await;
                        }
                    }
                });
                if let Some(old) = slots.borrow_mut()[i].replace(task) {
                    old.abort();
                }
            },
        );
        group
            .cluster()
            .net()
            .set_latency(MESSAGE_LATENCY.0, MESSAGE_LATENCY.1);
        rpc.set_reliable(self.cfg.reliable);
        let sim = Rc::new(GroupSim {
            gid,
            group,
            rpc,
            drivers,
        });
        self.groups.borrow_mut().insert(gid, sim);
    }

    pub fn ctrl(&self) -> &CtrlSim {
        &self.ctrl
    }

    pub fn log(&self) -> &OpLog {
        &self.log
    }

    /// The group with index `gi` (gid `first_gid + gi`).
    pub fn group(&self, gi: usize) -> Rc<GroupSim> {
        let gid = self.cfg.first_gid + gi as Gid;
        self.groups.borrow()[&gid].clone()
    }

    /// Every group, in gid order.
    pub fn groups(&self) -> Vec<Rc<GroupSim>> {
        self.groups.borrow().values().cloned().collect()
    }

    pub fn gid(&self, gi: usize) -> Gid {
        self.cfg.first_gid + gi as Gid
    }

    /// A clerk of the store, with its own controller clerk.
    pub fn clerk(&self) -> ShardClerk {
        self.clerk_of(&self.ctrl)
    }

    /// A clerk that follows another controller service (2024's `TestRejection5A`).
    pub fn clerk_of(&self, ctrl: &CtrlSim) -> ShardClerk {
        let transport = ShardTransport {
            ctrl: ctrl.clerk(),
            config: RefCell::new(Config::empty(Sharding::FirstByte10.shards())),
            directory: Directory::new(self.groups.clone()),
            cursors: RefCell::new(HashMap::new()),
        };
        SimClerk::new(transport, self.log.clone())
    }

    /// 2024's `join(gi)`: the controller's Join of group `gi` with all its servers.
    pub async fn join(&self, gis: &[usize]) {
        self.join_on(&self.ctrl, gis).await
    }

    /// `ctljoin`: a Join on another controller service.
    pub async fn join_on(&self, ctrl: &CtrlSim, gis: &[usize]) {
        let groups: BTreeMap<Gid, Vec<String>> = gis
            .iter()
            .map(|&gi| (self.gid(gi), self.group(gi).names()))
            .collect();
        let result = ctrl.clerk().join(groups).await.expect("not cut off");
        result.unwrap_or_else(|e| panic!("join {gis:?}: {e}"));
    }

    /// 2024's `leave(gi)` / `leavem`.
    pub async fn leave(&self, gis: &[usize]) {
        let gids: Vec<Gid> = gis.iter().map(|&gi| self.gid(gi)).collect();
        let result = self.ctrl.clerk().leave(gids).await.expect("not cut off");
        result.unwrap_or_else(|e| panic!("leave {gis:?}: {e}"));
    }

    pub fn shutdown_group(&self, gi: usize) {
        self.group(gi).shutdown();
    }

    pub fn start_group(&self, gi: usize) {
        self.group(gi).start_all();
    }

    /// Both networks of every group and the controller's.
    pub fn set_reliable(&self, reliable: bool) {
        self.ctrl.set_reliable(reliable);
        for g in self.groups.borrow().values() {
            g.group.cluster().set_reliable(reliable);
            g.rpc.set_reliable(reliable);
        }
    }

    /// 2024's `checklogs()`: with `maxraftstate` set, every replica's Raft state is at most
    /// 8 × it; without, no replica has a snapshot.
    pub fn check_logs(&self) {
        for g in self.groups.borrow().values() {
            let cluster = g.group.cluster();
            match self.cfg.max_raft_state {
                Some(max) => {
                    let size = cluster.log_size();
                    assert!(
                        size <= 8 * max,
                        "group {}: Raft state {size} bytes > 8 × maxraftstate {max}",
                        g.gid
                    );
                }
                None => assert_eq!(
                    cluster.snapshot_size(),
                    0,
                    "group {}: a snapshot with maxraftstate -1",
                    g.gid
                ),
            }
        }
    }

    /// Persisted bytes (Raft state and snapshot) summed over every replica of every group.
    pub fn total_persisted_bytes(&self) -> u64 {
        self.groups
            .borrow()
            .values()
            .map(|g| g.group.cluster().total_persisted_bytes())
            .sum()
    }

    /// The test's end: the 120 s budget checked, every server stopped.
    pub fn end(&self) {
        self.ctrl.cluster().end();
        for g in self.groups.borrow().values() {
            g.group.cluster().end();
            g.shutdown();
        }
        self.ctrl.shutdown();
    }
}

/// A clerk's way to the store: the configuration it routes by, refreshed from the
/// controller whenever the group it picked turns it away or cannot be reached.
pub struct ShardTransport {
    ctrl: CtrlClerk,
    config: RefCell<Config>,
    directory: Directory,
    cursors: RefCell<HashMap<Gid, LeaderCursor>>,
}

impl ClerkTransport for ShardTransport {
    async fn run(&self, core: &RefCell<ClerkCore>, mut call: Call) -> Answer {
        loop {
            let (gid, servers) = {
                let config = self.config.borrow();
                let shard = Sharding::FirstByte10.shard_of(call.peek().key());
                let gid = config.owner(shard);
                (gid, config.groups.get(&gid).cloned().unwrap_or_default())
            };
            if !servers.is_empty() {
                let known = self.cursors.borrow().get(&gid).cloned();
                let mut cursor = known.unwrap_or_else(|| LeaderCursor::new(servers.len(), 0));
                for _ in 0..servers.len() {
                    let name = &servers[cursor.target() % servers.len()];
                    let request = GroupRequest::Client(call.request().clone());
                    match self.directory.call(name, request).await {
                        Some(Replied::Done(GroupAnswer::Kv(reply))) => {
                            cursor.answered();
                            self.cursors.borrow_mut().insert(gid, cursor.clone());
                            if let Some(answer) = core.borrow_mut().finish(&call, reply) {
                                return answer;
                            }
                            break;
                        }
                        Some(Replied::Done(_)) => break, // ErrWrongGroup
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
            sleep(CLERK_PAUSE).await;
            if let Some(latest) = self.ctrl.query(None).await {
                *self.config.borrow_mut() = latest;
            }
        }
    }
}

/// A clerk of the sharded store.
pub type ShardClerk = SimClerk<ShardTransport>;
