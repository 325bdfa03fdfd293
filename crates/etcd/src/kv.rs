//! etcd's `KV` service: Range, Put, DeleteRange, Txn and Compact over a [`Backend`].
//!
//! Requests are checked as etcd's gRPC layer checks them ([`crate::convert`]); reads go to
//! [`Backend::range`] (linearizable unless `serializable`), writes are applied through
//! [`Backend::apply`] and answered with the header of the revision they made (or the
//! store's, if they made none). A store's refusal is etcd's status for it.

use std::sync::Arc;

use flotilla_mvcc::{MvccCommand, MvccOutput};
use tonic::{Request, Response, Status};

use crate::convert;
use crate::pb::etcdserverpb as pb;
use crate::server::{header, Backend};
use pb::kv_server::Kv;

/// etcd's `KV` service.
pub struct KvService<B> {
    backend: Arc<B>,
}

impl<B> KvService<B> {
    pub fn new(backend: Arc<B>) -> Self {
        KvService { backend }
    }
}

/// The store answered a command with the output of another kind (a broken backend).
pub(crate) fn unexpected(output: &MvccOutput) -> Status {
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
