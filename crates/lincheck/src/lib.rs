//! # flotilla-lincheck: a linearizability checker
//!
//! The key/value tests of 6.5840 record every client call (what was asked, what came back,
//! when it was called and when it returned) and ask one question of the whole history: is
//! there a single order of the operations, consistent with real time, in which a sequential
//! object would have given exactly these answers? This crate answers it the way porcupine
//! does (the checker the Go labs use), written afresh for Flotilla:
//!
//! - A [`Model`] says what the object is: its initial state and the effect (and legality) of
//!   one operation. [`models`] has the two 6.5840 key/value models.
//! - [`check`] splits the history into independent partitions (per key for key/value models)
//!   and searches each one for a linearization, depth first with backtracking and a memo of
//!   (set of operations linearized, state) pairs already known to lead nowhere. The
//!   partitions share the time budget, so one that cannot be decided in time does not keep
//!   the others from being checked (see [`check`]).
//! - [`CheckResult::Illegal`] carries an [`Explanation`]: the longest linearizable prefix the
//!   search found and, for every operation that could have come next, why it cannot.
//! - [`history`] reads and writes histories as JSON Lines and checks them, for the
//!   `flotilla` command and for keeping the history of a failed test.
//!
//! What a result guarantees: [`CheckResult::Ok`] means a linearization exists (the search is
//! exhaustive, the memo only skips states already explored); [`CheckResult::Illegal`] means
//! none exists (some partition has none); [`CheckResult::Unknown`] means no partition was
//! found illegal but the time budget ran out before every one was decided. Apart from where a
//! run stops for lack of time, the result and the explanation depend only on the history and
//! the model.
//!
//! The memo is exact, not probabilistic: it matches a (set, state) pair only after comparing
//! the set and the state themselves (`Eq`), never on a hash or fingerprint alone, so no
//! collision can prune a branch that was not explored. It stays small on long histories by
//! naming a set by the few operations still open at its frontier instead of a bitset over the
//! whole partition, and by sharing states instead of copying them (`src/search.rs`
//! documents the details and the argument).
//!
//! ## Real-time order and its tie rule
//!
//! Operation `a` must precede `b` when `a` returned strictly before `b` was called
//! (`a.ret < b.call`). Equal times count as overlapping: at the same instant, calls are
//! ordered before returns, so an operation called at the very tick another one returned may
//! be linearized on either side of it. This is porcupine's rule; it errs on the side of
//! accepting a history when a clock is too coarse to tell two events apart.
//!
//! The price is on the recorder: when an operation returned before another was called, the
//! call must get the larger time, or the order is lost and the checker accepts what it should
//! not (a client's read that misses the client's own write just before it, say). A clock that
//! can read the same value for the two (a coarse one, or a simulator's virtual clock, which
//! stands still while tasks run) needs its ties broken in the order the events happened;
//! Flotilla's simulator harness (`flotilla_kv::sim`) stamps every event strictly after the
//! one before for that reason. Ties must not be broken the other way either: two operations
//! that overlapped must keep overlapping times.
//!
//! ## Operations that never returned
//!
//! An operation with `ret == None` (a clerk that was still waiting when the test ended) may
//! have taken effect at any moment after its call, or never: it has no deadline, and the
//! search succeeds once every operation that *did* return is linearized, whether or not the
//! pending ones were placed.

mod explain;
pub mod history;
pub mod models;
mod records;
mod search;

use std::time::Duration;

pub use explain::{BlockedOp, ExplainedOp, Explanation};

/// One operation of a history. `ret == None` means the call never returned: it may have taken
/// effect at any time after `call`, or never.
///
/// `call` and `ret` are instants on one clock shared by every client (any unit; the labs use
/// nanoseconds); an operation called after another returned must have a larger `call` than
/// that one's `ret` (see [the tie rule](crate#real-time-order-and-its-tie-rule)). `output == None` means the answer was not observed — always so for an
/// operation that never returned, and also usable for a call whose result is not recorded
/// (the 2024 kvraft Append): the model then accepts any answer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Operation<I, O> {
    /// Who made the call; only used in explanations.
    pub client: i64,
    pub input: I,
    pub output: Option<O>,
    /// When the call was made.
    pub call: u64,
    /// When it returned, or `None` if it never did. Must not be before `call`.
    pub ret: Option<u64>,
}

/// A sequential specification: the object a history is checked against.
///
/// `step` must be a pure function of its arguments; the checker calls it many times, in
/// different orders, and memoizes on the state it returns. States equal by `Eq` must be
/// interchangeable: the checker may carry on with either one.
pub trait Model {
    /// The state of one partition (for key/value models: of one key).
    type State: Clone + Eq + std::hash::Hash + std::fmt::Debug;
    type Input: std::fmt::Debug;
    type Output: std::fmt::Debug;

    /// The state before any operation.
    fn init(&self) -> Self::State;

