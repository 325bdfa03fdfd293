//! The operator's tools: `flotilla wal inspect` ([`inspect`]) and `flotilla wal repair`
//! ([`repair`]). Both read the log with the same replay `open` uses, so they judge every
//! record exactly as a starting node would.
//!
//! Like [`WalStorage`](super::WalStorage), they do all their I/O through a [`FileSystem`]:
//! [`inspect`] and [`repair`] on the real one, [`inspect_with`] and [`repair_with`] on any
//! (the crash tests run `repair` on the simulator's `SimFs` and crash it at every call).

use std::io::Write;
use std::path::{Path, PathBuf};

use flotilla_raft::{HardState, Index, Term};

use super::replay::{corrupt, io_err, replay, resolve_snapshot, SegmentFile, StopKind};
use super::{list_segments, sync_dir, SNAPSHOT_FILE, SNAPSHOT_TMP};
use crate::fs::{FileSystem, StdFs, WritableFile};
use crate::StorageError;

/// One record of a log, as [`inspect`] reports it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RecordSummary {
    /// Byte offset of the record's header in its segment.
    pub offset: u64,
    /// Length of the framed record in bytes.
    pub len: u64,
    /// First and last index of its entries, if it has any.
    pub entries: Option<(Index, Index)>,
    /// Its hard state, if it carries one.
    pub hard_state: Option<HardState>,
    /// Index and term of the snapshot it names, if any.
    pub snapshot: Option<(Index, Term)>,
    /// For a segment's start record: the log's last index when the segment was started.
    pub segment_start: Option<Index>,
}

/// One segment file and its good records.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SegmentSummary {
    pub path: PathBuf,
    pub seq: u64,
    /// The log's last index when it was started.
    pub base: Index,
    /// The file's length.
    pub len: u64,
    pub records: Vec<RecordSummary>,
}

/// Where the good part of a log ends, and why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LogEnd {
    /// Every byte belongs to a good record.
    Clean,
    /// A damaged last record from `offset` of the last segment on (a crash during its
    /// append): `open` cuts it off by itself.
    TornTail {
        segment: PathBuf,
        offset: u64,
        detail: String,
    },
    /// Damage at `offset` of `segment`, which no crash makes: `open` refuses to start;
    /// `repair` can cut the log there, losing what follows.
    Corrupt {
        segment: PathBuf,
        offset: u64,
        detail: String,
    },
    /// Every record is good but the log lacks entries no snapshot covers (segments deleted
    /// by hand?): `open` refuses, and cutting cannot help.
    Incomplete { detail: String },
}

/// What a data directory's log holds.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Inspection {
    pub dir: PathBuf,
    /// The live segments, oldest first.
    pub segments: Vec<SegmentSummary>,
    /// Segments before a gap in the sequence numbers: left by an interrupted deletion;
    /// `open` deletes them.
    pub leftovers: Vec<PathBuf>,
    pub end: LogEnd,
}

impl Inspection {
    /// Bytes [`repair`] would cut: from the damage to the end of the log, including the
    /// whole of a segment damaged in its header or start record (which goes whole).
    pub fn bytes_to_cut(&self) -> u64 {
        let Some((at, keep)) = self.cut() else {
            return 0;
        };
        self.segments[at].len.saturating_sub(keep)
            + self.segments[at + 1..].iter().map(|s| s.len).sum::<u64>()
    }

    /// Where [`repair`] would cut: the position of the damaged segment in `segments` and the
    /// bytes of it that stay (0: it goes whole, having no good start record). `None` for a
    /// clean or incomplete log.
    fn cut(&self) -> Option<(usize, u64)> {
        let (segment, offset) = match &self.end {
            LogEnd::Clean | LogEnd::Incomplete { .. } => return None,
            LogEnd::TornTail {
                segment, offset, ..
            }
            | LogEnd::Corrupt {
                segment, offset, ..
            } => (segment, *offset),
        };
        let at = self
            .segments
            .iter()
            .position(|s| &s.path == segment)
            .expect("the damaged segment is listed");
        let keep = if self.segments[at].records.is_empty() {
            0
        } else {
            offset
        };
        Some((at, keep))
    }

    /// The number of good records in all segments.
    pub fn good_records(&self) -> usize {
        self.segments.iter().map(|s| s.records.len()).sum()
    }
}

/// Reads the log of `dir` record by record without changing anything (and without the
/// directory lock: it can look at the log of a running node). Errors only when the
/// directory cannot be read.
pub fn inspect(dir: impl AsRef<Path>) -> Result<Inspection, StorageError> {
    inspect_with(&StdFs, dir)
}

