//! The clerk's logic, without I/O: it builds requests and interprets replies; a driver (the
//! simulator's or the TCP one) sends them and retries until a reply arrives:
//!
//! ```ignore
//! let mut call = clerk.append("k", "x");
//! let answer = loop {
//!     match transport.send(call.request()).await {       // None: lost, or timed out
//!         Some(reply) => if let Some(a) = clerk.finish(&call, reply) { break a },
//!         None => {}                                     // resend the same request
//!     }
//! };
//! ```
//!
//! One clerk has one operation in flight at a time (its sequence numbers rely on it).

use crate::protocol::{Ack, ClientId, KvError, Reply, Request, TooLarge};

/// A clerk: identity, sequence numbers and the acknowledgement it owes the server.
#[derive(Debug)]
pub struct ClerkCore {
    client: ClientId,
    next_seq: u64,
    /// The last write whose reply we hold and have not yet acknowledged.
    unacked: Option<u64>,
}

/// One operation in flight. [`Call::request`] gives the request to (re)send.
#[derive(Debug)]
pub struct Call {
    request: Request,
    attempts: u32,
    /// Attempts known not to have taken effect (see [`Call::refused`]).
    refused: u32,
}

impl Call {
    /// The request to send now; counts the attempt.
    pub fn request(&mut self) -> &Request {
        self.attempts += 1;
        &self.request
    }

    /// The request, without counting an attempt (to route it).
    pub fn peek(&self) -> &Request {
        &self.request
    }

    /// How many times it has been sent.
    pub fn attempts(&self) -> u32 {
        self.attempts
    }

    /// The last attempt was turned away before it could take effect (a replica that does
    /// not lead refused it without proposing it). Such attempts do not make a later
    /// `VersionMismatch` ambiguous.
    pub fn refused(&mut self) {
        debug_assert!(
            self.refused < self.attempts,
            "refused an attempt never sent"
        );
        self.refused = (self.refused + 1).min(self.attempts);
    }

    /// Attempts that may have taken effect.
    fn effective_attempts(&self) -> u32 {
        self.attempts - self.refused
    }
}

/// The outcome of a finished operation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Answer {
    /// `Get`: the value and version, or `NoKey`.
    Get(Result<(String, u64), KvError>),
    Put,
    /// `Append`: the value before it.
    Append(String),
    /// `PutIfVersion`: `Ok`, `NoKey`, `Version` (first attempt), or `Maybe` (a retry saw the
    /// version changed, possibly by its own earlier attempt).
    PutIfVersion(Result<(), KvError>),
    /// A `Put`, `Append` or `PutIfVersion` the server refused for breaking a size limit:
    /// nothing changed, however many times it was sent.
    TooLarge(TooLarge),
}

impl ClerkCore {
    pub fn new(client: ClientId) -> Self {
        ClerkCore {
            client,
            next_seq: 1,
            unacked: None,
        }
    }

    pub fn id(&self) -> ClientId {
        self.client
    }

    fn call(request: Request) -> Call {
        Call {
            request,
            attempts: 0,
            refused: 0,
        }
    }

    pub fn get(&mut self, key: &str) -> Call {
        let ack = self.unacked.take().map(|seq| Ack {
            client: self.client,
            seq,
        });
        Self::call(Request::Get {
            key: key.to_string(),
            ack,
        })
    }

    pub fn put(&mut self, key: &str, value: &str) -> Call {
        let seq = self.take_seq();
        Self::call(Request::Put {
            key: key.to_string(),
            value: value.to_string(),
            client: self.client,
            seq,
        })
    }

    pub fn append(&mut self, key: &str, value: &str) -> Call {
        let seq = self.take_seq();
        Self::call(Request::Append {
            key: key.to_string(),
            value: value.to_string(),
            client: self.client,
            seq,
        })
    }

    pub fn put_if_version(&mut self, key: &str, value: &str, version: u64) -> Call {
        Self::call(Request::PutIfVersion {
            key: key.to_string(),
            value: value.to_string(),
            version,
        })
    }

    fn take_seq(&mut self) -> u64 {
        let seq = self.next_seq;
        self.next_seq += 1;
        // The next write supersedes any acknowledgement we owe.
        self.unacked = None;
        seq
    }

