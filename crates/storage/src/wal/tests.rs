//! Crash points inside `persist`, which only a test hook can reach; everything else is
//! tested through the public interface in `tests/wal.rs`.

use super::*;
use crate::MemStorage;
use flotilla_raft::Snapshot;
use replay::read_snapshot;
use std::fs;

fn entries(range: std::ops::RangeInclusive<u64>, term: u64) -> Vec<Entry> {
    range
        .map(|index| Entry {
            index,
            term,
            data: vec![index as u8; 3],
        })
        .collect()
}

fn snapshot(index: u64, term: u64) -> Snapshot {
    Snapshot {
        index,
        term,
        data: format!("snapshot {index}/{term}").into_bytes(),
    }
}

/// Entries 1..=6 (terms 1, 1, 2, 2, 2, 2) with a hard state; optionally an earlier
/// snapshot at 2 already installed (so the crash replaces one snapshot by another).
fn history(with_old_snapshot: bool) -> Vec<Persist> {
    let mut batches = vec![
        Persist {
            hard_state: Some(HardState {
                term: 1,
                vote: Some(1),
            }),
            entries: entries(1..=2, 1),
            ..Persist::default()
        },
        Persist {
            hard_state: Some(HardState {
                term: 2,
                vote: Some(2),
            }),
            entries: entries(3..=4, 2),
            ..Persist::default()
        },
    ];
    if with_old_snapshot {
        batches.push(Persist {
            snapshot: Some(snapshot(2, 1)),
            ..Persist::default()
        });
    }
    batches.push(Persist {
        entries: entries(5..=6, 2),
        ..Persist::default()
    });
    batches
}

/// Snapshot batches to crash in: one keeping the log after the snapshot, one (a new
/// leader's InstallSnapshot with another term) discarding it, one with entries too.
fn snapshot_batches() -> Vec<Persist> {
    vec![
        Persist {
            snapshot: Some(snapshot(4, 2)),
            ..Persist::default()
        },
        Persist {
            hard_state: Some(HardState {
                term: 3,
                vote: None,
            }),
            snapshot: Some(snapshot(5, 3)),
            ..Persist::default()
        },
        Persist {
            hard_state: Some(HardState {
                term: 3,
                vote: Some(3),
            }),
            snapshot: Some(snapshot(4, 2)),
            entries: entries(6..=8, 3),
        },
    ]
}

const CRASH_POINTS: [CrashPoint; 3] = [
    CrashPoint::SnapshotTmpSynced,
    CrashPoint::RecordAppended,
    CrashPoint::SnapshotRenamed,
];

/// Runs `history`, then `batch` with a crash at `point`; returns the directory and the
/// states before and after the batch.
fn crash_in(
    point: CrashPoint,
    history: &[Persist],
    batch: &Persist,
) -> (tempfile::TempDir, DurableState, DurableState) {
    let dir = tempfile::tempdir().unwrap();
    let mut mem = MemStorage::new();
    // Small segments, so the snapshot has segments to delete.
    let (mut wal, _) =
        WalStorage::open_with_options(dir.path(), WalOptions { segment_bytes: 120 }).unwrap();
    for b in history {
        wal.persist(b).unwrap();
        mem.persist(b).unwrap();
    }
    let before = mem.durable_state().clone();
    assert!(wal.segment_count() > 1, "{} segments", wal.segment_count());
    mem.persist(batch).unwrap();
    wal.crash_at = Some(point);
    let err = wal.persist(batch).expect_err("the simulated crash");
    assert!(err.to_string().contains("simulated crash"), "{err}");
    // Poisoned: nothing more goes to disk from this instance.
    wal.crash_at = None;
    assert!(wal.persist(&history[0]).is_err());
    drop(wal);
    (dir, before, mem.durable_state().clone())
}

#[test]
fn crash_at_any_step_of_a_snapshot_batch_recovers_a_whole_batch() {
    for with_old_snapshot in [false, true] {
        let history = history(with_old_snapshot);
        for batch in snapshot_batches() {
            for point in CRASH_POINTS {
                let (dir, before, after) = crash_in(point, &history, &batch);
                let context = format!("{point:?}, old snapshot {with_old_snapshot}, {batch:?}");
                let (mut wal, recovered) =
                    WalStorage::open(dir.path()).unwrap_or_else(|e| panic!("{context}: {e}"));
                let expected = if point == CrashPoint::SnapshotTmpSynced {
                    &before // not committed yet
                } else {
                    &after
                };
                assert_eq!(&recovered, expected, "{context}");
                assert_eq!(&wal.durable_state().unwrap(), expected, "{context}");
                for tmp in [SEGMENT_TMP, SNAPSHOT_TMP] {
                    assert!(!dir.path().join(tmp).exists(), "{context}: {tmp} left");
                }
                // The directory is fully usable: another batch, another reopen.
                let next = Persist {
                    entries: entries(expected.last_index() + 1..=expected.last_index() + 1, 9),
                    ..Persist::default()
                };
                let mut mem = MemStorage::from_state(expected.clone());
                mem.persist(&next).unwrap();
                wal.persist(&next).unwrap();
                drop(wal);
                let (_, recovered) = WalStorage::open(dir.path()).unwrap();
                assert_eq!(&recovered, mem.durable_state(), "{context}");
            }
        }
    }
}

