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
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinSet;
use tokio::time::Instant;
use tracing::{debug, info, trace, warn};

use crate::frame::{FrameReader, FrameWriter, DEFAULT_MAX_FRAME};
use crate::handshake::{
    refusal, Hello, HelloReply, Protocol, Reply, Request, HANDSHAKE_MAX_FRAME, MAGIC,
};
use crate::WireError;

/// How long the server waits, when a connection fails, to tell the client why before it
/// closes (a peer that does not read cannot hold the connection's task longer). Never more
/// than the configured write timeout.
const FAREWELL_TIMEOUT: Duration = Duration::from_secs(1);

/// How long the server pauses accepting after the listener fails for lack of resources
/// (too many open files, out of memory), so that it does not spin while they are short.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// At most this many connections over [`ServerConfig::max_connections`] are being told so at
/// once (each for at most [`FAREWELL_TIMEOUT`]); more are closed without a word.
const MAX_REFUSALS_IN_FLIGHT: usize = 64;

/// How a server runs its connections: sizes, counts and timeouts, each with a default
/// ([`ServerConfig::default`]) and each applying to one connection at a time.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ServerConfig {
    /// The largest frame read or written after the handshake. A request over it closes its
    /// connection; a reply over it is replaced by an error reply. Default
    /// [`DEFAULT_MAX_FRAME`] (64 MiB).
    pub max_frame: usize,
    /// A connection that has not completed the handshake within this time is closed.
    /// Default 10 s.
    pub handshake_timeout: Duration,
    /// At most this many connections are open at once (counting those still in their
    /// handshake). Beyond it, a new client's hello is answered with a refusal saying the
    /// server is at its connection limit (the client's connect fails with
    /// [`WireError::Handshake`]) and the connection is closed. Default 512, to stay under the
    /// common limit of 1024 open files.
    pub max_connections: usize,
    /// After the handshake, a connection on which no byte of a new request arrives for this
    /// long after the last reply is closed, with a last [`Reply::Err`] (id 0) saying so.
    /// Default 5 minutes.
    pub idle_timeout: Duration,
    /// Once the first byte of a request has arrived, the rest of its frame must arrive
    /// within this, or the connection is closed (with a last error reply): a client cannot
    /// hold a connection by sending a frame a byte at a time. Default 30 s.
    pub read_timeout: Duration,
    /// A reply must be written within this, or the connection is closed: a client that
    /// stops reading holds its connection's task and reply buffer no longer. Default 30 s.
    pub write_timeout: Duration,
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
            max_connections: 512,
            idle_timeout: Duration::from_secs(300),
            read_timeout: Duration::from_secs(30),
            write_timeout: Duration::from_secs(30),
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
/// The limits of `config` hold for every connection: at most `max_connections` at once (the
/// next one is refused in the handshake), and each is closed when it idles past
/// `idle_timeout`, takes longer than `read_timeout` to send a started request or longer than
/// `write_timeout` to take a reply. So a connection costs at most one task, one socket and
/// one frame buffer each way, for a bounded time unless it keeps making requests.
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
    // A connection's task holds one slot from accept to close.
    let slots = Arc::new(Semaphore::new(
        config.max_connections.min(Semaphore::MAX_PERMITS),
    ));
    let refusals = Arc::new(Semaphore::new(MAX_REFUSALS_IN_FLIGHT));
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            biased;
            () = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => match Arc::clone(&slots).try_acquire_owned() {
                    Ok(slot) => {
                        connections.spawn(serve_connection(
                            stream,
                            peer,
                            protocol,
                            config,
                            Arc::clone(&handler),
                            slot,
                        ));
                    }
                    Err(_) => match Arc::clone(&refusals).try_acquire_owned() {
                        Ok(permit) => {
                            warn!(
                                %peer,
                                max_connections = config.max_connections,
                                "at the connection limit, refusing a connection"
                            );
                            connections.spawn(refuse_connection(
                                stream, peer, protocol, config, permit,
                            ));
                        }
                        Err(_) => debug!(
                            %peer,
                            "at the connection limit and refusing many already: closing at once"
                        ),
                    },
                },
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

/// `start + timeout`, or a time decades away if that is past what an `Instant` can hold.
fn deadline_after(start: Instant, timeout: Duration) -> Instant {
    const FAR: Duration = Duration::from_secs(30 * 365 * 24 * 3600);
    start
        .checked_add(timeout)
        .or_else(|| start.checked_add(FAR))
        .unwrap_or(start)
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
    /// Bounds every last error reply.
    farewell_timeout: Duration,
}

impl Connection {
    /// A connection in its handshake (with the handshake's frame limit).
    fn new(stream: TcpStream, peer: SocketAddr, config: &ServerConfig) -> Self {
        let handshake_max = HANDSHAKE_MAX_FRAME.min(config.max_frame);
        Connection {
            stream,
            peer,
            reader: FrameReader::new(handshake_max),
            writer: FrameWriter::new(handshake_max),
            farewell_timeout: FAREWELL_TIMEOUT.min(config.write_timeout),
        }
    }
}

