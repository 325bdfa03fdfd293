//! Recovery: replaying the log's segments into the durable state they record, and finding
//! the snapshot file the log names.
//!
//! The replay is one pass over the segments, oldest first, each streamed through a small
//! buffer: the memory it needs beyond the recovered state is one record. It starts from the
//! oldest segment's start record — the hard state, the snapshot reference and the terms of
//! the log as they were when that segment was started — so it does not need the segments
//! before it. Entries that only those older segments held are stood in for by
//! *placeholders* (index and term, no data): every rule of [`DurableState::apply`] looks
//! only at indexes and terms, so the replay takes exactly the decisions a replay of the whole
//! history would, and a later snapshot covers the placeholders. If one is left at the end,
//! segments that were still needed are gone, and the log is [`StopKind::Incomplete`].

use std::io::{self, BufReader, Read};
use std::path::{Path, PathBuf};

use flotilla_raft::{DurableState, Entry, HardState, Index, Persist, Snapshot, Term};
use serde::{Deserialize, Serialize};

use super::segment::{
    check_segment_header, followed_by, read_up_to, ReadError, RecordReader, SEGMENT_HEADER_LEN,
};
use crate::format::{Record, SnapshotRef};
use crate::fs::FileSystem;
use crate::StorageError;

pub(crate) const SNAPSHOT_MAGIC: &[u8; 8] = b"FLOTSNP1";
pub(crate) const SNAPSHOT_HEADER_LEN: usize = 40;
const READ_BUFFER: usize = 256 << 10;

/// Names a snapshot's contents without carrying them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct SnapRef {
    pub index: Index,
    pub term: Term,
    pub len: u64,
    pub crc: u32,
}

impl SnapRef {
    pub(crate) fn of(snapshot: &Snapshot) -> SnapRef {
        SnapRef {
            index: snapshot.index,
            term: snapshot.term,
            len: snapshot.data.len() as u64,
            crc: crc32fast::hash(&snapshot.data),
        }
    }

    /// The snapshot that stands in for the real one in a state without data: same index and
    /// term (all `DurableState::apply` looks at), the encoded reference as its data (never
    /// empty, so "no snapshot" stays recognisable by empty data).
    pub(crate) fn placeholder(&self) -> Snapshot {
        Snapshot {
            index: self.index,
            term: self.term,
            data: postcard::to_stdvec(self).expect("encoding a SnapRef cannot fail"),
        }
    }

    /// The reference a placeholder stands for; `None` for "no snapshot".
    pub(crate) fn from_placeholder(snapshot: &Snapshot) -> Option<SnapRef> {
        if snapshot.data.is_empty() {
            return None;
        }
        postcard::from_bytes(&snapshot.data).ok()
    }
}

impl From<SnapRef> for SnapshotRef {
    fn from(s: SnapRef) -> Self {
        SnapshotRef {
            index: s.index,
            term: s.term,
            len: s.len,
            crc: s.crc,
        }
    }
}

impl From<SnapshotRef> for SnapRef {
    fn from(s: SnapshotRef) -> Self {
        SnapRef {
            index: s.index,
            term: s.term,
            len: s.len,
            crc: s.crc,
        }
    }
}

/// A segment file found in the directory.
#[derive(Clone, Debug)]
pub(crate) struct SegmentFile {
    pub seq: u64,
    /// The log's last index when it was started (from its name).
    pub base: Index,
    pub path: PathBuf,
}

/// Why a replay stopped before the end of the last segment.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum StopKind {
    /// A damaged last record with nothing after it: a crash during its append.
    TornTail,
    /// Damage that no crash makes.
    Corrupt,
    /// Every record is good, but the oldest segment starts after entries no snapshot covers.
    Incomplete,
}

#[derive(Clone, Debug)]
pub(crate) struct Stop {
    /// Position in the list of segments replayed.
    pub segment: usize,
    pub offset: u64,
    pub kind: StopKind,
    pub detail: String,
}

/// What a replay found.
#[derive(Debug)]
pub(crate) struct Replay {
    /// The state the good records give, its snapshot a [`SnapRef::placeholder`].
    pub state: DurableState,
    /// Per segment replayed: its good length (up to the stop in the one that stopped) and
    /// the length of its header and start record.
    pub lens: Vec<(u64, u64)>,
    pub stop: Option<Stop>,
}

/// One good record, for [`replay`]'s observer.
pub(crate) struct Seen<'a> {
    pub segment: usize,
    pub offset: u64,
    pub len: u64,
    pub record: &'a Record,
}

