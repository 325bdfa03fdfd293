//! The gRPC services over a [`Backend`]: etcd's `KV` in full; `Watch`, `Lease`, `Cluster`
//! and `Maintenance` answer `UNIMPLEMENTED` at once for now (as does every method these
//! protos leave out, such as the `Auth` service's).

use std::future::Future;
use std::sync::{Arc, Mutex};

use flotilla_mvcc::{
    Applied, MvccCommand, MvccError, MvccOutput, MvccStore, RangeRequest, RangeResponse, Revision,
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
/// replicated group's), and what a response header tells about where it ran.
pub trait Backend: Send + Sync + 'static {
    /// Reads: linearizable unless `serializable` (then this member's state as it is). The
    /// store's revision at the read (the header's) and what was read.
    fn range(
        &self,
        request: RangeRequest,
        serializable: bool,
    ) -> impl Future<Output = Result<(Revision, RangeResponse), MvccError>> + Send;

    /// Applies one command (through the log, for a replicated store) and says what it did.
    fn apply(&self, command: MvccCommand) -> impl Future<Output = Applied> + Send;

    fn cluster_id(&self) -> u64;
    fn member_id(&self) -> u64;
    fn raft_term(&self) -> u64;
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
        let applied = self.backend.apply(command).await;
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
        let (revision, response) = self
            .backend
            .range(request, serializable)
            .await
            .map_err(convert::status)?;
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
/// reads are alike.
#[derive(Debug, Default)]
pub struct MemoryBackend {
    store: Arc<Mutex<MvccStore>>,
    header: Header,
}

impl MemoryBackend {
    /// An empty store; its headers say cluster `cluster_id`, member `member_id`, term 1.
    pub fn new(cluster_id: u64, member_id: u64) -> Self {
        MemoryBackend {
            store: Arc::default(),
            header: Header {
                cluster_id,
                member_id,
                raft_term: 1,
            },
        }
    }

    /// The store itself.
    pub fn store(&self) -> Arc<Mutex<MvccStore>> {
        Arc::clone(&self.store)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, MvccStore> {
        // A panic while holding the lock happens only in a broken invariant of the store,
        // which must not be served past.
        self.store.lock().expect("the store's lock is not poisoned")
    }
}

impl Backend for MemoryBackend {
    async fn range(
        &self,
        request: RangeRequest,
        _serializable: bool,
    ) -> Result<(Revision, RangeResponse), MvccError> {
        let store = self.lock();
        Ok((store.revision(), store.range(&request)?))
    }

    async fn apply(&self, command: MvccCommand) -> Applied {
        self.lock().apply_command(command)
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
