//! Running one map task or one reduce task against the job's shared directory.
//!
//! # Map
//!
//! [`run_map`] streams its input file through [`App::map`], sends each pair to reduce task
//! [`bucket`]`(key, n_reduce)`, and makes, for **every** `r` in `0..n_reduce`, the name
//! `dir/mr-{map}-{r}` ([`intermediate_path`]; `mr-{map}-{r}.{attempt}` for a later
//! [`MapTask::attempt`], so attempts of one task never share a file) under which reduce task
//! `r` finds that bucket's pairs sorted by key (byte order). Pairs are buffered in memory up to
//! [`MapTask::memory_limit`] bytes; past that the buffer is sorted and spilled to an unnamed
//! temporary run file, and the final output is a k-way merge of the runs and what is left
//! in memory. Runs are merged in levels of [`SPILL_FAN_IN`] as they pile up, and before the
//! final merge, so no merge reads more than [`SPILL_FAN_IN`] sources. A merge goes bucket by
//! bucket and opens a bucket's segments only when it gets to it, so at most [`SPILL_FAN_IN`]
//! run readers (64 KiB of buffer each) are open at once, whatever `n_reduce` is
//! ([`MapStats::peak_spill_readers`]). A map task's memory is thus bounded — the limit, plus
//! the largest single pair, plus 1 MiB of read buffers, plus 16 bytes of index per partition
//! and run — whatever its input or output size, and its open files stay few.
//!
//! **One file, `n_reduce` names.** The names `mr-{map}-0` … `mr-{map}-{n_reduce - 1}` are
//! hard links to **one** file holding every partition of the map task: the `n_reduce`
//! sorted segments one after another, then an index of where each one lies (see the format
//! below). Reduce task `r` opens `mr-{map}-{r}` and reads only segment `r` of it. This is
//! for speed: creating a file (a new inode) was measured at some 450 µs on the disk this
//! runs on, against about 8 µs for a hard link and 15 µs for a rename, so one file per
//! partition (128 map tasks × 10 reduce tasks = 1280 creations, ≈ 0.6 s) took most of a
//! 51 MB word count's time. The file is written under a temporary name, then published name
//! by name: for each `mr-{map}-{r}` a hard link to it gets a fresh temporary name, which is
//! renamed over `mr-{map}-{r}` (the last name takes the temporary file itself), so each name
//! is replaced atomically and no temporary name is left. Removing every name frees the file.
//! If the file system refuses hard links, the remaining names each get a complete copy of
//! the file through the same temporary-file-and-rename path: correct, only slower.
//!
//! # Reduce
//!
//! [`run_reduce`] merges segment `reduce` of `dir/mr-{m}-{reduce}` for every map task `m`, of
//! the attempt [`ReduceTask::map_attempts`] names (a streaming k-way merge; with more than
//! [`REDUCE_FAN_IN`] map tasks, groups of files are first merged into temporary runs), calls
//! [`App::reduce`] once per distinct key
//! in key order — the values are pulled from the merge as the application iterates — and
//! writes `key value\n` lines to [`ReduceTask::output`] — in a job, the attempt's own
//! [`reduce_attempt_path`], which the coordinator renames to `mr-out-{reduce}`
//! ([`output_path`]) when it accepts that attempt. Its memory is a
//! few MiB of read buffers plus whatever the application keeps of one key's values. An exec
//! app's reduce program runs once per task instead: [`run_reduce_exec`] (see
//! [`crate::exec`]).
//!
//! # Guarantees
//!
//! - **Atomic, idempotent outputs.** Every output (intermediate or final) is written to a
//!   temporary file in `dir` whose name starts with [`TEMP_PREFIX`] — never `mr-out` — and
//!   only then renamed (or hard-linked under a temporary name and renamed) over its final
//!   name. Nobody ever sees a half-written file, and a re-executed or duplicate task replaces
//!   each name harmlessly: every name always points at one complete file. Temporary files
//!   and spill runs are removed when a task fails (spill runs are unnamed, so even a crash
//!   leaves none).
//! - **Nothing read is trusted.** An intermediate file ends with a footer (magic, partition
//!   count, CRC-32 of the index) and its index must describe segments that exactly tile the
//!   file before anything in it is used; each segment carries a magic header, and a trailer
//!   with the record count and a CRC-32 of every record; lengths are checked against the
//!   file's size before anything is allocated and keys must come in order, so a missing,
//!   truncated, corrupt or foreign file is a [`TaskError`] naming it, never silently read
//!   or skipped. A reduce's error in reading map task `m`'s file says so
//!   ([`TaskError::unreadable_map`]), so that the coordinator can run that map task again.
//! - **Clear errors.** An input that is missing, unreadable or a directory, an application's
//!   error, and every I/O failure come back as a [`TaskError`] that says what and where.
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
use std::cmp::{Ordering, Reverse};
use std::collections::binary_heap::PeekMut;
use std::collections::BinaryHeap;
use std::fs::File;
use std::io::{self, BufRead, BufReader, BufWriter, Read, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use crate::app::App;
use crate::exec::{ExecApp, ExecError, PairSource};
use crate::partition::bucket;

/// Every temporary file a task creates in the shared directory starts with this.
pub const TEMP_PREFIX: &str = ".mr-tmp-";

/// The first bytes of every segment of an intermediate file (and of a spill run).
pub const INTERMEDIATE_MAGIC: [u8; 8] = *b"FLMRKV01";

/// The last bytes of every intermediate file: the end of its index footer.
pub const INDEX_MAGIC: [u8; 8] = *b"FLMRIX01";

/// Bytes of an intermediate file's footer: index CRC-32 (u32), n_reduce (u64), magic.
const FOOTER_LEN: u64 = 4 + 8 + INDEX_MAGIC.len() as u64;
/// Bytes of one index entry: a segment's offset and length (u64 each).
const INDEX_ENTRY_LEN: u64 = 16;

/// A `key_len` of this value marks the trailer, so keys are at most one byte shorter.
const END_MARK: u32 = u32::MAX;

/// Longest key a pair may have, in bytes.
pub const MAX_KEY_LEN: usize = END_MARK as usize - 1;
/// Longest value a pair may have, in bytes.
pub const MAX_VALUE_LEN: usize = u32::MAX as usize;

/// How many spill runs of one level are merged into one run of the next level.
pub const SPILL_FAN_IN: usize = 16;

/// Buffer size for reading the input and for writing outputs.
const IO_BUFFER: usize = 128 * 1024;
/// Read buffer per run during a merge.
const MERGE_BUFFER: usize = 64 * 1024;

/// Where attempt `attempt` of map task `map` puts its pairs for reduce task `reduce`:
/// `dir/mr-{map}-{reduce}` for attempt 0 (the lab's name), `dir/mr-{map}-{reduce}.{attempt}`
/// for later attempts, so that two attempts of a map task never write the same file.
pub fn intermediate_path(dir: &Path, map: usize, attempt: u32, reduce: usize) -> PathBuf {
    if attempt == 0 {
        dir.join(format!("mr-{map}-{reduce}"))
    } else {
        dir.join(format!("mr-{map}-{reduce}.{attempt}"))
    }
}

/// `dir/mr-out-{reduce}`: reduce task `reduce`'s output.
pub fn output_path(dir: &Path, reduce: usize) -> PathBuf {
    dir.join(format!("mr-out-{reduce}"))
}

/// Where attempt `attempt` of reduce task `reduce` writes its output:
/// `dir/mr-reduce-{reduce}.{attempt}`. Only the coordinator names an output `mr-out-{reduce}`,
/// by renaming the attempt it accepts, so a late or duplicate attempt never replaces an
/// accepted output (and never one read after the job).
pub fn reduce_attempt_path(dir: &Path, reduce: usize, attempt: u32) -> PathBuf {
    dir.join(format!("mr-reduce-{reduce}.{attempt}"))
}

/// The job's output as 6.5840's test script compares it (`sort mr-out* | grep .`): every
/// non-empty line of every file in `dir` whose name starts with `mr-out`, sorted.
pub fn sorted_output_lines(dir: &Path) -> io::Result<Vec<String>> {
    let mut lines = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        if path
            .file_name()
            .and_then(|n| n.to_str())
            .is_some_and(|n| n.starts_with("mr-out"))
        {
            let text = std::fs::read_to_string(&path)?;
            lines.extend(text.lines().filter(|l| !l.is_empty()).map(str::to_owned));
        }
    }
    lines.sort();
    Ok(lines)
}

