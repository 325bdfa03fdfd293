//! A file-backed [`Storage`]: a write-ahead log of CRC-checked records plus a snapshot file.
//!
//! [`WalStorage`] keeps Raft's durable state in one directory so that a real process can be
//! killed (or lose power) at any instant and come back with the state it had acknowledged.
//! Each [`Persist`] batch becomes **one** record appended to the log and made durable with
//! **one** `fdatasync`; batches that install a snapshot also write the snapshot file and then
//! compact the log. The recovered state is kept in memory and updated through
//! [`DurableState::apply`], the one place the batch rules live: recovery replays the log's
//! records through it too, so the state after `open` is, by construction, the state the
//! acknowledged batches produce.
//!
//! All I/O goes through a [`FileSystem`]: `std::fs` by default ([`WalStorage::open`]), or any
//! other one given to [`WalStorage::open_with`] — in tests and the simulator,
//! `flotilla_sim::fs::SimFs`, whose crashes keep exactly what was synced (file data *and*
//! directory entries) and may tear, zero-fill or flip bits in the rest. The crash-safety
//! argument below assumes only what that model grants: a synced file's data survives, a
//! directory entry survives once its directory is synced, a rename is atomic.
//!
//! # Files
//!
//! | name           | content                                                            |
//! |----------------|--------------------------------------------------------------------|
//! | `wal`          | the write-ahead log                                                |
//! | `snapshot`     | the snapshot the log refers to                                     |
//! | `wal.tmp`      | a compacted log being written; never read, removed by `open`       |
//! | `snapshot.tmp` | a snapshot being written; used by `open` only to finish a rename   |
//!
//! # On-disk format
//!
//! All integers are little-endian; CRCs are CRC-32 (IEEE, `crc32fast`).
//!
//! **Log** (`wal`): the 8-byte magic `FLOTWAL1`, then records, each
//!
//! ```text
//! [len: u32][crc: u32 = crc32(payload)][header_crc: u32 = crc32(len ++ crc)][payload: len bytes]
//! ```
//!
//! with `len` at most [`WalStorage::MAX_RECORD_LEN`]. The payload is a postcard-encoded
//! record: a `Persist` batch whose snapshot is replaced by a reference
//! `SnapRef { index, term, len, crc }` naming the snapshot file's contents (the data itself
//! lives only in `snapshot`). Replaying a log = applying its records, in order, to
//! `DurableState::default()`. The header CRC protects the length, so a flipped bit in a length
//! field cannot make a good record look like a torn one (or make the reader skip data).
//!
//! **Snapshot** (`snapshot`): a 40-byte header
//!
//! ```text
//! [magic "FLOTSNP1"][index: u64][term: u64][len: u64][crc: u32 = crc32(data)][header_crc: u32]
//! ```
//!
//! (`header_crc` covers the 36 bytes before it) followed by exactly `len` bytes of data.
//!
//! # Writing a batch
//!
//! An empty batch writes nothing. Otherwise the batch is applied to the in-memory state first
//! (so a batch that breaks the contract panics, as it does in `MemStorage`, before anything
//! reaches the disk), then:
//!
//! - **Without a newly installed snapshot** (no snapshot, or one `apply` ignored as older than
//!   the one held, whose reference replay will ignore the same way): append one record,
//!   `fdatasync` the log. The batch is durable when the sync returns. (Occasionally the log is
//!   then compacted, see below.)
//! - **With a snapshot that `apply` installed** — the five steps, each finished before the next:
//!   1. write `snapshot.tmp` (header + data), `fsync` it, `fsync` the directory (a file's
//!      `fsync` does not make its directory entry durable; the log is about to name it);
//!   2. append the batch's record (naming the snapshot by `SnapRef`) to `wal`, `fdatasync` —
//!      **the commit point**: from here on recovery yields the state after the batch;
//!   3. rename `snapshot.tmp` to `snapshot`, `fsync` the directory;
//!   4. write the compacted log to `wal.tmp` (a first record with the hard state and the
//!      `SnapRef`, then the retained entries in records of at most a few MiB), `fsync` it;
//!   5. rename `wal.tmp` over `wal`, `fsync` the directory.
//!
//! The log is also compacted (steps 4–5 alone) after an append that leaves it both above
//! 1 MiB and more than twice the estimated size of the live state (superseded hard states
//! and overwritten suffixes are garbage); the check runs each time the log has doubled since
//! the last one, so its cost is amortised.
//!
//! # Recovery (`open`) and why a crash anywhere is safe
//!
//! `open` creates the directory if needed (syncing its parent), removes `wal.tmp`, reads `wal`
//! (creating an empty one — via `wal.tmp`, `fsync`, rename, directory `fsync` — if there is
//! none) and replays its records through
//! `DurableState::apply`, with each `SnapRef` standing in for the snapshot's data. `apply`
//! alone decides whether a record's snapshot replaces the one held, so after the replay the
//! state's snapshot is the reference to the snapshot the acknowledged batches left in force.
//! Then the reference is resolved: `snapshot` must match it exactly (index, term, length and
//! CRC); if it does not but `snapshot.tmp` does, the crash came between steps 2 and 3 and the
//! rename is finished now. Only after everything checked out is a damaged last record cut
//! off and `snapshot.tmp` removed.
//!
//! The log's contents are the truth; the snapshot file is only ever the one the log names.
//! Crash points:
//!
//! - *During an append* (no snapshot, or step 2): the log may end in a damaged record (see
//!   below), which is cut off: the state before the batch, which was not acknowledged.
//! - *During or after step 1, before step 2 is durable*: the log does not name the new
//!   snapshot; `snapshot` is the old one and matches; `snapshot.tmp` is ignored and removed.
//! - *Between steps 2 and 3*: the log names the new snapshot, `snapshot` is the old one, and
//!   `snapshot.tmp` (its data and its directory entry synced in step 1) matches: renamed into
//!   place. The state after the batch.
//! - *Between steps 3 and 5*: `snapshot` is the new one; `wal` is the old log, which still
//!   holds the entries up to the snapshot index *and* the batch's record after them. Replaying
//!   it applies the batch's snapshot after those entries, so `apply`'s snapshot rule drops
//!   them (or, if the entry at the snapshot index has another term, the whole log) exactly as
//!   it did in memory. This is why the batch's record is appended before the snapshot file is
//!   renamed: the log never names a snapshot that is not on disk (as `snapshot`, or until
//!   step 3 as `snapshot.tmp`), and `snapshot` never holds a snapshot the log does not name
//!   yet — which would be a batch recovered in part. The state after the batch.
//! - *After step 5*: the compacted log replays to the same state in fewer records.
//! - *During a compaction without a snapshot*: `wal.tmp` is discarded; `wal` is complete.
//!
//! Renames are atomic, and the directory `fsync`s make them durable before the next step (so
//! a crash cannot undo step 3 while keeping step 5, for instance).
//!
//! # Torn tails versus corruption
//!
//! Every append is followed by its `fdatasync` before anything else is written to the log, so
//! at any instant at most **one** record — the last — can be unsynced, and a crash can damage
//! nothing else. What it can do to that record depends on the disk: leave a prefix of it
//! (torn at a sector boundary, header included), leave its full length with zeros where the
//! data never arrived (the size reached the disk first), or leave flipped bits in it. The
//! reader therefore decides by *position*, not by the kind of damage. The first record that
//! fails any check — incomplete header, header checksum mismatch, length above
//! [`WalStorage::MAX_RECORD_LEN`], payload shorter than its length, payload checksum mismatch,
//! a payload that does not decode (or has bytes left over), entries that cannot follow the
//! state (a gap, non-consecutive indexes, an index at or below the snapshot) — is
//!
//! - **the damaged last record**, cut off at the end of the last good record (with a
//!   `tracing` warning naming the file, the offset and the reason), if nothing follows it:
//!   when its header is intact, no byte lies past the end that header gives; when its header
//!   is damaged (so its length cannot be trusted), no intact record — header and payload
//!   checksums good — starts anywhere after it. This is the mark of a crash during an append:
//!   that batch was never acknowledged, and the recovered state is the one before it.
//! - **corruption** otherwise ([`StorageError::Corrupt`] naming the file, the record's offset
//!   and what is wrong): damage with an intact record (or, past an intact header's end, any
//!   bytes) after it was not made by a crash during the last append. Nothing after it is
//!   trusted, nothing is silently dropped; `open` refuses and leaves the files alone.
//!
//! *What this gives up.* A crash and bit rot cannot be told apart in the last record: if an
//! already-synced, acknowledged final record later rots, it is cut off as if it had been torn,
//! and that batch is lost (loudly, in the log). So is a final record written wrong by a bug
//! but with good checksums. And a torn last record whose damaged header is followed, inside
//! its own payload, by bytes that happen to form a complete framed record (entry data that
//! embeds a WAL record) is taken for corruption, and `open` refuses. A later revision may
//! narrow the first case the way etcd does (a torn write leaves zeroed sectors; a flipped bit
//! in an otherwise complete record does not).
//!
//! Other files are never torn by a crash — the log is created whole via `wal.tmp`, a snapshot
//! file is synced before anything names it — so any damage there is [`StorageError::Corrupt`]:
//! a log with a short or bad magic; a snapshot file with a bad magic, header CRC, length or
//! data CRC; a log that names a snapshot no file holds; a `snapshot` file when the log names
//! none or no `wal` at all.
//!
//! Nothing read from disk can make `open` panic: lengths are checked against the bytes
//! actually present (nothing is allocated on the word of a length field), decode errors and
//! records that break the batch contract are damage as above.
//!
//! # Guarantees
//!
//! - When `persist` returns `Ok`, the batch survives a crash (given a disk that honours
//!   `fsync`). A batch that was not acknowledged is recovered entirely or not at all, and
//!   only after every batch acknowledged before it: `open` yields the state after some prefix
//!   of the batches given, containing at least every acknowledged one.
//! - `open` never returns a state built from a record or snapshot that failed its checks.
//! - After `persist` returns `Err` the storage is *poisoned*: the in-memory state may be ahead
//!   of the disk (after a failed `fsync` nobody knows what the disk holds), so every later
//!   `persist` fails too. Stop the node; `open` the directory again to see what survived.
//! - A batch whose record would exceed [`WalStorage::MAX_RECORD_LEN`] is refused with an
//!   `InvalidInput` I/O error before anything changes (the storage is not poisoned).
//! - One `WalStorage` per directory at a time; this is not enforced.
//!
//! [`WalStorage::raft_state_size`] is the length of the `wal` file in bytes, framing and
//! superseded records included: it drops to about the size of the live state after every
//! snapshot (and every compaction), which is what services watching `maxraftstate` need.

