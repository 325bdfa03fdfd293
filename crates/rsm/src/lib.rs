//! # flotilla-rsm: a replicated state machine on Raft
//!
//! 6.5840's `rsm` layer, as a library: a service hands it a [`StateMachine`] and gets a
//! replicated one. It runs as the [`flotilla_node::App`] of the node loop, so the same code
//! serves the simulator's tests and the real servers.
//!
//! - [`RsmHandle::submit`]`(command)` proposes the command and resolves with its result once
//!   this replica has applied it, or with a [`SubmitError`] saying what is known about its
//!   fate: refused by a non-leader (nothing was proposed: try the hinted leader), replaced
//!   by another leader's entry (it will never apply), or not known within the timeout (it
//!   may still apply). A submission never hangs: its entry is matched to what is applied at
//!   its index by term (two entries with one index and term are the same entry, by Raft's
//!   log matching), an entry another leader's replaces is noticed as soon as the replacement
//!   is persisted, and every submission times out after [`RsmConfig::timeout_ticks`].
//! - [`RsmHandle::read`]`(query)` answers a read without writing to the log: the leader
//!   confirms it still leads with a ReadIndex round, this replica waits until it has applied
//!   up to the confirmed index, then runs the query on its state. Linearizable.
//! - Every replica applies every committed command exactly once per incarnation, in log
//!   order (a restart re-applies the log after the snapshot it restored). Detecting
//!   duplicate *submissions* (a client's retry) is the state machine's job, with state that
//!   is replicated and snapshotted with everything else: `flotilla-kv`'s sessions do it.
//! - When the persisted Raft state exceeds [`RsmConfig::max_raft_state`] bytes after an
//!   apply, the replica snapshots its state machine and compacts the log; a restarting
//!   replica restores from the snapshot (see [`Rsm::new`]).
//!
//! For the clients of any service on it: [`Replied`], the one reply shape (done, refused
//! without effect, unknown), and [`LeaderCursor`], which server a clerk tries next.
//!
//! A command's encoding in the log is postcard. An entry that does not decode (never one
//! this library wrote) is skipped the same way on every replica, so replicas cannot diverge.

mod handle;
pub mod leader;
#[cfg(feature = "sim")]
pub mod scenarios;
#[cfg(feature = "sim")]
pub mod sim;

use std::collections::{BTreeMap, HashMap};

use flotilla_node::App;
use flotilla_raft::{
    Entry, Index, NodeId, Persist, RawNode, ReadState, Role, Snapshot, SoftState, Term,
};
use serde::de::DeserializeOwned;
use serde::Serialize;
use tokio::sync::oneshot;

pub use handle::{RsmHandle, Wake};
pub use leader::LeaderCursor;

/// What a service replicates. Commands change it (through the log); queries only read it.
pub trait StateMachine {
    type Command: Serialize + DeserializeOwned;
    type Output;
    type Query;
    type Answer;

    /// Executes one committed command. Must be deterministic: every replica runs it.
    fn apply(&mut self, command: Self::Command) -> Self::Output;

    /// Answers a read from the current state.
    fn query(&self, query: &Self::Query) -> Self::Answer;

    /// The whole state, for a snapshot.
    fn snapshot(&self) -> Vec<u8>;

    /// Replaces the state by a snapshot's. An error leaves the replica unable to continue
    /// (its caller stops it); it never happens for a snapshot [`StateMachine::snapshot`] made.
    fn restore(&mut self, snapshot: &[u8]) -> Result<(), String>;
}

/// Why a submission has no result.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SubmitError {
    /// This replica does not lead (or is handing leadership over); nothing was proposed.
    /// `hint`: the leader it knows of, if any.
    WrongLeader { hint: Option<NodeId> },
    /// The entry was replaced by another leader's: it will never be applied.
    Overwritten,
    /// Its fate was not learned in time, or the replica stopped: it may or may not be
    /// applied, now or later.
    Unknown,
}

/// Why a read has no answer. Nothing was changed either way.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReadError {
    /// This replica does not lead (or stopped leading before the read was confirmed).
    WrongLeader { hint: Option<NodeId> },
    /// Not confirmed in time, or the replica stopped.
    Unknown,
}

impl std::fmt::Display for SubmitError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SubmitError::WrongLeader { hint: Some(l) } => write!(f, "not the leader; try {l}"),
            SubmitError::WrongLeader { hint: None } => f.write_str("not the leader"),
            SubmitError::Overwritten => f.write_str("replaced by another leader's entry"),
            SubmitError::Unknown => f.write_str("outcome unknown"),
        }
    }
}

impl std::error::Error for SubmitError {}