/// One map task.
#[derive(Clone, Copy, Debug)]
pub struct MapTask<'a> {
    /// The map task's number (its intermediate files are `mr-{id}-*`).
    pub id: usize,
    /// Which attempt of the task this is (0 for the first): its outputs' names depend on it
    /// ([`intermediate_path`]).
    pub attempt: u32,
    /// The input's name exactly as given to the coordinator; what [`App::map`] sees.
    pub input_name: &'a str,
    /// Where to read the input.
    pub input_path: &'a Path,
    /// Number of reduce tasks (≥ 1).
    pub n_reduce: usize,
    /// The job's shared directory.
    pub dir: &'a Path,
    /// Bytes of buffered pairs (keys, values and a small per-pair overhead) before the
    /// buffer is sorted and spilled to disk. Tiny values work, just slowly.
    pub memory_limit: usize,
}

/// One reduce task.
#[derive(Clone, Copy, Debug)]
pub struct ReduceTask<'a> {
    /// The reduce task's number (its inputs are `mr-*-{id}`, its output `mr-out-{id}`).
    pub id: usize,
    /// For each map task of the job, in order, the attempt whose outputs to read (the one the
    /// coordinator accepted); its length is the number of map tasks.
    pub map_attempts: &'a [u32],
    /// The job's shared directory.
    pub dir: &'a Path,
    /// Where the output goes, complete or not at all: in a job, this attempt's own
    /// [`reduce_attempt_path`], which the coordinator renames to [`output_path`] when it
    /// accepts the attempt.
    pub output: &'a Path,
}

/// What a map task did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MapStats {
    /// Input bytes the application read.
    pub bytes_read: u64,
    /// Pairs emitted.
    pub pairs: u64,
    /// Sorted runs spilled to disk because the buffer passed the memory limit.
    pub spills: u64,
    /// Bytes of the intermediate file written: its segments, index and footer, counted once
    /// however many names it has.
    pub bytes_written: u64,
    /// The most spill-run readers open at once (each with a 64 KiB read buffer): at most
    /// [`SPILL_FAN_IN`], whatever `n_reduce` and the number of spills.
    pub peak_spill_readers: usize,
}

/// What a reduce task did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ReduceStats {
    /// Bytes of intermediate data read: this task's segment of each map task's file.
    pub bytes_read: u64,
    /// Pairs read.
    pub pairs: u64,
    /// Distinct keys (= output lines).
    pub keys: u64,
    /// Bytes of output written.
    pub bytes_written: u64,
}

/// Why a task failed.
#[derive(Debug, thiserror::Error)]
pub enum TaskError {
    #[error("invalid task: {0}")]
    Invalid(String),
    #[error("cannot open input {}: {source}", path.display())]
    OpenInput {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("input {} is a directory, not a file", path.display())]
    InputIsDirectory { path: PathBuf },
    #[error("cannot read input {}: {source}", path.display())]
    ReadInput {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("app {app}: map of input {input:?} failed: {source}")]
    Map {
        app: String,
        input: String,
        #[source]
        source: io::Error,
    },
    #[error("app {app}: reduce of key {key:?} failed: {source}")]
    Reduce {
        app: String,
        /// The key (shortened if very long).
        key: String,
        #[source]
        source: io::Error,
    },
    #[error("intermediate file {} is missing (map task {map} has not written it)", path.display())]
    MissingIntermediate { path: PathBuf, map: usize },
    /// Map task `map`'s intermediate file cannot be used: `source` says why (corrupt,
    /// truncated, not a file, a read error).
    #[error("{source} (the output of map task {map})")]
    UnreadableIntermediate {
        map: usize,
        #[source]
        source: Box<TaskError>,
    },
    #[error("{file} is corrupt: {reason}")]
    Corrupt { file: String, reason: String },
    #[error("cannot {action} {}: {source}", path.display())]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error(transparent)]
    Exec(#[from] ExecError),
}

impl TaskError {
    /// The map task whose output a reduce could not read, if that is why it failed: the
    /// coordinator then runs that map task again.
    pub fn unreadable_map(&self) -> Option<usize> {
        match self {
            TaskError::MissingIntermediate { map, .. }
            | TaskError::UnreadableIntermediate { map, .. } => Some(*map),
            _ => None,
        }
    }

    /// `self`, marked as a failure to read map task `map`'s output.
    fn reading_map(self, map: usize) -> TaskError {
        match self {
            TaskError::MissingIntermediate { .. } | TaskError::UnreadableIntermediate { .. } => {
                self
            }
            other => TaskError::UnreadableIntermediate {
                map,
                source: Box::new(other),
            },
        }
    }

