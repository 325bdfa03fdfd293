//! The client side of a connection: [`Client::connect`] shakes hands, [`Client::call`] sends
//! one request and waits for its reply.

use std::marker::PhantomData;
use std::net::SocketAddr;
use std::time::Duration;

use serde::de::DeserializeOwned;
use serde::Serialize;
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpStream, ToSocketAddrs};
use tracing::debug;

use crate::frame::{encode_frame, FrameReader};
use crate::handshake::HANDSHAKE_MAX_FRAME;
use crate::handshake::{check_reply, Hello, HelloReply, Protocol, Reply, Request};
use crate::WireError;

/// Output buffer capacity kept between calls; a larger one (left by a large request) is freed.
const KEEP_CAPACITY: usize = 1 << 20;

/// A client connection speaking one [`Protocol`]: requests `Req`, replies `Resp`.
///
/// One call at a time (`call` takes `&mut self`); open several clients for concurrency.
///
/// Every request carries an id, increasing on the connection, and its reply carries it back,
/// so a reply that arrives after its call gave up (timed out, or was cancelled by dropping the
/// future) is recognised and discarded by a later call: a reply is never paired with the wrong
/// request. `call` is cancel-safe in the same sense: the bytes of a request that a cancelled
/// call left half-written are finished before the next request, and a half-read reply is
/// completed by the next read.
///
/// After an error that leaves the connection in an unknown state ([`Client::is_usable`] turns
/// false), every call fails with [`WireError::Closed`]: connect again.
pub struct Client<Req, Resp> {
    stream: TcpStream,
    peer: SocketAddr,
    protocol: Protocol,
    max_frame: usize,
    reader: FrameReader,
    /// Encoded requests; `out[sent..]` has not been written to the socket yet.
    out: Vec<u8>,
    sent: usize,
    /// The id of the next request (ids start at 1; 0 names the whole connection in replies).
    next_id: u64,
    usable: bool,
    _messages: PhantomData<fn(&Req) -> Resp>,
}

impl<Req, Resp> std::fmt::Debug for Client<Req, Resp> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("peer", &self.peer)
            .field("protocol", &self.protocol)
            .field("max_frame", &self.max_frame)
            .field("next_id", &self.next_id)
            .field("unsent", &(self.out.len() - self.sent))
            .field("usable", &self.usable)
            .finish()
    }
}

impl<Req: Serialize, Resp: DeserializeOwned> Client<Req, Resp> {
    /// Connects to `addr` and completes the handshake for `protocol`. Frames longer than
    /// `max_frame` are refused in both directions after the handshake.
    ///
    /// A server that accepts the connection but never answers makes this wait forever: bound
    /// it with `tokio::time::timeout` (dropping the future closes the socket).
    pub async fn connect(
        addr: impl ToSocketAddrs,
        protocol: Protocol,
        max_frame: usize,
    ) -> Result<Self, WireError> {
        let stream = TcpStream::connect(addr).await?;
        stream.set_nodelay(true)?;
        let peer = stream.peer_addr()?;
        let mut client = Client {
            stream,
            peer,
            protocol,
            max_frame,
            reader: FrameReader::new(HANDSHAKE_MAX_FRAME),
            out: Vec::new(),
            sent: 0,
            next_id: 1,
            usable: true,
            _messages: PhantomData,
        };
        client.handshake().await?;
        client.reader.set_max_frame(max_frame);
        debug!(%peer, %protocol, "connected");
        Ok(client)
    }

    async fn handshake(&mut self) -> Result<(), WireError> {
        encode_frame(
            &mut self.out,
            &Hello::new(self.protocol),
            HANDSHAKE_MAX_FRAME,
        )?;
        self.stream.write_all(&self.out).await?;
        self.stream.flush().await?;
        self.out.clear();
        let reply: HelloReply = match self.reader.read_frame(&mut self.stream).await {
            Ok(Some(reply)) => reply,
            Ok(None) | Err(WireError::Truncated) => {
                return Err(WireError::Handshake(
                    "the server closed the connection without answering the hello".into(),
                ))
            }
            Err(e @ (WireError::Decode(_) | WireError::FrameTooLarge { .. })) => {
                return Err(WireError::Handshake(format!(
                    "not a Flotilla server: its answer to the hello is not a hello reply ({e})"
                )))
            }
            Err(e) => return Err(e),
        };
        check_reply(&reply, self.protocol)
    }

    /// Sends `req` and waits at most `timeout` for its reply.
    ///
    /// Errors after which the connection stays usable: [`WireError::Timeout`] (the reply was
    /// lost or is late; it will be discarded if it comes), [`WireError::Remote`] for this
    /// request, and a request refused before sending ([`WireError::FrameTooLarge`],
    /// [`WireError::Encode`]). Any other error closes the connection for good.
    pub async fn call(&mut self, req: &Req, timeout: Duration) -> Result<Resp, WireError> {
        let id = self.enqueue(req)?;
        match tokio::time::timeout(timeout, self.exchange(id)).await {
            Ok(Ok(reply)) => Ok(reply),
            Ok(Err(e)) => {
                if !matches!(e, WireError::Remote(_)) {
                    self.usable = false;
                }
                Err(e)
            }
            Err(_) => Err(WireError::Timeout(timeout)),
        }
    }

