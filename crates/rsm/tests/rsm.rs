//! The rsm scenarios (6.5840 Lab 4A, 2025, and TestSnapshot4C), run in the simulator. Each
//! prints its seed on failure; `SIM_SEED=<seed>` replays it.

use flotilla_rsm::scenarios::SCENARIOS;

macro_rules! tests {
    ($($name:ident)*) => {
        $(
            #[test]
            fn $name() {
                let scenario = SCENARIOS.iter().find(|s| s.name == stringify!($name)).expect("listed");
                flotilla_sim::run_test(stringify!($name), scenario.body);
            }
        )*
        #[test]
        fn every_scenario_has_a_test() {
            assert_eq!(SCENARIOS.len(), [$(stringify!($name)),*].len());
        }
    };
}

tests! {
    basic_4a concurrent_4a leader_failure_4a leader_partition_4a restart_replay_4a shutdown_4a
    restart_submit_4a snapshot_4c snapshot_at_a_small_maxraftstate_trims_the_log_and_restores
    a_follower_refuses_a_submission_and_names_the_leader
}