use std::io::{self, BufWriter, Write};
use std::path::{Path, PathBuf};

use flotilla_raft::{Entry, HardState, Index, Snapshot, Term};
use serde::{Deserialize, Serialize};

use crate::fs::{EntryKind, FileSystem, StdFs, WritableFile};
use crate::{DurableState, Persist, Storage, StorageError};

/// See [`WalStorage::MAX_RECORD_LEN`].
const MAX_RECORD_LEN: usize = 64 << 20;

const WAL_FILE: &str = "wal";
const WAL_TMP: &str = "wal.tmp";
const SNAPSHOT_FILE: &str = "snapshot";
const SNAPSHOT_TMP: &str = "snapshot.tmp";

/// `FLOTWAL` and the format version ([`crate::format::VERSION`]).
const WAL_MAGIC: &[u8; 8] = b"FLOTWAL2";
const WAL_MAGIC_PREFIX: &[u8; 7] = b"FLOTWAL";
const SNAPSHOT_MAGIC: &[u8; 8] = b"FLOTSNP1";
const RECORD_HEADER_LEN: usize = 12;
const SNAPSHOT_HEADER_LEN: usize = 40;

/// Target payload size of the entry records in a compacted log.
const COMPACT_CHUNK: usize = 4 << 20;
/// Below this size the log is never compacted for garbage alone.
const MIN_GARBAGE_COMPACT_LEN: u64 = 1 << 20;

/// Names a snapshot's contents without carrying them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
struct SnapRef {
    index: Index,
    term: Term,
    len: u64,
    crc: u32,
}

impl SnapRef {
    fn of(snapshot: &Snapshot) -> SnapRef {
        SnapRef {
            index: snapshot.index,
            term: snapshot.term,
            len: snapshot.data.len() as u64,
            crc: crc32fast::hash(&snapshot.data),
        }
    }

    /// The snapshot that stands in for the real one during replay: same index and term (all
    /// `DurableState::apply` looks at), the encoded reference as its data.
    fn placeholder(&self) -> Snapshot {
        Snapshot {
            index: self.index,
            term: self.term,
            data: postcard::to_stdvec(self).expect("encoding a SnapRef cannot fail"),
        }
    }
}

impl From<SnapRef> for crate::format::SnapshotRef {
    fn from(s: SnapRef) -> Self {
        crate::format::SnapshotRef {
            index: s.index,
            term: s.term,
            len: s.len,
            crc: s.crc,
        }
    }
}

impl From<crate::format::SnapshotRef> for SnapRef {
    fn from(s: crate::format::SnapshotRef) -> Self {
        SnapRef {
            index: s.index,
            term: s.term,
            len: s.len,
            crc: s.crc,
        }
    }
}

/// One log record as written: a `Persist` batch with its snapshot replaced by a reference.
struct RecordOut<'a> {
    hard_state: Option<HardState>,
    snapshot: Option<SnapRef>,
    entries: &'a [Entry],
}

/// One log record as read back.
#[derive(Debug)]
struct RecordIn {
    hard_state: Option<HardState>,
    snapshot: Option<SnapRef>,
    entries: Vec<Entry>,
}

/// Where a test makes `persist` stop, as if the process had died there.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum CrashPoint {
    /// Step 1 done: `snapshot.tmp` written and synced, its directory entry too.
    SnapshotTmpSynced,
    /// Step 2 done: the batch's record is in the log (the commit point).
    RecordAppended,
    /// Step 3 done: `snapshot` is the new snapshot, the log is not compacted yet.
    SnapshotRenamed,
    /// Step 4 done: `wal.tmp` written and synced, not renamed.
    CompactedLogSynced,
}

/// Raft's durable state in a directory: a CRC-checked write-ahead log and a snapshot file.
/// See the module docs for the format and the crash-safety argument.
///
/// `F` is the file system it lives on: the real one by default, or any [`FileSystem`] (the
/// simulator's, with the `sim` feature) through [`WalStorage::open_with`].
#[derive(Debug)]
pub struct WalStorage<F: FileSystem = StdFs> {
    fs: F,
    dir: PathBuf,
    state: DurableState,
    /// The reference to `state.snapshot` as the log records it; `None` while no snapshot
    /// was ever installed.
    snap_ref: Option<SnapRef>,
    /// `wal`, opened for appending.
    wal: F::File,
    /// Length of `wal` in bytes.
    wal_len: u64,
    /// Log length at which to check next whether a compaction is worth it.
    compact_check_at: u64,
    poisoned: bool,
    /// The data directory's lock, held while open (on the real file system).
    _lock: Option<crate::DirLock>,
    #[cfg(test)]
    crash_at: Option<CrashPoint>,
    #[cfg(test)]
    min_garbage_compact_len: u64,
}

impl WalStorage {
    /// The largest record payload the log accepts, in bytes (64 MiB). A batch whose record
    /// would be larger is refused by `persist`; a record header claiming more is corruption.
    pub const MAX_RECORD_LEN: usize = MAX_RECORD_LEN;

    /// Opens the storage in `dir` on the real file system, creating the directory and an
    /// empty log if missing, and recovers the durable state (see the module docs). Returns
    /// [`StorageError::Corrupt`] if anything on disk fails its checks other than a damaged
    /// last record, which is cut off. The directory is locked for this process first
    /// ([`crate::DirLock`]): a second open gets [`StorageError::Locked`] naming the holder.
    pub fn open(dir: impl AsRef<Path>) -> Result<WalStorage, StorageError> {
        let dir = dir.as_ref();
        create_dir_durably(&StdFs, dir)?;
        let lock = crate::DirLock::acquire(dir)?;
        let mut wal = WalStorage::open_with(StdFs, dir)?;
        wal._lock = Some(lock);
        Ok(wal)
    }
}

