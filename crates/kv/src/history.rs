//! The history of a KV test: every completed clerk operation with its call and return
//! stamps, and its check by the linearizability checker.
//!
//! ## The recorder's stamps
//!
//! A logged operation has a call stamp, taken when the clerk starts it (before its first
//! request is sent), and a return stamp, taken when its answer arrives (before the clerk's
//! caller carries on). The checker orders `a` before `b` only when `a.ret < b.call` and
//! counts equal times as overlapping, while the simulator's virtual clock stands still as
//! long as tasks run: a return and the call that follows it (the same client's next
//! operation, or another client's call made on seeing the result) usually read the same
//! nanosecond. Raw times would make them concurrent and let the checker accept, say, a
//! client's `Get` that misses its own `Put` just before.
//!
//! So a stamp is not a raw time. It is the virtual time in picoseconds
//! ([`STAMPS_PER_NANOSECOND`] per nanosecond), moved forward by the fewest picoseconds that
//! put it strictly after the previous stamp of the same [`OpLog`]. The executor runs one task
//! at a time, so the events of a run happen in one total order, and:
//!
//! - stamps strictly increase in that order, so an operation that returned before another
//!   was called has `ret < call`: no order that happened is hidden;
//! - `a.ret < b.call` only if `a` returned before `b` was called in the run; then `a` took
//!   effect on the server (before its reply was sent) before `b` could (after its request was
//!   sent): no order is invented that a correct server could break. Operations that did
//!   overlap keep overlapping stamps;
//! - a stamp divided by [`STAMPS_PER_NANOSECOND`] is the virtual time of the event in
//!   nanoseconds, unless more than that many events fell within one nanosecond (then the
//!   stamps run a little ahead of the clock, still in order).
//!
//! The history written for `flotilla check` carries these stamps as `call` and `return`.

use std::cell::RefCell;
use std::rc::Rc;
use std::time::Duration;

use flotilla_lincheck as lincheck;
use flotilla_sim::now;
use lincheck::history::{write_history, HistoryRecord};
use lincheck::models::{KvInput, KvOutput, VersionedInput, VersionedOutput};

use crate::protocol::KvError;

/// Stamps per nanosecond of virtual time: a stamp is in virtual picoseconds (see the
/// [module documentation](self)).
pub const STAMPS_PER_NANOSECOND: u64 = 1000;

/// One completed clerk operation, as the tester logs it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Logged {
    pub client: i64,
    pub op: LoggedOp,
    /// The call's stamp (see the [module documentation](self)).
    pub call: u64,
    /// The return's stamp, after `call` and after every stamp taken before the return.
    pub ret: u64,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LoggedOp {
    Get {
        key: String,
        output: String,
    },
    Put {
        key: String,
        value: String,
    },
    Append {
        key: String,
        value: String,
        output: String,
    },
    VersionedGet {
        key: String,
        output: String,
        version: u64,
        error: Option<KvError>,
    },
    VersionedPut {
        key: String,
        value: String,
        version: u64,
        error: Option<KvError>,
    },
}

/// The shared log of one test's operations; cloning shares it.
#[derive(Clone, Default)]
pub struct OpLog {
    recorder: Rc<RefCell<Recorder>>,
}

/// The history log and the clock of its stamps.
#[derive(Default)]
struct Recorder {
    history: Vec<Logged>,
    /// The last stamp given, if any.
    last: Option<u64>,
}

impl Recorder {
    /// The stamp of an event happening now, at virtual time `nanos`: `nanos` counted in
    /// stamps, or one more than the last stamp if that one is not already earlier.
    fn stamp(&mut self, nanos: u64) -> u64 {
        let at = nanos
            .checked_mul(STAMPS_PER_NANOSECOND)
            .expect("virtual time beyond what stamps can count (213 days)");
        let stamp = match self.last {
            None => at,
            Some(last) => at.max(last.checked_add(1).expect("stamps ran out")),
        };
        self.last = Some(stamp);
        stamp
    }
}

impl OpLog {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn history(&self) -> Vec<Logged> {
        self.recorder.borrow().history.clone()
    }

