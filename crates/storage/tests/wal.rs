//! Tests of `WalStorage` through its public interface and the documented on-disk layout
//! (`wal`, `snapshot`, `wal.tmp`, `snapshot.tmp` in the storage directory).
//!
//! Crash points inside `persist` (between writing a snapshot and compacting the log, etc.)
//! are tested by the unit tests in `src/wal.rs`, which can stop `persist` half-way.

use std::fs;
use std::path::Path;

use flotilla_raft::{DurableState, Entry, HardState, Snapshot};
use flotilla_storage::{MemStorage, Persist, Storage, StorageError, WalStorage};
use proptest::prelude::*;

fn entry(index: u64, term: u64) -> Entry {
    Entry {
        index,
        term,
        data: format!("cmd-{index}-{term}").into_bytes(),
    }
}

fn entries(range: std::ops::RangeInclusive<u64>, term: u64) -> Vec<Entry> {
    range.map(|index| entry(index, term)).collect()
}

fn hard(term: u64, vote: Option<u64>) -> Option<HardState> {
    Some(HardState { term, vote })
}

fn snapshot(index: u64, term: u64) -> Option<Snapshot> {
    Some(Snapshot {
        index,
        term,
        data: format!("state machine at {index}/{term}").into_bytes(),
    })
}

/// Persists `batch` in both storages and checks they agree.
fn persist_both(wal: &mut WalStorage, mem: &mut MemStorage, batch: &Persist) {
    wal.persist(batch).expect("persist");
    mem.persist(batch).expect("mem persist");
    assert_eq!(wal.durable_state(), mem.durable_state());
}

fn reopen(dir: &Path) -> WalStorage {
    WalStorage::open(dir).expect("reopen")
}

fn wal_len(dir: &Path) -> u64 {
    fs::metadata(dir.join("wal")).expect("wal metadata").len()
}

fn assert_corrupt(result: Result<WalStorage, StorageError>, context: &str) {
    match result {
        Err(StorageError::Corrupt { .. }) => {}
        Err(other) => panic!("{context}: expected Corrupt, got {other}"),
        Ok(storage) => panic!(
            "{context}: expected Corrupt, opened with state {:?}",
            storage.durable_state()
        ),
    }
}

fn copy_dir(from: &Path, to: &Path) {
    fs::create_dir_all(to).unwrap();
    for item in fs::read_dir(from).unwrap() {
        let item = item.unwrap();
        fs::copy(item.path(), to.join(item.file_name())).unwrap();
    }
}

