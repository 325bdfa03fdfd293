//! The coordinator as a TCP service: the [`Coordinator`] state machine behind
//! `flotilla-wire`, a progress display, and the end of the job.
//!
//! Start-up checks every input (it must exist, be a regular file and be readable) before
//! anything is written, so a typo fails at once with the file's name instead of as a task
//! that fails on every worker. When the job is done the coordinator keeps answering for
//! `linger` (workers asking in that time are told to exit), then stops listening, removes the
//! intermediate files (of every attempt of every map task) and what unaccepted reduce
//! attempts left, and returns.
//!
//! The coordinator process must see the job's directory (it creates it): it reads an output
//! a reduce reported lost, to judge whether the writer or the reader is at fault, and it
//! puts each accepted reduce attempt's output in place (`mr-reduce-R.A` → `mr-out-R`) before
//! answering that attempt's report (see [`crate::coordinator`]).
//!
//! # Without a shared file system
//!
//! Three options, each on its own, take the job's data off the shared directory:
//! - [`CoordinatorConfig::intermediates_on_workers`]: map outputs stay on the worker that
//!   wrote them and reach the reduces over [`crate::shuffle`]; an output a reduce reports
//!   lost is checked by asking the worker that serves it (unreachable counts as lost), and
//!   the map tasks of a worker that is gone run again;
//! - [`CoordinatorConfig::ship_inputs`]: workers read their input splits from the
//!   coordinator;
//! - [`CoordinatorConfig::collect_outputs`]: reduce workers send their outputs to the
//!   coordinator, which checks each one's length and CRC-32, syncs it and renames it to
//!   `mr-reduce-R.A` in its directory, and from there into place as before.
//!
//! With all three, a worker needs nothing but the coordinator's address (and, with
//! [`CoordinatorConfig::app`], not even `--app`).
//!
//! # Input splits
//!
//! A file larger than [`CoordinatorConfig::split_bytes`] (by more than a tenth, so that no
//! tiny last split is left) is cut into map tasks of about that size, each ending at a line
//! boundary ([`split_inputs`]); every split is mapped under the file's name.

use std::fs::File;
use std::io::IsTerminal;
use std::net::SocketAddr;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use flotilla_wire::{ServerConfig, DEFAULT_MAX_FRAME};
use tokio::net::TcpListener;
use tokio::sync::Notify;

use crate::coordinator::{Coordinator, Input, JobDir, JobSpec, Outcome, Progress};
use crate::protocol::{Attempt, FromCoordinator, OutputEnd, TaskId, ToCoordinator, PROTOCOL};
use crate::shuffle::{blocking, check_segment};
use crate::task::{
    check_intermediate, intermediate_path, output_path, reduce_attempt_path, TEMP_PREFIX,
};

/// How long the coordinator waits for a worker to say whether a map output it serves is
/// intact (to connect, and then for the answer); no answer counts as lost.
const CHECK_TIMEOUT: Duration = Duration::from_secs(5);

/// The default size of an input split: 64 MiB, the paper's.
pub const DEFAULT_SPLIT_BYTES: u64 = 64 << 20;

#[derive(Clone, Debug)]
pub struct CoordinatorConfig {
    pub listen: SocketAddr,
    /// Input names as given (relative names are resolved against the current directory).
    pub inputs: Vec<String>,
    pub n_reduce: usize,
    /// Where `mr-X-Y` and `mr-out-R` go.
    pub out_dir: PathBuf,
    pub task_timeout: Duration,
    pub max_failures: u32,
    /// Backup attempts of running tasks near the end of each phase
    /// ([`crate::coordinator::JobSpec::backup_tasks`]).
    pub backup_tasks: bool,
    /// Inputs larger than this are cut into map tasks of about this size at line
    /// boundaries ([`split_inputs`]); `u64::MAX`: never.
    pub split_bytes: u64,
    /// Map outputs stay on the workers, which serve them ([`crate::shuffle`]).
    pub intermediates_on_workers: bool,
    /// Workers read their input splits from the coordinator.
    pub ship_inputs: bool,
    /// Reduce workers send their outputs to the coordinator.
    pub collect_outputs: bool,
    /// The built-in application that workers started without `--app` run.
    pub app: Option<String>,
    /// How long to keep answering "exit" after the job is done.
    pub linger: Duration,
    /// Keep the intermediate files `mr-X-Y` after the job.
    pub keep_intermediate: bool,
    pub progress: ProgressStyle,
}

