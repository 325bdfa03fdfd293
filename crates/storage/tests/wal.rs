//! Tests of `WalStorage` through its public interface and the documented on-disk layout
//! (segments `<seq>-<index>.wal`, `snapshot`, `segment.tmp`, `snapshot.tmp` in the storage
//! directory).
//!
//! Crash points inside `persist` (between writing a snapshot and deleting old segments,
//! etc.) are tested by the unit tests in `src/wal/tests.rs`, which can stop `persist`
//! half-way, and, at every file-system call and with unsynced data lost or damaged, on the
//! simulated file system by `tests/wal_crash.rs`.

use std::fs;
use std::path::{Path, PathBuf};

use flotilla_raft::{DurableState, Entry, HardState};
use flotilla_storage::{MemStorage, Persist, Storage, StorageError, WalOptions, WalStorage};
use proptest::prelude::*;

mod common;
use common::*;

/// Persists `batch` in both storages and checks they agree.
fn persist_both(wal: &mut WalStorage, mem: &mut MemStorage, batch: &Persist) {
    wal.persist(batch).expect("persist");
    mem.persist(batch).expect("mem persist");
    assert_eq!(&state(wal), mem.durable_state());
    assert_eq!(wal.raft_state_size(), mem.raft_state_size());
}

/// What the storage reads back from its files.
fn state(wal: &WalStorage) -> DurableState {
    wal.durable_state().expect("the state reads back")
}

/// Opens `dir` and checks that the state `open` recovered is the one the files hold.
fn reopen(dir: &Path) -> (WalStorage, DurableState) {
    let (wal, recovered) = WalStorage::open(dir).expect("reopen");
    assert_eq!(state(&wal), recovered, "open and a read-back disagree");
    (wal, recovered)
}

fn open(dir: &Path) -> WalStorage {
    reopen(dir).0
}

/// The directory's segments, oldest first.
fn segments(dir: &Path) -> Vec<PathBuf> {
    let mut found: Vec<PathBuf> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "wal"))
        .collect();
    found.sort();
    found
}

/// The segment appended to.
fn last_segment(dir: &Path) -> PathBuf {
    segments(dir).pop().expect("a segment")
}

fn wal_len(dir: &Path) -> u64 {
    fs::metadata(last_segment(dir))
        .expect("segment metadata")
        .len()
}

