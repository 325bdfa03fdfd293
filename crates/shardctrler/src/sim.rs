//! The controller on the simulator: a replica group of [`Controller`]s, the labrpc-style
//! network its clerks call it over, and the clerk — the harness of the 2024 controller
//! scenarios and the controller the shard groups' scenarios run.

use std::cell::{Cell, RefCell};
use std::collections::BTreeMap;
use std::rc::Rc;
use std::time::Duration;

use flotilla_raft_sim::cluster::{Cluster, ClusterConfig};
use flotilla_rsm::sim::{call_until_done, RsmGroup};
use flotilla_rsm::{LeaderCursor, Replied, RsmConfig};
use flotilla_sim::net::{Conditions, Payload};
use flotilla_sim::rpc::{ClientId as EndId, RpcNetwork};

use crate::config::{Config, Gid};
use crate::ctrler::{
    serve, Change, ChangeCommand, ChangeResult, Controller, CtrlAnswer, CtrlRequest,
};

impl Payload for CtrlRequest {
    fn wire_size(&self) -> usize {
        postcard::experimental::serialized_size(self).unwrap_or(0)
    }
    fn is_request(&self) -> bool {
        true
    }
}

/// The latency of every message on top of the network's faults (a small data center).
pub const MESSAGE_LATENCY: (Duration, Duration) =
    (Duration::from_micros(100), Duration::from_micros(500));

/// A disk sync.
pub const SYNC_LATENCY: (Duration, Duration) = (Duration::from_millis(1), Duration::from_millis(2));

/// How long a clerk pauses after a whole round of servers failed (the lab's 100 ms).
pub const ROUND_PAUSE: Duration = Duration::from_millis(100);

type CtrlNet = RpcNetwork<CtrlRequest, Replied<CtrlAnswer>>;

/// The controller group and its client network. Cloning shares them.
#[derive(Clone)]
pub struct CtrlSim {
    group: RsmGroup<Controller>,
    rpc: CtrlNet,
}

impl CtrlSim {
    /// Starts `servers` controller replicas of `shards` shards inside the running
    /// simulation, connected; the networks then set to `reliable`. No snapshots (the lab's
    /// controller never takes one).
    pub fn new(servers: usize, shards: usize, reliable: bool) -> Self {
        let mut cluster = ClusterConfig::new(servers, reliable, false);
        cluster.raft.leader_noop = true;
        cluster.sync_latency = SYNC_LATENCY;
        let rpc: CtrlNet = RpcNetwork::new(servers);
        rpc.set_conditions(Conditions {
            latency: MESSAGE_LATENCY,
            ..Conditions::default()
        });
        let attach = rpc.clone();
        let group = RsmGroup::new(
            cluster,
            RsmConfig::default(),
            move || Controller::new(shards),
            move |i, replica| {
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
        rpc.set_reliable(reliable);
        CtrlSim { group, rpc }
    }

    pub fn n(&self) -> usize {
        self.group.n()
    }

    pub fn group(&self) -> &RsmGroup<Controller> {
        &self.group
    }

    pub fn cluster(&self) -> &Cluster {
        self.group.cluster()
    }

    /// A clerk that reaches every controller server.
    pub fn clerk(&self) -> CtrlClerk {
        let end = self.rpc.add_client();
        let first = flotilla_sim::with_rng(|r| r.below(self.n() as u64)) as usize;
        CtrlClerk {
            id: flotilla_sim::with_rng(|r| r.next_u64()),
            seq: Cell::new(0),
            end,
            net: self.rpc.clone(),
            cursor: RefCell::new(LeaderCursor::new(self.n(), first)),
            cut_off: Rc::new(Cell::new(false)),
        }
    }

    /// 6.5840's `ShutdownServer(i)`: crashed, its clerks' calls fail.
    pub fn crash(&self, i: usize) {
        self.rpc.detach(i);
        self.group.crash(i);
    }

    /// 6.5840's `StartServer(i)` then `ConnectAll`.
    pub fn restart(&self, i: usize) {
        self.crash(i);
        self.group.start(i);
        for j in 0..self.n() {
            self.cluster().connect(j);
        }
    }

    /// The first server that believes it leads.
    pub fn leader(&self) -> Option<usize> {
        self.group.leader()
    }

    pub fn set_reliable(&self, reliable: bool) {
        self.cluster().set_reliable(reliable);
        self.rpc.set_reliable(reliable);
    }

    /// Stops every server (the end of a scenario).
    pub fn shutdown(&self) {
        for i in 0..self.n() {
            self.crash(i);
        }
    }
}

/// A clerk of the controller. One operation at a time; each retried until done.
pub struct CtrlClerk {
    id: u64,
    seq: Cell<u64>,
    end: EndId,
    net: CtrlNet,
    cursor: RefCell<LeaderCursor>,
    /// Set when the clerk's owner is gone (a crashed server's poller): calls give up.
    cut_off: Rc<Cell<bool>>,
}

impl CtrlClerk {
    /// A flag that, once set, makes this clerk's calls give up (return `None`).
    pub fn cut_off_flag(&self) -> Rc<Cell<bool>> {
        self.cut_off.clone()
    }

    async fn call(&self, request: CtrlRequest) -> Option<CtrlAnswer> {
        let cut_off = self.cut_off.clone();
        call_until_done(
            &self.net,
            self.end,
            &self.cursor,
            &request,
            ROUND_PAUSE,
            move || cut_off.get(),
        )
        .await
    }

    async fn change(&self, change: Change) -> Option<ChangeResult> {
        self.seq.set(self.seq.get() + 1);
        let command = ChangeCommand {
            client: self.id,
            seq: self.seq.get(),
            change,
        };
        match self.call(CtrlRequest::Change(command)).await? {
            CtrlAnswer::Changed(result) => Some(result),
            other => panic!("a change answered {other:?}"),
        }
    }

    /// `Join`: the new configuration's number, or why there is none. `None` only when cut off.
    pub async fn join(&self, groups: BTreeMap<Gid, Vec<String>>) -> Option<ChangeResult> {
        self.change(Change::Join(groups)).await
    }

    pub async fn leave(&self, gids: Vec<Gid>) -> Option<ChangeResult> {
        self.change(Change::Leave(gids)).await
    }

    pub async fn move_shard(&self, shard: usize, gid: Gid) -> Option<ChangeResult> {
        self.change(Change::Move { shard, gid }).await
    }

    /// `Query(num)`; `None` for the latest. `None` only when cut off.
    pub async fn query(&self, num: Option<u64>) -> Option<Config> {
        match self.call(CtrlRequest::Query(num)).await? {
            CtrlAnswer::Config(config) => Some(config),
            other => panic!("a query answered {other:?}"),
        }
    }
}
