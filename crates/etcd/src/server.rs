//! What the services run on and how they are served: the [`Backend`] trait (a store that
//! reads and applies, one member's view of it, the leader's lease clock, the cluster's
//! members and status), the options of a server ([`ServeOptions`]) and [`serve`].
//!
//! The services themselves are in their own modules: [`crate::kv`] (`KV`), [`crate::watch`]
//! (`Watch`), [`crate::lease`] (`Lease`), [`crate::cluster`] (`Cluster.MemberList` and
//! `Maintenance.Status`). Every method these protos leave out (the `Auth` service, member
//! changes, defragmentation, snapshots, alarms…) is answered `UNIMPLEMENTED` at once by
//! tonic's router.
//!
//! Guarantees of [`serve`]: a call that fails is answered with a gRPC status (never a panic
//! on what a client sent); once `shutdown` completes, the streams in progress (watches,
//! lease keep-alives) end with `UNAVAILABLE` so that the server's graceful stop does not
//! wait for clients that never hang up, and clients that retry go to another member.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use flotilla_mvcc::changes::RecentChanges;
use flotilla_mvcc::{
    Applied, LeaseId, MvccCommand, MvccStore, RangeRequest, RangeResponse, Revision,
};
use tokio::net::TcpListener;
use tonic::transport::server::TcpIncoming;
use tonic::Status;

use crate::cluster::{ClusterService, MaintenanceService};
use crate::convert::Header;
use crate::kv::KvService;
use crate::lease::LeaseService;
use crate::pb::etcdserverpb as pb;
use crate::watch::WatchService;
use pb::cluster_server::ClusterServer;
use pb::kv_server::KvServer;
use pb::lease_server::LeaseServer;
use pb::maintenance_server::MaintenanceServer;
use pb::watch_server::WatchServer;

pub use crate::memory::MemoryBackend;

/// What the services run on: a store that reads and applies commands (one node's, a
/// replicated group's), the replica's view of its own state for watches, the leader's
/// lease clock, and what a response header and the cluster services tell about where it
/// runs.
///
/// Errors are gRPC statuses as etcd sends them: a store's refusal inside [`Applied`], a
/// request that could not be carried out (no leader, outcome unknown) as the `Err` status.
pub trait Backend: Send + Sync + 'static {
    /// Reads: linearizable unless `serializable` (then this member's state as it is). The
    /// store's revision at the read (the header's) and what was read.
    fn range(
        &self,
        request: RangeRequest,
        serializable: bool,
    ) -> impl Future<Output = Result<(Revision, RangeResponse), Status>> + Send;

    /// Applies one command (through the log, for a replicated store) and says what it did.
    fn apply(&self, command: MvccCommand) -> impl Future<Output = Result<Applied, Status>> + Send;

    /// Runs `f` on this member's store as applied so far and its recent changes (watch
    /// streams feed themselves from these).
    fn with_store<R>(&self, f: impl FnOnce(&MvccStore, &RecentChanges) -> R) -> R;

    /// Changes (to the applied log index, or any counter) after this member applied
    /// something: watch streams wait on it.
    fn applied(&self) -> tokio::sync::watch::Receiver<u64>;

    /// A keep-alive of lease `id` on the leader: its TTL in seconds, renewed, or 0 if there
    /// is no such lease (expired or revoked).
    fn lease_keep_alive(&self, id: LeaseId) -> impl Future<Output = Result<i64, Status>> + Send;

    /// Lease `id`'s granted TTL, seconds left by the leader's clock, and (if `keys`) its
    /// keys; `None` if there is no such lease.
    fn lease_time_to_live(
        &self,
        id: LeaseId,
        keys: bool,
    ) -> impl Future<Output = Result<Option<LeaseTtl>, Status>> + Send;

    /// The members of the cluster.
    fn members(&self) -> Vec<MemberInfo>;

    /// This member's status (`Maintenance.Status`).
    fn status(&self) -> MemberStatus;

    fn cluster_id(&self) -> u64;
    fn member_id(&self) -> u64;
    fn raft_term(&self) -> u64;
}

/// A member, as `Cluster.MemberList` lists it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MemberInfo {
    pub id: u64,
    pub name: String,
    /// Where its peers reach it (`http://host:port`).
    pub peer_urls: Vec<String>,
    /// Where clients reach its gRPC API (`http://host:port`), if known.
    pub client_urls: Vec<String>,
}

