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

use std::io::IsTerminal;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use flotilla_wire::{ServerConfig, DEFAULT_MAX_FRAME};
use tokio::net::TcpListener;
use tokio::sync::Notify;

use crate::coordinator::{Coordinator, Input, JobDir, JobSpec, Outcome, Progress};
use crate::protocol::{Attempt, FromCoordinator, TaskId, ToCoordinator, PROTOCOL};
use crate::task::{check_intermediate, intermediate_path, output_path, reduce_attempt_path};

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
                bytes: meta.len(),
            })
        })
        .collect()
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
    let inputs = resolve_inputs(&config.inputs)?;
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
    })));
    let started = Instant::now();
    let finished = Arc::new(Notify::new());
    on_listening(listener.local_addr()?);

    let handler = {
        let coordinator = coordinator.clone();
        let finished = finished.clone();
        let dir = handler_dir;
        move |message: ToCoordinator| -> Option<FromCoordinator> {
            let mut c = coordinator.lock().unwrap_or_else(|e| e.into_inner());
            let reply = c.handle(message, started.elapsed(), &mut SharedDir(&dir));
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

/// The job's directory as the coordinator process sees it.
struct SharedDir<'a>(&'a std::path::Path);

impl JobDir for SharedDir<'_> {
    fn check_map_output(
        &mut self,
        map: usize,
        attempt: Attempt,
        reduce: usize,
    ) -> Result<(), String> {
        check_intermediate(self.0, map, attempt, reduce)
            .map(|_| ())
            .map_err(|e| e.to_string())
    }

    fn publish_reduce_output(&mut self, reduce: usize, attempt: Attempt) -> Result<(), String> {
        let from = reduce_attempt_path(self.0, reduce, attempt);
        let to = output_path(self.0, reduce);
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
