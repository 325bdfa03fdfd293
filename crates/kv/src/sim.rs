//! The KV service on the simulator: one server on a labrpc-style [`RpcNetwork`], clerks that
//! retry until a reply arrives, and a recorder of every logged operation for the
//! linearizability checker. This is the harness of the Lab 2 scenarios in `tests/`.
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
//! put it strictly after the previous stamp of the same [`KvSim`]. The executor runs one task
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
use flotilla_sim::net::{Conditions, Payload};
use flotilla_sim::rpc::{ClientId as EndId, RpcNetwork};
use flotilla_sim::{now, sleep};
use lincheck::history::{write_history, HistoryRecord};
use lincheck::models::{KvInput, KvOutput, VersionedInput, VersionedOutput};

use crate::clerk::{Answer, Call, ClerkCore};
use crate::lock::VersionedKv;
use crate::protocol::{KvError, Reply, Request};
use crate::server::KvServer;

impl Payload for Request {
    fn wire_size(&self) -> usize {
        postcard::experimental::serialized_size(self).unwrap_or(0)
    }
    fn is_request(&self) -> bool {
        true
    }
}

impl Payload for Reply {
    fn wire_size(&self) -> usize {
        postcard::experimental::serialized_size(self).unwrap_or(0)
    }
    fn is_request(&self) -> bool {
        false
    }
}

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

/// The server, its network and the recorder.
#[derive(Clone)]
pub struct KvSim {
    net: RpcNetwork<Request, Reply>,
    server: Rc<RefCell<KvServer>>,
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

impl KvSim {
    /// Starts the server (on a reliable network, then sets `reliable`). Every message takes
    /// 50–200 µs, so time moves even on a reliable network and busy clients interleave.
    pub fn new(reliable: bool) -> Self {
        KvSim::with_handler(reliable, KvServer::handle)
    }

    /// Like [`KvSim::new`], but every request reaching the server goes through `handler`,
    /// which is given the server: a test can make a server misbehave on purpose (forget a
    /// write, answer stale values) to see that the recorder and the checker catch it.
    pub fn with_handler(
        reliable: bool,
        handler: impl Fn(&mut KvServer, Request) -> Reply + 'static,
    ) -> Self {
        let net = RpcNetwork::new(1);
        net.set_conditions(Conditions {
            latency: (Duration::from_micros(50), Duration::from_micros(200)),
            ..Conditions::default()
        });
        let server = Rc::new(RefCell::new(KvServer::new()));
        let handler_server = server.clone();
        net.attach(0, move |req| handler(&mut handler_server.borrow_mut(), req));
        net.set_reliable(reliable);
        KvSim {
            net,
            server,
            recorder: Rc::new(RefCell::new(Recorder::default())),
        }
    }

    pub fn net(&self) -> &RpcNetwork<Request, Reply> {
        &self.net
    }

    pub fn set_reliable(&self, reliable: bool) {
        self.net.set_reliable(reliable);
    }

    /// A new clerk with its own network end and a random id.
    pub fn clerk(&self) -> SimClerk {
        let id = flotilla_sim::with_rng(|r| r.next_u64());
        SimClerk {
            core: RefCell::new(ClerkCore::new(id)),
            end: self.net.add_client(),
            sim: self.clone(),
        }
    }

    pub fn history(&self) -> Vec<Logged> {
        self.recorder.borrow().history.clone()
    }

    pub fn server(&self) -> std::cell::Ref<'_, KvServer> {
        self.server.borrow()
    }

