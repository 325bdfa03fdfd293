//! Crash testing on the simulator's file system (`flotilla_sim::fs::SimFs`), shared by the
//! crash suites (`wal_crash.rs`, `wal_repair_crash.rs`): a log with every batch acknowledged,
//! reopening after a crash, and crashing an operation at every file-system call it makes.

use std::fmt;

use flotilla_raft::DurableState;
use flotilla_sim::fs::{CrashFaults, Fault, SimFs};
use flotilla_sim::Rng;
use flotilla_storage::{MemStorage, Persist, Storage, StorageError, WalOptions, WalStorage};

/// The storage directory on the simulated file system.
pub const DIR: &str = "/node/raft";

/// The state after `batch` is applied to `state`.
pub fn after(state: &DurableState, batch: &Persist) -> DurableState {
    let mut mem = MemStorage::from_state(state.clone());
    mem.persist(batch).unwrap();
    mem.durable_state().clone()
}

/// A fresh file system holding `history`, every batch acknowledged.
pub fn acknowledged(history: &[Persist], options: WalOptions) -> (SimFs, WalStorage<SimFs>) {
    let fs = SimFs::new();
    let (mut wal, _) = WalStorage::open_on(fs.clone(), DIR, options).unwrap();
    fs.complete_syncs();
    for batch in history {
        wal.persist(batch).unwrap();
        fs.complete_syncs();
    }
    (fs, wal)
}

/// What the storage reads back from its files.
pub fn state(wal: &WalStorage<SimFs>) -> DurableState {
    wal.durable_state().expect("the state reads back")
}

/// Opens `fs` after a crash; must succeed, and recover what the files then hold.
pub fn reopen(fs: &SimFs, options: WalOptions, context: &str) -> (WalStorage<SimFs>, DurableState) {
    let (wal, recovered) = WalStorage::open_on(fs.clone(), DIR, options)
        .unwrap_or_else(|e| panic!("{context}: open after a crash failed: {e}"));
    assert_eq!(
        state(&wal),
        recovered,
        "{context}: open and a read-back disagree"
    );
    (wal, recovered)
}

/// The two crash models the exhaustive tests crash under.
pub const CRASH_MODELS: [(&str, CrashFaults); 2] = [
    ("synced only", CrashFaults::SYNCED_ONLY),
    ("all faults", CrashFaults::ALL),
];

/// One crash of [`crash_at_every_call`].
#[derive(Clone, Copy, Debug)]
pub struct Crash {
    /// Every call from this one on failed (EIO or ENOSPC), then the machine died.
    pub at: u64,
    /// The operation got through all its calls and returned `Ok`.
    pub finished: bool,
    /// The syncs of the calls that returned were completed before the crash (the process
    /// got past them): what they covered is durable.
    pub completed: bool,
    pub model: &'static str,
    pub faults: CrashFaults,
}

impl Crash {
    /// The operation returned `Ok` and its syncs completed: its effect must survive.
    pub fn acknowledged(&self) -> bool {
        self.finished && self.completed
    }
}

impl fmt::Display for Crash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "crash at call {} ({}, syncs completed: {})",
            self.at, self.model, self.completed
        )
    }
}

/// Crashes an operation at every file-system call it makes: for `k` = 0, 1, … until it gets
/// through all its calls, for each of [`CRASH_MODELS`], with and without the syncs of the
/// calls that returned completed: `setup` gives a fresh file system and what the operation
/// needs, `op` runs with every call from the `k`-th on failing (EIO and ENOSPC by turns; it
/// may only fail with such an injected error), the machine dies, and `check` gets the file
/// system a restart finds. Returns the number of calls the operation makes.
pub fn crash_at_every_call<S, T>(
    rng: &mut Rng,
    mut setup: impl FnMut() -> (SimFs, S),
    mut op: impl FnMut(S) -> Result<T, StorageError>,
    mut check: impl FnMut(SimFs, &Crash, &mut Rng),
) -> u64 {
    for k in 0.. {
        let mut finished = false;
        for (model, faults) in CRASH_MODELS {
            for completed in [true, false] {
                let (fs, needs) = setup();
                fs.fail_from(k, [Fault::Eio, Fault::Enospc][(k % 2) as usize]);
                let result = op(needs); // what it needs (a storage) is dropped with it
                finished = result.is_ok();
                if let Err(e) = &result {
                    assert!(
                        matches!(e, StorageError::Io { source, .. } if Fault::of(source).is_some()),
                        "failed without an injected error: {e}"
                    );
                }
                drop(result);
                if completed {
                    // The process got past every call that returned: those syncs are done.
                    fs.complete_syncs();
                }
                let crash = Crash {
                    at: k,
                    finished,
                    completed,
                    model,
                    faults,
                };
                let crashed = fs.crash(rng, &faults);
                check(crashed, &crash, rng);
            }
        }
        if finished {
            return k;
        }
        assert!(k < 500, "the operation makes over 500 calls");
    }
    unreachable!()
}

/// Crashes a recovery at every call it makes: runs `op` on copies of `crashed`, every call
/// from the `r`-th on failing with EIO, for `r` = 0, 1, … until it gets through, crashes each
/// copy under `faults` (its syncs not completed) and hands it to `check` with `r`.
pub fn crash_recovery_at_every_call<T, E>(
    crashed: &SimFs,
    faults: &CrashFaults,
    rng: &mut Rng,
    mut op: impl FnMut(&SimFs) -> Result<T, E>,
    mut check: impl FnMut(SimFs, u64),
) {
    for r in 0.. {
        let fs = crashed.duplicate();
        fs.fail_from(r, Fault::Eio);
        let done = op(&fs).is_ok();
        fs.clear_faults();
        check(fs.crash(rng, faults), r);
        if done {
            return;
        }
        assert!(r < 200, "the recovery makes too many calls");
    }
}
