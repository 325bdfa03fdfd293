//! The JSON Lines history format: exact field names, round trips, the error for each kind of
//! malformed line, and `check_records` choosing the model from the form.

use std::time::Duration;

use flotilla_lincheck::history::{
    check_records, read_history, write_history, HistoryError, HistoryOp, HistoryRecord,
    RecordProblem,
};
use flotilla_lincheck::models::{KvError, KvInput, KvOutput, VersionedInput, VersionedOutput};
use flotilla_lincheck::{CheckResult, Operation};
use proptest::prelude::*;

const BUDGET: Duration = Duration::from_secs(10);

fn read(text: &str) -> Result<Vec<HistoryRecord>, HistoryError> {
    read_history(text.as_bytes())
}

fn write(records: &[HistoryRecord]) -> String {
    let mut out = Vec::new();
    write_history(&mut out, records).expect("writing to memory");
    String::from_utf8(out).expect("JSON is UTF-8")
}

fn read_error(text: &str) -> String {
    match read(text) {
        Ok(records) => panic!("expected an error, read {records:?}"),
        Err(error) => error.to_string(),
    }
}

const PLAIN: &str = r#"{"client":3,"op":"put","key":"k","value":"x","call":10,"return":14}
{"client":1,"op":"append","key":"k","value":"y","output":"x","call":12,"return":15}
{"client":2,"op":"get","key":"k","value":"","output":"xy","call":16,"return":18}
{"client":4,"op":"append","key":"k","value":"z","call":17,"return":null}
"#;

const VERSIONED: &str = r#"{"client":1,"op":"put","key":"k","value":"a","call":1,"return":3,"version":0,"error":"OK"}
{"client":2,"op":"put","key":"k","value":"b","call":2,"return":9,"version":0,"error":"ErrMaybe"}
{"client":3,"op":"get","key":"k","value":"","output":"a","call":4,"return":5,"version":1,"error":"OK"}
"#;

#[test]
fn the_documented_examples_read_and_check() {
    let plain = read(PLAIN).unwrap();
    assert_eq!(plain.len(), 4);
    assert_eq!(
        plain[1],
        HistoryRecord {
            client: 1,
            op: HistoryOp::Append,
            key: "k".into(),
            value: "y".into(),
            output: Some("x".into()),
            call: 12,
            ret: Some(15),
            version: None,
            error: None,
        }
    );
    assert_eq!(plain[3].ret, None);
    assert_eq!(check_records(&plain, BUDGET).unwrap(), CheckResult::Ok);

    let versioned = read(VERSIONED).unwrap();
    assert_eq!(versioned[1].error, Some(KvError::Maybe));
    assert_eq!(versioned[2].version, Some(1));
    assert_eq!(check_records(&versioned, BUDGET).unwrap(), CheckResult::Ok);
}

#[test]
fn records_are_written_with_exactly_the_documented_fields() {
    let records = read(PLAIN).unwrap();
    assert_eq!(write(&records), PLAIN);
    let records = read(VERSIONED).unwrap();
    assert_eq!(write(&records), VERSIONED);
}

#[test]
fn blank_lines_are_skipped_and_optional_fields_default() {
    let text = "\n{\"client\":1,\"op\":\"get\",\"key\":\"k\",\"call\":1,\"return\":2}\n   \n";
    let records = read(text).unwrap();
    assert_eq!(records.len(), 1);
    assert_eq!(records[0].value, "");
    assert_eq!(records[0].output, None);
}

#[test]
fn a_malformed_line_is_named_by_number() {
    let text = format!("{}{{\"client\":1,\"op\":", PLAIN);
    let message = read_error(&text);
    assert!(message.starts_with("line 5: malformed JSON"), "{message}");
    // serde_json's own "line 1" would be misleading; only the column is kept.
    assert!(!message.contains("at line 1"), "{message}");
}

