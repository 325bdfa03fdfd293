//! One process per data directory.
//!
//! [`DirLock::acquire`] takes an exclusive advisory lock (`flock`) on `LOCK` in the
//! directory and writes the holder's process id into it. A second process — or a second
//! open in the same process — gets [`StorageError::Locked`] naming the holder, instead of
//! two writers interleaving records in one log. The lock is released when the `DirLock` is
//! dropped or the process dies (the kernel drops `flock`s with the file), so a crash never
//! leaves a stale lock behind; the PID left in the file is only a hint for the error.

use std::fs::{File, OpenOptions, TryLockError};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use crate::StorageError;

/// The lock file's name inside a data directory.
pub const LOCK_FILE: &str = "LOCK";

/// Held while a process owns its data directory.
#[derive(Debug)]
pub struct DirLock {
    _file: File,
    path: PathBuf,
}

impl DirLock {
    /// Locks `dir` (which must exist) for this process.
    pub fn acquire(dir: &Path) -> Result<DirLock, StorageError> {
        let path = dir.join(LOCK_FILE);
        let io = |source| StorageError::Io {
            path: path.clone(),
            source,
        };
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(io)?;
        match file.try_lock() {
            Ok(()) => {}
            Err(TryLockError::WouldBlock) => {
                let mut text = String::new();
                let _ = file.read_to_string(&mut text);
                return Err(StorageError::Locked {
                    path,
                    holder: text.trim().parse().ok(),
                });
            }
            Err(TryLockError::Error(e)) => return Err(io(e)),
        }
        file.set_len(0)
            .and_then(|()| file.seek(SeekFrom::Start(0)).map(|_| ()))
            .and_then(|()| writeln!(file, "{}", std::process::id()))
            .map_err(io)?;
        Ok(DirLock { _file: file, path })
    }

    /// The lock file.
    pub fn path(&self) -> &Path {
        &self.path
    }
}
