//! The KV server's state machine: requests in, replies out. No I/O, no clock.
//!
//! Guarantees:
//! - every operation is atomic and takes effect at one point between its arrival and its
//!   reply, so any driver that handles requests one at a time is linearizable;
//! - a `Put` or `Append` executes at most once per (client, seq): a retry of the clerk's
//!   latest request gets the remembered outcome, an older duplicate gets `Stale`;
//! - no key over [`Limits::max_key`] bytes and no value over [`Limits::max_value`] bytes is
//!   ever stored. A write that would break a limit (a `Put` or `PutIfVersion` with too long a
//!   key or value, an `Append` that would grow the value past the limit) gets
//!   [`Reply::TooLarge`] and changes nothing in the store; for a `Put` or `Append` the
//!   rejection is the clerk's remembered outcome like any other, so a retry gets the same
//!   rejection even if the value has since shrunk. A `Get` of a key over the limit finds
//!   nothing. With the default limits every stored value fits a `Get` reply in a default
//!   frame (see [`crate::protocol::MESSAGE_OVERHEAD`]);
//! - duplicate detection costs O(1) state per clerk that writes: its last sequence number
//!   and that write's outcome. An `Append`'s outcome is the value before it, to be resent if
//!   the reply is lost, until the clerk's next request (or `Ack`) says it has it. The server
//!   does not copy that value: while a key is only appended to, each value it had is a prefix
//!   of the current one, so the outcome names the key and the old value's length. Only when a
//!   `Put` replaces a value that unacknowledged `Append`s still owe is the longest owed prefix
//!   kept, once for all of them, until the last of them is acknowledged or superseded. So a
//!   small `Append` to a large value pins no copy of it; the bytes kept beyond the stored
//!   values are at most one old value (≤ `max_value`) per replaced value still owed, and
//!   never more of those than there are clerks whose `Append` reply is unacknowledged, plus a
//!   copy of the key (≤ `max_key`) per such clerk. Clerks that only read leave no state at
//!   all, and nothing keeps a copy of a `Put`'s value or a `Get`'s reply.

use std::collections::HashMap;

use serde::{Deserialize, Serialize};

use crate::protocol::{Ack, ClientId, Reply, Request, TooLarge};

/// The largest key stored by default: 4 KiB.
pub const DEFAULT_MAX_KEY: usize = 4 << 10;

/// The largest value stored by default: 32 MiB, half the default frame, so that a `Get`
/// reply carrying any stored value always fits in a frame (and the lab's memory tests, whose
/// values reach 20 MiB, run unchanged).
pub const DEFAULT_MAX_VALUE: usize = 32 << 20;

/// Size limits on what the server stores.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// The longest key, in bytes. Default [`DEFAULT_MAX_KEY`].
    pub max_key: usize,
    /// The longest value, in bytes. Default [`DEFAULT_MAX_VALUE`].
    pub max_value: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_key: DEFAULT_MAX_KEY,
            max_value: DEFAULT_MAX_VALUE,
        }
    }
}

impl Limits {
    fn check_key(&self, key: &str) -> Result<(), TooLarge> {
        if key.len() > self.max_key {
            return Err(TooLarge::Key {
                len: key.len() as u64,
                max: self.max_key as u64,
            });
        }
        Ok(())
    }

    /// Checks a write that makes the value `value` (a `Put` or `PutIfVersion`).
    fn check_write(&self, key: &str, value: &str) -> Result<(), TooLarge> {
        self.check_key(key)?;
        if value.len() > self.max_value {
            return Err(TooLarge::Value {
                len: value.len() as u64,
                max: self.max_value as u64,
            });
        }
        Ok(())
    }
}

/// A stored key.
#[derive(Debug, Serialize, Deserialize)]
struct Entry {
    value: String,
    /// Counts the writes; 0 for a key not yet written (none is stored so).
    version: u64,
    /// Counts the times the value was replaced rather than appended to. Within one
    /// generation the value only grows, so each value it had is a prefix of the current one.
    generation: u64,
    /// Sessions whose unacknowledged `Append` returned a prefix of the current value ...
    owed: usize,
    /// ... of at most this length.
    owed_len: usize,
    /// Prefixes of replaced values that sessions are still owed.
    retired: Vec<Retired>,
}

