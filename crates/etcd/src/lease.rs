//! etcd's `Lease` service: grant, revoke, keep-alive (a stream), time to live and the
//! list, over a [`Backend`].
//!
//! As etcd answers:
//! - **LeaseGrant**: a TTL above etcd's maximum (9,000,000,000 s) is refused
//!   (`OUT_OF_RANGE`, "etcdserver: too large lease TTL"); one below
//!   [`ServeOptions::min_lease_ttl`] is raised to it before the grant is applied, and the
//!   response says the TTL granted. Id 0 lets the store pick one; an id in use is refused
//!   (`FAILED_PRECONDITION`, "etcdserver: lease already exists").
//! - **LeaseRevoke**: applied through the log, deleting the lease's keys; an unknown lease
//!   is `NOT_FOUND` ("etcdserver: requested lease not found").
//! - **LeaseKeepAlive**: each request is answered, in order, with its id and the TTL the
//!   leader renewed it for, or TTL 0 if there is no such lease; the header is made before
//!   the renewal (so its revision is never past a revoke the client has not seen). The
//!   stream ends cleanly when the client closes its side, with the backend's status if a
//!   keep-alive cannot be carried out (no leader), and with `UNAVAILABLE` when the server
//!   stops. Responses wait in a small bounded channel: a client that does not read them
//!   stops its requests being read.
//! - **LeaseTimeToLive**: granted TTL, seconds left, keys if asked; TTL -1 for a lease
//!   there is not (etcd's answer, which etcdctl prints as "already expired").
//! - **LeaseLeases**: this member's leases, by id (etcd orders them by expiry).
//!
//! Expiry is the backend's business (its leader revokes an expired lease through the log).

use std::sync::Arc;

use flotilla_mvcc::{LeaseId, MvccCommand, MvccOutput};
use tokio::sync::mpsc;
use tonic::codegen::tokio_stream::wrappers::ReceiverStream;
use tonic::codegen::BoxStream;
use tonic::{Request, Response, Status, Streaming};

use crate::convert;
use crate::kv::unexpected;
use crate::pb::etcdserverpb as pb;
use crate::server::{self, current_revision, header, Backend, ServeOptions, Stopping};
use pb::lease_server::Lease;

/// etcd's largest lease TTL, in seconds.
pub const MAX_LEASE_TTL: i64 = 9_000_000_000;

/// etcd's message for a TTL above [`MAX_LEASE_TTL`].
pub const ERR_LEASE_TTL_TOO_LARGE: &str = "etcdserver: too large lease TTL";

/// Keep-alive responses a stream holds for a client that has not read them.
const KEEP_ALIVE_BUFFER: usize = 16;

/// etcd's `Lease` service.
pub struct LeaseService<B> {
    backend: Arc<B>,
    min_ttl: i64,
    stopping: Stopping,
}

impl<B> LeaseService<B> {
    pub(crate) fn new(backend: Arc<B>, options: &ServeOptions, stopping: Stopping) -> Self {
        LeaseService {
            backend,
            min_ttl: options.min_lease_ttl,
            stopping,
        }
    }
}

#[tonic::async_trait]
impl<B: Backend> Lease for LeaseService<B> {
    type LeaseKeepAliveStream = BoxStream<pb::LeaseKeepAliveResponse>;

    async fn lease_grant(
        &self,
        request: Request<pb::LeaseGrantRequest>,
    ) -> Result<Response<pb::LeaseGrantResponse>, Status> {
        let request = request.into_inner();
        if request.ttl > MAX_LEASE_TTL {
            return Err(Status::out_of_range(ERR_LEASE_TTL_TOO_LARGE));
        }
        let ttl = request.ttl.max(self.min_ttl);
        let command = MvccCommand::LeaseGrant {
            id: request.id,
            ttl,
        };
        let applied = self.backend.apply(command).await?;
        match applied.result.map_err(convert::status)? {
            MvccOutput::LeaseGranted(id) => Ok(Response::new(pb::LeaseGrantResponse {
                header: Some(header(&*self.backend, applied.revision)),
                id,
                ttl,
                error: String::new(),
            })),
            other => Err(unexpected(&other)),
        }
    }