impl<F: FileSystem> WalStorage<F> {
    /// [`WalStorage::open`] on the file system `fs`.
    pub fn open_with(fs: F, dir: impl AsRef<Path>) -> Result<WalStorage<F>, StorageError> {
        let dir = dir.as_ref().to_path_buf();
        create_dir_durably(&fs, &dir)?;
        remove_if_exists(&fs, &dir.join(WAL_TMP))?;

        let wal_path = dir.join(WAL_FILE);
        let bytes = match fs.read(&wal_path) {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                let snapshot_path = dir.join(SNAPSHOT_FILE);
                if exists(&fs, &snapshot_path)? {
                    return Err(corrupt(
                        "directory",
                        &wal_path,
                        0,
                        "a snapshot file but no log: the hard state is lost".into(),
                    ));
                }
                write_file_atomically(&fs, &dir, WAL_FILE, WAL_MAGIC)?;
                WAL_MAGIC.to_vec()
            }
            Err(e) => return Err(io_err(&wal_path)(e)),
        };

        let Replay {
            mut state,
            good_len,
            damage,
        } = replay(&wal_path, &bytes)?;
        let (snap_ref, roll_forward) = resolve_snapshot(&fs, &dir, &mut state)?;

        // Everything checked out: now repair what the crash left behind.
        if roll_forward {
            let from = dir.join(SNAPSHOT_TMP);
            fs.rename(&from, &dir.join(SNAPSHOT_FILE))
                .map_err(io_err(&from))?;
            sync_dir(&fs, &dir)?;
        } else {
            remove_if_exists(&fs, &dir.join(SNAPSHOT_TMP))?;
        }
        let mut wal = fs.open_append(&wal_path).map_err(io_err(&wal_path))?;
        if let Some(reason) = damage {
            tracing::warn!(
                file = %wal_path.display(),
                offset = good_len,
                cut = bytes.len() as u64 - good_len,
                "cutting off the damaged last record of the log (a crash during its append): {reason}"
            );
            wal.set_len(good_len).map_err(io_err(&wal_path))?;
            wal.sync_all().map_err(io_err(&wal_path))?;
        }

        Ok(WalStorage {
            fs,
            dir,
            state,
            snap_ref,
            wal,
            wal_len: good_len,
            compact_check_at: MIN_GARBAGE_COMPACT_LEN.max(2 * good_len),
            poisoned: false,
            _lock: None,
            #[cfg(test)]
            crash_at: None,
            #[cfg(test)]
            min_garbage_compact_len: MIN_GARBAGE_COMPACT_LEN,
        })
    }

    /// The directory this storage lives in.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn wal_path(&self) -> PathBuf {
        self.dir.join(WAL_FILE)
    }

    /// Writes a batch already applied to `self.state`; `record` is its framed record and
    /// `snap_ref` the reference to its snapshot, if any.
    fn persist_inner(
        &mut self,
        batch: &Persist,
        record: &[u8],
        snap_ref: Option<SnapRef>,
    ) -> Result<(), StorageError> {
        // `apply` installed the batch's snapshot iff the state now holds it (if it already
        // held an equal one, writing it again is harmless).
        let installed = batch
            .snapshot
            .as_ref()
            .is_some_and(|s| self.state.snapshot == *s);
        if let (true, Some(snap_ref)) = (installed, snap_ref) {
            // Step 1.
            let path = self.dir.join(SNAPSHOT_TMP);
            let mut file = self.fs.create(&path).map_err(io_err(&path))?;
            file.write_all(&encode_snapshot_header(&snap_ref))
                .and_then(|()| file.write_all(&self.state.snapshot.data))
                .and_then(|()| file.sync_all())
                .map_err(io_err(&path))?;
            drop(file);
            // The log is about to name this file: its directory entry must be durable first,
            // or a crash could leave a log naming a snapshot no directory holds.
            sync_dir(&self.fs, &self.dir)?;
            self.crash_point(CrashPoint::SnapshotTmpSynced)?;
            // Step 2: the commit point.
            self.append(record)?;
            self.crash_point(CrashPoint::RecordAppended)?;
            // Step 3.
            let from = self.dir.join(SNAPSHOT_TMP);
            self.fs
                .rename(&from, &self.dir.join(SNAPSHOT_FILE))
                .map_err(io_err(&from))?;
            sync_dir(&self.fs, &self.dir)?;
            self.crash_point(CrashPoint::SnapshotRenamed)?;
            // Steps 4 and 5.
            self.snap_ref = Some(snap_ref);
            self.compact()?;
        } else {
            self.append(record)?;
            if self.wal_len >= self.compact_check_at {
                if self.wal_len > 2 * estimated_live_len(&self.state) {
                    self.compact()?;
                }
                self.compact_check_at = self.min_garbage_compact_len().max(2 * self.wal_len);
            }
        }
        Ok(())
    }

    /// Appends one framed record to the log and syncs it: one `write`, one `fdatasync`.
    fn append(&mut self, record: &[u8]) -> Result<(), StorageError> {
        let path = self.wal_path();
        self.wal.write_all(record).map_err(io_err(&path))?;
        self.wal.sync_data().map_err(io_err(&path))?;
        self.wal_len += record.len() as u64;
        Ok(())
    }

    /// Rewrites the log as the shortest replay of the current state (steps 4 and 5).
    fn compact(&mut self) -> Result<(), StorageError> {
        let tmp = self.dir.join(WAL_TMP);
        let file = self.fs.create(&tmp).map_err(io_err(&tmp))?;
        let mut out = BufWriter::new(file);
        let mut len = 0u64;
        let mut write = |bytes: &[u8]| -> Result<(), StorageError> {
            out.write_all(bytes).map_err(io_err(&tmp))?;
            len += bytes.len() as u64;
            Ok(())
        };
        write(WAL_MAGIC)?;
        // The first record sets the hard state and the snapshot (which, applied to the empty
        // state, clears the log); then the entries follow in chunks. Each chunk holds at most
        // COMPACT_CHUNK bytes or a single entry, which fitted in its own batch's record, so no
        // chunk can exceed MAX_RECORD_LEN.
        write(&frame(
            &tmp,
            &RecordOut {
                hard_state: Some(self.state.hard_state),
                snapshot: self.snap_ref,
                entries: &[],
            },
        )?)?;
        let entries = &self.state.entries;
        let mut start = 0;
        let mut chunk_len = 0;
        for (i, entry) in entries.iter().enumerate() {
            let entry_len = crate::format::entry_size(entry);
            if i > start && chunk_len + entry_len > COMPACT_CHUNK {
                write(&frame(
                    &tmp,
                    &RecordOut {
                        hard_state: None,
                        snapshot: None,
                        entries: &entries[start..i],
                    },
                )?)?;
                start = i;
                chunk_len = 0;
            }
            chunk_len += entry_len;
        }
        if start < entries.len() {
            write(&frame(
                &tmp,
                &RecordOut {
                    hard_state: None,
                    snapshot: None,
                    entries: &entries[start..],
                },
            )?)?;
        }
        let mut file = out.into_inner().map_err(|e| io_err(&tmp)(e.into_error()))?;
        file.sync_all().map_err(io_err(&tmp))?;
        drop(file);
        self.crash_point(CrashPoint::CompactedLogSynced)?;

        let wal_path = self.wal_path();
        self.fs.rename(&tmp, &wal_path).map_err(io_err(&tmp))?;
        sync_dir(&self.fs, &self.dir)?;
        self.wal = self.fs.open_append(&wal_path).map_err(io_err(&wal_path))?;
        self.wal_len = len;
        self.compact_check_at = self.min_garbage_compact_len().max(2 * len);
        Ok(())
    }

    #[cfg(test)]
    fn crash_point(&self, point: CrashPoint) -> Result<(), StorageError> {
        if self.crash_at == Some(point) {
            return Err(io_err(&self.dir)(io::Error::other(format!(
                "simulated crash {point:?}"
            ))));
        }
        Ok(())
    }

    #[cfg(not(test))]
    #[inline(always)]
    fn crash_point(&self, _point: CrashPoint) -> Result<(), StorageError> {
        Ok(())
    }

    #[cfg(test)]
    fn min_garbage_compact_len(&self) -> u64 {
        self.min_garbage_compact_len
    }

    #[cfg(not(test))]
    fn min_garbage_compact_len(&self) -> u64 {
        MIN_GARBAGE_COMPACT_LEN
    }
}

