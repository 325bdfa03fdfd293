//! The record format of intermediate files and spill runs: writing, reading and checking it.
//!
//! # Intermediate file format
//!
//! Map task `m`'s file, reachable as every `mr-{m}-{r}`:
//!
//! ```text
//! segment 0 … segment n_reduce-1    one after another, from offset 0
//! index     per segment: offset: u64 LE, length: u64 LE   (16 × n_reduce bytes)
//! footer    CRC-32 (IEEE) of the index bytes and then the n_reduce bytes: u32 LE,
//!           n_reduce: u64 LE, magic 8 bytes "FLMRIX01"             (20 bytes, at the end)
//! ```
//!
//! The segments must tile `0..index start` exactly (segment 0 at offset 0, each one starting
//! where the previous one ends). Each segment, like a spill run's segment:
//!
//! ```text
//! magic     8 bytes   "FLMRKV01"
//! record*   key_len: u32 LE (< 0xFFFF_FFFF), value_len: u32 LE, key bytes, value bytes
//! trailer   0xFFFF_FFFF: u32, record count: u64 LE, CRC-32 (IEEE) of all record bytes: u32 LE
//! ```
//!
//! Keys and values are UTF-8 (they come from `&str`); records are sorted by key.

use std::borrow::Borrow;
use std::fs::File;
use std::io::{self, BufReader, Read, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use super::*;

/// The first bytes of every segment of an intermediate file (and of a spill run).
pub const INTERMEDIATE_MAGIC: [u8; 8] = *b"FLMRKV01";

/// The last bytes of every intermediate file: the end of its index footer.
pub const INDEX_MAGIC: [u8; 8] = *b"FLMRIX01";

/// Bytes of an intermediate file's footer: index CRC-32 (u32), n_reduce (u64), magic.
pub(super) const FOOTER_LEN: u64 = 4 + 8 + INDEX_MAGIC.len() as u64;
/// Bytes of one index entry: a segment's offset and length (u64 each).
pub(super) const INDEX_ENTRY_LEN: u64 = 16;

/// A `key_len` of this value marks the trailer, so keys are at most one byte shorter.
const END_MARK: u32 = u32::MAX;

/// Longest key a pair may have, in bytes.
pub const MAX_KEY_LEN: usize = END_MARK as usize - 1;
/// Longest value a pair may have, in bytes.
pub const MAX_VALUE_LEN: usize = u32::MAX as usize;

/// Checksummed bytes are gathered into blocks of this size first (CRC-32 is much faster
/// over long slices than over a record's few bytes).
const CRC_BLOCK: usize = 32 * 1024;

/// Writes the intermediate format to `out`.
pub(super) struct RecordWriter<W: Write> {
    out: W,
    /// Record bytes not yet checksummed and written.
    block: Vec<u8>,
    crc: crc32fast::Hasher,
    count: u64,
    bytes: u64,
}

impl<W: Write> RecordWriter<W> {
    pub(super) fn new(mut out: W) -> io::Result<Self> {
        out.write_all(&INTERMEDIATE_MAGIC)?;
        Ok(RecordWriter {
            out,
            block: Vec::with_capacity(CRC_BLOCK),
            crc: crc32fast::Hasher::new(),
            count: 0,
            bytes: INTERMEDIATE_MAGIC.len() as u64,
        })
    }

    pub(super) fn write(&mut self, key: &[u8], value: &[u8]) -> io::Result<()> {
        debug_assert!(key.len() <= MAX_KEY_LEN && value.len() <= MAX_VALUE_LEN);
        self.block
            .extend_from_slice(&(key.len() as u32).to_le_bytes());
        self.block
            .extend_from_slice(&(value.len() as u32).to_le_bytes());
        self.block.extend_from_slice(key);
        self.block.extend_from_slice(value);
        self.count += 1;
        self.bytes += 8 + key.len() as u64 + value.len() as u64;
        if self.block.len() >= CRC_BLOCK {
            self.write_block()?;
        }
        Ok(())
    }

    fn write_block(&mut self) -> io::Result<()> {
        self.crc.update(&self.block);
        self.out.write_all(&self.block)?;
        self.block.clear();
        Ok(())
    }

    /// Writes the trailer; returns the writer and the total bytes written.
    pub(super) fn finish(mut self) -> io::Result<(W, u64)> {
        self.write_block()?;
        let mut trailer = [0u8; 16];
        trailer[..4].copy_from_slice(&END_MARK.to_le_bytes());
        trailer[4..12].copy_from_slice(&self.count.to_le_bytes());
        trailer[12..].copy_from_slice(&self.crc.finalize().to_le_bytes());
        self.out.write_all(&trailer)?;
        Ok((self.out, self.bytes + trailer.len() as u64))
    }
}

/// A source of sorted records for a merge.
pub(super) trait RecordSource {
    /// Reads the next record into `key` and `value`; `false` at the end.
    fn next_into(&mut self, key: &mut String, value: &mut String) -> Result<bool, TaskError>;
}

/// Reads and checks the intermediate format.
pub(super) struct RecordReader<R: Read> {
    inner: R,
    /// What to call this data in errors (a path, or a spill run).
    label: String,
    /// Bytes left in the file or segment.
    remaining: u64,
    crc: crc32fast::Hasher,
    /// Record bytes read but not yet checksummed (see [`CRC_BLOCK`]).
    unchecked: Vec<u8>,
    count: u64,
    prev_key: Vec<u8>,
    finished: bool,
}

impl<R: Read> RecordReader<R> {
    /// Checks the magic. `len` is the size of the file or segment.
    fn open(inner: R, len: u64, label: String) -> Result<Self, TaskError> {
        let mut reader = RecordReader {
            inner,
            label,
            remaining: len,
            crc: crc32fast::Hasher::new(),
            unchecked: Vec::new(),
            count: 0,
            prev_key: Vec::new(),
            finished: false,
        };
        let mut magic = [0u8; 8];
        reader.read_exact(&mut magic, "the header")?;
        if magic != INTERMEDIATE_MAGIC {
            return Err(reader.corrupt("not an intermediate file (wrong magic bytes)".into()));
        }
        Ok(reader)
    }

    fn corrupt(&self, reason: String) -> TaskError {
        TaskError::Corrupt {
            file: self.label.clone(),
            reason,
        }
    }

    fn read_exact(&mut self, buf: &mut [u8], what: &str) -> Result<(), TaskError> {
        if (buf.len() as u64) > self.remaining {
            return Err(self.corrupt(format!("truncated: it ends inside {what}")));
        }
        match self.inner.read_exact(buf) {
            Ok(()) => {
                self.remaining -= buf.len() as u64;
                Ok(())
            }
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => {
                Err(self.corrupt(format!("truncated: it ends inside {what}")))
            }
            Err(e) => Err(TaskError::Io {
                action: "read",
                path: PathBuf::from(&self.label),
                source: e,
            }),
        }
    }

    fn read_string(&mut self, out: &mut String, len: usize, what: &str) -> Result<(), TaskError> {
        let mut bytes = std::mem::take(out).into_bytes();
        bytes.clear();
        bytes.resize(len, 0);
        self.read_exact(&mut bytes, what)?;
        self.checksum(&bytes);
        match String::from_utf8(bytes) {
            Ok(text) => {
                *out = text;
                Ok(())
            }
            Err(_) => Err(self.corrupt(format!("record {}: {what} is not UTF-8", self.count))),
        }
    }

    /// Adds record bytes to the checksum.
    fn checksum(&mut self, bytes: &[u8]) {
        if bytes.len() >= CRC_BLOCK {
            self.crc.update(&self.unchecked);
            self.unchecked.clear();
            self.crc.update(bytes);
            return;
        }
        self.unchecked.extend_from_slice(bytes);
        if self.unchecked.len() >= CRC_BLOCK {
            self.crc.update(&self.unchecked);
            self.unchecked.clear();
        }
    }

    fn read_trailer(&mut self) -> Result<(), TaskError> {
        let mut trailer = [0u8; 12];
        self.read_exact(&mut trailer, "the trailer")?;
        let count = u64::from_le_bytes(trailer[..8].try_into().expect("8 bytes"));
        let crc = u32::from_le_bytes(trailer[8..].try_into().expect("4 bytes"));
        if count != self.count {
            return Err(self.corrupt(format!(
                "the trailer counts {count} records but there are {}",
                self.count
            )));
        }
        self.crc.update(&self.unchecked);
        self.unchecked.clear();
        let actual = self.crc.clone().finalize();
        if crc != actual {
            return Err(self.corrupt(format!(
                "checksum mismatch (trailer {crc:08x}, records {actual:08x})"
            )));
        }
        if self.remaining != 0 {
            return Err(self.corrupt(format!(
                "{} unexpected bytes after the trailer",
                self.remaining
            )));
        }
        self.finished = true;
        Ok(())
    }
}

impl<R: Read> RecordSource for RecordReader<R> {
    fn next_into(&mut self, key: &mut String, value: &mut String) -> Result<bool, TaskError> {
        if self.finished {
            return Ok(false);
        }
        let mut lens = [0u8; 8];
        self.read_exact(&mut lens[..4], "a record header")?;
        let key_len = u32::from_le_bytes(lens[..4].try_into().expect("4 bytes"));
        if key_len == END_MARK {
            self.read_trailer()?;
            return Ok(false);
        }
        self.read_exact(&mut lens[4..], "a record header")?;
        let value_len = u32::from_le_bytes(lens[4..].try_into().expect("4 bytes"));
        let record_len = u64::from(key_len) + u64::from(value_len);
        if record_len > self.remaining {
            return Err(self.corrupt(format!(
                "truncated: record {} claims {record_len} bytes but only {} remain",
                self.count, self.remaining
            )));
        }
        self.checksum(&lens);
        self.read_string(key, key_len as usize, "a key")?;
        self.read_string(value, value_len as usize, "a value")?;
        if key.as_bytes() < self.prev_key.as_slice() {
            return Err(self.corrupt(format!(
                "keys out of order at record {} ({:?} after {:?})",
                self.count,
                shorten(key),
                shorten(&String::from_utf8_lossy(&self.prev_key))
            )));
        }
        self.prev_key.clear();
        self.prev_key.extend_from_slice(key.as_bytes());
        self.count += 1;
        Ok(true)
    }
}

/// Reads bytes `pos..end` of a file (borrowed or owned) by positioned reads, so several
/// readers can share one file.
pub(super) struct SegmentReader<F> {
    pub(super) file: F,
    pub(super) pos: u64,
    pub(super) end: u64,
}

impl<F: Borrow<File>> Read for SegmentReader<F> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let left = self.end - self.pos;
        let want = (buf.len() as u64).min(left) as usize;
        if want == 0 {
            return Ok(0);
        }
        let n = self.file.borrow().read_at(&mut buf[..want], self.pos)?;
        self.pos += n as u64;
        Ok(n)
    }
}

