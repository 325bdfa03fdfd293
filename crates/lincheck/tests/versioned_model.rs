//! Hand-built histories checked against the 2025 versioned key/value model (kvsrv.md C.3):
//! conditional puts, `ErrMaybe` in both readings, pending puts, and the answers the model
//! never allows.

use std::time::Duration;

use flotilla_lincheck::models::{
    KvError, VersionedInput, VersionedKvModel, VersionedOutput, VersionedState,
};
use flotilla_lincheck::{check, CheckResult, Explanation, Model, Operation};

type VOp = Operation<VersionedInput, VersionedOutput>;

const BUDGET: Duration = Duration::from_secs(10);

fn get(client: i64, key: &str, value: &str, version: u64, call: u64, ret: u64) -> VOp {
    Operation {
        client,
        input: VersionedInput::get(key),
        output: Some(VersionedOutput::get(value, version, KvError::Ok)),
        call,
        ret: Some(ret),
    }
}

fn put(client: i64, key: &str, value: &str, version: u64, error: KvError, span: (u64, u64)) -> VOp {
    Operation {
        client,
        input: VersionedInput::put(key, value, version),
        output: Some(VersionedOutput::put(error)),
        call: span.0,
        ret: Some(span.1),
    }
}

fn pending_put(client: i64, key: &str, value: &str, version: u64, call: u64) -> VOp {
    Operation {
        client,
        input: VersionedInput::put(key, value, version),
        output: None,
        call,
        ret: None,
    }
}

fn illegal(history: &[VOp]) -> Explanation {
    match check(&VersionedKvModel, history, BUDGET) {
        CheckResult::Illegal(explanation) => explanation,
        other => panic!("expected Illegal, got {other:?}"),
    }
}

fn assert_ok(history: &[VOp]) {
    assert_eq!(
        check(&VersionedKvModel, history, BUDGET),
        CheckResult::Ok,
        "{history:#?}"
    );
}

use KvError::{Maybe, NoKey, Ok as OK, Version};

#[test]
fn conditional_puts_in_sequence_are_linearizable() {
    assert_ok(&[
        put(1, "k", "a", 0, OK, (0, 1)),
        get(1, "k", "a", 1, 2, 3),
        put(1, "k", "b", 1, OK, (4, 5)),
        put(2, "k", "c", 1, Version, (6, 7)),
        get(2, "k", "b", 2, 8, 9),
    ]);
}

#[test]
fn of_two_concurrent_puts_on_one_version_one_wins() {
    assert_ok(&[
        put(1, "k", "a", 0, Version, (0, 10)),
        put(2, "k", "b", 0, OK, (1, 11)),
        get(3, "k", "b", 1, 12, 13),
    ]);
    // Both cannot win.
    illegal(&[
        put(1, "k", "a", 0, OK, (0, 10)),
        put(2, "k", "b", 0, OK, (1, 11)),
    ]);
}

#[test]
fn err_version_when_the_version_matched_is_illegal() {
    let explanation = illegal(&[put(1, "k", "a", 0, Version, (0, 1))]);
    assert_eq!(
        explanation.blocked[0].reason,
        r#"put "k" with version 0 answered ErrVersion but the version was 0 (it would have succeeded)"#
    );
}

