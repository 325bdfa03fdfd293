//! [`RawNode`]: the driver-facing interface of the core, shaped like etcd's `RawNode`.
//!
//! A driver loops:
//!
//! 1. feed inputs: [`RawNode::tick`] at a fixed interval, [`RawNode::step`] for each message
//!    received, [`RawNode::propose`] for each client command, [`RawNode::compact`] when the
//!    service has taken a snapshot;
//! 2. if [`RawNode::has_ready`], take a [`Ready`] and handle it **in this order**:
//!    a. make `ready.persist` durable (see [`crate::durable`] for what that means);
//!    b. only then send `ready.messages` (persist before you send: a vote or an
//!    acknowledgement must never outrun the state that justifies it);
//!    c. apply `ready.snapshot_to_apply` (if any) and then `ready.committed_entries`, in order;
//! 3. call [`RawNode::advance`].
//!
//! Guarantees to the driver: committed entries come out in index order with no gaps and no
//! repeats; after a snapshot to apply at index S, the next committed entry is S + 1; after a
//! restart from a state whose snapshot is at S, the first committed entry is S + 1 (the
//! service restores S itself, from its own copy of the snapshot).

use crate::durable::{DurableState, Persist};
use crate::log::RaftLog;
use crate::progress::FollowerProgress;
use crate::raft::Raft;
use crate::types::*;
use crate::validate::StepError;
use crate::Config;

/// The proposal was not accepted because this node is not the leader. `hint` names the leader
/// this node last heard from in its current term, if any.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NotLeader {
    pub hint: Option<NodeId>,
}

/// Why a leadership transfer could not start.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TransferError {
    NotLeader(NotLeader),
    /// The target is not a member of the group.
    UnknownPeer(NodeId),
}

impl std::fmt::Display for TransferError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            TransferError::NotLeader(e) => e.fmt(f),
            TransferError::UnknownPeer(id) => write!(f, "node {id} is not a member of the group"),
        }
    }
}

impl std::error::Error for TransferError {}

impl std::fmt::Display for NotLeader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.hint {
            Some(id) => write!(f, "not the leader; try node {id}"),
            None => write!(f, "not the leader; leader unknown"),
        }
    }
}

impl std::error::Error for NotLeader {}

/// Why [`RawNode::compact`] refused a snapshot.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CompactError {
    /// The index has not been handed out for applying yet.
    NotApplied { index: Index, applied: Index },
    /// The log is already compacted to this index or beyond.
    Outdated { index: Index, snapshot_index: Index },
}

impl std::fmt::Display for CompactError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CompactError::NotApplied { index, applied } => {
                write!(
                    f,
                    "cannot snapshot at {index}: only {applied} handed out for applying"
                )
            }
            CompactError::Outdated {
                index,
                snapshot_index,
            } => {
                write!(
                    f,
                    "cannot snapshot at {index}: already compacted to {snapshot_index}"
                )
            }
        }
    }
}

impl std::error::Error for CompactError {}

/// Everything the core wants done since the last `Ready`. See the module docs for the order.
#[derive(Debug, Default)]
pub struct Ready {
    /// Role, leader or term changed: here is the new value.
    pub soft_state: Option<SoftState>,
    /// Make this durable first.
    pub persist: Persist,
    /// Then send these.
    pub messages: Vec<Message>,
    /// Then install this snapshot into the state machine (a leader sent it)…
    pub snapshot_to_apply: Option<Snapshot>,
    /// …and apply these, in order.
    pub committed_entries: Vec<Entry>,
    /// Reads confirmed by [`RawNode::read_index`]: answer each once the state machine has
    /// applied through its index (after this `Ready`'s `committed_entries`).
    pub read_states: Vec<ReadState>,
}

/// A read-only view of a node's state, for status displays and tests.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Status {
    pub id: NodeId,
    pub soft: SoftState,
    pub hard: HardState,
    pub commit: Index,
    pub applied: Index,
    pub first_index: Index,
    pub last_index: Index,
    pub last_term: Term,
    pub snapshot_index: Index,
    /// On a leader, each follower's progress (match, next, state), in `peers` order; empty
    /// on any other role.
    pub progress: Vec<FollowerProgress>,
}

pub struct RawNode {
    raft: Raft,
    /// Hard state as of the last `Ready` (what storage has or is about to have).
    prev_hard_state: HardState,
    prev_soft_state: SoftState,
    /// Last index handed out for applying (in a `Ready`, or covered by a snapshot).
    handed_out: Index,
    /// Last index the driver confirmed applied (`advance`).
    applied: Index,
    ready_outstanding: bool,
}

impl RawNode {
    /// Starts a node from its durable state: `DurableState::default()` for a brand-new node,
    /// or what storage recovered after a crash. Applying resumes after the snapshot.
    pub fn new(cfg: Config, durable: DurableState) -> Self {
        let log = RaftLog::restore(durable.snapshot, durable.entries);
        let handed_out = log.snapshot().index;
        let raft = Raft::new(cfg, durable.hard_state, log);
        RawNode {
            prev_hard_state: raft.hard_state(),
            prev_soft_state: raft.soft_state(),
            raft,
            handed_out,
            applied: handed_out,
            ready_outstanding: false,
        }
    }

    /// Advances logical time by one tick (election and heartbeat timers count ticks).
    pub fn tick(&mut self) {
        self.raft.tick();
    }

    /// Tells a leader that `peer` restarted, so that it probes the follower's log again
    /// instead of trusting what the follower acknowledged before (see
    /// `Raft::forget_progress`). Does nothing on other roles.
    pub fn peer_restarted(&mut self, peer: NodeId) {
        self.raft.forget_progress(peer);
    }