/// A reader of one segment of an intermediate file.
pub(super) type SegmentRecords = RecordReader<BufReader<SegmentReader<File>>>;

/// Opens segment `reduce` of attempt `attempt`'s file of map task `map` for reading, after
/// checking the file's footer and index; returns its reader and the segment's length. An
/// error is one of reading map task `map`'s output ([`TaskError::unreadable_map`]).
pub(super) fn open_intermediate(
    dir: &Path,
    map: usize,
    attempt: u32,
    reduce: usize,
    buffer: usize,
) -> Result<(SegmentRecords, u64), TaskError> {
    open_intermediate_unmarked(dir, map, attempt, reduce, buffer).map_err(|e| e.reading_map(map))
}

fn open_intermediate_unmarked(
    dir: &Path,
    map: usize,
    attempt: u32,
    reduce: usize,
    buffer: usize,
) -> Result<(SegmentRecords, u64), TaskError> {
    let (file, offset, len, label) = find_intermediate(dir, map, attempt, reduce)?;
    let reader = segment_records(file, offset, len, buffer, label)?;
    Ok((reader, len))
}

/// Finds segment `reduce` of attempt `attempt`'s file of map task `map` after checking the
/// file's footer and index: the open file, the segment's offset and length in it (to serve
/// it: [`crate::shuffle`]). An error is one of reading map task `map`'s output.
pub fn locate_segment(
    dir: &Path,
    map: usize,
    attempt: u32,
    reduce: usize,
) -> Result<(File, u64, u64), TaskError> {
    find_intermediate(dir, map, attempt, reduce)
        .map(|(file, offset, len, _)| (file, offset, len))
        .map_err(|e| e.reading_map(map))
}

