//! The search for a linearization of one partition (porcupine's algorithm).
//!
//! The operations of a partition become a doubly linked list of call and return events in
//! time order (calls before returns at equal times; operations that never returned have no
//! return event). Linearizing an operation means choosing it as the next one to take effect:
//! that is allowed when its call event comes before the first return event still in the list
//! (everything that returned earlier has already been placed) and the model accepts it in the
//! current state. The chosen operation's events are unlinked ("lifted") and the scan restarts
//! from the head; reaching a return event means no remaining candidate works, so the last
//! choice is undone (its events relinked in reverse order, dancing-links style) and the scan
//! resumes after it.
//!
//! A memo of (set of operations linearized, state) pairs prunes the search: two paths that
//! placed the same operations and reached the same state have the same future, so the second
//! is not explored. The search succeeds when every operation that returned is linearized.
//!
//! For the explanation of a failure, the search keeps the best dead end it met: the one with
//! the most operations that returned linearized (then the fewest that never returned).
//!
//! ## Forced steps: read-only operations are not reordered
//!
//! Each time the search reaches a new set of operations linearized, before its scan starts,
//! it looks among the candidates (the call events before the first return event) for one
//! that the model calls read-only ([`Model::is_read_only`]) and that is possible in the
//! current state and leaves it as it is. If there is one (the first in list order), it is
//! linearized at once as a *forced step*: no other candidate is tried at that point. When the
//! search later backtracks to a forced step, it undoes it and goes on undoing until it has
//! undone a real choice, whose scan then resumes after it; a forced step is never a choice
//! point. So `k` concurrent reads (or puts that answered `ErrVersion`) cost `k` steps, not
//! the `2^k` sets of them the search would otherwise place in every order.
//!
//! Why no linearization is lost. Let `r` be the forced candidate in state `s`, with set `P`
//! linearized. Suppose the remaining operations have a linearization `L` from (`P`, `s`)
//! (every remaining operation that returned is in it, and each one after any that returned
//! before it was called). Then `r` followed by `L` without `r` is one too:
//!
//! - *States.* `r` is possible in `s` and leaves it unchanged, so after `r` the state is
//!   still `s`. In `L`, `r` (if it is there at all: one that never returned may be left out)
//!   was applied in some state `t`, where it was possible, and read-only means it left `t`
//!   unchanged; so removing it from `L` changes no state that any operation after it sees.
//!   Every operation of `L` is still applied in the same state and gets the same answer.
//! - *Real time.* `r`'s call comes before the first return event still in the list, so no
//!   remaining operation returned before `r` was called: none has to come before `r`. Moving
//!   `r` earlier cannot break an "a before b" between two other operations, and any
//!   operation that must come after `r` still does.
//!
//! So if no linearization starts with `r` from (`P`, `s`), none exists from (`P`, `s`) at
//! all, which is what undoing the forced step together with the choice that led to
//! (`P`, `s`) asserts. The model's promise is what the argument rests on: `r` must leave
//! *every* state where it is possible unchanged, not only `s` (a put that answered `ErrMaybe`
//! keeps `s` when its version does not match, but in `L` it may have applied later). As a
//! cheap guard, a step that would change `s` is never forced, whatever the model says.
//!
//! With the rest of the search:
//!
//! - *Memo.* A forced step records its (set, state) pair like any step. A pair in the memo
//!   has been explored and led nowhere (sets only grow along the current path, so it cannot
//!   be on it); a forced step that meets one therefore backtracks at once, as above, since
//!   (`P`, `s`) leads nowhere either. Pairs mean the same as without forced steps, "no
//!   linearization of the rest from here", so the memo stays exact.
//! - *Turns.* Whether the forced-step look-up of the current set is still due is part of the
//!   search's state (`forced_scan_due`), and it runs within one step of the loop, so a search
//!   cut into turns still explores what one run does, in the same order.
//! - *Explanations.* Dead ends are recorded where they were, at a return event no candidate
//!   before it could pass; the prefix simply includes the forced steps. Forced steps change
//!   which dead ends are met (fewer orders are tried), so an explanation may name another
//!   dead end than a search without them would (it is still a real one: a linearizable
//!   prefix, and every candidate after it impossible); verdicts do not change.
//!
//! ## Sharing the budget
//!
//! A partition's search is a [`Search`] value that can stop at the top of its loop when its
//! turn is over and later resume from exactly there, so a search cut into turns explores the
//! same states in the same order as one uninterrupted run, and no work is lost between turns.
//! [`check_with_clock`] gives the partitions turns in rounds, each an equal share of the time
//! left ([`crate::check`] states the rule). Memory stays bounded as before: the suspended
//! searches together hold what the steps taken so far have built, and a partition's search is
//! dropped as soon as it is decided.
//!
//! ## The memo is exact, and compact
//!
//! The memo never prunes on a hash or fingerprint: an entry matches only the very same set of
//! operations and a state equal by `Eq` to the one recorded (states equal by `Eq` are taken
//! to be interchangeable, as memoizing on them already assumes). Hashes only pick where to
//! look, so a collision costs a comparison, never a wrongly pruned branch. The memo prunes
//! exactly what a memo of whole bitsets and copied states would, so how it stores its pairs
//! changes neither verdicts nor explanations. Two things keep it cheap on long histories:
//!
//! - **The set is stored as its window key, not as a bitset over the partition.** Let `r` be
//!   the first return event still in the list. Every operation placed so far was called
//!   before `r` (when it was placed, `r`'s operation was not, so the first return in the list
//!   was at or before `r`), and every operation that returned before `r` has been placed. So
//!   the set is exactly "the operations called before `r`" minus "those whose call event is
//!   still in the list before `r`", and the key `[r, those call events...]` names it
//!   uniquely. Its length is one plus the number of unplaced operations called before `r`:
//!   about the history's concurrency, plus the operations that never returned, where a bitset
//!   needs n/64 words. Should the window key be longer than the bitset (kept up to date
//!   alongside, one bit per step), the key is the bitset instead, tagged as such; which form
//!   a set gets depends only on the set, so each set still has exactly one key.
//! - **States are shared, not copied or rehashed.** The current state, the states on the undo
//!   stack, the memo's states and the best dead end's are `Rc`s to the same values, and a
//!   step that leaves the state equal to what it was (a read) reuses the old one. A new state
//!   is compared (`Eq`) only with those already reached with the same set — usually none or
//!   one — and hashed only once one set has been reached with [`FEW_STATES`] different
//!   states ([`Memo`] has the layout).
//!
//! The best dead end's prefix is kept up to date incrementally (only the part of the undo
//! stack that changed since it was last recorded is copied), so recording a deeper dead end
//! does not copy the whole prefix each time.