/// The longest owed prefix of a value that a `Put` replaced.
#[derive(Debug, Serialize, Deserialize)]
struct Retired {
    generation: u64,
    prefix: String,
    owed: usize,
}

impl Entry {
    fn new(value: String, version: u64) -> Self {
        Entry {
            value,
            version,
            generation: 0,
            owed: 0,
            owed_len: 0,
            retired: Vec::new(),
        }
    }

    /// Replaces the value, keeping what unacknowledged `Append`s are owed of the old one.
    fn replace(&mut self, value: String) {
        let mut old = std::mem::replace(&mut self.value, value);
        if self.owed > 0 {
            old.truncate(self.owed_len);
            old.shrink_to_fit();
            self.retired.push(Retired {
                generation: self.generation,
                prefix: old,
                owed: self.owed,
            });
        }
        self.generation += 1;
        self.owed = 0;
        self.owed_len = 0;
        self.version += 1;
    }

    /// The value an `Append` of `generation` returned, `old_len` bytes long.
    fn old_value(&self, generation: u64, old_len: usize) -> String {
        let base = if generation == self.generation {
            &self.value
        } else {
            &self
                .retired
                .iter()
                .find(|r| r.generation == generation)
                .expect("an owed old value is kept until it is released")
                .prefix
        };
        base.get(..old_len)
            .expect("an owed old value is a prefix of what is kept")
            .to_owned()
    }

    /// An `Append` of `generation` is no longer owed.
    fn release(&mut self, generation: u64) {
        if generation == self.generation {
            assert!(self.owed > 0, "released an append that was not owed");
            self.owed -= 1;
            if self.owed == 0 {
                self.owed_len = 0;
            }
            return;
        }
        let i = self
            .retired
            .iter()
            .position(|r| r.generation == generation)
            .expect("an owed old value is kept until it is released");
        self.retired[i].owed -= 1;
        if self.retired[i].owed == 0 {
            self.retired.swap_remove(i);
            if self.retired.is_empty() {
                self.retired = Vec::new();
            }
        }
    }
}

/// What the server remembers about a clerk's latest write.
#[derive(Debug, Serialize, Deserialize)]
struct Session {
    seq: u64,
    outcome: Outcome,
}

#[derive(Debug, Serialize, Deserialize)]
enum Outcome {
    /// A `Put` took effect, or an `Append` whose reply was acknowledged (its duplicate cannot
    /// be the request its clerk waits for).
    Done,
    /// An `Append` took effect and returned the value `key` had: `old_len` bytes, a prefix
    /// of the value of `generation` (see [`Entry`]).
    Appended {
        key: String,
        generation: u64,
        old_len: usize,
    },
    /// The write was refused; nothing changed.
    Rejected(TooLarge),
}

#[derive(Debug, Default)]
pub struct KvServer {
    /// Keys are never deleted; versions only grow.
    data: HashMap<String, Entry>,
    sessions: HashMap<ClientId, Session>,
    limits: Limits,
}

/// A `Put` or `Append`, to run at most once.
enum Write {
    Put { key: String, value: String },
    Append { key: String, value: String },
}

impl KvServer {
    /// A server with the default [`Limits`].
    pub fn new() -> Self {
        Self::default()
    }

    pub fn with_limits(limits: Limits) -> Self {
        KvServer {
            limits,
            ..Self::default()
        }
    }

    pub fn limits(&self) -> Limits {
        self.limits
    }

    pub fn handle(&mut self, request: Request) -> Reply {
        match request {
            Request::Get { key, ack } => {
                if let Some(ack) = ack {
                    self.acknowledge(ack);
                }
                self.read(&key)
            }
            Request::Put {
                key,
                value,
                client,
                seq,
            } => self.once(client, seq, Write::Put { key, value }),
            Request::Append {
                key,
                value,
                client,
                seq,
            } => self.once(client, seq, Write::Append { key, value }),
            Request::PutIfVersion {
                key,
                value,
                version,
            } => {
                if let Err(too_large) = self.limits.check_write(&key, &value) {
                    return Reply::TooLarge(too_large);
                }
                match self.data.get_mut(&key) {
                    Some(entry) if entry.version == version => {
                        entry.replace(value);
                        Reply::Done
                    }
                    Some(entry) => Reply::VersionMismatch {
                        current: entry.version,
                    },
                    None if version == 0 => {
                        self.data.insert(key, Entry::new(value, 1));
                        Reply::Done
                    }
                    None => Reply::NoKey,
                }
            }
        }
    }

