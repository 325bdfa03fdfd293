//! The persistence contract between the core and a storage implementation.
//!
//! Every [`Ready`](crate::Ready) carries a [`Persist`]: the changes to durable state that must
//! be on stable storage **before** any message of that `Ready` is sent and before any of its
//! entries is applied. A storage applies a `Persist` in this order:
//!
//! 1. `snapshot`, if any: it replaces the log prefix up to `snapshot.index`. Entries after
//!    it are kept **only if** the log holds an entry at `snapshot.index` with `snapshot.term`;
//!    otherwise the whole log is discarded (this is rule 6/7 of InstallSnapshot in Figure 13,
//!    and the core makes the same decision in memory).
//! 2. `entries`, if any: they are consecutive; the first one's index is at most one past the
//!    last stored entry. Any stored entry at or after that index is discarded first (a
//!    conflicting suffix), then the entries are appended. Entries at or below the snapshot
//!    index are never sent.
//! 3. `hard_state`, if any, replaces the stored term and vote.
//!
//! The batch is one unit: after a crash a storage must recover either all of it or — if the
//! crash came before the storage reported success — any prefix of the batches it was given,
//! never a torn or reordered one. [`DurableState::apply`] is the reference implementation of
//! these rules; every storage in Flotilla replays its records through it.

use serde::{Deserialize, Serialize};

use crate::types::{Entry, HardState, Index, Snapshot};

/// Changes to durable state requested by one `Ready`. See the module docs for the order.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Persist {
    pub hard_state: Option<HardState>,
    pub snapshot: Option<Snapshot>,
    pub entries: Vec<Entry>,
}

impl Persist {
    pub fn is_empty(&self) -> bool {
        self.hard_state.is_none() && self.snapshot.is_none() && self.entries.is_empty()
    }

    /// Folds the later batch `next` into this one, so that applying the result is the same
    /// as applying `self` then `next` (group commit: several `Ready`s made durable as one
    /// batch, all or nothing). A batch with a snapshot cannot be folded into another (the
    /// snapshot's rule depends on the stored log); `next` is then handed back and nothing
    /// changes. Later batches can be folded into one that has a snapshot: it is applied
    /// first either way.
    pub fn absorb(&mut self, next: Persist) -> Result<(), Persist> {
        if next.snapshot.is_some() {
            return Err(next);
        }
        if let Some(first) = next.entries.first().map(|e| e.index) {
            match self.entries.first().map(|e| e.index) {
                // `next` replaces this batch's entries from `first` on ...
                Some(mine) if first > mine => {
                    let keep = ((first - mine) as usize).min(self.entries.len());
                    self.entries.truncate(keep);
                    self.entries.extend(next.entries);
                }
                // ... or all of them, and stored ones before them: its entries alone say so.
                _ => self.entries = next.entries,
            }
        }
        if next.hard_state.is_some() {
            self.hard_state = next.hard_state;
        }
        Ok(())
    }
}

/// Everything Raft needs to restart: what storage recovered after a crash.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DurableState {
    pub hard_state: HardState,
    /// The latest snapshot (index 0 = none).
    pub snapshot: Snapshot,
    /// The log after the snapshot: consecutive, the first at `snapshot.index + 1`.
    pub entries: Vec<Entry>,
}

impl DurableState {
    /// Index of the last entry (or of the snapshot when the log after it is empty).
    pub fn last_index(&self) -> Index {
        self.entries.last().map_or(self.snapshot.index, |e| e.index)
    }

    /// The term of the entry at `index`, if this state holds it (the snapshot's own index
    /// counts; entries the snapshot replaced do not).
    pub fn term_at(&self, index: Index) -> Option<crate::Term> {
        if index == self.snapshot.index {
            return Some(self.snapshot.term);
        }
        let first = self.snapshot.index + 1;
        if index < first {
            return None;
        }
        self.entries.get((index - first) as usize).map(|e| e.term)
    }

    /// Whether this state holds the entry (`index`, `term`) or a snapshot that covers it. A
    /// snapshot covers every index below its own (their terms are gone; a snapshot holds only
    /// committed entries) and, at its own index, only its own term.
    pub fn covers(&self, index: Index, term: crate::Term) -> bool {
        index < self.snapshot.index || self.term_at(index) == Some(term)
    }

    /// Applies one batch by the rules in the module docs.
    ///
    /// Panics if the batch breaks the contract (a gap before its first entry, non-consecutive
    /// entries): that is a bug in the caller, never a property of outside input.
    pub fn apply(&mut self, batch: &Persist) {
        self.apply_parts(
            batch.hard_state,
            batch.snapshot.clone(),
            batch.entries.iter().cloned(),
        );
    }

    /// [`DurableState::apply`] of a batch the caller gives away: its entries are moved into
    /// the log, not copied (recovery replays a whole log this way).
    pub fn apply_owned(&mut self, batch: Persist) {
        self.apply_parts(batch.hard_state, batch.snapshot, batch.entries.into_iter());
    }

