//! # flotilla-mvcc: a revisioned key/value store with etcd v3's semantics
//!
//! The state machine behind Flotilla's etcd-compatible API: an ordered key space of byte
//! keys, one store-wide revision that every change advances, and for each key its
//! `create_revision`, `mod_revision` and `version`. It is sans-IO and deterministic — no
//! clock, no I/O — so every replica of a Raft group applies the same commands to the same
//! state ([`flotilla_rsm::StateMachine`]).
//!
//! - [`types`]: requests, responses, events and errors, shaped like etcd's protobuf
//!   messages (the gRPC layer maps one to the other);
//! - [`store`]: [`MvccStore`] — Range (ranges, prefixes, limits, revisions, sorting,
//!   keys/count only, revision filters), Put (prev_kv, ignore_value, ignore_lease),
//!   DeleteRange, Txn (compares on version, create and mod revision, value and lease;
//!   nested transactions), Compact, leases (grant, revoke with their keys) and the events a
//!   watch sees, replayable from any revision not compacted away;
//! - [`watch`]: one client stream's watchers — replay from a start revision, then every
//!   applied change of each watcher's range exactly once, in order; cancel; progress;
//! - [`changes`]: the last revisions' changes, which the watch streams of a replica
//!   follow;
//! - [`lessor`]: the leader's lease deadlines (keep-alive, time to live, which expired).
//!
//! What etcd decides by a node's clock — when a lease expires — is not decided here: the
//! leader proposes a revoke through the log, and every replica deletes the lease's keys at
//! the same point of its history.

pub mod changes;
pub mod lessor;
pub mod store;
pub mod types;
pub mod watch;

pub use store::{MvccStore, MAX_TXN_OPS};
pub use types::*;

use serde::{Deserialize, Serialize};

/// A command in the log.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum MvccCommand {
    Put(PutRequest),
    DeleteRange(DeleteRangeRequest),
    Txn(TxnRequest),
    Compact(Revision),
    /// Grant a lease (`id` 0: the store picks one) of `ttl` seconds.
    LeaseGrant {
        id: LeaseId,
        ttl: i64,
    },
    /// Revoke a lease and delete its keys (a client's revoke, or the leader's expiry).
    LeaseRevoke(LeaseId),
}

/// What a command did.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum MvccOutput {
    Put(PutResponse),
    DeleteRange(DeleteRangeResponse),
    Txn(TxnResponse),
    Compacted,
    LeaseGranted(LeaseId),
    LeaseRevoked,
}

/// A command's result: the store's revision after it (the response header's revision) and
/// the output or why it changed nothing. What its client is answered; the events it made go
/// to the replica's watchers instead ([`MvccStore::apply_command`]).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Applied {
    pub revision: Revision,
    pub result: Result<MvccOutput, MvccError>,
}

impl MvccStore {
    /// Executes one command: its result, and the events it made (for watchers; none if it
    /// changed nothing). The two are apart so that the events, which carry every changed
    /// key's value and previous value, stay with the replica and are not sent to clients.
    pub fn apply_command(&mut self, command: MvccCommand) -> (Applied, Vec<Event>) {
        let (result, events) = match command {
            MvccCommand::Put(p) => match self.put(&p) {
                Ok((r, e)) => (Ok(MvccOutput::Put(r)), e),
                Err(e) => (Err(e), Vec::new()),
            },
            MvccCommand::DeleteRange(d) => {
                let (r, e) = self.delete_range(&d);
                (Ok(MvccOutput::DeleteRange(r)), e)
            }
            MvccCommand::Txn(t) => match self.txn(&t) {
                Ok((r, e)) => (Ok(MvccOutput::Txn(r)), e),
                Err(e) => (Err(e), Vec::new()),
            },
            MvccCommand::Compact(revision) => (
                self.compact(revision).map(|()| MvccOutput::Compacted),
                Vec::new(),
            ),
            MvccCommand::LeaseGrant { id, ttl } => (
                self.lease_grant(id, ttl).map(MvccOutput::LeaseGranted),
                Vec::new(),
            ),
            MvccCommand::LeaseRevoke(id) => match self.lease_revoke(id) {
                Ok(e) => (Ok(MvccOutput::LeaseRevoked), e),
                Err(e) => (Err(e), Vec::new()),
            },
        };
        let applied = Applied {
            revision: self.revision(),
            result,
        };
        (applied, events)
    }
}

impl flotilla_rsm::StateMachine for MvccStore {
    type Command = MvccCommand;
    type Output = Applied;
    /// A linearizable read (after a ReadIndex confirmation).
    type Query = RangeRequest;
    /// The store's revision at the read, and what it read.
    type Answer = (Revision, Result<RangeResponse, MvccError>);

    fn apply(&mut self, command: MvccCommand) -> Applied {
        self.apply_command(command).0
    }

    fn query(&self, query: &RangeRequest) -> Self::Answer {
        (self.revision(), self.range(query))
    }

    fn snapshot(&self) -> Vec<u8> {
        postcard::to_allocvec(self).expect("the store encodes")
    }

    fn restore(&mut self, snapshot: &[u8]) -> Result<(), String> {
        let restored: MvccStore = postcard::from_bytes(snapshot).map_err(|e| e.to_string())?;
        restored.check()?;
        *self = restored;
        Ok(())
    }
}
