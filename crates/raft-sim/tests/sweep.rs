//! The randomized fault sweep over a few seeds (CI runs thousands through `flotilla sim
//! raft`), and the determinism property: the same seed gives the same run.
//!
//! `SWEEP_SEEDS=N` runs N seeds instead of 20 (the mutation-testing command in TESTING.md
//! uses it).

use flotilla_raft_sim::{lab3, sweep};

#[test]
fn sweep_seeds_hold_every_invariant() {
    let first = flotilla_sim::seed_from_env("sweep");
    let count = match std::env::var("SWEEP_SEEDS") {
        Ok(text) => text
            .parse()
            .unwrap_or_else(|_| panic!("SWEEP_SEEDS={text:?} is not a number")),
        Err(_) => 20,
    };
    let summary = sweep::sweep(first, count, false, |_, _| {});
    assert!(
        summary.failures.is_empty(),
        "failing seeds: {:?}",
        summary.failures
    );
}

#[test]
fn same_seed_same_trace() {
    let scenario = lab3::find("figure_8_unreliable_3c").unwrap();
    let seed = flotilla_sim::seed_from_env("determinism");
    let (first, _) = lab3::run_scenario(scenario, seed, false);
    let (second, _) = lab3::run_scenario(scenario, seed, false);
    assert_eq!(first, second, "two runs of seed {seed} differ");
    assert!(
        first.1 > 1_000,
        "a Figure 8 run traces many events, got {}",
        first.1
    );
    let (other, _) = lab3::run_scenario(scenario, seed + 1, false);
    assert_ne!(
        first.0, other.0,
        "different seeds should give different runs"
    );
}
