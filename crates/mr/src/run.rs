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
    /// Run as hosts that share no directory would: inputs shipped by the coordinator, map
    /// outputs served by the workers that hold them, outputs collected by the coordinator,
    /// every worker with a directory of its own.
    pub without_shared_dir: bool,
    /// Inputs larger than this are split ([`crate::server::split_inputs`]).
    pub split_bytes: u64,
}

impl Job {
    pub fn new(inputs: Vec<String>, out_dir: impl Into<PathBuf>) -> Self {
        Job {
            inputs,
            n_reduce: 10,
            workers: 2,
            out_dir: out_dir.into(),
            memory_limit: DEFAULT_MEMORY_LIMIT,
            without_shared_dir: false,
            split_bytes: crate::server::DEFAULT_SPLIT_BYTES,
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
            split_bytes: job.split_bytes,
            intermediates_on_workers: job.without_shared_dir,
            ship_inputs: job.without_shared_dir,
            collect_outputs: job.without_shared_dir,
            app: None,
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
        // Without a shared directory, each worker's own files go in a directory of its own
        // (removed when the job is over).
        let own_dirs: Vec<Option<tempfile::TempDir>> = if job.without_shared_dir {
            (0..job.workers.max(1))
                .map(|_| tempfile::tempdir().map(Some))
                .collect::<Result<Vec<_>, _>>()?
        } else {
            (0..job.workers.max(1)).map(|_| None).collect()
        };
        let workers: Vec<_> = own_dirs
            .iter()
            .map(|own| {
                tokio::spawn(run_worker(WorkerConfig {
                    coordinator: addr,
                    app: Some(WorkerApp::Rust(app.clone())),
                    memory_limit: job.memory_limit,
                    call_timeout: Duration::from_secs(5),
                    job_dir: None,
                    work_dir: own.as_ref().map(|d| d.path().to_path_buf()),
                    shuffle_listen: None,
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
