//! The one error type of this crate.

use std::time::Duration;

/// Everything that can go wrong reading, writing or exchanging frames.
///
/// After [`WireError::Timeout`], [`WireError::Encode`], a [`WireError::FrameTooLarge`] refused
/// before sending, or a [`WireError::Remote`] answering one request, a [`crate::Client`] stays
/// usable; after any other error its connection is gone (see [`crate::Client::is_usable`]).
#[derive(Debug, thiserror::Error)]
pub enum WireError {
    /// The socket failed (connect refused, reset, broken pipe, ...).
    #[error("i/o error: {0}")]
    Io(#[from] std::io::Error),
    /// A frame's length exceeds the limit: refused before sending, or announced by the peer
    /// (whose payload is then never read).
    #[error("frame of {len} bytes exceeds the limit of {max} bytes")]
    FrameTooLarge { len: u64, max: usize },
    /// A complete frame whose payload is not a valid encoding of the expected message
    /// (including one with bytes left over after the message).
    #[error("malformed frame: {0}")]
    Decode(String),
    /// The peer closed the connection in the middle of a frame.
    #[error("connection closed in the middle of a frame")]
    Truncated,
    /// The handshake failed: the peer is not a Flotilla endpoint, serves another service, or
    /// speaks another version of it. The message says which, and what was expected.
    #[error("handshake failed: {0}")]
    Handshake(String),
    /// The peer closed the connection (at a frame boundary) before answering.
    #[error("connection closed by the peer")]
    Closed,
    /// The server reported an error: for one request (its handler panicked, or its reply was
    /// too large to send), or for the connection, which it then closed.
    #[error("server error: {0}")]
    Remote(String),
    /// A call got no reply within its timeout (the reply may have been lost, or may still come:
    /// a late reply is recognised by its request id and discarded).
    #[error("no reply within {0:?}")]
    Timeout(Duration),
    /// A message could not be encoded with postcard (a type postcard does not support, such as
    /// a sequence of unknown length). Nothing was sent.
    #[error("cannot encode message: {0}")]
    Encode(String),
}