    fn io<'p>(action: &'static str, path: &'p Path) -> impl FnOnce(io::Error) -> TaskError + 'p {
        move |source| TaskError::Io {
            action,
            path: path.to_path_buf(),
            source,
        }
    }
}

/// `text`, cut to a readable length for an error message.
pub(crate) fn shorten(text: &str) -> String {
    const MAX: usize = 200;
    if text.len() <= MAX {
        return text.to_owned();
    }
    let mut end = MAX;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}… ({} bytes)", &text[..end], text.len())
}

// ---------------------------------------------------------------------------------------
// Record files

/// Checksummed bytes are gathered into blocks of this size first (CRC-32 is much faster
/// over long slices than over a record's few bytes).
const CRC_BLOCK: usize = 32 * 1024;

/// Writes the intermediate format to `out`.
struct RecordWriter<W: Write> {
    out: W,
    /// Record bytes not yet checksummed and written.
    block: Vec<u8>,
    crc: crc32fast::Hasher,
    count: u64,
    bytes: u64,
}

impl<W: Write> RecordWriter<W> {
    fn new(mut out: W) -> io::Result<Self> {
        out.write_all(&INTERMEDIATE_MAGIC)?;
        Ok(RecordWriter {
            out,
            block: Vec::with_capacity(CRC_BLOCK),
            crc: crc32fast::Hasher::new(),
            count: 0,
            bytes: INTERMEDIATE_MAGIC.len() as u64,
        })
    }

    fn write(&mut self, key: &[u8], value: &[u8]) -> io::Result<()> {
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
    fn finish(mut self) -> io::Result<(W, u64)> {
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
trait RecordSource {
    /// Reads the next record into `key` and `value`; `false` at the end.
    fn next_into(&mut self, key: &mut String, value: &mut String) -> Result<bool, TaskError>;
}

/// Reads and checks the intermediate format.
struct RecordReader<R: Read> {
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
struct SegmentReader<F> {
    file: F,
    pos: u64,
    end: u64,
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
type SegmentRecords = RecordReader<BufReader<SegmentReader<File>>>;

/// Opens segment `reduce` of attempt `attempt`'s file of map task `map` for reading, after
/// checking the file's footer and index; returns its reader and the segment's length. An
/// error is one of reading map task `map`'s output ([`TaskError::unreadable_map`]).
fn open_intermediate(
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
    let reader = segment_records(file, offset, len, buffer, label)?;
    Ok((reader, len))
}

/// A reader of the records in bytes `offset..offset + len` of `file`, checking the magic,
/// with a read buffer of `max_buffer` bytes or, for a shorter segment, its length (a
/// buffer is zeroed when first filled, so a large one for a few bytes costs time and
/// resident memory).
fn segment_records<F: Borrow<File>>(
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

// ---------------------------------------------------------------------------------------
// Merging

/// The smallest key of one source, waiting in the merge heap (its value waits in
/// [`Merger::values`], so that taking a value never disturbs the heap).
struct Head {
    key: String,
    source: usize,
}

impl PartialEq for Head {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}
impl Eq for Head {}
impl PartialOrd for Head {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Head {
    fn cmp(&self, other: &Self) -> Ordering {
        self.key
            .as_bytes()
            .cmp(other.key.as_bytes())
            .then(self.source.cmp(&other.source))
    }
}

/// A k-way merge of sorted sources: records in key order (ties in source order).
///
/// The current record is the top of the heap; advancing refills it in place from its
/// source and lets the heap sift it down (one sift instead of a pop and a push).
struct Merger<S> {
    sources: Vec<S>,
    heap: BinaryHeap<Reverse<Head>>,
    /// The value of each source's record in the heap.
    values: Vec<String>,
    started: bool,
    pairs: u64,
}

impl<S: RecordSource> Merger<S> {
    fn new(sources: Vec<S>) -> Self {
        Merger {
            heap: BinaryHeap::with_capacity(sources.len()),
            values: vec![String::new(); sources.len()],
            sources,
            started: false,
            pairs: 0,
        }
    }

    /// Moves to the next record; `false` once every source is exhausted.
    fn advance(&mut self) -> Result<bool, TaskError> {
        if !self.started {
            self.started = true;
            for source in 0..self.sources.len() {
                let mut key = String::new();
                if self.sources[source].next_into(&mut key, &mut self.values[source])? {
                    self.heap.push(Reverse(Head { key, source }));
                }
            }
        } else if let Some(mut top) = self.heap.peek_mut() {
            let Reverse(head) = &mut *top;
            let source = head.source;
            if !self.sources[source].next_into(&mut head.key, &mut self.values[source])? {
                PeekMut::pop(top);
            }
            // Dropping `top` sifts the refilled record down to its place.
        }
        let more = !self.heap.is_empty();
        if more {
            self.pairs += 1;
        }
        Ok(more)
    }

    fn top(&self) -> &Head {
        &self.heap.peek().expect("advance returned true").0
    }

    fn key(&self) -> &str {
        &self.top().key
    }

    fn value(&self) -> &str {
        &self.values[self.top().source]
    }

    fn take_value(&mut self) -> String {
        let source = self.top().source;
        std::mem::take(&mut self.values[source])
    }
}

impl<S: RecordSource + Send> PairSource for Merger<S> {
    fn next_pair(&mut self) -> Result<Option<(&str, &str)>, TaskError> {
        if self.advance()? {
            Ok(Some((self.key(), self.value())))
        } else {
            Ok(None)
        }
    }
}

/// Where a [`GroupValues`] iterator stopped.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum GroupState {
    /// The merger is on the group's first record, not yet handed out.
    AtFirst,
    /// Inside the group.
    InGroup,
    /// The merger is on the first record of the next group.
    NextGroup,
    /// The merge is exhausted.
    End,
    /// Reading failed; the error is kept.
    Failed,
}

/// The values of one key, pulled from the merge as the reduce function asks for them.
struct GroupValues<'m, S> {
    merger: &'m mut Merger<S>,
    key: &'m str,
    state: GroupState,
    error: Option<TaskError>,
}

impl<S: RecordSource> Iterator for GroupValues<'_, S> {
    type Item = String;

    fn next(&mut self) -> Option<String> {
        match self.state {
            GroupState::AtFirst => {
                self.state = GroupState::InGroup;
                Some(self.merger.take_value())
            }
            GroupState::InGroup => match self.merger.advance() {
                Ok(true) if self.merger.key() == self.key => Some(self.merger.take_value()),
                Ok(true) => {
                    self.state = GroupState::NextGroup;
                    None
                }
                Ok(false) => {
                    self.state = GroupState::End;
                    None
                }
                Err(e) => {
                    self.error = Some(e);
                    self.state = GroupState::Failed;
                    None
                }
            },
            GroupState::NextGroup | GroupState::End | GroupState::Failed => None,
        }
    }
}

// ---------------------------------------------------------------------------------------
// Map

/// One buffered pair: `data[offset..]` holds the key, then the value.
#[derive(Clone, Copy, Debug)]
struct Entry {
    offset: usize,
    bucket: u32,
    key_len: u32,
    value_len: u32,
}

/// Memory counted per buffered pair on top of its key and value bytes.
const ENTRY_OVERHEAD: usize = std::mem::size_of::<Entry>();

/// The in-memory pairs of a map task, all buckets in one arena.
#[derive(Default)]
struct PairBuffer {
    data: Vec<u8>,
    entries: Vec<Entry>,
}

impl PairBuffer {
    fn bytes(&self) -> usize {
        self.data.len() + self.entries.len() * ENTRY_OVERHEAD
    }

    fn push(&mut self, bucket: u32, key: &str, value: &str) {
        let offset = self.data.len();
        self.data.extend_from_slice(key.as_bytes());
        self.data.extend_from_slice(value.as_bytes());
        self.entries.push(Entry {
            offset,
            bucket,
            key_len: key.len() as u32,
            value_len: value.len() as u32,
        });
    }

    fn key(&self, entry: &Entry) -> &[u8] {
        &self.data[entry.offset..entry.offset + entry.key_len as usize]
    }

    fn value(&self, entry: &Entry) -> &[u8] {
        let start = entry.offset + entry.key_len as usize;
        &self.data[start..start + entry.value_len as usize]
    }

    /// Sorts by (bucket, key).
    fn sort(&mut self) {
        let data = &self.data;
        self.entries.sort_unstable_by(|a, b| {
            a.bucket.cmp(&b.bucket).then_with(|| {
                data[a.offset..a.offset + a.key_len as usize]
                    .cmp(&data[b.offset..b.offset + b.key_len as usize])
            })
        });
    }

    /// After [`PairBuffer::sort`]: the entries of each bucket, `n_reduce` slices.
    fn buckets(&self, n_reduce: usize) -> Vec<&[Entry]> {
        let mut slices = Vec::with_capacity(n_reduce);
        let mut rest = &self.entries[..];
        for r in 0..n_reduce {
            let len = rest.partition_point(|e| e.bucket as usize == r);
            let (mine, others) = rest.split_at(len);
            slices.push(mine);
            rest = others;
        }
        debug_assert!(rest.is_empty(), "every entry's bucket is below n_reduce");
        slices
    }

    fn clear(&mut self) {
        self.data.clear();
        self.entries.clear();
    }
}

/// A sorted slice of buffered entries as a merge source.
struct MemRun<'a> {
    buffer: &'a PairBuffer,
    entries: &'a [Entry],
}

impl RecordSource for MemRun<'_> {
    fn next_into(&mut self, key: &mut String, value: &mut String) -> Result<bool, TaskError> {
        let Some((entry, rest)) = self.entries.split_first() else {
            return Ok(false);
        };
        self.entries = rest;
        let as_str = |bytes| std::str::from_utf8(bytes).expect("buffered pairs came from &str");
        key.clear();
        key.push_str(as_str(self.buffer.key(entry)));
        value.clear();
        value.push_str(as_str(self.buffer.value(entry)));
        Ok(true)
    }
}

/// A sorted run on disk: one unnamed file, one segment (in the record format) per bucket.
struct SpillRun {
    file: File,
    /// `(offset, len)` of each bucket's segment.
    segments: Vec<(u64, u64)>,
    /// How many merges deep this run is (0 = spilled straight from memory).
    level: u32,
    /// Sequence number, for error messages.
    number: u64,
}

impl SpillRun {
    /// A reader of bucket `r`'s segment (with a read buffer of up to [`MERGE_BUFFER`]), which
    /// `gauge` counts while it lives.
    fn segment<'a>(
        &'a self,
        r: usize,
        gauge: &'a ReaderGauge,
    ) -> Result<SpillSegment<'a>, TaskError> {
        let (offset, len) = self.segments[r];
        let label = format!("spill run {} (bucket {r})", self.number);
        let reader = segment_records(&self.file, offset, len, MERGE_BUFFER, label)?;
        Ok(SpillSegment {
            reader,
            _counted: gauge.open(),
        })
    }
}

