//! Running a reduce task: merging its segment of every map output and reducing per key.

use std::io::{self, BufWriter, Write};
use std::path::Path;

use crate::app::App;
use crate::exec::ExecApp;

use super::format::{
    open_intermediate, segment_records, RecordSource, RecordWriter, SegmentRecords,
};
use super::merge::{merge_into, GroupState, GroupValues, MergeError, Merger};
use super::*;

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
    let out_dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let bytes_written = write_atomically(out_dir, &prefix, path, |out, temp| {
        let mut written = 0u64;
        let mut write_line = |key: &str, result: &str| -> Result<(), TaskError> {
            // An output line is `key result`: a newline in either would make two lines.
            for (part, text) in [("key", key), ("result", result)] {
                if text.contains('\n') {
                    return Err(TaskError::NewlineInOutput {
                        key: shorten(key),
                        part,
                    });
                }
            }
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
                crate::exec::run_reduce_program(exec, &mut merger, &mut write_line)?
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
pub(super) struct ReduceSource {
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
    if let Some(fetched) = task.fetched {
        if fetched.segments.len() != n_map || fetched.origins.len() != n_map {
            return Err(TaskError::Invalid(format!(
                "reduce task {}: {} fetched segments for {n_map} map tasks",
                task.id,
                fetched.segments.len()
            )));
        }
    }
    let mut open = |map: usize| -> Result<ReduceSource, TaskError> {
        let (records, len) = match task.fetched {
            None => open_intermediate(task.dir, map, task.map_attempts[map], task.id, buffer)?,
            Some(fetched) => {
                let (offset, len) = fetched.segments[map];
                let file = fetched
                    .file
                    .try_clone()
                    .map_err(TaskError::io("reopen the fetched segments in", task.dir))?;
                let label = fetched.origins[map].clone();
                let records = segment_records(file, offset, len, buffer, label)
                    .map_err(|e| e.reading_map(map))?;
                (records, len)
            }
        };
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
        Err(MergeError::Task(e)) => return Err(e),
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
