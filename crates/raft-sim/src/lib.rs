//! # flotilla-raft-sim: Raft groups on the deterministic simulator
//!
//! - [`cluster`]: the tester harness (the lab's `config.go`): servers as simulated tasks
//!   running the shared node loop ([`flotilla_node::run`]) on a simulator host, with the
//!   Lab 3 tester's applier or any other [`flotilla_node::App`], crash/restart with a disk that loses unsynced writes
//!   (in memory, or the real write-ahead log on the simulated file system),
//!   partitions, the applier's checks, `one()`, `check_one_leader()` and friends.
//! - [`invariants`]: Raft's safety properties, checked as events happen: each `Ready`, each
//!   message sent, each sync, each restart, each applied entry.
//! - [`lab3`]: the 28 scenarios of 6.5840 Lab 3 (3A–3D).
//! - [`sweep`]: random fault schedules over many seeds (`flotilla sim raft`).
//! - [`demo`]: the narrated five-server run of `flotilla demo`.
//!
//! A run is a pure function of its seed: [`run_cluster`] returns the trace hash, and the
//! same seed always gives the same hash.

pub mod cluster;
pub mod demo;
pub mod invariants;
pub mod lab3;
mod server;
pub mod sweep;
mod tester;

use std::future::Future;
use std::time::Duration;

pub use cluster::{Cluster, ClusterConfig};

/// Builds a cluster at `seed`, runs `body` on it, then checks the test budget and stops it.
/// Returns the run's (trace hash, event count) and its virtual duration.
pub fn run_cluster<F, Fut>(seed: u64, cfg: ClusterConfig, body: F) -> ((u64, u64), Duration)
where
    F: FnOnce(Cluster) -> Fut,
    Fut: Future<Output = ()>,
{
    let rt = flotilla_sim::Runtime::new(seed);
    rt.block_on(async {
        let cluster = Cluster::new(cfg);
        body(cluster.clone()).await;
        cluster.end();
        cluster.shutdown();
    });
    (rt.trace_hash(), rt.now())
}

pub use flotilla_sim::panic_message;
