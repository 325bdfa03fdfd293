//! etcd's v3 API on a node of the replicated store: the [`flotilla_etcd::Backend`] of one
//! replica ([`ReplicaBackend`]).
//!
//! Every node can be asked anything, as with etcd: a node that does not lead hands writes,
//! linearizable reads and lease keep-alives to the leader over the node port
//! ([`EtcdRequest`] in the native protocol), and answers serializable reads, watches and
//! the lease list from its own applied state.
//!
//! - **Writes** are proposed on the leader and answered once applied there. A write turned
//!   away without effect (no leader yet, leadership moved) is retried within
//!   [`REQUEST_TIMEOUT`]; one whose outcome is unknown is answered `UNAVAILABLE`
//!   ("request timed out"), never retried here (etcd's API has no exactly-once).
//! - **Linearizable reads** run on the leader after a ReadIndex confirmation; serializable
//!   ones on this node's state as it is.
//! - **Leases**: only the leader keeps deadlines (its [`Lessor`], by its monotonic clock),
//!   renewed by keep-alives. When one passes, the leader proposes the revoke through the
//!   log, so every replica deletes the lease's keys at the same point of its history. A
//!   node that comes to lead gives every lease its full TTL from then (etcd's promote):
//!   leadership moving makes leases last longer, never shorter.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use flotilla_etcd::server::{LeaseTtl, MemberInfo, MemberStatus};
use flotilla_etcd::Backend;
use flotilla_mvcc::changes::RecentChanges;
use flotilla_mvcc::lessor::Lessor;
use flotilla_mvcc::{
    Applied, LeaseId, MvccCommand, MvccError, MvccStore, RangeRequest, RangeResponse, Revision,
};
use flotilla_raft::NodeId;
use flotilla_rsm::Replied;
use flotilla_runtime::NodeView;
use serde::{Deserialize, Serialize};
use tonic::Status;

use crate::forward::Forwarder;
use crate::service::{Answer, Command, KvStore, Output, Query};

/// How long a request may wait for a leader (and its forwarding) before it is answered
/// `UNAVAILABLE`: longer than an election, as etcd's request timeout.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(7);

/// How often the leader looks for expired leases.
pub const LEASE_CHECK_INTERVAL: Duration = Duration::from_millis(100);

/// Pause before trying again after no leader was known or it turned the request away.
const RETRY_PAUSE: Duration = Duration::from_millis(20);

/// What a node asks the leader on another node's behalf.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum EtcdRequest {
    Apply(MvccCommand),
    /// A linearizable read.
    Range(RangeRequest),
    KeepAlive(LeaseId),
    TimeToLive {
        id: LeaseId,
        keys: bool,
    },
}

/// The leader's answer.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum EtcdAnswer {
    Applied(Applied),
    Range(Revision, Result<RangeResponse, MvccError>),
    /// The renewed TTL, 0 if there is no such lease.
    KeepAlive(i64),
    /// (granted TTL, seconds left, keys) or no such lease.
    TimeToLive(Option<(i64, i64, Vec<Vec<u8>>)>),
}

/// Where this node serves the etcd API and where the others do (for `MemberList`).
#[derive(Clone, Debug, Default)]
pub struct EtcdConfig {
    /// Each member's gRPC address, by node id, where known.
    pub grpc_members: Vec<Option<SocketAddr>>,
}

/// A 64-bit FNV-1a hash: stable ids for the cluster and its members.
fn fnv1a_64(parts: &[&[u8]]) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for part in parts {
        for &byte in *part {
            hash ^= byte as u64;
            hash = hash.wrapping_mul(0x0100_0000_01b3);
        }
        hash ^= 0xff;
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    hash.max(1)
}

/// The etcd API's view of one replica.
pub struct ReplicaBackend {
    view: NodeView<KvStore>,
    me: NodeId,
    members: Vec<SocketAddr>,
    config: EtcdConfig,
    cluster_id: u64,
    member_ids: Vec<u64>,
    lessor: Mutex<Lessor>,
    clock: Instant,
    /// Batched forwarding to the other nodes.
    forwarder: Forwarder,
}

