//! `WalStorage` on the simulator's file system (`flotilla_sim::fs::SimFs`), crashed at every
//! call inside its operations and at random points of random histories.
//!
//! A crash keeps what was synced — file data *and* directory entries, separately — plus a
//! random part of the rest, torn, zero-filled or with flipped bits (see `flotilla_sim::fs`).
//! A batch counts as **acknowledged** once `persist` returned `Ok` *and* the syncs it issued
//! were completed (`SimFs::complete_syncs`, what the simulator's driver calls after the
//! disk's sync latency). The property, everywhere: `open` after a crash never fails, and
//! yields the state after some prefix of the batches given that includes every
//! acknowledged one — never anything else.
//!
//! The exhaustive and random tests run on small segments too, so that starting a segment
//! and deleting old ones after a snapshot are crashed in as well.
//!
//! Seeded tests print their seed on failure; replay with `SIM_SEED=…`.

use std::path::Path;

use flotilla_raft::DurableState;
use flotilla_sim::fs::{CrashFaults, Fault, Op, SimFs};
use flotilla_sim::Rng;
use flotilla_storage::{MemStorage, Persist, Storage, StorageError, WalOptions, WalStorage};

mod common;
use common::sim::*;
use common::*;

/// The default segments (one holds every test's log) and small ones (a new segment every
/// few records, deleted after snapshots).
const SEGMENT_SIZES: [WalOptions; 2] = [
    WalOptions {
        segment_bytes: 64 << 20,
    },
    WalOptions { segment_bytes: 150 },
];
const DEFAULT: WalOptions = SEGMENT_SIZES[0];

/// Length of the segment appended to.
fn wal_file_len(fs: &SimFs) -> u64 {
    let mut names = fs.list_dir(DIR).unwrap();
    names.retain(|n| n.to_str().is_some_and(|n| n.ends_with(".wal")));
    names.sort();
    let last = names.pop().expect("a segment");
    fs.read(Path::new(DIR).join(last)).unwrap().len() as u64
}

/// The batches the exhaustive tests crash in: `script()` (appends, a conflicting suffix,
/// hard states, a snapshot keeping the log and one discarding it) plus a batch whose
/// snapshot replaces an earlier one.
fn batches() -> Vec<Persist> {
    let mut batches = script();
    batches.pop(); // the empty batch: no calls to crash in
    batches.push(Persist {
        hard_state: hard(5, Some(2)),
        snapshot: snapshot(10, 4),
        entries: entries(11..=13, 5),
    });
    batches
}

/// Crashes batch `i` of `batches()` at every call of its `persist` (see
/// `common::sim::crash_at_every_call`), then `open`, and crashes that `open` at every call.
/// Returns the number of calls `persist` makes.
fn crash_batch_at_every_call(i: usize, options: WalOptions, rng: &mut Rng) -> u64 {
    let batches = batches();
    let before = batches[..i]
        .iter()
        .fold(DurableState::default(), |s, b| after(&s, b));
    let expected_after = after(&before, &batches[i]);
    crash_at_every_call(
        rng,
        || acknowledged(&batches[..i], options),
        |mut wal| wal.persist(&batches[i]),
        |crashed, crash, rng| {
            let context = format!("batch {i}, {crash}, {options:?}: {:?}", batches[i]);
            let (wal, got) = reopen(&crashed.duplicate(), options, &context);
            if crash.acknowledged() {
                assert_eq!(got, expected_after, "{context}: acknowledged batch lost");
            } else {
                assert!(
                    got == before || got == expected_after,
                    "{context}: recovered neither the state before nor after the batch: {got:?}"
                );
            }
            // A crash at any call of that recovery (which may roll a snapshot rename forward
            // or cut a damaged record off) changes nothing.
            let recovered = got;
            drop(wal);
            crash_recovery_at_every_call(
                &crashed,
                &crash.faults,
                rng,
                |fs| WalStorage::open_on(fs.clone(), DIR, options),
                |fs, r| {
                    let (_, again) = reopen(
                        &fs,
                        options,
                        &format!("{context}, then at call {r} of open"),
                    );
                    assert_eq!(again, recovered, "{context}: recovery changed the state");
                },
            );
        },
    )
}