    /// [`Client::call`] for a reply that may be large: `timeout` bounds sending the request
    /// and the wait until the reply starts to arrive, as in `call`; if it runs out while a
    /// reply's frame is coming in, the call is given `per_mib` more for each MiB of that
    /// frame (once), so a large reply that keeps arriving is not cut off while a server that
    /// never answers is given up on as soon as with `call`. The whole call takes at most
    /// `timeout` plus `per_mib` for each MiB of the frame limit.
    pub async fn call_sized(
        &mut self,
        req: &Req,
        timeout: Duration,
        per_mib: Duration,
    ) -> Result<Resp, WireError> {
        let id = self.enqueue(req)?;
        let mut budget = timeout;
        let mut extended = false;
        loop {
            // `exchange` keeps all its progress in `self`, so a timed-out one goes on where
            // it stopped when called again.
            match tokio::time::timeout(budget, self.exchange(id)).await {
                Ok(Ok(reply)) => return Ok(reply),
                Ok(Err(e)) => {
                    if !matches!(e, WireError::Remote(_)) {
                        self.usable = false;
                    }
                    return Err(e);
                }
                Err(_) => match self.reader.pending_frame_len() {
                    Some(len) if !extended => {
                        extended = true;
                        let mib = len.min(self.max_frame).div_ceil(1 << 20).max(1);
                        budget = per_mib.saturating_mul(u32::try_from(mib).unwrap_or(u32::MAX));
                        debug!(peer = %self.peer, len, ?budget, "a large reply is arriving");
                    }
                    _ => {
                        return Err(WireError::Timeout(timeout.saturating_add(if extended {
                            budget
                        } else {
                            Duration::ZERO
                        })))
                    }
                },
            }
        }
    }

    /// Encodes `req` as the next request, to be written by [`Client::exchange`]; its id.
    fn enqueue(&mut self, req: &Req) -> Result<u64, WireError> {
        if !self.usable {
            return Err(WireError::Closed);
        }
        if self.sent == self.out.len() {
            if self.out.capacity() > KEEP_CAPACITY {
                self.out = Vec::new();
            }
            self.out.clear();
            self.sent = 0;
        }
        let id = self.next_id;
        // Appended behind whatever a cancelled call left unsent, which goes out first.
        encode_frame(&mut self.out, &Request { id, body: req }, self.max_frame)?;
        self.next_id += 1;
        Ok(id)
    }

    /// Writes the pending requests and reads replies until the one to request `id`.
    /// Cancel-safe: all progress is kept in `self`.
    async fn exchange(&mut self, id: u64) -> Result<Resp, WireError> {
        while self.sent < self.out.len() {
            // `write` is cancel-safe: it writes some bytes and says how many, or writes none.
            let n = self.stream.write(&self.out[self.sent..]).await?;
            if n == 0 {
                return Err(WireError::Io(std::io::ErrorKind::WriteZero.into()));
            }
            self.sent += n;
        }
        loop {
            let reply: Reply<Resp> = match self.reader.read_frame(&mut self.stream).await? {
                Some(reply) => reply,
                None => return Err(WireError::Closed),
            };
            match reply {
                Reply::Err { id: 0, message } => {
                    self.usable = false;
                    return Err(WireError::Remote(message));
                }
                Reply::Ok { id: got, body } if got == id => return Ok(body),
                Reply::Err { id: got, message } if got == id => {
                    return Err(WireError::Remote(message))
                }
                Reply::Ok { id: got, .. } | Reply::Err { id: got, .. } if got < id => {
                    debug!(peer = %self.peer, got, "discarding a late reply");
                }
                Reply::Ok { id: got, .. } | Reply::Err { id: got, .. } => {
                    return Err(WireError::Decode(format!(
                        "reply to request {got}, which was not sent yet (awaiting {id})"
                    )));
                }
            }
        }
    }

    /// `false` once an error has left the connection in an unknown state; calls then fail
    /// with [`WireError::Closed`].
    pub fn is_usable(&self) -> bool {
        self.usable
    }

    /// Whether the server has closed (or reset) this connection, seen without waiting: the
    /// socket reads end-of-file or an error. Bytes waiting to be read (a late reply) are
    /// left where they are. A kept connection that answers `true` would fail the next call
    /// after its request was written, which leaves the caller not knowing whether the
    /// server got it; checking first lets a pool connect afresh instead.
    pub fn peer_closed(&self) -> bool {
        // A non-blocking peek (tokio's socket is non-blocking) straight at the socket, so an
        // end-of-file the reactor has not reported yet is seen too.
        let mut byte = [std::mem::MaybeUninit::<u8>::uninit()];
        match socket2::SockRef::from(&self.stream).peek(&mut byte) {
            Ok(0) => true,
            Ok(_) => false,
            Err(e) => !matches!(
                e.kind(),
                std::io::ErrorKind::WouldBlock | std::io::ErrorKind::Interrupted
            ),
        }
    }

    /// The server's address.
    pub fn peer_addr(&self) -> SocketAddr {
        self.peer
    }

    /// This end's address: the local IP through which the server is reached (which, say, a
    /// worker can give others to reach it on the same network).
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.stream.local_addr()
    }

    /// The protocol this client speaks.
    pub fn protocol(&self) -> Protocol {
        self.protocol
    }
}
