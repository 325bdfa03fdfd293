//! Histories of key/value operations as JSON Lines: the format Flotilla's tests write when a
//! check fails and the `flotilla` command reads back, and the bridge from it to [`check`].
//!
//! ## The format
//!
//! One operation per line, one JSON object per operation; blank lines are skipped:
//!
//! ```text
//! {"client":3,"op":"put","key":"k","value":"x","call":10,"return":14}
//! {"client":1,"op":"append","key":"k","value":"y","output":"x","call":12,"return":15}
//! {"client":2,"op":"get","key":"k","value":"","output":"xy","call":16,"return":18}
//! {"client":4,"op":"append","key":"k","value":"z","call":17,"return":null}
//! ```
//!
//! | field | meaning |
//! |---|---|
//! | `client` | who called (an integer; only shown in explanations) |
//! | `op` | `"get"`, `"put"` or `"append"` |
//! | `key` | the key |
//! | `value` | the value a put or append sends; `""` or absent for a get |
//! | `output` | what a get returned, or the old value an append returned; absent (or `""`) for a put. Absent means "not observed": any answer is accepted |
//! | `call` | when the call was made (an unsigned integer; every record on one clock) |
//! | `return` | when it returned, not before `call`; `null` if it never did (then it may have taken effect at any time after `call`, or never) |
//!
//! Record `a` must take effect before record `b` exactly when `a`'s `return` is less than
//! `b`'s `call`; equal values count as overlapping. So whoever writes a history must give a
//! call that came after a return a larger value, breaking ties of a coarse clock in the
//! order the events happened (and must not order operations that overlapped). The unit is
//! free: the KV simulator's histories count virtual picoseconds made strictly increasing,
//! `flotilla kv bench` nanoseconds since the start of the run.
//!
//! **Versioned operations** (the 2025 kvsrv1, conditional puts) add two fields and use only
//! `get` and `put`:
//!
//! | field | meaning |
//! |---|---|
//! | `version` | for a put, the version it was conditional on (required); for a get, the version it returned |
//! | `error` | the answer's `Err`: `"OK"`, `"ErrNoKey"`, `"ErrVersion"` or `"ErrMaybe"`; absent means "not observed" |
//!
//! ```text
//! {"client":1,"op":"put","key":"k","value":"a","call":1,"return":3,"version":0,"error":"OK"}
//! {"client":2,"op":"put","key":"k","value":"b","call":2,"return":9,"version":0,"error":"ErrMaybe"}
//! {"client":3,"op":"get","key":"k","value":"","output":"a","call":4,"return":5,"version":1,"error":"OK"}
//! ```
//!
//! A history is in one form or the other: [`check_records`] uses
//! [`VersionedKvModel`] if any record has `version` or `error`, [`KvModel`] otherwise, and
//! rejects a file where an append or an unversioned put sits beside versioned records. An
//! operation that never returned has no answer fields (`output`, `error`, and for a get
//! `version`). Unknown fields are rejected, so a misspelt field cannot silently change a
//! verdict.
//!
//! [`KvModel`]: crate::models::KvModel
//! [`VersionedKvModel`]: crate::models::VersionedKvModel

use std::io::{self, BufRead, Write};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::models::{
    KvError, KvInput, KvOp, KvOutput, VersionedInput, VersionedOp, VersionedOutput,
};
use crate::records::{kv_operation, versioned_operation, KvRecordModel, VersionedRecordModel};
use crate::{check, CheckResult, Operation};

/// The operation of a record.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum HistoryOp {
    Get,
    Put,
    Append,
}

/// One line of a history file; see the [module documentation](self) for the fields.
///
/// Deserializing validates the record ([`RecordProblem`] names what is wrong); serializing
/// leaves out absent `output`, `version` and `error` and always writes `return`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "RawRecord")]
pub struct HistoryRecord {
    pub client: i64,
    pub op: HistoryOp,
    pub key: String,
    pub value: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub output: Option<String>,
    pub call: u64,
    #[serde(rename = "return")]
    pub ret: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub version: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<KvError>,
}

/// What is wrong with one record.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum RecordProblem {
    #[error("malformed JSON: {0}")]
    Json(String),
    #[error("missing field \"{0}\"")]
    MissingField(&'static str),
    #[error("unknown op {0:?} (expected \"get\", \"put\" or \"append\")")]
    UnknownOp(String),
    #[error("unknown error {0:?} (expected \"OK\", \"ErrNoKey\", \"ErrVersion\" or \"ErrMaybe\")")]
    UnknownError(String),
    #[error("\"return\" {ret} is before \"call\" {call}")]
    ReturnBeforeCall { call: u64, ret: u64 },
    #[error("the operation never returned (\"return\": null) but has an answer field \"{0}\"")]
    AnswerOfPending(&'static str),
    #[error(
        "an append cannot have \"version\" or \"error\": versioned histories only get and put"
    )]
    VersionedAppend,
    #[error("a put with an \"error\" is versioned and needs its \"version\"")]
    PutWithoutVersion,
}