/// The new snapshot is renamed into place, the old segments (holding entries at and below
/// the snapshot index) are all still there: they replay to the state after the batch.
#[test]
fn crash_between_snapshot_rename_and_segment_deletion() {
    let history = history(false);
    let batch = snapshot_batches().remove(0); // snapshot at 4, keeps 5..=6
    let dir = tempfile::tempdir().unwrap();
    let names = |dir: &Path| {
        let mut names: Vec<String> = fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .filter(|n| n.ends_with(".wal"))
            .collect();
        names.sort();
        names
    };
    let (crashed, _, after) = crash_in(CrashPoint::SnapshotRenamed, &history, &batch);
    let segments_then = names(crashed.path());
    drop(dir);

    // The files really are in the state described.
    let (snap_ref, on_disk) = read_snapshot(&StdFs, &crashed.path().join(SNAPSHOT_FILE))
        .unwrap()
        .expect("snapshot renamed into place");
    assert_eq!(on_disk, snapshot(4, 2));
    assert_eq!(snap_ref, SnapRef::of(&on_disk));
    assert!(
        parse_segment_name(&segments_then[0]).unwrap().1 == 0,
        "nothing deleted yet"
    );

    let (wal, recovered) = WalStorage::open(crashed.path()).unwrap();
    assert_eq!(recovered, after);
    assert_eq!(recovered.snapshot, snapshot(4, 2));
    assert_eq!(recovered.entries, entries(5..=6, 2));
    drop(wal);
    // The same batch without the crash deletes the segments before the snapshot's.
    let (done, _, _) = {
        let dir = tempfile::tempdir().unwrap();
        let mut mem = MemStorage::new();
        let (mut wal, _) =
            WalStorage::open_with_options(dir.path(), WalOptions { segment_bytes: 120 }).unwrap();
        for b in &history {
            wal.persist(b).unwrap();
            mem.persist(b).unwrap();
        }
        wal.persist(&batch).unwrap();
        mem.persist(&batch).unwrap();
        (dir, (), ())
    };
    let kept = names(done.path());
    assert!(
        kept.len() < segments_then.len(),
        "{kept:?} vs {segments_then:?}"
    );
    assert!(kept.iter().all(|n| segments_then.contains(n)));
}

/// Between the commit point and the rename the named snapshot is only in
/// `snapshot.tmp`: `open` finishes the rename.
#[test]
fn crash_before_snapshot_rename_rolls_forward() {
    let history = history(true);
    let batch = snapshot_batches().remove(1);
    let (dir, _, after) = crash_in(CrashPoint::RecordAppended, &history, &batch);
    let (_, old) = read_snapshot(&StdFs, &dir.path().join(SNAPSHOT_FILE))
        .unwrap()
        .unwrap();
    assert_eq!(old, snapshot(2, 1));
    assert!(dir.path().join(SNAPSHOT_TMP).exists());

    let (_, recovered) = WalStorage::open(dir.path()).unwrap();
    assert_eq!(recovered, after);
    let (_, now) = read_snapshot(&StdFs, &dir.path().join(SNAPSHOT_FILE))
        .unwrap()
        .unwrap();
    assert_eq!(now, snapshot(5, 3));
    assert!(!dir.path().join(SNAPSHOT_TMP).exists());

    // If snapshot.tmp is damaged as well, the named snapshot is nowhere: Corrupt.
    let (dir, _, _) = crash_in(CrashPoint::RecordAppended, &history, &batch);
    let tmp = dir.path().join(SNAPSHOT_TMP);
    let mut bytes = fs::read(&tmp).unwrap();
    *bytes.last_mut().unwrap() ^= 1;
    fs::write(&tmp, bytes).unwrap();
    assert!(matches!(
        WalStorage::open(dir.path()),
        Err(StorageError::Corrupt { .. })
    ));
}

