//! What a running node says about itself: its Raft state, its storage, and on a leader each
//! follower's progress ([`NodeReport`], `flotilla kvraft status`).

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use flotilla_node::Shared;
use flotilla_raft::{Index, NodeId, RawNode, Term};
use flotilla_rsm::StateMachine;
use serde::{Deserialize, Serialize};

use crate::metrics::Counters;
use crate::Replica;

/// A node's state, as of the moment it was asked.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeReport {
    pub id: NodeId,
    pub addr: SocketAddr,
    /// `Leader`, `Follower`, `Candidate` or `PreCandidate`.
    pub role: String,
    pub term: Term,
    pub leader: Option<NodeId>,
    pub commit: Index,
    pub applied: Index,
    pub first_index: Index,
    pub last_index: Index,
    pub snapshot_index: Index,
    pub log_bytes: u64,
    pub segments: u64,
    pub snapshot_bytes: u64,
    /// Batches made durable since the node started (one `fdatasync` of the log each).
    pub syncs: u64,
    /// On a leader: each follower's progress.
    pub followers: Vec<FollowerReport>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FollowerReport {
    pub id: NodeId,
    pub matched: Index,
    pub next: Index,
    /// `Probe`, `Replicate` or `Snapshot`.
    pub state: String,
}

/// The storage figures the host keeps current after each persist.
#[derive(Debug, Default)]
pub(crate) struct StorageStats {
    pub(crate) log_bytes: AtomicU64,
    pub(crate) segments: AtomicU64,
    pub(crate) snapshot_bytes: AtomicU64,
    pub(crate) syncs: AtomicU64,
}

/// What a client handler gets: the replica to submit to and read from, and the node's
/// report.
pub struct NodeView<S: StateMachine> {
    pub replica: Replica<S>,
    pub(crate) node: Arc<Mutex<RawNode>>,
    pub(crate) counters: Arc<Counters>,
    pub(crate) addr: SocketAddr,
    pub(crate) applied: tokio::sync::watch::Receiver<u64>,
}

impl<S: StateMachine> Clone for NodeView<S> {
    fn clone(&self) -> Self {
        NodeView {
            replica: self.replica.clone(),
            node: self.node.clone(),
            counters: self.counters.clone(),
            addr: self.addr,
            applied: self.applied.clone(),
        }
    }
}

impl<S: StateMachine> NodeView<S> {
    /// Counts a client write proposed on this node (for the metrics).
    pub fn count_proposal(&self) {
        self.counters.proposals.fetch_add(1, Ordering::Relaxed);
    }

    /// A counter that changes after every batch of applied entries (or a snapshot): what
    /// follows the applied state (a watch stream) waits on it.
    pub fn applied(&self) -> tokio::sync::watch::Receiver<u64> {
        self.applied.clone()
    }

    /// The node's address (its port for peers and clients).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Runs `f` on the node's Raft state.
    pub fn with_raft<R>(&self, f: impl FnOnce(&RawNode) -> R) -> R {
        self.node.with(|n| f(n))
    }

    pub fn report(&self) -> NodeReport {
        let status = self.node.with(|n| n.status());
        let load = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let storage = &self.counters.storage;
        NodeReport {
            id: status.id,
            addr: self.addr,
            role: format!("{:?}", status.soft.role),
            term: status.hard.term,
            leader: status.soft.leader,
            commit: status.commit,
            applied: status.applied,
            first_index: status.first_index,
            last_index: status.last_index,
            snapshot_index: status.snapshot_index,
            log_bytes: load(&storage.log_bytes),
            segments: load(&storage.segments),
            snapshot_bytes: load(&storage.snapshot_bytes),
            syncs: load(&storage.syncs),
            followers: status
                .progress
                .iter()
                .filter(|p| p.id != status.id)
                .map(|p| FollowerReport {
                    id: p.id,
                    matched: p.matched,
                    next: p.next,
                    state: format!("{:?}", p.state),
                })
                .collect(),
        }
    }
}
