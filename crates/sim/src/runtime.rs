//! The deterministic executor: single-threaded, virtual time, FIFO wake-up order.
//!
//! Guarantees:
//! - Time only moves when no task can run: it then jumps to the earliest pending timer, so
//!   `sleep(1 h)` costs nothing but the work done meanwhile.
//! - Tasks run in the order they were woken; timers with the same deadline fire in the order
//!   they were armed. Together with the seeded RNG this makes a run a pure function of its
//!   seed and its code.
//! - A panic in any task unwinds out of [`Runtime::block_on`], failing the test that called it.
//! - When nothing can run and no timer is armed while the main future is unfinished, that is
//!   a deadlock and `block_on` panics saying so, instead of hanging.

use std::cell::{Cell, RefCell};
use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::future::Future;
use std::pin::{pin, Pin};
use std::rc::Rc;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Wake, Waker};
use std::time::Duration;

use crate::Rng;

type TaskId = u64;
type BoxFuture = Pin<Box<dyn Future<Output = ()>>>;
const MAIN_TASK: TaskId = 0;
/// Polls allowed without virtual time moving before the run is declared a livelock.
const MAX_POLLS_PER_INSTANT: u64 = 50_000_000;

/// The only part wakers touch; wakers must be `Send + Sync`, so this is behind a mutex even
/// though everything runs on one thread.
struct WakeQueue(Mutex<VecDeque<TaskId>>);

struct TaskWaker {
    id: TaskId,
    queue: Arc<WakeQueue>,
}

impl Wake for TaskWaker {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }
    fn wake_by_ref(self: &Arc<Self>) {
        self.queue.0.lock().expect("wake queue").push_back(self.id);
    }
}

struct Core {
    now: Cell<Duration>,
    next_task: Cell<TaskId>,
    tasks: RefCell<HashMap<TaskId, BoxFuture>>,
    /// Tasks aborted while they were being polled (not in `tasks` at that moment).
    aborted: RefCell<HashSet<TaskId>>,
    queue: Arc<WakeQueue>,
    timers: RefCell<BTreeMap<(Duration, u64), Waker>>,
    timer_seq: Cell<u64>,
    rng: RefCell<Rng>,
    trace: Cell<(u64, u64)>,
}

thread_local! {
    static CURRENT: RefCell<Option<Rc<Core>>> = const { RefCell::new(None) };
}

fn core() -> Rc<Core> {
    try_core().expect("flotilla-sim: called outside a running simulation (Runtime::block_on)")
}

fn try_core() -> Option<Rc<Core>> {
    CURRENT.try_with(|c| c.borrow().clone()).ok().flatten()
}

/// One simulation: its clock, its tasks, its RNG and its trace.
pub struct Runtime {
    core: Rc<Core>,
}

impl Runtime {
    pub fn new(seed: u64) -> Self {
        Runtime {
            core: Rc::new(Core {
                now: Cell::new(Duration::ZERO),
                next_task: Cell::new(MAIN_TASK + 1),
                tasks: RefCell::new(HashMap::new()),
                aborted: RefCell::new(HashSet::new()),
                queue: Arc::new(WakeQueue(Mutex::new(VecDeque::new()))),
                timers: RefCell::new(BTreeMap::new()),
                timer_seq: Cell::new(0),
                rng: RefCell::new(Rng::new(seed)),
                trace: Cell::new((0xcbf2_9ce4_8422_2325, 0)),
            }),
        }
    }

    /// Runs `main` (and every task it spawns) until `main` finishes; returns its output.
    /// Tasks still pending then are dropped with the runtime.
    pub fn block_on<F: Future>(&self, main: F) -> F::Output {
        let _guard = EnterGuard::enter(self.core.clone());
        let core = &self.core;
        let mut main = pin!(main);
        let main_waker = Waker::from(Arc::new(TaskWaker {
            id: MAIN_TASK,
            queue: core.queue.clone(),
        }));
        core.queue
            .0
            .lock()
            .expect("wake queue")
            .push_back(MAIN_TASK);
        let mut polls_this_instant = 0u64;
        loop {
            let next = core.queue.0.lock().expect("wake queue").pop_front();
            match next {
                Some(MAIN_TASK) => {
                    if let Poll::Ready(out) =
                        main.as_mut().poll(&mut Context::from_waker(&main_waker))
                    {
                        return out;
                    }
                }
                Some(id) => self.poll_task(id),
                None => {
                    let Some(((at, _), waker)) = core.timers.borrow_mut().pop_first() else {
                        panic!(
                            "flotilla-sim: deadlock at {:?}: the main task waits but no task can run and no timer is armed",
                            core.now.get()
                        );
                    };
                    debug_assert!(at >= core.now.get());
                    if at > core.now.get() {
                        polls_this_instant = 0;
                    }
                    core.now.set(at);
                    waker.wake();
                }
            }
            polls_this_instant += 1;
            assert!(
                polls_this_instant < MAX_POLLS_PER_INSTANT,
                "flotilla-sim: livelock: {MAX_POLLS_PER_INSTANT} polls without virtual time moving at {:?}",
                core.now.get()
            );
        }
    }