/// How the coordinator reports progress on stderr.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProgressStyle {
    /// A bar redrawn in place when stderr is a terminal, plain lines otherwise.
    Auto,
    /// Plain lines, one per change.
    Lines,
    None,
}

#[derive(Debug, thiserror::Error)]
pub enum CoordinatorError {
    #[error("input {name:?}: {reason}")]
    BadInput { name: String, reason: String },
    #[error("no input files given")]
    NoInputs,
    #[error("--reduce must be at least 1")]
    NoReduces,
    #[error("output directory {}: {source}", path.display())]
    OutDir {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("job failed: {0}")]
    JobFailed(String),
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

/// What a finished job looked like.
#[derive(Clone, Debug)]
pub struct JobReport {
    pub progress: Progress,
    pub elapsed: Duration,
}

/// Checks the inputs and resolves where workers will read them.
pub fn resolve_inputs(names: &[String]) -> Result<Vec<Input>, CoordinatorError> {
    if names.is_empty() {
        return Err(CoordinatorError::NoInputs);
    }
    let cwd = std::env::current_dir()?;
    names
        .iter()
        .map(|name| {
            let bad = |reason: String| CoordinatorError::BadInput {
                name: name.clone(),
                reason,
            };
            let path = cwd.join(name);
            let meta = std::fs::metadata(&path).map_err(|e| bad(e.to_string()))?;
            if meta.is_dir() {
                return Err(bad("is a directory, not a file".into()));
            }
            if !meta.is_file() {
                return Err(bad("is not a regular file".into()));
            }
            std::fs::File::open(&path).map_err(|e| bad(format!("cannot be read: {e}")))?;
            Ok(Input {
                name: name.clone(),
                path,
                start: 0,
                bytes: meta.len(),
            })
        })
        .collect()
}

/// Cuts every input larger than `split_bytes` (by more than a tenth) into splits of about
/// `split_bytes`, each ending just after a newline (or at the end of the file: a line
/// longer than a split stays in one). Smaller inputs stay whole; every split keeps its
/// file's name.
pub fn split_inputs(inputs: Vec<Input>, split_bytes: u64) -> Result<Vec<Input>, CoordinatorError> {
    let split_bytes = split_bytes.max(1);
    let mut splits = Vec::new();
    for input in inputs {
        let whole = input.bytes;
        if whole <= split_bytes.saturating_add(split_bytes / 10) {
            splits.push(input);
            continue;
        }
        let bad = |e: std::io::Error| CoordinatorError::BadInput {
            name: input.name.clone(),
            reason: format!("cannot be read: {e}"),
        };
        let file = File::open(&input.path).map_err(bad)?;
        let mut start = 0;
        while start < whole {
            let end = if whole - start <= split_bytes.saturating_add(split_bytes / 10) {
                whole
            } else {
                line_end_from(&file, start + split_bytes - 1, whole).map_err(bad)?
            };
            splits.push(Input {
                start,
                bytes: end - start,
                ..input.clone()
            });
            start = end;
        }
    }
    Ok(splits)
}

/// The offset just past the first newline at or after `from` in the first `len` bytes of
/// `file`, or `len` if there is none.
fn line_end_from(file: &File, from: u64, len: u64) -> std::io::Result<u64> {
    let mut buffer = vec![0u8; 64 << 10];
    let mut at = from;
    while at < len {
        let want = (len - at).min(buffer.len() as u64) as usize;
        let n = file.read_at(&mut buffer[..want], at)?;
        if n == 0 {
            break;
        }
        if let Some(i) = buffer[..n].iter().position(|&b| b == b'\n') {
            return Ok(at + i as u64 + 1);
        }
        at += n as u64;
    }
    Ok(len)
}

/// Runs the whole job. `on_listening` is called with the bound address as soon as workers can
/// connect.
pub async fn run_coordinator(
    config: CoordinatorConfig,
    on_listening: impl FnOnce(SocketAddr),
) -> Result<JobReport, CoordinatorError> {
    if config.n_reduce == 0 {
        return Err(CoordinatorError::NoReduces);
    }
    let inputs = split_inputs(resolve_inputs(&config.inputs)?, config.split_bytes)?;
    let out_err = |source| CoordinatorError::OutDir {
        path: config.out_dir.clone(),
        source,
    };
    std::fs::create_dir_all(&config.out_dir).map_err(out_err)?;
    let dir = std::fs::canonicalize(&config.out_dir).map_err(out_err)?;
    let listener =
        TcpListener::bind(config.listen)
            .await
            .map_err(|source| CoordinatorError::Listen {
                addr: config.listen,
                source,
            })?;
    let n_map = inputs.len();
    let handler_dir = dir.clone();
    let coordinator = Arc::new(Mutex::new(Coordinator::new(JobSpec {
        inputs,
        n_reduce: config.n_reduce,
        dir: dir.clone(),
        task_timeout: config.task_timeout,
        max_failures: config.max_failures,
        backup_tasks: config.backup_tasks,
        intermediates_on_workers: config.intermediates_on_workers,
        ship_inputs: config.ship_inputs,
        collect_outputs: config.collect_outputs,
        app: config.app.clone(),
    })));
    let started = Instant::now();
    let finished = Arc::new(Notify::new());
    on_listening(listener.local_addr()?);

    let handler = {
        let coordinator = coordinator.clone();
        let finished = finished.clone();
        let dir = handler_dir;
        move |message: ToCoordinator| -> Option<FromCoordinator> {
            // An output a reduce could not fetch from the worker serving it is checked with
            // that worker before the coordinator decides (not under its lock: it waits).
            let remote_check = match message {
                ToCoordinator::MapOutputLost {
                    map,
                    map_attempt,
                    reduce,
                    ..
                } => {
                    // The guard must be gone before the check waits: a second report (or any
                    // message) would otherwise block a runtime thread on the lock while the
                    // check waits for the network, and with few threads nothing is left to
                    // drive the check (a deadlock `bench/mr-hosts.py` found).
                    let at = coordinator
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .map_output_server(map, map_attempt);
                    at.map(|at| check_served_output(at, map, map_attempt, reduce))
                }
                _ => None,
            };
            let mut job_dir = ServerDir {
                dir: &dir,
                remote_check,
            };
            let mut c = coordinator.lock().unwrap_or_else(|e| e.into_inner());
            let reply = blocking(|| c.handle(message, started.elapsed(), &mut job_dir));
            if c.outcome().is_some() {
                finished.notify_one();
            }
            Some(reply)
        }
    };
    let bar = config.progress == ProgressStyle::Auto && std::io::stderr().is_terminal();
    let display = tokio::spawn(show_progress(
        coordinator.clone(),
        started,
        config.progress,
        bar,
    ));
    let display_abort = display.abort_handle();
    let linger = config.linger;
    let shutdown = async move {
        finished.notified().await;
        // Stop redrawing the bar and end its line before anything else is logged.
        display_abort.abort();
        if bar {
            eprintln!();
        }
        tokio::time::sleep(linger).await;
    };
    let server_config = ServerConfig {
        max_frame: DEFAULT_MAX_FRAME,
        ..ServerConfig::default()
    };
    flotilla_wire::serve(listener, PROTOCOL, server_config, handler, shutdown).await?;
    display.abort();

    let c = coordinator.lock().unwrap_or_else(|e| e.into_inner());
    let progress = c.progress(started.elapsed());
    if config.progress != ProgressStyle::None {
        eprintln!("{}", describe(&progress, started.elapsed()));
    }
    match c.outcome() {
        Some(Outcome::Done) => {
            if !config.keep_intermediate {
                remove_intermediate(&c, n_map, config.n_reduce);
            }
            remove_unaccepted_reduce_outputs(&c, config.n_reduce);
            Ok(JobReport {
                progress,
                elapsed: started.elapsed(),
            })
        }
        Some(Outcome::Failed(why)) => Err(CoordinatorError::JobFailed(why.clone())),
        None => unreachable!("the server stops only once the job has an outcome"),
    }
}

/// Asks the worker at `at` whether it still serves that map output intact.
fn check_served_output(
    at: SocketAddr,
    map: usize,
    attempt: Attempt,
    reduce: usize,
) -> Result<(), String> {
    let check = check_segment(at, map, attempt, reduce, CHECK_TIMEOUT);
    match tokio::runtime::Handle::try_current() {
        Ok(handle) if handle.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread => {
            tokio::task::block_in_place(|| handle.block_on(check))
        }
        _ => Err(
            "the coordinator cannot ask the worker serving it (it runs on a \
                  single-thread runtime): taken as lost"
                .into(),
        ),
    }
}

/// The job's directory as the coordinator process sees it, and the check of a map output
/// served by a worker, made before the coordinator was asked.
struct ServerDir<'a> {
    dir: &'a Path,
    remote_check: Option<Result<(), String>>,
}

