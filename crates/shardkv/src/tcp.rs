//! The sharded store on real machines: a shard group's node over TCP with its data on disk,
//! running the group's [`driver`] beside it ([`serve`]), and a clerk that routes each key to
//! its shard's group ([`TcpShardClerk`]).
//!
//! A configuration names servers by address (`127.0.0.1:7201`): a group joins the
//! controller with its members' addresses, and other groups and clerks reach them there.
//! The real store shards keys with [`Sharding::Fnv12`] (12 shards, by hash), so any key
//! naming spreads over the groups; the controller must be started with 12 shards.
//!
//! Clients (and other groups) speak [`PROTOCOL`] on any node's port: a [`GroupRequest`] or a
//! request for the node's [`GroupStatus`]. The driver runs on every node and works only
//! while the node leads; its calls to the controller and to other groups are bounded by
//! timeouts, so a group whose peer group is down keeps serving its other shards.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use flotilla_kv::tcp::ClerkError;
use flotilla_kv::{Answer, Call, ClerkCore, ClientId, KvError};
use flotilla_rsm::{LeaderCursor, Replied};
use flotilla_runtime::{NodeConfig, NodeReport, NodeView, Replica, RunError};
use flotilla_shardctrler::tcp::TcpCtrlClerk;
use flotilla_shardctrler::{Config, Gid, Sharding};
use flotilla_wire::{Pool, Protocol, DEFAULT_MAX_FRAME};
use serde::{Deserialize, Serialize};
use tracing::debug;

use crate::driver::{self, Links};
use crate::group::{serve as serve_request, GroupAnswer, GroupCommand, GroupRequest, ShardGroup};
use crate::group::{ShardState, Work};

/// The client protocol of a shard group's node.
pub const PROTOCOL: Protocol = Protocol {
    service: "shardkv",
    version: 1,
};

/// How the real store shards keys.
pub const SHARDING: Sharding = Sharding::Fnv12;

/// What a client or another group asks a group's node.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum GroupNodeRequest {
    Group(GroupRequest),
    /// The node's state, answered by any node, leader or not.
    Status,
}

/// A group node's answer.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum GroupNodeReply {
    Group(Replied<GroupAnswer>),
    Status(Box<GroupStatus>),
}

/// What a group's node says about itself: its Raft report and, from its applied state, the
/// group's configuration and shards.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct GroupStatus {
    pub gid: Gid,
    pub node: NodeReport,
    /// The configuration the group is at.
    pub config: u64,
    pub shards: BTreeMap<usize, ShardState>,
    /// Keys held, over every shard held.
    pub keys: usize,
}