    /// Feeds a message from another node. A message that is malformed, not addressed to this
    /// node, from outside the group, or impossible in a correct group (see
    /// [`crate::validate`]) is refused with a [`StepError`] and changes nothing.
    pub fn step(&mut self, message: Message) -> Result<(), StepError> {
        self.raft.step(message)
    }

    /// Proposes a command. On a leader, returns the index and term it will have if it commits
    /// (no promise that it does).
    pub fn propose(&mut self, data: Vec<u8>) -> Result<(Index, Term), NotLeader> {
        self.raft.propose(data)
    }

    /// Hands leadership to `to` (Raft thesis §3.10): see [`TransferError`] for refusals. The
    /// leader brings `to` up to date and tells it to campaign; proposals are refused until
    /// then, and the transfer is dropped after an election timeout without a new leader.
    pub fn transfer_leader(&mut self, to: NodeId) -> Result<(), TransferError> {
        self.raft.transfer_leader(to)
    }

    /// Asks to serve a read linearizably without writing to the log (ReadIndex, Raft thesis
    /// §6.4). On a leader, a later `Ready` carries `ctx` back in `read_states` with the
    /// commit index to wait for, once a majority has confirmed that this node was still the
    /// leader after the call. A read asked of a leader that then loses leadership is never
    /// confirmed: the service times it out and asks again.
    pub fn read_index(&mut self, ctx: Vec<u8>) -> Result<(), NotLeader> {
        self.raft.read_index(ctx)
    }

    /// The service has a snapshot of its state through `index` (inclusive): drop the log up to
    /// there. The snapshot is handed back in the next `Ready`'s `persist.snapshot` and is what
    /// lagging followers will receive.
    pub fn compact(&mut self, index: Index, data: Vec<u8>) -> Result<(), CompactError> {
        let snapshot_index = self.raft.log.snapshot().index;
        if index <= snapshot_index {
            return Err(CompactError::Outdated {
                index,
                snapshot_index,
            });
        }
        if index > self.handed_out {
            return Err(CompactError::NotApplied {
                index,
                applied: self.handed_out,
            });
        }
        self.raft.log.compact(index, data);
        Ok(())
    }

    pub fn has_ready(&self) -> bool {
        let log = &self.raft.log;
        !self.raft.msgs.is_empty()
            || self.raft.hard_state() != self.prev_hard_state
            || self.raft.soft_state() != self.prev_soft_state
            || log.snapshot_unpersisted
            || log.has_unstable()
            || log.committed > self.handed_out
            || !self.raft.read_states.is_empty()
    }

    /// Takes everything pending. Must be followed by [`RawNode::advance`] before the next call.
    pub fn ready(&mut self) -> Ready {
        assert!(
            !self.ready_outstanding,
            "ready() called twice without advance()"
        );
        self.ready_outstanding = true;
        self.raft.flush_broadcast();
        let mut rd = Ready::default();
        let soft = self.raft.soft_state();
        if soft != self.prev_soft_state {
            rd.soft_state = Some(soft);
            self.prev_soft_state = soft;
        }
        let hard = self.raft.hard_state();
        if hard != self.prev_hard_state {
            rd.persist.hard_state = Some(hard);
            self.prev_hard_state = hard;
        }
        let max_bytes = self.raft.cfg.max_committed_bytes_per_ready;
        let log = &mut self.raft.log;
        if std::mem::take(&mut log.snapshot_unpersisted) {
            rd.persist.snapshot = Some(log.snapshot().clone());
        }
        rd.persist.entries = log.take_unstable();
        if log.snapshot().index > self.handed_out {
            rd.snapshot_to_apply = Some(log.snapshot().clone());
            self.handed_out = log.snapshot().index;
        }
        if log.committed > self.handed_out {
            rd.committed_entries =
                log.slice(self.handed_out + 1, log.committed, usize::MAX, max_bytes);
            let first = self.handed_out + 1;
            for (k, e) in rd.committed_entries.iter().enumerate() {
                assert_eq!(
                    e.index,
                    first + k as u64,
                    "committed entries in order, none missing"
                );
            }
            self.handed_out += rd.committed_entries.len() as u64;
            assert!(
                !rd.committed_entries.is_empty() && self.handed_out <= log.committed,
                "committed entries from {first} to {} must be in the log",
                log.committed
            );
        }
        rd.messages = std::mem::take(&mut self.raft.msgs);
        rd.read_states = std::mem::take(&mut self.raft.read_states);
        rd
    }

    /// The last `Ready` has been persisted, sent and applied.
    pub fn advance(&mut self) {
        assert!(self.ready_outstanding, "advance() without ready()");
        self.ready_outstanding = false;
        self.applied = self.handed_out;
    }

    pub fn status(&self) -> Status {
        let log = &self.raft.log;
        Status {
            id: self.raft.id,
            soft: self.raft.soft_state(),
            hard: self.raft.hard_state(),
            commit: log.committed,
            applied: self.applied,
            first_index: log.first_index(),
            last_index: log.last_index(),
            last_term: log.last_term(),
            snapshot_index: log.snapshot().index,
            progress: self.raft.follower_progress(),
        }
    }

    /// The entry at `index`, if still in the log (for checkers and debugging).
    pub fn entry(&self, index: Index) -> Option<&Entry> {
        self.raft.log.entry(index)
    }

    /// The term of the entry at `index` if the log knows it (the snapshot index included).
    pub fn term_at(&self, index: Index) -> Option<Term> {
        self.raft.log.term(index)
    }

    pub fn is_leader(&self) -> bool {
        self.raft.role == Role::Leader
    }
}
