//! Batched forwarding: how a node that does not lead hands etcd requests to the leader.
//!
//! Every request a client sends to a follower (writes, linearizable reads, keep-alives) has
//! to be carried out at the leader. Sent one by one, each costs a frame, a system call and a
//! wake-up at both ends; under load that is most of what a follower does. Instead, all
//! requests for one node wait in one queue, and a sender task per node takes every request
//! that is there and sends them as one [`NodeRequest::Etcd`] frame; the leader carries them
//! out together (their writes land in one `Ready`, so in one log sync) and answers with one
//! frame, in the same order.
//!
//! Batching adds no waiting of its own: a batch leaves as soon as a sender slot is free
//! ([`BATCHES_IN_FLIGHT`] per node), holding what arrived while the earlier ones were out.
//! An idle node's request goes alone, at once; a busy one's go many to a frame.
//!
//! What the asker learns is what a single call would tell it: the leader's answer to its
//! own request; `NotApplied` if the batch never left this node (nothing of it reached the
//! leader, so it is as safe to retry as a refusal); an error if the batch went out and no
//! answer came back within [`FORWARD_TIMEOUT`] (its writes may or may not have applied).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use flotilla_raft::NodeId;
use flotilla_rsm::Replied;
use flotilla_wire::{CallFailure, SharedPool, DEFAULT_MAX_FRAME};
use tokio::sync::{mpsc, oneshot, Semaphore};
use tracing::debug;

use crate::etcd::{EtcdAnswer, EtcdRequest};
use crate::tcp::{NodeReply, NodeRequest, PROTOCOL};

/// One attempt at a batch (connect, request and reply), and the longest a request waits for
/// its batch's answer.
pub const FORWARD_TIMEOUT: Duration = Duration::from_secs(6);

/// Batches out to one node at once; more requests wait for the next.
pub const BATCHES_IN_FLIGHT: usize = 4;

/// Requests in one batch at most.
pub const MAX_BATCH: usize = 256;

/// Encoded bytes of the requests in one batch at most, beyond its first (which goes even if
/// larger, as it would alone): a quarter of the frame limit, so a batch never fails for its
/// size where its requests one by one would not.
pub const MAX_BATCH_BYTES: usize = DEFAULT_MAX_FRAME / 4;

/// Requests queued for one node before askers wait to queue theirs.
const QUEUE: usize = 4096;

/// Idle connections kept to each other node.
const KEPT_CONNECTIONS: usize = BATCHES_IN_FLIGHT * 2;

/// What the asker of a forwarded request learns: the leader's reply, or why none came.
pub type Forwarded = Result<Replied<EtcdAnswer>, String>;

struct Queued {
    request: EtcdRequest,
    /// Its encoded size.
    bytes: usize,
    answer: oneshot::Sender<Forwarded>,
}

/// The encoded size of `request` in a frame (a walk over it, nothing allocated).
fn encoded_size(request: &EtcdRequest) -> usize {
    postcard::serialize_with_flavor(request, postcard::ser_flavors::Size::default())
        .unwrap_or(usize::MAX)
}

/// The queues to the other nodes, each with its sender task (started on first use).
pub struct Forwarder {
    members: Vec<SocketAddr>,
    connections: Arc<SharedPool<NodeRequest, NodeReply>>,
    queues: Mutex<HashMap<NodeId, mpsc::Sender<Queued>>>,
}

impl Forwarder {
    /// Forwarding to the nodes listening on `members` (node `i` on `members[i]`).
    pub fn new(members: Vec<SocketAddr>) -> Self {
        Forwarder {
            members,
            connections: Arc::new(SharedPool::new(
                PROTOCOL,
                DEFAULT_MAX_FRAME,
                KEPT_CONNECTIONS,
            )),
            queues: Mutex::new(HashMap::new()),
        }
    }

