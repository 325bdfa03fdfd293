//! # flotilla-kvraft: a key/value service replicated by Raft
//!
//! 6.5840 Lab 4 as a service: the KV server's state machine ([`flotilla_kv::KvServer`],
//! with both APIs — 2024 Put/Append/Get with exactly-once writes, 2025 versioned Put/Get)
//! replicated by the rsm layer ([`flotilla_rsm`]) on the shared node loop. It keeps every
//! acknowledged write through crashes, restarts and partitions of a minority.
//!
//! - [`service`]: the state machine (the native KV store and, beside it, the revisioned
//!   store of the etcd API), the request handler every replica runs, and the replies on
//!   the wire. Writes go through the log; reads are confirmed with ReadIndex
//!   and served from the replica's state, so a `Get` appends nothing to the log.
//! - [`sim`]: the service on the simulator: a replica group, its labrpc-style client
//!   network, clerks whose operations are logged for the linearizability checker.
//! - [`sweep`]: random fault schedules over many seeds (`flotilla sim kvraft`).
//! - [`tcp`]: a node of the real cluster over TCP with its data on disk, and the clerk that
//!   finds the leader (`flotilla kvraft serve`, `flotilla kv --cluster`).
//! - [`etcd`]: etcd's v3 API on a node (`kvraft serve --grpc`): writes and linearizable
//!   reads at the leader (forwarded from any node), leases expired by the leader through
//!   the log.
//! - [`forward`]: how a follower hands etcd requests to the leader, many to a frame.
//! - [`lab4`]: the Lab 4 scenarios of `../shared/spec/kvraft.md` (2025 4B/4C, 2024 4A/4B).
//!
//! Duplicate writes: a 2024 clerk's retried `Put`/`Append` carries its (client, seq), and
//! the replicated `KvServer` sessions run each once; the sessions are part of the state,
//! so they survive leader changes, restarts and snapshots. A 2025 conditional put needs no
//! table (a re-execution finds the version moved; the clerk reports `ErrMaybe` when an
//! earlier attempt of it may have taken effect).

pub mod demo;
pub mod etcd;
pub mod forward;
pub mod lab4;
pub mod local;
pub mod service;
pub mod sim;
pub mod sweep;
pub mod tcp;

pub use service::{KvStore, ServerReply};
