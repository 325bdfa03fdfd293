use super::*;

const SHARDING: Sharding = Sharding::FirstByte10;

fn config(num: u64, owners: [Gid; 10]) -> Config {
    let mut c = Config::empty(10);
    c.num = num;
    c.shards = owners.to_vec();
    for &g in &owners {
        if g != NO_GROUP {
            c.groups.insert(g, vec![format!("server-{g}-0")]);
        }
    }
    c
}

fn put(key: &str, value: &str, client: u64, seq: u64) -> GroupCommand {
    GroupCommand::Client(Request::Put {
        key: key.into(),
        value: value.into(),
        client,
        seq,
    })
}

fn append(key: &str, value: &str, client: u64, seq: u64) -> GroupCommand {
    GroupCommand::Client(Request::Append {
        key: key.into(),
        value: value.into(),
        client,
        seq,
    })
}

/// A `Get`'s answer, versions left out: `Kv(Value)` becomes `Kv(Value { version: 0 })`.
fn get(g: &ShardGroup, key: &str) -> GroupAnswer {
    match g.query(&GroupQuery::Get(key.into())) {
        GroupAnswer::Kv(Reply::Value { value, .. }) => {
            GroupAnswer::Kv(Reply::Value { value, version: 0 })
        }
        other => other,
    }
}

fn value(v: &str) -> GroupAnswer {
    GroupAnswer::Kv(Reply::Value {
        value: v.into(),
        version: 0,
    })
}

/// "2" is in shard 0; "3" in shard 1.
#[test]
fn a_shard_moves_with_its_duplicate_table_and_is_deleted_at_the_old_owner() {
    let mut a = ShardGroup::new(1, SHARDING);
    let mut b = ShardGroup::new(2, SHARDING);
    let c1 = config(1, [1; 10]);
    assert_eq!(a.apply(GroupCommand::Adopt(c1.clone())), GroupAnswer::Done);
    assert_eq!(b.apply(GroupCommand::Adopt(c1)), GroupAnswer::Done);
    assert_eq!(get(&b, "2"), GroupAnswer::WrongGroup);
    assert!(matches!(
        a.apply(append("2", "x", 9, 1)),
        GroupAnswer::Kv(_)
    ));

    let c2 = config(2, [2, 1, 1, 1, 1, 1, 1, 1, 1, 1]);
    a.apply(GroupCommand::Adopt(c2.clone()));
    b.apply(GroupCommand::Adopt(c2));
    assert_eq!(
        a.apply(append("2", "y", 9, 2)),
        GroupAnswer::WrongGroup,
        "frozen"
    );
    assert_eq!(get(&a, "2"), GroupAnswer::WrongGroup);
    assert_eq!(get(&b, "2"), GroupAnswer::WrongGroup, "awaited, not served");
    assert!(
        matches!(get(&a, "3"), GroupAnswer::Kv(_)),
        "the others are served"
    );
    assert_eq!(b.work().fetch, [(0, 1, vec!["server-1-0".to_string()])]);
    assert_eq!(a.work().frozen, [0]);

    assert_eq!(
        b.query(&GroupQuery::Fetch { num: 3, shard: 0 }),
        GroupAnswer::NotReady
    );
    let GroupAnswer::Shard(state) = a.query(&GroupQuery::Fetch { num: 2, shard: 0 }) else {
        panic!("a frozen shard is fetched")
    };
    b.apply(GroupCommand::Install {
        num: 2,
        shard: 0,
        state: state.clone(),
    });
    assert_eq!(get(&b, "2"), value("x"));
    // The clerk's retry of its first append (reply lost) applies once at the new owner.
    assert!(matches!(
        b.apply(append("2", "x", 9, 1)),
        GroupAnswer::Kv(_)
    ));
    assert_eq!(get(&b, "2"), value("x"));
    assert!(matches!(
        b.apply(append("2", "y", 9, 2)),
        GroupAnswer::Kv(_)
    ));
    assert_eq!(get(&b, "2"), value("xy"));
    // A duplicate install changes nothing.
    b.apply(GroupCommand::Install {
        num: 2,
        shard: 0,
        state,
    });
    assert_eq!(get(&b, "2"), value("xy"));
    assert_eq!(b.work().tell.len(), 1);

    let c3 = config(3, [2, 2, 1, 1, 1, 1, 1, 1, 1, 1]);
    assert_eq!(
        a.apply(GroupCommand::Adopt(c3.clone())),
        GroupAnswer::Refused,
        "not before the frozen shard is deleted"
    );
    assert_eq!(
        a.apply(GroupCommand::Delete { num: 2, shard: 0 }),
        GroupAnswer::Done
    );
    assert_eq!(a.keys(), 0);
    assert_eq!(
        a.apply(GroupCommand::Delete { num: 2, shard: 0 }),
        GroupAnswer::Done
    );
    assert_eq!(
        b.apply(GroupCommand::Adopt(c3.clone())),
        GroupAnswer::Refused
    );
    b.apply(GroupCommand::Confirmed { num: 2, shard: 0 });
    assert!(b.work().settled());
    assert_eq!(a.apply(GroupCommand::Adopt(c3.clone())), GroupAnswer::Done);
    assert_eq!(
        a.apply(GroupCommand::Adopt(c3)),
        GroupAnswer::Done,
        "repeat"
    );
    assert_eq!(
        a.apply(GroupCommand::Adopt(config(5, [1; 10]))),
        GroupAnswer::Refused,
        "a configuration out of order"
    );
}

