//! What the core refuses from its peers, in every build.
//!
//! Messages come from outside the process: a buggy or hostile peer, a corrupted frame that
//! still decoded, a node of another group. Before a message can change anything,
//! `check_message` checks what can be checked without state — the entries of an
//! `AppendEntries` are consecutive from `prev_log_index + 1`, their terms never decrease, start
//! at or above `prev_log_term` and never exceed the sender's term; no index or term is so
//! large that the next one would overflow — and then `Raft::check_against_state` checks, also
//! before anything changes, what needs the node's state (a second leader in our term, an
//! entry that would overwrite a committed one, an answer naming an index the leader never
//! sent). A refused message changes nothing and comes back
//! to the driver as a [`StepError`]: in a correct group none ever occurs, so the simulator
//! treats one as a failure, while a real server logs it and carries on.

use crate::types::{Index, Message, MessageBody, NodeId, Term};

/// Why [`RawNode::step`](crate::RawNode::step) refused a message. The node's state is
/// unchanged.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StepError {
    /// The message is addressed to another node.
    NotForThisNode { to: NodeId },
    /// The sender is not a member of this group (or claims to be this node).
    UnknownSender { from: NodeId },
    /// A term or index at the top of the range: the next one would overflow.
    OutOfRange { from: NodeId, what: &'static str },
    /// `AppendEntries` whose entries do not follow `prev_log_index` one by one, or whose terms
    /// decrease, fall below `prev_log_term` or exceed the sender's term; a snapshot of a term
    /// above the sender's.
    Malformed { from: NodeId, detail: String },
    /// Another node acts as leader in a term this node leads: two leaders in one term.
    TwoLeaders { term: Term, other: NodeId },
    /// A leader's entry conflicts with an entry this node has already committed.
    ConflictsWithCommitted {
        from: NodeId,
        index: Index,
        committed: Index,
    },
    /// An answer about an index this leader never sent (beyond its log).
    BeyondLog {
        from: NodeId,
        index: Index,
        last: Index,
    },
}

impl std::fmt::Display for StepError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StepError::NotForThisNode { to } => write!(f, "message addressed to node {to}"),
            StepError::UnknownSender { from } => {
                write!(f, "message from node {from}, which is not a peer")
            }
            StepError::OutOfRange { from, what } => {
                write!(f, "message from node {from}: {what} out of range")
            }
            StepError::Malformed { from, detail } => {
                write!(f, "malformed message from node {from}: {detail}")
            }
            StepError::TwoLeaders { term, other } => write!(
                f,
                "node {other} acts as leader in term {term}, which this node leads"
            ),
            StepError::ConflictsWithCommitted {
                from,
                index,
                committed,
            } => write!(
                f,
                "node {from} sent an entry at index {index} that conflicts with the committed \
                 log (committed through {committed})"
            ),
            StepError::BeyondLog { from, index, last } => write!(
                f,
                "node {from} answers about index {index}, beyond this leader's last index {last}"
            ),
        }
    }
}

impl std::error::Error for StepError {}

/// Terms and indexes at or above this are refused: far beyond any real group (a new term
/// every millisecond would take half a billion years to get there), and every `+ 1` the core
/// does on them stays in range.
pub const MAX_TERM_OR_INDEX: u64 = u64::MAX / 2;

/// The checks that need no state. `peers` is the group, `id` this node.
pub(crate) fn check_message(m: &Message, id: NodeId, peers: &[NodeId]) -> Result<(), StepError> {
    if m.to != id {
        return Err(StepError::NotForThisNode { to: m.to });
    }
    if m.from == id || !peers.contains(&m.from) {
        return Err(StepError::UnknownSender { from: m.from });
    }
    let out_of_range = |what| StepError::OutOfRange { from: m.from, what };
    if m.term >= MAX_TERM_OR_INDEX {
        return Err(out_of_range("term"));
    }
    match &m.body {
        MessageBody::RequestVote {
            last_log_index,
            last_log_term,
            ..
        }
        | MessageBody::PreVote {
            last_log_index,
            last_log_term,
        } => {
            if *last_log_index >= MAX_TERM_OR_INDEX || *last_log_term >= MAX_TERM_OR_INDEX {
                return Err(out_of_range("last log index or term"));
            }
        }
        MessageBody::AppendEntries {
            prev_log_index,
            prev_log_term,
            entries,
            leader_commit,
        } => {
            if *prev_log_index >= MAX_TERM_OR_INDEX || *leader_commit >= MAX_TERM_OR_INDEX {
                return Err(out_of_range("index"));
            }
            let malformed = |detail: String| StepError::Malformed {
                from: m.from,
                detail: format!("AppendEntries after index {prev_log_index}: {detail}"),
            };
            if *prev_log_term > m.term {
                return Err(malformed(format!(
                    "previous term {prev_log_term} above the sender's term {}",
                    m.term
                )));
            }
            let mut term = *prev_log_term;
            for (offset, entry) in entries.iter().enumerate() {
                let expected = *prev_log_index + 1 + offset as u64;
                if expected >= MAX_TERM_OR_INDEX {
                    return Err(out_of_range("entry index"));
                }
                if entry.index != expected {
                    return Err(malformed(format!(
                        "entry {offset} has index {}, expected {expected}",
                        entry.index
                    )));
                }
                if entry.term < term || entry.term > m.term {
                    return Err(malformed(format!(
                        "entry {} has term {} (previous term {term}, sender's term {})",
                        entry.index, entry.term, m.term
                    )));
                }
                term = entry.term;
            }
        }
        MessageBody::InstallSnapshot { snapshot } => {
            if snapshot.index >= MAX_TERM_OR_INDEX {
                return Err(out_of_range("snapshot index"));
            }
            if snapshot.term > m.term {
                return Err(StepError::Malformed {
                    from: m.from,
                    detail: format!(
                        "snapshot of term {} from a sender in term {}",
                        snapshot.term, m.term
                    ),
                });
            }
        }
        MessageBody::AppendEntriesResponse(outcome) => {
            let index = match outcome {
                crate::AppendOutcome::Accepted { match_index } => *match_index,
                crate::AppendOutcome::Rejected {
                    prev_log_index,
                    hint,
                } => (*prev_log_index).max(hint.index),
            };
            if index >= MAX_TERM_OR_INDEX {
                return Err(out_of_range("index"));
            }
        }
        MessageBody::RequestVoteResponse { .. }
        | MessageBody::PreVoteResponse { .. }
        | MessageBody::ReadProbe { .. }
        | MessageBody::ReadProbeResponse { .. }
        | MessageBody::TimeoutNow => {}
    }
    Ok(())
}
