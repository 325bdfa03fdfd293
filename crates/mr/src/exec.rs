//! The `exec` app: map and reduce as external programs, so a job can be written in any
//! language.
//!
//! Both commands run as `sh -c CMD` with the worker's working directory and environment,
//! stderr passed through to the worker's stderr, and the environment variable
//! `FLOTILLA_PHASE` set to `map` or `reduce`.
//!
//! # Line format
//!
//! Pairs travel as text lines `key<TAB>value<LF>`, UTF-8. Inside a key or a value a tab is
//! written `\t`, a newline `\n` and a backslash `\\` ([`escape_field`]); no other escape
//! exists, and a raw tab or newline never appears inside a field. So a line has exactly one
//! raw TAB. The last line may lack its newline. Anything else — no TAB, two TABs, an unknown
//! escape, a lone trailing backslash, invalid UTF-8 — is a malformed line, and the task fails
//! with an error naming the command, the line number and the problem.
//!
//! # Map
//!
//! The map program is run once per map task as `sh -c CMD flotilla-map NAME`: the input's
//! name (exactly as given to the coordinator) is `$1` inside `CMD` and is also in the
//! environment variable `FLOTILLA_INPUT_NAME`. The input's contents are streamed to its stdin
//! (never buffered whole) while its stdout is read: every line it prints is one pair. It may
//! stop reading its input early.
//!
//! # Reduce
//!
//! The reduce program is run once per reduce task ([`crate::task::run_reduce_exec`]) with
//! `sh -c CMD flotilla-reduce`. Its stdin carries every pair of the task, **sorted by key**
//! (so all the values of a key are consecutive; their order is unspecified), one line each.
//! For each distinct key it prints one line `key<TAB>result`, in the order the keys arrive.
//! The worker checks each printed key against the next input key and writes `key result` to
//! the task's output. A printed key that is not the next input key, a key left without its
//! line, or a program that exits before reading all its input is an error naming the command.
//! The check needs no memory beyond buffers: the keys sent are logged to an unnamed
//! temporary file and read back as the program answers, so a program may read all its input
//! before printing anything.
//!
//! The same program also works one key at a time: [`App::reduce`] of an [`ExecApp`] runs it
//! for a single key's values (one process per key — correct, but slow; it is what you get
//! through the generic [`crate::task::run_reduce`]).
//!
//! A non-zero exit status of either program fails the task. Examples are in `examples/`
//! (`exec_wc.sh`).
//!
//! # Processes
//!
//! Each program runs in a process group of its own, and dies with the worker (see
//! `program.rs`). When a task stops early (an error, a malformed line), the whole
//! group is killed. At the end of every run, whatever the program left running in its group
//! is killed too. With [`ExecApp::with_cmd_timeout`] (`--task-cmd-timeout`), a program that
//! runs longer than the limit is killed with its group, and the task fails with
//! [`ExecError::TimedOut`].