/// Where a reduce output sent to the coordinator is gathered until its end arrives.
fn collect_path(dir: &Path, reduce: usize, attempt: Attempt) -> PathBuf {
    dir.join(format!("{TEMP_PREFIX}collect-{reduce}.{attempt}"))
}

impl JobDir for ServerDir<'_> {
    fn check_map_output(
        &mut self,
        map: usize,
        attempt: Attempt,
        reduce: usize,
        served_at: Option<SocketAddr>,
    ) -> Result<(), String> {
        match served_at {
            None => check_intermediate(self.dir, map, attempt, reduce)
                .map(|_| ())
                .map_err(|e| e.to_string()),
            Some(at) => self.remote_check.take().unwrap_or_else(|| {
                Err(format!(
                    "the worker at {at} serving it was not asked: taken as lost"
                ))
            }),
        }
    }

    fn read_input(&mut self, input: &Input, offset: u64, len: u32) -> Result<Vec<u8>, String> {
        let file = File::open(&input.path).map_err(|e| format!("cannot open it: {e}"))?;
        let mut data = vec![0; len as usize];
        let mut filled = 0;
        while filled < data.len() {
            let at = input.start + offset + filled as u64;
            match file.read_at(&mut data[filled..], at) {
                Ok(0) => {
                    return Err(format!(
                        "it ends before byte {at}: it changed since the job started"
                    ))
                }
                Ok(n) => filled += n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(format!("cannot read it: {e}")),
            }
        }
        Ok(data)
    }

    fn receive_output(
        &mut self,
        reduce: usize,
        attempt: Attempt,
        offset: u64,
        data: &[u8],
        end: Option<OutputEnd>,
    ) -> Result<(), String> {
        let path = collect_path(self.dir, reduce, attempt);
        let io = |what: &str, e: std::io::Error| format!("cannot {what} {}: {e}", path.display());
        let file = std::fs::OpenOptions::new()
            .write(true)
            .read(true)
            .create(true)
            .truncate(offset == 0)
            .open(&path)
            .map_err(|e| io("open", e))?;
        let have = file.metadata().map_err(|e| io("stat", e))?.len();
        if offset > have {
            return Err(format!(
                "a chunk of reduce task {reduce}'s output at offset {offset}, but only {have} \
                 bytes of it came before"
            ));
        }
        file.write_all_at(data, offset)
            .map_err(|e| io("write", e))?;
        file.set_len(offset + data.len() as u64)
            .map_err(|e| io("write", e))?;
        let Some(end) = end else {
            return Ok(());
        };
        let len = offset + data.len() as u64;
        let mut crc = crc32fast::Hasher::new();
        let mut buffer = vec![0u8; 1 << 20];
        let mut read = 0u64;
        loop {
            let n = file.read_at(&mut buffer, read).map_err(|e| io("read", e))?;
            if n == 0 {
                break;
            }
            crc.update(&buffer[..n]);
            read += n as u64;
        }
        let crc = crc.finalize();
        if read != end.len || len != end.len || crc != end.crc32 {
            let _ = std::fs::remove_file(&path);
            return Err(format!(
                "reduce task {reduce}'s output arrived damaged: {read} bytes with CRC-32 \
                 {crc:08x}, sent as {} bytes with CRC-32 {:08x}",
                end.len, end.crc32
            ));
        }
        file.sync_all().map_err(|e| io("sync", e))?;
        let to = reduce_attempt_path(self.dir, reduce, attempt);
        std::fs::rename(&path, &to).map_err(|e| io("rename", e))
    }

    fn publish_reduce_output(&mut self, reduce: usize, attempt: Attempt) -> Result<(), String> {
        let from = reduce_attempt_path(self.dir, reduce, attempt);
        let to = output_path(self.dir, reduce);
        match std::fs::symlink_metadata(&from) {
            Ok(meta) if meta.is_file() => {}
            Ok(_) => return Err(format!("{} is not a regular file", from.display())),
            Err(e) => return Err(format!("{}: {e}", from.display())),
        }
        std::fs::rename(&from, &to)
            .map_err(|e| format!("cannot rename {} to {}: {e}", from.display(), to.display()))
    }
}

