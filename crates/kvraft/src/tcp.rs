//! The replicated KV service on real machines: a node of the cluster over TCP with its data
//! on disk ([`serve`], on [`flotilla_runtime`]), and a clerk that finds the leader and
//! retries through failovers ([`ClusterClerk`]).
//!
//! Clients speak [`PROTOCOL`] on any node's port: [`NodeRequest`] in (a KV request, or a
//! request for the node's [`NodeReport`]), [`NodeReply`] out. A node that does not lead answers `NotApplied` with the leader it
//! knows of; the clerk follows the hint, goes round the members otherwise, and pauses
//! after a whole round failed. A write whose outcome is unknown is resent under the same
//! sequence number, which the replicated sessions run at most once.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use flotilla_kv::tcp::ClerkError;
use flotilla_kv::{Answer, Call, ClerkCore, ClientId, KvError, Request};
use flotilla_runtime::{NodeConfig, NodeReport, NodeView, RunError};
use flotilla_wire::{Client, Protocol, WireError, DEFAULT_MAX_FRAME};
use serde::{Deserialize, Serialize};

use crate::etcd::{EtcdAnswer, EtcdConfig, EtcdRequest, ReplicaBackend};
use crate::service::{self, KvStore, ServerReply};
use flotilla_rsm::{LeaderCursor, Replied};
use std::sync::Arc;

/// The client protocol of a KV-on-Raft node.
pub const PROTOCOL: Protocol = Protocol {
    service: "kvraft",
    version: 4,
};

/// What a client asks a node.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum NodeRequest {
    Kv(Request),
    /// The node's state ([`NodeReport`]), answered by any node, leader or not.
    Status,
    /// Requests of the etcd API, handed to the leader by another node in one batch
    /// ([`crate::forward`]); answered in one [`NodeReply::Etcd`], in the same order.
    Etcd(Vec<EtcdRequest>),
}

/// A node's answer.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum NodeReply {
    Kv(ServerReply),
    Status(Box<NodeReport>),
    Etcd(Vec<Replied<EtcdAnswer>>),
}

/// Asks the node at `addr` for its report.
pub async fn status(addr: SocketAddr, timeout: Duration) -> Result<NodeReport, WireError> {
    let asked = async {
        let mut client =
            Client::<NodeRequest, NodeReply>::connect(addr, PROTOCOL, DEFAULT_MAX_FRAME).await?;
        match client.call(&NodeRequest::Status, timeout).await? {
            NodeReply::Status(report) => Ok(*report),
            other => Err(WireError::Decode(format!(
                "{other:?} in reply to a status request"
            ))),
        }
    };
    tokio::time::timeout(timeout, asked)
        .await
        .unwrap_or(Err(WireError::Timeout(timeout)))
}

/// Where a node serves etcd's v3 API (gRPC), and where the others do.
#[derive(Clone, Debug)]
pub struct GrpcConfig {
    pub addr: SocketAddr,
    pub etcd: EtcdConfig,
}