/// Why a history could not be read or checked.
#[derive(Debug, thiserror::Error)]
pub enum HistoryError {
    /// A line of a file read by [`read_history`] (lines count from 1).
    #[error("line {line}: {problem}")]
    Line { line: usize, problem: RecordProblem },
    /// A record given to [`check_records`] (records count from 1).
    #[error("record {record}: {problem}")]
    Record {
        record: usize,
        problem: RecordProblem,
    },
    /// Both forms in one history (records count from 1).
    #[error(
        "record {versioned} is versioned (has \"version\" or \"error\") but record {plain} is \
         not (an append, or a put without \"version\"); a history uses one form"
    )]
    MixedForms { versioned: usize, plain: usize },
    #[error("reading line {line}: {source}")]
    Io { line: usize, source: io::Error },
}

/// A record as parsed, before validation: every field optional, `return` told apart as
/// absent (`None`) or `null` (`Some(None)`).
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRecord {
    client: Option<i64>,
    op: Option<String>,
    key: Option<String>,
    value: Option<String>,
    output: Option<String>,
    call: Option<u64>,
    #[serde(rename = "return", default, deserialize_with = "present")]
    ret: Option<Option<u64>>,
    version: Option<u64>,
    error: Option<String>,
}

/// Deserializes a field that is present (possibly `null`) as `Some`.
fn present<'de, D, T>(deserializer: D) -> Result<Option<T>, D::Error>
where
    D: serde::Deserializer<'de>,
    T: Deserialize<'de>,
{
    T::deserialize(deserializer).map(Some)
}

impl TryFrom<RawRecord> for HistoryRecord {
    type Error = RecordProblem;

    fn try_from(raw: RawRecord) -> Result<HistoryRecord, RecordProblem> {
        let op = raw.op.ok_or(RecordProblem::MissingField("op"))?;
        let op = match op.as_str() {
            "get" => HistoryOp::Get,
            "put" => HistoryOp::Put,
            "append" => HistoryOp::Append,
            _ => return Err(RecordProblem::UnknownOp(op)),
        };
        let error = match raw.error {
            None => None,
            Some(name) => Some(KvError::from_name(&name).ok_or(RecordProblem::UnknownError(name))?),
        };
        let record = HistoryRecord {
            client: raw.client.ok_or(RecordProblem::MissingField("client"))?,
            op,
            key: raw.key.ok_or(RecordProblem::MissingField("key"))?,
            value: raw.value.unwrap_or_default(),
            output: raw.output,
            call: raw.call.ok_or(RecordProblem::MissingField("call"))?,
            ret: raw.ret.ok_or(RecordProblem::MissingField("return"))?,
            version: raw.version,
            error,
        };
        record.validate()?;
        Ok(record)
    }
}

impl HistoryRecord {
    /// Checks what the types cannot: times in order, no answer for a pending operation, the
    /// versioned fields only where they belong.
    pub fn validate(&self) -> Result<(), RecordProblem> {
        if let Some(ret) = self.ret {
            if ret < self.call {
                return Err(RecordProblem::ReturnBeforeCall {
                    call: self.call,
                    ret,
                });
            }
        }
        if self.ret.is_none() {
            if self.output.is_some() {
                return Err(RecordProblem::AnswerOfPending("output"));
            }
            if self.error.is_some() {
                return Err(RecordProblem::AnswerOfPending("error"));
            }
            if self.op == HistoryOp::Get && self.version.is_some() {
                return Err(RecordProblem::AnswerOfPending("version"));
            }
        }
        if self.op == HistoryOp::Append && (self.version.is_some() || self.error.is_some()) {
            return Err(RecordProblem::VersionedAppend);
        }
        if self.op == HistoryOp::Put && self.error.is_some() && self.version.is_none() {
            return Err(RecordProblem::PutWithoutVersion);
        }
        Ok(())
    }

    /// Whether the record has a field only versioned histories have.
    fn is_versioned(&self) -> bool {
        self.version.is_some() || self.error.is_some()
    }

    /// Whether the record can only be in a plain (2024) history.
    fn is_plain(&self) -> bool {
        match self.op {
            HistoryOp::Append => true,
            HistoryOp::Put => self.version.is_none(),
            HistoryOp::Get => false,
        }
    }
}