/// Removes the intermediate files of every attempt of every map task.
fn remove_intermediate(c: &Coordinator, n_map: usize, n_reduce: usize) {
    let dir = &c.spec().dir;
    for m in 0..n_map {
        for attempt in 0..c.attempts(TaskId::Map(m)) {
            for r in 0..n_reduce {
                let _ = std::fs::remove_file(intermediate_path(dir, m, attempt, r));
            }
        }
    }
}

/// Removes what reduce attempts that were not accepted left behind (a worker removes its own
/// unless it crashed first).
fn remove_unaccepted_reduce_outputs(c: &Coordinator, n_reduce: usize) {
    let dir = &c.spec().dir;
    for r in 0..n_reduce {
        for attempt in 0..c.attempts(TaskId::Reduce(r)) {
            let _ = std::fs::remove_file(reduce_attempt_path(dir, r, attempt));
            let _ = std::fs::remove_file(collect_path(dir, r, attempt));
        }
    }
}

fn describe(p: &Progress, elapsed: Duration) -> String {
    let secs = elapsed.as_secs_f64().max(1e-3);
    let mut line = format!(
        "maps {}/{}, reduces {}/{}, {:.1} MB mapped ({:.1} MB/s), {} workers alive, {} reissued",
        p.maps_done,
        p.maps,
        p.reduces_done,
        p.reduces,
        p.bytes_mapped as f64 / 1e6,
        p.bytes_mapped as f64 / 1e6 / secs,
        p.workers_alive,
        p.reissued,
    );
    if p.workers_dismissed > 0 {
        line += &format!(", {} workers dismissed", p.workers_dismissed);
    }
    if p.maps_rerun > 0 {
        line += &format!(", {} maps rerun (lost outputs)", p.maps_rerun);
    }
    if p.backups > 0 {
        line += &format!(", {} backup attempts", p.backups);
    }
    line + &format!(", {secs:.1}s")
}