use std::fs::File;
use std::io::{self, BufRead, BufReader, BufWriter, Read, Write};
use std::os::unix::fs::FileExt;
use std::process::{ChildStdin, ChildStdout, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc;
use std::thread;
use std::time::Duration;

use crate::app::{App, Emit};
use crate::program::Program;
use crate::task::{shorten, TaskError};

/// The app's name.
pub const NAME: &str = "exec";
/// Environment variable holding the map input's name.
pub const INPUT_NAME_ENV: &str = "FLOTILLA_INPUT_NAME";
/// Environment variable holding `map` or `reduce`.
pub const PHASE_ENV: &str = "FLOTILLA_PHASE";
/// Longest output line accepted from a program, in bytes.
pub const MAX_LINE: usize = 1 << 30;

/// Bytes of input sent to a map program per write.
const INPUT_CHUNK: usize = 64 * 1024;
/// Pairs handed from the output reader to the map task per message.
const PAIR_BATCH: usize = 1024;
const PIPE_BUFFER: usize = 64 * 1024;

/// Why an external program failed.
#[derive(Debug, thiserror::Error)]
pub enum ExecError {
    #[error("cannot start `sh -c {cmd}`: {source}")]
    Spawn {
        cmd: String,
        #[source]
        source: io::Error,
    },
    #[error("command `{cmd}` failed: {status}")]
    Status { cmd: String, status: ExitStatus },
    #[error("command `{cmd}` ran longer than its limit of {limit:?} and was killed, with everything it started")]
    TimedOut { cmd: String, limit: Duration },
    #[error("command `{cmd}`, output line {line}: {problem}")]
    Output {
        cmd: String,
        line: u64,
        problem: String,
    },
    #[error("command `{cmd}` exited or closed its input before reading all of it")]
    StoppedReading { cmd: String },
    #[error("command `{cmd}` printed no line for input key {key:?} (it printed {lines} lines)")]
    MissingKey {
        cmd: String,
        key: String,
        lines: u64,
    },
    #[error("talking to command `{cmd}`: {source}")]
    Io {
        cmd: String,
        #[source]
        source: io::Error,
    },
}

/// The exec app: a map command and a reduce command.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ExecApp {
    map_cmd: String,
    reduce_cmd: String,
    cmd_timeout: Option<Duration>,
}

impl ExecApp {
    pub fn new(map_cmd: impl Into<String>, reduce_cmd: impl Into<String>) -> Self {
        ExecApp {
            map_cmd: map_cmd.into(),
            reduce_cmd: reduce_cmd.into(),
            cmd_timeout: None,
        }
    }

    /// Each run of either program is killed, with its process group, after `limit`; the
    /// task then fails with [`ExecError::TimedOut`]. `None`: no limit (the default).
    pub fn with_cmd_timeout(mut self, limit: Option<Duration>) -> Self {
        self.cmd_timeout = limit;
        self
    }

    /// The time limit of one run of a program, if any.
    pub fn cmd_timeout(&self) -> Option<Duration> {
        self.cmd_timeout
    }

    pub fn map_cmd(&self) -> &str {
        &self.map_cmd
    }

    pub fn reduce_cmd(&self) -> &str {
        &self.reduce_cmd
    }
}

impl App for ExecApp {
    fn name(&self) -> &str {
        NAME
    }

    fn map(&self, name: &str, contents: &mut dyn BufRead, emit: &mut Emit<'_>) -> io::Result<()> {
        run_map_program(&self.map_cmd, self.cmd_timeout, name, contents, emit)
    }

    /// Runs the reduce program for this one key.
    fn reduce(&self, key: &str, values: &mut dyn Iterator<Item = String>) -> io::Result<String> {
        let mut source = OneKey {
            key,
            values: values.collect::<Vec<_>>().into_iter(),
            current: String::new(),
        };
        let mut result = None;
        run_reduce_program(self, &mut source, &mut |_key, value| {
            result = Some(value.to_owned());
            Ok(())
        })
        .map_err(io::Error::other)?;
        // The key check guarantees exactly one line for the one key.
        result.ok_or_else(|| io::Error::other("the reduce program printed no line"))
    }
}

// ---------------------------------------------------------------------------------------
// Line format

/// Appends `field` to `out`, escaping tab, newline and backslash.
pub fn escape_field(field: &str, out: &mut Vec<u8>) {
    for &byte in field.as_bytes() {
        match byte {
            b'\t' => out.extend_from_slice(b"\\t"),
            b'\n' => out.extend_from_slice(b"\\n"),
            b'\\' => out.extend_from_slice(b"\\\\"),
            _ => out.push(byte),
        }
    }
}

