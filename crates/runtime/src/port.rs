//! The node's one port. Every connection starts with the wire crate's handshake; the service
//! its [`Hello`] names decides what it is:
//!
//! - [`PEER_PROTOCOL`]: a link another member opened. It introduces itself
//!   ([`PeerIntro`]); a member of another cluster (other name or other member list), one
//!   that takes this node for another, or an unknown id is refused with a message saying
//!   which, logged on both sides. Then its frames are Raft messages, stepped by the node
//!   loop through the inbox. A frame that does not decode, or a message not from the
//!   introduced peer or not to this node, is logged and dropped, and the link goes on (the
//!   frame was whole, so the next one starts where it ended); a frame over
//!   [`PEER_MAX_FRAME`], a stream cut inside a frame or an I/O error closes the link (the
//!   peer reconnects). Nothing a peer sends can panic the node.
//! - the client protocol: requests and replies as in `flotilla-wire` (`Request`/`Reply`
//!   frames, one reply per request, in order), each request handled by the service's async
//!   handler.
//! - anything else is answered with a refusal naming both services, and closed.
//!
//! Limits: at most [`PortConfig::max_connections`] connections (peers included); a
//! handshake must finish within [`PortConfig::handshake_timeout`]; a client connection idle
//! past [`PortConfig::idle_timeout`] is closed, and one slower than
//! [`PortConfig::write_timeout`] to take a reply too. Client frames are limited to
//! [`PortConfig::max_frame`] bytes.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use flotilla_node::Input;
use flotilla_raft::{Message, NodeId};
use flotilla_wire::{
    read_frame, FrameReader, FrameWriter, Hello, HelloReply, Protocol, Reply, Request, WireError,
    HANDSHAKE_MAX_FRAME, MAGIC,
};
use serde::de::DeserializeOwned;
use serde::Serialize;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinSet;
use tracing::{debug, info, warn};

use crate::peer::{IntroReply, PeerIntro, PEER_MAX_FRAME};
use crate::{ClusterId, PEER_PROTOCOL};

/// Bounds on the port's connections.
#[derive(Clone, Copy, Debug)]
pub struct PortConfig {
    pub max_connections: usize,
    pub handshake_timeout: Duration,
    pub idle_timeout: Duration,
    pub write_timeout: Duration,
    /// Largest client frame, both ways.
    pub max_frame: usize,
}

impl Default for PortConfig {
    fn default() -> Self {
        PortConfig {
            max_connections: 1024,
            handshake_timeout: Duration::from_secs(5),
            idle_timeout: Duration::from_secs(300),
            write_timeout: Duration::from_secs(10),
            max_frame: flotilla_wire::DEFAULT_MAX_FRAME,
        }
    }
}

/// The introduction's frame limit: a member list of a few dozen addresses fits.
const INTRO_MAX_FRAME: usize = 64 << 10;

pub(crate) struct Port<H> {
    pub(crate) cluster: ClusterId,
    pub(crate) me: NodeId,
    pub(crate) inbox: mpsc::Sender<Input>,
    pub(crate) client_protocol: Protocol,
    /// The last incarnation each peer introduced itself with.
    pub(crate) incarnations: Mutex<Vec<Option<u64>>>,
    pub(crate) handler: H,
    pub(crate) config: PortConfig,
}

/// Accepts connections until `shutdown` resolves (or the task is aborted); then closes them
/// all.
pub(crate) async fn serve<Req, Resp, H, F>(
    listener: TcpListener,
    port: Arc<Port<H>>,
    shutdown: impl Future<Output = ()>,
) where
    Req: DeserializeOwned + Send + 'static,
    Resp: Serialize + Send + 'static,
    H: Fn(Req) -> F + Send + Sync + 'static,
    F: Future<Output = Resp> + Send + 'static,
{
    let slots = Arc::new(Semaphore::new(port.config.max_connections));
    let mut connections = JoinSet::new();
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            biased;
            () = &mut shutdown => {
                // Every connection of a stopped node ends before this returns (and the
                // listener with it): a caller that sees the node stopped finds its port
                // closed, never a socket that takes a request and then resets.
                connections.shutdown().await;
                return;
            }
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => match Arc::clone(&slots).try_acquire_owned() {
                    Ok(slot) => {
                        connections.spawn(connection::<Req, Resp, H, F>(stream, peer, Arc::clone(&port), slot));
                    }
                    Err(_) => {
                        warn!(%peer, limit = port.config.max_connections, "connection limit reached: refused");
                        drop(stream);
                    }
                },
                Err(e) => {
                    warn!("accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            }
        }
    }
}