impl<F: FileSystem> Storage for WalStorage<F> {
    fn persist(&mut self, batch: &Persist) -> Result<(), StorageError> {
        if self.poisoned {
            return Err(io_err(&self.dir)(io::Error::other(
                "an earlier persist failed; reopen the storage to learn what is on disk",
            )));
        }
        if batch.is_empty() {
            return Ok(());
        }
        // Encode first: a batch too large for one record is refused before anything changes.
        let snap_ref = batch.snapshot.as_ref().map(SnapRef::of);
        let record = frame(
            &self.wal_path(),
            &RecordOut {
                hard_state: batch.hard_state,
                snapshot: snap_ref,
                entries: &batch.entries,
            },
        )?;
        // What applying the batch replaces, to put back if it does not become durable: after
        // a failed write or sync `durable_state` reports only what was synced.
        let undo = Undo::capture(&self.state, batch);
        // Panics on a contract violation, before anything reaches the disk.
        self.state.apply(batch);
        self.poisoned = true;
        if let Err(e) = self.persist_inner(batch, &record, snap_ref) {
            undo.restore(&mut self.state);
            return Err(e);
        }
        self.poisoned = false;
        Ok(())
    }

    fn durable_state(&self) -> &DurableState {
        &self.state
    }

    /// The length of the `wal` file in bytes (framing and superseded records included; the
    /// snapshot file is not counted). It drops to about the live state's size at every
    /// snapshot.
    fn raft_state_size(&self) -> u64 {
        self.wal_len
    }
}

/// Encodes `record` and frames it: `[len][crc][header_crc][payload]`. Fails (with an
/// `InvalidInput` I/O error) if the payload would exceed `MAX_RECORD_LEN`.
fn frame(path: &Path, record: &RecordOut<'_>) -> Result<Vec<u8>, StorageError> {
    let too_large = |detail: String| StorageError::Io {
        path: path.to_path_buf(),
        source: io::Error::new(io::ErrorKind::InvalidInput, detail),
    };
    let mut buf = vec![0u8; RECORD_HEADER_LEN];
    crate::format::encode(
        &mut buf,
        record.hard_state,
        record.snapshot.map(Into::into),
        record.entries,
    );
    let payload_len = buf.len() - RECORD_HEADER_LEN;
    if payload_len > MAX_RECORD_LEN {
        return Err(too_large(format!(
            "record of {payload_len} bytes exceeds the maximum of {MAX_RECORD_LEN}"
        )));
    }
    let crc = crc32fast::hash(&buf[RECORD_HEADER_LEN..]);
    buf[0..4].copy_from_slice(&(payload_len as u32).to_le_bytes());
    buf[4..8].copy_from_slice(&crc.to_le_bytes());
    let header_crc = crc32fast::hash(&buf[0..8]);
    buf[8..12].copy_from_slice(&header_crc.to_le_bytes());
    Ok(buf)
}

/// What applying one batch to the state replaces (see `persist`).
enum Undo {
    /// A batch with a snapshot (rare): the whole state before it.
    Whole(Box<DurableState>),
    /// Entries and hard state: the old hard state, and the stored entries from the batch's
    /// first index on, which the batch replaced.
    Suffix {
        hard_state: HardState,
        keep: usize,
        replaced: Vec<Entry>,
    },
}

impl Undo {
    fn capture(state: &DurableState, batch: &Persist) -> Undo {
        if batch.snapshot.is_some() {
            return Undo::Whole(Box::new(state.clone()));
        }
        let keep = batch.entries.first().map_or(state.entries.len(), |e| {
            (e.index.saturating_sub(state.snapshot.index + 1) as usize).min(state.entries.len())
        });
        Undo::Suffix {
            hard_state: state.hard_state,
            keep,
            replaced: state.entries[keep..].to_vec(),
        }
    }

    fn restore(self, state: &mut DurableState) {
        match self {
            Undo::Whole(before) => *state = *before,
            Undo::Suffix {
                hard_state,
                keep,
                replaced,
            } => {
                state.entries.truncate(keep);
                state.entries.extend(replaced);
                state.hard_state = hard_state;
            }
        }
    }
}

/// Checks the log's header: `FLOTWAL` and a format version this code reads.
fn check_magic(path: &Path, bytes: &[u8]) -> Result<(), StorageError> {
    if bytes.len() < WAL_MAGIC.len() || &bytes[..WAL_MAGIC_PREFIX.len()] != WAL_MAGIC_PREFIX {
        return Err(corrupt("log header", path, 0, "bad magic".into()));
    }
    let version = bytes[WAL_MAGIC_PREFIX.len()];
    if &bytes[..WAL_MAGIC.len()] != WAL_MAGIC {
        return Err(corrupt(
            "log header",
            path,
            0,
            format!(
                "format version {:?}, this build reads version {}",
                version as char,
                crate::format::VERSION
            ),
        ));
    }
    Ok(())
}

/// A replayed log.
#[derive(Debug)]
struct Replay {
    /// The state the good records produce (with placeholder snapshot data).
    state: DurableState,
    /// Length of the good prefix: the magic and the good records.
    good_len: u64,
    /// Why the bytes after `good_len`, if any, are a damaged last record to cut off.
    damage: Option<String>,
}

/// A record that failed its checks at some offset.
struct Damage {
    what: &'static str,
    detail: String,
    /// Where the record ends by its (intact) header; `None` when the header itself is
    /// damaged or incomplete, so nobody knows.
    end: Option<usize>,
}

/// Replays the log in `bytes`. The first record that fails any check ends the replay: if it
/// is the last thing in the log (see the module docs: nothing follows it by its own header,
/// or, if its header is damaged, no intact record starts anywhere after it) it is a crash
/// during its append and is reported in `damage`, to be cut off; otherwise the log is
/// corrupt.
fn replay(path: &Path, bytes: &[u8]) -> Result<Replay, StorageError> {
    // The log is always created whole (via a temp file and a rename), so a short or wrong
    // magic is damage, not a torn write.
    check_magic(path, bytes)?;
    let mut state = DurableState::default();
    let mut offset = WAL_MAGIC.len();
    while offset < bytes.len() {
        let damage = match read_record(bytes, offset) {
            Ok((record, end)) => match apply_record(&mut state, record) {
                Ok(()) => {
                    offset = end;
                    continue;
                }
                Err(detail) => Damage {
                    what: "record",
                    detail,
                    end: Some(end),
                },
            },
            Err(damage) => damage,
        };
        let at = offset as u64;
        let followed_by = match damage.end {
            Some(end) if end < bytes.len() => {
                Some(format!("{} more bytes follow it", bytes.len() - end))
            }
            Some(_) => None,
            None => intact_record_after(bytes, offset)
                .map(|next| format!("an intact record follows at byte {next}")),
        };
        return match followed_by {
            Some(follows) => Err(corrupt(
                damage.what,
                path,
                at,
                format!("{}; {follows}, so this is no torn append", damage.detail),
            )),
            None => Ok(Replay {
                state,
                good_len: at,
                damage: Some(format!("{} at byte {at}: {}", damage.what, damage.detail)),
            }),
        };
    }
    Ok(Replay {
        state,
        good_len: offset as u64,
        damage: None,
    })
}

