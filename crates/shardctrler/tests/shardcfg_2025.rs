//! 2025 shardcfg's `TestBasic` (`../shared/spec/shardkv.md` §4.1): joins and leaves with
//! the 2025 sharding (12 shards) give valid, balanced configurations, and the server lists
//! stay as given.

use std::collections::{BTreeMap, BTreeSet};

use flotilla_shardctrler::{Config, Gid, Sharding, NO_GROUP};

/// 2025's `CheckConfig(t, groups)`.
fn check_config(config: &Config, gids: &[Gid]) {
    let present: BTreeSet<Gid> = config.groups.keys().copied().collect();
    assert_eq!(present, gids.iter().copied().collect(), "wrong groups");
    if gids.is_empty() {
        assert!(
            config.shards.iter().all(|&g| g == NO_GROUP),
            "shards without groups"
        );
        return;
    }
    let mut counts: BTreeMap<Gid, usize> = gids.iter().map(|&g| (g, 0)).collect();
    for (shard, gid) in config.shards.iter().enumerate() {
        *counts
            .get_mut(gid)
            .unwrap_or_else(|| panic!("shard {shard} at {gid}, not a group")) += 1;
    }
    let (min, max) = (
        counts.values().min().unwrap(),
        counts.values().max().unwrap(),
    );
    assert!(max - min <= 1, "unbalanced: {counts:?}");
}

fn names(names: &[&str]) -> Vec<String> {
    names.iter().map(|s| s.to_string()).collect()
}

#[test]
fn basic() {
    let empty = Config::empty(Sharding::Fnv12.shards());
    check_config(&empty, &[]);
    let one = empty.join(&[(1, names(&["x", "y", "z"]))].into()).unwrap();
    assert_eq!(one.num, 1);
    check_config(&one, &[1]);
    let two = one.join(&[(2, names(&["a", "b", "c"]))].into()).unwrap();
    check_config(&two, &[1, 2]);
    assert_eq!(two.groups[&1], names(&["x", "y", "z"]));
    assert_eq!(two.groups[&2], names(&["a", "b", "c"]));
    let left = two.leave(&[1]).unwrap();
    check_config(&left, &[2]);
    let none = left.leave(&[2]).unwrap();
    check_config(&none, &[]);
    assert_eq!(none.num, 4);
}
