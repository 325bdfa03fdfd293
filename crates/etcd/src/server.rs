//! The gRPC services over a [`Backend`]: etcd's `KV` in full; `Watch`, `Lease`, `Cluster`
//! and `Maintenance` answer `UNIMPLEMENTED` at once for now (as does every method these
//! protos leave out, such as the `Auth` service's).

use std::future::Future;
use std::sync::{Arc, Mutex};

use flotilla_mvcc::changes::RecentChanges;
use flotilla_mvcc::{
    Applied, LeaseId, MvccCommand, MvccOutput, MvccStore, RangeRequest, RangeResponse, Revision,
};
use tokio::net::TcpListener;
use tonic::codegen::BoxStream;
use tonic::transport::server::TcpIncoming;
use tonic::{Request, Response, Status, Streaming};

use crate::convert::{self, Header};
use crate::pb::etcdserverpb as pb;
use pb::cluster_server::{Cluster, ClusterServer};
use pb::kv_server::{Kv, KvServer};
use pb::lease_server::{Lease, LeaseServer};
use pb::maintenance_server::{Maintenance, MaintenanceServer};
use pb::watch_server::{Watch, WatchServer};

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

fn header<B: Backend>(backend: &B, revision: Revision) -> pb::ResponseHeader {
    Header {
        cluster_id: backend.cluster_id(),
        member_id: backend.member_id(),
        raft_term: backend.raft_term(),
    }
    .at(revision)
}

/// etcd's `KV` service.
pub struct KvService<B> {
    backend: Arc<B>,
}

impl<B> KvService<B> {
    pub fn new(backend: Arc<B>) -> Self {
        KvService { backend }
    }
}

fn unexpected(output: &MvccOutput) -> Status {
    Status::internal(format!("the store answered {output:?}"))
}

impl<B: Backend> KvService<B> {
    /// Applies a command: the header and the output, or the store's refusal.
    async fn apply(
        &self,
        command: MvccCommand,
    ) -> Result<(pb::ResponseHeader, MvccOutput), Status> {
        let applied = self.backend.apply(command).await?;
        let output = applied.result.map_err(convert::status)?;
        Ok((header(&*self.backend, applied.revision), output))
    }
}

#[tonic::async_trait]
impl<B: Backend> Kv for KvService<B> {
    async fn range(
        &self,
        request: Request<pb::RangeRequest>,
    ) -> Result<Response<pb::RangeResponse>, Status> {
        let (request, serializable) = convert::range_request(request.into_inner())?;
        let (revision, response) = self.backend.range(request, serializable).await?;
        Ok(Response::new(convert::range_response(
            header(&*self.backend, revision),
            response,
        )))
    }

    async fn put(
        &self,
        request: Request<pb::PutRequest>,
    ) -> Result<Response<pb::PutResponse>, Status> {
        let put = convert::put_request(request.into_inner())?;
        match self.apply(MvccCommand::Put(put)).await? {
            (h, MvccOutput::Put(r)) => Ok(Response::new(convert::put_response(h, r))),
            (_, other) => Err(unexpected(&other)),
        }
    }

    async fn delete_range(
        &self,
        request: Request<pb::DeleteRangeRequest>,
    ) -> Result<Response<pb::DeleteRangeResponse>, Status> {
        let delete = convert::delete_range_request(request.into_inner())?;
        match self.apply(MvccCommand::DeleteRange(delete)).await? {
            (h, MvccOutput::DeleteRange(r)) => {
                Ok(Response::new(convert::delete_range_response(h, r)))
            }
            (_, other) => Err(unexpected(&other)),
        }
    }

    async fn txn(
        &self,
        request: Request<pb::TxnRequest>,
    ) -> Result<Response<pb::TxnResponse>, Status> {
        let txn = convert::txn_request(request.into_inner())?;
        match self.apply(MvccCommand::Txn(txn)).await? {
            (h, MvccOutput::Txn(r)) => Ok(Response::new(convert::txn_response(h, r))),
            (_, other) => Err(unexpected(&other)),
        }
    }

