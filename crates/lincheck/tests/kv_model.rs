//! Hand-built histories checked against the 2024 key/value model: legal ones (concurrency,
//! pending operations, the equal-time tie rule) and illegal ones (stale reads, duplicated
//! appends), with the explanation of each illegal one.

use std::time::Duration;

use flotilla_lincheck::models::{KvInput, KvModel, KvOutput};
use flotilla_lincheck::{check, CheckResult, Explanation, Model, Operation};

type KvOp = Operation<KvInput, KvOutput>;

const BUDGET: Duration = Duration::from_secs(10);

fn get(client: i64, key: &str, returned: &str, call: u64, ret: u64) -> KvOp {
    Operation {
        client,
        input: KvInput::get(key),
        output: Some(KvOutput::new(returned)),
        call,
        ret: Some(ret),
    }
}

fn put(client: i64, key: &str, value: &str, call: u64, ret: u64) -> KvOp {
    Operation {
        client,
        input: KvInput::put(key, value),
        output: Some(KvOutput::new("")),
        call,
        ret: Some(ret),
    }
}

fn append(client: i64, key: &str, value: &str, old: &str, call: u64, ret: u64) -> KvOp {
    Operation {
        client,
        input: KvInput::append(key, value),
        output: Some(KvOutput::new(old)),
        call,
        ret: Some(ret),
    }
}

/// An operation that never returned.
fn pending(client: i64, input: KvInput, call: u64) -> KvOp {
    Operation {
        client,
        input,
        output: None,
        call,
        ret: None,
    }
}

fn illegal(history: &[KvOp]) -> Explanation {
    match check(&KvModel, history, BUDGET) {
        CheckResult::Illegal(explanation) => explanation,
        other => panic!("expected Illegal, got {other:?}"),
    }
}

fn assert_ok(history: &[KvOp]) {
    let result = check(&KvModel, history, BUDGET);
    assert_eq!(result, CheckResult::Ok, "{history:#?}");
}

#[test]
fn the_empty_history_is_linearizable() {
    assert_ok(&[]);
}

#[test]
fn a_sequential_history_that_follows_the_model_is_linearizable() {
    assert_ok(&[
        get(1, "k", "", 0, 1),
        put(1, "k", "x", 2, 3),
        append(1, "k", "y", "x", 4, 5),
        get(1, "k", "xy", 6, 7),
        put(1, "k", "z", 8, 9),
        get(1, "k", "z", 10, 11),
    ]);
}

#[test]
fn overlapping_puts_may_take_effect_in_either_order() {
    // Both puts overlap the first get, which saw "x": x, then the get, then y.
    let history = [
        put(1, "k", "x", 0, 10),
        put(2, "k", "y", 1, 11),
        get(3, "k", "x", 2, 12),
        get(3, "k", "y", 13, 14),
    ];
    assert_ok(&history);
    // Seen the other way round by a later reader, it is just as fine.
    assert_ok(&[
        put(1, "k", "x", 0, 10),
        put(2, "k", "y", 1, 11),
        get(3, "k", "y", 12, 13),
    ]);
}