/// Replays `segments` (consecutive, oldest first), each up to `limits[i]` bytes if given.
/// Stops at the first damage (see [`StopKind`]); I/O errors are errors. `observe` sees
/// every good record, segment start records included.
pub(crate) fn replay<F: FileSystem>(
    fs: &F,
    segments: &[SegmentFile],
    limits: Option<&[u64]>,
    mut observe: impl FnMut(Seen<'_>),
) -> Result<Replay, StorageError> {
    let mut state = DurableState::default();
    // Entries above the snapshot and at or below this index are placeholders.
    let mut missing_upto: Index = 0;
    let mut lens = Vec::with_capacity(segments.len());
    for (i, segment) in segments.iter().enumerate() {
        let path = &segment.path;
        let last = i + 1 == segments.len();
        let file = fs.open_read(path).map_err(io_err(path))?;
        let limit = limits.map_or(u64::MAX, |l| l[i]);
        let mut reader = BufReader::with_capacity(READ_BUFFER, file.take(limit));
        let stop = |offset: u64, kind: StopKind, detail: String| Stop {
            segment: i,
            offset,
            kind,
            detail,
        };
        let corrupt = |offset: u64, detail: String| stop(offset, StopKind::Corrupt, detail);
        let mut header = [0u8; SEGMENT_HEADER_LEN];
        let got = read_up_to(&mut reader, &mut header).map_err(io_err(path))?;
        let early = |lens: &mut Vec<(u64, u64)>, state, stop| {
            lens.push((0, 0));
            Ok(Replay {
                state,
                lens: std::mem::take(lens),
                stop: Some(stop),
            })
        };
        match check_segment_header(&header[..got]) {
            Ok(seq) if seq == segment.seq => {}
            Ok(seq) => {
                let detail = format!("header says sequence {seq}, the name {}", segment.seq);
                return early(&mut lens, state, corrupt(0, detail));
            }
            Err(detail) => {
                return early(
                    &mut lens,
                    state,
                    corrupt(0, format!("segment header: {detail}")),
                )
            }
        }
        let mut records = RecordReader::new(reader, SEGMENT_HEADER_LEN as u64);
        let start = match records.next_record() {
            Ok(Some(record)) => record,
            Ok(None) => {
                let detail = "no segment start record".to_string();
                return early(&mut lens, state, corrupt(SEGMENT_HEADER_LEN as u64, detail));
            }
            Err(ReadError::Io(e)) => return Err(io_err(path)(e)),
            Err(ReadError::Damaged { damage, .. }) => {
                let detail = format!("segment start {}: {}", damage.what, damage.detail);
                return early(&mut lens, state, corrupt(SEGMENT_HEADER_LEN as u64, detail));
            }
        };
        let start_len = records.offset;
        observe(Seen {
            segment: i,
            offset: SEGMENT_HEADER_LEN as u64,
            len: start_len - SEGMENT_HEADER_LEN as u64,
            record: &start,
        });
        let begun = if i == 0 {
            begin(&start, segment.base).map(|(begun, missing)| {
                state = begun;
                missing_upto = missing;
            })
        } else {
            continues(&state, &start, segment.base)
        };
        if let Err(detail) = begun {
            return early(&mut lens, state, corrupt(SEGMENT_HEADER_LEN as u64, detail));
        }
        loop {
            let at = records.offset;
            let damage = match records.next_record() {
                Ok(None) => break,
                Ok(Some(record)) => {
                    observe(Seen {
                        segment: i,
                        offset: at,
                        len: records.offset - at,
                        record: &record,
                    });
                    match apply_record(&mut state, &mut missing_upto, record) {
                        Ok(()) => continue,
                        Err(detail) => {
                            // A good record that cannot follow the state: damage whose end
                            // is known. Anything after it means it is no torn append.
                            let mut rest = Vec::new();
                            records.read_rest(&mut rest).map_err(io_err(path))?;
                            let follows = (!rest.is_empty())
                                .then(|| format!("{} more bytes follow it", rest.len()));
                            (format!("record: {detail}"), follows)
                        }
                    }
                }
                Err(ReadError::Io(e)) => return Err(io_err(path)(e)),
                Err(ReadError::Damaged { damage, bytes }) => {
                    let mut tail = bytes;
                    records.read_rest(&mut tail).map_err(io_err(path))?;
                    (
                        format!("{}: {}", damage.what, damage.detail),
                        followed_by(&damage, &tail),
                    )
                }
            };
            let (detail, follows) = damage;
            lens.push((at, start_len));
            let stop = match (last, follows) {
                (false, _) => corrupt(
                    at,
                    format!(
                        "{detail}; in a segment that is not the last, so this is no torn append"
                    ),
                ),
                (true, Some(follows)) => corrupt(
                    at,
                    format!("{detail}; {follows}, so this is no torn append"),
                ),
                // A torn tail is cut off only from a log that is complete without it.
                (true, None) => incomplete(&state, missing_upto)
                    .unwrap_or_else(|| stop(at, StopKind::TornTail, detail)),
            };
            return Ok(Replay {
                state,
                lens,
                stop: Some(stop),
            });
        }
        lens.push((records.offset, start_len));
    }
    let stop = incomplete(&state, missing_upto);
    Ok(Replay { state, lens, stop })
}

/// The [`StopKind::Incomplete`] stop, if placeholders up to `missing_upto` are left in
/// `state`: entries recorded only in segments that are gone, which no snapshot covers.
fn incomplete(state: &DurableState, missing_upto: Index) -> Option<Stop> {
    let first = state.snapshot.index + 1;
    (missing_upto >= first && state.last_index() >= first).then(|| Stop {
        segment: 0,
        offset: 0,
        kind: StopKind::Incomplete,
        detail: format!(
            "entries {first}..={} are recorded only in older segments, which are gone, and no snapshot covers them",
            missing_upto.min(state.last_index())
        ),
    })
}

/// The state a replay starts from at the oldest segment's start record, and the index up to
/// which its entries are placeholders.
fn begin(start: &Record, base: Index) -> Result<(DurableState, Index), String> {
    let Some(segment_start) = &start.segment_start else {
        return Err("the first record is no segment start".into());
    };
    if segment_start.log_end != base {
        return Err(format!(
            "segment start at index {}, the name says {base}",
            segment_start.log_end
        ));
    }
    let mut state = DurableState {
        hard_state: start.hard_state.unwrap_or_default(),
        ..DurableState::default()
    };
    if let Some(snap_ref) = start.snapshot {
        state.snapshot = SnapRef::from(snap_ref).placeholder();
    }
    let first = state.snapshot.index + 1;
    let end = segment_start.log_end;
    let runs = &segment_start.term_runs;
    if end < state.snapshot.index {
        return Err(format!(
            "segment start at index {end}, below its snapshot at {}",
            state.snapshot.index
        ));
    }
    if end >= first && runs.first().map(|r| r.0) != Some(first) {
        return Err(format!(
            "term runs do not start at index {first}, after the snapshot"
        ));
    }
    for (k, &(from, term)) in runs.iter().enumerate() {
        let to = runs.get(k + 1).map_or(end, |next| next.0 - 1);
        state.entries.extend((from..=to).map(|index| Entry {
            index,
            term,
            data: Vec::new(),
        }));
    }
    Ok((state, end))
}

/// Checks that a later segment's start record continues the state the segments before it
/// left.
fn continues(state: &DurableState, start: &Record, base: Index) -> Result<(), String> {
    let Some(segment_start) = &start.segment_start else {
        return Err("the first record is no segment start".into());
    };
    let hard_state = start.hard_state.unwrap_or_default();
    let snapshot = start.snapshot.map_or(0, |s| s.index);
    if segment_start.log_end != base
        || segment_start.log_end != state.last_index()
        || hard_state != state.hard_state
        || snapshot != state.snapshot.index
    {
        return Err(format!(
            "segment starts at index {} (name: {base}) with {hard_state:?} and snapshot {snapshot}, \
             but the segments before it end at index {} with {:?} and snapshot {}",
            segment_start.log_end,
            state.last_index(),
            state.hard_state,
            state.snapshot.index
        ));
    }
    Ok(())
}

/// Applies one record read from disk, or leaves `state` as it was and says why the record
/// cannot follow it. The batch is split in two — its snapshot, then its entries and hard
/// state — which is what `DurableState::apply` does in sequence anyway; in between, the
/// entries are checked against the state so that `apply`'s contract assertions cannot fire
/// on bad input.
pub(crate) fn apply_record(
    state: &mut DurableState,
    missing_upto: &mut Index,
    record: Record,
) -> Result<(), String> {
    if record.segment_start.is_some() {
        return Err("a segment start inside a segment".into());
    }
    match record.snapshot {
        // Rare: apply it to a copy, so that a record refused below leaves the state as it was.
        Some(snap_ref) => {
            let mut next = state.clone();
            next.apply(&Persist {
                snapshot: Some(SnapRef::from(snap_ref).placeholder()),
                ..Persist::default()
            });
            apply_entries_and_hard_state(
                &mut next,
                missing_upto,
                record.entries,
                record.hard_state,
            )?;
            *state = next;
            Ok(())
        }
        None => {
            apply_entries_and_hard_state(state, missing_upto, record.entries, record.hard_state)
        }
    }
}

fn apply_entries_and_hard_state(
    state: &mut DurableState,
    missing_upto: &mut Index,
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
        // Placeholders from this index on are replaced by real entries.
        *missing_upto = (*missing_upto).min(first.index - 1);
    }
    state.apply_owned(Persist {
        hard_state,
        snapshot: None,
        entries,
    });
    Ok(())
}