    /// A stamp for an event happening now (see the [module documentation](self)).
    fn stamp(&self) -> u64 {
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
                self.recorder.borrow().history.len(),
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

/// A clerk on the simulated network. Calls retry until a reply arrives.
pub struct SimClerk {
    core: RefCell<ClerkCore>,
    end: EndId,
    sim: KvSim,
}

impl SimClerk {
    async fn run(&self, mut call: Call) -> Answer {
        loop {
            let request = call.request().clone();
            if let Some(reply) = self.sim.net.call(self.end, 0, request).await {
                if let Some(answer) = self.core.borrow_mut().finish(&call, reply) {
                    return answer;
                }
            }
        }
    }

    /// Logs `op`, called at stamp `call`, as returning now.
    fn log(&self, client: i64, op: LoggedOp, call: u64) {
        let ret = self.sim.stamp();
        self.sim.recorder.borrow_mut().history.push(Logged {
            client,
            op,
            call,
            ret,
        });
    }

    /// 2024 `Get`: the value, `""` if absent.
    pub async fn get(&self, key: &str) -> String {
        let call = self.core.borrow_mut().get(key);
        match self.run(call).await {
            Answer::Get(Ok((value, _))) => value,
            Answer::Get(Err(_)) => String::new(),
            other => unreachable!("get answered {other:?}"),
        }
    }

    pub async fn put(&self, key: &str, value: &str) {
        let call = self.core.borrow_mut().put(key, value);
        self.run(call).await;
    }

    /// 2024 `Append`: returns the value before it.
    pub async fn append(&self, key: &str, value: &str) -> String {
        let call = self.core.borrow_mut().append(key, value);
        match self.run(call).await {
            Answer::Append(old) => old,
            other => unreachable!("append answered {other:?}"),
        }
    }

    /// 2025 `Get`.
    pub async fn vget(&self, key: &str) -> Result<(String, u64), KvError> {
        let call = self.core.borrow_mut().get(key);
        match self.run(call).await {
            Answer::Get(result) => result,
            other => unreachable!("get answered {other:?}"),
        }
    }

    /// 2025 conditional `Put`.
    pub async fn vput(&self, key: &str, value: &str, version: u64) -> Result<(), KvError> {
        let call = self.core.borrow_mut().put_if_version(key, value, version);
        match self.run(call).await {
            Answer::PutIfVersion(result) => result,
            other => unreachable!("put answered {other:?}"),
        }
    }

    // ---- logged variants, recorded for the linearizability check ----

    pub async fn logged_get(&self, client: i64, key: &str) -> String {
        let call = self.sim.stamp();
        let output = self.get(key).await;
        self.log(
            client,
            LoggedOp::Get {
                key: key.into(),
                output: output.clone(),
            },
            call,
        );
        output
    }

    pub async fn logged_put(&self, client: i64, key: &str, value: &str) {
        let call = self.sim.stamp();
        self.put(key, value).await;
        self.log(
            client,
            LoggedOp::Put {
                key: key.into(),
                value: value.into(),
            },
            call,
        );
    }

    pub async fn logged_append(&self, client: i64, key: &str, value: &str) -> String {
        let call = self.sim.stamp();
        let output = self.append(key, value).await;
        let op = LoggedOp::Append {
            key: key.into(),
            value: value.into(),
            output: output.clone(),
        };
        self.log(client, op, call);
        output
    }

    pub async fn logged_vget(&self, client: i64, key: &str) -> Result<(String, u64), KvError> {
        let call = self.sim.stamp();
        let result = self.vget(key).await;
        let (output, version) = result.clone().unwrap_or_default();
        let op = LoggedOp::VersionedGet {
            key: key.into(),
            output,
            version,
            error: result.as_ref().err().copied(),
        };
        self.log(client, op, call);
        result
    }

    pub async fn logged_vput(
        &self,
        client: i64,
        key: &str,
        value: &str,
        version: u64,
    ) -> Result<(), KvError> {
        let call = self.sim.stamp();
        let result = self.vput(key, value, version).await;
        let op = LoggedOp::VersionedPut {
            key: key.into(),
            value: value.into(),
            version,
            error: result.err(),
        };
        self.log(client, op, call);
        result
    }
}

impl VersionedKv for SimClerk {
    async fn get(&self, key: &str) -> Result<(String, u64), KvError> {
        self.vget(key).await
    }
    async fn put(&self, key: &str, value: &str, version: u64) -> Result<(), KvError> {
        self.vput(key, value, version).await
    }
    async fn pause(&self) {
        sleep(Duration::from_millis(1)).await;
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