    /// Runs `write` unless (client, seq) already ran, and remembers its outcome.
    fn once(&mut self, client: ClientId, seq: u64, write: Write) -> Reply {
        let previous = match self.sessions.get_mut(&client) {
            Some(session) if seq < session.seq => return Reply::Stale,
            Some(session) if seq == session.seq => return replay(&self.data, &session.outcome),
            // The clerk has the reply to its previous write: that outcome is no longer owed.
            Some(session) => Some(std::mem::replace(&mut session.outcome, Outcome::Done)),
            None => None,
        };
        if let Some(previous) = previous {
            self.release(previous);
        }
        let (outcome, reply) = match write {
            Write::Put { key, value } => self.put(key, value),
            Write::Append { key, value } => self.append(key, &value),
        };
        self.sessions.insert(client, Session { seq, outcome });
        reply
    }

    fn put(&mut self, key: String, value: String) -> (Outcome, Reply) {
        if let Err(too_large) = self.limits.check_write(&key, &value) {
            return (Outcome::Rejected(too_large), Reply::TooLarge(too_large));
        }
        match self.data.get_mut(&key) {
            Some(entry) => entry.replace(value),
            None => {
                self.data.insert(key, Entry::new(value, 1));
            }
        }
        (Outcome::Done, Reply::Done)
    }

    fn append(&mut self, key: String, value: &str) -> (Outcome, Reply) {
        let current = self.data.get(&key).map_or(0, |entry| entry.value.len());
        let checked = self.limits.check_key(&key).and_then(|()| {
            let len = current.saturating_add(value.len());
            if len > self.limits.max_value {
                return Err(TooLarge::Appended {
                    len: len as u64,
                    max: self.limits.max_value as u64,
                });
            }
            Ok(())
        });
        if let Err(too_large) = checked {
            return (Outcome::Rejected(too_large), Reply::TooLarge(too_large));
        }
        let entry = self
            .data
            .entry(key.clone())
            .or_insert_with(|| Entry::new(String::new(), 0));
        let old = entry.value.clone();
        entry.value.push_str(value);
        entry.version += 1;
        entry.owed += 1;
        entry.owed_len = entry.owed_len.max(old.len());
        let outcome = Outcome::Appended {
            key,
            generation: entry.generation,
            old_len: old.len(),
        };
        (outcome, Reply::OldValue { value: old })
    }

    /// A remembered outcome is no longer needed.
    fn release(&mut self, outcome: Outcome) {
        if let Outcome::Appended {
            key, generation, ..
        } = outcome
        {
            self.data
                .get_mut(&key)
                .expect("keys are never deleted")
                .release(generation);
        }
    }

    fn acknowledge(&mut self, ack: Ack) {
        let Some(session) = self.sessions.get_mut(&ack.client) else {
            return;
        };
        // Only an owed old value is acknowledged; any other outcome stays as it is.
        if session.seq == ack.seq && matches!(session.outcome, Outcome::Appended { .. }) {
            let acknowledged = std::mem::replace(&mut session.outcome, Outcome::Done);
            self.release(acknowledged);
        }
    }

    /// A `Get` that changes nothing (no acknowledgement is taken): what a replica serves
    /// for a read that does not go through the log.
    pub fn read(&self, key: &str) -> Reply {
        match self.data.get(key) {
            Some(entry) => Reply::Value {
                value: entry.value.clone(),
                version: entry.version,
            },
            None => Reply::NoKey,
        }
    }

