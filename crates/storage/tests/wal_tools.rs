//! The operator's tools on a real directory: `inspect` lists the segments and records and
//! says where the good part ends and why; `repair` cuts the log there, keeping a backup of
//! what it removed, and only while no one holds the directory.

use std::fs;
use std::path::{Path, PathBuf};

use flotilla_raft::{DurableState, Entry, HardState};
use flotilla_storage::wal::{inspect, repair, Inspection, LogEnd, RecordSummary, SegmentSummary};
use flotilla_storage::{Persist, Storage, StorageError, WalOptions, WalStorage};

fn batch(index: u64) -> Persist {
    Persist {
        hard_state: Some(HardState {
            term: 1,
            vote: Some(0),
        }),
        snapshot: None,
        entries: vec![Entry {
            term: 1,
            index,
            data: vec![index as u8; 40],
        }],
    }
}

/// A log of `n` one-entry batches in `dir`, on segments of `segment_bytes`.
fn batches(dir: &Path, n: u64, segment_bytes: u64) {
    let (mut wal, _) =
        WalStorage::open_with_options(dir, WalOptions { segment_bytes }).expect("open");
    for i in 1..=n {
        wal.persist(&batch(i)).expect("persist");
    }
}

const ONE_SEGMENT: u64 = 64 << 20;

/// The batch records (not the segment starts) of every segment.
fn batch_records(found: &Inspection) -> Vec<&RecordSummary> {
    found
        .segments
        .iter()
        .flat_map(|s| &s.records)
        .filter(|r| r.segment_start.is_none())
        .collect()
}

fn recovered(dir: &Path) -> DurableState {
    WalStorage::open(dir).expect("opens").1
}

#[test]
fn inspect_lists_a_clean_log_and_repair_leaves_it_alone() {
    let dir = tempfile::tempdir().unwrap();
    batches(dir.path(), 3, ONE_SEGMENT);
    let found = inspect(dir.path()).unwrap();
    assert_eq!(found.end, LogEnd::Clean);
    assert_eq!(found.segments.len(), 1);
    assert_eq!(found.segments[0].records[0].segment_start, Some(0));
    let records = batch_records(&found);
    assert_eq!(records.len(), 3);
    assert_eq!(records[2].entries, Some((3, 3)));
    assert_eq!(found.bytes_to_cut(), 0);
    let done = repair(dir.path()).unwrap();
    assert_eq!((done.removed, done.backups), (0, Vec::<PathBuf>::new()));
}

#[test]
fn inspect_lists_every_segment_with_where_it_starts() {
    let dir = tempfile::tempdir().unwrap();
    batches(dir.path(), 10, 200);
    let found = inspect(dir.path()).unwrap();
    assert_eq!(found.end, LogEnd::Clean);
    assert!(found.segments.len() >= 4, "{}", found.segments.len());
    for (k, segment) in found.segments.iter().enumerate() {
        assert_eq!(segment.seq, k as u64 + 1);
        assert_eq!(segment.records[0].segment_start, Some(segment.base));
    }
    assert_eq!(batch_records(&found).len(), 10);
}

#[test]
fn a_torn_tail_is_named_and_cut_with_a_backup() {
    let dir = tempfile::tempdir().unwrap();
    batches(dir.path(), 3, ONE_SEGMENT);
    let log = inspect(dir.path()).unwrap().segments[0].path.clone();
    let bytes = fs::read(&log).unwrap();
    fs::write(&log, &bytes[..bytes.len() - 10]).unwrap();
    let found = inspect(dir.path()).unwrap();
    let records = batch_records(&found);
    let last = records.last().unwrap().offset + records.last().unwrap().len;
    assert!(
        matches!(&found.end, LogEnd::TornTail { offset, segment, .. } if *offset == last && *segment == log),
        "{:?}",
        found.end
    );
    assert_eq!(records.len(), 2);
    let done = repair(dir.path()).unwrap();
    assert_eq!(
        fs::read(&done.backups[0]).unwrap(),
        bytes[last as usize..bytes.len() - 10]
    );
    assert_eq!(inspect(dir.path()).unwrap().end, LogEnd::Clean);
    assert_eq!(recovered(dir.path()).last_index(), 2);
}