/// Every batch, every call inside its `persist`, two crash models with and without the syncs
/// that returned completed: a crash anywhere inside an
/// operation recovers the state before or after the batch, after if it was acknowledged;
/// and a crash anywhere inside the `open` that follows changes nothing.
#[test]
fn crash_at_every_call_of_every_batch_recovers_before_or_after_it() {
    let name = "crash_at_every_call_of_every_batch_recovers_before_or_after_it";
    let seed = flotilla_sim::seed_from_env(name);
    flotilla_sim::replay_on_panic(name, seed, || {
        let mut rng = Rng::new(seed);
        for options in SEGMENT_SIZES {
            let mut total_calls = 0;
            for i in 0..batches().len() {
                total_calls += crash_batch_at_every_call(i, options, &mut rng);
            }
            // The snapshot batches alone make about ten calls each.
            assert!(
                total_calls > 35,
                "only {total_calls} calls crashed in ({options:?})"
            );
            eprintln!("{options:?}: crashed at {total_calls} calls");
        }
    });
}

/// Group commit: `persist_group` of every batch of `batches()` at once. Run whole, it issues
/// one `fdatasync` of the log per run (a run ends before each batch with a snapshot). Crashed
/// at every call inside it (two crash models, with and without the syncs that returned
/// completed), the state recovered is the one after some prefix of its runs — never a state
/// inside a run — and the whole group's once it returned and its syncs completed.
#[test]
fn group_commit_keeps_a_prefix_of_its_runs_and_syncs_the_log_once_per_run() {
    let name = "group_commit_keeps_a_prefix_of_its_runs_and_syncs_the_log_once_per_run";
    let seed = flotilla_sim::seed_from_env(name);
    flotilla_sim::replay_on_panic(name, seed, || {
        let mut rng = Rng::new(seed);
        let group = batches();
        let mut states = vec![DurableState::default()];
        for batch in &group {
            states.push(after(states.last().unwrap(), batch));
        }
        let run_starts: Vec<usize> = (0..=group.len())
            .filter(|&j| j == 0 || j == group.len() || group[j].snapshot.is_some())
            .collect();
        let runs = run_starts.len() - 1;
        assert!(runs >= 3, "the group has runs to crash between");
        let prefix_of_runs =
            |got: &DurableState| run_starts.iter().position(|&j| states[j] == *got);

        let (fs, mut wal) = acknowledged(&[], DEFAULT);
        let log_syncs = std::rc::Rc::new(std::cell::Cell::new(0));
        let counter = log_syncs.clone();
        fs.inject(move |call| {
            if call.op == Op::SyncFile && call.path.extension() == Some("wal".as_ref()) {
                counter.set(counter.get() + 1);
            }
            None
        });
        wal.persist_group(&group).unwrap();
        assert_eq!(log_syncs.get(), runs, "one fdatasync of the log per run");
        assert_eq!(&state(&wal), states.last().unwrap());

        for options in SEGMENT_SIZES {
            let k = crash_at_every_call(
                &mut rng,
                || acknowledged(&[], options),
                |mut wal| wal.persist_group(&group),
                |crashed, crash, _| {
                    let context = format!("group, {crash}, {options:?}");
                    let (_, got) = reopen(&crashed, options, &context);
                    let Some(run) = prefix_of_runs(&got) else {
                        panic!("{context}: recovered a state inside a run: {got:?}");
                    };
                    if crash.acknowledged() {
                        assert_eq!(run, runs, "{context}: the acknowledged group was lost");
                    }
                },
            );
            eprintln!("{options:?}: group crashed at {k} calls");
        }
    });
}

