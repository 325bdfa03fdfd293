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
//!   1. write `snapshot.tmp` (header + data), `fsync` it;
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
//! rename is finished now. Only after everything checked out is a torn tail cut off and
//! `snapshot.tmp` removed.
//!
//! The log's contents are the truth; the snapshot file is only ever the one the log names.
//! Crash points:
//!
//! - *During an append* (no snapshot, or step 2): the log ends in a torn record (see below),
//!   which is discarded: the state before the batch, which was not acknowledged.
//! - *During or after step 1, before step 2 is durable*: the log does not name the new
//!   snapshot; `snapshot` is the old one and matches; `snapshot.tmp` is ignored and removed.
//! - *Between steps 2 and 3*: the log names the new snapshot, `snapshot` is the old one, and
//!   `snapshot.tmp` (synced in step 1) matches: renamed into place. The state after the batch.
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
//! A crash in the middle of an append leaves the log **truncated** inside its last record: a
//! record is appended at the end of the file by one `write_all`, and nothing after it is
//! written until it is synced, so a crash leaves a prefix of it. The reader therefore treats
//! as torn, discards and cuts off exactly: an incomplete record header at the end of the file,
//! or a header whose CRC is good but whose payload runs past the end of the file. Everything
//! else is [`StorageError::Corrupt`], detected and never applied:
//!
//! - a header CRC mismatch, a length above [`WalStorage::MAX_RECORD_LEN`], a payload CRC
//!   mismatch, a payload that does not decode (or has bytes left over), a record whose entries
//!   cannot follow the state (a gap, non-consecutive indexes, an index at or below the
//!   snapshot) — anywhere in the log, **including the last record**. *This is a choice:* a
//!   complete last record with a bad checksum could in principle be a torn write whose file
//!   size grew before its data reached the disk (garbage or zeros at the end), but file
//!   systems that write data before the size update (ext4 in its default `data=ordered` mode)
//!   do not produce that, while a flipped bit does, and the two cannot be told apart. Refusing
//!   to start is the answer that never applies wrong data nor silently drops an acknowledged
//!   batch; the operator can cut such a record off by hand. A zero-filled tail is treated
//!   the same way.
//! - a snapshot file with a bad magic, header CRC, length or data CRC; a log that names a
//!   snapshot no file holds; a `snapshot` file when the log names none or no `wal` at all.
//!
//! Nothing read from disk can make `open` panic: lengths are checked against the bytes
//! actually present (nothing is allocated on the word of a length field), decode errors and
//! records that break the batch contract become `Corrupt`.
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

use std::fs::{self, File, OpenOptions};
use std::io::{self, BufWriter, Write};
use std::path::{Path, PathBuf};

use flotilla_raft::{Entry, HardState, Index, Snapshot, Term};
use serde::{Deserialize, Serialize};

use crate::{DurableState, Persist, Storage, StorageError};

/// See [`WalStorage::MAX_RECORD_LEN`].
const MAX_RECORD_LEN: usize = 64 << 20;

const WAL_FILE: &str = "wal";
const WAL_TMP: &str = "wal.tmp";
const SNAPSHOT_FILE: &str = "snapshot";
const SNAPSHOT_TMP: &str = "snapshot.tmp";

const WAL_MAGIC: &[u8; 8] = b"FLOTWAL1";
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

/// One log record as written: a `Persist` batch with its snapshot replaced by a reference.
#[derive(Serialize)]
struct RecordOut<'a> {
    hard_state: Option<HardState>,
    snapshot: Option<SnapRef>,
    entries: &'a [Entry],
}

/// One log record as read back (postcard encodes a slice and a `Vec` the same way).
#[derive(Deserialize)]
struct RecordIn {
    hard_state: Option<HardState>,
    snapshot: Option<SnapRef>,
    entries: Vec<Entry>,
}

/// Where a test makes `persist` stop, as if the process had died there.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum CrashPoint {
    /// Step 1 done: `snapshot.tmp` written and synced.
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
#[derive(Debug)]
pub struct WalStorage {
    dir: PathBuf,
    state: DurableState,
    /// The reference to `state.snapshot` as the log records it; `None` while no snapshot
    /// was ever installed.
    snap_ref: Option<SnapRef>,
    /// `wal`, opened for appending.
    wal: File,
    /// Length of `wal` in bytes.
    wal_len: u64,
    /// Log length at which to check next whether a compaction is worth it.
    compact_check_at: u64,
    poisoned: bool,
    #[cfg(test)]
    crash_at: Option<CrashPoint>,
    #[cfg(test)]
    min_garbage_compact_len: u64,
}

