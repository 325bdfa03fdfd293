use std::collections::BTreeMap;

use proptest::prelude::*;

use super::*;

fn servers(gid: Gid) -> Vec<String> {
    vec![format!("{gid}a"), format!("{gid}b"), format!("{gid}c")]
}

fn join(config: &Config, gids: &[Gid]) -> Config {
    let groups: BTreeMap<Gid, Vec<String>> = gids.iter().map(|&g| (g, servers(g))).collect();
    config.join(&groups).unwrap()
}

/// Balanced: every shard at a group, counts within one (2024 `check`, 2025 `CheckConfig`).
fn assert_balanced(config: &Config) {
    config.validate().unwrap();
    if config.groups.is_empty() {
        assert!(config.shards.iter().all(|&g| g == NO_GROUP));
        return;
    }
    assert!(config.shards.iter().all(|g| config.groups.contains_key(g)));
    let counts: Vec<usize> = config
        .groups
        .keys()
        .map(|&g| config.shards_of(g).len())
        .collect();
    let (min, max) = (counts.iter().min().unwrap(), counts.iter().max().unwrap());
    assert!(max - min <= 1, "unbalanced: {counts:?} in {config:?}");
}

#[test]
fn the_spec_worked_example_of_the_2025_rebalance() {
    let c0 = Config::empty(12);
    let c1 = join(&c0, &[1]);
    assert_eq!((c1.num, c1.shards.clone()), (1, vec![1; 12]));
    let c2 = join(&c1, &[2]);
    assert_eq!(c2.shards, [2, 2, 2, 2, 2, 2, 1, 1, 1, 1, 1, 1]);
    let c3 = join(&c2, &[3]);
    assert_eq!(c3.shards, [3, 3, 2, 2, 2, 2, 3, 3, 1, 1, 1, 1]);
    let c4 = c3.leave(&[1]).unwrap();
    assert_eq!(c4.shards, [3, 3, 2, 2, 2, 2, 3, 3, 2, 3, 2, 3]);
    assert_eq!(c4.num, 4);
}

#[test]
fn refused_changes_name_the_reason_and_change_nothing() {
    let c1 = join(&Config::empty(10), &[1]);
    let again: BTreeMap<Gid, Vec<String>> = [(1, servers(1))].into();
    assert_eq!(c1.join(&again), Err(ConfigError::AlreadyJoined(1)));
    let taken: BTreeMap<Gid, Vec<String>> = [(2, vec!["1b".to_string()])].into();
    assert_eq!(
        c1.join(&taken),
        Err(ConfigError::ServerTaken {
            server: "1b".into(),
            owner: 1
        })
    );
    let zero: BTreeMap<Gid, Vec<String>> = [(0, servers(0))].into();
    assert_eq!(c1.join(&zero), Err(ConfigError::ReservedGid));
    assert_eq!(c1.join(&BTreeMap::new()), Err(ConfigError::Empty));
    assert_eq!(c1.leave(&[7]), Err(ConfigError::NotJoined(7)));
    assert_eq!(
        c1.moved(10, 1),
        Err(ConfigError::NoShard {
            shard: 10,
            shards: 10
        })
    );
    assert_eq!(c1.moved(3, 9), Err(ConfigError::NotJoined(9)));
    assert_eq!(c1.num, 1);
}

#[test]
fn the_last_leave_returns_every_shard_to_no_group() {
    let c = join(&Config::empty(10), &[1, 2]).leave(&[1, 2]).unwrap();
    assert_eq!(c.shards, vec![NO_GROUP; 10]);
    assert!(c.groups.is_empty());
}

#[test]
fn more_groups_than_shards_leave_the_extra_groups_without_shards() {
    let gids: Vec<Gid> = (1..=13).collect();
    let c = join(&Config::empty(10), &gids);
    assert_balanced(&c);
    assert_eq!(gids.iter().filter(|&&g| c.owns_any(g)).count(), 10);
}

#[test]
fn a_move_changes_one_shard_and_nothing_else() {
    let c = join(&Config::empty(10), &[1, 2]);
    let m = c.moved(0, 2).unwrap();
    assert_eq!(m.num, c.num + 1);
    for s in 1..10 {
        assert_eq!(m.shards[s], c.shards[s]);
    }
    assert_eq!(m.shards[0], 2);
}

#[test]
fn shardings_match_the_labs() {
    let by_2024: Vec<usize> = (0..10)
        .map(|k| Sharding::FirstByte10.shard_of(&k.to_string()))
        .collect();
    assert_eq!(by_2024, [8, 9, 0, 1, 2, 3, 4, 5, 6, 7]);
    assert_eq!(Sharding::FirstByte10.shard_of(""), 0);
    assert_eq!(Sharding::FirstByte10.shard_of("15"), 9);
    assert_eq!(
        Sharding::Fnv12.shard_of("k0"),
        10,
        "the spec: k0 is in shard 10"
    );
    let mut per_shard = [0; 12];
    for k in 0..60 {
        per_shard[Sharding::Fnv12.shard_of(&format!("k{k}"))] += 1;
    }
    assert!(per_shard.iter().all(|&n| n >= 3), "{per_shard:?}");
}

