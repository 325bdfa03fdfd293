//! # flotilla-wire: framed postcard messages over TCP
//!
//! Every real (non-simulated) Flotilla service — the KV server, the MapReduce coordinator —
//! talks to its clients through this crate: a frame codec, a request/response [`serve`] loop
//! and a [`Client`].
//!
//! # Frames
//!
//! A frame is one message:
//!
//! ```text
//! [len: u32, big-endian][payload: len bytes, the postcard encoding of exactly one message]
//! ```
//!
//! Each reader and writer has a size limit ([`DEFAULT_MAX_FRAME`], 64 MiB, unless configured):
//! a writer refuses to send a longer frame, and a reader rejects one as soon as it has read the
//! length, before reading (or allocating for) the payload. See [`frame`] for the codec's
//! guarantees; [`read_frame`] / [`write_frame`] are the one-frame functions, [`FrameReader`] /
//! [`FrameWriter`] the buffered (and, for reading, cancel-safe) ones.
//!
//! # Handshake
//!
//! The client's first frame is a [`Hello`]: the 8-byte magic `FLOTILLA`, the service name and
//! the protocol version (a [`Protocol`]). The server answers with a [`HelloReply`] carrying the
//! same magic, its own service and version, and either no refusal — the connection is open —
//! or a message saying what was wrong (wrong magic, other service, other version: which, and
//! what was expected), after which it closes the connection. The client checks the reply in
//! turn, so both a non-Flotilla server and a refusal surface as [`WireError::Handshake`] with
//! that message. Handshake frames are limited to [`HANDSHAKE_MAX_FRAME`] bytes, and the server
//! closes a connection that has not completed the handshake within
//! [`ServerConfig::handshake_timeout`].
//!
//! # Requests and replies
//!
//! After the handshake the client sends [`Request`] frames (`id`, then the service's request)
//! and the server answers each with at most one [`Reply`] frame, in request order: the
//! handler's reply, or an error for that request. A handler may drop a reply (to simulate a
//! lost one): the server then sends nothing at all for that request, the client's call times
//! out, and the connection carries on in step. Because replies carry their request's id, the
//! client also copes with a reply that arrives after its call gave up: it is discarded, never
//! taken for the reply to a later request.
//!
//! # Guarantees
//!
//! - Nothing a peer sends makes either side panic or allocate more than the frame limit.
//! - On the server, a malformed, oversized or truncated frame, a failed handshake, or a socket
//!   error ends that one connection (logged with `tracing::warn!`) and no other; the server
//!   keeps accepting and serving.
//! - Each connection is served by its own task; sockets use `TCP_NODELAY`; every frame goes
//!   out in one write of one buffer, and buffers are reused from frame to frame.
//! - Every connection is bounded ([`ServerConfig`], each limit with a default): at most
//!   `max_connections` at once (the next client's connect fails with a
//!   [`WireError::Handshake`] saying the server is at its connection limit); a connection is
//!   closed when it idles past `idle_timeout` after a reply, takes longer than `read_timeout`
//!   to finish a request it started, or longer than `write_timeout` to take a reply. A client
//!   that misbehaves in any of these ways costs the server one task, one socket and one
//!   frame buffer each way, for a bounded time, and delays no other client.
//! - [`Client::call`] waits at most its timeout, and pairs every reply with its own request.

pub mod client;
mod error;
pub mod frame;
pub mod handshake;
pub mod pool;
pub mod server;

pub use client::Client;
pub use error::WireError;
pub use frame::{
    encode_frame, read_frame, write_frame, FrameReader, FrameWriter, DEFAULT_MAX_FRAME,
};
pub use handshake::{Hello, HelloReply, Protocol, Reply, Request, HANDSHAKE_MAX_FRAME, MAGIC};
pub use pool::{CallFailure, Pool, SharedPool};
pub use server::{serve, ServerConfig};