    async fn compact(
        &self,
        request: Request<pb::CompactionRequest>,
    ) -> Result<Response<pb::CompactionResponse>, Status> {
        // `physical` asks to wait until the compaction is on disk: this store compacts as
        // it applies, so every compaction is physical once answered.
        let revision = request.into_inner().revision;
        match self.apply(MvccCommand::Compact(revision)).await? {
            (h, MvccOutput::Compacted) => {
                Ok(Response::new(pb::CompactionResponse { header: Some(h) }))
            }
            (_, other) => Err(unexpected(&other)),
        }
    }
}

/// The services not served yet: every call is answered `UNIMPLEMENTED` at once.
#[derive(Clone, Copy, Debug, Default)]
pub struct NotYet;

fn not_yet<T>(what: &str) -> Result<T, Status> {
    Err(Status::unimplemented(format!(
        "{what} is not implemented by this server yet"
    )))
}

#[tonic::async_trait]
impl Watch for NotYet {
    type WatchStream = BoxStream<pb::WatchResponse>;

    async fn watch(
        &self,
        _: Request<Streaming<pb::WatchRequest>>,
    ) -> Result<Response<Self::WatchStream>, Status> {
        not_yet("Watch")
    }
}

#[tonic::async_trait]
impl Lease for NotYet {
    type LeaseKeepAliveStream = BoxStream<pb::LeaseKeepAliveResponse>;

    async fn lease_grant(
        &self,
        _: Request<pb::LeaseGrantRequest>,
    ) -> Result<Response<pb::LeaseGrantResponse>, Status> {
        not_yet("LeaseGrant")
    }

    async fn lease_revoke(
        &self,
        _: Request<pb::LeaseRevokeRequest>,
    ) -> Result<Response<pb::LeaseRevokeResponse>, Status> {
        not_yet("LeaseRevoke")
    }

    async fn lease_keep_alive(
        &self,
        _: Request<Streaming<pb::LeaseKeepAliveRequest>>,
    ) -> Result<Response<Self::LeaseKeepAliveStream>, Status> {
        not_yet("LeaseKeepAlive")
    }

    async fn lease_time_to_live(
        &self,
        _: Request<pb::LeaseTimeToLiveRequest>,
    ) -> Result<Response<pb::LeaseTimeToLiveResponse>, Status> {
        not_yet("LeaseTimeToLive")
    }

    async fn lease_leases(
        &self,
        _: Request<pb::LeaseLeasesRequest>,
    ) -> Result<Response<pb::LeaseLeasesResponse>, Status> {
        not_yet("LeaseLeases")
    }
}

#[tonic::async_trait]
impl Cluster for NotYet {
    async fn member_list(
        &self,
        _: Request<pb::MemberListRequest>,
    ) -> Result<Response<pb::MemberListResponse>, Status> {
        not_yet("MemberList")
    }
}

#[tonic::async_trait]
impl Maintenance for NotYet {
    async fn status(
        &self,
        _: Request<pb::StatusRequest>,
    ) -> Result<Response<pb::StatusResponse>, Status> {
        not_yet("Status")
    }
}

/// Serves etcd's gRPC API over `backend` on `listener` until `shutdown` completes (then
/// waits for the calls in progress).
pub async fn serve<B: Backend>(
    listener: TcpListener,
    backend: Arc<B>,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), tonic::transport::Error> {
    tonic::transport::Server::builder()
        .add_service(KvServer::new(KvService::new(backend)))
        .add_service(WatchServer::new(NotYet))
        .add_service(LeaseServer::new(NotYet))
        .add_service(ClusterServer::new(NotYet))
        .add_service(MaintenanceServer::new(NotYet))
        .serve_with_incoming_shutdown(TcpIncoming::from(listener), shutdown)
        .await
}

/// One store in memory, for tests: every read is current, so linearizable and serializable
/// reads are alike; this one member leads, and its lease clock is the process's.
#[derive(Debug)]
pub struct MemoryBackend {
    state: Mutex<MemoryState>,
    applied: tokio::sync::watch::Sender<u64>,
    started: std::time::Instant,
    header: Header,
}

#[derive(Debug, Default)]
struct MemoryState {
    store: MvccStore,
    recent: RecentChanges,
    lessor: flotilla_mvcc::lessor::Lessor,
}

