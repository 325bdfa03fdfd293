//! Durable state held in memory: what the simulator's disk model keeps across a crash.

use crate::{DurableState, Persist, Storage, StorageError};

/// Keeps the durable state in memory; `persist` cannot fail.
#[derive(Clone, Debug, Default)]
pub struct MemStorage {
    state: DurableState,
    /// The encoded size of `state.entries`' elements (without the length prefix), kept up
    /// to date by `persist` so a size probe costs O(1) however long the log.
    entry_bytes: u64,
}

impl MemStorage {
    pub fn new() -> Self {
        Self::default()
    }

    /// The state as it would be recovered after a crash right now.
    pub fn durable_state(&self) -> &DurableState {
        &self.state
    }

    /// A storage that already holds `state` (e.g. a copy taken at a crash).
    pub fn from_state(state: DurableState) -> Self {
        let entry_bytes = entries_size(&state.entries);
        MemStorage { state, entry_bytes }
    }
}

/// An entry's encoded size, as the Raft state's size counts it.
pub(crate) fn entry_size(entry: &flotilla_raft::Entry) -> u64 {
    postcard::experimental::serialized_size(entry).unwrap_or(0) as u64
}

fn entries_size(entries: &[flotilla_raft::Entry]) -> u64 {
    entries.iter().map(entry_size).sum()
}

/// Bytes of the hard state and the log after the snapshot, as postcard encodes them (the
/// reference the kept size is tested against).
#[cfg(test)]
fn encoded_raft_state_size(state: &DurableState) -> u64 {
    let hard = postcard::experimental::serialized_size(&state.hard_state).unwrap_or(0);
    let log = postcard::experimental::serialized_size(&state.entries).unwrap_or(0);
    (hard + log) as u64
}

impl Storage for MemStorage {
    fn persist(&mut self, batch: &Persist) -> Result<(), StorageError> {
        if batch.snapshot.is_some() {
            self.state.apply(batch);
            self.entry_bytes = entries_size(&self.state.entries);
            return Ok(());
        }
        if let Some(first) = batch.entries.first().map(|e| e.index) {
            // The stored entries from `first` on are replaced (see flotilla_raft::durable).
            let kept = first.saturating_sub(self.state.snapshot.index + 1) as usize;
            let replaced = self.state.entries.get(kept..).unwrap_or(&[]);
            self.entry_bytes -= entries_size(replaced);
            self.entry_bytes += entries_size(&batch.entries);
        }
        self.state.apply(batch);
        Ok(())
    }

    /// O(1): the entries' size is kept up to date by `persist`.
    fn raft_state_size(&self) -> u64 {
        raft_state_size(
            &self.state.hard_state,
            self.state.entries.len(),
            self.entry_bytes,
        )
    }
}

/// Bytes of the hard state and of a log of `entries` entries taking `entry_bytes`, as
/// postcard encodes them: 6.5840's `RaftStateSize`, the same for every storage.
pub(crate) fn raft_state_size(
    hard_state: &flotilla_raft::HardState,
    entries: usize,
    entry_bytes: u64,
) -> u64 {
    let hard = postcard::experimental::serialized_size(hard_state).unwrap_or(0);
    let len = postcard::experimental::serialized_size(&entries).unwrap_or(0);
    (hard + len) as u64 + entry_bytes
}

#[cfg(test)]
mod tests {
    use super::*;
    use flotilla_raft::{Entry, HardState, Snapshot};

    fn entries(from: u64, to: u64, term: u64, len: usize) -> Vec<Entry> {
        (from..=to)
            .map(|index| Entry {
                term,
                index,
                data: vec![7; len],
            })
            .collect()
    }

    #[test]
    fn the_kept_size_is_the_encoded_size_through_appends_conflicts_and_snapshots() {
        let mut storage = MemStorage::new();
        let batches = [
            Persist {
                hard_state: Some(HardState {
                    term: 1,
                    vote: Some(0),
                }),
                entries: entries(1, 200, 1, 3),
                ..Persist::default()
            },
            // A conflicting suffix: 150.. replaced by shorter entries of term 2.
            Persist {
                entries: entries(150, 160, 2, 300),
                ..Persist::default()
            },
            Persist {
                snapshot: Some(Snapshot {
                    index: 155,
                    term: 2,
                    data: vec![1; 10],
                }),
                ..Persist::default()
            },
            Persist {
                entries: entries(161, 170, 2, 0),
                ..Persist::default()
            },
        ];
        for batch in &batches {
            storage.persist(batch).unwrap();
            assert_eq!(
                storage.raft_state_size(),
                encoded_raft_state_size(storage.durable_state())
            );
        }
    }
}
