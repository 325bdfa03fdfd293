//! The operator's tools on a real directory: `inspect` lists the segments and records and
//! says where the good part ends and why; `repair` cuts the log there, keeping a backup of
//! what it removed, and only while no one holds the directory.

use std::fs;
use std::path::{Path, PathBuf};

use flotilla_raft::{DurableState, Entry, HardState};
use flotilla_storage::wal::{inspect, repair, Inspection, LogEnd, RecordSummary};
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
