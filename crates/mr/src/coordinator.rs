//! The coordinator's state machine: which task goes to whom, what timed out, which workers to
//! stop using, when the job is done. No I/O and no clock: the driver passes the time with
//! every message.
//!
//! # Attempts, and why accepting the first report is safe
//!
//! Every hand-out of a task is an *attempt*, numbered from 0 for each task. A map attempt
//! writes its outputs under names of its own (`mr-{map}-{r}` for attempt 0, `mr-{map}-{r}.{a}`
//! for attempt `a`: [`crate::task::intermediate_path`]), each one complete before it is
//! renamed into place, and reports only after all of them are in place. The coordinator
//! accepts the **first** complete report of a task that is not yet done, whichever attempt
//! it comes from, and remembers that attempt; every reduce is told, for each map task, which
//! attempt's files to read (`FromCoordinator::Reduce::map_attempts`). So a reduce never
//! mixes two executions of a map task: it reads exactly the outputs the coordinator accepted,
//! which no other attempt writes, and every reduce reads the same ones — this holds even for
//! a map function that is not deterministic (or whose output bytes differ between runs, as
//! `wc`'s do: its in-mapper counts are flushed in hash order). Only if an accepted output is
//! lost (below) and the map task runs again do later reduces read the new attempt's output;
//! for a non-deterministic map that is the paper's weaker guarantee (each reduce sees one
//! execution of it). A reduce attempt writes an output of its own (`mr-reduce-{r}.{a}`,
//! [`crate::task::reduce_attempt_path`]); the coordinator renames the accepted one to
//! `mr-out-{r}` ([`JobDir::publish_reduce_output`]) before it answers the report, so no late
//! or duplicate attempt ever replaces an accepted output, during the job or after it.
//!
//! Each attempt reports once: a second report of the same attempt (a call the worker
//! retried after a lost answer) changes nothing, so nothing is counted twice and an output
//! found lost is never accepted again.
//!
//! (Lease renewal was the other way out of the livelock below; it was not chosen because a
//! worker process that is alive but whose task hangs would then hold its task forever.)
//!
//! # Rules
//!
//! Scheduling (6.5840 Lab 1, with the paper's re-execution rules):
//! - every map task finishes before any reduce task is handed out;
//! - a task is handed to one worker at a time; once its latest attempt is older than
//!   `task_timeout` it may be handed out again (its worker may be dead) — but only to a
//!   worker that finds no idle task, and earlier attempts stay valid: whichever attempt
//!   reports first is accepted, later reports of the task are ignored. So a task longer than
//!   the timeout finishes. (It used to be that only the latest holder's report counted: with
//!   two workers, each report came from a worker that no longer held the task, and the two
//!   took a long task from each other forever.)
//! - without failures or timeouts each task runs exactly once — unless the job asks for
//!   **backup tasks** (`JobSpec::backup_tasks`, the paper's §3.6): then, near the end of a
//!   phase (no task of it idle any more), a worker that finds nothing to do gets a *backup*
//!   attempt of a running task: the one running longest of those that another worker runs
//!   alone. Whichever attempt reports first is accepted, as always, so one slow machine
//!   cannot hold the phase up. Each task gets at most one backup while its first attempt
//!   runs (a timeout still re-issues it as before), and a worker never backs up its own
//!   attempt. Off by default: the lab's job-count test counts every attempt.
//!
//! Failures (per task and per worker, as Hadoop blacklists a node):
//! - a failed attempt counts against its task and against its worker;
//! - a worker asking for a task is given one it has not failed, if any is left; it retries a
//!   task it has failed only when nothing else is;
//! - a task that has failed on `max_failures` distinct workers fails the job, with the last
//!   error;
//! - a worker with `max_failures` failed attempts is **dismissed**: it gets no more tasks and
//!   is told why (`FromCoordinator::Dismissed`); what it completed stays valid. If no other
//!   worker is live at that moment (heard from — a request, a report or a heartbeat — within
//!   `task_timeout`, and not dismissed) the job fails, naming the task and the last error,
//!   rather than waiting for a worker that may never come;
//! - a reduce that cannot read a map task's accepted output (missing, truncated, corrupt)
//!   reports it, and the coordinator reads that output itself ([`JobDir::check_map_output`])
//!   to decide whose fault it is. If the output is intact, the reader failed: the report
//!   counts against the reduce and the reader, like any failed attempt (so a worker that
//!   cannot see the shared directory is dismissed, and the map outputs it could not read
//!   are not re-run, nor is anyone else blamed). If it is lost, the map task is run again
//!   (the paper's rule), and the reduce too once the maps are done, and the loss counts
//!   against the map task and the worker that *wrote* it, not the reader (so healthy readers
//!   of a bad writer's outputs are never dismissed). A report about an output that is no
//!   longer the accepted one only frees the reduce;
//! - an accepted reduce attempt whose output cannot be put in place (the worker wrote it
//!   where the coordinator cannot see it) failed, and counts as such;
//! - a timeout counts against nobody.
//!
//! Every failure (a failed attempt, a lost output, an output that cannot be put in place)
//! counts against one worker, once per attempt, and the reports that count against no one
//! (outputs no longer accepted) each end an attempt handed out before a counted failure: a
//! fixed set of workers can fail only `max_failures` times each before the job ends or they
//! are all dismissed, so the job always ends.
//! It is done when every reduce output is in place.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use crate::protocol::{
    Attempt, FromCoordinator, Intermediates, MapInput, OutputEnd, OutputPlace, TaskId,
    ToCoordinator, WorkerId, MAX_CHUNK,
};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum TaskState {
    Idle,
    /// Handed out; `attempt` (the latest) at `since`.
    Running {
        attempt: Attempt,
        since: Duration,
    },
    /// Done: `attempt`'s outputs are the task's.
    Done {
        attempt: Attempt,
    },
}

/// One hand-out of a task.
#[derive(Clone, Debug)]
struct AttemptRecord {
    worker: WorkerId,
    /// It reported (done, failed, or an output it could not read): any later report of it is
    /// a duplicate (a retried call) and changes nothing.
    reported: bool,
}

#[derive(Clone, Debug)]
struct Task {
    state: TaskState,
    /// Every attempt handed out, by attempt number.
    attempts: Vec<AttemptRecord>,
    /// The distinct workers on which an attempt failed (or whose accepted output was lost).
    failed_on: Vec<WorkerId>,
    /// Input bytes of the accepted map attempt.
    bytes: u64,
    /// Where the accepted map attempt's outputs are served, if they stay on its worker.
    served_at: Option<SocketAddr>,
}

impl Task {
    fn new() -> Self {
        Task {
            state: TaskState::Idle,
            attempts: Vec::new(),
            failed_on: Vec::new(),
            bytes: 0,
            served_at: None,
        }
    }

    /// Takes the first report of attempt `attempt` by `worker`: false if that attempt was
    /// not handed to `worker` or has reported already.
    fn take_report(&mut self, worker: WorkerId, attempt: Attempt) -> bool {
        match self.attempts.get_mut(attempt as usize) {
            Some(a) if a.worker == worker && !a.reported => {
                a.reported = true;
                true
            }
            _ => false,
        }
    }

    fn is_done(&self) -> bool {
        matches!(self.state, TaskState::Done { .. })
    }

    /// Whether `worker` holds attempt `attempt` and has not reported it: it may read the
    /// attempt's input or send its output.
    fn is_running_on(&self, worker: WorkerId, attempt: Attempt) -> bool {
        !self.is_done()
            && self
                .attempts
                .get(attempt as usize)
                .is_some_and(|a| a.worker == worker && !a.reported)
    }

    /// Attempt `attempt` ended without a result: if it is the latest, the task is idle again
    /// (an earlier attempt may still finish and would be accepted).
    fn stop(&mut self, attempt: Attempt) {
        if matches!(self.state, TaskState::Running { attempt: latest, .. } if latest == attempt) {
            self.state = TaskState::Idle;
        }
    }
}

#[derive(Clone, Debug)]
struct Worker {
    last_seen: Duration,
    failures: u32,
    /// Why it was dismissed.
    dismissed: Option<String>,
}

/// One map task's input: a whole input file, or a split of it (bytes `start..start +
/// bytes`, whole lines: [`crate::server::split_inputs`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Input {
    /// The input's name as given on the command line: what `App::map` receives (the same for
    /// every split of a file).
    pub name: String,
    /// Where workers read it (absolute, so workers in other directories find it).
    pub path: PathBuf,
    pub start: u64,
    pub bytes: u64,
}