/// How many spill-run readers (each with its own [`MERGE_BUFFER`]) a map task has open at
/// once, and the most it ever had: the bound on its merge memory.
#[derive(Default)]
struct ReaderGauge {
    open: std::cell::Cell<usize>,
    peak: std::cell::Cell<usize>,
}

impl ReaderGauge {
    fn open(&self) -> OpenReader<'_> {
        let open = self.open.get() + 1;
        self.open.set(open);
        self.peak.set(self.peak.get().max(open));
        OpenReader(self)
    }
}

/// One reader counted by a [`ReaderGauge`], until dropped.
struct OpenReader<'a>(&'a ReaderGauge);

impl Drop for OpenReader<'_> {
    fn drop(&mut self) {
        self.0.open.set(self.0.open.get() - 1);
    }
}

/// A reader of one bucket's segment of a spill run.
struct SpillSegment<'a> {
    reader: RecordReader<BufReader<SegmentReader<&'a File>>>,
    _counted: OpenReader<'a>,
}

/// A source for the map side's merges.
enum MapSource<'a> {
    Memory(MemRun<'a>),
    Spill(SpillSegment<'a>),
}

impl RecordSource for MapSource<'_> {
    fn next_into(&mut self, key: &mut String, value: &mut String) -> Result<bool, TaskError> {
        match self {
            MapSource::Memory(run) => run.next_into(key, value),
            MapSource::Spill(run) => run.reader.next_into(key, value),
        }
    }
}

/// A map task in progress.
struct MapState<'t> {
    task: &'t MapTask<'t>,
    buffer: PairBuffer,
    spills: Vec<SpillRun>,
    spills_made: u64,
    pairs: u64,
    readers: ReaderGauge,
}

