//! Links to the other members of the cluster: one task and one bounded queue per peer.
//!
//! [`PeerLinks::send`] never waits: a message goes into its peer's queue, or is dropped when
//! the queue is full — [`QUEUE_MESSAGES`] messages, or [`QUEUE_BYTES`] of entries and
//! snapshot data (a message bigger than that is queued only into an empty queue). A slow or
//! unreachable peer therefore costs at most about `QUEUE_BYTES` plus one message of memory;
//! Raft recovers from lost messages by retrying. Each link's task connects, says
//! who it is ([`PeerIntro`]: the cluster's id and member list, its own id and the one it
//! wants), then writes every queued message as one frame, several frames per write when the
//! queue holds more. On any error it logs once, waits (50 ms doubling to 2 s) and connects
//! again. Messages are never read on this connection: each node sends on its own links and
//! receives on the links its peers opened to it.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use flotilla_raft::{Message, MessageBody, NodeId};
use flotilla_wire::{
    encode_frame, read_frame, FrameWriter, Hello, HelloReply, WireError, HANDSHAKE_MAX_FRAME,
};
use serde::{Deserialize, Serialize};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tracing::{info, warn};

use crate::metrics::Counters;
use crate::{ClusterId, PEER_PROTOCOL};

/// Messages a peer's queue holds before new ones to it are dropped.
pub const QUEUE_MESSAGES: usize = 4096;
/// Bytes of entries and snapshot data a peer's queue holds before new messages to it are
/// dropped.
pub const QUEUE_BYTES: usize = 64 << 20;
/// Largest frame on a peer link (a snapshot travels in one message).
pub const PEER_MAX_FRAME: usize = 256 << 20;
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
const FIRST_BACKOFF: Duration = Duration::from_millis(50);
const MAX_BACKOFF: Duration = Duration::from_secs(2);

/// What a node says, after the handshake, on a link it opens.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeerIntro {
    pub cluster: ClusterId,
    pub from: NodeId,
    pub to: NodeId,
    /// Drawn at random when the sending process starts: a new value tells the receiver that
    /// the peer restarted (and may have lost what it acknowledged, if its disk was damaged).
    pub incarnation: u64,
}

/// The receiving node's answer: `None` accepts; otherwise why not.
pub type IntroReply = Option<String>;

/// One peer's queue: the channel and the payload bytes in it.
struct Queue {
    sender: mpsc::Sender<(Message, usize)>,
    bytes: Arc<AtomicUsize>,
}

/// The sending side of every link.
pub struct PeerLinks {
    queues: Vec<Option<Queue>>,
}

/// What a message costs a queue: its entries' and snapshot's data, plus a fixed overhead
/// per entry and per message.
pub fn payload_bytes(message: &Message) -> usize {
    const OVERHEAD: usize = 32;
    OVERHEAD
        + match &message.body {
            MessageBody::AppendEntries { entries, .. } => {
                entries.iter().map(|e| e.data.len() + OVERHEAD).sum()
            }
            MessageBody::InstallSnapshot { snapshot, .. } => snapshot.data.len(),
            _ => 0,
        }
}

impl PeerLinks {
    /// Starts one link task per member other than `me`.
    pub fn start(
        cluster: &ClusterId,
        me: NodeId,
        incarnation: u64,
        counters: Arc<Counters>,
    ) -> PeerLinks {
        let queues = cluster
            .members
            .iter()
            .enumerate()
            .map(|(id, &addr)| {
                let id = id as NodeId;
                (id != me).then(|| {
                    let (sender, rx) = mpsc::channel(QUEUE_MESSAGES);
                    let bytes = Arc::new(AtomicUsize::new(0));
                    let intro = PeerIntro {
                        cluster: cluster.clone(),
                        from: me,
                        to: id,
                        incarnation,
                    };
                    tokio::spawn(link(addr, intro, rx, bytes.clone(), counters.clone()));
                    Queue { sender, bytes }
                })
            })
            .collect();
        PeerLinks { queues }
    }

    /// Queues `message` for its peer; drops it if the queue is full (or the peer unknown).
    pub fn send(&self, message: Message) {
        let Some(Some(queue)) = self.queues.get(message.to as usize) else {
            return;
        };
        let size = payload_bytes(&message);
        let queued = queue.bytes.load(Ordering::Relaxed);
        if queued > 0 && queued + size > QUEUE_BYTES {
            return;
        }
        queue.bytes.fetch_add(size, Ordering::Relaxed);
        if queue.sender.try_send((message, size)).is_err() {
            queue.bytes.fetch_sub(size, Ordering::Relaxed);
        }
    }

    /// Payload bytes waiting in the queue to `peer`.
    pub fn queued_bytes(&self, peer: NodeId) -> usize {
        match self.queues.get(peer as usize) {
            Some(Some(queue)) => queue.bytes.load(Ordering::Relaxed),
            _ => 0,
        }
    }
}

