//! The request/response server: [`serve`] runs a synchronous handler for every request of
//! every connection until told to stop.

use std::any::Any;
use std::future::Future;
use std::net::SocketAddr;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::Arc;
use std::time::Duration;

use serde::de::DeserializeOwned;
use serde::Serialize;
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinSet;
use tracing::{debug, info, trace, warn};

use crate::frame::{FrameReader, FrameWriter, DEFAULT_MAX_FRAME};
use crate::handshake::{
    refusal, Hello, HelloReply, Protocol, Reply, Request, HANDSHAKE_MAX_FRAME, MAGIC,
};
use crate::WireError;

/// How long the server waits, when a connection fails, to tell the client why before it
/// closes (a peer that does not read cannot hold the connection's task longer).
const FAREWELL_TIMEOUT: Duration = Duration::from_secs(1);

/// How long the server pauses accepting after the listener fails for lack of resources
/// (too many open files, out of memory), so that it does not spin while they are short.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// How a server runs its connections.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ServerConfig {
    /// The largest frame read or written after the handshake. A request over it closes its
    /// connection; a reply over it is replaced by an error reply.
    pub max_frame: usize,
    /// A connection that has not completed the handshake within this time is closed.
    pub handshake_timeout: Duration,
}

impl ServerConfig {
    /// The default configuration with another frame size limit.
    pub fn new(max_frame: usize) -> Self {
        ServerConfig {
            max_frame,
            ..ServerConfig::default()
        }
    }
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            max_frame: DEFAULT_MAX_FRAME,
            handshake_timeout: Duration::from_secs(10),
        }
    }
}

/// Serves `handler` on `listener` until `shutdown` resolves.
///
/// Each connection runs in its own task. It starts with the handshake (the client's
/// [`Hello`] must name [`MAGIC`] and `protocol`, or the server answers with a refusal and
/// closes), then answers each request frame with at most one reply frame, in order:
/// `handler(request)` returns `Some(reply)` to send, or `None` to send nothing (a lost reply,
/// for fault injection; the connection stays open and the client times out).
///
/// The handler runs on the connection's task, so it must not block: a blocked runtime worker
/// can stall the timers and sockets of the whole runtime. A handler that has to wait should
/// do the waiting inside `tokio::task::block_in_place` (multi-thread runtime). If it panics,
/// the client gets [`Reply::Err`] for that request and the connection goes on.
///
/// A malformed, oversized or truncated frame, a failed handshake or a socket error ends only
/// that connection (logged with `tracing::warn!`; the client gets a last [`Reply::Err`] with
/// id 0 where that can still be sent); the server goes on serving everyone else. Accept errors
/// are logged and do not stop the server.
///
/// When `shutdown` resolves, the server stops accepting, closes every connection (a reply not
/// yet sent is lost, as if the server had crashed after handling the request) and returns
/// `Ok(())` once all connection tasks have ended. Returns an error only if the listener's
/// address cannot be read at the start.
pub async fn serve<Req, Resp, H>(
    listener: TcpListener,
    protocol: Protocol,
    config: ServerConfig,
    handler: H,
    shutdown: impl Future<Output = ()>,
) -> std::io::Result<()>
where
    Req: DeserializeOwned + Send + 'static,
    Resp: Serialize + Send + 'static,
    H: Fn(Req) -> Option<Resp> + Send + Sync + 'static,
{
    let local = listener.local_addr()?;
    info!(%local, %protocol, "serving");
    let handler = Arc::new(handler);
    let mut connections = JoinSet::new();
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            biased;
            () = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    connections.spawn(serve_connection(
                        stream,
                        peer,
                        protocol,
                        config,
                        Arc::clone(&handler),
                    ));
                }
                Err(e) if is_per_connection(&e) => debug!(%local, error = %e, "accept failed"),
                Err(e) => {
                    warn!(%local, error = %e, "accept failed; pausing");
                    tokio::select! {
                        biased;
                        () = &mut shutdown => break,
                        () = tokio::time::sleep(ACCEPT_BACKOFF) => {}
                    }
                }
            },
            Some(ended) = connections.join_next() => {
                if let Err(e) = ended {
                    // Only a panic outside the handler (which is caught) gets here.
                    warn!(%local, error = %e, "connection task failed");
                }
            }
        }
    }
    info!(%local, %protocol, connections = connections.len(), "shutting down");
    connections.shutdown().await;
    Ok(())
}

/// Accept errors that concern one incoming connection, not the listener.
fn is_per_connection(e: &std::io::Error) -> bool {
    use std::io::ErrorKind::*;
    matches!(
        e.kind(),
        ConnectionAborted | ConnectionReset | ConnectionRefused | Interrupted | WouldBlock
    )
}

/// One connection, from handshake to close.
struct Connection {
    stream: TcpStream,
    peer: SocketAddr,
    reader: FrameReader,
    writer: FrameWriter,
}