    async fn lease_revoke(
        &self,
        request: Request<pb::LeaseRevokeRequest>,
    ) -> Result<Response<pb::LeaseRevokeResponse>, Status> {
        let id = request.into_inner().id;
        let applied = self.backend.apply(MvccCommand::LeaseRevoke(id)).await?;
        match applied.result.map_err(convert::status)? {
            MvccOutput::LeaseRevoked => Ok(Response::new(pb::LeaseRevokeResponse {
                header: Some(header(&*self.backend, applied.revision)),
            })),
            other => Err(unexpected(&other)),
        }
    }

    async fn lease_keep_alive(
        &self,
        request: Request<Streaming<pb::LeaseKeepAliveRequest>>,
    ) -> Result<Response<Self::LeaseKeepAliveStream>, Status> {
        let (tx, rx) = mpsc::channel(KEEP_ALIVE_BUFFER);
        tokio::spawn(keep_alive(
            Arc::clone(&self.backend),
            request.into_inner(),
            tx,
            self.stopping.clone(),
        ));
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn lease_time_to_live(
        &self,
        request: Request<pb::LeaseTimeToLiveRequest>,
    ) -> Result<Response<pb::LeaseTimeToLiveResponse>, Status> {
        let request = request.into_inner();
        let found = self
            .backend
            .lease_time_to_live(request.id, request.keys)
            .await?;
        let header = Some(header(&*self.backend, current_revision(&*self.backend)));
        Ok(Response::new(match found {
            Some(ttl) => pb::LeaseTimeToLiveResponse {
                header,
                id: request.id,
                ttl: ttl.ttl,
                granted_ttl: ttl.granted_ttl,
                keys: ttl.keys,
            },
            None => pb::LeaseTimeToLiveResponse {
                header,
                id: request.id,
                ttl: -1,
                granted_ttl: 0,
                keys: Vec::new(),
            },
        }))
    }

    async fn lease_leases(
        &self,
        _: Request<pb::LeaseLeasesRequest>,
    ) -> Result<Response<pb::LeaseLeasesResponse>, Status> {
        let (revision, leases) = self
            .backend
            .with_store(|store, _| (store.revision(), store.leases()));
        Ok(Response::new(pb::LeaseLeasesResponse {
            header: Some(header(&*self.backend, revision)),
            leases: leases
                .into_iter()
                .map(|id| pb::LeaseStatus { id })
                .collect(),
        }))
    }
}

type KeepAliveSender = mpsc::Sender<Result<pb::LeaseKeepAliveResponse, Status>>;

/// One keep-alive stream: every request answered in order (see the module docs).
async fn keep_alive<B: Backend>(
    backend: Arc<B>,
    mut requests: Streaming<pb::LeaseKeepAliveRequest>,
    tx: KeepAliveSender,
    mut stopping: Stopping,
) {
    loop {
        let request = tokio::select! {
            request = requests.message() => request,
            _ = tx.closed() => return,
            _ = server::stopped(&mut stopping) => {
                let _ = tx.try_send(Err(server::server_stopping()));
                return;
            }
        };
        let id: LeaseId = match request {
            Ok(Some(request)) => request.id,
            // The client closed its side (ends cleanly, as etcd's), or the call broke.
            Ok(None) | Err(_) => return,
        };
        // The header before the renewal, as etcd makes it.
        let header = header(&*backend, current_revision(&*backend));
        let answer = tokio::select! {
            ttl = backend.lease_keep_alive(id) => match ttl {
                Ok(ttl) => Ok(pb::LeaseKeepAliveResponse {
                    header: Some(header),
                    id,
                    ttl: ttl.max(0),
                }),
                Err(status) => Err(status),
            },
            _ = tx.closed() => return,
            _ = server::stopped(&mut stopping) => Err(server::server_stopping()),
        };
        let failed = answer.is_err();
        let sent = tokio::select! {
            biased;
            sent = tx.send(answer) => sent.is_ok(),
            _ = server::stopped(&mut stopping) => false,
        };
        if failed || !sent {
            return;
        }
    }
}