impl MapState<'_> {
    fn add(&mut self, key: &str, value: &str) -> Result<(), TaskError> {
        if key.len() > MAX_KEY_LEN || value.len() > MAX_VALUE_LEN {
            return Err(TaskError::Map {
                app: String::new(),
                input: self.task.input_name.to_owned(),
                source: io::Error::new(
                    io::ErrorKind::InvalidInput,
                    format!(
                        "pair too large (key {} bytes, value {} bytes; at most 4 GiB each)",
                        key.len(),
                        value.len()
                    ),
                ),
            });
        }
        let r = bucket(key, self.task.n_reduce);
        self.buffer.push(r as u32, key, value);
        self.pairs += 1;
        if self.buffer.bytes() > self.task.memory_limit {
            self.spill()?;
        }
        Ok(())
    }

    fn temp_error(&self) -> impl FnOnce(io::Error) -> TaskError + '_ {
        TaskError::io("write a spill run in", self.task.dir)
    }

    /// Sorts the buffer and writes it as a level-0 run, then merges full levels.
    fn spill(&mut self) -> Result<(), TaskError> {
        self.buffer.sort();
        let number = self.spills_made;
        let run = {
            let buckets = self.buffer.buckets(self.task.n_reduce);
            self.write_run(
                |r| {
                    Ok(vec![MapSource::Memory(MemRun {
                        buffer: &self.buffer,
                        entries: buckets[r],
                    })])
                },
                0,
                number,
            )?
        };
        self.spills.push(run);
        self.spills_made += 1;
        self.buffer.clear();
        // Merge the newest SPILL_FAN_IN runs while they are all of one level.
        while self.spills.len() >= SPILL_FAN_IN {
            let level = self.spills[self.spills.len() - SPILL_FAN_IN].level;
            if self.spills[self.spills.len() - SPILL_FAN_IN..]
                .iter()
                .any(|run| run.level != level)
            {
                break;
            }
            self.merge_newest_runs(level + 1)?;
        }
        Ok(())
    }

    /// Replaces the newest [`SPILL_FAN_IN`] runs with one run (of level `level`) merged from
    /// them.
    fn merge_newest_runs(&mut self, level: u32) -> Result<(), TaskError> {
        let first = self.spills.len() - SPILL_FAN_IN;
        let merged = {
            let tail = &self.spills[first..];
            self.write_run(
                |r| {
                    tail.iter()
                        .map(|run| Ok(MapSource::Spill(run.segment(r, &self.readers)?)))
                        .collect()
                },
                level,
                self.spills_made,
            )?
        };
        self.spills.truncate(first);
        self.spills.push(merged);
        Ok(())
    }

    /// Writes one run file, bucket by bucket: `sources(r)` opens bucket `r`'s sorted
    /// sources, which are merged into the run and dropped before the next bucket's are
    /// opened (so a merge holds one bucket's readers at a time, whatever `n_reduce` is).
    fn write_run<'s>(
        &'s self,
        mut sources: impl FnMut(usize) -> Result<Vec<MapSource<'s>>, TaskError>,
        level: u32,
        number: u64,
    ) -> Result<SpillRun, TaskError> {
        let file = tempfile::tempfile_in(self.task.dir).map_err(self.temp_error())?;
        let mut out = BufWriter::with_capacity(IO_BUFFER, &file);
        let mut segments = Vec::with_capacity(self.task.n_reduce);
        let mut offset = 0u64;
        for r in 0..self.task.n_reduce {
            let sources = sources(r)?;
            let writer = RecordWriter::new(&mut out).map_err(self.temp_error())?;
            let (_, len) = write_sources(sources, writer).map_err(|e| match e {
                MergeError::Read(e) => e,
                MergeError::Write(e) => self.temp_error()(e),
            })?;
            segments.push((offset, len));
            offset += len;
        }
        out.flush().map_err(self.temp_error())?;
        drop(out);
        Ok(SpillRun {
            file,
            segments,
            level,
            number,
        })
    }

    /// Writes the map task's one intermediate file and publishes it as every `mr-{id}-{r}`
    /// (see the module documentation).
    fn finish(mut self) -> Result<MapStats, TaskError> {
        // Runs of several levels can pile up (up to SPILL_FAN_IN - 1 per level): merge the
        // newest, smallest ones first so that the final merge, which adds the buffer, reads
        // at most SPILL_FAN_IN sources.
        while self.spills.len() >= SPILL_FAN_IN {
            let level = self.spills[self.spills.len() - SPILL_FAN_IN..]
                .iter()
                .map(|run| run.level)
                .max()
                .expect("SPILL_FAN_IN runs");
            self.merge_newest_runs(level + 1)?;
        }
        self.buffer.sort();
        let (dir, n_reduce) = (self.task.dir, self.task.n_reduce);
        let prefix = format!("{TEMP_PREFIX}map-{}-", self.task.id);
        let temp = tempfile::Builder::new()
            .prefix(&prefix)
            .tempfile_in(dir)
            .map_err(TaskError::io("create a temporary file in", dir))?;
        let mut out = BufWriter::with_capacity(IO_BUFFER, temp.as_file());
        let mut index =
            Vec::with_capacity(n_reduce * INDEX_ENTRY_LEN as usize + FOOTER_LEN as usize);
        let mut offset = 0u64;
        let buckets = self.buffer.buckets(n_reduce);
        for (r, entries) in buckets.into_iter().enumerate() {
            let mut sources = vec![MapSource::Memory(MemRun {
                buffer: &self.buffer,
                entries,
            })];
            for run in &self.spills {
                sources.push(MapSource::Spill(run.segment(r, &self.readers)?));
            }
            let write = || -> Result<u64, MergeError> {
                Ok(write_sources(sources, RecordWriter::new(&mut out)?)?.1)
            };
            let len = write().map_err(merge_error(temp.path()))?;
            index.extend_from_slice(&offset.to_le_bytes());
            index.extend_from_slice(&len.to_le_bytes());
            offset += len;
        }
        let mut crc = crc32fast::Hasher::new();
        crc.update(&index);
        crc.update(&(n_reduce as u64).to_le_bytes());
        index.extend_from_slice(&crc.finalize().to_le_bytes());
        index.extend_from_slice(&(n_reduce as u64).to_le_bytes());
        index.extend_from_slice(&INDEX_MAGIC);
        let size = offset + index.len() as u64;
        out.write_all(&index)
            .and_then(|()| out.flush())
            .map_err(TaskError::io("write", temp.path()))?;
        drop(out);
        let paths: Vec<PathBuf> = (0..n_reduce)
            .map(|r| intermediate_path(dir, self.task.id, self.task.attempt, r))
            .collect();
        publish(dir, &prefix, temp, size, &paths, |from, to| {
            std::fs::hard_link(from, to)
        })?;
        let peak_spill_readers = self.readers.peak.get();
        debug_assert!(peak_spill_readers <= SPILL_FAN_IN, "{peak_spill_readers}");
        Ok(MapStats {
            bytes_read: 0,
            pairs: self.pairs,
            spills: self.spills_made,
            bytes_written: size,
            peak_spill_readers,
        })
    }
}

