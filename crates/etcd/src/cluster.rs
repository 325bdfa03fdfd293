//! What the cluster and this member say about themselves: etcd's `Cluster.MemberList` and
//! `Maintenance.Status`, from [`Backend::members`] and [`Backend::status`].
//!
//! As etcd answers: the member list's header has cluster, member and term but no revision;
//! the status's header has the store's revision, and its `errors` say "etcdserver: no
//! leader" when this member knows of none. The version reported is [`VERSION`], the etcd
//! release whose API these services follow, so that tools which compare versions treat
//! Flotilla as a 3.4 server; `dbSizeInUse` is `dbSize` (no free pages to tell apart).
//! Every other `Cluster` and `Maintenance` method (member changes, alarms, defragment,
//! hashes, snapshots, leader moves) is not in our protos, and is answered `UNIMPLEMENTED`.

use std::sync::Arc;

use tonic::{Request, Response, Status};

use crate::convert::Header;
use crate::pb::etcdserverpb as pb;
use crate::server::{current_revision, header, Backend};
use pb::cluster_server::Cluster;
use pb::maintenance_server::Maintenance;

/// The etcd version `Maintenance.Status` reports (`etcdctl endpoint status` shows it).
pub const VERSION: &str = "3.4.23";

/// etcd's message, in a status's errors, for a member that knows of no leader.
pub const ERR_NO_LEADER: &str = "etcdserver: no leader";

/// etcd's `Cluster` service (MemberList only).
pub struct ClusterService<B> {
    backend: Arc<B>,
}

impl<B> ClusterService<B> {
    pub fn new(backend: Arc<B>) -> Self {
        ClusterService { backend }
    }
}

#[tonic::async_trait]
impl<B: Backend> Cluster for ClusterService<B> {
    async fn member_list(
        &self,
        _: Request<pb::MemberListRequest>,
    ) -> Result<Response<pb::MemberListResponse>, Status> {
        let backend = &*self.backend;
        let header = Header {
            cluster_id: backend.cluster_id(),
            member_id: backend.member_id(),
            raft_term: backend.raft_term(),
        }
        .at(0);
        let members = backend
            .members()
            .into_iter()
            .map(|m| pb::Member {
                id: m.id,
                name: m.name,
                peer_ur_ls: m.peer_urls,
                client_ur_ls: m.client_urls,
                is_learner: false,
            })
            .collect();
        Ok(Response::new(pb::MemberListResponse {
            header: Some(header),
            members,
        }))
    }
}

/// etcd's `Maintenance` service (Status only).
pub struct MaintenanceService<B> {
    backend: Arc<B>,
}

impl<B> MaintenanceService<B> {
    pub fn new(backend: Arc<B>) -> Self {
        MaintenanceService { backend }
    }
}

#[tonic::async_trait]
impl<B: Backend> Maintenance for MaintenanceService<B> {
    async fn status(
        &self,
        _: Request<pb::StatusRequest>,
    ) -> Result<Response<pb::StatusResponse>, Status> {
        let backend = &*self.backend;
        let header = header(backend, current_revision(backend));
        let status = backend.status();
        let mut errors = Vec::new();
        if status.leader == 0 {
            errors.push(ERR_NO_LEADER.to_string());
        }
        Ok(Response::new(pb::StatusResponse {
            header: Some(header),
            version: VERSION.into(),
            db_size: status.db_size,
            leader: status.leader,
            raft_index: status.raft_index,
            raft_term: status.raft_term,
            raft_applied_index: status.raft_applied_index,
            errors,
            db_size_in_use: status.db_size,
            is_learner: false,
        }))
    }
}