/// Decodes an escaped field; the error says what is wrong.
pub fn unescape_field(bytes: &[u8]) -> Result<String, String> {
    let mut out = Vec::with_capacity(bytes.len());
    let mut rest = bytes;
    while let Some(position) = rest.iter().position(|&b| b == b'\\') {
        out.extend_from_slice(&rest[..position]);
        match rest.get(position + 1) {
            Some(b't') => out.push(b'\t'),
            Some(b'n') => out.push(b'\n'),
            Some(b'\\') => out.push(b'\\'),
            Some(&other) => {
                return Err(format!(
                    "unknown escape \\{} (only \\t, \\n and \\\\ exist)",
                    char::from(other).escape_default()
                ))
            }
            None => return Err("a lone backslash at the end of a field".into()),
        }
        rest = &rest[position + 2..];
    }
    out.extend_from_slice(rest);
    String::from_utf8(out).map_err(|_| "not valid UTF-8".to_owned())
}

/// Splits one output line (with or without its newline) into key and value.
pub fn parse_line(line: &[u8]) -> Result<(String, String), String> {
    let line = line.strip_suffix(b"\n").unwrap_or(line);
    let Some(tab) = line.iter().position(|&b| b == b'\t') else {
        return Err(if line.is_empty() {
            "an empty line (expected key<TAB>value)".to_owned()
        } else {
            "no TAB between key and value".to_owned()
        });
    };
    let (key, value) = (&line[..tab], &line[tab + 1..]);
    if value.contains(&b'\t') {
        return Err("more than one TAB (write a tab inside a field as \\t)".into());
    }
    let key = unescape_field(key).map_err(|problem| format!("in the key: {problem}"))?;
    let value = unescape_field(value).map_err(|problem| format!("in the value: {problem}"))?;
    Ok((key, value))
}

/// `key<TAB>value<LF>`, escaped, appended to `out`.
fn format_line(key: &str, value: &str, out: &mut Vec<u8>) {
    escape_field(key, out);
    out.push(b'\t');
    escape_field(value, out);
    out.push(b'\n');
}

/// Reads one line of at most [`MAX_LINE`] bytes into `line` (cleared first); `Ok(false)` at
/// the end of output.
fn read_line(
    reader: &mut BufReader<ChildStdout>,
    line: &mut Vec<u8>,
    line_no: u64,
    cmd: &str,
) -> Result<bool, ExecError> {
    line.clear();
    let n = reader
        .take(MAX_LINE as u64 + 1)
        .read_until(b'\n', line)
        .map_err(|source| ExecError::Io {
            cmd: cmd.to_owned(),
            source,
        })?;
    if line.len() > MAX_LINE {
        return Err(ExecError::Output {
            cmd: cmd.to_owned(),
            line: line_no,
            problem: format!("longer than {MAX_LINE} bytes"),
        });
    }
    Ok(n > 0)
}

/// Starts `sh -c CMD` for `phase`, as a [`Program`] (own process group, dies with the
/// worker, killed after `limit`).
fn spawn(
    cmd: &str,
    phase: &str,
    input_name: Option<&str>,
    limit: Option<Duration>,
) -> Result<Program, ExecError> {
    let mut command = Command::new("sh");
    command.arg("-c").arg(cmd).arg(format!("flotilla-{phase}"));
    if let Some(name) = input_name {
        command.arg(name).env(INPUT_NAME_ENV, name);
    }
    command
        .env(PHASE_ENV, phase)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit());
    Program::start(command, cmd, limit)
}

// ---------------------------------------------------------------------------------------
// Map

/// What the map program's helper threads tell the map task.
enum MapEvent {
    /// The stdin writer is ready for the next chunk of input.
    WantInput,
    Pairs(Vec<(String, String)>),
    /// The program closed its stdout.
    OutputDone,
    Failed(ExecError),
}

/// Why the map task's side of the conversation stopped.
enum MapStop {
    /// Reading the input or `emit` failed.
    Io(io::Error),
    Exec(ExecError),
}

