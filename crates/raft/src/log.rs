//! The in-memory replicated log: a snapshot followed by the entries after it.
//!
//! Invariants (asserted in debug builds after every change):
//! - `entries[k].index == snapshot.index + 1 + k` (consecutive after the snapshot);
//! - terms never decrease along the log, and the first entry's term is at least the
//!   snapshot's term;
//! - `committed >= snapshot.index` (a snapshot only ever covers committed entries).
//!
//! The log also remembers how much of itself has been handed to storage (`unstable_from`),
//! so each `Ready` carries exactly the entries that are not yet durable.

use crate::types::{Entry, Index, Snapshot, Term};

#[derive(Debug)]
pub(crate) struct RaftLog {
    snapshot: Snapshot,
    entries: Vec<Entry>,
    /// Highest index known to be committed.
    pub committed: Index,
    /// First index not yet handed to storage in a `Ready`.
    unstable_from: Index,
    /// A snapshot received from the leader (or taken by the service) that storage has not
    /// been given yet.
    pub snapshot_unpersisted: bool,
}

impl RaftLog {
    /// A log recovered from storage: everything in it is already durable.
    pub fn restore(snapshot: Snapshot, entries: Vec<Entry>) -> Self {
        let log = RaftLog {
            committed: snapshot.index,
            unstable_from: entries.last().map_or(snapshot.index, |e| e.index) + 1,
            snapshot,
            entries,
            snapshot_unpersisted: false,
        };
        log.check_invariants();
        log
    }

    pub fn snapshot(&self) -> &Snapshot {
        &self.snapshot
    }

    pub fn first_index(&self) -> Index {
        self.snapshot.index + 1
    }

    pub fn last_index(&self) -> Index {
        self.entries.last().map_or(self.snapshot.index, |e| e.index)
    }

    pub fn last_term(&self) -> Term {
        self.entries.last().map_or(self.snapshot.term, |e| e.term)
    }

    /// The term of the entry at `index`, if the log still knows it (the snapshot's own index
    /// counts; compacted entries before it do not).
    pub fn term(&self, index: Index) -> Option<Term> {
        if index == self.snapshot.index {
            return Some(self.snapshot.term);
        }
        self.entry(index).map(|e| e.term)
    }

    pub fn entry(&self, index: Index) -> Option<&Entry> {
        if index <= self.snapshot.index {
            return None;
        }
        self.entries.get((index - self.snapshot.index - 1) as usize)
    }

    /// Entries in `[from, to]`, cut after `max_count` entries or once `max_bytes` of payload
    /// is reached (at least one entry is returned when the range is not empty).
    pub fn slice(&self, from: Index, to: Index, max_count: usize, max_bytes: usize) -> Vec<Entry> {
        assert!(
            from > self.snapshot.index,
            "slice from compacted index {from}"
        );
        let mut out = Vec::new();
        let mut bytes = 0;
        let mut index = from;
        while index <= to && out.len() < max_count {
            let Some(entry) = self.entry(index) else {
                break;
            };
            if !out.is_empty() && bytes + entry.data.len() > max_bytes {
                break;
            }
            bytes += entry.data.len();
            out.push(entry.clone());
            index += 1;
        }
        out
    }

    /// True when a log ending at (`last_index`, `last_term`) is at least as up-to-date as this
    /// one (§5.4.1 of the paper).
    pub fn is_up_to_date(&self, last_index: Index, last_term: Term) -> bool {
        last_term > self.last_term()
            || (last_term == self.last_term() && last_index >= self.last_index())
    }

    /// Appends a new entry at the end (leader side).
    pub fn append(&mut self, term: Term, data: Vec<u8>) -> Index {
        let index = self.last_index() + 1;
        debug_assert!(term >= self.last_term());
        self.entries.push(Entry { term, index, data });
        index
    }