#[test]
fn each_kind_of_bad_line_has_its_own_message() {
    let cases = [
        (
            r#"{"client":1,"op":"delete","key":"k","call":1,"return":2}"#,
            r#"line 1: unknown op "delete" (expected "get", "put" or "append")"#,
        ),
        (
            r#"{"client":1,"op":"get","key":"k","return":2}"#,
            r#"line 1: missing field "call""#,
        ),
        (
            r#"{"client":1,"op":"get","key":"k","call":1}"#,
            r#"line 1: missing field "return""#,
        ),
        (
            r#"{"op":"get","key":"k","call":1,"return":2}"#,
            r#"line 1: missing field "client""#,
        ),
        (
            r#"{"client":1,"key":"k","call":1,"return":2}"#,
            r#"line 1: missing field "op""#,
        ),
        (
            r#"{"client":1,"op":"get","call":1,"return":2}"#,
            r#"line 1: missing field "key""#,
        ),
        (
            r#"{"client":1,"op":"get","key":"k","call":5,"return":4}"#,
            r#"line 1: "return" 4 is before "call" 5"#,
        ),
        (
            r#"{"client":1,"op":"get","key":"k","output":"x","call":5,"return":null}"#,
            r#"line 1: the operation never returned ("return": null) but has an answer field "output""#,
        ),
        (
            r#"{"client":1,"op":"put","key":"k","version":0,"error":"OK","call":5,"return":null}"#,
            r#"line 1: the operation never returned ("return": null) but has an answer field "error""#,
        ),
        (
            r#"{"client":1,"op":"get","key":"k","version":3,"call":5,"return":null}"#,
            r#"line 1: the operation never returned ("return": null) but has an answer field "version""#,
        ),
        (
            r#"{"client":1,"op":"put","key":"k","version":0,"error":"ErrWrongLeader","call":1,"return":2}"#,
            r#"line 1: unknown error "ErrWrongLeader" (expected "OK", "ErrNoKey", "ErrVersion" or "ErrMaybe")"#,
        ),
        (
            r#"{"client":1,"op":"append","key":"k","value":"v","version":0,"call":1,"return":2}"#,
            r#"line 1: an append cannot have "version" or "error""#,
        ),
        (
            r#"{"client":1,"op":"put","key":"k","value":"v","error":"OK","call":1,"return":2}"#,
            r#"line 1: a put with an "error" is versioned and needs its "version""#,
        ),
    ];
    for (line, expected) in cases {
        let message = read_error(line);
        assert!(
            message.starts_with(expected),
            "for {line}\n got {message}\nwant {expected}"
        );
    }
}

