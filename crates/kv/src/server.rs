//! The KV server's state machine: requests in, replies out. No I/O, no clock.
//!
//! Guarantees:
//! - every operation is atomic and takes effect at one point between its arrival and its
//!   reply, so any driver that handles requests one at a time is linearizable;
//! - a `Put` or `Append` executes at most once per (client, seq): a retry of the clerk's
//!   latest request gets the remembered outcome, an older duplicate gets `Stale`;
//! - duplicate detection costs O(1) state per clerk that writes — its last sequence number and,
//!   for an `Append`, the old value — and that old value is dropped as soon as the clerk's next
//!   request (or `Ack`) arrives. Clerks that only read leave no state at all, and nothing keeps
//!   a copy of a `Put`'s value or a `Get`'s reply.

use std::collections::HashMap;

use crate::protocol::{Ack, ClientId, Reply, Request};

/// What the server remembers about a clerk's latest write.
#[derive(Debug)]
struct Session {
    seq: u64,
    /// The old value an `Append` returned, until the clerk acknowledges it; `None` for a `Put`
    /// or once acknowledged.
    old_value: Option<String>,
}

#[derive(Debug, Default)]
pub struct KvServer {
    /// key → (value, version). Keys are never deleted; versions only grow.
    data: HashMap<String, (String, u64)>,
    sessions: HashMap<ClientId, Session>,
}

impl KvServer {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn handle(&mut self, request: Request) -> Reply {
        match request {
            Request::Get { key, ack } => {
                if let Some(ack) = ack {
                    self.acknowledge(ack);
                }
                match self.data.get(&key) {
                    Some((value, version)) => Reply::Value {
                        value: value.clone(),
                        version: *version,
                    },
                    None => Reply::NoKey,
                }
            }
            Request::Put {
                key,
                value,
                client,
                seq,
            } => self.once(client, seq, |data| {
                let entry = data.entry(key).or_insert_with(|| (String::new(), 0));
                entry.0 = value;
                entry.1 += 1;
                None
            }),
            Request::Append {
                key,
                value,
                client,
                seq,
            } => self.once(client, seq, |data| {
                let entry = data.entry(key).or_insert_with(|| (String::new(), 0));
                let old = entry.0.clone();
                entry.0.push_str(&value);
                entry.1 += 1;
                Some(old)
            }),
            Request::PutIfVersion {
                key,
                value,
                version,
            } => match self.data.get_mut(&key) {
                Some(entry) if entry.1 == version => {
                    entry.0 = value;
                    entry.1 += 1;
                    Reply::Done
                }
                Some(entry) => Reply::VersionMismatch { current: entry.1 },
                None if version == 0 => {
                    self.data.insert(key, (value, 1));
                    Reply::Done
                }
                None => Reply::NoKey,
            },
        }
    }

    /// Runs `apply` unless (client, seq) already ran; `apply` returns the old value of an
    /// `Append` (`None` for a `Put`).
    fn once(
        &mut self,
        client: ClientId,
        seq: u64,
        apply: impl FnOnce(&mut HashMap<String, (String, u64)>) -> Option<String>,
    ) -> Reply {
        if let Some(session) = self.sessions.get(&client) {
            if seq < session.seq {
                return Reply::Stale;
            }
            if seq == session.seq {
                return match &session.old_value {
                    Some(old) => Reply::OldValue { value: old.clone() },
                    // A Put's retry: it happened. (An acknowledged Append's duplicate cannot be
                    // the request its clerk waits for.)
                    None => Reply::Done,
                };
            }
        }
        let old_value = apply(&mut self.data);
        let reply = match &old_value {
            Some(old) => Reply::OldValue { value: old.clone() },
            None => Reply::Done,
        };
        // Replacing the session drops the previous request's remembered reply.
        self.sessions.insert(client, Session { seq, old_value });
        reply
    }

    fn acknowledge(&mut self, ack: Ack) {
        if let Some(session) = self.sessions.get_mut(&ack.client) {
            if session.seq == ack.seq {
                session.old_value = None;
            }
        }
    }

    /// Number of clerks with remembered writes (for tests and status output).
    pub fn sessions(&self) -> usize {
        self.sessions.len()
    }

    pub fn keys(&self) -> usize {
        self.data.len()
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
        assert!(s.sessions[&7].old_value.is_some());
        s.handle(Request::Get {
            key: "k".into(),
            ack: Some(Ack { client: 7, seq: 2 }),
        });
        assert!(s.sessions[&7].old_value.is_none());
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