    /// Follower side of AppendEntries once `prev_log_index` matched: skips entries the log
    /// already has with the same term, truncates at the first conflict and appends the rest.
    /// Never truncates on a matching entry, so a stale, reordered message cannot erase newer
    /// entries. Returns the index of the last entry of the message.
    pub fn merge(&mut self, prev_log_index: Index, entries: Vec<Entry>) -> Index {
        let last_new = prev_log_index + entries.len() as u64;
        for entry in entries {
            if entry.index <= self.snapshot.index {
                continue; // covered by the snapshot, hence committed and equal
            }
            match self.term(entry.index) {
                Some(term) if term == entry.term => continue,
                Some(_) => {
                    // Refused before the message got here (`Raft::check_against_state`).
                    assert!(
                        entry.index > self.committed,
                        "conflict at committed index {} (committed {})",
                        entry.index,
                        self.committed
                    );
                    self.truncate_from(entry.index);
                    self.entries.push(entry);
                }
                None => {
                    // Entries are consecutive from a matching `prev_log_index`
                    // (`validate::check_message`), so the first missing one is the next.
                    assert_eq!(entry.index, self.last_index() + 1, "gap in merged entries");
                    self.entries.push(entry);
                }
            }
        }
        self.check_invariants();
        last_new
    }

    fn truncate_from(&mut self, index: Index) {
        let keep = (index - self.snapshot.index - 1) as usize;
        self.entries.truncate(keep);
        self.unstable_from = self.unstable_from.min(index);
    }

    /// Where a follower's log stops agreeing with a leader that sent `prev_log_index`.
    /// Returns (first index of the conflicting term, that term), or (last index + 1, None)
    /// when the log is too short.
    pub fn conflict_hint(&self, prev_log_index: Index) -> (Index, Option<Term>) {
        match self.term(prev_log_index) {
            None => (self.last_index() + 1, None),
            Some(term) => {
                let mut index = prev_log_index;
                while index > self.first_index() && self.term(index - 1) == Some(term) {
                    index -= 1;
                }
                (index, Some(term))
            }
        }
    }

    /// The last index holding `term`, if any (leader side of the fast backup).
    pub fn last_index_of_term(&self, term: Term) -> Option<Index> {
        self.entries
            .iter()
            .rev()
            .find(|e| e.term <= term)
            .filter(|e| e.term == term)
            .map(|e| e.index)
    }

    pub fn commit_to(&mut self, index: Index) -> bool {
        if index > self.committed {
            assert!(
                index <= self.last_index(),
                "commit {index} beyond last index {}",
                self.last_index()
            );
            self.committed = index;
            true
        } else {
            false
        }
    }

    /// Replaces the prefix up to `snapshot.index` by `snapshot` (Figure 13, rules 6 and 7).
    /// Entries after it survive only if the log agrees at the snapshot's index.
    pub fn install_snapshot(&mut self, snapshot: Snapshot) {
        assert!(snapshot.index > self.snapshot.index);
        if self.term(snapshot.index) == Some(snapshot.term) {
            // Storage keeps its entries after the snapshot by the same rule (see
            // `durable`), so what was handed to it stays handed.
            let drop = (snapshot.index - self.snapshot.index) as usize;
            self.entries.drain(..drop);
            self.unstable_from = self.unstable_from.max(snapshot.index + 1);
        } else {
            // Storage discards its whole log too: every entry appended from here on is new
            // to it, however long the log it held before.
            self.entries.clear();
            self.unstable_from = snapshot.index + 1;
        }
        self.committed = self.committed.max(snapshot.index);
        self.snapshot = snapshot;
        self.snapshot_unpersisted = true;
        self.check_invariants();
    }

    /// The service's own snapshot of applied state at `index` (≤ committed).
    pub fn compact(&mut self, index: Index, data: Vec<u8>) {
        let term = self.term(index).expect("compact: index must be in the log");
        assert!(index <= self.committed, "compact beyond commit");
        self.install_snapshot(Snapshot { index, term, data });
    }