impl From<&Operation<KvInput, KvOutput>> for HistoryRecord {
    fn from(op: &Operation<KvInput, KvOutput>) -> HistoryRecord {
        HistoryRecord {
            client: op.client,
            op: match op.input.op {
                KvOp::Get => HistoryOp::Get,
                KvOp::Put => HistoryOp::Put,
                KvOp::Append => HistoryOp::Append,
            },
            key: op.input.key.clone(),
            value: op.input.value.clone(),
            output: op.output.as_ref().map(|output| output.value.clone()),
            call: op.call,
            ret: op.ret,
            version: None,
            error: None,
        }
    }
}

impl From<&Operation<VersionedInput, VersionedOutput>> for HistoryRecord {
    fn from(op: &Operation<VersionedInput, VersionedOutput>) -> HistoryRecord {
        let (history_op, value, output, version, error) = match op.input.op {
            VersionedOp::Get => (
                HistoryOp::Get,
                String::new(),
                op.output.as_ref().map(|output| output.value.clone()),
                op.output.as_ref().map(|output| output.version),
                op.output.as_ref().map(|output| output.error),
            ),
            VersionedOp::Put => (
                HistoryOp::Put,
                op.input.value.clone(),
                None,
                Some(op.input.version),
                op.output.as_ref().map(|output| output.error),
            ),
        };
        HistoryRecord {
            client: op.client,
            op: history_op,
            key: op.input.key.clone(),
            value,
            output,
            call: op.call,
            ret: op.ret,
            version,
            error,
        }
    }
}

/// Reads a JSON Lines history. Errors name the line (from 1) and what is wrong with it.
pub fn read_history(reader: impl BufRead) -> Result<Vec<HistoryRecord>, HistoryError> {
    let mut records = Vec::new();
    for (number, text) in reader.lines().enumerate() {
        let line = number + 1;
        let text = text.map_err(|source| HistoryError::Io { line, source })?;
        if text.trim().is_empty() {
            continue;
        }
        let record = parse_line(&text).map_err(|problem| HistoryError::Line { line, problem })?;
        records.push(record);
    }
    Ok(records)
}

fn parse_line(text: &str) -> Result<HistoryRecord, RecordProblem> {
    let raw: RawRecord = serde_json::from_str(text).map_err(|error| {
        // serde_json appends " at line 1 column N", where the line is always 1; keep the
        // column only, so it is not mistaken for the file's line.
        let message = error.to_string();
        let message = message
            .rfind(" at line ")
            .map_or(message.as_str(), |at| &message[..at]);
        RecordProblem::Json(format!("{message} (column {})", error.column()))
    })?;
    HistoryRecord::try_from(raw)
}

/// Writes `records` as JSON Lines, one record per line.
pub fn write_history(mut writer: impl Write, records: &[HistoryRecord]) -> io::Result<()> {
    for record in records {
        serde_json::to_writer(&mut writer, record)?;
        writer.write_all(b"\n")?;
    }
    writer.flush()
}

/// Checks a history with the model its form calls for: [`VersionedKvModel`] if any record has
/// `version` or `error`, [`KvModel`] otherwise. Errors name the record (from 1).
///
/// The result is exactly that of [`check`] with that model on the records made into
/// [`Operation`]s (verdict and explanation alike), only cheaper: the operations borrow the
/// records' strings, and values are kept without copying them whole at every step.
///
/// [`KvModel`]: crate::models::KvModel
/// [`VersionedKvModel`]: crate::models::VersionedKvModel
pub fn check_records(
    records: &[HistoryRecord],
    budget: Duration,
) -> Result<CheckResult, HistoryError> {
    for (index, record) in records.iter().enumerate() {
        record.validate().map_err(|problem| HistoryError::Record {
            record: index + 1,
            problem,
        })?;
    }
    let versioned = records.iter().position(HistoryRecord::is_versioned);
    let plain = records.iter().position(HistoryRecord::is_plain);
    match (versioned, plain) {
        (Some(versioned), Some(plain)) => Err(HistoryError::MixedForms {
            versioned: versioned + 1,
            plain: plain + 1,
        }),
        (Some(_), None) => {
            let history: Vec<_> = records.iter().map(versioned_operation).collect();
            Ok(check(&VersionedRecordModel::new(), &history, budget))
        }
        (None, _) => {
            let history: Vec<_> = records.iter().map(kv_operation).collect();
            Ok(check(&KvRecordModel::new(), &history, budget))
        }
    }
}
