//! `flotilla wal repair` (`wal::repair_with`) on the simulator's file system, crashed at every
//! call it makes, on logs damaged four ways: a torn tail, a corrupt record in the only
//! segment, a corrupt record in an earlier segment (the later ones are moved aside), a
//! segment damaged in its start record (moved aside whole, with the ones after it).
//!
//! After every crash (two crash models, with and without the syncs that returned completed):
//!
//! - every byte repair removes is either still in the log or in its backup, never in neither
//!   (a segment's tail: the segment untouched, or cut with the tail in
//!   `<segment>.removed-<offset>`; a whole segment: under its name or under
//!   `<segment>.removed`);
//! - the log opens, to the state of every batch before the damage — nothing before it is
//!   lost — or `open` refuses it as corrupt and `repair` run again finishes and leaves that
//!   log; and that second `repair` is crashed at every call too, with the same checks;
//! - a repair that returned, its syncs completed, is durable: the log is clean.
//!
//! Seeded; a failure prints its seed, replay with `SIM_SEED=…`.

use std::path::{Path, PathBuf};

use flotilla_raft::DurableState;
use flotilla_sim::fs::SimFs;
use flotilla_sim::Rng;
use flotilla_storage::wal::{inspect_with, repair_with, Inspection, LogEnd, RecordSummary};
use flotilla_storage::{Persist, Storage, StorageError, WalOptions, WalStorage};

mod common;
use common::sim::*;
use common::*;

/// `script()` (hard states, a conflicting suffix, a snapshot keeping the log and one
/// discarding it) and then one-entry batches: every repair cuts after the last snapshot.
fn history() -> Vec<Persist> {
    let mut batches = script();
    batches.pop(); // the empty batch: no record
    batches.extend((12..=30).map(|index| Persist {
        entries: entries(index..=index, 4),
        ..Default::default()
    }));
    batches
}

/// How a scenario damages the log; the log's segments before the damage are given.
enum Damage {
    /// The last record, cut short: a crash during its append.
    TornTail,
    /// A bit of the `n`-th record from the end of the only segment.
    RecordInTheOnlySegment(usize),
    /// A bit of the last record of the `n`-th segment from the end.
    LastRecordOfSegment(usize),
    /// A bit of the start record of the `n`-th segment from the end.
    StartRecordOfSegment(usize),
}

/// What repair removes, with what it held before.
enum Removed {
    /// The segment's bytes from `offset` on.
    Tail {
        segment: PathBuf,
        offset: u64,
        bytes: Vec<u8>,
    },
    /// The whole segment.
    Whole { segment: PathBuf, bytes: Vec<u8> },
}

/// A damaged log, everything synced, and what a repair of it must leave.
struct Damaged {
    name: &'static str,
    fs: SimFs,
    options: WalOptions,
    /// The state of every batch before the damaged record.
    expected: DurableState,
    removed: Vec<Removed>,
}

fn read(fs: &SimFs, path: &Path) -> Option<Vec<u8>> {
    match fs.read(path) {
        Ok(bytes) => Some(bytes),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(e) => panic!("{}: {e}", path.display()),
    }
}

/// Replaces `path`'s content with `bytes`, synced.
fn overwrite(fs: &SimFs, path: &Path, bytes: &[u8]) {
    use std::io::Write;
    let mut file = fs.create(path).unwrap();
    file.write_all(bytes).unwrap();
    file.sync_all().unwrap();
    fs.complete_syncs();
}

/// The batch of `history` whose record `record` is (a one-entry batch).
fn batch_of(history: &[Persist], record: &RecordSummary) -> usize {
    let (first, last) = record.entries.expect("a one-entry batch");
    assert_eq!(first, last);
    let found: Vec<usize> = (0..history.len())
        .filter(|&m| {
            history[m].snapshot.is_none()
                && history[m].entries.len() == 1
                && history[m].entries[0].index == first
        })
        .collect();
    assert_eq!(found.len(), 1, "{record:?}");
    found[0]
}

