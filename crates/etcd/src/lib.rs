//! # flotilla-etcd: etcd v3's gRPC API over a revisioned store
//!
//! The services of etcd's v3 API, served by tonic over any [`Backend`] (a store in memory,
//! or a replicated one), so that etcd's own clients (`etcdctl`, client libraries) work
//! against Flotilla.
//!
//! - [`pb`]: the messages, server traits and clients generated from `proto/`, our reduced
//!   copies of etcd's published API definitions (wire-compatible: etcd's packages, names,
//!   field numbers and types), compiled by protox in `build.rs` (no system `protoc`);
//! - [`convert`]: protobuf to and from [`flotilla_mvcc`]'s types, with etcd's request checks
//!   and error statuses;
//! - [`server`]: the [`Backend`] trait, [`ServeOptions`] and [`serve`];
//! - the services: [`kv`] (`KV`), [`watch`] (`Watch`), [`lease`] (`Lease`), [`cluster`]
//!   (`Cluster.MemberList`, `Maintenance.Status`); every other method is `UNIMPLEMENTED`;
//! - [`memory`]: [`MemoryBackend`], a store in memory for tests.

pub mod bench;
pub mod cluster;
pub mod convert;
pub mod kv;
pub mod lease;
pub mod memory;
pub mod server;
pub mod watch;

pub use kv::KvService;
pub use memory::MemoryBackend;
pub use server::{serve, serve_with, Backend, ServeOptions};

/// Generated from `proto/` (see `build.rs`).
pub mod pb {
    /// etcd's `mvccpb`: `KeyValue` and `Event`.
    pub mod mvccpb {
        tonic::include_proto!("mvccpb");
    }
    /// etcd's `etcdserverpb`: the services and their messages.
    pub mod etcdserverpb {
        tonic::include_proto!("etcdserverpb");
    }
}
