//! Tests of `WalStorage` through its public interface and the documented on-disk layout
//! (`wal`, `snapshot`, `wal.tmp`, `snapshot.tmp` in the storage directory).
//!
//! Crash points inside `persist` (between writing a snapshot and compacting the log, etc.)
//! are tested by the unit tests in `src/wal.rs`, which can stop `persist` half-way, and, at
//! every file-system call and with unsynced data lost or damaged, on the simulated file
//! system by `tests/wal_crash.rs`.

use std::fs;
use std::path::Path;

use flotilla_raft::{DurableState, Entry, HardState};
use flotilla_storage::{MemStorage, Persist, Storage, StorageError, WalStorage};
use proptest::prelude::*;

mod common;
use common::*;

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

/// The last record is the only one a crash can leave unsynced: whatever is wrong with it, it
/// is cut off and the state before its batch recovered (see the module docs).
#[test]
fn flipped_bit_in_the_last_record_recovers_the_state_before_it() {
    let dir = tempfile::tempdir().unwrap();
    let (before, after, before_state, _) =
        dir_with_last_batch(dir.path(), &script()[..3], &script()[3]);
    assert_eq!(after, wal_len(dir.path()));
    let path = dir.path().join("wal");
    let good = fs::read(&path).unwrap();
    for at in before..after {
        for bit in 0..8 {
            let mut bad = good.clone();
            bad[at as usize] ^= 1 << bit;
            fs::write(&path, &bad).unwrap();
            let context = format!("bit {bit} of byte {at} (record {before}..{after})");
            let wal = WalStorage::open(dir.path()).unwrap_or_else(|e| panic!("{context}: {e}"));
            assert_eq!(wal.durable_state(), &before_state, "{context}");
            assert_eq!(wal.raft_state_size(), before, "{context}");
            assert_eq!(
                fs::read(&path).unwrap(),
                good[..before as usize],
                "{context}"
            );
        }
    }
}

/// A zero-filled tail (the file's size reached the disk, its data did not) is a torn append.
#[test]
fn zero_filled_last_record_recovers_the_state_before_it() {
    let dir = tempfile::tempdir().unwrap();
    let (before, after, before_state, _) =
        dir_with_last_batch(dir.path(), &script()[..3], &script()[3]);
    let path = dir.path().join("wal");
    let good = fs::read(&path).unwrap();
    for from in before..after {
        let mut bad = good.clone();
        bad[from as usize..].fill(0);
        fs::write(&path, &bad).unwrap();
        let wal = WalStorage::open(dir.path()).unwrap_or_else(|e| panic!("zeros from {from}: {e}"));
        assert_eq!(wal.durable_state(), &before_state, "zeros from {from}");
        assert_eq!(wal_len(dir.path()), before, "zeros from {from}");
    }
}

