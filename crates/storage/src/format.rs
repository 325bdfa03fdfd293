//! The write-ahead log's record payload, byte by byte — written and read by this code alone,
//! not by a serde derive of in-memory types, so a change to `Entry` or `HardState` cannot
//! change what is on disk without a change here (and a new format version).
//!
//! Format version 3 (each log segment starts with `FLOTWAL` and the version byte `3`). All
//! integers are little-endian:
//!
//! ```text
//! payload   = flags:u8 [hard_state] [snapshot_ref] [segment_start] count:u32 entry*count
//! flags     = bit 0: a hard state follows; bit 1: a snapshot reference follows;
//!             bit 2: a segment start follows (then count is 0); others 0
//! hard_state= term:u64 has_vote:u8 (0 or 1) vote:u64 (0 when has_vote is 0)
//! snapshot  = index:u64 term:u64 len:u64 crc:u32     (the snapshot file's data length, CRC32)
//! segment_start = log_end:u64 runs:u32 (first_index:u64 term:u64)*runs
//!             (the log's last index when the segment was started, and the terms of the
//!              entries after the snapshot up to it, as runs: each run's entries, from its
//!              first index up to the next run's, have its term)
//! entry     = index:u64 term:u64 len:u32 data:[u8; len]
//! ```
//!
//! Version 2 had the same records in one `wal` file without segment starts; version 1 was
//! postcard's encoding of the same fields. Neither is read any more (a log in them is
//! refused with its version named). Decoding never panics: every length is checked
//! against the bytes present, and anything left over or out of range is an error.

use flotilla_raft::{Entry, HardState, Index, Term};

/// The format version this code writes and reads.
pub const VERSION: u8 = 3;

/// A snapshot as a record names it: the snapshot file must hold data of this length and CRC.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct SnapshotRef {
    pub index: Index,
    pub term: Term,
    pub len: u64,
    pub crc: u32,
}

/// What the first record of a log segment says about the log before it: enough to replay
/// from this segment on when the segments before it are gone (see the `wal` module docs).
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct SegmentStart {
    /// The log's last index when the segment was started.
    pub log_end: Index,
    /// The terms of the entries after the snapshot up to `log_end`, as runs
    /// `(first index, term)`, in index order.
    pub term_runs: Vec<(Index, Term)>,
}

/// One decoded record payload.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Record {
    pub hard_state: Option<HardState>,
    pub snapshot: Option<SnapshotRef>,
    pub segment_start: Option<SegmentStart>,
    pub entries: Vec<Entry>,
}

const HAS_HARD_STATE: u8 = 1;
const HAS_SNAPSHOT: u8 = 2;
const HAS_SEGMENT_START: u8 = 4;

/// Appends the payload of a record to `out`. A record with a segment start has no entries.
pub(crate) fn encode(
    out: &mut Vec<u8>,
    hard_state: Option<HardState>,
    snapshot: Option<SnapshotRef>,
    segment_start: Option<&SegmentStart>,
    entries: &[Entry],
) {
    assert!(
        segment_start.is_none() || entries.is_empty(),
        "a segment start record carries no entries"
    );
    let mut flags = 0;
    if hard_state.is_some() {
        flags |= HAS_HARD_STATE;
    }
    if snapshot.is_some() {
        flags |= HAS_SNAPSHOT;
    }
    if segment_start.is_some() {
        flags |= HAS_SEGMENT_START;
    }
    out.push(flags);
    if let Some(hs) = hard_state {
        out.extend_from_slice(&hs.term.to_le_bytes());
        out.push(u8::from(hs.vote.is_some()));
        out.extend_from_slice(&hs.vote.unwrap_or(0).to_le_bytes());
    }
    if let Some(s) = snapshot {
        out.extend_from_slice(&s.index.to_le_bytes());
        out.extend_from_slice(&s.term.to_le_bytes());
        out.extend_from_slice(&s.len.to_le_bytes());
        out.extend_from_slice(&s.crc.to_le_bytes());
    }
    if let Some(start) = segment_start {
        out.extend_from_slice(&start.log_end.to_le_bytes());
        let runs = u32::try_from(start.term_runs.len()).expect("runs are bounded by the log");
        out.extend_from_slice(&runs.to_le_bytes());
        for &(first, term) in &start.term_runs {
            out.extend_from_slice(&first.to_le_bytes());
            out.extend_from_slice(&term.to_le_bytes());
        }
    }
    let count = u32::try_from(entries.len()).expect("a record's entries are bounded by its size");
    out.extend_from_slice(&count.to_le_bytes());
    for e in entries {
        out.extend_from_slice(&e.index.to_le_bytes());
        out.extend_from_slice(&e.term.to_le_bytes());
        let len = u32::try_from(e.data.len()).expect("an entry is bounded by the record size");
        out.extend_from_slice(&len.to_le_bytes());
        out.extend_from_slice(&e.data);
    }
}