/// What a replica answers the client of a replicated service, whatever the service: the
/// result, a refusal without effect, or "unknown". The one reply shape of every service on
/// the rsm (the KV store, the shard controller, the shard groups), on the simulator and on
/// the wire.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum Replied<T> {
    /// Executed: a command applied through the log, or a read served after a ReadIndex
    /// confirmation.
    Done(T),
    /// Turned away without effect: this replica does not lead (`hint`: who does, if it
    /// knows), or the command's entry was replaced by another leader's.
    NotApplied { hint: Option<NodeId> },
    /// The command was proposed but its fate is unknown (no outcome in time, or the replica
    /// stopped): it may or may not take effect.
    Unknown,
}

impl<T> Replied<T> {
    /// The reply to a submission's outcome.
    pub fn from_submit(outcome: Result<T, SubmitError>) -> Self {
        match outcome {
            Ok(done) => Replied::Done(done),
            Err(SubmitError::WrongLeader { hint }) => Replied::NotApplied { hint },
            Err(SubmitError::Overwritten) => Replied::NotApplied { hint: None },
            Err(SubmitError::Unknown) => Replied::Unknown,
        }
    }

    /// The reply to a read's outcome (a read that failed changed nothing).
    pub fn from_read(outcome: Result<T, ReadError>) -> Self {
        match outcome {
            Ok(done) => Replied::Done(done),
            Err(ReadError::WrongLeader { hint }) => Replied::NotApplied { hint },
            Err(ReadError::Unknown) => Replied::NotApplied { hint: None },
        }
    }

    /// The same reply with its result mapped by `f`.
    pub fn map<U>(self, f: impl FnOnce(T) -> U) -> Replied<U> {
        match self {
            Replied::Done(done) => Replied::Done(f(done)),
            Replied::NotApplied { hint } => Replied::NotApplied { hint },
            Replied::Unknown => Replied::Unknown,
        }
    }
}

#[cfg(feature = "sim")]
impl<T: Serialize + 'static> flotilla_sim::net::Payload for Replied<T> {
    fn wire_size(&self) -> usize {
        postcard::experimental::serialized_size(self).unwrap_or(0)
    }
    fn is_request(&self) -> bool {
        false
    }
}

/// Tunables of a replica.
#[derive(Clone, Copy, Debug)]
pub struct RsmConfig {
    /// Snapshot once the persisted Raft state (log and hard state, without the snapshot)
    /// exceeds this many bytes; `None`: never (6.5840's `maxraftstate = -1`).
    pub max_raft_state: Option<u64>,
    /// A submission or read without an outcome after this many ticks gets
    /// [`SubmitError::Unknown`] / [`ReadError::Unknown`]. Default 300 (3 s at 10 ms ticks):
    /// longer than an election, so a leader cut off from its majority keeps its callers
    /// waiting until the partition heals (when the new leader's entries replace theirs)
    /// rather than guessing.
    pub timeout_ticks: u32,
}

impl Default for RsmConfig {
    fn default() -> Self {
        RsmConfig {
            max_raft_state: None,
            timeout_ticks: 300,
        }
    }
}

struct PendingSubmit<S: StateMachine> {
    term: Term,
    deadline: u64,
    reply: oneshot::Sender<Result<S::Output, SubmitError>>,
}

struct PendingRead<S: StateMachine> {
    query: S::Query,
    deadline: u64,
    reply: oneshot::Sender<Result<S::Answer, ReadError>>,
}

/// One replica's state machine and the submissions and reads waiting on it.
pub struct Rsm<S: StateMachine> {
    sm: S,
    config: RsmConfig,
    /// Highest index applied (or restored from a snapshot).
    applied: Index,
    ticks: u64,
    leader: Option<NodeId>,
    is_leader: bool,
    /// Submissions proposed here, by index.
    submits: BTreeMap<Index, PendingSubmit<S>>,
    /// Reads asked of Raft, by the context they were asked with.
    asked: HashMap<u64, PendingRead<S>>,
    /// Reads confirmed at an index not applied yet.
    confirmed: Vec<(Index, PendingRead<S>)>,
    next_read: u64,
    /// The Raft state size at the last snapshot taken, so one oversized reading (sizes only
    /// change when a batch is persisted) does not snapshot at every entry of a batch.
    snapshotted_at_size: Option<u64>,
    stopped: bool,
}

impl<S: StateMachine> Rsm<S> {
    /// A replica starting from `snapshot` (index 0: none) — what its Raft storage kept.
    pub fn new(mut sm: S, config: RsmConfig, snapshot: &Snapshot) -> Result<Self, String> {
        if snapshot.index > 0 {
            sm.restore(&snapshot.data)?;
        }
        Ok(Rsm {
            sm,
            config,
            applied: snapshot.index,
            ticks: 0,
            leader: None,
            is_leader: false,
            submits: BTreeMap::new(),
            asked: HashMap::new(),
            confirmed: Vec::new(),
            next_read: 1,
            snapshotted_at_size: None,
            stopped: false,
        })
    }

