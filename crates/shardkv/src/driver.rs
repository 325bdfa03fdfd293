//! What a group's leader does beside serving clerks: follow the controller and move shards.
//! Written once, over [`Links`] (how this replica reaches the controller and other groups),
//! for the simulator and the real runtime alike.
//!
//! Each round (every [`ROUND`], at once again after a round that made progress) on a
//! replica that believes it leads:
//! 1. every awaited shard is fetched from its previous owner and installed through the log,
//!    and every installed shard's previous owner is told to drop it and the telling
//!    recorded, all these shards at once;
//! 2. once nothing of the current configuration is unfinished, the next one is asked of
//!    the controller and adopted through the log.
//!
//! A round works on every unfinished shard independently and concurrently, so a shard
//! whose old owner is down, or whose transfer is large, does not hold up the others (2024's
//! challenge 2). Only a command that took effect counts as progress. Everything it proposes is
//! checked again when applied, so a deposed leader's round is harmless.

use std::future::Future;
use std::pin::Pin;
use std::task::Poll;
use std::time::Duration;

use flotilla_kv::KvServer;
use flotilla_rsm::Replied;
use flotilla_shardctrler::Config;
use tracing::{debug, error};

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

/// Runs `futures` at once on the current task and waits for all of them; their outputs in
/// order. (The round's shards are few — at most one future per shard — and the driver runs
/// on the simulator's executor as on tokio's, so this is a plain poll of each in turn.)
pub async fn join_all<F: Future>(futures: Vec<F>) -> Vec<F::Output> {
    let mut futures: Vec<Pin<Box<F>>> = futures.into_iter().map(Box::pin).collect();
    let mut outputs: Vec<Option<F::Output>> = futures.iter().map(|_| None).collect();
    std::future::poll_fn(|cx| {
        let mut pending = false;
        for (future, output) in futures.iter_mut().zip(outputs.iter_mut()) {
            if output.is_none() {
                match future.as_mut().poll(cx) {
                    Poll::Ready(value) => *output = Some(value),
                    Poll::Pending => pending = true,
                }
            }
        }
        if pending {
            Poll::Pending
        } else {
            Poll::Ready(())
        }
    })
    .await;
    outputs
        .into_iter()
        .map(|o| o.expect("every future finished"))
        .collect()
}

/// Fetches `shard` of configuration `num` from its previous owner's `servers` and installs
/// it. Progress only if the install took effect: a shard state that does not restore is
/// never proposed (it would be refused when applied, and fetched and proposed again every
/// round, each time with all its bytes in the log), and a refused or unknown install is no
/// progress, so the caller backs off a round before trying again.
async fn fetch_and_install(links: &impl Links, num: u64, shard: usize, servers: &[String]) -> bool {
    let request = GroupRequest::Fetch { num, shard };
    let Some(Replied::Done(GroupAnswer::Shard(state))) = links.call_group(servers, request).await
    else {
        return false;
    };
    if let Err(e) = KvServer::new().restore(&state) {
        error!("shard {shard} of configuration {num} from {servers:?} does not restore: {e}");
        return false;
    }
    let install = GroupCommand::Install { num, shard, state };
    match links.propose(install).await {
        Some(GroupAnswer::Done) => true,
        other => {
            debug!("install of shard {shard} at configuration {num}: {other:?}");
            false
        }
    }
}

/// Tells the previous owner's `servers` that `shard` of configuration `num` is installed
/// here, and records that it was told. Progress only if the record took effect.
async fn tell_and_confirm(links: &impl Links, num: u64, shard: usize, servers: &[String]) -> bool {
    let request = GroupRequest::Delete { num, shard };
    let answer = links.call_group(servers, request).await;
    if !matches!(answer, Some(Replied::Done(GroupAnswer::Done))) {
        return false;
    }
    let confirmed = GroupCommand::Confirmed { num, shard };
    links.propose(confirmed).await == Some(GroupAnswer::Done)
}

/// One round of a leader's work. Returns whether it changed anything (if not, the caller
/// waits a [`ROUND`] before the next).
///
/// Every unfinished shard's fetch and install, or telling of its previous owner, runs at
/// once (at most one call per shard in flight), so a slow or large transfer holds up no
/// other shard.
pub async fn round(links: &impl Links) -> bool {
    if !links.leads() {
        return false;
    }
    let work = links.work();
    let num = work.num;
    let fetches = work
        .fetch
        .iter()
        .map(|(shard, _from, servers)| fetch_and_install(links, num, *shard, servers));
    let tells = work
        .tell
        .iter()
        .map(|(shard, _from, servers)| tell_and_confirm(links, num, *shard, servers));
    let (fetched, told) = join2(join_all(fetches.collect()), join_all(tells.collect())).await;
    let mut changed = fetched.into_iter().chain(told).any(|progress| progress);
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

/// Runs two futures at once; both outputs.
async fn join2<A: Future, B: Future>(a: A, b: B) -> (A::Output, B::Output) {
    let mut a = Box::pin(a);
    let mut b = Box::pin(b);
    let (mut out_a, mut out_b) = (None, None);
    std::future::poll_fn(|cx| {
        if out_a.is_none() {
            if let Poll::Ready(v) = a.as_mut().poll(cx) {
                out_a = Some(v);
            }
        }
        if out_b.is_none() {
            if let Poll::Ready(v) = b.as_mut().poll(cx) {
                out_b = Some(v);
            }
        }
        if out_a.is_some() && out_b.is_some() {
            Poll::Ready(())
        } else {
            Poll::Pending
        }
    })
    .await;
    (out_a.expect("finished"), out_b.expect("finished"))
}

#[cfg(test)]
mod tests;
