//! One segment file of the log: its name, its header, its framed records, and a reader that
//! streams them and says precisely where and how a record is damaged.
//!
//! ```text
//! segment = magic:"FLOTWAL3" seq:u64 header_crc:u32   (crc32 of the 16 bytes before)
//!           record*                                     (the first one a segment start)
//! record  = len:u32 crc:u32 header_crc:u32 payload:[u8; len]
//!           (crc = crc32(payload), header_crc = crc32(len ++ crc))
//! ```
//!
//! The payload is [`crate::format`]'s. The header CRC protects the length, so a flipped bit
//! in a length field cannot make a good record look like a torn one (or make the reader skip
//! data). Nothing read here is trusted before its checks pass: no allocation is made on the
//! word of a length field beyond [`MAX_RECORD_LEN`].

use std::io::{self, Read};

use flotilla_raft::{Entry, HardState, Index};

use crate::format::{self, SegmentStart, SnapshotRef};

/// The largest record payload, in bytes (64 MiB).
pub(crate) const MAX_RECORD_LEN: usize = 64 << 20;
pub(crate) const RECORD_HEADER_LEN: usize = 12;
/// `FLOTWAL` and the format version ([`crate::format::VERSION`]).
pub(crate) const SEGMENT_MAGIC: &[u8; 8] = b"FLOTWAL3";
pub(crate) const MAGIC_PREFIX: &[u8; 7] = b"FLOTWAL";
pub(crate) const SEGMENT_HEADER_LEN: usize = 20;
const SEGMENT_SUFFIX: &str = ".wal";

/// `<seq>-<log end at its start>.wal`, both as 16 hex digits: sorted by name is sorted by
/// sequence number, and an operator sees at a glance where each segment starts.
pub(crate) fn segment_name(seq: u64, base: Index) -> String {
    format!("{seq:016x}-{base:016x}{SEGMENT_SUFFIX}")
}

/// The sequence number and start index a segment's name gives; `None` if `name` is not a
/// segment's.
pub(crate) fn parse_segment_name(name: &str) -> Option<(u64, Index)> {
    let stem = name.strip_suffix(SEGMENT_SUFFIX)?;
    let (seq, base) = stem.split_once('-')?;
    if seq.len() != 16 || base.len() != 16 {
        return None;
    }
    Some((
        u64::from_str_radix(seq, 16).ok()?,
        u64::from_str_radix(base, 16).ok()?,
    ))
}

pub(crate) fn encode_segment_header(seq: u64) -> [u8; SEGMENT_HEADER_LEN] {
    let mut header = [0u8; SEGMENT_HEADER_LEN];
    header[..8].copy_from_slice(SEGMENT_MAGIC);
    header[8..16].copy_from_slice(&seq.to_le_bytes());
    let crc = crc32fast::hash(&header[..16]);
    header[16..20].copy_from_slice(&crc.to_le_bytes());
    header
}

/// Checks a segment header; returns its sequence number or what is wrong with it.
pub(crate) fn check_segment_header(header: &[u8]) -> Result<u64, String> {
    if header.len() < MAGIC_PREFIX.len() + 1 || &header[..MAGIC_PREFIX.len()] != MAGIC_PREFIX {
        return Err("bad magic".into());
    }
    if &header[..8] != SEGMENT_MAGIC {
        return Err(format!(
            "format version {:?}, this build reads version {}",
            header[MAGIC_PREFIX.len()] as char,
            format::VERSION
        ));
    }
    if header.len() < SEGMENT_HEADER_LEN {
        return Err(format!(
            "header of {} bytes, {SEGMENT_HEADER_LEN} expected",
            header.len()
        ));
    }
    let crc = u32::from_le_bytes(header[16..20].try_into().expect("4 bytes"));
    if crc32fast::hash(&header[..16]) != crc {
        return Err("header checksum mismatch".into());
    }
    Ok(u64::from_le_bytes(
        header[8..16].try_into().expect("8 bytes"),
    ))
}

/// Encodes a record and frames it: `[len][crc][header_crc][payload]`. `Err` (with the
/// payload's size) if the payload would exceed [`MAX_RECORD_LEN`].
pub(crate) fn frame(
    hard_state: Option<HardState>,
    snapshot: Option<SnapshotRef>,
    segment_start: Option<&SegmentStart>,
    entries: &[Entry],
) -> Result<Vec<u8>, usize> {
    let mut buf = vec![0u8; RECORD_HEADER_LEN];
    format::encode(&mut buf, hard_state, snapshot, segment_start, entries);
    let payload_len = buf.len() - RECORD_HEADER_LEN;
    if payload_len > MAX_RECORD_LEN {
        return Err(payload_len);
    }
    let crc = crc32fast::hash(&buf[RECORD_HEADER_LEN..]);
    buf[0..4].copy_from_slice(&(payload_len as u32).to_le_bytes());
    buf[4..8].copy_from_slice(&crc.to_le_bytes());
    let header_crc = crc32fast::hash(&buf[0..8]);
    buf[8..12].copy_from_slice(&header_crc.to_le_bytes());
    Ok(buf)
}

/// A record that failed its checks.
#[derive(Debug)]
pub(crate) struct Damage {
    pub what: &'static str,
    pub detail: String,
    /// Where the record ends by its (intact) header, relative to its start; `None` when the
    /// header itself is damaged or incomplete, so nobody knows.
    pub end: Option<usize>,
}

pub(crate) enum ReadError {
    Io(io::Error),
    /// The record at the reader's offset is damaged; `bytes` are the bytes of it that were
    /// read (the caller reads the rest of the file after them to judge the damage).
    Damaged {
        damage: Damage,
        bytes: Vec<u8>,
    },
}

