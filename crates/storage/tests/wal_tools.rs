//! The operator's tools on a real directory: `inspect` lists the records and says where the
//! good part ends and why; `repair` cuts the log there, keeping a backup of what it removed,
//! and only while no one holds the directory.

use std::fs;
use std::path::Path;

use flotilla_raft::{Entry, HardState};
use flotilla_storage::wal::{inspect, repair, LogEnd};
use flotilla_storage::{Persist, Storage, StorageError, WalStorage};

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

/// A log of three one-entry batches in `dir`.
fn three_batches(dir: &Path) {
    let mut wal = WalStorage::open(dir).expect("open");
    for i in 1..=3 {
        wal.persist(&batch(i)).expect("persist");
    }
}

#[test]
fn inspect_lists_a_clean_log_and_repair_leaves_it_alone() {
    let dir = tempfile::tempdir().unwrap();
    three_batches(dir.path());
    let found = inspect(dir.path()).unwrap();
    assert_eq!(found.end, LogEnd::Clean);
    assert_eq!(found.records.len(), 3);
    assert_eq!(found.records[2].entries, Some((3, 3)));
    assert_eq!(found.good_len, found.log_len);
    let done = repair(dir.path()).unwrap();
    assert_eq!((done.removed, done.backup), (0, None));
}

#[test]
fn a_torn_tail_is_named_and_cut_with_a_backup() {
    let dir = tempfile::tempdir().unwrap();
    three_batches(dir.path());
    let log = dir.path().join("wal");
    let bytes = fs::read(&log).unwrap();
    fs::write(&log, &bytes[..bytes.len() - 10]).unwrap();
    let found = inspect(dir.path()).unwrap();
    let last = found.records.last().unwrap().offset + found.records.last().unwrap().len;
    assert!(
        matches!(found.end, LogEnd::TornTail { offset, .. } if offset == last),
        "{:?}",
        found.end
    );
    assert_eq!(found.records.len(), 2);
    let done = repair(dir.path()).unwrap();
    let backup = done.backup.expect("a backup");
    assert_eq!(
        fs::read(&backup).unwrap(),
        bytes[last as usize..bytes.len() - 10]
    );
    assert_eq!(inspect(dir.path()).unwrap().end, LogEnd::Clean);
    let wal = WalStorage::open(dir.path()).unwrap();
    assert_eq!(wal.durable_state().last_index(), 2);
}

#[test]
fn corruption_before_the_last_record_is_named_refused_by_open_and_cut_by_repair() {
    let dir = tempfile::tempdir().unwrap();
    three_batches(dir.path());
    let log = dir.path().join("wal");
    let before = inspect(dir.path()).unwrap();
    let first = &before.records[0];
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
    assert_eq!(done.removed, found.log_len - first.offset);
    assert_eq!(
        fs::read(done.backup.unwrap()).unwrap(),
        bytes[first.offset as usize..]
    );
    let wal = WalStorage::open(dir.path()).expect("opens after the repair");
    assert_eq!(wal.durable_state().last_index(), 0);
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
    let mut wal = WalStorage::open(dir.path()).unwrap();
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
    let before = inspect(dir.path()).unwrap().records.len();
    wal.persist_group(&group).unwrap();
    assert_eq!(inspect(dir.path()).unwrap().records.len(), before + 1);
    assert_eq!(wal.durable_state(), mem.durable_state());

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
    assert_eq!(wal.durable_state(), mem.durable_state());
    drop(wal);
    assert_eq!(
        WalStorage::open(dir.path()).unwrap().durable_state(),
        mem.durable_state()
    );
}