/// The directory entry of `snapshot.tmp` must be durable before the log record naming the
/// snapshot is: a crash after that record but before `snapshot.tmp` is renamed must find the
/// file. (A file's `fsync` does not make its directory entry durable.)
#[test]
fn snapshot_named_by_the_log_is_in_the_directory_after_a_crash() {
    let history = &script()[..5];
    let batch = &script()[5]; // snapshot at 4
    let expected = after(
        &history
            .iter()
            .fold(DurableState::default(), |s, b| after(&s, b)),
        batch,
    );
    let (fs, mut wal) = acknowledged(history, DEFAULT);
    // The process dies at the rename of snapshot.tmp, after the record is durable.
    let renamed = std::rc::Rc::new(std::cell::Cell::new(false));
    let flag = renamed.clone();
    fs.inject(move |call| {
        flag.set(flag.get() || call.op == Op::Rename);
        flag.get().then_some(Fault::Eio)
    });
    assert!(wal.persist(batch).is_err());
    assert!(renamed.get());
    drop(wal);
    fs.complete_syncs();
    let fs = fs.crash(&mut Rng::new(1), &CrashFaults::SYNCED_ONLY);
    let (_, recovered) = reopen(
        &fs,
        DEFAULT,
        "crash between the commit point and the rename",
    );
    assert_eq!(recovered, expected);
}

/// A disk that fills up in the middle of an append: `persist` fails, the storage refuses
/// everything after (poisoned), and after a crash nothing acknowledged is lost and nothing
/// half-written is applied.
#[test]
fn disk_full_during_an_append_poisons_and_loses_nothing_acknowledged() {
    let history = &script()[..2];
    let (fs, mut wal) = acknowledged(history, DEFAULT);
    let before = state(&wal);
    fs.inject(|call| (call.op == Op::Write).then_some(Fault::Enospc));
    match wal.persist(&script()[2]) {
        Err(StorageError::Io { source, .. }) => assert_eq!(Fault::of(&source), Some(Fault::Enospc)),
        other => panic!("expected ENOSPC, got {other:?}"),
    }
    fs.clear_faults();
    assert!(wal.persist(&script()[2]).is_err(), "poisoned");
    drop(wal);
    fs.complete_syncs();
    let fs = fs.crash(&mut Rng::new(2), &CrashFaults::ALL);
    let (mut wal, recovered) = reopen(&fs, DEFAULT, "after ENOSPC");
    assert_eq!(recovered, before);
    wal.persist(&script()[2]).unwrap();
    fs.complete_syncs();
    drop(wal);
    let fs = fs.crash(&mut Rng::new(3), &CrashFaults::SYNCED_ONLY);
    assert_eq!(
        reopen(&fs, DEFAULT, "after a good append").1,
        after(&before, &script()[2])
    );
}

/// An append in flight when the machine dies, on a disk that tears, zero-fills and flips bits
/// in unsynced data: the damaged record is cut off, never applied; the file is cut back to
/// the last good record.
#[test]
fn damaged_unsynced_append_is_cut_off_never_applied() {
    let history = &script()[..4];
    let big = Persist {
        hard_state: hard(3, Some(1)),
        entries: (5..=40)
            .map(|index| flotilla_raft::Entry {
                index,
                term: 3,
                data: vec![index as u8; 100],
            })
            .collect(),
        ..Default::default()
    };
    let mut rng = Rng::new(flotilla_sim::seed_from_env("damaged_unsynced_append"));
    let (mut outcomes_before, mut outcomes_after) = (0, 0);
    for round in 0..300 {
        let (fs, mut wal) = acknowledged(history, DEFAULT);
        let before = state(&wal);
        let len_before = wal_file_len(&fs);
        wal.persist(&big).unwrap(); // not acknowledged: syncs in flight
        let expected_after = state(&wal);
        drop(wal);
        let fs = fs.crash(&mut rng, &CrashFaults::ALL);
        let (_, recovered) = reopen(&fs, DEFAULT, &format!("round {round}"));
        if recovered == before {
            outcomes_before += 1;
            assert_eq!(wal_file_len(&fs), len_before, "round {round}: tail not cut");
        } else {
            assert_eq!(recovered, expected_after, "round {round}");
            outcomes_after += 1;
        }
    }
    assert!(
        outcomes_before > 50 && outcomes_after > 50,
        "{outcomes_before}/{outcomes_after}"
    );
}

