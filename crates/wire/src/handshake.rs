//! The handshake that opens every connection, and the envelopes of the frames that follow it.
//!
//! The client's first frame is a [`Hello`]; the server answers with one [`HelloReply`]. If the
//! reply carries no refusal, both sides speak the same [`Protocol`] and requests may follow;
//! otherwise the server closes the connection after sending it.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::WireError;

/// The 8 bytes that open every Flotilla hello and hello reply.
pub const MAGIC: [u8; 8] = *b"FLOTILLA";

/// The frame size limit during the handshake (on both sides), whatever the configured one:
/// a peer that is not a Flotilla endpoint is turned away before it can make us buffer much.
pub const HANDSHAKE_MAX_FRAME: usize = 4 << 10;

/// Identifies a protocol: both sides must agree on both fields.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Protocol {
    /// The service's name, such as `"kv"` or `"mapreduce"`.
    pub service: &'static str,
    /// The version of that service's messages; bump it whenever their encoding changes.
    pub version: u32,
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?} v{}", self.service, self.version)
    }
}

/// The client's first frame.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hello {
    /// Always [`MAGIC`].
    pub magic: [u8; 8],
    /// The service the client wants.
    pub service: String,
    /// The version of it the client speaks.
    pub version: u32,
}

impl Hello {
    /// The hello a client speaking `protocol` sends.
    pub fn new(protocol: Protocol) -> Self {
        Hello {
            magic: MAGIC,
            service: protocol.service.to_owned(),
            version: protocol.version,
        }
    }
}

/// The server's answer to a [`Hello`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct HelloReply {
    /// Always [`MAGIC`].
    pub magic: [u8; 8],
    /// The service this server serves.
    pub service: String,
    /// The version of it the server speaks.
    pub version: u32,
    /// Why the server turned the client away; `None` if it accepted.
    pub refusal: Option<String>,
}

/// After the handshake, every client frame is a `Request` (`id` ≥ 1, increasing on each
/// connection).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Request<B> {
    /// Identifies the request on its connection; the reply carries it back.
    pub id: u64,
    /// The service's request.
    pub body: B,
}

/// After the handshake, every server frame is a `Reply`: at most one per request, in request
/// order.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Reply<B> {
    /// The handler's reply to request `id`.
    Ok {
        /// The request's id.
        id: u64,
        /// The service's reply.
        body: B,
    },
    /// Request `id` failed on the server, which keeps the connection open; or, with `id` 0,
    /// the connection failed and the server closes it after this frame.
    Err {
        /// The request's id, or 0 for the whole connection.
        id: u64,
        /// What went wrong.
        message: String,
    },
}

/// The server's verdict on a client's hello: `None` to accept, or why it refuses.
pub(crate) fn refusal(hello: &Hello, ours: Protocol) -> Option<String> {
    if hello.magic != MAGIC {
        return Some(format!(
            "not a Flotilla client: its hello starts with b\"{}\" where b\"{}\" was expected",
            hello.magic.escape_ascii(),
            MAGIC.escape_ascii()
        ));
    }
    if hello.service != ours.service {
        return Some(format!(
            "wrong service: this server serves {:?} (v{}), the client asked for {:?} (v{})",
            ours.service, ours.version, hello.service, hello.version
        ));
    }
    if hello.version != ours.version {
        return Some(format!(
            "wrong protocol version for {:?}: this server speaks v{}, the client v{}",
            ours.service, ours.version, hello.version
        ));
    }
    None
}

/// The client's check of the server's reply.
pub(crate) fn check_reply(reply: &HelloReply, ours: Protocol) -> Result<(), WireError> {
    if reply.magic != MAGIC {
        return Err(WireError::Handshake(format!(
            "not a Flotilla server: its reply starts with b\"{}\" where b\"{}\" was expected",
            reply.magic.escape_ascii(),
            MAGIC.escape_ascii()
        )));
    }
    if let Some(why) = &reply.refusal {
        return Err(WireError::Handshake(format!(
            "the server refused the connection: {why}"
        )));
    }
    if reply.service != ours.service || reply.version != ours.version {
        return Err(WireError::Handshake(format!(
            "the server accepted but serves {:?} v{}, where {ours} was expected",
            reply.service, reply.version
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const KV: Protocol = Protocol {
        service: "kv",
        version: 2,
    };

    fn reply(refusal: Option<String>) -> HelloReply {
        HelloReply {
            magic: MAGIC,
            service: "kv".into(),
            version: 2,
            refusal,
        }
    }

    #[test]
    fn hello_starts_with_the_magic() {
        let bytes = postcard::to_stdvec(&Hello::new(KV)).unwrap();
        assert_eq!(&bytes[..8], b"FLOTILLA");
    }

    #[test]
    fn server_accepts_only_its_own_protocol_and_says_why() {
        assert_eq!(refusal(&Hello::new(KV), KV), None);

        let mut bad_magic = Hello::new(KV);
        bad_magic.magic = *b"NOTFLOTI";
        let why = refusal(&bad_magic, KV).unwrap();
        assert!(
            why.contains("NOTFLOTI") && why.contains("FLOTILLA"),
            "{why}"
        );

        let other = Protocol {
            service: "mapreduce",
            version: 2,
        };
        let why = refusal(&Hello::new(other), KV).unwrap();
        assert!(
            why.contains("wrong service") && why.contains("\"kv\""),
            "{why}"
        );
        assert!(why.contains("\"mapreduce\""), "{why}");

        let newer = Protocol {
            service: "kv",
            version: 3,
        };
        let why = refusal(&Hello::new(newer), KV).unwrap();
        assert!(why.contains("wrong protocol version"), "{why}");
        assert!(why.contains("v2") && why.contains("v3"), "{why}");
    }

    #[test]
    fn client_checks_the_reply() {
        assert!(check_reply(&reply(None), KV).is_ok());

        let refused = check_reply(&reply(Some("because".into())), KV);
        assert!(
            matches!(&refused, Err(WireError::Handshake(m)) if m.contains("because")),
            "{refused:?}"
        );

        let mut bad_magic = reply(None);
        bad_magic.magic = *b"XXXXXXXX";
        let got = check_reply(&bad_magic, KV);
        assert!(
            matches!(&got, Err(WireError::Handshake(m)) if m.contains("not a Flotilla server")),
            "{got:?}"
        );

        let mut other = reply(None);
        other.version = 9;
        let got = check_reply(&other, KV);
        assert!(
            matches!(&got, Err(WireError::Handshake(m)) if m.contains("v9")),
            "{got:?}"
        );
    }
}
