//! A file-backed [`Storage`]: a segmented write-ahead log of CRC-checked records plus a
//! snapshot file.
//!
//! [`WalStorage`] keeps Raft's durable state in one directory so that a real process can be
//! killed (or lose power) at any instant and come back with the state it had acknowledged.
//! Each [`Persist`] batch becomes **one** record appended to the log and made durable with
//! **one** `fdatasync`; a batch that installs a snapshot also writes the snapshot file, and
//! then deletes the log segments the snapshot made unnecessary. No step rewrites the live
//! log. What a batch means is defined once, by [`DurableState::apply`]: recovery replays the
//! records through it, so the state after `open` is, by construction, the state the
//! acknowledged batches produce.
//!
//! **Memory.** The storage keeps no copy of the log's data or of the snapshot: only the
//! log's shape (index and term of each entry after the snapshot, the hard state, the
//! snapshot's reference) and each entry's encoded size — about 50 bytes per entry. `open`
//! streams the segments once and hands the recovered [`DurableState`] to the caller (the
//! Raft core), who owns the only copy; [`WalStorage::durable_state`] reads it back from disk
//! on demand.
//!
//! All I/O goes through a [`FileSystem`]: `std::fs` by default ([`WalStorage::open`]), or any
//! other one given to [`WalStorage::open_with`] — in tests and the simulator,
//! `flotilla_sim::fs::SimFs`, whose crashes keep exactly what was synced (file data *and*
//! directory entries) and may tear, zero-fill or flip bits in the rest. The crash-safety
//! argument below assumes only what that model grants: a synced file's data survives, a
//! directory entry survives once its directory is synced, a rename is atomic, and directory
//! operations reach the disk in the order they were issued.
//!
//! # Files
//!
//! | name                 | content                                                        |
//! |----------------------|----------------------------------------------------------------|
//! | `<seq>-<index>.wal`  | a log segment: sequence number and the log's end at its start  |
//! | `snapshot`           | the snapshot the log refers to                                 |
//! | `segment.tmp`        | a segment being started; never read, removed by `open`         |
//! | `snapshot.tmp`       | a snapshot being written; used by `open` only to finish a rename |
//! | `LOCK`               | the directory's lock ([`crate::DirLock`])                       |
//!
//! # On-disk format (version 3)
//!
//! All integers are little-endian; CRCs are CRC-32 (IEEE, `crc32fast`). A segment is a
//! 20-byte header (`FLOTWAL3`, its sequence number, a CRC) and framed records
//! `[len: u32][crc: u32][header_crc: u32][payload]` (see `segment.rs`), with `len` at most
//! [`WalStorage::MAX_RECORD_LEN`]; the payload format is [`crate::format`]'s. The first
//! record of every segment is a **segment start**: the hard state, the snapshot reference
//! and the terms of the log (as runs) at the moment the segment was started. Every later
//! record is a `Persist` batch whose snapshot is replaced by a reference
//! `SnapRef { index, term, len, crc }` naming the snapshot file's contents (the data lives
//! only in `snapshot`).
//!
//! **Snapshot** (`snapshot`): a 40-byte header
//! `[magic "FLOTSNP1"][index: u64][term: u64][len: u64][crc: u32 = crc32(data)][header_crc: u32]`
//! (`header_crc` covers the 36 bytes before it) followed by exactly `len` bytes of data.
//!
//! # Writing a batch
//!
//! An empty batch writes nothing. Otherwise, if the record would take the active segment
//! past its size ([`WalOptions::segment_bytes`]) and the segment holds a record besides its
//! start, a new segment is started first: `segment.tmp` gets the header and the start
//! record, `fsync`, rename to its name, `fsync` the directory — only then does anything get
//! appended to it. (A record larger than a segment gets a segment of its own.) The batch is
//! then applied to the in-memory shape (so a batch that breaks the contract panics, as it
//! does in `MemStorage`, before its record reaches the disk), and:
//!
//! - **Without a newly installed snapshot** (no snapshot, or one `apply` ignored as older
//!   than the one held, whose reference replay will ignore the same way): append the record,
//!   `fdatasync` the segment. The batch is durable when the sync returns.
//! - **With a snapshot that `apply` installed** — the four steps, each finished before the next:
//!   1. write `snapshot.tmp` (header + data), `fsync` it, `fsync` the directory (a file's
//!      `fsync` does not make its directory entry durable; the log is about to name it);
//!   2. append the batch's record (naming the snapshot by `SnapRef`), `fdatasync` — **the
//!      commit point**: from here on recovery yields the state after the batch;
//!   3. rename `snapshot.tmp` to `snapshot` (the directory is not synced: a crash that undoes
//!      the rename leaves `snapshot.tmp`, which `open` renames again, and the next step 1 or
//!      segment start syncs the directory before anything depends on the rename);
//!   4. delete, oldest first, every segment before the newest one that started at or below
//!      the snapshot's index: the segments after it, with its start record, replay to the
//!      same state. The directory is not synced for this: a deletion a crash undoes only
//!      brings back a segment that is harmless (see below) and is deleted again later.
//!
//! # Recovery (`open`) and why a crash anywhere is safe
//!
//! `open` creates the directory if needed (syncing its parent), removes `segment.tmp`, lists
//! the segments and replays them, oldest first, from the oldest one's start record (see
//! `replay.rs`: entries the deleted segments held are placeholders, which the snapshot must
//! cover — else the log is incomplete and `open` refuses). If the sequence numbers have a
//! gap, the segments before it are leftovers of a deletion that a crash interrupted (the
//! later deletion reached the disk, the earlier did not): they are ignored and deleted.
//! Then the snapshot reference is resolved: `snapshot` must match it exactly (index, term,
//! length and CRC); if it does not but `snapshot.tmp` does, the crash came between steps 2
//! and 3 and the rename is finished now. Only after everything checked out is a damaged last
//! record cut off and `snapshot.tmp` removed. An empty directory gets a first segment.
//!
//! The log's contents are the truth; the snapshot file is only ever the one the log names.
//! Crash points:
//!
//! - *While a segment is started*: `segment.tmp` is discarded; if the rename reached the
//!   disk, the new segment is whole (synced before the rename) and holds just its start
//!   record, which continues the previous segment exactly.
//! - *During an append* (no snapshot, or step 2): the last segment may end in a damaged
//!   record, which is cut off: the state before the batch, which was not acknowledged.
//! - *During or after step 1, before step 2 is durable*: the log does not name the new
//!   snapshot; `snapshot` is the old one and matches; `snapshot.tmp` is removed.
//! - *Between steps 2 and 3*: the log names the new snapshot and `snapshot.tmp` (its data and
//!   its directory entry synced in step 1) holds it: renamed into place.
//! - *After step 3, during or after step 4*: `snapshot` is the new one and the log names it;
//!   whichever old segments are still there replay, with the placeholders of the ones gone,
//!   to the same state, because every segment kept started at or below the new snapshot's
//!   index.
//!
//! # Torn tails versus corruption
//!
//! Every append is followed by its `fdatasync` before anything else is written, and a new
//! segment is started only after the last append to the old one returned, so at any instant
//! at most **one** record — the last of the last segment — can be unsynced, and a crash can
//! damage nothing else. What it can do to that record depends on the disk: leave a prefix of
//! it (torn at a sector boundary, header included), leave its full length with zeros where
//! the data never arrived, or leave flipped bits in it. The reader therefore decides by
//! *position*, not by the kind of damage. The first record that fails any check — incomplete
//! header, header checksum mismatch, length above [`WalStorage::MAX_RECORD_LEN`], payload
//! shorter than its length, payload checksum mismatch, a payload that does not decode, entries
//! that cannot follow the state — is
//!
//! - **the damaged last record**, cut off at the end of the last good record (with a
//!   `tracing` warning naming the file, the offset and the reason), if it is in the last
//!   segment and nothing follows it: when its header is intact, no byte lies past the end
//!   that header gives; when its header is damaged, no intact record starts anywhere after
//!   it. That batch was never acknowledged; the recovered state is the one before it.
//! - **corruption** otherwise ([`StorageError::Corrupt`] naming the file, the record's offset
//!   and what is wrong): `open` refuses and leaves the files alone. `flotilla wal inspect`
//!   shows it; `flotilla wal repair` cuts the log there, keeping a backup.
//!
//! *What this gives up.* A crash and bit rot cannot be told apart in the last record: if an
//! already-synced, acknowledged final record later rots, it is cut off as if it had been torn,
//! and that batch is lost (loudly, in the log).
//!
//! Segment headers and start records are never torn by a crash (a segment is synced before
//! it is renamed into place); snapshot files neither (synced before the log names them). Any
//! damage there is [`StorageError::Corrupt`], as are a log that names a snapshot no file
//! holds, a snapshot file when the log names none or there is no log at all, and a log in an
//! older format version (named in the error). Nothing read from disk can make `open` panic.
//!
//! # Guarantees
//!
//! - When `persist` returns `Ok`, the batch survives a crash (given a disk that honours
//!   `fsync`). `open` yields the state after some prefix of the batches given, containing at
//!   least every acknowledged one.
//! - `open` never returns a state built from a record or snapshot that failed its checks.
//! - **After a failed write or sync** (fsyncgate) the storage is *poisoned*: every later
//!   `persist` fails, nothing is retried, and [`WalStorage::durable_state`] reads only what
//!   had been synced (it never reads past the synced length, so pages a failed `fsync` left
//!   in the cache are never taken for durable data). The failed batch is undone in memory
//!   unless its commit point had passed. Stop the node; `open` the directory again to see
//!   what survived.
//! - A batch whose record would exceed [`WalStorage::MAX_RECORD_LEN`] is refused with an
//!   `InvalidInput` I/O error before anything changes (the storage is not poisoned).
//! - On the real file system, one process per directory ([`crate::DirLock`]).
//!
//! [`WalStorage::raft_state_size`] is the encoded size of the hard state and the log after
//! the snapshot — the same measure [`crate::MemStorage`] reports — what services watching
//! `maxraftstate` need; [`WalStorage::log_bytes`] is the space the segments take.