/// Reads and decodes the record at `offset` (which is inside `bytes`). Returns it and the
/// offset after it.
fn read_record(bytes: &[u8], offset: usize) -> Result<(RecordIn, usize), Damage> {
    let rest = &bytes[offset..];
    let unknown_end = |what, detail: &str| Damage {
        what,
        detail: detail.to_string(),
        end: None,
    };
    if rest.len() < RECORD_HEADER_LEN {
        return Err(unknown_end(
            "record header",
            &format!("only {} of its {RECORD_HEADER_LEN} bytes", rest.len()),
        ));
    }
    let header = &rest[..RECORD_HEADER_LEN];
    let len = u32::from_le_bytes(header[0..4].try_into().expect("4 bytes")) as usize;
    let crc = u32::from_le_bytes(header[4..8].try_into().expect("4 bytes"));
    let header_crc = u32::from_le_bytes(header[8..12].try_into().expect("4 bytes"));
    if crc32fast::hash(&header[0..8]) != header_crc {
        return Err(unknown_end("record header", "header checksum mismatch"));
    }
    if len > MAX_RECORD_LEN {
        return Err(unknown_end(
            "record header",
            &format!("length {len} exceeds the maximum {MAX_RECORD_LEN}"),
        ));
    }
    let end = offset + RECORD_HEADER_LEN + len;
    let damaged = |detail: String| Damage {
        what: "record",
        detail,
        end: Some(end),
    };
    if rest.len() - RECORD_HEADER_LEN < len {
        return Err(damaged(format!(
            "payload of {len} bytes, only {} present",
            rest.len() - RECORD_HEADER_LEN
        )));
    }
    let payload = &rest[RECORD_HEADER_LEN..RECORD_HEADER_LEN + len];
    if crc32fast::hash(payload) != crc {
        return Err(damaged("payload checksum mismatch".into()));
    }
    match crate::format::decode(payload) {
        Ok(record) => Ok((
            RecordIn {
                hard_state: record.hard_state,
                snapshot: record.snapshot.map(Into::into),
                entries: record.entries,
            },
            end,
        )),
        Err(e) => Err(damaged(format!("decode error: {e}"))),
    }
}

/// The offset of the first intact record (header and payload checksums good) that starts
/// after `offset`, if any. Only called on a damaged log, to tell a torn last record from
/// damage in the middle.
fn intact_record_after(bytes: &[u8], offset: usize) -> Option<usize> {
    (offset + 1..bytes.len().saturating_sub(RECORD_HEADER_LEN - 1)).find(|&at| {
        let header = &bytes[at..at + RECORD_HEADER_LEN];
        let len = u32::from_le_bytes(header[0..4].try_into().expect("4 bytes")) as usize;
        let payload_end = at + RECORD_HEADER_LEN + len;
        len <= MAX_RECORD_LEN
            && payload_end <= bytes.len()
            && crc32fast::hash(&header[0..8])
                == u32::from_le_bytes(header[8..12].try_into().expect("4 bytes"))
            && crc32fast::hash(&bytes[at + RECORD_HEADER_LEN..payload_end])
                == u32::from_le_bytes(header[4..8].try_into().expect("4 bytes"))
    })
}

/// Applies one record read from disk, or leaves `state` as it was and says why the record
/// cannot follow it. The batch is split in two — its snapshot, then its entries and hard
/// state — which is what `DurableState::apply` does in sequence anyway; in between, the
/// entries are checked against the state so that `apply`'s contract assertions cannot fire
/// on bad input.
fn apply_record(state: &mut DurableState, record: RecordIn) -> Result<(), String> {
    match record.snapshot {
        // Rare (the first record of a compacted log, on the empty state, or the record of
        // a batch whose compaction a crash cut short): apply it to a copy, so that a record
        // refused below leaves the state as it was.
        Some(snap_ref) => {
            let mut next = state.clone();
            next.apply(&Persist {
                snapshot: Some(snap_ref.placeholder()),
                ..Persist::default()
            });
            apply_entries_and_hard_state(&mut next, record.entries, record.hard_state)?;
            *state = next;
            Ok(())
        }
        None => apply_entries_and_hard_state(state, record.entries, record.hard_state),
    }
}

fn apply_entries_and_hard_state(
    state: &mut DurableState,
    entries: Vec<Entry>,
    hard_state: Option<HardState>,
) -> Result<(), String> {
    if let (Some(first), Some(last)) = (entries.first(), entries.last()) {
        if first.index <= state.snapshot.index {
            return Err(format!(
                "entry {} at or below the snapshot index {}",
                first.index, state.snapshot.index
            ));
        }
        if first.index > state.last_index().saturating_add(1) {
            return Err(format!(
                "gap: entry {} after last index {}",
                first.index,
                state.last_index()
            ));
        }
        if let Some(pair) = entries
            .windows(2)
            .find(|pair| pair[0].index.checked_add(1) != Some(pair[1].index))
        {
            return Err(format!(
                "entries not consecutive: {} then {}",
                pair[0].index, pair[1].index
            ));
        }
        if last.index == Index::MAX {
            return Err("entry index out of range".into());
        }
    }
    state.apply(&Persist {
        hard_state,
        snapshot: None,
        entries,
    });
    Ok(())
}

/// Replaces the placeholder in `state.snapshot` by the snapshot file it names. Returns the
/// reference and whether `snapshot.tmp` holds it (so it must be renamed into place).
fn resolve_snapshot<F: FileSystem>(
    fs: &F,
    dir: &Path,
    state: &mut DurableState,
) -> Result<(Option<SnapRef>, bool), StorageError> {
    let snapshot_path = dir.join(SNAPSHOT_FILE);
    if state.snapshot.data.is_empty() {
        // No record ever named a snapshot (a placeholder is never empty).
        if exists(fs, &snapshot_path)? {
            return Err(corrupt(
                "snapshot",
                &snapshot_path,
                0,
                "the log names no snapshot, yet a snapshot file exists".into(),
            ));
        }
        return Ok((None, false));
    }
    let wal_path = dir.join(WAL_FILE);
    let snap_ref: SnapRef = postcard::from_bytes(&state.snapshot.data).map_err(|e| {
        corrupt(
            "snapshot reference",
            &wal_path,
            0,
            format!("decode error: {e}"),
        )
    })?;
    let main = match read_snapshot(fs, &snapshot_path) {
        Ok(Some((found, snapshot))) if found == snap_ref => {
            state.snapshot = snapshot;
            return Ok((Some(snap_ref), false));
        }
        Ok(Some((found, _))) => corrupt(
            "snapshot",
            &snapshot_path,
            0,
            format!("holds {found:?}, the log names {snap_ref:?}"),
        ),
        Ok(None) => corrupt(
            "snapshot",
            &snapshot_path,
            0,
            format!("missing; the log names {snap_ref:?}"),
        ),
        Err(e @ StorageError::Corrupt { .. }) => e,
        Err(e) => return Err(e),
    };
    // A crash between the commit point and the rename leaves the named snapshot in the
    // temp file, which was synced before the commit. Anything else there is debris.
    if let Ok(Some((found, snapshot))) = read_snapshot(fs, &dir.join(SNAPSHOT_TMP)) {
        if found == snap_ref {
            state.snapshot = snapshot;
            return Ok((Some(snap_ref), true));
        }
    }
    Err(main)
}

fn encode_snapshot_header(snap_ref: &SnapRef) -> [u8; SNAPSHOT_HEADER_LEN] {
    let mut header = [0u8; SNAPSHOT_HEADER_LEN];
    header[0..8].copy_from_slice(SNAPSHOT_MAGIC);
    header[8..16].copy_from_slice(&snap_ref.index.to_le_bytes());
    header[16..24].copy_from_slice(&snap_ref.term.to_le_bytes());
    header[24..32].copy_from_slice(&snap_ref.len.to_le_bytes());
    header[32..36].copy_from_slice(&snap_ref.crc.to_le_bytes());
    let header_crc = crc32fast::hash(&header[0..36]);
    header[36..40].copy_from_slice(&header_crc.to_le_bytes());
    header
}

