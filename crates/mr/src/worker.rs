//! A worker: asks the coordinator for tasks, runs them, reports, until told to exit, until
//! dismissed (it failed too many tasks), or until the coordinator is gone (a finished
//! coordinator stops listening; a worker that cannot reach it assumes the job is over).
//!
//! A reduce that cannot read a map task's output reports that (`MapOutputLost`, naming the
//! map task and the attempt it read) rather than a plain failure, so that the coordinator
//! runs the map task again.
//!
//! # Its own files
//!
//! A worker keeps what is its own — the map outputs it serves ([`Intermediates::OnWorkers`],
//! over [`crate::shuffle`], from the first such map task until it exits), the segments a
//! reduce fetched, an input split shipped to it and a reduce output on its way to the
//! coordinator — in a fresh directory it makes inside [`WorkerConfig::work_dir`] and removes
//! when it exits. So a worker started in an empty directory on a host that shares nothing
//! with the others needs only the coordinator's address.

use std::net::SocketAddr;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use flotilla_wire::{Client, WireError, DEFAULT_MAX_FRAME};
use tokio::net::TcpListener;

use crate::app::App;
use crate::apps::{by_name, exec_app, AppSpec, UnknownApp};
use crate::exec::{self, ExecApp};
use crate::protocol::{
    Attempt, FromCoordinator, Intermediates, MapInput, OutputEnd, OutputPlace, TaskId,
    ToCoordinator, WorkerId, MAX_CHUNK, PROTOCOL,
};
use crate::shuffle::{fetch_segments, serve_intermediates, FetchError};
use crate::task::{reduce_attempt_path, run_map, run_reduce_with, MapTask, ReduceTask, Reducer};

/// The application a worker runs: a Rust [`App`], or the exec app, whose reduce program runs
/// once per reduce task rather than once per key.
#[derive(Clone)]
pub enum WorkerApp {
    Rust(Arc<dyn App>),
    Exec(Arc<ExecApp>),
}

impl WorkerApp {
    /// The built-in application `spec` names (see [`crate::apps`]).
    pub fn load(spec: &AppSpec) -> Result<WorkerApp, UnknownApp> {
        if spec.name == exec::NAME {
            Ok(WorkerApp::Exec(Arc::new(exec_app(spec)?)))
        } else {
            Ok(WorkerApp::Rust(Arc::from(by_name(spec)?)))
        }
    }

    pub fn mapper(&self) -> &dyn App {
        match self {
            WorkerApp::Rust(app) => app.as_ref(),
            WorkerApp::Exec(exec) => exec.as_ref(),
        }
    }

    pub fn reducer(&self) -> Reducer<'_> {
        match self {
            WorkerApp::Rust(app) => Reducer::PerKey(app.as_ref()),
            WorkerApp::Exec(exec) => Reducer::Exec(exec.as_ref()),
        }
    }
}

#[derive(Clone)]
pub struct WorkerConfig {
    pub coordinator: SocketAddr,
    /// The application; `None`: the one the coordinator names (a built-in app).
    pub app: Option<WorkerApp>,
    /// Bytes of intermediate pairs a map task buffers before spilling a sorted run to disk.
    pub memory_limit: usize,
    /// How long to wait for one answer from the coordinator (or from a worker serving map
    /// outputs) before asking again.
    pub call_timeout: Duration,
    /// Where this worker sees the job's shared directory, if not at the path the coordinator
    /// gives (the share is mounted elsewhere here).
    pub job_dir: Option<PathBuf>,
    /// Where the worker makes the directory for its own files (see the module docs);
    /// `None`: the current directory.
    pub work_dir: Option<PathBuf>,
    /// Where to serve map outputs kept here; `None`: the IP address through which this
    /// worker reaches the coordinator, on a port the system picks.
    pub shuffle_listen: Option<SocketAddr>,
}

/// What a worker did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct WorkerSummary {
    pub maps: u64,
    pub reduces: u64,
    pub failed: u64,
    /// Why it stopped.
    pub ended: String,
}