    pub fn state(&self) -> &S {
        &self.sm
    }

    pub fn applied(&self) -> Index {
        self.applied
    }

    /// Submissions and reads still waiting (for tests and status output).
    pub fn waiting(&self) -> usize {
        self.submits.len() + self.asked.len() + self.confirmed.len()
    }

    fn deadline(&self) -> u64 {
        self.ticks + u64::from(self.config.timeout_ticks)
    }

    /// Registers a proposal at (`index`, `term`) and returns where its outcome will come.
    fn expect_submit(
        &mut self,
        index: Index,
        term: Term,
    ) -> oneshot::Receiver<Result<S::Output, SubmitError>> {
        let (reply, outcome) = oneshot::channel();
        let deadline = self.deadline();
        let pending = PendingSubmit {
            term,
            deadline,
            reply,
        };
        // Raft never hands out one index twice in a term; a stale entry at this index (an
        // earlier term's) was replaced when this proposal was appended.
        if let Some(old) = self.submits.insert(index, pending) {
            let _ = old.reply.send(Err(SubmitError::Overwritten));
        }
        outcome
    }

    /// Registers a read and returns its context for `read_index` and where its answer comes.
    fn expect_read(
        &mut self,
        query: S::Query,
    ) -> (u64, oneshot::Receiver<Result<S::Answer, ReadError>>) {
        let (reply, answer) = oneshot::channel();
        let id = self.next_read;
        self.next_read += 1;
        let deadline = self.deadline();
        self.asked.insert(
            id,
            PendingRead {
                query,
                deadline,
                reply,
            },
        );
        (id, answer)
    }

    fn hint(&self) -> Option<NodeId> {
        self.leader
    }

    /// Answers the confirmed reads this replica has now applied far enough for.
    fn serve_reads(&mut self) {
        let applied = self.applied;
        let (ready, waiting): (Vec<_>, Vec<_>) = std::mem::take(&mut self.confirmed)
            .into_iter()
            .partition(|(index, _)| *index <= applied);
        self.confirmed = waiting;
        for (_, read) in ready {
            let answer = self.sm.query(&read.query);
            let _ = read.reply.send(Ok(answer));
        }
    }

    /// Fails everything waiting: the replica stops (its caller learns nothing more).
    pub fn stop(&mut self) {
        self.stopped = true;
        for (_, s) in std::mem::take(&mut self.submits) {
            let _ = s.reply.send(Err(SubmitError::Unknown));
        }
        for (_, r) in std::mem::take(&mut self.asked) {
            let _ = r.reply.send(Err(ReadError::Unknown));
        }
        for (_, r) in std::mem::take(&mut self.confirmed) {
            let _ = r.reply.send(Err(ReadError::Unknown));
        }
    }

    pub fn is_stopped(&self) -> bool {
        self.stopped
    }
}

impl<S: StateMachine> App for Rsm<S> {
    fn on_soft_state(&mut self, soft: &SoftState) {
        self.leader = soft.leader;
        let was_leader = self.is_leader;
        self.is_leader = soft.role == Role::Leader;
        if was_leader && !self.is_leader {
            // Raft dropped its unconfirmed reads when it stepped down. Confirmed ones stay:
            // their index was confirmed while it led, and is served once applied.
            let hint = self.hint();
            for (_, r) in std::mem::take(&mut self.asked) {
                let _ = r.reply.send(Err(ReadError::WrongLeader { hint }));
            }
        }
        // Submissions stay: an entry of an old term may still commit under a new leader.
        // They end when their index is applied or replaced, or at their deadline.
    }

    fn on_persisted(&mut self, node: &RawNode, batch: &Persist) {
        if batch
            .snapshot
            .as_ref()
            .is_some_and(|s| s.index > self.applied)
        {
            // A leader's snapshot replaced the log (a snapshot at or below what is applied
            // is this replica's own compaction): which of our entries it holds is not known
            // here.
            for (_, s) in std::mem::take(&mut self.submits) {
                let _ = s.reply.send(Err(SubmitError::Unknown));
            }
            return;
        }
        if batch.entries.is_empty() {
            return;
        }
        // An entry is replaced only when a conflicting suffix is persisted: then the log
        // holds another term at its index, or no longer reaches it.
        let replaced: Vec<Index> = self
            .submits
            .iter()
            .filter(|(index, s)| node.term_at(**index) != Some(s.term))
            .map(|(index, _)| *index)
            .collect();
        for index in replaced {
            let s = self.submits.remove(&index).expect("just found");
            let _ = s.reply.send(Err(SubmitError::Overwritten));
        }
    }

