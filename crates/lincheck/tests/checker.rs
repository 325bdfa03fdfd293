//! The search itself, apart from any key/value model: operations that never returned, the
//! time budget, the model defaults, and the checks on the inputs.

use std::time::{Duration, Instant};

use flotilla_lincheck::models::{KvInput, KvModel, KvOutput};
use flotilla_lincheck::{check, CheckResult, Model, Operation};

mod common;
use common::{Cmd, WriteOnce};

fn op(
    client: i64,
    input: Cmd,
    output: Option<Option<u8>>,
    call: u64,
    ret: Option<u64>,
) -> Operation<Cmd, Option<u8>> {
    Operation {
        client,
        input,
        output,
        call,
        ret,
    }
}

const BUDGET: Duration = Duration::from_secs(10);

#[test]
fn a_pending_operation_may_never_take_effect() {
    // The pending write of 2 can be placed neither before the write of 1 (the read saw 1)
    // nor after it (a second write is impossible): only "never" explains the history.
    let history = [
        op(1, Cmd::Write(1), Some(None), 0, Some(5)),
        op(2, Cmd::Write(2), None, 1, None),
        op(3, Cmd::Read, Some(Some(1)), 6, Some(7)),
    ];
    assert_eq!(check(&WriteOnce, &history, BUDGET), CheckResult::Ok);
    // Had it returned, the history would be illegal.
    let mut returned = history;
    returned[1].ret = Some(2);
    let CheckResult::Illegal(explanation) = check(&WriteOnce, &returned, BUDGET) else {
        panic!("a returned second write must be illegal");
    };
    // The default describers are used: Debug forms and "impossible in state".
    assert!(
        explanation
            .to_string()
            .contains("Write(2) -> None is impossible in state Some(1)"),
        "{explanation}"
    );
    assert_eq!(explanation.partition_label, None);
}

#[test]
fn a_pending_operation_may_take_effect_long_after_everything_else() {
    let history = [
        op(2, Cmd::Write(2), None, 0, None),
        op(3, Cmd::Read, Some(None), 10, Some(11)),
        op(3, Cmd::Read, Some(None), 12, Some(13)),
        op(3, Cmd::Read, Some(Some(2)), 14, Some(15)),
    ];
    assert_eq!(check(&WriteOnce, &history, BUDGET), CheckResult::Ok);
}

/// `count` puts of distinct values and one read of a value never written, all concurrent:
/// illegal, but only after trying every subset of puts before the read.
fn hard_history(count: usize) -> Vec<Operation<KvInput, KvOutput>> {
    let mut history: Vec<_> = (0..count)
        .map(|i| Operation {
            client: i as i64,
            input: KvInput::put("k", format!("v{i}")),
            output: Some(KvOutput::new("")),
            call: i as u64,
            ret: Some(1_000),
        })
        .collect();
    history.push(Operation {
        client: -1,
        input: KvInput::get("k"),
        output: Some(KvOutput::new("never written")),
        call: 0,
        ret: Some(1_000),
    });
    history
}

#[test]
fn a_hard_history_with_a_tiny_budget_is_unknown_and_quick() {
    let started = Instant::now();
    let result = check(&KvModel, &hard_history(40), Duration::from_millis(20));
    let took = started.elapsed();
    assert_eq!(result, CheckResult::Unknown);
    assert!(took < Duration::from_secs(2), "took {took:?}");
}

#[test]
fn the_same_hard_history_small_enough_is_decided() {
    assert!(check(&KvModel, &hard_history(8), BUDGET).is_illegal());
}

/// `hard_history(40)` on key "k" (it cannot be decided in any budget) and, on key "z", a put
/// of "x" then a read of "y" by one client: illegal, and found in a few steps.
fn hard_partition_then_small_illegal_one() -> Vec<Operation<KvInput, KvOutput>> {
    let mut history = hard_history(40);
    let op = |input, output: &str, call, ret| Operation {
        client: 7,
        input,
        output: Some(KvOutput::new(output)),
        call,
        ret: Some(ret),
    };
    history.push(op(KvInput::put("z", "x"), "", 0, 1));
    history.push(op(KvInput::get("z"), "y", 2, 3));
    history
}

#[test]
fn an_illegal_partition_after_one_that_runs_out_of_time_is_still_found() {
    let history = hard_partition_then_small_illegal_one();
    // With no budget at all the hard partition stops at the first clock reading; a small
    // budget lets it spend its share. Either way the small partition gets its turn.
    for budget in [Duration::ZERO, Duration::from_millis(100)] {
        let CheckResult::Illegal(explanation) = check(&KvModel, &history, budget) else {
            panic!("budget {budget:?}: the illegal partition of key \"z\" was not found");
        };
        assert_eq!(explanation.partition, 1, "{explanation}");
        assert_eq!(explanation.partitions, 2);
        assert_eq!(explanation.partition_label.as_deref(), Some("key \"z\""));
        assert_eq!(explanation.partition_size, 2);
        let text = explanation.to_string();
        assert!(
            text.contains("key \"z\", partition 2 of 2 (2 operations"),
            "{text}"
        );
        assert!(
            text.contains("#42 client 7 [2, 3] get(\"z\") -> \"y\""),
            "{text}"
        );
    }
}

#[test]
fn a_partition_out_of_time_beside_legal_ones_is_unknown() {
    let mut history = hard_partition_then_small_illegal_one();
    history.last_mut().unwrap().output = Some(KvOutput::new("x"));
    assert_eq!(
        check(&KvModel, &history, Duration::from_millis(20)),
        CheckResult::Unknown
    );
}

#[test]
fn a_search_shorter_than_one_clock_reading_finishes_even_with_no_budget() {
    let history = [
        op(1, Cmd::Write(1), Some(None), 0, Some(1)),
        op(2, Cmd::Read, Some(Some(1)), 2, Some(3)),
    ];
    assert_eq!(check(&WriteOnce, &history, Duration::ZERO), CheckResult::Ok);
}

#[test]
#[should_panic(expected = "operation 1 returns at 4, before its call at 5")]
fn an_operation_returning_before_its_call_is_rejected() {
    let history = [
        op(1, Cmd::Write(1), Some(None), 0, Some(1)),
        op(2, Cmd::Read, Some(Some(1)), 5, Some(4)),
    ];
    check(&WriteOnce, &history, BUDGET);
}

/// A model whose partition forgets the last operation.
struct Forgetful;

impl Model for Forgetful {
    type State = ();
    type Input = ();
    type Output = ();
    fn init(&self) {}
    fn step(&self, _: &(), _: &(), _: Option<&()>) -> Option<()> {
        Some(())
    }
    fn partition(&self, history: &[Operation<(), ()>]) -> Vec<Vec<usize>> {
        vec![(0..history.len() - 1).collect()]
    }
}

#[test]
#[should_panic(expected = "Model::partition left operation 1 out of every group")]
fn a_partition_must_cover_every_operation() {
    let unit = |call| Operation {
        client: 0,
        input: (),
        output: Some(()),
        call,
        ret: Some(call),
    };
    check(&Forgetful, &[unit(0), unit(1)], BUDGET);
}
