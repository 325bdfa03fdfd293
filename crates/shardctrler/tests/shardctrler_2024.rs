//! The 2024 shard controller scenarios (Lab 5A), run in the simulator. Each prints its seed
//! on failure; `SIM_SEED=<seed>` replays it.

use flotilla_shardctrler::lab5a::SCENARIOS;

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

tests! { basic minimal_again multi }
