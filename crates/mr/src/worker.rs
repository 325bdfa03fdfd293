//! A worker: asks the coordinator for tasks, runs them, reports, until told to exit or until
//! the coordinator is gone (a finished coordinator stops listening; a worker that cannot reach
//! it assumes the job is over).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use flotilla_wire::{Client, WireError, DEFAULT_MAX_FRAME};

use crate::app::App;
use crate::apps::{by_name, exec_app, AppSpec, UnknownApp};
use crate::exec::{self, ExecApp};
use crate::protocol::{FromCoordinator, TaskId, ToCoordinator, WorkerId, PROTOCOL};
use crate::task::{run_map, run_reduce_with, MapTask, ReduceTask, Reducer};

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
}

fn random_worker_id() -> WorkerId {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u32(std::process::id());
    h.finish()
}

/// Runs until the job is over. `Ok` covers both "told to exit" and "coordinator gone".
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
        let (task, result) = match reply {
            FromCoordinator::Map {
                task,
                input_name,
                input_path,
                n_reduce,
                dir,
            } => {
                let app = config.app.clone();
                let memory_limit = config.memory_limit;
                let run = tokio::task::spawn_blocking(move || {
                    let map = MapTask {
                        id: task,
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
                        .map_err(|e| e.to_string())
                });
                (TaskId::Map(task), run.await)
            }
            FromCoordinator::Reduce { task, n_map, dir } => {
                let app = config.app.clone();
                let run = tokio::task::spawn_blocking(move || {
                    let reduce = ReduceTask {
                        id: task,
                        n_map,
                        dir: &dir,
                    };
                    run_reduce_with(app.reducer(), &reduce)
                        .map(|_| 0)
                        .map_err(|e| e.to_string())
                });
                (TaskId::Reduce(task), run.await)
            }
            FromCoordinator::Wait { millis } => {
                tokio::time::sleep(Duration::from_millis(millis)).await;
                continue;
            }
            FromCoordinator::Exit => {
                summary.ended = "the job is over".into();
                return Ok(summary);
            }
            FromCoordinator::Noted => continue,
        };
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
                    bytes,
                }
            }
            Err(error) => {
                summary.failed += 1;
                tracing::warn!(%task, %error, "task failed");
                ToCoordinator::TaskFailed {
                    worker: id,
                    task,
                    error,
                }
            }
        };
        if call(&mut client, &report, config.call_timeout)
            .await
            .is_none()
        {
            summary.ended = "the coordinator is gone".into();
            return Ok(summary);
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