mod replay;
mod segment;
mod tools;

use std::collections::VecDeque;
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use flotilla_raft::{Entry, HardState, Index, Term};

pub use tools::{
    inspect, inspect_with, repair, repair_with, Inspection, LogEnd, RecordSummary, Repair,
    SegmentSummary,
};

use crate::format::SegmentStart;
use crate::fs::{EntryKind, FileSystem, StdFs, WritableFile};
use crate::{DurableState, Persist, Storage, StorageError};
use replay::{
    corrupt, encode_snapshot_header, exists, io_err, replay, resolve_snapshot, SegmentFile,
    SnapRef, StopKind,
};
use segment::{encode_segment_header, frame, parse_segment_name, segment_name, MAX_RECORD_LEN};

const SEGMENT_TMP: &str = "segment.tmp";
const SNAPSHOT_FILE: &str = "snapshot";
const SNAPSHOT_TMP: &str = "snapshot.tmp";
/// The single log file of format version 2, refused by name.
const FORMAT_2_LOG: &str = "wal";

/// Tunables of a [`WalStorage`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WalOptions {
    /// A new segment is started when a record would take the active one past this size
    /// (default 64 MiB). Smaller segments are deleted sooner after a snapshot; each start
    /// costs two syncs.
    pub segment_bytes: u64,
}

