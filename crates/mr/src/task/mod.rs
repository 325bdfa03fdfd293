//! Running one map task or one reduce task against the job's shared directory.
//!
//! # Map
//!
//! [`run_map`] streams its input file through [`App::map`](crate::App::map), sends each pair to reduce task
//! [`bucket`](crate::partition::bucket)`(key, n_reduce)`, and makes, for **every** `r` in `0..n_reduce`, the name
//! `dir/mr-{map}-{r}` ([`intermediate_path`]; `mr-{map}-{r}.{attempt}` for a later
//! [`MapTask::attempt`], so attempts of one task never share a file) under which reduce task
//! `r` finds that bucket's pairs sorted by key (byte order). Pairs are buffered in memory up to
//! [`MapTask::memory_limit`] bytes; past that the buffer is sorted and spilled to an unnamed
//! temporary run file, and the final output is a k-way merge of the runs and what is left
//! in memory. If the application has a combiner ([`App::combine`](crate::App::combine)),
//! every run and the output are written combined: each key's values, gathered in key order,
//! become one value (a batch of at most 1,024 values at a time, so a frequent key needs no
//! more memory). Runs are merged in levels of [`SPILL_FAN_IN`] as they pile up, and before the
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
//! [`App::reduce`](crate::App::reduce) once per distinct key
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
//! # Where the code is
//!
//! - `format.rs`: the record format of intermediate files and spill runs (described there),
//!   written, read and checked;
//! - `gather.rs`: a map task's pairs gathered by key and combined as they are emitted (with
//!   a combiner);
//! - `merge.rs`: the one k-way merge, used by both sides, and the grouping of its records
//!   by key;
//! - `map.rs` and `reduce.rs`: running the tasks.

mod format;
mod gather;
mod map;
mod merge;
mod reduce;
#[cfg(test)]
mod tests;

use std::fs::File;
use std::io::{self, BufWriter, Write};
use std::path::{Path, PathBuf};

use crate::exec::ExecError;

pub use format::{
    check_intermediate, locate_segment, read_intermediate, INDEX_MAGIC, INTERMEDIATE_MAGIC,
    MAX_KEY_LEN, MAX_VALUE_LEN,
};
pub use map::{run_map, SPILL_FAN_IN};
pub use reduce::{run_reduce, run_reduce_exec, run_reduce_with, Reducer, REDUCE_FAN_IN};

/// Every temporary file a task creates in the shared directory starts with this.
pub const TEMP_PREFIX: &str = ".mr-tmp-";

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
    /// The input's name exactly as given to the coordinator; what [`App::map`](crate::App::map) sees.
    pub input_name: &'a str,
    /// Where to read the input.
    pub input_path: &'a Path,
    /// The split of the input this task maps, `(start, len)` in bytes; `None`: all of it.
    pub input_span: Option<(u64, u64)>,
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
    /// Where the map outputs are (`mr-M-R` files), unless `fetched`; temporary runs go here.
    pub dir: &'a Path,
    /// The map outputs, fetched already from the workers that hold them; `None`: read them
    /// in `dir`.
    pub fetched: Option<&'a FetchedSegments>,
    /// Where the output goes, complete or not at all (through a temporary file beside it):
    /// in a job, this attempt's own
    /// [`reduce_attempt_path`], which the coordinator renames to [`output_path`] when it
    /// accepts the attempt.
    pub output: &'a Path,
}

/// A reduce task's segment of every map task's output, fetched into one local file
/// ([`crate::shuffle::fetch_segments`]).
#[derive(Debug)]
pub struct FetchedSegments {
    pub file: File,
    /// Of map task `m`'s segment: `(offset, len)` in `file`.
    pub segments: Vec<(u64, u64)>,
    /// Of map task `m`'s segment: where it came from, for errors.
    pub origins: Vec<String>,
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
    #[error("app {app}: combine of key {key:?} failed: {source}")]
    Combine {
        app: String,
        /// The key (shortened if very long).
        key: String,
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
    /// A reduce output whose key or result holds a newline: written raw, it would be two
    /// lines of the output, so it is refused.
    #[error("reduce output for key {key:?}: its {part} contains a newline, which an output line `key result` cannot hold")]
    NewlineInOutput { key: String, part: &'static str },
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
