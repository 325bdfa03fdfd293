//! The KV service on the simulator: one server on a labrpc-style [`RpcNetwork`], clerks that
//! retry until a reply arrives, and the [`OpLog`] of every logged operation for the
//! linearizability checker (its stamps are explained in [`crate::history`]). This is the
//! harness of the Lab 2 scenarios in `tests/`.
//!
//! [`SimClerk`] is generic over how a call reaches the service ([`ClerkTransport`]): one
//! server here, a Raft group in `flotilla-kvraft`; its logged operations are the same.

use std::cell::RefCell;
use std::rc::Rc;

use std::time::Duration;

use std::future::Future;

use flotilla_lincheck as lincheck;
use flotilla_sim::net::{Conditions, Payload};
use flotilla_sim::rpc::{ClientId as EndId, RpcNetwork};
use flotilla_sim::sleep;

use crate::clerk::{Answer, Call, ClerkCore};
pub use crate::history::{Logged, LoggedOp, OpLog, STAMPS_PER_NANOSECOND};
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

/// The server, its network and the recorder.
#[derive(Clone)]
pub struct KvSim {
    net: RpcNetwork<Request, Reply>,
    server: Rc<RefCell<KvServer>>,
    log: OpLog,
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
            log: OpLog::new(),
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
        let transport = OneServer {
            end: self.net.add_client(),
            net: self.net.clone(),
        };
        SimClerk::new(transport, self.log.clone())
    }

    pub fn history(&self) -> Vec<Logged> {
        self.log.history()
    }

    /// The logged history's check: see [`OpLog::check`].
    pub fn check(&self, budget: Duration) -> lincheck::CheckResult {
        self.log.check(budget)
    }

    /// See [`OpLog::check_linearizable`].
    pub fn check_linearizable(&self, budget: Duration) {
        self.log.check_linearizable(budget)
    }

    /// See [`OpLog::CHECK_BUDGET`].
    pub const CHECK_BUDGET: Duration = OpLog::CHECK_BUDGET;

    pub fn server(&self) -> std::cell::Ref<'_, KvServer> {
        self.server.borrow()
    }
}

/// How a clerk's call reaches the service and comes back answered: resent (to whichever
/// server) until [`ClerkCore::finish`] accepts a reply.
pub trait ClerkTransport {
    fn run(&self, core: &RefCell<ClerkCore>, call: Call) -> impl Future<Output = Answer>;
}

/// The single server of a [`KvSim`], retried until a reply arrives.
pub struct OneServer {
    end: EndId,
    net: RpcNetwork<Request, Reply>,
}

impl ClerkTransport for OneServer {
    async fn run(&self, core: &RefCell<ClerkCore>, mut call: Call) -> Answer {
        loop {
            let request = call.request().clone();
            if let Some(reply) = self.net.call(self.end, 0, request).await {
                if let Some(answer) = core.borrow_mut().finish(&call, reply) {
                    return answer;
                }
            }
        }
    }
}

impl SimClerk<OneServer> {
    /// Cuts (or restores) this clerk's link to the server: calls fail while it is cut, and
    /// a reply to a call in flight is lost (labrpc's `DisconnectAll` / `ConnectAll`).
    pub fn set_connected(&self, connected: bool) {
        let t = &self.transport;
        t.net.set_client_link(t.end, 0, connected);
    }
}

/// A clerk on the simulated network, logging what it is asked to log into its [`OpLog`].
pub struct SimClerk<T = OneServer> {
    core: RefCell<ClerkCore>,
    transport: T,
    log: OpLog,
}

impl<T: ClerkTransport> SimClerk<T> {
    /// A clerk with a random id (drawn from the simulation's RNG).
    pub fn new(transport: T, log: OpLog) -> Self {
        let id = flotilla_sim::with_rng(|r| r.next_u64());
        SimClerk {
            core: RefCell::new(ClerkCore::new(id)),
            transport,
            log,
        }
    }

    pub fn transport(&self) -> &T {
        &self.transport
    }

    async fn run(&self, call: Call) -> Answer {
        self.transport.run(&self.core, call).await
    }

    fn log(&self, client: i64, op: LoggedOp, call: u64) {
        self.log.log(client, op, call);
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
        let call = self.log.stamp();
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
        let call = self.log.stamp();
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
        let call = self.log.stamp();
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
        let call = self.log.stamp();
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
        let call = self.log.stamp();
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

impl<T: ClerkTransport> VersionedKv for SimClerk<T> {
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