impl MemoryBackend {
    /// An empty store; its headers say cluster `cluster_id`, member `member_id`, term 1.
    pub fn new(cluster_id: u64, member_id: u64) -> Self {
        let mut state = MemoryState::default();
        state.lessor.promote([], 0);
        MemoryBackend {
            state: Mutex::new(state),
            applied: tokio::sync::watch::channel(0).0,
            started: std::time::Instant::now(),
            header: Header {
                cluster_id,
                member_id,
                raft_term: 1,
            },
        }
    }

    fn now_ms(&self) -> u64 {
        self.started.elapsed().as_millis() as u64
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, MemoryState> {
        // A panic while holding the lock happens only in a broken invariant of the store,
        // which must not be served past.
        self.state.lock().expect("the store's lock is not poisoned")
    }

    /// Runs `f` on the store.
    pub fn with_store_mut<R>(&self, f: impl FnOnce(&mut MvccStore) -> R) -> R {
        f(&mut self.lock().store)
    }

    fn apply_locked(&self, state: &mut MemoryState, command: MvccCommand) -> Applied {
        let now = self.now_ms();
        let granted = match &command {
            MvccCommand::LeaseGrant { ttl, .. } => Some(*ttl),
            _ => None,
        };
        let applied = state.store.apply_command(command);
        state.recent.record(applied.revision, &applied.events);
        if let (Ok(MvccOutput::LeaseGranted(id)), Some(ttl)) = (&applied.result, granted) {
            state.lessor.granted(*id, ttl, now);
        }
        self.applied.send_modify(|n| *n += 1);
        applied
    }

    /// Revokes the leases whose time is up, as a leader does through its log.
    pub fn expire_leases(&self) {
        let now = self.now_ms();
        let mut state = self.lock();
        for id in state.lessor.expired(now) {
            state.lessor.revoked(id);
            self.apply_locked(&mut state, MvccCommand::LeaseRevoke(id));
        }
    }
}

impl Backend for MemoryBackend {
    async fn range(
        &self,
        request: RangeRequest,
        _serializable: bool,
    ) -> Result<(Revision, RangeResponse), Status> {
        let state = self.lock();
        let response = state.store.range(&request).map_err(convert::status)?;
        Ok((state.store.revision(), response))
    }

    async fn apply(&self, command: MvccCommand) -> Result<Applied, Status> {
        let mut state = self.lock();
        if let MvccCommand::LeaseRevoke(id) = &command {
            state.lessor.revoked(*id);
        }
        Ok(self.apply_locked(&mut state, command))
    }

    fn with_store<R>(&self, f: impl FnOnce(&MvccStore, &RecentChanges) -> R) -> R {
        let state = self.lock();
        f(&state.store, &state.recent)
    }

    fn applied(&self) -> tokio::sync::watch::Receiver<u64> {
        self.applied.subscribe()
    }

    async fn lease_keep_alive(&self, id: LeaseId) -> Result<i64, Status> {
        let now = self.now_ms();
        Ok(self.lock().lessor.keep_alive(id, now).unwrap_or(0))
    }

    async fn lease_time_to_live(
        &self,
        id: LeaseId,
        keys: bool,
    ) -> Result<Option<LeaseTtl>, Status> {
        let now = self.now_ms();
        let state = self.lock();
        let Some(info) = state.store.lease(id) else {
            return Ok(None);
        };
        Ok(Some(LeaseTtl {
            granted_ttl: info.granted_ttl,
            ttl: state.lessor.remaining(id, now).unwrap_or(0),
            keys: if keys { info.keys } else { Vec::new() },
        }))
    }

    fn members(&self) -> Vec<MemberInfo> {
        vec![MemberInfo {
            id: self.header.member_id,
            name: "memory".into(),
            ..MemberInfo::default()
        }]
    }

    fn status(&self) -> MemberStatus {
        let state = self.lock();
        MemberStatus {
            leader: self.header.member_id,
            raft_index: *self.applied.borrow(),
            raft_term: self.header.raft_term,
            raft_applied_index: *self.applied.borrow(),
            db_size: state.store.len() as i64,
        }
    }

    fn cluster_id(&self) -> u64 {
        self.header.cluster_id
    }

    fn member_id(&self) -> u64 {
        self.header.member_id
    }

    fn raft_term(&self) -> u64 {
        self.header.raft_term
    }
}