    fn poll_task(&self, id: TaskId) {
        let core = &self.core;
        let Some(mut fut) = core.tasks.borrow_mut().remove(&id) else {
            return; // finished or aborted; a stale wake-up
        };
        let waker = Waker::from(Arc::new(TaskWaker {
            id,
            queue: core.queue.clone(),
        }));
        let done = fut
            .as_mut()
            .poll(&mut Context::from_waker(&waker))
            .is_ready();
        if !done && !core.aborted.borrow_mut().remove(&id) {
            core.tasks.borrow_mut().insert(id, fut);
        }
    }

    /// Virtual time since the start of the simulation.
    pub fn now(&self) -> Duration {
        self.core.now.get()
    }

    /// (hash, number of events) of everything traced so far.
    pub fn trace_hash(&self) -> (u64, u64) {
        self.core.trace.get()
    }
}

impl Drop for Runtime {
    fn drop(&mut self) {
        // Dropping tasks may run their destructors (timers, channels); give them the runtime.
        let _guard = EnterGuard::enter(self.core.clone());
        let tasks = std::mem::take(&mut *self.core.tasks.borrow_mut());
        drop(tasks);
        self.core.timers.borrow_mut().clear();
    }
}

struct EnterGuard {
    previous: Option<Rc<Core>>,
}

impl EnterGuard {
    fn enter(core: Rc<Core>) -> Self {
        let previous = CURRENT.with(|c| c.borrow_mut().replace(core));
        EnterGuard { previous }
    }
}

impl Drop for EnterGuard {
    fn drop(&mut self) {
        let previous = self.previous.take();
        let _ = CURRENT.try_with(|c| *c.borrow_mut() = previous);
    }
}

/// Virtual time since the start of the running simulation.
pub fn now() -> Duration {
    core().now.get()
}

/// Runs `f` with the simulation's RNG. All randomness of a run must come from here.
pub fn with_rng<R>(f: impl FnOnce(&mut Rng) -> R) -> R {
    f(&mut core().rng.borrow_mut())
}

/// Folds `value` into the run's trace hash (FNV-1a over its bytes).
pub fn trace(value: u64) {
    let core = core();
    let (mut h, n) = core.trace.get();
    for b in value.to_le_bytes() {
        h = (h ^ b as u64).wrapping_mul(0x100_0000_01b3);
    }
    core.trace.set((h, n + 1));
}

/// (hash, number of events) of the running simulation's trace.
pub fn trace_hash() -> (u64, u64) {
    core().trace.get()
}

struct JoinState<T> {
    result: Option<T>,
    finished: bool,
    aborted: bool,
    waiter: Option<Waker>,
}

/// Awaits a spawned task's output. Dropping the handle detaches the task (it keeps running).
pub struct JoinHandle<T> {
    id: TaskId,
    state: Rc<RefCell<JoinState<T>>>,
}

impl<T> JoinHandle<T> {
    /// Stops the task now: its future is dropped at once (or right after its current poll).
    pub fn abort(&self) {
        let mut state = self.state.borrow_mut();
        if state.finished || state.aborted {
            return;
        }
        state.aborted = true;
        drop(state);
        let core = core();
        let removed = core.tasks.borrow_mut().remove(&self.id);
        match removed {
            Some(fut) => drop(fut),
            None => {
                core.aborted.borrow_mut().insert(self.id);
            }
        }
    }

    pub fn is_finished(&self) -> bool {
        self.state.borrow().finished
    }
}

impl<T> Future for JoinHandle<T> {
    type Output = T;
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<T> {
        let mut state = self.state.borrow_mut();
        assert!(!state.aborted, "awaited a task that was aborted");
        match state.result.take() {
            Some(out) => Poll::Ready(out),
            None => {
                assert!(!state.finished, "JoinHandle polled after completion");
                state.waiter = Some(cx.waker().clone());
                Poll::Pending
            }
        }
    }
}