/// A member's state, as `Maintenance.Status` reports it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MemberStatus {
    /// The member id of the leader this member knows of (0: none).
    pub leader: u64,
    pub raft_index: u64,
    pub raft_term: u64,
    pub raft_applied_index: u64,
    /// Bytes of the store on disk (log and snapshot).
    pub db_size: i64,
}

/// A lease's time to live.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LeaseTtl {
    pub granted_ttl: i64,
    /// Seconds left.
    pub ttl: i64,
    pub keys: Vec<Vec<u8>>,
}

/// The header of a response made at `revision`, with the backend's cluster, member and term.
pub(crate) fn header<B: Backend>(backend: &B, revision: Revision) -> pb::ResponseHeader {
    Header {
        cluster_id: backend.cluster_id(),
        member_id: backend.member_id(),
        raft_term: backend.raft_term(),
    }
    .at(revision)
}

/// The revision of this member's store now.
pub(crate) fn current_revision<B: Backend>(backend: &B) -> Revision {
    backend.with_store(|store, _| store.revision())
}

/// How a server behaves where etcd has a setting.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServeOptions {
    /// How often a watcher created with `progress_notify` is told the store's revision when
    /// no event was sent to it in the meantime (etcd: 10 minutes, without its jitter).
    pub progress_notify_interval: Duration,
    /// The shortest lease TTL granted, in seconds: a grant asking for less gets this (etcd:
    /// `ceil(3 * election timeout / 2)`, 2 s with its default 1 s election timeout).
    pub min_lease_ttl: i64,
    /// Responses a watch stream holds for a client that has not read them (at least 2).
    pub watch_buffer: usize,
    /// How long a watch stream waits with a full buffer before it gives up on its client:
    /// the stream ends with `UNAVAILABLE`, which etcd's clients answer by watching again
    /// from the revision after the last one they saw (so nothing is lost, and a client that
    /// stopped reading costs the server no more than the buffer).
    pub slow_watch_timeout: Duration,
}

/// etcd's default progress notification interval.
pub const DEFAULT_PROGRESS_NOTIFY_INTERVAL: Duration = Duration::from_secs(10 * 60);

/// etcd's minimum lease TTL with its default election timeout.
pub const DEFAULT_MIN_LEASE_TTL: i64 = 2;

impl Default for ServeOptions {
    fn default() -> Self {
        ServeOptions {
            progress_notify_interval: DEFAULT_PROGRESS_NOTIFY_INTERVAL,
            min_lease_ttl: DEFAULT_MIN_LEASE_TTL,
            watch_buffer: 256,
            slow_watch_timeout: Duration::from_secs(10),
        }
    }
}

/// Told once the server is stopping: the long-lived streams end when it is.
pub(crate) type Stopping = tokio::sync::watch::Receiver<bool>;

/// Completes when the server is stopping (or is gone).
pub(crate) async fn stopped(stopping: &mut Stopping) {
    let _ = stopping.wait_for(|stopping| *stopping).await;
}

/// The status a stream ends with when the server stops.
pub(crate) fn server_stopping() -> Status {
    Status::unavailable("etcdserver: server stopped")
}

/// Serves etcd's gRPC API over `backend` on `listener` with the default options until
/// `shutdown` completes (then ends the open streams and waits for the calls in progress).
pub async fn serve<B: Backend>(
    listener: TcpListener,
    backend: Arc<B>,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), tonic::transport::Error> {
    serve_with(listener, backend, ServeOptions::default(), shutdown).await
}

/// [`serve`] with `options`.
pub async fn serve_with<B: Backend>(
    listener: TcpListener,
    backend: Arc<B>,
    options: ServeOptions,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), tonic::transport::Error> {
    let (stop, stopping) = tokio::sync::watch::channel(false);
    let shutdown = async move {
        shutdown.await;
        let _ = stop.send(true);
    };
    tonic::transport::Server::builder()
        .add_service(KvServer::new(KvService::new(Arc::clone(&backend))))
        .add_service(WatchServer::new(WatchService::new(
            Arc::clone(&backend),
            &options,
            stopping.clone(),
        )))
        .add_service(LeaseServer::new(LeaseService::new(
            Arc::clone(&backend),
            &options,
            stopping,
        )))
        .add_service(ClusterServer::new(ClusterService::new(Arc::clone(
            &backend,
        ))))
        .add_service(MaintenanceServer::new(MaintenanceService::new(backend)))
        // Small HTTP/2 frames go out at once, as Go servers (etcd) send them.
        .serve_with_incoming_shutdown(
            TcpIncoming::from(listener).with_nodelay(Some(true)),
            shutdown,
        )
        .await
}