#[test]
fn ok_for_a_put_with_a_stale_version_is_illegal() {
    let explanation = illegal(&[
        put(1, "k", "a", 0, OK, (0, 1)),
        put(2, "k", "b", 0, OK, (2, 3)),
    ]);
    assert_eq!(
        explanation.blocked[0].reason,
        r#"put "k" with version 0 answered OK but the version was 1"#
    );
    assert!(explanation
        .to_string()
        .contains(r#"#1 client 2 [2, 3] put("k", "b", version 0) -> OK"#));
}

#[test]
fn err_no_key_for_a_put_is_never_legal() {
    let explanation = illegal(&[put(1, "k", "a", 3, NoKey, (0, 1))]);
    assert!(explanation.blocked[0].reason.contains("ErrNoKey"));
}

#[test]
fn err_maybe_can_mean_applied() {
    assert_ok(&[
        put(1, "k", "a", 0, Maybe, (0, 10)),
        get(2, "k", "a", 1, 11, 12),
    ]);
}

#[test]
fn err_maybe_can_mean_not_applied() {
    // Client 2's first attempt was overtaken by client 1's put; its resend saw ErrVersion.
    assert_ok(&[
        put(1, "k", "a", 0, OK, (0, 5)),
        put(2, "k", "b", 0, Maybe, (1, 10)),
        get(3, "k", "a", 1, 11, 12),
    ]);
}

#[test]
fn a_stale_read_is_illegal() {
    let explanation = illegal(&[
        put(1, "k", "a", 0, OK, (0, 1)),
        put(1, "k", "b", 1, OK, (2, 3)),
        get(2, "k", "a", 1, 4, 5),
    ]);
    assert_eq!(explanation.state, r#""b" (version 2)"#);
    assert_eq!(
        explanation.blocked[0].reason,
        r#"get "k" returned "a" but the value was "b""#
    );
    assert!(explanation
        .to_string()
        .contains(r#"#2 client 2 [4, 5] get("k") -> ("a", version 1, OK)"#));
}

#[test]
fn a_get_answer_version_and_error_are_not_checked() {
    // A fresh key read as ErrNoKey with "" fits the initial state.
    assert_ok(&[Operation {
        client: 1,
        input: VersionedInput::get("k"),
        output: Some(VersionedOutput::get("", 0, NoKey)),
        call: 0,
        ret: Some(1),
    }]);
    assert_ok(&[get(1, "k", "", 77, 0, 1)]);
}

#[test]
fn a_pending_put_is_assumed_applied_when_a_later_read_needs_it() {
    assert_ok(&[
        put(1, "k", "a", 0, OK, (0, 1)),
        pending_put(2, "k", "b", 1, 2),
        get(3, "k", "b", 2, 10, 11),
    ]);
}

#[test]
fn a_pending_put_is_assumed_never_applied_when_no_read_sees_it() {
    assert_ok(&[
        pending_put(2, "k", "b", 0, 0),
        put(1, "k", "a", 0, OK, (1, 2)),
        get(3, "k", "a", 1, 10, 11),
        put(3, "k", "c", 1, OK, (12, 13)),
        get(3, "k", "c", 2, 14, 15),
    ]);
}

#[test]
fn a_pending_put_with_a_stale_version_changes_nothing() {
    let model = VersionedKvModel;
    let state = VersionedState {
        value: "a".into(),
        version: 1,
    };
    assert_eq!(
        model.step(&state, &VersionedInput::put("k", "b", 0), None),
        Some(state.clone())
    );
    // It cannot explain a read of its value.
    illegal(&[
        put(1, "k", "a", 0, OK, (0, 1)),
        pending_put(2, "k", "b", 0, 2),
        get(3, "k", "b", 2, 10, 11),
    ]);
}

#[test]
fn keys_are_independent() {
    let explanation = illegal(&[
        put(1, "x", "1", 0, OK, (0, 1)),
        put(1, "y", "1", 0, OK, (0, 1)),
        put(2, "y", "2", 0, OK, (2, 3)),
    ]);
    assert_eq!(explanation.partition_label.as_deref(), Some(r#"key "y""#));
}

#[test]
fn the_model_steps_as_the_spec_says() {
    let m = VersionedKvModel;
    let state = |value: &str, version| VersionedState {
        value: value.into(),
        version,
    };
    let put_out = |error| Some(VersionedOutput::put(error));
    let s = state("a", 1);
    assert_eq!(m.init(), state("", 0));
    // Get: value must match; version and error are ignored.
    let get_in = VersionedInput::get("k");
    assert_eq!(
        m.step(&s, &get_in, Some(&VersionedOutput::get("a", 9, NoKey))),
        Some(s.clone())
    );
    assert_eq!(
        m.step(&s, &get_in, Some(&VersionedOutput::get("b", 1, OK))),
        None
    );
    assert_eq!(m.step(&s, &get_in, None), Some(s.clone()));
    // Put, matching version: OK or ErrMaybe, and the state advances.
    let matching = VersionedInput::put("k", "b", 1);
    for error in [OK, Maybe] {
        assert_eq!(
            m.step(&s, &matching, put_out(error).as_ref()),
            Some(state("b", 2))
        );
    }
    for error in [Version, NoKey] {
        assert_eq!(m.step(&s, &matching, put_out(error).as_ref()), None);
    }
    assert_eq!(m.step(&s, &matching, None), Some(state("b", 2)));
    // Put, other version: ErrVersion or ErrMaybe, and nothing changes.
    let stale = VersionedInput::put("k", "b", 0);
    for error in [Version, Maybe] {
        assert_eq!(m.step(&s, &stale, put_out(error).as_ref()), Some(s.clone()));
    }
    for error in [OK, NoKey] {
        assert_eq!(m.step(&s, &stale, put_out(error).as_ref()), None);
    }
    assert_eq!(m.step(&s, &stale, None), Some(s.clone()));
}
