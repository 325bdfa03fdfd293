//! Batches shared by the WAL test suites: entries, snapshots, a scripted history, and random
//! batches made legal against the current state.

#![allow(dead_code)] // each test crate uses its own subset

use flotilla_raft::{DurableState, Entry, HardState, Snapshot};
use flotilla_storage::Persist;
use proptest::prelude::*;

pub mod sim;

pub fn entry(index: u64, term: u64) -> Entry {
    Entry {
        index,
        term,
        data: format!("cmd-{index}-{term}").into_bytes(),
    }
}

pub fn entries(range: std::ops::RangeInclusive<u64>, term: u64) -> Vec<Entry> {
    range.map(|index| entry(index, term)).collect()
}

pub fn hard(term: u64, vote: Option<u64>) -> Option<HardState> {
    Some(HardState { term, vote })
}

pub fn snapshot(index: u64, term: u64) -> Option<Snapshot> {
    Some(Snapshot {
        index,
        term,
        data: format!("state machine at {index}/{term}").into_bytes(),
    })
}

/// The batches of the round-trip test: appends, a conflicting suffix, hard states and two
/// snapshots (one keeping the log after it, one discarding it).
pub fn script() -> Vec<Persist> {
    vec![
        Persist {
            hard_state: hard(1, Some(1)),
            entries: entries(1..=3, 1),
            ..Default::default()
        },
        Persist {
            entries: entries(4..=5, 1),
            ..Default::default()
        },
        Persist {
            hard_state: hard(2, None),
            ..Default::default()
        },
        // Conflicting suffix: 3..=5 of term 1 are replaced by 3..=4 of term 2.
        Persist {
            hard_state: hard(2, Some(2)),
            entries: entries(3..=4, 2),
            ..Default::default()
        },
        Persist {
            entries: entries(5..=7, 2),
            ..Default::default()
        },
        // Snapshot at 4 matching the log: 5..=7 are kept.
        Persist {
            snapshot: snapshot(4, 2),
            ..Default::default()
        },
        Persist {
            hard_state: hard(3, Some(3)),
            entries: entries(7..=8, 3),
            ..Default::default()
        },
        // Snapshot at 8 with another term (InstallSnapshot from a new leader): the log goes.
        Persist {
            hard_state: hard(4, None),
            snapshot: snapshot(8, 4),
            entries: entries(9..=10, 4),
        },
        Persist {
            entries: entries(11..=11, 4),
            ..Default::default()
        },
        Persist::default(),
    ]
}

/// Random material for one batch, turned into a legal batch against the current state by
/// [`legalize`] (so that shrinking keeps every case legal).
#[derive(Clone, Debug)]
pub struct RawBatch {
    pub hard_state: Option<(u8, Option<u8>)>,
    /// (index selector, take the log's term at that index, data seed)
    pub snapshot: Option<(u16, bool, u8)>,
    /// (first-index selector, count, term, data seed)
    pub entries: Option<(u16, u8, u8, u8)>,
    pub reopen: bool,
}

pub fn raw_batch() -> impl Strategy<Value = RawBatch> {
    (
        proptest::option::of((any::<u8>(), proptest::option::of(0u8..5))),
        proptest::option::weighted(0.15, (any::<u16>(), any::<bool>(), any::<u8>())),
        proptest::option::weighted(0.8, (any::<u16>(), 1u8..6, 0u8..6, any::<u8>())),
        proptest::bool::weighted(0.15),
    )
        .prop_map(|(hard_state, snapshot, entries, reopen)| RawBatch {
            hard_state,
            snapshot,
            entries,
            reopen,
        })
}

/// A batch that obeys the contract of `flotilla_raft::durable` when applied to `state`.
pub fn legalize(state: &DurableState, raw: &RawBatch) -> Persist {
    let mut batch = Persist {
        hard_state: raw.hard_state.map(|(term, vote)| HardState {
            term: u64::from(term),
            vote: vote.map(u64::from),
        }),
        ..Default::default()
    };
    if let Some((selector, take_log_term, seed)) = raw.snapshot {
        // Anywhere from the empty prefix to a little past the log's end.
        let index = u64::from(selector) % (state.last_index() + 3);
        let log_term = state
            .entries
            .iter()
            .find(|e| e.index == index)
            .map(|e| e.term);
        let term = match (take_log_term, log_term) {
            (true, Some(term)) => term,
            _ => u64::from(seed % 6),
        };
        batch.snapshot = Some(Snapshot {
            index,
            term,
            data: vec![seed; usize::from(seed % 40)],
        });
    }
    if let Some((selector, count, term, seed)) = raw.entries {
        let mut after_snapshot = state.clone();
        after_snapshot.apply(&Persist {
            snapshot: batch.snapshot.clone(),
            ..Default::default()
        });
        let lowest = after_snapshot.snapshot.index + 1;
        let highest = after_snapshot.last_index() + 1;
        let first = lowest + u64::from(selector) % (highest - lowest + 1);
        batch.entries = (0..u64::from(count))
            .map(|k| Entry {
                index: first + k,
                term: u64::from(term),
                data: vec![seed.wrapping_add(k as u8); usize::from(seed % 16)],
            })
            .collect();
    }
    batch
}
