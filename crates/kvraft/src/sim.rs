//! The KV service on the simulator: a replica group ([`RsmGroup`]) of [`KvStore`]s, the
//! labrpc-style network between clerks and replicas, and clerks whose logged operations
//! feed one [`OpLog`] for the linearizability checker — the harness of [`crate::lab4`].
//!
//! As in 6.5840's tester, a partition cuts links between servers only; a clerk reaches the
//! servers its end is enabled for ([`KvRaftSim::clerk_to`]).

use std::cell::RefCell;
use std::time::Duration;

use flotilla_kv::clerk::{Answer, Call, ClerkCore};
use flotilla_kv::sim::{ClerkTransport, OpLog, SimClerk};
use flotilla_kv::Request;
use flotilla_raft_sim::cluster::{Cluster, ClusterConfig};
use flotilla_rsm::sim::RsmGroup;
use flotilla_rsm::RsmConfig;
use flotilla_sim::net::Conditions;
use flotilla_sim::rpc::{ClientId as EndId, RpcNetwork};
use flotilla_sim::sleep;

use crate::service::{serve, KvStore, ServerReply};
use flotilla_rsm::LeaderCursor;

/// The time every message between servers, and between a clerk and a server, takes on top
/// of what the network's faults add.
pub const MESSAGE_LATENCY: (Duration, Duration) =
    (Duration::from_micros(100), Duration::from_micros(500));

/// The time a server's disk takes to sync a batch (an SSD's fsync).
pub const SYNC_LATENCY: (Duration, Duration) = (Duration::from_millis(1), Duration::from_millis(2));

/// How long a clerk pauses after a whole round of servers failed.
const ROUND_PAUSE: Duration = Duration::from_millis(20);

/// A clerk's way to the group: its end on the client network and its leader guess.
pub struct RaftTransport {
    end: EndId,
    net: RpcNetwork<Request, ServerReply>,
    cursor: RefCell<LeaderCursor>,
}

impl ClerkTransport for RaftTransport {
    async fn run(&self, core: &RefCell<ClerkCore>, mut call: Call) -> Answer {
        loop {
            let to = self.cursor.borrow().target();
            let request = call.request().clone();
            let pause = match self.net.call(self.end, to, request).await {
                Some(ServerReply::Done(reply)) => {
                    self.cursor.borrow_mut().answered();
                    if let Some(answer) = core.borrow_mut().finish(&call, reply) {
                        return answer;
                    }
                    false
                }
                Some(ServerReply::NotApplied { hint }) => {
                    call.refused();
                    self.cursor.borrow_mut().failed(hint)
                }
                Some(ServerReply::Unknown) | None => self.cursor.borrow_mut().failed(None),
            };
            if pause {
                sleep(ROUND_PAUSE).await;
            }
        }
    }
}

/// A clerk of the replicated service.
pub type RaftClerk = SimClerk<RaftTransport>;

/// The service's settings on the simulator.
#[derive(Clone, Copy, Debug)]
pub struct KvRaftConfig {
    pub servers: usize,
    pub reliable: bool,
    /// 6.5840's `maxraftstate`; `None` for -1.
    pub max_raft_state: Option<u64>,
}

/// The group, its client network and the operation log. Cloning shares them.
#[derive(Clone)]
pub struct KvRaftSim {
    group: RsmGroup<KvStore>,
    rpc: RpcNetwork<Request, ServerReply>,
    log: OpLog,
}

impl KvRaftSim {
    /// Starts the group inside the running simulation: servers connected, both networks
    /// then set to `cfg.reliable`. Leaders append a no-op (reads need a commit in the term).
    ///
    /// Times are a small data center's: every message takes [`MESSAGE_LATENCY`], a disk sync
    /// [`SYNC_LATENCY`], so a write commits in a few milliseconds as it would for real (and
    /// a test's clients make thousands of operations, not a hundred thousand).
    pub fn new(cfg: KvRaftConfig) -> Self {
        let mut cluster = ClusterConfig::new(cfg.servers, cfg.reliable, false);
        cluster.raft.leader_noop = true;
        cluster.sync_latency = SYNC_LATENCY;
        let sim = Self::with_cluster(cluster, cfg.max_raft_state);
        sim.cluster()
            .net()
            .set_latency(MESSAGE_LATENCY.0, MESSAGE_LATENCY.1);
        sim
    }