    /// Interprets `reply` to `call`. `None`: the reply does not answer this call (a stale
    /// duplicate's); keep resending.
    pub fn finish(&mut self, call: &Call, reply: Reply) -> Option<Answer> {
        let answer = match (&call.request, reply) {
            (Request::Get { .. }, Reply::Value { value, version }) => {
                Answer::Get(Ok((value, version)))
            }
            (Request::Get { .. }, Reply::NoKey) => Answer::Get(Err(KvError::NoKey)),
            (Request::Put { .. }, Reply::Done) => Answer::Put,
            (Request::Append { seq, .. }, Reply::OldValue { value }) => {
                self.unacked = Some(*seq);
                Answer::Append(value)
            }
            (Request::PutIfVersion { .. }, Reply::Done) => Answer::PutIfVersion(Ok(())),
            (Request::PutIfVersion { .. }, Reply::NoKey) => {
                Answer::PutIfVersion(Err(KvError::NoKey))
            }
            (Request::PutIfVersion { .. }, Reply::VersionMismatch { .. }) => {
                let error = if call.effective_attempts() <= 1 {
                    KvError::Version
                } else {
                    KvError::Maybe
                };
                Answer::PutIfVersion(Err(error))
            }
            (
                Request::Put { .. } | Request::Append { .. } | Request::PutIfVersion { .. },
                Reply::TooLarge(too_large),
            ) => Answer::TooLarge(too_large),
            _ => return None,
        };
        Some(answer)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::server::KvServer;

    #[test]
    fn retry_that_finds_the_version_moved_is_maybe() {
        let mut server = KvServer::new();
        let mut clerk = ClerkCore::new(1);
        let mut call = clerk.put_if_version("k", "v", 0);
        // First attempt applies but its reply is lost; the retry sees version 1.
        server.handle(call.request().clone());
        let reply = server.handle(call.request().clone());
        assert_eq!(
            clerk.finish(&call, reply),
            Some(Answer::PutIfVersion(Err(KvError::Maybe)))
        );
        let mut again = clerk.put_if_version("k", "w", 0);
        let reply = server.handle(again.request().clone());
        assert_eq!(
            clerk.finish(&again, reply),
            Some(Answer::PutIfVersion(Err(KvError::Version)))
        );
    }

    #[test]
    fn attempts_a_non_leader_refused_do_not_make_a_mismatch_maybe() {
        let mut server = KvServer::new();
        server.handle(Request::PutIfVersion {
            key: "k".into(),
            value: "other".into(),
            version: 0,
        });
        let mut clerk = ClerkCore::new(1);
        let mut call = clerk.put_if_version("k", "v", 0);
        // Two servers that do not lead turn it away; the leader finds the version moved.
        call.request();
        call.refused();
        call.request();
        call.refused();
        let reply = server.handle(call.request().clone());
        assert_eq!(
            clerk.finish(&call, reply),
            Some(Answer::PutIfVersion(Err(KvError::Version)))
        );
        // One attempt whose fate is unknown (a lost reply) makes it ambiguous again.
        let mut call = clerk.put_if_version("k", "v", 0);
        call.request();
        call.request();
        call.refused();
        let reply = server.handle(call.request().clone());
        assert_eq!(
            clerk.finish(&call, reply),
            Some(Answer::PutIfVersion(Err(KvError::Maybe)))
        );
    }

    #[test]
    fn a_refused_write_is_an_answer_and_owes_no_acknowledgement() {
        let limits = crate::server::Limits {
            max_key: 8,
            max_value: 4,
        };
        let mut server = KvServer::with_limits(limits);
        let mut clerk = ClerkCore::new(3);
        let too_large = TooLarge::Appended { len: 5, max: 4 };
        let mut call = clerk.append("k", "12345");
        let reply = server.handle(call.request().clone());
        assert_eq!(
            clerk.finish(&call, reply),
            Some(Answer::TooLarge(too_large))
        );
        let mut get = clerk.get("k");
        assert!(matches!(get.request(), Request::Get { ack: None, .. }));
        let mut call = clerk.put_if_version("k", "12345", 0);
        let reply = server.handle(call.request().clone());
        assert_eq!(
            clerk.finish(&call, reply),
            Some(Answer::TooLarge(TooLarge::Value { len: 5, max: 4 }))
        );
    }

    #[test]
    fn a_get_acknowledges_the_last_append() {
        let mut clerk = ClerkCore::new(9);
        let mut call = clerk.append("k", "x");
        let seq = match call.request() {
            Request::Append { seq, .. } => *seq,
            other => panic!("{other:?}"),
        };
        clerk.finish(
            &call,
            Reply::OldValue {
                value: String::new(),
            },
        );
        let mut get = clerk.get("k");
        assert_eq!(
            get.request(),
            &Request::Get {
                key: "k".into(),
                ack: Some(Ack { client: 9, seq })
            }
        );
        let mut get2 = clerk.get("k");
        assert_eq!(
            get2.request(),
            &Request::Get {
                key: "k".into(),
                ack: None
            },
            "acknowledged once"
        );
    }
}