impl ReplicaBackend {
    /// The backend of node `me` of the cluster named `name` whose nodes listen on `members`.
    pub fn new(
        view: NodeView<KvStore>,
        name: &str,
        me: NodeId,
        members: Vec<SocketAddr>,
        config: EtcdConfig,
    ) -> Self {
        let listed: Vec<String> = members.iter().map(|a| a.to_string()).collect();
        let mut parts: Vec<&[u8]> = vec![name.as_bytes()];
        parts.extend(listed.iter().map(|a| a.as_bytes()));
        let cluster_id = fnv1a_64(&parts);
        let member_ids = (0..members.len() as u64)
            .map(|i| fnv1a_64(&[&cluster_id.to_le_bytes(), &i.to_le_bytes()]))
            .collect();
        ReplicaBackend {
            view,
            me,
            forwarder: Forwarder::new(members.clone()),
            members,
            config,
            cluster_id,
            member_ids,
            lessor: Mutex::new(Lessor::new()),
            clock: Instant::now(),
        }
    }

    fn now_ms(&self) -> u64 {
        self.clock.elapsed().as_millis() as u64
    }

    fn lessor(&self) -> std::sync::MutexGuard<'_, Lessor> {
        // Poisoned only by a panic inside the lessor, a broken invariant not to serve past.
        self.lessor
            .lock()
            .expect("the lessor's lock is not poisoned")
    }

    /// `(is leader, the leader's id if known)`.
    fn leadership(&self) -> (bool, Option<NodeId>) {
        self.view
            .with_raft(|n| (n.is_leader(), n.status().soft.leader))
    }

    /// Brings the lessor in line with this node's role and its store's leases: a new leader
    /// gives every lease its full TTL from now; a lease granted (applied) since gets its
    /// full TTL; one revoked is dropped; a node that no longer leads forgets its deadlines.
    fn sync_lessor(&self) {
        let (leading, _) = self.leadership();
        let now = self.now_ms();
        let leases: Vec<(LeaseId, i64)> = self.view.replica.with_state(|s| {
            s.etcd()
                .leases()
                .into_iter()
                .filter_map(|id| s.etcd().lease(id).map(|l| (id, l.granted_ttl)))
                .collect()
        });
        let mut lessor = self.lessor();
        if !leading {
            if lessor.is_leading() {
                lessor.demote();
            }
            return;
        }
        if !lessor.is_leading() {
            lessor.promote(leases, now);
            return;
        }
        let known: std::collections::BTreeSet<LeaseId> = lessor.tracked().collect();
        let stored: std::collections::BTreeSet<LeaseId> =
            leases.iter().map(|(id, _)| *id).collect();
        for gone in known.difference(&stored) {
            lessor.revoked(*gone);
        }
        for (id, ttl) in leases {
            if !known.contains(&id) {
                lessor.granted(id, ttl, now);
            }
        }
    }

    /// [`Self::sync_lessor`] only when lease `id` needs it: the lessor does not lead yet, or
    /// it and the store disagree on whether `id` exists. A keep-alive or time-to-live of a
    /// lease both know (the usual case) then costs one lookup, not a walk over every lease.
    fn sync_lessor_for(&self, id: LeaseId) {
        let stored = self
            .view
            .replica
            .with_state(|s| s.etcd().lease(id).is_some());
        let in_step = {
            let lessor = self.lessor();
            lessor.is_leading() && lessor.remaining(id, self.now_ms()).is_some() == stored
        };
        if !in_step {
            self.sync_lessor();
        }
    }

    /// Serves `request` on this node if it leads; otherwise turns it away with the leader
    /// it knows of (the asker forwards it there). What the node port answers.
    pub async fn serve_local(&self, request: EtcdRequest) -> Replied<EtcdAnswer> {
        let replica = &self.view.replica;
        match request {
            EtcdRequest::Apply(command) => {
                let revoking = match &command {
                    MvccCommand::LeaseRevoke(id) => Some(*id),
                    _ => None,
                };
                let outcome = replica.submit(Command::Etcd(command)).await;
                let replied = Replied::from_submit(outcome).map(|output| match output {
                    Output::Etcd(applied) => EtcdAnswer::Applied(applied),
                    Output::Kv(_) => unreachable!("an etcd command applied by the KV store"),
                });
                if let (Some(id), Replied::Done(_)) = (revoking, &replied) {
                    self.lessor().revoked(id);
                }
                if matches!(replied, Replied::Done(_)) {
                    self.view.count_proposal();
                }
                replied
            }
            EtcdRequest::Range(range) => Replied::from_read(replica.read(Query::Etcd(range)).await)
                .map(|answer| match answer {
                    Answer::Etcd(revision, result) => EtcdAnswer::Range(revision, result),
                    Answer::Kv(_) => unreachable!("an etcd query answered by the KV store"),
                }),
            EtcdRequest::KeepAlive(id) => {
                let (leading, hint) = self.leadership();
                if !leading {
                    return Replied::NotApplied { hint };
                }
                self.sync_lessor_for(id);
                let now = self.now_ms();
                Replied::Done(EtcdAnswer::KeepAlive(
                    self.lessor().keep_alive(id, now).unwrap_or(0),
                ))
            }
            EtcdRequest::TimeToLive { id, keys } => {
                let (leading, hint) = self.leadership();
                if !leading {
                    return Replied::NotApplied { hint };
                }
                self.sync_lessor_for(id);
                let Some(info) = replica.with_state(|s| s.etcd().lease(id)) else {
                    return Replied::Done(EtcdAnswer::TimeToLive(None));
                };
                let now = self.now_ms();
                let left = self.lessor().remaining(id, now).unwrap_or(0);
                let keys = if keys { info.keys } else { Vec::new() };
                Replied::Done(EtcdAnswer::TimeToLive(Some((info.granted_ttl, left, keys))))
            }
        }
    }

    /// Serves a batch another node forwarded ([`crate::forward`]), its requests all at
    /// once (its writes are proposed together), answering each in order.
    pub async fn serve_batch(
        self: &Arc<Self>,
        requests: Vec<EtcdRequest>,
    ) -> Vec<Replied<EtcdAnswer>> {
        let mut serving = tokio::task::JoinSet::new();
        let count = requests.len();
        for (k, request) in requests.into_iter().enumerate() {
            let backend = self.clone();
            serving.spawn(async move { (k, backend.serve_local(request).await) });
        }
        let mut replies: Vec<Replied<EtcdAnswer>> = vec![Replied::Unknown; count];
        while let Some(done) = serving.join_next().await {
            // A request whose task panicked stays Unknown: it may have been proposed.
            if let Ok((k, replied)) = done {
                replies[k] = replied;
            }
        }
        replies
    }

    /// Carries out `request` at the leader, wherever it is, within [`REQUEST_TIMEOUT`].
    async fn at_leader(&self, request: EtcdRequest) -> Result<EtcdAnswer, Status> {
        let writes = matches!(request, EtcdRequest::Apply(_));
        let deadline = Instant::now() + REQUEST_TIMEOUT;
        let mut last = String::from("etcdserver: no leader");
        loop {
            let (leading, leader) = self.leadership();
            let replied = if leading {
                Ok(self.serve_local(request.clone()).await)
            } else if let Some(leader) = leader.filter(|&l| l != self.me) {
                self.forwarder.forward(leader, request.clone()).await
            } else {
                Ok(Replied::NotApplied { hint: None })
            };
            match replied {
                Ok(Replied::Done(answer)) => return Ok(answer),
                Ok(Replied::NotApplied { .. }) => {}
                Ok(Replied::Unknown) if writes => {
                    return Err(Status::unavailable("etcdserver: request timed out"))
                }
                Ok(Replied::Unknown) => last = "etcdserver: request timed out".into(),
                Err(e) if writes => {
                    return Err(Status::unavailable(format!(
                        "etcdserver: request timed out, possibly due to connection lost ({e})"
                    )))
                }
                Err(e) => last = format!("etcdserver: leader unreachable ({e})"),
            }
            if Instant::now() >= deadline {
                return Err(Status::unavailable(last));
            }
            tokio::time::sleep(RETRY_PAUSE).await;
        }
    }

    /// On the leader, revokes expired leases through the log every
    /// [`LEASE_CHECK_INTERVAL`], until `stop` resolves.
    pub async fn expire_leases(self: Arc<Self>, stop: impl std::future::Future<Output = ()>) {
        let mut tick = tokio::time::interval(LEASE_CHECK_INTERVAL);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tokio::pin!(stop);
        loop {
            tokio::select! {
                _ = &mut stop => return,
                _ = tick.tick() => {}
            }
            self.sync_lessor();
            let expired = {
                let now = self.now_ms();
                self.lessor().expired(now)
            };
            for id in expired {
                let revoke = EtcdRequest::Apply(MvccCommand::LeaseRevoke(id));
                // Turned away or unknown: the next round tries again (a revoke of a lease
                // already gone changes nothing).
                if let Replied::Done(_) = self.serve_local(revoke).await {
                    self.lessor().revoked(id);
                }
            }
        }
    }
}