/// Runs one node of shard group `gid` until `shutdown` resolves or its storage fails; the
/// group follows the controller whose nodes are `controller`.
pub async fn serve(
    config: NodeConfig,
    gid: Gid,
    controller: Vec<SocketAddr>,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<(), RunError> {
    let driver_task: Arc<Mutex<Option<tokio::task::JoinHandle<()>>>> = Arc::default();
    let slot = driver_task.clone();
    let result = flotilla_runtime::run(
        config,
        ShardGroup::new(gid, SHARDING),
        PROTOCOL,
        move |view: NodeView<ShardGroup>| {
            let links = TcpLinks {
                replica: view.replica.clone(),
                controller: tokio::sync::Mutex::new(TcpCtrlClerk::new(
                    controller,
                    flotilla_kv::tcp::random_client_id(),
                )),
                groups: tokio::sync::Mutex::new(Pool::new(PROTOCOL, DEFAULT_MAX_FRAME)),
            };
            let task = tokio::spawn(async move {
                loop {
                    if !driver::round(&links).await {
                        tokio::time::sleep(driver::ROUND).await;
                    }
                }
            });
            *slot.lock().unwrap_or_else(|e| e.into_inner()) = Some(task);
            move |request: GroupNodeRequest| {
                let view = view.clone();
                async move {
                    match request {
                        GroupNodeRequest::Group(request) => {
                            let write = !matches!(
                                request,
                                GroupRequest::Client(flotilla_kv::Request::Get { .. })
                                    | GroupRequest::Fetch { .. }
                            );
                            let reply = serve_request(&view.replica, request).await;
                            if write && matches!(reply, Replied::Done(_)) {
                                view.count_proposal();
                            }
                            GroupNodeReply::Group(reply)
                        }
                        GroupNodeRequest::Status => {
                            let (config, shards, keys) = view
                                .replica
                                .with_state(|g| (g.config().num, g.shard_states(), g.keys()));
                            GroupNodeReply::Status(Box::new(GroupStatus {
                                gid,
                                node: view.report(),
                                config,
                                shards,
                                keys,
                            }))
                        }
                    }
                }
            }
        },
        shutdown,
    )
    .await;
    if let Some(task) = driver_task.lock().unwrap_or_else(|e| e.into_inner()).take() {
        task.abort();
    }
    result
}

/// Asks the group node at `addr` for its status.
pub async fn status(addr: SocketAddr, timeout: Duration) -> Result<GroupStatus, String> {
    let mut pool = Pool::<GroupNodeRequest, GroupNodeReply>::new(PROTOCOL, DEFAULT_MAX_FRAME);
    match pool.call(addr, &GroupNodeRequest::Status, timeout).await {
        Ok(GroupNodeReply::Status(status)) => Ok(*status),
        Ok(other) => Err(format!("{addr}: {other:?} to a status request")),
        Err(e) => Err(format!("{addr}: {e}")),
    }
}

/// How long one call to another group's server, or to the controller, may take.
const CALL_TIMEOUT: Duration = Duration::from_secs(2);

/// A group node's [`Links`] over TCP.
struct TcpLinks {
    replica: Replica<ShardGroup>,
    controller: tokio::sync::Mutex<TcpCtrlClerk>,
    groups: tokio::sync::Mutex<Pool<GroupNodeRequest, GroupNodeReply>>,
}

impl Links for TcpLinks {
    fn leads(&self) -> bool {
        self.replica.state().1
    }

    fn work(&self) -> Work {
        self.replica.with_state(|g| g.work())
    }

    async fn propose(&self, command: GroupCommand) -> Option<GroupAnswer> {
        self.replica.submit(command).await.ok()
    }

    async fn query(&self, num: u64) -> Option<Config> {
        let mut controller = self.controller.lock().await;
        controller.deadline = CALL_TIMEOUT * 2;
        controller.attempt_timeout = CALL_TIMEOUT;
        match controller.query(Some(num)).await {
            Ok(config) => Some(config),
            Err(e) => {
                debug!("controller query: {e}");
                None
            }
        }
    }

    async fn call_group(
        &self,
        servers: &[String],
        request: GroupRequest,
    ) -> Option<Replied<GroupAnswer>> {
        let request = GroupNodeRequest::Group(request);
        driver::call_each(servers, |name| {
            let request = &request;
            async move {
                let Ok(addr) = name.parse::<SocketAddr>() else {
                    debug!("server {name:?} is no address");
                    return None;
                };
                let mut pool = self.groups.lock().await;
                match pool.call(addr, request, CALL_TIMEOUT).await {
                    Ok(GroupNodeReply::Group(replied)) => Some(replied),
                    Ok(GroupNodeReply::Status(_)) | Err(_) => None,
                }
            }
        })
        .await
    }
}

/// How patient a [`TcpShardClerk`] is.
#[derive(Clone, Copy, Debug)]
pub struct ShardClerkOptions {
    /// One attempt at one server (a write waits for its commit; a leader cut off from its
    /// majority holds it up to the rsm's timeout, 3 s).
    pub attempt_timeout: Duration,
    /// Pause before asking the controller again, after the group the configuration names
    /// turned the request away or could not be reached (the lab's 100 ms).
    pub refresh_pause: Duration,
    /// Give up on one operation after this long.
    pub deadline: Duration,
}

impl Default for ShardClerkOptions {
    fn default() -> Self {
        ShardClerkOptions {
            attempt_timeout: Duration::from_secs(4),
            refresh_pause: Duration::from_millis(100),
            deadline: Duration::from_secs(60),
        }
    }
}

/// A clerk of the sharded store: routes each key to the group its cached configuration
/// gives the key's shard, and asks the controller again when that group says
/// `WrongGroup` or cannot be reached. A write keeps its (client, seq) across groups, and
/// a shard's duplicate table moves with it, so a write resent to the shard's next owner
/// applies once. One operation at a time.
pub struct TcpShardClerk {
    core: ClerkCore,
    controller: TcpCtrlClerk,
    config: Config,
    pool: Pool<GroupNodeRequest, GroupNodeReply>,
    cursors: HashMap<Gid, LeaderCursor>,
    options: ShardClerkOptions,
    /// Attempts beyond the first of each operation (for statistics).
    pub resends: u64,
}

impl TcpShardClerk {
    /// A clerk of the store whose controller nodes are `controller`.
    pub fn new(controller: Vec<SocketAddr>, client: ClientId, options: ShardClerkOptions) -> Self {
        TcpShardClerk {
            core: ClerkCore::new(client),
            controller: TcpCtrlClerk::new(controller, client),
            config: Config::empty(SHARDING.shards()),
            pool: Pool::new(PROTOCOL, DEFAULT_MAX_FRAME),
            cursors: HashMap::new(),
            options,
            resends: 0,
        }
    }

    pub fn id(&self) -> ClientId {
        self.core.id()
    }

    async fn run(&mut self, mut call: Call) -> Result<Answer, ClerkError> {
        let started = Instant::now();
        let mut last = String::from("no configuration gives the key's shard to a group yet");
        let mut first = true;
        while started.elapsed() < self.options.deadline {
            let shard = SHARDING.shard_of(call.peek().key());
            let gid = self.config.owner(shard);
            let servers: Vec<SocketAddr> = self
                .config
                .groups
                .get(&gid)
                .map(|names| names.iter().filter_map(|n| n.parse().ok()).collect())
                .unwrap_or_default();
            if !servers.is_empty() {
                let mut cursor = self
                    .cursors
                    .remove(&gid)
                    .unwrap_or_else(|| LeaderCursor::new(servers.len(), 0));
                for _ in 0..servers.len() {
                    if !first {
                        self.resends += 1;
                    }
                    first = false;
                    let addr = servers[cursor.target() % servers.len()];
                    let request =
                        GroupNodeRequest::Group(GroupRequest::Client(call.request().clone()));
                    match self
                        .pool
                        .call(addr, &request, self.options.attempt_timeout)
                        .await
                    {
                        Ok(GroupNodeReply::Group(Replied::Done(GroupAnswer::Kv(reply)))) => {
                            cursor.answered();
                            self.cursors.insert(gid, cursor);
                            return match self.core.finish(&call, reply) {
                                Some(Answer::TooLarge(too_large)) => {
                                    Err(ClerkError::TooLarge(too_large))
                                }
                                Some(answer) => Ok(answer),
                                None => Err(ClerkError::Refused(format!(
                                    "{addr}: a reply that does not fit the request"
                                ))),
                            };
                        }
                        Ok(GroupNodeReply::Group(Replied::Done(_))) => {
                            last = format!("{addr}: group {gid} does not serve shard {shard}");
                            break;
                        }
                        Ok(GroupNodeReply::Group(Replied::NotApplied { hint })) => {
                            call.refused();
                            last = format!("{addr}: not the leader");
                            cursor.failed(hint);
                        }
                        Ok(GroupNodeReply::Group(Replied::Unknown)) => {
                            last = format!("{addr}: outcome unknown");
                            cursor.failed(None);
                        }
                        Ok(GroupNodeReply::Status(_)) => {
                            last = format!("{addr}: a status reply to a request");
                            cursor.failed(None);
                        }
                        Err(e) => {
                            last = format!("{addr}: {e}");
                            cursor.failed(None);
                        }
                    }
                }
                self.cursors.insert(gid, cursor);
            }
            tokio::time::sleep(self.options.refresh_pause).await;
            match self.controller.query(None).await {
                Ok(latest) if latest.num >= self.config.num => self.config = latest,
                Ok(_) => {}
                Err(e) => last = e.to_string(),
            }
        }
        Err(ClerkError::GaveUp {
            addr: self
                .controller
                .members()
                .first()
                .copied()
                .unwrap_or(([0, 0, 0, 0], 0).into()),
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
            other => Err(ClerkError::Refused(format!("a get answered {other:?}"))),
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
            other => Err(ClerkError::Refused(format!("an append answered {other:?}"))),
        }
    }
}

impl flotilla_kv::bench::BenchClerk for TcpShardClerk {
    async fn get(&mut self, key: &str) -> Result<Option<String>, String> {
        match TcpShardClerk::get(self, key).await {
            Ok(found) => Ok(found.ok().map(|(value, _)| value)),
            Err(e) => Err(e.to_string()),
        }
    }
    async fn put(&mut self, key: &str, value: &str) -> Result<(), String> {
        TcpShardClerk::put(self, key, value)
            .await
            .map_err(|e| e.to_string())
    }
    async fn append(&mut self, key: &str, value: &str) -> Result<String, String> {
        TcpShardClerk::append(self, key, value)
            .await
            .map_err(|e| e.to_string())
    }
    fn resends(&self) -> u64 {
        self.resends
    }
}