    fn apply_parts(
        &mut self,
        hard_state: Option<HardState>,
        snapshot: Option<Snapshot>,
        entries: impl Iterator<Item = Entry>,
    ) {
        if let Some(snap) = snapshot {
            self.install_snapshot(snap);
        }
        let mut entries = entries.peekable();
        if let Some(first) = entries.peek().map(|e| e.index) {
            assert!(
                first > self.snapshot.index,
                "entry {} at or below the snapshot index {}",
                first,
                self.snapshot.index
            );
            assert!(
                first <= self.last_index() + 1,
                "gap: entry {} after last index {}",
                first,
                self.last_index()
            );
            let keep = (first - self.snapshot.index - 1) as usize;
            self.entries.truncate(keep);
            for (offset, entry) in entries.enumerate() {
                assert_eq!(
                    entry.index,
                    first + offset as u64,
                    "entries not consecutive"
                );
                self.entries.push(entry);
            }
        }
        if let Some(hs) = hard_state {
            self.hard_state = hs;
        }
    }

    fn install_snapshot(&mut self, snap: Snapshot) {
        if snap.index <= self.snapshot.index {
            // An older snapshot than the one held: nothing to gain, nothing to lose.
            if snap.index == self.snapshot.index {
                self.snapshot = snap;
            }
            return;
        }
        let matches = self
            .entries
            .iter()
            .find(|e| e.index == snap.index)
            .is_some_and(|e| e.term == snap.term);
        if matches {
            let drop = (snap.index - self.snapshot.index) as usize;
            self.entries.drain(..drop);
        } else {
            self.entries.clear();
        }
        self.snapshot = snap;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Folding a run of batches gives the state that applying them one by one gives.
    #[test]
    fn an_absorbed_run_applies_as_its_batches_do() {
        let mut seed = 7u64;
        let mut next = |n: u64| {
            seed = seed
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (seed >> 33) % n
        };
        for _ in 0..2000 {
            let mut one_by_one = DurableState::default();
            let mut folded_state = DurableState::default();
            let mut folded: Option<Persist> = None;
            let mut last = 0u64;
            for _ in 0..1 + next(6) {
                // A batch the core could emit: entries from at most one past the last index
                // (often overwriting a suffix), maybe a hard state.
                let first = 1 + next(last + 1);
                let count = next(4);
                let term = 1 + next(5);
                let batch = Persist {
                    hard_state: (next(2) == 0).then_some(HardState {
                        term,
                        vote: Some(next(3)),
                    }),
                    snapshot: None,
                    entries: (first..first + count).map(|i| e(i, term)).collect(),
                };
                one_by_one.apply(&batch);
                last = one_by_one.last_index();
                match &mut folded {
                    None => folded = Some(batch),
                    Some(f) => f.absorb(batch).expect("no snapshot"),
                }
            }
            folded_state.apply(&folded.unwrap());
            assert_eq!(folded_state, one_by_one);
        }
    }

    #[test]
    fn a_batch_with_a_snapshot_is_not_absorbed() {
        let mut a = Persist::default();
        let b = Persist {
            snapshot: Some(Snapshot {
                index: 1,
                term: 1,
                data: vec![],
            }),
            ..Persist::default()
        };
        assert_eq!(a.absorb(b.clone()), Err(b));
        assert!(a.is_empty());
    }

    fn e(index: Index, term: u64) -> Entry {
        Entry {
            index,
            term,
            data: vec![index as u8],
        }
    }

    #[test]
    fn conflicting_suffix_is_replaced() {
        let mut s = DurableState::default();
        s.apply(&Persist {
            entries: vec![e(1, 1), e(2, 1), e(3, 1)],
            ..Default::default()
        });
        s.apply(&Persist {
            entries: vec![e(2, 2)],
            ..Default::default()
        });
        assert_eq!(s.entries, vec![e(1, 1), e(2, 2)]);
    }

    #[test]
    fn snapshot_keeps_matching_suffix_only() {
        let mut s = DurableState::default();
        s.apply(&Persist {
            entries: vec![e(1, 1), e(2, 1), e(3, 2)],
            ..Default::default()
        });
        let snap = |index, term| Snapshot {
            index,
            term,
            data: vec![],
        };
        let mut kept = s.clone();
        kept.apply(&Persist {
            snapshot: Some(snap(2, 1)),
            ..Default::default()
        });
        assert_eq!(kept.entries, vec![e(3, 2)]);
        let mut dropped = s.clone();
        dropped.apply(&Persist {
            snapshot: Some(snap(2, 5)),
            ..Default::default()
        });
        assert!(dropped.entries.is_empty());
        assert_eq!(dropped.last_index(), 2);
    }
}
