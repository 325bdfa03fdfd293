//! Running a map task: buffering pairs by bucket, spilling sorted runs, merging them and
//! publishing the one intermediate file under every name (see the parent module).

use std::fs::File;
use std::io::{self, BufRead, BufReader, BufWriter, Read, Write};
use std::path::{Path, PathBuf};

use crate::app::App;
use crate::partition::bucket;

use super::format::{
    segment_records, RecordReader, RecordSource, RecordWriter, SegmentReader, FOOTER_LEN,
    INDEX_ENTRY_LEN,
};
use super::gather::{combine_values, Gatherer};
use super::merge::{merge_error, MergeError, Merger};
use super::*;

/// How many spill runs of one level are merged into one run of the next level.
pub const SPILL_FAN_IN: usize = 16;

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
pub(super) struct MemRun<'a> {
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
pub(super) struct SpillSegment<'a> {
    reader: RecordReader<BufReader<SegmentReader<&'a File>>>,
    _counted: OpenReader<'a>,
}

/// A source for the map side's merges.
pub(super) enum MapSource<'a> {
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
///
/// With a combiner, emitted pairs are first gathered by key and combined (`gather.rs`), so
/// that a word count's map holds its input's vocabulary, not a pair per word; the table
/// moves into the sort buffer when it passes the memory limit and at the end.
struct MapState<'t> {
    task: &'t MapTask<'t>,
    /// The application, if it has a combiner: run on every run and output written.
    combiner: Option<&'t dyn App>,
    /// With a combiner: the pairs gathered by key.
    gathered: Gatherer,
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
        self.pairs += 1;
        if let Some(app) = self.combiner {
            return self.gather(app, key, value);
        }
        let r = bucket(key, self.task.n_reduce);
        self.buffer.push(r as u32, key, value);
        if self.buffer.bytes() > self.task.memory_limit {
            self.spill()?;
        }
        Ok(())
    }

    /// Adds a pair to the combiner's table.
    fn gather(&mut self, app: &dyn App, key: &str, value: &str) -> Result<(), TaskError> {
        self.gathered.add(app, key, value)?;
        if self.gathered.bytes() > self.task.memory_limit {
            self.move_gathered()?;
        }
        Ok(())
    }

    /// Moves the combiner's table into the sort buffer, each key with its one combined
    /// value, spilling as the buffer fills.
    fn move_gathered(&mut self) -> Result<(), TaskError> {
        let Some(app) = self.combiner else {
            return Ok(());
        };
        let mut gathered = std::mem::take(&mut self.gathered);
        let moved = gathered.drain(app, |key, value| {
            let r = bucket(key, self.task.n_reduce) as u32;
            self.buffer.push(r, key, value);
            if self.buffer.bytes() > self.task.memory_limit {
                self.spill()?;
            }
            Ok(())
        });
        // Keep the table's allocations for the next round.
        self.gathered = gathered;
        moved
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
            let (_, len) = write_sources(sources, writer, self.combiner).map_err(|e| match e {
                MergeError::Task(e) => e,
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
        self.move_gathered()?;
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
                Ok(write_sources(sources, RecordWriter::new(&mut out)?, self.combiner)?.1)
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
pub(super) fn publish(
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

/// Writes sorted `sources` into `writer`, through the application's combiner if it has one:
/// straight from memory for a lone in-memory run, else through a merge; returns the writer's
/// output and byte count.
fn write_sources<W: Write>(
    sources: Vec<MapSource<'_>>,
    writer: RecordWriter<W>,
    combiner: Option<&dyn App>,
) -> Result<(W, u64), MergeError> {
    let mut out = SortedWriter {
        combiner,
        writer,
        key: String::new(),
        values: Vec::new(),
    };
    if let [MapSource::Memory(run)] = sources.as_slice() {
        for entry in run.entries {
            out.push(run.buffer.key(entry), run.buffer.value(entry))?;
        }
    } else {
        let mut merger = Merger::new(sources);
        while merger.advance().map_err(MergeError::Task)? {
            out.push(merger.key().as_bytes(), merger.value().as_bytes())?;
        }
    }
    out.finish()
}

/// The input of a map task: counts the bytes the application consumes and remembers the
/// first read error, so that a failing map can be told apart from a failing input.
struct InputReader {
    inner: BufReader<SegmentReader<File>>,
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
    let (start, len) = task.input_span.unwrap_or((0, meta.len()));
    let span = SegmentReader {
        file,
        pos: start,
        end: start.saturating_add(len),
    };
    let mut input = InputReader {
        inner: BufReader::with_capacity(IO_BUFFER, span),
        consumed: 0,
        error: None,
    };
    let mut state = MapState {
        task,
        combiner: app.has_combiner().then_some(app),
        gathered: Gatherer::default(),
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

/// A record's bytes as text: records come from `&str` pairs (the buffer) or from runs read
/// back as checked UTF-8 (a merge).
fn utf8(bytes: &[u8]) -> &str {
    std::str::from_utf8(bytes).expect("a map task's records are text")
}

/// Values of one key gathered before the combiner runs on them: it runs on at most this
/// many at a time (and again on what it returned), so a frequent key needs no more memory.
const COMBINE_BATCH: usize = 1024;

/// Writes records given in key order: as they are without a combiner; with one, each key's
/// values combined into one (a key with a single value is written as it is).
struct SortedWriter<'a, W: Write> {
    combiner: Option<&'a dyn App>,
    writer: RecordWriter<W>,
    /// With a combiner: the key being gathered and its values.
    key: String,
    values: Vec<String>,
}

impl<W: Write> SortedWriter<'_, W> {
    fn push(&mut self, key: &[u8], value: &[u8]) -> Result<(), MergeError> {
        let Some(app) = self.combiner else {
            return self.writer.write(key, value).map_err(MergeError::Write);
        };
        let key = utf8(key);
        if key != self.key || self.values.is_empty() {
            self.flush()?;
            self.key.clear();
            self.key.push_str(key);
        }
        self.values.push(utf8(value).to_owned());
        if self.values.len() >= COMBINE_BATCH {
            let combined = self.combine(app)?;
            self.values.push(combined);
        }
        Ok(())
    }

    /// Combines the gathered values into one (emptying `values`).
    fn combine(&mut self, app: &dyn App) -> Result<String, MergeError> {
        let combined = combine_values(app, &self.key, &mut self.values.iter().map(String::as_str));
        self.values.clear();
        combined.map_err(MergeError::Task)
    }

    /// Writes the gathered key's one (combined) value, if it has values.
    fn flush(&mut self) -> Result<(), MergeError> {
        let value = match (self.values.len(), self.combiner) {
            (0, _) | (_, None) => return Ok(()),
            (1, _) => self.values.pop().expect("one value"),
            (_, Some(app)) => self.combine(app)?,
        };
        self.values.clear();
        self.writer
            .write(self.key.as_bytes(), value.as_bytes())
            .map_err(MergeError::Write)
    }

    fn finish(mut self) -> Result<(W, u64), MergeError> {
        self.flush()?;
        Ok(self.writer.finish()?)
    }
}