/// Runs one node of the replicated store until `shutdown` resolves or its storage fails;
/// with `grpc`, it serves etcd's v3 API there too. Every node, serving gRPC or not, answers
/// the etcd requests other nodes forward to it as leader, and as leader expires leases.
pub async fn serve(
    config: NodeConfig,
    grpc: Option<GrpcConfig>,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<(), RunError> {
    let id = config.id;
    let grpc_listener = match &grpc {
        None => None,
        Some(g) => Some(
            tokio::net::TcpListener::bind(g.addr)
                .await
                .map_err(|source| RunError::Listen {
                    id,
                    addr: g.addr,
                    source,
                })?,
        ),
    };
    let etcd_config = grpc.map(|g| g.etcd).unwrap_or_default();
    let name = config.cluster.name.clone();
    let members = config.cluster.members.clone();
    let (stop_tx, stop) = tokio::sync::watch::channel(false);
    let stopped = move || {
        let mut stop = stop.clone();
        async move {
            let _ = stop.wait_for(|s| *s).await;
        }
    };
    let stop_on_shutdown = stop_tx.clone();
    let tasks = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let spawned = tasks.clone();
    let result = flotilla_runtime::run(
        config,
        KvStore::new(),
        PROTOCOL,
        move |view: NodeView<KvStore>| {
            let backend = Arc::new(ReplicaBackend::new(
                view.clone(),
                &name,
                id,
                members,
                etcd_config,
            ));
            let mut spawned = spawned.lock().expect("not poisoned");
            spawned.push(tokio::spawn(backend.clone().expire_leases(stopped())));
            if let Some(listener) = grpc_listener {
                let serving = flotilla_etcd::serve(listener, backend.clone(), stopped());
                spawned.push(tokio::spawn(async move {
                    if let Err(e) = serving.await {
                        tracing::error!(error = %e, "the etcd API stopped");
                    }
                }));
            }
            move |request: NodeRequest| {
                let view = view.clone();
                let backend = backend.clone();
                async move {
                    match request {
                        NodeRequest::Kv(request) => {
                            let write = !matches!(request, Request::Get { .. });
                            let reply = service::serve(&view.replica, request).await;
                            if write && !matches!(reply, ServerReply::NotApplied { .. }) {
                                view.count_proposal();
                            }
                            NodeReply::Kv(reply)
                        }
                        NodeRequest::Status => NodeReply::Status(Box::new(view.report())),
                        NodeRequest::Etcd(requests) => {
                            NodeReply::Etcd(backend.serve_batch(requests).await)
                        }
                    }
                }
            }
        },
        async move {
            shutdown.await;
            let _ = stop_on_shutdown.send(true);
        },
    )
    .await;
    let _ = stop_tx.send(true);
    let tasks: Vec<_> = std::mem::take(&mut *tasks.lock().expect("not poisoned"));
    for task in tasks {
        // The gRPC server finishes the calls in progress; bounded, then cut.
        let abort = task.abort_handle();
        if tokio::time::timeout(Duration::from_secs(2), task)
            .await
            .is_err()
        {
            abort.abort();
        }
    }
    result
}

/// How patient a [`ClusterClerk`] is.
#[derive(Clone, Copy, Debug)]
pub struct ClusterClerkOptions {
    /// Wait this long for a connection or one reply before trying elsewhere. A node that
    /// leads answers a write once it is committed; one cut off from its majority may hold
    /// it until the rsm's timeout (3 s), so this is longer.
    pub attempt_timeout: Duration,
    /// Pause after a whole round of members failed (an election is going on).
    pub round_pause: Duration,
    /// Give up on one operation after this long.
    pub deadline: Duration,
}

impl Default for ClusterClerkOptions {
    fn default() -> Self {
        ClusterClerkOptions {
            attempt_timeout: Duration::from_secs(4),
            round_pause: Duration::from_millis(50),
            deadline: Duration::from_secs(60),
        }
    }
}

/// A clerk of a cluster of KV-on-Raft nodes. One operation at a time.
pub struct ClusterClerk {
    core: ClerkCore,
    members: Vec<SocketAddr>,
    connections: Vec<Option<Client<NodeRequest, NodeReply>>>,
    cursor: LeaderCursor,
    options: ClusterClerkOptions,
    /// Attempts that went to a node other than the first one tried (for statistics).
    pub redirects: u64,
}

impl ClusterClerk {
    /// A clerk for `members` (no connection is opened until the first operation).
    pub fn new(members: Vec<SocketAddr>, client: ClientId, options: ClusterClerkOptions) -> Self {
        let n = members.len();
        ClusterClerk {
            core: ClerkCore::new(client),
            connections: (0..n).map(|_| None).collect(),
            cursor: LeaderCursor::new(n, (client as usize) % n.max(1)),
            members,
            options,
            redirects: 0,
        }
    }

    pub fn id(&self) -> ClientId {
        self.core.id()
    }

    /// The member the clerk would ask now (its guess of the leader).
    pub fn leader_guess(&self) -> SocketAddr {
        self.members[self.cursor.target()]
    }

    async fn attempt(&mut self, call: &mut Call) -> Result<ServerReply, String> {
        let to = self.cursor.target();
        let timeout = self.options.attempt_timeout;
        if self.connections[to].as_ref().is_none_or(|c| !c.is_usable()) {
            let connect = Client::connect(self.members[to], PROTOCOL, DEFAULT_MAX_FRAME);
            match tokio::time::timeout(timeout, connect).await {
                Ok(Ok(client)) => self.connections[to] = Some(client),
                Ok(Err(e)) => return Err(format!("{}: {e}", self.members[to])),
                Err(_) => return Err(format!("{}: connect timed out", self.members[to])),
            }
        }
        let connection = self.connections[to].as_mut().expect("connected above");
        let request = NodeRequest::Kv(call.request().clone());
        match connection.call(&request, timeout).await {
            Ok(NodeReply::Kv(reply)) => Ok(reply),
            Ok(other) => Err(format!(
                "{}: {other:?} in reply to a KV request",
                self.members[to]
            )),
            Err(e) => Err(format!("{}: {e}", self.members[to])),
        }
    }

    async fn run(&mut self, mut call: Call) -> Result<Answer, ClerkError> {
        let started = Instant::now();
        let mut last = String::from("none");
        while started.elapsed() < self.options.deadline {
            let pause = match self.attempt(&mut call).await {
                Ok(ServerReply::Done(reply)) => {
                    self.cursor.answered();
                    match self.core.finish(&call, reply) {
                        Some(Answer::TooLarge(too_large)) => {
                            return Err(ClerkError::TooLarge(too_large))
                        }
                        Some(answer) => return Ok(answer),
                        None => {
                            last = "a reply that does not fit the request".into();
                            self.cursor.failed(None)
                        }
                    }
                }
                Ok(ServerReply::NotApplied { hint }) => {
                    call.refused();
                    last = "not the leader".into();
                    self.redirects += 1;
                    self.cursor.failed(hint)
                }
                Ok(ServerReply::Unknown) => {
                    last = "outcome unknown (no commit in time)".into();
                    self.cursor.failed(None)
                }
                Err(e) => {
                    last = e;
                    self.redirects += 1;
                    self.cursor.failed(None)
                }
            };
            if pause {
                tokio::time::sleep(self.options.round_pause).await;
            }
        }
        Err(ClerkError::GaveUp {
            addr: self.leader_guess(),
            waited: started.elapsed(),
            attempts: call.attempts(),
            last,
        })
    }

    /// The value and version of `key`, or `NoKey`.
    pub async fn get(&mut self, key: &str) -> Result<Result<(String, u64), KvError>, ClerkError> {
        let call = self.core.get(key);
        match self.run(call).await? {
            Answer::Get(result) => Ok(result),
            other => unreachable!("get answered {other:?}"),
        }
    }

    pub async fn put(&mut self, key: &str, value: &str) -> Result<(), ClerkError> {
        let call = self.core.put(key, value);
        self.run(call).await.map(|_| ())
    }

    /// Appends and returns the value before.
    pub async fn append(&mut self, key: &str, value: &str) -> Result<String, ClerkError> {
        let call = self.core.append(key, value);
        match self.run(call).await? {
            Answer::Append(old) => Ok(old),
            other => unreachable!("append answered {other:?}"),
        }
    }
}

impl flotilla_kv::bench::BenchClerk for ClusterClerk {
    async fn get(&mut self, key: &str) -> Result<Option<String>, String> {
        match ClusterClerk::get(self, key).await {
            Ok(found) => Ok(found.ok().map(|(value, _)| value)),
            Err(e) => Err(e.to_string()),
        }
    }
    async fn put(&mut self, key: &str, value: &str) -> Result<(), String> {
        ClusterClerk::put(self, key, value)
            .await
            .map_err(|e| e.to_string())
    }
    async fn append(&mut self, key: &str, value: &str) -> Result<String, String> {
        ClusterClerk::append(self, key, value)
            .await
            .map_err(|e| e.to_string())
    }
    fn resends(&self) -> u64 {
        self.redirects
    }
}