#[test]
fn corruption_before_the_last_record_is_named_refused_by_open_and_cut_by_repair() {
    let dir = tempfile::tempdir().unwrap();
    batches(dir.path(), 3, ONE_SEGMENT);
    let before = inspect(dir.path()).unwrap();
    let log = before.segments[0].path.clone();
    let first = batch_records(&before)[0].clone();
    let mut bytes = fs::read(&log).unwrap();
    let at = (first.offset + first.len - 1) as usize;
    bytes[at] ^= 0x40;
    fs::write(&log, &bytes).unwrap();
    let found = inspect(dir.path()).unwrap();
    assert!(
        matches!(&found.end, LogEnd::Corrupt { offset, .. } if *offset == first.offset),
        "{:?}",
        found.end
    );
    assert!(matches!(
        WalStorage::open(dir.path()),
        Err(StorageError::Corrupt { .. })
    ));
    let done = repair(dir.path()).unwrap();
    assert_eq!(done.removed, bytes.len() as u64 - first.offset);
    assert_eq!(
        fs::read(&done.backups[0]).unwrap(),
        bytes[first.offset as usize..]
    );
    assert_eq!(recovered(dir.path()).last_index(), 0);
}

/// Damage in an earlier segment: repair cuts that segment and moves every later one aside
/// (renamed to `<name>.removed`, no longer read); the log opens to the good prefix.
#[test]
fn corruption_in_an_earlier_segment_is_cut_there_and_later_segments_are_moved_aside() {
    let dir = tempfile::tempdir().unwrap();
    batches(dir.path(), 10, 200);
    let before = inspect(dir.path()).unwrap();
    assert!(before.segments.len() >= 4);
    let damaged = &before.segments[1];
    let record = damaged.records.last().unwrap().clone();
    let mut bytes = fs::read(&damaged.path).unwrap();
    bytes[(record.offset + record.len - 1) as usize] ^= 1;
    fs::write(&damaged.path, &bytes).unwrap();
    let found = inspect(dir.path()).unwrap();
    assert!(
        matches!(&found.end, LogEnd::Corrupt { segment, offset, .. } if *segment == damaged.path && *offset == record.offset),
        "{:?}",
        found.end
    );
    let expected_cut = bytes.len() as u64 - record.offset
        + before.segments[2..].iter().map(|s| s.len).sum::<u64>();
    assert_eq!(found.bytes_to_cut(), expected_cut);
    let done = repair(dir.path()).unwrap();
    assert_eq!(done.removed, expected_cut);
    assert_eq!(done.backups.len(), 1 + before.segments.len() - 2);
    for later in &before.segments[2..] {
        assert!(!later.path.exists());
        assert!(PathBuf::from(format!("{}.removed", later.path.display())).exists());
    }
    let last_good = record.entries.unwrap().0 - 1;
    assert_eq!(recovered(dir.path()).last_index(), last_good);
}

#[test]
fn repair_refuses_a_directory_in_use() {
    let dir = tempfile::tempdir().unwrap();
    let _running = WalStorage::open(dir.path()).unwrap();
    assert!(matches!(
        repair(dir.path()),
        Err(StorageError::Locked { .. })
    ));
}

/// Group commit: a run of batches becomes one record (one `fdatasync`), a batch with a
/// snapshot starts a new run, and the state is the one the batches give one by one.
#[test]
fn a_group_of_batches_is_one_record_per_run_and_the_same_state() {
    use flotilla_raft::Snapshot;
    use flotilla_storage::MemStorage;
    let dir = tempfile::tempdir().unwrap();
    let (mut wal, _) = WalStorage::open(dir.path()).unwrap();
    let mut mem = MemStorage::new();
    let mut group: Vec<Persist> = (1..=5).map(batch).collect();
    // Overwrite a suffix inside the group, as a new leader's entries would.
    group.push(Persist {
        entries: vec![Entry {
            term: 2,
            index: 4,
            data: b"new".to_vec(),
        }],
        ..Persist::default()
    });
    for b in &group {
        mem.persist(b).unwrap();
    }
    let records = |dir: &Path| batch_records(&inspect(dir).unwrap()).len();
    let before = records(dir.path());
    wal.persist_group(&group).unwrap();
    assert_eq!(records(dir.path()), before + 1);
    assert_eq!(&wal.durable_state().unwrap(), mem.durable_state());

    let with_snapshot = [
        batch(5),
        Persist {
            snapshot: Some(Snapshot {
                index: 4,
                term: 2,
                data: b"s".to_vec(),
            }),
            ..Persist::default()
        },
        batch(5),
    ];
    for b in &with_snapshot {
        mem.persist(b).unwrap();
    }
    wal.persist_group(&with_snapshot).unwrap();
    assert_eq!(&wal.durable_state().unwrap(), mem.durable_state());
    drop(wal);
    assert_eq!(&recovered(dir.path()), mem.durable_state());
}

