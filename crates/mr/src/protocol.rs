//! Messages between workers and the coordinator (over `flotilla-wire` frames).

use std::path::PathBuf;

use flotilla_wire::Protocol;
use serde::{Deserialize, Serialize};

/// The MapReduce wire protocol. Bump `version` whenever a message below changes.
pub const PROTOCOL: Protocol = Protocol {
    service: "flotilla-mr",
    version: 1,
};

/// A worker's identity: random, chosen by the worker process at start.
pub type WorkerId = u64;

/// Which task, of which kind.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum TaskId {
    Map(usize),
    Reduce(usize),
}

impl std::fmt::Display for TaskId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            TaskId::Map(i) => write!(f, "map task {i}"),
            TaskId::Reduce(i) => write!(f, "reduce task {i}"),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ToCoordinator {
    /// "Give me something to do."
    RequestTask { worker: WorkerId },
    /// The task's output files are in place.
    TaskDone {
        worker: WorkerId,
        task: TaskId,
        bytes: u64,
    },
    /// The task failed (bad input, application error); the coordinator decides whether to
    /// try again elsewhere or to fail the job.
    TaskFailed {
        worker: WorkerId,
        task: TaskId,
        error: String,
    },
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum FromCoordinator {
    /// Run map task `task` over one input. `input_name` is the name as given on the
    /// coordinator's command line (what `App::map` receives); `input_path` is where to read it.
    Map {
        task: usize,
        input_name: String,
        input_path: PathBuf,
        n_reduce: usize,
        dir: PathBuf,
    },
    /// Run reduce task `task` over the outputs of `n_map` map tasks.
    Reduce {
        task: usize,
        n_map: usize,
        dir: PathBuf,
    },
    /// Nothing to hand out now (e.g. reduces wait for the last map); ask again later.
    Wait { millis: u64 },
    /// The job is over (done, or failed): exit.
    Exit,
    /// A report was recorded (or ignored, if the worker did not hold that task).
    Noted,
}
