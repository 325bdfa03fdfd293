//! The 2025 shardkv1 scenarios (Lab 5A/5B/5C), run in the simulator. Each prints its seed
//! on failure; `SIM_SEED=<seed>` replays it.

use flotilla_shardkv::v2025::lab5::SCENARIOS;

macro_rules! tests {
    ($($name:ident)*) => {
        $(
            #[test]
            fn $name() {
                let scenario = SCENARIOS.iter().find(|s| s.name == stringify!($name)).unwrap();
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
    init_query_5a static_one_shard_group_5a join_basic_5a delete_basic_5a
    join_leave_basic_5a many_join_leave_reliable_5a many_join_leave_unreliable_5a
    shutdown_5a progress_shutdown_5a progress_join_5a one_concurrent_clerk_reliable_5a
    many_concurrent_clerk_reliable_5a one_concurrent_clerk_unreliable_5a
    many_concurrent_clerk_unreliable_5a join_leave_5b recover_ctrler_5b
    concurrent_reliable_5c acquire_lock_concurrent_unreliable_5c
    partition_controller_join_5c partition_recovery_reliable_no_clerk_5c
    partition_recovery_unreliable_no_clerk_5c partition_recovery_reliable_clerks_5c
    partition_recovery_unreliable_clerks_5c a_paused_controller_is_fenced
}