/// The batches of the round-trip test: appends, a conflicting suffix, hard states and two
/// snapshots (one keeping the log after it, one discarding it).
fn script() -> Vec<Persist> {
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

#[test]
fn round_trip_matches_mem_storage() {
    let dir = tempfile::tempdir().unwrap();
    let mut mem = MemStorage::new();
    let mut wal = WalStorage::open(dir.path()).unwrap();
    assert_eq!(wal.durable_state(), &DurableState::default());
    for (i, batch) in script().iter().enumerate() {
        persist_both(&mut wal, &mut mem, batch);
        if i % 3 == 2 {
            drop(wal);
            wal = reopen(dir.path());
            assert_eq!(wal.durable_state(), mem.durable_state(), "after batch {i}");
        }
    }
    drop(wal);
    let wal = reopen(dir.path());
    assert_eq!(wal.durable_state(), mem.durable_state());
    // The expected end state, spelled out, so the test does not only trust MemStorage.
    let state = wal.durable_state();
    assert_eq!(
        state.hard_state,
        HardState {
            term: 4,
            vote: None
        }
    );
    assert_eq!(state.snapshot, snapshot(8, 4).unwrap());
    assert_eq!(state.entries, entries(9..=11, 4));
}

#[test]
fn fresh_directory_is_created_and_empty() {
    let parent = tempfile::tempdir().unwrap();
    let dir = parent.path().join("a/b/raft");
    let wal = WalStorage::open(&dir).unwrap();
    assert_eq!(wal.durable_state(), &DurableState::default());
    assert!(dir.join("wal").exists());
    assert_eq!(wal.raft_state_size(), wal_len(&dir));
    drop(wal);
    assert_eq!(reopen(&dir).durable_state(), &DurableState::default());
}

#[test]
fn raft_state_size_is_the_log_length_and_drops_at_a_snapshot() {
    let dir = tempfile::tempdir().unwrap();
    let mut wal = WalStorage::open(dir.path()).unwrap();
    let mut last = wal.raft_state_size();
    for i in 1..=50u64 {
        wal.persist(&Persist {
            hard_state: hard(i, Some(1)),
            entries: vec![Entry {
                index: i,
                term: i,
                data: vec![7; 100],
            }],
            ..Default::default()
        })
        .unwrap();
        assert!(wal.raft_state_size() > last);
        last = wal.raft_state_size();
        assert_eq!(last, wal_len(dir.path()));
    }
    wal.persist(&Persist {
        snapshot: snapshot(49, 49),
        ..Default::default()
    })
    .unwrap();
    assert_eq!(wal.raft_state_size(), wal_len(dir.path()));
    assert!(wal.raft_state_size() < 300, "{}", wal.raft_state_size());
    assert_eq!(wal.durable_state().entries.len(), 1);
    drop(wal);
    let wal = reopen(dir.path());
    assert_eq!(wal.durable_state().entries.len(), 1);
    assert_eq!(wal.raft_state_size(), wal_len(dir.path()));
}

/// Builds a directory holding `history` and then `last`; returns the log lengths before and
/// after `last` and the two expected states.
fn dir_with_last_batch(
    dir: &Path,
    history: &[Persist],
    last: &Persist,
) -> (u64, u64, DurableState, DurableState) {
    let mut mem = MemStorage::new();
    let mut wal = WalStorage::open(dir).unwrap();
    for batch in history {
        persist_both(&mut wal, &mut mem, batch);
    }
    let before_state = mem.durable_state().clone();
    let before = wal_len(dir);
    persist_both(&mut wal, &mut mem, last);
    let after = wal_len(dir);
    assert!(after > before);
    (before, after, before_state, mem.durable_state().clone())
}

fn check_torn_tail(history: &[Persist], last: &Persist, next: &Persist) {
    let base = tempfile::tempdir().unwrap();
    let (before, after, before_state, _) = dir_with_last_batch(base.path(), history, last);
    let mut expected_next = MemStorage::from_state(before_state.clone());
    expected_next.persist(next).unwrap();

    let full = fs::read(base.path().join("wal")).unwrap();
    for cut in before..after {
        let work = tempfile::tempdir().unwrap();
        copy_dir(base.path(), work.path());
        fs::write(work.path().join("wal"), &full[..cut as usize]).unwrap();

        let mut wal = WalStorage::open(work.path())
            .unwrap_or_else(|e| panic!("cut at {cut} (record {before}..{after}): {e}"));
        assert_eq!(wal.durable_state(), &before_state, "cut at {cut}");
        assert_eq!(
            wal_len(work.path()),
            before,
            "torn tail not cut off at {cut}"
        );
        assert_eq!(wal.raft_state_size(), before);

        wal.persist(next).unwrap();
        assert_eq!(wal.durable_state(), expected_next.durable_state());
        drop(wal);
        let wal = reopen(work.path());
        assert_eq!(
            wal.durable_state(),
            expected_next.durable_state(),
            "cut at {cut}, after a further persist"
        );
    }
}

#[test]
fn torn_last_record_is_discarded_at_every_offset() {
    let history = &script()[..4];
    let last = Persist {
        hard_state: hard(3, Some(2)),
        entries: entries(4..=6, 3),
        ..Default::default()
    };
    let next = Persist {
        hard_state: hard(3, Some(1)),
        entries: entries(5..=5, 3),
        ..Default::default()
    };
    check_torn_tail(history, &last, &next);
}

#[test]
fn torn_last_record_after_a_snapshot_is_discarded_at_every_offset() {
    // The log was compacted by the snapshot; the torn record follows the base record.
    let history = &script()[..8];
    let last = Persist {
        entries: entries(10..=12, 5),
        hard_state: hard(5, Some(5)),
        ..Default::default()
    };
    let next = Persist {
        entries: entries(11..=11, 5),
        ..Default::default()
    };
    check_torn_tail(history, &last, &next);
}

/// Flips every bit of `wal[range]` in turn: each flip must make `open` fail with `Corrupt`.
fn check_every_bit_flip_is_corrupt(dir: &Path, file: &str, range: std::ops::Range<u64>) {
    let path = dir.join(file);
    let good = fs::read(&path).unwrap();
    let state = reopen(dir).durable_state().clone();
    for at in range {
        for bit in 0..8 {
            let mut bad = good.clone();
            bad[at as usize] ^= 1 << bit;
            fs::write(&path, &bad).unwrap();
            assert_corrupt(
                WalStorage::open(dir),
                &format!("{file}: bit {bit} of byte {at}"),
            );
            // A failed open leaves the files alone.
            assert_eq!(fs::read(&path).unwrap(), bad, "open modified {file}");
        }
    }
    fs::write(&path, &good).unwrap();
    assert_eq!(reopen(dir).durable_state(), &state);
}

#[test]
fn flipped_bit_in_an_earlier_record_is_corrupt() {
    let dir = tempfile::tempdir().unwrap();
    let history = &script()[..2];
    let (before, _, _, _) = dir_with_last_batch(dir.path(), history, &script()[2]);
    let mut wal = reopen(dir.path());
    wal.persist(&script()[3]).unwrap();
    drop(wal);
    // Every bit of the magic and of the first two records, which are followed by more.
    check_every_bit_flip_is_corrupt(dir.path(), "wal", 0..before);
}

#[test]
fn flipped_bit_in_the_last_record_is_corrupt() {
    let dir = tempfile::tempdir().unwrap();
    let (before, after, _, _) = dir_with_last_batch(dir.path(), &script()[..3], &script()[3]);
    assert_eq!(after, wal_len(dir.path()));
    check_every_bit_flip_is_corrupt(dir.path(), "wal", before..after);
}

#[test]
fn garbage_after_the_magic_or_a_bad_magic_is_corrupt() {
    let dir = tempfile::tempdir().unwrap();
    drop(WalStorage::open(dir.path()).unwrap());
    let path = dir.path().join("wal");
    // A full-sized header of garbage (not a truncation) is not a torn tail.
    fs::write(
        &path,
        b"FLOTWAL1\xff\xff\xff\xff\x00\x00\x00\x00\x01\x02\x03\x04",
    )
    .unwrap();
    assert_corrupt(WalStorage::open(dir.path()), "garbage header");
    // A zero-filled tail is not taken for a torn write either (see the module docs).
    fs::write(&path, [&b"FLOTWAL1"[..], &[0u8; 32]].concat()).unwrap();
    assert_corrupt(WalStorage::open(dir.path()), "zero-filled tail");
    fs::write(&path, b"FLOT").unwrap();
    assert_corrupt(WalStorage::open(dir.path()), "short magic");
    fs::write(&path, b"").unwrap();
    assert_corrupt(WalStorage::open(dir.path()), "empty log file");
}

#[test]
fn corrupt_snapshot_file_is_corrupt() {
    let dir = tempfile::tempdir().unwrap();
    let mut wal = WalStorage::open(dir.path()).unwrap();
    for batch in &script()[..6] {
        wal.persist(batch).unwrap();
    }
    drop(wal);
    let path = dir.path().join("snapshot");
    let good = fs::read(&path).unwrap();
    // Every bit of the header and of the data.
    check_every_bit_flip_is_corrupt(dir.path(), "snapshot", 0..good.len() as u64);
    // Truncated, extended, missing.
    fs::write(&path, &good[..good.len() - 1]).unwrap();
    assert_corrupt(WalStorage::open(dir.path()), "truncated snapshot");
    fs::write(&path, [&good[..], b"x"].concat()).unwrap();
    assert_corrupt(WalStorage::open(dir.path()), "extended snapshot");
    fs::write(&path, &good[..10]).unwrap();
    assert_corrupt(
        WalStorage::open(dir.path()),
        "snapshot shorter than its header",
    );
    fs::remove_file(&path).unwrap();
    assert_corrupt(WalStorage::open(dir.path()), "missing snapshot");
    // A snapshot that is valid but not the one the log names.
    let other = tempfile::tempdir().unwrap();
    let mut wal = WalStorage::open(other.path()).unwrap();
    for batch in &script()[..8] {
        wal.persist(batch).unwrap();
    }
    drop(wal);
    fs::copy(other.path().join("snapshot"), &path).unwrap();
    assert_corrupt(WalStorage::open(dir.path()), "someone else's snapshot");
    // ... also as snapshot.tmp, next to a damaged or missing snapshot: still not the one named.
    let tmp = dir.path().join("snapshot.tmp");
    fs::rename(&path, &tmp).unwrap();
    assert_corrupt(WalStorage::open(dir.path()), "someone else's snapshot.tmp");
    fs::write(&path, &good[..good.len() - 1]).unwrap();
    assert_corrupt(
        WalStorage::open(dir.path()),
        "someone else's snapshot.tmp, bad snapshot",
    );
    fs::remove_file(&tmp).unwrap();
    // Restored, it opens again.
    fs::write(&path, &good).unwrap();
    assert_eq!(
        reopen(dir.path()).durable_state().snapshot,
        snapshot(4, 2).unwrap()
    );
}

#[test]
fn snapshot_file_without_its_log_is_corrupt() {
    let dir = tempfile::tempdir().unwrap();
    let mut wal = WalStorage::open(dir.path()).unwrap();
    for batch in &script()[..6] {
        wal.persist(batch).unwrap();
    }
    drop(wal);
    let log = fs::read(dir.path().join("wal")).unwrap();
    fs::remove_file(dir.path().join("wal")).unwrap();
    assert_corrupt(WalStorage::open(dir.path()), "no wal");
    // A log that names no snapshot next to a snapshot file.
    fs::write(dir.path().join("wal"), b"FLOTWAL1").unwrap();
    assert_corrupt(
        WalStorage::open(dir.path()),
        "log without a snapshot reference",
    );
    fs::write(dir.path().join("wal"), &log).unwrap();
    reopen(dir.path());
}

#[test]
fn leftover_temp_files_are_ignored_and_removed() {
    let dir = tempfile::tempdir().unwrap();
    let mut mem = MemStorage::new();
    let mut wal = WalStorage::open(dir.path()).unwrap();
    for batch in &script()[..6] {
        persist_both(&mut wal, &mut mem, batch);
    }
    drop(wal);
    fs::write(dir.path().join("wal.tmp"), b"FLOTWAL1 half a compacted log").unwrap();
    fs::write(dir.path().join("snapshot.tmp"), b"FLOTSNP1 half a snapshot").unwrap();
    let wal = reopen(dir.path());
    assert_eq!(wal.durable_state(), mem.durable_state());
    assert!(!dir.path().join("wal.tmp").exists());
    assert!(!dir.path().join("snapshot.tmp").exists());
    // A complete, valid snapshot.tmp that the log does not name is debris as well.
    drop(wal);
    let other = tempfile::tempdir().unwrap();
    let mut wal = WalStorage::open(other.path()).unwrap();
    for batch in &script()[..8] {
        wal.persist(batch).unwrap();
    }
    drop(wal);
    fs::copy(
        other.path().join("snapshot"),
        dir.path().join("snapshot.tmp"),
    )
    .unwrap();
    let wal = reopen(dir.path());
    assert_eq!(wal.durable_state(), mem.durable_state());
    assert!(!dir.path().join("snapshot.tmp").exists());
}

#[test]
fn oversized_batch_is_refused_without_poisoning() {
    let dir = tempfile::tempdir().unwrap();
    let mut wal = WalStorage::open(dir.path()).unwrap();
    wal.persist(&script()[0]).unwrap();
    let before = wal.durable_state().clone();
    let huge = Persist {
        entries: vec![Entry {
            index: 4,
            term: 1,
            data: vec![0; WalStorage::MAX_RECORD_LEN],
        }],
        ..Default::default()
    };
    match wal.persist(&huge) {
        Err(StorageError::Io { source, .. }) => {
            assert_eq!(source.kind(), std::io::ErrorKind::InvalidInput)
        }
        other => panic!("expected a refusal, got {other:?}"),
    }
    assert_eq!(wal.durable_state(), &before);
    wal.persist(&script()[1]).unwrap();
    drop(wal);
    let mut mem = MemStorage::new();
    mem.persist(&script()[0]).unwrap();
    mem.persist(&script()[1]).unwrap();
    assert_eq!(reopen(dir.path()).durable_state(), mem.durable_state());
}

/// Random material for one batch, turned into a legal batch against the current state by
/// [`legalize`] (so that shrinking keeps every case legal).
#[derive(Clone, Debug)]
struct RawBatch {
    hard_state: Option<(u8, Option<u8>)>,
    /// (index selector, take the log's term at that index, data seed)
    snapshot: Option<(u16, bool, u8)>,
    /// (first-index selector, count, term, data seed)
    entries: Option<(u16, u8, u8, u8)>,
    reopen: bool,
}

fn raw_batch() -> impl Strategy<Value = RawBatch> {
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
fn legalize(state: &DurableState, raw: &RawBatch) -> Persist {
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

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    #[test]
    fn random_batches_survive_reopening(raws in proptest::collection::vec(raw_batch(), 1..40)) {
        let dir = tempfile::tempdir().unwrap();
        let mut mem = MemStorage::new();
        let mut wal = WalStorage::open(dir.path()).unwrap();
        for raw in &raws {
            let batch = legalize(mem.durable_state(), raw);
            mem.persist(&batch).unwrap();
            wal.persist(&batch).unwrap();
            prop_assert_eq!(wal.durable_state(), mem.durable_state());
            if raw.reopen {
                drop(wal);
                wal = reopen(dir.path());
                prop_assert_eq!(wal.durable_state(), mem.durable_state());
            }
        }
        drop(wal);
        let wal = reopen(dir.path());
        prop_assert_eq!(wal.durable_state(), mem.durable_state());
        prop_assert_eq!(wal.raft_state_size(), wal_len(dir.path()));
    }
}