/// Replaces the placeholder in `state.snapshot` by the snapshot file it names (`snapshot`,
/// or `snapshot.tmp` between the commit point and the rename). Returns the reference and
/// whether it was found in `tmp` (so the rename must be finished).
pub(crate) fn resolve_snapshot<F: FileSystem>(
    fs: &F,
    main_path: &Path,
    tmp_path: &Path,
    state: &mut DurableState,
) -> Result<(Option<SnapRef>, bool), StorageError> {
    let Some(snap_ref) = SnapRef::from_placeholder(&state.snapshot) else {
        // No record ever named a snapshot (a placeholder is never empty).
        if exists(fs, main_path)? {
            return Err(corrupt(
                "snapshot",
                main_path,
                0,
                "the log names no snapshot, yet a snapshot file exists".into(),
            ));
        }
        return Ok((None, false));
    };
    let main = match read_snapshot(fs, main_path) {
        Ok(Some((found, snapshot))) if found == snap_ref => {
            state.snapshot = snapshot;
            return Ok((Some(snap_ref), false));
        }
        Ok(Some((found, _))) => corrupt(
            "snapshot",
            main_path,
            0,
            format!("holds {found:?}, the log names {snap_ref:?}"),
        ),
        Ok(None) => corrupt(
            "snapshot",
            main_path,
            0,
            format!("missing; the log names {snap_ref:?}"),
        ),
        Err(e @ StorageError::Corrupt { .. }) => e,
        Err(e) => return Err(e),
    };
    // A crash between the commit point and the rename leaves the named snapshot in the
    // temp file, which was synced before the commit. Anything else there is debris.
    if let Ok(Some((found, snapshot))) = read_snapshot(fs, tmp_path) {
        if found == snap_ref {
            state.snapshot = snapshot;
            return Ok((Some(snap_ref), true));
        }
    }
    Err(main)
}