impl Default for WalOptions {
    fn default() -> Self {
        WalOptions {
            segment_bytes: 64 << 20,
        }
    }
}

/// Where a test makes `persist` stop, as if the process had died there.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum CrashPoint {
    /// Step 1 done: `snapshot.tmp` written and synced, its directory entry too.
    SnapshotTmpSynced,
    /// Step 2 done: the batch's record is in the log (the commit point).
    RecordAppended,
    /// Step 3 done: `snapshot` is the new snapshot, no segment deleted yet.
    SnapshotRenamed,
}

/// A segment of the open log.
#[derive(Debug)]
struct Segment {
    seq: u64,
    base: Index,
    path: PathBuf,
    /// Bytes synced: everything before this offset is durable.
    len: u64,
    /// Length of its header and start record.
    start_len: u64,
}

/// Raft's durable state in a directory: a segmented, CRC-checked write-ahead log and a
/// snapshot file. See the module docs for the format and the crash-safety argument.
///
/// `F` is the file system it lives on: the real one by default, or any [`FileSystem`] (the
/// simulator's, with the `sim` feature) through [`WalStorage::open_with`].
#[derive(Debug)]
pub struct WalStorage<F: FileSystem = StdFs> {
    fs: F,
    dir: PathBuf,
    options: WalOptions,
    /// The durable state's shape: entries without data, the snapshot as a placeholder.
    shape: DurableState,
    /// Encoded size of each entry of `shape` (as `MemStorage` counts it), and their sum.
    entry_sizes: VecDeque<u32>,
    entry_bytes: u64,
    /// Oldest first; the last is the one appended to.
    segments: Vec<Segment>,
    active: F::File,
    poisoned: bool,
    /// The data directory's lock, held while open (on the real file system).
    _lock: Option<crate::DirLock>,
    #[cfg(test)]
    crash_at: Option<CrashPoint>,
}