/// Runs the map program over one input. The task's thread reads the input and calls `emit`;
/// one helper thread writes the input to the program's stdin a chunk at a time (asking for
/// each), another parses its stdout into pairs. Neither side can block the other for long:
/// the task's thread only waits for messages, so the program is never stuck on a full pipe.
fn run_map_program(
    cmd: &str,
    limit: Option<Duration>,
    name: &str,
    contents: &mut dyn BufRead,
    emit: &mut Emit<'_>,
) -> io::Result<()> {
    let mut program = spawn(cmd, "map", Some(name), limit).map_err(io::Error::other)?;
    let stdin = program.child.stdin.take().expect("stdin is piped");
    let stdout = program.child.stdout.take().expect("stdout is piped");
    let (event_tx, event_rx) = mpsc::sync_channel::<MapEvent>(16);
    let (chunk_tx, chunk_rx) = mpsc::channel::<Vec<u8>>();
    let stopped = thread::scope(|scope| {
        let tx = event_tx.clone();
        let writer = scope.spawn(move || feed_map_input(stdin, chunk_rx, tx));
        scope.spawn(move || read_map_output(cmd, stdout, event_tx));
        let stopped = drive_map(contents, emit, &event_rx, chunk_tx);
        drop(event_rx);
        if stopped.is_err() {
            // Unblocks the helper threads: its pipes close when its group dies.
            program.kill();
        }
        let written = writer.join().expect("the stdin writer does not panic");
        stopped.and(written.map_err(|source| {
            MapStop::Exec(ExecError::Io {
                cmd: cmd.to_owned(),
                source,
            })
        }))
    });
    let waited = program.finish();
    if let Err(e @ ExecError::TimedOut { .. }) = waited {
        return Err(io::Error::other(e));
    }
    match stopped {
        Err(MapStop::Io(e)) => Err(e),
        Err(MapStop::Exec(e)) => Err(io::Error::other(e)),
        Ok(()) => waited.map_err(io::Error::other),
    }
}

fn drive_map(
    contents: &mut dyn BufRead,
    emit: &mut Emit<'_>,
    events: &mpsc::Receiver<MapEvent>,
    chunk_tx: mpsc::Sender<Vec<u8>>,
) -> Result<(), MapStop> {
    let mut chunk_tx = Some(chunk_tx);
    loop {
        let Ok(event) = events.recv() else {
            // Both helpers are gone without a word: cannot happen, they always say why.
            return Err(MapStop::Io(io::Error::other(
                "the map program's output reader stopped",
            )));
        };
        match event {
            MapEvent::WantInput => {
                let Some(tx) = &chunk_tx else { continue };
                let chunk = loop {
                    match contents.fill_buf() {
                        Ok(buf) => {
                            let take = buf.len().min(INPUT_CHUNK);
                            let chunk = buf[..take].to_vec();
                            contents.consume(take);
                            break chunk;
                        }
                        Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                        Err(e) => return Err(MapStop::Io(e)),
                    }
                };
                // An empty chunk is the end of the input: dropping the sender closes stdin.
                if chunk.is_empty() || tx.send(chunk).is_err() {
                    chunk_tx = None;
                }
            }
            MapEvent::Pairs(pairs) => {
                for (key, value) in pairs {
                    emit(&key, &value).map_err(MapStop::Io)?;
                }
            }
            MapEvent::OutputDone => return Ok(()),
            MapEvent::Failed(e) => return Err(MapStop::Exec(e)),
        }
    }
}

/// Writes each chunk it is given to the program's stdin, asking for the next one after each.
/// Ends (closing stdin) when the input ends or the task stops; a program that stops reading
/// early is fine for a map.
fn feed_map_input(
    mut stdin: ChildStdin,
    chunks: mpsc::Receiver<Vec<u8>>,
    events: mpsc::SyncSender<MapEvent>,
) -> io::Result<()> {
    loop {
        if events.send(MapEvent::WantInput).is_err() {
            return Ok(());
        }
        let Ok(chunk) = chunks.recv() else {
            return Ok(());
        };
        match stdin.write_all(&chunk) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::BrokenPipe => return Ok(()),
            Err(e) => return Err(e),
        }
    }
}