use std::cmp::Reverse;
use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hash, Hasher};
use std::rc::Rc;
use std::time::{Duration, Instant};

use crate::explain::{explain, Stuck};
use crate::{CheckResult, Model, Operation};

/// How many search steps pass between two readings of the clock.
const STEPS_PER_CLOCK_READ: u64 = 1024;

pub(crate) fn check<M: Model>(
    model: &M,
    history: &[Operation<M::Input, M::Output>],
    budget: Duration,
) -> CheckResult {
    check_with_clock(model, history, Clock::new(budget, Instant::now))
}

/// [`check`] on the clock given: the partitions share its budget in rounds (see
/// [`crate::check`] for the rule).
fn check_with_clock<M: Model, N: FnMut() -> Instant>(
    model: &M,
    history: &[Operation<M::Input, M::Output>],
    mut clock: Clock<N>,
) -> CheckResult {
    for (index, op) in history.iter().enumerate() {
        if let Some(ret) = op.ret {
            assert!(
                ret >= op.call,
                "operation {index} returns at {ret}, before its call at {}",
                op.call
            );
        }
    }
    let groups = model.partition(history);
    assert_is_partition(&groups, history.len());

    // The partitions without a verdict, in partition order, each with its search once it has
    // started. Every round gives each of them an equal share of the time left, and what one
    // does not use goes to the rest; a search that runs out of its share waits, with all it
    // has explored, for the next round. Each round but the last decides at least its last
    // partition (whose share is all the time left), so there are at most `groups.len()`
    // rounds.
    let mut undecided: Vec<(usize, Option<Search<M>>)> =
        (0..groups.len()).map(|number| (number, None)).collect();
    while !undecided.is_empty() {
        let sharers = undecided.len();
        let mut out_of_time = Vec::new();
        for (position, (number, search)) in undecided.into_iter().enumerate() {
            clock.start_turn(sharers - position);
            let mut search = search.unwrap_or_else(|| Search::new(model, history, &groups[number]));
            match search.resume(&mut clock) {
                Outcome::Linearizable => {}
                Outcome::OutOfTime => out_of_time.push((number, Some(search))),
                Outcome::Illegal(stuck) => {
                    return CheckResult::Illegal(explain(model, history, &groups, number, stuck))
                }
            }
        }
        if !out_of_time.is_empty() && clock.expired() {
            return CheckResult::Unknown;
        }
        undecided = out_of_time;
    }
    CheckResult::Ok
}

/// Asserts that every index below `len` is in exactly one group.
fn assert_is_partition(groups: &[Vec<usize>], len: usize) {
    let mut seen = vec![false; len];
    for &index in groups.iter().flatten() {
        assert!(
            index < len,
            "Model::partition returned index {index} for a history of {len} operations"
        );
        assert!(
            !seen[index],
            "Model::partition put operation {index} in two groups"
        );
        seen[index] = true;
    }
    if let Some(missing) = seen.iter().position(|&placed| !placed) {
        panic!("Model::partition left operation {missing} out of every group");
    }
}

/// The time budget of a check, and the turn of it that the partition being searched may
/// use. Time is read from `now` (the wall clock, or a fake one in tests) when a turn starts
/// and every [`STEPS_PER_CLOCK_READ`] search steps, counted over the whole check.
struct Clock<N> {
    now: N,
    /// None when the budget is too large to add to the start time: no deadline.
    deadline: Option<Instant>,
    /// When the current turn ends; never after `deadline`.
    turn_end: Option<Instant>,
    steps: u64,
}

impl<N: FnMut() -> Instant> Clock<N> {
    fn new(budget: Duration, mut now: N) -> Clock<N> {
        // A budget too large to add to now is as good as no deadline.
        let deadline = now().checked_add(budget);
        Clock {
            now,
            deadline,
            turn_end: deadline,
            steps: 0,
        }
    }

    /// Starts a turn that ends after an equal share, among `sharers`, of the time left.
    fn start_turn(&mut self, sharers: usize) {
        assert!(sharers > 0, "a turn shared by no one");
        let sharers = u32::try_from(sharers).unwrap_or(u32::MAX);
        self.turn_end = match self.deadline {
            None => None,
            Some(deadline) => {
                let now = (self.now)();
                // At most the time left, so the turn ends by the deadline.
                Some(now + deadline.saturating_duration_since(now) / sharers)
            }
        };
    }

    /// True once the whole budget is spent.
    fn expired(&mut self) -> bool {
        match self.deadline {
            None => false,
            Some(deadline) => (self.now)() >= deadline,
        }
    }

    /// Counts one step; true when the turn has ended (checked every so many steps).
    fn step_expired(&mut self) -> bool {
        self.steps += 1;
        if !self.steps.is_multiple_of(STEPS_PER_CLOCK_READ) {
            return false;
        }
        match self.turn_end {
            None => false,
            Some(end) => (self.now)() >= end,
        }
    }
}