impl WalStorage {
    /// The largest record payload the log accepts, in bytes (64 MiB). A batch whose record
    /// would be larger is refused by `persist`; a record header claiming more is corruption.
    pub const MAX_RECORD_LEN: usize = MAX_RECORD_LEN;

    /// Opens the storage in `dir` on the real file system, creating the directory and an
    /// empty log if missing, and recovers the durable state (see the module docs), which it
    /// returns: the caller owns the only copy. Returns [`StorageError::Corrupt`] if anything
    /// on disk fails its checks other than a damaged last record, which is cut off. The
    /// directory is locked for this process first ([`crate::DirLock`]): a second open gets
    /// [`StorageError::Locked`] naming the holder.
    pub fn open(dir: impl AsRef<Path>) -> Result<(WalStorage, DurableState), StorageError> {
        Self::open_with_options(dir, WalOptions::default())
    }

    /// [`WalStorage::open`] with `options`.
    pub fn open_with_options(
        dir: impl AsRef<Path>,
        options: WalOptions,
    ) -> Result<(WalStorage, DurableState), StorageError> {
        let dir = dir.as_ref();
        create_dir_durably(&StdFs, dir)?;
        let lock = crate::DirLock::acquire(dir)?;
        let (mut wal, state) = WalStorage::open_on(StdFs, dir, options)?;
        wal._lock = Some(lock);
        Ok((wal, state))
    }
}

impl<F: FileSystem> WalStorage<F> {
    /// [`WalStorage::open`] on the file system `fs`, with default options.
    pub fn open_with(
        fs: F,
        dir: impl AsRef<Path>,
    ) -> Result<(WalStorage<F>, DurableState), StorageError> {
        Self::open_on(fs, dir, WalOptions::default())
    }

    /// [`WalStorage::open`] on the file system `fs`, with `options`.
    pub fn open_on(
        fs: F,
        dir: impl AsRef<Path>,
        options: WalOptions,
    ) -> Result<(WalStorage<F>, DurableState), StorageError> {
        let dir = dir.as_ref().to_path_buf();
        create_dir_durably(&fs, &dir)?;
        remove_if_exists(&fs, &dir.join(SEGMENT_TMP))?;
        refuse_format_2(&fs, &dir)?;

        let mut found = list_segments(&fs, &dir)?;
        if found.is_empty() {
            let snapshot_path = dir.join(SNAPSHOT_FILE);
            if exists(&fs, &snapshot_path)? {
                return Err(corrupt(
                    "directory",
                    &dir,
                    0,
                    "a snapshot file but no log: the hard state is lost".into(),
                ));
            }
            create_segment(&fs, &dir, 1, &DurableState::default(), None)?;
            found = list_segments(&fs, &dir)?;
        }
        // Leftovers of an interrupted deletion: everything before a gap in the sequence.
        let live_from = found
            .windows(2)
            .rposition(|pair| pair[1].seq != pair[0].seq + 1)
            .map_or(0, |gap| gap + 1);
        let leftovers: Vec<SegmentFile> = found.drain(..live_from).collect();

        let replayed = replay(&fs, &found, None, |_| {})?;
        let mut state = replayed.state;
        let mut torn = None;
        if let Some(stop) = replayed.stop {
            let path = &found[stop.segment].path;
            match stop.kind {
                StopKind::TornTail => torn = Some((stop.offset, stop.detail)),
                StopKind::Corrupt => {
                    return Err(corrupt("log segment", path, stop.offset, stop.detail))
                }
                StopKind::Incomplete => return Err(corrupt("log", path, 0, stop.detail)),
            }
        }
        let shape = shape_of(&state);
        let (_, roll_forward) = resolve_snapshot(
            &fs,
            &dir.join(SNAPSHOT_FILE),
            &dir.join(SNAPSHOT_TMP),
            &mut state,
        )?;

        // Everything checked out: now repair what the crash left behind.
        if roll_forward {
            // Not synced, as in step 3: a lost rename is found and redone by the next `open`.
            let from = dir.join(SNAPSHOT_TMP);
            fs.rename(&from, &dir.join(SNAPSHOT_FILE))
                .map_err(io_err(&from))?;
        } else {
            remove_if_exists(&fs, &dir.join(SNAPSHOT_TMP))?;
        }
        for leftover in &leftovers {
            tracing::warn!(file = %leftover.path.display(), "deleting a log segment an interrupted deletion left behind");
            remove_if_exists(&fs, &leftover.path)?;
        }
        let mut segments: Vec<Segment> = found
            .into_iter()
            .zip(replayed.lens)
            .map(|(file, (len, start_len))| Segment {
                seq: file.seq,
                base: file.base,
                path: file.path,
                len,
                start_len,
            })
            .collect();
        let last = segments.last_mut().expect("at least one segment");
        let mut active = fs.open_append(&last.path).map_err(io_err(&last.path))?;
        if let Some((offset, reason)) = torn {
            tracing::warn!(
                file = %last.path.display(),
                offset,
                "cutting off the damaged last record of the log (a crash during its append): {reason}"
            );
            active.set_len(offset).map_err(io_err(&last.path))?;
            // Durable before anything else is written: the next record may go to a new
            // segment, and a damaged record coming back in a segment that is no longer the
            // last would be corruption.
            active.sync_all().map_err(io_err(&last.path))?;
        }
        let entry_sizes: VecDeque<u32> = state.entries.iter().map(encoded_size).collect();
        let entry_bytes = entry_sizes.iter().map(|&s| u64::from(s)).sum();
        let wal = WalStorage {
            fs,
            dir,
            options,
            shape,
            entry_sizes,
            entry_bytes,
            segments,
            active,
            poisoned: false,
            _lock: None,
            #[cfg(test)]
            crash_at: None,
        };
        Ok((wal, state))
    }