struct Reader<'a> {
    bytes: &'a [u8],
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize, what: &str) -> Result<&'a [u8], String> {
        if self.bytes.len() < n {
            return Err(format!(
                "{what}: needs {n} bytes, {} left",
                self.bytes.len()
            ));
        }
        let (head, rest) = self.bytes.split_at(n);
        self.bytes = rest;
        Ok(head)
    }
    fn u8(&mut self, what: &str) -> Result<u8, String> {
        Ok(self.take(1, what)?[0])
    }
    fn u32(&mut self, what: &str) -> Result<u32, String> {
        Ok(u32::from_le_bytes(
            self.take(4, what)?.try_into().expect("4"),
        ))
    }
    fn u64(&mut self, what: &str) -> Result<u64, String> {
        Ok(u64::from_le_bytes(
            self.take(8, what)?.try_into().expect("8"),
        ))
    }
}

/// Decodes a record payload; an error says what is wrong.
pub(crate) fn decode(payload: &[u8]) -> Result<Record, String> {
    let mut r = Reader { bytes: payload };
    let flags = r.u8("flags")?;
    if flags & !(HAS_HARD_STATE | HAS_SNAPSHOT | HAS_SEGMENT_START) != 0 {
        return Err(format!("unknown flags {flags:#04x}"));
    }
    let hard_state = if flags & HAS_HARD_STATE != 0 {
        let term = r.u64("hard state term")?;
        let vote = match (r.u8("hard state vote flag")?, r.u64("hard state vote")?) {
            (0, 0) => None,
            (1, v) => Some(v),
            (f, v) => return Err(format!("bad vote ({f}, {v})")),
        };
        Some(HardState { term, vote })
    } else {
        None
    };
    let snapshot = if flags & HAS_SNAPSHOT != 0 {
        Some(SnapshotRef {
            index: r.u64("snapshot index")?,
            term: r.u64("snapshot term")?,
            len: r.u64("snapshot length")?,
            crc: r.u32("snapshot crc")?,
        })
    } else {
        None
    };
    let segment_start = if flags & HAS_SEGMENT_START != 0 {
        let log_end = r.u64("segment start log end")?;
        let runs = r.u32("segment start runs")? as usize;
        if runs > r.bytes.len() / 16 {
            return Err(format!(
                "{runs} term runs cannot fit in {} bytes",
                r.bytes.len()
            ));
        }
        let mut term_runs = Vec::with_capacity(runs);
        for _ in 0..runs {
            term_runs.push((r.u64("run first index")?, r.u64("run term")?));
        }
        if term_runs.windows(2).any(|w| w[0].0 >= w[1].0)
            || term_runs.last().is_some_and(|&(first, _)| first > log_end)
        {
            return Err("term runs out of order".into());
        }
        Some(SegmentStart { log_end, term_runs })
    } else {
        None
    };
    let count = r.u32("entry count")? as usize;
    // Each entry takes at least 20 bytes: a count beyond that is damage, not an allocation.
    if count > r.bytes.len() / 20 {
        return Err(format!(
            "{count} entries cannot fit in {} bytes",
            r.bytes.len()
        ));
    }
    let mut entries = Vec::with_capacity(count);
    for _ in 0..count {
        let index = r.u64("entry index")?;
        let term = r.u64("entry term")?;
        let len = r.u32("entry length")? as usize;
        let data = r.take(len, "entry data")?.to_vec();
        entries.push(Entry { term, index, data });
    }
    if !r.bytes.is_empty() {
        return Err(format!("{} bytes after the encoded record", r.bytes.len()));
    }
    if segment_start.is_some() && !entries.is_empty() {
        return Err("a segment start record with entries".into());
    }
    Ok(Record {
        hard_state,
        snapshot,
        segment_start,
        entries,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_record_round_trips_and_its_bytes_are_the_documented_ones() {
        let entries = vec![Entry {
            term: 2,
            index: 7,
            data: vec![0xAB],
        }];
        let hs = Some(HardState {
            term: 3,
            vote: Some(1),
        });
        let snap = Some(SnapshotRef {
            index: 5,
            term: 2,
            len: 9,
            crc: 0xDEAD_BEEF,
        });
        let mut out = Vec::new();
        encode(&mut out, hs, snap, None, &entries);
        let mut want = vec![3u8];
        want.extend(3u64.to_le_bytes());
        want.push(1);
        want.extend(1u64.to_le_bytes());
        want.extend(5u64.to_le_bytes());
        want.extend(2u64.to_le_bytes());
        want.extend(9u64.to_le_bytes());
        want.extend(0xDEAD_BEEFu32.to_le_bytes());
        want.extend(1u32.to_le_bytes());
        want.extend(7u64.to_le_bytes());
        want.extend(2u64.to_le_bytes());
        want.extend(1u32.to_le_bytes());
        want.push(0xAB);
        assert_eq!(out, want);
        assert_eq!(
            decode(&out).unwrap(),
            Record {
                hard_state: hs,
                snapshot: snap,
                segment_start: None,
                entries
            }
        );
        let start = SegmentStart {
            log_end: 9,
            term_runs: vec![(6, 2), (8, 3)],
        };
        let mut out = Vec::new();
        encode(&mut out, hs, snap, Some(&start), &[]);
        let mut want = vec![7u8];
        want.extend(3u64.to_le_bytes());
        want.push(1);
        want.extend(1u64.to_le_bytes());
        want.extend(5u64.to_le_bytes());
        want.extend(2u64.to_le_bytes());
        want.extend(9u64.to_le_bytes());
        want.extend(0xDEAD_BEEFu32.to_le_bytes());
        want.extend(9u64.to_le_bytes());
        want.extend(2u32.to_le_bytes());
        for v in [6u64, 2, 8, 3] {
            want.extend(v.to_le_bytes());
        }
        want.extend(0u32.to_le_bytes());
        assert_eq!(out, want);
        assert_eq!(decode(&out).unwrap().segment_start, Some(start));
    }

    #[test]
    fn garbage_is_an_error_never_a_panic() {
        let mut out = Vec::new();
        encode(&mut out, None, None, None, &[]);
        assert!(decode(&out).is_ok());
        assert!(decode(&[]).is_err());
        assert!(decode(&[0x80, 0, 0, 0, 0]).is_err(), "unknown flag");
        assert!(
            decode(&[4, 0, 0, 0, 0, 0, 0, 0, 0, 255, 255, 255, 255, 0, 0, 0, 0]).is_err(),
            "huge run count"
        );
        assert!(decode(&[0, 255, 255, 255, 255]).is_err(), "huge count");
        assert!(decode(&[0, 0, 0, 0, 0, 1]).is_err(), "trailing byte");
        assert!(
            decode(&[1, 0, 0, 0, 0, 0, 0, 0, 0, 2]).is_err(),
            "bad vote flag"
        );
        let mut seed = 1u64;
        for len in 0..200 {
            let bytes: Vec<u8> = (0..len)
                .map(|_| {
                    seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1);
                    (seed >> 56) as u8
                })
                .collect();
            let _ = decode(&bytes);
        }
    }
}
