//! A whole job in one call: the coordinator and `workers` workers in this process, talking
//! over loopback exactly as separate processes would. For Rust programs that bring their own
//! [`App`] (see `examples/custom_job.rs`); the command-line tool runs workers as processes.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use crate::app::App;
use crate::server::{
    run_coordinator, CoordinatorConfig, CoordinatorError, JobReport, ProgressStyle,
};
use crate::worker::{run_worker, WorkerApp, WorkerConfig};

/// A job to run in-process.
#[derive(Clone, Debug)]
pub struct Job {
    /// Input files, as names relative to the current directory (or absolute).
    pub inputs: Vec<String>,
    pub n_reduce: usize,
    pub workers: usize,
    /// Where `mr-out-R` files go.
    pub out_dir: PathBuf,
    /// Bytes a map task buffers before spilling.
    pub memory_limit: usize,
}

impl Job {
    pub fn new(inputs: Vec<String>, out_dir: impl Into<PathBuf>) -> Self {
        Job {
            inputs,
            n_reduce: 10,
            workers: 2,
            out_dir: out_dir.into(),
            memory_limit: DEFAULT_MEMORY_LIMIT,
        }
    }
}

/// Default spill threshold of a map task.
pub const DEFAULT_MEMORY_LIMIT: usize = 32 << 20;

/// Runs `job` with `app` to completion (blocking; starts its own tokio runtime).
pub fn run(app: Arc<dyn App>, job: Job) -> Result<JobReport, CoordinatorError> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async move {
        let (addr_tx, addr_rx) = tokio::sync::oneshot::channel::<SocketAddr>();
        let config = CoordinatorConfig {
            listen: "127.0.0.1:0".parse().expect("loopback address"),
            inputs: job.inputs.clone(),
            n_reduce: job.n_reduce,
            out_dir: job.out_dir.clone(),
            task_timeout: Duration::from_secs(10),
            max_failures: 3,
            backup_tasks: false,
            linger: Duration::from_millis(200),
            keep_intermediate: false,
            progress: ProgressStyle::None,
        };
        let coordinator = tokio::spawn(run_coordinator(config, move |addr| {
            let _ = addr_tx.send(addr);
        }));
        let Ok(addr) = addr_rx.await else {
            // The coordinator failed before listening; its error says why.
            return coordinator.await.expect("coordinator task");
        };
        let workers: Vec<_> = (0..job.workers.max(1))
            .map(|_| {
                tokio::spawn(run_worker(WorkerConfig {
                    coordinator: addr,
                    app: WorkerApp::Rust(app.clone()),
                    memory_limit: job.memory_limit,
                    call_timeout: Duration::from_secs(5),
                    job_dir: None,
                }))
            })
            .collect();
        let report = coordinator.await.expect("coordinator task");
        for worker in workers {
            let _ = worker.await;
        }
        report
    })
}
