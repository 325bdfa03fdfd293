//! The coordinator's state machine: which task goes to whom, what timed out, when the job is
//! done. No I/O and no clock: the driver passes the time with every message.
//!
//! Rules (6.5840 Lab 1):
//! - every map task finishes before any reduce task is handed out;
//! - a task is handed to one worker at a time; if it is not reported done within
//!   `task_timeout`, it is handed to the next worker that asks (the first holder may still
//!   finish: outputs are renamed into place atomically, so a late duplicate is harmless);
//! - a report from a worker that does not hold the task (it timed out and the task moved on,
//!   or was already done) is ignored;
//! - without failures each task runs exactly once (no speculative copies);
//! - a task that fails `max_failures` times (an unreadable input, an application error) fails
//!   the job, with the last error;
//! - the job is done when every reduce output is in place.

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::Duration;

use crate::protocol::{FromCoordinator, TaskId, ToCoordinator, WorkerId};

#[derive(Clone, Debug, PartialEq, Eq)]
enum TaskState {
    Idle,
    Running { worker: WorkerId, since: Duration },
    Done,
}

#[derive(Clone, Debug)]
struct Task {
    state: TaskState,
    failures: u32,
    last_error: Option<String>,
}

impl Task {
    fn new() -> Self {
        Task {
            state: TaskState::Idle,
            failures: 0,
            last_error: None,
        }
    }
}

/// One input of the job.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Input {
    /// As given on the command line: what `App::map` receives.
    pub name: String,
    /// Where workers read it (absolute, so workers in other directories find it).
    pub path: PathBuf,
    pub bytes: u64,
}

#[derive(Clone, Debug)]
pub struct JobSpec {
    pub inputs: Vec<Input>,
    pub n_reduce: usize,
    /// Where intermediate files and outputs go (absolute).
    pub dir: PathBuf,
    pub task_timeout: Duration,
    pub max_failures: u32,
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
    /// Workers heard from within the task timeout.
    pub workers_alive: usize,
    pub reissued: u64,
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
    last_seen: HashMap<WorkerId, Duration>,
    bytes_mapped: u64,
    reissued: u64,
    outcome: Option<Outcome>,
}

/// How long an idle worker waits before asking again.
const WAIT: Duration = Duration::from_millis(10);

impl Coordinator {
    pub fn new(spec: JobSpec) -> Self {
        assert!(spec.n_reduce > 0, "at least one reduce task");
        assert!(spec.max_failures > 0);
        Coordinator {
            maps: vec![Task::new(); spec.inputs.len()],
            reduces: vec![Task::new(); spec.n_reduce],
            last_seen: HashMap::new(),
            bytes_mapped: 0,
            reissued: 0,
            // A job with no input has nothing to map; it still reduces (to empty outputs).
            outcome: None,
            spec,
        }
    }

    pub fn outcome(&self) -> Option<&Outcome> {
        self.outcome.as_ref()
    }

    pub fn handle(&mut self, message: ToCoordinator, now: Duration) -> FromCoordinator {
        match message {
            ToCoordinator::RequestTask { worker } => {
                self.last_seen.insert(worker, now);
                self.assign(worker, now)
            }
            ToCoordinator::TaskDone {
                worker,
                task,
                bytes,
            } => {
                self.last_seen.insert(worker, now);
                if self.holds(worker, task) {
                    self.task_mut(task).state = TaskState::Done;
                    if let TaskId::Map(_) = task {
                        self.bytes_mapped += bytes;
                    }
                    if self.reduces.iter().all(|t| t.state == TaskState::Done)
                        && self.outcome.is_none()
                    {
                        self.outcome = Some(Outcome::Done);
                    }
                }
                FromCoordinator::Noted
            }
            ToCoordinator::TaskFailed {
                worker,
                task,
                error,
            } => {
                self.last_seen.insert(worker, now);
                if self.holds(worker, task) {
                    let max = self.spec.max_failures;
                    let t = self.task_mut(task);
                    t.state = TaskState::Idle;
                    t.failures += 1;
                    t.last_error = Some(error.clone());
                    if t.failures >= max && self.outcome.is_none() {
                        self.outcome = Some(Outcome::Failed(format!(
                            "{task} failed {max} times; last error: {error}"
                        )));
                    }
                }
                FromCoordinator::Noted
            }
        }
    }