/// Random material for one batch (see `common::legalize`).
fn random_raw_batch(rng: &mut Rng) -> RawBatch {
    RawBatch {
        hard_state: rng.chance(0.5).then(|| {
            (
                rng.below(256) as u8,
                rng.chance(0.7).then(|| rng.below(5) as u8),
            )
        }),
        snapshot: rng.chance(0.15).then(|| {
            (
                rng.below(1 << 16) as u16,
                rng.chance(0.5),
                rng.below(256) as u8,
            )
        }),
        entries: rng.chance(0.8).then(|| {
            (
                rng.below(1 << 16) as u16,
                rng.range(1, 5) as u8,
                rng.below(6) as u8,
                rng.below(256) as u8,
            )
        }),
        reopen: false,
    }
}

fn random_faults(rng: &mut Rng) -> CrashFaults {
    *rng.pick(&[
        CrashFaults::SYNCED_ONLY,
        CrashFaults::PREFIX,
        CrashFaults::ALL,
        CrashFaults {
            torn_write: 1.0,
            ..CrashFaults::PREFIX
        },
    ])
}

/// Random histories with crashes at random points — between operations, inside a `persist`
/// (its calls made to fail from a random one on), while its syncs are in flight, and inside
/// the `open` after a crash — under random crash models. After each crash the recovered
/// state is the state after some prefix of the batches that includes every acknowledged
/// one, and `open` never fails.
#[test]
fn random_crashes_recover_a_prefix_with_every_acknowledged_batch() {
    let name = "random_crashes_recover_a_prefix_with_every_acknowledged_batch";
    let seed = flotilla_sim::seed_from_env(name);
    flotilla_sim::replay_on_panic(name, seed, || {
        let mut rng = Rng::new(seed);
        let (mut crashes, mut unacknowledged_recovered, mut persists) = (0, 0, 0);
        for case in 0..2000 {
            // Segments from a few records to the default size.
            let options = *rng.pick(&[
                DEFAULT,
                WalOptions { segment_bytes: 150 },
                WalOptions { segment_bytes: 600 },
            ]);
            let mut fs = SimFs::new();
            // history[k]: the state after the first k batches of this timeline.
            let mut history = vec![DurableState::default()];
            let mut acked = 0; // every batch up to here is acknowledged
            let mut returned_ok = 0; // every batch up to here returned Ok
            let mut wal = Some(reopen(&fs, options, "fresh").0);
            if rng.chance(0.5) {
                fs.complete_syncs();
            }
            let steps = rng.range(1, 40);
            for step in 0..steps {
                let context = format!("case {case} step {step}");
                let crash_now = match wal.as_mut() {
                    Some(storage) if !rng.chance(0.1) => {
                        let batch = legalize(history.last().unwrap(), &random_raw_batch(&mut rng));
                        if batch.is_empty() {
                            continue;
                        }
                        let injected = rng.chance(0.2);
                        if injected {
                            fs.fail_from(rng.below(20), *rng.pick(&[Fault::Eio, Fault::Enospc]));
                        }
                        let result = storage.persist(&batch);
                        fs.clear_faults();
                        history.push(after(history.last().unwrap(), &batch));
                        persists += 1;
                        match result {
                            Ok(()) => {
                                returned_ok = history.len() - 1;
                                let expected = history.last().unwrap();
                                assert_eq!(&storage.durable_state().unwrap(), expected);
                                assert_eq!(
                                    storage.raft_state_size(),
                                    MemStorage::from_state(expected.clone()).raft_state_size()
                                );
                                if rng.chance(0.7) {
                                    fs.complete_syncs();
                                    acked = returned_ok;
                                }
                                false
                            }
                            Err(e) => {
                                assert!(injected, "{context}: persist failed: {e}");
                                true // a failed storage stops the node
                            }
                        }
                    }
                    _ => true,
                };
                if !crash_now {
                    continue;
                }
                crashes += 1;
                drop(wal.take());
                if rng.chance(0.3) {
                    fs.complete_syncs();
                    acked = returned_ok;
                }
                let faults = random_faults(&mut rng);
                fs = fs.crash(&mut rng, &faults);
                // Sometimes crash inside the recovery too.
                while rng.chance(0.3) {
                    fs.fail_from(rng.below(15), Fault::Eio);
                    let opened = WalStorage::open_on(fs.clone(), DIR, options);
                    fs.clear_faults();
                    drop(opened);
                    fs = fs.crash(&mut rng, &faults);
                }
                let (storage, got) = reopen(&fs, options, &format!("{context} ({faults:?})"));
                let Some(j) = (acked..history.len()).rev().find(|&j| history[j] == got) else {
                    panic!(
                        "{context}: recovered a state that is no prefix of the batches from \
                         {acked} (acknowledged) to {} ({faults:?}): {got:?}",
                        history.len() - 1
                    );
                };
                if j > acked {
                    unacknowledged_recovered += 1;
                }
                // The recovered state was read from a crashed disk: it is durable now.
                history.truncate(j + 1);
                acked = j;
                returned_ok = j;
                wal = Some(storage);
                if rng.chance(0.5) {
                    fs.complete_syncs();
                }
            }
        }
        // The run exercised what it claims to.
        eprintln!("{persists} persists, {crashes} crashes, {unacknowledged_recovered} recovered an unacknowledged batch");
        assert!(persists > 20_000, "{persists} persists");
        assert!(crashes > 4_000, "{crashes} crashes");
        assert!(unacknowledged_recovered > 400, "{unacknowledged_recovered}");
    });
}