/// Reads and checks a snapshot file; `Ok(None)` if there is none.
fn read_snapshot<F: FileSystem>(
    fs: &F,
    path: &Path,
) -> Result<Option<(SnapRef, Snapshot)>, StorageError> {
    let mut bytes = match fs.read(path) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(io_err(path)(e)),
    };
    let bad = |offset: u64, detail: &str| corrupt("snapshot", path, offset, detail.into());
    if bytes.len() < SNAPSHOT_HEADER_LEN {
        return Err(bad(0, "shorter than its header"));
    }
    let header = &bytes[..SNAPSHOT_HEADER_LEN];
    if &header[0..8] != SNAPSHOT_MAGIC {
        return Err(bad(0, "bad magic"));
    }
    let u64_at = |at: usize| u64::from_le_bytes(header[at..at + 8].try_into().expect("8 bytes"));
    let u32_at = |at: usize| u32::from_le_bytes(header[at..at + 4].try_into().expect("4 bytes"));
    if crc32fast::hash(&header[0..36]) != u32_at(36) {
        return Err(bad(0, "header checksum mismatch"));
    }
    let snap_ref = SnapRef {
        index: u64_at(8),
        term: u64_at(16),
        len: u64_at(24),
        crc: u32_at(32),
    };
    let data_len = (bytes.len() - SNAPSHOT_HEADER_LEN) as u64;
    if snap_ref.len != data_len {
        return Err(bad(
            SNAPSHOT_HEADER_LEN as u64,
            &format!(
                "header says {} bytes of data, file has {data_len}",
                snap_ref.len
            ),
        ));
    }
    if crc32fast::hash(&bytes[SNAPSHOT_HEADER_LEN..]) != snap_ref.crc {
        return Err(bad(SNAPSHOT_HEADER_LEN as u64, "data checksum mismatch"));
    }
    bytes.drain(..SNAPSHOT_HEADER_LEN);
    let snapshot = Snapshot {
        index: snap_ref.index,
        term: snap_ref.term,
        data: bytes,
    };
    Ok(Some((snap_ref, snapshot)))
}

/// A rough upper bound of the bytes a compacted log of `state` takes.
fn estimated_live_len(state: &DurableState) -> u64 {
    let entries: usize = state.entries.iter().map(|e| e.data.len() + 30).sum();
    (entries + 128) as u64
}

/// Writes `path` from scratch and syncs it.
fn write_file_synced<F: FileSystem>(fs: &F, path: &Path, bytes: &[u8]) -> Result<(), StorageError> {
    let mut file = fs.create(path).map_err(io_err(path))?;
    file.write_all(bytes).map_err(io_err(path))?;
    file.sync_all().map_err(io_err(path))
}

/// Creates `dir/name` with `bytes` so that a crash leaves either no file or the whole one.
fn write_file_atomically<F: FileSystem>(
    fs: &F,
    dir: &Path,
    name: &str,
    bytes: &[u8],
) -> Result<(), StorageError> {
    let tmp = dir.join(format!("{name}.tmp"));
    write_file_synced(fs, &tmp, bytes)?;
    fs.rename(&tmp, &dir.join(name)).map_err(io_err(&tmp))?;
    sync_dir(fs, dir)
}

/// Makes creations, renames and removals in `dir` durable.
fn sync_dir<F: FileSystem>(fs: &F, dir: &Path) -> Result<(), StorageError> {
    fs.sync_dir(dir).map_err(io_err(dir))
}

/// Creates `dir` and any missing ancestors, syncing the parent of each one created so that
/// the directory itself survives a crash.
fn create_dir_durably<F: FileSystem>(fs: &F, dir: &Path) -> Result<(), StorageError> {
    match fs.kind(dir) {
        Ok(Some(EntryKind::Dir)) => return Ok(()),
        Ok(Some(EntryKind::File)) => {
            return Err(io_err(dir)(io::Error::new(
                io::ErrorKind::AlreadyExists,
                "not a directory",
            )))
        }
        Ok(None) => {}
        Err(e) => return Err(io_err(dir)(e)),
    }
    let parent = match dir.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => parent,
        _ => Path::new("."),
    };
    create_dir_durably(fs, parent)?;
    match fs.create_dir(dir) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(io_err(dir)(e)),
    }
    sync_dir(fs, parent)
}

fn exists<F: FileSystem>(fs: &F, path: &Path) -> Result<bool, StorageError> {
    fs.exists(path).map_err(io_err(path))
}

fn remove_if_exists<F: FileSystem>(fs: &F, path: &Path) -> Result<(), StorageError> {
    match fs.remove_file(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(io_err(path)(e)),
    }
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> StorageError + '_ {
    move |source| StorageError::Io {
        path: path.to_path_buf(),
        source,
    }
}

fn corrupt(what: &'static str, path: &Path, offset: u64, detail: String) -> StorageError {
    StorageError::Corrupt {
        what,
        path: path.to_path_buf(),
        offset,
        detail,
    }
}

#[cfg(test)]
mod tests {
    //! Crash points inside `persist`, which only a test hook can reach; everything else is
    //! tested through the public interface in `tests/wal.rs`.

    use super::*;
    use crate::MemStorage;
    use std::fs;

    fn entries(range: std::ops::RangeInclusive<u64>, term: u64) -> Vec<Entry> {
        range
            .map(|index| Entry {
                index,
                term,
                data: vec![index as u8; 3],
            })
            .collect()
    }

    fn snapshot(index: u64, term: u64) -> Snapshot {
        Snapshot {
            index,
            term,
            data: format!("snapshot {index}/{term}").into_bytes(),
        }
    }

    /// Entries 1..=6 (terms 1, 1, 2, 2, 2, 2) with a hard state; optionally an earlier
    /// snapshot at 2 already installed (so the crash replaces one snapshot by another).
    fn history(with_old_snapshot: bool) -> Vec<Persist> {
        let mut batches = vec![
            Persist {
                hard_state: Some(HardState {
                    term: 1,
                    vote: Some(1),
                }),
                entries: entries(1..=2, 1),
                ..Persist::default()
            },
            Persist {
                hard_state: Some(HardState {
                    term: 2,
                    vote: Some(2),
                }),
                entries: entries(3..=4, 2),
                ..Persist::default()
            },
        ];
        if with_old_snapshot {
            batches.push(Persist {
                snapshot: Some(snapshot(2, 1)),
                ..Persist::default()
            });
        }
        batches.push(Persist {
            entries: entries(5..=6, 2),
            ..Persist::default()
        });
        batches
    }

    /// Snapshot batches to crash in: one keeping the log after the snapshot, one (a new
    /// leader's InstallSnapshot with another term) discarding it, one with entries too.
    fn snapshot_batches() -> Vec<Persist> {
        vec![
            Persist {
                snapshot: Some(snapshot(4, 2)),
                ..Persist::default()
            },
            Persist {
                hard_state: Some(HardState {
                    term: 3,
                    vote: None,
                }),
                snapshot: Some(snapshot(5, 3)),
                ..Persist::default()
            },
            Persist {
                hard_state: Some(HardState {
                    term: 3,
                    vote: Some(3),
                }),
                snapshot: Some(snapshot(4, 2)),
                entries: entries(6..=8, 3),
            },
        ]
    }

    const CRASH_POINTS: [CrashPoint; 4] = [
        CrashPoint::SnapshotTmpSynced,
        CrashPoint::RecordAppended,
        CrashPoint::SnapshotRenamed,
        CrashPoint::CompactedLogSynced,
    ];

    /// Runs `history`, then `batch` with a crash at `point`; returns the directory and the
    /// states before and after the batch.
    fn crash_in(
        point: CrashPoint,
        history: &[Persist],
        batch: &Persist,
    ) -> (tempfile::TempDir, DurableState, DurableState) {
        let dir = tempfile::tempdir().unwrap();
        let mut mem = MemStorage::new();
        let mut wal = WalStorage::open(dir.path()).unwrap();
        for b in history {
            wal.persist(b).unwrap();
            mem.persist(b).unwrap();
        }
        let before = mem.durable_state().clone();
        mem.persist(batch).unwrap();
        wal.crash_at = Some(point);
        let err = wal.persist(batch).expect_err("the simulated crash");
        assert!(err.to_string().contains("simulated crash"), "{err}");
        // Poisoned: nothing more goes to disk from this instance.
        wal.crash_at = None;
        assert!(wal.persist(&history[0]).is_err());
        drop(wal);
        (dir, before, mem.durable_state().clone())
    }

