//! A group of replicas on the simulator: a [`Cluster`] whose servers run an [`Rsm`] as their
//! node loop's app, and a handle to each running replica. The harness of the rsm scenarios
//! (`tests/rsm.rs`) and of the services built on the rsm (`flotilla-kvraft`).
//!
//! Everything the Raft harness checks still holds here: the invariants watch every `Ready`,
//! message, sync and applied entry of every replica.

use std::cell::RefCell;
use std::rc::Rc;

use flotilla_raft::{RawNode, Snapshot};
use flotilla_raft_sim::cluster::{AppFactory, Cluster, ClusterConfig};

use crate::{Rsm, RsmApp, RsmConfig, RsmHandle, StateMachine, Wake};

/// The simulator's handle to one replica.
pub type SimHandle<S> = RsmHandle<Rc<RefCell<RawNode>>, Rc<RefCell<Rsm<S>>>, SimWake, S>;

/// Wakes replica `i`'s loop, and tells the invariants of each read it asks.
#[derive(Clone)]
pub struct SimWake {
    cluster: Cluster,
    i: usize,
}

impl Wake for SimWake {
    fn wake(&self) {
        self.cluster.poke(self.i);
    }

    fn read_asked(&self, ctx: &[u8]) {
        self.cluster.note_read_asked(self.i, ctx);
    }
}

type Handles<S> = Rc<RefCell<Vec<Option<SimHandle<S>>>>>;

/// A replica group. Cloning shares it.
pub struct RsmGroup<S: StateMachine> {
    cluster: Cluster,
    handles: Handles<S>,
}

impl<S: StateMachine> Clone for RsmGroup<S> {
    fn clone(&self) -> Self {
        RsmGroup {
            cluster: self.cluster.clone(),
            handles: self.handles.clone(),
        }
    }
}

impl<S: StateMachine + 'static> RsmGroup<S> {
    /// Starts `cfg.servers` replicas, each with a fresh state machine from `make` restored
    /// from its disk's snapshot. `on_start(i, handle)` runs each time replica `i` starts
    /// (a service attaches its request handler there).
    pub fn new(
        cfg: ClusterConfig,
        config: RsmConfig,
        make: impl Fn() -> S + 'static,
        on_start: impl Fn(usize, SimHandle<S>) + 'static,
    ) -> Self {
        let handles: Handles<S> = Rc::new(RefCell::new((0..cfg.servers).map(|_| None).collect()));
        let registry = handles.clone();
        let factory: AppFactory = Rc::new(
            move |cluster: &Cluster, i: usize, snapshot: &Snapshot, node: &Rc<RefCell<RawNode>>| {
                let rsm = Rsm::new(make(), config, snapshot)
                    .unwrap_or_else(|e| panic!("replica {i}: its snapshot does not restore: {e}"));
                let rsm = Rc::new(RefCell::new(rsm));
                let wake = SimWake {
                    cluster: cluster.clone(),
                    i,
                };
                let handle = RsmHandle::new(node.clone(), rsm.clone(), wake);
                registry.borrow_mut()[i] = Some(handle.clone());
                on_start(i, handle);
                Box::new(RsmApp::new(rsm))
            },
        );
        RsmGroup {
            cluster: Cluster::with_app(cfg, factory),
            handles,
        }
    }

    pub fn cluster(&self) -> &Cluster {
        &self.cluster
    }

    pub fn n(&self) -> usize {
        self.cluster.n()
    }

    /// Replica `i`'s handle, if it is running.
    pub fn handle(&self, i: usize) -> Option<SimHandle<S>> {
        self.handles.borrow()[i].clone()
    }

    /// Crashes replica `i`: its waiting submissions and reads fail, its unsynced writes are
    /// lost.
    pub fn crash(&self, i: usize) {
        self.handles.borrow_mut()[i] = None;
        self.cluster.crash(i);
    }

    /// Starts replica `i` from its disk (crashing it first if it runs). Not connected.
    pub fn start(&self, i: usize) {
        self.crash(i);
        self.cluster.start(i);
    }

    /// 6.5840's `Shutdown()`: every replica crashes.
    pub fn shutdown_all(&self) {
        for i in 0..self.n() {
            self.crash(i);
        }
    }

    /// 6.5840's `StartServers()`: every replica starts, all connected.
    pub fn start_all(&self) {
        for i in 0..self.n() {
            self.start(i);
        }
        for i in 0..self.n() {
            self.cluster.connect(i);
        }
    }

    /// The first replica (in index order) whose node believes it leads (6.5840's
    /// `rsm.Leader`).
    pub fn leader(&self) -> Option<usize> {
        (0..self.n()).find(|&i| self.handle(i).is_some_and(|h| h.state().1))
    }
}

/// A clerk's request to a replica group on the simulator, resent until a replica executes
/// it: to the server `cursor` picks, following hints, pausing `pause` after each whole
/// round that failed. For requests whose every attempt is safe to repeat (reads, and
/// commands the state machine deduplicates). Returns `None` only if `give_up` says so
/// between attempts.
pub async fn call_until_done<Req, T>(
    net: &flotilla_sim::rpc::RpcNetwork<Req, crate::Replied<T>>,
    end: flotilla_sim::rpc::ClientId,
    cursor: &RefCell<crate::LeaderCursor>,
    request: &Req,
    pause: std::time::Duration,
    give_up: impl Fn() -> bool,
) -> Option<T>
where
    Req: flotilla_sim::net::Payload + Clone,
    T: serde::Serialize + 'static,
{
    loop {
        if give_up() {
            return None;
        }
        let to = cursor.borrow().target();
        let round_failed = match net.call(end, to, request.clone()).await {
            Some(crate::Replied::Done(answer)) => {
                cursor.borrow_mut().answered();
                return Some(answer);
            }
            Some(crate::Replied::NotApplied { hint }) => cursor.borrow_mut().failed(hint),
            Some(crate::Replied::Unknown) | None => cursor.borrow_mut().failed(None),
        };
        if round_failed {
            flotilla_sim::sleep(pause).await;
        }
    }
}
