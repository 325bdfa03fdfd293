//! The KV service on the simulator: one server on a labrpc-style [`RpcNetwork`], clerks that
//! retry until a reply arrives, and a recorder of every logged operation for the
//! linearizability checker. This is the harness of the Lab 2 scenarios in `tests/`.

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

/// One completed clerk operation, as the tester logs it (times in virtual nanoseconds).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Logged {
    pub client: i64,
    pub op: LoggedOp,
    pub call: u64,
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

/// The server, its network and the history log.
#[derive(Clone)]
pub struct KvSim {
    net: RpcNetwork<Request, Reply>,
    server: Rc<RefCell<KvServer>>,
    history: Rc<RefCell<Vec<Logged>>>,
}

impl KvSim {
    /// Starts the server (on a reliable network, then sets `reliable`). Every message takes
    /// 50–200 µs, so time moves even on a reliable network and busy clients interleave.
    pub fn new(reliable: bool) -> Self {
        let net = RpcNetwork::new(1);
        net.set_conditions(Conditions {
            latency: (Duration::from_micros(50), Duration::from_micros(200)),
            ..Conditions::default()
        });
        let server = Rc::new(RefCell::new(KvServer::new()));
        let handler_server = server.clone();
        net.attach(0, move |req| handler_server.borrow_mut().handle(req));
        net.set_reliable(reliable);
        KvSim {
            net,
            server,
            history: Rc::new(RefCell::new(Vec::new())),
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
        self.history.borrow().clone()
    }

    pub fn server(&self) -> std::cell::Ref<'_, KvServer> {
        self.server.borrow()
    }

    /// Checks the logged history for linearizability (2024 or 2025 model, whichever the log
    /// holds) within `budget` of wall time. Fails the test with the checker's explanation if
    /// it is not; a check that runs out of budget passes with a note, as in the lab. When the
    /// verdict is not "linearizable", the history is written as JSON Lines to a temporary file
    /// (named in the message) for `flotilla check`.
    pub fn check_linearizable(&self, budget: std::time::Duration) {
        let history = self.history.borrow();
        let (result, records): (_, Vec<HistoryRecord>) =
            if history.iter().all(|l| l.op.is_versioned()) {
                let ops: Vec<_> = history.iter().map(Logged::versioned).collect();
                let result = lincheck::check(&lincheck::models::VersionedKvModel, &ops, budget);
                (result, ops.iter().map(HistoryRecord::from).collect())
            } else {
                let ops: Vec<_> = history.iter().map(Logged::plain).collect();
                let result = lincheck::check(&lincheck::models::KvModel, &ops, budget);
                (result, ops.iter().map(HistoryRecord::from).collect())
            };
        let save = || {
            let path = std::env::temp_dir().join(format!(
                "flotilla-history-{:016x}.jsonl",
                flotilla_sim::trace_hash().0
            ));
            match std::fs::File::create(&path)
                .and_then(|f| write_history(std::io::BufWriter::new(f), &records))
            {
                Ok(()) => format!("history written to {}", path.display()),
                Err(e) => format!("could not write the history to {}: {e}", path.display()),
            }
        };
        match result {
            lincheck::CheckResult::Ok => {}
            lincheck::CheckResult::Unknown => println!(
                "info: linearizability check timed out, assuming history is ok ({} operations; {})",
                history.len(),
                save()
            ),
            lincheck::CheckResult::Illegal(explanation) => {
                panic!("history is not linearizable ({}):\n{explanation}", save())
            }
        }
    }
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

fn nanos() -> u64 {
    now().as_nanos() as u64
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

    fn log(&self, client: i64, op: LoggedOp, call: u64) {
        self.sim.history.borrow_mut().push(Logged {
            client,
            op,
            call,
            ret: nanos(),
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
        let t = nanos();
        let output = self.get(key).await;
        self.log(
            client,
            LoggedOp::Get {
                key: key.into(),
                output: output.clone(),
            },
            t,
        );
        output
    }

    pub async fn logged_put(&self, client: i64, key: &str, value: &str) {
        let t = nanos();
        self.put(key, value).await;
        self.log(
            client,
            LoggedOp::Put {
                key: key.into(),
                value: value.into(),
            },
            t,
        );
    }

    pub async fn logged_append(&self, client: i64, key: &str, value: &str) -> String {
        let t = nanos();
        let output = self.append(key, value).await;
        let op = LoggedOp::Append {
            key: key.into(),
            value: value.into(),
            output: output.clone(),
        };
        self.log(client, op, t);
        output
    }

    pub async fn logged_vget(&self, client: i64, key: &str) -> Result<(String, u64), KvError> {
        let t = nanos();
        let result = self.vget(key).await;
        let (output, version) = result.clone().unwrap_or_default();
        let op = LoggedOp::VersionedGet {
            key: key.into(),
            output,
            version,
            error: result.as_ref().err().copied(),
        };
        self.log(client, op, t);
        result
    }

    pub async fn logged_vput(
        &self,
        client: i64,
        key: &str,
        value: &str,
        version: u64,
    ) -> Result<(), KvError> {
        let t = nanos();
        let result = self.vput(key, value, version).await;
        let op = LoggedOp::VersionedPut {
            key: key.into(),
            value: value.into(),
            version,
            error: result.err(),
        };
        self.log(client, op, t);
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
