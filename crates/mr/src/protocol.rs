//! Messages between workers and the coordinator (over `flotilla-wire` frames).
//!
//! Besides handing out tasks and taking reports, the coordinator is where a job's data
//! enters and leaves when the hosts share no file system: a worker reads its map task's
//! input split from it in chunks ([`ToCoordinator::ReadInput`], `--ship-inputs`) and sends
//! it a finished reduce output in chunks ([`ToCoordinator::OutputChunk`],
//! `--collect-outputs`). Map outputs kept on a worker's own disk travel between workers,
//! over [`crate::shuffle`], not through the coordinator.

use std::net::SocketAddr;
use std::path::PathBuf;

use flotilla_wire::Protocol;
use serde::{Deserialize, Serialize};

/// The MapReduce wire protocol. Bump `version` whenever a message below changes.
pub const PROTOCOL: Protocol = Protocol {
    service: "flotilla-mr",
    version: 4,
};

/// The most bytes one [`ToCoordinator::ReadInput`] or [`ToCoordinator::OutputChunk`]
/// carries (well under the frame limit).
pub const MAX_CHUNK: u32 = 4 << 20;

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
    /// "Which application does this job run?" (a worker started without `--app`).
    WhichApp { worker: WorkerId },
    /// "I am alive", sent while a task runs (every `heartbeat_millis` of the task message).
    Heartbeat { worker: WorkerId },
    /// The outputs of this attempt of the task are in place: for a map task told to keep
    /// them ([`Intermediates::OnWorkers`]), on this worker's disk, served at `served_at`.
    TaskDone {
        worker: WorkerId,
        task: TaskId,
        attempt: Attempt,
        bytes: u64,
        served_at: Option<SocketAddr>,
    },
    /// Bytes `offset..offset + len` (`len` ≤ [`MAX_CHUNK`]) of the input split of map task
    /// `task`, for this worker's attempt `attempt` ([`MapInput::Shipped`]). Answered with
    /// [`FromCoordinator::InputChunk`] (shorter only at the split's end).
    ReadInput {
        worker: WorkerId,
        task: usize,
        attempt: Attempt,
        offset: u64,
        len: u32,
    },
    /// Bytes of attempt `attempt` of reduce task `task`'s output starting at `offset`
    /// ([`OutputPlace::Coordinator`]), sent in order; the last chunk carries `end`: the
    /// output's length and CRC-32, which the coordinator checks before it keeps the output
    /// (as it would the file `mr-reduce-R.A` of a shared directory). A chunk sent again
    /// (after a lost answer) is harmless.
    OutputChunk {
        worker: WorkerId,
        task: usize,
        attempt: Attempt,
        offset: u64,
        #[serde(with = "serde_bytes")]
        data: Vec<u8>,
        end: Option<OutputEnd>,
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
            | ToCoordinator::WhichApp { worker }
            | ToCoordinator::Heartbeat { worker }
            | ToCoordinator::ReadInput { worker, .. }
            | ToCoordinator::OutputChunk { worker, .. }
            | ToCoordinator::TaskDone { worker, .. }
            | ToCoordinator::TaskFailed { worker, .. }
            | ToCoordinator::MapOutputLost { worker, .. } => *worker,
        }
    }
}

/// The end of a reduce output sent to the coordinator: its whole length and CRC-32 (IEEE).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct OutputEnd {
    pub len: u64,
    pub crc32: u32,
}

/// Where a map task reads its input split.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum MapInput {
    /// Bytes `start..start + len` of the file at `path`, which this host sees (a shared file
    /// system, or a copy at the same path).
    Path { path: PathBuf, start: u64, len: u64 },
    /// `len` bytes streamed by the coordinator ([`ToCoordinator::ReadInput`]).
    Shipped { len: u64 },
}

/// Where map tasks put their outputs, and reduce tasks find them.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Intermediates {
    /// In this directory, which every worker and the coordinator see (`mr-M-R` files).
    SharedDir(PathBuf),
    /// On the disk of the worker that ran the map task, which serves them over
    /// [`crate::shuffle`]. In a reduce: `servers[m]` serves map task `m`'s accepted output.
    OnWorkers { servers: Vec<SocketAddr> },
}

/// Where a reduce task puts its output.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum OutputPlace {
    /// As `mr-reduce-R.A` in this shared directory, which the coordinator renames to
    /// `mr-out-R` when it accepts the attempt.
    SharedDir(PathBuf),
    /// Sent to the coordinator ([`ToCoordinator::OutputChunk`]) before the report.
    Coordinator,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum FromCoordinator {
    /// Run attempt `attempt` of map task `task` over one input split. `input_name` is the
    /// input's name as given on the coordinator's command line (what `App::map` receives,
    /// for every split of it). Send a heartbeat every `heartbeat_millis` until it is done.
    Map {
        task: usize,
        attempt: Attempt,
        input_name: String,
        input: MapInput,
        n_reduce: usize,
        /// Where the outputs go (`OnWorkers`' server list is empty here: keep them and
        /// serve them).
        intermediates: Intermediates,
        heartbeat_millis: u64,
    },
    /// Run attempt `attempt` of reduce task `task` over the outputs of the map tasks: of map
    /// task `m`, those of attempt `map_attempts[m]` (the one the coordinator accepted). Send
    /// a heartbeat every `heartbeat_millis` until it is done.
    Reduce {
        task: usize,
        attempt: Attempt,
        map_attempts: Vec<Attempt>,
        intermediates: Intermediates,
        output: OutputPlace,
        heartbeat_millis: u64,
    },
    /// The job's application ([`ToCoordinator::WhichApp`]): a built-in app's name, or
    /// `None` if the coordinator was not told one (then the worker needs `--app`).
    App { name: Option<String> },
    /// Bytes of an input split ([`ToCoordinator::ReadInput`]).
    InputChunk {
        #[serde(with = "serde_bytes")]
        data: Vec<u8>,
    },
    /// A data request the coordinator cannot serve (the attempt is not this worker's, the
    /// input cannot be read, an output chunk out of order or failing its check): `why`.
    Refused { why: String },
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