    /// The directory this storage lives in.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Bytes the log's segments take on disk (the snapshot file not counted).
    pub fn log_bytes(&self) -> u64 {
        self.segments.iter().map(|s| s.len).sum()
    }

    /// The number of log segments.
    pub fn segment_count(&self) -> usize {
        self.segments.len()
    }

    /// Bytes of the snapshot's data (0 without a snapshot).
    pub fn snapshot_bytes(&self) -> u64 {
        SnapRef::from_placeholder(&self.shape.snapshot).map_or(0, |s| s.len)
    }

    /// The durable state, read back from disk: what a restart would recover now. It reads
    /// only the bytes whose syncs returned — after a failed write or sync, only what had been
    /// synced before it, never what the failed call may have left in the page cache.
    pub fn durable_state(&self) -> Result<DurableState, StorageError> {
        let files: Vec<SegmentFile> = self
            .segments
            .iter()
            .map(|s| SegmentFile {
                seq: s.seq,
                base: s.base,
                path: s.path.clone(),
            })
            .collect();
        let limits: Vec<u64> = self.segments.iter().map(|s| s.len).collect();
        let replayed = replay(&self.fs, &files, Some(&limits), |_| {})?;
        if let Some(stop) = replayed.stop {
            return Err(corrupt(
                "log segment",
                &files[stop.segment].path,
                stop.offset,
                stop.detail,
            ));
        }
        let mut state = replayed.state;
        resolve_snapshot(
            &self.fs,
            &self.dir.join(SNAPSHOT_FILE),
            &self.dir.join(SNAPSHOT_TMP),
            &mut state,
        )?;
        Ok(state)
    }

    /// The index of the last entry durable (or of the snapshot), from memory.
    pub fn last_index(&self) -> Index {
        self.shape.last_index()
    }

    fn active(&self) -> &Segment {
        self.segments.last().expect("at least one segment")
    }

    /// Starts a new segment describing the current state: it will hold the next records.
    fn start_segment(&mut self) -> Result<(), StorageError> {
        let seq = self.active().seq + 1;
        let snap_ref = SnapRef::from_placeholder(&self.shape.snapshot);
        let (path, len) = create_segment(&self.fs, &self.dir, seq, &self.shape, snap_ref)?;
        self.active = self.fs.open_append(&path).map_err(io_err(&path))?;
        self.segments.push(Segment {
            seq,
            base: self.shape.last_index(),
            path,
            len,
            start_len: len,
        });
        Ok(())
    }