fn damaged(name: &'static str, segment_bytes: u64, damage: Damage) -> Damaged {
    let options = WalOptions { segment_bytes };
    let history = history();
    let (fs, wal) = acknowledged(&history, options);
    drop(wal);
    let clean = inspect_with(&fs, DIR).unwrap();
    assert_eq!(clean.end, LogEnd::Clean, "{name}");
    let segments = &clean.segments;
    let from_end = |n: usize| {
        assert!(
            segments.len() > n,
            "{name}: only {} segments",
            segments.len()
        );
        segments.len() - 1 - n
    };
    let flip = |at: usize, record: &RecordSummary| {
        let path = &segments[at].path;
        let mut bytes = read(&fs, path).unwrap();
        bytes[(record.offset + record.len - 1) as usize] ^= 0x10;
        overwrite(&fs, path, &bytes);
    };
    // The damaged segment, where the cut is, and the first batch cut off.
    let (at, offset, first_cut) = match damage {
        Damage::TornTail => {
            let at = from_end(0);
            let record = segments[at].records.last().unwrap();
            let path = &segments[at].path;
            let bytes = read(&fs, path).unwrap();
            overwrite(&fs, path, &bytes[..bytes.len() - 10]);
            (at, record.offset, batch_of(&history, record))
        }
        Damage::RecordInTheOnlySegment(n) => {
            assert_eq!(segments.len(), 1, "{name}");
            let records = &segments[0].records;
            let record = &records[records.len() - 1 - n];
            flip(0, record);
            (0, record.offset, batch_of(&history, record))
        }
        Damage::LastRecordOfSegment(n) => {
            let at = from_end(n);
            let record = segments[at].records.last().unwrap();
            assert!(record.segment_start.is_none(), "{name}");
            flip(at, record);
            (at, record.offset, batch_of(&history, record))
        }
        Damage::StartRecordOfSegment(n) => {
            let at = from_end(n);
            flip(at, &segments[at].records[0]);
            (at, 0, batch_of(&history, &segments[at].records[1]))
        }
    };
    let expected = history[..first_cut]
        .iter()
        .fold(DurableState::default(), |s, b| after(&s, b));
    let content = |path: &Path| read(&fs, path).unwrap();
    let segment = segments[at].path.clone();
    let mut removed = vec![if offset == 0 {
        Removed::Whole {
            bytes: content(&segment),
            segment,
        }
    } else {
        Removed::Tail {
            bytes: content(&segment),
            segment,
            offset,
        }
    }];
    removed.extend(segments[at + 1..].iter().map(|later| Removed::Whole {
        segment: later.path.clone(),
        bytes: content(&later.path),
    }));
    let found = inspect_with(&fs, DIR).unwrap();
    assert_damage(name, &found, &damage, &segments[at].path, offset);
    Damaged {
        name,
        fs,
        options,
        expected,
        removed,
    }
}

/// `inspect` sees the damage made, where it was made.
fn assert_damage(name: &str, found: &Inspection, damage: &Damage, path: &Path, offset: u64) {
    let (is_torn, segment, at) = match &found.end {
        LogEnd::TornTail {
            segment, offset, ..
        } => (true, segment, *offset),
        LogEnd::Corrupt {
            segment, offset, ..
        } => (false, segment, *offset),
        other => panic!("{name}: {other:?}"),
    };
    assert_eq!(is_torn, matches!(damage, Damage::TornTail), "{name}");
    assert_eq!(segment, path, "{name}");
    let header = 20; // a damaged start record is reported after the segment header
    assert_eq!(at, if offset == 0 { header } else { offset }, "{name}");
}

/// Every removed byte is still in the log or in its backup.
fn assert_removed_bytes_kept(fs: &SimFs, damaged: &Damaged, context: &str) {
    for removed in &damaged.removed {
        match removed {
            Removed::Tail {
                segment,
                offset,
                bytes,
            } => {
                let log = read(fs, segment);
                let backup = read(
                    fs,
                    Path::new(&format!("{}.removed-{offset}", segment.display())),
                );
                let untouched = log.as_ref() == Some(bytes);
                let cut_and_saved = log.as_deref() == Some(&bytes[..*offset as usize])
                    && backup.as_deref() == Some(&bytes[*offset as usize..]);
                assert!(
                    untouched || cut_and_saved,
                    "{context}: the tail of {} from byte {offset} is in neither the log nor \
                     the backup (log: {:?} bytes of {}, backup: {:?} bytes)",
                    segment.display(),
                    log.map(|l| l.len()),
                    bytes.len(),
                    backup.map(|b| b.len()),
                );
            }
            Removed::Whole { segment, bytes } => {
                let log = read(fs, segment);
                let moved = read(fs, Path::new(&format!("{}.removed", segment.display())));
                assert!(
                    (log.as_ref() == Some(bytes) && moved.is_none())
                        || (log.is_none() && moved.as_ref() == Some(bytes)),
                    "{context}: {} ({} bytes) is neither in the log nor moved aside whole \
                     (log: {:?} bytes, moved: {:?} bytes)",
                    segment.display(),
                    bytes.len(),
                    log.map(|l| l.len()),
                    moved.map(|m| m.len()),
                );
            }
        }
    }
}

/// What a crash during a repair may leave: see the module docs. Returns whether the log
/// opened without another repair.
fn check_after_crash(fs: &SimFs, damaged: &Damaged, context: &str, acknowledged: bool) -> bool {
    assert_removed_bytes_kept(fs, damaged, context);
    if acknowledged {
        let end = inspect_with(fs, DIR).unwrap().end;
        assert_eq!(
            end,
            LogEnd::Clean,
            "{context}: a repair that returned did not last"
        );
    }
    match WalStorage::open_on(fs.duplicate(), DIR, damaged.options) {
        Ok((_, got)) => {
            assert_eq!(
                got, damaged.expected,
                "{context}: the log opens to another state"
            );
            true
        }
        Err(StorageError::Corrupt { .. }) => {
            let again = fs.duplicate();
            let done = repair_with(&again, DIR)
                .unwrap_or_else(|e| panic!("{context}: repair run again failed: {e}"));
            assert!(
                done.removed > 0,
                "{context}: the log neither opens nor needs a cut"
            );
            assert_removed_bytes_kept(&again, damaged, &format!("{context}, repaired again"));
            let (_, got) = reopen(&again, damaged.options, context);
            assert_eq!(
                got, damaged.expected,
                "{context}: repaired again to another state"
            );
            false
        }
        Err(e) => panic!("{context}: open failed: {e}"),
    }
}