#[test]
fn snapshots_keep_shards_states_and_sessions() {
    let mut a = ShardGroup::new(1, SHARDING);
    a.apply(GroupCommand::Adopt(config(1, [1; 10])));
    a.apply(put("2", "v", 4, 1));
    a.apply(GroupCommand::Adopt(config(
        2,
        [2, 1, 1, 1, 1, 1, 1, 1, 1, 1],
    )));
    let mut r = ShardGroup::new(1, SHARDING);
    r.restore(&a.snapshot()).unwrap();
    assert_eq!(r.shard_states(), a.shard_states());
    assert_eq!(r.work(), a.work());
    assert_eq!(r.snapshot(), a.snapshot());
    assert!(ShardGroup::new(2, SHARDING)
        .restore(&a.snapshot())
        .unwrap_err()
        .contains("group 1"));
    assert!(r.restore(b"junk").is_err());
}

#[test]
fn shards_given_to_no_group_wait_at_their_last_owner() {
    let mut a = ShardGroup::new(1, SHARDING);
    a.apply(GroupCommand::Adopt(config(1, [1; 10])));
    a.apply(put("2", "v", 4, 1));
    a.apply(GroupCommand::Adopt(config(2, [0; 10])));
    assert!(a.work().settled(), "no one will fetch them");
    a.apply(GroupCommand::Adopt(config(3, [1; 10])));
    assert_eq!(get(&a, "2"), value("v"));
}

/// A configuration from another process that this group cannot use is refused, not
/// indexed: it would panic every replica that applies it, at every restart (it is in the log).
#[test]
fn a_configuration_of_another_shape_is_refused_without_a_panic() {
    let mut g = ShardGroup::new(1, SHARDING);
    let mut short = config(1, [1; 10]);
    short.shards.truncate(7);
    let mut long = config(1, [1; 10]);
    long.shards.extend([1, 1]);
    let mut empty = config(1, [1; 10]);
    empty.shards.clear();
    let mut stray = config(1, [1; 10]);
    stray.shards[4] = 9;
    let mut serverless = config(1, [1; 10]);
    serverless.groups.insert(1, vec![]);
    for bad in [short, long, empty, stray, serverless] {
        assert_eq!(
            g.apply(GroupCommand::Adopt(bad.clone())),
            GroupAnswer::Refused,
            "{bad:?}"
        );
        assert_eq!(g.config().num, 0, "nothing changed");
        assert!(g.shard_states().is_empty());
    }
    assert_eq!(
        g.apply(GroupCommand::Adopt(config(1, [1; 10]))),
        GroupAnswer::Done
    );
    assert_eq!(g.shard_states().len(), 10);
}