    fn holds(&self, worker: WorkerId, task: TaskId) -> bool {
        let tasks = match task {
            TaskId::Map(_) => &self.maps,
            TaskId::Reduce(_) => &self.reduces,
        };
        let index = match task {
            TaskId::Map(i) | TaskId::Reduce(i) => i,
        };
        matches!(tasks.get(index), Some(Task { state: TaskState::Running { worker: w, .. }, .. }) if *w == worker)
    }

    fn task_mut(&mut self, task: TaskId) -> &mut Task {
        match task {
            TaskId::Map(i) => &mut self.maps[i],
            TaskId::Reduce(i) => &mut self.reduces[i],
        }
    }

    /// Picks an idle task (or one whose holder timed out) of the current phase.
    fn assign(&mut self, worker: WorkerId, now: Duration) -> FromCoordinator {
        if self.outcome.is_some() {
            return FromCoordinator::Exit;
        }
        let timeout = self.spec.task_timeout;
        let maps_done = self.maps.iter().all(|t| t.state == TaskState::Done);
        let (tasks, is_map) = if maps_done {
            (&mut self.reduces, false)
        } else {
            (&mut self.maps, true)
        };
        let pick = tasks.iter().position(|t| match t.state {
            TaskState::Idle => true,
            TaskState::Running { since, .. } => now.saturating_sub(since) >= timeout,
            TaskState::Done => false,
        });
        let Some(index) = pick else {
            return FromCoordinator::Wait {
                millis: WAIT.as_millis() as u64,
            };
        };
        if matches!(tasks[index].state, TaskState::Running { .. }) {
            self.reissued += 1;
        }
        tasks[index].state = TaskState::Running { worker, since: now };
        let dir = self.spec.dir.clone();
        if is_map {
            let input = &self.spec.inputs[index];
            FromCoordinator::Map {
                task: index,
                input_name: input.name.clone(),
                input_path: input.path.clone(),
                n_reduce: self.spec.n_reduce,
                dir,
            }
        } else {
            FromCoordinator::Reduce {
                task: index,
                n_map: self.maps.len(),
                dir,
            }
        }
    }

    pub fn progress(&self, now: Duration) -> Progress {
        let done = |tasks: &[Task]| tasks.iter().filter(|t| t.state == TaskState::Done).count();
        Progress {
            maps_done: done(&self.maps),
            maps: self.maps.len(),
            reduces_done: done(&self.reduces),
            reduces: self.reduces.len(),
            bytes_mapped: self.bytes_mapped,
            bytes_total: self.spec.inputs.iter().map(|i| i.bytes).sum(),
            workers_alive: self
                .last_seen
                .values()
                .filter(|&&seen| now.saturating_sub(seen) < self.spec.task_timeout)
                .count(),
            reissued: self.reissued,
        }
    }

