//! Messages between workers and the coordinator (over `flotilla-wire` frames).

use std::path::PathBuf;

use flotilla_wire::Protocol;
use serde::{Deserialize, Serialize};

/// The MapReduce wire protocol. Bump `version` whenever a message below changes.
pub const PROTOCOL: Protocol = Protocol {
    service: "flotilla-mr",
    version: 3,
};

/// A worker's identity: random, chosen by the worker process at start.
pub type WorkerId = u64;

/// The number of one hand-out of a task, counted from 0 for each task. A map attempt writes
/// its outputs under names of its own ([`crate::task::intermediate_path`]).
pub type Attempt = u32;

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
    /// "I am alive", sent while a task runs (every `heartbeat_millis` of the task message).
    Heartbeat { worker: WorkerId },
    /// The outputs of this attempt of the task are in place.
    TaskDone {
        worker: WorkerId,
        task: TaskId,
        attempt: Attempt,
        bytes: u64,
    },
    /// The attempt failed (bad input, application error, missing program); the coordinator
    /// decides whether to try again elsewhere, to stop using this worker, or to fail the job.
    TaskFailed {
        worker: WorkerId,
        task: TaskId,
        attempt: Attempt,
        error: String,
    },
    /// This attempt of reduce task `reduce` could not read the output of attempt
    /// `map_attempt` of map task `map` (missing, truncated, corrupt, unreadable).
    MapOutputLost {
        worker: WorkerId,
        reduce: usize,
        attempt: Attempt,
        map: usize,
        map_attempt: Attempt,
        error: String,
    },
}

impl ToCoordinator {
    /// The worker that sent the message.
    pub fn worker(&self) -> WorkerId {
        match self {
            ToCoordinator::RequestTask { worker }
            | ToCoordinator::Heartbeat { worker }
            | ToCoordinator::TaskDone { worker, .. }
            | ToCoordinator::TaskFailed { worker, .. }
            | ToCoordinator::MapOutputLost { worker, .. } => *worker,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum FromCoordinator {
    /// Run attempt `attempt` of map task `task` over one input. `input_name` is the name as
    /// given on the coordinator's command line (what `App::map` receives); `input_path` is
    /// where to read it. Send a heartbeat every `heartbeat_millis` until it is done.
    Map {
        task: usize,
        attempt: Attempt,
        input_name: String,
        input_path: PathBuf,
        n_reduce: usize,
        dir: PathBuf,
        heartbeat_millis: u64,
    },
    /// Run attempt `attempt` of reduce task `task` over the outputs of the map tasks: of map
    /// task `m`, those of attempt `map_attempts[m]` (the one the coordinator accepted). Send
    /// a heartbeat every `heartbeat_millis` until it is done.
    Reduce {
        task: usize,
        attempt: Attempt,
        map_attempts: Vec<Attempt>,
        dir: PathBuf,
        heartbeat_millis: u64,
    },
    /// Nothing to hand out now (e.g. reduces wait for the last map); ask again later.
    Wait { millis: u64 },
    /// The job is over (done, or failed): exit.
    Exit,
    /// This worker failed too many tasks and gets no more (the reason says which and how):
    /// exit with an error.
    Dismissed { reason: String },
    /// A report or heartbeat was recorded (or ignored, if it no longer mattered).
    Noted,
}