async fn link(
    addr: SocketAddr,
    intro: PeerIntro,
    mut queue: mpsc::Receiver<(Message, usize)>,
    queued_bytes: Arc<AtomicUsize>,
    counters: Arc<Counters>,
) {
    let mut backoff = FIRST_BACKOFF;
    let mut last_error: Option<String> = None;
    loop {
        match connect(addr, &intro).await {
            Ok(mut stream) => {
                info!(peer = intro.to, %addr, "link up");
                last_error = None;
                backoff = FIRST_BACKOFF;
                let mut batch = Vec::new();
                loop {
                    let Some(first) = queue.recv().await else {
                        return; // the node stopped
                    };
                    batch.clear();
                    let mut next = Some(first);
                    while let Some((message, size)) = next.take() {
                        queued_bytes.fetch_sub(size, Ordering::Relaxed);
                        if let Err(e) = encode_frame(&mut batch, &message, PEER_MAX_FRAME) {
                            warn!(peer = intro.to, "message dropped: {e}");
                        }
                        if batch.len() < 1 << 20 {
                            next = queue.try_recv().ok();
                        }
                    }
                    if let Err(e) = stream.write_all(&batch).await {
                        warn!(peer = intro.to, %addr, "link down: {e}");
                        break;
                    }
                    counters.bytes_sent[intro.to as usize]
                        .fetch_add(batch.len() as u64, Ordering::Relaxed);
                }
            }
            Err(e) => {
                let text = e.to_string();
                if last_error.as_deref() != Some(&text) {
                    warn!(peer = intro.to, %addr, "cannot reach peer: {text}");
                    last_error = Some(text);
                }
            }
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
}

/// Opens a link: the wire handshake for [`PEER_PROTOCOL`], then the introduction; a refusal
/// comes back as [`WireError::Handshake`] with the other node's reason.
pub async fn connect(addr: SocketAddr, intro: &PeerIntro) -> Result<TcpStream, WireError> {
    let opened = async {
        let mut stream = TcpStream::connect(addr).await?;
        stream.set_nodelay(true)?;
        let mut writer = FrameWriter::new(HANDSHAKE_MAX_FRAME);
        writer
            .write_frame(&mut stream, &Hello::new(PEER_PROTOCOL))
            .await?;
        let reply: HelloReply = read_frame(&mut stream, HANDSHAKE_MAX_FRAME)
            .await?
            .ok_or(WireError::Closed)?;
        if let Some(refusal) = reply.refusal {
            return Err(WireError::Handshake(refusal));
        }
        writer.set_max_frame(PEER_MAX_FRAME);
        writer.write_frame(&mut stream, intro).await?;
        let verdict: IntroReply = read_frame(&mut stream, HANDSHAKE_MAX_FRAME)
            .await?
            .ok_or(WireError::Closed)?;
        match verdict {
            None => Ok(stream),
            Some(refusal) => Err(WireError::Handshake(refusal)),
        }
    };
    tokio::time::timeout(CONNECT_TIMEOUT, opened)
        .await
        .unwrap_or(Err(WireError::Timeout(CONNECT_TIMEOUT)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use flotilla_raft::Entry;

    fn append(to: NodeId, bytes: usize) -> Message {
        Message {
            from: 0,
            to,
            term: 1,
            body: MessageBody::AppendEntries {
                prev_log_index: 0,
                prev_log_term: 0,
                entries: vec![Entry {
                    term: 1,
                    index: 1,
                    data: vec![7; bytes],
                }],
                leader_commit: 0,
            },
        }
    }

    #[tokio::test]
    async fn an_unreachable_peer_costs_at_most_the_queue_bound() {
        // A port with nobody behind it: the link never drains its queue.
        let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let unreachable = closed.local_addr().unwrap();
        drop(closed);
        let cluster = ClusterId {
            name: "test".into(),
            members: vec!["127.0.0.1:1".parse().unwrap(), unreachable],
        };
        let links = PeerLinks::start(&cluster, 0, 1, Arc::new(Counters::new(2)));
        for _ in 0..200 {
            links.send(append(1, 1 << 20));
        }
        let queued = links.queued_bytes(1);
        assert!(
            queued <= QUEUE_BYTES,
            "{queued} bytes queued for a dead peer"
        );
        assert!(
            queued >= QUEUE_BYTES - (2 << 20),
            "the queue took too little: {queued}"
        );
        // A message bigger than the whole bound still goes through an empty queue.
        let links = PeerLinks::start(&cluster, 0, 1, Arc::new(Counters::new(2)));
        links.send(append(1, QUEUE_BYTES + 1));
        assert!(links.queued_bytes(1) > QUEUE_BYTES);
    }
}
