//! # flotilla-shardctrler: the shard controller of the sharded store
//!
//! 6.5840 Lab 5's configuration service. The sharded store splits keys into shards and
//! gives each shard to one replica group; the controller keeps the numbered history of
//! those assignments, and groups and clerks follow it.
//!
//! - [`config`]: a [`Config`] (shard → group, group → servers), the changes that make the
//!   next one (join, leave, move) with the deterministic minimal-movement rebalance, and
//!   the two shardings of the labs.
//! - [`ctrler`]: the 2024 controller as a replicated state machine (changes through the
//!   log, exactly once; queries through ReadIndex); [`sim`]: it on the simulator, and its
//!   clerk.
//! - [`lab5a`]: the 2024 controller scenarios of `../shared/spec/shardkv.md` §2.
pub mod config;
pub mod ctrler;
pub mod lab5a;
pub mod sim;
pub mod tcp;

pub use config::{Config, ConfigError, Gid, Sharding, NO_GROUP};