/// The pattern a simulator driver follows, in the simulator: `persist`, sleep for the disk's
/// sync latency, `complete_syncs`, and only then act on the batch (here: count it as
/// acknowledged). Crashes abort the node's task at random virtual instants — often during
/// that sleep — and the node restarts from `crash`'s file system. No acknowledged batch is
/// ever lost, and unacknowledged ones are recovered whole or not at all.
#[test]
fn driver_pattern_in_the_simulator_loses_no_acknowledged_batch() {
    use std::cell::RefCell;
    use std::rc::Rc;
    use std::time::Duration;

    let name = "driver_pattern_in_the_simulator_loses_no_acknowledged_batch";
    flotilla_sim::run_test(name, || async {
        // history[k]: the state after the first k batches; acked: the acknowledged prefix.
        let history = Rc::new(RefCell::new(vec![DurableState::default()]));
        let acked = Rc::new(RefCell::new(0usize));
        let mut fs = SimFs::new();
        let (mut in_flight_crashes, mut lives) = (0, 0);
        for life in 0..150 {
            lives += 1;
            let (mut storage, got) = reopen(&fs, SEGMENT_SIZES[life % 2], &format!("life {life}"));
            {
                let mut history = history.borrow_mut();
                let from = *acked.borrow();
                let j = (from..history.len())
                    .rev()
                    .find(|&j| history[j] == got)
                    .unwrap_or_else(|| {
                        panic!("life {life}: recovered {got:?}, no prefix from {from}")
                    });
                history.truncate(j + 1);
                *acked.borrow_mut() = j;
            }
            fs.complete_syncs();
            let node = {
                let (fs, history, acked) = (fs.clone(), history.clone(), acked.clone());
                flotilla_sim::spawn(async move {
                    loop {
                        let raw = flotilla_sim::with_rng(random_raw_batch);
                        let batch = legalize(history.borrow().last().unwrap(), &raw);
                        if batch.is_empty() {
                            flotilla_sim::sleep(Duration::from_micros(100)).await;
                            continue;
                        }
                        storage.persist(&batch).expect("persist");
                        let next = after(history.borrow().last().unwrap(), &batch);
                        history.borrow_mut().push(next);
                        let latency = flotilla_sim::with_rng(|rng| rng.range(50, 500));
                        flotilla_sim::sleep(Duration::from_micros(latency)).await;
                        fs.complete_syncs();
                        // Only now may the node act on the batch (send, reply, apply).
                        *acked.borrow_mut() = history.borrow().len() - 1;
                    }
                })
            };
            let uptime = flotilla_sim::with_rng(|rng| rng.range(0, 5_000));
            flotilla_sim::sleep(Duration::from_micros(uptime)).await;
            node.abort();
            if *acked.borrow() + 1 < history.borrow().len() {
                in_flight_crashes += 1; // crashed while a batch's syncs were in flight
            }
            let faults = flotilla_sim::with_rng(random_faults);
            fs = flotilla_sim::with_rng(|rng| fs.crash(rng, &faults));
        }
        assert_eq!(lives, 150);
        assert!(
            in_flight_crashes > 75,
            "{in_flight_crashes} crashes in a sync"
        );
    });
}