#[test]
fn json_round_trips_and_a_bad_configuration_is_refused() {
    let c = join(&Config::empty(12), &[1, 2]);
    assert_eq!(Config::from_json(&c.to_json()).unwrap(), c);
    let mut bad = c.clone();
    bad.shards[3] = 9;
    assert!(Config::from_json(&bad.to_json())
        .unwrap_err()
        .contains("shard 3"));
    assert!(Config::from_json("{").is_err());
}

#[derive(Clone, Debug)]
enum Change {
    Join(Vec<Gid>),
    Leave(Vec<usize>),
    Move(usize, usize),
}

fn change() -> impl Strategy<Value = Change> {
    prop_oneof![
        3 => proptest::collection::vec(1u64..30, 1..4).prop_map(Change::Join),
        2 => proptest::collection::vec(0usize..100, 1..3).prop_map(Change::Leave),
        1 => (0usize..12, 0usize..100).prop_map(|(s, g)| Change::Move(s, g)),
    ]
}

proptest! {
    /// Random histories on both shardings: every join or leave ends balanced, and moves
    /// only what it must when it starts from a balanced configuration (a `Move` unbalances
    /// on purpose, and the next change may then move other shards back).
    #[test]
    fn joins_and_leaves_balance_with_minimal_movement(
        changes in proptest::collection::vec(change(), 1..30),
        twelve in any::<bool>(),
    ) {
        let shards = if twelve { 12 } else { 10 };
        let mut config = Config::empty(shards);
        let mut history = vec![config.clone()];
        let mut balanced = true;
        for change in changes {
            let present: Vec<Gid> = config.groups.keys().copied().collect();
            let next = match change {
                Change::Join(gids) => {
                    let mut fresh: Vec<Gid> = gids.into_iter().filter(|g| !present.contains(g)).collect();
                    fresh.dedup();
                    if fresh.is_empty() { continue; }
                    let next = join(&config, &fresh);
                    for s in 0..shards {
                        if balanced && next.shards[s] != config.shards[s] {
                            prop_assert!(fresh.contains(&next.shards[s]) || config.groups.is_empty(),
                                "shard {s} moved to an old group: {config:?} -> {next:?}");
                        }
                    }
                    next
                }
                Change::Leave(picks) => {
                    if present.is_empty() { continue; }
                    let mut gone: Vec<Gid> = picks.iter().map(|p| present[p % present.len()]).collect();
                    gone.sort();
                    gone.dedup();
                    let next = config.leave(&gone).unwrap();
                    for s in 0..shards {
                        if balanced && next.shards[s] != config.shards[s] {
                            prop_assert!(gone.contains(&config.shards[s]) || config.shards[s] == NO_GROUP,
                                "shard {s} of a staying group moved: {config:?} -> {next:?}");
                        }
                    }
                    next
                }
                Change::Move(shard, pick) => {
                    if present.is_empty() { continue; }
                    let next = config.moved(shard % shards, present[pick % present.len()]).unwrap();
                    prop_assert_eq!(next.num, config.num + 1);
                    balanced &= next.shards == config.shards;
                    config = next;
                    history.push(config.clone());
                    continue;
                }
            };
            assert_balanced(&next);
            balanced = true;
            prop_assert_eq!(next.num, config.num + 1);
            config = next;
            history.push(config.clone());
        }
        // Historical configurations are kept as made (the caller's job), numbered in order.
        for (i, c) in history.iter().enumerate() {
            prop_assert_eq!(c.num, i as u64);
        }
    }
}

#[test]
fn validate_for_refuses_what_a_store_of_that_many_shards_cannot_use() {
    let c1 = join(&Config::empty(12), &[1, 2]);
    c1.validate_for(12).unwrap();
    Config::empty(12).validate_for(12).unwrap();
    assert!(c1
        .validate_for(10)
        .unwrap_err()
        .contains("12 shards, not 10"));
    let mut short = c1.clone();
    short.shards.pop();
    assert!(short.validate_for(12).is_err(), "11 shards");
    let mut none = c1.clone();
    none.shards.clear();
    assert!(none.validate_for(12).is_err(), "no shards");
    let mut stray = c1.clone();
    stray.shards[3] = 7;
    assert!(
        stray.validate_for(12).is_err(),
        "a shard at a group not in it"
    );
    let mut zero = c1.clone();
    zero.groups.insert(NO_GROUP, servers(0));
    assert!(zero.validate_for(12).is_err(), "group 0");
    let mut empty = c1.clone();
    empty.groups.insert(3, vec![]);
    assert!(empty.validate_for(12).is_err(), "a group without servers");
}