enum Outcome<S> {
    Linearizable,
    Illegal(Stuck<S>),
    OutOfTime,
}

/// The set of operations (by position in the partition) linearized so far.
struct Bitset(Box<[u64]>);

impl Bitset {
    fn new(len: usize) -> Bitset {
        Bitset(vec![0; len.div_ceil(64)].into_boxed_slice())
    }

    fn set(&mut self, bit: usize) {
        self.0[bit / 64] |= 1 << (bit % 64);
    }

    fn clear(&mut self, bit: usize) {
        self.0[bit / 64] &= !(1 << (bit % 64));
    }

    /// The length of [`Bitset::write_key`]'s key.
    fn key_len(&self) -> usize {
        1 + 2 * self.0.len()
    }

    /// Writes into `key` the bitset form of a memo key: [`BITSET_KEY`], then the words.
    fn write_key(&self, key: &mut Vec<u32>) {
        key.clear();
        key.push(BITSET_KEY);
        for &word in self.0.iter() {
            key.push(word as u32);
            key.push((word >> 32) as u32);
        }
    }
}

/// The first element of a memo key in bitset form. A window key starts with an entry index,
/// which is always smaller.
const BITSET_KEY: u32 = u32::MAX;

/// A fast non-cryptographic hasher for the memo (FxHash's rotate-xor-multiply, a word at a
/// time, with MurmurHash3's finalizer). Its quality only affects speed: every memo hit is
/// confirmed by comparing keys and states.
#[derive(Default)]
struct FastHasher(u64);

impl FastHasher {
    fn add(&mut self, word: u64) {
        self.0 = (self.0.rotate_left(5) ^ word).wrapping_mul(0x517c_c1b7_2722_0a95);
    }
}

impl Hasher for FastHasher {
    fn write(&mut self, bytes: &[u8]) {
        let mut words = bytes.chunks_exact(8);
        for word in &mut words {
            self.add(u64::from_le_bytes(word.try_into().expect("8 bytes")));
        }
        let rest = words.remainder();
        if !rest.is_empty() {
            let mut word = [0; 8];
            word[..rest.len()].copy_from_slice(rest);
            self.add(u64::from_le_bytes(word));
        }
    }

    fn write_u8(&mut self, n: u8) {
        self.add(u64::from(n));
    }

    fn write_u32(&mut self, n: u32) {
        self.add(u64::from(n));
    }

    fn write_u64(&mut self, n: u64) {
        self.add(n);
    }

    fn write_usize(&mut self, n: usize) {
        self.add(n as u64);
    }

    fn finish(&self) -> u64 {
        let mut hash = self.0;
        hash ^= hash >> 33;
        hash = hash.wrapping_mul(0xff51_afd7_ed55_8ccd);
        hash ^= hash >> 33;
        hash = hash.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
        hash ^ (hash >> 33)
    }
}

/// How many states one set of operations can have in the memo before the set's further states
/// are filed under a hash of the state too (see [`Memo`]).
const FEW_STATES: usize = 8;

/// No node: the end of a chain of the memo.
const NONE: u32 = u32::MAX;

/// One (set, state) pair of the memo.
struct Node<S> {
    /// Where the set's key is in [`Memo::keys`].
    key_start: usize,
    key_len: usize,
    /// The next node in the same chain, or [`NONE`].
    next: u32,
    state: Rc<S>,
}

/// The (set of operations linearized, state) pairs already explored, each set by its key (see
/// the module documentation).
///
/// A hash table maps 64-bit hashes to chains of nodes, one node per pair. A pair is filed
/// under the hash of its key while the key has fewer than [`FEW_STATES`] states, then under a
/// hash of key and state, so that a set reached with many states makes no long chain (and
/// states are hashed only then). Every lookup compares whole keys and states (`Eq`): hashes,
/// and their collisions, only affect speed. The keys are stored end to end in one vector and
/// the nodes in another, so the memo costs a few allocations, not a few per pair.
struct Memo<S> {
    chains: HashMap<u64, u32, BuildHasherDefault<PassThroughHasher>>,
    nodes: Vec<Node<S>>,
    keys: Vec<u32>,
}

impl<S: Eq + Hash> Memo<S> {
    fn new() -> Memo<S> {
        Memo {
            chains: HashMap::default(),
            nodes: Vec::new(),
            keys: Vec::new(),
        }
    }

    fn key_of(&self, node: &Node<S>) -> &[u32] {
        &self.keys[node.key_start..node.key_start + node.key_len]
    }

    /// Records `state` as reached with the set whose key is `key`; false if it already was.
    fn insert(&mut self, key: &[u32], state: &Rc<S>) -> bool {
        let same = |seen: &Rc<S>| Rc::ptr_eq(seen, state) || **seen == **state;
        let mut hasher = FastHasher::default();
        hasher.write_usize(key.len());
        for &word in key {
            hasher.write_u32(word);
        }
        let key_hash = hasher.finish();

        // The key's first states, in the chain of its hash.
        let mut states = 0;
        let mut key_start = None;
        let mut cursor = self.chains.get(&key_hash).copied().unwrap_or(NONE);
        while cursor != NONE {
            let node = &self.nodes[cursor as usize];
            if self.key_of(node) == key {
                if same(&node.state) {
                    return false;
                }
                states += 1;
                key_start = Some(node.key_start);
            }
            cursor = node.next;
        }
        // Its further states, in the chain of the hash of key and state.
        let mut chain = key_hash;
        if states >= FEW_STATES {
            let mut hasher = FastHasher(key_hash);
            state.hash(&mut hasher);
            chain = hasher.finish();
            let mut cursor = self.chains.get(&chain).copied().unwrap_or(NONE);
            while cursor != NONE {
                let node = &self.nodes[cursor as usize];
                if self.key_of(node) == key && same(&node.state) {
                    return false;
                }
                cursor = node.next;
            }
        }

        let key_start = key_start.unwrap_or_else(|| {
            self.keys.extend_from_slice(key);
            self.keys.len() - key.len()
        });
        let index = u32::try_from(self.nodes.len())
            .ok()
            .filter(|&index| index != NONE)
            .expect("the memo holds fewer than 2^32 - 1 pairs");
        let next = self.chains.insert(chain, index).unwrap_or(NONE);
        self.nodes.push(Node {
            key_start,
            key_len: key.len(),
            next,
            state: Rc::clone(state),
        });
        true
    }
}

