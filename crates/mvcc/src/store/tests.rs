use super::*;
use proptest::prelude::*;

fn put(s: &mut MvccStore, k: &str, v: &str) -> Vec<Event> {
    s.put(&PutRequest {
        key: k.into(),
        value: v.into(),
        ..Default::default()
    })
    .unwrap()
    .1
}

fn get(s: &MvccStore, k: &str) -> Option<KeyValue> {
    s.range(&RangeRequest {
        range: KeyRange::key(k),
        ..Default::default()
    })
    .unwrap()
    .kvs
    .pop()
}

fn all(s: &MvccStore, revision: Revision) -> Result<RangeResponse, MvccError> {
    s.range(&RangeRequest {
        range: KeyRange::prefix(""),
        revision,
        ..Default::default()
    })
}

fn keys(r: &RangeResponse) -> Vec<String> {
    r.kvs
        .iter()
        .map(|kv| String::from_utf8(kv.key.clone()).unwrap())
        .collect()
}

#[test]
fn revisions_versions_and_create_revisions_follow_etcd() {
    let mut s = MvccStore::new();
    assert_eq!(s.revision(), 1, "an empty store is at revision 1");
    put(&mut s, "foo", "a");
    let kv = get(&s, "foo").unwrap();
    assert_eq!((kv.create_revision, kv.mod_revision, kv.version), (2, 2, 1));
    put(&mut s, "foo", "b");
    let kv = get(&s, "foo").unwrap();
    assert_eq!((kv.create_revision, kv.mod_revision, kv.version), (2, 3, 2));
    let (deleted, events) = s.delete_range(&DeleteRangeRequest {
        range: KeyRange::key("foo"),
        prev_kv: true,
    });
    assert_eq!((deleted.deleted, s.revision()), (1, 4));
    assert_eq!(deleted.prev_kvs[0].value, b"b");
    assert_eq!(events[0].kind, EventKind::Delete);
    assert_eq!(events[0].kv.mod_revision, 4);
    let (nothing, events) = s.delete_range(&DeleteRangeRequest {
        range: KeyRange::key("foo"),
        prev_kv: false,
    });
    assert_eq!(
        (nothing.deleted, s.revision()),
        (0, 4),
        "deleting nothing makes no revision"
    );
    assert!(events.is_empty());
    put(&mut s, "foo", "c");
    let kv = get(&s, "foo").unwrap();
    assert_eq!(
        (kv.create_revision, kv.mod_revision, kv.version),
        (5, 5, 1),
        "created again"
    );
    // The past stays readable.
    let old = s
        .range(&RangeRequest {
            range: KeyRange::key("foo"),
            revision: 3,
            ..Default::default()
        })
        .unwrap();
    assert_eq!(old.kvs[0].value, b"b");
    let gone = s
        .range(&RangeRequest {
            range: KeyRange::key("foo"),
            revision: 4,
            ..Default::default()
        })
        .unwrap();
    assert!(gone.kvs.is_empty());
    assert!(matches!(
        s.range(&RangeRequest {
            revision: 6,
            ..Default::default()
        }),
        Err(MvccError::FutureRevision {
            requested: 6,
            current: 5
        })
    ));
}

