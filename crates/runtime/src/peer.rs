//! Links to the other members of the cluster: one task and one bounded queue per peer.
//!
//! [`PeerLinks::send`] never waits: a message goes into its peer's queue, or is dropped when
//! the queue is full (a slow or unreachable peer costs at most [`QUEUE_MESSAGES`] messages of
//! memory; Raft recovers from lost messages by retrying). Each link's task connects, says
//! who it is ([`PeerIntro`]: the cluster's id and member list, its own id and the one it
//! wants), then writes every queued message as one frame, several frames per write when the
//! queue holds more. On any error it logs once, waits (50 ms doubling to 2 s) and connects
//! again. Messages are never read on this connection: each node sends on its own links and
//! receives on the links its peers opened to it.

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use flotilla_raft::{Message, NodeId};
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

/// The sending side of every link.
pub struct PeerLinks {
    queues: Vec<Option<mpsc::Sender<Message>>>,
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
                    let (tx, rx) = mpsc::channel(QUEUE_MESSAGES);
                    let intro = PeerIntro {
                        cluster: cluster.clone(),
                        from: me,
                        to: id,
                        incarnation,
                    };
                    tokio::spawn(link(addr, intro, rx, counters.clone()));
                    tx
                })
            })
            .collect();
        PeerLinks { queues }
    }

    /// Queues `message` for its peer; drops it if the queue is full (or the peer unknown).
    pub fn send(&self, message: Message) {
        if let Some(Some(queue)) = self.queues.get(message.to as usize) {
            let _ = queue.try_send(message);
        }
    }
}

async fn link(
    addr: SocketAddr,
    intro: PeerIntro,
    mut queue: mpsc::Receiver<Message>,
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
                    while let Some(message) = next.take() {
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
