//! The 2025 kvraft1 scenarios (Lab 4B/4C), run in the simulator. Each prints its seed on
//! failure; `SIM_SEED=<seed>` replays it.

use flotilla_kvraft::lab4::{kvraft2025::SCENARIOS, run_test};

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
    basic_4b speed_4b concurrent_4b unreliable_4b one_partition_4b
    many_partitions_one_client_4b many_partitions_many_clients_4b persist_one_client_4b
    persist_concurrent_4b persist_concurrent_unreliable_4b persist_partition_4b
    persist_partition_unreliable_4b persist_partition_unreliable_linearizable_4b
    snapshot_rpc_4c snapshot_size_4c speed_4c snapshot_recover_4c
    snapshot_recover_many_clients_4c snapshot_unreliable_4c snapshot_unreliable_recover_4c
    snapshot_unreliable_recover_concurrent_partition_4c
    snapshot_unreliable_recover_concurrent_partition_linearizable_4c
    reads_append_nothing_to_the_log
}
