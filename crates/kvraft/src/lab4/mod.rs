//! The Lab 4 scenarios of 6.5840 (`../shared/spec/kvraft.md`), step by step, on the
//! simulator: [`kvraft2025`] (4B, and 4C with snapshots) and [`kvraft2024`] (4A, and 4B with
//! snapshots). The rsm scenarios (2025 4A and TestSnapshot4C) live beside the rsm, in
//! [`flotilla_rsm::scenarios`]; [`SUITES`] lists all three tables.
//!
//! Every concurrent history is checked by the linearizability checker; limits are the
//! spec's, in virtual time (a "fast enough" limit is about the protocol's round trips here,
//! real speed is `flotilla bench kvraft`). Each scenario is a pure function of its seed.

use std::time::Duration;

use flotilla_sim::{sleep, with_rng};

use crate::sim::KvRaftSim;

pub mod kvraft2024;
pub mod kvraft2025;

pub use flotilla_rsm::scenarios::Scenario;

/// The whole Lab 4 suite: (suite name, its scenarios).
pub const SUITES: &[(&str, &[Scenario])] = &[
    ("rsm", flotilla_rsm::scenarios::SCENARIOS),
    ("kvraft2025", kvraft2025::SCENARIOS),
    ("kvraft2024", kvraft2024::SCENARIOS),
];

/// 6.5840's `ElectionTimeout` for the KV tests.
pub const ELECTION_TIMEOUT: Duration = Duration::from_secs(1);

/// Runs the scenario `name` of `table` as a test: seed from `SIM_SEED` or the name, the
/// 120 s virtual budget, the replay line on failure.
pub fn run_test(table: &[Scenario], name: &str) {
    let scenario = table
        .iter()
        .find(|s| s.name == name)
        .unwrap_or_else(|| panic!("no scenario {name}"));
    flotilla_sim::run_test(name, scenario.body);
}

/// Runs `scenario` at `seed` (panics if it fails); returns its virtual duration.
pub fn run_scenario(scenario: &Scenario, seed: u64) -> Duration {
    let rt = flotilla_sim::Runtime::new(seed);
    rt.block_on((scenario.body)());
    rt.now()
}

/// Waits up to `limit` for `flag`; true if it was set in time.
pub(crate) async fn set_within(flag: &std::cell::Cell<bool>, limit: Duration) -> bool {
    let t0 = flotilla_sim::now();
    while !flag.get() && flotilla_sim::now() - t0 < limit {
        sleep(Duration::from_millis(10)).await;
    }
    flag.get()
}

pub(crate) fn rand_below(n: usize) -> usize {
    with_rng(|r| r.below(n as u64) as usize)
}

/// 6.5840's `Partitioner`: until `stop` is set, split the servers at random into two sides
/// every election timeout plus up to 200 ms.
pub(crate) async fn partitioner(sim: KvRaftSim, stop: std::rc::Rc<std::cell::Cell<bool>>) {
    while !stop.get() {
        let (mut a, mut b) = (Vec::new(), Vec::new());
        for i in 0..sim.n() {
            if rand_below(2) == 0 {
                a.push(i)
            } else {
                b.push(i)
            }
        }
        sim.partition(&a, &b);
        let pause = ELECTION_TIMEOUT + Duration::from_millis(rand_below(200) as u64);
        sleep(pause).await;
    }
}