/// The hasher of a table whose keys are already hashes.
#[derive(Default)]
struct PassThroughHasher(u64);

impl Hasher for PassThroughHasher {
    fn write(&mut self, bytes: &[u8]) {
        for &byte in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(byte);
        }
    }

    fn write_u64(&mut self, n: u64) {
        self.0 = n;
    }

    fn finish(&self) -> u64 {
        self.0
    }
}

/// The best dead end so far, but for its prefix (kept apart, see [`search`]).
struct DeadEnd<S> {
    rank: (usize, Reverse<usize>),
    state: Rc<S>,
    candidates: Vec<usize>,
    closing: usize,
}

/// The list head; entry 0 of [`Events::entries`]. The list is circular through it.
const HEAD: usize = 0;

#[derive(Clone, Copy)]
struct Entry {
    /// Position of the operation in the partition (meaningless for [`HEAD`]).
    op: usize,
    is_call: bool,
    prev: usize,
    next: usize,
}

/// The call and return events of one partition as a circular doubly linked list in time
/// order, with the ability to unlink an operation's events and relink them later.
///
/// Invariant: relinking happens in exactly the reverse order of unlinking (the search is a
/// stack), so an unlinked entry's own `prev`/`next` still name the neighbours to return to.
struct Events {
    entries: Vec<Entry>,
    call_entry: Vec<usize>,
    /// None for an operation that never returned.
    return_entry: Vec<Option<usize>>,
}

impl Events {
    /// Builds the list for `ops` (call time, return time). Order: by time; at equal times calls
    /// before returns; then by position, to be deterministic.
    fn new(ops: &[(u64, Option<u64>)]) -> Events {
        let mut events: Vec<(u64, bool, usize)> = Vec::with_capacity(ops.len() * 2);
        for (op, &(call, ret)) in ops.iter().enumerate() {
            events.push((call, true, op));
            if let Some(ret) = ret {
                events.push((ret, false, op));
            }
        }
        // `!is_call` sorts calls (false) before returns (true) at equal times.
        events.sort_by_key(|&(time, is_call, op)| (time, !is_call, op));

        let count = events.len() + 1;
        // Memo keys name entries as u32 below `BITSET_KEY`.
        assert!(
            count < BITSET_KEY as usize,
            "a partition of {} operations is too large to check",
            ops.len()
        );
        let mut entries = Vec::with_capacity(count);
        entries.push(Entry {
            op: usize::MAX,
            is_call: false,
            prev: count - 1,
            next: 1 % count,
        });
        let mut call_entry = vec![0; ops.len()];
        let mut return_entry = vec![None; ops.len()];
        for (position, &(_, is_call, op)) in events.iter().enumerate() {
            let index = position + 1;
            entries.push(Entry {
                op,
                is_call,
                prev: index - 1,
                next: (index + 1) % count,
            });
            if is_call {
                call_entry[op] = index;
            } else {
                return_entry[op] = Some(index);
            }
        }
        Events {
            entries,
            call_entry,
            return_entry,
        }
    }

    fn first(&self) -> usize {
        self.entries[HEAD].next
    }

    fn unlink(&mut self, index: usize) {
        let Entry { prev, next, .. } = self.entries[index];
        self.entries[prev].next = next;
        self.entries[next].prev = prev;
    }

    fn relink(&mut self, index: usize) {
        let Entry { prev, next, .. } = self.entries[index];
        self.entries[prev].next = index;
        self.entries[next].prev = index;
    }

    /// Removes operation `op`'s events from the list.
    fn lift(&mut self, op: usize) {
        self.unlink(self.call_entry[op]);
        if let Some(ret) = self.return_entry[op] {
            self.unlink(ret);
        }
    }

    /// Puts back the events of `op`, which must be the operation lifted most recently among
    /// those still lifted.
    fn unlift(&mut self, op: usize) {
        if let Some(ret) = self.return_entry[op] {
            self.relink(ret);
        }
        self.relink(self.call_entry[op]);
    }

    /// Writes into `key` the window key of the operations no longer in the list (see the
    /// module documentation): the first return entry in the list ([`HEAD`] if none is left),
    /// then the call entries before it, in list order. Returns false, leaving `key`
    /// unspecified, if the key would be longer than `limit`.
    fn window_key(&self, limit: usize, key: &mut Vec<u32>) -> bool {
        key.clear();
        key.push(HEAD as u32);
        let mut cursor = self.first();
        while cursor != HEAD {
            let entry = &self.entries[cursor];
            if !entry.is_call {
                key[0] = cursor as u32;
                break;
            }
            if key.len() == limit {
                return false;
            }
            key.push(cursor as u32);
            cursor = entry.next;
        }
        true
    }