/// Parses the program's stdout into batches of pairs.
fn read_map_output(cmd: &str, stdout: ChildStdout, events: mpsc::SyncSender<MapEvent>) {
    let mut reader = BufReader::with_capacity(PIPE_BUFFER, stdout);
    let mut line = Vec::new();
    let mut line_no = 0u64;
    let mut batch = Vec::new();
    loop {
        match read_line(&mut reader, &mut line, line_no + 1, cmd) {
            Ok(true) => {}
            Ok(false) => break,
            Err(e) => {
                let _ = events.send(MapEvent::Failed(e));
                return;
            }
        }
        line_no += 1;
        match parse_line(&line) {
            Ok(pair) => batch.push(pair),
            Err(problem) => {
                let _ = events.send(MapEvent::Failed(ExecError::Output {
                    cmd: cmd.to_owned(),
                    line: line_no,
                    problem,
                }));
                return;
            }
        }
        if batch.len() >= PAIR_BATCH
            && events
                .send(MapEvent::Pairs(std::mem::take(&mut batch)))
                .is_err()
        {
            return;
        }
    }
    if !batch.is_empty() && events.send(MapEvent::Pairs(batch)).is_err() {
        return;
    }
    let _ = events.send(MapEvent::OutputDone);
}

// ---------------------------------------------------------------------------------------
// Reduce

/// Pairs sorted by key, for a reduce program.
pub trait PairSource: Send {
    /// The next pair; `None` at the end.
    fn next_pair(&mut self) -> Result<Option<(&str, &str)>, TaskError>;
}

/// The values of one key as a [`PairSource`].
struct OneKey<'a> {
    key: &'a str,
    values: std::vec::IntoIter<String>,
    current: String,
}

impl PairSource for OneKey<'_> {
    fn next_pair(&mut self) -> Result<Option<(&str, &str)>, TaskError> {
        match self.values.next() {
            Some(value) => {
                self.current = value;
                Ok(Some((self.key, &self.current)))
            }
            None => Ok(None),
        }
    }
}

/// The distinct keys sent to a reduce program, in order, in an unnamed temporary file:
/// written by the stdin feeder, read back by the thread that checks the program's output.
/// `published` only ever covers whole entries, and is advanced (after the bytes are written)
/// before any pair of those keys goes into the pipe — so any key the program can have seen
/// is readable.
struct KeyLog {
    file: File,
    published: AtomicU64,
    finished: AtomicBool,
}

struct KeyLogWriter<'a> {
    log: &'a KeyLog,
    out: BufWriter<&'a File>,
    written: u64,
}

impl KeyLogWriter<'_> {
    fn append(&mut self, key: &str) -> io::Result<()> {
        self.out.write_all(&(key.len() as u64).to_le_bytes())?;
        self.out.write_all(key.as_bytes())?;
        self.written += 8 + key.len() as u64;
        Ok(())
    }

    fn publish(&mut self) -> io::Result<()> {
        self.out.flush()?;
        self.log.published.store(self.written, Ordering::Release);
        Ok(())
    }
}

/// The reduce program's stdin: publishes the key log before each write into the pipe.
struct StdinSink<'a> {
    stdin: ChildStdin,
    keys: KeyLogWriter<'a>,
}

impl Write for StdinSink<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.keys.publish()?;
        self.stdin.write(buf)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.keys.publish()?;
        self.stdin.flush()
    }
}

enum NextKey {
    Key(String),
    /// More keys will come, but none has been sent yet.
    NotYet,
    /// Every key has been read.
    NoMore,
}

struct KeyLogReader<'a> {
    log: &'a KeyLog,
    offset: u64,
}