/// Starts a task in the running simulation. It first runs after the current task yields.
pub fn spawn<F>(fut: F) -> JoinHandle<F::Output>
where
    F: Future + 'static,
    F::Output: 'static,
{
    let core = core();
    let id = core.next_task.get();
    core.next_task.set(id + 1);
    let state = Rc::new(RefCell::new(JoinState {
        result: None,
        finished: false,
        aborted: false,
        waiter: None,
    }));
    let task_state = state.clone();
    let task = async move {
        let out = fut.await;
        let mut state = task_state.borrow_mut();
        state.result = Some(out);
        state.finished = true;
        if let Some(w) = state.waiter.take() {
            w.wake();
        }
    };
    core.tasks.borrow_mut().insert(id, Box::pin(task));
    core.queue.0.lock().expect("wake queue").push_back(id);
    JoinHandle { id, state }
}

/// Completes once virtual time has advanced by `duration`.
pub fn sleep(duration: Duration) -> Sleep {
    sleep_until(now() + duration)
}

/// Completes at virtual time `deadline` (at once if it has passed).
pub fn sleep_until(deadline: Duration) -> Sleep {
    Sleep {
        deadline,
        key: None,
    }
}

/// Future returned by [`sleep`].
pub struct Sleep {
    deadline: Duration,
    key: Option<(Duration, u64)>,
}

impl Future for Sleep {
    type Output = ();
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let core = core();
        if core.now.get() >= self.deadline {
            if let Some(key) = self.key.take() {
                core.timers.borrow_mut().remove(&key);
            }
            return Poll::Ready(());
        }
        let key = match self.key {
            Some(key) => key,
            None => {
                let seq = core.timer_seq.get();
                core.timer_seq.set(seq + 1);
                let key = (self.deadline, seq);
                self.key = Some(key);
                key
            }
        };
        core.timers.borrow_mut().insert(key, cx.waker().clone());
        Poll::Pending
    }
}

impl Drop for Sleep {
    fn drop(&mut self) {
        if let (Some(key), Some(core)) = (self.key, try_core()) {
            if let Ok(mut timers) = core.timers.try_borrow_mut() {
                timers.remove(&key);
            }
        }
    }
}

/// The deadline of [`timeout`] passed first.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Elapsed;

/// Runs `fut` for at most `duration` of virtual time.
pub async fn timeout<F: Future>(duration: Duration, fut: F) -> Result<F::Output, Elapsed> {
    let mut fut = pin!(fut);
    let mut timer = pin!(sleep(duration));
    std::future::poll_fn(|cx| {
        if let Poll::Ready(out) = fut.as_mut().poll(cx) {
            return Poll::Ready(Ok(out));
        }
        timer.as_mut().poll(cx).map(|()| Err(Elapsed))
    })
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sleeping_advances_virtual_time_only() {
        let rt = Runtime::new(1);
        let wall = std::time::Instant::now();
        let t = rt.block_on(async {
            sleep(Duration::from_secs(3600)).await;
            now()
        });
        assert_eq!(t, Duration::from_secs(3600));
        assert!(wall.elapsed() < Duration::from_secs(1));
    }

    #[test]
    fn tasks_interleave_by_virtual_time() {
        let rt = Runtime::new(1);
        let order = Rc::new(RefCell::new(Vec::new()));
        let o = order.clone();
        rt.block_on(async move {
            let mut handles = Vec::new();
            for (name, ms) in [("c", 30u64), ("a", 10), ("b", 20)] {
                let o = o.clone();
                handles.push(spawn(async move {
                    sleep(Duration::from_millis(ms)).await;
                    o.borrow_mut().push(name);
                    ms
                }));
            }
            let mut total = 0;
            for h in handles {
                total += h.await;
            }
            assert_eq!(total, 60);
        });
        assert_eq!(*order.borrow(), vec!["a", "b", "c"]);
    }

    #[test]
    fn timeout_and_abort() {
        let rt = Runtime::new(1);
        rt.block_on(async {
            let slow = timeout(Duration::from_millis(5), sleep(Duration::from_millis(10))).await;
            assert_eq!(slow, Err(Elapsed));
            assert_eq!(now(), Duration::from_millis(5));
            let fast = timeout(Duration::from_millis(5), async { 7 }).await;
            assert_eq!(fast, Ok(7));
            let flag = Rc::new(Cell::new(false));
            let f = flag.clone();
            let h = spawn(async move {
                sleep(Duration::from_millis(1)).await;
                f.set(true);
            });
            h.abort();
            sleep(Duration::from_millis(2)).await;
            assert!(!flag.get(), "an aborted task must not run");
        });
    }

    #[test]
    #[should_panic(expected = "deadlock")]
    fn deadlock_is_reported() {
        let rt = Runtime::new(1);
        rt.block_on(std::future::pending::<()>());
    }
}