#[derive(Debug, thiserror::Error)]
pub enum WorkerError {
    /// The coordinator answered the handshake but speaks something else.
    #[error("the coordinator at {addr} does not speak this worker's protocol: {source}")]
    Protocol {
        addr: SocketAddr,
        #[source]
        source: WireError,
    },
    #[error("worker task panicked: {0}")]
    Panic(String),
    /// The coordinator stopped handing this worker tasks: it failed too many.
    #[error("the coordinator dismissed this worker {0}")]
    Dismissed(String),
    /// Started without an application, and the coordinator names none this worker has.
    #[error("{0}")]
    NoApp(String),
    #[error("cannot make the worker's directory in {}: {source}", dir.display())]
    WorkDir {
        dir: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot serve map outputs on {addr}: {source}")]
    Serve {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
}

fn random_worker_id() -> WorkerId {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u32(std::process::id());
    h.finish()
}

type CoordinatorClient = Client<ToCoordinator, FromCoordinator>;

/// How a task ended, short of a panic.
enum TaskEnd {
    /// Done: the input bytes it read (a map), and where its outputs are served.
    Done {
        bytes: u64,
        served_at: Option<SocketAddr>,
    },
    Failed(String),
    /// A reduce could not read map task `map`'s output.
    MapOutputLost {
        map: usize,
        error: String,
    },
    /// The coordinator went away in the middle of the task.
    CoordinatorGone,
}

/// The server of the map outputs this worker keeps, once it has some.
struct ShuffleServer {
    addr: SocketAddr,
    stop: tokio::sync::oneshot::Sender<()>,
    task: tokio::task::JoinHandle<std::io::Result<()>>,
}

/// A worker between tasks.
struct Worker {
    id: WorkerId,
    config: WorkerConfig,
    app: WorkerApp,
    client: CoordinatorClient,
    /// This worker's own directory (removed on drop).
    scratch: tempfile::TempDir,
    shuffle: Option<ShuffleServer>,
}

/// Runs until the job is over. `Ok` covers both "told to exit" and "coordinator gone";
/// [`WorkerError::Dismissed`] means the coordinator gave up on this worker.
///
/// While a task runs, the worker sends a heartbeat every `heartbeat_millis` (a quarter of
/// the coordinator's task timeout), so that the coordinator knows it is alive — which
/// decides whether a job whose other workers were all dismissed can still finish.
pub async fn run_worker(config: WorkerConfig) -> Result<WorkerSummary, WorkerError> {
    let id = random_worker_id();
    let mut summary = WorkerSummary::default();
    let mut client: CoordinatorClient =
        match Client::connect(config.coordinator, PROTOCOL, DEFAULT_MAX_FRAME).await {
            Ok(client) => client,
            Err(source @ WireError::Handshake(_)) => {
                return Err(WorkerError::Protocol {
                    addr: config.coordinator,
                    source,
                })
            }
            Err(e) => {
                summary.ended = format!("no coordinator at {}: {e}", config.coordinator);
                return Ok(summary);
            }
        };
    let app = match &config.app {
        Some(app) => app.clone(),
        None => {
            let ask = ToCoordinator::WhichApp { worker: id };
            match call(&mut client, &ask, config.call_timeout).await {
                None => {
                    summary.ended = "the coordinator is gone".into();
                    return Ok(summary);
                }
                Some(FromCoordinator::App { name: Some(name) }) => {
                    WorkerApp::load(&AppSpec::builtin(&name)).map_err(|e| {
                        WorkerError::NoApp(format!("the coordinator's application: {e}"))
                    })?
                }
                Some(_) => {
                    return Err(WorkerError::NoApp(
                        "no --app given, and the coordinator names no application (give it \
                         --app)"
                            .into(),
                    ))
                }
            }
        }
    };
    let base = config
        .work_dir
        .clone()
        .unwrap_or_else(|| PathBuf::from("."));
    let scratch = tempfile::Builder::new()
        .prefix(".flotilla-mr-worker-")
        .tempdir_in(&base)
        .map_err(|source| WorkerError::WorkDir { dir: base, source })?;
    let mut worker = Worker {
        id,
        config,
        app,
        client,
        scratch,
        shuffle: None,
    };
    let result = worker.run(&mut summary).await;
    if let Some(server) = worker.shuffle.take() {
        let _ = server.stop.send(());
        let _ = server.task.await;
    }
    result.map(|()| summary)
}

impl Worker {
    async fn run(&mut self, summary: &mut WorkerSummary) -> Result<(), WorkerError> {
        loop {
            let request = ToCoordinator::RequestTask { worker: self.id };
            let Some(reply) = self.call(&request).await else {
                summary.ended = "the coordinator is gone".into();
                return Ok(());
            };
            let (task, attempt, map_attempts, end, attempt_output) = match reply {
                FromCoordinator::Map {
                    task,
                    attempt,
                    input_name,
                    input,
                    n_reduce,
                    intermediates,
                    heartbeat_millis,
                } => {
                    let every = heartbeat_period(heartbeat_millis);
                    let map = MapOrder {
                        task,
                        attempt,
                        input_name,
                        input,
                        n_reduce,
                        intermediates,
                    };
                    let end = self.map(map, every).await?;
                    (TaskId::Map(task), attempt, Vec::new(), end, None)
                }
                FromCoordinator::Reduce {
                    task,
                    attempt,
                    map_attempts,
                    intermediates,
                    output,
                    heartbeat_millis,
                } => {
                    let every = heartbeat_period(heartbeat_millis);
                    let output = match output {
                        OutputPlace::SharedDir(dir) => {
                            let dir = self.config.job_dir.clone().unwrap_or(dir);
                            (reduce_attempt_path(&dir, task, attempt), false)
                        }
                        OutputPlace::Coordinator => (
                            reduce_attempt_path(self.scratch.path(), task, attempt),
                            true,
                        ),
                    };
                    let order = ReduceOrder {
                        task,
                        attempt,
                        map_attempts: map_attempts.clone(),
                        intermediates,
                        output: output.0.clone(),
                        send_to_coordinator: output.1,
                    };
                    let end = self.reduce(order, every).await?;
                    (
                        TaskId::Reduce(task),
                        attempt,
                        map_attempts,
                        end,
                        Some(output.0),
                    )
                }
                FromCoordinator::Wait { millis } => {
                    tokio::time::sleep(Duration::from_millis(millis)).await;
                    continue;
                }
                FromCoordinator::Exit => {
                    summary.ended = "the job is over".into();
                    return Ok(());
                }
                FromCoordinator::Dismissed { reason } => {
                    return Err(WorkerError::Dismissed(reason))
                }
                FromCoordinator::Noted
                | FromCoordinator::App { .. }
                | FromCoordinator::InputChunk { .. }
                | FromCoordinator::Refused { .. } => continue,
            };
            let worker = self.id;
            let report = match end {
                TaskEnd::Done { bytes, served_at } => {
                    match task {
                        TaskId::Map(_) => summary.maps += 1,
                        TaskId::Reduce(_) => summary.reduces += 1,
                    }
                    ToCoordinator::TaskDone {
                        worker,
                        task,
                        attempt,
                        bytes,
                        served_at,
                    }
                }
                TaskEnd::CoordinatorGone => {
                    summary.ended = "the coordinator is gone".into();
                    return Ok(());
                }
                TaskEnd::MapOutputLost { map, error } if map < map_attempts.len() => {
                    summary.failed += 1;
                    tracing::warn!(%task, %error, "task failed");
                    let TaskId::Reduce(reduce) = task else {
                        unreachable!("only a reduce reads map outputs")
                    };
                    ToCoordinator::MapOutputLost {
                        worker,
                        reduce,
                        attempt,
                        map,
                        map_attempt: map_attempts[map],
                        error,
                    }
                }
                TaskEnd::Failed(error) | TaskEnd::MapOutputLost { error, .. } => {
                    summary.failed += 1;
                    tracing::warn!(%task, %error, "task failed");
                    ToCoordinator::TaskFailed {
                        worker,
                        task,
                        attempt,
                        error,
                    }
                }
            };
            let answer = self.call(&report).await;
            if let Some(output) = attempt_output {
                // Had the coordinator accepted this reduce attempt, it would have renamed the
                // output to mr-out-R before answering: a file still here was not accepted (or
                // the coordinator is gone, or it was sent to the coordinator) and is never
                // needed.
                let _ = std::fs::remove_file(output);
            }
            match answer {
                None => {
                    summary.ended = "the coordinator is gone".into();
                    return Ok(());
                }
                Some(FromCoordinator::Dismissed { reason }) => {
                    return Err(WorkerError::Dismissed(reason))
                }
                Some(_) => {}
            }
        }
    }

    async fn call(&mut self, message: &ToCoordinator) -> Option<FromCoordinator> {
        call(&mut self.client, message, self.config.call_timeout).await
    }

    /// Waits for `run`, sending heartbeats meanwhile.
    async fn beating<T>(
        &mut self,
        run: tokio::task::JoinHandle<T>,
        every: Duration,
    ) -> Result<T, WorkerError> {
        with_heartbeats(
            &mut self.client,
            self.id,
            run,
            every,
            self.config.call_timeout,
        )
        .await
        .map_err(|e| WorkerError::Panic(e.to_string()))
    }

    /// The address map outputs kept here are served at, starting the server first if need be.
    async fn shuffle_server(&mut self) -> Result<SocketAddr, WorkerError> {
        if let Some(server) = &self.shuffle {
            return Ok(server.addr);
        }
        let addr = match self.config.shuffle_listen {
            Some(addr) => addr,
            None => {
                let local = self
                    .client
                    .local_addr()
                    .map_err(|source| WorkerError::Serve {
                        addr: self.config.coordinator,
                        source,
                    })?;
                SocketAddr::new(local.ip(), 0)
            }
        };
        let listener = TcpListener::bind(addr)
            .await
            .map_err(|source| WorkerError::Serve { addr, source })?;
        let bound = listener
            .local_addr()
            .map_err(|source| WorkerError::Serve { addr, source })?;
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let dir = self.scratch.path().to_path_buf();
        let task = tokio::spawn(serve_intermediates(listener, dir, async move {
            let _ = stopped.await;
        }));
        tracing::info!(%bound, "serving map outputs");
        self.shuffle = Some(ShuffleServer {
            addr: bound,
            stop,
            task,
        });
        Ok(bound)
    }

    /// Runs a map task: its input read from its path or from the coordinator, its outputs
    /// in the shared directory or here.
    async fn map(&mut self, order: MapOrder, every: Duration) -> Result<TaskEnd, WorkerError> {
        let MapOrder {
            task,
            attempt,
            input_name,
            input,
            n_reduce,
            intermediates,
        } = order;
        let (dir, served_at) = match intermediates {
            Intermediates::SharedDir(dir) => (self.config.job_dir.clone().unwrap_or(dir), None),
            Intermediates::OnWorkers { .. } => (
                self.scratch.path().to_path_buf(),
                Some(self.shuffle_server().await?),
            ),
        };
        let (input_path, input_span, shipped) = match input {
            MapInput::Path { path, start, len } => (path, Some((start, len)), false),
            MapInput::Shipped { len } => {
                let path = self.scratch.path().join(format!("input-{task}.{attempt}"));
                match self.receive_input(task, attempt, len, &path).await {
                    Ok(()) => (path, None, true),
                    Err(end) => {
                        let _ = std::fs::remove_file(&path);
                        return Ok(end);
                    }
                }
            }
        };
        let app = self.app.clone();
        let memory_limit = self.config.memory_limit;
        let path = input_path.clone();
        let run = tokio::task::spawn_blocking(move || {
            let map = MapTask {
                id: task,
                attempt,
                input_name: &input_name,
                input_path: &path,
                input_span,
                n_reduce,
                dir: &dir,
                memory_limit,
            };
            run_map(app.mapper(), &map).map(|stats| {
                tracing::debug!(
                    task,
                    pairs = stats.pairs,
                    spills = stats.spills,
                    peak_spill_readers = stats.peak_spill_readers,
                    "map task done"
                );
                stats.bytes_read
            })
        });
        let result = self.beating(run, every).await?;
        if shipped {
            let _ = std::fs::remove_file(&input_path);
        }
        Ok(match result {
            Ok(bytes) => TaskEnd::Done { bytes, served_at },
            Err(e) => TaskEnd::Failed(e.to_string()),
        })
    }

    /// Reads the `len` bytes of map task `task`'s split from the coordinator into `path`.
    async fn receive_input(
        &mut self,
        task: usize,
        attempt: Attempt,
        len: u64,
        path: &Path,
    ) -> Result<(), TaskEnd> {
        let local = |e: std::io::Error| {
            TaskEnd::Failed(format!("cannot write the input in {}: {e}", path.display()))
        };
        let file = std::fs::File::create(path).map_err(local)?;
        let mut offset = 0u64;
        while offset < len {
            let ask = ToCoordinator::ReadInput {
                worker: self.id,
                task,
                attempt,
                offset,
                len: (len - offset).min(MAX_CHUNK as u64) as u32,
            };
            let data = match self.call(&ask).await {
                None => return Err(TaskEnd::CoordinatorGone),
                Some(FromCoordinator::InputChunk { data }) => data,
                Some(FromCoordinator::Refused { why }) => {
                    return Err(TaskEnd::Failed(format!(
                        "the coordinator would not send the input: {why}"
                    )))
                }
                Some(other) => {
                    return Err(TaskEnd::Failed(format!(
                        "the coordinator answered a read of the input with {other:?}"
                    )))
                }
            };
            if data.is_empty() || offset + data.len() as u64 > len {
                return Err(TaskEnd::Failed(format!(
                    "the coordinator sent {} bytes of the input at offset {offset} of {len}",
                    data.len()
                )));
            }
            file.write_all_at(&data, offset).map_err(local)?;
            offset += data.len() as u64;
        }
        Ok(())
    }

    /// Runs a reduce task: its map outputs read in the shared directory or fetched from the
    /// workers serving them, its output left in the shared directory or sent to the
    /// coordinator.
    async fn reduce(
        &mut self,
        order: ReduceOrder,
        every: Duration,
    ) -> Result<TaskEnd, WorkerError> {
        let ReduceOrder {
            task,
            attempt,
            map_attempts,
            intermediates,
            output,
            send_to_coordinator,
        } = order;
        let (dir, fetched) = match intermediates {
            Intermediates::SharedDir(dir) => (self.config.job_dir.clone().unwrap_or(dir), None),
            Intermediates::OnWorkers { servers } => {
                let dir = self.scratch.path().to_path_buf();
                let attempts = map_attempts.clone();
                let timeout = self.config.call_timeout;
                let into = dir.clone();
                let fetch = tokio::spawn(async move {
                    fetch_segments(&servers, &attempts, task, &into, timeout).await
                });
                match self.beating(fetch, every).await? {
                    Ok(fetched) => (dir, Some(fetched)),
                    Err(FetchError::Map { map, why }) => {
                        return Ok(TaskEnd::MapOutputLost { map, error: why })
                    }
                    Err(FetchError::Local(why)) => return Ok(TaskEnd::Failed(why)),
                }
            }
        };
        let app = self.app.clone();
        let path = output.clone();
        let run = tokio::task::spawn_blocking(move || {
            let reduce = ReduceTask {
                id: task,
                map_attempts: &map_attempts,
                dir: &dir,
                fetched: fetched.as_ref(),
                output: &path,
            };
            run_reduce_with(app.reducer(), &reduce)
        });
        match self.beating(run, every).await? {
            Ok(_) if send_to_coordinator => Ok(self.send_output(task, attempt, &output).await),
            Ok(_) => Ok(TaskEnd::Done {
                bytes: 0,
                served_at: None,
            }),
            Err(e) => Ok(match e.unreadable_map() {
                Some(map) => TaskEnd::MapOutputLost {
                    map,
                    error: e.to_string(),
                },
                None => TaskEnd::Failed(e.to_string()),
            }),
        }
    }

    /// Sends the reduce output at `path` to the coordinator, in chunks, the last one with
    /// its length and CRC-32.
    async fn send_output(&mut self, task: usize, attempt: Attempt, path: &Path) -> TaskEnd {
        let local = |e: std::io::Error| {
            TaskEnd::Failed(format!("cannot read its output {}: {e}", path.display()))
        };
        let file = match std::fs::File::open(path) {
            Ok(file) => file,
            Err(e) => return local(e),
        };
        let len = match file.metadata() {
            Ok(meta) => meta.len(),
            Err(e) => return local(e),
        };
        let mut crc = crc32fast::Hasher::new();
        let mut offset = 0u64;
        loop {
            let want = (len - offset).min(MAX_CHUNK as u64) as usize;
            let mut data = vec![0; want];
            if let Err(e) = file.read_exact_at(&mut data, offset) {
                return local(e);
            }
            crc.update(&data);
            let last = offset + want as u64 == len;
            let chunk = ToCoordinator::OutputChunk {
                worker: self.id,
                task,
                attempt,
                offset,
                data,
                end: last.then(|| OutputEnd {
                    len,
                    crc32: crc.clone().finalize(),
                }),
            };
            match self.call(&chunk).await {
                None => return TaskEnd::CoordinatorGone,
                Some(FromCoordinator::Noted) => {}
                Some(FromCoordinator::Refused { why }) => {
                    return TaskEnd::Failed(format!("the coordinator refused its output: {why}"))
                }
                Some(other) => {
                    return TaskEnd::Failed(format!(
                        "the coordinator answered a chunk of its output with {other:?}"
                    ))
                }
            }
            offset += want as u64;
            if last {
                return TaskEnd::Done {
                    bytes: 0,
                    served_at: None,
                };
            }
        }
    }
}

/// A map task as the coordinator handed it out.
struct MapOrder {
    task: usize,
    attempt: Attempt,
    input_name: String,
    input: MapInput,
    n_reduce: usize,
    intermediates: Intermediates,
}

/// A reduce task as the coordinator handed it out, with where its output goes here.
struct ReduceOrder {
    task: usize,
    attempt: Attempt,
    map_attempts: Vec<Attempt>,
    intermediates: Intermediates,
    output: PathBuf,
    send_to_coordinator: bool,
}

fn heartbeat_period(millis: u64) -> Duration {
    Duration::from_millis(millis.max(1))
}

/// Waits for the task `run`, sending the coordinator a heartbeat every `every` meanwhile
/// (until one goes unanswered: the coordinator is gone, which the report after the task will
/// find out).
async fn with_heartbeats<T>(
    client: &mut CoordinatorClient,
    worker: WorkerId,
    mut run: tokio::task::JoinHandle<T>,
    every: Duration,
    timeout: Duration,
) -> Result<T, tokio::task::JoinError> {
    let mut ticker = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut beating = true;
    loop {
        tokio::select! {
            result = &mut run => return result,
            _ = ticker.tick(), if beating => {
                let heartbeat = ToCoordinator::Heartbeat { worker };
                beating = call(client, &heartbeat, timeout).await.is_some();
            }
        }
    }
}

/// One request, retried on timeouts; `None` once the coordinator cannot be reached.
async fn call(
    client: &mut CoordinatorClient,
    message: &ToCoordinator,
    timeout: Duration,
) -> Option<FromCoordinator> {
    loop {
        match client.call(message, timeout).await {
            Ok(reply) => return Some(reply),
            Err(WireError::Timeout(_)) => continue,
            Err(e) => {
                tracing::debug!(error = %e, "coordinator unreachable");
                return None;
            }
        }
    }
}