    /// The whole state — keys, values, versions and the duplicate-detection sessions — as
    /// bytes [`KvServer::restore`] reads back. Keys and sessions are sorted, so equal states
    /// give equal bytes on every replica.
    pub fn snapshot(&self) -> Vec<u8> {
        let mut data: Vec<(&String, &Entry)> = self.data.iter().collect();
        data.sort_unstable_by(|a, b| a.0.cmp(b.0));
        let mut sessions: Vec<(&ClientId, &Session)> = self.sessions.iter().collect();
        sessions.sort_unstable_by_key(|s| *s.0);
        postcard::to_allocvec(&(data, sessions)).expect("a KV state always encodes")
    }

    /// Replaces the state by a [`KvServer::snapshot`]'s (the limits stay this server's).
    /// A snapshot that does not decode changes nothing and is reported.
    pub fn restore(&mut self, snapshot: &[u8]) -> Result<(), postcard::Error> {
        type Decoded = (Vec<(String, Entry)>, Vec<(ClientId, Session)>);
        let (data, sessions): Decoded = postcard::from_bytes(snapshot)?;
        self.data = data.into_iter().collect();
        self.sessions = sessions.into_iter().collect();
        Ok(())
    }

    /// Number of clerks with remembered writes (for tests and status output).
    pub fn sessions(&self) -> usize {
        self.sessions.len()
    }

    pub fn keys(&self) -> usize {
        self.data.len()
    }

    /// Bytes of replaced values kept because unacknowledged `Append` replies still owe them
    /// (for tests and status output).
    pub fn retained_bytes(&self) -> usize {
        self.data
            .values()
            .flat_map(|entry| &entry.retired)
            .map(|retired| retired.prefix.capacity())
            .sum()
    }
}