/// After a failure past the commit point (the rename of step 3) the batch is not undone:
/// the state read back is the one after it, which a reopen recovers too.
#[test]
fn a_failure_after_the_commit_point_keeps_the_batch() {
    let history = history(false);
    let batch = snapshot_batches().remove(0);
    let (dir, _, after) = {
        let dir = tempfile::tempdir().unwrap();
        let mut mem = MemStorage::new();
        let (mut wal, _) = WalStorage::open(dir.path()).unwrap();
        for b in &history {
            wal.persist(b).unwrap();
            mem.persist(b).unwrap();
        }
        mem.persist(&batch).unwrap();
        wal.crash_at = Some(CrashPoint::RecordAppended);
        assert!(wal.persist(&batch).is_err());
        wal.crash_at = None;
        assert_eq!(&wal.durable_state().unwrap(), mem.durable_state());
        assert_eq!(wal.raft_state_size(), mem.raft_state_size());
        assert!(wal.persist(&history[0]).is_err(), "poisoned");
        (dir, (), mem.durable_state().clone())
    };
    assert_eq!(WalStorage::open(dir.path()).unwrap().1, after);
}

/// A segment with `records` after its start, as `open` would find it.
fn segment_file(dir: &Path, records: &[Vec<u8>]) {
    let start = frame(
        Some(HardState::default()),
        None,
        Some(&SegmentStart {
            log_end: 0,
            term_runs: Vec::new(),
        }),
        &[],
    )
    .unwrap();
    let mut bytes = [&encode_segment_header(1)[..], &start].concat();
    for record in records {
        bytes.extend_from_slice(record);
    }
    for item in fs::read_dir(dir).unwrap() {
        let path = item.unwrap().path();
        if path.extension().is_some_and(|x| x == "wal") {
            fs::remove_file(path).unwrap();
        }
    }
    fs::write(dir.join(segment_name(1, 0)), bytes).unwrap();
}

/// Records that pass their checksums but break the batch contract (which only a bug or
/// an astronomically unlucky corruption could produce) are errors, not panics: `Corrupt`
/// when an intact record follows, cut off like any damaged last record otherwise.
#[test]
fn contract_violations_on_disk_are_errors_not_panics() {
    let record = |snapshot: Option<SnapRef>, entries: &[Entry]| {
        frame(None, snapshot.map(Into::into), None, entries).unwrap()
    };
    // Trailing bytes after a well-formed payload.
    let mut trailing = record(None, &entries(1..=1, 1));
    trailing.push(0);
    let len = (trailing.len() - segment::RECORD_HEADER_LEN) as u32;
    let crc = crc32fast::hash(&trailing[segment::RECORD_HEADER_LEN..]);
    trailing[0..4].copy_from_slice(&len.to_le_bytes());
    trailing[4..8].copy_from_slice(&crc.to_le_bytes());
    let header_crc = crc32fast::hash(&trailing[0..8]);
    trailing[8..12].copy_from_slice(&header_crc.to_le_bytes());
    // A second segment start inside the segment.
    let start_inside = frame(
        None,
        None,
        Some(&SegmentStart {
            log_end: 2,
            term_runs: vec![(1, 1)],
        }),
        &[],
    )
    .unwrap();

    let good = record(None, &entries(1..=2, 1));
    let bad_records = [
        record(None, &entries(4..=5, 1)), // gap after the good record
        record(
            None,
            &[entries(3..=3, 1)[0].clone(), entries(5..=5, 1)[0].clone()],
        ), // not consecutive
        record(None, &entries(Index::MAX..=Index::MAX, 1)), // index out of range
        // Entries at or below a snapshot named in the same record.
        record(Some(SnapRef::of(&snapshot(3, 1))), &entries(3..=4, 1)),
        trailing,
        start_inside,
    ];
    let intact_after = record(None, &entries(3..=3, 1));
    for (i, bad) in bad_records.iter().enumerate() {
        // Last in the log: cut off, the state is that of the good record alone.
        let dir = tempfile::tempdir().unwrap();
        segment_file(dir.path(), &[good.clone(), bad.clone()]);
        let (_, recovered) = WalStorage::open(dir.path()).unwrap_or_else(|e| panic!("{i}: {e}"));
        assert_eq!(recovered.entries, entries(1..=2, 1), "{i}");
        assert_eq!(recovered.snapshot.index, 0, "{i}: snapshot half-applied");
        // Followed by an intact record: corrupt, naming the bad record's offset.
        segment_file(
            dir.path(),
            &[good.clone(), bad.clone(), intact_after.clone()],
        );
        let start_len = fs::read(dir.path().join(segment_name(1, 0))).unwrap().len()
            - good.len()
            - bad.len()
            - intact_after.len();
        match WalStorage::open(dir.path()) {
            Err(StorageError::Corrupt { offset, .. }) => {
                assert_eq!(offset, (start_len + good.len()) as u64, "{i}")
            }
            other => panic!("{i}: expected Corrupt, got {other:?}"),
        }
    }
}