    pub fn len(&self) -> usize {
        self.recorder.borrow().history.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Logs `op` by `client`, called at stamp `call`, as returning now.
    pub fn log(&self, client: i64, op: LoggedOp, call: u64) {
        let ret = self.stamp();
        self.recorder.borrow_mut().history.push(Logged {
            client,
            op,
            call,
            ret,
        });
    }

    /// A stamp for an event happening now (see the [module documentation](self)).
    pub fn stamp(&self) -> u64 {
        self.recorder.borrow_mut().stamp(now().as_nanos() as u64)
    }

    /// The checker's verdict on the logged history (2024 or 2025 model, whichever the log
    /// holds) within `budget` of wall time.
    pub fn check(&self, budget: Duration) -> lincheck::CheckResult {
        let history = &self.recorder.borrow().history;
        if is_versioned_history(history) {
            let ops: Vec<_> = history.iter().map(Logged::versioned).collect();
            lincheck::check(&lincheck::models::VersionedKvModel, &ops, budget)
        } else {
            let ops: Vec<_> = history.iter().map(Logged::plain).collect();
            lincheck::check(&lincheck::models::KvModel, &ops, budget)
        }
    }

    /// The logged history as the records of a history file, in the form [`KvSim::check`]
    /// checks.
    fn records(&self) -> Vec<HistoryRecord> {
        let history = &self.recorder.borrow().history;
        if is_versioned_history(history) {
            let ops: Vec<_> = history.iter().map(Logged::versioned).collect();
            ops.iter().map(HistoryRecord::from).collect()
        } else {
            let ops: Vec<_> = history.iter().map(Logged::plain).collect();
            ops.iter().map(HistoryRecord::from).collect()
        }
    }

    /// The time the scenario tests give the checker. The lab gives porcupine 1 s, which the
    /// largest history here (about 60k operations, 0.7 s on an idle core) can exceed on a
    /// loaded two-core CI machine; only a history that needs it spends it.
    pub const CHECK_BUDGET: Duration = Duration::from_secs(10);

    /// Checks the logged history for linearizability (2024 or 2025 model, whichever the log
    /// holds) within `budget` of wall time. Fails the test with the checker's explanation if
    /// it is not; a check that runs out of budget passes with a note, as in the lab. When the
    /// history is not linearizable, it is written as JSON Lines to a temporary file (named in
    /// the message) for `flotilla check`. A history the checker could not decide in time is
    /// not written (it can be hundreds of megabytes, and the run's seed replays it exactly).
    pub fn check_linearizable(&self, budget: Duration) {
        let result = self.check(budget);
        let save = || {
            let path = std::env::temp_dir().join(format!(
                "flotilla-history-{:016x}.jsonl",
                flotilla_sim::trace_hash().0
            ));
            match std::fs::File::create(&path)
                .and_then(|f| write_history(std::io::BufWriter::new(f), &self.records()))
            {
                Ok(()) => format!("history written to {}", path.display()),
                Err(e) => format!("could not write the history to {}: {e}", path.display()),
            }
        };
        match result {
            lincheck::CheckResult::Ok => {}
            lincheck::CheckResult::Unknown => println!(
                "info: linearizability check timed out, assuming history is ok ({} operations)",
                self.len(),
            ),
            lincheck::CheckResult::Illegal(explanation) => {
                panic!("history is not linearizable ({}):\n{explanation}", save())
            }
        }
    }
}

/// Whether `history` is of the 2025 API (a history of none but 2024 operations is checked
/// against the 2024 model; an empty one either way).
fn is_versioned_history(history: &[Logged]) -> bool {
    history.iter().all(|logged| logged.op.is_versioned())
}

impl LoggedOp {
    fn is_versioned(&self) -> bool {
        matches!(
            self,
            LoggedOp::VersionedGet { .. } | LoggedOp::VersionedPut { .. }
        )
    }
}

fn lincheck_error(error: Option<KvError>) -> lincheck::models::KvError {
    match error {
        None => lincheck::models::KvError::Ok,
        Some(KvError::NoKey) => lincheck::models::KvError::NoKey,
        Some(KvError::Version) => lincheck::models::KvError::Version,
        Some(KvError::Maybe) => lincheck::models::KvError::Maybe,
    }
}

impl Logged {
    fn operation<I, O>(&self, input: I, output: O) -> lincheck::Operation<I, O> {
        lincheck::Operation {
            client: self.client,
            input,
            output: Some(output),
            call: self.call,
            ret: Some(self.ret),
        }
    }

    fn plain(&self) -> lincheck::Operation<KvInput, KvOutput> {
        match &self.op {
            LoggedOp::Get { key, output } => {
                self.operation(KvInput::get(key), KvOutput::new(output))
            }
            LoggedOp::Put { key, value } => {
                self.operation(KvInput::put(key, value), KvOutput::new(""))
            }
            LoggedOp::Append { key, value, output } => {
                self.operation(KvInput::append(key, value), KvOutput::new(output))
            }
            versioned => unreachable!("a 2025 operation in a 2024 history: {versioned:?}"),
        }
    }

    fn versioned(&self) -> lincheck::Operation<VersionedInput, VersionedOutput> {
        match &self.op {
            LoggedOp::VersionedGet {
                key,
                output,
                version,
                error,
            } => self.operation(
                VersionedInput::get(key),
                VersionedOutput::get(output, *version, lincheck_error(*error)),
            ),
            LoggedOp::VersionedPut {
                key,
                value,
                version,
                error,
            } => self.operation(
                VersionedInput::put(key, value, *version),
                VersionedOutput::put(lincheck_error(*error)),
            ),
            plain => unreachable!("a 2024 operation in a 2025 history: {plain:?}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stamps_are_virtual_picoseconds_made_strictly_increasing() {
        let mut recorder = Recorder::default();
        assert_eq!(recorder.stamp(5), 5_000);
        // The same nanosecond: the next picoseconds, in order.
        assert_eq!(recorder.stamp(5), 5_001);
        assert_eq!(recorder.stamp(5), 5_002);
        // A later nanosecond: its own time again.
        assert_eq!(recorder.stamp(6), 6_000);
        // More events in one nanosecond than it has picoseconds spill into the next one,
        // and the stamps catch up with the clock once it moves past them.
        let burst: Vec<u64> = (0..1_500).map(|_| recorder.stamp(7)).collect();
        assert!(burst.windows(2).all(|pair| pair[0] < pair[1]));
        assert_eq!(burst.last(), Some(&8_499));
        assert_eq!(recorder.stamp(8), 8_500);
        assert_eq!(recorder.stamp(9), 9_000);
    }
}
