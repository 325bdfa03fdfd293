//! The write-ahead log's record payload, byte by byte — written and read by this code alone,
//! not by a serde derive of in-memory types, so a change to `Entry` or `HardState` cannot
//! change what is on disk without a change here (and a new format version).
//!
//! Format version 2 (the log starts with `FLOTWAL` and the version byte `2`). All integers
//! are little-endian:
//!
//! ```text
//! payload   = flags:u8 [hard_state] [snapshot_ref] count:u32 entry*count
//! flags     = bit 0: a hard state follows; bit 1: a snapshot reference follows; others 0
//! hard_state= term:u64 has_vote:u8 (0 or 1) vote:u64 (0 when has_vote is 0)
//! snapshot  = index:u64 term:u64 len:u64 crc:u32     (the snapshot file's data length, CRC32)
//! entry     = index:u64 term:u64 len:u32 data:[u8; len]
//! ```
//!
//! Version 1 was postcard's encoding of the same fields; it is no longer read (a log in it
//! is refused with its version named). Decoding never panics: every length is checked
//! against the bytes present, and anything left over or out of range is an error.

use flotilla_raft::{Entry, HardState, Index, Term};

/// The format version this code writes and reads.
pub const VERSION: u8 = 2;

/// A snapshot as a record names it: the snapshot file must hold data of this length and CRC.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct SnapshotRef {
    pub index: Index,
    pub term: Term,
    pub len: u64,
    pub crc: u32,
}

/// One decoded record payload.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Record {
    pub hard_state: Option<HardState>,
    pub snapshot: Option<SnapshotRef>,
    pub entries: Vec<Entry>,
}

const HAS_HARD_STATE: u8 = 1;
const HAS_SNAPSHOT: u8 = 2;

/// Appends the payload of a record to `out`.
pub(crate) fn encode(
    out: &mut Vec<u8>,
    hard_state: Option<HardState>,
    snapshot: Option<SnapshotRef>,
    entries: &[Entry],
) {
    let mut flags = 0;
    if hard_state.is_some() {
        flags |= HAS_HARD_STATE;
    }
    if snapshot.is_some() {
        flags |= HAS_SNAPSHOT;
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

/// The encoded size of a record's entries part for `entries` (for chunking).
pub(crate) fn entry_size(entry: &Entry) -> usize {
    20 + entry.data.len()
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
    if flags & !(HAS_HARD_STATE | HAS_SNAPSHOT) != 0 {
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
    Ok(Record {
        hard_state,
        snapshot,
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
        encode(&mut out, hs, snap, &entries);
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
                entries
            }
        );
    }

    #[test]
    fn garbage_is_an_error_never_a_panic() {
        let mut out = Vec::new();
        encode(&mut out, None, None, &[]);
        assert!(decode(&out).is_ok());
        assert!(decode(&[]).is_err());
        assert!(decode(&[0x80, 0, 0, 0, 0]).is_err(), "unknown flag");
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