#[derive(Clone, Debug)]
pub struct JobSpec {
    pub inputs: Vec<Input>,
    pub n_reduce: usize,
    /// Where intermediate files and outputs go (absolute).
    pub dir: PathBuf,
    pub task_timeout: Duration,
    /// Distinct workers a task may fail on, and failed attempts a worker may have, before
    /// the job fails or the worker is dismissed.
    pub max_failures: u32,
    /// Hand out backup attempts of running tasks near the end of each phase (see the module
    /// docs).
    pub backup_tasks: bool,
    /// Map outputs stay on the disk of the worker that wrote them, which serves them to the
    /// reduces ([`crate::shuffle`]), instead of going to `dir`. A map task whose worker is
    /// gone (not heard from within `task_timeout`, or dismissed) before every reduce is done
    /// is then run again (the paper's §3.3).
    pub intermediates_on_workers: bool,
    /// Workers read their input splits from the coordinator ([`MapInput::Shipped`]).
    pub ship_inputs: bool,
    /// Reduce workers send their outputs to the coordinator ([`OutputPlace::Coordinator`]).
    pub collect_outputs: bool,
    /// The built-in application workers started without `--app` run.
    pub app: Option<String>,
}

/// Where the job stands, for progress displays.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Progress {
    pub maps_done: usize,
    pub maps: usize,
    pub reduces_done: usize,
    pub reduces: usize,
    /// Input bytes of finished map tasks.
    pub bytes_mapped: u64,
    pub bytes_total: u64,
    /// Workers heard from within the task timeout and not dismissed.
    pub workers_alive: usize,
    pub workers_dismissed: usize,
    /// Tasks handed out again after a timeout.
    pub reissued: u64,
    /// Backup attempts handed out near the end of a phase.
    pub backups: u64,
    /// Map tasks run again because a reduce could not read their output, or because the
    /// worker holding it is gone.
    pub maps_rerun: u64,
}

/// How the job ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    Done,
    Failed(String),
}

pub struct Coordinator {
    spec: JobSpec,
    maps: Vec<Task>,
    reduces: Vec<Task>,
    workers: HashMap<WorkerId, Worker>,
    bytes_mapped: u64,
    reissued: u64,
    backups: u64,
    maps_rerun: u64,
    outcome: Option<Outcome>,
}

/// The file work the coordinator's decisions need on the job's directory, done by its
/// driver: the coordinator process sees that directory (it creates it). Kept behind a
/// trait so that the state machine itself does no I/O and tests can play any disk.
pub trait JobDir {
    /// Whether segment `reduce` of attempt `attempt` of map task `map`'s output can be read
    /// whole and intact — in the shared directory, or from the worker serving it at
    /// `served_at`; if not, why.
    fn check_map_output(
        &mut self,
        map: usize,
        attempt: Attempt,
        reduce: usize,
        served_at: Option<SocketAddr>,
    ) -> Result<(), String>;
    /// Bytes `offset..offset + len` of `input` (fewer at its end), for a worker that has no
    /// access to it.
    fn read_input(&mut self, input: &Input, offset: u64, len: u32) -> Result<Vec<u8>, String>;
    /// Stores a chunk of attempt `attempt` of reduce task `reduce`'s output sent by its
    /// worker; with `end`, checks the whole and makes it the attempt's output (as
    /// [`crate::task::reduce_attempt_path`], ready for
    /// [`JobDir::publish_reduce_output`]).
    fn receive_output(
        &mut self,
        reduce: usize,
        attempt: Attempt,
        offset: u64,
        data: &[u8],
        end: Option<OutputEnd>,
    ) -> Result<(), String>;
    /// Makes attempt `attempt` of reduce task `reduce`'s output the task's output (renames
    /// [`crate::task::reduce_attempt_path`] to [`crate::task::output_path`]); if it cannot,
    /// why.
    fn publish_reduce_output(&mut self, reduce: usize, attempt: Attempt) -> Result<(), String>;
}

/// A `MapOutputLost` report.
struct LostOutput {
    reduce: usize,
    attempt: Attempt,
    map: usize,
    map_attempt: Attempt,
    error: String,
}

/// The reply to a worker whose failure was just counted: dismissed, if that dismissed it.
fn reply_to_failure(dismissed: Option<String>) -> FromCoordinator {
    match dismissed {
        Some(reason) => FromCoordinator::Dismissed { reason },
        None => FromCoordinator::Noted,
    }
}

/// How long an idle worker waits before asking again.
const WAIT: Duration = Duration::from_millis(10);

/// Shortest heartbeat period asked of workers.
const MIN_HEARTBEAT: Duration = Duration::from_millis(10);

impl Coordinator {
    pub fn new(spec: JobSpec) -> Self {
        assert!(spec.n_reduce > 0, "at least one reduce task");
        assert!(spec.max_failures > 0);
        Coordinator {
            maps: vec![Task::new(); spec.inputs.len()],
            reduces: vec![Task::new(); spec.n_reduce],
            workers: HashMap::new(),
            bytes_mapped: 0,
            reissued: 0,
            backups: 0,
            maps_rerun: 0,
            // A job with no input has nothing to map; it still reduces (to empty outputs).
            outcome: None,
            spec,
        }
    }

    pub fn outcome(&self) -> Option<&Outcome> {
        self.outcome.as_ref()
    }

    /// Handles one message of a worker at time `now` (since the job started); `dir` does the
    /// file work some decisions need (see [`JobDir`]).
    pub fn handle(
        &mut self,
        message: ToCoordinator,
        now: Duration,
        dir: &mut dyn JobDir,
    ) -> FromCoordinator {
        let worker = message.worker();
        self.workers
            .entry(worker)
            .or_insert(Worker {
                last_seen: now,
                failures: 0,
                dismissed: None,
            })
            .last_seen = now;
        match message {
            ToCoordinator::RequestTask { .. } => {
                if self.outcome.is_some() {
                    return FromCoordinator::Exit;
                }
                if let Some(reason) = &self.workers[&worker].dismissed {
                    return FromCoordinator::Dismissed {
                        reason: reason.clone(),
                    };
                }
                self.rerun_maps_of_gone_workers(now);
                self.assign(worker, now)
            }
            ToCoordinator::WhichApp { .. } => FromCoordinator::App {
                name: self.spec.app.clone(),
            },
            ToCoordinator::Heartbeat { .. } => FromCoordinator::Noted,
            ToCoordinator::TaskDone {
                task,
                attempt,
                bytes,
                served_at,
                ..
            } => self.done(worker, task, attempt, bytes, served_at, now, dir),
            ToCoordinator::ReadInput {
                task,
                attempt,
                offset,
                len,
                ..
            } => self.read_input(worker, task, attempt, offset, len, dir),
            ToCoordinator::OutputChunk {
                task,
                attempt,
                offset,
                data,
                end,
                ..
            } => self.receive_output(worker, task, attempt, offset, &data, end, dir),
            ToCoordinator::TaskFailed {
                task,
                attempt,
                error,
                ..
            } => self.failed(worker, task, attempt, error, now),
            ToCoordinator::MapOutputLost {
                reduce,
                attempt,
                map,
                map_attempt,
                error,
                ..
            } => {
                let lost = LostOutput {
                    reduce,
                    attempt,
                    map,
                    map_attempt,
                    error,
                };
                self.output_lost(worker, lost, now, dir)
            }
        }
    }

    fn task(&self, task: TaskId) -> Option<&Task> {
        match task {
            TaskId::Map(i) => self.maps.get(i),
            TaskId::Reduce(i) => self.reduces.get(i),
        }
    }

    fn task_mut(&mut self, task: TaskId) -> Option<&mut Task> {
        match task {
            TaskId::Map(i) => self.maps.get_mut(i),
            TaskId::Reduce(i) => self.reduces.get_mut(i),
        }
    }

    /// Takes the first report of `worker`'s attempt `attempt` of `task`: false for a report
    /// of an attempt never handed to it, of a task that does not exist, or a duplicate.
    fn take_report(&mut self, worker: WorkerId, task: TaskId, attempt: Attempt) -> bool {
        self.task_mut(task)
            .is_some_and(|t| t.take_report(worker, attempt))
    }