/// Redraws a bar (`bar`) or prints a line whenever the counts change, until aborted.
async fn show_progress(
    coordinator: Arc<Mutex<Coordinator>>,
    started: Instant,
    style: ProgressStyle,
    bar: bool,
) {
    if style == ProgressStyle::None {
        return;
    }
    let mut last = None;
    let mut ticker = tokio::time::interval(Duration::from_millis(if bar { 100 } else { 500 }));
    loop {
        ticker.tick().await;
        let p = coordinator
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .progress(started.elapsed());
        if bar {
            let total = (p.maps + p.reduces).max(1);
            let done = p.maps_done + p.reduces_done;
            let width = 30;
            let filled = done * width / total;
            eprint!(
                "\r[{}{}] {done}/{total} tasks | {}\x1b[K",
                "#".repeat(filled),
                ".".repeat(width - filled),
                describe(&p, started.elapsed())
            );
        } else {
            let key = (
                p.maps_done,
                p.reduces_done,
                p.workers_alive,
                p.workers_dismissed,
            );
            if last != Some(key) {
                eprintln!("{}", describe(&p, started.elapsed()));
                last = Some(key);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chunk(
        dir: &mut ServerDir<'_>,
        offset: u64,
        data: &[u8],
        end: Option<&[u8]>,
    ) -> Result<(), String> {
        let end = end.map(|whole| OutputEnd {
            len: whole.len() as u64,
            crc32: crc32fast::hash(whole),
        });
        dir.receive_output(3, 1, offset, data, end)
    }

    #[test]
    fn a_collected_output_is_kept_only_whole_and_intact() {
        let tmp = tempfile::tempdir().unwrap();
        let mut dir = ServerDir {
            dir: tmp.path(),
            remote_check: None,
        };
        let kept = reduce_attempt_path(tmp.path(), 3, 1);
        let whole = b"a 1\nb 2\nc 3\n";
        // In order, with a chunk sent twice (a lost answer): kept.
        chunk(&mut dir, 0, &whole[..4], None).unwrap();
        chunk(&mut dir, 0, &whole[..4], None).unwrap();
        assert!(!kept.exists(), "not before its end");
        chunk(&mut dir, 4, &whole[4..], Some(whole)).unwrap();
        assert_eq!(std::fs::read(&kept).unwrap(), whole);
        std::fs::remove_file(&kept).unwrap();

        // A gap: refused.
        chunk(&mut dir, 0, &whole[..4], None).unwrap();
        let why = chunk(&mut dir, 8, &whole[8..], Some(whole)).unwrap_err();
        assert!(why.contains("only 4 bytes"), "{why}");
        // A damaged byte, or a missing chunk, fails the check at the end; nothing is kept.
        let mut damaged = whole.to_vec();
        damaged[5] ^= 1;
        chunk(&mut dir, 0, &damaged, None).unwrap();
        let why = chunk(&mut dir, damaged.len() as u64, b"", Some(whole)).unwrap_err();
        assert!(why.contains("damaged"), "{why}");
        assert!(!kept.exists());
        assert!(
            !collect_path(tmp.path(), 3, 1).exists(),
            "the damaged copy is removed"
        );
        chunk(&mut dir, 0, &whole[..8], None).unwrap();
        let why = chunk(&mut dir, 8, b"", Some(whole)).unwrap_err();
        assert!(why.contains("damaged"), "{why}");
        assert!(!kept.exists());
    }

    #[test]
    fn a_shipped_split_is_read_from_its_start() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("in.txt");
        std::fs::write(&path, b"0123456789").unwrap();
        let mut dir = ServerDir {
            dir: tmp.path(),
            remote_check: None,
        };
        let split = Input {
            name: "in.txt".into(),
            path: path.clone(),
            start: 4,
            bytes: 6,
        };
        assert_eq!(dir.read_input(&split, 1, 3).unwrap(), b"567");
        // The file shrank since the job started.
        std::fs::write(&path, b"01234").unwrap();
        let why = dir.read_input(&split, 0, 6).unwrap_err();
        assert!(why.contains("changed"), "{why}");
    }
}
