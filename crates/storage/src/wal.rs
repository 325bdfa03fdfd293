//! placeholder
use crate::{DurableState, Persist, Storage, StorageError};
pub struct WalStorage { state: DurableState }
impl Storage for WalStorage {
    fn persist(&mut self, _batch: &Persist) -> Result<(), StorageError> { unimplemented!() }
    fn durable_state(&self) -> &DurableState { &self.state }
    fn raft_state_size(&self) -> u64 { 0 }
}
