//! What a group's leader does beside serving clerks: follow the controller and move shards.
//! Written once, over [`Links`] (how this replica reaches the controller and other groups),
//! for the simulator and the real runtime alike.
//!
//! Each round (every [`ROUND`]) on a replica that believes it leads:
//! 1. every awaited shard is fetched from its previous owner and installed through the log;
//! 2. every installed shard's previous owner is told to drop it, and the telling recorded;
//! 3. once nothing of the current configuration is unfinished, the next one is asked of
//!    the controller and adopted through the log.
//!
//! A round works on every unfinished shard independently, so a shard whose old owner is
//! down does not hold up the others (2024's challenge 2). Everything it proposes is
//! checked again when applied, so a deposed leader's round is harmless.

use std::future::Future;
use std::time::Duration;

use flotilla_rsm::Replied;
use flotilla_shardctrler::Config;

use crate::group::{GroupAnswer, GroupCommand, GroupRequest, Work};

/// How often a leader looks for work (the lab polls the controller every 100 ms).
pub const ROUND: Duration = Duration::from_millis(100);

/// How a group's replica reaches the world, and its own log.
pub trait Links {
    /// Whether this replica believes it leads its group.
    fn leads(&self) -> bool;
    /// What is unfinished, read from this replica's state.
    fn work(&self) -> Work;
    /// Proposes a command to this group's log; `None` if its outcome is not known.
    fn propose(&self, command: GroupCommand) -> impl Future<Output = Option<GroupAnswer>>;
    /// The controller's configuration `num`, or `None` if it could not be reached.
    fn query(&self, num: u64) -> impl Future<Output = Option<Config>>;
    /// One attempt at each of `servers` in turn until one executes `request`.
    fn call_group(
        &self,
        servers: &[String],
        request: GroupRequest,
    ) -> impl Future<Output = Option<Replied<GroupAnswer>>>;
}

/// [`Links::call_group`] over one attempt at a single server (`None`: no answer): each of
/// `servers` in turn until one executes the request; else the last answer heard, if any.
pub async fn call_each<F, Fut>(servers: &[String], mut call: F) -> Option<Replied<GroupAnswer>>
where
    F: FnMut(String) -> Fut,
    Fut: Future<Output = Option<Replied<GroupAnswer>>>,
{
    let mut last = None;
    for name in servers {
        match call(name.clone()).await {
            Some(Replied::Done(answer)) => return Some(Replied::Done(answer)),
            Some(other) => last = Some(other),
            None => {}
        }
    }
    last
}

/// One round of a leader's work. Returns whether it changed anything.
pub async fn round(links: &impl Links) -> bool {
    if !links.leads() {
        return false;
    }
    let work = links.work();
    let mut changed = false;
    for (shard, _from, servers) in &work.fetch {
        let request = GroupRequest::Fetch {
            num: work.num,
            shard: *shard,
        };
        if let Some(Replied::Done(GroupAnswer::Shard(state))) =
            links.call_group(servers, request).await
        {
            let install = GroupCommand::Install {
                num: work.num,
                shard: *shard,
                state,
            };
            changed |= links.propose(install).await.is_some();
        }
    }
    for (shard, _from, servers) in &work.tell {
        let request = GroupRequest::Delete {
            num: work.num,
            shard: *shard,
        };
        if let Some(Replied::Done(GroupAnswer::Done)) = links.call_group(servers, request).await {
            let confirmed = GroupCommand::Confirmed {
                num: work.num,
                shard: *shard,
            };
            changed |= links.propose(confirmed).await.is_some();
        }
    }
    if work.settled() {
        if let Some(next) = links.query(work.num + 1).await {
            if next.num == work.num + 1 {
                changed |=
                    links.propose(GroupCommand::Adopt(next)).await == Some(GroupAnswer::Done);
            }
        }
    }
    changed
}
