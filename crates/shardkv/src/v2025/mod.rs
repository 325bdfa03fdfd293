//! 6.5840 2025's sharded store (`shardkv1`), the second design of the issue: passive shard
//! groups that freeze, install and delete shards when told ([`shardgrp`]), a controller
//! that is a library keeping its configurations in a versioned KV store and moving the
//! shards itself, fenced by configuration numbers and able to finish a change another
//! controller left half done ([`ctrler`]), the store on the simulator ([`sim`]) and the
//! 2025 scenarios ([`lab5`]).
pub mod ctrler;
pub mod lab5;
pub mod shardgrp;
pub mod sim;