/// The file, offset, length and label of a segment (see [`locate_segment`]).
fn find_intermediate(
    dir: &Path,
    map: usize,
    attempt: u32,
    reduce: usize,
) -> Result<(File, u64, u64, String), TaskError> {
    let path = intermediate_path(dir, map, attempt, reduce);
    let file = match File::open(&path) {
        Ok(file) => file,
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            return Err(TaskError::MissingIntermediate { path, map })
        }
        Err(e) => return Err(TaskError::io("open intermediate file", &path)(e)),
    };
    let label = format!("intermediate file {}", path.display());
    let meta = file
        .metadata()
        .map_err(TaskError::io("stat intermediate file", &path))?;
    if !meta.is_file() {
        return Err(TaskError::Corrupt {
            file: label,
            reason: "not a regular file".into(),
        });
    }
    let (offset, len) = find_segment(&file, meta.len(), reduce, &path, &label)?;
    Ok((file, offset, len, label))
}

/// A reader of the records in bytes `offset..offset + len` of `file`, checking the magic,
/// with a read buffer of `max_buffer` bytes or, for a shorter segment, its length (a
/// buffer is zeroed when first filled, so a large one for a few bytes costs time and
/// resident memory).
pub(super) fn segment_records<F: Borrow<File>>(
    file: F,
    offset: u64,
    len: u64,
    max_buffer: usize,
    label: String,
) -> Result<RecordReader<BufReader<SegmentReader<F>>>, TaskError> {
    let buffer = usize::try_from(len).map_or(max_buffer, |len| len.min(max_buffer));
    let segment = SegmentReader {
        file,
        pos: offset,
        end: offset + len,
    };
    RecordReader::open(BufReader::with_capacity(buffer, segment), len, label)
}