/// Every file of `dir` but the lock, with its contents: to show that a refused repair
/// changed nothing.
fn files(dir: &Path) -> std::collections::BTreeMap<String, Vec<u8>> {
    fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap())
        .filter(|e| e.file_name() != "LOCK")
        .map(|e| {
            (
                e.file_name().to_string_lossy().into_owned(),
                fs::read(e.path()).unwrap(),
            )
        })
        .collect()
}

/// Damages `segment`'s start record (its last byte: the payload CRC no longer matches).
fn damage_start_record(segment: &SegmentSummary) {
    let start = &segment.records[0];
    assert!(start.segment_start.is_some());
    let mut bytes = fs::read(&segment.path).unwrap();
    bytes[(start.offset + start.len - 1) as usize] ^= 0x10;
    fs::write(&segment.path, &bytes).unwrap();
}

fn snapshot_at(index: u64) -> Persist {
    Persist {
        snapshot: Some(flotilla_raft::Snapshot {
            index,
            term: 1,
            data: format!("state at {index}").into_bytes(),
        }),
        ..Persist::default()
    }
}

/// Persists `batches` on segments of `segment_bytes`; returns the state after each prefix of
/// them (the empty prefix first): every state a repair may leave.
fn persisted(dir: &Path, segment_bytes: u64, batches: &[Persist]) -> Vec<DurableState> {
    let (mut wal, _) =
        WalStorage::open_with_options(dir, WalOptions { segment_bytes }).expect("open");
    let mut states = vec![DurableState::default()];
    for b in batches {
        wal.persist(b).expect("persist");
        let mut next = states.last().unwrap().clone();
        next.apply(b);
        states.push(next);
    }
    states
}

/// `repair` refused with a `Corrupt` error whose detail says `why`, and changed nothing.
fn assert_refused(
    dir: &Path,
    result: Result<flotilla_storage::wal::Repair, StorageError>,
    why: &str,
) {
    match result {
        Err(StorageError::Corrupt { detail, .. }) => {
            assert!(detail.contains(why), "{detail}");
        }
        other => panic!(
            "repair should refuse ({why}), got {other:?}; then inspect says {:?} and open {:?}",
            inspect(dir).map(|i| i.end),
            WalStorage::open(dir).map(|(_, s)| s.last_index())
        ),
    }
}

/// A whole segment moved away counts with its header: `removed` is every byte of it.
#[test]
fn a_segment_damaged_in_its_start_record_goes_whole_and_counts_whole() {
    let dir = tempfile::tempdir().unwrap();
    let all: Vec<Persist> = (1..=10).map(batch).collect();
    let states = persisted(dir.path(), 200, &all);
    let before = inspect(dir.path()).unwrap();
    assert!(before.segments.len() >= 4);
    damage_start_record(&before.segments[2]);
    let found = inspect(dir.path()).unwrap();
    assert!(
        matches!(&found.end, LogEnd::Corrupt { segment, offset: 20, .. } if *segment == before.segments[2].path),
        "{:?}",
        found.end
    );
    let expected_cut = before.segments[2..].iter().map(|s| s.len).sum::<u64>();
    assert_eq!(found.bytes_to_cut(), expected_cut);
    let done = repair(dir.path()).unwrap();
    assert_eq!(done.removed, expected_cut);
    assert_eq!(done.backups.len(), before.segments.len() - 2);
    assert_eq!(inspect(dir.path()).unwrap().end, LogEnd::Clean);
    let kept = before.segments[2].base as usize;
    assert_eq!(recovered(dir.path()), states[kept]);
}

/// Finding 2 of fuzz/README.md: the oldest segment starts with placeholders that a snapshot
/// record in a later segment covers; damage before that record would have repair cut the
/// snapshot record away and leave an incomplete log. It refuses, changing nothing.
#[test]
fn repair_refuses_a_cut_that_would_leave_an_incomplete_log() {
    let dir = tempfile::tempdir().unwrap();
    let mut all: Vec<Persist> = (1..=10).map(batch).collect();
    all.push(snapshot_at(4));
    all.extend((11..=20).map(batch));
    all.push(snapshot_at(12));
    all.extend((21..=22).map(batch));
    persisted(dir.path(), 200, &all);
    let before = inspect(dir.path()).unwrap();
    assert_eq!(before.end, LogEnd::Clean);
    // The situation: the oldest segment holds placeholders beyond the snapshot it starts
    // with, and the snapshot record covering them is in a later segment.
    let oldest = &before.segments[0];
    assert_eq!(oldest.records[0].snapshot, Some((4, 1)));
    assert!(oldest.base > 4, "{}", oldest.base);
    let covering = before
        .segments
        .iter()
        .position(|s| s.records.iter().any(|r| r.snapshot == Some((12, 1))))
        .unwrap();
    assert!(covering > 0);
    damage_start_record(&before.segments[covering]);
    let found = inspect(dir.path()).unwrap();
    assert!(
        matches!(&found.end, LogEnd::Corrupt { segment, .. } if *segment == before.segments[covering].path),
        "{:?}",
        found.end
    );
    let untouched = files(dir.path());
    assert_refused(dir.path(), repair(dir.path()), "incomplete");
    assert_eq!(files(dir.path()), untouched);
    assert_eq!(inspect(dir.path()).unwrap().end, found.end);
}