fn assert_corrupt(result: Result<(WalStorage, DurableState), StorageError>, context: &str) {
    match result {
        Err(StorageError::Corrupt { .. }) => {}
        Err(other) => panic!("{context}: expected Corrupt, got {other}"),
        Ok((_, state)) => panic!("{context}: expected Corrupt, opened with state {state:?}"),
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
    let (mut wal, recovered) = reopen(dir.path());
    assert_eq!(recovered, DurableState::default());
    for (i, batch) in script().iter().enumerate() {
        persist_both(&mut wal, &mut mem, batch);
        if i % 3 == 2 {
            drop(wal);
            let (again, recovered) = reopen(dir.path());
            wal = again;
            assert_eq!(&recovered, mem.durable_state(), "after batch {i}");
        }
    }
    drop(wal);
    let (_, state) = reopen(dir.path());
    assert_eq!(&state, mem.durable_state());
    // The expected end state, spelled out, so the test does not only trust MemStorage.
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
    let (wal, recovered) = reopen(&dir);
    assert_eq!(recovered, DurableState::default());
    assert_eq!(segments(&dir).len(), 1);
    assert_eq!(wal.raft_state_size(), MemStorage::new().raft_state_size());
    assert_eq!(wal.log_bytes(), wal_len(&dir));
    drop(wal);
    assert_eq!(reopen(&dir).1, DurableState::default());
}

/// `raft_state_size` is the measure `MemStorage` reports (the encoded hard state and log
/// after the snapshot), through appends, a conflicting suffix, a snapshot and a reopen;
/// `log_bytes` is the segments' size on disk.
#[test]
fn raft_state_size_is_mem_storage_s_and_drops_at_a_snapshot() {
    let dir = tempfile::tempdir().unwrap();
    let mut wal = open(dir.path());
    let mut mem = MemStorage::new();
    let mut last = wal.raft_state_size();
    for i in 1..=50u64 {
        persist_both(
            &mut wal,
            &mut mem,
            &Persist {
                hard_state: hard(i, Some(1)),
                entries: vec![Entry {
                    index: i,
                    term: i,
                    data: vec![7; 100],
                }],
                ..Default::default()
            },
        );
        assert!(wal.raft_state_size() > last);
        last = wal.raft_state_size();
        assert_eq!(wal.log_bytes(), wal_len(dir.path()));
    }
    // A conflicting suffix: 40..=50 replaced by two short entries.
    persist_both(
        &mut wal,
        &mut mem,
        &Persist {
            entries: entries(40..=41, 60),
            ..Default::default()
        },
    );
    assert!(wal.raft_state_size() < last);
    persist_both(
        &mut wal,
        &mut mem,
        &Persist {
            snapshot: snapshot(40, 60),
            ..Default::default()
        },
    );
    assert!(wal.raft_state_size() < 100, "{}", wal.raft_state_size());
    assert_eq!(state(&wal).entries.len(), 1);
    drop(wal);
    let (wal, recovered) = reopen(dir.path());
    assert_eq!(recovered.entries.len(), 1);
    assert_eq!(wal.raft_state_size(), mem.raft_state_size());
}

/// Builds a directory holding `history` and then `last`; returns the log lengths before and
/// after `last` and the two expected states.
fn dir_with_last_batch(
    dir: &Path,
    history: &[Persist],
    last: &Persist,
) -> (u64, u64, DurableState, DurableState) {
    let mut mem = MemStorage::new();
    let mut wal = open(dir);
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

    let segment = last_segment(base.path());
    let name = segment.file_name().unwrap();
    let full = fs::read(&segment).unwrap();
    for cut in before..after {
        let work = tempfile::tempdir().unwrap();
        copy_dir(base.path(), work.path());
        fs::write(work.path().join(name), &full[..cut as usize]).unwrap();

        let (mut wal, recovered) = WalStorage::open(work.path())
            .unwrap_or_else(|e| panic!("cut at {cut} (record {before}..{after}): {e}"));
        assert_eq!(recovered, before_state, "cut at {cut}");
        assert_eq!(
            wal_len(work.path()),
            before,
            "torn tail not cut off at {cut}"
        );
        assert_eq!(
            wal.raft_state_size(),
            MemStorage::from_state(before_state.clone()).raft_state_size()
        );

        wal.persist(next).unwrap();
        assert_eq!(&state(&wal), expected_next.durable_state());
        drop(wal);
        let (_, recovered) = reopen(work.path());
        assert_eq!(
            &recovered,
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
    // After a snapshot: the torn record follows the snapshot's record.
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

/// Flips every bit of `file[range]` in turn: each flip must make `open` fail with `Corrupt`.
fn check_every_bit_flip_is_corrupt(dir: &Path, file: &Path, range: std::ops::Range<u64>) {
    let path = dir.join(file);
    let file = file.display();
    let good = fs::read(&path).unwrap();
    let state = reopen(dir).1;
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
    assert_eq!(reopen(dir).1, state);
}

#[test]
fn flipped_bit_in_an_earlier_record_is_corrupt() {
    let dir = tempfile::tempdir().unwrap();
    let history = &script()[..2];
    let (before, _, _, _) = dir_with_last_batch(dir.path(), history, &script()[2]);
    let mut wal = open(dir.path());
    wal.persist(&script()[3]).unwrap();
    drop(wal);
    // Every bit of the header, the start record and the first records, which are followed
    // by more.
    let segment = last_segment(dir.path());
    check_every_bit_flip_is_corrupt(dir.path(), segment.file_name().unwrap().as_ref(), 0..before);
}

/// The last record is the only one a crash can leave unsynced: whatever is wrong with it, it
/// is cut off and the state before its batch recovered (see the module docs).
#[test]
fn flipped_bit_in_the_last_record_recovers_the_state_before_it() {
    let dir = tempfile::tempdir().unwrap();
    let (before, after, before_state, _) =
        dir_with_last_batch(dir.path(), &script()[..3], &script()[3]);
    assert_eq!(after, wal_len(dir.path()));
    let path = last_segment(dir.path());
    let good = fs::read(&path).unwrap();
    for at in before..after {
        for bit in 0..8 {
            let mut bad = good.clone();
            bad[at as usize] ^= 1 << bit;
            fs::write(&path, &bad).unwrap();
            let context = format!("bit {bit} of byte {at} (record {before}..{after})");
            let (_, recovered) =
                WalStorage::open(dir.path()).unwrap_or_else(|e| panic!("{context}: {e}"));
            assert_eq!(recovered, before_state, "{context}");
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
    let path = last_segment(dir.path());
    let good = fs::read(&path).unwrap();
    for from in before..after {
        let mut bad = good.clone();
        bad[from as usize..].fill(0);
        fs::write(&path, &bad).unwrap();
        let (_, recovered) =
            WalStorage::open(dir.path()).unwrap_or_else(|e| panic!("zeros from {from}: {e}"));
        assert_eq!(recovered, before_state, "zeros from {from}");
        assert_eq!(wal_len(dir.path()), before, "zeros from {from}");
    }
}

#[test]
fn garbage_at_the_end_is_cut_off_garbage_in_the_middle_or_a_bad_magic_is_corrupt() {
    let dir = tempfile::tempdir().unwrap();
    let mut wal = open(dir.path());
    let path = last_segment(dir.path());
    let empty = fs::read(&path).unwrap();
    wal.persist(&script()[0]).unwrap();
    drop(wal);
    let one_record = fs::read(&path).unwrap();
    let garbage_tails: [&[u8]; 3] = [
        b"\xff\xff\xff\xff\x00\x00\x00\x00\x01\x02\x03\x04",
        &[0u8; 32],
        &[0xa5; 700],
    ];
    for garbage in garbage_tails {
        // At the end: nothing intact after it, so it is what a torn append left.
        for log in [&empty[..], &one_record] {
            fs::write(&path, [log, garbage].concat()).unwrap();
            let (_, recovered) = reopen(dir.path());
            let expected = if log.len() == empty.len() {
                DurableState::default()
            } else {
                let mut mem = MemStorage::new();
                mem.persist(&script()[0]).unwrap();
                mem.durable_state().clone()
            };
            assert_eq!(recovered, expected);
            assert_eq!(fs::read(&path).unwrap(), log, "cut off");
        }
        // Followed by an intact record: damage in the middle of the log.
        fs::write(
            &path,
            [&empty[..], garbage, &one_record[empty.len()..]].concat(),
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
    let mut wal = open(dir.path());
    for batch in &script()[..6] {
        wal.persist(batch).unwrap();
    }
    drop(wal);
    let path = dir.path().join("snapshot");
    let good = fs::read(&path).unwrap();
    // Every bit of the header and of the data.
    check_every_bit_flip_is_corrupt(dir.path(), "snapshot".as_ref(), 0..good.len() as u64);
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
    let mut wal = open(other.path());
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
    assert_eq!(reopen(dir.path()).1.snapshot, snapshot(4, 2).unwrap());
}

#[test]
fn snapshot_file_without_its_log_is_corrupt() {
    let dir = tempfile::tempdir().unwrap();
    let fresh = tempfile::tempdir().unwrap();
    drop(open(fresh.path()));
    let empty_log = fs::read(last_segment(fresh.path())).unwrap();
    let mut wal = open(dir.path());
    for batch in &script()[..6] {
        wal.persist(batch).unwrap();
    }
    drop(wal);
    let segment = last_segment(dir.path());
    let log = fs::read(&segment).unwrap();
    fs::remove_file(&segment).unwrap();
    assert_corrupt(WalStorage::open(dir.path()), "no log");
    // A log that names no snapshot next to a snapshot file.
    fs::write(&segment, &empty_log).unwrap();
    assert_corrupt(
        WalStorage::open(dir.path()),
        "log without a snapshot reference",
    );
    fs::write(&segment, &log).unwrap();
    reopen(dir.path());
}

#[test]
fn leftover_temp_files_are_ignored_and_removed() {
    let dir = tempfile::tempdir().unwrap();
    let mut mem = MemStorage::new();
    let mut wal = open(dir.path());
    for batch in &script()[..6] {
        persist_both(&mut wal, &mut mem, batch);
    }
    drop(wal);
    fs::write(dir.path().join("segment.tmp"), b"FLOTWAL3 half a segment").unwrap();
    fs::write(dir.path().join("snapshot.tmp"), b"FLOTSNP1 half a snapshot").unwrap();
    let (wal, recovered) = reopen(dir.path());
    assert_eq!(&recovered, mem.durable_state());
    assert!(!dir.path().join("segment.tmp").exists());
    assert!(!dir.path().join("snapshot.tmp").exists());
    // A complete, valid snapshot.tmp that the log does not name is debris as well.
    drop(wal);
    let other = tempfile::tempdir().unwrap();
    let mut wal = open(other.path());
    for batch in &script()[..8] {
        wal.persist(batch).unwrap();
    }
    drop(wal);
    fs::copy(
        other.path().join("snapshot"),
        dir.path().join("snapshot.tmp"),
    )
    .unwrap();
    let (_, recovered) = reopen(dir.path());
    assert_eq!(&recovered, mem.durable_state());
    assert!(!dir.path().join("snapshot.tmp").exists());
}

#[test]
fn oversized_batch_is_refused_without_poisoning() {
    let dir = tempfile::tempdir().unwrap();
    let mut wal = open(dir.path());
    wal.persist(&script()[0]).unwrap();
    let before = state(&wal);
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
    assert_eq!(state(&wal), before);
    wal.persist(&script()[1]).unwrap();
    drop(wal);
    let mut mem = MemStorage::new();
    mem.persist(&script()[0]).unwrap();
    mem.persist(&script()[1]).unwrap();
    assert_eq!(&reopen(dir.path()).1, mem.durable_state());
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    #[test]
    /// Random batches (conflicting suffixes, snapshots old and new, elections) on segments
    /// of 200 to 2,000 bytes, so segments are started and deleted all the time: the state
    /// read back, recovered by `open` and reported in size always equals `MemStorage`'s.
    #[test]
    fn random_batches_survive_reopening(
        raws in proptest::collection::vec(raw_batch(), 1..40),
        segment_bytes in 200u64..2_000,
    ) {
        let dir = tempfile::tempdir().unwrap();
        let options = WalOptions { segment_bytes };
        let mut mem = MemStorage::new();
        let (mut wal, _) = WalStorage::open_with_options(dir.path(), options).unwrap();
        for raw in &raws {
            let batch = legalize(mem.durable_state(), raw);
            mem.persist(&batch).unwrap();
            wal.persist(&batch).unwrap();
            prop_assert_eq!(&state(&wal), mem.durable_state());
            prop_assert_eq!(wal.raft_state_size(), mem.raft_state_size());
            if raw.reopen {
                drop(wal);
                let (again, recovered) = WalStorage::open_with_options(dir.path(), options).unwrap();
                wal = again;
                prop_assert_eq!(&recovered, mem.durable_state());
                prop_assert_eq!(wal.raft_state_size(), mem.raft_state_size());
            }
        }
        drop(wal);
        let (wal, recovered) = reopen(dir.path());
        prop_assert_eq!(&recovered, mem.durable_state());
        prop_assert_eq!(wal.log_bytes(), segments(dir.path()).iter().map(|p| fs::metadata(p).unwrap().len()).sum::<u64>());
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
            .contains("format version '1'; this build reads version 3"),
        "{err}"
    );
    // A segment whose header names another version.
    let dir = tempfile::tempdir().unwrap();
    drop(open(dir.path()));
    let segment = last_segment(dir.path());
    let mut bytes = fs::read(&segment).unwrap();
    bytes[7] = b'4';
    fs::write(&segment, bytes).unwrap();
    let err = WalStorage::open(dir.path()).expect_err("version 4 is not read");
    assert!(
        err.to_string()
            .contains("format version '4', this build reads version 3"),
        "{err}"
    );
}

/// The sample of format version 2 (one `wal` file), checked in when that version was
/// today's, is refused by name: no silent misreading of an older layout.
#[test]
fn the_format_v2_sample_is_refused_naming_its_version() {
    let sample = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/format-v2");
    let dir = tempfile::tempdir().unwrap();
    for name in ["wal", "snapshot"] {
        fs::copy(sample.join(name), dir.path().join(name)).unwrap();
    }
    let err = WalStorage::open(dir.path()).expect_err("version 2 is not read");
    assert!(
        err.to_string()
            .contains("a single-file log of format version '2'; this build reads version 3"),
        "{err}"
    );
}

/// Today's format, byte for byte: segments and a snapshot checked in under
/// `tests/data/format-v3` (written by `write_the_checked_in_format_sample` below, then never
/// regenerated) open to exactly this state. The sample's oldest segment was deleted by its
/// snapshot, so opening it replays from a segment start with placeholders. A change to the
/// encoding — a new field, another integer width, a serde derive sneaking back — fails here.
#[test]
fn the_checked_in_format_v3_sample_opens_to_its_state() {
    let sample = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/format-v3");
    let dir = tempfile::tempdir().unwrap();
    let mut names = Vec::new();
    for item in fs::read_dir(&sample).unwrap() {
        let name = item.unwrap().file_name();
        fs::copy(sample.join(&name), dir.path().join(&name)).unwrap();
        names.push(name.into_string().unwrap());
    }
    names.sort();
    assert_eq!(
        names,
        [
            "0000000000000002-0000000000000002.wal",
            "0000000000000003-0000000000000002.wal",
            "snapshot"
        ]
    );
    let (_, recovered) = reopen(dir.path());
    assert_eq!(recovered, format_sample_state());
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
    let sample = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/format-v3");
    let _ = fs::remove_dir_all(&sample);
    let state = format_sample_state();
    // Small segments: every batch after the first starts a new one.
    let (mut wal, _) =
        WalStorage::open_with_options(&sample, WalOptions { segment_bytes: 100 }).unwrap();
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
    assert_eq!(self::state(&wal), state);
    drop(wal);
    let _ = fs::remove_file(sample.join("LOCK"));
}

/// 60 batches of one 50-byte entry each, with a new term every 7.
fn many_batches() -> Vec<Persist> {
    (1..=60u64)
        .map(|i| Persist {
            hard_state: (i % 7 == 1).then(|| HardState {
                term: i / 7 + 1,
                vote: Some(i % 3),
            }),
            entries: vec![Entry {
                index: i,
                term: i / 7 + 1,
                data: vec![i as u8; 50],
            }],
            ..Default::default()
        })
        .collect()
}

/// Segments are started when the next record would pass their size, are never rewritten
/// (every byte once written stays as it was), and a snapshot deletes exactly the segments
/// before the newest one that started at or below its index.
#[test]
fn segments_are_started_at_their_size_never_rewritten_and_deleted_by_a_snapshot() {
    let dir = tempfile::tempdir().unwrap();
    let options = WalOptions { segment_bytes: 400 };
    let (mut wal, _) = WalStorage::open_with_options(dir.path(), options).unwrap();
    let mut mem = MemStorage::new();
    let mut written: std::collections::BTreeMap<PathBuf, Vec<u8>> = Default::default();
    for batch in many_batches() {
        persist_both(&mut wal, &mut mem, &batch);
        for path in segments(dir.path()) {
            let bytes = fs::read(&path).unwrap();
            if let Some(before) = written.get(&path) {
                assert!(
                    bytes.starts_with(before),
                    "{} was rewritten",
                    path.display()
                );
            }
            written.insert(path, bytes);
        }
    }
    let all = segments(dir.path());
    assert!(all.len() >= 8, "{} segments", all.len());
    for path in &all {
        assert!(
            fs::metadata(path).unwrap().len() <= 400,
            "{}",
            path.display()
        );
    }
    assert_eq!(wal.segment_count(), all.len());
    // Where each segment starts, from its name.
    let base = |p: &PathBuf| {
        let name = p.file_name().unwrap().to_str().unwrap();
        u64::from_str_radix(&name[17..33], 16).unwrap()
    };
    let snap_index = 30;
    persist_both(
        &mut wal,
        &mut mem,
        &Persist {
            snapshot: Some(flotilla_raft::Snapshot {
                index: snap_index,
                term: snap_index / 7 + 1,
                data: b"state at 30".to_vec(),
            }),
            ..Default::default()
        },
    );
    let kept = segments(dir.path());
    let first_kept = all.iter().rposition(|p| base(p) <= snap_index).unwrap();
    assert_eq!(kept[..], all[first_kept..], "the segments kept");
    assert!(base(&kept[0]) <= snap_index);
    assert!(kept.len() > 1 && base(&kept[1]) > snap_index);
    for path in &kept {
        let bytes = fs::read(path).unwrap();
        assert!(
            bytes.starts_with(&written[path]),
            "{} rewritten",
            path.display()
        );
    }
    // The oldest kept segment starts below the snapshot with entries only deleted segments
    // held: the replay stands placeholders in for them, and the snapshot covers them.
    drop(wal);
    let (wal, recovered) = WalStorage::open_with_options(dir.path(), options).unwrap();
    assert_eq!(&recovered, mem.durable_state());
    assert_eq!(wal.raft_state_size(), mem.raft_state_size());
}

/// A crash can undo the deletion of an older segment while keeping a later one's (if the
/// disk reorders them): segments before a gap are leftovers, ignored and deleted.
#[test]
fn segments_before_a_gap_are_leftovers_of_a_deletion_and_are_deleted() {
    let dir = tempfile::tempdir().unwrap();
    let options = WalOptions { segment_bytes: 400 };
    let (mut wal, _) = WalStorage::open_with_options(dir.path(), options).unwrap();
    let mut mem = MemStorage::new();
    for batch in many_batches() {
        persist_both(&mut wal, &mut mem, &batch);
    }
    let all: Vec<(PathBuf, Vec<u8>)> = segments(dir.path())
        .into_iter()
        .map(|p| {
            let bytes = fs::read(&p).unwrap();
            (p, bytes)
        })
        .collect();
    persist_both(
        &mut wal,
        &mut mem,
        &Persist {
            snapshot: snapshot(45, 45 / 7 + 1),
            ..Default::default()
        },
    );
    drop(wal);
    let kept = segments(dir.path());
    assert!(kept.len() < all.len() - 2);
    // The first segment comes back; the second stays deleted.
    fs::write(&all[0].0, &all[0].1).unwrap();
    let (_, recovered) = WalStorage::open_with_options(dir.path(), options).unwrap();
    assert_eq!(&recovered, mem.durable_state());
    assert_eq!(segments(dir.path()), kept, "the leftover is deleted");
}

/// Segments deleted by hand (or lost) that no snapshot covers: `open` refuses, naming the
/// entries it lacks; damage anywhere in a segment that is not the last is corruption, even
/// at its end.
#[test]
fn a_lost_segment_or_damage_in_an_earlier_segment_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let options = WalOptions { segment_bytes: 400 };
    let (mut wal, _) = WalStorage::open_with_options(dir.path(), options).unwrap();
    let mut mem = MemStorage::new();
    for batch in many_batches() {
        persist_both(&mut wal, &mut mem, &batch);
    }
    drop(wal);
    let all = segments(dir.path());
    // The last byte of the second segment: a torn tail if it were the last segment.
    let second = fs::read(&all[1]).unwrap();
    let mut bad = second.clone();
    *bad.last_mut().unwrap() ^= 1;
    fs::write(&all[1], &bad).unwrap();
    match WalStorage::open_with_options(dir.path(), options) {
        Err(StorageError::Corrupt { path, detail, .. }) => {
            assert_eq!(path, all[1]);
            assert!(detail.contains("not the last"), "{detail}");
        }
        other => panic!("expected Corrupt, got {other:?}"),
    }
    fs::write(&all[1], &second).unwrap();
    // The first segment lost: entries 1.. are nowhere.
    let first = fs::read(&all[0]).unwrap();
    fs::remove_file(&all[0]).unwrap();
    match WalStorage::open_with_options(dir.path(), options) {
        Err(StorageError::Corrupt { detail, .. }) => {
            assert!(detail.contains("no snapshot covers them"), "{detail}")
        }
        other => panic!("expected Corrupt, got {other:?}"),
    }
    // Lost too, with a torn last record: the tail is not cut from a log that is incomplete
    // without it (found by the wal_recovery fuzz target: open accepted placeholders as
    // entries), and nothing is deleted.
    let last = all.last().unwrap();
    let last_bytes = fs::read(last).unwrap();
    fs::write(last, &last_bytes[..last_bytes.len() - 3]).unwrap();
    match WalStorage::open_with_options(dir.path(), options) {
        Err(StorageError::Corrupt { detail, .. }) => {
            assert!(detail.contains("no snapshot covers them"), "{detail}")
        }
        other => panic!("expected Corrupt, got {other:?}"),
    }
    assert_eq!(segments(dir.path()), all[1..].to_vec());
    fs::write(last, &last_bytes).unwrap();
    fs::write(&all[0], &first).unwrap();
    let (_, recovered) = WalStorage::open_with_options(dir.path(), options).unwrap();
    assert_eq!(&recovered, mem.durable_state());
}

/// A segment that is not the last, cut short at a record boundary (an old copy put back, a
/// disk that lost a synced tail): its last records are gone without a trace of damage. If
/// they held only a hard state (a vote), nothing else would notice; the next segment's
/// start record says what the log was when it began, and `open` refuses the mismatch.
#[test]
fn a_segment_cut_short_at_a_record_boundary_is_refused_by_the_next_segment_s_start() {
    let dir = tempfile::tempdir().unwrap();
    let options = WalOptions { segment_bytes: 300 };
    let (mut wal, _) = WalStorage::open_with_options(dir.path(), options).unwrap();
    for i in 1..=40u64 {
        wal.persist(&Persist {
            entries: entries(i..=i, 1),
            ..Default::default()
        })
        .unwrap();
        // A vote alone in its record.
        wal.persist(&Persist {
            hard_state: hard(i + 1, Some(i % 3)),
            ..Default::default()
        })
        .unwrap();
    }
    drop(wal);
    let found = flotilla_storage::wal::inspect(dir.path()).unwrap();
    let (segment, last) = found.segments[..found.segments.len() - 1]
        .iter()
        .find_map(|s| {
            let last = s.records.last()?;
            (last.entries.is_none() && last.hard_state.is_some() && s.records.len() > 2)
                .then(|| (s.path.clone(), last.clone()))
        })
        .expect("a segment ending with a hard-state record");
    let bytes = fs::read(&segment).unwrap();
    fs::write(&segment, &bytes[..last.offset as usize]).unwrap();
    match WalStorage::open_with_options(dir.path(), options) {
        Err(StorageError::Corrupt { detail, .. }) => {
            assert!(detail.contains("segments before it end"), "{detail}")
        }
        other => panic!("expected Corrupt, got {other:?}"),
    }
}