#[test]
fn ranges_prefixes_limits_sorting_and_filters() {
    let mut s = MvccStore::new();
    for (k, v) in [
        ("a", "3"),
        ("b/1", "1"),
        ("b/2", "2"),
        ("b/3", "0"),
        ("c", "9"),
    ] {
        put(&mut s, k, v);
    }
    let prefix = |limit| RangeRequest {
        range: KeyRange::prefix("b/"),
        limit,
        ..Default::default()
    };
    let r = s.range(&prefix(0)).unwrap();
    assert_eq!(keys(&r), ["b/1", "b/2", "b/3"]);
    assert_eq!((r.count, r.more), (3, false));
    let r = s.range(&prefix(2)).unwrap();
    assert_eq!(keys(&r), ["b/1", "b/2"]);
    assert_eq!((r.count, r.more), (3, true));
    let from_b = s
        .range(&RangeRequest {
            range: KeyRange {
                key: b"b".to_vec(),
                range_end: vec![0],
            },
            ..Default::default()
        })
        .unwrap();
    assert_eq!(keys(&from_b), ["b/1", "b/2", "b/3", "c"]);
    let by_value_desc = s
        .range(&RangeRequest {
            range: KeyRange::prefix(""),
            sort_order: SortOrder::Descend,
            sort_target: SortTarget::Value,
            ..Default::default()
        })
        .unwrap();
    assert_eq!(keys(&by_value_desc), ["c", "a", "b/2", "b/1", "b/3"]);
    let no_order_by_mod = s
        .range(&RangeRequest {
            range: KeyRange::prefix(""),
            sort_target: SortTarget::Mod,
            limit: 2,
            ..Default::default()
        })
        .unwrap();
    assert_eq!(
        keys(&no_order_by_mod),
        ["a", "b/1"],
        "a target without an order ascends"
    );
    let counted = s
        .range(&RangeRequest {
            range: KeyRange::prefix(""),
            count_only: true,
            ..Default::default()
        })
        .unwrap();
    assert_eq!((counted.count, counted.kvs.len()), (5, 0));
    let keys_only = s
        .range(&RangeRequest {
            range: KeyRange::prefix("b/"),
            keys_only: true,
            ..Default::default()
        })
        .unwrap();
    assert!(keys_only.kvs.iter().all(|kv| kv.value.is_empty()));
    let newer = s
        .range(&RangeRequest {
            range: KeyRange::prefix(""),
            min_mod_revision: 4,
            max_mod_revision: 5,
            ..Default::default()
        })
        .unwrap();
    assert_eq!(keys(&newer), ["b/2", "b/3"]);
    assert_eq!(
        newer.count, 5,
        "etcd counts the range's keys before the revision filters"
    );
    assert_eq!(KeyRange::prefix(vec![b'a', 0xff]).range_end, b"b");
    assert_eq!(KeyRange::prefix(vec![0xff]).range_end, [0]);
}

fn cmp(key: &str, target: CompareTarget, result: CompareResult) -> Compare {
    Compare {
        range: KeyRange::key(key),
        target,
        result,
    }
}

fn put_op(k: &str, v: &str) -> RequestOp {
    RequestOp::Put(PutRequest {
        key: k.into(),
        value: v.into(),
        ..Default::default()
    })
}

#[test]
fn transactions_compare_then_run_one_branch_at_one_revision() {
    let mut s = MvccStore::new();
    put(&mut s, "x", "1");
    // Compare-and-set: the value is "1", so x becomes "2" and y is created, at revision 3.
    let txn = TxnRequest {
        compare: vec![cmp(
            "x",
            CompareTarget::Value(b"1".to_vec()),
            CompareResult::Equal,
        )],
        success: vec![
            put_op("x", "2"),
            put_op("y", "new"),
            RequestOp::Range(RangeRequest {
                range: KeyRange::key("x"),
                ..Default::default()
            }),
        ],
        failure: vec![put_op("failed", "1")],
    };
    let (r, events) = s.txn(&txn).unwrap();
    assert!(r.succeeded);
    assert_eq!(s.revision(), 3, "one revision for the whole transaction");
    assert_eq!(events.len(), 2);
    match &r.responses[2] {
        ResponseOp::Range(read) => {
            assert_eq!(read.kvs[0].value, b"2", "reads see the txn's writes")
        }
        other => panic!("{other:?}"),
    }
    // The same again fails the compare: the failure branch runs.
    let (r, _) = s.txn(&txn).unwrap();
    assert!(!r.succeeded);
    assert!(get(&s, "failed").is_some());
    // An absent key: version 0; no value compare holds.
    let absent = TxnRequest {
        compare: vec![
            cmp("nope", CompareTarget::Version(0), CompareResult::Equal),
            cmp("nope", CompareTarget::Create(0), CompareResult::Equal),
        ],
        success: vec![put_op("created", "1")],
        failure: vec![],
    };
    assert!(s.txn(&absent).unwrap().0.succeeded);
    let value_of_absent = TxnRequest {
        compare: vec![cmp(
            "nope",
            CompareTarget::Value(Vec::new()),
            CompareResult::NotEqual,
        )],
        ..Default::default()
    };
    assert!(!s.txn(&value_of_absent).unwrap().0.succeeded);
    // Nested: the inner compare is judged on the store before the outer transaction.
    let before = s.revision();
    let nested = TxnRequest {
        compare: vec![],
        success: vec![
            put_op("n", "1"),
            RequestOp::Txn(TxnRequest {
                compare: vec![cmp("n", CompareTarget::Version(0), CompareResult::Equal)],
                success: vec![put_op("inner", "saw-no-n")],
                failure: vec![put_op("inner", "saw-n")],
            }),
        ],
        failure: vec![],
    };
    let (r, _) = s.txn(&nested).unwrap();
    assert!(matches!(&r.responses[1], ResponseOp::Txn(t) if t.succeeded));
    assert_eq!(get(&s, "inner").unwrap().value, b"saw-no-n");
    assert_eq!(s.revision(), before + 1);
}