async fn serve_connection<Req, Resp, H>(
    stream: TcpStream,
    peer: SocketAddr,
    protocol: Protocol,
    config: ServerConfig,
    handler: Arc<H>,
) where
    Req: DeserializeOwned,
    Resp: Serialize,
    H: Fn(Req) -> Option<Resp>,
{
    if let Err(e) = stream.set_nodelay(true) {
        warn!(%peer, error = %e, "cannot set TCP_NODELAY");
    }
    let handshake_max = HANDSHAKE_MAX_FRAME.min(config.max_frame);
    let mut conn = Connection {
        stream,
        peer,
        reader: FrameReader::new(handshake_max),
        writer: FrameWriter::new(handshake_max),
    };
    match tokio::time::timeout(config.handshake_timeout, conn.handshake(protocol)).await {
        Ok(Ok(())) => {}
        Ok(Err(HandshakeEnd::Closed)) => {
            debug!(%peer, "closed before the handshake");
            return;
        }
        Ok(Err(HandshakeEnd::Failed(why))) => {
            warn!(%peer, %protocol, "handshake failed, closing: {why}");
            return;
        }
        Err(_) => {
            warn!(%peer, timeout = ?config.handshake_timeout, "no handshake in time, closing");
            return;
        }
    }
    debug!(%peer, %protocol, "connected");
    conn.reader.set_max_frame(config.max_frame);
    conn.writer.set_max_frame(config.max_frame);
    loop {
        let request: Request<Req> = match conn.reader.read_frame(&mut conn.stream).await {
            Ok(Some(request)) => request,
            Ok(None) => {
                debug!(%peer, "client closed the connection");
                return;
            }
            Err(e @ (WireError::Decode(_) | WireError::FrameTooLarge { .. })) => {
                warn!(%peer, error = %e, "bad request frame, closing");
                conn.farewell::<Resp>(format!("bad request frame: {e}"))
                    .await;
                return;
            }
            Err(e) => {
                warn!(%peer, error = %e, "connection failed");
                return;
            }
        };
        let id = request.id;
        let reply = match catch_unwind(AssertUnwindSafe(|| handler(request.body))) {
            Ok(Some(body)) => Reply::Ok { id, body },
            Ok(None) => {
                trace!(%peer, id, "reply dropped by the handler");
                continue;
            }
            Err(panic) => {
                let message = format!("the handler panicked: {}", panic_message(&*panic));
                warn!(%peer, id, "{message}");
                Reply::Err { id, message }
            }
        };
        let sent = match conn.writer.write_frame(&mut conn.stream, &reply).await {
            Err(WireError::FrameTooLarge { len, max }) => {
                let message = format!("the reply of {len} bytes exceeds the limit of {max}");
                warn!(%peer, id, "{message}");
                let reply = Reply::<Resp>::Err { id, message };
                conn.writer.write_frame(&mut conn.stream, &reply).await
            }
            other => other,
        };
        if let Err(e) = sent {
            warn!(%peer, id, error = %e, "cannot send reply, closing");
            return;
        }
    }
}

/// Why a handshake did not complete.
enum HandshakeEnd {
    /// The peer left without a word (a port probe, a health check): not worth a warning.
    Closed,
    /// Anything else, with the reason.
    Failed(String),
}

impl Connection {
    /// Reads the hello and answers it; `Ok` if the client may go on.
    async fn handshake(&mut self, protocol: Protocol) -> Result<(), HandshakeEnd> {
        let hello: Hello = match self.reader.read_frame(&mut self.stream).await {
            Ok(Some(hello)) => hello,
            Ok(None) => return Err(HandshakeEnd::Closed),
            Err(e @ (WireError::Decode(_) | WireError::FrameTooLarge { .. })) => {
                // Not a Flotilla client, or one from an incompatible release: say so.
                let why = format!("not a Flotilla hello: {e}");
                self.answer(protocol, Some(why.clone())).await;
                return Err(HandshakeEnd::Failed(why));
            }
            Err(e) => return Err(HandshakeEnd::Failed(e.to_string())),
        };
        match refusal(&hello, protocol) {
            None => {
                if self.answer(protocol, None).await {
                    Ok(())
                } else {
                    Err(HandshakeEnd::Failed("cannot send the hello reply".into()))
                }
            }
            Some(why) => {
                self.answer(protocol, Some(why.clone())).await;
                Err(HandshakeEnd::Failed(why))
            }
        }
    }

    /// Sends the hello reply; `true` if it went out.
    async fn answer(&mut self, protocol: Protocol, refusal: Option<String>) -> bool {
        let reply = HelloReply {
            magic: MAGIC,
            service: protocol.service.to_owned(),
            version: protocol.version,
            refusal,
        };
        match self.writer.write_frame(&mut self.stream, &reply).await {
            Ok(()) => true,
            Err(e) => {
                debug!(peer = %self.peer, error = %e, "cannot send the hello reply");
                false
            }
        }
    }

    /// Tells the client why its connection is about to close (best effort, bounded).
    async fn farewell<Resp: Serialize>(&mut self, message: String) {
        let reply = Reply::<Resp>::Err { id: 0, message };
        let send = self.writer.write_frame(&mut self.stream, &reply);
        if let Ok(Err(e)) = tokio::time::timeout(FAREWELL_TIMEOUT, send).await {
            debug!(peer = %self.peer, error = %e, "cannot send the last error");
        }
    }
}

/// The message of a caught panic, if it has one.
fn panic_message(panic: &(dyn Any + Send)) -> &str {
    if let Some(s) = panic.downcast_ref::<&str>() {
        s
    } else if let Some(s) = panic.downcast_ref::<String>() {
        s
    } else {
        "(no message)"
    }
}
