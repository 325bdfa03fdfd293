//! # flotilla-shardkv: the sharded key/value store
//!
//! 6.5840 Lab 5 as a store: keys are split into shards, each shard served by one replica
//! group (a Raft group on the rsm) as the shard controller's configuration says; groups
//! follow the configurations one at a time and hand shards to each other with their
//! duplicate tables, so every write applies once wherever its shard goes.
//!
//! - [`group`]: a shard group's replicated state and the requests it serves;
//!   [`driver`]: what its leader does beside serving (follow the controller, move shards).
//! - [`sim`]: the store on the simulator (controller, groups, clerks) — the harness of
//!   [`lab5b`], the 2024 shardkv scenarios; [`sweep`]: random reconfigurations under faults
//!   (`flotilla sim shardkv`).
//! - [`tcp`]: a group's node over TCP with its driver, and the clerk over TCP; [`local`]:
//!   the whole store as child processes on loopback (`flotilla cluster up --groups G`);
//!   [`bench`]: its throughput by number of groups, and one shard's migration time.
pub mod bench;
pub mod driver;
pub mod group;
pub mod lab5b;
pub mod local;
pub mod sim;
pub mod sweep;
pub mod tcp;
pub mod v2025;

pub use group::{GroupAnswer, GroupCommand, GroupRequest, ShardGroup, ShardState};