#[test]
fn a_compare_over_an_empty_range_compares_one_absent_key() {
    let mut s = MvccStore::new();
    put(&mut s, "z", "1");
    let empty = KeyRange {
        key: b"a".to_vec(),
        range_end: b"c".to_vec(),
    };
    let holds = |s: &mut MvccStore, target: CompareTarget, result: CompareResult| {
        let txn = TxnRequest {
            compare: vec![Compare {
                range: empty.clone(),
                target,
                result,
            }],
            success: vec![],
            failure: vec![],
        };
        s.txn(&txn).unwrap().0.succeeded
    };
    // etcd: an empty range is compared as a zero KeyValue, and fails every value compare.
    assert!(holds(
        &mut s,
        CompareTarget::Version(0),
        CompareResult::Equal
    ));
    assert!(!holds(
        &mut s,
        CompareTarget::Version(0),
        CompareResult::Greater
    ));
    assert!(!holds(&mut s, CompareTarget::Mod(5), CompareResult::Equal));
    assert!(!holds(
        &mut s,
        CompareTarget::Value(b"1".to_vec()),
        CompareResult::Equal
    ));
    assert!(!holds(
        &mut s,
        CompareTarget::Value(b"1".to_vec()),
        CompareResult::NotEqual
    ));
}

#[test]
fn a_transaction_that_would_fail_is_refused_whole() {
    let mut s = MvccStore::new();
    put(&mut s, "a", "1");
    let before = s.clone();
    let dup = TxnRequest {
        success: vec![put_op("k", "1"), put_op("k", "2")],
        ..Default::default()
    };
    assert_eq!(s.txn(&dup), Err(MvccError::DuplicateKey));
    let put_in_deleted = TxnRequest {
        success: vec![
            RequestOp::DeleteRange(DeleteRangeRequest {
                range: KeyRange::prefix("k"),
                prev_kv: false,
            }),
            put_op("k1", "2"),
        ],
        ..Default::default()
    };
    assert_eq!(s.txn(&put_in_deleted), Err(MvccError::DuplicateKey));
    let both_branches_of_a_nested_one = TxnRequest {
        success: vec![RequestOp::Txn(TxnRequest {
            compare: vec![],
            success: vec![put_op("k", "1")],
            failure: vec![put_op("k", "2")],
        })],
        ..Default::default()
    };
    assert!(
        s.clone().txn(&both_branches_of_a_nested_one).is_ok(),
        "only one branch runs"
    );
    let unknown_lease = TxnRequest {
        success: vec![
            put_op("b", "1"),
            RequestOp::Put(PutRequest {
                key: b"c".to_vec(),
                lease: 42,
                ..Default::default()
            }),
        ],
        ..Default::default()
    };
    assert_eq!(s.txn(&unknown_lease), Err(MvccError::LeaseNotFound(42)));
    let too_many = TxnRequest {
        success: (0..=MAX_TXN_OPS)
            .map(|i| put_op(&format!("k{i}"), "v"))
            .collect(),
        ..Default::default()
    };
    assert_eq!(s.txn(&too_many), Err(MvccError::TooManyOps));
    assert_eq!(s, before, "refused transactions changed nothing");
}

#[test]
fn leases_own_their_keys_and_a_revoke_deletes_them_at_one_revision() {
    let mut s = MvccStore::new();
    let id = s.lease_grant(0, 10).unwrap();
    assert_eq!(s.lease_grant(id, 10), Err(MvccError::LeaseExists(id)));
    for k in ["l1", "l2"] {
        s.put(&PutRequest {
            key: k.into(),
            value: b"v".to_vec(),
            lease: id,
            ..Default::default()
        })
        .unwrap();
    }
    put(&mut s, "other", "v");
    // A deleted key leaves its lease.
    s.put(&PutRequest {
        key: b"l3".to_vec(),
        lease: id,
        ..Default::default()
    })
    .unwrap();
    s.delete_range(&DeleteRangeRequest {
        range: KeyRange::key("l3"),
        prev_kv: false,
    });
    s.check().unwrap();
    // Put again without the lease: detached.
    put(&mut s, "l2", "w");
    assert_eq!(s.lease(id).unwrap().keys, vec![b"l1".to_vec()]);
    s.check().unwrap();
    let before = s.revision();
    let events = s.lease_revoke(id).unwrap();
    assert_eq!((events.len(), s.revision()), (1, before + 1));
    assert!(get(&s, "l1").is_none() && get(&s, "l2").is_some());
    assert_eq!(s.lease_revoke(id), Err(MvccError::LeaseNotFound(id)));
    let ignore = s.put(&PutRequest {
        key: b"missing".to_vec(),
        ignore_value: true,
        ..Default::default()
    });
    assert_eq!(ignore.unwrap_err(), MvccError::KeyNotFound);
    s.check().unwrap();
}