    pub fn spec(&self) -> &JobSpec {
        &self.spec
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(maps: usize, reduces: usize) -> JobSpec {
        JobSpec {
            inputs: (0..maps)
                .map(|i| Input {
                    name: format!("in{i}"),
                    path: PathBuf::from(format!("/in{i}")),
                    bytes: 10,
                })
                .collect(),
            n_reduce: reduces,
            dir: PathBuf::from("/out"),
            task_timeout: Duration::from_secs(10),
            max_failures: 3,
        }
    }

    fn request(c: &mut Coordinator, worker: WorkerId, at: u64) -> FromCoordinator {
        c.handle(
            ToCoordinator::RequestTask { worker },
            Duration::from_secs(at),
        )
    }

    fn done(c: &mut Coordinator, worker: WorkerId, task: TaskId, at: u64) {
        c.handle(
            ToCoordinator::TaskDone {
                worker,
                task,
                bytes: 10,
            },
            Duration::from_secs(at),
        );
    }

    #[test]
    fn maps_then_reduces_then_exit() {
        let mut c = Coordinator::new(spec(2, 1));
        assert!(matches!(
            request(&mut c, 1, 0),
            FromCoordinator::Map { task: 0, .. }
        ));
        assert!(matches!(
            request(&mut c, 2, 0),
            FromCoordinator::Map { task: 1, .. }
        ));
        assert!(
            matches!(request(&mut c, 3, 0), FromCoordinator::Wait { .. }),
            "reduces wait for maps"
        );
        done(&mut c, 1, TaskId::Map(0), 1);
        assert!(matches!(
            request(&mut c, 1, 1),
            FromCoordinator::Wait { .. }
        ));
        done(&mut c, 2, TaskId::Map(1), 1);
        assert!(matches!(
            request(&mut c, 1, 1),
            FromCoordinator::Reduce {
                task: 0,
                n_map: 2,
                ..
            }
        ));
        assert_eq!(c.outcome(), None);
        done(&mut c, 1, TaskId::Reduce(0), 2);
        assert_eq!(c.outcome(), Some(&Outcome::Done));
        assert_eq!(request(&mut c, 2, 2), FromCoordinator::Exit);
    }

    #[test]
    fn stalled_task_moves_on_and_the_stale_report_is_ignored() {
        let mut c = Coordinator::new(spec(1, 1));
        assert!(matches!(
            request(&mut c, 1, 0),
            FromCoordinator::Map { task: 0, .. }
        ));
        assert!(
            matches!(request(&mut c, 2, 9), FromCoordinator::Wait { .. }),
            "not before the timeout"
        );
        assert!(matches!(
            request(&mut c, 2, 10),
            FromCoordinator::Map { task: 0, .. }
        ));
        done(&mut c, 1, TaskId::Map(0), 11); // the first holder is late: ignored
        assert_eq!(c.progress(Duration::from_secs(11)).maps_done, 0);
        done(&mut c, 2, TaskId::Map(0), 12);
        assert_eq!(c.progress(Duration::from_secs(12)).maps_done, 1);
        assert_eq!(c.progress(Duration::from_secs(12)).reissued, 1);
    }

    #[test]
    fn repeated_failures_fail_the_job() {
        let mut c = Coordinator::new(spec(1, 1));
        for attempt in 0..3 {
            assert!(matches!(
                request(&mut c, 1, attempt),
                FromCoordinator::Map { .. }
            ));
            c.handle(
                ToCoordinator::TaskFailed {
                    worker: 1,
                    task: TaskId::Map(0),
                    error: "boom".into(),
                },
                Duration::from_secs(attempt),
            );
        }
        assert!(matches!(c.outcome(), Some(Outcome::Failed(e)) if e.contains("boom")));
        assert_eq!(request(&mut c, 1, 5), FromCoordinator::Exit);
    }

    #[test]
    fn each_task_runs_once_without_failures() {
        let mut c = Coordinator::new(spec(8, 10));
        let mut handed = std::collections::HashMap::new();
        let mut now = 0;
        while c.outcome().is_none() {
            now += 1;
            for worker in 1..=3 {
                match request(&mut c, worker, now) {
                    FromCoordinator::Map { task, .. } => {
                        *handed.entry(TaskId::Map(task)).or_insert(0) += 1;
                        done(&mut c, worker, TaskId::Map(task), now);
                    }
                    FromCoordinator::Reduce { task, .. } => {
                        *handed.entry(TaskId::Reduce(task)).or_insert(0) += 1;
                        done(&mut c, worker, TaskId::Reduce(task), now);
                    }
                    _ => {}
                }
            }
        }
        assert_eq!(handed.len(), 18);
        assert!(handed.values().all(|&n| n == 1));
    }
}