    /// Accepts the first complete report of a task not yet done, from any of its attempts.
    /// A reduce's output is put in place first; if that fails, the attempt failed. A map
    /// attempt told to keep its outputs must say where it serves them.
    #[allow(clippy::too_many_arguments)]
    fn done(
        &mut self,
        worker: WorkerId,
        task: TaskId,
        attempt: Attempt,
        bytes: u64,
        served_at: Option<SocketAddr>,
        now: Duration,
        dir: &mut dyn JobDir,
    ) -> FromCoordinator {
        if !self.take_report(worker, task, attempt) || self.task(task).is_some_and(Task::is_done) {
            // A duplicate, a report of an attempt never handed out, or a late attempt (the
            // worker removes a late reduce attempt's file itself).
            return FromCoordinator::Noted;
        }
        if let TaskId::Reduce(reduce) = task {
            if let Err(why) = dir.publish_reduce_output(reduce, attempt) {
                let error = format!("its output could not be put in place: {why}");
                return self.attempt_failed(worker, task, attempt, &error, now);
            }
        }
        if matches!(task, TaskId::Map(_))
            && self.spec.intermediates_on_workers
            && served_at.is_none()
        {
            let error = "it reported done without saying where its outputs are served";
            return self.attempt_failed(worker, task, attempt, error, now);
        }
        let on_workers = self.spec.intermediates_on_workers;
        let t = self.task_mut(task).expect("take_report found it");
        t.state = TaskState::Done { attempt };
        if let TaskId::Map(_) = task {
            t.bytes = bytes;
            t.served_at = if on_workers { served_at } else { None };
            self.bytes_mapped += bytes;
        }
        if self.outcome.is_none()
            && self.maps.iter().all(Task::is_done)
            && self.reduces.iter().all(Task::is_done)
        {
            self.outcome = Some(Outcome::Done);
        }
        FromCoordinator::Noted
    }

    /// A chunk of a shipped input, for the worker running that attempt of the map task.
    fn read_input(
        &mut self,
        worker: WorkerId,
        task: usize,
        attempt: Attempt,
        offset: u64,
        len: u32,
        dir: &mut dyn JobDir,
    ) -> FromCoordinator {
        let refuse = |why: String| FromCoordinator::Refused { why };
        if !self.spec.ship_inputs {
            return refuse("this job does not ship inputs: read the input's path".into());
        }
        if !self
            .maps
            .get(task)
            .is_some_and(|t| t.is_running_on(worker, attempt))
        {
            return refuse(format!(
                "attempt {attempt} of map task {task} is not running on this worker"
            ));
        }
        let input = &self.spec.inputs[task];
        if offset > input.bytes {
            return refuse(format!(
                "offset {offset} is past the end of the {}-byte split",
                input.bytes
            ));
        }
        let len = (len.min(MAX_CHUNK) as u64).min(input.bytes - offset) as u32;
        match dir.read_input(input, offset, len) {
            Ok(data) => FromCoordinator::InputChunk { data },
            Err(why) => refuse(format!("input {:?}: {why}", input.name)),
        }
    }

    /// A chunk of a reduce output sent to the coordinator by the worker running that attempt.
    #[allow(clippy::too_many_arguments)]
    fn receive_output(
        &mut self,
        worker: WorkerId,
        task: usize,
        attempt: Attempt,
        offset: u64,
        data: &[u8],
        end: Option<OutputEnd>,
        dir: &mut dyn JobDir,
    ) -> FromCoordinator {
        let refuse = |why: String| FromCoordinator::Refused { why };
        if !self.spec.collect_outputs {
            return refuse("this job does not collect outputs".into());
        }
        if data.len() > MAX_CHUNK as usize {
            return refuse(format!("a chunk of {} bytes is over the limit", data.len()));
        }
        if !self
            .reduces
            .get(task)
            .is_some_and(|t| t.is_running_on(worker, attempt))
        {
            return refuse(format!(
                "attempt {attempt} of reduce task {task} is not running on this worker"
            ));
        }
        match dir.receive_output(task, attempt, offset, data, end) {
            Ok(()) => FromCoordinator::Noted,
            Err(why) => refuse(why),
        }
    }

    fn failed(
        &mut self,
        worker: WorkerId,
        task: TaskId,
        attempt: Attempt,
        error: String,
        now: Duration,
    ) -> FromCoordinator {
        if !self.take_report(worker, task, attempt) || self.task(task).is_some_and(Task::is_done) {
            return FromCoordinator::Noted;
        }
        self.attempt_failed(worker, task, attempt, &error, now)
    }

    /// Attempt `attempt` of `task` (not done), made by `worker`, failed with `error`: the task
    /// is idle again if that was its latest attempt, and the failure counts against the task
    /// and the worker.
    fn attempt_failed(
        &mut self,
        worker: WorkerId,
        task: TaskId,
        attempt: Attempt,
        error: &str,
        now: Duration,
    ) -> FromCoordinator {
        if let Some(t) = self.task_mut(task) {
            t.stop(attempt);
        }
        self.fail_task_on(task, worker, error);
        let what = format!("{task}: {error}");
        reply_to_failure(self.count_failure(worker, &what, now))
    }

    /// A reduce attempt could not read a map task's accepted output: the coordinator reads it
    /// itself ([`JobDir::check_map_output`]) to decide whose fault it is.
    fn output_lost(
        &mut self,
        reader: WorkerId,
        lost: LostOutput,
        now: Duration,
        dir: &mut dyn JobDir,
    ) -> FromCoordinator {
        let reduce_task = TaskId::Reduce(lost.reduce);
        if !self.take_report(reader, reduce_task, lost.attempt)
            || self.task(reduce_task).is_some_and(Task::is_done)
        {
            return FromCoordinator::Noted;
        }
        let accepted = TaskState::Done {
            attempt: lost.map_attempt,
        };
        if self.maps.get(lost.map).map(|m| m.state) != Some(accepted) {
            // Not the accepted output (any more): the map task is being run again, and
            // this reduce attempt simply ends; the reduce goes out again once maps are done.
            self.reduces[lost.reduce].stop(lost.attempt);
            return FromCoordinator::Noted;
        }
        let LostOutput {
            reduce,
            attempt,
            map,
            map_attempt,
            error,
        } = lost;
        let served_at = self.maps[map].served_at;
        match dir.check_map_output(map, map_attempt, reduce, served_at) {
            Ok(()) => {
                // The coordinator reads what the reader could not: the reader cannot see the
                // job's directory (an unmounted share, say), or its disk failed it.
                let error = format!(
                    "could not read the output of map task {map}, which the coordinator reads \
                     intact: {error}"
                );
                self.attempt_failed(reader, reduce_task, attempt, &error, now)
            }
            Err(why) => {
                // The output is lost: run the map task again, and count it against the
                // worker that wrote it, not against the reader that found it missing.
                self.reduces[reduce].stop(attempt);
                let writer = self.maps[map].attempts[map_attempt as usize].worker;
                self.rerun_map(map);
                let what = format!(
                    "map task {map}: its output for {reduce_task} is lost ({why}; the reader \
                     said: {error})"
                );
                self.fail_task_on(TaskId::Map(map), writer, &what);
                let dismissed = self.count_failure(writer, &what, now);
                if writer == reader {
                    reply_to_failure(dismissed)
                } else {
                    FromCoordinator::Noted
                }
            }
        }
    }

    /// Map task `map`, done, runs again: its accepted output is lost.
    fn rerun_map(&mut self, map: usize) {
        let m = &mut self.maps[map];
        debug_assert!(m.is_done());
        m.state = TaskState::Idle;
        m.served_at = None;
        self.bytes_mapped -= m.bytes;
        self.maps_rerun += 1;
    }

    /// With map outputs kept on the workers, a done map task whose worker is gone (not heard
    /// from within the task timeout, or dismissed) runs again while any reduce still needs
    /// it: the paper's rule that the completed map tasks of a failed worker are re-executed.
    /// Counted against nobody, like a timeout.
    fn rerun_maps_of_gone_workers(&mut self, now: Duration) {
        // (Once every reduce is done the job is, and no one asks for a task any more.)
        if !self.spec.intermediates_on_workers {
            return;
        }
        let timeout = self.spec.task_timeout;
        let gone = |w: Option<&Worker>| {
            w.is_none_or(|w| w.dismissed.is_some() || now.saturating_sub(w.last_seen) >= timeout)
        };
        for map in 0..self.maps.len() {
            if let TaskState::Done { attempt } = self.maps[map].state {
                let writer = self.maps[map].attempts[attempt as usize].worker;
                if gone(self.workers.get(&writer)) {
                    tracing::info!(
                        map,
                        worker = format_args!("{writer:016x}"),
                        "the worker holding this map task's output is gone: running it again"
                    );
                    self.rerun_map(map);
                }
            }
        }
    }

    /// Records that `task` failed on `worker`; fails the job once it has failed on
    /// `max_failures` distinct workers.
    fn fail_task_on(&mut self, task: TaskId, worker: WorkerId, error: &str) {
        let max = self.spec.max_failures as usize;
        let Some(t) = self.task_mut(task) else {
            return;
        };
        if !t.failed_on.contains(&worker) {
            t.failed_on.push(worker);
        }
        let distinct = t.failed_on.len();
        if distinct >= max && self.outcome.is_none() {
            self.outcome = Some(Outcome::Failed(format!(
                "{task} failed on {distinct} different workers; last error: {error}"
            )));
        }
    }