impl KeyLogReader<'_> {
    fn next(&mut self) -> io::Result<NextKey> {
        // `finished` first: once it is set, `published` is final.
        let finished = self.log.finished.load(Ordering::Acquire);
        let published = self.log.published.load(Ordering::Acquire);
        if self.offset >= published {
            return Ok(if finished {
                NextKey::NoMore
            } else {
                NextKey::NotYet
            });
        }
        let mut len = [0u8; 8];
        self.log.file.read_exact_at(&mut len, self.offset)?;
        let len = u64::from_le_bytes(len);
        debug_assert!(
            self.offset + 8 + len <= published,
            "entries are published whole"
        );
        let mut key = vec![0u8; len as usize];
        self.log.file.read_exact_at(&mut key, self.offset + 8)?;
        self.offset += 8 + len;
        String::from_utf8(key)
            .map(NextKey::Key)
            .map_err(|_| io::Error::other("key log holds non-UTF-8 data"))
    }
}

/// How feeding the reduce program ended.
enum Fed {
    All,
    /// The program closed its stdin (or exited) first.
    StoppedReading,
}

fn key_log_error(source: io::Error) -> TaskError {
    TaskError::Io {
        action: "use the reduce key log (an unnamed temporary file) in",
        path: std::env::temp_dir(),
        source,
    }
}

/// Writes every pair of `source` to the program's stdin, logging each new key first.
fn feed_reduce_input(
    source: &mut dyn PairSource,
    stdin: ChildStdin,
    log: &KeyLog,
) -> Result<Fed, TaskError> {
    let keys = KeyLogWriter {
        log,
        out: BufWriter::new(&log.file),
        written: 0,
    };
    let mut sink = BufWriter::with_capacity(PIPE_BUFFER, StdinSink { stdin, keys });
    let mut line = Vec::new();
    let mut previous: Option<String> = None;
    let is_broken_pipe = |e: &io::Error| e.kind() == io::ErrorKind::BrokenPipe;
    let fed = (|| {
        while let Some((key, value)) = source.next_pair()? {
            if previous.as_deref() != Some(key) {
                sink.get_mut().keys.append(key).map_err(key_log_error)?;
                let previous = previous.get_or_insert_with(String::new);
                previous.clear();
                previous.push_str(key);
            }
            line.clear();
            format_line(key, value, &mut line);
            match sink.write_all(&line) {
                Ok(()) => {}
                Err(e) if is_broken_pipe(&e) => return Ok(Fed::StoppedReading),
                Err(e) => return Err(key_log_error(e)),
            }
        }
        match sink.flush() {
            Ok(()) => Ok(Fed::All),
            Err(e) if is_broken_pipe(&e) => Ok(Fed::StoppedReading),
            Err(e) => Err(key_log_error(e)),
        }
    })();
    // Publish what was logged, then close stdin without flushing again (the program may
    // not be reading any more).
    let (mut inner, _unsent) = sink.into_parts();
    let published = inner.keys.publish();
    log.finished.store(true, Ordering::Release);
    drop(inner);
    let fed = fed?;
    published.map_err(key_log_error)?;
    Ok(fed)
}

/// Runs the reduce program once over every pair of `source` (sorted by key), checks that it
/// prints exactly one line per key in key order, and hands each `(key, result)` to
/// `write_line`.
pub fn run_reduce_program(
    exec: &ExecApp,
    source: &mut dyn PairSource,
    write_line: &mut dyn FnMut(&str, &str) -> Result<(), TaskError>,
) -> Result<(), TaskError> {
    let log = KeyLog {
        file: tempfile::tempfile().map_err(key_log_error)?,
        published: AtomicU64::new(0),
        finished: AtomicBool::new(false),
    };
    let cmd = exec.reduce_cmd();
    let mut program = spawn(cmd, "reduce", None, exec.cmd_timeout)?;
    let stdin = program.child.stdin.take().expect("stdin is piped");
    let stdout = program.child.stdout.take().expect("stdout is piped");
    let mut lines = 0u64;
    let mut keys = KeyLogReader {
        log: &log,
        offset: 0,
    };
    let log_ref = &log;
    let (checked, fed) = thread::scope(|scope| {
        let feeder = scope.spawn(move || feed_reduce_input(source, stdin, log_ref));
        let checked = check_reduce_output(cmd, stdout, &mut keys, &mut lines, write_line);
        if checked.is_err() {
            program.kill();
        }
        (
            checked,
            feeder.join().expect("the stdin feeder does not panic"),
        )
    });
    let waited = program.finish();
    if let Err(e @ ExecError::TimedOut { .. }) = waited {
        return Err(e.into());
    }
    let fed = fed?;
    checked?;
    waited?;
    if let Fed::StoppedReading = fed {
        return Err(ExecError::StoppedReading {
            cmd: cmd.to_owned(),
        }
        .into());
    }
    match keys.next().map_err(key_log_error)? {
        NextKey::Key(key) => Err(ExecError::MissingKey {
            cmd: cmd.to_owned(),
            key: shorten(&key),
            lines,
        }
        .into()),
        NextKey::NoMore => Ok(()),
        NextKey::NotYet => unreachable!("the feeder has finished"),
    }
}