impl WalStorage {
    /// The largest record payload the log accepts, in bytes (64 MiB). A batch whose record
    /// would be larger is refused by `persist`; a record header claiming more is corruption.
    pub const MAX_RECORD_LEN: usize = MAX_RECORD_LEN;

    /// Opens the storage in `dir`, creating the directory and an empty log if missing, and
    /// recovers the durable state (see the module docs). Returns [`StorageError::Corrupt`] if
    /// anything on disk fails its checks other than a torn last record, which is discarded.
    pub fn open(dir: impl AsRef<Path>) -> Result<WalStorage, StorageError> {
        let dir = dir.as_ref().to_path_buf();
        create_dir_durably(&dir)?;
        remove_if_exists(&dir.join(WAL_TMP))?;

        let wal_path = dir.join(WAL_FILE);
        let bytes = match fs::read(&wal_path) {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                let snapshot_path = dir.join(SNAPSHOT_FILE);
                if exists(&snapshot_path)? {
                    return Err(corrupt(
                        "directory",
                        &wal_path,
                        0,
                        "a snapshot file but no log: the hard state is lost".into(),
                    ));
                }
                write_file_atomically(&dir, WAL_FILE, WAL_MAGIC)?;
                WAL_MAGIC.to_vec()
            }
            Err(e) => return Err(io_err(&wal_path)(e)),
        };

        let (mut state, good_len) = replay(&wal_path, &bytes)?;
        let (snap_ref, roll_forward) = resolve_snapshot(&dir, &mut state)?;

        // Everything checked out: now repair what the crash left behind.
        if roll_forward {
            let from = dir.join(SNAPSHOT_TMP);
            fs::rename(&from, dir.join(SNAPSHOT_FILE)).map_err(io_err(&from))?;
            sync_dir(&dir)?;
        } else {
            remove_if_exists(&dir.join(SNAPSHOT_TMP))?;
        }
        let wal = OpenOptions::new()
            .append(true)
            .open(&wal_path)
            .map_err(io_err(&wal_path))?;
        if good_len < bytes.len() as u64 {
            wal.set_len(good_len).map_err(io_err(&wal_path))?;
            wal.sync_all().map_err(io_err(&wal_path))?;
        }

