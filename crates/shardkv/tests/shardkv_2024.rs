//! The 2024 shardkv scenarios (Lab 5A/5B and the challenges), run in the simulator. Each
//! prints its seed on failure; `SIM_SEED=<seed>` replays it.

use flotilla_shardkv::lab5b::SCENARIOS;

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
    static_shards_5a rejection_5a join_leave_5b snapshot_5b miss_change_5b concurrent1_5b
    concurrent2_5b concurrent3_5b unreliable1_5b unreliable2_5b unreliable3_5b
    challenge1_delete challenge2_unaffected challenge2_partial
}
