//! Durable homes for Raft's state.
//!
//! The Raft core never touches a disk: each [`Ready`](flotilla_raft::Ready) hands its driver a
//! [`Persist`] batch, and the driver gives it to a [`Storage`] before sending that `Ready`'s
//! messages (etcd's rule: persist before you send). What a batch means — snapshot first, then
//! a possibly conflicting suffix of entries, then the hard state — is defined once, by
//! [`DurableState::apply`]; every implementation here replays its records through it, so
//! they cannot disagree about the rules.
//!
//! - [`MemStorage`]: the durable state in memory. The simulator wraps it in a disk model that
//!   loses unsynced writes on a crash.
//! - [`WalStorage`]: a directory with a segmented write-ahead log of CRC-checked records (one
//!   fsync per batch, or per group of batches) and snapshots written to a temp file, fsynced
//!   and renamed into place; it keeps only the log's shape in memory, not its data. It does its
//!   I/O through the [`fs::FileSystem`] trait: the real file system by default, or (with the
//!   `sim` feature) the simulator's `flotilla_sim::fs::SimFs`, whose crashes keep only what
//!   was synced. On the real file system it holds the directory's [`DirLock`]: one process
//!   per data directory.

pub mod format;
pub mod fs;
pub mod lock;
mod mem;
pub mod wal;

pub use flotilla_raft::{DurableState, Persist};
pub use lock::DirLock;
pub use mem::MemStorage;
pub use wal::{WalOptions, WalStorage};

/// Why a storage could not do what was asked.
#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    #[error("i/o error on {path}: {source}")]
    Io {
        path: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// Another process (or another open in this one) holds the data directory.
    #[error("{} is locked by another process{}: one process per data directory", .path.display(), .holder.map(|pid| format!(" (pid {pid})")).unwrap_or_default())]
    Locked {
        path: std::path::PathBuf,
        holder: Option<u32>,
    },
    /// A record or file failed its checksum or could not be decoded somewhere other than in
    /// the last record of the log (which a crash during its append may damage, and which is
    /// cut off instead: see the [`wal`] module docs). Nothing after it is trusted; nothing is
    /// silently applied.
    #[error("corrupt {what} in {path} at byte {offset}: {detail}")]
    Corrupt {
        what: &'static str,
        path: std::path::PathBuf,
        offset: u64,
        detail: String,
    },
}

/// A place that makes Raft's state survive crashes.
pub trait Storage {
    /// Makes `batch` durable. When this returns `Ok`, the batch survives a crash; on `Err` the
    /// caller must not send the `Ready`'s messages (and should stop the node).
    fn persist(&mut self, batch: &Persist) -> Result<(), StorageError>;

    /// Group commit: makes several batches durable with as few syncs as possible: each run
    /// of batches is folded into one ([`Persist::absorb`]), a new run starting at each batch
    /// with a snapshot. The prefix property
    /// holds: a crash keeps the batches of some prefix of the runs, each run whole or not at
    /// all. When this returns `Ok`, every batch survives a crash.
    fn persist_group(&mut self, batches: &[Persist]) -> Result<(), StorageError> {
        let mut run: Option<Persist> = None;
        for batch in batches {
            match &mut run {
                None => run = Some(batch.clone()),
                Some(folded) => {
                    if let Err(alone) = folded.absorb(batch.clone()) {
                        self.persist(folded)?;
                        run = Some(alone);
                    }
                }
            }
        }
        match run {
            Some(folded) => self.persist(&folded),
            None => Ok(()),
        }
    }

    /// Size in bytes of the persisted Raft state excluding the snapshot (6.5840's
    /// `RaftStateSize`): services compare it with their `maxraftstate` to decide when to
    /// snapshot.
    fn raft_state_size(&self) -> u64;
}