    /// The operations whose call events come before entry `until`, in list order.
    fn calls_before(&self, until: usize) -> Vec<usize> {
        let mut calls = Vec::new();
        let mut cursor = self.first();
        while cursor != until && cursor != HEAD {
            let entry = self.entries[cursor];
            if entry.is_call {
                calls.push(entry.op);
            }
            cursor = entry.next;
        }
        calls
    }
}

/// Writes into `key` the memo key of `linearized`, the set of operations lifted from
/// `events`: its window key if that is no longer than its bitset form, else the bitset form.
fn memo_key(events: &Events, linearized: &Bitset, key: &mut Vec<u32>) {
    if !events.window_key(linearized.key_len(), key) {
        linearized.write_key(key);
    }
}

/// One operation linearized, with the state before it.
struct Placed<S> {
    op: usize,
    previous_state: Rc<S>,
    /// Placed as a forced step (a read-only operation, see the module documentation), not
    /// chosen among others: undoing it undoes the choice before it too.
    forced: bool,
}

/// The search for a linearization of one partition, resumable: [`Search::resume`] runs until
/// it has a verdict or the clock ends its turn, and a later call carries on exactly where it
/// stopped (the stop is at the top of the loop, where every field is consistent), so a search
/// cut into turns explores what one uninterrupted run would, in the same order.
struct Search<'h, M: Model> {
    model: &'h M,
    /// The partition's indexes into the history.
    group: &'h [usize],
    ops: Vec<&'h Operation<M::Input, M::Output>>,
    events: Events,
    returned_total: usize,
    /// Operations that returned and are not placed yet: the search succeeds at zero.
    returned_left: usize,
    linearized: Bitset,
    state: Rc<M::State>,
    /// The operations linearized so far, in order.
    placed: Vec<Placed<M::State>>,
    /// Set when the current set of operations was just reached: the scan of it has not
    /// started, and it must first look for a forced step (see the module documentation).
    forced_scan_due: bool,
    explored: Memo<M::State>,
    /// Scratch space for memo keys.
    key: Vec<u32>,
    best_dead_end: Option<DeadEnd<M::State>>,
    /// The best dead end's prefix, and the lowest length `placed` has had since it was last
    /// brought up to date: below that length, `placed` still matches it.
    best_prefix: Vec<usize>,
    unchanged: usize,
    /// The event the scan looks at next.
    cursor: usize,
    /// Set once a verdict was returned; the search must not be resumed after it.
    decided: bool,
}

impl<'h, M: Model> Search<'h, M> {
    /// A search of the operations `group` (indexes into `history`) that has not started.
    fn new(
        model: &'h M,
        history: &'h [Operation<M::Input, M::Output>],
        group: &'h [usize],
    ) -> Self {
        let ops: Vec<&Operation<M::Input, M::Output>> =
            group.iter().map(|&index| &history[index]).collect();
        let times: Vec<(u64, Option<u64>)> = ops.iter().map(|op| (op.call, op.ret)).collect();
        let events = Events::new(&times);
        let returned_total = ops.iter().filter(|op| op.ret.is_some()).count();
        Search {
            model,
            group,
            linearized: Bitset::new(ops.len()),
            ops,
            cursor: events.first(),
            events,
            returned_total,
            returned_left: returned_total,
            state: Rc::new(model.init()),
            placed: Vec::new(),
            forced_scan_due: true,
            explored: Memo::new(),
            key: Vec::new(),
            best_dead_end: None,
            best_prefix: Vec::new(),
            unchanged: 0,
            decided: false,
        }
    }

    /// Searches on until there is a verdict, or [`OutOfTime`](Outcome::OutOfTime) when the
    /// clock's turn ends first (then `resume` may be called again).
    fn resume<N: FnMut() -> Instant>(&mut self, clock: &mut Clock<N>) -> Outcome<M::State> {
        assert!(!self.decided, "a search was resumed after its verdict");
        while self.returned_left > 0 {
            if clock.step_expired() {
                return Outcome::OutOfTime;
            }
            // While an operation that returned is unplaced, its return event is still in the
            // list after the cursor: the scan meets a return before it can run off the end.
            assert_ne!(self.cursor, HEAD, "scan ran off the end of the event list");
            if std::mem::take(&mut self.forced_scan_due) {
                if let Some(op) = self.forced_candidate() {
                    // Reached before, this (set, state) led nowhere, so neither does the one
                    // it was forced from: undo the last choice.
                    if !self.place(op, Rc::clone(&self.state), true) && !self.backtrack() {
                        return self.illegal();
                    }
                    continue;
                }
            }
            let entry = self.events.entries[self.cursor];
            if entry.is_call {
                let op = self.ops[entry.op];
                if let Some(next_state) =
                    self.model.step(&self.state, &op.input, op.output.as_ref())
                {
                    // A step that leaves the state as it was shares it rather than keep a copy.
                    let next_state = if next_state == *self.state {
                        Rc::clone(&self.state)
                    } else {
                        Rc::new(next_state)
                    };
                    if self.place(entry.op, next_state, false) {
                        continue;
                    }
                }
                self.cursor = entry.next;
            } else {
                // Operation `entry.op` returned here and nothing before it can be placed next.
                // The best dead end to explain has the most operations that returned placed
                // and, of those, the fewest that never did (their effects only muddle the
                // state).
                let placed_returned = self.returned_total - self.returned_left;
                let rank = (
                    placed_returned,
                    Reverse(self.placed.len() - placed_returned),
                );
                if self
                    .best_dead_end
                    .as_ref()
                    .is_none_or(|best| rank > best.rank)
                {
                    self.best_prefix.truncate(self.unchanged);
                    self.best_prefix
                        .extend(self.placed[self.unchanged..].iter().map(|placed| placed.op));
                    self.unchanged = self.placed.len();
                    self.best_dead_end = Some(DeadEnd {
                        rank,
                        state: Rc::clone(&self.state),
                        candidates: self.events.calls_before(self.cursor),
                        closing: entry.op,
                    });
                }
                if !self.backtrack() {
                    return self.illegal();
                }
            }
        }
        self.decided = true;
        Outcome::Linearizable
    }