    /// Counts a failure against `worker` (`what`: the task and the error). At `max_failures`
    /// it dismisses the worker, returning why, and fails the job if no other worker is live
    /// then.
    fn count_failure(&mut self, worker: WorkerId, what: &str, now: Duration) -> Option<String> {
        let max = self.spec.max_failures;
        let w = self.workers.get_mut(&worker)?;
        w.failures += 1;
        if w.failures < max || w.dismissed.is_some() {
            return None;
        }
        let reason = format!("after {} failed tasks; the last: {what}", w.failures);
        w.dismissed = Some(reason.clone());
        if self.live_workers(now) == 0 && self.outcome.is_none() {
            self.outcome = Some(Outcome::Failed(format!(
                "no live worker is left: worker {worker:016x} was dismissed {reason}"
            )));
        }
        Some(reason)
    }

    /// Workers heard from within the task timeout and not dismissed.
    fn live_workers(&self, now: Duration) -> usize {
        self.workers
            .values()
            .filter(|w| w.dismissed.is_none())
            .filter(|w| now.saturating_sub(w.last_seen) < self.spec.task_timeout)
            .count()
    }

    /// Hands `worker` a task of the current phase: an idle one it has not failed, else one
    /// whose latest attempt timed out (that it has not failed), else an idle one it has
    /// failed.
    fn assign(&mut self, worker: WorkerId, now: Duration) -> FromCoordinator {
        let timeout = self.spec.task_timeout;
        let maps_done = self.maps.iter().all(Task::is_done);
        let tasks = if maps_done {
            &mut self.reduces
        } else {
            &mut self.maps
        };
        let failed_here = |t: &Task| t.failed_on.contains(&worker);
        let timed_out = |t: &Task| match t.state {
            TaskState::Running { since, .. } => now.saturating_sub(since) >= timeout,
            _ => false,
        };
        let idle = |t: &Task| t.state == TaskState::Idle;
        let pick = tasks
            .iter()
            .position(|t| idle(t) && !failed_here(t))
            .or_else(|| tasks.iter().position(|t| timed_out(t) && !failed_here(t)))
            .or_else(|| tasks.iter().position(idle));
        let backup = match pick {
            None if self.spec.backup_tasks && !tasks.iter().any(idle) => {
                // The phase is near its end: back up the longest-running task that another
                // worker runs alone.
                let running_alone_elsewhere = |t: &Task| {
                    let mut running = t.attempts.iter().filter(|a| !a.reported);
                    matches!(t.state, TaskState::Running { .. })
                        && running.next().is_some_and(|a| a.worker != worker)
                        && running.next().is_none()
                        && !failed_here(t)
                };
                tasks
                    .iter()
                    .enumerate()
                    .filter(|(_, t)| running_alone_elsewhere(t))
                    .min_by_key(|(_, t)| match t.state {
                        TaskState::Running { since, .. } => since,
                        _ => unreachable!("only running tasks are backed up"),
                    })
                    .map(|(index, _)| index)
            }
            _ => None,
        };
        let Some(index) = pick.or(backup) else {
            return FromCoordinator::Wait {
                millis: WAIT.as_millis() as u64,
            };
        };
        let task = &mut tasks[index];
        if backup.is_some() {
            self.backups += 1;
        } else if matches!(task.state, TaskState::Running { .. }) {
            self.reissued += 1;
        }
        let attempt = Attempt::try_from(task.attempts.len()).expect("fewer than 2^32 attempts");
        task.attempts.push(AttemptRecord {
            worker,
            reported: false,
        });
        task.state = TaskState::Running {
            attempt,
            since: now,
        };
        let dir = self.spec.dir.clone();
        let heartbeat_millis = (timeout / 4).max(MIN_HEARTBEAT).as_millis() as u64;
        if maps_done {
            let map_attempts = self
                .maps
                .iter()
                .map(|m| match m.state {
                    TaskState::Done { attempt } => attempt,
                    _ => unreachable!("every map task is done"),
                })
                .collect();
            let intermediates = if self.spec.intermediates_on_workers {
                let servers = self.maps.iter().map(|m| m.served_at);
                Intermediates::OnWorkers {
                    servers: servers
                        .collect::<Option<_>>()
                        .expect("a map output kept on its worker is accepted with its address"),
                }
            } else {
                Intermediates::SharedDir(dir.clone())
            };
            FromCoordinator::Reduce {
                task: index,
                attempt,
                map_attempts,
                intermediates,
                output: if self.spec.collect_outputs {
                    OutputPlace::Coordinator
                } else {
                    OutputPlace::SharedDir(dir)
                },
                heartbeat_millis,
            }
        } else {
            let input = &self.spec.inputs[index];
            FromCoordinator::Map {
                task: index,
                attempt,
                input_name: input.name.clone(),
                input: if self.spec.ship_inputs {
                    MapInput::Shipped { len: input.bytes }
                } else {
                    MapInput::Path {
                        path: input.path.clone(),
                        start: input.start,
                        len: input.bytes,
                    }
                },
                n_reduce: self.spec.n_reduce,
                intermediates: if self.spec.intermediates_on_workers {
                    Intermediates::OnWorkers {
                        servers: Vec::new(),
                    }
                } else {
                    Intermediates::SharedDir(dir)
                },
                heartbeat_millis,
            }
        }
    }

    /// Where attempt `attempt` of map task `map`'s output is served, if it is the accepted
    /// one and stays on its worker.
    pub fn map_output_server(&self, map: usize, attempt: Attempt) -> Option<SocketAddr> {
        let m = self.maps.get(map)?;
        (m.state == TaskState::Done { attempt })
            .then_some(m.served_at)
            .flatten()
    }

    /// How many attempts of `task` were handed out (map attempt `a` < this may have written
    /// intermediate files).
    pub fn attempts(&self, task: TaskId) -> Attempt {
        self.task(task).map_or(0, |t| t.attempts.len() as Attempt)
    }

    pub fn progress(&self, now: Duration) -> Progress {
        let done = |tasks: &[Task]| tasks.iter().filter(|t| t.is_done()).count();
        Progress {
            maps_done: done(&self.maps),
            maps: self.maps.len(),
            reduces_done: done(&self.reduces),
            reduces: self.reduces.len(),
            bytes_mapped: self.bytes_mapped,
            bytes_total: self.spec.inputs.iter().map(|i| i.bytes).sum(),
            workers_alive: self.live_workers(now),
            workers_dismissed: self
                .workers
                .values()
                .filter(|w| w.dismissed.is_some())
                .count(),
            reissued: self.reissued,
            backups: self.backups,
            maps_rerun: self.maps_rerun,
        }
    }

