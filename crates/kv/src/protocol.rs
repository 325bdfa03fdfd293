//! The messages between clerks and the KV server (the same on the simulator and on TCP).
//!
//! Two client APIs share one server:
//! - 6.5840's 2024 API: `Get` → value (`""` if absent), `Put` (replace), `Append` → the value
//!   before the append. `Put` and `Append` carry the clerk's id and a sequence number so a
//!   retried request executes once.
//! - the 2025 API: `Get` → (value, version), and a conditional `PutIfVersion` that applies
//!   only if the stored version matches (`0` creates a missing key). A conditional put needs
//!   no duplicate table: re-executing it finds the version changed.

use serde::{Deserialize, Serialize};

/// A clerk's identity: random, 64 bits.
pub type ClientId = u64;

/// "I have the reply to my request `seq`; you may forget it." Sent on a clerk's next request
/// so the server frees the remembered reply (an `Append`'s old value) at once.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ack {
    pub client: ClientId,
    pub seq: u64,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Request {
    /// Read a key. Idempotent: the server keeps nothing for it (except honouring `ack`).
    Get { key: String, ack: Option<Ack> },
    /// Replace a key's value, exactly once per (client, seq).
    Put {
        key: String,
        value: String,
        client: ClientId,
        seq: u64,
    },
    /// Append to a key's value and return the value before, exactly once per (client, seq).
    Append {
        key: String,
        value: String,
        client: ClientId,
        seq: u64,
    },
    /// Store `value` only if the key's version is `version` (0 = the key must not exist).
    PutIfVersion {
        key: String,
        value: String,
        version: u64,
    },
}

impl Request {
    /// The key the request is about.
    pub fn key(&self) -> &str {
        match self {
            Request::Get { key, .. }
            | Request::Put { key, .. }
            | Request::Append { key, .. }
            | Request::PutIfVersion { key, .. } => key,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Reply {
    /// A `Get` found the key.
    Value { value: String, version: u64 },
    /// A `Get` of a missing key, or a `PutIfVersion` with version ≠ 0 on a missing key.
    NoKey,
    /// A `Put` or `PutIfVersion` took effect (now, or earlier for a retried `Put`).
    Done,
    /// An `Append` took effect; the value before it.
    OldValue { value: String },
    /// A `PutIfVersion` whose version did not match; nothing changed.
    VersionMismatch { current: u64 },
    /// A request older than the clerk's latest one: a delayed duplicate whose reply the clerk
    /// no longer wants. Clerks never see it for the request they are waiting on.
    Stale,
    /// A `Put`, `Append` or `PutIfVersion` refused because it would break a size limit;
    /// nothing changed. A retry of the same `Put` or `Append` gets the same answer.
    TooLarge(TooLarge),
}

/// Which size limit a refused write would have broken, by how much. Nothing was changed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum TooLarge {
    /// The key is `len` bytes long; keys may have at most `max`.
    Key { len: u64, max: u64 },
    /// The value is `len` bytes long; values may have at most `max`.
    Value { len: u64, max: u64 },
    /// The `Append` would have made the value `len` bytes long; values may have at most `max`.
    Appended { len: u64, max: u64 },
}

impl std::fmt::Display for TooLarge {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            TooLarge::Key { len, max } => write!(
                f,
                "the key of {len} bytes is over the server's limit of {max} bytes"
            ),
            TooLarge::Value { len, max } => write!(
                f,
                "the value of {len} bytes is over the server's limit of {max} bytes"
            ),
            TooLarge::Appended { len, max } => write!(
                f,
                "the append would make the value {len} bytes long, over the server's limit of {max} bytes"
            ),
        }
    }
}

impl std::error::Error for TooLarge {}

/// The most bytes the encoding of a request or a reply, in its wire envelope, adds to the
/// key and value it carries (every integer at its longest): a server whose frames hold
/// `max_key + max_value + MESSAGE_OVERHEAD` bytes can receive every write it accepts and send
/// every value it stores.
pub const MESSAGE_OVERHEAD: usize = 64;

/// Errors of the 2025 API, as its clerk reports them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum KvError {
    /// The key does not exist (`Get`, or `PutIfVersion` with a version other than 0).
    NoKey,
    /// The version did not match; the put did not happen.
    Version,
    /// The put was sent more than once and a retry found the version changed: an earlier
    /// attempt may or may not have taken effect.
    Maybe,
}

impl std::fmt::Display for KvError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            KvError::NoKey => "ErrNoKey",
            KvError::Version => "ErrVersion",
            KvError::Maybe => "ErrMaybe",
        })
    }
}

impl std::error::Error for KvError {}
