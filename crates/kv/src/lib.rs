//! # flotilla-kv: a linearizable, exactly-once key/value server
//!
//! 6.5840 Lab 2 as a service: one server holding a map, clerks that retry through lost
//! requests and replies, and a server that executes every write exactly once.
//!
//! - [`protocol`]: requests and replies (the 2024 Put/Append/Get API and the 2025 versioned
//!   API share one server).
//! - [`server`]: the server's state machine (sans-IO), with O(1) duplicate-detection state
//!   per writing clerk.
//! - [`clerk`]: the clerk's logic (sans-IO): requests to send, replies interpreted, `ErrMaybe`.
//! - [`lock`]: a distributed lock on the versioned API.
//! - [`history`]: the log of a test's operations and its linearizability check.
//! - [`sim`]: the service on the deterministic simulator (the tests' harness).
//! - [`tcp`]: the service over TCP (tokio): the real server and clerk.
//! - [`bench`]: bounded load against a real server, with an optional history file.
//!
//! The simulator tests in `tests/` run the lab's scenarios over the simulated labrpc
//! network and check every concurrent history with `flotilla-lincheck`.

pub mod bench;
pub mod clerk;
pub mod history;
pub mod kvtest;
pub mod lock;
pub mod protocol;
pub mod server;
pub mod sim;
pub mod tcp;

pub use clerk::{Answer, Call, ClerkCore};
pub use protocol::{Ack, ClientId, KvError, Reply, Request};
pub use server::KvServer;
