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

use std::cmp::Reverse;
use std::collections::HashSet;
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

    let mut clock = Clock::new(budget);
    for (number, group) in groups.iter().enumerate() {
        match search(model, history, group, &mut clock) {
            Outcome::Linearizable => {}
            Outcome::OutOfTime => return CheckResult::Unknown,
            Outcome::Illegal(stuck) => {
                return CheckResult::Illegal(explain(model, history, &groups, number, stuck))
            }
        }
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

/// The wall-clock budget, read only every [`STEPS_PER_CLOCK_READ`] steps.
struct Clock {
    deadline: Option<Instant>,
    steps: u64,
}

impl Clock {
    fn new(budget: Duration) -> Clock {
        // A budget too large to add to now is as good as no deadline.
        Clock {
            deadline: Instant::now().checked_add(budget),
            steps: 0,
        }
    }

    fn expired(&self) -> bool {
        self.deadline
            .is_some_and(|deadline| Instant::now() >= deadline)
    }

    /// Counts one step; true when the deadline has passed (checked every so many steps).
    fn step_expired(&mut self) -> bool {
        self.steps += 1;
        self.steps.is_multiple_of(STEPS_PER_CLOCK_READ) && self.expired()
    }
}

enum Outcome<S> {
    Linearizable,
    Illegal(Stuck<S>),
    OutOfTime,
}

/// The set of operations (by position in the partition) linearized so far.
#[derive(Clone, PartialEq, Eq, Hash)]
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

/// Searches for a linearization of the operations `group` (indexes into `history`).
fn search<M: Model>(
    model: &M,
    history: &[Operation<M::Input, M::Output>],
    group: &[usize],
    clock: &mut Clock,
) -> Outcome<M::State> {
    let ops: Vec<&Operation<M::Input, M::Output>> =
        group.iter().map(|&index| &history[index]).collect();
    let times: Vec<(u64, Option<u64>)> = ops.iter().map(|op| (op.call, op.ret)).collect();
    let mut events = Events::new(&times);

    let returned_total = ops.iter().filter(|op| op.ret.is_some()).count();
    let mut returned_left = returned_total;
    let mut linearized = Bitset::new(ops.len());
    let mut state = model.init();
    // The operations linearized so far, each with the state before it.
    let mut placed: Vec<(usize, M::State)> = Vec::new();
    let mut explored: HashSet<(Bitset, M::State)> = HashSet::new();
    let mut best_dead_end: Option<Stuck<M::State>> = None;

    let mut cursor = events.first();
    while returned_left > 0 {
        if clock.step_expired() {
            return Outcome::OutOfTime;
        }
        // While an operation that returned is unplaced, its return event is still in the list
        // after the cursor: the scan meets a return before it can run off the end.
        assert_ne!(cursor, HEAD, "scan ran off the end of the event list");
        let entry = events.entries[cursor];
        if entry.is_call {
            let op = ops[entry.op];
            let next_state =
                model
                    .step(&state, &op.input, op.output.as_ref())
                    .filter(|next_state| {
                        let mut next_linearized = linearized.clone();
                        next_linearized.set(entry.op);
                        explored.insert((next_linearized, next_state.clone()))
                    });
            match next_state {
                Some(next_state) => {
                    linearized.set(entry.op);
                    placed.push((entry.op, std::mem::replace(&mut state, next_state)));
                    events.lift(entry.op);
                    if op.ret.is_some() {
                        returned_left -= 1;
                    }
                    cursor = events.first();
                }
                None => cursor = entry.next,
            }
        } else {
            // Operation `entry.op` returned here and nothing before it can be placed next.
            // The best dead end to explain has the most operations that returned placed and,
            // of those, the fewest that never did (their effects only muddle the state).
            let placed_returned = returned_total - returned_left;
            let rank = (placed_returned, Reverse(placed.len() - placed_returned));
            if best_dead_end.as_ref().is_none_or(|best| rank > best.rank) {
                best_dead_end = Some(Stuck {
                    rank,
                    prefix: placed.iter().map(|&(op, _)| op).collect(),
                    state: state.clone(),
                    candidates: events.calls_before(cursor),
                    closing: entry.op,
                });
            }
            let Some((op, previous_state)) = placed.pop() else {
                let stuck = best_dead_end.expect("recorded just above");
                return Outcome::Illegal(stuck.into_history_indexes(group));
            };
            state = previous_state;
            linearized.clear(op);
            events.unlift(op);
            if ops[op].ret.is_some() {
                returned_left += 1;
            }
            cursor = events.entries[events.call_entry[op]].next;
        }
    }
    Outcome::Linearizable
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
}