    /// Writes a batch already applied to `self.shape`; `record` is its framed record.
    /// `Err((e, committed))`: `committed` if the commit point had passed.
    fn persist_inner(
        &mut self,
        batch: &Persist,
        record: &[u8],
        installed: Option<SnapRef>,
    ) -> Result<(), (StorageError, bool)> {
        let before = |e| (e, false);
        let after = |e| (e, true);
        let Some(snap_ref) = installed else {
            return self.append(record).map_err(before);
        };
        let data = &batch.snapshot.as_ref().expect("installed").data;
        // Step 1.
        let tmp = self.dir.join(SNAPSHOT_TMP);
        let mut file = self.fs.create(&tmp).map_err(io_err(&tmp)).map_err(before)?;
        file.write_all(&encode_snapshot_header(&snap_ref))
            .and_then(|()| file.write_all(data))
            .and_then(|()| file.sync_all())
            .map_err(io_err(&tmp))
            .map_err(before)?;
        drop(file);
        // The log is about to name this file: its directory entry must be durable first,
        // or a crash could leave a log naming a snapshot no directory holds.
        sync_dir(&self.fs, &self.dir).map_err(before)?;
        self.crash_point(CrashPoint::SnapshotTmpSynced)
            .map_err(before)?;
        // Step 2: the commit point.
        self.append(record).map_err(before)?;
        self.crash_point(CrashPoint::RecordAppended)
            .map_err(after)?;
        // Step 3. No directory sync: if a crash undoes the rename, `snapshot.tmp` still holds
        // the named snapshot and `open` renames it again; the next step 1 or segment start
        // syncs the directory before anything could depend on the rename.
        self.fs
            .rename(&tmp, &self.dir.join(SNAPSHOT_FILE))
            .map_err(io_err(&tmp))
            .map_err(after)?;
        self.crash_point(CrashPoint::SnapshotRenamed)
            .map_err(after)?;
        // Step 4: the newest segment that started at or below the snapshot, with those after
        // it, replays to this state; the ones before it go, oldest first.
        let keep_from = self
            .segments
            .iter()
            .rposition(|s| s.base <= snap_ref.index)
            .unwrap_or(0);
        for old in self.segments.drain(..keep_from) {
            remove_if_exists(&self.fs, &old.path).map_err(after)?;
        }
        Ok(())
    }

    /// Appends one framed record to the active segment and syncs it: one `write`, one
    /// `fdatasync`.
    fn append(&mut self, record: &[u8]) -> Result<(), StorageError> {
        let segment = self.segments.last_mut().expect("at least one segment");
        let path = &segment.path;
        self.active.write_all(record).map_err(io_err(path))?;
        self.active.sync_data().map_err(io_err(path))?;
        segment.len += record.len() as u64;
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
}

impl<F: FileSystem> Storage for WalStorage<F> {
    fn persist(&mut self, batch: &Persist) -> Result<(), StorageError> {
        if self.poisoned {
            return Err(io_err(&self.dir)(io::Error::other(
                "an earlier write or sync failed, so what is on disk is unknown: the storage \
                 refuses all writes; stop the node and reopen the directory",
            )));
        }
        if batch.is_empty() {
            return Ok(());
        }
        // Encode first: a batch too large for one record is refused before anything changes.
        let snap_ref = batch.snapshot.as_ref().map(SnapRef::of);
        let record = frame(
            batch.hard_state,
            snap_ref.map(Into::into),
            None,
            &batch.entries,
        )
        .map_err(|len| StorageError::Io {
            path: self.active().path.clone(),
            source: io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("record of {len} bytes exceeds the maximum of {MAX_RECORD_LEN}"),
            ),
        })?;
        self.poisoned = true;
        let active = self.active();
        if active.len > active.start_len
            && active.len + record.len() as u64 > self.options.segment_bytes
        {
            self.start_segment()?;
        }
        // The batch's shape: entries without data, the snapshot as its reference.
        let shape_batch = Persist {
            hard_state: batch.hard_state,
            snapshot: snap_ref.map(|s| s.placeholder()),
            entries: without_data(&batch.entries),
        };
        // What applying the batch replaces, to put back if it does not become durable.
        let undo = Undo::capture(self, &shape_batch);
        let snapshot_before = self.shape.snapshot.index;
        // Panics on a contract violation, before the record reaches the disk.
        self.shape.apply(&shape_batch);
        self.track_sizes(batch, snapshot_before);
        // `apply` installed the batch's snapshot iff the shape now holds it.
        let installed = snap_ref.filter(|s| self.shape.snapshot == s.placeholder());
        match self.persist_inner(batch, &record, installed) {
            Ok(()) => {
                self.poisoned = false;
                Ok(())
            }
            Err((e, committed)) => {
                if !committed {
                    undo.restore(self);
                }
                Err(e)
            }
        }
    }