/// [`inspect`] on the file system `fs`.
pub fn inspect_with<F: FileSystem>(
    fs: &F,
    dir: impl AsRef<Path>,
) -> Result<Inspection, StorageError> {
    let dir = dir.as_ref();
    let mut found = list_segments(fs, dir)?;
    if found.is_empty() {
        return Err(io_err(dir)(std::io::Error::new(
            std::io::ErrorKind::NotFound,
            "no log segments (<seq>-<index>.wal) in this directory",
        )));
    }
    let leftovers = found.drain(..live_from(&found)).map(|s| s.path).collect();
    let mut segments: Vec<SegmentSummary> = found
        .iter()
        .map(|s| {
            Ok(SegmentSummary {
                path: s.path.clone(),
                seq: s.seq,
                base: s.base,
                len: fs.file_len(&s.path).map_err(io_err(&s.path))?,
                records: Vec::new(),
            })
        })
        .collect::<Result<_, StorageError>>()?;
    let replayed = replay(fs, &found, None, |seen| {
        let r = seen.record;
        segments[seen.segment].records.push(RecordSummary {
            offset: seen.offset,
            len: seen.len,
            entries: r
                .entries
                .first()
                .zip(r.entries.last())
                .map(|(a, b)| (a.index, b.index)),
            hard_state: r.hard_state,
            snapshot: r.snapshot.map(|s| (s.index, s.term)),
            segment_start: r.segment_start.as_ref().map(|s| s.log_end),
        });
    })?;
    let end = match replayed.stop {
        None => LogEnd::Clean,
        Some(stop) => {
            let segment = found[stop.segment].path.clone();
            // A record the replay saw but refused is not a good one.
            segments[stop.segment]
                .records
                .retain(|r| r.offset < stop.offset);
            match stop.kind {
                StopKind::TornTail => LogEnd::TornTail {
                    segment,
                    offset: stop.offset,
                    detail: stop.detail,
                },
                StopKind::Corrupt => LogEnd::Corrupt {
                    segment,
                    offset: stop.offset,
                    detail: stop.detail,
                },
                StopKind::Incomplete => LogEnd::Incomplete {
                    detail: stop.detail,
                },
            }
        }
    };
    Ok(Inspection {
        dir: dir.to_path_buf(),
        segments,
        leftovers,
        end,
    })
}

/// What [`repair`] did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Repair {
    /// Bytes cut off the log (0: nothing to repair).
    pub removed: u64,
    /// Where the removed bytes were saved: the damaged segment's tail as
    /// `<segment>.removed-<offset>`, later segments renamed to `<segment>.removed`.
    pub backups: Vec<PathBuf>,
}

/// Where the live log begins in `found` (sorted by sequence number), by `open`'s rule: the
/// segments before the last gap in the sequence numbers are leftovers of an interrupted
/// deletion.
fn live_from(found: &[SegmentFile]) -> usize {
    found
        .windows(2)
        .rposition(|pair| pair[1].seq != pair[0].seq + 1)
        .map_or(0, |gap| gap + 1)
}

/// Cuts the log of `dir` at the end of its last good record (`flotilla wal repair`): the
/// bytes it removes are saved first (synced before the log is touched). A segment damaged in
/// its header or start record goes whole (renamed to `<segment>.removed`), and so do the
/// segments after the damaged one. Takes the directory lock: never while a node runs on it.
///
/// Before it changes anything, repair replays the log it would leave — the segments kept,
/// the damaged one up to its last good record, leftovers before a sequence gap classified
/// exactly as `open` classifies them — and resolves its snapshot reference against the
/// snapshot file, as `open` does. Unless that log would open cleanly, repair refuses with
/// [`StorageError::Corrupt`] saying why, and **nothing is changed**:
///
/// - An incomplete log cannot be repaired by cutting, nor can a cut that would *make* the
///   log incomplete (it would remove the snapshot record that covers entries only older,
///   deleted segments held), or leave a log that no longer names the snapshot in the
///   `snapshot` file.
/// - Damage in the header or start record of the **first live segment** is refused: the cut
///   would leave no live segment. An empty log would lose the hard state (term and vote), and
///   the segments before a sequence gap, if any, are stale leftovers that `open` deletes —
///   they must not become the log again (they hold an older state, or damage). Such a node's
///   state cannot be recovered by cutting: restore the segment, or rebuild the node.
///
/// Crash-safe: a crash anywhere inside it leaves every removed byte either still in the log
/// or in its backup, and a log that opens or that `repair` can be run on again. Once it has
/// returned, the cut is durable.
pub fn repair(dir: impl AsRef<Path>) -> Result<Repair, StorageError> {
    let dir = dir.as_ref();
    let _lock = crate::DirLock::acquire(dir)?;
    repair_with(&StdFs, dir)
}