#[test]
fn a_lease_id_the_store_picked_is_never_picked_again() {
    let mut s = MvccStore::new();
    let mut ids = Vec::new();
    for _ in 0..3 {
        let id = s.lease_grant(0, 10).unwrap();
        s.lease_revoke(id).unwrap();
        ids.push(id);
    }
    assert_eq!(
        ids,
        [1, 2, 3],
        "a revoked lease's id is not handed out again"
    );
    assert_eq!(s.lease_grant(5, 10).unwrap(), 5);
    assert_eq!(s.lease_grant(0, 10).unwrap(), 4);
    assert_eq!(s.lease_grant(0, 10).unwrap(), 6, "an id in use is skipped");
}

#[test]
fn compaction_refuses_older_reads_and_keeps_newer_ones() {
    let mut s = MvccStore::new();
    put(&mut s, "a", "1"); // 2
    put(&mut s, "a", "2"); // 3
    put(&mut s, "b", "1"); // 4
    s.delete_range(&DeleteRangeRequest {
        range: KeyRange::key("b"),
        prev_kv: false,
    }); // 5
    put(&mut s, "a", "3"); // 6
    let at4 = all(&s, 4).unwrap();
    s.compact(4).unwrap();
    assert_eq!(all(&s, 4).unwrap(), at4);
    assert!(matches!(
        all(&s, 3),
        Err(MvccError::Compacted {
            requested: 3,
            compacted: 4
        })
    ));
    assert!(matches!(s.compact(4), Err(MvccError::Compacted { .. })));
    assert!(matches!(
        s.compact(9),
        Err(MvccError::FutureRevision { .. })
    ));
    s.compact(6).unwrap();
    assert_eq!(keys(&all(&s, 6).unwrap()), ["a"]);
    assert_eq!(s.keys.len(), 1, "the deleted key's history is gone");
    s.check().unwrap();
}

/// One step of a random history over a few keys.
#[derive(Clone, Debug)]
enum Step {
    Put(u8, u8),
    Delete(u8, u8),
    Txn(u8, u8, u8),
    Compact(u8),
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        4 => (0u8..6, 0u8..4).prop_map(|(k, v)| Step::Put(k, v)),
        1 => (0u8..6, 0u8..3).prop_map(|(k, n)| Step::Delete(k, n)),
        2 => (0u8..6, 0u8..4, 0u8..6).prop_map(|(k, v, other)| Step::Txn(k, v, other)),
        1 => (0u8..8).prop_map(Step::Compact),
    ]
}

fn key(k: u8) -> Vec<u8> {
    vec![b'k', b'0' + k]
}

