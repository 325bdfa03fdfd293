//! # flotilla-raft: a sans-IO Raft core
//!
//! This crate is the Raft consensus algorithm of the extended Raft paper (Figure 2, with log
//! compaction from Figure 13; no membership change) as a deterministic state machine. It owns
//! no clock, thread, socket, file or global random number generator: a driver feeds it ticks,
//! messages and proposals and carries out what it asks for — persisting, sending, applying —
//! through [`RawNode`] and [`Ready`]. The same core therefore runs inside Flotilla's
//! deterministic simulator and inside a real TCP server with a write-ahead log.
//!
//! What it implements:
//! - randomized election timeouts (in `[election_ticks, 2 × election_ticks)`), heartbeats,
//!   optional check-quorum (a leader that has not heard from a majority for an election
//!   timeout steps down) and pre-vote (a server first asks whether it could win, so a
//!   partitioned or lagging server never inflates the term and unseats a working leader);
//! - log replication with per-follower flow control ([`progress`]): bytes per message,
//!   unanswered messages per follower, one probe per round trip to a lagging follower, a
//!   snapshot resent only on evidence of loss with a doubling wait; and the conflict-term
//!   "fast backup" on rejections;
//! - commitment only by counting replicas of current-term entries (§5.4.2);
//! - restart from persisted term, vote, log and snapshot;
//! - snapshots taken by the service at an index it chooses ([`RawNode::compact`]), sent to
//!   followers that fell behind the compacted prefix (InstallSnapshot).
//! - optionally a no-op entry from each new leader ([`Config::leader_noop`]), so earlier
//!   terms' entries commit without a client write;
//! - ReadIndex reads ([`RawNode::read_index`], Raft thesis §6.4): linearizable reads
//!   confirmed by a round of `ReadProbe`s to a majority, with nothing written to the log;
//!   optionally lease reads ([`Config::lease_reads`]), answered at once while the leader's
//!   lease holds, under a stated clock assumption;
//! - leadership transfer ([`RawNode::transfer_leader`], thesis §3.10): the target is brought
//!   up to date and told to campaign at once (`TimeoutNow`), its votes granted past leases;
//! - a bound on the committed entries one `Ready` hands out
//!   ([`Config::max_committed_bytes_per_ready`]), and each follower's progress in
//!   [`Status`] on the leader.
//!
//! The persistence contract is in [`durable`]; the driver contract in [`rawnode`].

pub mod durable;
mod log;
pub mod progress;
mod raft;
pub mod rawnode;
mod rng;
pub mod types;
pub mod validate;

pub use durable::{DurableState, Persist};
pub use progress::{FollowerProgress, ProgressState};
pub use rawnode::{CompactError, NotLeader, RawNode, Ready, Status, TransferError};
pub use types::*;
pub use validate::StepError;

/// Static configuration of one node. Times are in ticks; the driver decides how long a tick
/// is (Flotilla's drivers tick every 10 ms, giving 100 ms heartbeats and 300–600 ms election
/// timeouts with the defaults).
#[derive(Clone, Debug)]
pub struct Config {
    pub id: NodeId,
    /// Every member of the group, this node included, in the same order on every node.
    pub peers: Vec<NodeId>,
    /// Minimum election timeout; each timeout is drawn from `[election_ticks, 2×election_ticks)`.
    pub election_ticks: u32,
    pub heartbeat_ticks: u32,
    /// Seeds the election-timeout jitter (mixed with `id`, so one seed serves a whole group).
    pub seed: u64,
    pub max_entries_per_message: usize,
    /// Payload bytes per `AppendEntries` (at least one entry is always sent).
    pub max_bytes_per_message: usize,
    /// Unanswered `AppendEntries` with entries a leader keeps in flight to one follower in
    /// `Replicate` state (at least 1); more entries wait for acknowledgements.
    pub max_inflight_messages: usize,
    /// The least a leader waits after sending an `InstallSnapshot` before it sends it again,
    /// which it does only once the follower has answered a later heartbeat without having
    /// it; the wait doubles with each resend, up to 8× (see [`progress`]).
    pub snapshot_resend_ticks: u32,
    pub check_quorum: bool,
    /// Ask for pre-votes before campaigning (and, with `check_quorum`, ignore vote requests
    /// while a leader is known to be alive), so a server that cannot win does not disrupt.
    pub pre_vote: bool,
    /// A new leader appends a no-op entry (empty `data`) of its term at once, so entries of
    /// earlier terms commit — and reads can be served — without waiting for a client's write
    /// (Raft §8). Off by default because it shifts the index of every later command, which
    /// the Lab 3 tests count exactly.
    pub leader_noop: bool,
    /// Payload bytes of committed entries one `Ready` hands out to apply (at least one entry
    /// always); the rest follow in the next `Ready`s, so a node that falls far behind and
    /// catches up applies in bounded steps instead of one huge batch.
    pub max_committed_bytes_per_ready: usize,
    /// Lease reads: a leader answers `read_index` at once, without a round of `ReadProbe`s,
    /// while a quorum has answered it within the last `election_ticks / 2` ticks. Needs
    /// `check_quorum` (ignored without it) and, unlike ReadIndex, **a clock assumption**:
    /// every follower that answered refuses votes for `election_ticks` of its own ticks after
    /// hearing from the leader, so the lease is safe only while message delay plus the drift
    /// between the servers' tick rates stays below `election_ticks / 2` ticks. A leader that
    /// told a follower to take over (leadership transfer) gives its lease up for the term.
    /// On the voters' side, with this flag a server also ignores vote requests for
    /// `election_ticks` after it restarts and after it takes a newer term from a stale
    /// answer (both would otherwise make it forget that it vouched for a leader), so every
    /// member of the group must run with the same setting. Off by default.
    pub lease_reads: bool,
}

impl Config {
    pub fn new(id: NodeId, peers: Vec<NodeId>) -> Self {
        Config {
            id,
            peers,
            election_ticks: 30,
            heartbeat_ticks: 10,
            seed: 0,
            max_entries_per_message: 512,
            max_bytes_per_message: 1 << 20,
            max_inflight_messages: 256,
            snapshot_resend_ticks: 30,
            check_quorum: true,
            pre_vote: true,
            leader_noop: false,
            max_committed_bytes_per_ready: 16 << 20,
            lease_reads: false,
        }
    }
}