/// Reads the reduce program's output lines and matches each with the next logged key.
fn check_reduce_output(
    cmd: &str,
    stdout: ChildStdout,
    keys: &mut KeyLogReader<'_>,
    lines: &mut u64,
    write_line: &mut dyn FnMut(&str, &str) -> Result<(), TaskError>,
) -> Result<(), TaskError> {
    let mut reader = BufReader::with_capacity(PIPE_BUFFER, stdout);
    let mut line = Vec::new();
    let output_error = |line: u64, problem: String| ExecError::Output {
        cmd: cmd.to_owned(),
        line,
        problem,
    };
    while read_line(&mut reader, &mut line, *lines + 1, cmd)? {
        *lines += 1;
        let (key, result) = parse_line(&line).map_err(|problem| output_error(*lines, problem))?;
        let problem = match keys.next().map_err(key_log_error)? {
            NextKey::Key(expected) if expected == key => {
                write_line(&key, &result)?;
                continue;
            }
            NextKey::Key(expected) => format!(
                "key {:?}, but the next input key is {:?} (print one line per input key, in \
                 input order)",
                shorten(&key),
                shorten(&expected)
            ),
            NextKey::NotYet => format!(
                "key {:?} before that key was sent to the program (print one line per input \
                 key, in input order)",
                shorten(&key)
            ),
            NextKey::NoMore => format!(
                "key {:?}, but every input key already has its line",
                shorten(&key)
            ),
        };
        return Err(output_error(*lines, problem).into());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escaping_round_trips() {
        for field in [
            "",
            "plain",
            "tab\there",
            "new\nline",
            "back\\slash",
            "\\t literal",
            "中\t\n\\",
        ] {
            let mut out = Vec::new();
            escape_field(field, &mut out);
            assert!(!out.contains(&b'\t') && !out.contains(&b'\n'));
            assert_eq!(unescape_field(&out).unwrap(), field);
        }
    }

    #[test]
    fn malformed_lines_say_why() {
        assert_eq!(parse_line(b"k\tv\n").unwrap(), ("k".into(), "v".into()));
        assert_eq!(parse_line(b"k\t").unwrap(), ("k".into(), String::new()));
        assert_eq!(
            parse_line(b"a\\tb\tc\\nd").unwrap(),
            ("a\tb".into(), "c\nd".into())
        );
        assert!(parse_line(b"no tab\n").unwrap_err().contains("no TAB"));
        assert!(parse_line(b"\n").unwrap_err().contains("empty line"));
        assert!(parse_line(b"a\tb\tc")
            .unwrap_err()
            .contains("more than one TAB"));
        assert!(parse_line(b"a\\x\tb")
            .unwrap_err()
            .contains("unknown escape \\x"));
        assert!(parse_line(b"a\tb\\")
            .unwrap_err()
            .contains("lone backslash"));
        assert!(parse_line(b"a\t\xff").unwrap_err().contains("UTF-8"));
    }
}