    /// Entries not yet handed to storage; marks them handed.
    pub fn take_unstable(&mut self) -> Vec<Entry> {
        let from = self.unstable_from.max(self.first_index());
        let out = if from <= self.last_index() {
            self.entries[(from - self.snapshot.index - 1) as usize..].to_vec()
        } else {
            Vec::new()
        };
        self.unstable_from = self.last_index() + 1;
        out
    }

    pub fn has_unstable(&self) -> bool {
        self.unstable_from.max(self.first_index()) <= self.last_index()
    }

    fn check_invariants(&self) {
        if cfg!(debug_assertions) {
            let mut term = self.snapshot.term;
            for (k, e) in self.entries.iter().enumerate() {
                assert_eq!(
                    e.index,
                    self.snapshot.index + 1 + k as u64,
                    "log not consecutive"
                );
                assert!(e.term >= term, "terms decrease at index {}", e.index);
                term = e.term;
            }
            assert!(self.committed >= self.snapshot.index);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn log_with_terms(terms: &[Term]) -> RaftLog {
        let entries = terms
            .iter()
            .enumerate()
            .map(|(k, &term)| Entry {
                term,
                index: k as u64 + 1,
                data: vec![],
            })
            .collect();
        RaftLog::restore(Snapshot::default(), entries)
    }

    #[test]
    fn conflict_hint_skips_whole_term() {
        let log = log_with_terms(&[1, 1, 2, 2, 2]);
        assert_eq!(log.conflict_hint(5), (3, Some(2)));
        assert_eq!(log.conflict_hint(2), (1, Some(1)));
        assert_eq!(log.conflict_hint(9), (6, None));
        assert_eq!(log.last_index_of_term(1), Some(2));
        assert_eq!(log.last_index_of_term(3), None);
    }

    #[test]
    fn slice_stops_at_the_count_or_byte_limit_but_returns_at_least_one_entry() {
        let mut log = log_with_terms(&[1, 1, 1, 1, 1]);
        for (k, e) in log.entries.iter_mut().enumerate() {
            e.data = vec![k as u8; 10];
        }
        let indexes = |v: Vec<Entry>| v.iter().map(|e| e.index).collect::<Vec<_>>();
        assert_eq!(indexes(log.slice(1, 5, 3, usize::MAX)), vec![1, 2, 3]);
        assert_eq!(indexes(log.slice(2, 5, usize::MAX, 20)), vec![2, 3]);
        assert_eq!(indexes(log.slice(2, 5, usize::MAX, 29)), vec![2, 3]);
        assert_eq!(indexes(log.slice(2, 5, usize::MAX, 30)), vec![2, 3, 4]);
        assert_eq!(
            indexes(log.slice(2, 5, usize::MAX, 1)),
            vec![2],
            "one even if too big"
        );
        assert_eq!(indexes(log.slice(4, 9, usize::MAX, usize::MAX)), vec![4, 5]);
        assert!(log.slice(5, 4, 10, 10).is_empty());
    }

    #[test]
    fn conflict_hint_stops_at_the_first_index_after_a_snapshot() {
        let mut log = log_with_terms(&[1, 2, 2, 2, 2]);
        log.commit_to(2);
        log.compact(2, vec![]);
        // The run of term 2 continues into the snapshot, but the hint cannot name an index
        // the log no longer has.
        assert_eq!(log.conflict_hint(5), (3, Some(2)));
    }

    #[test]
    fn merge_ignores_stale_matching_entries() {
        let mut log = log_with_terms(&[1, 1, 1]);
        let stale = vec![Entry {
            term: 1,
            index: 2,
            data: vec![],
        }];
        log.merge(1, stale);
        assert_eq!(
            log.last_index(),
            3,
            "a matching stale entry must not truncate"
        );
        let conflicting = vec![Entry {
            term: 2,
            index: 2,
            data: vec![],
        }];
        log.merge(1, conflicting);
        assert_eq!(log.last_index(), 2);
        assert_eq!(log.term(2), Some(2));
    }
}