pub(crate) fn encode_snapshot_header(snap_ref: &SnapRef) -> [u8; SNAPSHOT_HEADER_LEN] {
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

/// Reads and checks a snapshot file, streaming it once into the snapshot's data; `Ok(None)`
/// if there is none.
pub(crate) fn read_snapshot<F: FileSystem>(
    fs: &F,
    path: &Path,
) -> Result<Option<(SnapRef, Snapshot)>, StorageError> {
    let mut file = match fs.open_read(path) {
        Ok(file) => file,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(io_err(path)(e)),
    };
    let bad = |offset: u64, detail: &str| corrupt("snapshot", path, offset, detail.into());
    let mut header = [0u8; SNAPSHOT_HEADER_LEN];
    if read_up_to(&mut file, &mut header).map_err(io_err(path))? < SNAPSHOT_HEADER_LEN {
        return Err(bad(0, "shorter than its header"));
    }
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
    // Read what is there (never allocating on the word of the length field), then compare.
    let mut data = Vec::new();
    file.read_to_end(&mut data).map_err(io_err(path))?;
    if snap_ref.len != data.len() as u64 {
        return Err(bad(
            SNAPSHOT_HEADER_LEN as u64,
            &format!(
                "header says {} bytes of data, file has {}",
                snap_ref.len,
                data.len()
            ),
        ));
    }
    if crc32fast::hash(&data) != snap_ref.crc {
        return Err(bad(SNAPSHOT_HEADER_LEN as u64, "data checksum mismatch"));
    }
    let snapshot = Snapshot {
        index: snap_ref.index,
        term: snap_ref.term,
        data,
    };
    Ok(Some((snap_ref, snapshot)))
}

pub(crate) fn exists<F: FileSystem>(fs: &F, path: &Path) -> Result<bool, StorageError> {
    fs.exists(path).map_err(io_err(path))
}

pub(crate) fn io_err(path: &Path) -> impl FnOnce(io::Error) -> StorageError + '_ {
    move |source| StorageError::Io {
        path: path.to_path_buf(),
        source,
    }
}

pub(crate) fn corrupt(
    what: &'static str,
    path: &Path,
    offset: u64,
    detail: String,
) -> StorageError {
    StorageError::Corrupt {
        what,
        path: path.to_path_buf(),
        offset,
        detail,
    }
}