    pub fn spec(&self) -> &JobSpec {
        &self.spec
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    /// A job directory in memory: which map outputs the coordinator finds lost, which reduce
    /// outputs it cannot put in place, and what it put in place.
    #[derive(Default)]
    struct FakeDir {
        lost: HashSet<(usize, Attempt)>,
        unpublishable: HashSet<(usize, Attempt)>,
        checked: Vec<(usize, Attempt, usize)>,
        published: Vec<(usize, Attempt)>,
        read: Vec<(String, u64, u32)>,
        received: Vec<(usize, Attempt, u64, usize, bool)>,
    }

    impl JobDir for FakeDir {
        fn check_map_output(
            &mut self,
            map: usize,
            attempt: Attempt,
            reduce: usize,
            _served_at: Option<SocketAddr>,
        ) -> Result<(), String> {
            self.checked.push((map, attempt, reduce));
            if self.lost.contains(&(map, attempt)) {
                Err("gone".into())
            } else {
                Ok(())
            }
        }

        fn publish_reduce_output(&mut self, reduce: usize, attempt: Attempt) -> Result<(), String> {
            if self.unpublishable.contains(&(reduce, attempt)) {
                return Err("no such file".into());
            }
            self.published.push((reduce, attempt));
            Ok(())
        }

        fn read_input(&mut self, input: &Input, offset: u64, len: u32) -> Result<Vec<u8>, String> {
            self.read.push((input.name.clone(), offset, len));
            Ok(vec![b'x'; len as usize])
        }

        fn receive_output(
            &mut self,
            reduce: usize,
            attempt: Attempt,
            offset: u64,
            data: &[u8],
            end: Option<OutputEnd>,
        ) -> Result<(), String> {
            self.received
                .push((reduce, attempt, offset, data.len(), end.is_some()));
            Ok(())
        }
    }

    /// A coordinator and its directory.
    struct Job {
        c: Coordinator,
        dir: FakeDir,
    }

    impl Job {
        fn new(spec: JobSpec) -> Self {
            Job {
                c: Coordinator::new(spec),
                dir: FakeDir::default(),
            }
        }

        fn handle(&mut self, message: ToCoordinator, now: Duration) -> FromCoordinator {
            self.c.handle(message, now, &mut self.dir)
        }
    }

    impl std::ops::Deref for Job {
        type Target = Coordinator;
        fn deref(&self) -> &Coordinator {
            &self.c
        }
    }

    fn spec(maps: usize, reduces: usize) -> JobSpec {
        JobSpec {
            inputs: (0..maps)
                .map(|i| Input {
                    name: format!("in{i}"),
                    path: PathBuf::from(format!("/in{i}")),
                    start: 0,
                    bytes: 10,
                })
                .collect(),
            n_reduce: reduces,
            dir: PathBuf::from("/out"),
            task_timeout: Duration::from_secs(10),
            max_failures: 3,
            backup_tasks: false,
            intermediates_on_workers: false,
            ship_inputs: false,
            collect_outputs: false,
            app: None,
        }
    }

    fn secs(at: f64) -> Duration {
        Duration::from_secs_f64(at)
    }

    fn request(c: &mut Job, worker: WorkerId, at: f64) -> FromCoordinator {
        c.handle(ToCoordinator::RequestTask { worker }, secs(at))
    }

    /// The task and attempt of a reply that hands one out.
    fn handed(reply: &FromCoordinator) -> Option<(TaskId, Attempt)> {
        match *reply {
            FromCoordinator::Map { task, attempt, .. } => Some((TaskId::Map(task), attempt)),
            FromCoordinator::Reduce { task, attempt, .. } => Some((TaskId::Reduce(task), attempt)),
            _ => None,
        }
    }

    /// Asks for a task, which must be `task`; returns its attempt.
    fn take(c: &mut Job, worker: WorkerId, task: TaskId, at: f64) -> Attempt {
        let reply = request(c, worker, at);
        match handed(&reply) {
            Some((t, attempt)) if t == task => attempt,
            _ => panic!("worker {worker} at {at}s wanted {task}, got {reply:?}"),
        }
    }

    fn done(c: &mut Job, worker: WorkerId, task: TaskId, attempt: Attempt, at: f64) {
        let reply = c.handle(
            ToCoordinator::TaskDone {
                worker,
                task,
                attempt,
                bytes: 10,
                served_at: None,
            },
            secs(at),
        );
        assert_eq!(reply, FromCoordinator::Noted);
    }

    fn fail(
        c: &mut Job,
        worker: WorkerId,
        task: TaskId,
        attempt: Attempt,
        at: f64,
    ) -> FromCoordinator {
        c.handle(
            ToCoordinator::TaskFailed {
                worker,
                task,
                attempt,
                error: format!("boom from {worker}"),
            },
            secs(at),
        )
    }

    fn is_wait(reply: &FromCoordinator) -> bool {
        matches!(reply, FromCoordinator::Wait { .. })
    }

    #[test]
    fn maps_then_reduces_then_exit() {
        let mut c = Job::new(spec(2, 1));
        assert_eq!(take(&mut c, 1, TaskId::Map(0), 0.0), 0);
        assert_eq!(take(&mut c, 2, TaskId::Map(1), 0.0), 0);
        assert!(is_wait(&request(&mut c, 3, 0.0)), "reduces wait for maps");
        done(&mut c, 1, TaskId::Map(0), 0, 1.0);
        assert!(is_wait(&request(&mut c, 1, 1.0)));
        done(&mut c, 2, TaskId::Map(1), 0, 1.0);
        assert!(matches!(
            request(&mut c, 1, 1.0),
            FromCoordinator::Reduce { task: 0, attempt: 0, ref map_attempts, .. }
                if map_attempts == &[0, 0]
        ));
        assert_eq!(c.outcome(), None);
        done(&mut c, 1, TaskId::Reduce(0), 0, 2.0);
        assert_eq!(c.outcome(), Some(&Outcome::Done));
        assert_eq!(request(&mut c, 2, 2.0), FromCoordinator::Exit);
    }

    #[test]
    fn a_task_longer_than_the_timeout_is_done_by_its_first_finisher() {
        let mut c = Job::new(JobSpec {
            task_timeout: secs(1.0),
            ..spec(1, 1)
        });
        assert_eq!(take(&mut c, 1, TaskId::Map(0), 0.0), 0);
        assert!(is_wait(&request(&mut c, 2, 0.9)), "not before the timeout");
        assert_eq!(take(&mut c, 2, TaskId::Map(0), 1.0), 1, "re-issued");
        // The first holder finishes first: its report is accepted although the task moved on.
        done(&mut c, 1, TaskId::Map(0), 0, 2.5);
        assert_eq!(c.progress(secs(2.5)).maps_done, 1);
        // Reduces read the accepted attempt's outputs, and the late report changes nothing.
        done(&mut c, 2, TaskId::Map(0), 1, 3.5);
        match request(&mut c, 1, 3.5) {
            FromCoordinator::Reduce { map_attempts, .. } => assert_eq!(map_attempts, [0]),
            other => panic!("{other:?}"),
        }
        let p = c.progress(secs(3.5));
        assert_eq!((p.maps_done, p.bytes_mapped, p.reissued), (1, 10, 1));
    }

    #[test]
    fn the_later_attempt_is_accepted_when_it_finishes_first() {
        let mut c = Job::new(spec(1, 1));
        take(&mut c, 1, TaskId::Map(0), 0.0);
        take(&mut c, 2, TaskId::Map(0), 10.0);
        done(&mut c, 2, TaskId::Map(0), 1, 11.0);
        done(&mut c, 1, TaskId::Map(0), 0, 12.0);
        match request(&mut c, 3, 12.0) {
            FromCoordinator::Reduce { map_attempts, .. } => assert_eq!(map_attempts, [1]),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn reports_of_attempts_never_handed_out_are_ignored() {
        let mut c = Job::new(spec(1, 1));
        take(&mut c, 1, TaskId::Map(0), 0.0);
        done(&mut c, 2, TaskId::Map(0), 0, 1.0); // not worker 2's attempt
        done(&mut c, 1, TaskId::Map(0), 1, 1.0); // no attempt 1
        done(&mut c, 1, TaskId::Map(7), 0, 1.0); // no such task
        done(&mut c, 1, TaskId::Reduce(0), 0, 1.0); // not handed out
        assert_eq!(
            fail(&mut c, 2, TaskId::Map(0), 0, 1.0),
            FromCoordinator::Noted
        );
        let p = c.progress(secs(1.0));
        assert_eq!((p.maps_done, p.reduces_done), (0, 0));
        done(&mut c, 1, TaskId::Map(0), 0, 2.0);
        assert_eq!(c.progress(secs(2.0)).maps_done, 1);
    }

    /// Simulated workers whose every task takes `task_secs`; the job's timeout is
    /// `timeout_secs`. Returns the virtual second the job was done at, or `None` if it was
    /// not done within `limit_secs`.
    fn simulate(
        maps: usize,
        workers: u64,
        task_secs: f64,
        timeout_secs: f64,
        limit_secs: f64,
    ) -> Option<f64> {
        let mut c = Job::new(JobSpec {
            task_timeout: secs(timeout_secs),
            ..spec(maps, 2)
        });
        // Per worker: the task it runs and when it finishes.
        let mut busy: Vec<Option<(TaskId, Attempt, f64)>> = vec![None; workers as usize];
        let step = 0.05;
        let mut now = 0.0;
        while now < limit_secs {
            for (w, slot) in busy.iter_mut().enumerate() {
                let worker = w as WorkerId + 1;
                if let Some((task, attempt, until)) = *slot {
                    if now < until {
                        continue;
                    }
                    done(&mut c, worker, task, attempt, now);
                    *slot = None;
                }
                if let Some((task, attempt)) = handed(&request(&mut c, worker, now)) {
                    *slot = Some((task, attempt, now + task_secs));
                }
            }
            if c.outcome() == Some(&Outcome::Done) {
                return Some(now);
            }
            now += step;
        }
        None
    }

    #[test]
    fn two_workers_finish_a_task_longer_than_the_timeout() {
        // The measured livelock: one 2.5 s map task, a 1 s timeout, 2 workers.
        let at = simulate(1, 2, 2.5, 1.0, 60.0).expect("the job ends");
        assert!(at < 10.0, "done at {at}s");
        // And more tasks than workers, each longer than the timeout.
        assert!(simulate(5, 3, 2.5, 1.0, 120.0).is_some());
    }

    #[test]
    fn near_the_end_of_a_phase_an_idle_worker_backs_up_a_running_task() {
        let mut c = Job::new(JobSpec {
            backup_tasks: true,
            ..spec(3, 1)
        });
        take(&mut c, 1, TaskId::Map(0), 0.0);
        take(&mut c, 2, TaskId::Map(1), 1.0);
        // Map 2 is idle: worker 3 gets it, not a backup.
        take(&mut c, 3, TaskId::Map(2), 2.0);
        done(&mut c, 3, TaskId::Map(2), 0, 3.0);
        // No map is idle now: worker 3 backs up the one running longest (map 0, since 0.0),
        // long before the 10 s timeout.
        assert_eq!(take(&mut c, 3, TaskId::Map(0), 3.0), 1, "a backup attempt");
        assert_eq!(c.progress(secs(3.0)).backups, 1);
        assert_eq!(c.progress(secs(3.0)).reissued, 0);
        // Map 0 has a backup; map 1's only attempt is worker 2's own: nothing for worker 2.
        assert!(
            is_wait(&request(&mut c, 2, 3.1)),
            "no second backup, none of its own"
        );
        // The backup finishes first and is accepted; the straggler's report changes nothing.
        done(&mut c, 3, TaskId::Map(0), 1, 4.0);
        done(&mut c, 1, TaskId::Map(0), 0, 9.0);
        done(&mut c, 2, TaskId::Map(1), 0, 4.5);
        assert_eq!(c.progress(secs(9.0)).maps_done, 3);
        let FromCoordinator::Reduce { map_attempts, .. } = request(&mut c, 1, 9.0) else {
            panic!("the reduce comes next");
        };
        assert_eq!(
            map_attempts,
            vec![1, 0, 0],
            "map 0's accepted attempt is the backup"
        );
    }

    #[test]
    fn without_backup_tasks_an_idle_worker_waits_for_the_timeout() {
        let mut c = Job::new(spec(2, 1));
        take(&mut c, 1, TaskId::Map(0), 0.0);
        take(&mut c, 2, TaskId::Map(1), 0.0);
        done(&mut c, 2, TaskId::Map(1), 0, 1.0);
        assert!(
            is_wait(&request(&mut c, 2, 9.9)),
            "no copy before the timeout"
        );
        assert_eq!(take(&mut c, 2, TaskId::Map(0), 10.0), 1);
        assert_eq!(c.progress(secs(10.0)).backups, 0);
        assert_eq!(c.progress(secs(10.0)).reissued, 1);
    }

    #[test]
    fn idle_tasks_go_out_before_timed_out_ones_are_duplicated() {
        let mut c = Job::new(JobSpec {
            task_timeout: secs(1.0),
            ..spec(2, 1)
        });
        take(&mut c, 1, TaskId::Map(0), 0.0);
        // Map 0 has timed out, but map 1 was never handed out: worker 2 gets map 1.
        take(&mut c, 2, TaskId::Map(1), 5.0);
        take(&mut c, 3, TaskId::Map(0), 5.0);
    }

    #[test]
    fn a_worker_that_keeps_failing_is_dismissed_and_the_others_finish() {
        let mut c = Job::new(spec(4, 1));
        take(&mut c, 1, TaskId::Map(0), 0.0); // the healthy worker, busy for a while
                                              // The broken worker fails fast: it gets a different task each time, then no more.
        for (map, at) in [(1, 0.1), (2, 0.2), (3, 0.3)] {
            let attempt = take(&mut c, 2, TaskId::Map(map), at);
            let reply = fail(&mut c, 2, TaskId::Map(map), attempt, at);
            if map < 3 {
                assert_eq!(reply, FromCoordinator::Noted);
            } else {
                assert!(
                    matches!(&reply, FromCoordinator::Dismissed { reason }
                        if reason.contains("map task 3") && reason.contains("boom from 2")),
                    "{reply:?}"
                );
            }
        }
        assert!(matches!(
            request(&mut c, 2, 0.4),
            FromCoordinator::Dismissed { .. }
        ));
        assert_eq!(c.outcome(), None, "the healthy worker is live");
        assert_eq!(c.progress(secs(0.4)).workers_dismissed, 1);
        done(&mut c, 1, TaskId::Map(0), 0, 1.0);
        for map in 1..4 {
            let attempt = take(&mut c, 1, TaskId::Map(map), 1.0);
            assert_eq!(attempt, 1);
            done(&mut c, 1, TaskId::Map(map), attempt, 1.0);
        }
        take(&mut c, 1, TaskId::Reduce(0), 1.0);
        done(&mut c, 1, TaskId::Reduce(0), 0, 2.0);
        assert_eq!(c.outcome(), Some(&Outcome::Done));
    }

    #[test]
    fn a_lone_worker_retries_a_failed_task_then_the_job_fails_naming_it() {
        let mut c = Job::new(spec(1, 1));
        for attempt in 0..3 {
            assert_eq!(
                take(&mut c, 1, TaskId::Map(0), attempt as f64),
                attempt,
                "nothing else to do: retried on the same worker"
            );
            fail(&mut c, 1, TaskId::Map(0), attempt, attempt as f64);
        }
        match c.outcome() {
            Some(Outcome::Failed(e)) => assert!(
                e.contains("no live worker") && e.contains("map task 0") && e.contains("boom"),
                "{e}"
            ),
            other => panic!("{other:?}"),
        }
        assert_eq!(request(&mut c, 1, 5.0), FromCoordinator::Exit);
    }

    #[test]
    fn dismissing_the_last_live_worker_fails_the_job_but_a_heartbeat_keeps_one_live() {
        for heartbeat in [false, true] {
            let mut c = Job::new(spec(4, 1));
            take(&mut c, 1, TaskId::Map(0), 0.0); // a long task
            if heartbeat {
                c.handle(ToCoordinator::Heartbeat { worker: 1 }, secs(15.0));
            }
            for (map, at) in [(1, 20.0), (2, 20.1), (3, 20.2)] {
                let attempt = take(&mut c, 2, TaskId::Map(map), at);
                fail(&mut c, 2, TaskId::Map(map), attempt, at);
            }
            // Worker 1 was last heard of 20 s ago (5 s ago with its heartbeat).
            assert_eq!(c.outcome().is_some(), !heartbeat, "heartbeat {heartbeat}");
        }
    }

    #[test]
    fn a_task_that_fails_on_enough_distinct_workers_fails_the_job() {
        let mut c = Job::new(spec(1, 1));
        for worker in 1..=3 {
            let attempt = take(&mut c, worker, TaskId::Map(0), 0.0);
            fail(&mut c, worker, TaskId::Map(0), attempt, 0.0);
        }
        match c.outcome() {
            Some(Outcome::Failed(e)) => assert!(
                e.contains("map task 0 failed on 3 different workers") && e.contains("boom from 3"),
                "{e}"
            ),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_worker_gets_tasks_it_has_not_failed_first() {
        let mut c = Job::new(spec(2, 1));
        let attempt = take(&mut c, 1, TaskId::Map(0), 0.0);
        fail(&mut c, 1, TaskId::Map(0), attempt, 0.0);
        take(&mut c, 1, TaskId::Map(1), 0.0);
        take(&mut c, 2, TaskId::Map(0), 0.0);
    }

    fn lost(
        c: &mut Job,
        worker: WorkerId,
        reduce: usize,
        attempt: Attempt,
        map: usize,
        map_attempt: Attempt,
        at: f64,
    ) -> FromCoordinator {
        c.handle(
            ToCoordinator::MapOutputLost {
                worker,
                reduce,
                attempt,
                map,
                map_attempt,
                error: "intermediate file is missing".into(),
            },
            secs(at),
        )
    }

    #[test]
    fn a_lost_map_output_runs_the_map_again_and_the_reduce_reads_the_new_attempt() {
        let mut c = Job::new(spec(2, 2));
        c.dir.lost.insert((1, 0));
        for map in 0..2 {
            take(&mut c, 1, TaskId::Map(map), 0.0);
            done(&mut c, 1, TaskId::Map(map), 0, 0.0);
        }
        take(&mut c, 1, TaskId::Reduce(0), 1.0);
        take(&mut c, 2, TaskId::Reduce(1), 1.0);
        assert_eq!(lost(&mut c, 1, 0, 0, 1, 0, 2.0), FromCoordinator::Noted);
        // Reduce 1 read the same lost output: its report is stale now and only frees it.
        assert_eq!(lost(&mut c, 2, 1, 0, 1, 0, 2.0), FromCoordinator::Noted);
        let p = c.progress(secs(2.0));
        assert_eq!((p.maps_done, p.maps_rerun, p.bytes_mapped), (1, 1, 10));
        assert_eq!(take(&mut c, 2, TaskId::Map(1), 2.0), 1);
        assert!(
            is_wait(&request(&mut c, 1, 2.0)),
            "reduces wait for the map"
        );
        done(&mut c, 2, TaskId::Map(1), 1, 3.0);
        for (worker, reduce) in [(1, 0), (2, 1)] {
            match request(&mut c, worker, 3.0) {
                FromCoordinator::Reduce {
                    task,
                    attempt,
                    map_attempts,
                    ..
                } => {
                    assert_eq!((task, attempt), (reduce, 1));
                    assert_eq!(map_attempts, [0, 1]);
                }
                other => panic!("{other:?}"),
            }
            done(&mut c, worker, TaskId::Reduce(reduce), 1, 4.0);
        }
        assert_eq!(c.outcome(), Some(&Outcome::Done));
    }

    #[test]
    fn a_lone_worker_whose_outputs_vanish_is_dismissed_and_the_job_ends() {
        // One worker whose map outputs are gone by the time its reduce reads them (it
        // writes where no one, not even the coordinator, finds them): each loss runs the map
        // again and counts against it as the writer, until it is dismissed.
        let mut c = Job::new(spec(1, 1));
        for map_attempt in 0..3 {
            c.dir.lost.insert((0, map_attempt));
            let at = map_attempt as f64;
            assert_eq!(take(&mut c, 1, TaskId::Map(0), at), map_attempt);
            done(&mut c, 1, TaskId::Map(0), map_attempt, at);
            let attempt = take(&mut c, 1, TaskId::Reduce(0), at);
            let reply = lost(&mut c, 1, 0, attempt, 0, map_attempt, at);
            assert_eq!(
                matches!(reply, FromCoordinator::Dismissed { .. }),
                map_attempt == 2
            );
        }
        match c.outcome() {
            Some(Outcome::Failed(e)) => {
                assert!(e.contains("map task 0") && e.contains("missing"), "{e}")
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_reader_that_cannot_see_intact_outputs_is_dismissed_and_no_map_runs_again() {
        // Worker 1's share is not mounted: every output it reads is missing there, while the
        // coordinator reads them intact. Only worker 1 is blamed; no map task runs again, no
        // writer is blamed, and the healthy workers finish the job.
        let mut c = Job::new(spec(3, 3));
        for (worker, map) in [(2, 0), (3, 1), (4, 2)] {
            take(&mut c, worker, TaskId::Map(map), 0.0);
            done(&mut c, worker, TaskId::Map(map), 0, 0.0);
        }
        for reduce in 0..3 {
            let attempt = take(&mut c, 1, TaskId::Reduce(reduce), 1.0);
            let reply = lost(&mut c, 1, reduce, attempt, reduce, 0, 1.0);
            assert_eq!(
                matches!(reply, FromCoordinator::Dismissed { .. }),
                reduce == 2
            );
        }
        assert_eq!(c.dir.checked, [(0, 0, 0), (1, 0, 1), (2, 0, 2)]);
        let p = c.progress(secs(1.0));
        assert_eq!((p.maps_done, p.maps_rerun, p.workers_dismissed), (3, 0, 1));
        assert_eq!(c.outcome(), None);
        for (worker, reduce) in [(2, 0), (3, 1), (4, 2)] {
            let attempt = take(&mut c, worker, TaskId::Reduce(reduce), 2.0);
            done(&mut c, worker, TaskId::Reduce(reduce), attempt, 2.0);
        }
        assert_eq!(c.outcome(), Some(&Outcome::Done));
    }

    #[test]
    fn a_writer_whose_outputs_are_lost_is_dismissed_and_its_readers_are_not() {
        // Worker 1 writes every map output where no one finds it. Its readers report the
        // losses; each counts against worker 1, never against a reader.
        let mut c = Job::new(spec(3, 2));
        for map in 0..3 {
            c.dir.lost.insert((map, 0));
            take(&mut c, 1, TaskId::Map(map), 0.0);
            done(&mut c, 1, TaskId::Map(map), 0, 0.0);
        }
        let r0 = take(&mut c, 2, TaskId::Reduce(0), 1.0);
        let r1 = take(&mut c, 3, TaskId::Reduce(1), 1.0);
        assert_eq!(lost(&mut c, 2, 0, r0, 0, 0, 1.0), FromCoordinator::Noted);
        assert_eq!(lost(&mut c, 3, 1, r1, 1, 0, 1.0), FromCoordinator::Noted);
        // The readers run the lost maps again (worker 1 is avoided for them).
        for (worker, map) in [(2, 0), (3, 1)] {
            let attempt = take(&mut c, worker, TaskId::Map(map), 2.0);
            done(&mut c, worker, TaskId::Map(map), attempt, 2.0);
        }
        let r0 = take(&mut c, 2, TaskId::Reduce(0), 3.0);
        assert_eq!(lost(&mut c, 2, 0, r0, 2, 0, 3.0), FromCoordinator::Noted);
        assert!(
            matches!(request(&mut c, 1, 3.0), FromCoordinator::Dismissed { reason }
            if reason.contains("map task 2: its output for reduce task 0 is lost"))
        );
        let attempt = take(&mut c, 3, TaskId::Map(2), 3.0);
        done(&mut c, 3, TaskId::Map(2), attempt, 3.0);
        for (worker, reduce) in [(2, 0), (3, 1)] {
            let attempt = take(&mut c, worker, TaskId::Reduce(reduce), 4.0);
            done(&mut c, worker, TaskId::Reduce(reduce), attempt, 4.0);
        }
        assert_eq!(c.outcome(), Some(&Outcome::Done));
        let p = c.progress(secs(4.0));
        assert_eq!((p.maps_rerun, p.workers_dismissed), (3, 1));
    }

    #[test]
    fn a_repeated_report_counts_once() {
        // A failure report sent again (the worker retried a call whose answer was lost) is
        // not a second failure: three copies do not dismiss the worker.
        let mut c = Job::new(spec(2, 1));
        let attempt = take(&mut c, 1, TaskId::Map(0), 0.0);
        for _ in 0..3 {
            assert_eq!(
                fail(&mut c, 1, TaskId::Map(0), attempt, 0.0),
                FromCoordinator::Noted
            );
        }
        assert_eq!(c.progress(secs(0.0)).workers_dismissed, 0);
        assert!(handed(&request(&mut c, 1, 0.0)).is_some());
        // A map output found lost is not accepted again by a repeated report of its attempt.
        let mut c = Job::new(spec(1, 1));
        c.dir.lost.insert((0, 0));
        take(&mut c, 1, TaskId::Map(0), 0.0);
        done(&mut c, 1, TaskId::Map(0), 0, 0.0);
        let reduce = take(&mut c, 2, TaskId::Reduce(0), 1.0);
        lost(&mut c, 2, 0, reduce, 0, 0, 1.0);
        done(&mut c, 1, TaskId::Map(0), 0, 1.5);
        assert_eq!(c.progress(secs(1.5)).maps_done, 0);
        assert_eq!(take(&mut c, 2, TaskId::Map(0), 2.0), 1);
        // And a repeated loss report is not a second loss.
        let mut c = Job::new(spec(1, 1));
        c.dir.lost.insert((0, 0));
        take(&mut c, 1, TaskId::Map(0), 0.0);
        done(&mut c, 1, TaskId::Map(0), 0, 0.0);
        let reduce = take(&mut c, 2, TaskId::Reduce(0), 1.0);
        for _ in 0..3 {
            lost(&mut c, 2, 0, reduce, 0, 0, 1.0);
        }
        assert_eq!(c.dir.checked.len(), 1);
        assert_eq!(c.progress(secs(1.0)).maps_rerun, 1);
    }

    #[test]
    fn only_the_accepted_reduce_attempt_is_put_in_place() {
        let mut c = Job::new(JobSpec {
            task_timeout: secs(1.0),
            ..spec(1, 1)
        });
        take(&mut c, 1, TaskId::Map(0), 0.0);
        done(&mut c, 1, TaskId::Map(0), 0, 0.0);
        take(&mut c, 1, TaskId::Reduce(0), 0.0);
        assert_eq!(take(&mut c, 2, TaskId::Reduce(0), 2.0), 1);
        done(&mut c, 2, TaskId::Reduce(0), 1, 3.0);
        done(&mut c, 2, TaskId::Reduce(0), 1, 3.0); // repeated
        done(&mut c, 1, TaskId::Reduce(0), 0, 4.0); // late
        assert_eq!(c.dir.published, [(0, 1)]);
        assert_eq!(c.outcome(), Some(&Outcome::Done));
    }

    #[test]
    fn a_reduce_output_that_cannot_be_put_in_place_is_a_failed_attempt() {
        // Worker 1 wrote its reduce output where the coordinator does not find it.
        let mut c = Job::new(spec(1, 1));
        c.dir.unpublishable.insert((0, 0));
        take(&mut c, 2, TaskId::Map(0), 0.0);
        done(&mut c, 2, TaskId::Map(0), 0, 0.0);
        take(&mut c, 1, TaskId::Reduce(0), 1.0);
        done(&mut c, 1, TaskId::Reduce(0), 0, 2.0);
        assert_eq!(c.outcome(), None);
        assert_eq!(c.progress(secs(2.0)).reduces_done, 0);
        // Worker 1 failed it: worker 2 gets it first.
        let attempt = take(&mut c, 2, TaskId::Reduce(0), 2.0);
        done(&mut c, 2, TaskId::Reduce(0), attempt, 3.0);
        assert_eq!(c.dir.published, [(0, 1)]);
        assert_eq!(c.outcome(), Some(&Outcome::Done));
    }

    #[test]
    fn each_task_runs_once_without_failures() {
        let mut c = Job::new(spec(8, 10));
        let mut handed_out = HashMap::new();
        let mut now = 0.0;
        while c.outcome().is_none() {
            now += 1.0;
            for worker in 1..=3 {
                if let Some((task, attempt)) = handed(&request(&mut c, worker, now)) {
                    *handed_out.entry(task).or_insert(0) += 1;
                    done(&mut c, worker, task, attempt, now);
                }
            }
        }
        assert_eq!(handed_out.len(), 18);
        assert!(handed_out.values().all(|&n| n == 1));
    }

    /// A job whose data travels over the network: map outputs on the workers, inputs
    /// shipped, outputs collected.
    fn spec_without_shared_dir(maps: usize, reduces: usize) -> JobSpec {
        JobSpec {
            intermediates_on_workers: true,
            ship_inputs: true,
            collect_outputs: true,
            task_timeout: secs(2.0),
            ..spec(maps, reduces)
        }
    }

    fn addr(worker: WorkerId) -> SocketAddr {
        SocketAddr::from(([10, 0, 0, worker as u8], 7000))
    }

    fn done_serving(c: &mut Job, worker: WorkerId, task: TaskId, attempt: Attempt, at: f64) {
        let reply = c.handle(
            ToCoordinator::TaskDone {
                worker,
                task,
                attempt,
                bytes: 10,
                served_at: Some(addr(worker)),
            },
            secs(at),
        );
        assert_eq!(reply, FromCoordinator::Noted);
    }

    #[test]
    fn with_outputs_on_workers_a_reduce_is_told_who_serves_each_map_output() {
        let mut c = Job::new(spec_without_shared_dir(2, 1));
        let m0 = take(&mut c, 1, TaskId::Map(0), 0.0);
        let m1 = take(&mut c, 2, TaskId::Map(1), 0.0);
        done_serving(&mut c, 1, TaskId::Map(0), m0, 0.5);
        done_serving(&mut c, 2, TaskId::Map(1), m1, 0.5);
        match request(&mut c, 3, 0.6) {
            FromCoordinator::Reduce {
                intermediates: Intermediates::OnWorkers { servers },
                output: OutputPlace::Coordinator,
                ..
            } => assert_eq!(servers, [addr(1), addr(2)]),
            other => panic!("a reduce over served outputs, not {other:?}"),
        }
    }

    #[test]
    fn with_outputs_on_workers_a_map_reported_without_its_address_failed() {
        let mut c = Job::new(spec_without_shared_dir(1, 1));
        let attempt = take(&mut c, 1, TaskId::Map(0), 0.0);
        done(&mut c, 1, TaskId::Map(0), attempt, 0.5);
        assert_eq!(c.progress(secs(0.5)).maps_done, 0, "not accepted");
        assert_eq!(take(&mut c, 2, TaskId::Map(0), 0.6), 1, "handed out again");
    }

    #[test]
    fn with_outputs_on_workers_the_maps_of_a_gone_worker_run_again() {
        for on_workers in [true, false] {
            let mut c = Job::new(JobSpec {
                intermediates_on_workers: on_workers,
                ..spec_without_shared_dir(2, 2)
            });
            let m0 = take(&mut c, 1, TaskId::Map(0), 0.0);
            let m1 = take(&mut c, 2, TaskId::Map(1), 0.0);
            done_serving(&mut c, 1, TaskId::Map(0), m0, 0.5);
            done_serving(&mut c, 2, TaskId::Map(1), m1, 0.5);
            let r0 = take(&mut c, 2, TaskId::Reduce(0), 0.6);
            done(&mut c, 2, TaskId::Reduce(0), r0, 1.0);
            // Worker 1 was last heard from at 0.5 s: at 2.6 s it is gone (2 s timeout).
            let at = 2.6;
            let reply = request(&mut c, 2, at);
            if on_workers {
                // Map task 0's output went with worker 1: it runs again (map task 1's, on
                // worker 2, which is here, does not), and reduce 1 waits for it.
                assert_eq!(handed(&reply), Some((TaskId::Map(0), 1)), "{reply:?}");
                assert_eq!(c.progress(secs(at)).maps_rerun, 1);
                assert_eq!(c.progress(secs(at)).maps_done, 1);
                done_serving(&mut c, 2, TaskId::Map(0), 1, 3.0);
                match request(&mut c, 3, 3.0) {
                    FromCoordinator::Reduce {
                        task: 1,
                        map_attempts,
                        intermediates: Intermediates::OnWorkers { servers },
                        ..
                    } => {
                        assert_eq!(map_attempts, [1, 0]);
                        assert_eq!(servers, [addr(2), addr(2)]);
                    }
                    other => panic!("reduce 1 over the new output, not {other:?}"),
                }
            } else {
                // In a shared directory the output outlives its worker.
                assert_eq!(handed(&reply), Some((TaskId::Reduce(1), 0)), "{reply:?}");
                assert_eq!(c.progress(secs(at)).maps_rerun, 0);
            }
        }
    }

    #[test]
    fn input_and_output_chunks_only_for_the_worker_running_that_attempt() {
        let mut c = Job::new(spec_without_shared_dir(1, 1));
        let read = |worker, attempt, offset, len| ToCoordinator::ReadInput {
            worker,
            task: 0,
            attempt,
            offset,
            len,
        };
        let refused = |reply: &FromCoordinator| matches!(reply, FromCoordinator::Refused { .. });
        assert!(
            refused(&c.handle(read(1, 0, 0, 4), secs(0.0))),
            "not handed out yet"
        );
        let attempt = take(&mut c, 1, TaskId::Map(0), 0.0);
        assert!(
            refused(&c.handle(read(2, attempt, 0, 4), secs(0.1))),
            "not worker 2's"
        );
        assert!(refused(&c.handle(read(1, attempt + 1, 0, 4), secs(0.1))));
        assert!(
            refused(&c.handle(read(1, attempt, 11, 4), secs(0.1))),
            "past the end"
        );
        // The split has 10 bytes: a read is cut at its end.
        assert_eq!(
            c.handle(read(1, attempt, 8, 4), secs(0.1)),
            FromCoordinator::InputChunk {
                data: b"xx".to_vec()
            }
        );
        assert_eq!(c.dir.read, [("in0".to_string(), 8, 2)]);
        done_serving(&mut c, 1, TaskId::Map(0), attempt, 0.2);
        assert!(
            refused(&c.handle(read(1, attempt, 0, 4), secs(0.3))),
            "reported"
        );

        let chunk = |worker, attempt| ToCoordinator::OutputChunk {
            worker,
            task: 0,
            attempt,
            offset: 0,
            data: b"a 1\n".to_vec(),
            end: None,
        };
        let r = take(&mut c, 2, TaskId::Reduce(0), 0.4);
        assert!(refused(&c.handle(chunk(1, r), secs(0.5))), "not worker 1's");
        assert_eq!(c.handle(chunk(2, r), secs(0.5)), FromCoordinator::Noted);
        assert_eq!(c.dir.received, [(0, r, 0, 4, false)]);

        // A job that reads paths and writes a shared directory takes neither.
        let mut shared = Job::new(spec(1, 1));
        let attempt = take(&mut shared, 1, TaskId::Map(0), 0.0);
        assert!(refused(&shared.handle(read(1, attempt, 0, 4), secs(0.1))));
        done(&mut shared, 1, TaskId::Map(0), attempt, 0.2);
        let r = take(&mut shared, 2, TaskId::Reduce(0), 0.3);
        assert!(refused(&shared.handle(chunk(2, r), secs(0.4))));
    }
}