/// Streams the records of one segment (after its header) through a small buffer.
pub(crate) struct RecordReader<R> {
    reader: R,
    /// Offset in the file of the next record.
    pub offset: u64,
    payload: Vec<u8>,
}

impl<R: Read> RecordReader<R> {
    /// `reader` is positioned at `offset`.
    pub(crate) fn new(reader: R, offset: u64) -> Self {
        RecordReader {
            reader,
            offset,
            payload: Vec::new(),
        }
    }

    /// The next record, `Ok(None)` at the end of the file. On damage the offset stays at the
    /// damaged record.
    pub(crate) fn next_record(&mut self) -> Result<Option<format::Record>, ReadError> {
        let mut header = [0u8; RECORD_HEADER_LEN];
        let got = read_up_to(&mut self.reader, &mut header).map_err(ReadError::Io)?;
        if got == 0 {
            return Ok(None);
        }
        let unknown_end = |what, detail: String| ReadError::Damaged {
            damage: Damage {
                what,
                detail,
                end: None,
            },
            bytes: header[..got].to_vec(),
        };
        if got < RECORD_HEADER_LEN {
            return Err(unknown_end(
                "record header",
                format!("only {got} of its {RECORD_HEADER_LEN} bytes"),
            ));
        }
        let len = u32::from_le_bytes(header[0..4].try_into().expect("4 bytes")) as usize;
        let crc = u32::from_le_bytes(header[4..8].try_into().expect("4 bytes"));
        let header_crc = u32::from_le_bytes(header[8..12].try_into().expect("4 bytes"));
        if crc32fast::hash(&header[0..8]) != header_crc {
            return Err(unknown_end(
                "record header",
                "header checksum mismatch".into(),
            ));
        }
        if len > MAX_RECORD_LEN {
            return Err(unknown_end(
                "record header",
                format!("length {len} exceeds the maximum {MAX_RECORD_LEN}"),
            ));
        }
        self.payload.resize(len, 0);
        let present = read_up_to(&mut self.reader, &mut self.payload).map_err(ReadError::Io)?;
        let end = Some(RECORD_HEADER_LEN + len);
        let damaged = |payload: &[u8], detail: String| ReadError::Damaged {
            damage: Damage {
                what: "record",
                detail,
                end,
            },
            bytes: [&header[..], payload].concat(),
        };
        if present < len {
            return Err(damaged(
                &self.payload[..present],
                format!("payload of {len} bytes, only {present} present"),
            ));
        }
        if crc32fast::hash(&self.payload) != crc {
            return Err(damaged(&self.payload, "payload checksum mismatch".into()));
        }
        match format::decode(&self.payload) {
            Ok(record) => {
                self.offset += (RECORD_HEADER_LEN + len) as u64;
                Ok(Some(record))
            }
            Err(e) => Err(damaged(&self.payload, format!("decode error: {e}"))),
        }
    }

    /// Length of the record just returned by `next_record` is `offset` minus the one before;
    /// this reads everything left in the file (after a damaged record).
    pub(crate) fn read_rest(&mut self, into: &mut Vec<u8>) -> io::Result<()> {
        self.reader.read_to_end(into).map(|_| ())
    }
}

/// Reads until `buf` is full or the end of the input; returns how many bytes were read.
pub(crate) fn read_up_to(reader: &mut impl Read, buf: &mut [u8]) -> io::Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        match reader.read(&mut buf[filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(filled)
}

/// The offset of the first intact record (header and payload checksums good) that starts
/// after offset 0 of `bytes`, if any. Only called on a damaged segment, to tell a torn last
/// record from damage in the middle.
pub(crate) fn intact_record_after(bytes: &[u8]) -> Option<usize> {
    (1..bytes.len().saturating_sub(RECORD_HEADER_LEN - 1)).find(|&at| {
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

/// Whether the damaged record at the start of `tail` (the rest of the segment from it) is
/// followed by anything that a crash during its append could not have left: bytes past the
/// end its intact header gives, or — when its header is damaged — an intact record anywhere
/// after it. `Some(why)` if so.
pub(crate) fn followed_by(damage: &Damage, tail: &[u8]) -> Option<String> {
    match damage.end {
        Some(end) if end < tail.len() => Some(format!("{} more bytes follow it", tail.len() - end)),
        Some(_) => None,
        None => intact_record_after(tail)
            .map(|next| format!("an intact record follows {next} bytes after it")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_sort_by_sequence() {
        let a = segment_name(2, 300);
        let b = segment_name(10, 7);
        assert_eq!(parse_segment_name(&a), Some((2, 300)));
        assert_eq!(parse_segment_name(&b), Some((10, 7)));
        assert!(a < b);
        for bad in ["wal", "x.wal", "1-2.wal", &format!("{a}.tmp"), "LOCK"] {
            assert_eq!(parse_segment_name(bad), None, "{bad}");
        }
    }

    #[test]
    fn a_segment_header_checks_magic_version_and_crc() {
        let header = encode_segment_header(42);
        assert_eq!(check_segment_header(&header), Ok(42));
        let mut v2 = header;
        v2[7] = b'2';
        assert!(check_segment_header(&v2)
            .unwrap_err()
            .contains("version '2'"));
        let mut flipped = header;
        flipped[9] ^= 1;
        assert!(check_segment_header(&flipped).is_err());
        assert!(check_segment_header(&header[..10]).is_err());
        assert!(check_segment_header(b"garbage!").is_err());
    }
}
