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
use flotilla_shardctrler::tcp::{NoMembers, TcpCtrlClerk};
use flotilla_shardctrler::{Config, Gid, Sharding};
use flotilla_wire::{Pool, Protocol, SharedPool, DEFAULT_MAX_FRAME};
use serde::{Deserialize, Serialize};
use tracing::{debug, error};

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
    let controller =
        TcpCtrlClerk::new(controller, flotilla_kv::tcp::random_client_id()).map_err(|e| {
            RunError::Config {
                id: config.id,
                detail: e.to_string(),
            }
        })?;
    let driver_task: Arc<Mutex<Option<tokio::task::JoinHandle<()>>>> = Arc::default();
    let slot = driver_task.clone();
    let result = flotilla_runtime::run(
        config,
        ShardGroup::new(gid, SHARDING),
        PROTOCOL,
        move |view: NodeView<ShardGroup>| {
            let links = TcpLinks {
                replica: view.replica.clone(),
                controller: tokio::sync::Mutex::new(controller),
                groups: group_pool(),
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

/// How long one call to another group's server, or to the controller, may take (for a
/// fetch: until its reply starts to arrive; see [`FETCH_PER_MIB`]).
const CALL_TIMEOUT: Duration = Duration::from_secs(2);

/// What a shard's transfer may take beyond [`CALL_TIMEOUT`], per MiB of the fetch's reply
/// (no slower than 2 MiB/s): a 64 MiB shard, the largest a frame holds, gets 32 s more.
const FETCH_PER_MIB: Duration = Duration::from_millis(500);

/// Idle connections a group node keeps to each server of another group (a round has at
/// most one call per shard in flight).
const IDLE_PER_SERVER: usize = 4;

fn group_pool() -> SharedPool<GroupNodeRequest, GroupNodeReply> {
    SharedPool::new(PROTOCOL, DEFAULT_MAX_FRAME, IDLE_PER_SERVER)
}

/// Asks `controller` for configuration `num` (the latest for `None`) within `deadline`,
/// and checks that it is one this store can use ([`Config::validate_for`] its shards): a
/// configuration from another process is never indexed or adopted unchecked.
async fn query_controller(
    controller: &mut TcpCtrlClerk,
    num: Option<u64>,
    deadline: Duration,
    attempt_timeout: Duration,
) -> Result<Config, String> {
    controller.deadline = deadline;
    controller.attempt_timeout = attempt_timeout.min(deadline);
    let config = controller.query(num).await.map_err(|e| e.to_string())?;
    if let Err(e) = config.validate_for(SHARDING.shards()) {
        let e = format!("the controller's answer is no usable configuration: {e}");
        error!("{e}");
        return Err(e);
    }
    Ok(config)
}

/// [`Links::call_group`] over TCP: each of `servers` in turn until one executes `request`.
/// A fetch's reply (a whole shard) gets time for its size ([`FETCH_PER_MIB`]).
async fn call_group_over(
    pool: &SharedPool<GroupNodeRequest, GroupNodeReply>,
    servers: &[String],
    request: GroupRequest,
) -> Option<Replied<GroupAnswer>> {
    let fetch = matches!(request, GroupRequest::Fetch { .. });
    let request = GroupNodeRequest::Group(request);
    driver::call_each(servers, |name| {
        let request = &request;
        async move {
            let Ok(addr) = name.parse::<SocketAddr>() else {
                debug!("server {name:?} is no address");
                return None;
            };
            let reply = if fetch {
                pool.call_sized(addr, request, CALL_TIMEOUT, FETCH_PER_MIB)
                    .await
            } else {
                pool.call(addr, request, CALL_TIMEOUT).await
            };
            match reply {
                Ok(GroupNodeReply::Group(replied)) => Some(replied),
                Ok(GroupNodeReply::Status(_)) => None,
                Err(e) => {
                    debug!("{addr}: {e}");
                    None
                }
            }
        }
    })
    .await
}

/// A group node's [`Links`] over TCP.
struct TcpLinks {
    replica: Replica<ShardGroup>,
    controller: tokio::sync::Mutex<TcpCtrlClerk>,
    /// Shared by the round's calls, which run at once.
    groups: SharedPool<GroupNodeRequest, GroupNodeReply>,
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
        match query_controller(&mut controller, Some(num), CALL_TIMEOUT * 2, CALL_TIMEOUT).await {
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
        call_group_over(&self.groups, servers, request).await
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
    /// A clerk of the store whose controller nodes are `controller` (at least one).
    pub fn new(
        controller: Vec<SocketAddr>,
        client: ClientId,
        options: ShardClerkOptions,
    ) -> Result<Self, NoMembers> {
        Ok(TcpShardClerk {
            core: ClerkCore::new(client),
            controller: TcpCtrlClerk::new(controller, client)?,
            config: Config::empty(SHARDING.shards()),
            pool: Pool::new(PROTOCOL, DEFAULT_MAX_FRAME),
            cursors: HashMap::new(),
            options,
            resends: 0,
        })
    }

    pub fn id(&self) -> ClientId {
        self.core.id()
    }

    async fn run(&mut self, mut call: Call) -> Result<Answer, ClerkError> {
        let started = Instant::now();
        let mut last = String::from("no configuration gives the key's shard to a group yet");
        let mut first = true;
        // Everything below, controller queries included, within the deadline.
        let deadline = self.options.deadline;
        let left = move || deadline.saturating_sub(started.elapsed());
        while !left().is_zero() {
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
                    let attempt = self.options.attempt_timeout.min(left());
                    if attempt.is_zero() {
                        break;
                    }
                    if !first {
                        self.resends += 1;
                    }
                    first = false;
                    let addr = servers[cursor.target() % servers.len()];
                    let request =
                        GroupNodeRequest::Group(GroupRequest::Client(call.request().clone()));
                    match self.pool.call(addr, &request, attempt).await {
                        Ok(GroupNodeReply::Group(Replied::Done(GroupAnswer::Kv(reply)))) => {
                            match self.core.finish(&call, reply) {
                                Some(answer) => {
                                    cursor.answered();
                                    self.cursors.insert(gid, cursor);
                                    return match answer {
                                        Answer::TooLarge(too_large) => {
                                            Err(ClerkError::TooLarge(too_large))
                                        }
                                        answer => Ok(answer),
                                    };
                                }
                                // A stale duplicate's reply, or a confused server: resend
                                // (as the other clerks do), up to the deadline.
                                None => {
                                    last = format!("{addr}: a reply that does not fit the request");
                                    cursor.failed(None);
                                }
                            }
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
            tokio::time::sleep(self.options.refresh_pause.min(left())).await;
            let remaining = left();
            if remaining.is_zero() {
                break;
            }
            let query = query_controller(
                &mut self.controller,
                None,
                remaining,
                self.options.attempt_timeout,
            );
            match query.await {
                Ok(latest) if latest.num >= self.config.num => self.config = latest,
                Ok(_) => {}
                Err(e) => last = e,
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

#[cfg(test)]
mod tests;
