//! The report of an illegal history: where the deepest attempt at a linearization got stuck
//! and why nothing could come next.

use std::cmp::Reverse;
use std::fmt;

use crate::{Model, Operation};

/// Where the search of an illegal partition got furthest: recorded when the scan meets a
/// return event with nothing placeable before it. Indexes are into the partition while
/// searching and into the history once [`Stuck::into_history_indexes`] has run.
pub(crate) struct Stuck<S> {
    /// How good a dead end this is: (operations that returned in the prefix, Reverse(those
    /// that never returned)). Higher is better.
    pub rank: (usize, Reverse<usize>),
    /// The operations linearized, in order.
    pub prefix: Vec<usize>,
    /// The state after them.
    pub state: S,
    /// The operations called before `closing` returned and not yet linearized: the only
    /// ones that could have come next.
    pub candidates: Vec<usize>,
    /// The operation whose return ended the window.
    pub closing: usize,
}

impl<S> Stuck<S> {
    pub fn into_history_indexes(self, group: &[usize]) -> Stuck<S> {
        let to_history = |ops: Vec<usize>| ops.into_iter().map(|op| group[op]).collect();
        Stuck {
            rank: self.rank,
            prefix: to_history(self.prefix),
            state: self.state,
            candidates: to_history(self.candidates),
            closing: group[self.closing],
        }
    }
}

/// A person-readable account of why a history is not linearizable.
///
/// It covers the first partition found illegal ([`crate::check`] says which that is when some
/// partitions ran out of time). The search records the longest prefix of a
/// linearization it could build — longest in operations that returned; among those, the one
/// with the fewest operations that never returned. At that point every operation that could
/// come next (called before the earliest outstanding return) was tried and none works.
/// `Display` prints it all.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Explanation {
    /// Which partition failed, counting from 0 in the order [`Model::partition`] gave them.
    pub partition: usize,
    /// How many partitions the history had.
    pub partitions: usize,
    /// [`Model::describe_partition`] of the failing partition, e.g. `key "k"`.
    pub partition_label: Option<String>,
    /// How many operations the failing partition has.
    pub partition_size: usize,
    /// The longest linearizable prefix found (see above), in linearization order.
    pub prefix: Vec<ExplainedOp>,
    /// [`Model::describe_state`] of the state after the prefix.
    pub state: String,
    /// The operation whose return closed the window: it, or something called before it
    /// returned, had to take effect next.
    pub closing: ExplainedOp,
    /// Every operation that could have come next, with why it cannot.
    pub blocked: Vec<BlockedOp>,
}

/// One operation as shown in an [`Explanation`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ExplainedOp {
    /// Position in the checked history (a line number minus one for a JSON Lines file).
    pub index: usize,
    pub client: i64,
    pub call: u64,
    pub ret: Option<u64>,
    /// [`Model::describe`] of the operation.
    pub description: String,
}

/// An operation that could not be placed after the longest prefix.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BlockedOp {
    pub op: ExplainedOp,
    /// Why the model rejects it after the prefix ([`Model::explain_illegal`]). Every
    /// candidate that returned is one the model rejects there (one it accepted would have led
    /// the search to a longer prefix); a candidate that never returned may instead fit but not
    /// help, which the reason then says.
    pub reason: String,
}

/// The reason given for a candidate that never returned and that the model accepts.
const PENDING_FITS: &str = "never returned; it could take effect here, but that lets no \
                            further operation that returned be placed";

pub(crate) fn explain<M: Model>(
    model: &M,
    history: &[Operation<M::Input, M::Output>],
    groups: &[Vec<usize>],
    partition: usize,
    stuck: Stuck<M::State>,
) -> Explanation {
    let explained = |index: usize| {
        let op = &history[index];
        ExplainedOp {
            index,
            client: op.client,
            call: op.call,
            ret: op.ret,
            description: model.describe(&op.input, op.output.as_ref()),
        }
    };
    let blocked = stuck
        .candidates
        .iter()
        .map(|&index| {
            let op = &history[index];
            let output = op.output.as_ref();
            let reason = match model.step(&stuck.state, &op.input, output) {
                None => model.explain_illegal(&stuck.state, &op.input, output),
                Some(_) => {
                    // The dead end is recorded when the scan meets a return event, after every
                    // candidate was tried. A candidate that returned and that the model accepts
                    // was explored (now, or before as the memo tells) and led to a dead end
                    // with one more such operation placed, which would outrank this one. So
                    // only an operation that never returned can fit here.
                    assert!(
                        op.ret.is_none(),
                        "Model::step is not a function of its arguments: it accepts {} after \
                         the best prefix, where the search found it impossible",
                        model.describe(&op.input, output)
                    );
                    PENDING_FITS.to_string()
                }
            };
            BlockedOp {
                op: explained(index),
                reason,
            }
        })
        .collect();
    let group = &groups[partition];
    Explanation {
        partition,
        partitions: groups.len(),
        partition_label: model.describe_partition(history, group),
        partition_size: group.len(),
        prefix: stuck.prefix.iter().map(|&index| explained(index)).collect(),
        state: model.describe_state(&stuck.state),
        closing: explained(stuck.closing),
        blocked,
    }
}

impl fmt::Display for ExplainedOp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ret = match self.ret {
            Some(ret) => ret.to_string(),
            None => "never returned".to_string(),
        };
        write!(
            f,
            "#{} client {} [{}, {}] {}",
            self.index, self.client, self.call, ret, self.description
        )
    }
}

impl fmt::Display for Explanation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "history is not linearizable: ")?;
        if let Some(label) = &self.partition_label {
            write!(f, "{label}, ")?;
        }
        writeln!(
            f,
            "partition {} of {} ({} operations; #n is the operation's position in the history)",
            self.partition + 1,
            self.partitions,
            self.partition_size
        )?;
        if self.prefix.is_empty() {
            writeln!(f, "no operation can even come first")?;
        } else {
            writeln!(
                f,
                "longest linearizable prefix found ({} operations, in linearization order):",
                self.prefix.len()
            )?;
            for op in &self.prefix {
                writeln!(f, "  {op}")?;
            }
        }
        writeln!(f, "state after it: {}", self.state)?;
        writeln!(
            f,
            "next, one of these (called before #{} returned at {}) must take effect, and none can:",
            self.closing.index,
            self.closing
                .ret
                .map_or("?".to_string(), |ret| ret.to_string()),
        )?;
        for blocked in &self.blocked {
            writeln!(f, "  {}: {}", blocked.op, blocked.reason)?;
        }
        Ok(())
    }
}