/// The reply a retry of a remembered write gets.
fn replay(data: &HashMap<String, Entry>, outcome: &Outcome) -> Reply {
    match outcome {
        Outcome::Done => Reply::Done,
        Outcome::Rejected(too_large) => Reply::TooLarge(*too_large),
        Outcome::Appended {
            key,
            generation,
            old_len,
        } => Reply::OldValue {
            value: data
                .get(key)
                .expect("keys are never deleted")
                .old_value(*generation, *old_len),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn append(key: &str, value: &str, client: u64, seq: u64) -> Request {
        Request::Append {
            key: key.into(),
            value: value.into(),
            client,
            seq,
        }
    }

    #[test]
    fn a_restored_snapshot_keeps_values_versions_and_duplicate_detection() {
        let mut s = KvServer::new();
        s.handle(append("k", "a", 1, 1));
        s.handle(Request::Put {
            key: "p".into(),
            value: "v".into(),
            client: 2,
            seq: 7,
        });
        s.handle(Request::PutIfVersion {
            key: "p".into(),
            value: "w".into(),
            version: 1,
        });
        let snapshot = s.snapshot();
        let mut restored = KvServer::new();
        restored.restore(&snapshot).expect("a snapshot restores");
        assert_eq!(restored.snapshot(), snapshot, "equal states, equal bytes");
        assert_eq!(
            restored.read("p"),
            Reply::Value {
                value: "w".into(),
                version: 2
            }
        );
        // The retry of client 1's append is answered from its session, not run again.
        assert_eq!(
            restored.handle(append("k", "a", 1, 1)),
            Reply::OldValue { value: "".into() }
        );
        assert_eq!(
            restored.read("k"),
            Reply::Value {
                value: "a".into(),
                version: 1
            }
        );
        assert_eq!(restored.handle(append("k", "a", 1, 0)), Reply::Stale);
        assert!(
            KvServer::new()
                .restore(&snapshot[..snapshot.len() - 1])
                .is_err(),
            "a truncated snapshot is refused"
        );
    }

    #[test]
    fn retried_append_executes_once() {
        let mut s = KvServer::new();
        assert_eq!(
            s.handle(append("k", "a", 1, 1)),
            Reply::OldValue { value: "".into() }
        );
        assert_eq!(
            s.handle(append("k", "a", 1, 1)),
            Reply::OldValue { value: "".into() }
        );
        assert_eq!(
            s.handle(append("k", "b", 1, 2)),
            Reply::OldValue { value: "a".into() }
        );
        assert_eq!(s.handle(append("k", "a", 1, 1)), Reply::Stale);
        let get = s.handle(Request::Get {
            key: "k".into(),
            ack: None,
        });
        assert_eq!(
            get,
            Reply::Value {
                value: "ab".into(),
                version: 2
            }
        );
    }

    #[test]
    fn ack_frees_the_remembered_old_value() {
        let mut s = KvServer::new();
        s.handle(append("k", "xyz", 7, 1));
        s.handle(append("k", "w", 7, 2));
        assert!(matches!(s.sessions[&7].outcome, Outcome::Appended { .. }));
        s.handle(Request::Get {
            key: "k".into(),
            ack: Some(Ack { client: 7, seq: 2 }),
        });
        assert!(matches!(s.sessions[&7].outcome, Outcome::Done));
        assert_eq!(
            s.handle(append("k", "w", 7, 2)),
            Reply::Done,
            "a late duplicate is harmless"
        );
    }

    #[test]
    fn versioned_puts_follow_the_2025_rules() {
        let mut s = KvServer::new();
        let put = |k: &str, v: &str, version| Request::PutIfVersion {
            key: k.into(),
            value: v.into(),
            version,
        };
        assert_eq!(s.handle(put("k", "a", 0)), Reply::Done);
        assert_eq!(
            s.handle(put("k", "b", 0)),
            Reply::VersionMismatch { current: 1 }
        );
        assert_eq!(s.handle(put("y", "b", 1)), Reply::NoKey);
        assert_eq!(s.handle(put("k", "b", 1)), Reply::Done);
        assert_eq!(
            s.handle(Request::Get {
                key: "k".into(),
                ack: None
            }),
            Reply::Value {
                value: "b".into(),
                version: 2
            }
        );
        assert_eq!(
            s.handle(Request::Get {
                key: "y".into(),
                ack: None
            }),
            Reply::NoKey
        );
    }

    fn put(key: &str, value: &str, client: u64, seq: u64) -> Request {
        Request::Put {
            key: key.into(),
            value: value.into(),
            client,
            seq,
        }
    }

    fn get(key: &str) -> Request {
        Request::Get {
            key: key.into(),
            ack: None,
        }
    }

    fn value(v: &str, version: u64) -> Reply {
        Reply::Value {
            value: v.into(),
            version,
        }
    }

    fn old(v: &str) -> Reply {
        Reply::OldValue { value: v.into() }
    }

    const SMALL: Limits = Limits {
        max_key: 4,
        max_value: 8,
    };

    #[test]
    fn oversized_writes_are_refused_and_change_nothing() {
        let mut s = KvServer::with_limits(SMALL);
        assert_eq!(s.handle(put("k", "12345678", 1, 1)), Reply::Done);
        let too_long_value = Reply::TooLarge(TooLarge::Value { len: 9, max: 8 });
        assert_eq!(s.handle(put("k", "123456789", 1, 2)), too_long_value);
        let too_long_key = Reply::TooLarge(TooLarge::Key { len: 5, max: 4 });
        assert_eq!(s.handle(put("kkkkk", "v", 1, 3)), too_long_key);
        assert_eq!(s.handle(append("kkkkk", "v", 1, 4)), too_long_key);
        assert_eq!(
            s.handle(append("k", "9", 1, 5)),
            Reply::TooLarge(TooLarge::Appended { len: 9, max: 8 })
        );
        let put_if = |key: &str, value: &str, version| Request::PutIfVersion {
            key: key.into(),
            value: value.into(),
            version,
        };
        assert_eq!(s.handle(put_if("k", "123456789", 1)), too_long_value);
        assert_eq!(s.handle(put_if("kkkkk", "v", 0)), too_long_key);
        // Nothing changed: the value, its version, the set of keys.
        assert_eq!(s.handle(get("k")), value("12345678", 1));
        assert_eq!(s.handle(get("kkkkk")), Reply::NoKey);
        assert_eq!(s.keys(), 1);
        // Exactly at the limits is fine.
        assert_eq!(s.handle(put("kkkk", "", 2, 1)), Reply::Done);
        assert_eq!(s.handle(append("kkkk", "12345678", 2, 2)), old(""));
        assert_eq!(s.handle(get("kkkk")), value("12345678", 2));
    }

    #[test]
    fn a_retried_rejected_write_gets_the_same_rejection() {
        let mut s = KvServer::with_limits(SMALL);
        assert_eq!(s.handle(append("k", "1234", 1, 1)), old(""));
        let rejected = Reply::TooLarge(TooLarge::Appended { len: 9, max: 8 });
        assert_eq!(s.handle(append("k", "56789", 1, 2)), rejected);
        // Another clerk makes room; the retry still gets the rejection it got first (its
        // reply may have been the one lost), and changes nothing.
        assert_eq!(s.handle(put("k", "", 2, 1)), Reply::Done);
        assert_eq!(s.handle(append("k", "56789", 1, 2)), rejected);
        assert_eq!(s.handle(get("k")), value("", 2));
        // The rejection superseded the append before it, which is no longer owed.
        assert_eq!(s.handle(append("k", "1234", 1, 1)), Reply::Stale);
        assert_eq!(s.retained_bytes(), 0);
        // A rejected append to a missing key creates no key, and its retry no key either.
        assert_eq!(s.handle(append("new", "123456789", 3, 1)), rejected);
        assert_eq!(s.handle(append("new", "123456789", 3, 1)), rejected);
        assert_eq!(s.keys(), 1);
        // The clerk's next write runs normally.
        assert_eq!(s.handle(append("k", "56789", 1, 3)), old(""));
    }

    #[test]
    fn appends_never_grow_a_value_past_the_limit() {
        let mut s = KvServer::with_limits(SMALL);
        let mut seq = 0;
        let mut accepted = String::new();
        loop {
            seq += 1;
            assert!(seq <= 3, "the value grew past the limit: {accepted:?}");
            match s.handle(append("k", "abc", 1, seq)) {
                Reply::OldValue { value } => {
                    assert_eq!(value, accepted);
                    accepted.push_str("abc");
                }
                Reply::TooLarge(TooLarge::Appended { len: 9, max: 8 }) => break,
                other => panic!("{other:?}"),
            }
        }
        assert_eq!(accepted.len(), 6);
        assert_eq!(s.handle(get("k")), value(&accepted, 2));
        // Smaller appends still fit, up to the limit exactly.
        assert_eq!(s.handle(append("k", "de", 1, seq + 1)), old("abcabc"));
        assert_eq!(s.handle(get("k")), value("abcabcde", 3));
    }

    #[test]
    fn a_small_append_to_a_large_value_keeps_no_copy_of_it() {
        let mut s = KvServer::new();
        let big = "x".repeat(1 << 20);
        assert_eq!(s.handle(put("k", &big, 1, 1)), Reply::Done);
        assert_eq!(s.handle(append("k", "y", 2, 1)), old(&big));
        assert_eq!(s.retained_bytes(), 0);
        match &s.sessions[&2].outcome {
            Outcome::Appended { old_len, .. } => assert_eq!(*old_len, big.len()),
            other => panic!("{other:?}"),
        }
        // The retry is answered from the stored value's prefix.
        assert_eq!(s.handle(append("k", "y", 2, 1)), old(&big));
        assert_eq!(s.handle(append("k", "z", 3, 1)), old(&(big.clone() + "y")));
        assert_eq!(s.retained_bytes(), 0);
    }

    #[test]
    fn a_put_over_owed_appends_keeps_the_longest_owed_prefix_until_released() {
        let mut s = KvServer::new();
        assert_eq!(s.handle(append("k", "abc", 1, 1)), old(""));
        assert_eq!(s.handle(append("k", "def", 2, 1)), old("abc"));
        assert_eq!(
            s.handle(put("k", "replaced, and much longer", 3, 1)),
            Reply::Done
        );
        assert_eq!(
            s.retained_bytes(),
            3,
            "only \"abc\", not the whole old value"
        );
        assert_eq!(s.handle(append("k", "def", 2, 1)), old("abc"));
        assert_eq!(s.handle(append("k", "abc", 1, 1)), old(""));
        // A second generation, owed too.
        assert_eq!(
            s.handle(append("k", "!", 4, 1)),
            old("replaced, and much longer")
        );
        assert_eq!(s.handle(put("k", "third", 3, 2)), Reply::Done);
        // Clerk 1 moves on, clerk 2 acknowledges: the first generation is released ...
        assert_eq!(s.handle(put("other", "v", 1, 2)), Reply::Done);
        assert!(s.retained_bytes() >= 3);
        s.handle(Request::Get {
            key: "k".into(),
            ack: Some(Ack { client: 2, seq: 1 }),
        });
        assert_eq!(s.retained_bytes(), "replaced, and much longer".len());
        assert_eq!(s.handle(append("k", "def", 2, 1)), Reply::Done);
        assert_eq!(
            s.handle(append("k", "!", 4, 1)),
            old("replaced, and much longer")
        );
        // ... and the second when its clerk writes again.
        assert_eq!(s.handle(append("k", "?", 4, 2)), old("third"));
        assert_eq!(s.retained_bytes(), 0);
        assert_eq!(s.handle(get("k")), value("third?", 6));
    }

    /// The server before the prefix scheme, as a model: it keeps a copy of every reply it may
    /// have to resend.
    #[derive(Default)]
    struct CopyingModel {
        data: HashMap<String, (String, u64)>,
        last: HashMap<ClientId, (u64, Reply)>,
    }

    impl CopyingModel {
        fn handle(&mut self, request: Request, limits: Limits) -> Reply {
            let too_large =
                |len: usize, max: usize| (len > max).then_some((len as u64, max as u64));
            match request {
                Request::Get { key, ack } => {
                    if let Some(ack) = ack {
                        if let Some((seq, reply)) = self.last.get_mut(&ack.client) {
                            if *seq == ack.seq && matches!(reply, Reply::OldValue { .. }) {
                                *reply = Reply::Done;
                            }
                        }
                    }
                    match self.data.get(&key) {
                        Some((v, version)) => value(v, *version),
                        None => Reply::NoKey,
                    }
                }
                Request::Put { client, seq, .. } | Request::Append { client, seq, .. }
                    if self.last.get(&client).is_some_and(|(last, _)| seq <= *last) =>
                {
                    let (last, reply) = &self.last[&client];
                    if seq < *last {
                        Reply::Stale
                    } else {
                        reply.clone()
                    }
                }
                request @ (Request::Put { client, seq, .. }
                | Request::Append { client, seq, .. }) => {
                    let reply = match request {
                        Request::Put { key, value, .. } => {
                            if let Some((len, max)) = too_large(key.len(), limits.max_key) {
                                Reply::TooLarge(TooLarge::Key { len, max })
                            } else if let Some((len, max)) =
                                too_large(value.len(), limits.max_value)
                            {
                                Reply::TooLarge(TooLarge::Value { len, max })
                            } else {
                                let entry = self.data.entry(key).or_default();
                                entry.0 = value;
                                entry.1 += 1;
                                Reply::Done
                            }
                        }
                        Request::Append { key, value, .. } => {
                            let current = self.data.get(&key).map_or(0, |e| e.0.len());
                            if let Some((len, max)) = too_large(key.len(), limits.max_key) {
                                Reply::TooLarge(TooLarge::Key { len, max })
                            } else if let Some((len, max)) =
                                too_large(current + value.len(), limits.max_value)
                            {
                                Reply::TooLarge(TooLarge::Appended { len, max })
                            } else {
                                let entry = self.data.entry(key).or_default();
                                let before = entry.0.clone();
                                entry.0.push_str(&value);
                                entry.1 += 1;
                                old(&before)
                            }
                        }
                        _ => unreachable!(),
                    };
                    self.last.insert(client, (seq, reply.clone()));
                    reply
                }
                Request::PutIfVersion {
                    key,
                    value,
                    version,
                } => {
                    if let Some((len, max)) = too_large(key.len(), limits.max_key) {
                        return Reply::TooLarge(TooLarge::Key { len, max });
                    }
                    if let Some((len, max)) = too_large(value.len(), limits.max_value) {
                        return Reply::TooLarge(TooLarge::Value { len, max });
                    }
                    match self.data.get_mut(&key) {
                        Some(e) if e.1 == version => {
                            e.0 = value;
                            e.1 += 1;
                            Reply::Done
                        }
                        Some(e) => Reply::VersionMismatch { current: e.1 },
                        None if version == 0 => {
                            self.data.insert(key, (value, 1));
                            Reply::Done
                        }
                        None => Reply::NoKey,
                    }
                }
            }
        }
    }

    /// Random requests from a few clerks — new writes, retries, stale duplicates, gets with
    /// and without acknowledgements — get the same replies from the server as from the
    /// copying model, and the kept old values stay within their bound.
    #[test]
    fn replies_match_a_server_that_copies_every_old_value() {
        let limits = Limits {
            max_key: 1,
            max_value: 12,
        };
        // How often the interesting cases came up, over all seeds.
        let (mut retaining, mut rejected, mut replayed) = (0, 0, 0);
        for seed in 1..=20u64 {
            let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
            let mut next = move |n: u64| {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                state % n
            };
            let mut server = KvServer::with_limits(limits);
            let mut model = CopyingModel::default();
            const CLERKS: u64 = 4;
            let mut seqs = [0u64; CLERKS as usize];
            let mut last: [Option<Request>; CLERKS as usize] = Default::default();
            for step in 0..3000 {
                let c = next(CLERKS);
                let key = ["a", "b", "toolong"][next(3) as usize].to_string();
                let v: String = "vwxyz".chars().take(next(6) as usize).collect();
                let seq = &mut seqs[c as usize];
                let request = match next(10) {
                    0..=2 => {
                        *seq += 1;
                        Request::Append {
                            key,
                            value: v,
                            client: c,
                            seq: *seq,
                        }
                    }
                    3 | 4 => {
                        *seq += 1;
                        Request::Put {
                            key,
                            value: v,
                            client: c,
                            seq: *seq,
                        }
                    }
                    5 => Request::PutIfVersion {
                        key,
                        value: v,
                        version: next(4),
                    },
                    6 => Request::Get {
                        key,
                        ack: (next(2) == 0).then_some(Ack {
                            client: c,
                            seq: *seq,
                        }),
                    },
                    7 | 8 => match &last[c as usize] {
                        Some(request) => request.clone(),
                        None => continue,
                    },
                    _ if *seq > 1 => Request::Put {
                        key,
                        value: v,
                        client: c,
                        seq: *seq - 1 - next(*seq - 1),
                    },
                    _ => continue,
                };
                let retry = last[c as usize].as_ref() == Some(&request);
                if matches!(request, Request::Put { .. } | Request::Append { .. }) {
                    last[c as usize] = Some(request.clone());
                }
                let got = server.handle(request.clone());
                let want = model.handle(request.clone(), limits);
                assert_eq!(got, want, "seed {seed} step {step}: {request:?}");
                rejected += usize::from(matches!(got, Reply::TooLarge(_)));
                replayed += usize::from(retry && matches!(got, Reply::OldValue { .. }));
                retaining += usize::from(server.retained_bytes() > 0);
                let owing = server
                    .sessions
                    .values()
                    .filter(|s| matches!(s.outcome, Outcome::Appended { .. }))
                    .count();
                assert!(server.retained_bytes() <= owing * limits.max_value);
                for entry in server.data.values() {
                    assert!(entry.value.len() <= limits.max_value);
                }
            }
            // Once every clerk has acknowledged (or moved on), nothing is kept.
            for c in 0..CLERKS {
                server.handle(Request::Get {
                    key: "a".into(),
                    ack: Some(Ack {
                        client: c,
                        seq: seqs[c as usize],
                    }),
                });
            }
            assert_eq!(server.retained_bytes(), 0, "seed {seed}");
            for entry in server.data.values() {
                assert_eq!(entry.owed, 0, "seed {seed}");
            }
        }
        assert!(
            retaining > 100 && rejected > 100 && replayed > 100,
            "{retaining} steps with kept old values, {rejected} rejections, {replayed} replayed appends"
        );
    }

    #[test]
    fn readers_leave_no_state() {
        let mut s = KvServer::new();
        for _ in 0..100 {
            s.handle(Request::Get {
                key: "k".into(),
                ack: None,
            });
        }
        assert_eq!(s.sessions(), 0);
    }
}