/// [`repair`] on the file system `fs`, without the directory lock (which only the real file
/// system has, as with [`WalStorage::open_on`](super::WalStorage::open_on)): the caller makes
/// sure no one else uses the directory.
pub fn repair_with<F: FileSystem>(fs: &F, dir: impl AsRef<Path>) -> Result<Repair, StorageError> {
    let dir = dir.as_ref();
    let found = inspect_with(fs, dir)?;
    if let LogEnd::Incomplete { detail } = &found.end {
        return Err(corrupt(
            "log",
            dir,
            0,
            format!("{detail}; cutting the log cannot repair this: restore the missing segments"),
        ));
    }
    let Some((at, keep)) = found.cut() else {
        return Ok(Repair {
            removed: 0,
            backups: Vec::new(),
        });
    };
    check_cut(fs, dir, &found, at, keep)?;
    let removed = found.bytes_to_cut();
    let segment = found.segments[at].path.clone();
    let whole = keep == 0;
    let offset = keep;
    let mut backups = Vec::new();
    let mut moved = |path: &Path| -> Result<(), StorageError> {
        let to = PathBuf::from(format!("{}.removed", path.display()));
        fs.rename(path, &to).map_err(io_err(path))?;
        backups.push(to);
        Ok(())
    };
    for later in found.segments[at + 1..].iter().rev() {
        moved(&later.path)?;
    }
    if whole {
        moved(&segment)?;
        // The renames are the whole repair: durable before it returns, or a crash after it
        // brings the damaged segment back.
        sync_dir(fs, dir)?;
    } else {
        let bytes = fs.read(&segment).map_err(io_err(&segment))?;
        let backup = PathBuf::from(format!("{}.removed-{offset}", segment.display()));
        let mut saved = fs.create(&backup).map_err(io_err(&backup))?;
        // The backup's data, then its directory entry (and the renames above), durable
        // before the log loses the bytes.
        saved
            .write_all(&bytes[offset as usize..])
            .and_then(|()| saved.sync_all())
            .map_err(io_err(&backup))?;
        drop(saved);
        sync_dir(fs, dir)?;
        let mut log = fs.open_append(&segment).map_err(io_err(&segment))?;
        // Durable before repair returns: the node started next may write its first record to
        // a new segment, and the damage coming back in a segment that is no longer the last
        // would make the log corrupt again, its new segments with it.
        log.set_len(offset)
            .and_then(|()| log.sync_all())
            .map_err(io_err(&segment))?;
        backups.insert(0, backup);
    }
    Ok(Repair { removed, backups })
}

/// Refuses (with nothing changed) a cut of `found` at segment `at`, keeping `keep` bytes of
/// it, unless the log it leaves opens cleanly: replayed as `open` replays it, complete, and
/// naming the snapshot the snapshot file holds.
fn check_cut<F: FileSystem>(
    fs: &F,
    dir: &Path,
    found: &Inspection,
    at: usize,
    keep: u64,
) -> Result<(), StorageError> {
    let damaged = &found.segments[at];
    let refuse = |detail: String| {
        Err(corrupt(
            "log",
            &damaged.path,
            keep,
            format!("{detail}; nothing was changed"),
        ))
    };
    let kept = at + usize::from(keep > 0);
    if kept == 0 {
        let leftovers = match found.leftovers.len() {
            0 => String::new(),
            n => format!(
                " ({n} segments before a gap in the sequence numbers are leftovers of an \
                 interrupted deletion, which open deletes: they must not become the log again)"
            ),
        };
        return refuse(format!(
            "the damage is in the header or start record of the first live segment, so cutting \
             there would leave no live segment{leftovers}: the log cannot be repaired by \
             cutting (restore the segment, or rebuild this node)"
        ));
    }
    // The segments the cut leaves, classified as `open` will classify them.
    let removed: Vec<&Path> = found.segments[kept..]
        .iter()
        .map(|s| s.path.as_path())
        .collect();
    let mut left = list_segments(fs, dir)?;
    left.retain(|s| !removed.contains(&s.path.as_path()));
    let live = left.split_off(live_from(&left));
    let expected: Vec<&Path> = found.segments[..kept]
        .iter()
        .map(|s| s.path.as_path())
        .collect();
    if live
        .iter()
        .map(|s| s.path.as_path())
        .ne(expected.iter().copied())
    {
        return refuse(format!(
            "after the cut, open would take {:?} as the live log, not the segments kept",
            live.iter().map(|s| &s.path).collect::<Vec<_>>()
        ));
    }
    let mut limits: Vec<u64> = found.segments[..kept].iter().map(|s| s.len).collect();
    if keep > 0 {
        limits[at] = keep;
    }
    let replayed = replay(fs, &live, Some(&limits), |_| {})?;
    if let Some(stop) = replayed.stop {
        return refuse(match stop.kind {
            StopKind::Incomplete => {
                format!(
                    "cutting here would leave an incomplete log: {}",
                    stop.detail
                )
            }
            StopKind::TornTail | StopKind::Corrupt => format!(
                "cutting here would leave a damaged log: {} (in {} at byte {})",
                stop.detail,
                live[stop.segment].path.display(),
                stop.offset
            ),
        });
    }
    let mut state = replayed.state;
    match resolve_snapshot(
        fs,
        &dir.join(SNAPSHOT_FILE),
        &dir.join(SNAPSHOT_TMP),
        &mut state,
    ) {
        Ok(_) => Ok(()),
        Err(StorageError::Corrupt {
            what, path, detail, ..
        }) => refuse(format!(
            "the log left by cutting here would not match its snapshot ({what} {}: {detail})",
            path.display()
        )),
        Err(e) => Err(e),
    }
}