    /// The encoded size of the hard state and of the log after the snapshot, as
    /// [`crate::MemStorage`] reports it; O(1).
    fn raft_state_size(&self) -> u64 {
        crate::mem::raft_state_size(
            &self.shape.hard_state,
            self.shape.entries.len(),
            self.entry_bytes,
        )
    }
}

impl<F: FileSystem> WalStorage<F> {
    /// Brings `entry_sizes` in line with `shape` after `batch` was applied to it
    /// (`snapshot_before` is the snapshot index before): O(batch + entries dropped).
    fn track_sizes(&mut self, batch: &Persist, snapshot_before: Index) {
        let from_batch = batch
            .entries
            .iter()
            .filter(|e| e.index > self.shape.snapshot.index)
            .count();
        // The shape's entries are old ones (from the new snapshot on) followed by the
        // batch's entries.
        let old_kept = self.shape.entries.len() - from_batch;
        let dropped_front = if old_kept == 0 {
            self.entry_sizes.len()
        } else {
            (self.shape.snapshot.index - snapshot_before) as usize
        };
        for size in self
            .entry_sizes
            .drain(..dropped_front.min(self.entry_sizes.len()))
        {
            self.entry_bytes -= u64::from(size);
        }
        for size in self
            .entry_sizes
            .drain(old_kept.min(self.entry_sizes.len())..)
        {
            self.entry_bytes -= u64::from(size);
        }
        for entry in &batch.entries[batch.entries.len() - from_batch..] {
            let size = encoded_size(entry);
            self.entry_bytes += u64::from(size);
            self.entry_sizes.push_back(size);
        }
        debug_assert_eq!(self.entry_sizes.len(), self.shape.entries.len());
    }
}

/// Entry sizes fit a `u32`: a record holds at most `MAX_RECORD_LEN` bytes.
fn encoded_size(entry: &Entry) -> u32 {
    crate::mem::entry_size(entry) as u32
}

/// What applying one batch to the shape replaces (see `persist`).
enum Undo {
    /// A batch with a snapshot (rare): the whole shape before it.
    Whole(Box<DurableState>, VecDeque<u32>, u64),
    /// Entries and hard state: the old hard state, and the shape's entries (with their
    /// sizes) from the batch's first index on, which the batch replaced.
    Suffix {
        hard_state: HardState,
        keep: usize,
        replaced: Vec<Entry>,
        sizes: Vec<u32>,
        entry_bytes: u64,
    },
}

impl Undo {
    fn capture<F: FileSystem>(wal: &WalStorage<F>, batch: &Persist) -> Undo {
        let shape = &wal.shape;
        if batch.snapshot.is_some() {
            return Undo::Whole(
                Box::new(shape.clone()),
                wal.entry_sizes.clone(),
                wal.entry_bytes,
            );
        }
        let keep = batch.entries.first().map_or(shape.entries.len(), |e| {
            (e.index.saturating_sub(shape.snapshot.index + 1) as usize).min(shape.entries.len())
        });
        Undo::Suffix {
            hard_state: shape.hard_state,
            keep,
            replaced: shape.entries[keep..].to_vec(),
            sizes: wal.entry_sizes.range(keep..).copied().collect(),
            entry_bytes: wal.entry_bytes,
        }
    }

    fn restore<F: FileSystem>(self, wal: &mut WalStorage<F>) {
        match self {
            Undo::Whole(shape, sizes, bytes) => {
                wal.shape = *shape;
                wal.entry_sizes = sizes;
                wal.entry_bytes = bytes;
            }
            Undo::Suffix {
                hard_state,
                keep,
                replaced,
                sizes,
                entry_bytes,
            } => {
                wal.shape.entries.truncate(keep);
                wal.shape.entries.extend(replaced);
                wal.shape.hard_state = hard_state;
                wal.entry_sizes.truncate(keep);
                wal.entry_sizes.extend(sizes);
                wal.entry_bytes = entry_bytes;
            }
        }
    }
}