    /// The first operation that could be linearized next (its call event is before the first
    /// return event in the list) that the model calls read-only and that is possible in the
    /// current state, leaving it as it is: the forced step, if there is one.
    ///
    /// A step that would change the state is never forced, whatever the model says.
    fn forced_candidate(&self) -> Option<usize> {
        let mut cursor = self.events.first();
        while cursor != HEAD {
            let entry = self.events.entries[cursor];
            if !entry.is_call {
                break;
            }
            let op = self.ops[entry.op];
            if self.model.is_read_only(&op.input, op.output.as_ref())
                && self
                    .model
                    .step(&self.state, &op.input, op.output.as_ref())
                    .is_some_and(|next_state| next_state == *self.state)
            {
                return Some(entry.op);
            }
            cursor = entry.next;
        }
        None
    }

    /// Linearizes `op` next, taking the state to `next_state`, unless the memo says the set
    /// and state it leads to were reached before: then changes nothing and returns false.
    /// `forced` says whether it is a forced step rather than a choice.
    fn place(&mut self, op: usize, next_state: Rc<M::State>, forced: bool) -> bool {
        self.linearized.set(op);
        self.events.lift(op);
        let returned = self.ops[op].ret.is_some();
        // Placing the last operation that returned ends the search: no need to remember the
        // set (it cannot have been reached before, or the search would have ended then).
        let last = returned && self.returned_left == 1;
        let new = last || {
            memo_key(&self.events, &self.linearized, &mut self.key);
            self.explored.insert(&self.key, &next_state)
        };
        if !new {
            self.events.unlift(op);
            self.linearized.clear(op);
            return false;
        }
        let previous_state = std::mem::replace(&mut self.state, next_state);
        self.placed.push(Placed {
            op,
            previous_state,
            forced,
        });
        if returned {
            self.returned_left -= 1;
        }
        self.cursor = self.events.first();
        self.forced_scan_due = true;
        true
    }

    /// Undoes the last choice, and every forced step after it, and sets the scan to go on
    /// after the operation chosen (its next alternative). False if no choice is left to undo:
    /// the partition is illegal.
    fn backtrack(&mut self) -> bool {
        while let Some(Placed {
            op,
            previous_state,
            forced,
        }) = self.placed.pop()
        {
            self.unchanged = self.unchanged.min(self.placed.len());
            self.state = previous_state;
            self.linearized.clear(op);
            self.events.unlift(op);
            if self.ops[op].ret.is_some() {
                self.returned_left += 1;
            }
            if !forced {
                self.cursor = self.events.entries[self.events.call_entry[op]].next;
                return true;
            }
        }
        false
    }