/// Publishes the complete file `temp` (`size` bytes, named `prefix…` in `dir`) under every
/// one of `paths`, each replaced atomically: a hard link (made by `link`) under a fresh
/// temporary name is renamed over each path but the last, over which `temp` itself is
/// renamed. If `link` fails other than with `AlreadyExists` (hard links unsupported), the
/// remaining paths get copies of the file, each through [`write_atomically`].
fn publish(
    dir: &Path,
    prefix: &str,
    temp: tempfile::NamedTempFile,
    size: u64,
    paths: &[PathBuf],
    link: impl Fn(&Path, &Path) -> io::Result<()>,
) -> Result<(), TaskError> {
    let Some((last, others)) = paths.split_last() else {
        return Ok(());
    };
    let mut linking = true;
    for path in others {
        if linking {
            match tempfile::Builder::new()
                .prefix(prefix)
                .make_in(dir, |name| link(temp.path(), name))
            {
                Ok(linked) => {
                    linked
                        .persist(path)
                        .map_err(|e| TaskError::io("rename a temporary file to", path)(e.error))?;
                    continue;
                }
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                    return Err(TaskError::io("hard-link a temporary file in", dir)(e));
                }
                Err(_) => linking = false,
            }
        }
        write_atomically(dir, prefix, path, |out, copy| {
            let mut whole = SegmentReader {
                file: temp.as_file(),
                pos: 0,
                end: size,
            };
            let copied = io::copy(&mut whole, out)
                .map_err(TaskError::io("copy the intermediate file to", copy))?;
            if copied != size {
                return Err(TaskError::io("copy the intermediate file to", copy)(
                    io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        format!("{} is {copied} bytes, not {size}", temp.path().display()),
                    ),
                ));
            }
            Ok(copied)
        })?;
    }
    temp.persist(last)
        .map_err(|e| TaskError::io("rename a temporary file to", last)(e.error))?;
    Ok(())
}

/// A merge failed reading (already a [`TaskError`]) or writing.
enum MergeError {
    Read(TaskError),
    Write(io::Error),
}

impl From<io::Error> for MergeError {
    fn from(e: io::Error) -> Self {
        MergeError::Write(e)
    }
}

/// Writes sorted `sources` into `writer` — straight from memory for a lone in-memory run,
/// else through a merge; returns the writer's output and byte count.
fn write_sources<W: Write>(
    sources: Vec<MapSource<'_>>,
    mut writer: RecordWriter<W>,
) -> Result<(W, u64), MergeError> {
    if let [MapSource::Memory(run)] = sources.as_slice() {
        for entry in run.entries {
            writer.write(run.buffer.key(entry), run.buffer.value(entry))?;
        }
        return Ok(writer.finish()?);
    }
    merge_into(sources, writer)
}

/// Merges sorted `sources` into `writer`; returns the writer's output and byte count.
fn merge_into<S: RecordSource, W: Write>(
    sources: Vec<S>,
    mut writer: RecordWriter<W>,
) -> Result<(W, u64), MergeError> {
    let mut merger = Merger::new(sources);
    while merger.advance().map_err(MergeError::Read)? {
        writer
            .write(merger.key().as_bytes(), merger.value().as_bytes())
            .map_err(MergeError::Write)?;
    }
    Ok(writer.finish()?)
}

/// Writes `path` through a temporary file in `dir` (named `prefix…`) and a rename.
/// `fill` gets the writer and the temporary file's path (for errors) and returns the number
/// of bytes it wrote.
fn write_atomically(
    dir: &Path,
    prefix: &str,
    path: &Path,
    fill: impl FnOnce(&mut BufWriter<&File>, &Path) -> Result<u64, TaskError>,
) -> Result<u64, TaskError> {
    let temp = tempfile::Builder::new()
        .prefix(prefix)
        .tempfile_in(dir)
        .map_err(TaskError::io("create a temporary file in", dir))?;
    let mut out = BufWriter::with_capacity(IO_BUFFER, temp.as_file());
    let written = fill(&mut out, temp.path())?;
    out.flush().map_err(TaskError::io("write", temp.path()))?;
    drop(out);
    temp.persist(path)
        .map_err(|e| TaskError::io("rename a temporary file to", path)(e.error))?;
    Ok(written)
}

/// Converts a [`MergeError`], naming `path` for write errors.
fn merge_error(path: &Path) -> impl FnOnce(MergeError) -> TaskError + '_ {
    move |e| match e {
        MergeError::Read(e) => e,
        MergeError::Write(e) => TaskError::io("write", path)(e),
    }
}

/// The input of a map task: counts the bytes the application consumes and remembers the
/// first read error, so that a failing map can be told apart from a failing input.
struct InputReader {
    inner: BufReader<File>,
    consumed: u64,
    error: Option<io::Error>,
}

impl InputReader {
    fn note(&mut self, e: &io::Error) {
        if self.error.is_none() && e.kind() != io::ErrorKind::Interrupted {
            self.error = Some(io::Error::new(e.kind(), e.to_string()));
        }
    }
}

impl Read for InputReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self.inner.read(buf) {
            Ok(n) => {
                self.consumed += n as u64;
                Ok(n)
            }
            Err(e) => {
                self.note(&e);
                Err(e)
            }
        }
    }
}

impl BufRead for InputReader {
    fn fill_buf(&mut self) -> io::Result<&[u8]> {
        // Two steps so the error path does not hold the borrow of `inner`.
        if let Err(e) = self.inner.fill_buf() {
            self.note(&e);
            return Err(e);
        }
        self.inner.fill_buf()
    }

    fn consume(&mut self, amount: usize) {
        self.consumed += amount as u64;
        self.inner.consume(amount);
    }
}