/// Crashes `repair` of `damaged` at every call, and the `repair` run again after each crash
/// at every call of that.
fn crash_repair_at_every_call(damaged: Damaged) {
    let name = damaged.name;
    let seed = flotilla_sim::seed_from_env(name);
    flotilla_sim::replay_on_panic(name, seed, || {
        let mut rng = Rng::new(seed);
        // A reference repair: it cuts, and leaves the expected state.
        let reference = damaged.fs.duplicate();
        let done = repair_with(&reference, DIR).expect("repair");
        assert!(
            done.removed > 0 && !done.backups.is_empty(),
            "{name}: {done:?}"
        );
        reference.complete_syncs();
        check_after_crash(&reference, &damaged, name, true);

        let (mut opened, mut needed_repair) = (0, 0);
        let calls = crash_at_every_call(
            &mut rng,
            || {
                let fs = damaged.fs.duplicate();
                (fs.clone(), fs)
            },
            |fs| repair_with(&fs, DIR),
            |crashed, crash, rng| {
                let context = format!("{name}, {crash}");
                if check_after_crash(&crashed, &damaged, &context, crash.acknowledged()) {
                    opened += 1;
                } else {
                    needed_repair += 1;
                }
                crash_recovery_at_every_call(
                    &crashed,
                    &crash.faults,
                    rng,
                    |fs| repair_with(fs, DIR),
                    |fs, r| {
                        let context = format!("{context}, then at call {r} of repair again");
                        check_after_crash(&fs, &damaged, &context, false);
                    },
                );
            },
        );
        eprintln!("{name}: {calls} calls; after a crash {opened} logs opened, {needed_repair} needed repair again");
        assert!(calls >= 6, "{name}: only {calls} calls");
        assert!(opened > 0, "{name}: no crash left a repaired log");
    });
}

#[test]
fn repair_of_a_torn_tail_crashed_at_every_call() {
    crash_repair_at_every_call(damaged(
        "repair_of_a_torn_tail_crashed_at_every_call",
        64 << 20,
        Damage::TornTail,
    ));
}

#[test]
fn repair_of_a_corrupt_record_crashed_at_every_call() {
    crash_repair_at_every_call(damaged(
        "repair_of_a_corrupt_record_crashed_at_every_call",
        64 << 20,
        Damage::RecordInTheOnlySegment(3),
    ));
}

#[test]
fn repair_moving_later_segments_aside_crashed_at_every_call() {
    crash_repair_at_every_call(damaged(
        "repair_moving_later_segments_aside_crashed_at_every_call",
        150,
        Damage::LastRecordOfSegment(2),
    ));
}

#[test]
fn repair_moving_a_segment_damaged_in_its_start_whole_crashed_at_every_call() {
    crash_repair_at_every_call(damaged(
        "repair_moving_a_segment_damaged_in_its_start_whole_crashed_at_every_call",
        150,
        Damage::StartRecordOfSegment(2),
    ));
}

/// Why repair's cut must be durable before it returns, as `open`'s cut of a torn tail must
/// (`wal_crash.rs::a_cut_torn_tail_stays_cut_when_the_next_batch_starts_a_segment`): the node
/// started after it may write its first batch to a new segment, so no `fdatasync` of the cut
/// segment follows. A crash that undid the cut would bring the damage back in a segment that
/// is no longer the last — corruption: the node could not start, and repairing again would
/// move the new segment, with that acknowledged batch, aside.
#[test]
fn a_repaired_log_keeps_the_next_batch_when_it_starts_a_segment() {
    let name = "a_repaired_log_keeps_the_next_batch_when_it_starts_a_segment";
    let damaged = damaged(name, 64 << 20, Damage::RecordInTheOnlySegment(3));
    let fs = damaged.fs.duplicate();
    repair_with(&fs, DIR).expect("repair");
    fs.complete_syncs();
    // Smaller segments now: the cut segment is full, the next record starts a new one.
    let small = WalOptions { segment_bytes: 150 };
    let (mut wal, state) = WalStorage::open_on(fs.clone(), DIR, small).expect("open");
    assert_eq!(state, damaged.expected);
    let next_index = state.last_index() + 1;
    let next = Persist {
        entries: entries(next_index..=next_index, 4),
        ..Default::default()
    };
    let segments = wal.segment_count();
    wal.persist(&next).expect("persist");
    fs.complete_syncs();
    assert_eq!(
        wal.segment_count(),
        segments + 1,
        "the batch started a segment"
    );
    drop(wal);
    let fs = fs.crash(
        &mut Rng::new(1),
        &flotilla_sim::fs::CrashFaults::SYNCED_ONLY,
    );
    let (_, recovered) = reopen(&fs, small, name);
    assert_eq!(recovered, after(&damaged.expected, &next));
}