/// The state without entry data (the snapshot stays the placeholder it is during replay).
fn shape_of(state: &DurableState) -> DurableState {
    DurableState {
        hard_state: state.hard_state,
        snapshot: state.snapshot.clone(),
        entries: without_data(&state.entries),
    }
}

/// The entries' shape: index and term, no data.
fn without_data(entries: &[Entry]) -> Vec<Entry> {
    entries
        .iter()
        .map(|e| Entry {
            index: e.index,
            term: e.term,
            data: Vec::new(),
        })
        .collect()
}

/// The terms of `shape`'s entries as runs `(first index, term)`.
fn term_runs(shape: &DurableState) -> Vec<(Index, Term)> {
    let mut runs: Vec<(Index, Term)> = Vec::new();
    for entry in &shape.entries {
        if runs.last().is_none_or(|&(_, term)| term != entry.term) {
            runs.push((entry.index, entry.term));
        }
    }
    runs
}

/// Creates segment `seq` starting at `shape`'s end, whole or not at all: written to
/// `segment.tmp`, synced, renamed, and the directory synced. Returns its path and length.
fn create_segment<F: FileSystem>(
    fs: &F,
    dir: &Path,
    seq: u64,
    shape: &DurableState,
    snap_ref: Option<SnapRef>,
) -> Result<(PathBuf, u64), StorageError> {
    let start = SegmentStart {
        log_end: shape.last_index(),
        term_runs: term_runs(shape),
    };
    let tmp = dir.join(SEGMENT_TMP);
    let record = frame(
        Some(shape.hard_state),
        snap_ref.map(Into::into),
        Some(&start),
        &[],
    )
    .map_err(|len| {
        io_err(&tmp)(io::Error::other(format!(
            "a segment start of {len} bytes exceeds the maximum record size"
        )))
    })?;
    let bytes = [&encode_segment_header(seq)[..], &record].concat();
    let mut file = fs.create(&tmp).map_err(io_err(&tmp))?;
    file.write_all(&bytes)
        .and_then(|()| file.sync_all())
        .map_err(io_err(&tmp))?;
    drop(file);
    let path = dir.join(segment_name(seq, start.log_end));
    fs.rename(&tmp, &path).map_err(io_err(&tmp))?;
    // Nothing may be appended to the segment before its directory entry is durable.
    sync_dir(fs, dir)?;
    Ok((path, bytes.len() as u64))
}

/// The segments in `dir`, by sequence number.
fn list_segments<F: FileSystem>(fs: &F, dir: &Path) -> Result<Vec<SegmentFile>, StorageError> {
    let mut found: Vec<SegmentFile> = fs
        .list_dir(dir)
        .map_err(io_err(dir))?
        .into_iter()
        .filter_map(|name| {
            let name = name.to_str()?;
            let (seq, base) = parse_segment_name(name)?;
            Some(SegmentFile {
                seq,
                base,
                path: dir.join(name),
            })
        })
        .collect();
    found.sort_by_key(|s| s.seq);
    Ok(found)
}

/// A directory written by format version 2 (one `wal` file) is refused with its version.
fn refuse_format_2<F: FileSystem>(fs: &F, dir: &Path) -> Result<(), StorageError> {
    let path = dir.join(FORMAT_2_LOG);
    if !exists(fs, &path)? {
        return Ok(());
    }
    let head = fs.read(&path).map_err(io_err(&path))?;
    let version = head
        .get(7)
        .filter(|_| head.starts_with(segment::MAGIC_PREFIX))
        .map_or("unknown".to_string(), |&v| format!("{:?}", v as char));
    Err(corrupt(
        "log",
        &path,
        0,
        format!(
            "a single-file log of format version {version}; this build reads version {} (segments)",
            crate::format::VERSION
        ),
    ))
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

fn remove_if_exists<F: FileSystem>(fs: &F, path: &Path) -> Result<(), StorageError> {
    match fs.remove_file(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(io_err(path)(e)),
    }
}

#[cfg(test)]
mod tests;