/// Runs one map task: see the module documentation.
pub fn run_map(app: &dyn App, task: &MapTask<'_>) -> Result<MapStats, TaskError> {
    if task.n_reduce == 0 || task.n_reduce > u32::MAX as usize {
        return Err(TaskError::Invalid(format!(
            "map task {}: n_reduce must be between 1 and {}, not {}",
            task.id,
            u32::MAX,
            task.n_reduce
        )));
    }
    let path = task.input_path;
    let file = File::open(path).map_err(|source| TaskError::OpenInput {
        path: path.to_path_buf(),
        source,
    })?;
    let meta = file.metadata().map_err(|source| TaskError::OpenInput {
        path: path.to_path_buf(),
        source,
    })?;
    if meta.is_dir() {
        return Err(TaskError::InputIsDirectory {
            path: path.to_path_buf(),
        });
    }
    let mut input = InputReader {
        inner: BufReader::with_capacity(IO_BUFFER, file),
        consumed: 0,
        error: None,
    };
    let mut state = MapState {
        task,
        buffer: PairBuffer::default(),
        spills: Vec::new(),
        spills_made: 0,
        pairs: 0,
        readers: ReaderGauge::default(),
    };
    let mut failure: Option<TaskError> = None;
    let mapped = {
        let mut emit = |key: &str, value: &str| -> io::Result<()> {
            if failure.is_some() {
                return Err(io::Error::other("the map task has already failed"));
            }
            state.add(key, value).map_err(|e| {
                let message = e.to_string();
                failure = Some(e);
                io::Error::other(message)
            })
        };
        app.map(task.input_name, &mut input, &mut emit)
    };
    if let Some(mut failure) = failure {
        if let TaskError::Map { app: name, .. } = &mut failure {
            *name = app.name().to_owned();
        }
        return Err(failure);
    }
    if let Err(source) = mapped {
        if let Some(source) = input.error.take() {
            return Err(TaskError::ReadInput {
                path: path.to_path_buf(),
                source,
            });
        }
        return Err(TaskError::Map {
            app: app.name().to_owned(),
            input: task.input_name.to_owned(),
            source,
        });
    }
    let mut stats = state.finish()?;
    stats.bytes_read = input.consumed;
    Ok(stats)
}

// ---------------------------------------------------------------------------------------
// Reduce