enum Kind {
    Peer,
    Client,
}

async fn connection<Req, Resp, H, F>(
    mut stream: TcpStream,
    from: SocketAddr,
    port: Arc<Port<H>>,
    _slot: OwnedSemaphorePermit,
) where
    Req: DeserializeOwned + Send + 'static,
    Resp: Serialize + Send + 'static,
    H: Fn(Req) -> F + Send + Sync + 'static,
    F: Future<Output = Resp> + Send + 'static,
{
    let _ = stream.set_nodelay(true);
    let timeout = port.config.handshake_timeout;
    let hello: Hello =
        match tokio::time::timeout(timeout, read_frame(&mut stream, HANDSHAKE_MAX_FRAME)).await {
            Ok(Ok(Some(hello))) => hello,
            Ok(Ok(None)) => return debug!(%from, "closed before the handshake"),
            Ok(Err(e)) => return warn!(%from, "bad handshake, closing: {e}"),
            Err(_) => return warn!(%from, ?timeout, "no handshake in time, closing"),
        };
    let client = port.client_protocol;
    let (ours, kind) = if hello.magic != MAGIC {
        (
            client,
            Err(format!(
                "not a Flotilla peer or client: its hello starts with b\"{}\"",
                hello.magic.escape_ascii()
            )),
        )
    } else if hello.service == PEER_PROTOCOL.service {
        (
            PEER_PROTOCOL,
            version_check(&hello, PEER_PROTOCOL).map(|()| Kind::Peer),
        )
    } else if hello.service == client.service {
        (client, version_check(&hello, client).map(|()| Kind::Client))
    } else {
        (
            client,
            Err(format!(
                "this port serves {PEER_PROTOCOL} and {client}, not {:?}",
                hello.service
            )),
        )
    };
    let reply = HelloReply {
        magic: MAGIC,
        service: ours.service.to_owned(),
        version: ours.version,
        refusal: kind.as_ref().err().cloned(),
    };
    let mut writer = FrameWriter::new(HANDSHAKE_MAX_FRAME);
    if writer.write_frame(&mut stream, &reply).await.is_err() {
        return;
    }
    match kind {
        Err(why) => warn!(%from, "handshake refused: {why}"),
        Ok(Kind::Peer) => peer_link(stream, from, &port).await,
        Ok(Kind::Client) => client_session::<Req, Resp, H, F>(stream, from, &port).await,
    }
}

fn version_check(hello: &Hello, ours: Protocol) -> Result<(), String> {
    if hello.version == ours.version {
        Ok(())
    } else {
        Err(format!(
            "{:?} version {} is not spoken here: this node speaks version {}",
            ours.service, hello.version, ours.version
        ))
    }
}

/// Why this node refuses `intro`, if it does.
fn intro_refusal(cluster: &ClusterId, me: NodeId, intro: &PeerIntro) -> Option<String> {
    if intro.cluster != *cluster {
        return Some(format!(
            "cluster mismatch: this node is in cluster {cluster}; the peer (node {}) says {}",
            intro.from, intro.cluster
        ));
    }
    if intro.to != me {
        return Some(format!(
            "this is node {me} ({}), not node {}",
            cluster.members[me as usize], intro.to
        ));
    }
    if intro.from == me || intro.from as usize >= cluster.members.len() {
        return Some(format!("node id {} is not another member", intro.from));
    }
    None
}

