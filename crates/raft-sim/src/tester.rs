//! The Lab 3 tester's applier: the [`App`] each server runs in the Raft tests.
//!
//! It records every command each server applies, in the shared table the tester's checks
//! read (`n_committed`, `one`, `wait`), and checks as it goes what the Go tester's
//! `applier`/`applierSnap` check: no two servers apply different commands at one index,
//! every server applies in order without gaps, a snapshot's index matches its content. With
//! snapshots on (3D) it takes one after each index `i` with `(i + 1) % interval == 0`, in the
//! tester's format: the index and every command up to it.

use flotilla_node::App;
use flotilla_raft::{Entry, Snapshot};

use crate::cluster::{show, Cluster};

/// What one server has applied, as the tester records it.
#[derive(Clone, Debug, Default)]
pub(crate) struct Record {
    /// `applied[i]` is the command applied at index `i` (slot 0 unused).
    applied: Vec<Option<Vec<u8>>>,
    pub(crate) last_applied: u64,
}

impl Record {
    pub(crate) fn get(&self, index: u64) -> Option<&Vec<u8>> {
        self.applied.get(index as usize).and_then(|c| c.as_ref())
    }

    fn set(&mut self, index: u64, cmd: Vec<u8>) {
        let i = index as usize;
        if self.applied.len() <= i {
            self.applied.resize(i + 1, None);
        }
        self.applied[i] = Some(cmd);
    }

    /// The record a server starts from: what its persisted snapshot holds (a restarting
    /// service ingests it itself).
    pub(crate) fn restored(i: usize, snapshot: &Snapshot) -> Record {
        let mut record = Record::default();
        if snapshot.index > 0 {
            record.ingest(i, snapshot.index, &snapshot.data);
        }
        record
    }

    fn ingest(&mut self, i: usize, index: u64, data: &[u8]) {
        let (snap_index, upto) =
            decode_snapshot(data).unwrap_or_else(|e| panic!("apply error: server {i}: {e}"));
        assert_eq!(
            snap_index, index,
            "apply error: server {i} snapshot doesn't match m.SnapshotIndex"
        );
        self.applied = upto;
        self.last_applied = index;
    }
}

/// The tester's snapshot: the index and every command up to it (slot 0 unused).
type TesterSnapshot = (u64, Vec<Option<Vec<u8>>>);

fn encode_snapshot(index: u64, record: &Record) -> Vec<u8> {
    let upto: Vec<Option<Vec<u8>>> = (0..=index).map(|i| record.get(i).cloned()).collect();
    postcard::to_allocvec(&(index, upto)).expect("encode snapshot")
}

fn decode_snapshot(data: &[u8]) -> Result<TesterSnapshot, String> {
    postcard::from_bytes(data).map_err(|e| format!("snapshot decode error: {e}"))
}

/// Server `i`'s applier, writing into the cluster's shared records.
pub(crate) struct TesterApp {
    cluster: Cluster,
    i: usize,
    snapshot_interval: Option<u64>,
}

impl TesterApp {
    pub(crate) fn new(cluster: Cluster, i: usize, snapshot_interval: Option<u64>) -> Self {
        TesterApp {
            cluster,
            i,
            snapshot_interval,
        }
    }
}

impl App for TesterApp {
    fn apply_snapshot(&mut self, snapshot: &Snapshot) {
        let i = self.i;
        self.cluster.with_records(|records| {
            records[i].ingest(i, snapshot.index, &snapshot.data);
        });
        flotilla_sim::trace(0x5A90_0000_0000 | snapshot.index);
    }

    fn apply(&mut self, entry: Entry, _raft_state_size: u64) -> Option<Vec<u8>> {
        let (i, index, cmd) = (self.i, entry.index, entry.data);
        let interval = self.snapshot_interval;
        let snapshot = self.cluster.with_records(|records| {
            let expected = records[i].last_applied + 1;
            assert_eq!(
                index, expected,
                "apply error: server {i} apply out of order, expected index {expected}, got {index}"
            );
            for (j, record) in records.iter().enumerate() {
                if let Some(old) = record.get(index) {
                    assert_eq!(
                        old,
                        &cmd,
                        "apply error: commit index={index} server={i} {} != server={j} {}",
                        show(&cmd),
                        show(old)
                    );
                }
            }
            assert!(
                index == 1 || records[i].get(index - 1).is_some(),
                "apply error: server {i} apply out of order {index}"
            );
            records[i].set(index, cmd);
            records[i].last_applied = index;
            interval
                .is_some_and(|k| (index + 1).is_multiple_of(k))
                .then(|| encode_snapshot(index, &records[i]))
        });
        snapshot
    }
}