/// Checks the footer and the index of an intermediate file of `file_len` bytes; returns
/// `(offset, len)` of segment `reduce`, which lies inside the file.
fn find_segment(
    file: &File,
    file_len: u64,
    reduce: usize,
    path: &Path,
    label: &str,
) -> Result<(u64, u64), TaskError> {
    let corrupt = |reason: String| TaskError::Corrupt {
        file: label.to_owned(),
        reason,
    };
    let read_error = TaskError::io("read", path);
    if file_len < FOOTER_LEN {
        return Err(corrupt(format!(
            "truncated or not an intermediate file: {file_len} bytes cannot hold the \
             {FOOTER_LEN}-byte footer"
        )));
    }
    let mut footer = [0u8; FOOTER_LEN as usize];
    file.read_exact_at(&mut footer, file_len - FOOTER_LEN)
        .map_err(read_error)?;
    if footer[12..] != INDEX_MAGIC {
        return Err(corrupt(
            "wrong magic bytes at the end: truncated, or not an intermediate file".into(),
        ));
    }
    let stored_crc = u32::from_le_bytes(footer[..4].try_into().expect("4 bytes"));
    let n_reduce = u64::from_le_bytes(footer[4..12].try_into().expect("8 bytes"));
    let data_len = n_reduce
        .checked_mul(INDEX_ENTRY_LEN)
        .and_then(|index_len| (file_len - FOOTER_LEN).checked_sub(index_len));
    let Some(data_len) = data_len else {
        return Err(corrupt(format!(
            "the footer claims {n_reduce} partitions, whose index does not fit in {file_len} \
             bytes"
        )));
    };
    if reduce as u64 >= n_reduce {
        return Err(corrupt(format!(
            "it holds partitions for {n_reduce} reduce tasks, none for reduce task {reduce}"
        )));
    }
    // Read the index in chunks (its size is bounded only by the file's): check its CRC, and
    // that the segments tile `0..data_len` exactly.
    let mut crc = crc32fast::Hasher::new();
    let mut problem = None;
    let mut wanted = (0, 0);
    let mut expected_offset = 0u64;
    let mut chunk = vec![0u8; (n_reduce.min(4096) * INDEX_ENTRY_LEN) as usize];
    let mut entry = 0u64;
    while entry < n_reduce {
        let count = (n_reduce - entry).min(chunk.len() as u64 / INDEX_ENTRY_LEN);
        let bytes = &mut chunk[..(count * INDEX_ENTRY_LEN) as usize];
        file.read_exact_at(bytes, data_len + entry * INDEX_ENTRY_LEN)
            .map_err(TaskError::io("read", path))?;
        crc.update(bytes);
        for fields in bytes.chunks_exact(INDEX_ENTRY_LEN as usize) {
            let offset = u64::from_le_bytes(fields[..8].try_into().expect("8 bytes"));
            let len = u64::from_le_bytes(fields[8..].try_into().expect("8 bytes"));
            let end = offset.checked_add(len);
            if problem.is_none()
                && (offset != expected_offset || end.is_none_or(|end| end > data_len))
            {
                problem = Some(format!(
                    "index entry {entry} (offset {offset}, length {len}) does not follow \
                     the previous segment (which ends at {expected_offset}) inside the \
                     {data_len} bytes of segments"
                ));
            }
            if entry == reduce as u64 {
                wanted = (offset, len);
            }
            expected_offset = end.unwrap_or(u64::MAX);
            entry += 1;
        }
    }
    crc.update(&n_reduce.to_le_bytes());
    let actual_crc = crc.finalize();
    if actual_crc != stored_crc {
        return Err(corrupt(format!(
            "index checksum mismatch (footer {stored_crc:08x}, index {actual_crc:08x})"
        )));
    }
    if problem.is_none() && expected_offset != data_len {
        problem = Some(format!(
            "the segments end at {expected_offset}, not where the index starts ({data_len})"
        ));
    }
    if let Some(problem) = problem {
        return Err(corrupt(problem));
    }
    Ok(wanted)
}