fn unexpected(answer: EtcdAnswer) -> Status {
    Status::internal(format!("the leader answered {answer:?}"))
}

impl Backend for ReplicaBackend {
    async fn range(
        &self,
        request: RangeRequest,
        serializable: bool,
    ) -> Result<(Revision, RangeResponse), Status> {
        let (revision, result) = if serializable {
            self.view
                .replica
                .with_state(|s| (s.etcd().revision(), s.etcd().range(&request)))
        } else {
            match self.at_leader(EtcdRequest::Range(request)).await? {
                EtcdAnswer::Range(revision, result) => (revision, result),
                other => return Err(unexpected(other)),
            }
        };
        Ok((revision, result.map_err(flotilla_etcd::convert::status)?))
    }

    async fn apply(&self, command: MvccCommand) -> Result<Applied, Status> {
        match self.at_leader(EtcdRequest::Apply(command)).await? {
            EtcdAnswer::Applied(applied) => Ok(applied),
            other => Err(unexpected(other)),
        }
    }

    fn with_store<R>(&self, f: impl FnOnce(&MvccStore, &RecentChanges) -> R) -> R {
        self.view
            .replica
            .with_state(|s| f(s.etcd(), s.recent_changes()))
    }

    fn applied(&self) -> tokio::sync::watch::Receiver<u64> {
        self.view.applied()
    }