/// fsyncgate: a failed `fdatasync` is never retried or trusted. The storage refuses every
/// later write, and `durable_state` reports what was synced before it — not the batch whose
/// sync failed, which the page cache may still show but the disk may not hold.
#[test]
fn after_a_failed_sync_only_what_was_synced_is_reported_and_nothing_more_is_written() {
    // Batch 2: a hard state; 3: a conflicting suffix; 5: a snapshot.
    for k in [2, 3, 5] {
        for op in [Op::SyncFile, Op::Write] {
            let history = &script()[..k];
            let (fs, mut wal) = acknowledged(history, DEFAULT);
            let before = state(&wal);
            let size_before = wal.raft_state_size();
            fs.inject(move |call| (call.op == op).then_some(Fault::Eio));
            assert!(
                wal.persist(&script()[k]).is_err(),
                "batch {k}, {op:?} fails"
            );
            // Read back with faults cleared: what the page cache holds of the failed batch
            // is not read.
            fs.clear_faults();
            assert_eq!(
                state(&wal),
                before,
                "batch {k}, {op:?}: only the synced state"
            );
            assert_eq!(wal.raft_state_size(), size_before);
            let calls = fs.calls();
            assert!(
                wal.persist(&script()[k]).is_err(),
                "batch {k}, {op:?}: poisoned"
            );
            assert_eq!(
                fs.calls(),
                calls,
                "batch {k}, {op:?}: a refused write touched the disk"
            );
            assert_eq!(state(&wal), before);
        }
    }
}

/// `open` cuts a damaged last record off; if the very next batch starts a new segment, the
/// cut must already be durable: otherwise a crash brings the damaged record back in a
/// segment that is no longer the last — corruption, and the node could never start again.
#[test]
fn a_cut_torn_tail_stays_cut_when_the_next_batch_starts_a_segment() {
    // Room for the history and the torn record, not for the big batch after them.
    let options = WalOptions { segment_bytes: 400 };
    let mut rng = Rng::new(flotilla_sim::seed_from_env("a_cut_torn_tail_stays_cut"));
    let mut cases = 0;
    for round in 0..1500 {
        let history = &script()[..2];
        let (fs, mut wal) = acknowledged(history, options);
        let before = state(&wal);
        let next = Persist {
            hard_state: hard(2, Some(1)),
            entries: entries(4..=6, 2),
            ..Default::default()
        };
        wal.persist(&next).unwrap(); // its syncs never complete: a torn tail, maybe
        drop(wal);
        let fs = fs.crash(&mut rng, &CrashFaults::ALL);
        let len_damaged = wal_file_len(&fs);
        let (mut wal, recovered) = reopen(&fs, options, &format!("round {round}"));
        fs.complete_syncs();
        if recovered != before || wal_file_len(&fs) == len_damaged {
            continue; // the batch survived whole, or nothing was left to cut
        }
        let segments = wal.segment_count();
        let big = Persist {
            entries: (4..=8)
                .map(|index| flotilla_raft::Entry {
                    index,
                    term: 2,
                    data: vec![7; 30],
                })
                .collect(),
            ..Default::default()
        };
        wal.persist(&big).unwrap();
        fs.complete_syncs();
        if wal.segment_count() == segments {
            continue; // appended to the cut segment: its fdatasync covers the cut
        }
        cases += 1;
        drop(wal);
        let fs = fs.crash(&mut rng, &CrashFaults::SYNCED_ONLY);
        let (_, recovered) = reopen(
            &fs,
            options,
            &format!("round {round}, after the next batch"),
        );
        assert_eq!(recovered, after(&before, &big), "round {round}");
    }
    assert!(
        cases > 30,
        "only {cases} rounds cut a torn tail and then started a segment"
    );
}
