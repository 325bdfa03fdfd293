//! The 2024 kvraft scenarios (Lab 4A/4B), run in the simulator. Each prints its seed on
//! failure; `SIM_SEED=<seed>` replays it.

use flotilla_kvraft::lab4::{kvraft2024::SCENARIOS, run_test};

macro_rules! tests {
    ($($name:ident)*) => {
        $(
            #[test]
            fn $name() {
                run_test(SCENARIOS, stringify!($name));
            }
        )*
        #[test]
        fn every_scenario_has_a_test() {
            assert_eq!(SCENARIOS.len(), [$(stringify!($name)),*].len());
        }
    };
}

tests! {
    basic_4a speed_4a concurrent_4a unreliable_4a unreliable_one_key_4a one_partition_4a
    many_partitions_one_client_4a many_partitions_many_clients_4a persist_one_client_4a
    persist_concurrent_4a persist_concurrent_unreliable_4a persist_partition_4a
    persist_partition_unreliable_4a persist_partition_unreliable_linearizable_4a
    snapshot_rpc_4b snapshot_size_4b speed_4b snapshot_recover_4b
    snapshot_recover_many_clients_4b snapshot_unreliable_4b snapshot_unreliable_recover_4b
    snapshot_unreliable_recover_concurrent_partition_4b
    snapshot_unreliable_recover_concurrent_partition_linearizable_4b
}