/// How a reduce task turns the values of each key into its output.
#[derive(Clone, Copy)]
pub enum Reducer<'a> {
    /// [`App::reduce`], once per key.
    PerKey(&'a dyn App),
    /// An exec app's reduce program, once per task.
    Exec(&'a ExecApp),
}

/// Runs one reduce task with [`App::reduce`] once per key: see the module documentation.
/// (For the exec app this starts its reduce program once per key; [`run_reduce_exec`] runs
/// it once per task.)
pub fn run_reduce(app: &dyn App, task: &ReduceTask<'_>) -> Result<ReduceStats, TaskError> {
    run_reduce_with(Reducer::PerKey(app), task)
}

/// Runs one reduce task of the exec app, starting its reduce program once for the task.
pub fn run_reduce_exec(exec: &ExecApp, task: &ReduceTask<'_>) -> Result<ReduceStats, TaskError> {
    run_reduce_with(Reducer::Exec(exec), task)
}

/// Runs one reduce task with either kind of [`Reducer`].
pub fn run_reduce_with(
    reducer: Reducer<'_>,
    task: &ReduceTask<'_>,
) -> Result<ReduceStats, TaskError> {
    let (sources, bytes_read) = open_reduce_sources(task)?;
    let mut merger = Merger::new(sources);
    let path = task.output;
    let prefix = format!("{TEMP_PREFIX}reduce-{}-", task.id);
    let mut keys = 0u64;
    let bytes_written = write_atomically(task.dir, &prefix, path, |out, temp| {
        let mut written = 0u64;
        let mut write_line = |key: &str, result: &str| -> Result<(), TaskError> {
            let mut write = || -> io::Result<()> {
                out.write_all(key.as_bytes())?;
                out.write_all(b" ")?;
                out.write_all(result.as_bytes())?;
                out.write_all(b"\n")
            };
            write().map_err(TaskError::io("write", temp))?;
            written += key.len() as u64 + result.len() as u64 + 2;
            keys += 1;
            Ok(())
        };
        match reducer {
            Reducer::PerKey(app) => reduce_per_key(app, &mut merger, &mut write_line)?,
            Reducer::Exec(exec) => {
                crate::exec::run_reduce_program(exec.reduce_cmd(), &mut merger, &mut write_line)?
            }
        }
        Ok(written)
    })?;
    Ok(ReduceStats {
        bytes_read,
        pairs: merger.pairs,
        keys,
        bytes_written,
    })
}

/// Most sources one merge reads at once. A reduce task over more map tasks first merges
/// groups of this many intermediate files into temporary runs (unnamed files in the task's
/// directory), level by level, which bounds its open files and read buffers.
pub const REDUCE_FAN_IN: usize = 256;

/// Bytes of read buffers a merge spreads over its sources.
const MERGE_MEMORY: usize = 4 << 20;

/// Read buffer per source of a merge of `ways` sources.
fn merge_buffer(ways: usize) -> usize {
    (MERGE_MEMORY / ways.max(1)).clamp(4 * 1024, MERGE_BUFFER)
}

/// A source of a reduce task's merge: a segment of map task `map`'s intermediate file, or
/// (`map` = `None`) a run merged from several.
struct ReduceSource {
    records: SegmentRecords,
    map: Option<usize>,
}

impl RecordSource for ReduceSource {
    fn next_into(&mut self, key: &mut String, value: &mut String) -> Result<bool, TaskError> {
        let next = self.records.next_into(key, value);
        match self.map {
            Some(map) => next.map_err(|e| e.reading_map(map)),
            None => next,
        }
    }
}

/// Opens a reduce task's inputs as at most [`REDUCE_FAN_IN`] merge sources; returns them
/// and the intermediate bytes they hold.
fn open_reduce_sources(task: &ReduceTask<'_>) -> Result<(Vec<ReduceSource>, u64), TaskError> {
    // A missing job directory is this worker's problem (say, an unmounted share), not a
    // lost output of map task 0.
    match std::fs::metadata(task.dir) {
        Ok(meta) if meta.is_dir() => {}
        Ok(_) => {
            return Err(TaskError::Io {
                action: "use the job directory",
                path: task.dir.to_path_buf(),
                source: io::Error::other("not a directory"),
            })
        }
        Err(e) => return Err(TaskError::io("open the job directory", task.dir)(e)),
    }
    let n_map = task.map_attempts.len();
    let mut bytes_read = 0;
    let buffer = merge_buffer(n_map.min(REDUCE_FAN_IN));
    let mut open = |map: usize| -> Result<ReduceSource, TaskError> {
        let attempt = task.map_attempts[map];
        let (records, len) = open_intermediate(task.dir, map, attempt, task.id, buffer)?;
        bytes_read += len;
        Ok(ReduceSource {
            records,
            map: Some(map),
        })
    };
    if n_map <= REDUCE_FAN_IN {
        let sources = (0..n_map).map(&mut open).collect::<Result<_, _>>()?;
        return Ok((sources, bytes_read));
    }
    let mut runs = Vec::new();
    for first in (0..n_map).step_by(REDUCE_FAN_IN) {
        let last = (first + REDUCE_FAN_IN).min(n_map);
        let group = (first..last).map(&mut open).collect::<Result<_, _>>()?;
        runs.push(merge_to_run(group, task.dir)?);
    }
    while runs.len() > REDUCE_FAN_IN {
        let mut merged = Vec::new();
        let mut rest = runs.into_iter();
        loop {
            let group: Vec<_> = rest.by_ref().take(REDUCE_FAN_IN).collect();
            if group.is_empty() {
                break;
            }
            merged.push(merge_to_run(group, task.dir)?);
        }
        runs = merged;
    }
    Ok((runs, bytes_read))
}

/// Merges `sources` into an unnamed temporary file in `dir`, opened again for reading.
fn merge_to_run(sources: Vec<ReduceSource>, dir: &Path) -> Result<ReduceSource, TaskError> {
    let write_error = TaskError::io("write a merged run in", dir);
    let file = tempfile::tempfile_in(dir).map_err(TaskError::io("create a merged run in", dir))?;
    let mut out = BufWriter::with_capacity(IO_BUFFER, &file);
    let len = match RecordWriter::new(&mut out).map_err(MergeError::Write) {
        Ok(writer) => merge_into(sources, writer).map(|(_, len)| len),
        Err(e) => Err(e),
    };
    let len = match len {
        Ok(len) => len,
        Err(MergeError::Read(e)) => return Err(e),
        Err(MergeError::Write(e)) => return Err(write_error(e)),
    };
    out.flush()
        .map_err(TaskError::io("write a merged run in", dir))?;
    drop(out);
    let label = format!("a merged run of intermediate files in {}", dir.display());
    let records = segment_records(file, 0, len, merge_buffer(REDUCE_FAN_IN), label)?;
    Ok(ReduceSource { records, map: None })
}

/// Calls `app.reduce` once per key of `merger`, in key order, and writes each result.
fn reduce_per_key<S: RecordSource>(
    app: &dyn App,
    merger: &mut Merger<S>,
    write_line: &mut dyn FnMut(&str, &str) -> Result<(), TaskError>,
) -> Result<(), TaskError> {
    let mut more = merger.advance()?;
    let mut key = String::new();
    while more {
        key.clear();
        key.push_str(merger.key());
        let mut values = GroupValues {
            merger: &mut *merger,
            key: &key,
            state: GroupState::AtFirst,
            error: None,
        };
        let result = app.reduce(&key, &mut values);
        // Skip whatever values the application did not read.
        while values.next().is_some() {}
        if let Some(error) = values.error.take() {
            return Err(error);
        }
        more = values.state == GroupState::NextGroup;
        let result = result.map_err(|source| TaskError::Reduce {
            app: app.name().to_owned(),
            key: shorten(&key),
            source,
        })?;
        write_line(&key, &result)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::MetadataExt;

    use super::*;

    /// An intermediate file whose segment `r` holds the pair `(k{r}, v{r})`, written under a
    /// temporary name in `dir`; returns it and its size.
    fn intermediate_file(dir: &Path, n_reduce: usize) -> (tempfile::NamedTempFile, u64) {
        let mut bytes = Vec::new();
        let mut index = Vec::new();
        for r in 0..n_reduce {
            let mut writer = RecordWriter::new(Vec::new()).unwrap();
            writer
                .write(format!("k{r}").as_bytes(), format!("v{r}").as_bytes())
                .unwrap();
            let (segment, len) = writer.finish().unwrap();
            index.extend_from_slice(&(bytes.len() as u64).to_le_bytes());
            index.extend_from_slice(&len.to_le_bytes());
            bytes.extend_from_slice(&segment);
        }
        let mut crc = crc32fast::Hasher::new();
        crc.update(&index);
        crc.update(&(n_reduce as u64).to_le_bytes());
        bytes.extend_from_slice(&index);
        bytes.extend_from_slice(&crc.finalize().to_le_bytes());
        bytes.extend_from_slice(&(n_reduce as u64).to_le_bytes());
        bytes.extend_from_slice(&INDEX_MAGIC);
        let temp = tempfile::Builder::new()
            .prefix(&format!("{TEMP_PREFIX}map-0-"))
            .tempfile_in(dir)
            .unwrap();
        std::fs::write(temp.path(), &bytes).unwrap();
        (temp, bytes.len() as u64)
    }

    fn leftovers(dir: &Path) -> Vec<String> {
        std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .filter(|name| name.starts_with(TEMP_PREFIX))
            .collect()
    }

    /// Publishes a 3-partition file with `link`; checks every name reads its own pair and
    /// returns the names' inodes.
    fn publish_with(link: impl Fn(&Path, &Path) -> io::Result<()>) -> Vec<u64> {
        let dir = tempfile::tempdir().unwrap();
        let paths: Vec<PathBuf> = (0..3)
            .map(|r| intermediate_path(dir.path(), 0, 0, r))
            .collect();
        for path in &paths {
            std::fs::write(path, "an older file, to be replaced").unwrap();
        }
        let (temp, size) = intermediate_file(dir.path(), 3);
        let prefix = format!("{TEMP_PREFIX}map-0-");
        publish(dir.path(), &prefix, temp, size, &paths, link).unwrap();
        for (r, path) in paths.iter().enumerate() {
            assert_eq!(std::fs::metadata(path).unwrap().len(), size);
            assert_eq!(
                read_intermediate(dir.path(), 0, 0, r).unwrap(),
                [(format!("k{r}"), format!("v{r}"))]
            );
        }
        assert!(
            leftovers(dir.path()).is_empty(),
            "{:?}",
            leftovers(dir.path())
        );
        paths
            .iter()
            .map(|path| std::fs::metadata(path).unwrap().ino())
            .collect()
    }

    #[test]
    fn publishing_makes_hard_links() {
        let inodes = publish_with(|from, to| std::fs::hard_link(from, to));
        assert!(inodes.iter().all(|&i| i == inodes[0]), "{inodes:?}");
    }

    #[test]
    fn without_hard_links_every_name_gets_a_copy() {
        let inodes = publish_with(|_, _| Err(io::ErrorKind::Unsupported.into()));
        assert!(
            inodes[0] != inodes[1] && inodes[1] != inodes[2] && inodes[0] != inodes[2],
            "{inodes:?}"
        );
        // Linking works once, then fails: the rest are copies.
        let calls = std::sync::atomic::AtomicUsize::new(0);
        let inodes = publish_with(|from, to| {
            if calls.fetch_add(1, std::sync::atomic::Ordering::Relaxed) == 0 {
                std::fs::hard_link(from, to)
            } else {
                Err(io::Error::from_raw_os_error(1)) // EPERM
            }
        });
        assert_eq!(inodes[0], inodes[2], "{inodes:?}");
        assert_ne!(inodes[0], inodes[1], "{inodes:?}");
    }
}