#[test]
fn garbage_at_the_end_is_cut_off_garbage_in_the_middle_or_a_bad_magic_is_corrupt() {
    let dir = tempfile::tempdir().unwrap();
    let mut wal = WalStorage::open(dir.path()).unwrap();
    wal.persist(&script()[0]).unwrap();
    drop(wal);
    let path = dir.path().join("wal");
    let one_record = fs::read(&path).unwrap();
    let garbage_tails: [&[u8]; 3] = [
        b"\xff\xff\xff\xff\x00\x00\x00\x00\x01\x02\x03\x04",
        &[0u8; 32],
        &[0xa5; 700],
    ];
    for garbage in garbage_tails {
        // At the end: nothing intact after it, so it is what a torn append left.
        for log in [&b"FLOTWAL2"[..], &one_record] {
            fs::write(&path, [log, garbage].concat()).unwrap();
            let wal = WalStorage::open(dir.path()).unwrap();
            let expected = if log.len() == 8 {
                DurableState::default()
            } else {
                let mut mem = MemStorage::new();
                mem.persist(&script()[0]).unwrap();
                mem.durable_state().clone()
            };
            assert_eq!(wal.durable_state(), &expected);
            assert_eq!(fs::read(&path).unwrap(), log, "cut off");
        }
        // Followed by an intact record: damage in the middle of the log.
        fs::write(
            &path,
            [&b"FLOTWAL2"[..], garbage, &one_record[8..]].concat(),
        )
        .unwrap();
        assert_corrupt(WalStorage::open(dir.path()), "garbage before a record");
    }
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
    fs::write(dir.path().join("wal"), b"FLOTWAL2").unwrap();
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
    fs::write(dir.path().join("wal.tmp"), b"FLOTWAL2 half a compacted log").unwrap();
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

/// One process per data directory: a second open of a directory in use is refused with an
/// error naming the holder's PID; once the first is dropped the directory opens again.
#[test]
fn a_second_open_of_a_data_directory_is_refused_naming_the_holder() {
    let dir = tempfile::tempdir().unwrap();
    let first = WalStorage::open(dir.path()).expect("opens");
    let err = WalStorage::open(dir.path()).expect_err("the directory is in use");
    let pid = std::process::id();
    assert!(
        matches!(err, flotilla_storage::StorageError::Locked { holder: Some(p), .. } if p == pid),
        "{err:?}"
    );
    let message = err.to_string();
    assert!(
        message.contains(&format!("pid {pid}")) && message.contains("LOCK"),
        "{message}"
    );
    drop(first);
    WalStorage::open(dir.path()).expect("free again once the holder is gone");
}

/// A log written by an older format version is refused, naming the version, not misread.
#[test]
fn a_log_of_another_format_version_is_refused_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    fs::write(dir.path().join("wal"), b"FLOTWAL1 postcard records").unwrap();
    let err = WalStorage::open(dir.path()).expect_err("version 1 is not read");
    assert!(
        err.to_string()
            .contains("format version '1', this build reads version 2"),
        "{err}"
    );
}

/// Today's format, byte for byte: a log and snapshot checked in under `tests/data/format-v2`
/// (written by `write_the_checked_in_format_sample` below, then never regenerated) open to
/// exactly this state. A change to the encoding — a new field, another integer width, a
/// serde derive sneaking back — fails here.
#[test]
fn the_checked_in_format_v2_sample_opens_to_its_state() {
    let sample = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/format-v2");
    let dir = tempfile::tempdir().unwrap();
    for name in ["wal", "snapshot"] {
        fs::copy(sample.join(name), dir.path().join(name)).unwrap();
    }
    let wal = WalStorage::open(dir.path()).expect("today's format opens");
    assert_eq!(wal.durable_state(), &format_sample_state());
}

fn format_sample_state() -> DurableState {
    DurableState {
        hard_state: HardState {
            term: 3,
            vote: Some(2),
        },
        snapshot: flotilla_raft::Snapshot {
            index: 2,
            term: 1,
            data: b"snapshot at 2".to_vec(),
        },
        entries: vec![
            Entry {
                term: 3,
                index: 3,
                data: b"three".to_vec(),
            },
            Entry {
                term: 3,
                index: 4,
                data: Vec::new(),
            },
        ],
    }
}

/// Writes the sample (`FLOTILLA_WRITE_FORMAT_SAMPLE=1 cargo test -- --ignored
/// write_the_checked_in_format_sample`): run once when a format version is introduced.
#[test]
#[ignore = "writes tests/data; run only to create a new format version's sample"]
fn write_the_checked_in_format_sample() {
    if std::env::var("FLOTILLA_WRITE_FORMAT_SAMPLE").is_err() {
        return;
    }
    let sample = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/format-v2");
    let _ = fs::remove_dir_all(&sample);
    let state = format_sample_state();
    let mut wal = WalStorage::open(&sample).unwrap();
    wal.persist(&Persist {
        hard_state: Some(HardState {
            term: 1,
            vote: Some(0),
        }),
        entries: vec![
            Entry {
                term: 1,
                index: 1,
                data: b"one".to_vec(),
            },
            Entry {
                term: 1,
                index: 2,
                data: b"two".to_vec(),
            },
        ],
        ..Persist::default()
    })
    .unwrap();
    wal.persist(&Persist {
        snapshot: Some(state.snapshot.clone()),
        ..Persist::default()
    })
    .unwrap();
    wal.persist(&Persist {
        hard_state: Some(state.hard_state),
        entries: state.entries.clone(),
        ..Persist::default()
    })
    .unwrap();
    assert_eq!(wal.durable_state(), &state);
    drop(wal);
    let _ = fs::remove_file(sample.join("LOCK"));
}