/// Reads segment `reduce` of attempt `attempt`'s file of map task `map` to its end without
/// keeping it, with every check a reduce makes (the coordinator's check of an output a reduce
/// reported lost); returns how many records it holds.
pub fn check_intermediate(
    dir: &Path,
    map: usize,
    attempt: u32,
    reduce: usize,
) -> Result<u64, TaskError> {
    let (mut reader, _) = open_intermediate(dir, map, attempt, reduce, MERGE_BUFFER)?;
    let (mut key, mut value) = (String::new(), String::new());
    let mut records = 0;
    while reader.next_into(&mut key, &mut value)? {
        records += 1;
    }
    Ok(records)
}

/// Reads all of segment `reduce` of attempt `attempt`'s file of map task `map` (for tests
/// and inspection; tasks stream instead).
pub fn read_intermediate(
    dir: &Path,
    map: usize,
    attempt: u32,
    reduce: usize,
) -> Result<Vec<(String, String)>, TaskError> {
    let (mut reader, _) = open_intermediate(dir, map, attempt, reduce, MERGE_BUFFER)?;
    let mut pairs = Vec::new();
    let (mut key, mut value) = (String::new(), String::new());
    while reader.next_into(&mut key, &mut value)? {
        pairs.push((key.clone(), value.clone()));
    }
    Ok(pairs)
}