    fn on_tick(&mut self) {
        self.ticks += 1;
        let now = self.ticks;
        let expired: Vec<Index> = self
            .submits
            .iter()
            .filter(|(_, s)| s.deadline <= now)
            .map(|(i, _)| *i)
            .collect();
        for index in expired {
            let s = self.submits.remove(&index).expect("just found");
            let _ = s.reply.send(Err(SubmitError::Unknown));
        }
        let expired: Vec<u64> = self
            .asked
            .iter()
            .filter(|(_, r)| r.deadline <= now)
            .map(|(id, _)| *id)
            .collect();
        for id in expired {
            let r = self.asked.remove(&id).expect("just found");
            let _ = r.reply.send(Err(ReadError::Unknown));
        }
        // Confirmed reads wait only for this replica's own applying, which cannot stall.
    }

    fn apply_snapshot(&mut self, snapshot: &Snapshot) {
        if let Err(e) = self.sm.restore(&snapshot.data) {
            panic!(
                "a leader's snapshot at {} does not restore: {e}",
                snapshot.index
            );
        }
        assert!(
            snapshot.index > self.applied,
            "Raft handed out a snapshot at {} behind what was applied ({})",
            snapshot.index,
            self.applied
        );
        self.applied = snapshot.index;
        self.serve_reads();
    }

    fn apply(&mut self, entry: Entry, raft_state_size: u64) -> Option<Vec<u8>> {
        assert_eq!(
            entry.index,
            self.applied + 1,
            "entries are applied in order, each once"
        );
        self.applied = entry.index;
        let waiting = self.submits.remove(&entry.index);
        let output = if entry.data.is_empty() {
            None // a leader's no-op
        } else {
            postcard::from_bytes::<S::Command>(&entry.data)
                .ok()
                .map(|command| self.sm.apply(command))
        };
        if let Some(s) = waiting {
            let outcome = match output {
                Some(output) if s.term == entry.term => Ok(output),
                _ if s.term == entry.term => Err(SubmitError::Unknown),
                _ => Err(SubmitError::Overwritten),
            };
            let _ = s.reply.send(outcome);
        }
        let max = self.config.max_raft_state?;
        if raft_state_size > max && self.snapshotted_at_size != Some(raft_state_size) {
            self.snapshotted_at_size = Some(raft_state_size);
            return Some(self.sm.snapshot());
        }
        None
    }

    fn on_read_state(&mut self, read: ReadState) {
        let Some(id) = <[u8; 8]>::try_from(read.ctx.as_slice())
            .ok()
            .map(u64::from_le_bytes)
        else {
            return;
        };
        if let Some(pending) = self.asked.remove(&id) {
            self.confirmed.push((read.index, pending));
        }
    }

    fn after_ready(&mut self) {
        self.serve_reads();
    }
}

/// The [`App`] the node loop runs for a replica shared with its handles (the loop holds one
/// of these; dropping it — the node stopped or crashed — fails everything still waiting).
pub struct RsmApp<P: flotilla_node::Shared<Rsm<S>>, S: StateMachine> {
    rsm: P,
    _sm: std::marker::PhantomData<fn() -> S>,
}

impl<P: flotilla_node::Shared<Rsm<S>>, S: StateMachine> RsmApp<P, S> {
    pub fn new(rsm: P) -> Self {
        RsmApp {
            rsm,
            _sm: std::marker::PhantomData,
        }
    }
}

impl<P: flotilla_node::Shared<Rsm<S>>, S: StateMachine> Drop for RsmApp<P, S> {
    fn drop(&mut self) {
        self.rsm.with(|r| r.stop());
    }
}

impl<P: flotilla_node::Shared<Rsm<S>>, S: StateMachine> App for RsmApp<P, S> {
    fn on_soft_state(&mut self, soft: &SoftState) {
        self.rsm.with(|r| r.on_soft_state(soft))
    }
    fn on_persisted(&mut self, node: &RawNode, batch: &Persist) {
        self.rsm.with(|r| r.on_persisted(node, batch))
    }
    fn on_tick(&mut self) {
        self.rsm.with(|r| r.on_tick())
    }
    fn apply_snapshot(&mut self, snapshot: &Snapshot) {
        self.rsm.with(|r| r.apply_snapshot(snapshot))
    }
    fn apply(&mut self, entry: Entry, raft_state_size: u64) -> Option<Vec<u8>> {
        self.rsm.with(|r| r.apply(entry, raft_state_size))
    }
    fn on_read_state(&mut self, read: ReadState) {
        self.rsm.with(|r| r.on_read_state(read))
    }
    fn after_ready(&mut self) {
        self.rsm.with(|r| r.after_ready())
    }
}

#[cfg(test)]
mod tests;
