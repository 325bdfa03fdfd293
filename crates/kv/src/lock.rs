//! A lock built on the 2025 API's conditional put (6.5840 Lab 2's `lock` package).
//!
//! The lock lives in one key: `""` (or a missing key) means free, otherwise the key holds the
//! holder's id — unique per `Lock` instance. Acquiring is a conditional put of our id over the
//! free value at the version we read; releasing is a conditional put of `""` over our id.
//!
//! `ErrMaybe` (a retried put whose first attempt may have landed) is resolved by reading the
//! key again: if it holds our id, the put landed. So the lock is correct on a network that
//! loses requests and replies, and a lost reply can never leave it held by nobody's knowledge.

use crate::protocol::KvError;

/// The 2025 clerk operations a lock needs, plus a pause between attempts.
#[allow(async_fn_in_trait)] // used by single-threaded drivers; no Send bound wanted
pub trait VersionedKv {
    async fn get(&self, key: &str) -> Result<(String, u64), KvError>;
    async fn put(&self, key: &str, value: &str, version: u64) -> Result<(), KvError>;
    /// Wait a little before trying again (the lock is held by someone else).
    async fn pause(&self);
}

pub struct Lock<'a, K: VersionedKv> {
    kv: &'a K,
    key: String,
    id: String,
}

impl<'a, K: VersionedKv> Lock<'a, K> {
    /// A lock stored under `key`; `id` must be unique among all instances using that key.
    pub fn new(kv: &'a K, key: &str, id: String) -> Self {
        assert!(
            !id.is_empty(),
            "a lock id must not be empty (empty means free)"
        );
        Lock {
            kv,
            key: key.to_string(),
            id,
        }
    }

    async fn read(&self) -> (String, u64) {
        // A key never written (NoKey) is free, and version 0 creates it.
        self.kv.get(&self.key).await.unwrap_or_default()
    }

    /// Blocks until this instance holds the lock.
    pub async fn acquire(&self) {
        loop {
            let (holder, version) = self.read().await;
            if holder == self.id {
                return; // an earlier put of ours landed (its reply was lost)
            }
            if !holder.is_empty() {
                self.kv.pause().await;
                continue;
            }
            match self.kv.put(&self.key, &self.id, version).await {
                Ok(()) => return,
                // Maybe: re-read decides. Version/NoKey: someone else moved first.
                Err(_) => continue,
            }
        }
    }

    /// Releases the lock (which this instance must hold).
    pub async fn release(&self) {
        loop {
            let (holder, version) = self.read().await;
            if holder != self.id {
                return; // an earlier release of ours landed
            }
            match self.kv.put(&self.key, "", version).await {
                Ok(()) => return,
                Err(_) => continue,
            }
        }
    }
}