/// A connection over the limit: its hello is answered with a refusal (bounded in time).
async fn refuse_connection(
    stream: TcpStream,
    peer: SocketAddr,
    protocol: Protocol,
    config: ServerConfig,
    _permit: OwnedSemaphorePermit,
) {
    let mut conn = Connection::new(stream, peer, &config);
    let why = format!(
        "the server is at its connection limit ({} connections); try again later",
        config.max_connections
    );
    let wait = config.handshake_timeout.min(FAREWELL_TIMEOUT);
    if tokio::time::timeout(wait, conn.handshake(protocol, Some(why)))
        .await
        .is_err()
    {
        debug!(%peer, "no hello in time from a refused connection");
    }
}

async fn serve_connection<Req, Resp, H>(
    stream: TcpStream,
    peer: SocketAddr,
    protocol: Protocol,
    config: ServerConfig,
    handler: Arc<H>,
    _slot: OwnedSemaphorePermit,
) where
    Req: DeserializeOwned,
    Resp: Serialize,
    H: Fn(Req) -> Option<Resp>,
{
    if let Err(e) = stream.set_nodelay(true) {
        warn!(%peer, error = %e, "cannot set TCP_NODELAY");
    }
    let mut conn = Connection::new(stream, peer, &config);
    match tokio::time::timeout(config.handshake_timeout, conn.handshake(protocol, None)).await {
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
    let idle = tokio::time::sleep(config.idle_timeout);
    tokio::pin!(idle);
    loop {
        // Idle until the first byte of the next request (which may be buffered already).
        // One timer serves the whole connection: it is re-armed only when it fires early,
        // so a busy connection does not register and cancel a timer per request.
        let idle_since = Instant::now();
        let waited = loop {
            tokio::select! {
                biased;
                waited = conn.reader.wait_for_data(&mut conn.stream) => break Some(waited),
                () = &mut idle => {
                    let deadline = deadline_after(idle_since, config.idle_timeout);
                    if Instant::now() >= deadline {
                        break None;
                    }
                    idle.as_mut().reset(deadline);
                }
            }
        };
        match waited {
            Some(Ok(true)) => {}
            Some(Ok(false)) => {
                debug!(%peer, "client closed the connection");
                return;
            }
            Some(Err(e)) => {
                warn!(%peer, error = %e, "connection failed");
                return;
            }
            None => {
                let idle = config.idle_timeout;
                debug!(%peer, ?idle, "idle connection, closing");
                conn.farewell::<Resp>(format!(
                    "idle for {idle:?}, the server closes the connection"
                ))
                .await;
                return;
            }
        }
        let read = tokio::time::timeout(
            config.read_timeout,
            conn.reader.read_frame(&mut conn.stream),
        );
        let request: Request<Req> = match read.await {
            Ok(Ok(Some(request))) => request,
            Ok(Ok(None)) => {
                debug!(%peer, "client closed the connection");
                return;
            }
            Err(_) => {
                let timeout = config.read_timeout;
                warn!(%peer, ?timeout, "request frame not complete in time, closing");
                conn.farewell::<Resp>(format!(
                    "the request frame was not complete within {timeout:?} of its first byte"
                ))
                .await;
                return;
            }
            Ok(Err(e @ (WireError::Decode(_) | WireError::FrameTooLarge { .. }))) => {
                warn!(%peer, error = %e, "bad request frame, closing");
                conn.farewell::<Resp>(format!("bad request frame: {e}"))
                    .await;
                return;
            }
            Ok(Err(e)) => {
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
        match tokio::time::timeout(config.write_timeout, conn.send_reply(id, reply)).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                warn!(%peer, id, error = %e, "cannot send reply, closing");
                return;
            }
            Err(_) => {
                let timeout = config.write_timeout;
                warn!(%peer, id, ?timeout, "the client does not take its reply, closing");
                return;
            }
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
    /// Reads the hello and answers it; `Ok` if the client may go on. With `full`, a hello
    /// that is right in every other way is refused with that message.
    async fn handshake(
        &mut self,
        protocol: Protocol,
        full: Option<String>,
    ) -> Result<(), HandshakeEnd> {
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
        match refusal(&hello, protocol).or(full) {
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

    /// Sends the reply to request `id`; one too large to send is replaced by an error reply.
    async fn send_reply<Resp: Serialize>(
        &mut self,
        id: u64,
        reply: Reply<Resp>,
    ) -> Result<(), WireError> {
        let send = self.writer.write_frame(&mut self.stream, &reply);
        // The reply is encoded: free it before waiting on the socket.
        drop(reply);
        match send.await {
            Err(WireError::FrameTooLarge { len, max }) => {
                let message = format!("the reply of {len} bytes exceeds the limit of {max}");
                warn!(peer = %self.peer, id, "{message}");
                let reply = Reply::<Resp>::Err { id, message };
                self.writer.write_frame(&mut self.stream, &reply).await
            }
            other => other,
        }
    }

    /// Tells the client why its connection is about to close (best effort, bounded).
    async fn farewell<Resp: Serialize>(&mut self, message: String) {
        let reply = Reply::<Resp>::Err { id: 0, message };
        let send = self.writer.write_frame(&mut self.stream, &reply);
        match tokio::time::timeout(self.farewell_timeout, send).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => debug!(peer = %self.peer, error = %e, "cannot send the last error"),
            Err(_) => debug!(peer = %self.peer, "the last error was not taken in time"),
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
