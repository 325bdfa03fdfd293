//! The shard controller on real machines: a controller node over TCP with its data on disk
//! ([`serve`], on [`flotilla_runtime`]), and a clerk that finds the leader and retries
//! through failovers ([`TcpCtrlClerk`]).
//!
//! Clients speak [`PROTOCOL`] on any node's port: a [`CtrlRequest`] (a change, or a query)
//! or a request for the node's [`NodeReport`]. A node that does not lead answers
//! `NotApplied` with the leader it knows of; the clerk follows the hint, goes round the
//! members otherwise, and pauses after a whole round failed. A change whose outcome is
//! unknown is resent under the same (client, seq), which the controller applies once.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use flotilla_rsm::{LeaderCursor, Replied};
use flotilla_runtime::{NodeConfig, NodeReport, NodeView, RunError};
use flotilla_wire::{Pool, Protocol, DEFAULT_MAX_FRAME};
use serde::{Deserialize, Serialize};

use crate::config::{Config, Gid};
use crate::ctrler::{
    self, Change, ChangeCommand, ChangeResult, Controller, CtrlAnswer, CtrlRequest,
};

/// The client protocol of a controller node.
pub const PROTOCOL: Protocol = Protocol {
    service: "shardctrler",
    version: 1,
};

/// What a client asks a controller node.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum CtrlNodeRequest {
    Ctrl(CtrlRequest),
    /// The node's state, answered by any node, leader or not.
    Status,
}

/// A controller node's answer.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum CtrlNodeReply {
    Ctrl(Replied<CtrlAnswer>),
    Status(Box<NodeReport>),
}

