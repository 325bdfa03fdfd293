//! The data Raft exchanges with its driver: log entries, durable state, snapshots and messages.
//!
//! Everything here is plain data with `serde` derives so that a driver can put it on the wire
//! or on disk in whatever encoding it likes (Flotilla uses postcard everywhere).

use serde::{Deserialize, Serialize};

/// Identifies one server of a Raft group. Ids are chosen by the application; they only need
/// to be distinct within a group.
pub type NodeId = u64;
/// A Raft term (election epoch). Term 0 is "nothing has happened yet".
pub type Term = u64;
/// A position in the replicated log. The first real entry has index 1; index 0 is the empty
/// prefix (and the index of the empty snapshot).
pub type Index = u64;

/// One replicated log entry. `data` is opaque to Raft: the service's command. With
/// [`crate::Config::leader_noop`], an entry with empty `data` is a new leader's no-op, which
/// the service skips when applying (and a service then never proposes empty data).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    pub term: Term,
    pub index: Index,
    #[serde(with = "serde_bytes")]
    pub data: Vec<u8>,
}

/// The part of Raft's state that must survive a crash besides the log (Figure 2's
/// `currentTerm` and `votedFor`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct HardState {
    pub term: Term,
    pub vote: Option<NodeId>,
}

/// A snapshot of the service's state machine covering every entry up to and including
/// `index` (whose term was `term`). The default value, index 0, is the empty snapshot.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Snapshot {
    pub index: Index,
    pub term: Term,
    #[serde(with = "serde_bytes")]
    pub data: Vec<u8>,
}

/// A message between two Raft servers. Requests and responses are separate one-way messages
/// (as in etcd's raft): nothing in the core waits for a reply.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Message {
    pub from: NodeId,
    pub to: NodeId,
    /// The sender's current term.
    pub term: Term,
    pub body: MessageBody,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum MessageBody {
    /// A candidate asks for a vote (Figure 2, RequestVote RPC).
    RequestVote {
        last_log_index: Index,
        last_log_term: Term,
        /// Sent by a leadership transfer's target (after `TimeoutNow`): granted even by a
        /// server that still hears the old leader (check-quorum's lease), which asked for it.
        transfer: bool,
    },
    RequestVoteResponse {
        granted: bool,
    },
    /// Would you vote for me in term `term` (the message's term, one above the sender's)?
    /// Asked before a real election so that a server that cannot win — a stale log, or a
    /// partition that heals — never raises the group's term (Raft thesis §9.6). Answering
    /// changes nothing in the receiver.
    PreVote {
        last_log_index: Index,
        last_log_term: Term,
    },
    PreVoteResponse {
        granted: bool,
    },
    /// Log replication and heartbeat (Figure 2, AppendEntries RPC). `entries` start at
    /// `prev_log_index + 1` and are consecutive.
    AppendEntries {
        prev_log_index: Index,
        prev_log_term: Term,
        entries: Vec<Entry>,
        leader_commit: Index,
    },
    AppendEntriesResponse(AppendOutcome),
    /// The leader's snapshot, sent whole when a follower needs entries the leader has
    /// compacted away (Figure 13). Answered with an `AppendEntriesResponse`.
    InstallSnapshot {
        snapshot: Snapshot,
    },
    /// "Am I still your leader?" — a leader's round of confirmation for ReadIndex (Raft
    /// thesis §6.4). `seq` numbers the leader's rounds (increasing, never reused by it); a
    /// follower in the same term answers with the same `seq`, and counts it as hearing from
    /// its leader.
    ReadProbe {
        seq: u64,
    },
    ReadProbeResponse {
        seq: u64,
    },
    /// A leader transferring its leadership (Raft thesis §3.10) tells the target, whose log
    /// it has brought up to date, to start an election at once.
    TimeoutNow,
}

/// A read confirmed by ReadIndex: the leader was still the leader, with commit index
/// `index`, after the read was asked. Once the service has applied through `index`, it may
/// answer the read `ctx` from its state machine, linearizably.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReadState {
    pub index: Index,
    /// What the service passed to `read_index`, to find its waiting read.
    pub ctx: Vec<u8>,
}

/// How a follower answered an `AppendEntries` or `InstallSnapshot`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum AppendOutcome {
    /// The follower's log now matches the leader's up to and including `match_index`.
    Accepted { match_index: Index },
    /// The follower has no entry at `prev_log_index` with the leader's term there. `hint` lets
    /// the leader skip back a whole term at a time (the "fast backup" of the 6.5840 notes).
    Rejected {
        prev_log_index: Index,
        hint: ConflictHint,
    },
}

/// Where a rejecting follower's log diverges.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConflictHint {
    /// The first index of `term` in the follower's log, or the follower's last index + 1 when
    /// its log is too short (then `term` is `None`).
    pub index: Index,
    pub term: Option<Term>,
}

impl MessageBody {
    /// Requests are what labrpc would count as RPCs; responses travel back on the same "call".
    pub fn is_request(&self) -> bool {
        matches!(
            self,
            MessageBody::RequestVote { .. }
                | MessageBody::PreVote { .. }
                | MessageBody::AppendEntries { .. }
                | MessageBody::InstallSnapshot { .. }
                | MessageBody::ReadProbe { .. }
        )
    }
}

/// What a server currently believes about leadership. Not persisted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    Follower,
    /// Asking for pre-votes; the term has not changed yet.
    PreCandidate,
    Candidate,
    Leader,
}

/// Volatile state that a driver may want to show or act on (e.g. redirect clients).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SoftState {
    pub role: Role,
    pub leader: Option<NodeId>,
    pub term: Term,
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `Entry` as it was before its `data` was marked as bytes: a plain sequence of `u8`s.
    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    struct EntryAsSequence {
        term: Term,
        index: Index,
        data: Vec<u8>,
    }

    /// Marking `data` as bytes (one copy instead of one call per byte) leaves postcard's
    /// encoding as it was, so logs, snapshots and peers written before read the same: both
    /// ways, for empty, short and long data.
    #[test]
    fn entry_data_as_bytes_encodes_as_the_sequence_did() {
        for len in [0usize, 1, 127, 128, 300, 70_000] {
            let data: Vec<u8> = (0..len).map(|i| (i * 7 % 256) as u8).collect();
            let entry = Entry {
                term: 3,
                index: 1 << 40,
                data: data.clone(),
            };
            let old = EntryAsSequence {
                term: 3,
                index: 1 << 40,
                data,
            };
            let new_bytes = postcard::to_allocvec(&entry).unwrap();
            assert_eq!(new_bytes, postcard::to_allocvec(&old).unwrap(), "len {len}");
            assert_eq!(
                postcard::from_bytes::<EntryAsSequence>(&new_bytes).unwrap(),
                old
            );
            assert_eq!(postcard::from_bytes::<Entry>(&new_bytes).unwrap(), entry);
        }
    }
}