    async fn lease_keep_alive(&self, id: LeaseId) -> Result<i64, Status> {
        match self.at_leader(EtcdRequest::KeepAlive(id)).await? {
            EtcdAnswer::KeepAlive(ttl) => Ok(ttl),
            other => Err(unexpected(other)),
        }
    }

    async fn lease_time_to_live(
        &self,
        id: LeaseId,
        keys: bool,
    ) -> Result<Option<LeaseTtl>, Status> {
        match self.at_leader(EtcdRequest::TimeToLive { id, keys }).await? {
            EtcdAnswer::TimeToLive(found) => Ok(found.map(|(granted_ttl, ttl, keys)| LeaseTtl {
                granted_ttl,
                ttl,
                keys,
            })),
            other => Err(unexpected(other)),
        }
    }

    fn members(&self) -> Vec<MemberInfo> {
        self.members
            .iter()
            .enumerate()
            .map(|(i, addr)| MemberInfo {
                id: self.member_ids[i],
                name: format!("node-{i}"),
                peer_urls: vec![format!("http://{addr}")],
                client_urls: self
                    .config
                    .grpc_members
                    .get(i)
                    .copied()
                    .flatten()
                    .map(|a| vec![format!("http://{a}")])
                    .unwrap_or_default(),
            })
            .collect()
    }

    fn status(&self) -> MemberStatus {
        let report = self.view.report();
        MemberStatus {
            leader: report
                .leader
                .and_then(|l| self.member_ids.get(l as usize).copied())
                .unwrap_or(0),
            raft_index: report.commit,
            raft_term: report.term,
            raft_applied_index: report.applied,
            db_size: (report.log_bytes + report.snapshot_bytes) as i64,
        }
    }

    fn cluster_id(&self) -> u64 {
        self.cluster_id
    }

    fn member_id(&self) -> u64 {
        self.member_ids[self.me as usize]
    }

    fn raft_term(&self) -> u64 {
        self.view.with_raft(|n| n.status().hard.term)
    }
}