/// A log whose snapshot was already deleted older segments for, then damaged in its first
/// live segment; stale copies of older segments are back before a sequence gap (an
/// interrupted deletion: `open` would delete them).
fn with_leftovers(dir: &Path) -> Inspection {
    batches(dir, 10, 200);
    let stale = files(dir);
    let mut later = vec![snapshot_at(10)];
    later.extend((11..=14).map(batch));
    persisted(dir, 200, &later);
    let live = inspect(dir).unwrap();
    assert!(live.leftovers.is_empty());
    let first_live = live.segments[0].seq;
    assert!(first_live >= 3, "{first_live}");
    let mut restored = 0;
    for (name, bytes) in &stale {
        let seq = name
            .strip_suffix(".wal")
            .and_then(|n| n.split_once('-'))
            .map(|(seq, _)| u64::from_str_radix(seq, 16).unwrap());
        if seq.is_some_and(|seq| seq + 1 < first_live) {
            fs::write(dir.join(name), bytes).unwrap();
            restored += 1;
        }
    }
    assert!(restored > 0);
    let found = inspect(dir).unwrap();
    assert_eq!(found.leftovers.len(), restored);
    assert_eq!(found.end, LogEnd::Clean);
    found
}

/// Finding 3 of fuzz/README.md, with intact leftovers: moving the first live segment away
/// whole would make the leftovers (an old state) the live log. Repair refuses.
#[test]
fn repair_refuses_to_move_the_first_live_segment_away_over_intact_leftovers() {
    let dir = tempfile::tempdir().unwrap();
    let found = with_leftovers(dir.path());
    damage_start_record(&found.segments[0]);
    assert!(matches!(
        inspect(dir.path()).unwrap().end,
        LogEnd::Corrupt { offset: 20, .. }
    ));
    let untouched = files(dir.path());
    assert_refused(dir.path(), repair(dir.path()), "no live segment");
    assert_eq!(files(dir.path()), untouched);
}

/// Finding 3 as the fuzzer found it: the live log is a segment holding only its header,
/// the leftovers before the gap are damaged themselves.
#[test]
fn repair_refuses_to_promote_damaged_leftovers_to_the_live_log() {
    let dir = tempfile::tempdir().unwrap();
    let found = with_leftovers(dir.path());
    damage_start_record(&found.segments[0]);
    let leftover = &found.leftovers[0];
    let mut bytes = fs::read(leftover).unwrap();
    bytes[30] ^= 0x10;
    fs::write(leftover, &bytes).unwrap();
    let header_only = fs::read(&found.segments[0].path).unwrap()[..20].to_vec();
    fs::write(&found.segments[0].path, header_only).unwrap();
    assert!(matches!(
        inspect(dir.path()).unwrap().end,
        LogEnd::Corrupt { offset: 20, .. }
    ));
    let untouched = files(dir.path());
    assert_refused(dir.path(), repair(dir.path()), "no live segment");
    assert_eq!(files(dir.path()), untouched);
}

/// The other half of finding 2: a cut before a snapshot record whose snapshot is already in
/// the `snapshot` file would leave a log that names another snapshot (here: none), which
/// `open` refuses. Repair refuses it first, changing nothing.
#[test]
fn repair_refuses_a_cut_that_would_leave_a_log_not_matching_its_snapshot() {
    let dir = tempfile::tempdir().unwrap();
    let all = vec![batch(1), batch(2), batch(3), snapshot_at(2), batch(4)];
    persisted(dir.path(), ONE_SEGMENT, &all);
    let before = inspect(dir.path()).unwrap();
    let third = batch_records(&before)[2].clone();
    assert_eq!(third.entries, Some((3, 3)));
    let mut bytes = fs::read(&before.segments[0].path).unwrap();
    bytes[(third.offset + third.len - 1) as usize] ^= 0x10;
    fs::write(&before.segments[0].path, &bytes).unwrap();
    assert!(matches!(
        inspect(dir.path()).unwrap().end,
        LogEnd::Corrupt { offset, .. } if offset == third.offset
    ));
    let untouched = files(dir.path());
    assert_refused(dir.path(), repair(dir.path()), "snapshot");
    assert_eq!(files(dir.path()), untouched);
}