        Ok(WalStorage {
            dir,
            state,
            snap_ref,
            wal,
            wal_len: good_len,
            compact_check_at: MIN_GARBAGE_COMPACT_LEN.max(2 * good_len),
            poisoned: false,
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
            let mut file = File::create(&path).map_err(io_err(&path))?;
            file.write_all(&encode_snapshot_header(&snap_ref))
                .and_then(|()| file.write_all(&self.state.snapshot.data))
                .and_then(|()| file.sync_all())
                .map_err(io_err(&path))?;
            drop(file);
            self.crash_point(CrashPoint::SnapshotTmpSynced)?;
            // Step 2: the commit point.
            self.append(record)?;
            self.crash_point(CrashPoint::RecordAppended)?;
            // Step 3.
            let from = self.dir.join(SNAPSHOT_TMP);
            fs::rename(&from, self.dir.join(SNAPSHOT_FILE)).map_err(io_err(&from))?;
            sync_dir(&self.dir)?;
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
        let file = File::create(&tmp).map_err(io_err(&tmp))?;
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
            let entry_len = entry.data.len() + 30;
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
        let file = out.into_inner().map_err(|e| io_err(&tmp)(e.into_error()))?;
        file.sync_all().map_err(io_err(&tmp))?;
        drop(file);
        self.crash_point(CrashPoint::CompactedLogSynced)?;

        let wal_path = self.wal_path();
        fs::rename(&tmp, &wal_path).map_err(io_err(&tmp))?;
        sync_dir(&self.dir)?;
        self.wal = OpenOptions::new()
            .append(true)
            .open(&wal_path)
            .map_err(io_err(&wal_path))?;
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

impl Storage for WalStorage {
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
        // Panics on a contract violation, before anything reaches the disk.
        self.state.apply(batch);
        self.poisoned = true;
        self.persist_inner(batch, &record, snap_ref)?;
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
    let mut buf = postcard::to_extend(record, vec![0u8; RECORD_HEADER_LEN])
        .map_err(|e| too_large(format!("cannot encode record: {e}")))?;
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

/// Replays the log in `bytes`. Returns the state (with placeholder snapshot data) and the
/// length of the good prefix: shorter than `bytes` iff the last record is torn.
fn replay(path: &Path, bytes: &[u8]) -> Result<(DurableState, u64), StorageError> {
    if bytes.len() < WAL_MAGIC.len() || &bytes[..WAL_MAGIC.len()] != WAL_MAGIC {
        // The log is always created whole (via a temp file and a rename), so a short or
        // wrong magic is damage, not a torn write.
        return Err(corrupt("log header", path, 0, "bad magic".into()));
    }
    let mut state = DurableState::default();
    let mut offset = WAL_MAGIC.len();
    while offset < bytes.len() {
        let rest = &bytes[offset..];
        if rest.len() < RECORD_HEADER_LEN {
            break; // torn header
        }
        let header = &rest[..RECORD_HEADER_LEN];
        let len = u32::from_le_bytes(header[0..4].try_into().expect("4 bytes")) as usize;
        let crc = u32::from_le_bytes(header[4..8].try_into().expect("4 bytes"));
        let header_crc = u32::from_le_bytes(header[8..12].try_into().expect("4 bytes"));
        let at = offset as u64;
        if crc32fast::hash(&header[0..8]) != header_crc {
            return Err(corrupt(
                "record header",
                path,
                at,
                "header checksum mismatch".into(),
            ));
        }
        if len > MAX_RECORD_LEN {
            return Err(corrupt(
                "record header",
                path,
                at,
                format!("length {len} exceeds the maximum {MAX_RECORD_LEN}"),
            ));
        }
        if rest.len() - RECORD_HEADER_LEN < len {
            break; // torn payload
        }
        let payload = &rest[RECORD_HEADER_LEN..RECORD_HEADER_LEN + len];
        if crc32fast::hash(payload) != crc {
            return Err(corrupt(
                "record",
                path,
                at,
                "payload checksum mismatch".into(),
            ));
        }
        let record: RecordIn = match postcard::take_from_bytes(payload) {
            Ok((record, [])) => record,
            Ok((_, left)) => {
                return Err(corrupt(
                    "record",
                    path,
                    at,
                    format!("{} bytes after the encoded record", left.len()),
                ))
            }
            Err(e) => return Err(corrupt("record", path, at, format!("decode error: {e}"))),
        };
        apply_record(&mut state, record).map_err(|detail| corrupt("record", path, at, detail))?;
        offset += RECORD_HEADER_LEN + len;
    }
    Ok((state, offset as u64))
}

/// Applies one record read from disk. The batch is split in two — its snapshot, then its
/// entries and hard state — which is what `DurableState::apply` does in sequence anyway;
/// in between, the entries are checked against the state so that `apply`'s contract
/// assertions cannot fire on bad input.
fn apply_record(state: &mut DurableState, record: RecordIn) -> Result<(), String> {
    if let Some(snap_ref) = record.snapshot {
        state.apply(&Persist {
            snapshot: Some(snap_ref.placeholder()),
            ..Persist::default()
        });
    }
    if let (Some(first), Some(last)) = (record.entries.first(), record.entries.last()) {
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
        if let Some(pair) = record
            .entries
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
        hard_state: record.hard_state,
        snapshot: None,
        entries: record.entries,
    });
    Ok(())
}

/// Replaces the placeholder in `state.snapshot` by the snapshot file it names. Returns the
/// reference and whether `snapshot.tmp` holds it (so it must be renamed into place).
fn resolve_snapshot(
    dir: &Path,
    state: &mut DurableState,
) -> Result<(Option<SnapRef>, bool), StorageError> {
    let snapshot_path = dir.join(SNAPSHOT_FILE);
    if state.snapshot.data.is_empty() {
        // No record ever named a snapshot (a placeholder is never empty).
        if exists(&snapshot_path)? {
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
    let main = match read_snapshot(&snapshot_path) {
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
    if let Ok(Some((found, snapshot))) = read_snapshot(&dir.join(SNAPSHOT_TMP)) {
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
fn read_snapshot(path: &Path) -> Result<Option<(SnapRef, Snapshot)>, StorageError> {
    let mut bytes = match fs::read(path) {
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
fn write_file_synced(path: &Path, bytes: &[u8]) -> Result<(), StorageError> {
    let mut file = File::create(path).map_err(io_err(path))?;
    file.write_all(bytes).map_err(io_err(path))?;
    file.sync_all().map_err(io_err(path))
}

/// Creates `dir/name` with `bytes` so that a crash leaves either no file or the whole one.
fn write_file_atomically(dir: &Path, name: &str, bytes: &[u8]) -> Result<(), StorageError> {
    let tmp = dir.join(format!("{name}.tmp"));
    write_file_synced(&tmp, bytes)?;
    fs::rename(&tmp, dir.join(name)).map_err(io_err(&tmp))?;
    sync_dir(dir)
}

/// Makes renames and creations in `dir` durable.
fn sync_dir(dir: &Path) -> Result<(), StorageError> {
    #[cfg(unix)]
    {
        File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(io_err(dir))?;
    }
    #[cfg(not(unix))]
    let _ = dir; // Directories cannot be opened for syncing here; renames are journaled.
    Ok(())
}

/// Creates `dir` and any missing ancestors, syncing the parent of each one created so that
/// the directory itself survives a crash.
fn create_dir_durably(dir: &Path) -> Result<(), StorageError> {
    match fs::metadata(dir) {
        Ok(meta) if meta.is_dir() => return Ok(()),
        Ok(_) => {
            return Err(io_err(dir)(io::Error::new(
                io::ErrorKind::AlreadyExists,
                "not a directory",
            )))
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(io_err(dir)(e)),
    }
    let parent = match dir.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => parent,
        _ => Path::new("."),
    };
    create_dir_durably(parent)?;
    match fs::create_dir(dir) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(io_err(dir)(e)),
    }
    sync_dir(parent)
}

fn exists(path: &Path) -> Result<bool, StorageError> {
    match fs::symlink_metadata(path) {
        Ok(_) => Ok(true),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(io_err(path)(e)),
    }
}

fn remove_if_exists(path: &Path) -> Result<(), StorageError> {
    match fs::remove_file(path) {
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
        let (snap_ref, on_disk) = read_snapshot(&dir.path().join(SNAPSHOT_FILE))
            .unwrap()
            .expect("snapshot renamed into place");
        assert_eq!(on_disk, snapshot(4, 2));
        assert_eq!(snap_ref, SnapRef::of(&on_disk));
        let log = fs::read(dir.path().join(WAL_FILE)).unwrap();
        let (replayed, _) = replay(Path::new("wal"), &log).unwrap();
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
        let (_, old) = read_snapshot(&dir.path().join(SNAPSHOT_FILE))
            .unwrap()
            .unwrap();
        assert_eq!(old, snapshot(2, 1));
        assert!(dir.path().join(SNAPSHOT_TMP).exists());

        let wal = WalStorage::open(dir.path()).unwrap();
        assert_eq!(wal.durable_state(), &after);
        let (_, now) = read_snapshot(&dir.path().join(SNAPSHOT_FILE))
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
        let (record, rest): (RecordIn, _) =
            postcard::take_from_bytes(&framed[RECORD_HEADER_LEN..]).unwrap();
        assert!(rest.is_empty());
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
    /// an astronomically unlucky corruption could produce) are errors, not panics.
    #[test]
    fn contract_violations_on_disk_are_corrupt_not_panics() {
        let bad_batches = [
            entries(2..=3, 1), // gap after the empty log
            vec![entries(1..=1, 1)[0].clone(), entries(3..=3, 1)[0].clone()], // not consecutive
            entries(Index::MAX..=Index::MAX, 1), // index out of range
        ];
        for bad in bad_batches {
            let mut log = WAL_MAGIC.to_vec();
            log.extend(
                frame(
                    Path::new("wal"),
                    &RecordOut {
                        hard_state: None,
                        snapshot: None,
                        entries: &bad,
                    },
                )
                .unwrap(),
            );
            assert!(
                matches!(
                    replay(Path::new("wal"), &log),
                    Err(StorageError::Corrupt { .. })
                ),
                "{bad:?}"
            );
        }
        // Entries at or below a snapshot named in the same record.
        let mut log = WAL_MAGIC.to_vec();
        log.extend(
            frame(
                Path::new("wal"),
                &RecordOut {
                    hard_state: None,
                    snapshot: Some(SnapRef::of(&snapshot(3, 1))),
                    entries: &entries(3..=4, 1),
                },
            )
            .unwrap(),
        );
        assert!(matches!(
            replay(Path::new("wal"), &log),
            Err(StorageError::Corrupt { .. })
        ));
        // Trailing bytes after a well-formed payload.
        let mut record = frame(
            Path::new("wal"),
            &RecordOut {
                hard_state: None,
                snapshot: None,
                entries: &entries(1..=1, 1),
            },
        )
        .unwrap();
        record.push(0);
        let len = (record.len() - RECORD_HEADER_LEN) as u32;
        let crc = crc32fast::hash(&record[RECORD_HEADER_LEN..]);
        record[0..4].copy_from_slice(&len.to_le_bytes());
        record[4..8].copy_from_slice(&crc.to_le_bytes());
        let header_crc = crc32fast::hash(&record[0..8]);
        record[8..12].copy_from_slice(&header_crc.to_le_bytes());
        let log = [&WAL_MAGIC[..], &record].concat();
        assert!(matches!(
            replay(Path::new("wal"), &log),
            Err(StorageError::Corrupt { .. })
        ));
    }
}