    /// The state after applying `input` that answered `output` (None = the answer was never
    /// seen: accept any), or None if that answer is impossible in `state`.
    fn step(
        &self,
        state: &Self::State,
        input: &Self::Input,
        output: Option<&Self::Output>,
    ) -> Option<Self::State>;

    /// True if `input` answering `output` (None = not observed) never changes the state: in
    /// every state, `step(state, input, output)` is either `None` (impossible there) or a
    /// state equal (`Eq`) to `state`. Reads are; a conditional write that answered "not
    /// applied" is. Default: false.
    ///
    /// The search uses it to prune: an operation that is read-only and possible in the
    /// current state, and that could be linearized next, is placed at once, and the other
    /// orders are not tried (`src/search.rs` has the argument). Answering false is always
    /// correct, only slower; answering true for an operation that can change the state in
    /// some state (even one the search has not reached) can make the checker accept an
    /// illegal history.
    fn is_read_only(&self, input: &Self::Input, output: Option<&Self::Output>) -> bool {
        let _ = (input, output);
        false
    }

    /// Groups of operation indexes that can be checked independently (e.g. by key). Default:
    /// one group with everything.
    ///
    /// Every index of `history` must appear in exactly one group ([`check`] asserts it).
    /// Groups are checked in the order returned.
    fn partition(&self, history: &[Operation<Self::Input, Self::Output>]) -> Vec<Vec<usize>> {
        vec![(0..history.len()).collect()]
    }

    /// One operation for a person: `get("k") -> "x"`.
    fn describe(&self, input: &Self::Input, output: Option<&Self::Output>) -> String {
        format!("{input:?} -> {output:?}")
    }

    /// One state for a person.
    fn describe_state(&self, state: &Self::State) -> String {
        format!("{state:?}")
    }

    /// Why `step(state, input, output)` is impossible, for a person: `get "k" returned "x"
    /// but the value was "xy"`. Only called when `step` returned `None`.
    fn explain_illegal(
        &self,
        state: &Self::State,
        input: &Self::Input,
        output: Option<&Self::Output>,
    ) -> String {
        format!(
            "{} is impossible in state {}",
            self.describe(input, output),
            self.describe_state(state)
        )
    }

    /// What the operations of one group have in common (`key "k"`), or None. `group` is one of
    /// the groups [`Model::partition`] returned.
    fn describe_partition(
        &self,
        history: &[Operation<Self::Input, Self::Output>],
        group: &[usize],
    ) -> Option<String> {
        let _ = (history, group);
        None
    }
}

/// The verdict on a history.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CheckResult {
    /// A linearization exists.
    Ok,
    /// No linearization exists; the explanation shows where every attempt got stuck.
    Illegal(Explanation),
    /// No partition was found illegal, but the time budget ran out before every partition
    /// was decided. 6.5840 treats this as a pass.
    Unknown,
}

impl CheckResult {
    pub fn is_ok(&self) -> bool {
        matches!(self, CheckResult::Ok)
    }

    pub fn is_illegal(&self) -> bool {
        matches!(self, CheckResult::Illegal(_))
    }

    pub fn is_unknown(&self) -> bool {
        matches!(self, CheckResult::Unknown)
    }
}

/// Checks whether `history` is linearizable with respect to `model`, giving up with
/// [`CheckResult::Unknown`] once `budget` of wall-clock time is spent.
///
/// Every partition is checked, one after another in the order [`Model::partition`] gives
/// them, and the first one found illegal ends the check: the answer is
/// [`CheckResult::Illegal`] as soon as any partition is, [`CheckResult::Unknown`] only when
/// none is and some could not be decided in time, [`CheckResult::Ok`] when all were decided
/// linearizable.
///
/// **How the partitions share the budget.** The check runs in rounds over the partitions
/// still undecided, in order. Each one's turn lasts until it is decided or its share of the
/// time left runs out: an equal share among those whose turn in the round has not come yet
/// (itself included), so time a partition does not use goes to the ones after it, and the
/// last one of a round may use all that is left. A partition that runs out of its share keeps
/// its search, with everything it has explored, and carries on in the next round with the
/// time the others left; the rounds stop when every partition is decided, one is illegal, or
/// the budget is spent. So a partition too hard for the budget takes no more than its share
/// in each round, and the partitions after it still get theirs: an illegal one that its share
/// suffices for is found. Which illegal partition the explanation names depends only on the
/// history when no partition runs out of time (the first illegal one in partition order);
/// otherwise it is the first one found.
///
/// The clock is read when a turn starts and every 1024 search steps (counted over all
/// partitions), so a check that needs fewer steps finishes even with a zero budget, and a
/// turn that runs out stops within about 1024 steps of its end (with a zero budget, every
/// partition still gets a turn of up to 1024 steps).
///
/// # Panics
///
/// If an operation returns before it is called, or if the model's partition does not place
/// every operation in exactly one group.
pub fn check<M: Model>(
    model: &M,
    history: &[Operation<M::Input, M::Output>],
    budget: Duration,
) -> CheckResult {
    search::check(model, history, budget)
}
