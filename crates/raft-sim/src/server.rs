//! A simulated server's half of the node loop: the [`Host`] that gives
//! [`flotilla_node::run`] the simulator's clock, network and disk.
//!
//! - clock and inbox: a tick every [`ClusterConfig::tick`] of virtual time; messages from
//!   the simulated network and pokes from the tester, optionally batched
//!   ([`ClusterConfig::receive_batching`]);
//! - storage: the batch is written to the server's [`Disk`] (and, with
//!   [`StorageKind::Wal`], to the real WAL on its simulated file system), then the host
//!   waits a drawn sync latency and syncs. A crash during that wait aborts the task: the
//!   batch is lost (the file system decides how much of it);
//! - transport: the simulated labrpc network.
//!
//! Every hook feeds the [`crate::invariants::Invariants`]: each `Ready`, each message sent,
//! each sync, each applied entry and each confirmed read is checked as it happens. Every
//! peer here is correct, so a message the core refuses is a bug and fails the run.

use std::time::Duration;

use flotilla_node::{Event, Host, Input};
use flotilla_raft::{Entry, Message, NodeId, Persist, RawNode, ReadState, Ready, Role, StepError};
use flotilla_sim::sync::Receiver;
use flotilla_sim::{now, sleep, timeout};
use flotilla_storage::{MemStorage, Storage, StorageError};

use crate::cluster::{draw, Cluster, StorageKind, Wire};

pub(crate) struct SimHost {
    pub(crate) cluster: Cluster,
    pub(crate) i: usize,
    pub(crate) inbox: Receiver<Input>,
    pub(crate) next_tick: Duration,
}

impl SimHost {
    pub(crate) fn new(cluster: Cluster, i: usize, inbox: Receiver<Input>) -> Self {
        let next_tick = now() + cluster.config().tick;
        SimHost {
            cluster,
            i,
            inbox,
            next_tick,
        }
    }
}

impl Host for SimHost {
    /// Only the WAL fails (with [`StorageKind::Wal`]); the loop then stops and the cluster
    /// takes the server down.
    type Error = StorageError;

    async fn next_event(&mut self) -> Event {
        let wait = self.next_tick.saturating_sub(now());
        match timeout(wait, self.inbox.recv()).await {
            Ok(Some(input)) => {
                if let Some(window) = self.cluster.config().receive_batching {
                    sleep(draw(window)).await;
                }
                Event::Input(input)
            }
            Ok(None) => Event::Stop,
            Err(_) => {
                self.next_tick += self.cluster.config().tick;
                Event::Tick
            }
        }
    }

    fn try_input(&mut self) -> Option<Input> {
        self.inbox.try_recv()
    }

    async fn persist(&mut self, batch: &Persist) -> Result<(), StorageError> {
        let (cluster, i) = (&self.cluster, self.i);
        let inner = cluster.inner();
        if let StorageKind::Wal(_) = cluster.config().storage {
            let mut disk = inner.wals[i].borrow_mut();
            // In flight from its first write: a call failing after the batch's commit point
            // leaves it on disk.
            disk.in_flight = Some(batch.clone());
            disk.wal
                .as_mut()
                .expect("a running server has its WAL open")
                .persist(batch)?;
        }
        let disk = &inner.disks[i];
        let owned = batch.clone();
        disk.borrow_mut().write(move |storage: &mut MemStorage| {
            storage.persist(&owned).expect("memory storage cannot fail");
        });
        sleep(draw(cluster.config().sync_latency)).await;
        // If the server crashed during the sleep, this task was aborted: the write is lost.
        disk.borrow_mut().sync();
        if let StorageKind::Wal(_) = cluster.config().storage {
            let mut disk = inner.wals[i].borrow_mut();
            disk.fs.complete_syncs();
            disk.in_flight = None;
        }
        inner
            .invariants
            .borrow_mut()
            .on_sync(i, disk.borrow().durable().durable_state());
        Ok(())
    }

    fn raft_state_size(&self) -> u64 {
        self.cluster.inner().disks[self.i]
            .borrow()
            .durable()
            .raft_state_size()
    }

    fn send(&mut self, node: &RawNode, message: Message) {
        let (inner, i) = (self.cluster.inner(), self.i);
        inner.invariants.borrow_mut().on_send(
            i,
            node,
            &message,
            inner.disks[i].borrow().durable().durable_state(),
        );
        let to = message.to as usize;
        inner.net.send(i, to, Wire(message));
    }

    fn refused(&mut self, from: NodeId, error: StepError) {
        panic!(
            "server {} refused a message from {from}, a correct peer: {error}",
            self.i
        );
    }

    fn observe_ready(&mut self, node: &RawNode, ready: &Ready) {
        let (inner, i) = (self.cluster.inner(), self.i);
        inner.invariants.borrow_mut().on_ready(
            i,
            node,
            ready,
            inner.disks[i].borrow().durable().durable_state(),
        );
        if let Some(soft) = &ready.soft_state {
            match soft.role {
                Role::Leader => self
                    .cluster
                    .narrate(format!("node {i} is leader of term {}", soft.term)),
                Role::Candidate => self
                    .cluster
                    .narrate(format!("node {i} campaigns in term {}", soft.term)),
                Role::Follower | Role::PreCandidate => {}
            }
        }
    }

    fn observe_apply(&mut self, entry: &Entry) {
        let inner = self.cluster.inner();
        let holders = || {
            inner
                .disks
                .iter()
                .filter(|d| {
                    d.borrow()
                        .durable()
                        .durable_state()
                        .covers(entry.index, entry.term)
                })
                .count()
        };
        inner.invariants.borrow_mut().on_apply(
            self.i,
            entry.index,
            entry.term,
            holders,
            self.cluster.n(),
        );
        self.cluster.note_applied(self.i, entry.index);
    }

    fn observe_read(&mut self, read: &ReadState) {
        self.cluster
            .inner()
            .invariants
            .borrow_mut()
            .on_read_confirmed(self.i, read);
    }
}