    #[test]
    fn crash_at_any_step_of_a_snapshot_batch_recovers_a_whole_batch() {
        for with_old_snapshot in [false, true] {
            let history = history(with_old_snapshot);
            for batch in snapshot_batches() {
                for point in CRASH_POINTS {
                    let (dir, before, after) = crash_in(point, &history, &batch);
                    let context = format!("{point:?}, old snapshot {with_old_snapshot}, {batch:?}");
                    let mut wal =
                        WalStorage::open(dir.path()).unwrap_or_else(|e| panic!("{context}: {e}"));
                    let expected = if point == CrashPoint::SnapshotTmpSynced {
                        &before // not committed yet
                    } else {
                        &after
                    };
                    assert_eq!(wal.durable_state(), expected, "{context}");
                    for tmp in [WAL_TMP, SNAPSHOT_TMP] {
                        assert!(!dir.path().join(tmp).exists(), "{context}: {tmp} left");
                    }
                    // The directory is fully usable: another batch, another reopen.
                    let next = Persist {
                        entries: entries(expected.last_index() + 1..=expected.last_index() + 1, 9),
                        ..Persist::default()
                    };
                    let mut mem = MemStorage::from_state(expected.clone());
                    mem.persist(&next).unwrap();
                    wal.persist(&next).unwrap();
                    drop(wal);
                    let wal = WalStorage::open(dir.path()).unwrap();
                    assert_eq!(wal.durable_state(), mem.durable_state(), "{context}");
                }
            }
        }
    }

    /// The case the issue singles out: the new snapshot is renamed into place, the log is
    /// still the old one holding entries at and below the snapshot index.
    #[test]
    fn crash_between_snapshot_rename_and_log_rewrite() {
        let history = history(false);
        let batch = snapshot_batches().remove(0); // snapshot at 4, keeps 5..=6
        let (dir, _, after) = crash_in(CrashPoint::SnapshotRenamed, &history, &batch);

        // The files really are in the state described.
        let (snap_ref, on_disk) = read_snapshot(&StdFs, &dir.path().join(SNAPSHOT_FILE))
            .unwrap()
            .expect("snapshot renamed into place");
        assert_eq!(on_disk, snapshot(4, 2));
        assert_eq!(snap_ref, SnapRef::of(&on_disk));
        let log = fs::read(dir.path().join(WAL_FILE)).unwrap();
        let replayed = replay(Path::new("wal"), &log).unwrap().state;
        assert_eq!(replayed.entries, entries(5..=6, 2));
        let mut old_records = 0;
        let mut offset = WAL_MAGIC.len();
        while offset < log.len() {
            old_records += 1;
            let len = u32::from_le_bytes(log[offset..offset + 4].try_into().unwrap()) as usize;
            offset += RECORD_HEADER_LEN + len;
        }
        assert_eq!(old_records, history.len() + 1, "the log was not rewritten");

        let wal = WalStorage::open(dir.path()).unwrap();
        assert_eq!(wal.durable_state(), &after);
        assert_eq!(wal.durable_state().snapshot, snapshot(4, 2));
        assert_eq!(wal.durable_state().entries, entries(5..=6, 2));
    }

    /// Between the commit point and the rename the named snapshot is only in
    /// `snapshot.tmp`: `open` finishes the rename.
    #[test]
    fn crash_before_snapshot_rename_rolls_forward() {
        let history = history(true);
        let batch = snapshot_batches().remove(1);
        let (dir, _, after) = crash_in(CrashPoint::RecordAppended, &history, &batch);
        let (_, old) = read_snapshot(&StdFs, &dir.path().join(SNAPSHOT_FILE))
            .unwrap()
            .unwrap();
        assert_eq!(old, snapshot(2, 1));
        assert!(dir.path().join(SNAPSHOT_TMP).exists());

        let wal = WalStorage::open(dir.path()).unwrap();
        assert_eq!(wal.durable_state(), &after);
        let (_, now) = read_snapshot(&StdFs, &dir.path().join(SNAPSHOT_FILE))
            .unwrap()
            .unwrap();
        assert_eq!(now, snapshot(5, 3));
        assert!(!dir.path().join(SNAPSHOT_TMP).exists());

        // If snapshot.tmp is damaged as well, the named snapshot is nowhere: Corrupt.
        let (dir, _, _) = crash_in(CrashPoint::RecordAppended, &history, &batch);
        let tmp = dir.path().join(SNAPSHOT_TMP);
        let mut bytes = fs::read(&tmp).unwrap();
        *bytes.last_mut().unwrap() ^= 1;
        fs::write(&tmp, bytes).unwrap();
        assert!(matches!(
            WalStorage::open(dir.path()),
            Err(StorageError::Corrupt { .. })
        ));
    }

    #[test]
    fn garbage_is_compacted_away() {
        let dir = tempfile::tempdir().unwrap();
        let mut wal = WalStorage::open(dir.path()).unwrap();
        wal.min_garbage_compact_len = 4096;
        wal.compact_check_at = 4096;
        let mut mem = MemStorage::new();
        let mut peak = 0;
        for round in 0..2000u64 {
            // Elections without progress and an ever-rewritten suffix: all garbage.
            let batch = Persist {
                hard_state: Some(HardState {
                    term: round,
                    vote: Some(round % 3),
                }),
                entries: entries(1..=2, round),
                ..Persist::default()
            };
            wal.persist(&batch).unwrap();
            mem.persist(&batch).unwrap();
            peak = peak.max(wal.raft_state_size());
            assert_eq!(
                wal.raft_state_size(),
                fs::metadata(dir.path().join(WAL_FILE)).unwrap().len()
            );
        }
        // Without compaction the log would hold 2000 records (> 60 KB).
        assert!(peak <= 8192, "log grew to {peak}");
        drop(wal);
        let wal = WalStorage::open(dir.path()).unwrap();
        assert_eq!(wal.durable_state(), mem.durable_state());
    }

    #[test]
    fn compacted_log_splits_entries_into_bounded_records() {
        let dir = tempfile::tempdir().unwrap();
        let mut wal = WalStorage::open(dir.path()).unwrap();
        let mut mem = MemStorage::new();
        // 12 MiB of entries in batches of 1 MiB, then a snapshot keeping them all but one.
        for i in 0..12u64 {
            let batch = Persist {
                entries: vec![Entry {
                    index: i + 1,
                    term: 1,
                    data: vec![i as u8; 1 << 20],
                }],
                ..Persist::default()
            };
            wal.persist(&batch).unwrap();
            mem.persist(&batch).unwrap();
        }
        let batch = Persist {
            snapshot: Some(snapshot(1, 1)),
            ..Persist::default()
        };
        wal.persist(&batch).unwrap();
        mem.persist(&batch).unwrap();
        let log = fs::read(dir.path().join(WAL_FILE)).unwrap();
        let mut offset = WAL_MAGIC.len();
        let mut records = 0;
        while offset < log.len() {
            let len = u32::from_le_bytes(log[offset..offset + 4].try_into().unwrap()) as usize;
            assert!(len <= COMPACT_CHUNK + (1 << 20), "record of {len} bytes");
            offset += RECORD_HEADER_LEN + len;
            records += 1;
        }
        assert!(records >= 4, "{records} records");
        drop(wal);
        assert_eq!(
            WalStorage::open(dir.path()).unwrap().durable_state(),
            mem.durable_state()
        );
    }

    #[test]
    fn records_decode_as_written() {
        let entries = entries(3..=5, 2);
        let snap_ref = SnapRef::of(&snapshot(2, 1));
        let framed = frame(
            Path::new("wal"),
            &RecordOut {
                hard_state: Some(HardState {
                    term: 2,
                    vote: Some(1),
                }),
                snapshot: Some(snap_ref),
                entries: &entries,
            },
        )
        .unwrap();
        let Ok((record, end)) = read_record(&framed, 0) else {
            panic!("the record reads back")
        };
        assert_eq!(end, framed.len());
        assert_eq!(record.entries, entries);
        assert_eq!(record.snapshot, Some(snap_ref));
        assert_eq!(
            record.hard_state,
            Some(HardState {
                term: 2,
                vote: Some(1)
            })
        );
    }

