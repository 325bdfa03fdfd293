//! [`MemoryBackend`]: one store in memory, for tests and trying the API out.
//!
//! Every read is current, so linearizable and serializable reads are alike; this one member
//! leads, and its lease clock is the process's monotonic clock. Lease expiry is not a side
//! effect of serving: whoever serves a `MemoryBackend` runs [`MemoryBackend::spawn_expiry`]
//! (or calls [`MemoryBackend::expire_leases`] itself), which revokes each lease whose time is
//! up through [`MvccCommand::LeaseRevoke`], as a replicated leader does through its log, so
//! the lease's keys are deleted and watchers see the deletes. (A replicated backend runs
//! its own expiry on its leader; [`crate::serve`] does not.)

use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use flotilla_mvcc::changes::RecentChanges;
use flotilla_mvcc::lessor::Lessor;
use flotilla_mvcc::{
    Applied, LeaseId, MvccCommand, MvccOutput, MvccStore, RangeRequest, RangeResponse, Revision,
};
use tonic::Status;

use crate::convert::{self, Header};
use crate::server::{Backend, LeaseTtl, MemberInfo, MemberStatus};

/// One store in memory (see the module docs).
#[derive(Debug)]
pub struct MemoryBackend {
    state: Mutex<MemoryState>,
    applied: tokio::sync::watch::Sender<u64>,
    started: std::time::Instant,
    header: Header,
    members: Vec<MemberInfo>,
}

#[derive(Debug, Default)]
struct MemoryState {
    store: MvccStore,
    recent: RecentChanges,
    lessor: Lessor,
}

/// The task of [`MemoryBackend::spawn_expiry`]; stopped when dropped.
#[derive(Debug)]
pub struct ExpiryTask(tokio::task::JoinHandle<()>);

impl Drop for ExpiryTask {
    fn drop(&mut self) {
        self.0.abort();
    }
}

impl MemoryBackend {
    /// An empty store; its headers say cluster `cluster_id`, member `member_id`, term 1; its
    /// one member is named "memory" with no URLs (see [`MemoryBackend::with_members`]).
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
            members: vec![MemberInfo {
                id: member_id,
                name: "memory".into(),
                ..MemberInfo::default()
            }],
        }
    }

    /// The members `Cluster.MemberList` lists (this member leads whatever they say).
    pub fn with_members(mut self, members: Vec<MemberInfo>) -> Self {
        self.members = members;
        self
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
        let (applied, events) = state.store.apply_command(command);
        state.recent.record(applied.revision, events);
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

    /// Runs [`MemoryBackend::expire_leases`] every `every` on the current tokio runtime,
    /// until the task is dropped or the backend is.
    pub fn spawn_expiry(self: &Arc<Self>, every: Duration) -> ExpiryTask {
        let backend: Weak<Self> = Arc::downgrade(self);
        let every = every.max(Duration::from_millis(1));
        ExpiryTask(tokio::spawn(async move {
            let mut ticks = tokio::time::interval(every);
            ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                ticks.tick().await;
                match backend.upgrade() {
                    Some(backend) => backend.expire_leases(),
                    None => return,
                }
            }
        }))
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
        self.members.clone()
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