async fn peer_link<H>(mut stream: TcpStream, from: SocketAddr, port: &Port<H>) {
    let timeout = port.config.handshake_timeout;
    let intro: PeerIntro =
        match tokio::time::timeout(timeout, read_frame(&mut stream, INTRO_MAX_FRAME)).await {
            Ok(Ok(Some(intro))) => intro,
            Ok(Ok(None)) => return,
            Ok(Err(e)) => return warn!(%from, "bad peer introduction, closing: {e}"),
            Err(_) => return warn!(%from, "no peer introduction in time, closing"),
        };
    let verdict: IntroReply = intro_refusal(&port.cluster, port.me, &intro);
    let mut writer = FrameWriter::new(INTRO_MAX_FRAME);
    if writer.write_frame(&mut stream, &verdict).await.is_err() {
        return;
    }
    if let Some(why) = verdict {
        return warn!(%from, "peer refused: {why}");
    }
    debug!(%from, peer = intro.from, "peer link accepted");
    let restarted = {
        let mut known = port.incarnations.lock().unwrap_or_else(|e| e.into_inner());
        let slot = &mut known[intro.from as usize];
        let restarted = slot.is_some_and(|before| before != intro.incarnation);
        *slot = Some(intro.incarnation);
        restarted
    };
    if restarted {
        info!(peer = intro.from, "peer restarted: its log is probed again");
        let _ = port.inbox.try_send(Input::PeerRestarted(intro.from));
    }
    let mut reader = FrameReader::new(PEER_MAX_FRAME);
    // Messages dropped on this link; logged at the 1st, 2nd, 4th, 8th, ... so that a peer
    // sending nothing but garbage cannot flood the log.
    let mut dropped: u64 = 0;
    let mut log_drop = |why: String| {
        dropped += 1;
        if dropped.is_power_of_two() {
            warn!(%from, peer = intro.from, dropped, "{why}: dropped");
        }
    };
    loop {
        match reader.read_frame::<Message>(&mut stream).await {
            Ok(Some(message)) => {
                if message.from != intro.from || message.to != port.me {
                    log_drop(format!(
                        "message from {} to {} on the link from {} to {}",
                        message.from, message.to, intro.from, port.me
                    ));
                    continue;
                }
                match port.inbox.try_send(Input::Message(message)) {
                    Ok(()) => {}
                    Err(mpsc::error::TrySendError::Full(_)) => {
                        debug!(peer = intro.from, "inbox full: message dropped")
                    }
                    Err(mpsc::error::TrySendError::Closed(_)) => return,
                }
            }
            Ok(None) => return debug!(peer = intro.from, "peer closed its link"),
            // The frame was whole (its length within the limit) and is consumed: the stream
            // is still at a frame boundary, so only this message is lost.
            Err(WireError::Decode(e)) => log_drop(format!("malformed message from peer ({e})")),
            // Over the limit, cut short or an I/O error: the stream cannot be followed to
            // the next frame boundary.
            Err(e) => {
                return warn!(%from, peer = intro.from, "broken link from peer, closing it: {e}")
            }
        }
    }
}

async fn client_session<Req, Resp, H, F>(mut stream: TcpStream, from: SocketAddr, port: &Port<H>)
where
    Req: DeserializeOwned,
    Resp: Serialize,
    H: Fn(Req) -> F,
    F: Future<Output = Resp>,
{
    let config = port.config;
    let mut reader = FrameReader::new(config.max_frame);
    let mut writer = FrameWriter::new(config.max_frame);
    loop {
        let request: Request<Req> =
            match tokio::time::timeout(config.idle_timeout, reader.read_frame(&mut stream)).await {
                Ok(Ok(Some(request))) => request,
                Ok(Ok(None)) => return,
                Ok(Err(e)) => {
                    warn!(%from, "bad client frame, closing: {e}");
                    let last: Reply<Resp> = Reply::Err {
                        id: 0,
                        message: e.to_string(),
                    };
                    let _ = tokio::time::timeout(
                        config.write_timeout,
                        writer.write_frame(&mut stream, &last),
                    )
                    .await;
                    return;
                }
                Err(_) => return debug!(%from, "client idle: closing"),
            };
        let body = (port.handler)(request.body).await;
        let reply = Reply::Ok {
            id: request.id,
            body,
        };
        match tokio::time::timeout(
            config.write_timeout,
            writer.write_frame(&mut stream, &reply),
        )
        .await
        {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                let refused: Reply<Resp> = Reply::Err {
                    id: request.id,
                    message: e.to_string(),
                };
                if writer.write_frame(&mut stream, &refused).await.is_err() {
                    return;
                }
            }
            Err(_) => return warn!(%from, "client too slow to take its reply: closing"),
        }
    }
}