    /// Records that pass their checksums but break the batch contract (which only a bug or
    /// an astronomically unlucky corruption could produce) are errors, not panics: `Corrupt`
    /// when an intact record follows, cut off like any damaged last record otherwise.
    #[test]
    fn contract_violations_on_disk_are_errors_not_panics() {
        let record = |snapshot: Option<SnapRef>, entries: &[Entry]| {
            frame(
                Path::new("wal"),
                &RecordOut {
                    hard_state: None,
                    snapshot,
                    entries,
                },
            )
            .unwrap()
        };
        // Trailing bytes after a well-formed payload.
        let mut trailing = record(None, &entries(1..=1, 1));
        trailing.push(0);
        let len = (trailing.len() - RECORD_HEADER_LEN) as u32;
        let crc = crc32fast::hash(&trailing[RECORD_HEADER_LEN..]);
        trailing[0..4].copy_from_slice(&len.to_le_bytes());
        trailing[4..8].copy_from_slice(&crc.to_le_bytes());
        let header_crc = crc32fast::hash(&trailing[0..8]);
        trailing[8..12].copy_from_slice(&header_crc.to_le_bytes());

        let good = record(None, &entries(1..=2, 1));
        let bad_records = [
            record(None, &entries(4..=5, 1)), // gap after the good record
            record(
                None,
                &[entries(3..=3, 1)[0].clone(), entries(5..=5, 1)[0].clone()],
            ), // not consecutive
            record(None, &entries(Index::MAX..=Index::MAX, 1)), // index out of range
            // Entries at or below a snapshot named in the same record.
            record(Some(SnapRef::of(&snapshot(3, 1))), &entries(3..=4, 1)),
            trailing,
        ];
        let intact_after = record(None, &entries(3..=3, 1));
        for (i, bad) in bad_records.iter().enumerate() {
            // Last in the log: cut off, the state is that of the good record alone.
            let log = [&WAL_MAGIC[..], &good, bad].concat();
            let replayed = replay(Path::new("wal"), &log).unwrap_or_else(|e| panic!("{i}: {e}"));
            assert_eq!(
                replayed.good_len,
                (WAL_MAGIC.len() + good.len()) as u64,
                "{i}"
            );
            assert!(replayed.damage.is_some(), "{i}");
            assert_eq!(replayed.state.entries, entries(1..=2, 1), "{i}");
            assert_eq!(
                replayed.state.snapshot.index, 0,
                "{i}: snapshot half-applied"
            );
            // Followed by an intact record: corrupt, naming the bad record's offset.
            let log = [&log[..], &intact_after].concat();
            match replay(Path::new("wal"), &log) {
                Err(StorageError::Corrupt { offset, .. }) => {
                    assert_eq!(offset, (WAL_MAGIC.len() + good.len()) as u64, "{i}")
                }
                other => panic!("{i}: expected Corrupt, got {other:?}"),
            }
        }
    }
}

/// One record of a log, as [`inspect`] reports it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RecordSummary {
    /// Byte offset of the record's header in the log.
    pub offset: u64,
    /// Length of the framed record in bytes.
    pub len: u64,
    /// First and last index of its entries, if it has any.
    pub entries: Option<(Index, Index)>,
    /// Its hard state's term and vote, if it carries one.
    pub hard_state: Option<HardState>,
    /// Index and term of the snapshot it names, if any.
    pub snapshot: Option<(Index, Term)>,
}

/// Where the good part of a log ends, and why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LogEnd {
    /// Every byte belongs to a good record.
    Clean,
    /// A damaged last record from `offset` on (a crash during its append): `open` cuts it
    /// off by itself.
    TornTail { offset: u64, detail: String },
    /// Damage at `offset` with more after it: `open` refuses to start; `repair` can cut the
    /// log there, losing what follows.
    Corrupt { offset: u64, detail: String },
}

/// What a data directory's log holds: `flotilla wal inspect`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Inspection {
    pub log: PathBuf,
    pub log_len: u64,
    pub records: Vec<RecordSummary>,
    /// Length of the good prefix (magic and good records).
    pub good_len: u64,
    pub end: LogEnd,
}

/// Reads the log of `dir` record by record without changing anything (and without the
/// directory lock: it can look at the log of a running node). Errors only when the log
/// cannot be read or lacks its header.
pub fn inspect(dir: impl AsRef<Path>) -> Result<Inspection, StorageError> {
    let log = dir.as_ref().join(WAL_FILE);
    let bytes = std::fs::read(&log).map_err(io_err(&log))?;
    check_magic(&log, &bytes)?;
    let mut records = Vec::new();
    let mut state = DurableState::default();
    let mut offset = WAL_MAGIC.len();
    let mut end = LogEnd::Clean;
    while offset < bytes.len() {
        let damage = match read_record(&bytes, offset) {
            Ok((record, next)) => {
                let summary = RecordSummary {
                    offset: offset as u64,
                    len: (next - offset) as u64,
                    entries: record
                        .entries
                        .first()
                        .zip(record.entries.last())
                        .map(|(a, b)| (a.index, b.index)),
                    hard_state: record.hard_state,
                    snapshot: record.snapshot.map(|s| (s.index, s.term)),
                };
                match apply_record(&mut state, record) {
                    Ok(()) => {
                        records.push(summary);
                        offset = next;
                        continue;
                    }
                    Err(detail) => Damage {
                        what: "record",
                        detail,
                        end: Some(next),
                    },
                }
            }
            Err(damage) => damage,
        };
        let follows = match damage.end {
            Some(next) => next < bytes.len(),
            None => intact_record_after(&bytes, offset).is_some(),
        };
        let detail = format!("{}: {}", damage.what, damage.detail);
        let offset = offset as u64;
        end = if follows {
            LogEnd::Corrupt { offset, detail }
        } else {
            LogEnd::TornTail { offset, detail }
        };
        break;
    }
    let good_len = match &end {
        LogEnd::Clean => bytes.len() as u64,
        LogEnd::TornTail { offset, .. } | LogEnd::Corrupt { offset, .. } => *offset,
    };
    Ok(Inspection {
        log,
        log_len: bytes.len() as u64,
        records,
        good_len,
        end,
    })
}

/// What [`repair`] did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Repair {
    /// Bytes cut off the log (0: nothing to repair).
    pub removed: u64,
    /// Where the removed bytes were saved.
    pub backup: Option<PathBuf>,
}

/// Cuts the log of `dir` at the end of its last good record (`flotilla wal repair`), after
/// saving the bytes it removes to `wal.removed-<offset>` in the same directory (synced
/// before the log is touched). Takes the directory lock: never while a node runs on it.
pub fn repair(dir: impl AsRef<Path>) -> Result<Repair, StorageError> {
    let dir = dir.as_ref();
    let _lock = crate::DirLock::acquire(dir)?;
    let found = inspect(dir)?;
    if found.good_len == found.log_len {
        return Ok(Repair {
            removed: 0,
            backup: None,
        });
    }
    let bytes = std::fs::read(&found.log).map_err(io_err(&found.log))?;
    let backup = dir.join(format!("{WAL_FILE}.removed-{}", found.good_len));
    let mut saved = StdFs.create(&backup).map_err(io_err(&backup))?;
    saved
        .write_all(&bytes[found.good_len as usize..])
        .and_then(|()| saved.sync_all())
        .map_err(io_err(&backup))?;
    drop(saved);
    sync_dir(&StdFs, dir)?;
    let log = std::fs::OpenOptions::new()
        .write(true)
        .open(&found.log)
        .map_err(io_err(&found.log))?;
    log.set_len(found.good_len)
        .and_then(|()| log.sync_all())
        .map_err(io_err(&found.log))?;
    Ok(Repair {
        removed: found.log_len - found.good_len,
        backup: Some(backup),
    })
}
