//! # flotilla-sim: a deterministic discrete-event simulator
//!
//! Every Flotilla scenario test runs here: many "servers" and "clients" as async tasks on one
//! thread, in **virtual time**, with faults drawn from one seeded random number generator.
//! Nothing reads the real clock or the OS RNG, tasks run in a fixed order, and so the same
//! seed gives the same run, event for event — a failing test prints its seed and replays from
//! it (`SIM_SEED=…`).
//!
//! Pieces:
//! - [`Runtime`]: the executor. Tasks are polled in FIFO order of wake-up; when none is
//!   runnable, virtual time jumps to the earliest timer. [`sleep`], [`spawn`], [`now`] and
//!   [`with_rng`] work inside any task of the running simulation.
//! - [`sync`]: an unbounded channel between tasks.
//! - [`net::Network`]: the network model of 6.5840's labrpc — lost requests and replies,
//!   short random delays, long delays, long reordering, per-link enable flags, crashed
//!   servers, and per-server RPC and byte counters.
//! - [`rpc::RpcNetwork`]: the same model for request/response calls from clients (clerks),
//!   with labrpc's failure timing: a call to a cut-off or dead server fails after
//!   U[0, 100) ms, or U[0, 7000) ms with long delays on.
//! - [`disk::Disk`]: durable state plus writes that are lost unless synced before a crash.
//! - [`fs::SimFs`]: a file system (files, directories, fsync, rename) that keeps at a crash
//!   only what was synced — data and directory entries — and can tear, zero-fill or flip bits
//!   in what was not, or fail any call with EIO/ENOSPC; for running real storage code.
//! - [`Rng`]: xoshiro256** seeded through SplitMix64.
//! - [`seed_from_env`]: the seed convention shared by all tests.
//!
//! Every event that matters (a message sent, dropped or delivered, a crash, an applied entry)
//! is folded into a running trace hash ([`trace`]), so a determinism test can run a scenario
//! twice and compare one number.

pub mod disk;
pub mod fs;
pub mod net;
mod rng;
pub mod rpc;
mod runtime;
pub mod sync;

pub use rng::Rng;
pub use runtime::{
    now, sleep, sleep_until, spawn, timeout, trace, trace_hash, with_rng, Elapsed, JoinHandle,
    Runtime,
};

/// The seed a test should use: `SIM_SEED` from the environment when set (decimal or 0x-hex),
/// otherwise a fixed seed derived from `name`, so plain `cargo test` is reproducible too.
pub fn seed_from_env(name: &str) -> u64 {
    match std::env::var("SIM_SEED") {
        Ok(text) => {
            parse_seed(&text).unwrap_or_else(|| panic!("SIM_SEED={text:?} is not a number"))
        }
        Err(_) => name.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| {
            (h ^ b as u64).wrapping_mul(0x100_0000_01b3)
        }),
    }
}

/// Runs `f`; if it panics, prints the seed and how to replay the test, then re-raises.
pub fn replay_on_panic<R>(name: &str, seed: u64, f: impl FnOnce() -> R) -> R {
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)) {
        Ok(out) => out,
        Err(panic) => {
            eprintln!("{name} FAILED at seed {seed}; replay with: SIM_SEED={seed} cargo test --release -- --exact {name}");
            std::panic::resume_unwind(panic)
        }
    }
}

/// Every 6.5840 tester fails a test that runs longer than this; here it is virtual time.
pub const TEST_TIME_LIMIT: std::time::Duration = std::time::Duration::from_secs(120);

/// The standard simulation test: seed from [`seed_from_env`], a fresh [`Runtime`], `body`
/// run to completion, the 120 s (virtual) limit checked, and the replay command printed if
/// anything fails. Returns the run's trace hash and event count.
///
/// A body still running at the limit fails there (a test waiting for progress that never
/// comes fails in virtual time instead of hanging).
pub fn run_test<F, Fut>(name: &str, body: F) -> (u64, u64)
where
    F: FnOnce() -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    let seed = seed_from_env(name);
    replay_on_panic(name, seed, || {
        let rt = Runtime::new(seed);
        let finished = rt.block_on(timeout(TEST_TIME_LIMIT, body()));
        assert!(
            finished.is_ok(),
            "{name} did not finish within 120 seconds (virtual)"
        );
        assert!(
            rt.now() <= TEST_TIME_LIMIT,
            "{name} took longer than 120 seconds (virtual: {:?})",
            rt.now()
        );
        rt.trace_hash()
    })
}

/// Parses a seed written in decimal or as `0x…` hex.
pub fn parse_seed(text: &str) -> Option<u64> {
    let text = text.trim();
    match text.strip_prefix("0x") {
        Some(hex) => u64::from_str_radix(hex, 16).ok(),
        None => text.parse().ok(),
    }
}

/// The outcome of a run over many seeds.
#[derive(Debug)]
pub struct SweepSummary {
    pub seeds: u64,
    /// Each failing seed and its message.
    pub failures: Vec<(u64, String)>,
    pub wall: std::time::Duration,
}

/// Runs `run` on `count` consecutive seeds from `first`, calling `on_seed` after each; with
/// `fail_fast`, stops after the first failure. A seed fails when `run` returns `Err` or
/// panics (then the message is the panic's; the default hook is silenced meanwhile, so only
/// `on_seed` reports).
pub fn sweep_seeds<R>(
    first: u64,
    count: u64,
    fail_fast: bool,
    run: impl Fn(u64) -> Result<R, String>,
    mut on_seed: impl FnMut(u64, &Result<R, String>),
) -> SweepSummary {
    let started = std::time::Instant::now();
    let hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(|_| {}));
    let mut summary = SweepSummary {
        seeds: 0,
        failures: Vec::new(),
        wall: std::time::Duration::ZERO,
    };
    for seed in first..first.saturating_add(count) {
        let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| run(seed)))
            .unwrap_or_else(|panic| Err(panic_message(&*panic)));
        on_seed(seed, &result);
        summary.seeds += 1;
        if let Err(e) = result {
            summary.failures.push((seed, e));
            if fail_fast {
                break;
            }
        }
    }
    std::panic::set_hook(hook);
    summary.wall = started.elapsed();
    summary
}

/// The text of a caught panic.
pub fn panic_message(panic: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = panic.downcast_ref::<&str>() {
        s.to_string()
    } else if let Some(s) = panic.downcast_ref::<String>() {
        s.clone()
    } else {
        "panic with a non-string payload".to_string()
    }
}
