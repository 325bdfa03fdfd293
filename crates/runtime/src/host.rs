//! [`TokioHost`]: the [`Host`] that gives the shared node loop tokio's clock, the peer links
//! and the WAL.
//!
//! - clock: a tick every [`crate::NodeConfig::tick`] (missed ticks are skipped, not bunched);
//! - inbox: messages the port received from peers and pokes from client handlers, through one
//!   bounded channel (a full inbox drops the message, as a lossy network would);
//! - storage: `WalStorage::persist` on tokio's blocking pool (`spawn_blocking`), so the
//!   thread that runs the loop goes on serving clients and peers while the batch syncs, on
//!   a current-thread runtime too; one `fdatasync` covers every entry proposed while the
//!   previous one ran: they all arrive in the next `Ready` (group commit by the loop's own
//!   batching). The loop sends a `Ready`'s messages only after this returns;
//! - transport: [`PeerLinks`], which never blocks.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use flotilla_node::{Event, Host, Input};
use flotilla_raft::{Message, NodeId, RawNode, Ready};
use flotilla_storage::{Persist, Storage, StorageError, WalStorage};
use tokio::sync::{mpsc, watch};
use tokio::time::{Interval, MissedTickBehavior};

use tracing::info;

use crate::metrics::Counters;
use crate::peer::PeerLinks;

pub struct TokioHost {
    id: NodeId,
    counters: Arc<Counters>,
    inbox: mpsc::Receiver<Input>,
    ticks: Interval,
    /// `None` only while a persist runs on the blocking pool.
    wal: Option<WalStorage>,
    peers: PeerLinks,
    stop: watch::Receiver<bool>,
}

impl TokioHost {
    pub(crate) fn new(
        id: NodeId,
        counters: Arc<Counters>,
        inbox: mpsc::Receiver<Input>,
        tick: Duration,
        wal: WalStorage,
        peers: PeerLinks,
        stop: watch::Receiver<bool>,
    ) -> Self {
        let mut ticks = tokio::time::interval(tick);
        ticks.set_missed_tick_behavior(MissedTickBehavior::Skip);
        let host = TokioHost {
            id,
            counters,
            inbox,
            ticks,
            wal: Some(wal),
            peers,
            stop,
        };
        host.update_stats();
        host
    }

    fn wal(&self) -> &WalStorage {
        self.wal
            .as_ref()
            .expect("the WAL is back after every persist")
    }

    fn update_stats(&self) {
        let stats = &self.counters.storage;
        stats
            .log_bytes
            .store(self.wal().log_bytes(), Ordering::Relaxed);
        stats
            .segments
            .store(self.wal().segment_count() as u64, Ordering::Relaxed);
        stats
            .snapshot_bytes
            .store(self.wal().snapshot_bytes(), Ordering::Relaxed);
    }
}

impl Host for TokioHost {
    type Error = StorageError;

    async fn next_event(&mut self) -> Event {
        if *self.stop.borrow() {
            return Event::Stop;
        }
        tokio::select! {
            input = self.inbox.recv() => match input {
                Some(input) => Event::Input(input),
                None => Event::Stop,
            },
            _ = self.ticks.tick() => Event::Tick,
            _ = self.stop.changed() => Event::Stop,
        }
    }

    fn try_input(&mut self) -> Option<Input> {
        self.inbox.try_recv().ok()
    }

    async fn persist(&mut self, batch: &Persist) -> Result<(), StorageError> {
        let started = std::time::Instant::now();
        let mut wal = self
            .wal
            .take()
            .expect("the WAL is back after every persist");
        let batch = batch.clone();
        let (wal, result) = tokio::task::spawn_blocking(move || {
            let result = wal.persist(&batch);
            (wal, result)
        })
        .await
        .expect("the persist task does not panic");
        self.wal = Some(wal);
        result?;
        self.counters.sync_latency.observe(started.elapsed());
        self.counters.storage.syncs.fetch_add(1, Ordering::Relaxed);
        self.update_stats();
        Ok(())
    }

    fn raft_state_size(&self) -> u64 {
        self.wal().raft_state_size()
    }

    fn send(&mut self, _node: &RawNode, message: Message) {
        self.peers.send(message);
    }

    fn observe_ready(&mut self, _node: &RawNode, ready: &Ready) {
        if let Some(soft) = &ready.soft_state {
            info!(id = self.id, role = ?soft.role, term = soft.term, leader = ?soft.leader, "role");
        }
    }
}