#[test]
fn two_sequential_reads_cannot_see_two_concurrent_writes_flip_back() {
    // After both puts returned, reads see y and then x: no order of the puts explains that.
    let explanation = illegal(&[
        put(1, "k", "x", 0, 10),
        put(2, "k", "y", 1, 11),
        get(3, "k", "y", 12, 13),
        get(3, "k", "x", 14, 15),
    ]);
    let text = explanation.to_string();
    assert!(
        text.contains(r#"get "k" returned "x" but the value was "y""#),
        "{text}"
    );
}

#[test]
fn concurrent_appends_with_consistent_old_values_are_linearizable() {
    // Three overlapping appends; their old values pin the order c, a, b.
    assert_ok(&[
        put(0, "k", "", 0, 1),
        append(1, "k", "a", "c", 2, 20),
        append(2, "k", "b", "ca", 3, 21),
        append(3, "k", "c", "", 4, 22),
        get(1, "k", "cab", 23, 24),
    ]);
}

#[test]
fn two_appends_that_both_saw_the_empty_value_are_illegal() {
    let explanation = illegal(&[
        append(1, "k", "a", "", 0, 10),
        append(2, "k", "b", "", 1, 11),
    ]);
    assert_eq!(explanation.prefix.len(), 1);
    assert_eq!(explanation.blocked.len(), 1);
    assert!(
        explanation.blocked[0]
            .reason
            .contains("returned old value \"\" but the value was"),
        "{explanation}"
    );
}

#[test]
fn a_duplicated_append_is_detected() {
    // The server applied client 1's append twice (a retry after its reply was lost).
    let explanation = illegal(&[
        append(1, "k", "x1 ", "", 0, 10),
        append(2, "k", "x2 ", "x1 ", 11, 12),
        get(3, "k", "x1 x2 x1 ", 13, 14),
    ]);
    assert_eq!(explanation.blocked.len(), 1);
    assert_eq!(explanation.blocked[0].op.index, 2);
    let text = explanation.to_string();
    assert!(
        text.contains(r#"get "k" returned "x1 x2 x1 " but the value was "x1 x2 ""#),
        "{text}"
    );
}

#[test]
fn a_stale_read_is_illegal_and_the_explanation_names_it() {
    let history = [
        put(1, "k", "x", 0, 1),
        append(2, "k", "y", "x", 2, 3),
        get(3, "k", "x", 4, 5),
    ];
    let explanation = illegal(&history);
    assert_eq!(explanation.partition_label.as_deref(), Some(r#"key "k""#));
    let prefix: Vec<usize> = explanation.prefix.iter().map(|op| op.index).collect();
    assert_eq!(prefix, [0, 1]);
    assert_eq!(explanation.state, r#""xy""#);
    assert_eq!(explanation.closing.index, 2);
    assert_eq!(explanation.blocked.len(), 1);
    assert_eq!(explanation.blocked[0].op.index, 2);
    assert_eq!(
        explanation.blocked[0].reason,
        r#"get "k" returned "x" but the value was "xy""#
    );

    let text = explanation.to_string();
    for expected in [
        r#"key "k""#,
        r#"#0 client 1 [0, 1] put("k", "x")"#,
        r#"#1 client 2 [2, 3] append("k", "y") -> "x""#,
        r#"#2 client 3 [4, 5] get("k") -> "x": get "k" returned "x" but the value was "xy""#,
        r#"state after it: "xy""#,
    ] {
        assert!(text.contains(expected), "missing {expected:?} in:\n{text}");
    }
}

#[test]
fn a_first_operation_that_is_already_impossible_gives_an_empty_prefix() {
    let explanation = illegal(&[get(1, "k", "ghost", 0, 1)]);
    assert!(explanation.prefix.is_empty());
    assert_eq!(explanation.state, r#""""#);
    assert!(explanation
        .to_string()
        .contains("no operation can even come first"));
}

#[test]
fn a_pending_put_is_assumed_applied_when_a_later_read_needs_it() {
    assert_ok(&[
        put(1, "k", "x", 0, 5),
        pending(2, KvInput::put("k", "y"), 1),
        get(3, "k", "y", 10, 11),
    ]);
    // A pending append is needed to explain the final value.
    assert_ok(&[
        put(1, "k", "x", 0, 5),
        pending(2, KvInput::append("k", "y"), 6),
        get(3, "k", "xy", 10, 11),
    ]);
}

#[test]
fn a_pending_put_is_assumed_never_applied_when_no_read_sees_it() {
    assert_ok(&[
        put(1, "k", "x", 0, 5),
        pending(2, KvInput::put("k", "y"), 1),
        get(3, "k", "x", 10, 11),
        get(3, "k", "x", 12, 13),
        append(3, "k", "z", "x", 14, 15),
        get(3, "k", "xz", 16, 17),
    ]);
}

#[test]
fn a_pending_operation_cannot_take_effect_before_its_call() {
    // The read at [0, 1] sees "y", but the pending put of "y" was only called at 2.
    let explanation = illegal(&[
        get(1, "k", "y", 0, 1),
        pending(2, KvInput::put("k", "y"), 2),
    ]);
    assert_eq!(explanation.blocked[0].op.index, 0);
}

#[test]
fn a_pending_get_constrains_nothing() {
    assert_ok(&[pending(1, KvInput::get("k"), 0), put(2, "k", "x", 1, 2)]);
}

#[test]
fn events_at_the_same_instant_overlap_calls_before_returns() {
    // The get is called at the instant the put returns: they overlap, so the get may come
    // first and see "".
    assert_ok(&[put(1, "k", "x", 0, 5), get(2, "k", "", 5, 6)]);
    // One tick later it may not.
    illegal(&[put(1, "k", "x", 0, 5), get(2, "k", "", 6, 7)]);
}

#[test]
fn keys_are_checked_independently_and_the_failing_key_is_named() {
    let history = [
        put(1, "a", "1", 0, 1),
        put(2, "b", "2", 0, 1),
        get(1, "a", "1", 2, 3),
        get(2, "b", "stale", 2, 3),
        put(3, "c", "3", 0, 9),
    ];
    assert_eq!(
        KvModel.partition(&history),
        vec![vec![0, 2], vec![1, 3], vec![4]]
    );
    let explanation = illegal(&history);
    assert_eq!(explanation.partition, 1);
    assert_eq!(explanation.partitions, 3);
    assert_eq!(explanation.partition_size, 2);
    assert_eq!(explanation.partition_label.as_deref(), Some(r#"key "b""#));
    assert_eq!(explanation.blocked[0].op.index, 3);
    assert!(explanation
        .to_string()
        .contains(r#"key "b", partition 2 of 3"#));
}

#[test]
fn a_value_written_to_one_key_cannot_be_read_from_another() {
    illegal(&[put(1, "a", "x", 0, 1), get(2, "b", "x", 2, 3)]);
}

#[test]
fn the_model_steps_as_the_spec_says() {
    let m = KvModel;
    let out = |value: &str| KvOutput::new(value);
    assert_eq!(m.init(), "");
    // Get: legal iff the output equals the state.
    assert_eq!(
        m.step(&"v".into(), &KvInput::get("k"), Some(&out("v"))),
        Some("v".into())
    );
    assert_eq!(
        m.step(&"v".into(), &KvInput::get("k"), Some(&out("w"))),
        None
    );
    assert_eq!(
        m.step(&"v".into(), &KvInput::get("k"), None),
        Some("v".into())
    );
    // Put: always legal.
    assert_eq!(
        m.step(&"v".into(), &KvInput::put("k", "w"), Some(&out("junk"))),
        Some("w".into())
    );
    // Append: returns the old value, then appends.
    assert_eq!(
        m.step(&"v".into(), &KvInput::append("k", "w"), Some(&out("v"))),
        Some("vw".into())
    );
    assert_eq!(
        m.step(&"v".into(), &KvInput::append("k", "w"), Some(&out(""))),
        None
    );
    assert_eq!(
        m.step(&"v".into(), &KvInput::append("k", "w"), None),
        Some("vw".into())
    );
}

#[test]
fn the_explanation_prefers_a_prefix_without_pending_effects() {
    // The pending append of "z" could be placed before the stale get too; the explanation
    // shows the state without it and says why it does not help.
    let explanation = illegal(&[
        put(1, "k", "x", 0, 1),
        append(2, "k", "y", "x", 2, 3),
        pending(4, KvInput::append("k", "z"), 2),
        get(3, "k", "x", 4, 5),
    ]);
    let prefix: Vec<usize> = explanation.prefix.iter().map(|op| op.index).collect();
    assert_eq!(prefix, [0, 1]);
    assert_eq!(explanation.state, r#""xy""#);
    let blocked: Vec<usize> = explanation.blocked.iter().map(|b| b.op.index).collect();
    assert_eq!(blocked, [2, 3]);
    assert!(
        explanation.blocked[0].reason.starts_with("never returned"),
        "{explanation}"
    );
    assert!(explanation
        .to_string()
        .contains(r#"#2 client 4 [2, never returned] append("k", "z") -> ?"#));
}