    /// Like [`KvRaftSim::new`] with the group's every setting given (the sweep draws them).
    pub fn with_cluster(cluster: ClusterConfig, max_raft_state: Option<u64>) -> Self {
        let reliable = cluster.reliable;
        let rpc: RpcNetwork<Request, ServerReply> = RpcNetwork::new(cluster.servers);
        rpc.set_conditions(Conditions {
            latency: MESSAGE_LATENCY,
            ..Conditions::default()
        });
        let attach = rpc.clone();
        let config = RsmConfig {
            max_raft_state,
            ..RsmConfig::default()
        };
        let group = RsmGroup::new(cluster, config, KvStore::new, move |i, replica| {
            attach.attach_async(i, move |request| {
                let replica = replica.clone();
                async move { serve(&replica, request).await }
            });
        });
        rpc.set_reliable(reliable);
        KvRaftSim {
            group,
            rpc,
            log: OpLog::new(),
        }
    }

    pub fn n(&self) -> usize {
        self.group.n()
    }

    pub fn group(&self) -> &RsmGroup<KvStore> {
        &self.group
    }

    pub fn cluster(&self) -> &Cluster {
        self.group.cluster()
    }

    pub fn log(&self) -> &OpLog {
        &self.log
    }

    /// The network between clerks and servers.
    pub fn rpc_net(&self) -> &RpcNetwork<Request, ServerReply> {
        &self.rpc
    }

    /// A clerk that can reach every server.
    pub fn clerk(&self) -> RaftClerk {
        self.clerk_to(&(0..self.n()).collect::<Vec<_>>())
    }

    /// A clerk whose end reaches only `servers` (6.5840's `MakeClerkTo`).
    pub fn clerk_to(&self, servers: &[usize]) -> RaftClerk {
        let end = self.rpc.add_client();
        for i in 0..self.n() {
            self.rpc.set_client_link(end, i, servers.contains(&i));
        }
        let first = flotilla_sim::with_rng(|r| r.below(self.n() as u64)) as usize;
        let transport = RaftTransport {
            end,
            net: self.rpc.clone(),
            cursor: RefCell::new(LeaderCursor::new(self.n(), first)),
        };
        SimClerk::new(transport, self.log.clone())
    }

    /// Lets `clerk` reach every server (6.5840's `Clnt.ConnectAll`).
    pub fn connect_clerk(&self, clerk: &RaftClerk) {
        for i in 0..self.n() {
            self.rpc.set_client_link(clerk.transport().end, i, true);
        }
    }

    /// Crashes server `i` (6.5840's `ShutdownServer`): cut off, its waiting requests failed,
    /// unsynced writes lost; clerks' calls to it fail.
    pub fn crash(&self, i: usize) {
        self.rpc.detach(i);
        self.group.crash(i);
    }

    /// Starts server `i` from its disk (6.5840's `StartServer`); not connected.
    pub fn start(&self, i: usize) {
        self.crash(i);
        self.group.start(i);
    }

    /// Crashes every server.
    pub fn shutdown_all(&self) {
        for i in 0..self.n() {
            self.crash(i);
        }
    }

    /// Starts every server and connects them all.
    pub fn start_all(&self) {
        for i in 0..self.n() {
            self.start(i);
        }
        self.connect_all();
    }

    pub fn connect_all(&self) {
        for i in 0..self.n() {
            self.cluster().connect(i);
        }
    }

    pub fn partition(&self, p1: &[usize], p2: &[usize]) {
        self.cluster().partition(&[p1, p2]);
    }

    /// Sets both networks' reliability.
    pub fn set_reliable(&self, reliable: bool) {
        self.cluster().set_reliable(reliable);
        self.rpc.set_reliable(reliable);
    }

    /// 6.5840's `LogSize`: the largest persisted Raft state without the snapshot.
    pub fn log_size(&self) -> u64 {
        self.cluster().log_size()
    }

    /// 6.5840's `SnapshotSize`: the largest persisted snapshot.
    pub fn snapshot_size(&self) -> u64 {
        self.cluster().snapshot_size()
    }

    /// The first server that believes it leads.
    pub fn leader(&self) -> Option<usize> {
        self.group.leader()
    }

    /// 6.5840's `MakePartition(l)`: the first `n/2 + 1` servers other than `l`, and the rest
    /// with `l` last.
    pub fn make_partition(&self, l: usize) -> (Vec<usize>, Vec<usize>) {
        let n = self.n();
        let others: Vec<usize> = (0..n).filter(|&i| i != l).collect();
        let p1 = others[..n / 2 + 1].to_vec();
        let mut p2 = others[n / 2 + 1..].to_vec();
        p2.push(l);
        (p1, p2)
    }

    /// The test's end: checks the 120 s budget and stops every server.
    pub fn end(&self) {
        self.cluster().end();
        self.shutdown_all();
    }
}
