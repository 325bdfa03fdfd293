//! The 28 tests of 6.5840 Lab 3 (Raft), run in the simulator.
//! `cargo test --release -- _3a _3b _3c _3d` runs exactly these. Each prints its seed on
//! failure; `SIM_SEED=<seed>` replays it.

macro_rules! lab3_tests {
    ($($name:ident)*) => {
        $(
            #[test]
            fn $name() {
                flotilla_raft_sim::lab3::run_test(stringify!($name));
            }
        )*
    };
}

lab3_tests! {
    initial_election_3a re_election_3a many_elections_3a
    basic_agree_3b rpc_bytes_3b follower_failure_3b leader_failure_3b fail_agree_3b
    fail_no_agree_3b concurrent_starts_3b rejoin_3b backup_3b count_3b
    persist1_3c persist2_3c persist3_3c figure_8_3c unreliable_agree_3c
    figure_8_unreliable_3c reliable_churn_3c unreliable_churn_3c
    snapshot_basic_3d snapshot_install_3d snapshot_install_unreliable_3d
    snapshot_install_crash_3d snapshot_install_uncrash_3d snapshot_all_crash_3d
    snapshot_init_3d
}

#[test]
fn every_scenario_has_a_test() {
    // The macro list above and the scenario table must not drift apart.
    assert_eq!(flotilla_raft_sim::lab3::SCENARIOS.len(), 28);
}
