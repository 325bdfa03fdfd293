//! Durable state held in memory: what the simulator's disk model keeps across a crash.

use crate::{DurableState, Persist, Storage, StorageError};

/// Keeps the durable state in memory; `persist` cannot fail.
#[derive(Clone, Debug, Default)]
pub struct MemStorage {
    state: DurableState,
}

impl MemStorage {
    pub fn new() -> Self {
        Self::default()
    }

    /// A storage that already holds `state` (e.g. a copy taken at a crash).
    pub fn from_state(state: DurableState) -> Self {
        MemStorage { state }
    }
}

/// Bytes of the hard state and the log after the snapshot, as postcard encodes them.
pub(crate) fn encoded_raft_state_size(state: &DurableState) -> u64 {
    let hard = postcard::experimental::serialized_size(&state.hard_state).unwrap_or(0);
    let log = postcard::experimental::serialized_size(&state.entries).unwrap_or(0);
    (hard + log) as u64
}

impl Storage for MemStorage {
    fn persist(&mut self, batch: &Persist) -> Result<(), StorageError> {
        self.state.apply(batch);
        Ok(())
    }

    fn durable_state(&self) -> &DurableState {
        &self.state
    }

    /// Computed on demand (O(log length)); only size probes call it.
    fn raft_state_size(&self) -> u64 {
        encoded_raft_state_size(&self.state)
    }
}