proptest! {
    /// Against a model (the current map with etcd's counters), through random puts, range
    /// deletes, compare-and-set transactions and compactions: every read at every
    /// revision not compacted answers what it answered when that revision was current;
    /// the events of each change, replayed, are what `events_since` gives; the invariants
    /// hold after every step.
    #[test]
    fn random_histories_agree_with_the_model_and_with_their_past(steps in prop::collection::vec(step(), 1..60)) {
        let mut s = MvccStore::new();
        let mut model: BTreeMap<Vec<u8>, KeyValue> = BTreeMap::new();
        let mut seen: BTreeMap<Revision, RangeResponse> = BTreeMap::new();
        let mut emitted: Vec<(Revision, Event)> = Vec::new();
        seen.insert(1, all(&s, 0).unwrap());
        for step in steps {
            let before = s.revision();
            let events = match step {
                Step::Put(k, v) => {
                    let e = put(&mut s, std::str::from_utf8(&key(k)).unwrap(), &v.to_string());
                    let rev = s.revision();
                    let old = model.get(&key(k)).cloned();
                    model.insert(key(k), KeyValue {
                        key: key(k),
                        create_revision: old.as_ref().map_or(rev, |o| o.create_revision),
                        mod_revision: rev,
                        version: old.map_or(1, |o| o.version + 1),
                        value: v.to_string().into_bytes(),
                        lease: 0,
                    });
                    e
                }
                Step::Delete(k, n) => {
                    let mut end = key(k);
                    *end.last_mut().unwrap() += n;
                    let range = KeyRange { key: key(k), range_end: if n == 0 { Vec::new() } else { end } };
                    let (r, e) = s.delete_range(&DeleteRangeRequest { range: range.clone(), prev_kv: false });
                    let doomed: Vec<_> = model.keys().filter(|mk| range.contains(mk)).cloned().collect();
                    prop_assert_eq!(r.deleted as usize, doomed.len());
                    for d in doomed { model.remove(&d); }
                    e
                }
                Step::Txn(k, v, other) => {
                    // If k's value is v: put k = v+1 and delete `other`; else put other = v.
                    let txn = TxnRequest {
                        compare: vec![cmp(std::str::from_utf8(&key(k)).unwrap(), CompareTarget::Value(v.to_string().into_bytes()), CompareResult::Equal)],
                        success: vec![put_op(std::str::from_utf8(&key(k)).unwrap(), &(v + 1).to_string()), RequestOp::DeleteRange(DeleteRangeRequest { range: KeyRange::key(key(other)), prev_kv: false })],
                        failure: vec![put_op(std::str::from_utf8(&key(other)).unwrap(), &v.to_string())],
                    };
                    match s.txn(&txn) {
                        Err(MvccError::DuplicateKey) => { prop_assert_eq!(k, other); Vec::new() }
                        Err(e) => return Err(TestCaseError::fail(format!("{e}"))),
                        Ok((r, e)) => {
                            let rev = s.revision();
                            let holds = model.get(&key(k)).is_some_and(|kv| kv.value == v.to_string().into_bytes());
                            prop_assert_eq!(r.succeeded, holds);
                            let set = |mk: Vec<u8>, value: String, model: &mut BTreeMap<Vec<u8>, KeyValue>| {
                                let old = model.get(&mk).cloned();
                                model.insert(mk.clone(), KeyValue {
                                    key: mk,
                                    create_revision: old.as_ref().map_or(rev, |o| o.create_revision),
                                    mod_revision: rev,
                                    version: old.map_or(1, |o| o.version + 1),
                                    value: value.into_bytes(),
                                    lease: 0,
                                });
                            };
                            if holds {
                                set(key(k), (v + 1).to_string(), &mut model);
                                model.remove(&key(other));
                            } else {
                                set(key(other), v.to_string(), &mut model);
                            }
                            e
                        }
                    }
                }
                Step::Compact(back) => {
                    let target = s.revision() - back as i64;
                    match s.compact(target) {
                        Ok(()) => prop_assert!(target > 0),
                        Err(MvccError::Compacted { .. }) => prop_assert!(target <= s.compacted()),
                        Err(e) => return Err(TestCaseError::fail(format!("{e}"))),
                    }
                    Vec::new()
                }
            };
            s.check().map_err(TestCaseError::fail)?;
            prop_assert!(s.revision() == before || s.revision() == before + 1);
            prop_assert_eq!(s.revision() > before, !events.is_empty());
            let now = all(&s, 0).unwrap();
            prop_assert_eq!(&now.kvs, &model.values().cloned().collect::<Vec<_>>());
            seen.insert(s.revision(), now);
            emitted.extend(events.into_iter().map(|e| (s.revision(), e)));
            for (rev, then) in &seen {
                match all(&s, *rev) {
                    Ok(again) => prop_assert_eq!(&again, then, "revision {} read differently", rev),
                    Err(MvccError::Compacted { .. }) => prop_assert!(*rev < s.compacted()),
                    Err(e) => return Err(TestCaseError::fail(format!("{e}"))),
                }
            }
            // Replaying from the compaction point on gives the events the changes made.
            let from = s.compacted().max(1);
            let replayed = s.events_since(&KeyRange::prefix(""), from).unwrap();
            // (As in etcd, a delete at the compaction revision itself is compacted away.)
            let expected: Vec<Event> = emitted.iter().filter(|(r, e)| *r > from || (*r == from && (e.kind == EventKind::Put || s.compacted() == 0))).map(|(_, e)| {
                let mut e = e.clone();
                // The previous value of a key may be compacted away.
                if e.prev_kv.as_ref().is_some_and(|p| p.mod_revision < s.compacted()) {
                    e.prev_kv = None;
                }
                e
            }).collect();
            let mut replayed_cmp = replayed.clone();
            for e in &mut replayed_cmp {
                if e.prev_kv.as_ref().is_some_and(|p| p.mod_revision < s.compacted()) {
                    e.prev_kv = None;
                }
            }
            prop_assert_eq!(replayed_cmp, expected);
        }
        let mut restored = MvccStore::new();
        flotilla_rsm::StateMachine::restore(&mut restored, &flotilla_rsm::StateMachine::snapshot(&s)).unwrap();
        prop_assert_eq!(restored, s);
    }
}