    /// The verdict once every choice has been undone: illegal, explained by the best dead end.
    fn illegal(&mut self) -> Outcome<M::State> {
        self.decided = true;
        // Every search that fails meets a dead end: a forced step only backtracks when the
        // memo already had its set and state, reached earlier and found to lead nowhere.
        let best = self
            .best_dead_end
            .take()
            .expect("a search that failed met a dead end");
        let stuck = Stuck {
            rank: best.rank,
            prefix: std::mem::take(&mut self.best_prefix),
            state: M::State::clone(&best.state),
            candidates: best.candidates,
            closing: best.closing,
        };
        Outcome::Illegal(stuck.into_history_indexes(self.group))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The list from the head: (op, is_call) per entry.
    fn order(events: &Events) -> Vec<(usize, bool)> {
        let mut order = Vec::new();
        let mut cursor = events.first();
        while cursor != HEAD {
            let entry = events.entries[cursor];
            order.push((entry.op, entry.is_call));
            assert_eq!(events.entries[entry.next].prev, cursor, "links disagree");
            cursor = entry.next;
        }
        order
    }

    #[test]
    fn events_are_in_time_order_with_calls_first_at_equal_times() {
        // op 0: [5, 9]; op 1: [1, 5]; op 2: [5, never]; op 3: [9, 9]
        let events = Events::new(&[(5, Some(9)), (1, Some(5)), (5, None), (9, Some(9))]);
        assert_eq!(
            order(&events),
            [
                (1, true),
                (0, true),
                (2, true),
                (1, false),
                (3, true),
                (0, false),
                (3, false)
            ]
        );
    }

    #[test]
    fn unlifting_in_reverse_order_restores_the_list() {
        let events_for = || {
            Events::new(&[
                (0, Some(4)),
                (1, Some(2)),
                (2, None),
                (3, Some(3)),
                (3, Some(8)),
            ])
        };
        let original = order(&events_for());
        for lift_order in [[1, 0, 3, 2, 4], [4, 3, 2, 1, 0], [2, 4, 0, 1, 3]] {
            let mut events = events_for();
            let mut snapshots = vec![order(&events)];
            for &op in &lift_order {
                events.lift(op);
                assert!(order(&events).iter().all(|&(lifted, _)| lifted != op));
                snapshots.push(order(&events));
            }
            assert!(order(&events).is_empty());
            for &op in lift_order.iter().rev() {
                snapshots.pop();
                events.unlift(op);
                assert_eq!(Some(&order(&events)), snapshots.last());
            }
            assert_eq!(order(&events), original);
        }
    }

    #[test]
    fn an_empty_partition_has_an_empty_list() {
        let events = Events::new(&[]);
        assert_eq!(events.first(), HEAD);
        assert!(order(&events).is_empty());
    }

    /// SplitMix64, for test data.
    struct Rng(u64);

    impl Rng {
        fn below(&mut self, n: u64) -> u64 {
            self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
            let mut z = self.0;
            z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
            (z ^ (z >> 31)) % n
        }
    }

    /// Every set of operations the search can have placed (whatever the model), as a bit mask,
    /// with the keys `key_of` gives it; reached through every order the search can place them
    /// in.
    fn keys_of_reachable_sets(
        events: &mut Events,
        linearized: &mut Bitset,
        mask: u64,
        key_of: &dyn Fn(&Events, &Bitset) -> Vec<u32>,
        keys: &mut Vec<(u64, Vec<u32>)>,
    ) {
        // The candidates: the call events before the first return event.
        let mut candidates = Vec::new();
        let mut cursor = events.first();
        while cursor != HEAD && events.entries[cursor].is_call {
            candidates.push(events.entries[cursor].op);
            cursor = events.entries[cursor].next;
        }
        for op in candidates {
            events.lift(op);
            linearized.set(op);
            keys.push((mask | 1 << op, key_of(events, linearized)));
            keys_of_reachable_sets(events, linearized, mask | 1 << op, key_of, keys);
            linearized.clear(op);
            events.unlift(op);
        }
    }

    /// Asserts that `key_of` gives every reachable set of random small histories one key, and
    /// different sets different keys.
    fn assert_keys_name_sets(key_of: &dyn Fn(&Events, &Bitset) -> Vec<u32>) {
        for seed in 0..3000 {
            let mut rng = Rng(seed);
            let count = 1 + rng.below(8) as usize;
            let ops: Vec<(u64, Option<u64>)> = (0..count)
                .map(|_| {
                    let call = rng.below(8);
                    let ret = (rng.below(5) != 0).then(|| call + rng.below(4));
                    (call, ret)
                })
                .collect();
            let mut events = Events::new(&ops);
            let mut linearized = Bitset::new(count);
            let mut keys = Vec::new();
            keys_of_reachable_sets(&mut events, &mut linearized, 0, key_of, &mut keys);
            let mut key_of_set = HashMap::new();
            let mut set_of_key = HashMap::new();
            for (set, key) in keys {
                let first_key = key_of_set.entry(set).or_insert_with(|| key.clone());
                assert_eq!(*first_key, key, "seed {seed}: set {set:#b} has two keys");
                let first_set = set_of_key.entry(key.clone()).or_insert(set);
                assert_eq!(*first_set, set, "seed {seed}: two sets have key {key:?}");
            }
        }
    }

    #[test]
    fn window_keys_name_the_reachable_sets() {
        assert_keys_name_sets(&|events, _| {
            let mut key = Vec::new();
            assert!(events.window_key(usize::MAX, &mut key));
            key
        });
    }

    #[test]
    fn memo_keys_name_the_reachable_sets() {
        // With at most 64 operations a window key longer than 3 gives way to the bitset form,
        // so both forms occur.
        assert_keys_name_sets(&|events, linearized| {
            let mut key = Vec::new();
            memo_key(events, linearized, &mut key);
            key
        });
    }

    #[test]
    fn a_window_key_is_the_first_return_and_the_calls_before_it() {
        // op 0: [1, 5]; op 1: [2, 3]; op 2: [4, 6]. List: c0 c1 r1 c2 r0 r2 (entries 1 to 6).
        let mut events = Events::new(&[(1, Some(5)), (2, Some(3)), (4, Some(6))]);
        let mut key = Vec::new();
        assert!(events.window_key(usize::MAX, &mut key));
        assert_eq!(key, [3, 1, 2]);
        events.lift(1);
        assert!(events.window_key(usize::MAX, &mut key));
        assert_eq!(key, [5, 1, 4]);
        assert!(!events.window_key(2, &mut key), "longer than the limit");
        events.lift(0);
        events.lift(2);
        assert!(events.window_key(usize::MAX, &mut key));
        assert_eq!(key, [HEAD as u32], "nothing left");
    }

    use crate::models::{KvInput, KvModel, KvOutput};

    type KvOp = Operation<KvInput, KvOutput>;

    /// `count` concurrent puts on `key` and a read of a value never written: illegal, after
    /// trying every subset of puts before the read.
    fn hard_partition(key: &str, count: usize) -> Vec<KvOp> {
        let mut history: Vec<KvOp> = (0..count)
            .map(|i| Operation {
                client: i as i64,
                input: KvInput::put(key, format!("v{i}")),
                output: Some(KvOutput::new("")),
                call: i as u64,
                ret: Some(1_000),
            })
            .collect();
        history.push(Operation {
            client: -1,
            input: KvInput::get(key),
            output: Some(KvOutput::new("never written")),
            call: 0,
            ret: Some(1_000),
        });
        history
    }

    /// A clock with no deadline.
    fn unlimited() -> Clock<fn() -> Instant> {
        Clock::new(Duration::MAX, Instant::now)
    }

    /// A fake clock whose every reading is one millisecond after the one before.
    fn ticking() -> impl FnMut() -> Instant {
        let start = Instant::now();
        let mut readings = 0;
        move || {
            readings += 1;
            start + Duration::from_millis(readings)
        }
    }

    /// The search of all of `history` as one partition, to its verdict, in one run.
    fn search_in_one_run(history: &[KvOp]) -> (Stuck<String>, u64) {
        let group: Vec<usize> = (0..history.len()).collect();
        let mut clock = unlimited();
        match Search::new(&KvModel, history, &group).resume(&mut clock) {
            Outcome::Illegal(stuck) => (stuck, clock.steps),
            _ => panic!("expected an illegal history"),
        }
    }

    #[test]
    fn a_search_cut_into_turns_ends_as_one_run_does() {
        assert_turns_end_as_one_run(&hard_partition("k", 11));
    }

    #[test]
    fn a_search_with_forced_steps_cut_into_turns_ends_as_one_run_does() {
        // Reads of some of the puts' values, concurrent with them: each is forced whenever
        // the value is its put's, and undone with the choice before it.
        let mut history = hard_partition("k", 11);
        for i in [2, 5, 5, 9] {
            history.push(Operation {
                client: -2,
                input: KvInput::get("k"),
                output: Some(KvOutput::new(format!("v{i}"))),
                call: 3 + i as u64,
                ret: Some(1_000),
            });
        }
        assert_turns_end_as_one_run(&history);
    }

    /// Asserts that the search of the illegal `history` cut into many turns ends as one run.
    fn assert_turns_end_as_one_run(history: &[KvOp]) {
        let (whole, steps) = search_in_one_run(history);
        let group: Vec<usize> = (0..history.len()).collect();
        let mut search = Search::new(&KvModel, history, &group);
        // No budget: every turn ends at the first clock reading, after at most 1024 steps.
        let mut clock = Clock::new(Duration::ZERO, Instant::now);
        let mut turns = 0;
        let in_turns = loop {
            turns += 1;
            clock.start_turn(1);
            match search.resume(&mut clock) {
                Outcome::OutOfTime => continue,
                Outcome::Illegal(stuck) => break stuck,
                Outcome::Linearizable => panic!("the history is illegal"),
            }
        };
        assert!(turns > 10, "only {turns} turns: the test needs more");
        // Each interrupted turn counted the step it stopped at, which the next one took.
        assert_eq!(clock.steps, steps + (turns - 1));
        assert_eq!(in_turns.rank, whole.rank);
        assert_eq!(in_turns.prefix, whole.prefix);
        assert_eq!(in_turns.state, whole.state);
        assert_eq!(in_turns.candidates, whole.candidates);
        assert_eq!(in_turns.closing, whole.closing);
    }

    /// Key "a" needs `readings_needed` readings of the clock; keys "b" to "j" one put each.
    fn one_slow_partition_and_nine_quick_ones() -> (Vec<KvOp>, u64) {
        let history = hard_partition("a", 11);
        let (_, steps) = search_in_one_run(&history);
        let readings_needed = steps / STEPS_PER_CLOCK_READ;
        let mut history = history;
        for key in ["b", "c", "d", "e", "f", "g", "h", "i", "j"] {
            history.push(Operation {
                client: 100,
                input: KvInput::put(key, "x"),
                output: Some(KvOutput::new("")),
                call: 0,
                ret: Some(1),
            });
        }
        (history, readings_needed)
    }

    #[test]
    fn time_that_quick_partitions_leave_goes_to_one_that_ran_out_of_its_share() {
        let (history, readings_needed) = one_slow_partition_and_nine_quick_ones();
        // A millisecond a reading; a budget with room for 30 more readings than the slow
        // partition needs, but a first share (a tenth) far too small for it.
        let budget = Duration::from_millis(readings_needed + 30);
        assert!(
            readings_needed > budget.as_millis() as u64 / 10 + 10,
            "{readings_needed} readings: the test needs more"
        );
        let result = check_with_clock(&KvModel, &history, Clock::new(budget, ticking()));
        let CheckResult::Illegal(explanation) = result else {
            panic!("expected key \"a\" to be decided, got {result:?}");
        };
        assert_eq!(explanation.partition, 0);
        assert_eq!(explanation.partitions, 10);
    }

    #[test]
    fn a_partition_that_cannot_finish_leaves_the_next_one_its_share() {
        // Key "a" cannot be decided in any budget; key "b" needs `readings_needed` readings.
        let (_, readings_needed) = one_slow_partition_and_nine_quick_ones();
        let mut history = hard_partition("a", 40);
        history.extend(hard_partition("b", 11));
        // Half the budget is enough for key "b".
        let budget = Duration::from_millis(2 * readings_needed + 20);
        let result = check_with_clock(&KvModel, &history, Clock::new(budget, ticking()));
        let CheckResult::Illegal(explanation) = result else {
            panic!("expected key \"b\" to be decided, got {result:?}");
        };
        assert_eq!(explanation.partition, 1);
        assert_eq!(explanation.partition_label.as_deref(), Some("key \"b\""));
    }

    #[test]
    fn a_budget_too_small_in_total_leaves_the_slow_partition_unknown() {
        let (history, readings_needed) = one_slow_partition_and_nine_quick_ones();
        let budget = Duration::from_millis(readings_needed / 2);
        let result = check_with_clock(&KvModel, &history, Clock::new(budget, ticking()));
        assert_eq!(result, CheckResult::Unknown);
    }

    #[test]
    fn the_memo_knows_each_pair_it_was_given_and_only_those() {
        let mut memo = Memo::new();
        let states: Vec<Rc<u32>> = (0..3 * FEW_STATES as u32).map(Rc::new).collect();
        for key in [&[1, 2][..], &[1, 3], &[BITSET_KEY, 1, 0]] {
            for state in &states {
                assert!(memo.insert(key, state));
                // The same state again, and an equal state in another allocation.
                assert!(!memo.insert(key, state));
                assert!(!memo.insert(key, &Rc::new(**state)));
            }
        }
        for key in [&[1, 2][..], &[1, 3], &[BITSET_KEY, 1, 0]] {
            for state in &states {
                assert!(!memo.insert(key, state));
            }
        }
        assert!(memo.insert(&[1, 2, 3], &states[0]));
        assert!(memo.insert(&[1], &states[0]));
        assert_eq!(memo.nodes.len(), 3 * states.len() + 2);
        // A key is stored once, however many states it has.
        assert_eq!(memo.keys.len(), 2 + 2 + 3 + 3 + 1);
    }
}