    /// Has node `to` carry out `request` (in a batch with whatever else is queued for it).
    pub async fn forward(&self, to: NodeId, request: EtcdRequest) -> Forwarded {
        let Some(&addr) = self.members.get(to as usize) else {
            return Err(format!("there is no node {to}"));
        };
        let queue = self.queue(to, addr);
        let (answer, answered) = oneshot::channel();
        let bytes = encoded_size(&request);
        let queued = async {
            let queued = Queued {
                request,
                bytes,
                answer,
            };
            if queue.send(queued).await.is_err() {
                // The sender task is gone (the runtime is shutting down): nothing was sent.
                return Ok(Replied::NotApplied { hint: None });
            }
            answered
                .await
                .unwrap_or_else(|_| Err(format!("{addr}: the forwarding task stopped")))
        };
        tokio::time::timeout(FORWARD_TIMEOUT, queued)
            .await
            .unwrap_or_else(|_| Err(format!("{addr}: no answer within {FORWARD_TIMEOUT:?}")))
    }

    fn queue(&self, to: NodeId, addr: SocketAddr) -> mpsc::Sender<Queued> {
        // Poisoned only by a panic while inserting into the map, which leaves it whole.
        let mut queues = self.queues.lock().unwrap_or_else(|p| p.into_inner());
        queues
            .entry(to)
            .or_insert_with(|| {
                let (queue, queued) = mpsc::channel(QUEUE);
                tokio::spawn(send_batches(addr, self.connections.clone(), queued));
                queue
            })
            .clone()
    }
}

/// The sender task of one node's queue: until every asker is gone, takes what is queued
/// once a slot is free and sends it as one batch.
async fn send_batches(
    addr: SocketAddr,
    connections: Arc<SharedPool<NodeRequest, NodeReply>>,
    mut queued: mpsc::Receiver<Queued>,
) {
    let slots = Arc::new(Semaphore::new(BATCHES_IN_FLIGHT));
    // A request taken from the queue that did not fit in the last batch: the next one's first.
    let mut held: Option<Queued> = None;
    loop {
        let first = match held.take() {
            Some(first) => first,
            None => match queued.recv().await {
                Some(first) => first,
                None => return,
            },
        };
        // Never closed, so acquiring only waits.
        let Ok(slot) = slots.clone().acquire_owned().await else {
            return;
        };
        let mut bytes = 0usize;
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH {
            let Ok(next) = queued.try_recv() else {
                break;
            };
            bytes = bytes.saturating_add(next.bytes);
            if bytes > MAX_BATCH_BYTES {
                held = Some(next);
                break;
            }
            batch.push(next);
        }
        let connections = connections.clone();
        tokio::spawn(async move {
            let _slot = slot;
            let (requests, answers): (Vec<_>, Vec<_>) =
                batch.into_iter().map(|q| (q.request, q.answer)).unzip();
            let count = requests.len();
            let outcome = connections
                .try_call(addr, &NodeRequest::Etcd(requests), FORWARD_TIMEOUT)
                .await;
            let replies: Vec<Forwarded> = match outcome {
                Ok(NodeReply::Etcd(replies)) if replies.len() == count => {
                    replies.into_iter().map(Ok).collect()
                }
                Ok(other) => {
                    let e = format!("{addr}: answered {other:?} to {count} etcd requests");
                    vec![Err(e); count]
                }
                // Never reached `addr` (it is down, or closed the kept connection before the
                // batch was written): turned away in effect, as safe to retry as a refusal.
                Err(CallFailure::NotSent(e)) => {
                    debug!(%addr, error = %e, count, "etcd requests not sent to the leader");
                    vec![Ok(Replied::NotApplied { hint: None }); count]
                }
                Err(CallFailure::MaybeSent(e)) => vec![Err(format!("{addr}: {e}")); count],
            };
            for (answer, reply) in answers.into_iter().zip(replies) {
                // An asker that gave up (timed out) is simply not told.
                let _ = answer.send(reply);
            }
        });
    }
}