#[test]
fn type_errors_and_unknown_fields_are_malformed_json() {
    for (line, detail) in [
        (
            r#"{"client":1,"op":"get","key":"k","call":-1,"return":2}"#,
            "invalid value: integer `-1`",
        ),
        (
            r#"{"client":1,"op":"get","key":"k","call":1,"retrun":2}"#,
            "unknown field `retrun`",
        ),
        (r#"[1, 2]"#, "invalid type"),
        (
            r#"{"client":1,"op":"get","key":"k","call":1,"return":2} trailing"#,
            "trailing characters",
        ),
    ] {
        let message = read_error(line);
        assert!(message.starts_with("line 1: malformed JSON"), "{message}");
        assert!(message.contains(detail), "{message} lacks {detail:?}");
    }
}

#[test]
fn an_unreadable_line_is_an_io_error_with_its_number() {
    let bytes = b"\n\xff\xfe\n";
    match read_history(&bytes[..]) {
        Err(HistoryError::Io { line: 2, .. }) => {}
        other => panic!("expected an i/o error on line 2, got {other:?}"),
    }
}

#[test]
fn check_records_uses_the_versioned_model_for_versioned_records() {
    // A first put answering ErrVersion is impossible in the 2025 model.
    let text = r#"{"client":1,"op":"put","key":"k","value":"a","call":1,"return":3,"version":0,"error":"ErrVersion"}"#;
    let CheckResult::Illegal(explanation) = check_records(&read(text).unwrap(), BUDGET).unwrap()
    else {
        panic!("expected Illegal");
    };
    assert!(
        explanation.to_string().contains("answered ErrVersion"),
        "{explanation}"
    );
}

#[test]
fn check_records_finds_a_stale_read_in_the_plain_form() {
    let text = format!(
        "{PLAIN}{}",
        r#"{"client":5,"op":"get","key":"k","output":"x","call":20,"return":21}"#
    );
    let CheckResult::Illegal(explanation) = check_records(&read(&text).unwrap(), BUDGET).unwrap()
    else {
        panic!("expected Illegal");
    };
    assert_eq!(explanation.blocked.last().unwrap().op.index, 4);
    assert!(explanation
        .to_string()
        .contains(r#"get "k" returned "x" but the value was "xy""#));
}

#[test]
fn check_records_reports_a_small_illegal_key_beside_one_that_runs_out_of_time() {
    // Key "a": 40 concurrent puts and a read of a value never written, more than any budget
    // can decide. Key "b": a put then a read that missed it, decided at once.
    let mut text = String::new();
    for client in 0..40 {
        text += &format!(
            "{{\"client\":{client},\"op\":\"put\",\"key\":\"a\",\"value\":\"v{client}\",\"call\":{client},\"return\":1000}}\n"
        );
    }
    text += r#"{"client":40,"op":"get","key":"a","output":"never written","call":0,"return":1000}
{"client":41,"op":"put","key":"b","value":"x","call":1,"return":2}
{"client":41,"op":"get","key":"b","output":"","call":3,"return":4}
"#;
    let records = read(&text).unwrap();
    let CheckResult::Illegal(explanation) = check_records(&records, Duration::ZERO).unwrap() else {
        panic!("the stale read of key \"b\" was not reported");
    };
    let text = explanation.to_string();
    assert!(
        text.starts_with("history is not linearizable: key \"b\", partition 2 of 2"),
        "{text}"
    );
    assert!(
        text.contains(r#"get "b" returned "" but the value was "x""#),
        "{text}"
    );
}

#[test]
fn check_records_rejects_mixed_forms() {
    let text = format!("{VERSIONED}{PLAIN}");
    let error = check_records(&read(&text).unwrap(), BUDGET).unwrap_err();
    assert!(matches!(
        error,
        HistoryError::MixedForms {
            versioned: 1,
            plain: 4
        }
    ));
    assert!(
        error.to_string().contains("a history uses one form"),
        "{error}"
    );
}

#[test]
fn check_records_validates_records_built_in_code() {
    let mut records = read(PLAIN).unwrap();
    records[2].ret = Some(1);
    let error = check_records(&records, BUDGET).unwrap_err();
    assert!(matches!(
        error,
        HistoryError::Record {
            record: 3,
            problem: RecordProblem::ReturnBeforeCall { call: 16, ret: 1 }
        }
    ));
    assert_eq!(
        error.to_string(),
        r#"record 3: "return" 1 is before "call" 16"#
    );
}

#[test]
fn gets_alone_count_as_either_form() {
    let text = r#"{"client":1,"op":"get","key":"k","call":1,"return":2}
{"client":1,"op":"get","key":"k","output":"","call":3,"return":4,"version":0,"error":"ErrNoKey"}"#;
    assert_eq!(
        check_records(&read(text).unwrap(), BUDGET).unwrap(),
        CheckResult::Ok
    );
}

#[test]
fn operations_convert_to_records_and_check_the_same() {
    let kv = [
        Operation {
            client: 1,
            input: KvInput::append("k", "a"),
            output: Some(KvOutput::new("")),
            call: 0,
            ret: Some(2),
        },
        Operation {
            client: 2,
            input: KvInput::append("k", "b"),
            output: None,
            call: 1,
            ret: None,
        },
        Operation {
            client: 3,
            input: KvInput::get("k"),
            output: Some(KvOutput::new("ab")),
            call: 3,
            ret: Some(4),
        },
    ];
    let records: Vec<HistoryRecord> = kv.iter().map(HistoryRecord::from).collect();
    assert_eq!(records[1].output, None);
    assert_eq!(check_records(&records, BUDGET).unwrap(), CheckResult::Ok);

    let versioned = [
        Operation {
            client: 1,
            input: VersionedInput::put("k", "a", 0),
            output: Some(VersionedOutput::put(KvError::Ok)),
            call: 0,
            ret: Some(1),
        },
        Operation {
            client: 2,
            input: VersionedInput::get("k"),
            output: Some(VersionedOutput::get("b", 1, KvError::Ok)),
            call: 2,
            ret: Some(3),
        },
    ];
    let records: Vec<HistoryRecord> = versioned.iter().map(HistoryRecord::from).collect();
    assert_eq!(records[0].version, Some(0));
    assert_eq!(records[1].version, Some(1));
    assert!(check_records(&records, BUDGET).unwrap().is_illegal());
}

/// Any valid record: a plain or versioned operation, maybe pending.
fn record() -> impl Strategy<Value = HistoryRecord> {
    let error = prop_oneof![
        Just(KvError::Ok),
        Just(KvError::NoKey),
        Just(KvError::Version),
        Just(KvError::Maybe)
    ];
    (
        any::<i64>(),
        0..3u8,
        "[a-z\"\\\\ é]{0,6}",
        "[a-z\n\t ]{0,6}",
        proptest::option::of("[a-z{}]{0,6}"),
        any::<u64>(),
        proptest::option::of(any::<u32>()),
        proptest::option::of(any::<u64>()),
        proptest::option::of(error),
    )
        .prop_map(
            |(client, op, key, value, output, call, duration, version, error)| {
                let ret = duration.map(|d| call.saturating_add(d as u64));
                let op = [HistoryOp::Get, HistoryOp::Put, HistoryOp::Append][op as usize];
                let versioned = op != HistoryOp::Append && (version.is_some() || error.is_some());
                let pending = ret.is_none();
                HistoryRecord {
                    client,
                    op,
                    key,
                    value,
                    output: output.filter(|_| !pending),
                    call,
                    ret,
                    version: match op {
                        HistoryOp::Put if versioned => Some(version.unwrap_or(0)),
                        HistoryOp::Get if versioned && !pending => version,
                        _ => None,
                    },
                    error: error.filter(|_| versioned && !pending),
                }
            },
        )
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn written_records_read_back_identical(records in proptest::collection::vec(record(), 0..20)) {
        for record in &records {
            prop_assert_eq!(record.validate(), Ok(()));
        }
        let text = write(&records);
        prop_assert_eq!(text.lines().count(), records.len());
        prop_assert_eq!(read(&text).unwrap(), records);
    }
}
