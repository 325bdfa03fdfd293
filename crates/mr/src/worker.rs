//! A worker: asks the coordinator for tasks, runs them, reports, until told to exit, until
//! dismissed (it failed too many tasks), or until the coordinator is gone (a finished
//! coordinator stops listening; a worker that cannot reach it assumes the job is over).
//!
//! A reduce that cannot read a map task's output reports that (`MapOutputLost`, naming the
//! map task and the attempt it read) rather than a plain failure, so that the coordinator
//! runs the map task again.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use flotilla_wire::{Client, WireError, DEFAULT_MAX_FRAME};

use crate::app::App;
use crate::apps::{by_name, exec_app, AppSpec, UnknownApp};
use crate::exec::{self, ExecApp};
use crate::protocol::{FromCoordinator, TaskId, ToCoordinator, WorkerId, PROTOCOL};
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
    pub app: WorkerApp,
    /// Bytes of intermediate pairs a map task buffers before spilling a sorted run to disk.
    pub memory_limit: usize,
    /// How long to wait for one answer from the coordinator before asking again.
    pub call_timeout: Duration,
    /// Where this worker sees the job's shared directory, if not at the path the coordinator
    /// gives (the share is mounted elsewhere here).
    pub job_dir: Option<PathBuf>,
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
}

fn random_worker_id() -> WorkerId {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u32(std::process::id());
    h.finish()
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
    let mut client: Client<ToCoordinator, FromCoordinator> =
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
    loop {
        let Some(reply) = call(
            &mut client,
            &ToCoordinator::RequestTask { worker: id },
            config.call_timeout,
        )
        .await
        else {
            summary.ended = "the coordinator is gone".into();
            return Ok(summary);
        };
        let (task, attempt, map_attempts, heartbeat_millis, run, attempt_output) = match reply {
            FromCoordinator::Map {
                task,
                attempt,
                input_name,
                input_path,
                n_reduce,
                dir,
                heartbeat_millis,
            } => {
                let dir = config.job_dir.clone().unwrap_or(dir);
                let app = config.app.clone();
                let memory_limit = config.memory_limit;
                let run = tokio::task::spawn_blocking(move || {
                    let map = MapTask {
                        id: task,
                        attempt,
                        input_name: &input_name,
                        input_path: &input_path,
                        n_reduce,
                        dir: &dir,
                        memory_limit,
                    };
                    run_map(app.mapper(), &map)
                        .map(|stats| {
                            tracing::debug!(
                                task,
                                pairs = stats.pairs,
                                spills = stats.spills,
                                peak_spill_readers = stats.peak_spill_readers,
                                "map task done"
                            );
                            stats.bytes_read
                        })
                        .map_err(|e| (e.to_string(), None))
                });
                let map_attempts = Vec::new();
                (
                    TaskId::Map(task),
                    attempt,
                    map_attempts,
                    heartbeat_millis,
                    run,
                    None,
                )
            }
            FromCoordinator::Reduce {
                task,
                attempt,
                map_attempts,
                dir,
                heartbeat_millis,
            } => {
                let dir = config.job_dir.clone().unwrap_or(dir);
                let app = config.app.clone();
                let attempts = map_attempts.clone();
                let output = reduce_attempt_path(&dir, task, attempt);
                let attempt_output = Some(output.clone());
                let run = tokio::task::spawn_blocking(move || {
                    let reduce = ReduceTask {
                        id: task,
                        map_attempts: &attempts,
                        dir: &dir,
                        output: &output,
                    };
                    run_reduce_with(app.reducer(), &reduce)
                        .map(|_| 0)
                        .map_err(|e| (e.to_string(), e.unreadable_map()))
                });
                (
                    TaskId::Reduce(task),
                    attempt,
                    map_attempts,
                    heartbeat_millis,
                    run,
                    attempt_output,
                )
            }
            FromCoordinator::Wait { millis } => {
                tokio::time::sleep(Duration::from_millis(millis)).await;
                continue;
            }
            FromCoordinator::Exit => {
                summary.ended = "the job is over".into();
                return Ok(summary);
            }
            FromCoordinator::Dismissed { reason } => return Err(WorkerError::Dismissed(reason)),
            FromCoordinator::Noted => continue,
        };
        let every = Duration::from_millis(heartbeat_millis.max(1));
        let result = with_heartbeats(&mut client, id, run, every, config.call_timeout).await;
        let result = result.map_err(|e| WorkerError::Panic(e.to_string()))?;
        let report = match result {
            Ok(bytes) => {
                match task {
                    TaskId::Map(_) => summary.maps += 1,
                    TaskId::Reduce(_) => summary.reduces += 1,
                }
                ToCoordinator::TaskDone {
                    worker: id,
                    task,
                    attempt,
                    bytes,
                }
            }
            Err((error, unreadable_map)) => {
                summary.failed += 1;
                tracing::warn!(%task, %error, "task failed");
                match (task, unreadable_map) {
                    (TaskId::Reduce(reduce), Some(map)) if map < map_attempts.len() => {
                        ToCoordinator::MapOutputLost {
                            worker: id,
                            reduce,
                            attempt,
                            map,
                            map_attempt: map_attempts[map],
                            error,
                        }
                    }
                    _ => ToCoordinator::TaskFailed {
                        worker: id,
                        task,
                        attempt,
                        error,
                    },
                }
            }
        };
        let answer = call(&mut client, &report, config.call_timeout).await;
        if let Some(output) = attempt_output {
            // Had the coordinator accepted this reduce attempt, it would have renamed the
            // output to mr-out-R before answering: a file still here was not accepted (or
            // the coordinator is gone) and is never needed.
            let _ = std::fs::remove_file(output);
        }
        match answer {
            None => {
                summary.ended = "the coordinator is gone".into();
                return Ok(summary);
            }
            Some(FromCoordinator::Dismissed { reason }) => {
                return Err(WorkerError::Dismissed(reason))
            }
            Some(_) => {}
        }
    }
}

/// Waits for the task `run`, sending the coordinator a heartbeat every `every` meanwhile
/// (until one goes unanswered: the coordinator is gone, which the report after the task will
/// find out).
async fn with_heartbeats<T>(
    client: &mut Client<ToCoordinator, FromCoordinator>,
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
    client: &mut Client<ToCoordinator, FromCoordinator>,
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