/// Runs one controller node of `shards` shards until `shutdown` resolves or its storage
/// fails.
pub async fn serve(
    config: NodeConfig,
    shards: usize,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<(), RunError> {
    flotilla_runtime::run(
        config,
        Controller::new(shards),
        PROTOCOL,
        |view: NodeView<Controller>| {
            move |request: CtrlNodeRequest| {
                let view = view.clone();
                async move {
                    match request {
                        CtrlNodeRequest::Ctrl(request) => {
                            let change = matches!(request, CtrlRequest::Change(_));
                            let reply = ctrler::serve(&view.replica, request).await;
                            if change && matches!(reply, Replied::Done(_)) {
                                view.count_proposal();
                            }
                            CtrlNodeReply::Ctrl(reply)
                        }
                        CtrlNodeRequest::Status => CtrlNodeReply::Status(Box::new(view.report())),
                    }
                }
            }
        },
        shutdown,
    )
    .await
}

/// Asks the controller node at `addr` for its report.
pub async fn status(addr: SocketAddr, timeout: Duration) -> Result<NodeReport, String> {
    let mut pool = Pool::<CtrlNodeRequest, CtrlNodeReply>::new(PROTOCOL, DEFAULT_MAX_FRAME);
    match pool.call(addr, &CtrlNodeRequest::Status, timeout).await {
        Ok(CtrlNodeReply::Status(report)) => Ok(*report),
        Ok(other) => Err(format!("{addr}: {other:?} to a status request")),
        Err(e) => Err(format!("{addr}: {e}")),
    }
}

/// Why a [`TcpCtrlClerk`] gave up.
#[derive(Debug, thiserror::Error)]
#[error("no controller node answered within {waited:?} ({attempts} attempts; last: {last})")]
pub struct CtrlUnreachable {
    pub waited: Duration,
    pub attempts: u64,
    pub last: String,
}

/// [`TcpCtrlClerk::new`] was given no controller nodes.
#[derive(Debug, thiserror::Error)]
#[error("a controller clerk needs at least one controller node; none was given")]
pub struct NoMembers;

/// A clerk of a controller cluster. One operation at a time.
pub struct TcpCtrlClerk {
    id: u64,
    seq: u64,
    members: Vec<SocketAddr>,
    pool: Pool<CtrlNodeRequest, CtrlNodeReply>,
    cursor: LeaderCursor,
    /// One attempt's bound (a leader cut off from its majority holds a change up to the
    /// rsm's timeout, 3 s).
    pub attempt_timeout: Duration,
    /// Give up on one operation after this long.
    pub deadline: Duration,
}

impl TcpCtrlClerk {
    /// A clerk of the controller nodes `members`, as client `id` (unique among the
    /// controller's clerks: it keys the exactly-once table). `members` must not be empty.
    pub fn new(members: Vec<SocketAddr>, id: u64) -> Result<Self, NoMembers> {
        let n = members.len();
        if n == 0 {
            return Err(NoMembers);
        }
        Ok(TcpCtrlClerk {
            id,
            seq: 0,
            cursor: LeaderCursor::new(n, (id % n as u64) as usize),
            members,
            pool: Pool::new(PROTOCOL, DEFAULT_MAX_FRAME),
            attempt_timeout: Duration::from_secs(4),
            deadline: Duration::from_secs(30),
        })
    }

    pub fn members(&self) -> &[SocketAddr] {
        &self.members
    }

    async fn call(&mut self, request: CtrlRequest) -> Result<CtrlAnswer, CtrlUnreachable> {
        let started = Instant::now();
        let request = CtrlNodeRequest::Ctrl(request);
        let mut attempts = 0;
        let mut last = String::from("none");
        while started.elapsed() < self.deadline {
            attempts += 1;
            let to = self.cursor.target();
            let addr = self.members[to];
            let pause = match self.pool.call(addr, &request, self.attempt_timeout).await {
                Ok(CtrlNodeReply::Ctrl(Replied::Done(answer))) => {
                    self.cursor.answered();
                    return Ok(answer);
                }
                Ok(CtrlNodeReply::Ctrl(Replied::NotApplied { hint })) => {
                    last = format!("{addr}: not the leader");
                    self.cursor.failed(hint)
                }
                Ok(CtrlNodeReply::Ctrl(Replied::Unknown)) => {
                    last = format!("{addr}: outcome unknown");
                    self.cursor.failed(None)
                }
                Ok(CtrlNodeReply::Status(_)) => {
                    last = format!("{addr}: a status reply to a controller request");
                    self.cursor.failed(None)
                }
                Err(e) => {
                    last = format!("{addr}: {e}");
                    self.cursor.failed(None)
                }
            };
            if pause {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
        Err(CtrlUnreachable {
            waited: started.elapsed(),
            attempts,
            last,
        })
    }

    async fn change(&mut self, change: Change) -> Result<ChangeResult, CtrlUnreachable> {
        self.seq += 1;
        let command = ChangeCommand {
            client: self.id,
            seq: self.seq,
            change,
        };
        match self.call(CtrlRequest::Change(command)).await? {
            CtrlAnswer::Changed(result) => Ok(result),
            CtrlAnswer::Config(_) => Err(CtrlUnreachable {
                waited: Duration::ZERO,
                attempts: 1,
                last: "a configuration in answer to a change".into(),
            }),
        }
    }

    /// `Join`: the new configuration's number, or why there is none.
    pub async fn join(
        &mut self,
        groups: BTreeMap<Gid, Vec<String>>,
    ) -> Result<ChangeResult, CtrlUnreachable> {
        self.change(Change::Join(groups)).await
    }

    pub async fn leave(&mut self, gids: Vec<Gid>) -> Result<ChangeResult, CtrlUnreachable> {
        self.change(Change::Leave(gids)).await
    }

    pub async fn move_shard(
        &mut self,
        shard: usize,
        gid: Gid,
    ) -> Result<ChangeResult, CtrlUnreachable> {
        self.change(Change::Move { shard, gid }).await
    }

    /// `Query(num)`; `None` for the latest.
    pub async fn query(&mut self, num: Option<u64>) -> Result<Config, CtrlUnreachable> {
        match self.call(CtrlRequest::Query(num)).await? {
            CtrlAnswer::Config(config) => Ok(config),
            CtrlAnswer::Changed(_) => Err(CtrlUnreachable {
                waited: Duration::ZERO,
                attempts: 1,
                last: "a change result in answer to a query".into(),
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_clerk_of_no_controller_nodes_is_an_error_not_a_panic() {
        assert!(TcpCtrlClerk::new(vec![], 7).is_err());
        let one = TcpCtrlClerk::new(vec![([127, 0, 0, 1], 1).into()], u64::MAX).unwrap();
        assert_eq!(one.members().len(), 1);
    }
}
